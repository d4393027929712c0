"""16x8 full-integer quantization (`--quantize int16x8`): int16 activations with zero point
0, int8 per-channel weights and int64 biases, as LiteRT's 16x8 kernels take them; ops without
an int16 kernel kept float and named; SQNR against full int8's; the TFLM and Ethos-U
targets, which keep float (or refuse) what their runtimes cannot run in int16."""

from __future__ import annotations

import json
import subprocess
import sys

import corpus
import numpy as np
import pytest
from litert import grid_inputs

from tflrewrite import calibrate, pipeline, reader, recipes, runtime, runtime_version, writer
from tflrewrite.cli import main
from tflrewrite.errors import UsageError
from tflrewrite.passes import quantize
from tflrewrite.passes.common import Data
from tflrewrite.passes.quantize_graph import INT16_OPS
from tflrewrite.reports import vela, verify
from tflrewrite.targets import ethos_u, tflm

# The ops of the ops model (tools/make_int8_ops_model.py) that LiteRT has no int16 kernel
# for: its PRELU gives wrong values in int16, the others refuse it.
NO_INT16 = {"PRELU", "HARD_SWISH", "NEG"}
LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def quantized(path, out, data, mode="int16x8", **options):
    result = quantize.run(reader.read(path), quantize.Options(mode=mode, **options), data=data)
    writer.write(result.model, out)
    return out, result.records


def min_sqnr(reference, candidate, samples) -> float:
    return verify.compare(
        runtime.Runner(reference), runtime.Runner(candidate), samples, "test"
    ).min_sqnr_db


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    """The ops model, its calibration samples and held-out ones, and its int16x8 and int8
    forms (the quantize pass alone) with the int16x8 records."""
    path, npz = corpus.int8_ops_model()
    data, held_out = calibrate.for_model(str(path), str(npz), 100)
    tmp = tmp_path_factory.mktemp("int16")
    out16, records = quantized(path, tmp / "ops16.tflite", Data(data))
    out8, _ = quantized(path, tmp / "ops8.tflite", Data(data), mode="int8")
    return {
        "path": path,
        "data": data,
        "test": held_out.values[:40],
        "int16": out16,
        "int8": out8,
        "records": records,
    }


def _params(t) -> tuple[float, int]:
    return float(t.quantization.scale[0]), int(t.quantization.zero_point[0])


# ------------------------------------------------------------------ the rewrite


def test_litert_runs_it_with_int16_activations_and_zero_points_0(ops):
    sg = reader.read(ops["int16"]).subgraphs[0]
    float_ops = {op.type for op in sg.operators if op.outputs[0].dtype == "FLOAT32"}
    assert float_ops == NO_INT16 | {"DEQUANTIZE"}  # (the output is float at the interface)
    int16_types = {op.type for op in sg.operators if op.outputs[0].dtype == "INT16"}
    covered = {op.type for op in reader.read(ops["path"]).subgraphs[0].operators} - NO_INT16
    assert covered <= int16_types and covered <= set(INT16_OPS)
    for op in sg.operators:
        if op.type not in INT16_OPS or op.outputs[0].dtype != "INT16":
            continue
        for t in op.inputs + op.outputs:
            if t is not None and not t.is_constant and t.dtype != "INT32":
                assert t.dtype == "INT16" and _params(t)[1] == 0, (op.type, t.name)
    assert min_sqnr(ops["path"], ops["int16"], ops["test"]) > 35


def test_ops_without_an_int16_kernel_stay_float_and_the_records_name_them(ops):
    kept = {r["op"]: r["reason"] for r in ops["records"] if r["action"] == "kept float"}
    assert set(kept) == NO_INT16
    assert all("int16" in reason for reason in kept.values())


def test_weights_int8_per_channel_and_biases_int64(ops):
    sg = reader.read(ops["int16"]).subgraphs[0]
    checked, biased = set(), set()
    for op in sg.operators:
        rule = INT16_OPS.get(op.type)
        if op.type not in LAYERS or op.outputs[0].dtype != "INT16":
            continue
        w = op.inputs[rule.weights]
        q = w.quantization
        assert w.dtype == "INT8" and np.all(q.zero_point == 0)
        assert q.scale.size == w.shape[rule.weight_axis] and q.axis == rule.weight_axis
        checked.add(op.type)
        b = op.inputs[rule.bias] if len(op.inputs) > rule.bias else None
        if b is None:
            continue
        assert b.dtype == "INT64" and np.all(b.quantization.zero_point == 0)
        want = _params(op.inputs[rule.data])[0] * q.scale
        np.testing.assert_allclose(b.quantization.scale, want, rtol=1e-6)
        biased.add(op.type)
    assert checked == set(LAYERS) and len(biased) >= 2, biased


def test_fixed_shared_scales_options_and_versions(ops):
    source = {op.outputs[0].name: op for op in reader.read(ops["path"]).subgraphs[0].operators}
    sg = reader.read(ops["int16"]).subgraphs[0]
    for op in sg.operators:
        rule = INT16_OPS.get(op.type)
        if rule is None or op.outputs[0].dtype != "INT16":
            continue
        if rule.output is not None:
            assert _params(op.outputs[0]) == (1 / 32768, 0), op.type
        if rule.same_scale:
            tensors = [t for t in op.inputs + op.outputs if t is not None and t.dtype == "INT16"]
            assert len({_params(t) for t in tensors}) == 1, op.type
        if op.type in ("ADD", "SUB"):
            assert op.options.potScaleInt16 is False
        was = source.get(op.outputs[0].name.removesuffix("_int16"))
        assert op.opcode.version >= rule.version
        assert was is None or op.opcode.version >= was.opcode.version


def test_min_runtime_version_follows_the_int16_versions(ops):
    model = reader.read(ops["path"])
    assert model.metadata_entry(runtime_version.METADATA_NAME) is not None
    done = pipeline.apply(
        model, recipes.load("full-int16x8"), data=ops["data"], method="magnitude"
    ).model
    used = {(op.type, op.opcode.version) for op in done.subgraphs[0].operators}
    entry = done.metadata_entry(runtime_version.METADATA_NAME).buffer.data.tobytes()
    declared = runtime_version.decode_min_runtime_version(entry)
    assert declared == runtime_version.min_runtime_version(used)
    assert runtime_version.version_key(declared) >= (2, 3, 0)


def test_more_sqnr_than_int8_on_the_ops_model(ops):
    int16 = min_sqnr(ops["path"], ops["int16"], ops["test"])
    assert int16 > min_sqnr(ops["path"], ops["int8"], ops["test"]) + 6


@pytest.mark.network
@pytest.mark.parametrize("name", ["autoencoder_example", "image_example1"])
def test_10_db_over_int8_on_mltk_models(name, tmp_path):
    """On inputs drawn on the int8 input grid of the model's int8 twin (the real input
    range), calibrated on 100 and tested on 40 others; every layer reads int16."""
    float_path, twin = next(p for p in corpus.mltk_float_int8_pairs() if name in p[0].name)
    data = calibrate.Samples(grid_inputs(twin, 100, 0), "grid")
    test = grid_inputs(twin, 40, 1)
    db = {}
    for recipe in ("full-int8", "full-int16x8"):
        done = pipeline.apply(
            reader.read(float_path), recipes.load(recipe), data=data, method="magnitude"
        )
        writer.write(done.model, tmp_path / f"{recipe}.tflite")
        db[recipe] = min_sqnr(float_path, tmp_path / f"{recipe}.tflite", test)
    assert db["full-int16x8"] >= db["full-int8"] + 10, db
    layers = [op for op in done.model.subgraphs[0].operators if op.type in LAYERS]
    assert layers and all(op.inputs[0].dtype == "INT16" for op in layers)


# ------------------------------------------------------------------ options


def test_int16_interface(ops, tmp_path):
    out, _ = quantized(ops["path"], tmp_path / "io16.tflite", Data(ops["data"]), io="int16")
    runner = runtime.Runner(out)
    assert {np.dtype(d["dtype"]).name for d in runner.inputs + runner.outputs} == {"int16"}
    assert min_sqnr(ops["path"], out, ops["test"]) > (
        min_sqnr(ops["path"], ops["int16"], ops["test"]) - 1
    )


@pytest.mark.parametrize("mode, io", [("int16x8", "int8"), ("int16x8", "uint8"), ("int8", "int16")])
def test_interfaces_each_mode_lacks_are_refused(mode, io):
    with pytest.raises(UsageError, match=f"io of mode {mode}"):
        quantize.Options(mode=mode, io=io)


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_calibration_methods(ops, method, tmp_path):
    out, _ = quantized(ops["path"], tmp_path / "m.tflite", Data(ops["data"]), method=method)
    assert min_sqnr(ops["path"], out, ops["test"]) > 35


@pytest.mark.slow
def test_data_aware_refine_rounds_the_int8_weights(example_model, tmp_path):
    runner = runtime.Runner(example_model)
    data = calibrate.load("random", runner, 64, seed=0)
    done = pipeline.apply(reader.read(example_model), recipes.load("full-int16x8"), data=data)
    refined = [t for s in done.records if s["pass"] == "refine" for t in s["tensors"]]
    assert refined and all(t["action"] == "rounded" for t in refined)
    writer.write(done.model, tmp_path / "refined.tflite")
    test = runtime.random_inputs([runner], 20, 1)
    assert min_sqnr(example_model, tmp_path / "refined.tflite", test) > 35


def test_command_reports_the_ops_kept_float(ops, tmp_path, capsys):
    out = tmp_path / "cli16.tflite"
    args = [str(ops["path"]), "-o", str(out), "--quantize", "int16x8"]
    assert main([*args, "--calibration", "random", "--calibration-samples", "20"]) == 0
    text = capsys.readouterr().out
    assert all(f"kept float: {op}" in text for op in NO_INT16)
    assert recipes.load("full-int16x8").steps[0].options.mode == "int16x8"


# ------------------------------------------------------------------ targets


def _target_records(done) -> dict[str, str]:
    return {
        t["op"]: t["reason"]
        for s in done.records
        for t in s["tensors"]
        if t["action"] == "kept float"
    }


def test_tflm_keeps_float_what_tflite_micro_cannot_run_in_int16(ops, tmp_path):
    done = pipeline.apply(
        reader.read(ops["path"]),
        recipes.load("full-int16x8"),
        target="tflm",
        data=ops["data"],
        method="magnitude",
    )
    kept = _target_records(done)
    for (_, op), reason in tflm.INT16_GAPS.items():
        assert kept[op] == reason
    # Every other op runs in int16 in tflite-micro, as in LiteRT.
    generic = {op.type for op in reader.read(ops["int16"]).subgraphs[0].operators}
    int16 = {op.type for op in done.model.subgraphs[0].operators if op.outputs[0].dtype == "INT16"}
    gaps = {op for _, op in tflm.INT16_GAPS}
    assert gaps <= generic and int16 - {"QUANTIZE"} == set(INT16_OPS) & generic - gaps
    out = tmp_path / "tflm16.tflite"
    writer.write(done.model, out)
    lite = runtime.Runner(out)
    assert verify.compare(lite, runtime.TflmRunner(out), ops["test"][:5], "t").min_sqnr_db > 60


@pytest.mark.parametrize("target", ["tflm", "ethos-u"])
def test_an_int16_model_with_a_gap_is_refused_in_one_line(ops, target, tmp_path):
    out = tmp_path / "out.tflite"
    proc = subprocess.run(
        [sys.executable, "-m", "tflrewrite", str(ops["int16"]), "-o", str(out)]
        + ["--target", target],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    gaps = (tflm if target == "tflm" else ethos_u).INT16_GAPS.values()
    assert f"--target {target}" in proc.stderr
    assert any(reason in proc.stderr for reason in gaps)
    assert not out.exists()


@pytest.fixture(scope="module")
def ops_for_vela(ops, tmp_path_factory):
    """The ops model without the ops LiteRT has no int16 kernel for (a float HARD_SWISH makes
    Vela refuse the whole model): each removed, its input read in its place."""
    model = reader.read(ops["path"])
    sg = model.subgraphs[0]
    for op in [op for op in sg.operators if op.type in NO_INT16]:
        source, out = op.inputs[0], op.outputs[0]
        sg.operators.remove(op)
        for other in sg.operators:
            other.inputs = [source if t is out else t for t in other.inputs]
    path = tmp_path_factory.mktemp("vela") / "ops_for_vela.tflite"
    writer.write(model, path)
    return path


def test_ethos_u_refuses_a_float_hard_swish(ops):
    with pytest.raises(UsageError, match="HARD_SWISH reads float"):
        pipeline.apply(
            reader.read(ops["path"]),
            recipes.load("full-int16x8"),
            target="ethos-u",
            data=ops["data"],
            method="magnitude",
        )


def test_ethos_u_keeps_gather_float(ops, ops_for_vela, tmp_path):
    done = pipeline.apply(
        reader.read(ops_for_vela),
        recipes.load("full-int16x8"),
        target="ethos-u",
        data=ops["data"],
        method="magnitude",
    )
    assert _target_records(done) == {"GATHER": ethos_u.INT16_GAPS[("INT16", "GATHER")]}
    writer.write(done.model, tmp_path / "u16.tflite")
    assert min_sqnr(ops_for_vela, tmp_path / "u16.tflite", ops["test"]) > 35


@pytest.mark.slow
@pytest.mark.skipif(not vela.available(), reason="ethos-u-vela is not installed")
def test_vela_runs_the_int16_layers_on_the_npu(ops, ops_for_vela, tmp_path, capsys):
    done = pipeline.apply(
        reader.read(ops_for_vela),
        recipes.load("full-int16x8"),
        target="ethos-u",
        data=ops["data"],
        method="magnitude",
    )
    out = tmp_path / "u16.tflite"
    writer.write(done.model, out)
    assert main(["audit", str(out), "--vela", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)["vela"]
    assert report["error"] is None and report["npu_operators"] > 4 * report["cpu_operators"]
