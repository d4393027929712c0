"""Labels in the data: an .npz's `y`, class labels (accuracy of both models) or regression
targets (MSE of both), in verify's report and --json, in the rewrite's report, and never
taken for a model input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tflrewrite import runtime
from tflrewrite.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "examples" / "digits_samples.npz"
INPUT = "serving_default_image:0"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLES) as npz:
        return npz[INPUT][:60], npz["y"][:60]


@pytest.fixture(scope="module")
def pruned(example_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "pruned.tflite"
    assert main([str(example_model), "-o", str(out), "--prune", "0.6", "--no-verify"]) == 0
    return out


def outputs_of(path: Path, x: np.ndarray) -> np.ndarray:
    runner = runtime.load(str(path))
    return np.stack([runner.run([sample[None]])[0][0] for sample in x])


def verify_json(reference, candidate, npz, capsys) -> dict:
    argv = ["verify", str(reference), str(candidate), "--inputs", str(npz), "--json", "-"]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_class_labels_give_the_accuracy_of_both(example_model, pruned, digits, tmp_path, capsys):
    x, y = digits
    npz = tmp_path / "labelled.npz"
    np.savez(npz, x=x, y=y)  # x under any name: y is not an input, so x is the only one
    doc = verify_json(example_model, pruned, npz, capsys)
    ref, cand = outputs_of(example_model, x), outputs_of(pruned, x)
    out = doc["outputs"][0]
    assert out["reference_accuracy"] == pytest.approx(np.mean(ref.argmax(1) == y))
    assert out["candidate_accuracy"] == pytest.approx(np.mean(cand.argmax(1) == y))
    assert "reference_mse" not in out
    assert doc["labels"] == "y: 60 class labels"
    assert doc["verdict"]["line"].startswith(
        f"accuracy {out['reference_accuracy']:.3f} -> {out['candidate_accuracy']:.3f}"
    )
    _schema_valid(doc)

    assert main(["verify", str(example_model), str(pruned), "--inputs", str(npz)]) == 0
    text = capsys.readouterr().out
    assert "labels y: 60 class labels" in text and "accuracy" in text.splitlines()[3]
    assert text.splitlines()[-1] == f"verdict: {doc['verdict']['line']}"


def test_regression_targets_give_the_mse_of_both(example_model, pruned, digits, tmp_path, capsys):
    x, y = digits
    targets = np.eye(10, dtype=np.float32)[y]  # one-hot: a target per output value
    npz = tmp_path / "targets.npz"
    np.savez(npz, **{INPUT: x, "y": targets})
    doc = verify_json(example_model, pruned, npz, capsys)
    ref, cand = outputs_of(example_model, x), outputs_of(pruned, x)
    out = doc["outputs"][0]
    assert out["reference_mse"] == pytest.approx(np.mean((ref - targets) ** 2), rel=1e-6)
    assert out["candidate_mse"] == pytest.approx(np.mean((cand - targets) ** 2), rel=1e-6)
    assert "reference_accuracy" not in out
    assert doc["labels"] == "y: 60 regression targets"
    assert doc["verdict"]["line"].startswith("MSE ")
    _schema_valid(doc)


def test_without_labels_the_report_is_as_before(example_model, pruned, digits, tmp_path, capsys):
    x, _ = digits
    npz = tmp_path / "plain.npz"
    np.savez(npz, **{INPUT: x})
    doc = verify_json(example_model, pruned, npz, capsys)
    assert "labels" not in doc
    assert set(doc["outputs"][0]) == {
        "name",
        "shape",
        "sqnr_db",
        "max_abs_error",
        "top1_agreement",
        "identical",
    }
    assert doc["verdict"]["line"].startswith("SQNR ")


@pytest.mark.parametrize(
    "y, problem",
    [
        (np.arange(60) % 12, "fits no output"),  # 12 classes for 10 scores
        (np.zeros((60, 3), np.float32), "fits no output"),
        (np.arange(30) % 10, "holds 30 labels for 60 samples"),
        (np.array(["a"] * 60), "integer class labels or float targets"),
    ],
    ids=["too-many-classes", "wrong-target-size", "too-few", "strings"],
)
def test_labels_that_fit_no_output_are_one_line_exit_2(
    example_model, digits, tmp_path, capsys, y, problem
):
    npz = tmp_path / "bad.npz"
    np.savez(npz, **{INPUT: digits[0], "y": y})
    assert main(["verify", str(example_model), str(example_model), "--inputs", str(npz)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(npz) in err[0] and problem in err[0]
    out = tmp_path / "out.tflite"
    argv = [str(example_model), "-o", str(out), "--quantize", "int8", "--calibration", str(npz)]
    assert main(argv) == 2 and not out.exists()
    assert problem in capsys.readouterr().err


def test_the_rewrite_report_scores_the_held_out_samples(example_model, tmp_path, capsys):
    out = tmp_path / "int8.tflite"
    argv = [str(example_model), "-o", str(out), "--calibration", str(SAMPLES), "--json", "-"]
    assert main([*argv, "--calibration-samples", "300"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recipe"] == "full-int8" and report["default"]["model"] == "float"
    verify = report["verify"]
    assert verify["samples"] == 60 and verify["labels"] == "y: 60 class labels"
    x, y = np.load(SAMPLES)[INPUT][300:], np.load(SAMPLES)["y"][300:]
    cand = outputs_of(out, x)
    assert verify["outputs"][0]["candidate_accuracy"] == pytest.approx(np.mean(cand.argmax(1) == y))
    assert report["verdict"]["line"].startswith("accuracy ")


class _Runner:
    """What runtime.array_inputs and array_labels read of a runner."""

    def __init__(self, inputs: list[str], outputs: list[list[int]]):
        self.inputs = [{"name": n, "shape": np.array([1, 2])} for n in inputs]
        self.outputs = [{"name": f"out{i}", "shape": np.array(s)} for i, s in enumerate(outputs)]


def test_y_is_an_input_only_where_the_model_has_an_input_of_that_name():
    x = np.ones((3, 2), np.float32)
    y = np.array([0, 1, 1])
    labelled = _Runner(["x"], [[1, 2]])
    assert len(runtime.array_inputs({"x": x, "y": y}, labelled, None, where="t")) == 3
    assert runtime.array_labels({"x": x, "y": y}, labelled, 3, where="t").tolist() == [0, 1, 1]
    named_y = _Runner(["y"], [[1, 2]])
    samples = runtime.array_inputs({"y": x}, named_y, None, where="t")
    assert np.array_equal(samples[1][0], x[1].reshape(1, 2))
    assert runtime.array_labels({"y": x}, named_y, 3, where="t") is None


def _schema_valid(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra")
    schema = json.loads((ROOT / "schemas" / "verify.schema.json").read_text())
    jsonschema.validate(doc, schema)
