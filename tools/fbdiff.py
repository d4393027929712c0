#!/usr/bin/env python3
"""Structural diff of two .tflite files, field by field, straight from the flatbuffers.

It reads both files with the schema bindings' object API alone (not tflrewrite's reader, so
that a reader bug cannot hide itself) and lists every field whose value differs, by path:

    subgraphs[0].tensors[5].quantization.scale: [0.1] != [0.2]

Layout is not compared: buffer data is compared by content wherever it lies (inside the
flatbuffer, or after it in the >2 GB layout), an absent vector equals an empty one (readers
cannot tell them apart), and bytes after the flatbuffer are compared only if asked.

    python tools/fbdiff.py A.tflite B.tflite      exit 0 when equal, 1 when not
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as fb

# Buffer.offset/size say where data lies, not what it is: resolved, then left out.
_LAYOUT_FIELDS = {"offset", "size", "largeCustomOptionsOffset", "largeCustomOptionsSize"}


def load(data: bytes) -> Any:
    model = fb.ModelT.InitFromPackedBuf(data, 0)
    raw = np.frombuffer(data, dtype=np.uint8)
    for b in model.buffers or []:
        if b.offset > 1:
            b.data = raw[b.offset : b.offset + b.size]
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            if op.largeCustomOptionsSize:
                start = op.largeCustomOptionsOffset
                op.customOptions = raw[start : start + op.largeCustomOptionsSize]
    return model


def diff(a: Any, b: Any, path: str = "model", limit: int = 50) -> list[str]:
    """Paths and values of the fields that differ between two unpacked models."""
    out: list[str] = []
    _diff(a, b, path, out, limit)
    return out


def diff_files(path_a: str, path_b: str, limit: int = 50) -> list[str]:
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb_:
        return diff(load(fa.read()), load(fb_.read()), limit=limit)


def _is_vector(x: Any) -> bool:
    return isinstance(x, (list, tuple, np.ndarray))


def _diff(a: Any, b: Any, path: str, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if a is None and _is_vector(b) and len(b) == 0 or b is None and _is_vector(a) and len(a) == 0:
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        if x.shape != y.shape or not np.array_equal(x, y):
            out.append(f"{path}: {_show(a)} != {_show(b)}")
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} entries != {len(b)} entries")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out, limit)
        return
    if hasattr(a, "__dict__") and hasattr(b, "__dict__") and type(a) is type(b):
        for key in vars(a):
            if key not in _LAYOUT_FIELDS:
                _diff(getattr(a, key), getattr(b, key), f"{path}.{key}", out, limit)
        return
    if type(a) is not type(b) or a != b:
        out.append(f"{path}: {_show(a)} != {_show(b)}")


def _show(x: Any) -> str:
    if isinstance(x, np.ndarray):
        if x.size > 8:
            return f"<{x.dtype} array of {x.size}>"
        return str(x.tolist())
    text = repr(x)
    return text if len(text) < 80 else text[:77] + "..."


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    lines = diff_files(*argv)
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
