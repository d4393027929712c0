"""Runs a recipe's passes over a model, in order, and records what was done in the model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tflrewrite import runtime, targets
from tflrewrite.model import Model
from tflrewrite.passes.common import Data, Pass, StepRecord
from tflrewrite.provenance import METADATA_NAME, provenance
from tflrewrite.recipes import Recipe, check
from tflrewrite.runtime_version import update_min_runtime_version

# How pruning and clustering choose weights when calibration data is given: "data" fits
# each layer to the original model's outputs on the samples (tflrewrite.passes.datafit);
# "magnitude" ignores the data, as it must without any.
METHODS = ("data", "magnitude")


@dataclass
class Result:
    model: Model
    records: list[StepRecord] = field(default_factory=list)


def apply(
    model: Model,
    recipe: Recipe,
    *,
    progress: Callable[[str], None] | None = None,
    target: str = targets.DEFAULT,
    data: Any = None,
    method: str = "data",
    on_step: Callable[[str, Model], None] | None = None,
    runs: Mapping[str, Pass] | None = None,
) -> Result:
    """The model after every step of `recipe`, laid down for `target` (see
    tflrewrite.targets); the input model is left as it was. `data` (calibrate.Samples)
    calibrates full-integer quantization and, with `method` "data", guides pruning and
    clustering (Recipe.planned chooses the passes). Settings that do not go together are
    refused as recipes.check refuses them. `on_step(name, model)` sees the model after each
    step (the target's too, as "target:NAME"), for reports that show the stages; it must not
    change it. `runs`: passes that run steps in place of the planned ones, by step name (a
    planner's own quantize step, say)."""
    check(recipe, calibrated=data is not None, method=None if data is None else method)
    laid = targets.load(target)
    steps = recipe.planned(
        own_steps=laid.own_steps(), data_aware=data is not None and method == "data"
    )
    if runs:
        steps = tuple(replace(s, runs=runs.get(s.name, s.runs)) for s in steps)
    result = Result(model)
    reference = model  # what data-aware passes aim each layer's outputs at
    found: dict = {}  # what steps learned about `reference` for later ones (Data.found)
    with runtime.one_blas_thread():
        for i, step in enumerate(steps):
            if progress:
                progress(step.name)
            wanted = frozenset().union(*(s.runner.wanted(s.options) for s in steps[i + 1 :]))
            given = None if data is None else Data(data, reference, wanted=wanted, found=found)
            out = step.runner.run(result.model, step.options, step.rules, data=given)
            result.model = out.model
            result.records.append({"pass": step.name, "tensors": out.records})
            if out.seconds:
                result.records[-1]["seconds"] = out.seconds
            if on_step:
                on_step(step.name, result.model)
            if step.runner.preserves_function:  # the same function: aim at it from here on
                reference, found = result.model, {}
        if laid.run is not None:
            if progress:
                progress(f"target {target}")
            out = laid.run(result.model)
            result.model = out.model
            result.records.append({"pass": f"target:{target}", "tensors": out.records})
            if on_step:
                on_step(f"target:{target}", result.model)
    if recipe.steps or laid.run is not None:
        update_min_runtime_version(result.model)
        used = None if data is None else {"samples": len(data.values), "method": method}
        result.model.set_metadata(
            METADATA_NAME, provenance(recipe, result.records, result.model, calibration=used)
        )
    return result
