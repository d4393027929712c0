"""The worked example of docs/ARCHITECTURE.md is a pass that works: loaded as a module, it
runs through the pass protocol and the runner on a real model and keeps its promise."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np

from tflrewrite import pipeline, reader, recipes
from tflrewrite.passes import PASSES

DOC = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"


def example_pass(monkeypatch) -> types.ModuleType:
    code = re.search(r"as `passes/threshold.py`:\n\n```python\n(.*?)```", DOC.read_text(), re.S)
    module = types.ModuleType("threshold_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look it up
    exec(compile(code.group(1), str(DOC), "exec"), module.__dict__)
    return module


def test_the_worked_example_is_a_working_pass(example_model, monkeypatch):
    threshold = example_pass(monkeypatch)
    monkeypatch.setitem(PASSES, "threshold", threshold.PASS)
    recipe = recipes.from_dict({"threshold": {"below": 0.05}}, "example")
    model = reader.read(example_model)
    result = pipeline.apply(model, recipe)
    (step,) = [r for r in result.records if r["pass"] == "threshold"]
    edited = [t for t in step["tensors"] if t["action"] == "thresholded"]
    assert edited
    out = {t.name: t.data for t in result.model.subgraphs[0].tensors if t.is_constant}
    before = {t.name: t.data for t in model.subgraphs[0].tensors if t.is_constant}
    for t in edited:
        small = np.abs(before[t["tensor"]]) < 0.05
        assert np.all(out[t["tensor"]][small] == 0)
        assert np.array_equal(out[t["tensor"]][~small], before[t["tensor"]][~small])
