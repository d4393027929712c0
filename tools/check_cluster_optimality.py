#!/usr/bin/env python3
"""Compare the cluster pass's int8 clustering with k-means rounded to integers, on every output
channel and every whole tensor of the corpus models' int8 weights.

    python tools/check_cluster_optimality.py [--clusters 16] [--no-keep-zero] [--sklearn]

The reference for a unit (its int8 values), independent of the pass's DP: k-means from 10
starts on the values (on their histogram, with the counts as weights: the same problem),
each start's centroids rounded to integers (half away from zero), every value reassigned to
the nearest rounded centroid, then Lloyd's rounds in integers (each cluster to its best
integer centroid, values reassigned) while they lower the error; the least error over the
starts. Zero is handled as the pass does: with zeros kept (its default), zeros stay a
cluster of their own, the other values share K - 1 clusters, and no other value goes to 0
(a centroid that rounds to 0 takes the nearer of +-1).

The k-means is scikit-learn's algorithm (greedy k-means++ starts, Lloyd's iterations, an
empty cluster moved to the farthest point) written in numpy for every unit and start at
once: the 1-D points of all units lie side by side and one sorted search assigns them all.
scikit-learn's KMeans takes ~0.05 s a unit, too slow for the ~15,000 units that need
clustering. --sklearn runs scikit-learn's KMeans(n_init=10) instead, its best start rounded
and reassigned with no integer rounds (the literal reference; about 15 minutes).

Units with at most K distinct values to cluster (K - 1 with zeros kept) are not compared:
every value is then its own cluster and the pass leaves no error (the test checks that).

Prints how many units were compared and on how many the pass's squared error is below,
equal to and above the reference's (above should be none: the pass's int8 DP is exact).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

_GAP = 1024.0  # spacing of the units side by side: more than twice the int8 range


@dataclass
class Units:
    """Every int8 clustering unit of some models: labels, histograms and the pass's error."""

    labels: list[str]
    hists: np.ndarray  # (units, 256) int64, counts of the values -128..127
    ours: np.ndarray  # (units,) the pass's squared error in stored values (integers)


def int8_units(model_paths: dict, k: int, keep_zero: bool) -> Units:
    """Each output channel and each whole tensor of the int8 weights, with the squared error
    the cluster pass's kernel leaves on it (per channel, and per tensor)."""
    from tflrewrite import reader
    from tflrewrite.kernels import kmeans1d, stats
    from tflrewrite.weights import find_weights

    labels, hists, ours = [], [], []
    for name, path in sorted(model_paths.items()):
        weights, _ = find_weights(reader.read(path))
        for w in weights:
            if w.tensor.dtype != "INT8":
                continue
            rows = np.ascontiguousarray(w.channels(w.tensor.data))
            h = stats.int8_histograms(rows)
            _, sq, _ = kmeans1d.cluster_int8(rows, k, keep_zero, per_row=True)
            _, sq_all, _ = kmeans1d.cluster_int8(rows, k, keep_zero, per_row=False)
            labels += [f"{name}:{w.name}[{c}]" for c in range(rows.shape[0])] + [f"{name}:{w.name}"]
            hists += [h, h.sum(axis=0, keepdims=True)]
            ours += [sq, [sq_all.sum()]]
    return Units(labels, np.concatenate(hists), np.concatenate(ours))


def needs_clustering(hists: np.ndarray, k: int, keep_zero: bool) -> np.ndarray:
    """Which units have more distinct values to cluster than clusters for them."""
    zero_alone = keep_zero & (hists[:, 128] > 0)
    movable = np.count_nonzero(hists, axis=1) - zero_alone
    return movable > k - zero_alone


def _round_half_away(c: np.ndarray) -> np.ndarray:
    return np.sign(c) * np.floor(np.abs(c) + 0.5)


@dataclass
class _Points:
    """The movable values of many jobs (a unit and a start) side by side, job after job."""

    x: np.ndarray  # value
    w: np.ndarray  # count
    job: np.ndarray  # job of each point
    first: np.ndarray  # (jobs + 1,) where each job's points start
    shifted: np.ndarray  # x + job * _GAP: sorted, and one sorted search serves every job


def _points(hists: np.ndarray, keep_zero: bool, n_init: int) -> _Points:
    movable = hists.copy()
    if keep_zero:
        movable[:, 128] = 0
    rep = np.repeat(movable, n_init, axis=0)  # job = unit * n_init + start
    job, b = np.nonzero(rep)
    x = (b - 128).astype(np.float64)
    first = np.concatenate([[0], np.cumsum(np.count_nonzero(rep, axis=1))])
    return _Points(x, rep[job, b].astype(np.float64), job, first, x + job * _GAP)


def _pick(pts: _Points, p: np.ndarray, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """(jobs, n) points drawn in each job with probability proportional to p (p >= 0, with a
    positive sum in every job)."""
    jobs = pts.first.size - 1
    cum = np.cumsum(p)
    start = np.concatenate([[0.0], cum])[pts.first[:-1], None]
    total = cum[pts.first[1:] - 1, None] - start
    idx = np.searchsorted(cum, (start + rng.random((jobs, n)) * total).reshape(-1), "right")
    idx = idx.reshape(jobs, n)
    return np.clip(idx, pts.first[:-1, None], pts.first[1:, None] - 1)


def _kmeanspp(pts: _Points, k: int, rng: np.random.Generator) -> np.ndarray:
    """(jobs, k) greedy k-means++ starts, every job at once, as scikit-learn makes them: each
    centroid after the first is the best, by the weighted squared error it leaves, of
    2 + ln(k) candidates drawn by weighted D^2 sampling."""
    jobs = pts.first.size - 1
    trials = 2 + int(np.log(k))
    cent = np.empty((jobs, k))
    cent[:, 0] = pts.x[_pick(pts, pts.w, rng)[:, 0]]
    d2 = (pts.x - cent[pts.job, 0]) ** 2
    for c in range(1, k):
        p = pts.w * d2
        # a job whose points are all centroids already draws any point (a repeat is harmless)
        p = np.where(np.add.reduceat(p, pts.first[:-1])[pts.job] > 0, p, pts.w)
        cand = pts.x[_pick(pts, p, rng, trials)]
        left = np.minimum(d2[:, None], (pts.x[:, None] - cand[pts.job]) ** 2)
        best = np.argmin(np.add.reduceat(pts.w[:, None] * left, pts.first[:-1]), axis=1)
        cent[:, c] = cand[np.arange(jobs), best]
        d2 = left[np.arange(pts.x.size), best[pts.job]]
    return cent


def _nearest(pts: _Points, cent: np.ndarray) -> np.ndarray:
    """Index into its job's sorted centroids of each point's nearest one."""
    jobs, k = cent.shape
    shifted = cent + (np.arange(jobs) * _GAP)[:, None]
    mids = ((shifted[:, 1:] + shifted[:, :-1]) / 2).reshape(-1)
    # the midpoints below each point, counted from where each midpoint falls among the
    # points (fewer to search than the points; a point on a midpoint goes to the lower side)
    below = np.cumsum(
        np.bincount(np.searchsorted(pts.shifted, mids, side="right"), minlength=pts.x.size + 1)
    )
    return below[: pts.x.size] - pts.job * (k - 1)


def _lloyd(pts: _Points, cent: np.ndarray, max_iter: int = 300) -> np.ndarray:
    """Lloyd's iterations until no point changes cluster. As in scikit-learn, an empty
    cluster moves to the point farthest from its centroid (here one per job and round)."""
    jobs, k = cent.shape
    cent = np.sort(cent, axis=1)
    label = None
    for _ in range(max_iter):
        new = _nearest(pts, cent)
        slot = pts.job * k + new
        s0 = np.bincount(slot, weights=pts.w, minlength=jobs * k).reshape(jobs, k)
        empty = s0 == 0
        if label is not None and np.array_equal(new, label) and not empty.any():
            break
        label = new
        s1 = np.bincount(slot, weights=pts.w * pts.x, minlength=jobs * k).reshape(jobs, k)
        mean = np.where(empty, cent, s1 / np.where(empty, 1.0, s0))
        far = _farthest(pts, cent[pts.job, new])
        move = np.flatnonzero(empty.any(axis=1) & (far >= 0))
        mean[move, np.argmax(empty[move], axis=1)] = pts.x[far[move]]
        cent = np.sort(mean, axis=1)
    return cent


def _farthest(pts: _Points, centroid: np.ndarray) -> np.ndarray:
    """Per job, the index of its (first) point farthest from its centroid, or -1 where every
    point sits on one."""
    d = np.abs(pts.x - centroid)
    top = np.maximum.reduceat(d, pts.first[:-1])
    hit = np.flatnonzero((d == top[pts.job]) & (d > 0))
    jobs, first = np.unique(pts.job[hit], return_index=True)
    out = np.full(pts.first.size - 1, -1)
    out[jobs] = hit[first]
    return out


def _integer_centroids(cent: np.ndarray, keep_zero: bool) -> np.ndarray:
    """Centroids rounded as the pass rounds them: half away from zero, and where zeros are
    kept a nonzero value never goes to 0 (the nearer of +-1 instead)."""
    r = _round_half_away(cent)
    if keep_zero:
        r = np.where(r == 0, np.where(cent >= 0, 1.0, -1.0), r)
    return np.sort(r, axis=1)


def _rounded_cost(pts: _Points, cent: np.ndarray, keep_zero: bool, polish: int) -> np.ndarray:
    """Per job: the centroids rounded, every value reassigned to the nearest, then up to
    `polish` rounds of Lloyd in integers (each cluster to its best integer centroid, the
    values reassigned again), none of which raises the error; the error at the end."""
    jobs, k = cent.shape
    r = _integer_centroids(cent, keep_zero)
    for _ in range(polish):
        slot = pts.job * k + _nearest(pts, r)
        s0 = np.bincount(slot, weights=pts.w, minlength=jobs * k).reshape(jobs, k)
        s1 = np.bincount(slot, weights=pts.w * pts.x, minlength=jobs * k).reshape(jobs, k)
        mean = np.where(s0 > 0, s1 / np.where(s0 > 0, s0, 1.0), r)
        new = _integer_centroids(mean, keep_zero)
        if np.array_equal(new, r):
            break
        r = new
    label = _nearest(pts, r)
    err = pts.w * (pts.x - r[pts.job, label]) ** 2
    return np.bincount(pts.job, weights=err, minlength=jobs)


def _zeros_cost(hists: np.ndarray, keep_zero: bool) -> np.ndarray:
    """k == 1 with zeros kept: every value goes to the zero cluster."""
    levels = np.arange(-128, 128, dtype=np.float64)
    return hists @ levels**2 if keep_zero else np.zeros(hists.shape[0])


def reference(
    hists: np.ndarray, k: int, keep_zero: bool, *, n_init: int = 10, seed: int = 0, polish: int = 50
) -> np.ndarray:
    """The reference's squared error for each unit (see the module's docstring). Every unit
    given must need clustering (`needs_clustering`)."""
    zero_alone = keep_zero & (hists[:, 128] > 0)
    out = np.empty(hists.shape[0])
    rng = np.random.default_rng(seed)
    for kr in (k, k - 1):
        which = np.flatnonzero((k - zero_alone) == kr)
        if which.size == 0:
            continue
        if kr == 0:
            out[which] = _zeros_cost(hists[which], keep_zero)
            continue
        for chunk in np.array_split(which, -(-which.size // 2000)):  # bounded memory
            pts = _points(hists[chunk], keep_zero, n_init)
            cent = _lloyd(pts, _kmeanspp(pts, kr, rng))
            err = _rounded_cost(pts, cent, keep_zero, polish)
            out[chunk] = err.reshape(-1, n_init).min(axis=1)
    return out


def sklearn_reference(
    hists: np.ndarray, k: int, keep_zero: bool, *, n_init: int = 10, seed: int = 0, polish: int = 0
) -> np.ndarray:
    """`reference` with scikit-learn's KMeans(n_init) (its best start, then rounded)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    out = np.empty(hists.shape[0])
    zero_alone = keep_zero & (hists[:, 128] > 0)
    with threadpool_limits(1):  # OpenMP threads spin badly on a busy machine
        for u, h in enumerate(hists):
            kr = k - int(zero_alone[u])
            if kr == 0:
                out[u] = _zeros_cost(h[None], keep_zero)[0]
                continue
            pts = _points(h[None], keep_zero, 1)
            km = KMeans(n_clusters=kr, n_init=n_init, random_state=seed)
            km.fit(pts.x[:, None], sample_weight=pts.w)
            cent = np.sort(km.cluster_centers_.reshape(1, -1), axis=1)
            out[u] = _rounded_cost(pts, cent, keep_zero, polish)[0]
    return out


def above(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Where the pass's error is larger than the reference's (integers, up to rounding)."""
    return ours > theirs + 1e-6


def main() -> int:
    import corpus

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--no-keep-zero", dest="keep_zero", action="store_false")
    p.add_argument("--sklearn", action="store_true", help="scikit-learn's KMeans as reference")
    args = p.parse_args()
    models = {**corpus.tf_models(), **{f"mltk/{k}": v for k, v in corpus.mltk_models().items()}}
    start = time.monotonic()
    units = int8_units(models, args.clusters, args.keep_zero)
    use = np.flatnonzero(needs_clustering(units.hists, args.clusters, args.keep_zero))
    ref = sklearn_reference if args.sklearn else reference
    theirs = ref(units.hists[use], args.clusters, args.keep_zero)
    ours = units.ours[use]
    worse = np.flatnonzero(above(ours, theirs))
    for i in worse[:20]:
        print(f"WORSE {units.labels[use[i]]}: pass {ours[i]:.0f} > reference {theirs[i]:.0f}")
    print(
        f"{use.size} of {len(units.labels)} int8 units (channels and whole tensors) need "
        f"clustering into {args.clusters}; compared in {time.monotonic() - start:.0f} s: "
        f"the pass's error is below the reference's on {np.sum(ours < theirs - 1e-6)}, "
        f"equal on {use.size - worse.size - np.sum(ours < theirs - 1e-6)}, "
        f"above on {worse.size}"
    )
    return 1 if worse.size else 0


if __name__ == "__main__":
    sys.exit(main())
