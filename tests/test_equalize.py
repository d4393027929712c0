"""Cross-layer equalization: the model computes the same, paired ranges end equal, pairs
joined by RELU6 and quantized models are left alone with the reason recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from litert import run_all

from tflrewrite import pipeline, provenance, reader, recipes, writer
from tflrewrite.cli import main
from tflrewrite.passes import equalize
from tflrewrite.weights import find_weights

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "examples" / "digits_samples.npz"


def equalized(path: Path, **options) -> tuple:
    model = reader.read(path)
    result = equalize.run(model, equalize.Options(**options))
    return model, result


def assert_same_outputs(before: bytes | Path, after: bytes) -> None:
    ref, got = run_all(before, samples=4), run_all(after, samples=4)
    assert ref.keys() == got.keys()
    for key in ref:
        a, b = np.stack(ref[key]), np.stack(got[key])
        scale = max(float(np.abs(a).max()), 1e-6)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale, err_msg=key)


def pairs_of(model) -> list:
    usable = {id(w.tensor): w for w in find_weights(model)[0]}
    found = []
    for si, sg in enumerate(model.subgraphs):
        found += equalize._pairs(sg, si, usable, {})
    return found


def test_digits_cnn_computes_the_same_and_every_layer_is_equalized(example_model):
    model, result = equalized(example_model)
    assert_same_outputs(example_model, writer.to_bytes(result.model))
    actions = {r["tensor"]: r["action"] for r in result.records}
    assert set(actions.values()) == {"equalized"} and len(actions) == 5
    # conv -> depthwise -> pointwise -> max pool -> reshape -> FC -> FC: four pairs, the
    # pointwise conv reaching the FC through pooling and a flatten
    pairs = pairs_of(model)
    assert [p.repeat for p in pairs] == [1, 1, 16, 1]
    # the input model is not changed
    fresh = {w.name: w.tensor.data for w in find_weights(reader.read(example_model))[0]}
    for w in find_weights(model)[0]:
        assert np.array_equal(w.tensor.data, fresh[w.name])


def test_paired_ranges_end_equal(example_model):
    _, result = equalized(example_model)
    pairs = pairs_of(result.model)
    assert len(pairs) == 4
    for p in pairs:
        r1 = equalize._out_axis_ranges(p.first, p.first.tensor.data.astype(np.float64))
        r2 = equalize._in_axis_ranges(p.second, p.second.tensor.data.astype(np.float64), p.repeat)
        np.testing.assert_allclose(r1, r2, rtol=1e-3, err_msg=f"{p.first.name} -> {p.second.name}")
    spreads = [r["channel_range_spread"] for r in result.records]
    first = spreads[0]  # the first conv: only its output channels move
    assert first[1] < first[0]


def test_one_sweep_leaves_ranges_unequal_many_settle(example_model):
    _, once = equalized(example_model, iterations=1)
    _, settled = equalized(example_model)
    assert settled.records[0]["sweeps"] > 1

    def worst(result):
        out = 0.0
        for p in pairs_of(result.model):
            r1 = equalize._out_axis_ranges(p.first, p.first.tensor.data.astype(np.float64))
            r2 = equalize._in_axis_ranges(p.second, p.second.tensor.data, p.repeat)
            out = max(out, float(np.abs(np.log(r1 / r2)).max()))
        return out

    assert worst(settled) < 1e-3 < worst(once)


def test_relu6_pairs_are_left_alone_with_the_reason(tf_models):
    path = tf_models["sparse_convnet"]  # every conv has a fused RELU6
    model, result = equalized(path)
    assert result.records and all(r["action"] == "skipped" for r in result.records)
    assert any(
        "RELU6" in r["reason"] and "not scale-equivariant" in r["reason"] for r in result.records
    )
    before = {w.name: w.tensor.data for w in find_weights(model)[0]}
    for w in find_weights(result.model)[0]:
        assert np.array_equal(w.tensor.data, before[w.name])


def test_quantized_models_are_left_alone(tf_models):
    path = tf_models["int8_full"]
    _, result = equalized(path)
    assert result.records and all(r["action"] == "skipped" for r in result.records)
    assert all("quantized (INT8)" in r["reason"] for r in result.records)
    assert writer.to_bytes(result.model) == writer.to_bytes(reader.read(path))


def test_float16_weights_behind_dequantize_are_left_alone(tf_models):
    _, result = equalized(tf_models["float16_weights"])
    assert all(r["action"] == "skipped" for r in result.records)
    assert any("DEQUANTIZE" in r["reason"] for r in result.records)


def test_rules_and_skip_leave_pairs_alone(example_model):
    _, result = equalized(example_model, skip="dwconv")
    actions = {r["tensor"].split("/")[1]: r for r in result.records}
    assert actions["dwconv_1"]["action"] == "skipped"
    assert actions["conv_1"]["action"] == "skipped"  # its only partner is skipped
    assert "--skip 'dwconv'" in actions["conv_1"]["reason"]
    assert actions["fc_1"]["action"] == "equalized"


@pytest.mark.network
def test_mltk_float_models_compute_the_same(mltk_pairs):
    for float_path, _ in mltk_pairs:
        _, result = equalized(float_path)
        assert any(r["action"] == "equalized" for r in result.records), float_path.name
        assert_same_outputs(float_path, writer.to_bytes(result.model))


@pytest.fixture(scope="module")
def mltk_pairs():
    import corpus

    pairs = corpus.mltk_float_int8_pairs()
    # one model per kind keeps this to seconds: dense chains, conv + pooling, depthwise
    wanted = ("autoencoder_example", "image_example1", "keyword_spotting_on_off_v3")
    return [p for p in pairs if p[0].name.split("__")[0] in wanted]


def test_recipe_runs_it_first_and_records_it(example_model, tmp_path):
    recipe = recipes.load("cluster").with_options({"equalize": {"iterations": 5}})
    assert [s.name for s in recipe.steps] == ["equalize", "cluster"]
    result = pipeline.apply(reader.read(example_model), recipe)
    doc = json.loads(result.model.metadata_entry(provenance.METADATA_NAME).buffer.data.tobytes())
    assert doc["steps"][0] == {"pass": "equalize", "options": {"iterations": 5}, "rules": 0}
    assert {row[0] for row in doc["tensors"]} == {"equalize", "cluster"}
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra")
    jsonschema.validate(doc, json.loads((ROOT / "schemas" / "provenance.schema.json").read_text()))


@pytest.mark.slow
def test_cli_flag(example_model, tmp_path, capsys):
    out = tmp_path / "out.tflite"
    assert main([str(example_model), "-o", str(out), "--equalize", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["pass"] for s in doc["steps"]] == ["equalize"]
    assert doc["verify"]["outputs"][0]["sqnr_db"] > 100  # float rounding only
    args = ["--equalize", "--quantize", "int8", "--calibration", str(SAMPLES)]
    # the data-aware fit aims at the equalized layers (aimed at the input's, it fell from
    # 42.3 to 21.2 dB here)
    assert main([str(example_model), "-o", str(out), "--force", *args, "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verify"]["outputs"][0]["sqnr_db"] > 35
    capsys.readouterr()
    # alone, it does not use calibration data
    assert (
        main(
            [
                str(example_model),
                "-o",
                str(out),
                "--force",
                "--equalize",
                "--calibration",
                str(SAMPLES),
            ]
        )
        == 2
    )
    assert "nothing uses it" in capsys.readouterr().err
