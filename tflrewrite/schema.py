"""The TFLite schema bindings, and the name <-> code tables the reader and writer share:
codes of types and operators, and which options fields hold each typed op attribute.

The bindings are LiteRT's generated `schema_py_generated`: it has the object API (the `...T`
classes) that turns a table into a plain object and back, and LiteRT is a dependency anyway
for running models, so the schema and the runtime cannot drift apart. Only this module,
reader.py and writer.py import it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import struct
from typing import Any

from ai_edge_litert import schema_py_generated as fb

from tflrewrite.errors import ModelError
from tflrewrite.model import (
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    FullyConnectedAttrs,
    OpAttrs,
    Pool2DAttrs,
)


def _codes(enum: type) -> dict[str, int]:
    return {k: v for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


TENSOR_TYPE_CODES: dict[str, int] = _codes(fb.TensorType)
TENSOR_TYPE_NAMES: dict[int, str] = {v: k for k, v in TENSOR_TYPE_CODES.items()}
OPERATOR_CODES: dict[str, int] = _codes(fb.BuiltinOperator)
OPERATOR_NAMES: dict[int, str] = {v: k for k, v in OPERATOR_CODES.items()}
BUILTIN_OPTIONS_CODES: dict[str, int] = _codes(fb.BuiltinOptions)
BUILTIN_OPTIONS2_CODES: dict[str, int] = _codes(fb.BuiltinOptions2)
# The options class of each union type code (the object API's `<Name>T`), as the generated
# BuiltinOptionsCreator picks it, in one lookup instead of a chain of a hundred comparisons.
OPTIONS_CLASSES: dict[int, type] = {
    code: getattr(fb, name + "T") for name, code in BUILTIN_OPTIONS_CODES.items() if code
}
OPTIONS2_CLASSES: dict[int, type] = {
    code: getattr(fb, name + "T") for name, code in BUILTIN_OPTIONS2_CODES.items() if code
}

PADDING_CODES: dict[str, int] = _codes(fb.Padding)
ACTIVATION_CODES: dict[str, int] = _codes(fb.ActivationFunctionType)
WEIGHTS_FORMAT_CODES: dict[str, int] = _codes(fb.FullyConnectedOptionsWeightsFormat)

# The options class each attributes class types, and the options fields of each attribute
# with the enum coding it (None: stored as it is; two fields: an (h, w) pair).
_OPTIONS_CLASS: dict[type, type] = {
    Conv2DAttrs: fb.Conv2DOptionsT,
    DepthwiseConv2DAttrs: fb.DepthwiseConv2DOptionsT,
    Pool2DAttrs: fb.Pool2DOptionsT,
    FullyConnectedAttrs: fb.FullyConnectedOptionsT,
}
_ATTRS_CLASS: dict[type, type] = {v: k for k, v in _OPTIONS_CLASS.items()}
_ATTR_FIELDS: dict[str, tuple[tuple[str, ...], dict[str, int] | None]] = {
    "padding": (("padding",), PADDING_CODES),
    "stride": (("strideH", "strideW"), None),
    "dilation": (("dilationHFactor", "dilationWFactor"), None),
    "filter": (("filterHeight", "filterWidth"), None),
    "depth_multiplier": (("depthMultiplier",), None),
    "activation": (("fusedActivationFunction",), ACTIVATION_CODES),
    "weights_format": (("weightsFormat",), WEIGHTS_FORMAT_CODES),
    "keep_num_dims": (("keepNumDims",), None),
    "asymmetric_quantize_inputs": (("asymmetricQuantizeInputs",), None),
}

# The flatbuffers Builder's method for each kind of scalar field, and its struct format.
_SLOT_FORMATS: dict[str, str] = {
    "PrependBoolSlot": "?",
    "PrependInt8Slot": "b",
    "PrependUint8Slot": "B",
    "PrependInt16Slot": "h",
    "PrependUint16Slot": "H",
    "PrependInt32Slot": "i",
    "PrependUint32Slot": "I",
    "PrependInt64Slot": "q",
    "PrependUint64Slot": "Q",
    "PrependFloat32Slot": "f",
    "PrependFloat64Slot": "d",
}
_PLAIN = (int, float, bool, type(None))

# Builtin codes above 127 do not fit the int8 field of old readers, which see this instead.
PLACEHOLDER_FOR_GREATER_OP_CODES = 127


def options_code(options: Any, table: dict[str, int]) -> int:
    """The union type code of a builtin options object (its class is `<Name>T`)."""
    if options is None:
        return 0
    return table[type(options).__name__[:-1]]


def scalar_fields(options: Any) -> tuple[int, tuple[tuple[int, str, Any, Any], ...]] | None:
    """How an object-API table of plain values (numbers, None) packs itself: its number of
    field slots, and (slot, struct format, value, default) for each scalar field in the
    order its Pack adds them. None for one that holds more (a string, vector or table).

    Pack is run against a stand-in for the flatbuffers Builder that records the calls, so
    the layout is the bindings' own; fields left None are offsets Pack leaves out."""
    if not all(type(v) in _PLAIN for v in vars(options).values()):
        return None
    recorder = _Recorder()
    try:
        options.Pack(recorder)
    except _NotPlainError:
        return None
    return recorder.slots, tuple(recorder.fields)


@functools.cache
def field_sizes(cls: type) -> tuple[int, ...]:
    """The byte size of each field slot of an object-API table class: its scalars as a
    default object packs them, 4 (an offset) for the rest."""
    layout = scalar_fields(cls())
    if layout is None:
        return ()
    sizes = [4] * layout[0]
    for slot, fmt, _, _ in layout[1]:
        sizes[slot] = struct.calcsize("<" + fmt)
    return tuple(sizes)


class _NotPlainError(Exception):
    pass


class _Recorder:
    """Stands in for a flatbuffers Builder: records the scalar fields a table adds."""

    def __init__(self) -> None:
        self.slots, self.fields = 0, []

    def StartObject(self, slots: int) -> None:  # noqa: N802 - the Builder's name
        self.slots = slots

    def EndObject(self) -> int:  # noqa: N802 - the Builder's name
        return 0

    def __getattr__(self, name: str) -> Any:
        fmt = _SLOT_FORMATS.get(name)
        if fmt is None:
            raise _NotPlainError(name)
        return lambda slot, value, default: self.fields.append((slot, fmt, value, default))


def make_options(name: str, **fields: Any) -> Any:
    """A builtin options object by schema name, e.g. make_options("FullyConnectedOptions")."""
    options = getattr(fb, name + "T")()
    for key, value in fields.items():
        if not hasattr(options, key):
            raise AttributeError(f"{name} has no field {key!r}")
        setattr(options, key, value)
    return options


def decode_attrs(options: Any) -> OpAttrs | None:
    """The typed attributes of a builtin options object; None where nothing reads its kind."""
    kind = _ATTRS_CLASS.get(type(options))
    if kind is None:
        return None
    return kind(**{f.name: _decode(options, f.name) for f in dataclasses.fields(kind)})


def encode_attrs(attrs: OpAttrs, options: Any) -> Any:
    """A copy of `options` (a new object where it is of another kind) with `attrs` set in it:
    values equal to those read give back equal fields, so an unedited op writes the same."""
    kind = _OPTIONS_CLASS[type(attrs)]
    out = copy.copy(options) if type(options) is kind else kind()
    for f in dataclasses.fields(attrs):
        names, enum = _ATTR_FIELDS[f.name]
        values = getattr(attrs, f.name)
        if len(names) == 1:
            values = (values if enum is None else _code(enum, values),)
        for name, value in zip(names, values, strict=True):
            setattr(out, name, value)
    return out


def _decode(options: Any, attr: str) -> Any:
    names, enum = _ATTR_FIELDS[attr]
    values = tuple(getattr(options, name) for name in names)
    if len(names) > 1:
        return values
    if enum is None:
        return values[0]
    return next((k for k, v in enum.items() if v == values[0]), str(values[0]))


def _code(enum: dict[str, int], name: str) -> int:
    """The code of an enum name, or of the decimal string a code the schema lacks reads as."""
    if name in enum:
        return enum[name]
    try:
        return int(name)
    except ValueError:
        raise ModelError(None, f"op attribute {name!r} is none of {', '.join(enum)}") from None


# --------------------------------------------------------------------------------------
# Where each table's fields point: what the reader walks to find the flatbuffer's end.


@dataclasses.dataclass(frozen=True)
class Pointer:
    """A table field that holds an offset to something else in the flatbuffer."""

    slot: int  # the field's index in the vtable
    kind: str  # "string", "table", "union", "scalars", "tables" or "strings" (vectors)
    width: int = 0  # bytes per element of a "scalars" vector
    table: str | None = None  # the table a "table" or "tables" field points at
    type_slot: int = -1  # a union's type field
    members: dict[int, str] | None = None  # a union's type code -> table


# The union enum behind each union field (the bindings do not say which).
_UNION_ENUMS = {
    ("Operator", "BuiltinOptions"): "BuiltinOptions",
    ("Operator", "BuiltinOptions2"): "BuiltinOptions2",
    ("QuantizationParameters", "Details"): "QuantizationDetails",
    ("DimensionMetadata", "ArraySegments"): "SparseIndexVector",
    ("DimensionMetadata", "ArrayIndices"): "SparseIndexVector",
}


class _CallRecorder:
    """Stands in for a flatbuffers.Builder to learn what a generated function would build."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, method: str) -> Any:
        return lambda *args: self.calls.append((method, args)) or 0


def _recorded(function: Any, *args: Any) -> tuple[str, tuple]:
    builder = _CallRecorder()
    function(builder, *args)
    return builder.calls[-1]


@functools.cache
def pointers() -> dict[str, tuple[Pointer, ...]]:
    """Every table of the schema -> its offset fields, learned from the generated bindings:
    `<Table>Add<Field>` says the slot and whether the field is an offset,
    `<Table>Start<Field>Vector` a vector's element size, and the reading accessor what the
    offset leads to (its code calls String, Indirect, Vector or Union)."""
    names = vars(fb)
    tables = {n for n in names if callable(names.get(n + "Start")) and isinstance(names[n], type)}
    slots: dict[str, dict[str, tuple[int, bool]]] = {t: {} for t in tables}
    for name in names:
        at = name.find("Add", 1)
        while at > 0:  # a table's own name may hold "Add" (AddOptions, AddNOptions)
            table, field = name[:at], name[at + 3 :]
            if table in tables and callable(getattr(names[table], field, None)):
                method, args = _recorded(names[name], 0)
                slots[table][field] = (args[0], method == "PrependUOffsetTRelativeSlot")
                break
            at = name.find("Add", at + 1)
    return {
        t: tuple(
            _pointer(t, field, slot, slots[t], tables)
            for field, (slot, is_offset) in sorted(slots[t].items(), key=lambda kv: kv[1])
            if is_offset
        )
        for t in sorted(tables)
    }


def _pointer(table: str, field: str, slot: int, slots: dict, tables: set[str]) -> Pointer:
    names = getattr(getattr(fb, table), field).__code__.co_names
    target = next((n for n in names if n in tables), None)
    if "Union" in names:
        enum = getattr(fb, _UNION_ENUMS.get((table, field), ""), None)
        members = {} if enum is None else {v: k for k, v in _codes(enum).items() if k in tables}
        return Pointer(slot, "union", type_slot=slots[field + "Type"][0], members=members)
    if "Vector" not in names:
        return (
            Pointer(slot, "table", table=target) if "Indirect" in names else Pointer(slot, "string")
        )
    if "Indirect" in names:
        return Pointer(slot, "tables", table=target)
    if "String" in names:
        return Pointer(slot, "strings")
    _, args = _recorded(getattr(fb, f"{table}Start{field}Vector"), 0)
    return Pointer(slot, "scalars", width=args[0])
