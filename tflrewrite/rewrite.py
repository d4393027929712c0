"""Runs a recipe's passes over a model, in order, and collects what each one did."""

from __future__ import annotations

from dataclasses import dataclass, field

from tflrewrite.errors import TflRewriteError
from tflrewrite.model import Model
from tflrewrite.recipes import Recipe

# Pass name -> function(model, **options) -> (model, records). Later passes join this list.
PASSES: dict = {}


@dataclass
class Result:
    model: Model
    records: list[dict] = field(default_factory=list)


def apply(model: Model, recipe: Recipe) -> Result:
    result = Result(model)
    for step in recipe.steps:
        name = step.get("pass")
        if name not in PASSES:
            raise TflRewriteError(f"recipe {recipe.name}: unknown pass {name!r}")
        options = {k: v for k, v in step.items() if k != "pass"}
        result.model, records = PASSES[name](result.model, **options)
        result.records.append({"pass": name, "tensors": records})
    return result
