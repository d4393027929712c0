"""tflrewrite: read, rewrite, audit and verify TensorFlow Lite models.

`tflrewrite.rewrite`, `audit`, `verify` and `explore` are the Python API (tflrewrite.api),
imported on first use so that `import tflrewrite` stays cheap. A function here must not share
its name with a module of this package: importing the module would replace the function.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Public name -> the module that holds it.
_API = {
    "rewrite": "tflrewrite.api",
    "audit": "tflrewrite.api",
    "verify": "tflrewrite.api",
    "explore": "tflrewrite.api",
    "Result": "tflrewrite.api",
    "Explored": "tflrewrite.api",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tflrewrite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
