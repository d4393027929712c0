"""The Python API (tflrewrite.api): each function on the example model and a corpus model,
models as paths, bytes and Models, Result.save, and the same bytes and reports as the
commands for the same settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tflrewrite
from tflrewrite import reader
from tflrewrite.cli import main
from tflrewrite.errors import TflRewriteError, UsageError

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "examples" / "digits_samples.npz"


@pytest.fixture
def model(tmp_path, example_model) -> Path:
    path = tmp_path / "digits.tflite"
    path.write_bytes(example_model.read_bytes())
    return path


def cli_bytes(model: Path, out: Path, *flags: str) -> tuple[bytes, dict]:
    """The command's output file and its --json report."""
    report = out.with_suffix(".json")
    argv = [str(model), "-o", str(out), "--force", "--json", str(report), *flags]
    assert main(argv) == 0
    return out.read_bytes(), json.loads(report.read_text())


def test_import_is_cheap_and_the_api_loads_on_first_use():
    code = (
        "import sys, tflrewrite; before = set(sys.modules); f = tflrewrite.rewrite; "
        "print(sorted({'numpy', 'tflrewrite.api'} & before), f.__module__, "
        "tflrewrite.rewrite is f, callable(tflrewrite.audit), callable(tflrewrite.verify))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "tflrewrite.api", "True", "True", "True"]


def test_api_names_are_not_shadowed_by_modules():
    """A module of the package with an API function's name would replace the function
    once imported (importlib sets the package's attribute)."""
    for name in tflrewrite._API:
        assert not (ROOT / "tflrewrite" / f"{name}.py").exists(), name
        assert not (ROOT / "tflrewrite" / name).is_dir(), name


def _untimed(passes: list[dict]) -> list[dict]:
    """The steps' records less their seconds (of steps and of layers), which vary from run
    to run."""

    def untimed(record: dict) -> dict:
        return {k: v for k, v in record.items() if k != "seconds"}

    return [untimed(p) | {"tensors": [untimed(t) for t in p["tensors"]]} for p in passes]


@pytest.mark.parametrize(
    "flags",
    [
        [],  # the default: int8 weights for this float model
        ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights"],
        ["--quantize", "int8", "--calibration", str(SAMPLES), "--calibration-samples", "40"],
        ["--recipe", "identity"],
        ["--cluster", "8", "--target", "tflm"],
    ],
    ids=["default", "prune-cluster-int8w", "full-int8", "identity", "tflm"],
)
def test_cli_and_api_give_the_same_bytes_and_report(model, tmp_path, flags):
    wanted, report = cli_bytes(model, tmp_path / "cli.tflite", *flags)
    kwargs = _kwargs(flags)
    result = tflrewrite.rewrite(str(model), **kwargs)
    assert result.data == wanted
    assert result.output is None and result.report["output"] is None
    assert result.report["recipe"] == report["recipe"]
    assert _untimed(result.report["passes"]) == _untimed(report["passes"])
    assert result.report.get("verify", {}).get("outputs") == report.get("verify", {}).get("outputs")
    assert result.verdict == report["verdict"]["line"]
    assert result.text().splitlines()[-1] == f"verdict: {result.verdict}"


def _kwargs(flags: list[str]) -> dict:
    """The API's keyword arguments for the command's flags."""
    kwargs: dict = {}
    convert = {"--prune": float, "--cluster": int, "--calibration-samples": int}
    for flag, value in zip(flags[::2], flags[1::2]):
        kwargs[flag[2:].replace("-", "_")] = convert.get(flag, str)(value)
    return kwargs


def test_bytes_in_bytes_out_and_a_model_in(model):
    by_path = tflrewrite.rewrite(model, prune=0.5, cluster=16, verify=False)
    by_bytes = tflrewrite.rewrite(model.read_bytes(), prune=0.5, cluster=16, verify=False)
    loaded = reader.read(model)
    by_model = tflrewrite.rewrite(loaded, prune=0.5, cluster=16)
    assert by_bytes.data == by_path.data == by_model.data
    assert by_bytes.report["input"] == "<bytes>" and by_model.report["input"] == "<model>"
    assert by_model.report["verify"]["candidate"] == "(in memory)"
    assert by_bytes.report["input_bytes"] == model.stat().st_size
    assert reader.read_bytes(by_bytes.data).subgraphs
    # The Model passed in is left as it was: the same rewrite of it gives the same bytes.
    assert tflrewrite.rewrite(loaded, prune=0.5, cluster=16, verify=False).data == by_path.data


def test_rewrite_on_a_corpus_model_with_calibration_arrays(tf_models, tmp_path):
    path = tf_models["float32_cnn"]
    x = np.load(SAMPLES)["serving_default_image:0"][:48]
    y = np.load(SAMPLES)["y"][:48]
    arrays = {"serving_default_image:0": x, "y": y}
    result = tflrewrite.rewrite(path, quantize="int8", calibration=arrays, calibration_samples=32)
    verify = result.report["verify"]
    assert verify["samples"] == 16 and verify["labels"] == "y: 16 class labels"
    out = verify["outputs"][0]
    assert 0.0 <= out["candidate_accuracy"] <= 1.0
    assert "accuracy" in result.verdict
    # The same samples as an .npz give the same model.
    npz = tmp_path / "cal.npz"
    np.savez(npz, **arrays)
    assert (
        tflrewrite.rewrite(
            path, quantize="int8", calibration=npz, calibration_samples=32, verify=False
        ).data
        == result.data
    )


def test_the_default_refuses_an_int8_model_and_writes_nothing(tf_models, tmp_path):
    out = tmp_path / "out.tflite"
    with pytest.raises(UsageError, match="already full-integer int8") as refused:
        tflrewrite.rewrite(tf_models["int8_full"], output=out)
    assert str(tf_models["int8_full"]) in str(refused.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # Asked for something, it rewrites.
    result = tflrewrite.rewrite(tf_models["int8_full"], cluster=16, verify=False)
    assert result.report["recipe"] == "cluster"


def test_output_is_written_before_the_report_and_never_over_the_input(model, tmp_path):
    out = tmp_path / "out.tflite"
    result = tflrewrite.rewrite(model, output=out, verify=False)
    assert result.output == str(out) and out.read_bytes() == result.data
    assert result.report["output"] == str(out)
    with pytest.raises(TflRewriteError, match="exists"):
        tflrewrite.rewrite(model, output=out)
    with pytest.raises(TflRewriteError, match="input"):
        tflrewrite.rewrite(model, output=model, force=True)


def test_save_is_atomic_and_never_replaces_the_input(model, tmp_path):
    result = tflrewrite.rewrite(model, verify=False)
    out = tmp_path / "saved.tflite"
    out.write_bytes(b"old")
    result.save(out)
    assert out.read_bytes() == result.data
    with pytest.raises(TflRewriteError, match="exists"):
        result.save(out, overwrite=False)
    with pytest.raises(TflRewriteError, match="input"):
        result.save(model)
    assert model.read_bytes() != result.data

    # A write that fails part-way leaves the old file whole and no temporary file.
    written = tflrewrite.rewrite(model, output=tmp_path / "w.tflite", verify=False)
    head = written.data[:100]

    class Half:
        def write_to(self, f):
            f.write(head)
            raise OSError(28, "No space left on device")

    written._image, written._data = Half(), None
    with pytest.raises(TflRewriteError, match="No space left"):
        written.save(out)
    assert out.read_bytes() == result.data
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digits.tflite",
        "saved.tflite",
        "w.tflite",
    ]


def test_audit_matches_the_command(model, tf_models, capsys):
    for path in (model, tf_models["int8_full"]):
        assert main(["audit", str(path), "--json", "-"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert tflrewrite.audit(path).to_json() == doc
        from_bytes = tflrewrite.audit(path.read_bytes()).to_json()
        assert from_bytes["file"] == "<bytes>"
        assert {**from_bytes, "file": doc["file"]} == {**doc, "zip_bytes": from_bytes["zip_bytes"]}


def test_verify_matches_the_command(model, tmp_path, capsys):
    out = tmp_path / "out.tflite"
    assert main([str(model), "-o", str(out), "--prune", "0.5", "--no-verify"]) == 0
    capsys.readouterr()
    argv = ["verify", str(model), str(out), "--inputs", str(SAMPLES), "--samples", "40"]
    assert main([*argv, "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    report = tflrewrite.verify(model, out, inputs=SAMPLES, samples=40)
    assert report.to_json() == doc
    assert report.verdict == doc["verdict"]
    # Bytes and arrays in: the same figures.
    arrays = dict(np.load(SAMPLES))
    again = tflrewrite.verify(model.read_bytes(), out.read_bytes(), inputs=arrays, samples=40)
    assert again.reference == "<bytes>" and again.inputs == "arrays"
    assert [o.sqnr_db for o in again.outputs] == [o.sqnr_db for o in report.outputs]
    assert again.outputs[0].candidate_accuracy == report.outputs[0].candidate_accuracy


def test_verify_refuses_what_the_command_refuses(model, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(TflRewriteError, match="bad.tflite"):
        tflrewrite.verify(model, bad)
    with pytest.raises(TypeError):
        tflrewrite.verify(model, 42)


def test_budget_settings_are_checked_as_the_command_checks_them(model):
    with pytest.raises(UsageError, match="--accelerator is for --max-vela-bytes"):
        tflrewrite.rewrite(model, prune=0.5, accelerator="ethos-u55-128", verify=False)
    with pytest.raises(UsageError, match="one size budget"):
        tflrewrite.rewrite(model, prune=0.5, max_bytes=10**6, max_zip_bytes=10**6)


def test_result_text_is_the_command_report(model, tmp_path, capsys):
    out = tmp_path / "o.tflite"
    assert main([str(model), "-o", str(out), "--cluster", "8"]) == 0
    printed = capsys.readouterr().out
    result = tflrewrite.rewrite(model, cluster=8)

    # The same report, but for the output's name and the zipped size (the name is in the zip),
    # and the phases' seconds, which vary from run to run.
    def same(lines: list[str]) -> list[str]:
        return [line for line in lines if not line.startswith("time:")]

    assert result.text().splitlines()[2] == printed.splitlines()[2]
    assert same(result.text().splitlines()[4:]) == same(printed.splitlines()[4:])
    assert os.fspath(out) in printed.splitlines()[0]
    assert result.text().startswith("(in memory): recipe cluster")
