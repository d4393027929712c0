#!/usr/bin/env python3
"""Compare tflrewrite's optimal 1-D k-means with scikit-learn's KMeans(n_init=10) on every
output channel (and every whole tensor) of the corpus models' weights.

    python tools/check_cluster_optimality.py [--clusters 16] [--per-tensor N]

Prints how many units were compared, how many had a lower or equal squared error with
tflrewrite (it should be all of them: the DP is exact), and the largest relative gap.
--per-tensor N samples N channels per tensor (seeded) instead of all of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def units_of(model_paths: dict, per_tensor: int | None, seed: int = 0):
    """(label, values) for each weight channel and whole tensor, as float64 real values."""
    from tflrewrite import reader
    from tflrewrite.weights import find_weights

    rng = np.random.default_rng(seed)
    for name, path in sorted(model_paths.items()):
        weights, _ = find_weights(reader.read(path))
        for w in weights:
            stored = w.tensor.data.astype(np.float64)
            rows = w.channels(stored)
            picks = range(rows.shape[0])
            if per_tensor is not None and rows.shape[0] > per_tensor:
                picks = sorted(rng.choice(rows.shape[0], per_tensor, replace=False))
            for c in picks:
                yield f"{name}:{w.name}[{c}]", rows[c]
            yield f"{name}:{w.name}", stored.reshape(-1)


def compare(values: np.ndarray, k: int) -> tuple[float, float]:
    """(tflrewrite's squared error, scikit-learn's) for k clusters of `values`."""
    from sklearn.cluster import KMeans

    from tflrewrite.kernels.kmeans1d import optimal_kmeans_1d

    points, counts = np.unique(values, return_counts=True)
    weights = counts.astype(np.float64)
    ours = optimal_kmeans_1d(points, weights, k)[2]
    n = min(k, points.size)
    km = KMeans(n_clusters=n, n_init=10, random_state=0).fit(points[:, None], sample_weight=weights)
    theirs = float(np.sum(weights * (points - km.cluster_centers_[km.labels_, 0]) ** 2))
    return ours, theirs


def main() -> int:
    import corpus

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--per-tensor", type=int, default=None)
    args = p.parse_args()
    models = {**corpus.tf_models(), **{f"mltk/{k}": v for k, v in corpus.mltk_models().items()}}
    start, n, worse, worst = time.monotonic(), 0, [], 0.0
    for label, values in units_of(models, args.per_tensor):
        ours, theirs = compare(values, args.clusters)
        n += 1
        scale = max(theirs, 1e-300)
        gap = (ours - theirs) / scale
        worst = max(worst, gap)
        if ours > theirs * (1 + 1e-9) + 1e-12:
            worse.append((label, ours, theirs))
    for label, ours, theirs in worse[:20]:
        print(f"WORSE {label}: tflrewrite {ours:.6g} > scikit-learn {theirs:.6g}")
    print(
        f"{n} units (channels and whole tensors) compared in {time.monotonic() - start:.0f} s; "
        f"tflrewrite's error <= scikit-learn's on {n - len(worse)}; "
        f"largest relative excess {worst:.2e}; scikit-learn better on {len(worse)}"
    )
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
