"""Recipes: the paths of the deployment tree as named chains of passes, their overrides from
command-line flags, the rules on which settings go together, and recipe files (TOML) with
per-tensor rules.

A recipe file:

    name = "fc-heavy"                       # optional
    description = "prune FC layers harder"  # optional
    [prune]                                 # a table per pass: its options
    sparsity = 0.5
    [cluster]
    clusters = 16
    granularity = "channel"
    [quantize]
    mode = "int8-weights"
    [[rules]]                               # first rule whose regex matches a tensor wins
    match = "dense_1"
    prune = { sparsity = 0.8 }              # options for this tensor
    cluster = false                         # leave it alone in this pass

In a full-integer model (quantize mode int8 or int16x8) a rule's `quantize = "int16x8"`,
`"int8"` or `"float"` (float arithmetic, float16 weights) chooses the precision of the ops
whose outputs or constant inputs (weights, biases) it matches, whatever the mode gives the
rest; `quantize = false` keeps an op float with float32 weights, as before. In a
weight-only model `quantize = "float"` stores a weight float16.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.passes import PASSES
from tflrewrite.passes.common import Pass, Rule
from tflrewrite.passes.quantize import FULL_INTEGER
from tflrewrite.passes.quantize_graph import check_rules


@dataclass(frozen=True)
class Step:
    name: str  # a key of PASSES
    options: Any  # that pass's Options
    rules: tuple[Rule, ...] = ()
    runs: Pass | None = None  # the pass that runs it: PASSES[name] unless planned otherwise

    @property
    def runner(self) -> Pass:
        return self.runs or PASSES[self.name]

    def to_json(self) -> dict:
        return {
            "pass": self.name,
            "options": dataclasses.asdict(self.options),
            "rules": [{"match": r.match, "options": r.options} for r in self.rules],
        }


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def planned(
        self, *, own_steps: Mapping[str, Pass] | None = None, data_aware: bool = False
    ) -> tuple[Step, ...]:
        """The steps as a rewrite runs them, each with its pass: a target's own way of a
        step (`own_steps`, by step name), and with `data_aware` (calibration samples and
        the data method) the data-aware prune and cluster in their place (the prune
        folding weights behind DEQUANTIZE first where the whole graph is quantized), and a
        refine of full-integer weights (int8, also under int16 activations) that no
        clustering will redo."""
        steps = [dataclasses.replace(s, runs=(own_steps or {}).get(s.name)) for s in self.steps]
        if not data_aware:
            return tuple(steps)
        from tflrewrite.passes import datafit

        full = any(s.name == "quantize" and s.options.mode in FULL_INTEGER for s in steps)
        fitted = {
            p.name: p for p in (datafit.PRUNE_FOLDED if full else datafit.PRUNE, datafit.CLUSTER)
        }
        refine = not any(s.name == "cluster" for s in steps)  # clustering redoes the rounding
        planned = []
        for s in steps:
            planned.append(dataclasses.replace(s, runs=fitted.get(s.name, s.runs)))
            if refine and s.name == "quantize" and s.options.mode in FULL_INTEGER:
                planned.append(Step(datafit.REFINE.name, s.options, s.rules, datafit.REFINE))
        return tuple(planned)

    def with_options(self, overrides: dict[str, dict[str, Any]]) -> Recipe:
        """This recipe with pass options overridden (a pass it lacks is added), its steps in
        the order PASSES gives."""
        steps = {s.name: s for s in self.steps}
        for name, values in overrides.items():
            if not values:
                continue
            base = steps[name].options if name in steps else PASSES[name].Options()
            step = steps.get(name, Step(name, base))
            steps[name] = dataclasses.replace(step, options=_replace(base, values, name))
        ordered = tuple(steps[n] for n in PASSES if n in steps)
        changed = ordered != self.steps
        name = f"{self.name}+flags" if changed and self.steps else self.name
        if changed and not self.steps:
            name = "+".join(s.name for s in ordered) or self.name
        return Recipe(name, self.description, ordered)


def check(
    recipe: Recipe, *, calibrated: bool, method: str | None = None, floor: float | None = None
) -> None:
    """Refuse settings that do not go together: a data method without data, data that no
    step uses, a rounding that would not run, a rule's precision the quantize mode cannot
    give, a quality floor without full int8 to raise from. `calibrated`: whether
    calibration samples come with the recipe; `method` "data" or "magnitude", None where
    not asked for; `floor` the --min-sqnr, if any."""
    _check_rounding(recipe, calibrated, method)
    for step in recipe.steps:
        if step.name == "quantize":
            try:
                check_rules(step.options, step.rules)
            except UsageError as e:
                raise UsageError(f"recipe {recipe.name}: {e}") from None
    if floor is not None:
        _check_floor(recipe, calibrated)
    if not calibrated:
        if method == "data":
            raise UsageError("--method data needs --calibration samples")
        return
    if not any(_uses_data(s) for s in recipe.steps):
        raise UsageError(
            "--calibration: nothing uses it (it serves --quantize int8 or int16x8, --prune "
            "and --cluster)"
        )


def _check_floor(recipe: Recipe, calibrated: bool) -> None:
    """--min-sqnr raises ops from full int8, measured on calibration samples; clustering
    after it would re-round the int8 weights the floor was measured with."""
    quantize = [s.options.mode for s in recipe.steps if s.name == "quantize"]
    if quantize != ["int8"]:
        given = f"--quantize {quantize[0]}" if quantize else "no quantize step"
        raise UsageError(
            f"--min-sqnr chooses each op's precision up from full int8: it needs --quantize "
            f"int8 (implied where no --quantize is given), not {given}"
        )
    if any(s.name == "cluster" for s in recipe.steps):
        raise UsageError(
            "--min-sqnr with --cluster: clustering would re-round the int8 weights after the "
            "floor measured them; give one or the other"
        )
    if not calibrated:
        raise UsageError("--min-sqnr needs --calibration samples to measure SQNR on")


def _uses_data(step: Step) -> bool:
    return step.name != "equalize" and (
        step.name != "quantize" or step.options.mode in FULL_INTEGER
    )


def _check_rounding(recipe: Recipe, calibrated: bool, method: str | None) -> None:
    """Rounding other than feedback is done by the data-aware fit of full-integer weights,
    which clustering replaces: a usage error where it would not run."""
    quantize = [s.options for s in recipe.steps if s.name == "quantize"]
    if not quantize or quantize[0].rounding == "feedback":
        return
    if not calibrated or method == "magnitude" or any(s.name == "cluster" for s in recipe.steps):
        raise UsageError(
            f"--rounding {quantize[0].rounding} needs --quantize int8 or int16x8 with "
            "--calibration, the data method and no --cluster"
        )


def _replace(options: Any, values: dict[str, Any], where: str) -> Any:
    try:
        return dataclasses.replace(options, **values)
    except TypeError as e:
        known = ", ".join(f.name for f in dataclasses.fields(options))
        raise UsageError(f"{where}: {e} (options: {known})") from None


def _builtin(name: str, description: str, **passes: dict) -> Recipe:
    steps = tuple(Step(n, PASSES[n].Options(**passes[n])) for n in PASSES if n in passes)
    return Recipe(name, description, steps)


_PRUNE, _CLUSTER, _INT8 = {"sparsity": 0.5}, {"clusters": 16}, {"mode": "int8-weights"}
_FULL = {"mode": "int8"}
_FULL16 = {"mode": "int16x8"}

BUILTIN: dict[str, Recipe] = {
    r.name: r
    for r in [
        _builtin("identity", "read and write the model, changing nothing (a lossless round trip)"),
        _builtin("prune", "magnitude pruning to 50% sparsity per output channel", prune=_PRUNE),
        _builtin("cluster", "16 clusters per tensor, optimal 1-D k-means", cluster=_CLUSTER),
        _builtin(
            "prune-cluster",
            "prune 50%, then sparsity-preserving clustering to 16",
            prune=_PRUNE,
            cluster=_CLUSTER,
        ),
        _builtin("int8-weights", "float weights to int8 per channel (weight-only)", quantize=_INT8),
        _builtin("float16", "float32 weights to float16", quantize={"mode": "float16"}),
        _builtin("prune-int8", "prune 50%, then int8 weights", prune=_PRUNE, quantize=_INT8),
        _builtin(
            "cluster-int8",
            "int8 weights clustered to 16 int8 values per tensor",
            quantize=_INT8,
            cluster=_CLUSTER,
        ),
        _builtin(
            "prune-cluster-int8",
            "prune 50%, int8 weights, 16 clusters keeping zeros",
            prune=_PRUNE,
            quantize=_INT8,
            cluster=_CLUSTER,
        ),
        _builtin(
            "full-int8",
            "weights and activations int8 from --calibration data (full integer)",
            quantize=_FULL,
        ),
        _builtin(
            "full-int16x8",
            "full integer with int16 activations and int8 weights from --calibration data "
            "(16x8: more precise than full-int8, activations twice the memory)",
            quantize=_FULL16,
        ),
        _builtin(
            "prune-cluster-full-int8",
            "prune 50%, full-integer int8 from --calibration data, 16 clusters keeping zeros",
            prune=_PRUNE,
            quantize=_FULL,
            cluster=_CLUSTER,
        ),
    ]
}


def load(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a recipe from a TOML file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    if not os.path.exists(name_or_path):
        known = ", ".join(sorted(BUILTIN))
        raise TflRewriteError(f"{name_or_path}: no such recipe (built in: {known}) or file")
    try:
        with open(name_or_path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TflRewriteError(f"{name_or_path}: not a readable TOML recipe ({e})") from None
    try:
        return from_dict(doc, os.path.basename(name_or_path))
    except UsageError as e:
        raise TflRewriteError(f"{name_or_path}: {e}") from None


def from_dict(doc: dict, default_name: str) -> Recipe:
    unknown = set(doc) - {"name", "description", "rules", *PASSES}
    if unknown:
        raise UsageError(
            f"unknown keys {', '.join(sorted(unknown))} (passes: "
            f"{', '.join(PASSES)}; also name, description, rules)"
        )
    rules = doc.get("rules", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise UsageError("'rules' must be an array of tables ([[rules]])")
    for i, r in enumerate(rules):
        if "match" not in r or set(r) - {"match", *PASSES}:
            raise UsageError(
                f"rule {i + 1}: needs 'match' and pass names only (got {', '.join(sorted(r))})"
            )
        if set(r) - {"match"} - set(doc):
            raise UsageError(f"rule {i + 1}: names a pass the recipe does not run")
    steps = []
    for name, module in PASSES.items():
        if name not in doc:
            continue
        if not isinstance(doc[name], dict):
            raise UsageError(f"[{name}] must be a table of options")
        options = _replace(module.Options(), doc[name], f"[{name}]")
        steps.append(Step(name, options, tuple(_rules(rules, name))))
    return Recipe(str(doc.get("name", default_name)), str(doc.get("description", "")), tuple(steps))


# A rule's `quantize = "..."`: the quantize mode it stands for ("float": float arithmetic
# with float16 weights, as mode float16 stores them).
RULE_MODES = {"int8": "int8", "int16x8": "int16x8", "float": "float16", "float16": "float16"}


def _rules(rules: list[dict], pass_name: str) -> list[Rule]:
    out = []
    for i, r in enumerate(rules):
        extra = set(r) - {"match", *PASSES}
        if "match" not in r or extra:
            raise UsageError(
                f"rule {i + 1}: needs 'match' and pass names only (got {', '.join(sorted(r))})"
            )
        if pass_name not in r:
            continue
        value = r[pass_name]
        if pass_name == "quantize" and isinstance(value, str):
            if value not in RULE_MODES:
                raise UsageError(
                    f"rule {i + 1}: quantize = {value!r}: a rule's precision is "
                    f"{', '.join(RULE_MODES)} (or false, or a table of options)"
                )
            value = {"mode": RULE_MODES[value]}
        if value is False:
            out.append(Rule(r["match"], None))
        elif isinstance(value, dict):
            out.append(Rule(r["match"], value))
        else:
            raise UsageError(f"rule {i + 1}: {pass_name} must be false or a table of options")
    return out
