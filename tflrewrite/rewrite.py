"""Runs a recipe's passes over a model, in order, and records what was done in the model."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from tflrewrite import __version__
from tflrewrite.model import Model
from tflrewrite.passes import PASSES
from tflrewrite.recipes import Recipe
from tflrewrite.runtime_version import update_min_runtime_version

METADATA_NAME = "tflrewrite"  # the provenance entry: what tflrewrite did to this model


@dataclass
class Result:
    model: Model
    records: list[dict] = field(default_factory=list)  # per pass: {"pass", "tensors"}


def apply(model: Model, recipe: Recipe, progress: Callable[[str], None] | None = None) -> Result:
    """The model after every step of `recipe`; the input model is left as it was."""
    result = Result(model)
    for step in recipe.steps:
        if progress:
            progress(step.name)
        out = PASSES[step.name].run(result.model, step.options, step.rules)
        result.model = out.model
        result.records.append({"pass": step.name, "tensors": out.records})
    if recipe.steps:
        update_min_runtime_version(result.model)
        result.model.set_metadata(METADATA_NAME, provenance(recipe, result.records))
    return result


def provenance(recipe: Recipe, records: list[dict]) -> bytes:
    """The metadata entry's content: deterministic JSON (no dates, no paths)."""
    doc = {
        "tool": "tflrewrite",
        "version": __version__,
        "recipe": recipe.name,
        "steps": [s.to_json() for s in recipe.steps],
        "tensors": [
            {
                "pass": r["pass"],
                **{k: t[k] for k in ("subgraph", "tensor", "action") if k in t},
                **_brief(t),
            }
            for r in records
            for t in r["tensors"]
        ],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _brief(t: dict) -> dict:
    out = {}
    if "reason" in t:
        out["reason"] = t["reason"]
    if "after" in t:
        out["sparsity"] = round(t["after"]["sparsity"], 6)
        out["channel_unique"] = t["after"]["channel_unique"]
    if "mse" in t:
        out["mse"] = t["mse"]
    return out


def read_provenance(model: Model) -> dict | None:
    entry = model.metadata_entry(METADATA_NAME)
    if entry is None or entry.buffer.data is None:
        return None
    try:
        return json.loads(entry.buffer.data.tobytes())
    except ValueError:
        return None
