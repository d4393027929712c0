"""Model Explorer overlays: per-op node data for Google's Model Explorer
(`ai-edge-model-explorer`), one file per measure, so that
`model-explorer OUT.tflite --node_data_paths=A.json,B.json` colours each op of the graph by
its output's SQNR, its weight's sparsity, or its constants' bytes.

The format (model_explorer.node_data_builder's ModelNodeData as JSON) is
`{graph_id: {"name", "results": {node_id: {"value": v}}, "thresholds" | "gradient": [...]}}`.
For a .tflite, Model Explorer's graph id is the subgraph's name, else the key of a signature
that runs it, else "main" for subgraph 0 and "subgraph_<i>" for the others; an op's node id
is its index in its subgraph as a string (constants and the graph's inputs and outputs are
nodes numbered after the ops). So says its TFLite adapter (ai-edge-model-explorer-adapter
0.2.1), which tests/test_overlay.py asks where it is installed. One file holds one value per
node: a measure per file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence

from tflrewrite.fileio import atomic_write
from tflrewrite.model import Model
from tflrewrite.reports.nodes import OpFigures

# SQNR bands (dB), each up to its value: red where the output is damaged, green where it
# is near the original. Values above the last band are left white.
SQNR_BANDS = [
    {"value": 10, "bgColor": "#d7191c"},
    {"value": 20, "bgColor": "#fdae61"},
    {"value": 30, "bgColor": "#ffffbf"},
    {"value": 40, "bgColor": "#a6d96a"},
    {"value": 1000, "bgColor": "#1a9641"},
]

# measure -> (what Model Explorer names it, value of an op or None, colouring)
MEASURES: dict[str, tuple[str, Callable[[OpFigures], float | None], dict]] = {
    "sqnr": (
        "output SQNR dB against the input model (identical outputs: no value)",
        lambda o: o.sqnr_db if o.measured and o.sqnr_db is not None else None,
        {"thresholds": SQNR_BANDS},
    ),
    "sparsity": (
        "weight sparsity (fraction of zeros)",
        lambda o: o.sparsity,
        {"gradient": [{"stop": 0, "bgColor": "#ffffff"}, {"stop": 1, "bgColor": "#2b83ba"}]},
    ),
    "bytes": (
        "constant bytes (weights, biases; those behind a DEQUANTIZE counted at its reader)",
        lambda o: o.bytes or None,
        {"gradient": [{"stop": 0, "bgColor": "#ffffff"}, {"stop": 1, "bgColor": "#d7191c"}]},
    ),
}


def graph_id(model: Model, subgraph: int) -> str:
    """Model Explorer's id of a subgraph of a .tflite."""
    sg = model.subgraphs[subgraph]
    if sg.name:
        return sg.name
    key = next((s.key for s in model.signatures or [] if s.subgraph is sg and s.key), None)
    return key or ("main" if subgraph == 0 else f"subgraph_{subgraph}")


def build(model: Model, ops: Sequence[OpFigures]) -> dict[str, dict]:
    """{measure: ModelNodeData as a JSON object} for each of MEASURES; an op without a value
    for a measure (no weight, not measured, an identical output) is left out of it, and a
    graph without any value is left out too."""
    out = {}
    for measure, (name, value_of, colours) in MEASURES.items():
        graphs: dict[str, dict] = {}
        for o in ops:
            value = value_of(o)
            if value is None or not math.isfinite(value):
                continue
            key = graph_id(model, o.subgraph)
            graph = graphs.setdefault(key, {"name": name, "results": {}, **colours})
            graph["results"][str(o.index)] = {"value": round(float(value), 4)}
        out[measure] = graphs
    return out


def paths(path: str) -> dict[str, str]:
    """The file of each measure for `--overlay PATH`: PATH less .json, then .MEASURE.json."""
    root = path[: -len(".json")] if path.endswith(".json") else path
    return {m: f"{root}.{m}.json" for m in MEASURES}


def write(path: str, *, model: Model, ops: Sequence[OpFigures]) -> list[str]:
    """Write the overlays (see `paths`), each atomically; the paths written."""
    files = paths(path)
    for measure, doc in build(model, ops).items():
        text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"
        atomic_write(files[measure], lambda f, text=text: f.write(text.encode()))
    return list(files.values())


def command(model_path: str, files: Sequence[str]) -> str:
    """The command that opens the model with the overlays."""
    joined = ",".join(os.fspath(f) for f in files)
    return f"model-explorer {model_path} --node_data_paths={joined}"
