"""The one-line verdict on a candidate model's fidelity that ends the rewrite and verify
reports: a grade, and the figures and thresholds that gave it."""

from __future__ import annotations

import math

GRADES = ("lossless", "near-lossless", "good", "degraded", "damaged")

# Each measure's lower bounds of the grades, best first; a value past the last is "damaged".
#
# SQNR of the outputs (the lowest over outputs), in dB. 30 dB is an error power of 0.1% of
# the output's, an RMS error of 3%: int8 weights per channel give the example 49 dB and
# calibrated full int8 42 dB, and at 30 dB and above top-1 agreement stays at 99-100% on
# its held-out digits. 20 dB is an RMS error of 10%, where classes with small margins start
# to flip (the example's data-aware prune 0.5 + cluster 16 + int8: 29 dB, 98.5% agreement).
# Below 15 dB (18% RMS) outputs are mostly noise-shaped: the data-free prune 0.5 + cluster
# 16 gives the example 6 dB and 62% agreement on random inputs, 12 dB and 95% on digits.
SQNR_DB = ((30.0, "near-lossless"), (20.0, "good"), (15.0, "degraded"))
# Top-1 agreement with the reference (the lowest over classifier outputs): 1 sample in 100
# changing its class is what int8 rounding alone does at 30 dB and above; 1 in 10 is a
# model that users will see fail.
AGREEMENT = ((0.99, "near-lossless"), (0.97, "good"), (0.90, "degraded"))
# With class labels: the drop in top-1 accuracy, in points. 0.5 pt is what TF Model
# Optimization's own deployment-tree results call keeping accuracy (and a few samples of a
# test set of a thousand); 3 pt is more than the fine-tuning stages usually win back.
ACCURACY_DROP = ((0.5, "near-lossless"), (1.0, "good"), (3.0, "degraded"))
# With regression targets: the candidate's MSE against the targets over the reference's.
MSE_RATIO = ((1.01, "near-lossless"), (1.05, "good"), (1.25, "degraded"))

HELP = (
    "verdict, the last line of the report: the worse of two grades, SQNR (>= 30 dB "
    "near-lossless,\n20-30 good, 15-20 degraded, < 15 damaged) and top-1 agreement (>= 99%, "
    "97-99%, 90-97%, < 90%).\nWith labels (y in the .npz), by them instead: class labels by "
    "the drop in top-1 accuracy\n(<= 0.5, 0.5-1, 1-3, > 3 points), regression targets by "
    "the MSE ratio candidate/reference\n(<= 1.01, 1.01-1.05, 1.05-1.25, > 1.25). Identical "
    "outputs are lossless."
)


def judge(verify: dict, *, hint: str | None = None) -> dict:
    """{"grade", "line"} for a verify report in its JSON form (VerifyReport.to_json):
    by the labels' measure where the outputs have one, else by SQNR and top-1 agreement.
    `hint` (what to try) ends the line of a degraded or damaged candidate."""
    outputs = verify.get("outputs") or []
    if outputs and all(o.get("identical") for o in outputs):
        return {"grade": "lossless", "line": "outputs identical: lossless"}
    figures, grades = _figures(outputs)
    grade = max(grades, key=lambda g: GRADES.index(g[0]))[0] if grades else "lossless"
    line = ", ".join(figures) + f": {grade}"
    reasons = [why for g, why in grades if g == grade and why]
    if reasons:
        line += f" ({'; '.join(reasons)})"
    if hint and grade in ("degraded", "damaged"):
        line += f"; {hint}"
    return {"grade": grade, "line": line}


def not_measured(why: str) -> dict:
    return {"grade": None, "line": f"fidelity not measured: {why}"}


def _figures(outputs: list[dict]) -> tuple[list[str], list[tuple[str, str | None]]]:
    """The figures the line states, and the grades (with what set each one) that decide."""
    accuracy = [o for o in outputs if o.get("candidate_accuracy") is not None]
    mse = [o for o in outputs if o.get("candidate_mse") is not None]
    figures: list[str] = []
    grades: list[tuple[str, str | None]] = []
    if accuracy:
        o = min(accuracy, key=lambda o: o["candidate_accuracy"] - o["reference_accuracy"])
        drop = 100.0 * (o["reference_accuracy"] - o["candidate_accuracy"])
        figures.append(
            f"accuracy {o['reference_accuracy']:.3f} -> {o['candidate_accuracy']:.3f} "
            f"({0.0 - drop:+.1f} pt)"
        )
        grades.append(_grade(-drop, [(-b, g) for b, g in ACCURACY_DROP], "accuracy drop", " pt"))
    elif mse:
        o = max(mse, key=lambda o: _ratio(o["candidate_mse"], o["reference_mse"]))
        ratio = _ratio(o["candidate_mse"], o["reference_mse"])
        figures.append(f"MSE {o['reference_mse']:.4g} -> {o['candidate_mse']:.4g} ({ratio:.3f}x)")
        grades.append(_grade(-ratio, [(-b, g) for b, g in MSE_RATIO], "MSE ratio", "x"))
    sqnr = [o["sqnr_db"] for o in outputs]
    low = min((math.inf if v is None else v for v in sqnr), default=math.inf)
    figures.append("SQNR inf" if math.isinf(low) and low > 0 else f"SQNR {low:.1f} dB")
    agreement = [o["top1_agreement"] for o in outputs if o.get("top1_agreement") is not None]
    if agreement:
        figures.append(f"top-1 agreement {_percent(min(agreement))}")
    if not (accuracy or mse):  # labels, where given, are what the user cares about
        grades.append(_grade(low, SQNR_DB, "SQNR", " dB"))
        if agreement:
            grades.append(_grade(min(agreement), AGREEMENT, "top-1 agreement", "", percent=True))
    return figures, grades


def _grade(
    value: float,
    bounds: tuple | list,
    what: str,
    unit: str,
    *,
    percent: bool = False,
) -> tuple[str, str | None]:
    """(grade, why) of `value` against lower bounds, best first; why names the bound it
    fell below, where it is not the best grade."""
    if math.isinf(value) and value > 0:
        return "lossless", None
    for i, (bound, grade) in enumerate(bounds):
        if value >= bound:
            return grade, None if i == 0 else _below(what, bounds[i - 1][0], unit, percent)
    return "damaged", _below(what, bounds[-1][0], unit, percent)


def _below(what: str, bound: float, unit: str, percent: bool) -> str:
    if bound < 0:  # a bound on a measure where less is better, stored negated
        return f"{what} over {-bound:g}{unit}"
    shown = _percent(bound) if percent else f"{bound:g}{unit}"
    return f"{what} below {shown}"


def _ratio(candidate: float, reference: float) -> float:
    if reference == 0.0:
        return 1.0 if candidate == 0.0 else math.inf
    return candidate / reference


def _percent(fraction: float) -> str:
    text = f"{100.0 * fraction:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"
