"""Measures how far apart a reference and a candidate model's outputs are on the same inputs
(both run through tflrewrite.runtime)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from tflrewrite import runtime
from tflrewrite.errors import TflRewriteError
from tflrewrite.reports.verdict import judge
from tflrewrite.runtime import LABELS, BaseRunner


@dataclass
class OutputReport:
    name: str
    shape: list[int]
    sqnr_db: float  # inf when identical
    max_abs_error: float
    top1_agreement: float | None  # for classifier-shaped outputs
    identical: bool
    # With labels (an .npz's `y`) that fit this output: top-1 accuracy of both models
    # against class labels, or their mean squared error against regression targets.
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None
    reference_mse: float | None = None
    candidate_mse: float | None = None


@dataclass
class VerifyReport:
    reference: str
    candidate: str
    samples: int
    inputs: str  # where the inputs came from
    outputs: list[OutputReport] = field(default_factory=list)
    labels: str | None = None  # what the labels were, where the inputs came with some

    @property
    def min_sqnr_db(self) -> float:
        return min((o.sqnr_db for o in self.outputs), default=math.inf)

    @property
    def verdict(self) -> dict:
        """{"grade", "line"}: the one-line verdict on fidelity (reports.verdict)."""
        return judge(self.to_json(verdict=False))

    def to_json(self, *, verdict: bool = True) -> dict:
        out = asdict(self)
        if self.labels is None:
            del out["labels"]
        out["min_sqnr_db"] = self.min_sqnr_db
        for o in out["outputs"]:  # JSON has no infinity
            o["sqnr_db"] = None if math.isinf(o["sqnr_db"]) else o["sqnr_db"]
            for key in LABEL_FIELDS:  # only where labels fit the output
                if o[key] is None:
                    del o[key]
        if math.isinf(out["min_sqnr_db"]):
            out["min_sqnr_db"] = None
        if verdict:
            out["verdict"] = judge(out)
        return out


LABEL_FIELDS = ("reference_accuracy", "candidate_accuracy", "reference_mse", "candidate_mse")


def compare(
    reference: BaseRunner,
    candidate: BaseRunner,
    samples: list[list[np.ndarray]],
    source: str,
    progress: Callable[[int], None] | None = None,
    labels: np.ndarray | None = None,
) -> VerifyReport:
    """Run both models on `samples` (from `source`) and compare every output; with `labels`
    (one per sample), score both against them where they fit an output."""
    if len(reference.inputs) != len(candidate.inputs):
        raise TflRewriteError(
            f"{candidate.path}: has {len(candidate.inputs)} inputs, "
            f"the reference {len(reference.inputs)}"
        )
    if len(reference.outputs) != len(candidate.outputs):
        raise TflRewriteError(
            f"{candidate.path}: has {len(candidate.outputs)} outputs, "
            f"the reference {len(reference.outputs)}"
        )
    refs: list[list[np.ndarray]] = [[] for _ in reference.outputs]
    cands: list[list[np.ndarray]] = [[] for _ in reference.outputs]
    runs = zip(reference.run_each(samples), candidate.run_each(samples))
    for k, (ref_out, cand_out) in enumerate(runs):
        for acc, value in zip(refs, ref_out):
            acc.append(value)
        for acc, value in zip(cands, cand_out):
            acc.append(value)
        if progress:
            progress(k + 1)
    report = VerifyReport(reference.path, candidate.path, len(samples), source)
    for detail, r, c in zip(reference.outputs, refs, cands):
        out = output_report(detail["name"], np.stack(r), np.stack(c))
        if labels is not None:
            _score(out, np.stack(r), np.stack(c), labels[: len(samples)])
        report.outputs.append(out)
    if labels is not None:
        kind = "class labels" if labels.dtype.kind in "biu" else "regression targets"
        report.labels = f"{LABELS}: {min(len(labels), len(samples))} {kind}"
    return report


def _score(out: OutputReport, ref: np.ndarray, cand: np.ndarray, y: np.ndarray) -> None:
    """Accuracy (class labels) or MSE (regression targets) of both outputs against `y`,
    where `y` fits this output (runtime.array_labels checked that it fits one)."""
    n = len(y)
    if y.dtype.kind in "biu":
        if top1_agreement(ref, cand) is None:
            return
        classes = ref.reshape(n, -1).shape[1]
        truth = y.reshape(-1).astype(np.int64)
        if truth.size != n or truth.min(initial=0) < 0 or truth.max(initial=0) >= classes:
            return
        out.reference_accuracy = float(np.mean(ref.reshape(n, -1).argmax(axis=1) == truth))
        out.candidate_accuracy = float(np.mean(cand.reshape(n, -1).argmax(axis=1) == truth))
        return
    r, c = ref.reshape(n, -1).astype(np.float64), cand.reshape(n, -1).astype(np.float64)
    target = y.reshape(n, -1).astype(np.float64)
    if target.shape != r.shape:
        return
    out.reference_mse = float(np.mean((r - target) ** 2))
    out.candidate_mse = float(np.mean((c - target) ** 2))


def compare_files(
    reference: str | bytes,
    candidate: str | bytes,
    *,
    samples: list[list[np.ndarray]] | None = None,
    source: str = "",
    labels: np.ndarray | None = None,
    npz: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    count: int | None = None,
    seed: int = 0,
    micro: bool = False,
    xnnpack: bool = False,
    names: tuple[str, str] | None = None,
) -> VerifyReport:
    """Load two model files or their bytes (in tflite-micro where `micro`, else in LiteRT;
    `names` names bytes in the report and errors) and compare them on `samples` (which
    came from `source`, labelled by `labels` if given), on the samples in the .npz `npz` or
    in arrays keyed the same way (the first `count`; labelled by their `y`, if any), or on
    `count` seeded random inputs. Made to run in a runtime.Child: it tells
    runtime.progress how far it has got."""
    ref_name, cand_name = names or (None, None)
    ref = runtime.load(reference, name=ref_name, micro=micro, xnnpack=xnnpack)
    cand = runtime.load(candidate, name=cand_name, micro=micro, xnnpack=xnnpack)
    if samples is None and npz is not None:
        if isinstance(npz, Mapping):
            arrays, source = npz, "arrays"
        else:
            arrays, source = runtime.npz_arrays(npz), os.fspath(npz)
        samples = runtime.array_inputs(arrays, ref, count, where=source)
        labels = runtime.array_labels(arrays, ref, len(samples), where=source)
    elif samples is None:
        samples = runtime.random_inputs([ref, cand], count or 0, seed)
        source = f"random (seed {seed})"
    total = len(samples)
    return compare(
        ref, cand, samples, source, progress=lambda k: runtime.progress(k, total), labels=labels
    )


def output_report(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputReport:
    """Compare one output over all samples (first axis = samples)."""
    if ref.shape != cand.shape:
        raise TflRewriteError(f"output {name!r}: shapes differ ({ref.shape} vs {cand.shape})")
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    return OutputReport(
        name=name,
        shape=list(ref.shape[1:]),
        sqnr_db=sqnr_db(r, c),
        max_abs_error=float(np.max(np.abs(r - c))) if r.size else 0.0,
        top1_agreement=top1_agreement(r, c),
        identical=bool(np.array_equal(ref, cand)),
    )


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `cand` against `ref`, in dB."""
    return power_ratio_db(float(np.sum(ref**2)), float(np.sum((ref - cand) ** 2)))


def power_ratio_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): inf without noise, -inf without signal."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float | None:
    """Fraction of samples whose arg-max agrees, for classifier-shaped outputs (one vector
    of two or more scores per sample); None for other outputs."""
    per_sample = ref.reshape(ref.shape[0], -1)
    squeezed = [d for d in ref.shape[1:] if d != 1]
    if len(squeezed) != 1 or squeezed[0] < 2:
        return None
    other = cand.reshape(cand.shape[0], -1)
    return float(np.mean(per_sample.argmax(axis=1) == other.argmax(axis=1)))
