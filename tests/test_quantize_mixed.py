"""Mixed precision in one model: each op in int8, int16x8 or float with float16 weights, as a
per-op map (quantize_graph.rewrite's `precision`) or recipe rules choose; the islands joined
by QUANTIZE (int8 <-> int16 requantization) and DEQUANTIZE/QUANTIZE, run in LiteRT (and
tflite-micro) against the float model."""

from __future__ import annotations

import subprocess
import sys

import corpus
import numpy as np
import pytest

from tflrewrite import calibrate, pipeline, reader, recipes, runtime, writer
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.passes import quantize
from tflrewrite.passes import quantize_graph as qg
from tflrewrite.passes.common import Data, Rule
from tflrewrite.reports import layers, verify
from tflrewrite.targets import tflm

INT8 = quantize.Options(mode="int8")


def _bytes(model, path) -> bytes:
    writer.write(model, path)
    return path.read_bytes()


def _sqnr(reference, candidate, samples) -> float:
    return verify.compare(
        runtime.Runner(reference), runtime.Runner(candidate), samples, "test"
    ).min_sqnr_db


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    """The ops model (tools/make_int8_ops_model.py), its calibration and held-out samples,
    and one Calibrated of it (mode int8, minmax) that every rewrite here starts from."""
    path, npz = corpus.int8_ops_model()
    data, held_out = calibrate.for_model(str(path), str(npz), 100)
    cal = qg.calibrated(reader.read(path), data, INT8)
    return {
        "path": path,
        "data": data,
        "test": held_out.values[:40],
        "cal": cal,
        "tmp": tmp_path_factory.mktemp("mixed"),
    }


def _thirds(cal) -> dict[int, str]:
    n = len(cal.model.subgraphs[0].operators)
    return {i: ("INT8", "INT16", "FLOAT")[i % 3] for i in range(n)}


@pytest.fixture(scope="module")
def thirds(ops):
    """The ops model with its ops in turn int8, int16x8 and float: (path, result)."""
    result = qg.rewrite(ops["cal"], INT8, precision=_thirds(ops["cal"]))
    out = ops["tmp"] / "thirds.tflite"
    writer.write(result.model, out)
    return out, result


def _activation_dtype(op) -> str:
    """The dtype an op computes in: that of its first non-constant float or integer output."""
    return next(t.dtype for t in op.outputs if t is not None)


def test_three_precisions_run_in_litert_and_track_float(ops, thirds):
    out, result = thirds
    assert _sqnr(ops["path"], out, ops["test"]) > 30
    source = ops["cal"].model.subgraphs[0].operators
    wanted = _thirds(ops["cal"])
    kept = {r["tensor"] for r in result.records if r["action"] == "kept float"}
    by_output = {t.name: op for op in result.model.subgraphs[0].operators for t in op.outputs}
    seen = set()
    for i, op in enumerate(source):
        name = op.outputs[0].name
        if name in kept:  # no kernel in that dtype (NEG, PRELU in int16, ...): float
            wanted[i] = "FLOAT"
        forms = [by_output.get(name + suffix) for suffix in ("", "_int8", "_int16")]
        got = next(o for o in forms if o is not None and o.type == op.type)
        dtype = {"INT8": "INT8", "INT16": "INT16", "FLOAT": "FLOAT32"}[wanted[i]]
        assert got.type == op.type and _activation_dtype(got) == dtype, (i, op.type)
        seen.add(dtype)
    assert seen == {"INT8", "INT16", "FLOAT32"}


def test_requantize_ops_join_the_islands_with_their_versions(thirds):
    out, _ = thirds
    sg = reader.read(out).subgraphs[0]
    conversions = {
        (op.type, op.inputs[0].dtype, op.outputs[0].dtype): op.opcode.version
        for op in sg.operators
        if op.type in ("QUANTIZE", "DEQUANTIZE") and not op.inputs[0].is_constant
    }
    assert conversions[("QUANTIZE", "INT8", "INT16")] == 2
    assert conversions[("QUANTIZE", "INT16", "INT8")] == 1
    for (name, a, b), version in conversions.items():
        assert qg.CONVERSIONS[(a, b)] == (name, version)
    for op in sg.operators:
        if op.type != "QUANTIZE" or op.inputs[0].dtype == "FLOAT32":
            continue
        for t in (op.inputs[0], op.outputs[0]):
            if t.dtype == "INT16":
                assert int(t.quantization.zero_point[0]) == 0
    # Every integer op reads activations of its own dtype, with the bias of its dtype.
    for op in sg.operators:
        dtype = _activation_dtype(op)
        if op.type in ("QUANTIZE", "DEQUANTIZE") or dtype not in ("INT8", "INT16"):
            continue
        rule = qg.KERNELS[dtype][op.type]
        for i, t in enumerate(op.inputs):
            if t is None or t.dtype in ("INT32", "INT64") and not t.is_constant:
                continue
            if i == rule.bias:
                assert t.dtype == rule.bias_dtype, (op.type, dtype)
            elif not t.is_constant and t.dtype not in ("INT32", "BOOL"):
                assert t.dtype == dtype, (op.type, t.name)
        assert op.opcode.version >= rule.version


def test_direct_requantization_matches_the_way_through_float(ops, monkeypatch):
    """LiteRT's QUANTIZE requantizes int8 -> int16 and int16 -> int8 itself: outputs within
    two int8 output steps of a model that converts through float instead."""
    cal = ops["cal"]
    n = len(cal.model.subgraphs[0].operators)
    precision = {i: ("INT16" if i % 2 else "INT8") for i in range(n)}
    direct = ops["tmp"] / "direct.tflite"
    writer.write(qg.rewrite(cal, INT8, precision=precision).model, direct)
    monkeypatch.delitem(qg.CONVERSIONS, ("INT8", "INT16"))
    monkeypatch.delitem(qg.CONVERSIONS, ("INT16", "INT8"))
    through = ops["tmp"] / "through.tflite"
    writer.write(qg.rewrite(cal, INT8, precision=precision).model, through)
    types = {
        (op.inputs[0].dtype, op.outputs[0].dtype)
        for op in reader.read(through).subgraphs[0].operators
        if op.type == "QUANTIZE"
    }
    assert ("INT8", "INT16") not in types and ("INT16", "INT8") not in types
    a, b = runtime.Runner(direct), runtime.Runner(through)
    for sample in ops["test"][:10]:
        for x, y in zip(a.run(sample), b.run(sample)):
            assert np.max(np.abs(x - y)) <= 2 / 256 + 1e-6


def test_raising_an_op_to_int16_improves_its_output(ops):
    """The first CONV_2D reads the model's input: raised to int16x8, its input and output
    keep 8 more bits, and its output's SQNR against float rises by more than 6 dB (its
    weights stay int8: 38.7 -> 46.8 dB here)."""
    cal = ops["cal"]
    conv = cal.model.subgraphs[0].operators[0]
    assert conv.type == "CONV_2D"
    name = conv.outputs[0].name
    db = {}
    for dtype in ("INT8", "INT16"):
        out = ops["tmp"] / f"first_{dtype}.tflite"
        writer.write(qg.rewrite(cal, INT8, precision={0: dtype}).model, out)
        errors = layers.layer_errors(ops["path"], out, ops["test"][:8])
        db[dtype] = next(e["sqnr_db"] for e in errors if e["tensor"] == name)
    assert db["INT16"] > db["INT8"] + 6, db


def test_one_precision_everywhere_is_the_mode_byte_for_byte(ops):
    cal, tmp = ops["cal"], ops["tmp"]
    n = len(cal.model.subgraphs[0].operators)
    model = reader.read(ops["path"])
    for mode, dtype in (("int8", "INT8"), ("int16x8", "INT16")):
        options = quantize.Options(mode=mode)
        plain = _bytes(quantize.run(model, options, data=Data(ops["data"])).model, tmp / "a")
        mixed = qg.rewrite(cal, INT8, precision=dict.fromkeys(range(n), dtype)).model
        assert _bytes(mixed, tmp / "b") == plain, mode


def test_mse_calibrates_each_dtype_once_and_matches_the_modes(ops):
    """Method mse weighs rounding by the dtype's levels: int16 ranges are their own,
    computed on first use, and give int16x8's bytes."""
    tmp = ops["tmp"]
    model = reader.read(ops["path"])
    mse8 = quantize.Options(mode="int8", method="mse")
    cal = qg.calibrated(model, ops["data"], mse8)
    assert len(cal._ranges) == 1
    n = len(cal.model.subgraphs[0].operators)
    mixed = qg.rewrite(cal, mse8, precision=dict.fromkeys(range(n), "INT16")).model
    qg.rewrite(cal, mse8, precision={0: "INT16"})
    assert len(cal._ranges) == 2
    mse16 = quantize.Options(mode="int16x8", method="mse")
    plain = quantize.run(model, mse16, data=Data(ops["data"])).model
    assert _bytes(mixed, tmp / "c") == _bytes(plain, tmp / "d")


def test_rewrites_are_deterministic_and_leave_the_calibrated_model_alone(ops, thirds):
    out, _ = thirds
    cal = ops["cal"]
    before = _bytes(cal.model, ops["tmp"] / "cal_before")
    again = qg.rewrite(cal, INT8, precision=_thirds(cal)).model
    assert _bytes(again, ops["tmp"] / "again") == out.read_bytes()
    fresh = qg.calibrated(reader.read(ops["path"]), ops["data"], INT8)
    other = qg.rewrite(fresh, INT8, precision=_thirds(fresh)).model
    assert _bytes(other, ops["tmp"] / "fresh") == out.read_bytes()
    assert _bytes(cal.model, ops["tmp"] / "cal_after") == before


def test_the_records_name_each_raised_op_and_why(thirds):
    _, result = thirds
    raised = [r for r in result.records if r["action"] == "precision"]
    assert {r["precision"] for r in raised} == {"int16x8", "float (float16 weights)"}
    assert all(r["reason"] == "planner" for r in raised)


@pytest.mark.parametrize(
    ("precision", "match"),
    [({0: "INT4"}, "not one of"), ({10_000: "INT8"}, "no op 10000")],
)
def test_a_bad_precision_map_is_refused(ops, precision, match):
    with pytest.raises(UsageError, match=match):
        qg.rewrite(ops["cal"], INT8, precision=precision)


# ------------------------------------------------------------------ recipe rules


def _recipe(tmp_path, mode: str, rules: str) -> recipes.Recipe:
    path = tmp_path / "mixed.toml"
    path.write_text(f'[quantize]\nmode = "{mode}"\n{rules}')
    return recipes.load(str(path))


RULES = """
[[rules]]
match = "fc1_1"
quantize = "float"
[[rules]]
match = "logits_1"
quantize = "int16x8"
"""


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    path = corpus.tf_models()["float32_cnn"]
    data, held_out = calibrate.for_model(str(path), "random", 64)
    return {"path": path, "data": data, "test": held_out.values[:16] if held_out else None}


@pytest.mark.parametrize("method", ["magnitude", "data"])
def test_rules_choose_precision_with_float16_weights_and_refine(cnn, tmp_path, method):
    """A recipe's rules raise the logits to int16x8 and keep the wide dense layer float with
    float16 weights, under --quantize int8; the data-aware refine re-rounds the int8
    and int16x8 layers' weights and leaves the float16 ones alone."""
    done = pipeline.apply(
        reader.read(cnn["path"]),
        _recipe(tmp_path, "int8", RULES),
        data=cnn["data"],
        method=method,
    )
    out = tmp_path / "rules.tflite"
    writer.write(done.model, out)
    samples = cnn["test"] or runtime.random_inputs([runtime.Runner(out)], 8, 1)
    assert _sqnr(cnn["path"], out, samples) > 25
    sg = done.model.subgraphs[0]
    fcs = [op for op in sg.operators if op.type == "FULLY_CONNECTED"]
    assert [_activation_dtype(op) for op in fcs] == ["FLOAT32", "INT16"]
    assert fcs[1].inputs[2].dtype == "INT64"
    weights = fcs[0].inputs[1]
    dq = next(op for op in sg.operators if weights in op.outputs)
    assert dq.type == "DEQUANTIZE" and dq.inputs[0].dtype == "FLOAT16" and dq.opcode.version == 3
    convs = [op for op in sg.operators if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convs and all(_activation_dtype(op) == "INT8" for op in convs)
    tensors = [t for step in done.records for t in step["tensors"]]
    raised = {
        t["op"] + ":" + t["precision"]: t["reason"] for t in tensors if t["action"] == "precision"
    }
    assert raised == {
        "FULLY_CONNECTED:float (float16 weights)": "recipe rule 'fc1_1'",
        "FULLY_CONNECTED:int16x8": "recipe rule 'logits_1'",
    }
    f16 = [t for t in tensors if t.get("mode") == "float16" and t["action"] == "quantized"]
    assert [t["tensor"] for t in f16] == [dq.inputs[0].name]
    if method == "data":
        refined = {
            t["tensor"]
            for step in done.records
            if step["pass"] == "refine"
            for t in step["tensors"]
            if t["action"] == "rounded"
        }
        assert any("logits_1" in name for name in refined)
        assert dq.inputs[0].name not in refined


def test_a_rule_wins_over_the_precision_map(ops):
    rule = Rule("^Tanh$", {"mode": "float16"})
    tanh = next(
        i for i, op in enumerate(ops["cal"].model.subgraphs[0].operators) if op.type == "TANH"
    )
    result = qg.rewrite(ops["cal"], INT8, precision={tanh: "INT16"}, rules=(rule,))
    (rec,) = [r for r in result.records if r["action"] == "precision"]
    assert rec["op"] == "TANH" and rec["reason"] == "recipe rule '^Tanh$'"
    assert rec["precision"].startswith("float")


@pytest.mark.parametrize(
    ("mode", "rule", "match"),
    [
        ("int8-weights", 'quantize = "int16x8"', "needs --quantize int8 or int16x8"),
        ("int8", 'quantize = { mode = "int8-weights" }', "a rule chooses its ops' precision"),
    ],
)
def test_nonsense_rules_are_refused_in_one_line(ops, tmp_path, mode, rule, match):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(f'[quantize]\nmode = "{mode}"\n[[rules]]\nmatch = "x"\n{rule}\n')
    out = tmp_path / "out.tflite"
    proc = subprocess.run(
        [sys.executable, "-m", "tflrewrite", str(ops["path"]), "-o", str(out)]
        + ["--recipe", str(recipe), "--calibration", "random"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert match in proc.stderr and not out.exists()


def test_an_unknown_rule_precision_is_refused(tmp_path):
    with pytest.raises(TflRewriteError, match="a rule's precision is"):
        _recipe(tmp_path, "int8", '[[rules]]\nmatch = "x"\nquantize = "int4"\n')


# ------------------------------------------------------------------ targets


def test_tflm_runs_a_mixed_model_and_keeps_its_int16_gaps_float(ops, tmp_path):
    """Under --quantize int16x8 with rules that lower the convolutions to int8 and raise
    GATHER to int16x8 again (tflite-micro has no int16 GATHER): GATHER stays float with
    tflm's reason, and the int8 and int16 islands run in tflite-micro as in LiteRT."""
    rules = (
        '[[rules]]\nmatch = "GatherV2"\nquantize = "int16x8"\n'
        '[[rules]]\nmatch = "Conv2D|depthwise"\nquantize = "int8"\n'
    )
    done = pipeline.apply(
        reader.read(ops["path"]),
        _recipe(tmp_path, "int16x8", rules),
        target="tflm",
        data=ops["data"],
        method="magnitude",
    )
    tensors = [t for step in done.records for t in step["tensors"]]
    kept = {t["op"]: t["reason"] for t in tensors if t["action"] == "kept float"}
    assert kept["GATHER"] == tflm.INT16_GAPS[("INT16", "GATHER")]
    lowered = {t["op"] for t in tensors if t["action"] == "precision"}
    assert lowered == {"CONV_2D", "DEPTHWISE_CONV_2D"}
    dtypes = {_activation_dtype(op) for op in done.model.subgraphs[0].operators}
    assert {"INT8", "INT16"} <= dtypes
    out = tmp_path / "tflm_mixed.tflite"
    writer.write(done.model, out)
    lite = runtime.Runner(out)
    assert verify.compare(lite, runtime.TflmRunner(out), ops["test"][:5], "t").min_sqnr_db > 60
