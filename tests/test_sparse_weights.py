"""Sparse constant weights are weights: a float model whose 1x1 convolution and Dense weights
the TF converter stored sparse behind DENSIFY (EXPERIMENTAL_SPARSITY on a pruned Keras model;
float32, and float16 behind DENSIFY -> DEQUANTIZE) is pruned, clustered and quantized like
its dense equivalent (the same Keras model converted without EXPERIMENTAL_SPARSITY).

- The decoder (tflrewrite.sparsity) computes what LiteRT's DENSIFY computes, for the
  converter's tensors and for any traversal order, block map and dimension formats.
- prune, cluster and the weight-only quantizations edit the sparse weights and write them
  back in the input's layout; full int8 leaves no float CONV_2D or FULLY_CONNECTED and a
  smaller file. LiteRT runs every output, with the outputs of the dense equivalent
  rewritten the same way: equal up to float rounding, identical where the arithmetic is
  integer.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from litert import run_all

from tflrewrite import reader, runtime, sparsity, writer
from tflrewrite.cli import main
from tflrewrite.errors import TflRewriteError
from tflrewrite.kernels.prune import prune_count
from tflrewrite.model import (
    DimensionMetadata,
    Model,
    Operator,
    Quantization,
    Sparsity,
    Subgraph,
    Tensor,
)
from tflrewrite.targets import common
from tflrewrite.weights import (
    DENSIFY_BYTES,
    STORED_SPARSE,
    Weight,
    densified_bytes,
    densify_weight,
    find_weights,
    replace_data,
    source_constant,
)

SPARSE = {"float32": "sparse_pointwise", "float16": "sparse_pointwise_f16"}
DENSE = {"float32": "dense_pointwise", "float16": "dense_pointwise_f16"}
CONVERTER_SPARSE = ("sparse_fc", "sparse_fc_int8", *SPARSE.values())
WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED")


def rewrite(path: Path, out: Path, *flags: str) -> dict:
    report = out.with_suffix(".json")
    args = [str(path), "-o", str(out), "--json", str(report), "--no-verify", "--force", *flags]
    assert main(args) == 0
    return json.loads(report.read_text())


def step_records(report: dict, name: str) -> list[dict]:
    (step,) = [s for s in report["passes"] if s["pass"] == name]
    return step["tensors"]


def layer_weights(model: Model) -> list[np.ndarray]:
    """The dense values of every CONV_2D and FULLY_CONNECTED weight, in graph order, as
    stored (float16, int8 or float32): through DEQUANTIZE and DENSIFY to their constant."""
    sg = model.subgraphs[0]
    return [
        source_constant(model, op.inputs[1]).data for op in sg.operators if op.type in WEIGHT_OPS
    ]


def sparse_weights(model: Model) -> dict:
    """Name -> weight for the weights stored sparse behind DENSIFY."""
    weights, _ = find_weights(model)
    return {w.name: w for w in weights if w.densify}


def assert_same_outputs(a: Path, b: Path, exact: bool = False) -> None:
    out_a, out_b = run_all(a.read_bytes()), run_all(b.read_bytes())
    assert out_a.keys() == out_b.keys()
    for key in out_a:
        for x, y in zip(out_a[key], out_b[key]):
            if exact:
                assert np.array_equal(x, y), key
            else:
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the decoder


def test_decoder_matches_litert_densify(tf_models):
    """What LiteRT's DENSIFY writes, read back after a run, for every DENSIFY of the
    converter's sparse models (float32, float16, int8)."""
    checked = 0
    for name in CONVERTER_SPARSE:
        model = reader.read(tf_models[name])
        sg = model.subgraphs[0]
        runner = runtime.load(tf_models[name], keep_tensors=True)
        runner.run([np.ones(d["shape"], d["dtype"]) for d in runner.inputs])
        for op in sg.operators:
            if op.type != "DENSIFY":
                continue
            t = op.inputs[0]
            litert = runner.stored(sg.tensors.index(op.outputs[0]))
            assert litert is not None and litert.dtype == t.np_dtype
            assert np.array_equal(sparsity.decode(t.data, t.sparsity, t.shape), litert)
            checked += 1
    assert checked == 14


def test_round_trip_is_exact(tf_models):
    """Encoding the decoded values in the tensor's own layout gives back the converter's
    bytes: the same stored values, index vectors and index dtypes."""
    for name in CONVERTER_SPARSE:
        for _, _, t in reader.read(tf_models[name]).tensors():
            if t.sparsity is None:
                continue
            values, layout = sparsity.encode(
                sparsity.decode(t.data, t.sparsity, t.shape), t.sparsity
            )
            assert values.tobytes() == t.buffer.data.tobytes()
            assert np.array_equal(layout.traversal_order, t.sparsity.traversal_order)
            for ours, theirs in zip(layout.dim_metadata, t.sparsity.dim_metadata, strict=True):
                assert (ours.format, ours.dense_size) == (theirs.format, theirs.dense_size)
                for a, b in ((ours.segments, theirs.segments), (ours.indices, theirs.indices)):
                    assert (a is None) == (b is None)
                    assert a is None or (a.dtype == b.dtype and np.array_equal(a, b))


def densify_model(values: np.ndarray, layout: Sparsity, shape: tuple, dtype: str) -> Model:
    """A float32 model whose output is what a DENSIFY of the sparse constant writes (through
    a DEQUANTIZE of scale 1 for float16 and int8), plus its input (zeros)."""
    m = Model()
    c = Tensor("c", dtype, shape, buffer=m.add_buffer(values), sparsity=layout)
    d = Tensor("d", dtype, shape, buffer=m.empty_buffer())
    if dtype == "INT8":
        d.quantization = Quantization(np.ones(1, np.float32), np.zeros(1, np.int64))
    x, f, y = (Tensor(n, "FLOAT32", shape, buffer=m.empty_buffer()) for n in ("x", "f", "y"))
    sg = Subgraph("main", tensors=[c, d, x, f, y], inputs=[x], outputs=[y])
    sg.operators = [Operator(m.opcode("DENSIFY"), [c], [d])]
    if dtype == "FLOAT32":
        f = d
    else:
        version = 3 if dtype == "FLOAT16" else 2
        sg.operators.append(Operator(m.opcode("DEQUANTIZE", version), [d], [f]))
    sg.operators.append(Operator(m.opcode("ADD"), [x, f], [y]))
    m.subgraphs = [sg]
    return m


def layouts():
    """(shape, block map, block sizes, traversal order, formats): every order and every
    format of each level for a few shapes, block levels dense."""
    for shape, block_map, blocks in [
        ((6, 8), (), ()),
        ((6, 8), (1,), (4,)),
        ((6, 8), (0, 1), (2, 4)),
        ((4, 6, 8), (2,), (2,)),
        ((4, 6, 8), (0, 2), (2, 4)),
        ((3, 1, 1, 8), (), ()),
    ]:
        n, k = len(shape), len(block_map)
        for head in itertools.permutations(range(n)):
            for tail in itertools.permutations(range(n, n + k)):
                order = head + tail
                for formats in itertools.product(("DENSE", "SPARSE_CSR"), repeat=n + k):
                    if all(formats[order.index(n + i)] == "DENSE" for i in range(k)):
                        yield shape, block_map, blocks, order, formats


def like(shape, block_map, blocks, order, formats) -> Sparsity:
    sizes = list(shape)
    for d, b in zip(block_map, blocks):
        sizes[d] //= b
    sizes += blocks
    dims = [
        DimensionMetadata(f, dense_size=sizes[order[level]] if f == "DENSE" else 0)
        for level, f in enumerate(formats)
    ]
    return Sparsity(np.array(order, np.int32), np.array(block_map, np.int32), dims)


@pytest.mark.parametrize("dtype", ["FLOAT32", "FLOAT16", "INT8"])
def test_any_layout_matches_litert(dtype):
    """Values encoded in any layout LiteRT loads decode, here and in LiteRT's DENSIFY, to
    the values encoded; an all-zero tensor keeps one zero (an empty buffer is no
    constant)."""
    rng = np.random.default_rng(5)
    count = 0
    for shape, block_map, blocks, order, formats in layouts():
        dense = rng.normal(size=shape) * (rng.random(shape) < 0.3)
        if count % 17 == 0:
            dense[:] = 0
        if dtype == "INT8":
            dense = np.clip(np.round(dense * 40), -127, 127)
        dense = dense.astype({"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8}[dtype])
        layout = like(shape, block_map, blocks, order, formats)
        values, encoded = sparsity.encode(dense, layout)
        assert values.size >= 1
        assert np.array_equal(sparsity.decode(values, encoded, shape), dense)
        model = densify_model(values, encoded, shape, dtype)
        out = runtime.load(model).run([np.zeros(shape, np.float32)])[0]
        assert np.array_equal(out, dense.astype(np.float32)), (shape, block_map, order, formats)
        count += 1
    assert count > 300


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: setattr(s, "traversal_order", np.array([1, 1], np.int32)), "traversal order"),
        (
            lambda s: setattr(s.dim_metadata[1], "segments", s.dim_metadata[1].segments[:-1]),
            "segment",
        ),
        (lambda s: s.dim_metadata[1].indices.__setitem__(0, 64), "outside dimension"),
        (lambda s: setattr(s.dim_metadata[0], "dense_size", 9), "dense of size 9"),
        (lambda s: setattr(s, "block_map", np.array([1], np.int32)), "block map"),
        (lambda s: setattr(s, "dim_metadata", s.dim_metadata[:1]), "dimension metadata"),
    ],
    ids=["order", "segments", "index", "dense-size", "block-map", "levels"],
)
def test_bad_parameters_are_refused(tf_models, damage, message):
    """Parameters LiteRT would not load: the decoder says why, and the weight is skipped
    with that reason (never decoded into garbage)."""
    model = reader.read(tf_models["sparse_fc"])
    t = next(t for _, _, t in model.tensors() if t.sparsity is not None)
    t.sparsity.dim_metadata[1].indices = t.sparsity.dim_metadata[1].indices.copy()
    damage(t.sparsity)
    with pytest.raises(sparsity.SparsityError, match=message):
        sparsity.decode(t.data, t.sparsity, t.shape)
    _, skipped = find_weights(model)
    (rec,) = [r for r in skipped if r["tensor"] == t.name]
    assert message in rec["reason"]


def test_sparse_and_dense_twins_hold_the_same_weights(tf_models):
    """The converter wrote the same weights both ways: the decoded sparse ones equal the
    dense ones, float32 and float16 alike."""
    for dtype in SPARSE:
        sparse = layer_weights(reader.read(tf_models[SPARSE[dtype]]))
        dense = layer_weights(reader.read(tf_models[DENSE[dtype]]))
        assert len(sparse) == len(dense) == 5
        for a, b in zip(sparse, dense):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        assert all((w == 0).mean() >= 0.74 for w in sparse[1:])  # the pruned ones


def test_file_bytes_bound_what_the_writer_adds(tf_models):
    """sparsity.file_bytes plus DENSIFY_BYTES bound what a sparse weight behind DENSIFY
    costs against the same weight dense, and by no more than 128 bytes."""
    for name in CONVERTER_SPARSE:
        path = tf_models[name]
        whole = len(writer.to_bytes(reader.read(path)))
        for w in sparse_weights(reader.read(path)).values():
            model = reader.read(path)
            densify_weight(model, sparse_weights(model)[w.name])
            real = whole - len(writer.to_bytes(model))
            sparse, dense = densified_bytes(w, w.tensor.data)
            assert 0 <= (sparse - dense) - real <= 128, (name, w.name)
    assert DENSIFY_BYTES > 0


# --------------------------------------------------------------------------- the passes


SETTINGS = {
    "prune": ["--prune", "0.9"],
    "cluster": ["--cluster", "8", "--granularity", "channel"],
    "int8-weights": ["--quantize", "int8-weights"],
    "float16": ["--quantize", "float16"],
}


@pytest.mark.parametrize("dtype", list(SPARSE))
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_passes_edit_sparse_weights(tf_models, tmp_path, dtype, setting):
    if setting == "float16" and dtype == "float16":
        pytest.skip("the weights are float16 already")
    source = tf_models[SPARSE[dtype]]
    out, twin = tmp_path / "sparse.tflite", tmp_path / "dense.tflite"
    report = rewrite(source, out, *SETTINGS[setting])
    rewrite(tf_models[DENSE[dtype]], twin, *SETTINGS[setting])
    before = sparse_weights(reader.read(source))
    after = sparse_weights(reader.read(out))
    name = "quantize" if setting in ("int8-weights", "float16") else setting
    records = {r["tensor"]: r for r in step_records(report, name)}
    edited = [n for n in before if records[n]["action"] != "skipped"]
    assert len(edited) == 4  # the 1x1 convolutions and the Dense layer
    for n in edited:
        assert n in after, f"{n} is no longer sparse behind DENSIFY"
        w0, w1 = before[n], after[n]
        old, new = w0.tensor.data, w1.tensor.data
        assert np.all(new[old == 0] == 0)  # zeros stay zero
        layout0, layout1 = w0.sparse.sparsity, w1.sparse.sparsity
        assert np.array_equal(layout0.traversal_order, layout1.traversal_order)
        assert [d.format for d in layout0.dim_metadata] == [d.format for d in layout1.dim_metadata]
        if setting == "prune":
            assert records[n]["stored"] == STORED_SPARSE
            rows = w1.channels(new)
            assert all((r == 0).sum() >= prune_count(r.size, 0.9) for r in rows)
            assert w1.sparse.buffer.nbytes < w0.sparse.buffer.nbytes
        if setting == "cluster":
            rows = w1.channels(new)
            assert max(np.unique(r).size for r in rows) <= 8
        if name == "quantize":
            want = "INT8" if setting == "int8-weights" else "FLOAT16"
            assert w1.sparse.dtype == w1.tensor.dtype == want
            assert [dq.outputs[0].dtype for dq in w1.dequantize] == ["FLOAT32"]
            assert records[n]["stored"].startswith(f"{want.lower()} sparse behind DENSIFY")
    if setting != "cluster":  # clustering changes values, not how many are stored
        assert out.stat().st_size < source.stat().st_size
    assert_same_outputs(out, twin)


def test_weight_only_int8_is_dense_where_sparse_is_not_smaller(tf_models, tmp_path):
    """A sparse weight with few zeros left: int8 dense behind DEQUANTIZE, its DENSIFY gone,
    as the dense equivalent (decoded here, written dense) gets it."""
    model = reader.read(tf_models["sparse_pointwise"])
    w = next(w for w in sparse_weights(model).values() if "pw2" in w.name)
    filled = np.where(w.tensor.data == 0, np.float32(1e-3), w.tensor.data)
    replace_data(model, w, filled)
    source, dense = tmp_path / "filled.tflite", tmp_path / "filled_dense.tflite"
    source.write_bytes(writer.to_bytes(model))
    common.densify(model, "the dense equivalent")
    dense.write_bytes(writer.to_bytes(model))
    out, twin = tmp_path / "out.tflite", tmp_path / "twin.tflite"
    report = rewrite(source, out, "--quantize", "int8-weights")
    rewrite(dense, twin, "--quantize", "int8-weights")
    (rec,) = [r for r in step_records(report, "quantize") if r["tensor"] == w.name]
    assert rec["stored"].startswith("int8 dense behind DEQUANTIZE")
    result = reader.read(out)
    assert w.name not in sparse_weights(result)
    assert len(sparse_weights(result)) == 3  # the other three are smaller sparse
    (q,) = [x for x in find_weights(result)[0] if x.name == w.name]
    assert q.tensor.dtype == "INT8" and q.tensor.sparsity is None and len(q.dequantize) == 1
    assert_same_outputs(out, twin)


@pytest.mark.parametrize("dtype", list(SPARSE))
def test_full_int8_folds_densify_and_dequantize(tf_models, tmp_path, dtype):
    """--quantize int8: every CONV_2D and FULLY_CONNECTED runs int8 (none did in the float
    model, none stays float in the dense equivalent's output), and the file is smaller.
    The 1x1 convolutions keep int8 weights sparse behind DENSIFY where that is smaller;
    FULLY_CONNECTED's are dense. LiteRT runs it, with XNNPACK too; the data-free rewrite
    gives exactly the dense equivalent's outputs."""
    source = tf_models[SPARSE[dtype]]
    out = tmp_path / "int8.tflite"
    report = rewrite(source, out, "--quantize", "int8", "--calibration", "random")
    model = reader.read(out)
    sg = model.subgraphs[0]
    producers = {id(t): op for op in sg.operators for t in op.outputs}
    layers = [op for op in sg.operators if op.type in WEIGHT_OPS]
    assert len(layers) == 5
    for op in layers:
        assert op.inputs[0].dtype == op.outputs[0].dtype == "INT8"
        assert op.inputs[1].dtype == "INT8"
        producer = producers.get(id(op.inputs[1]))
        if producer is not None:
            assert producer.type == "DENSIFY" and op.type == "CONV_2D"
            assert producer.inputs[0].dtype == "INT8" and producer.inputs[0].sparsity
    for op in sg.operators:
        producer = producers.get(id(op.inputs[0]))
        assert op.type != "DEQUANTIZE" or producer is None or producer.type != "DENSIFY"
    stored = [r.get("stored", "") for r in step_records(report, "quantize")]
    sparse = sum(s.startswith("int8 sparse behind DENSIFY") for s in stored)
    assert sparse >= 2 and sum(op.type == "DENSIFY" for op in sg.operators) == sparse
    assert sum("XNNPACK" in s for s in stored) == 1  # the FULLY_CONNECTED
    assert out.stat().st_size < source.stat().st_size
    runtime.load(out, xnnpack=True).run([np.zeros((1, 8, 8, 1), np.float32)])

    plain, twin = tmp_path / "plain.tflite", tmp_path / "twin.tflite"
    flags = ["--quantize", "int8", "--calibration", "random", "--method", "magnitude"]
    rewrite(source, plain, *flags)
    rewrite(tf_models[DENSE[dtype]], twin, *flags)
    assert_same_outputs(plain, twin, exact=True)


def test_int8_kernels_read_weights_from_densify(tf_models):
    """Why full int8 keeps convolution weights sparse and FULLY_CONNECTED weights dense:
    LiteRT's int8 CONV_2D and DEPTHWISE_CONV_2D give the same outputs with their weights
    written by DENSIFY, with and without XNNPACK; XNNPACK fails to prepare an int8
    FULLY_CONNECTED so fed (if this starts to pass, FULLY_CONNECTED can join
    quantize_graph.SPARSE_INT8_OPS)."""
    sample = np.random.default_rng(0).integers(-128, 128, (1, 8, 8, 1)).astype(np.int8)
    for op_type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        model = reader.read(tf_models["int8_full"])
        sg = model.subgraphs[0]
        op = [op for op in sg.operators if op.type == op_type][-1]
        w = op.inputs[1]
        values = np.where(np.abs(w.data) < 40, 0, w.data).astype(np.int8)
        replace_data(model, Weight(0, w, op_type, out_axis=0, in_axis=None), values)
        dense = writer.to_bytes(model)
        formats = ["DENSE"] * (len(w.shape) - 1) + ["SPARSE_CSR"]
        layout = like(w.shape, (), (), tuple(range(len(w.shape))), formats)
        stored, encoded = sparsity.encode(values, layout)
        s = Tensor(
            f"{w.name}/sparse", "INT8", w.shape, buffer=model.add_buffer(stored), sparsity=encoded
        )
        d = Tensor(f"{w.name}/dense", "INT8", w.shape, buffer=model.empty_buffer())
        d.quantization = w.quantization
        sg.tensors += [s, d]
        op.inputs[1] = d
        sg.operators.insert(sg.operators.index(op), Operator(model.opcode("DENSIFY"), [s], [d]))
        sparse = writer.to_bytes(model)
        for xnnpack in (False, True):
            if xnnpack and op_type == "FULLY_CONNECTED":
                with pytest.raises(TflRewriteError, match="failed to prepare"):
                    runtime.load(sparse, xnnpack=True)
                continue
            outs = [runtime.load(b, xnnpack=xnnpack).interpreter for b in (dense, sparse)]
            for it in outs:
                it.set_tensor(it.get_input_details()[0]["index"], sample)
                it.invoke()
            a, b = (it.get_tensor(it.get_output_details()[0]["index"]) for it in outs)
            assert np.array_equal(a, b), (op_type, xnnpack)


def test_ops_kept_float_keep_their_densify(tf_models, tmp_path):
    """A convolution left float (--skip) reads its weights through DENSIFY -> DEQUANTIZE as
    in the input, sparse float16, not a float32 copy of them; int8 ops reading sparse
    weights through DENSIFY already keep them."""
    source = tf_models["sparse_pointwise_f16"]
    out, twin = tmp_path / "out.tflite", tmp_path / "twin.tflite"
    flags = ["--quantize", "int8", "--calibration", "random", "--method", "magnitude"]
    rewrite(source, out, *flags, "--skip", "pw3_1")
    rewrite(tf_models["dense_pointwise_f16"], twin, *flags, "--skip", "pw3_1")
    model = reader.read(out)
    kept = [w for w in sparse_weights(model).values() if "pw3" in w.name]
    assert len(kept) == 1 and kept[0].sparse.dtype == "FLOAT16" and kept[0].dequantize
    (conv,) = [
        op
        for op in model.subgraphs[0].operators
        if op.type == "CONV_2D" and "pw3_1" in op.outputs[0].name
    ]
    assert conv.inputs[1].dtype == "FLOAT32"
    assert_same_outputs(out, twin)

    # A model whose int8 FULLY_CONNECTED ops read sparse int8 weights already: the ops
    # stay as they were, and so do their weights, with nothing left over in the file.
    source = tf_models["sparse_fc_int8"]
    out = tmp_path / "int8.tflite"
    rewrite(source, out, *flags)
    stored = {
        t.name: t.buffer.data.tobytes() for _, _, t in reader.read(source).tensors() if t.sparsity
    }
    after = [t for _, _, t in reader.read(out).tensors() if t.sparsity is not None]
    assert len(after) == 3 and all(t.buffer.data.tobytes() == stored[t.name] for t in after)
    assert out.stat().st_size < source.stat().st_size + 1024  # the provenance record
    assert_same_outputs(out, source, exact=True)


def test_equalize_and_data_aware_pruning(tf_models, tmp_path):
    """Equalize rescales sparse weights like dense ones; with calibration data the sparse
    weights are pruned by magnitude, and the record says why."""
    source = tf_models["sparse_pointwise"]
    out, twin = tmp_path / "eq.tflite", tmp_path / "eq_dense.tflite"
    report = rewrite(source, out, "--equalize")
    rewrite(tf_models["dense_pointwise"], twin, "--equalize")
    equalized = [r["tensor"] for r in step_records(report, "equalize") if r["action"] != "skipped"]
    assert set(sparse_weights(reader.read(out))) <= set(equalized)
    assert_same_outputs(out, twin)

    out = tmp_path / "data.tflite"
    report = rewrite(source, out, "--prune", "0.9", "--calibration", "random")
    records = {r["tensor"]: r for r in step_records(report, "prune")}
    for name in sparse_weights(reader.read(source)):
        assert records[name]["action"] == "pruned" and records[name]["method"] == "magnitude"
        assert "stored sparse" in records[name]["why_not_data"]
    run_all(out.read_bytes())


def test_targets_lay_sparse_weights_down(tf_models, tmp_path):
    """tflm densifies (TFLite Micro has no DENSIFY kernel); cpu and xnnpack keep the sparse
    weights as the passes left them."""
    source = tf_models["sparse_pointwise"]
    out = tmp_path / "tflm.tflite"
    report = rewrite(source, out, "--prune", "0.9", "--target", "tflm")
    model = reader.read(out)
    assert not any(op.type == "DENSIFY" for op in model.subgraphs[0].operators)
    assert all(t.sparsity is None for _, _, t in model.tensors())
    densified = [r for r in step_records(report, "target:tflm") if r["action"] == "densified"]
    assert len(densified) == 8  # 4 constants, 4 DENSIFY ops
    generic = tmp_path / "generic.tflite"
    rewrite(source, generic, "--prune", "0.9")
    if runtime.tflm_available():
        x = [np.random.default_rng(0).random((1, 8, 8, 1), np.float32)]
        micro = runtime.load(out, micro=True).run(x)[0]
        np.testing.assert_allclose(micro, runtime.load(generic).run(x)[0], rtol=1e-4, atol=1e-5)
    for target in ("cpu", "xnnpack"):
        out = tmp_path / f"{target}.tflite"
        report = rewrite(source, out, "--prune", "0.9", "--target", target)
        records = step_records(report, f"target:{target}")
        sparse = [r for r in records if "sparse behind DENSIFY" in r.get("reason", "")]
        assert len(sparse) == 4 and all(r["action"] == "skipped" for r in sparse)
        assert len(sparse_weights(reader.read(out))) == 4
