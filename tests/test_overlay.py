"""Model Explorer overlays (--overlay): files that model_explorer.node_data_builder's classes
take whole, whose keys name ops of the rewritten model in graphs that Model Explorer's TFLite
adapter names the same way. The package and its adapter are heavy (flask, IPython, a 128 MB
native wheel) and not among the test extra's dependencies: the tests that need them skip
where they are missing; the rest check the same facts from the format's definition."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from tflrewrite import reader, writer
from tflrewrite.cli import main
from tflrewrite.reports import overlay
from tflrewrite.reports.nodes import Sqnr, per_op

FLAGS = ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights"]


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory, example_model):
    """(output model path, {measure: overlay document}) of the example rewritten with FLAGS."""
    folder = tmp_path_factory.mktemp("overlay")
    out = folder / "out.tflite"
    samples = example_model.parent / "digits_samples.npz"
    argv = [str(example_model), "-o", str(out), *FLAGS, "--overlay", str(folder / "ov.json")]
    assert main([*argv, "--calibration", str(samples), "--method", "magnitude"]) == 0
    files = overlay.paths(str(folder / "ov.json"))
    assert sorted(os.listdir(folder)) == sorted(
        ["out.tflite", *map(os.path.basename, files.values())]
    )
    return out, {m: json.loads(open(p).read()) for m, p in files.items()}


def test_every_key_names_an_op_of_its_graph(rewritten):
    path, docs = rewritten
    model = reader.read(path)
    graphs = {overlay.graph_id(model, i): sg for i, sg in enumerate(model.subgraphs)}
    for measure, doc in docs.items():
        assert doc, measure
        for gid, graph in doc.items():
            ops = graphs[gid].operators
            assert graph["results"], (measure, gid)
            for key, result in graph["results"].items():
                assert key.isdigit() and int(key) < len(ops), (measure, key)
                assert set(result) == {"value"} and isinstance(result["value"], (int, float))
            assert ("thresholds" in graph) != ("gradient" in graph)


def test_values_are_the_rewrite_s(rewritten):
    path, docs = rewritten
    ops = reader.read(path).subgraphs[0].operators
    sparsity, size, sqnr = (docs[m]["main"]["results"] for m in ("sparsity", "bytes", "sqnr"))
    fully_connected = [str(i) for i, op in enumerate(ops) if op.type == "FULLY_CONNECTED"]
    assert len(fully_connected) == 2
    for key in fully_connected:
        assert sparsity[key]["value"] == 0.5
        assert size[key]["value"] > 0 and key in sqnr
    first = fully_connected[0]  # 128 x 512 int8 weights behind a DEQUANTIZE, and its bias
    assert size[first]["value"] == 128 * 512 + 128 * 4
    dequantize = [str(i) for i, op in enumerate(ops) if op.type == "DEQUANTIZE"]
    assert dequantize and not set(dequantize) & set(size)  # counted at their readers


def test_model_explorer_s_classes_take_each_file_whole(rewritten):
    builder = pytest.importorskip(
        "model_explorer.node_data_builder", reason="ai-edge-model-explorer is not installed"
    )
    for doc in rewritten[1].values():
        graphs = {}
        for gid, graph in doc.items():
            fields = dict(graph)
            fields["results"] = {
                k: builder.NodeDataResult(**v) for k, v in graph["results"].items()
            }
            fields["thresholds"] = [builder.ThresholdItem(**t) for t in graph.get("thresholds", [])]
            fields["gradient"] = [builder.GradientItem(**g) for g in graph.get("gradient", [])]
            graphs[gid] = builder.GraphNodeData(**fields)  # an unknown field raises TypeError
        again = json.loads(builder.ModelNodeData(graphsData=graphs).to_json_string())
        assert again == json.loads(json.dumps(_with_defaults(doc, builder)))


def _with_defaults(doc: dict, builder) -> dict:
    """`doc` with the fields node_data_builder writes by default."""
    defaults = {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(builder.GraphNodeData)
        if f.name != "results"
    }
    return {
        gid: {k: v for k, v in {**defaults, **g}.items() if v is not None} for gid, g in doc.items()
    }


def test_model_explorer_s_adapter_names_the_same_nodes(rewritten):
    adapter = pytest.importorskip(
        "ai_edge_model_explorer_adapter", reason="ai-edge-model-explorer is not installed"
    )
    path, docs = rewritten
    graphs = _adapter_graphs(adapter, path)
    ops = reader.read(path).subgraphs[0].operators
    for doc in docs.values():
        for gid, graph in doc.items():
            for key in graph["results"]:
                assert graphs[gid][key] == ops[int(key)].type.lower()


@pytest.mark.parametrize("names", [True, False])
@pytest.mark.parametrize("signatures", [True, False])
@pytest.mark.parametrize("name", ["control_flow", "multi_signature"])
def test_graph_ids_are_model_explorer_s(tf_models, tmp_path, name, names, signatures):
    model = reader.read(tf_models[name])
    if not names:
        for sg in model.subgraphs:
            sg.name = None
    if not signatures:
        model.signatures = []
    ids = [overlay.graph_id(model, i) for i in range(len(model.subgraphs))]
    assert len(set(ids)) == len(ids)
    if not names and not signatures:
        assert ids == ["main"] + [f"subgraph_{i}" for i in range(1, len(ids))]
    overlays = overlay.build(model, per_op(model, model, Sqnr({})))
    assert set(overlays["bytes"]) <= set(ids)
    try:
        import ai_edge_model_explorer_adapter as adapter
    except ImportError:
        return
    path = tmp_path / "model.tflite"
    writer.write(model, path)
    assert list(_adapter_graphs(adapter, path)) == ids


def _adapter_graphs(adapter, path) -> dict[str, dict[str, str]]:
    """{graph id: {node id: label}} as Model Explorer's TFLite adapter converts the file."""
    text = adapter.ConvertFlatbufferDirectlyToJson(adapter.VisualizeConfig(), str(path))
    collection = json.loads(text)[0]
    return {g["id"]: {n["id"]: n["label"] for n in g["nodes"]} for g in collection["subgraphs"]}
