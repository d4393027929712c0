"""Measures how far apart a reference and a candidate model's outputs are on the same inputs
(both run through tflrewrite.runtime)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from tflrewrite import runtime
from tflrewrite.errors import TflRewriteError
from tflrewrite.runtime import BaseRunner


@dataclass
class OutputReport:
    name: str
    shape: list[int]
    sqnr_db: float  # inf when identical
    max_abs_error: float
    top1_agreement: float | None  # for classifier-shaped outputs
    identical: bool


@dataclass
class VerifyReport:
    reference: str
    candidate: str
    samples: int
    inputs: str  # where the inputs came from
    outputs: list[OutputReport] = field(default_factory=list)

    @property
    def min_sqnr_db(self) -> float:
        return min((o.sqnr_db for o in self.outputs), default=math.inf)

    def to_json(self) -> dict:
        out = asdict(self)
        out["min_sqnr_db"] = self.min_sqnr_db
        for o in out["outputs"]:  # JSON has no infinity
            o["sqnr_db"] = None if math.isinf(o["sqnr_db"]) else o["sqnr_db"]
        if math.isinf(out["min_sqnr_db"]):
            out["min_sqnr_db"] = None
        return out


def compare(
    reference: BaseRunner,
    candidate: BaseRunner,
    samples: list[list[np.ndarray]],
    source: str,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
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
        report.outputs.append(output_report(detail["name"], np.stack(r), np.stack(c)))
    return report


def compare_files(
    reference: str,
    candidate: str,
    *,
    samples: list[list[np.ndarray]] | None = None,
    source: str = "",
    npz: str | None = None,
    count: int | None = None,
    seed: int = 0,
    micro: bool = False,
    xnnpack: bool = False,
) -> VerifyReport:
    """Load two model files (in tflite-micro where `micro`, else in LiteRT) and compare them
    on `samples` (which came from `source`), on the samples in the .npz `npz` (the first
    `count`), or on `count` seeded random inputs. Made to run in a runtime.Child: it tells
    runtime.progress how far it has got."""
    ref = runtime.load(reference, micro=micro, xnnpack=xnnpack)
    cand = runtime.load(candidate, micro=micro, xnnpack=xnnpack)
    if samples is None and npz is not None:
        samples, source = runtime.npz_inputs(npz, ref, count), npz
    elif samples is None:
        samples = runtime.random_inputs([ref, cand], count or 0, seed)
        source = f"random (seed {seed})"
    total = len(samples)
    return compare(ref, cand, samples, source, progress=lambda k: runtime.progress(k, total))


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
