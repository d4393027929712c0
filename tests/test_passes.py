"""The compression passes on real models: pruning reaches its target per channel, zeros stay
zeros, clusters stay within K values, quantization keeps both, and LiteRT runs the result.

Properties are checked on the raw tensors of the files, against weight slots found here
independently (the filter input of each conv / FC op, through a DEQUANTIZE if there is one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import all_models
from litert import run_all

from tflrewrite import reader
from tflrewrite.cli import main
from tflrewrite.provenance import read as read_provenance

FILTERS = {
    "CONV_2D": 0,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 0,
    "TRANSPOSE_CONV": 0,
    "BATCH_MATMUL": -1,
}


def weight_slots(model) -> dict[tuple[int, int], int]:
    """(subgraph, tensor index) of each stored weight -> its output-channel axis."""
    out = {}
    for si, sg in enumerate(model.subgraphs):
        index = {id(t): i for i, t in enumerate(sg.tensors)}
        producer = {id(t): op for op in sg.operators for t in op.outputs if t is not None}
        for op in sg.operators:
            if op.type in FILTERS and len(op.inputs) > 1 and op.inputs[1] is not None:
                t = op.inputs[1]
                if not t.is_constant and id(t) in producer and producer[id(t)].type == "DEQUANTIZE":
                    t = producer[id(t)].inputs[0]
                if t.is_constant:
                    out[(si, index[id(t)])] = FILTERS[op.type] % len(t.shape)
    return out


def channels(values: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def int8_mltk_models() -> list[str]:
    names = []
    for name, path in all_models().items():
        if name.startswith("mltk/") and not name.endswith(".float32"):
            model = reader.read(path)
            if any(model.subgraphs[s].tensors[t].dtype == "INT8" for s, t in weight_slots(model)):
                names.append(name)
    return sorted(names)


def rewrite(path, folder, *flags) -> tuple[object, dict]:
    """Run the command into a folder of its own; returns the output path and the report."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out.tflite"
    args = [str(path), "-o", str(out), "--json", str(folder / "report.json"), *flags]
    assert main(args) == 0
    return out, json.loads((folder / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("name", int8_mltk_models())
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_prune_then_cluster_keeps_every_invariant(name, granularity, tmp_path):
    path = all_models()[name]
    out, report = rewrite(
        path,
        tmp_path,
        "--prune",
        "0.5",
        "--cluster",
        "16",
        "--granularity",
        granularity,
        "--no-verify",
    )
    before, after = reader.read(path), reader.read(out)
    skipped = {
        (t["subgraph"], t["tensor"])
        for step in report["passes"]
        for t in step["tensors"]
        if t["action"] == "skipped"
    }
    checked = 0
    for (si, ti), axis in weight_slots(before).items():
        old, new = before.subgraphs[si].tensors[ti], after.subgraphs[si].tensors[ti]
        assert old.name == new.name and old.shape == new.shape and old.dtype == new.dtype
        if (si, old.name) in skipped:
            assert np.array_equal(old.data, new.data)
            continue
        rows_old, rows_new = channels(old.data, axis), channels(new.data, axis)
        assert np.all(rows_new[rows_old == 0] == 0), "an original zero became nonzero"
        zeros = np.count_nonzero(rows_new == 0, axis=1)
        # A channel that already had more zeros than the target keeps them all.
        target = np.maximum(0.5 * rows_new.shape[1], np.count_nonzero(rows_old == 0, axis=1))
        assert np.all(np.abs(zeros - target) <= 1), f"{old.name}: channel zeros {zeros}"
        if granularity == "channel":
            assert max(np.unique(r).size for r in rows_new) <= 16
        else:
            assert np.unique(new.data).size <= 16
        checked += 1
    assert checked > 0
    run_all(out.read_bytes(), samples=1)


def test_identity_keeps_no_provenance_but_passes_do(tf_models, tmp_path):
    out, _ = rewrite(tf_models["int8_full"], tmp_path, "--prune", "0.3", "--no-verify")
    doc = read_provenance(reader.read(out))
    assert doc["tool"] == "tflrewrite" and doc["steps"][0]["pass"] == "prune"
    assert doc["steps"][0]["options"] == {"sparsity": 0.3}
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra")
    schema = Path(__file__).resolve().parent.parent / "schemas" / "provenance.schema.json"
    jsonschema.validate(doc, json.loads(schema.read_text()))
    model = reader.read(out)
    for row in doc["tensors"]:
        entry = dict(zip(doc["tensor_fields"], row, strict=True))
        t = model.subgraphs[entry["subgraph"]].tensors[entry["tensor"]]
        assert t.is_constant and entry["pass"] == "prune"
        assert abs(np.count_nonzero(t.data == 0) / t.data.size - entry["sparsity"]) < 1e-3
    assert main(["audit", str(out)]) == 0


@pytest.mark.parametrize("model", ["float32_cnn", "float16_weights"])
def test_int8_weights_then_cluster_keeps_zeros_and_clusters(model, tf_models, tmp_path):
    path = tf_models[model]
    out, report = rewrite(
        path,
        tmp_path,
        "--prune",
        "0.5",
        "--quantize",
        "int8-weights",
        "--cluster",
        "16",
        "--min-size",
        "0",
    )
    after = reader.read(out)
    pruned = reader.read(rewrite(path, tmp_path / "pruned", "--prune", "0.5", "--no-verify")[0])
    quantized = 0
    for si, ti in weight_slots(after):
        t = after.subgraphs[si].tensors[ti]
        assert t.dtype == "INT8" and np.all(t.quantization.zero_point == 0)
        assert np.unique(t.data).size <= 16
        was = next(x for x in pruned.subgraphs[si].tensors if x.name == t.name and x.is_constant)
        assert np.all(t.data[was.data == 0] == 0), f"{t.name}: a pruned zero came back"
        quantized += 1
    assert quantized >= 3
    dq = [op for op in after.subgraphs[0].operators if op.type == "DEQUANTIZE"]
    assert dq and all(op.opcode.version in (2, 3, 5) for op in dq)
    assert "error" not in report["verify"]  # LiteRT ran it; fidelity is issue 7's business


@pytest.mark.parametrize("model", ["float32_cnn", "multi_signature", "control_flow"])
def test_weight_quantization_is_close_to_float(model, tf_models, tmp_path):
    for mode, min_db in (("int8-weights", 25.0), ("float16", 50.0)):
        out, report = rewrite(
            tf_models[model],
            tmp_path / mode,
            "--quantize",
            mode,
            "--min-size",
            "0",
            "--samples",
            "4",
        )
        if model == "float32_cnn":
            assert report["output_bytes"] < report["input_bytes"]
        sqnr = [o["sqnr_db"] for o in report["verify"]["outputs"]]
        assert all(s is None or s > min_db for s in sqnr), (mode, sqnr)
        before, after = run_all(tf_models[model].read_bytes()), run_all(out.read_bytes())
        assert before.keys() == after.keys()


def test_patterns(tf_models, tmp_path):
    path = tf_models["float32_cnn"]
    out, _ = rewrite(path, tmp_path, "--prune-pattern", "2:4", "--no-verify")
    model = reader.read(out)
    for (si, ti), _axis in weight_slots(model).items():
        t = model.subgraphs[si].tensors[ti]
        if t.shape[-1] % 4 == 0 and t.shape[0] != 1:  # not depthwise
            groups = t.data.reshape(-1, 4)
            assert np.all(np.count_nonzero(groups, axis=1) <= 2)
    out2, report = rewrite(
        path, tmp_path / "blocks", "--prune", "0.75", "--prune-pattern", "1x16", "--no-verify"
    )
    model = reader.read(out2)
    fc = [r for r in report["passes"][0]["tensors"] if r["op"] == "FULLY_CONNECTED"]
    assert fc and all(r["action"] == "pruned" for r in fc)
    for (si, ti), _axis in weight_slots(model).items():
        t = model.subgraphs[si].tensors[ti]
        if t.name in {r["tensor"] for r in fc} and t.shape[1] % 16 == 0:
            blocks = t.data.reshape(t.shape[0], -1, 16)
            nonzero = np.count_nonzero(blocks, axis=2)
            assert np.all(np.count_nonzero(nonzero == 0, axis=1) == round(0.75 * blocks.shape[1]))


def test_recipe_file_rules(tf_models, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "[prune]\nsparsity = 0.5\n[cluster]\nclusters = 8\n"
        '[[rules]]\nmatch = "fc1"\nprune = { sparsity = 0.9 }\ncluster = false\n'
    )
    out, report = rewrite(
        tf_models["float32_cnn"], tmp_path, "--recipe", str(recipe), "--no-verify"
    )
    prune = {t["tensor"]: t for t in report["passes"][0]["tensors"]}
    cluster = {t["tensor"]: t for t in report["passes"][1]["tensors"]}
    fc1 = next(n for n in prune if "fc1" in n)
    assert prune[fc1]["target"] == 0.9 and cluster[fc1]["action"] == "skipped"
    other = next(n for n in prune if "fc1" not in n)
    assert prune[other]["target"] == 0.5 and cluster[other]["after"]["unique"] <= 8


@pytest.mark.parametrize(
    "text",
    [
        "[prune]\nsparsity = 2.0\n",
        "[prune]\nfoo = 1\n",
        "[nope]\n",
        "[[rules]]\nprune = false\n",
        "x = [",
        '[prune]\n[[rules]]\nmatch = "("\nprune = false\n',
    ],
)
def test_bad_recipe_files_are_exit_2(text, tf_models, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    out = tmp_path / "out.tflite"
    assert main([str(tf_models["float32_cnn"]), "-o", str(out), "--recipe", str(recipe)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_same_options_give_the_same_bytes(tf_models, tmp_path):
    flags = ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights", "--no-verify"]
    a, _ = rewrite(tf_models["float32_cnn"], tmp_path, *flags)
    data = a.read_bytes()
    b, _ = rewrite(tf_models["float32_cnn"], tmp_path / "again", *flags)
    assert data == b.read_bytes()


def test_transpose_conv_and_batch_matmul_weights(tf_models, tmp_path):
    path = tf_models["transpose_conv_bmm"]
    out, report = rewrite(
        path,
        tmp_path,
        "--prune",
        "0.5",
        "--quantize",
        "int8-weights",
        "--cluster",
        "4",
        "--granularity",
        "channel",
        "--min-size",
        "0",
    )
    after = reader.read(out)
    slots = weight_slots(after)
    ops = {
        t["op"] for step in report["passes"] for t in step["tensors"] if t["action"] != "skipped"
    }
    assert ops == {"TRANSPOSE_CONV", "BATCH_MATMUL"}
    for (si, ti), axis in slots.items():
        t = after.subgraphs[si].tensors[ti]
        assert t.dtype == "INT8" and t.quantization.axis == axis
        rows = channels(t.data, axis)
        assert max(np.unique(r).size for r in rows) <= 4
        assert np.all(np.abs(np.count_nonzero(rows == 0, axis=1) - rows.shape[1] / 2) <= 1)
    assert "error" not in report["verify"]


def test_weights_holding_nan_are_left_alone(tf_models, tmp_path):
    """A float weight with NaN or infinity (a damaged file can hold one) is named in the
    report and left as it is, not a traceback."""
    from tflrewrite import writer

    model = reader.read(tf_models["float32_cnn"])
    (si, ti), _ = next(iter(weight_slots(model).items()))
    t = model.subgraphs[si].tensors[ti]
    damaged = t.data.copy()
    damaged.flat[0] = np.nan
    t.buffer = model.add_buffer(damaged)
    path = tmp_path / "nan.tflite"
    writer.write(model, path)
    out, report = rewrite(
        path,
        tmp_path / "out",
        "--prune",
        "0.5",
        "--cluster",
        "8",
        "--quantize",
        "int8-weights",
        "--min-size",
        "0",
        "--no-verify",
    )
    for step in report["passes"]:
        entry = next(r for r in step["tensors"] if r["tensor"] == t.name)
        assert entry["action"] == "skipped" and "NaN" in entry["reason"]


@pytest.mark.parametrize("pattern", ["1x0", "1x1", "0:4", "4:4", "2:0", "3x16", "dense"])
def test_bad_patterns_are_exit_2(pattern, tf_models, tmp_path, capsys):
    out = tmp_path / "out.tflite"
    assert main([str(tf_models["float32_cnn"]), "-o", str(out), "--prune-pattern", pattern]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not out.exists()


def test_a_skip_that_is_not_a_regex_is_exit_2(tf_models, tmp_path, capsys):
    out = tmp_path / "out.tflite"
    assert (
        main([str(tf_models["float32_cnn"]), "-o", str(out), "--prune", "0.5", "--skip", "("]) == 2
    )
    assert "regular expression" in capsys.readouterr().err and not out.exists()
