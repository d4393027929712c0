"""Runs a recipe's passes over a model, in order, and records what was done in the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tflrewrite import targets
from tflrewrite.model import Model
from tflrewrite.passes import PASSES
from tflrewrite.provenance import METADATA_NAME, provenance
from tflrewrite.recipes import Recipe
from tflrewrite.runtime_version import update_min_runtime_version


@dataclass
class Result:
    model: Model
    records: list[dict] = field(default_factory=list)  # per pass: {"pass", "tensors"}


def apply(
    model: Model,
    recipe: Recipe,
    progress: Callable[[str], None] | None = None,
    target: str = "generic",
) -> Result:
    """The model after every step of `recipe`, laid down for `target` (see
    tflrewrite.targets); the input model is left as it was."""
    result = Result(model)
    for step in recipe.steps:
        if progress:
            progress(step.name)
        out = PASSES[step.name].run(result.model, step.options, step.rules)
        result.model = out.model
        result.records.append({"pass": step.name, "tensors": out.records})
    if target != "generic":
        if progress:
            progress(f"target {target}")
        out = targets.load(target).run(result.model)
        result.model = out.model
        result.records.append({"pass": f"target:{target}", "tensors": out.records})
    if recipe.steps or target != "generic":
        update_min_runtime_version(result.model)
        result.model.set_metadata(METADATA_NAME, provenance(recipe, result.records, result.model))
    return result
