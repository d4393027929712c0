"""The direct table reader and packer (issue 15, big files): the reader reads buffers, tensors
and operators straight from the bytes and the writer packs them a whole table at a time,
yet the result is what the schema bindings' object API reads and packs, byte for byte."""

from __future__ import annotations

import dataclasses

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb
from fbdiff import diff, load

from tflrewrite import reader, schema, writer
from tflrewrite.passes import PASSES


def builder_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the writer pack every table through the flatbuffers Builder's own calls."""
    monkeypatch.setattr(writer, "_builder_class", lambda: writer._Builder)


def test_fast_tables_are_in_use():
    # the Builder's internals that _FastBuilder relies on are as it expects
    assert writer._builder_class() is writer._FastBuilder


@pytest.mark.parametrize("large", [False, True])
def test_packer_writes_what_builder_calls_write(model_name, model_path, monkeypatch, large):
    model = reader.read(model_path)
    fast = writer.to_bytes(model, large=large)
    builder_calls(monkeypatch)
    assert fast == writer.to_bytes(model, large=large)


def test_packer_writes_what_builder_calls_write_after_passes(tf_models, monkeypatch):
    """Tables the passes make (quantized weights, DEQUANTIZE ops, new options, edited
    attributes) go through the same packer."""
    model = reader.read(tf_models["float32_cnn"])
    for name, options in (
        ("prune", PASSES["prune"].Options(sparsity=0.5)),
        ("quantize", PASSES["quantize"].Options(mode="int8-weights", min_size=0)),
    ):
        model = PASSES[name].run(model, options).model
    op = next(op for sg in model.subgraphs for op in sg.operators if op.attrs is not None)
    op.attrs = dataclasses.replace(op.attrs, activation="RELU6")
    fast = writer.to_bytes(model)
    builder_calls(monkeypatch)
    assert fast == writer.to_bytes(model)


def pack(model: fb.ModelT, force_defaults: bool = False) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.ForceDefaults(force_defaults)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def unpack(data: bytes) -> fb.ModelT:
    return fb.ModelT.InitFromPackedBuf(bytearray(data), 0)


def test_fields_the_ir_does_not_model_survive(tf_models):
    """Tensor, operator and subgraph fields the IR leaves to `extra` come back as written;
    the tables that set them are read by the object API as well, the others are not."""
    m = unpack(tf_models["int8_full"].read_bytes())
    sg = m.subgraphs[0]
    sg.debugMetadataIndex = 3
    sg.tensors[0].externalBuffer = 7
    variant = fb.VariantSubTypeT()
    variant.shape, variant.type = [2, 3], fb.TensorType.INT32
    sg.tensors[1].variantTensors = [variant]
    sg.operators[0].debugMetadataIndex = 5
    sg.operators[0].customOptionsFormat = 1
    sg.operators[1].mutatingVariableInputs = [True, False]
    data = pack(m)

    model = reader.read_bytes(data)
    read = model.subgraphs[0]
    assert read.tensors[0].extra is not None and read.tensors[1].extra is not None
    assert read.tensors[2].extra is None
    assert read.operators[0].extra is not None and read.operators[1].extra is not None
    assert read.operators[2].extra is None
    assert diff(load(data), load(writer.to_bytes(model))) == []


def test_tables_with_every_default_written_read_the_same(tf_models):
    """A writer may store fields that hold their default values (flatbuffers'
    force_defaults): present in the vtable, they must read as if absent."""
    m = unpack(tf_models["int8_full"].read_bytes())
    plain, forced = pack(m), pack(m, force_defaults=True)
    assert len(forced) > len(plain)
    assert writer.to_bytes(reader.read_bytes(forced)) == writer.to_bytes(reader.read_bytes(plain))


def test_equal_options_are_shared_but_written_per_operator(tf_models):
    """Operators with equal option tables share one options object; editing one
    operator's attributes changes that operator alone."""
    model = reader.read(tf_models["sparse_convnet"])
    ops = model.subgraphs[0].operators
    shared = [
        (i, j)
        for i, a in enumerate(ops)
        for j, b in enumerate(ops[i + 1 :], i + 1)
        if a.attrs is not None and a.attrs == b.attrs
    ]
    assert shared, "the test model needs two operators with equal options"
    i, j = shared[0]
    assert ops[i].options is ops[j].options and ops[i].attrs is ops[j].attrs
    activation = "RELU6" if ops[i].attrs.activation != "RELU6" else "NONE"
    ops[i].attrs = dataclasses.replace(ops[i].attrs, activation=activation)

    written = load(writer.to_bytes(model)).subgraphs[0].operators
    code = schema.ACTIVATION_CODES[activation]
    assert written[i].builtinOptions.fusedActivationFunction == code
    assert written[j].builtinOptions.fusedActivationFunction != code


@pytest.mark.parametrize(
    "cls,table",
    [
        (fb.ModelT, writer._MODEL),
        (fb.SubGraphT, writer._SUBGRAPH),
        (fb.BufferT, writer._BUFFER),
        (fb.TensorT, writer._TENSOR),
        (fb.QuantizationParametersT, writer._QUANTIZATION),
        (fb.OperatorT, writer._OPERATOR),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_packer_knows_every_field_of_the_bindings(cls, table):
    """The writer lists the fields of the tables it packs itself, and the reader reads
    them by slot: a field that a new LiteRT schema adds must fail here first, not vanish."""
    slots, scalars = schema.scalar_fields(cls())
    assert table.slots == slots == len(vars(cls()))
    listed = [(slot, fmt, default) for slot, fmt, default in table.fields if fmt != "O"]
    assert listed == [(slot, fmt, default) for slot, fmt, _, default in scalars]
    assert [slot for slot, _, _ in table.fields] == list(range(slots))


def test_field_sizes_of_options():
    assert schema.field_sizes(fb.FullyConnectedOptionsT) == (1, 1, 1, 1, 1, 4)
    assert schema.field_sizes(fb.Conv2DOptionsT) == (1, 4, 4, 1, 4, 4, 1)


def test_vectors_read_as_views_of_the_file(tf_models):
    model = reader.read(tf_models["int8_full"])
    q = next(t.quantization for _, _, t in model.tensors() if t.quantization is not None)
    assert q.scale.dtype == np.dtype("<f4") and q.zero_point.dtype == np.dtype("<i8")
    assert not q.scale.flags.writeable  # a view of the read-only memory map


def test_file_written_in_parts_is_whole(tf_models, tmp_path, monkeypatch):
    """writev may write less than it is given (a signal, a file-size limit reached later):
    the writer carries on from where it stopped, within a chunk too."""
    model = reader.read(tf_models["int8_full"])
    writev = writer.os.writev

    def at_most_1000_bytes(fd: int, chunks: list) -> int:
        head, total = [], 0
        for c in chunks:
            c = memoryview(c)[: 1000 - total]
            head.append(c)
            total += len(c)
            if total == 1000:
                break
        return writev(fd, head)

    monkeypatch.setattr(writer.os, "writev", at_most_1000_bytes)
    writer.write(model, tmp_path / "out.tflite")
    assert (tmp_path / "out.tflite").read_bytes() == writer.to_bytes(model)
