"""Runs a recipe's passes over a model, in order, and records what was done in the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tflrewrite import targets
from tflrewrite.model import Model
from tflrewrite.passes import PASSES, datafit
from tflrewrite.provenance import METADATA_NAME, provenance
from tflrewrite.recipes import Recipe
from tflrewrite.runtime_version import update_min_runtime_version

# How pruning and clustering choose weights when calibration data is given: "data" fits
# each layer to the original model's outputs on the samples (tflrewrite.passes.datafit);
# "magnitude" ignores the data, as it must without any.
METHODS = ("data", "magnitude")


@dataclass
class Result:
    model: Model
    records: list[dict] = field(default_factory=list)  # per pass: {"pass", "tensors"}


def apply(
    model: Model,
    recipe: Recipe,
    progress: Callable[[str], None] | None = None,
    target: str = "generic",
    data: Any = None,
    method: str = "data",
) -> Result:
    """The model after every step of `recipe`, laid down for `target` (see
    tflrewrite.targets); the input model is left as it was. `data` (calibrate.Samples)
    calibrates full-integer quantization and, with `method` "data", guides pruning and
    clustering. A target may run some steps its own way: its STEPS maps a step name to a
    function with a pass's `run(model, options, rules)` (data-aware fitting comes first)."""
    result = Result(model)
    fit = data is not None and method == "data"
    laid = targets.load(target) if target != "generic" else None
    own = getattr(laid, "STEPS", {})
    names = [s.name for s in recipe.steps]
    reference = model  # what the data-aware fit aims each layer's outputs at
    for step in recipe.steps:
        if progress:
            progress(step.name)
        module = PASSES[step.name]
        if fit and step.name in datafit.STEPS:
            out = datafit.run(step.name, result.model, step.options, step.rules, data, reference)
        elif step.name in own:
            out = own[step.name](result.model, step.options, step.rules)
        elif getattr(module, "USES_DATA", False):
            out = module.run(result.model, step.options, step.rules, data=data)
        else:
            out = module.run(result.model, step.options, step.rules)
        result.model = out.model
        result.records.append({"pass": step.name, "tensors": out.records})
        if step.name == "equalize":  # the same function with rescaled channels: aim at it
            reference = result.model
        if fit and step.name == "quantize" and step.options.mode == "int8":
            if "cluster" not in names:  # clustering would redo the rounding anyway
                out = datafit.run("refine", result.model, step.options, step.rules, data, reference)
                result.model = out.model
                result.records.append({"pass": "refine", "tensors": out.records})
    if laid is not None:
        if progress:
            progress(f"target {target}")
        out = laid.run(result.model)
        result.model = out.model
        result.records.append({"pass": f"target:{target}", "tensors": out.records})
    if recipe.steps or target != "generic":
        update_min_runtime_version(result.model)
        used = None if data is None else {"samples": len(data.values), "method": method}
        result.model.set_metadata(
            METADATA_NAME, provenance(recipe, result.records, result.model, used)
        )
    return result
