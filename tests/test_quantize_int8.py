"""Full-integer int8 quantization (`--quantize int8 --calibration`): fidelity against the TF
converter's own int8 models, op coverage, the interface dtypes, composition with pruning and
clustering, and refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import corpus
import numpy as np
import pytest
from litert import grid_inputs

from tflrewrite import calibrate, pipeline, reader, recipes, runtime, writer
from tflrewrite.cli import main
from tflrewrite.passes import quantize
from tflrewrite.passes.common import Data
from tflrewrite.passes.quantize_graph import INT8_OPS
from tflrewrite.reports import verify

ROOT = Path(__file__).resolve().parent.parent


def quantized(path: Path, out: Path, calibration: str, samples: int = 100, **options) -> Path:
    """Plain full-integer quantization (the quantize pass alone, no data-aware fitting)."""
    data, _ = calibrate.for_model(str(path), calibration, samples)
    options = quantize.Options(mode="int8", **options)
    result = quantize.run(reader.read(path), options, data=Data(data))
    writer.write(result.model, out)
    return out


def save_samples(path: Path, runner: runtime.Runner, samples: list) -> str:
    columns = {d["name"]: np.stack([s[i] for s in samples]) for i, d in enumerate(runner.inputs)}
    np.savez(path, **columns)
    return str(path)


def min_sqnr(reference: Path, candidate: Path, samples: list) -> float:
    ref, cand = runtime.Runner(reference), runtime.Runner(candidate)
    return verify.compare(ref, cand, samples, "test").min_sqnr_db


# ------------------------------------------------------------------ fidelity


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize(
    "pair", corpus.mltk_float_int8_pairs(), ids=lambda p: p[0].name.split("__")[0]
)
def test_sqnr_matches_the_converters_int8_twin(pair, tmp_path):
    """On the same inputs, ours is within 0.5 dB of the SQNR the TF converter's int8 twin
    reaches against the float model (the issue's bar). Both are calibrated on inputs from
    the same distribution: ours on 100 seeded ones, the twin on the real data it was made
    with, which these random inputs are not."""
    float_path, twin_path = pair
    calibration = grid_inputs(twin_path, 100, seed=0)
    npz = save_samples(tmp_path / "cal.npz", runtime.Runner(float_path), calibration)
    ours = quantized(float_path, tmp_path / "ours.tflite", npz)
    test = grid_inputs(twin_path, 40, seed=1)
    twin_db = min_sqnr(float_path, twin_path, test)
    ours_db = min_sqnr(float_path, ours, test)
    assert ours_db >= twin_db - 0.5, (ours_db, twin_db)


def test_accuracy_matches_converter_ptq_on_digits(tf_models, tmp_path):
    """The corpus's float32_cnn and int8_full come from one Keras model (int8_full: the TF
    converter's full-integer PTQ on the first 100 training digits). Ours, calibrated on the
    same 100 digits, classifies the 360 held-out digits at least as well, within 0.3
    points (the issue's bar)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8, 1)
    x_train, x_test, y_test = x[:100], x[1437:], d.target[1437:]
    float_path = tf_models["float32_cnn"]
    npz = save_samples(tmp_path / "cal.npz", runtime.Runner(float_path), [[s] for s in x_train])
    ours = quantized(float_path, tmp_path / "ours.tflite", npz, io="int8")

    def accuracy(path: Path) -> float:
        runner = runtime.Runner(path)
        return float(np.mean([runner.run([s])[0].argmax() == y for s, y in zip(x_test, y_test)]))

    ours_acc, converter_acc = accuracy(ours), accuracy(tf_models["int8_full"])
    assert ours_acc >= converter_acc - 0.003, (ours_acc, converter_acc)
    assert ours_acc >= accuracy(float_path) - 0.02


# ------------------------------------------------------------------ coverage


@pytest.fixture(scope="module")
def ops_model():
    return corpus.int8_ops_model()


def test_every_op_of_the_ops_model_runs_in_int8(ops_model, tmp_path):
    path, npz = ops_model
    out = quantized(path, tmp_path / "ops8.tflite", str(npz))
    model = reader.read(out)
    sg = model.subgraphs[0]
    float_ops = {op.type for op in sg.operators if op.outputs[0].dtype == "FLOAT32"}
    # NEG has no entry in the int8 table: it stays float between DEQUANTIZE and QUANTIZE
    # (the model's output is float at the interface, after the final DEQUANTIZE).
    assert float_ops == {"NEG", "DEQUANTIZE"}
    int8_types = {op.type for op in sg.operators if op.outputs[0].dtype == "INT8"}
    covered = {op.type for op in reader.read(path).subgraphs[0].operators} - {"NEG"}
    assert covered <= int8_types
    assert covered <= set(INT8_OPS)
    samples = runtime.npz_inputs(npz, runtime.Runner(path), 40)
    assert min_sqnr(path, out, samples) > 25


def test_fixed_and_shared_scales_follow_the_kernels(ops_model, tmp_path):
    path, npz = ops_model
    sg = reader.read(quantized(path, tmp_path / "ops8.tflite", str(npz))).subgraphs[0]

    def params(t):
        return float(t.quantization.scale[0]), int(t.quantization.zero_point[0])

    for op in sg.operators:
        rule = INT8_OPS.get(op.type)
        if rule is None or op.outputs[0].dtype != "INT8":
            continue
        if rule.output is not None:
            assert params(op.outputs[0]) == pytest.approx(rule.output), op.type
        if rule.same_scale:
            tensors = [t for t in op.inputs + op.outputs if t is not None and t.dtype == "INT8"]
            assert len({params(t) for t in tensors}) == 1, op.type
        if rule.weights is not None and op.type != "BATCH_MATMUL":
            w = op.inputs[rule.weights]
            assert w.dtype == "INT8" and np.all(w.quantization.zero_point == 0)
            if rule.bias is not None and len(op.inputs) > rule.bias and op.inputs[rule.bias]:
                b = op.inputs[rule.bias]
                want = params(op.inputs[rule.data])[0] * w.quantization.scale
                assert b.dtype == "INT32"
                np.testing.assert_allclose(b.quantization.scale, want, rtol=1e-6)


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_integer_interface(example_model, io, tmp_path):
    npz = str(ROOT / "examples" / "digits_samples.npz")
    out = quantized(example_model, tmp_path / f"{io}.tflite", npz, samples=100, io=io)
    runner = runtime.Runner(out)
    assert {np.dtype(d["dtype"]).name for d in runner.inputs + runner.outputs} == {io}
    float_io = quantized(example_model, tmp_path / "float.tflite", npz, samples=100)
    samples = runtime.npz_inputs(npz, runtime.Runner(example_model), None)[100:160]
    assert min_sqnr(example_model, out, samples) > min_sqnr(example_model, float_io, samples) - 1


@pytest.mark.parametrize(
    "name", ["float16_weights", "dynamic_range", "control_flow", "multi_signature"]
)
def test_other_float_forms(tf_models, name, tmp_path):
    """float16 weights behind DEQUANTIZE are folded, hybrid int8 weights requantized;
    control-flow bodies and other subgraphs stay float; every result runs in LiteRT."""
    path = tf_models[name]
    out = quantized(path, tmp_path / "out.tflite", "random", samples=20)
    model = reader.read(out)
    assert (
        any(
            op.type in INT8_OPS and op.outputs[0].dtype == "INT8"
            for op in model.subgraphs[0].operators
        )
        or name == "control_flow"
    )
    assert not any(t.dtype == "FLOAT16" for _, _, t in model.tensors())
    ref, cand = runtime.Runner(path), runtime.Runner(out)
    report = verify.compare(ref, cand, runtime.random_inputs([ref, cand], 4, 3), "random")
    assert report.min_sqnr_db > 15


# ------------------------------------------------------------------ with the other passes


@pytest.mark.slow
@pytest.mark.parametrize("method", ["magnitude", "data"])
def test_prune_cluster_int8_keeps_zeros_and_clusters(example_model, method, tmp_path):
    """The compression issue's invariants hold in the full-integer output, on both paths:
    every zero of the prune step is still zero, channels hold half zeros (to one element,
    plus weights that int8 rounding itself sends to zero), at most 16 values per channel."""
    npz = str(ROOT / "examples" / "digits_samples.npz")
    data, held_out = calibrate.for_model(str(example_model), npz, 100)
    model = reader.read(example_model)
    steps = {"prune": {"sparsity": 0.5}, "cluster": {"granularity": "channel"}}
    full = recipes.load("identity").with_options({**steps, "quantize": {"mode": "int8"}})
    pruned = pipeline.apply(model, recipes.load("prune"), data=data, method=method).model
    out = pipeline.apply(model, full, data=data, method=method).model
    zeros = {
        t.name: t.data == 0
        for _, _, t in pruned.tensors()
        if t.is_constant and t.dtype == "FLOAT32" and t.data.ndim >= 2
    }
    checked = 0
    for _, _, t in out.tensors():
        if t.name not in zeros or t.dtype != "INT8":
            continue
        assert np.all(t.data[zeros[t.name]] == 0), t.name
        axis = t.quantization.axis
        rows = np.moveaxis(t.data, axis, 0).reshape(t.data.shape[axis], -1)
        assert max(np.unique(r).size for r in rows) <= 16, t.name
        pruned_rows = np.moveaxis(zeros[t.name], axis, 0).reshape(rows.shape)
        if pruned_rows.mean() > 0:  # (data-aware pruning leaves depthwise kernels alone)
            assert np.all(pruned_rows.sum(1) >= rows.shape[1] // 2 - 1), t.name
            assert np.all(pruned_rows.sum(1) <= -(-rows.shape[1] // 2) + 1), t.name
        checked += 1
    assert checked == 5
    path = tmp_path / "out.tflite"
    writer.write(out, path)
    assert min_sqnr(example_model, path, held_out.values[:50]) > 8


# ------------------------------------------------------------------ the command


def test_report_has_held_out_verify_and_layers(example_model, tmp_path, capsys):
    out, report = tmp_path / "q.tflite", tmp_path / "r.json"
    npz = str(ROOT / "examples" / "digits_samples.npz")
    code = main(
        [
            str(example_model),
            "-o",
            str(out),
            "--quantize",
            "int8",
            "--calibration",
            npz,
            "--calibration-samples",
            "50",
            "--json",
            str(report),
        ]
    )
    assert code == 0
    doc = json.loads(report.read_text())
    assert doc["verify"]["samples"] == 310 and "held out" in doc["verify"]["inputs"]
    assert doc["verify"]["outputs"][0]["top1_agreement"] >= 0.97
    assert len(doc["layers"]) >= 5 and all(x["sqnr_db"] > 20 for x in doc["layers"])
    text = capsys.readouterr().out
    assert "calibrated on 50 samples" in text and "least faithful" in text


@pytest.mark.slow
def test_same_input_same_bytes(example_model, tmp_path):
    npz = str(ROOT / "examples" / "digits_samples.npz")
    outs = []
    for k in range(2):
        out = tmp_path / f"{k}.tflite"
        assert (
            main(
                [
                    str(example_model),
                    "-o",
                    str(out),
                    "--quantize",
                    "int8",
                    "--calibration",
                    npz,
                    "--calibration-method",
                    "mse",
                    "--no-verify",
                ]
            )
            == 0
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_clipping_methods_run(example_model, method, tmp_path):
    npz = str(ROOT / "examples" / "digits_samples.npz")
    out = quantized(example_model, tmp_path / "m.tflite", npz, method=method)
    samples = runtime.npz_inputs(npz, runtime.Runner(example_model), None)[100:]
    assert min_sqnr(example_model, out, samples) > 25


def test_calibration_from_a_folder_of_images(example_model, tmp_path):
    """Digits saved as PNG files calibrate as well as the same digits in an .npz."""
    from PIL import Image

    values = np.load(ROOT / "examples" / "digits_samples.npz")["serving_default_image:0"]
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, image in enumerate(values[:100]):
        pixels = np.round(image[:, :, 0] * 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{i:03d}.png")
    from_images = quantized(example_model, tmp_path / "img.tflite", str(folder))
    from_npz = quantized(
        example_model, tmp_path / "npz.tflite", str(ROOT / "examples" / "digits_samples.npz")
    )
    test = runtime.npz_inputs(
        ROOT / "examples" / "digits_samples.npz", runtime.Runner(example_model), None
    )[100:]
    assert min_sqnr(example_model, from_images, test) > min_sqnr(example_model, from_npz, test) - 1
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tflrewrite",
            str(example_model),
            "-o",
            str(tmp_path / "o.tflite"),
            "--quantize",
            "int8",
            "--calibration",
            str(tmp_path / "empty"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no images" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "int8"], "needs calibration data"),
        (["--quantize", "float16", "--calibration", "x.npz"], "nothing uses it"),
        (["--prune", "0.5", "--method", "data"], "needs --calibration"),
        (["--quantize", "int8-weights", "--io", "int8"], "options of mode int8"),
        (["--quantize", "int8", "--calibration", "random", "--calibration-samples", "0"], "0"),
        (["--quantize", "int8", "--calibration", "missing.npz"], "no such calibration file"),
    ],
)
def test_refusals_are_one_line_and_leave_no_output(example_model, tmp_path, args, message):
    out = tmp_path / "out.tflite"
    proc = subprocess.run(
        [sys.executable, "-m", "tflrewrite", str(example_model), "-o", str(out), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
