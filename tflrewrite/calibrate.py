"""Calibration: the range of every float activation of a model over sample inputs.

The model runs in LiteRT with its intermediate tensors kept, one sample at a time, so memory
stays that of one inference whatever the number of samples. Ranges are min/max by default;
`percentile` and `mse` clip outliers, from a histogram of each tensor collected in a second
run over the samples (2,048 bins between the min and the max of the first).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from tflrewrite import runtime
from tflrewrite.errors import TflRewriteError
from tflrewrite.model import Model

METHODS = ("minmax", "percentile", "mse")
RANDOM = "random"
BINS = 2048
# The tails `percentile` leaves out: 0.01% of the values on each side.
TAIL = 1e-4


@dataclass
class Samples:
    """Sample inputs in real values (one list of arrays per sample, in model input order),
    a line that says where they came from, and their labels where the data has some (an
    .npz's `y`: class labels or regression targets, one per sample; see
    runtime.array_labels)."""

    values: list[list[np.ndarray]]
    source: str
    labels: np.ndarray | None = None

    def split(self, n: int) -> tuple[Samples, Samples | None]:
        """The first n samples, and the rest (None when nothing is left over)."""
        first = Samples(self.values[:n], self.source, self._labels(0, n))
        rest = self.values[n:]
        held_out = Samples(
            rest,
            f"{self.source}, {len(rest)} held out from calibration",
            self._labels(n, len(self.values)),
        )
        return first, held_out if rest else None

    def head(self, n: int, source: str) -> Samples:
        """The first n samples, said to come from `source`."""
        return Samples(self.values[:n], source, self._labels(0, n))

    def _labels(self, start: int, stop: int) -> np.ndarray | None:
        return None if self.labels is None else self.labels[start:stop]


def load(
    spec: str | os.PathLike | Mapping[str, np.ndarray],
    runner: runtime.BaseRunner,
    count: int,
    seed: int = 0,
) -> Samples:
    """Samples from an .npz (one array per input, keyed by input name, first axis =
    samples; `y`, if there, their labels), from arrays keyed the same way, from a folder of
    images (see _images), or `count` seeded random ones when `spec` is "random"."""
    if isinstance(spec, Mapping):
        return _arrays(spec, runner, where="the calibration arrays", source="arrays")
    spec = os.fspath(spec)
    if spec == RANDOM:
        values = runtime.random_inputs([runner], count, seed)
        return Samples(values, f"random inputs (seed {seed}): no real data, ranges are guesses")
    if os.path.isdir(spec):
        return Samples(_images(spec, runner, count), f"{os.path.basename(spec.rstrip('/'))}/")
    if not os.path.exists(spec):
        raise TflRewriteError(f"{spec}: no such calibration file")
    return _arrays(runtime.npz_arrays(spec), runner, where=spec, source=os.path.basename(spec))


def _arrays(
    arrays: Mapping[str, np.ndarray], runner: runtime.BaseRunner, *, where: str, source: str
) -> Samples:
    values = runtime.array_inputs(arrays, runner, None, where=where)
    if not values:
        raise TflRewriteError(f"{where}: holds no samples")
    labels = runtime.array_labels(arrays, runner, len(values), where=where)
    return Samples(values, source, labels)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _images(folder: str, runner: runtime.BaseRunner, count: int) -> list[list[np.ndarray]]:
    """The first `count` images of `folder` (by name), each resized (bilinear) to the
    model's one image input (1 x H x W x 1 or 3) and scaled from 0..255 to [0, 1] for a
    float input, or to the whole real range a quantized input represents."""
    try:
        from PIL import Image
    except ImportError:
        raise TflRewriteError(
            f"{folder}: reading images needs Pillow (pip install 'tflrewrite[images]')"
        ) from None
    if len(runner.inputs) != 1 or len(runner.inputs[0]["shape"]) != 4:
        raise TflRewriteError(f"{folder}: image folders need a model with one NHWC input")
    detail = runner.inputs[0]
    _, height, width, channels = (int(d) for d in detail["shape"])
    if channels not in (1, 3):
        raise TflRewriteError(f"{folder}: the model's input has {channels} channels, not 1 or 3")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise TflRewriteError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    lo, hi = 0.0, 1.0
    scale, zero = detail["quantization"]
    if scale:
        info = np.iinfo(detail["dtype"])
        lo, hi = scale * (info.min - zero), scale * (info.max - zero)
    samples = []
    for name in names[:count]:
        try:
            with Image.open(os.path.join(folder, name)) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, np.float32).reshape(1, height, width, channels)
        except OSError as e:
            raise TflRewriteError(
                f"{os.path.join(folder, name)}: not a readable image ({e})"
            ) from None
        samples.append([(lo + pixels / 255.0 * (hi - lo)).astype(np.float32)])
    return samples


def for_model(
    model: str | bytes | Model, spec: str | Mapping[str, np.ndarray], count: int, seed: int = 0
) -> tuple[Samples, Samples | None]:
    """(the first `count` samples of `spec` for `model` (a file, its bytes or a Model), the
    rest or None): the second part verifies what the first calibrated."""
    return load(spec, runtime.load(model), count, seed).split(count)


def ranges(
    model: Model,
    samples: Samples,
    *,
    method: str = "minmax",
    progress: Callable[[int, int], None] | None = None,
    levels: int = 256,
    sums: dict[int, np.ndarray | None] | None = None,
) -> dict[int, tuple[float, float]]:
    """(low, high) of every float32 activation of the main subgraph, keyed by id(tensor).
    Activations that a run never computes (an unused branch) are left out. `levels`: the
    integer steps the ranges will be quantized to (method mse weighs rounding by them).
    `sums`: its keys index activations of the main subgraph, each of whose values becomes
    that activation summed over the samples in float64, in sample order (None where no run
    computes it), from the same runs."""
    if method not in METHODS:
        raise TflRewriteError(f"calibration method must be one of {', '.join(METHODS)}")
    runner = runtime.load(model, name="calibration model", keep_tensors=True)
    sg = model.subgraphs[0]
    watched = [
        (i, t) for i, t in enumerate(sg.tensors) if t.dtype == "FLOAT32" and not t.is_constant
    ]
    total = len(samples.values) * (1 if method == "minmax" else 2)
    low = np.full(len(watched), np.inf)
    high = np.full(len(watched), -np.inf)
    summed = list(sums or ())
    for k, _ in enumerate(runner.run_each(samples.values)):
        for j, (i, _t) in enumerate(watched):
            value = runner.stored(i)
            if value is not None and value.size:
                low[j] = min(low[j], float(value.min()))
                high[j] = max(high[j], float(value.max()))
        for i in summed:
            _add(sums, i, runner.stored(i))
        if progress:
            progress(k + 1, total)
    if method != "minmax":
        low, high = _clipped(
            runner, samples, watched, low, high, method, progress, total, levels=levels
        )
    return {
        id(t): (float(lo), float(hi))
        for (_, t), lo, hi in zip(watched, low, high)
        if np.isfinite(lo) and np.isfinite(hi)
    }


def _add(sums: dict[int, np.ndarray | None], i: int, value: np.ndarray | None) -> None:
    if value is None:
        return  # not computed in this run
    if sums[i] is None:
        sums[i] = value.astype(np.float64)
    else:
        sums[i] += value


def _clipped(runner, samples, watched, low, high, method, progress, total, *, levels):
    """Ranges from histograms: the 0.01% / 99.99% percentiles, or the clipping that gives
    the least expected squared error once values are rounded to `levels` integer steps."""
    hist = np.zeros((len(watched), BINS))
    done = len(samples.values)
    for k, _ in enumerate(runner.run_each(samples.values)):
        for j, (i, _t) in enumerate(watched):
            value = runner.stored(i)
            if value is not None and value.size and high[j] > low[j]:
                hist[j] += np.histogram(value, BINS, (low[j], high[j]))[0]
        if progress:
            progress(done + k + 1, total)
    new_low, new_high = low.copy(), high.copy()
    for j in range(len(watched)):
        if hist[j].sum() == 0:
            continue
        edges = np.linspace(low[j], high[j], BINS + 1)
        if method == "percentile":
            new_low[j], new_high[j] = _percentile_range(hist[j], edges)
        else:
            new_low[j], new_high[j] = _mse_range(hist[j], edges, levels)
    return new_low, new_high


def _percentile_range(hist: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    cdf = np.cumsum(hist) / hist.sum()
    lo = edges[int(np.searchsorted(cdf, TAIL))]
    hi = edges[int(np.searchsorted(cdf, 1.0 - TAIL)) + 1]
    return float(lo), float(hi)


def _mse_range(hist: np.ndarray, edges: np.ndarray, levels: int = 256) -> tuple[float, float]:
    """Shrink [low, high] toward zero by the factor (0.3 to 1.0) that minimises rounding
    error (step² / 12 per value inside, `levels` steps) plus clipping error (distance²
    outside)."""
    centres = (edges[:-1] + edges[1:]) / 2
    lo0, hi0 = min(edges[0], 0.0), max(edges[-1], 0.0)
    best, best_err = (edges[0], edges[-1]), np.inf
    for f in np.linspace(0.3, 1.0, 71):
        lo, hi = lo0 * f, hi0 * f
        step = (hi - lo) / (levels - 1) or 1.0
        outside = np.where(centres < lo, lo - centres, np.where(centres > hi, centres - hi, 0.0))
        err = float(np.sum(hist * np.where(outside > 0, outside**2, step * step / 12)))
        if err < best_err:
            best, best_err = (lo, hi), err
    return float(best[0]), float(best[1])
