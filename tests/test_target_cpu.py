"""--target cpu: block-sparse FULLY_CONNECTED weights that LiteRT's builtin kernels read.

The must-show: MLPerf-Tiny anomaly detection (int8), pruned in 1x16 blocks, is at most half
the bytes of the same model stored dense, and runs bit-identically in LiteRT's builtin
kernels. Float FULLY_CONNECTED weights go to 1x4 blocks and agree to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import corpus
import numpy as np
import pytest
import twins
from hypothesis import given, settings
from hypothesis import strategies as st
from litert import run_all, seeded_value

from tflrewrite import reader, targets, writer
from tflrewrite.cli import main
from tflrewrite.kernels import sparse
from tflrewrite.model import Quantization
from tflrewrite.provenance import read as read_provenance
from tflrewrite.runtime_version import METADATA_NAME, decode_min_runtime_version, version_key
from tflrewrite.targets import cpu

ROOT = Path(__file__).resolve().parent.parent
FC = "FULLY_CONNECTED"


def anomaly_detection() -> Path:
    return next(
        v for k, v in sorted(corpus.mltk_models().items()) if k.startswith("anomaly_detection")
    )


def rewrite(path: Path, out: Path, *flags: str) -> dict:
    report = out.with_suffix(".json")
    assert (
        main([str(path), "-o", str(out), "--json", str(report), "--no-verify", "--force", *flags])
        == 0
    )
    return json.loads(report.read_text())


def target_records(report: dict) -> list[dict]:
    steps = [s for s in report["passes"] if s["pass"] == "target:cpu"]
    assert len(steps) == 1
    return steps[0]["tensors"]


def runtime_version(model) -> str:
    return decode_min_runtime_version(model.metadata_entry(METADATA_NAME).buffer.data.tobytes())


def fc_weights(model) -> list[tuple]:
    return [(op, op.inputs[1]) for sg in model.subgraphs for op in sg.operators if op.type == FC]


def decoded(t) -> np.ndarray:
    """The dense weight a block-sparse tensor stands for, checking its layout on the way."""
    s = t.sparsity
    block = s.dim_metadata[2].dense_size
    assert list(s.traversal_order) == [0, 1, 2] and list(s.block_map) == [1]
    assert [d.format for d in s.dim_metadata] == ["DENSE", "SPARSE_CSR", "DENSE"]
    assert s.dim_metadata[0].dense_size == t.shape[0]
    seg, idx = s.dim_metadata[1].segments, s.dim_metadata[1].indices
    assert seg.dtype == sparse.smallest_index_dtype(int(seg[-1]))
    assert idx.dtype == sparse.smallest_index_dtype(int(idx.max()))
    return sparse.block_csr_decode(seg, idx, t.data, t.shape, block)


# --------------------------------------------------------------------------- the must-show


@pytest.fixture(scope="module")
def anomaly(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anomaly")
    flags = ("--prune", "0.75", "--prune-pattern", "1x16")
    dense, sparse_out = folder / "dense.tflite", folder / "sparse.tflite"
    rewrite(anomaly_detection(), dense, *flags)
    report = rewrite(anomaly_detection(), sparse_out, *flags, "--target", "cpu")
    return dense, sparse_out, report


@pytest.mark.network
def test_anomaly_detection_int8_1x16_is_half_the_bytes_and_bit_identical(anomaly):
    dense, sparse_out, report = anomaly
    dense_bytes, sparse_bytes = dense.stat().st_size, sparse_out.stat().st_size
    print(
        f"anomaly detection: dense {dense_bytes:,} B, sparse {sparse_bytes:,} B, "
        f"ratio {sparse_bytes / dense_bytes:.3f}"
    )
    assert sparse_bytes <= 0.5 * dense_bytes

    # LiteRT's builtin kernels (no XNNPACK): the 1x16 kernel gives exactly the dense results.
    a, b = (
        run_all(dense.read_bytes(), seed=0, samples=8),
        run_all(sparse_out.read_bytes(), seed=0, samples=8),
    )
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            assert np.array_equal(x, y), key

    d, s = reader.read(dense), reader.read(sparse_out)
    by_name = {t.name: t for _, t in fc_weights(d)}
    encoded = 0
    for op, t in fc_weights(s):
        if t.sparsity is None:  # the 128x8 layer: depth 8 is not a multiple of 16
            assert t.shape[1] % 16 and op.opcode.version == 4
            continue
        encoded += 1
        assert op.opcode.version == cpu.SPARSE_FC_VERSION
        assert t.dtype == "INT8" and t.quantization.zero_point.tolist() == [0]
        assert np.array_equal(decoded(t), by_name[t.name].data)
        assert t.data.size % 16 == 0 and t.data.size < by_name[t.name].data.size
    assert encoded == 9
    # Op version 8 runs on runtimes from 2.3.0 (runtime_version.cc); dense needs less.
    assert version_key(runtime_version(d)) < (2, 3, 0) and runtime_version(s) == "2.3.0"
    # The old FC opcode stays only because the dense 128x8 op still uses it.
    assert sorted(oc.version for oc in s.opcodes if oc.name == FC) == [4, 8]

    records = target_records(report)
    assert [r["action"] for r in records].count("encoded") == 9
    skipped = [r for r in records if r["action"] == "skipped"]
    assert len(skipped) == 1 and "not a multiple of the 1x16 block" in skipped[0]["reason"]
    for r in records:
        if r["action"] == "encoded":
            assert r["bytes_after"] < r["bytes_before"] and r["block"] == "1x16"
            assert r["blocks_kept"] <= 0.25 * r["blocks_total"] + r["blocks_total"] / 100
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra")
    schema = json.loads((ROOT / "schemas" / "provenance.schema.json").read_text())
    jsonschema.validate(read_provenance(s), schema)


@pytest.mark.network
def test_size_estimate_bounds_what_the_file_pays(anomaly):
    """encoded_size is an upper bound of the file bytes each encoded weight costs."""
    _, sparse_out, _ = anomaly
    model = reader.read(sparse_out)
    writer.write(model, sparse_out.parent / "base.tflite")
    base = (sparse_out.parent / "base.tflite").stat().st_size
    for _, t in fc_weights(model):
        if t.sparsity is None:
            continue
        s, dense_values = t.sparsity, decoded(t)
        seg, idx = s.dim_metadata[1].segments, s.dim_metadata[1].indices
        estimate = cpu.encoded_size(seg.astype(np.int32), idx.astype(np.int32), t.buffer.nbytes)
        old = t.buffer.data
        t.sparsity, t.buffer.data = None, dense_values.reshape(-1).view(np.uint8)
        writer.write(model, sparse_out.parent / "one_dense.tflite")
        grown = (sparse_out.parent / "one_dense.tflite").stat().st_size - base
        paid = dense_values.nbytes - grown  # what the sparse form of this weight costs
        assert 0 < paid <= estimate < dense_values.nbytes
        t.sparsity, t.buffer.data = s, old


@pytest.mark.network
def test_default_delegate_path(anomaly):
    """With LiteRT's default delegates (XNNPACK) the sparse model runs: XNNPACK takes the
    dense ops but leaves the sparse FCs to the builtin 1x16 kernel. Dense FCs run by
    XNNPACK round differently from the builtin kernel, so dense-with-XNNPACK is not
    bit-identical to sparse; sparse-with-XNNPACK equals sparse-builtin up to the float
    rounding of the QUANTIZE / DEQUANTIZE that XNNPACK runs."""
    from ai_edge_litert.interpreter import Interpreter

    dense, sparse_out, _ = anomaly

    def run(path):
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
        rng, outs = np.random.default_rng(0), []
        for _ in range(8):
            for d in interp.get_input_details():
                interp.set_tensor(d["index"], seeded_value(d, rng))
            interp.invoke()
            outs.append(np.copy(interp.get_tensor(interp.get_output_details()[0]["index"])))
        return np.array(outs)

    builtin = np.array(next(iter(run_all(sparse_out.read_bytes(), seed=0, samples=8).values())))
    with_delegates = run(sparse_out)
    scale = np.abs(builtin).max()
    np.testing.assert_allclose(with_delegates, builtin, rtol=0, atol=1e-5 * scale)
    dense_delegates = run(dense)
    print(
        "default delegates: max |dense - sparse| =",
        float(np.abs(dense_delegates - with_delegates).max()),
        "of",
        float(scale),
    )


# --------------------------------------------------------------------------- float 1x4


def test_float_fc_1x4_runs_and_matches_to_float_rounding(tf_models, tmp_path):
    """Not bit-identical: the dense FC sums through a GEMM, the 1x4 kernel block by block
    (float addition is not associative); every other op is the same code on the same data."""
    path = tf_models["float32_cnn"]
    flags = ("--prune", "0.75", "--prune-pattern", "1x4")
    dense, sparse_out = tmp_path / "dense.tflite", tmp_path / "sparse.tflite"
    rewrite(path, dense, *flags)
    report = rewrite(path, sparse_out, *flags, "--target", "cpu")
    assert sparse_out.stat().st_size < 0.5 * dense.stat().st_size
    d, s = reader.read(dense), reader.read(sparse_out)
    by_name = {t.name: t for _, t in fc_weights(d)}
    for op, t in fc_weights(s):
        assert t.sparsity is not None and t.sparsity.dim_metadata[2].dense_size == 4
        assert np.array_equal(decoded(t), by_name[t.name].data)
        assert op.opcode.version == 8
    assert runtime_version(s) == "2.3.0"
    a, b = run_all(dense.read_bytes(), samples=8), run_all(sparse_out.read_bytes(), samples=8)
    for key in a:
        np.testing.assert_allclose(np.array(b[key]), np.array(a[key]), rtol=1e-5, atol=1e-7)
    reasons = {r["tensor"]: r.get("reason", "") for r in target_records(report)}
    assert any("read by CONV_2D" in why for why in reasons.values())
    assert any("read by DEPTHWISE_CONV_2D" in why for why in reasons.values())


# --------------------------------------------------------------------------- what stays dense


@pytest.mark.network
def test_a_weight_that_would_grow_stays_dense(anomaly):
    """Unpruned int8 weights have few zeros: every 1x16 block holds a nonzero, so the sparse
    form would be the same values plus indices. Nothing changes, and the record says why."""
    model = reader.read(anomaly_detection())
    out = cpu.run(model)
    records = {r["tensor"]: r for r in out.records}
    for _, t in fc_weights(model):
        r = records[t.name]
        assert r["action"] == "skipped"
        if t.shape[1] % 16 == 0:
            assert r["reason"].startswith("not smaller") and r["bytes_after"] >= r["bytes_before"]
    assert writer.to_bytes(out.model) == writer.to_bytes(model)


@pytest.mark.network
def test_per_channel_int8_stays_dense(anomaly):
    model = reader.read(anomaly[0])
    first = fc_weights(model)[0][1]
    rows, scale = first.shape[0], first.quantization.scale[0]
    first.quantization = Quantization(
        scale=np.full(rows, scale, np.float32), zero_point=np.zeros(rows, np.int64), axis=0
    )
    out = cpu.run(model)
    records = {r["tensor"]: r for r in out.records}
    assert "per-channel" in records[first.name]["reason"]
    op, t = fc_weights(out.model)[0]
    assert t.sparsity is None and op.opcode.version == 4
    assert sum(r["action"] == "encoded" for r in out.records) == 8
    assert all(t.sparsity is None for _, t in fc_weights(model))  # the input is not changed


@pytest.mark.network
def test_shared_weight_is_encoded_for_every_fc_reader(anomaly):
    model = reader.read(anomaly[0])
    square = [op for op, t in fc_weights(model) if t.shape == (128, 128)]
    square[1].inputs[1] = square[0].inputs[1]  # two FC ops now read one weight
    out = cpu.run(model)
    shared = square[0].inputs[1].name
    rec = [r for r in out.records if r["tensor"] == shared]
    assert len(rec) == 1 and rec[0]["action"] == "encoded" and rec[0]["op_versions"] == [8, 8]
    run_all(writer.to_bytes(out.model), samples=1)


def test_converter_sparse_models_are_left_alone(tf_models):
    """The converter's random-sparse weights sit behind DENSIFY: the FC reads a tensor made
    at run time, so this target keeps them as they are (sparse behind DENSIFY)."""
    for name in ("sparse_fc", "sparse_fc_int8"):
        model = reader.read(tf_models[name])
        out = cpu.run(model)
        assert {r["action"] for r in out.records} == {"skipped"}
        assert all("stored sparse behind DENSIFY" in r["reason"] for r in out.records)
        assert writer.to_bytes(out.model) == writer.to_bytes(model)


def test_generic_target_changes_nothing(tf_models, tmp_path):
    path = tf_models["float32_cnn"]
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    rewrite(path, a, "--prune", "0.5")
    report = rewrite(path, b, "--prune", "0.5", "--target", "generic")
    assert a.read_bytes() == b.read_bytes()
    assert [s["pass"] for s in report["passes"]] == ["prune"]
    assert targets.load("generic").run is None  # nothing to lay down


# --------------------------------------------------------------------------- the kernel

FAST = settings(max_examples=150, deadline=None)


@st.composite
def block_sparse(draw):
    dtype = draw(st.sampled_from([np.int8, np.float32, np.float16, np.int32]))
    block = draw(st.sampled_from([1, 2, 4, 16]))
    rows, nb = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dense = (rng.standard_normal((rows, nb * block)) * 50).astype(dtype)
    keep = rng.random((rows, nb)) < draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    dense *= np.repeat(keep, block, axis=1).astype(dtype)
    if dense.size and draw(st.booleans()):  # zeros inside kept blocks, -0.0, NaN
        dense.reshape(-1)[rng.integers(0, dense.size, 3)] = 0
        if dtype in (np.float32, np.float16):
            dense.reshape(-1)[rng.integers(0, dense.size)] = -0.0
            dense.reshape(-1)[rng.integers(0, dense.size)] = np.nan
    return dense, block


@FAST
@given(block_sparse())
def test_encode_decode_round_trip_and_twin(case):
    dense, block = case
    seg, idx, val = sparse.block_csr_encode(dense, block)
    tseg, tidx, tval = twins.block_csr_encode_numpy(dense, block)
    assert seg.dtype == tseg.dtype == np.int32 and idx.dtype == tidx.dtype == np.int32
    assert val.dtype == tval.dtype == dense.dtype and val.shape == (idx.size, block)
    assert np.array_equal(seg, tseg) and np.array_equal(idx, tidx)
    assert np.array_equal(val.view(np.uint8), tval.view(np.uint8))  # bit-exact, NaN and -0.0
    back = sparse.block_csr_decode(seg, idx, val, dense.shape, block)
    assert back.dtype == dense.dtype
    assert np.array_equal(back, dense, equal_nan=dense.dtype.kind == "f")
    # Exactly the blocks holding a nonzero (NaN counts, -0.0 does not) are kept.
    blocks = dense.reshape(dense.shape[0], dense.shape[1] // block, block)
    assert idx.size == int(np.count_nonzero(np.any(blocks != 0, axis=2)))
    assert np.all(np.diff(seg) >= 0) and seg[0] == 0 and seg[-1] == idx.size


def test_kernel_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError, match="multiple"):
        sparse.block_csr_encode(np.ones((2, 6), np.int8), 4)
    with pytest.raises(ValueError, match="2-D"):
        sparse.block_csr_encode(np.ones(8, np.int8), 4)
    with pytest.raises(ValueError, match="positive"):
        sparse.block_csr_encode(np.ones((2, 8), np.int8), 0)
    with pytest.raises(ValueError):
        sparse.block_csr_decode(np.array([0, 2]), np.array([0]), np.zeros((1, 4)), (1, 8), 4)


def test_smallest_index_dtype():
    assert sparse.smallest_index_dtype(0) == np.uint8
    assert sparse.smallest_index_dtype(255) == np.uint8
    assert sparse.smallest_index_dtype(256) == np.dtype("<u2")
    assert sparse.smallest_index_dtype(65535) == np.dtype("<u2")
    assert sparse.smallest_index_dtype(65536) == np.dtype("<i4")
    with pytest.raises(ValueError):
        sparse.smallest_index_dtype(2**31)
