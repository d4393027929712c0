#!/usr/bin/env python3
"""Times one whole `tflrewrite` command in this checkout against the same command in another
revision: wall time and CPU time (the process and its children), medians over interleaved
runs, and their ratios.

    python tools/bench/command_time.py REV [--repeats 5] [-- ARGS...]

REV is checked out into a temporary git worktree, as tools/same_outputs.py does. ARGS
default to `examples/digits_cnn.tflite -o OUT --force --prune 0.5`, where OUT is a file in
a temporary folder (the string OUT in ARGS is replaced by it); each side runs in its own
checkout's folder, so relative paths name that checkout's files. Each run is a fresh
`python -m tflrewrite` with one side's checkout on PYTHONPATH; an untimed run of each side
comes first (it fills Numba's disk cache), then the sides alternate, the order swapping
each round, so that the machine's drift hits both alike. CPU time counts the children
too, such as the one the report runs LiteRT in: where the machine has a core to spare, the
wall time hides what they cost, and the CPU time does not.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from worktree import checkout  # noqa: E402

DEFAULT = ["examples/digits_cnn.tflite", "-o", "OUT", "--force", "--prune", "0.5"]


def timed(root: Path, argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one `python -m tflrewrite ARGV` with `root` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(root))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tflrewrite", *argv],
        cwd=root,  # `-m` puts the working folder first on the path: it must be this side's
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rev", help="the revision to compare with (e.g. HEAD~1)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each side (default 5)")
    mine, command = sys.argv[1:], DEFAULT
    if "--" in mine:
        at = mine.index("--")
        mine, command = mine[:at], mine[at + 1 :]
    args = p.parse_args(mine)

    with tempfile.TemporaryDirectory() as tmp, checkout(args.rev) as other:
        sides = {"this": ROOT, args.rev: other}
        argv = {
            name: [str(Path(tmp) / f"out-{i}.tflite") if a == "OUT" else a for a in command]
            for i, name in enumerate(sides)
        }
        for name, root in sides.items():
            timed(root, argv[name])
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for r in range(args.repeats):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                times[name].append(timed(sides[name], argv[name]))

    medians = {}
    print(f"tflrewrite {' '.join(command)}: medians of {args.repeats} runs")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        medians[name] = (wall, cpu)
        walls = " ".join(f"{w:.2f}" for w, _ in runs)
        print(f"  {name:>12}: wall {wall:.3f} s, CPU {cpu:.3f} s   (walls: {walls})")
    (w1, c1), (w0, c0) = medians["this"], medians[args.rev]
    print(
        f"this / {args.rev}: wall {w1 / w0:.2f}x (+{w1 - w0:.3f} s), CPU {c1 / c0:.2f}x "
        f"(+{c1 - c0:.3f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
