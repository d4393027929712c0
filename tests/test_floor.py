"""The quality floor (`--min-sqnr`): ops raised from full int8 to int16x8 or float until the
worst output keeps the floor on held-out calibration samples; an unreachable floor is one
line and exit 2, with nothing written; the JSON report names the raised ops; the same
inputs give the same bytes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tflrewrite import api, calibrate, reader, runtime, writer
from tflrewrite import floor as floor_module
from tflrewrite.cli import main
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.model import FullyConnectedAttrs, Model, Operator, Subgraph, Tensor
from tflrewrite.passes import quantize, quantize_graph
from tflrewrite.reports import verify

FEATURES = 8
# Each input feature's scale: six decades, as raw sensor readings or tabular features come.
SCALES = np.logspace(-3, 3, FEATURES).astype(np.float32)


def normalized_mlp(path) -> None:
    """Raw features (SCALES) normalized in the model (SUB, MUL), then three seeded
    FULLY_CONNECTED layers: int8 activations per tensor lose the small features at the
    normalization, which float there keeps."""
    rng = np.random.default_rng(0)
    model = Model(description="tflrewrite test: a normalized MLP")
    sg = Subgraph(name="main")
    model.subgraphs.append(sg)

    def tensor(name: str, shape: tuple, data: np.ndarray | None = None) -> Tensor:
        buffer = model.empty_buffer() if data is None else model.add_buffer(data)
        t = Tensor(name, "FLOAT32", shape, buffer=buffer)
        sg.tensors.append(t)
        return t

    x = tensor("features", (1, FEATURES))
    sg.inputs.append(x)
    mean, scale = tensor("mean", (FEATURES,), SCALES), tensor("inv_std", (FEATURES,), 1 / SCALES)
    centred, normal = tensor("centred", (1, FEATURES)), tensor("normalized", (1, FEATURES))
    sg.operators.append(Operator(model.opcode("SUB"), [x, mean], [centred]))
    sg.operators.append(Operator(model.opcode("MUL"), [centred, scale], [normal]))
    x, width = normal, FEATURES
    for i, (out, act) in enumerate([(64, "RELU"), (64, "RELU"), (2, "NONE")]):
        w = (rng.standard_normal((out, width)) / np.sqrt(width)).astype(np.float32)
        b = (rng.standard_normal(out) * 0.1).astype(np.float32)
        y = tensor(f"dense{i}", (1, out))
        attrs = FullyConnectedAttrs(act, "DEFAULT", False, False)
        ins = [x, tensor(f"dense{i}/weights", w.shape, w), tensor(f"dense{i}/bias", b.shape, b)]
        sg.operators.append(Operator(model.opcode("FULLY_CONNECTED"), ins, [y], attrs=attrs))
        x, width = y, out
    sg.outputs.append(x)
    writer.write(model, path)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """The model, an .npz of 60 samples (the first 30 calibrate, the rest are held out),
    and full int8's worst-output SQNR on the held-out ones."""
    tmp = tmp_path_factory.mktemp("floor")
    path = tmp / "mlp.tflite"
    normalized_mlp(path)
    rng = np.random.default_rng(1)
    x = SCALES * (1 + 0.5 * rng.standard_normal((60, 1, FEATURES)).astype(np.float32))
    npz = tmp / "samples.npz"
    np.savez(npz, features=x.astype(np.float32))
    int8 = api.rewrite(path, quantize="int8", calibration=str(npz), calibration_samples=30)
    return {"path": path, "npz": npz, "int8_db": int8.report["verify"]["min_sqnr_db"]}


def floored(mlp, floor: float, **flags):
    return api.rewrite(
        mlp["path"], min_sqnr=floor, calibration=str(mlp["npz"]), calibration_samples=30, **flags
    )


def test_int8_loses_on_the_model(mlp):
    assert mlp["int8_db"] < 20


def test_the_floor_is_met_on_held_out_samples(mlp):
    floor = mlp["int8_db"] + 10
    result = floored(mlp, floor)
    step = result.report["passes"][0]
    assert step["pass"] == "floor"
    assert step["samples"] == 30 and "held out" in step["source"]
    # the report's own verify, on the held-out samples, and the floor's measure agree
    got = result.report["verify"]["min_sqnr_db"]
    assert got >= floor
    assert step["sqnr_db"] == pytest.approx(got, abs=0.01)
    assert step["int8_sqnr_db"] < floor
    raised = {t["tensor"]: t for t in step["tensors"]}
    assert raised and all(t["action"] == "raised" for t in raised.values())
    # the normalization is what int8 loses; no FULLY_CONNECTED needs float
    assert {"centred", "normalized"} <= set(raised)
    assert all(t["precision"] in ("int16x8", "float") for t in raised.values())
    assert step["raised_weight_bytes"] <= 0.25 * step["weight_bytes"]


def test_sensitivity_on_a_few_samples_still_meets_the_floor_on_all(mlp, monkeypatch):
    """Regions measured alone on the first 8 held-out samples, and lowerings screened on
    them: the choice is still measured on all 30 and meets the floor there."""
    monkeypatch.setattr(floor_module, "SENSITIVITY_SAMPLES", 8)
    floor = mlp["int8_db"] + 10
    result = floored(mlp, floor)
    step = result.report["passes"][0]
    assert step["samples"] == 30
    assert result.report["verify"]["min_sqnr_db"] >= floor
    assert {"centred", "normalized"} <= {t["tensor"] for t in step["tensors"]}


def test_the_floor_implies_int8_and_raises_nothing_when_int8_meets_it(mlp):
    result = floored(mlp, mlp["int8_db"] - 5)
    step = result.report["passes"][0]
    assert step["tensors"] == [] and step["raised_ops"] == 0
    assert result.report["recipe"] == "quantize"
    assert any(p["pass"] == "quantize" for p in result.report["passes"])


def test_an_unreachable_floor_exits_2_in_one_line_and_writes_nothing(mlp, tmp_path, capsys):
    int8 = api.rewrite(
        mlp["path"], quantize="int8", calibration=str(mlp["npz"]), calibration_samples=30
    )
    out = tmp_path / "out.tflite"
    args = [str(mlp["path"]), "-o", str(out), "--min-sqnr", "500", "--calibration"]
    args += [str(mlp["npz"]), "--calibration-samples", "30", "--max-bytes", str(len(int8.data))]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--min-sqnr 500" in lines[0]
    assert "best SQNR reachable within --max-bytes" in lines[0]


def test_a_floor_beyond_every_choice_says_the_best_reachable(mlp):
    model = reader.read(mlp["path"])
    data, held_out = calibrate.for_model(str(mlp["path"]), str(mlp["npz"]), 30)
    options = quantize.Options(mode="int8")
    cal = quantize_graph.calibrated(model, data, options)
    every = {i: "FLOAT" for i in range(len(cal.model.subgraphs[0].operators))}
    floats = writer.to_bytes(quantize_graph.rewrite(cal, options, precision=every).model)
    report = verify.compare_files(str(mlp["path"]), floats, samples=held_out.values)
    if math.isinf(report.min_sqnr_db):
        pytest.skip("float ops keep float32 weights here (float16 weights come with mixed)")
    with pytest.raises(TflRewriteError, match=r"best SQNR reachable is \d"):
        floored(mlp, 1000)


def test_a_budget_too_small_for_the_floor_says_the_best_within_it(mlp):
    int8 = api.rewrite(
        mlp["path"], quantize="int8", calibration=str(mlp["npz"]), calibration_samples=30
    )
    with pytest.raises(TflRewriteError, match="within --max-bytes"):
        floored(mlp, 200, max_bytes=len(int8.data) + 16)


def test_json_carries_the_raised_ops(mlp, tmp_path):
    out, report = tmp_path / "floor.tflite", tmp_path / "floor.json"
    floor = mlp["int8_db"] + 10
    args = [str(mlp["path"]), "-o", str(out), "--min-sqnr", f"{floor}"]
    args += ["--calibration", str(mlp["npz"]), "--calibration-samples", "30"]
    assert main([*args, "--json", str(report)]) == 0
    step = json.loads(report.read_text())["passes"][0]
    assert step["pass"] == "floor" and step["min_sqnr_db"] == pytest.approx(floor)
    for t in step["tensors"]:
        assert {"tensor", "op", "precision", "region", "region_bytes", "region_gain_db"} <= set(t)
    assert step["raised_ops"] == len(step["tensors"]) > 0


def test_the_same_inputs_give_the_same_bytes(mlp):
    floor = mlp["int8_db"] + 10
    assert floored(mlp, floor, verify=False).data == floored(mlp, floor, verify=False).data


def test_the_floor_holds_in_litert_on_the_written_file(mlp, tmp_path):
    floor = mlp["int8_db"] + 10
    out = tmp_path / "floor.tflite"
    floored(mlp, floor, output=out, verify=False)
    x = np.load(mlp["npz"])["features"][30:]
    report = verify.compare_files(str(mlp["path"]), str(out), samples=[[v] for v in x])
    assert report.min_sqnr_db >= floor


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"quantize": "int16x8"}, "needs --quantize int8"),
        ({"quantize": "int8-weights"}, "needs --quantize int8"),
        ({"quantize": "int8", "cluster": 16}, "--cluster"),
        ({"max_vela_bytes": 10_000}, "--max-vela-bytes"),
    ],
)
def test_combinations_it_cannot_plan_are_refused(mlp, flags, message):
    with pytest.raises(UsageError, match=message):
        floored(mlp, 30, **flags)


@pytest.mark.skipif(not runtime.tflm_available(), reason="tflite-micro is not installed")
def test_a_floor_for_tflm_meets_it_and_runs_in_tflite_micro(mlp, tmp_path):
    """--target tflm plans within tflite-micro's integer kernels (targets' `unsupported`
    and `tied`), and the chosen mixed model runs there as in LiteRT."""
    floor = mlp["int8_db"] + 10
    out = tmp_path / "tflm.tflite"
    result = floored(mlp, floor, target="tflm", output=out)
    assert result.report["verify"]["min_sqnr_db"] >= floor
    x = np.load(mlp["npz"])["features"][30:40]
    samples = [[v] for v in x]
    lite = verify.compare(runtime.Runner(mlp["path"]), runtime.TflmRunner(out), samples, "t")
    assert lite.min_sqnr_db >= floor


def test_it_needs_real_calibration_samples(mlp):
    with pytest.raises(UsageError, match="--calibration"):
        api.rewrite(mlp["path"], min_sqnr=30)
    with pytest.raises(UsageError, match="not random"):
        api.rewrite(mlp["path"], min_sqnr=30, calibration="random")
