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
    recipe: Any, records: list[dict], model: Model, *, calibration: dict | None = None
) -> bytes:
    """The metadata entry's content: deterministic, compact JSON (no dates, no paths) with
    the recipe's options that differ from the defaults, and one row per edited tensor
    giving its index in `model` and its sparsity and distinct values afterwards."""
    rows, skipped = [], 0
    index = _constant_index(model)
    for r in records:
        for t in r["tensors"]:
            if "after" not in t:  # left alone, or a note that is not about a weight
                skipped += t["action"] == "skipped"
                continue
            after = t.get("after", {})
            rows.append(
                [
                    r["pass"],
                    t["subgraph"],
                    index.get((t["subgraph"], t["tensor"])),
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


def _constant_index(model: Model) -> dict[tuple[int, str], int]:
    """(subgraph, name) -> index of the first constant tensor of that name."""
    index: dict[tuple[int, str], int] = {}
    for si, ti, t in model.tensors():
        if t.is_constant:
            index.setdefault((si, t.name), ti)
    return index


def read(model: Model) -> dict | None:
    entry = model.metadata_entry(METADATA_NAME)
    if entry is None or entry.buffer.data is None:
        return None
    try:
        return json.loads(entry.buffer.data.tobytes())
    except ValueError:
        return None
