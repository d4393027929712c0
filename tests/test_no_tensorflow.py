"""TensorFlow is an optional extra: importing tflrewrite and running the rewrite, audit and
verify paths must not import it (it costs seconds and gigabytes)."""

from __future__ import annotations

from no_tensorflow import assert_runs_without_tensorflow


def test_cli_paths_do_not_import_tensorflow(example_model, tmp_path):
    out = str(tmp_path / "out.tflite")
    assert_runs_without_tensorflow(
        [str(example_model), "-o", out],
        ["audit", out],
        ["verify", str(example_model), out, "--samples", "2"],
        ["recipes"],
    )
