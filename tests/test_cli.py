"""The command line: exit codes, outputs that never replace inputs, budgets, JSON, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tflrewrite import reader, writer
from tflrewrite.cli import main
from tflrewrite.cli.common import size
from tflrewrite.cli.rewrite import default_output


@pytest.fixture
def model(tmp_path, example_model):
    path = tmp_path / "digits.tflite"
    path.write_bytes(example_model.read_bytes())
    return path


def test_default_output_lies_beside_the_input(model, capsys):
    assert main([str(model)]) == 0
    out = model.parent / "digits.tflrewrite.tflite"
    assert out.exists() and default_output(str(model)) == str(out)
    assert str(out) in capsys.readouterr().out


def test_existing_output_is_kept_without_force(model, tmp_path, capsys):
    out = tmp_path / "out.tflite"
    out.write_bytes(b"keep me")
    assert main([str(model), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and str(out) in err[0]
    assert out.read_bytes() == b"keep me"
    assert main([str(model), "-o", str(out), "--force"]) == 0
    assert reader.read(out).subgraphs


def test_input_is_never_overwritten_even_with_force(model, capsys):
    before = model.read_bytes()
    assert main([str(model), "-o", str(model), "--force"]) == 2
    assert "input" in capsys.readouterr().err
    assert model.read_bytes() == before


def test_no_temporary_files_are_left_behind(model, tmp_path):
    assert main([str(model), "-o", str(tmp_path / "out.tflite")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.tflite", "out.tflite"]


def test_rewrite_json_report(model, tmp_path, capsys):
    out = tmp_path / "out.tflite"
    assert main([str(model), "-o", str(out), "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["output_bytes"] == os.path.getsize(out)
    assert doc["input_bytes"] == os.path.getsize(model)
    # No recipe and no flags: the tree's default for a float model, int8 weights.
    assert doc["recipe"] == "int8-weights"
    assert doc["default"]["model"] == "float" and doc["default"]["recipe"] == "int8-weights"
    assert doc["verdict"]["grade"] == "near-lossless"


def test_unknown_recipe_is_a_usage_error(model, capsys):
    assert main([str(model), "--recipe", "no-such-recipe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "identity" in err[0]


def test_recipes_lists_identity(capsys):
    assert main(["recipes"]) == 0
    assert "identity" in capsys.readouterr().out


def test_bad_flag_is_one_line_and_exit_2(model, capsys):
    assert main([str(model), "--no-such-flag"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text,value",
    [
        ("200000", 200_000),
        ("200k", 200_000),
        ("64KiB", 65_536),
        ("1.5M", 1_500_000),
        ("2MiB", 2_097_152),
    ],
)
def test_sizes_take_suffixes(text, value):
    assert size(text) == value


def test_audit_budgets_exit_1_when_over(model, capsys):
    size = os.path.getsize(model)
    assert main(["audit", str(model), "--max-bytes", str(size)]) == 0
    assert main(["audit", str(model), "--max-bytes", str(size - 1)]) == 1
    assert "over the budget" in capsys.readouterr().err
    assert main(["audit", str(model), "--max-zip-bytes", "1k"]) == 1


def test_audit_several_models_and_compare(model, tf_models, capsys):
    other = tf_models["int8_full"]
    assert main(["audit", str(model), str(other), "--json", "-"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in docs] == [str(model), str(other)]
    for d in docs:
        assert {"file", "bytes", "zip_bytes", "tensors"} <= set(d)
        assert {
            "subgraph",
            "index",
            "name",
            "dtype",
            "shape",
            "bytes",
            "sparsity",
            "unique",
        } <= set(d["tensors"][0])
    assert main(["audit", str(model), str(other), "--compare"]) == 0
    text = capsys.readouterr().out
    assert "before" in text and "after/before" in text
    assert main(["audit", str(model), "--compare"]) == 2


def test_verify_identical_models(model, tmp_path, capsys):
    out = tmp_path / "out.tflite"
    assert main([str(model), "-o", str(out), "--recipe", "identity"]) == 0
    capsys.readouterr()
    assert main(["verify", str(model), str(out), "--json", "-", "--min-sqnr", "200"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["samples"] == 16 and doc["min_sqnr_db"] is None  # identical: infinite SQNR
    assert all(o["identical"] and o["top1_agreement"] == 1.0 for o in doc["outputs"])


def test_verify_fails_below_min_sqnr(model, tmp_path, capsys):
    """Perturb the big FC weights and check that SQNR drops and --min-sqnr trips."""
    m = reader.read(model)
    weight = max(
        (t for _, _, t in m.tensors() if t.dtype == "FLOAT32" and t.is_constant),
        key=lambda t: t.buffer.nbytes,
    )
    noisy = weight.data + np.random.default_rng(0).normal(0, 0.05, weight.data.shape)
    weight.buffer = m.add_buffer(noisy.astype(np.float32))
    out = tmp_path / "noisy.tflite"
    writer.write(m, out)
    assert main(["verify", str(model), str(out), "--json", "-"]) == 0
    sqnr = json.loads(capsys.readouterr().out)["min_sqnr_db"]
    assert sqnr is not None and 0 < sqnr < 200
    assert main(["verify", str(model), str(out), "--min-sqnr", str(sqnr + 1)]) == 1
    assert "below" in capsys.readouterr().err


def test_verify_with_npz_inputs(model, example_model, capsys):
    samples = example_model.parent / "digits_samples.npz"
    assert (
        main(
            [
                "verify",
                str(model),
                str(model),
                "--inputs",
                str(samples),
                "--samples",
                "5",
                "--json",
                "-",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["samples"] == 5


def test_verify_npz_without_the_input_is_exit_2(model, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.zeros((2, 8, 8, 1), np.float32), b=np.zeros(2))
    assert main(["verify", str(model), str(model), "--inputs", str(bad)]) == 2
    assert "no array for model input" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["audit"], ["verify"], ["recipes"]])
def test_help_teaches(command):
    result = subprocess.run(
        [sys.executable, "-m", "tflrewrite", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage:" in result.stdout
    if not command:
        assert "audit" in result.stdout and "exit codes" in result.stdout


def test_python_dash_m_and_console_script_agree(model):
    result = subprocess.run(
        [sys.executable, "-m", "tflrewrite", "audit", str(model)], capture_output=True, text=True
    )
    assert result.returncode == 0 and "bytes" in result.stdout


def test_json_reports_follow_their_schemas(model, tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra")
    root = Path(__file__).resolve().parent.parent / "schemas"
    assert main(["audit", str(model), "--json", "-"]) == 0
    audit_doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(audit_doc, json.loads((root / "audit.schema.json").read_text()))
    assert main(["verify", str(model), str(model), "--samples", "2", "--json", "-"]) == 0
    verify_doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(verify_doc, json.loads((root / "verify.schema.json").read_text()))


@pytest.mark.parametrize(
    "flags, calibrated, method, refusal",
    [
        (["--quantize", "int8", "--rounding", "adaround"], False, None, "--rounding"),
        (["--quantize", "int8", "--rounding", "adaround"], True, "magnitude", "--rounding"),
        (["--prune", "0.5"], False, "data", "--method data needs"),
        (["--quantize", "float16"], True, None, "--calibration: nothing uses it"),
    ],
)
def test_settings_that_do_not_go_together_are_refused_by_the_api_too(
    flags, calibrated, method, refusal, model, tmp_path, capsys
):
    from tflrewrite import recipes
    from tflrewrite.cli.rewrite import parser, recipe_from_args
    from tflrewrite.errors import UsageError

    recipe = recipe_from_args(parser().parse_args([str(model), *flags]))
    with pytest.raises(UsageError, match=refusal) as refused:
        recipes.check(recipe, calibrated=calibrated, method=method)
    argv = [str(model), "-o", str(tmp_path / "x.tflite"), *flags]
    if calibrated:
        argv += ["--calibration", "random"]
    if method:
        argv += ["--method", method]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"tflrewrite: {refused.value}\n"
