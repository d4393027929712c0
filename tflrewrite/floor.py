"""The quality floor (`--min-sqnr`): each op's precision, int8, int16x8 or float with float16
weights, chosen so that the rewritten model's worst output keeps the floor against the input
model on held-out calibration samples, raising as few bytes and ops above full int8 as it can.

0. Regions. The main subgraph's ops (those of the folded float model the quantizer indexes)
   fall into regions: an op with constant weights (CONV_2D, FULLY_CONNECTED, ...) and the ops
   after it up to the next such op; the ops before the first form a region of their own. A
   region is raised as a whole: an op and the activations it writes, requantized once.
1. Calibrate once (quantize_graph.calibrated); every candidate below is a rewrite of that
   (cheap) run in LiteRT on the held-out samples, its worst output's SQNR against the input
   model's outputs (computed once) and its file bytes measured.
2. Sensitivity. Full int8; then each region alone raised to int16x8, then to float: what
   that buys (the noise power it takes off each output) and costs (file bytes, and
   OP_BYTES per op raised, so that of two choices alike in bytes the one with fewer ops
   wins and no raise is free).
3. Choice. From full int8, while the measured SQNR is under the floor, the raise (a region
   up one or two levels) with the most predicted dB per byte is taken and the result
   measured: predictions subtract each region's noise from the last measurement, per
   output, so that a raise is judged by the worst output it leaves. With a size budget
   (--max-bytes, --max-zip-bytes) raises that would break it are passed over. Once the
   floor is met, each raised region is tried one level lower (least dB per byte first)
   and kept there where the floor still holds: the fewest bytes and ops that meet it.
4. The steps after quantize (the data-aware refine of the int8 weights) run on the choice;
   where the refine takes the worst output under the floor, its input is kept instead.

No choice meets the floor (or none within the budget): TflRewriteError, one line with the
best SQNR reached, before anything is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tflrewrite import pipeline, runtime, targets, writer
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.model import Model
from tflrewrite.passes import quantize, quantize_graph
from tflrewrite.passes.common import Pass, PassResult
from tflrewrite.recipes import Recipe

LEVELS = ("INT8", "INT16", "FLOAT")
NAMES = {"INT8": "int8", "INT16": "int16x8", "FLOAT": "float"}
# What one raised op costs besides its bytes: about a conversion op's share of the file.
OP_BYTES = 64
MAX_SAMPLES = 256  # held-out samples the floor is measured on, at most
# Held-out samples each region's sensitivity is measured on (its noise scaled to the whole
# set): a ranking of raises, which every choice is then measured against on all of them.
SENSITIVITY_SAMPLES = 32
# How far under the floor a lowering must fall on those samples to be refused unmeasured on
# the rest.
SCREEN_DB = 1.0
# The budgets a floor can be held to: those measured on the file itself.
BUDGETS = ("bytes", "zip")


@dataclass(frozen=True)
class Floor:
    """`min_sqnr` (dB, the worst output against the input model); `budget`, a
    budget.Budget the choice must also meet, or None."""

    min_sqnr: float
    budget: Any = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.min_sqnr):
            raise UsageError(f"--min-sqnr must be a number of dB, not {self.min_sqnr}")
        if self.budget is not None and self.budget.metric not in BUDGETS:
            raise UsageError(
                f"--min-sqnr holds to --max-bytes or --max-zip-bytes, not {self.budget.flag} "
                "(Vela's weights are not measured per choice)"
            )


@dataclass
class _Region:
    ops: list[int]  # op indices in the folded model's main subgraph
    name: str  # its weight op's output, or the first op's
    weights: int  # elements of its weights (int8 bytes)
    integer: int  # ops that would run int8
    noise: dict[str, np.ndarray] = field(default_factory=dict)  # level -> per output, alone
    bytes: dict[str, int] = field(default_factory=dict)  # level -> file bytes, alone


@dataclass
class _Measured:
    precision: dict[int, str]
    noise: np.ndarray  # per output
    sqnr: float  # the worst output's, dB
    bytes: int
    got: int  # the budget's measure (bytes or zipped bytes)
    result: PassResult


class _Judge:
    """Runs candidates on the held-out samples against the input model's outputs."""

    def __init__(self, reference: Model, samples: list, zip_name: str | None):
        runner = runtime.load(reference, name="the input model")
        outs = [np.stack(col).astype(np.float64) for col in zip(*runner.run_each(samples))]
        self.want, self.samples, self.zip_name = outs, samples, zip_name
        self.signal = np.array([float(np.sum(w * w)) for w in outs])
        self.count = 0

    def sqnr(self, noise: np.ndarray) -> float:
        with np.errstate(divide="ignore"):
            ratios = np.where(noise > 0, self.signal / np.maximum(noise, 1e-300), np.inf)
        return float(np.min(10 * np.log10(np.maximum(ratios, 1e-300))))

    def measure(
        self, result: PassResult, precision: dict[int, str], count: int | None = None
    ) -> _Measured:
        """`result` run on the samples (the first `count` of them, the noise scaled to all)."""
        data = writer.to_bytes(result.model)
        runner = runtime.load(data, name="a --min-sqnr candidate")
        samples = self.samples[:count]
        noise = np.zeros(len(self.want))
        got = [np.stack(col).astype(np.float64) for col in zip(*runner.run_each(samples))]
        for i, (w, g) in enumerate(zip(self.want, got)):
            w = w[: len(samples)]
            noise[i] = float(np.sum((w - g.reshape(w.shape)) ** 2))
        noise *= len(self.samples) / len(samples)
        self.count += 1
        size = len(data)
        measured = size
        if self.zip_name is not None:
            from tflrewrite.reports.audit import zip_size

            measured = zip_size(data, self.zip_name)
        return _Measured(dict(precision), noise, self.sqnr(noise), size, measured, result)


def apply(
    model: Model,
    recipe: Recipe,
    floor: Floor,
    *,
    held_out: Any,
    progress: Callable[[str], None] | None = None,
    target: str = targets.DEFAULT,
    data: Any = None,
    method: str = "data",
    name: str = "model.tflite",
) -> pipeline.Result:
    """pipeline.apply with the quantize step's per-op precision chosen to meet `floor` on
    `held_out` (calibrate.Samples; see the module's notes). `name`: the output's file name,
    which a zip budget's archive holds."""
    samples = held_out.values[:MAX_SAMPLES]
    zip_name = name if floor.budget is not None and floor.budget.metric == "zip" else None
    planner = _Planner(model, floor, samples, held_out.source, zip_name, progress)
    planner.runtime = targets.load(target)
    runs = {"quantize": planner.quantize_pass(), "refine": planner.guarded_refine()}
    result = pipeline.apply(
        model, recipe, progress=progress, target=target, data=data, method=method, runs=runs
    )
    result.records.insert(0, planner.record())
    return result


class _Planner:
    def __init__(self, model, floor, samples, source, zip_name, progress):
        self.floor, self.source, self.progress = floor, source, progress
        self.judge = _Judge(model, samples, zip_name)
        self.base: _Measured | None = None
        self.chosen: _Measured | None = None
        self.regions: list[_Region] = []
        self.levels: list[int] = []
        self.ops: list = []
        self.final: float | None = None
        self.refine_note: str | None = None
        self.seconds = 0.0
        self.runtime: targets.Target = targets.load(targets.DEFAULT)  # its integer gaps

    # -------------------------------------------------------------- as recipe steps

    def quantize_pass(self) -> Pass:
        def run(model, options, rules=(), *, data=None) -> PassResult:
            began = time.perf_counter()
            samples = None if data is None else data.samples
            cal = quantize_graph.calibrated(model, samples, options)
            self.chosen = self._choose(cal, options, rules)
            self.final = self.chosen.sqnr
            self.seconds += time.perf_counter() - began - cal.seconds
            return self.chosen.result

        return Pass(name="quantize", Options=quantize.Options, run=run)

    def guarded_refine(self) -> Pass:
        from tflrewrite.passes import datafit

        def run(model, options, rules=(), *, data=None) -> PassResult:
            out = datafit.REFINE.run(model, options, rules, data=data)
            began = time.perf_counter()
            after = self.judge.measure(out, {})
            self.seconds += time.perf_counter() - began
            if after.sqnr >= self.floor.min_sqnr or after.sqnr >= self.final:
                self.final = after.sqnr
                return out
            self.refine_note = (
                f"the refit int8 weights gave {after.sqnr:.2f} dB, under the floor: "
                "the rounded ones are kept"
            )
            return PassResult(model, [], out.seconds)

        return Pass(name="refine", Options=datafit.REFINE.Options, run=run)

    # -------------------------------------------------------------- the choice

    def _rewrite(self, cal, options, rules, precision: dict[int, str], count=None) -> _Measured:
        return self.judge.measure(self._candidate(cal, options, rules, precision), precision, count)

    def _candidate(self, cal, options, rules, precision: dict[int, str]) -> PassResult:
        return quantize_graph.rewrite(
            cal,
            options,
            precision=precision,
            rules=rules,
            unsupported=self.runtime.unsupported,
            tied=self.runtime.tied,
            source=f"--min-sqnr {self.floor.min_sqnr:g}",
        )

    def _note(self, text: str) -> None:
        if self.progress:
            self.progress(f"min-sqnr: {text}")

    def _choose(self, cal, options, rules) -> _Measured:
        self.ops = cal.model.subgraphs[0].operators
        self.regions = regions(cal.model)
        self.base = base = self._rewrite(cal, options, rules, {})
        self._note(f"full int8 {base.sqnr:.2f} dB against a floor of {self.floor.min_sqnr:g}")
        limit = None if self.floor.budget is None else self.floor.budget.limit
        if limit is not None and base.got > limit:
            raise TflRewriteError(
                f"--min-sqnr {self.floor.min_sqnr:g} within {self.floor.budget.flag} "
                f"{limit:,}: full int8 alone is {base.got:,} bytes"
            )
        if base.sqnr >= self.floor.min_sqnr:
            self.levels = [0] * len(self.regions)
            return base
        self._sensitivity(cal, options, rules)
        current, best = base, base
        levels = [0] * len(self.regions)
        while current.sqnr < self.floor.min_sqnr:
            move = None
            if self._reachable(current, levels) >= self.floor.min_sqnr:
                move = self._best_move(current, levels, limit)
            if move is not None:
                r, level = move
                levels[r] = level
                what = f"{self.regions[r].name} to {NAMES[LEVELS[level]]}"
            else:  # no raise alone gets there: the noise is spread, so raise it everywhere
                level = min((lv for lv in levels if lv < len(LEVELS) - 1), default=None)
                if level is None:
                    break
                levels = [max(lv, level + 1) for lv in levels]
                what = f"every region to at least {NAMES[LEVELS[level + 1]]}"
            current = self._rewrite(cal, options, rules, self._precision(levels))
            self._note(f"{what}: {current.sqnr:.2f} dB, {current.bytes:,} bytes")
            if current.sqnr > best.sqnr and (limit is None or current.got <= limit):
                best = current
        if current.sqnr < self.floor.min_sqnr:
            self._unreachable(best, limit)
        current = self._lower(cal, options, rules, current, levels, limit)
        if limit is not None and current.got > limit:
            self._unreachable(best, limit)
        return current

    def _sensitivity(self, cal, options, rules) -> None:
        """Each region alone raised to each level above int8, measured on the first
        SENSITIVITY_SAMPLES (full int8 too, so that what a raise takes off is measured on
        the same samples)."""
        count = SENSITIVITY_SAMPLES if len(self.judge.samples) > SENSITIVITY_SAMPLES else None
        base = self.base
        if count is not None:
            base = self.judge.measure(base.result, {}, count)
        for i, region in enumerate(self.regions):
            region.noise["INT8"], region.bytes["INT8"] = base.noise, base.bytes
            for level in LEVELS[1:]:
                m = self._rewrite(cal, options, rules, {op: level for op in region.ops}, count)
                region.noise[level], region.bytes[level] = m.noise, m.bytes
            self._note(f"sensitivity of region {i + 1} of {len(self.regions)}")

    def _int8_alone(self) -> float:
        """Full int8's SQNR on the samples the regions were measured on alone."""
        return self.judge.sqnr(self.regions[0].noise["INT8"])

    def _cost(self, r: int, frm: int, to: int) -> float:
        region = self.regions[r]
        grown = region.bytes[LEVELS[to]] - region.bytes[LEVELS[frm]]
        return max(grown, 0) + (OP_BYTES * region.integer if frm == 0 else 0) + 1

    def _reachable(self, current: _Measured, levels: list[int]) -> float:
        """The SQNR predicted with every region raised to its best level alone, the noise it
        takes off subtracted from `current`'s."""
        noise = current.noise.copy()
        for region, at in zip(self.regions, levels):
            here = region.noise[LEVELS[at]]
            taken = [here - region.noise[lv] for lv in LEVELS[at:]]
            noise -= max(taken, key=lambda t: float(np.sum(t / self.judge.signal)))
        return self.judge.sqnr(np.maximum(noise, 0.0))

    def _best_move(self, current: _Measured, levels: list[int], limit: int | None):
        """The (region, level) raise with the most predicted dB per byte, or None."""
        best, best_score = None, 0.0
        for r, region in enumerate(self.regions):
            at = levels[r]
            for to in range(at + 1, len(LEVELS)):
                taken = region.noise[LEVELS[at]] - region.noise[LEVELS[to]]
                gain = self.judge.sqnr(np.maximum(current.noise - taken, 0.0)) - current.sqnr
                grown = region.bytes[LEVELS[to]] - region.bytes[LEVELS[at]]
                if limit is not None and current.got + grown > limit:
                    continue
                score = gain / self._cost(r, at, to)
                if gain > 0 and score > best_score:
                    best, best_score = (r, to), score
        return best

    def _lower(self, cal, options, rules, current, levels, limit) -> _Measured:
        """Each raised region one level lower where the floor still holds, those that buy
        least per byte first."""

        def value(r: int) -> float:
            region = self.regions[r]
            alone = self.judge.sqnr(region.noise[LEVELS[levels[r]]]) - self._int8_alone()
            return alone / self._cost(r, 0, levels[r])

        for r in sorted((r for r in range(len(levels)) if levels[r]), key=value):
            while levels[r] > 0:
                trial = list(levels)
                trial[r] -= 1
                precision = self._precision(trial)
                candidate = self._candidate(cal, options, rules, precision)
                if self._clearly_under(candidate, precision):
                    break
                m = self.judge.measure(candidate, precision)
                if m.sqnr < self.floor.min_sqnr:
                    break
                levels[:], current = trial, m
        self.levels = levels
        return current

    def _clearly_under(self, candidate: PassResult, precision: dict[int, str]) -> bool:
        """Whether `candidate`, on the first SENSITIVITY_SAMPLES, is SCREEN_DB or more under
        the floor: not worth measuring on all of them (a lowering the floor refuses)."""
        if len(self.judge.samples) <= SENSITIVITY_SAMPLES:
            return False
        quick = self.judge.measure(candidate, precision, SENSITIVITY_SAMPLES)
        return quick.sqnr < self.floor.min_sqnr - SCREEN_DB

    def _precision(self, levels: list[int]) -> dict[int, str]:
        return {
            op: LEVELS[level]
            for region, level in zip(self.regions, levels)
            if level
            for op in region.ops
        }

    def _unreachable(self, best: _Measured, limit: int | None) -> None:
        within = "" if limit is None else f" within {self.floor.budget.flag} {limit:,}"
        raised = sum(1 for op in best.precision)
        raise TflRewriteError(
            f"--min-sqnr {self.floor.min_sqnr:g}: the best SQNR reachable{within} is "
            f"{best.sqnr:.2f} dB (worst output, {len(self.judge.samples)} held-out samples, "
            f"{raised} op(s) raised; full int8 {self.base.sqnr:.2f} dB); nothing was written"
        )

    # -------------------------------------------------------------- the report

    def record(self) -> dict:
        """The floor's step record: what the choice met, and per raised op what its region
        cost alone (bytes) and bought alone (dB over full int8)."""
        base, chosen = self.base, self.chosen
        levels = self.levels or [0] * len(self.regions)
        tensors, raised_weights = [], 0
        for region, level in zip(self.regions, levels):
            if not level:
                continue
            name = LEVELS[level]
            if name == "FLOAT":
                raised_weights += region.weights
            gain = self.judge.sqnr(region.noise[name]) - self._int8_alone()
            for op in region.ops:
                tensors.append(
                    {
                        "tensor": _op_name(self.ops, op),
                        "op": self.ops[op].type,
                        "action": "raised",
                        "precision": NAMES[name],
                        "region": region.name,
                        "region_bytes": region.bytes[name] - base.bytes,
                        "region_gain_db": _finite(gain),
                    }
                )
        weights = sum(r.weights for r in self.regions)
        out = {
            "pass": "floor",
            "min_sqnr_db": self.floor.min_sqnr,
            "samples": len(self.judge.samples),
            "source": self.source,
            "int8_sqnr_db": _finite(base.sqnr),
            "planned_sqnr_db": _finite(chosen.sqnr),
            "sqnr_db": _finite(self.final),
            "int8_bytes": base.bytes,
            "planned_bytes": chosen.bytes,
            "regions": len(self.regions),
            "raised_ops": len(tensors),
            "weight_bytes": weights,
            "raised_weight_bytes": raised_weights,
            "measurements": self.judge.count,
            "seconds": {"floor": round(self.seconds, 3)},
            "tensors": tensors,
        }
        if self.floor.budget is not None:
            out["budget"] = {"measure": self.floor.budget.metric, "limit": self.floor.budget.limit}
        if self.refine_note:
            out["refine"] = self.refine_note
        return out


def _op_name(ops: list, i: int) -> str:
    out = next((t for t in ops[i].outputs if t is not None), None)
    return out.name if out is not None else ""


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(float(value), 3)


def regions(model: Model) -> list[_Region]:
    """The main subgraph's ops in regions (see the module's notes): each weight op with the
    ops after it up to the next, and the ops before the first weight op."""
    ops = model.subgraphs[0].operators
    out: list[_Region] = []
    for i, op in enumerate(ops):
        rule = quantize_graph.INT8_OPS.get(op.type)
        weights = (
            op.inputs[rule.weights]
            if rule is not None
            and rule.weights is not None
            and len(op.inputs) > rule.weights
            and op.inputs[rule.weights] is not None
            and op.inputs[rule.weights].is_constant
            else None
        )
        if weights is not None or not out:
            out.append(_Region([], _op_name(ops, i), 0, 0))
        region = out[-1]
        region.ops.append(i)
        region.integer += op.type in quantize_graph.INT8_OPS
        if weights is not None:
            region.weights += int(np.prod(weights.shape or ()))
    return [r for r in out if r.integer]
