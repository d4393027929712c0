"""The `tflrewrite` metadata entry: what tflrewrite did to a model, kept in the model."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tflrewrite import __version__
from tflrewrite.model import Model

METADATA_NAME = "tflrewrite"


# Columns of each row of "tensors": compact, because the entry travels inside the model.
TENSOR_FIELDS = ["pass", "subgraph", "tensor", "sparsity", "channel_unique"]


def provenance(
    recipe: Any, records: list[dict], model: Model, calibration: dict | None = None
) -> bytes:
    """The metadata entry's content: deterministic, compact JSON (no dates, no paths) with
    the recipe's options that differ from the defaults, and one row per edited tensor
    giving its index in `model` and its sparsity and distinct values afterwards."""
    rows, skipped = [], 0
    for r in records:
        for t in r["tensors"]:
            if "after" not in t:  # left alone, or a note that is not about a weight
                skipped += t["action"] == "skipped"
                continue
            index = _index(model, t["subgraph"], t["tensor"])
            after = t.get("after", {})
            rows.append(
                [
                    r["pass"],
                    t["subgraph"],
                    index,
                    round(after.get("sparsity", 0.0), 4),
                    after.get("channel_unique"),
                ]
            )
    doc = {
        "tool": "tflrewrite",
        "version": __version__,
        "recipe": recipe.name,
        "steps": [
            {"pass": s.name, "options": _changed(s.options), "rules": len(s.rules)}
            for s in recipe.steps
        ],
        "tensor_fields": TENSOR_FIELDS,
        "tensors": rows,
        "skipped": skipped,
    }
    if calibration is not None:
        doc["calibration"] = calibration
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _changed(options: Any) -> dict:
    defaults = type(options)()
    return {
        f.name: getattr(options, f.name)
        for f in dataclasses.fields(options)
        if getattr(options, f.name) != getattr(defaults, f.name)
    }


def _index(model: Model, subgraph: int, name: str) -> int | None:
    tensors = model.subgraphs[subgraph].tensors
    return next((i for i, t in enumerate(tensors) if t.name == name and t.is_constant), None)


def read(model: Model) -> dict | None:
    entry = model.metadata_entry(METADATA_NAME)
    if entry is None or entry.buffer.data is None:
        return None
    try:
        return json.loads(entry.buffer.data.tobytes())
    except ValueError:
        return None
