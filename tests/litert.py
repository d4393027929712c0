"""Runs a model in LiteRT on seeded inputs: the oracle the tests compare rewrites against."""

from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def interpreter(path_or_bytes) -> Interpreter:
    kwargs = {
        "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "num_threads": 1,
    }
    if isinstance(path_or_bytes, (bytes, bytearray)):
        interp = Interpreter(model_content=bytes(path_or_bytes), **kwargs)
    else:
        interp = Interpreter(model_path=str(path_or_bytes), **kwargs)
    return interp


def seeded_value(detail: dict, rng: np.random.Generator) -> np.ndarray:
    shape, dtype = tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = (info.min, info.max) if dtype.itemsize == 1 else (0, 4)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "SOU":
        return np.array([b"tflrewrite"] * int(np.prod(shape)), dtype=object).reshape(shape)
    raise TypeError(f"no seeded input for dtype {dtype}")


def run_all(path_or_bytes, seed: int = 0, samples: int = 3) -> dict[str, list[np.ndarray]]:
    """Outputs of every signature (or of the main subgraph when there are none) on seeded
    inputs, keyed 'signature/output'."""
    interp = interpreter(path_or_bytes)
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    signatures = interp.get_signature_list()
    for _ in range(samples):
        if signatures:
            for key in sorted(signatures):
                runner = interp.get_signature_runner(key)
                feeds = {
                    name: seeded_value(d, rng)
                    for name, d in sorted(runner.get_input_details().items())
                }
                for name, value in sorted(runner(**feeds).items()):
                    out.setdefault(f"{key}/{name}", []).append(np.copy(value))
        else:
            interp.allocate_tensors()
            for d in interp.get_input_details():
                interp.set_tensor(d["index"], seeded_value(d, rng))
            interp.invoke()
            for d in interp.get_output_details():
                out.setdefault(d["name"], []).append(np.copy(interp.get_tensor(d["index"])))
    return out
