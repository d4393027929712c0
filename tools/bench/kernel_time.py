#!/usr/bin/env python3
"""Times the data-aware fit's kernels in this checkout against another revision's, on fixed
seeded problems: medians over interleaved rounds, and their ratios.

    python tools/bench/kernel_time.py REV [--rounds 5]

REV is checked out into a temporary git worktree, as tools/same_outputs.py does. Each round
runs each side in a fresh process (the sides' order swapping each round, so that the
machine's drift hits both alike), with numpy's BLAS on one thread and the kernels on one
thread; a process times each problem 15 times after one untimed call (Numba's compile or
cache load) and reports the median. Problems: OBC pruning (obc_prune_rows, half of each
row) of d x d layers at d = 64, 128 and 256, as the 1,526-layer FC stack of
datafit_scale.py has at d = 128; the 1-D k-means of a tensor codebook (cluster_float_rows,
15 clusters of 8,192 values). The script also checks that both sides give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from worktree import checkout  # noqa: E402

# Runs in the child, with one side's checkout first on sys.path.
CHILD = r"""
import hashlib, json, time
import numpy as np
from threadpoolctl import threadpool_limits
from tflrewrite.kernels import kmeans1d, reconstruct

def timed(call):
    got = call()
    times = []
    for _ in range(15):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), hashlib.sha256(np.asarray(got).tobytes()).hexdigest()

out = {}
with threadpool_limits(limits=1, user_api="blas"):
    for d in (64, 128, 256):
        rng = np.random.default_rng(d)
        x = rng.standard_normal((d, 4 * d))
        h = x @ x.T
        w = rng.standard_normal((min(d, 128), d))
        forced = rng.random(w.shape) < 0.05
        k = np.full(len(w), d // 2)
        out[f"obc {len(w)}x{d}"] = timed(
            lambda: reconstruct.obc_prune_rows(w, h, forced, k, threads=1)
        )
    values = np.sort(np.random.default_rng(0).standard_normal(8192) * 20)[None]
    out["k-means 8192 values, 15 clusters"] = timed(
        lambda: kmeans1d.cluster_float_rows(values, 15, False)
    )
print(json.dumps(out))
"""


def side(root: Path) -> dict[str, tuple[float, str]]:
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rev")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with checkout(args.rev) as other:
        sides = {"this": ROOT, args.rev: other}
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                runs[name].append(side(sides[name]))
    same = True
    print(f"medians of {args.rounds} rounds (each a median of 15 calls), one thread")
    for problem in runs["this"][0]:
        mine = statistics.median(run[problem][0] for run in runs["this"])
        theirs = statistics.median(run[problem][0] for run in runs[args.rev])
        digests = {run[problem][1] for name in sides for run in runs[name]}
        same &= len(digests) == 1
        print(
            f"{problem:34s} this {mine * 1e3:8.3f} ms  {args.rev} {theirs * 1e3:8.3f} ms  "
            f"{mine / theirs:.2f}x  {'same bytes' if len(digests) == 1 else 'BYTES DIFFER'}"
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
