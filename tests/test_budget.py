"""Size budgets: the per-layer choice against brute force, and the rewrite command meeting
--max-zip-bytes / --max-bytes on a real model with less error than the uniform recipe."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import corpus
import numpy as np
import pytest

from tflrewrite import budget, calibrate, cli, runtime
from tflrewrite.reports import vela, verify
from tflrewrite.reports.audit import zip_size

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "digits_cnn.tflite"
SAMPLES = ROOT / "examples" / "digits_samples.npz"
RECIPE = ["--prune", "0.5", "--cluster", "16", "--quantize", "int8"]


def layers(seed: int, count: int = 3, settings: int = 4) -> list:
    """Random layers whose error falls as their size grows (as compression settings do)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        sizes = np.sort(rng.integers(10, 200, settings))
        errors = np.sort(rng.uniform(0, 1, settings))[::-1]
        out.append(budget._Layer(None, [(0.0, 0)] * settings, sizes, errors))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_choice_is_within_one_step_of_the_best_and_fits(seed):
    """The greedy hull walk is the knapsack's LP answer rounded to a whole step: it fits
    whenever anything fits, and loses at most one layer's largest step against brute
    force."""
    ls = layers(seed)
    sizes = [layer.sizes for layer in ls]
    least = sum(int(s.min()) for s in sizes)
    most = sum(int(s.max()) for s in sizes)
    for limit in np.linspace(least, most, 7).astype(int):
        chosen = budget._choose(ls, int(limit))
        total = sum(int(layer.sizes[c]) for layer, c in zip(ls, chosen))
        error = sum(layer.errors[c] for layer, c in zip(ls, chosen))
        assert total <= limit
        best = min(
            sum(layer.errors[c] for layer, c in zip(ls, combo))
            for combo in itertools.product(*(range(len(layer.sizes)) for layer in ls))
            if sum(int(layer.sizes[c]) for layer, c in zip(ls, combo)) <= limit
        )
        step = max(float(np.ptp(layer.errors)) for layer in ls)
        assert best - 1e-12 <= error <= best + step + 1e-12
    assert budget._choose(ls, most) == tuple(int(np.argmin(layer.errors)) for layer in ls)


def test_nothing_fits_gives_the_smallest():
    ls = layers(0)
    chosen = budget._choose(ls, 0)
    for layer, c in zip(ls, chosen):
        assert layer.sizes[c] == layer.sizes.min()


def rewrite(tmp_path: Path, name: str, *extra: str) -> tuple[Path, dict]:
    out = tmp_path / f"{name}.tflite"
    report = tmp_path / f"{name}.json"
    args = [str(MODEL), "-o", str(out), *RECIPE, "--calibration", str(SAMPLES)]
    assert cli.main([*args, "--json", str(report), *extra]) == 0
    return out, json.loads(report.read_text())


@pytest.fixture(scope="module")
def uniform(tmp_path_factory):
    return rewrite(tmp_path_factory.mktemp("uniform"), "uniform")


def held_out_sqnr(path: Path) -> float:
    _, held_out = calibrate.for_model(str(MODEL), str(SAMPLES), 100)
    ref, got = runtime.Runner(MODEL), runtime.Runner(path)
    return verify.compare(ref, got, held_out.values, "held out").min_sqnr_db


@pytest.mark.slow
def test_zip_budget_is_met_with_less_error_than_the_uniform_recipe(uniform, tmp_path):
    """At the uniform recipe's own zipped size, the per-layer choice is as small, with no
    more estimated error than the recipe as given, and no less faithful on held-out
    digits."""
    uniform_path, _ = uniform
    limit = zip_size(uniform_path.read_bytes(), "budget.tflite")
    out, report = rewrite(tmp_path, "budget", "--max-zip-bytes", str(limit))
    assert zip_size(out.read_bytes(), out.name) <= limit
    assert report["output_zip_bytes"] <= limit
    step = report["passes"][0]
    assert step["pass"] == "budget" and step["got"] <= limit and step["runs"] >= 1
    assert step["uniform_got"] <= limit  # the recipe as given ran, and fits
    assert step["estimated_error"]["kept"] <= step["estimated_error"]["uniform"]
    planned = {t["tensor"] for t in step["tensors"]}
    fitted = {t["tensor"] for p in report["passes"][1:] for t in p["tensors"]}
    assert planned and planned <= fitted
    assert all(t["reason"] for t in step["tensors"])
    assert held_out_sqnr(out) >= held_out_sqnr(uniform_path)
    again = tmp_path / "again.tflite"
    args = [str(MODEL), "-o", str(again), *RECIPE, "--calibration", str(SAMPLES)]
    assert cli.main([*args, "--max-zip-bytes", str(limit), "--no-verify"]) == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        ["--prune", "0.7", "--cluster", "16", "--quantize", "int8"],  # 0.7: off the grid
        ["--cluster", "12", "--granularity", "channel", "--quantize", "int8-weights"],
    ],
)
def test_a_budget_just_above_the_uniform_size_is_never_refused(tmp_path, recipe):
    """A budget the recipe as given meets is met, even with settings the planner's grid
    lacks, and with no more estimated error than the recipe's own: the report says which
    run was kept and what each layer got."""
    args = [str(MODEL), *recipe, "--calibration", str(SAMPLES), "--no-verify"]
    given = tmp_path / "given.tflite"
    assert cli.main([args[0], "-o", str(given), *args[1:]]) == 0
    limit = zip_size(given.read_bytes(), "budget.tflite") + 1
    out, report = tmp_path / "budget.tflite", tmp_path / "budget.json"
    rc = cli.main(
        [args[0], "-o", str(out), *args[1:], "--max-zip-bytes", str(limit), "--json", str(report)]
    )
    assert rc == 0 and zip_size(out.read_bytes(), out.name) <= limit
    step = json.loads(report.read_text())["passes"][0]
    assert step["estimated_error"]["kept"] <= step["estimated_error"]["uniform"]
    assert step["kept"] in ("planned", "uniform")
    if step["kept"] == "uniform":  # the recipe as given, byte for byte
        assert out.read_bytes() == given.read_bytes()
        assert all(t["reason"] == "the recipe's own setting" for t in step["tensors"])


@pytest.mark.slow
@pytest.mark.network
def test_a_budget_alone_is_met_on_a_corpus_model(tmp_path):
    """With no --prune or --cluster the planner chooses both per layer, from its default
    candidates, and leaves the quantization as given: the output fits, the layers are
    pruned or clustered as planned, and the report's recipe shows the steps it added."""
    source = corpus.mltk_models()["keyword_spotting__keyword_spotting"]
    limit = int(zip_size(source.read_bytes(), "budget.tflite") * 0.75)
    out, report = tmp_path / "alone.tflite", tmp_path / "alone.json"
    args = [str(source), "-o", str(out), "--max-zip-bytes", str(limit), "--no-verify"]
    assert cli.main([*args, "--json", str(report)]) == 0
    assert zip_size(out.read_bytes(), out.name) <= limit
    doc = json.loads(report.read_text())
    assert [s["pass"] for s in doc["steps"]] == ["prune", "cluster"]
    step = doc["passes"][0]
    assert step["pass"] == "budget" and step["got"] <= limit and step["kept"] == "planned"
    changed = {t["tensor"] for p in doc["passes"][1:] for t in p["tensors"] if "after" in t}
    planned = {t["tensor"] for t in step["tensors"] if t["sparsity"] or t["clusters"]}
    assert planned and planned == changed
    # weights the planner does not plan are left as they were
    untouched = [t for p in doc["passes"][1:] for t in p["tensors"] if t["tensor"] not in planned]
    assert all("after" not in t for t in untouched)


@pytest.mark.slow
def test_a_budget_nothing_meets_is_one_line_and_no_output(tmp_path, capsys):
    out = tmp_path / "never.tflite"
    args = [str(MODEL), "-o", str(out), *RECIPE, "--calibration", str(SAMPLES)]
    assert cli.main([*args, "--max-zip-bytes", "1000", "--no-verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-zip-bytes 1,000" in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_bytes_budget_with_dense_storage_says_what_shrinks(tmp_path, capsys):
    out = tmp_path / "dense.tflite"
    args = [str(MODEL), "-o", str(out), "--cluster", "16", "--max-bytes", "10000"]
    assert cli.main([*args, "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "zipped bytes, not bytes" in err and not out.exists()


@pytest.mark.slow
def test_bytes_budget_with_block_sparse_fully_connected(tmp_path, capsys):
    """With --target cpu a FULLY_CONNECTED weight pruned in blocks is stored block-sparse:
    the planner prices it so, prunes it to fit, and the file meets the budget."""
    out, report = tmp_path / "cpu.tflite", tmp_path / "cpu.json"
    args = ["--prune", "0.5", "--prune-pattern", "1x4", "--target", "cpu", "--no-verify"]
    limit = 150_000  # the dense file is 275,060 bytes; its FC weight 262,144 of them
    rc = cli.main(
        [str(MODEL), "-o", str(out), *args, "--json", str(report), "--max-bytes", str(limit)]
    )
    assert rc == 0
    assert out.stat().st_size <= limit
    doc = json.loads(report.read_text())
    plan = {t["tensor"]: t for t in doc["passes"][0]["tensors"]}
    fc = plan["sequential_1/fc_1/MatMul"]
    kept = 128 * 512 * 4 * (1 - fc["sparsity"])  # the float32 values of the kept blocks
    assert fc["sparsity"] > 0 and kept < fc["estimated_bytes"] < 1.1 * kept  # and indices
    encoded = [t for t in doc["passes"][-1]["tensors"] if t["action"] == "encoded"]
    assert [t["tensor"] for t in encoded] == ["sequential_1/fc_1/MatMul"]

    never = tmp_path / "never.tflite"
    assert cli.main([str(MODEL), "-o", str(never), *args, "--max-bytes", "10000"]) == 2
    assert "pruned in blocks" in capsys.readouterr().err and not never.exists()


def test_a_budget_alone_with_calibration_quantizes_as_given(tmp_path):
    """`--quantize int8 --calibration` with a budget alone: the calibration serves the
    quantization and the planner; the output is full int8 and fits."""
    out, report = tmp_path / "int8.tflite", tmp_path / "int8.json"
    args = [str(MODEL), "-o", str(out), "--quantize", "int8", "--calibration", str(SAMPLES)]
    assert cli.main([*args, "--max-zip-bytes", "30000", "--no-verify", "--json", str(report)]) == 0
    assert zip_size(out.read_bytes(), out.name) <= 30000
    doc = json.loads(report.read_text())
    assert [s["pass"] for s in doc["steps"]] == ["prune", "quantize", "cluster"]
    assert doc["steps"][1]["options"]["mode"] == "int8"


def test_a_budget_on_float16_weights_plans_every_layer(tmp_path):
    """Float16 weights (behind DEQUANTIZE) under `--quantize int8 --calibration` and a
    budget: the planner plans the layers as quantize will make them (it refused such a
    model: "no layer whose settings it could choose"), and the output fits."""
    f16 = tmp_path / "f16.tflite"
    assert cli.main([str(MODEL), "-o", str(f16), "--quantize", "float16", "--no-verify"]) == 0
    out, report = tmp_path / "int8.tflite", tmp_path / "int8.json"
    args = [str(f16), "-o", str(out), "--quantize", "int8", "--calibration", str(SAMPLES)]
    assert cli.main([*args, "--max-zip-bytes", "30000", "--no-verify", "--json", str(report)]) == 0
    assert zip_size(out.read_bytes(), out.name) <= 30000
    step = json.loads(report.read_text())["passes"][0]
    assert step["pass"] == "budget" and len(step["tensors"]) == 5


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.skipif(not vela.available(), reason="ethos-u-vela is not installed (.[ethos-u])")
def test_vela_budget_is_met_by_vela_itself(tmp_path):
    """Vela's own report is the measure: its encoded weights fit the budget."""
    source = corpus.mltk_models()["autoencoder_example__autoencoder_example"]
    uniform = tmp_path / "uniform.tflite"
    args = ["--prune", "0.5", "--cluster", "16", "--target", "ethos-u", "--no-verify"]
    assert cli.main([str(source), "-o", str(uniform), *args]) == 0
    size = vela.compile_report(uniform).npu_encoded_weights_bytes
    out = tmp_path / "budget.tflite"
    limit = int(size * 0.9)
    assert cli.main([str(source), "-o", str(out), *args, "--max-vela-bytes", str(limit)]) == 0
    assert vela.compile_report(out).npu_encoded_weights_bytes <= limit


@pytest.mark.slow
@pytest.mark.network
def test_bytes_budget_with_lookup_tables(tmp_path):
    """With --target tflm the file shrinks with the clusters: its bytes meet the budget,
    and a per-tensor-quantized weight is not planned per-channel codebooks (TFLM would
    need one table of their union)."""
    source = corpus.mltk_models()["anomaly_detection__anomaly_detection"]
    out, report = tmp_path / "lut.tflite", tmp_path / "lut.json"
    args = ["--cluster", "16", "--target", "tflm", "--no-verify", "--json", str(report)]
    assert cli.main([str(source), "-o", str(out), *args, "--max-bytes", "120000"]) == 0
    assert out.stat().st_size <= 120_000
    doc = json.loads(report.read_text())
    plan = doc["passes"][0]
    assert plan["pass"] == "budget" and plan["got"] == out.stat().st_size
    encoded = {t["tensor"] for t in doc["passes"][-1]["tensors"] if t["action"] != "skipped"}
    assert {t["tensor"] for t in plan["tensors"] if t["clusters"]} <= encoded
