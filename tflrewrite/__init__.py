"""tflrewrite: read, rewrite, audit and verify TensorFlow Lite models."""

__version__ = "0.1.0"
