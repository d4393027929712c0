"""Numba kernels: arrays in, arrays out; nothing here knows TFLite or the IR."""
