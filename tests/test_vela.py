"""`audit --vela`: Arm's Vela compiler on real int8 models, and what clustering does to its
encoded weight size (DESIGN §4: a codebook shared by the whole tensor shrinks it)."""

from __future__ import annotations

import json
import subprocess

import corpus
import pytest
from no_tensorflow import assert_runs_without_tensorflow

from tflrewrite.cli import main
from tflrewrite.reports import vela

needs_vela = pytest.mark.skipif(
    not vela.available(), reason="ethos-u-vela is not installed (pip install -e '.[ethos-u]')"
)

# Small int8 models with FULLY_CONNECTED and convolution weights; a second or so in Vela each.
MODELS = ["anomaly_detection__anomaly_detection", "keyword_spotting__keyword_spotting"]


def _model(name):
    return corpus.mltk_models()[name]


def _audit_vela(path, capsys, *extra):
    assert main(["audit", str(path), "--vela", "--json", "-", *extra]) == 0
    doc = json.loads(capsys.readouterr().out)
    return doc["vela"]


@pytest.mark.network
@needs_vela
@pytest.mark.parametrize("name", MODELS)
def test_vela_reports_encoded_weights_and_npu_operators(name, capsys):
    v = _audit_vela(_model(name), capsys)
    assert v["error"] is None and v["accelerator"] == "ethos-u55-128"
    assert v["npu_encoded_weights_bytes"] > 0 and v["original_weights_bytes"] > 0
    assert v["npu_operators"] > 0 and v["cpu_operators"] >= 0
    assert v["sram_used_bytes"] > 0 and v["cycles_total"] > 0 and v["inference_time_s"] > 0


@pytest.mark.network
@needs_vela
def test_tensor_clustering_shrinks_vela_encoded_weights(tmp_path, capsys):
    src = _model(MODELS[0])
    out = tmp_path / "clustered.tflite"
    assert main([str(src), "--cluster", "16", "-o", str(out), "--no-verify"]) == 0
    capsys.readouterr()
    before = _audit_vela(src, capsys)["npu_encoded_weights_bytes"]
    after = _audit_vela(out, capsys)["npu_encoded_weights_bytes"]
    assert after < 0.8 * before, (before, after)


@pytest.mark.network
@needs_vela
def test_text_report_and_accelerator(capsys):
    path = _model(MODELS[1])
    assert main(["audit", str(path), "--accelerator", "ethos-u85-256"]) == 0
    out = capsys.readouterr().out
    assert "ethos-u85-256" in out and "NPU encoded weights" in out and "on the NPU" in out


@pytest.mark.network
@needs_vela
def test_unknown_accelerator_is_one_line_and_exit_2(capsys):
    assert main(["audit", str(_model(MODELS[1])), "--accelerator", "ethos-u99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ethos-u99" in err[0]


def test_missing_vela_is_one_line_and_exit_2(monkeypatch, capsys, example_model):
    monkeypatch.setattr(vela, "available", lambda: False)
    assert main(["audit", str(example_model), "--vela"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'tflrewrite[ethos-u]'" in err[0]


def test_vela_failure_is_one_line_per_model_and_exit_2(monkeypatch, capsys, example_model):
    monkeypatch.setattr(vela, "require", lambda accelerator: None)

    def failing_vela(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd,
            1,
            stdout="",
            stderr="Warning: No configuration file specified.\nTraceback (most recent call "
            'last):\n  File "x.py", line 1\nRuntimeError: Compilation failed: boom\n',
        )

    monkeypatch.setattr(vela.subprocess, "run", failing_vela)
    assert main(["audit", str(example_model), "--vela", "--json", "-"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and str(example_model) in err[0] and "Compilation failed: boom" in err[0]
    assert "boom" in json.loads(captured.out)["vela"]["error"]


@needs_vela
def test_vela_path_does_not_import_tensorflow(example_model):
    assert_runs_without_tensorflow(["audit", str(example_model), "--vela"])
