"""Typed op attributes: the reader's match the options fields, and the writer writes edits."""

from __future__ import annotations

import dataclasses

import pytest
from ai_edge_litert import schema_py_generated as fb
from fbdiff import load

from tflrewrite import reader, writer
from tflrewrite.errors import ModelError
from tflrewrite.model import (
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    FullyConnectedAttrs,
    Operator,
    Pool2DAttrs,
)


def _name(enum: type, code: int) -> str:
    return next(k for k, v in vars(enum).items() if v == code and not k.startswith("_"))


def _expected(o: object) -> object:
    """The attributes of an options object, spelled out here apart from tflrewrite.schema."""
    act = "fusedActivationFunction"
    if isinstance(o, fb.Conv2DOptionsT | fb.DepthwiseConv2DOptionsT):
        conv = {
            "padding": _name(fb.Padding, o.padding),
            "stride": (o.strideH, o.strideW),
            "dilation": (o.dilationHFactor, o.dilationWFactor),
            "activation": _name(fb.ActivationFunctionType, getattr(o, act)),
        }
        if isinstance(o, fb.Conv2DOptionsT):
            return Conv2DAttrs(**conv)
        return DepthwiseConv2DAttrs(**conv, depth_multiplier=o.depthMultiplier)
    if isinstance(o, fb.Pool2DOptionsT):
        return Pool2DAttrs(
            padding=_name(fb.Padding, o.padding),
            stride=(o.strideH, o.strideW),
            filter=(o.filterHeight, o.filterWidth),
            activation=_name(fb.ActivationFunctionType, getattr(o, act)),
        )
    if isinstance(o, fb.FullyConnectedOptionsT):
        return FullyConnectedAttrs(
            activation=_name(fb.ActivationFunctionType, getattr(o, act)),
            weights_format=_name(fb.FullyConnectedOptionsWeightsFormat, o.weightsFormat),
            keep_num_dims=o.keepNumDims,
            asymmetric_quantize_inputs=o.asymmetricQuantizeInputs,
        )
    return None


def _ops(model) -> list[Operator]:
    return [op for sg in model.subgraphs for op in sg.operators]


def test_attrs_match_the_options(model_name, model_path):
    for op in _ops(reader.read(model_path)):
        assert op.attrs == _expected(op.options), f"{model_name}: {op.type}"


def test_example_has_each_kind(example_model):
    kinds = {type(op.attrs) for op in _ops(reader.read(example_model))}
    assert kinds == {
        Conv2DAttrs,
        DepthwiseConv2DAttrs,
        Pool2DAttrs,
        FullyConnectedAttrs,
        type(None),
    }


def test_edited_attrs_are_written(example_model):
    model = reader.read(example_model)
    ops = _ops(model)
    conv, fc = ops[0], next(op for op in ops if op.type == "FULLY_CONNECTED")
    before = [op.attrs for op in ops]
    conv.attrs = dataclasses.replace(conv.attrs, padding="VALID", activation="RELU6")
    fc.attrs = dataclasses.replace(fc.attrs, activation="NONE", keep_num_dims=True)
    data = writer.to_bytes(model)

    back = _ops(reader.read_bytes(data))
    assert [op.attrs for op in back] == [conv.attrs, *before[1:5], fc.attrs, *before[6:]]
    raw = load(data).subgraphs[0].operators[0].builtinOptions
    assert (raw.padding, raw.fusedActivationFunction) == (fb.Padding.VALID, 3)
    # The options object read stays as it was: copies of the model share it.
    assert conv.options.padding == fb.Padding.SAME


def test_unedited_and_reverted_attrs_write_the_same_bytes(example_model):
    unedited = writer.to_bytes(reader.read(example_model))
    model = reader.read(example_model)
    conv = _ops(model)[0]
    kept = conv.attrs
    conv.attrs = dataclasses.replace(kept, stride=(2, 2))
    assert writer.to_bytes(model) != unedited
    conv.attrs = dataclasses.replace(conv.attrs, stride=kept.stride)
    assert writer.to_bytes(model) == unedited
    copy = model.copy()
    assert [op.attrs for op in _ops(copy)] == [op.attrs for op in _ops(model)]
    assert writer.to_bytes(copy) == writer.to_bytes(model)


def test_attrs_on_an_op_without_options_make_them(example_model):
    model = reader.read(example_model)
    reshape = next(op for op in _ops(model) if op.type == "RESHAPE")
    softmax = next(op for op in _ops(model) if op.type == "SOFTMAX")
    assert reshape.options is None
    reshape.opcode = model.opcode("FULLY_CONNECTED")  # only the written options matter here
    reshape.attrs = FullyConnectedAttrs("RELU", "DEFAULT", True, False)
    softmax.attrs = Pool2DAttrs("SAME", (1, 1), (1, 1), "NONE")  # replaces SoftmaxOptions
    raw = load(writer.to_bytes(model)).subgraphs[0].operators
    got = {type(o.builtinOptions).__name__ for o in raw}
    assert {"FullyConnectedOptionsT", "Pool2DOptionsT"} <= got
    assert "SoftmaxOptionsT" not in got


def test_an_unknown_enum_name_is_refused(example_model):
    model = reader.read(example_model)
    conv = _ops(model)[0]
    conv.attrs = dataclasses.replace(conv.attrs, padding="HALF")
    with pytest.raises(ModelError, match="'HALF' is none of SAME, VALID"):
        writer.to_bytes(model)


def test_a_code_the_schema_lacks_round_trips(example_model):
    model = reader.read(example_model)
    conv = _ops(model)[0]
    conv.attrs = dataclasses.replace(conv.attrs, activation="9")
    back = _ops(reader.read_bytes(writer.to_bytes(model)))[0]
    assert back.attrs.activation == "9" and back.activation == "9"
    assert back.options.fusedActivationFunction == 9
    assert _ops(model)[4].activation == "NONE"  # RESHAPE: no options, no fused activation
