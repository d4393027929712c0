"""The TFLite schema bindings, and the name <-> code tables the reader and writer share.

The bindings are LiteRT's generated `schema_py_generated`: it has the object API (the `...T`
classes) that turns a table into a plain object and back, and LiteRT is a dependency anyway
for running models, so the schema and the runtime cannot drift apart. Only this module,
reader.py and writer.py import it.
"""

from __future__ import annotations

from typing import Any

from ai_edge_litert import schema_py_generated as fb


def _codes(enum: type) -> dict[str, int]:
    return {k: v for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


TENSOR_TYPE_CODES: dict[str, int] = _codes(fb.TensorType)
TENSOR_TYPE_NAMES: dict[int, str] = {v: k for k, v in TENSOR_TYPE_CODES.items()}
OPERATOR_CODES: dict[str, int] = _codes(fb.BuiltinOperator)
OPERATOR_NAMES: dict[int, str] = {v: k for k, v in OPERATOR_CODES.items()}
BUILTIN_OPTIONS_CODES: dict[str, int] = _codes(fb.BuiltinOptions)
BUILTIN_OPTIONS2_CODES: dict[str, int] = _codes(fb.BuiltinOptions2)

# Builtin codes above 127 do not fit the int8 field of old readers, which see this instead.
PLACEHOLDER_FOR_GREATER_OP_CODES = 127


def options_code(options: Any, table: dict[str, int]) -> int:
    """The union type code of a builtin options object (its class is `<Name>T`)."""
    if options is None:
        return 0
    return table[type(options).__name__[:-1]]


def make_options(name: str, **fields: Any) -> Any:
    """A builtin options object by schema name, e.g. make_options("FullyConnectedOptions")."""
    options = getattr(fb, name + "T")()
    for key, value in fields.items():
        if not hasattr(options, key):
            raise AttributeError(f"{name} has no field {key!r}")
        setattr(options, key, value)
    return options
