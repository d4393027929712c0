"""The `tflrewrite` metadata entry: what tflrewrite did to a model, kept in the model."""

from __future__ import annotations

import json
from typing import Any

from tflrewrite import __version__
from tflrewrite.model import Model

METADATA_NAME = "tflrewrite"


def provenance(recipe: Any, records: list[dict]) -> bytes:
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


def read(model: Model) -> dict | None:
    entry = model.metadata_entry(METADATA_NAME)
    if entry is None or entry.buffer.data is None:
        return None
    try:
        return json.loads(entry.buffer.data.tobytes())
    except ValueError:
        return None
