"""The deployment tree for a model, explored: its candidate rewrites run side by side (fanout),
each one's size and fidelity measured, and the Pareto front of size against fidelity.

The candidates are the tree's paths for the target (`tree`): weight-only int8 and float16;
full int8; pruning, clustering, and both, each with and without full int8 (int8 weights
where there is no calibration data); the budget planner at a few sizes. Each is the
rewrite command's flags, so that each has a command line that makes the same bytes; they
become a recipe as that command makes one (`settings`, in a Plan). `subject` gathers a model
and its data, api.explore runs the whole. A candidate runs in a worker (`measure`), which
gets the model and the data as bytes and arrays and returns its figures as JSON and its
model as bytes:
  size:     file bytes, zipped bytes (DEFLATE, TF Model Optimization's measure), and the
            target's own: Vela's encoded weights and cycles (ethos-u), the weight bytes as
            laid down and the arena TFLM allocates (tflm);
  fidelity: the outputs against the input model's on the evaluation samples (SQNR of each,
            top-1 agreement), and with labels (the .npz's `y`) top-1 accuracy for class
            ids or mean squared error for values, of both models.
The front is drawn from the candidates that ran, by the target's size measure against
accuracy (or MSE) where there are labels, else against the worst output's SQNR.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shlex
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tflrewrite import __version__, fanout
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.targets import DEFAULT

SPARSITIES = (0.5, 0.75)
CLUSTERS = (8, 16, 32)
PRUNE_CLUSTER = ((0.5, 16), (0.75, 8))  # (sparsity, clusters) of the prune+cluster paths
# The budget planner's sizes, as fractions of the model's size once its float weights are
# int8 (or of the size given with a --max-*-bytes flag: 1.0 only).
BUDGET_FRACTIONS = (0.75, 0.6, 0.45)
BUDGET_PATH = ("--prune", "0.5", "--cluster", "16")  # what the planner chooses per layer

# The size each target is judged by on the front, and the budget that bounds it.
SIZE_MEASURE = {
    "generic": "zip_bytes",
    "xnnpack": "zip_bytes",
    "cpu": "bytes",
    "tflm": "tflm_weight_bytes",
    "ethos-u": "vela_encoded_weights_bytes",
}
SIZE_LABEL = {
    "zip_bytes": "zipped bytes",
    "bytes": "file bytes",
    "tflm_weight_bytes": "TFLM weight bytes",
    "vela_encoded_weights_bytes": "Vela's encoded weight bytes",
}
# The planner's budget for each target: one that pruning and clustering shrink there.
BUDGET_DEFAULT = {
    "generic": "zip",
    "xnnpack": "zip",
    "cpu": "zip",
    "tflm": "bytes",
    "ethos-u": "vela",
}
BUDGET_MEASURE = {"zip": "zip_bytes", "bytes": "bytes", "vela": "vela_encoded_weights_bytes"}
BUDGET_FLAGS = {"zip": "--max-zip-bytes", "bytes": "--max-bytes", "vela": "--max-vela-bytes"}
RECORD = "explore.json"
REWRITE_CALIBRATION_SAMPLES = 100  # the rewrite command's --calibration-samples default
RANDOM_SEED = 1  # random evaluation inputs: not the calibration's seed-0 ones
ARRAYS = "<arrays>"  # what a command line calls data given as arrays, not a file
FIDELITY_LABEL = {"accuracy": "accuracy", "mse": "MSE", "sqnr_db": "worst output's SQNR, dB"}
FIDELITY_HELP = {
    "accuracy": "top-1 accuracy on the labels",
    "mse": "mean squared error against the labels (lower is better)",
    "sqnr_db": "SQNR of the worst output against the input model, dB",
}


@dataclass(frozen=True)
class Candidate:
    """One path of the tree: a name, the rewrite command's flags that take it, and whether
    it runs with the calibration samples."""

    name: str
    flags: tuple[str, ...]
    calibrated: bool = False

    @property
    def file(self) -> str:
        return f"{self.name}.tflite"


@dataclass(frozen=True)
class Plan:
    """A candidate as it runs: the recipe and budget its flags make, or why it cannot run."""

    candidate: Candidate
    command: str  # the command line that makes the same model
    recipe: Any = None  # recipes.Recipe
    budget: Any = None  # budget.Budget, for the planner's candidates
    method: str = "data"
    refused: str | None = None


@dataclass
class Subject:
    """One model to explore, as the workers get it: bytes and arrays, nothing to read."""

    path: str  # as the user gave it
    model: bytes
    target: str
    calibration: Any  # calibrate.Samples, or None
    evaluation: Any  # calibrate.Samples: what the fidelity is measured on
    labels: np.ndarray | None = None  # one per evaluation sample
    accelerator: str | None = None
    key: str = ""  # names the model and its evaluation samples in a worker's cache

    def __post_init__(self) -> None:
        if not self.key:
            digest = hashlib.sha1(self.model)
            for sample in self.evaluation.values:
                for value in sample:
                    digest.update(np.ascontiguousarray(value).tobytes())
            self.key = f"{digest.hexdigest()}:{self.target}"


@dataclass
class Exploration:
    """One model's candidates, measured, and its front (indices of `rows`, smallest first)."""

    subject: Subject
    plans: list[Plan]
    reference: dict  # the input model's own measures, or {"error": reason}
    rows: list[dict] = field(default_factory=list)
    models: list[bytes | None] = field(default_factory=list)
    front: list[int] = field(default_factory=list)
    size_measure: str = "zip_bytes"
    fidelity_measure: str = "sqnr_db"
    budget: tuple[str, int] | None = None  # (metric, limit) given by the user


# ------------------------------------------------------------------ the candidates


def tree(
    *, target: str, calibrated: bool, budgets: Sequence[tuple[str, int]] = ()
) -> list[Candidate]:
    """The tree's paths for `target`: with calibration samples, full int8 and the
    data-aware passes; without, weight-only int8 in its place. Ethos-U runs only full int8.
    `budgets`: (metric, limit) for each run of the planner."""
    if calibrated:
        quant = Candidate("int8", ("--quantize", "int8"), True)
    else:
        quant = Candidate("int8-weights", ("--quantize", "int8-weights"))
    found = [Candidate("int8-weights", ("--quantize", "int8-weights"))]
    found.append(Candidate("float16", ("--quantize", "float16")))
    if calibrated:
        found.append(quant)
    compress = [Candidate(f"prune{s}", ("--prune", str(s))) for s in SPARSITIES]
    compress += [Candidate(f"cluster{k}", ("--cluster", str(k))) for k in CLUSTERS]
    compress += [
        Candidate(f"prune{s}-cluster{k}", ("--prune", str(s), "--cluster", str(k)))
        for s, k in PRUNE_CLUSTER
    ]
    for c in compress:
        found.append(Candidate(c.name, c.flags, calibrated))
        found.append(_then(c, quant))
    for metric, limit in budgets:
        flags = (*BUDGET_PATH, *quant.flags, BUDGET_FLAGS[metric], str(limit))
        found.append(Candidate(f"budget-{metric}{limit}-{quant.name}", flags, calibrated))
    if target == "ethos-u":  # Vela runs integer operators; the rest would be refused
        found = [c for c in found if "int8" in c.flags and "--quantize" in c.flags]
    return found


def _then(c: Candidate, quant: Candidate) -> Candidate:
    return Candidate(
        f"{c.name}-{quant.name}", c.flags + quant.flags, c.calibrated or quant.calibrated
    )


def budget_sizes(model: bytes, *, metric: str, limit: int | None) -> list[tuple[str, int]]:
    """The planner's runs: at `limit` where the user gave one, else at BUDGET_FRACTIONS of
    the model's `metric` measure once its float32 weights are int8 (zipped as the input
    zips, for "zip")."""
    if limit is not None:
        return [(metric, limit)]
    from tflrewrite import reader
    from tflrewrite.reports.audit import breakdown, zip_size

    _, by_dtype, _ = breakdown(reader.read_bytes(model))
    constant = sum(by_dtype.values())
    shrink = by_dtype.get("FLOAT32", 0) * 3 // 4
    base = {
        "bytes": len(model) - shrink,
        "zip": (len(model) - shrink) * zip_size(model) / max(len(model), 1),
        "vela": constant - shrink,
    }[metric]
    return [(metric, _round(base * f)) for f in BUDGET_FRACTIONS]


def _round(value: float) -> int:
    """Three significant figures: limits a person would type."""
    if value < 1000:
        return max(int(value), 1)
    scale = 10 ** (int(math.log10(value)) - 2)
    return int(round(value / scale) * scale)


# ------------------------------------------------------------------ a model and its plans


def subject(
    name: str,
    content: bytes,
    *,
    target: str,
    calibration: Any,
    calibration_samples: int,
    inputs: Any,
    samples: int,
    accelerator: str | None,
) -> Subject:
    """The model `content` (called `name`) with its calibration samples (the first
    `calibration_samples` of `calibration`: an .npz, a folder of images, "random" or arrays
    keyed as an .npz's) and the samples its candidates are measured on: `inputs` (an .npz or
    arrays, with `y` for labels), else the calibration samples held out from calibration,
    else `samples` seeded random inputs; labels where that data has them."""
    from tflrewrite import calibrate, reader, runtime

    reader.read_bytes(content, name)  # refuses what is not a model, before any work
    runner = runtime.load(content, name=name)
    calibration_set = held_out = None
    n = calibration_samples
    if calibration is not None:
        calibration_set, held_out = calibrate.load(calibration, runner, n).split(n)
    real = not _is_random(calibration)
    labels = None
    if inputs is not None:
        arrays, where = _arrays(inputs)
        values = runtime.array_inputs(arrays, runner, None, where=where)
        if not values:
            raise TflRewriteError(f"{where}: holds no samples")
        source = os.path.basename(where) if isinstance(inputs, (str, os.PathLike)) else where
        evaluation = calibrate.Samples(values, source)
        labels = read_labels(arrays, count=len(values), where=where)
    elif held_out is not None:
        evaluation = held_out
        labels = held_out.labels
    elif calibration_set is not None and real:
        source = f"{calibration_set.source}, the calibration samples themselves (none held out)"
        evaluation = calibrate.Samples(calibration_set.values, source)
        labels = calibration_set.labels
    else:
        values = runtime.random_inputs([runner], samples, RANDOM_SEED)
        evaluation = calibrate.Samples(values, f"random inputs (seed {RANDOM_SEED})")
    return Subject(
        path=name,
        model=content,
        target=target,
        calibration=calibration_set,
        evaluation=evaluation,
        labels=labels,
        accelerator=accelerator,
    )


def _is_random(spec: Any) -> bool:
    from tflrewrite.calibrate import RANDOM

    return isinstance(spec, str) and spec == RANDOM


def _arrays(spec: Any) -> tuple[Mapping[str, np.ndarray], str]:
    """The arrays of evaluation data (an .npz's path, or arrays) and what names them."""
    from tflrewrite import runtime

    if isinstance(spec, Mapping):
        return spec, "the evaluation arrays"
    path = os.fspath(spec)
    if not os.path.isfile(path):
        raise TflRewriteError(f"{path}: no such file")
    return runtime.npz_arrays(path), path


def budgets_for(model: bytes, *, target: str, given: tuple[str, int] | None) -> list:
    """The planner's runs: at the user's budget (metric, limit) where there is one, else at
    the sizes budget_sizes picks by the target's own budget."""
    metric = given[0] if given else BUDGET_DEFAULT[target]
    return budget_sizes(model, metric=metric, limit=given[1] if given else None)


def plans(
    subject: Subject,
    *,
    folder: str,
    calibration: Any,
    calibration_samples: int,
    budgets: Sequence[tuple[str, int]],
    only: Sequence[str] = (),
) -> list[Plan]:
    """Each candidate of the tree for `subject` as the rewrite command would run it into
    `folder`, or why it cannot; `only`: shell patterns of the names to keep."""
    import fnmatch

    candidates = tree(target=subject.target, calibrated=calibration is not None, budgets=budgets)
    if only:
        chosen = [c for c in candidates if any(fnmatch.fnmatch(c.name, p) for p in only)]
        if not chosen:
            names = ", ".join(c.name for c in candidates)
            raise UsageError(f"--only {','.join(only)}: matches none of the candidates: {names}")
        candidates = chosen
    data = None
    if calibration is not None:
        data = ARRAYS if isinstance(calibration, Mapping) else os.fspath(calibration)
    return [
        _plan(c, subject, folder=folder, calibration=data, count=calibration_samples)
        for c in candidates
    ]


def _plan(c: Candidate, subject: Subject, *, folder: str, calibration: Any, count: int) -> Plan:
    from tflrewrite import recipes

    argv = [subject.path, "-o", os.path.join(folder, c.file), *c.flags]
    if c.calibrated:
        argv += ["--calibration", calibration]
        if count != REWRITE_CALIBRATION_SAMPLES:
            argv += ["--calibration-samples", str(count)]
    if subject.target != DEFAULT:
        argv += ["--target", subject.target]
    if subject.accelerator and "--max-vela-bytes" in c.flags:
        argv += ["--accelerator", subject.accelerator]
    command = shlex.join(["tflrewrite", *argv])
    try:
        recipe, budget = settings(c.flags)
        recipes.check(recipe, calibrated=c.calibrated)
    except TflRewriteError as e:
        return Plan(c, command, refused=str(e))
    return Plan(c, command, recipe, budget, "data")


# A candidate's flags as the rewrite command takes them: flag -> (pass, option, type).
_OPTIONS = {
    "--prune": ("prune", "sparsity", float),
    "--quantize": ("quantize", "mode", str),
    "--cluster": ("cluster", "clusters", int),
}


def settings(flags: Sequence[str]) -> tuple[Any, Any]:
    """The recipe (recipes.Recipe) and the budget (budget.Budget, or None) that the rewrite
    command makes of a candidate's flags, each a flag and its value."""
    from tflrewrite import recipes

    overrides: dict[str, dict[str, Any]] = {"prune": {}, "quantize": {}, "cluster": {}}
    budget = None
    metrics = {flag: metric for metric, flag in BUDGET_FLAGS.items()}
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in _OPTIONS:
            step, option, kind = _OPTIONS[flag]
            overrides[step][option] = kind(value)
        elif flag in metrics:
            from tflrewrite.budget import Budget

            budget = Budget(metrics[flag], int(value))
        else:
            raise AssertionError(f"a candidate's flag that the tree does not know: {flag}")
    return recipes.load("identity").with_options(overrides), budget


# ------------------------------------------------------------------ running them


def run(
    explored: Sequence[tuple[Subject, list[Plan]]],
    *,
    workers: int = 1,
    ray: str | None = None,
    budget: tuple[str, int] | None = None,
    on_done: Callable[[Subject, str, dict], None] | None = None,
) -> list[Exploration]:
    """Measure every model's input and its plans that can run, in `workers` processes or on
    Ray (fanout.run), and find each front. `budget` (metric, limit): only candidates within
    it make the front. `on_done(subject, name, row)` as each finishes."""
    jobs, where = [], []
    for k, (subject, plans) in enumerate(explored):
        jobs.append((measure_input, subject))
        where.append((k, None))
        for i, plan in enumerate(plans):
            if plan.refused is None:
                jobs.append((measure, subject, plan))
                where.append((k, i))
    results = [
        Exploration(
            subject, plans, reference={}, rows=[{} for _ in plans], models=[None] * len(plans)
        )
        for subject, plans in explored
    ]

    def done(j: int, outcome: Any) -> None:
        k, i = where[j]
        e = results[k]
        if i is None:
            e.reference = (
                {"error": outcome.reason}
                if isinstance(outcome, fanout.Failed)
                else json.loads(outcome)
            )
            return
        e.rows[i], e.models[i] = _row(e.plans[i], outcome)
        if on_done:
            on_done(e.subject, e.plans[i].candidate.name, e.rows[i])

    fanout.run(_job, jobs, workers=workers, ray=ray, on_done=done)
    for e in results:
        for i, plan in enumerate(e.plans):
            if plan.refused is not None:
                e.rows[i] = _base_row(plan) | {"status": "refused", "reason": plan.refused}
        _judge(e, budget)
    return results


def _job(function: Callable[..., Any], *args: Any) -> Any:
    """What a worker runs: a measure, by reference."""
    return function(*args)


def _row(plan: Plan, outcome: Any) -> tuple[dict, bytes | None]:
    if isinstance(outcome, fanout.Failed):
        return _base_row(plan) | {"status": "failed", "reason": outcome.reason}, None
    text, content = outcome
    return _base_row(plan) | {"status": "ok", **json.loads(text)}, content


def _base_row(plan: Plan) -> dict:
    c = plan.candidate
    return {
        "name": c.name,
        "flags": list(c.flags),
        "command": plan.command,
        "file": None,
        "front": None,
    }


# ------------------------------------------------------------------ the front


def _judge(e: Exploration, budget: tuple[str, int] | None) -> None:
    """Choose the measures the front is drawn by, and draw it."""
    e.size_measure = SIZE_MEASURE.get(e.subject.target, "zip_bytes")
    labels = e.subject.labels
    if labels is None:
        e.fidelity_measure = "sqnr_db"
    else:
        e.fidelity_measure = "accuracy" if _classes(labels) else "mse"
    e.budget = budget
    limit_key = None if budget is None else BUDGET_MEASURE[budget[0]]
    points, index = [], []
    for i, row in enumerate(e.rows):
        m = row.get("measures")
        if row.get("status") != "ok" or m is None:
            continue
        size, fidelity = m.get(e.size_measure), fidelity_value(m, e.fidelity_measure)
        if size is None or fidelity is None:
            continue
        if limit_key is not None and (m.get(limit_key) is None or m[limit_key] > budget[1]):
            continue
        points.append((float(size), fidelity))
        index.append(i)
    e.front = [index[j] for j in pareto(points)]


def fidelity_value(measures: dict, key: str) -> float | None:
    """A candidate's fidelity as higher-is-better: MSE negated, an identical output's SQNR
    (null in JSON) infinite."""
    if key == "sqnr_db":
        return math.inf if measures.get("identical") else measures.get("sqnr_db")
    value = measures.get(key)
    if value is None:
        return None
    return -value if key == "mse" else value


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (size, fidelity) points that no other point beats (as small or smaller
    and as faithful or more, better in one), smallest first; of equal points, the first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def front_file(position: int, name: str) -> str:
    """The file a front model is written to: its place on the front (1 = smallest)."""
    return f"front-{position:02d}-{name}.tflite"


# ------------------------------------------------------------------ what a worker does


def measure(subject: Subject, plan: Plan) -> tuple[str, bytes]:
    """Rewrite the subject by the plan as the rewrite command would, and measure the
    result: (its figures as JSON, its bytes)."""
    from tflrewrite import pipeline, reader, writer

    start = time.perf_counter()
    model = reader.read_bytes(subject.model, subject.path)
    data = subject.calibration if plan.candidate.calibrated else None
    if plan.budget is None:
        result = pipeline.apply(
            model, plan.recipe, target=subject.target, data=data, method=plan.method
        )
    else:
        from tflrewrite import budget

        result = budget.apply(
            model,
            plan.recipe,
            budget=plan.budget,
            target=subject.target,
            data=data,
            method=plan.method,
            accelerator=subject.accelerator,
            name=plan.candidate.file,
        )
    content = writer.to_bytes(result.model)
    rewritten = time.perf_counter()
    figures = _measures(subject, content, result.model, plan.candidate.file)
    figures = _finite(figures)
    figures["seconds"] = {
        "rewrite": round(rewritten - start, 3),
        "measure": round(time.perf_counter() - rewritten, 3),
    }
    return json.dumps(figures), content


def measure_input(subject: Subject) -> str:
    """The input model's own figures (its outputs are the reference), as JSON."""
    from tflrewrite import reader

    model = reader.read_bytes(subject.model, subject.path)
    figures = _measures(subject, subject.model, model, os.path.basename(subject.path))
    return json.dumps(_finite(figures))


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinity in it made None: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _measures(subject: Subject, content: bytes, model: Any, name: str) -> dict:
    from tflrewrite.reports.audit import zip_size

    measures: dict[str, Any] = {"bytes": len(content), "zip_bytes": zip_size(content, name)}
    if subject.target == "ethos-u":
        measures.update(_vela(content, subject.accelerator))
    runner = _runner(subject, content)
    if subject.target == "tflm":
        from tflrewrite.reports.audit import breakdown

        measures["tflm_weight_bytes"] = sum(breakdown(model)[1].values())
        measures["tflm_arena_bytes"] = runner.arena_bytes()
    got = _outputs(runner, subject.evaluation.values)
    outputs = _compare(subject, runner, got)
    measures.update(_summary(outputs))
    if subject.labels is not None:
        measures.update(label_score(got[0], subject.labels))
    return {"measures": measures, "outputs": [_output_json(o) for o in outputs]}


def _runner(subject: Subject, content: bytes) -> Any:
    from tflrewrite import runtime

    # LiteRT has no TFLM_DECODE kernel: a model laid down for TFLite Micro runs in its
    # interpreter, and the input with it, so that both sides run the same kernels.
    return runtime.load(content, name=subject.path, micro=subject.target == "tflm")


def _vela(content: bytes, accelerator: str | None) -> dict:
    from tflrewrite.reports import vela

    with tempfile.TemporaryDirectory(prefix="tflrewrite-explore-") as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(content)
        report = vela.compile_report(path, accelerator or vela.DEFAULT_ACCELERATOR)
    out = {
        "vela_encoded_weights_bytes": report.npu_encoded_weights_bytes,
        "vela_cycles": report.cycles_total,
    }
    if report.error:
        out["vela_error"] = report.error
    return out


# The input model's outputs on the evaluation samples, by Subject.key: computed once in each
# worker process, for every candidate of that model it measures.
_REFERENCE: dict[str, list[np.ndarray]] = {}


def _compare(subject: Subject, runner: Any, got: list[np.ndarray]) -> list[Any]:
    """Each output of `got` (from `runner`) against the input model's on the same samples."""
    from tflrewrite import runtime
    from tflrewrite.reports.verify import output_report

    if subject.key not in _REFERENCE:
        reference = runtime.load(subject.model, name=subject.path, micro=subject.target == "tflm")
        _REFERENCE[subject.key] = _outputs(reference, subject.evaluation.values)
    expected = _REFERENCE[subject.key]
    if len(got) != len(expected):
        raise TflRewriteError(
            f"{subject.path}: the rewritten model has {len(got)} outputs, the input {len(expected)}"
        )
    return [output_report(d["name"], r, c) for d, r, c in zip(runner.outputs, expected, got)]


def _outputs(runner: Any, samples: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each output of `runner` over `samples`, stacked (first axis = samples)."""
    per_output: list[list[np.ndarray]] = [[] for _ in runner.outputs]
    for values in runner.run_each(samples):
        for acc, value in zip(per_output, values):
            acc.append(value)
    return [np.stack(v) for v in per_output]


def _summary(outputs: list[Any]) -> dict:
    worst = min(outputs, key=lambda o: o.sqnr_db)
    agreement = next((o.top1_agreement for o in outputs if o.top1_agreement is not None), None)
    return {
        "sqnr_db": None if math.isinf(worst.sqnr_db) else worst.sqnr_db,
        "identical": all(o.identical for o in outputs),
        "top1_agreement": agreement,
    }


def _output_json(o: Any) -> dict:
    return {
        "name": o.name,
        "sqnr_db": None if math.isinf(o.sqnr_db) else o.sqnr_db,
        "max_abs_error": o.max_abs_error,
        "top1_agreement": o.top1_agreement,
    }


# ------------------------------------------------------------------ labels


def read_labels(arrays: Mapping[str, np.ndarray], *, count: int, where: str) -> np.ndarray | None:
    """The labels of the first `count` samples of arrays keyed as an .npz's (its `y`), or
    None where there are none; refused where they are fewer than the samples. `where` names
    the arrays in errors."""
    from tflrewrite.runtime import LABELS

    if LABELS not in arrays:
        return None
    labels = np.asarray(arrays[LABELS])
    if len(labels) < count:
        raise TflRewriteError(f"{where}: has {len(labels)} labels ({LABELS}) for {count} samples")
    return labels[:count]


def _classes(labels: np.ndarray) -> bool:
    return labels.dtype.kind in "iub"


def label_score(outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How a model's first output (first axis = samples) scores on the labels: top-1
    accuracy where the labels are class ids (integers) and the output has a score per
    class, else the mean squared error against them."""
    scores = outputs.reshape(len(outputs), -1).astype(np.float64)
    if _classes(labels) and scores.shape[1] > 1:
        return {"accuracy": float(np.mean(scores.argmax(axis=1) == labels.reshape(-1)))}
    wanted = labels.reshape(len(labels), -1).astype(np.float64)
    if wanted.shape != scores.shape:
        raise TflRewriteError(
            f"labels of shape {list(labels.shape[1:])} do not fit the output's "
            f"{list(outputs.shape[1:])}"
        )
    return {"mse": float(np.mean((scores - wanted) ** 2))}


# ------------------------------------------------------------------ the record


def to_json(explorations: Sequence[Exploration]) -> dict:
    """explore.json: every model's candidates, their settings, figures and command lines."""
    return {"tflrewrite": __version__, "models": [_model_json(e) for e in explorations]}


def _model_json(e: Exploration) -> dict:
    s = e.subject
    return {
        "input": s.path,
        "target": s.target,
        "calibration": None
        if s.calibration is None
        else {"source": s.calibration.source, "samples": len(s.calibration.values)},
        "evaluation": {
            "source": s.evaluation.source,
            "samples": len(s.evaluation.values),
            "labels": None if s.labels is None else ("classes" if _classes(s.labels) else "values"),
        },
        "size_measure": e.size_measure,
        "size_label": SIZE_LABEL[e.size_measure],
        "fidelity_measure": e.fidelity_measure,
        "fidelity_label": FIDELITY_LABEL[e.fidelity_measure],
        "budget": None if e.budget is None else {"metric": e.budget[0], "limit": e.budget[1]},
        "reference": e.reference,
        "front": [e.rows[i]["name"] for i in e.front],
        "candidates": e.rows,
    }


def assign_files(e: Exploration, folder: str) -> None:
    """Name each model's file, relative to the explore's folder (`folder`: the model's own
    within it): the front's by their place on it."""
    place = {i: k + 1 for k, i in enumerate(e.front)}
    for i, row in enumerate(e.rows):
        if e.models[i] is None:
            continue
        name = row["name"]
        row["front"] = place.get(i)
        file = front_file(place[i], name) if i in place else f"{name}.tflite"
        row["file"] = os.path.normpath(os.path.join(folder, file))


# ------------------------------------------------------------------ the folder


def check_folder(folder: str, *, inputs: Sequence[str], force: bool) -> None:
    """Refuse, before any work, a folder explore cannot write: one that is a file, one whose
    parent is missing, one that holds an input (never written over), or one that holds
    files already (unless `force`)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise TflRewriteError(f"{folder}: is not a folder")
    root = os.path.realpath(folder) + os.sep
    for path in inputs:
        if os.path.realpath(path).startswith(root):
            raise TflRewriteError(f"{folder}: holds the input {path}; explore writes there")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise TflRewriteError(f"{folder}: folder {parent} does not exist")
    if os.path.isdir(folder) and os.listdir(folder) and not force:
        raise TflRewriteError(f"{folder}: is not empty (use --force to write into it)")


def folders(names: Sequence[str], output: str) -> dict[str, str]:
    """Where each model's candidates go: `output` for one model, output/NAME for several
    (NAME: the model's file name less .tflite)."""
    if len(names) == 1:
        return {names[0]: output}
    found: dict[str, str] = {}
    for name in names:
        stem = os.path.splitext(os.path.basename(name))[0]
        folder = os.path.join(output, stem)
        if folder in found.values():
            raise UsageError(f"{name}: another model is also named {stem}; explore them apart")
        found[name] = folder
    return found


def save(explorations: Sequence[Exploration], folder: str, *, force: bool) -> dict:
    """Write every candidate's model and explore.json into `folder` (files named by
    assign_files) and return explore.json's document. A new folder appears whole: it is
    filled under a temporary name, then renamed. Into an existing one (`force`), what an
    earlier explore wrote there (its explore.json's files) is removed first, so that no
    front file of another run is left to mislead."""
    doc = to_json(explorations)
    files = [
        (row["file"], content)
        for e in explorations
        for row, content in zip(e.rows, e.models)
        if content is not None
    ]
    record = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    if os.path.isdir(folder):
        _remove_earlier(folder)
        _fill(folder, files, record)
        return doc
    parent = os.path.dirname(os.path.abspath(folder))
    # made as any new folder is (0o777 less the umask), under a name of its own
    staging = os.path.join(parent, f".{os.path.basename(folder)}.{secrets.token_hex(6)}.tmp")
    try:
        os.mkdir(staging)
    except OSError as e:
        raise TflRewriteError(f"{folder}: cannot make it: {e.strerror or e}") from None
    try:
        _fill(staging, files, record)
        os.rename(staging, folder)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    return doc


def _fill(folder: str, files: list[tuple[str, bytes]], record: str) -> None:
    from tflrewrite.fileio import atomic_write

    for name, content in files:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, lambda f, c=content: f.write(c))
    atomic_write(os.path.join(folder, RECORD), lambda f: f.write(record.encode()))


def _remove_earlier(folder: str) -> None:
    """Remove the model files an earlier explore.json in `folder` lists (inside it only)."""
    try:
        with open(os.path.join(folder, RECORD)) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return
    root = os.path.realpath(folder)
    for model in earlier.get("models", []) if isinstance(earlier, dict) else []:
        for row in model.get("candidates", []):
            name = row.get("file") if isinstance(row, dict) else None
            if not isinstance(name, str) or not name.endswith(".tflite"):
                continue
            path = os.path.realpath(os.path.join(folder, name))
            if path.startswith(root + os.sep) and os.path.isfile(path):
                os.unlink(path)
