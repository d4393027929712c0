"""`tflrewrite explore --ray` on a local Ray (the ray extra): the same candidates, the same
figures, the same front and the same model bytes as the same explore run here, with the
model and its calibration and evaluation data travelling to the tasks."""

from __future__ import annotations

import json
import os

import pytest

from tflrewrite.cli import main

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'tflrewrite[ray]')")

# A data-aware candidate among them, so that calibration samples travel too.
ONLY = "int8-weights,float16,int8,prune0.5"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _explore(out, model, *extra):
    samples = model.parent / "digits_samples.npz"
    argv = ["explore", str(model), "--calibration", str(samples), "--calibration-samples", "32"]
    assert main([*argv, "--only", ONLY, "-o", str(out), *extra]) == 0
    return json.loads((out / "explore.json").read_text())


def test_a_ray_address_with_no_cluster_is_one_line(tmp_path, example_model, capsys):
    # first in the file: the local Ray below stays up until the module ends
    if ray.is_initialized():
        pytest.skip("this process has joined a Ray already")
    out = tmp_path / "out"
    argv = ["explore", str(example_model), "-o", str(out), "--only", "float16"]
    assert main([*argv, "--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ray 127.0.0.1:1" in err[0]
    assert not os.path.exists(out)


@pytest.mark.slow
def test_explore_on_ray_gives_the_same_front_and_bytes(local_ray, tmp_path, example_model):
    here = _explore(tmp_path / "here", example_model)
    there = _explore(tmp_path / "ray", example_model, "--ray")
    (a,), (b,) = here["models"], there["models"]
    assert a["front"] == b["front"] and a["front"]
    assert [r["name"] for r in a["candidates"]] == ONLY.split(",")
    for x, y in zip(a["candidates"], b["candidates"]):
        assert x["status"] == y["status"] == "ok", (x, y)
        assert (x["name"], x["measures"], x["outputs"], x["file"]) == (
            y["name"],
            y["measures"],
            y["outputs"],
            y["file"],
        )
        here_bytes = (tmp_path / "here" / x["file"]).read_bytes()
        assert here_bytes == (tmp_path / "ray" / y["file"]).read_bytes()
    assert a["reference"] == b["reference"]
