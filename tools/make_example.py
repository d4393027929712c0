#!/usr/bin/env python3
"""Train the example model shipped in examples/: a small CNN on sklearn's digits.

    python tools/make_example.py [OUTDIR]      (default: examples/)

Writes digits_cnn.tflite (float32, from TFLiteConverter) and digits_samples.npz (the
held-out digits, keyed by the model's input name, and their labels as `y`, for
`tflrewrite verify --inputs` and `--calibration`).
Needs TensorFlow and scikit-learn (`pip install -e .[test]`); runs offline in ~20 s.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402


def main(out_dir: Path) -> None:
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    tf.keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )

    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            layers.Input((8, 8, 1), batch_size=1, name="image"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"),
            layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dwconv"),
            layers.Conv2D(32, 1, activation="relu", name="pwconv"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="fc"),
            layers.Dense(10, name="logits"),
            layers.Softmax(name="probs"),
        ]
    )
    train = tf.keras.Sequential([layers.Input((8, 8, 1)), *model.layers])
    train.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    train.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    _, accuracy = train.evaluate(x_test, y_test, verbose=0)

    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "digits_cnn.tflite").write_bytes(tflite)

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite)
    name = interp.get_input_details()[0]["name"]
    np.savez_compressed(out_dir / "digits_samples.npz", **{name: x_test, "y": y_test})
    print(
        f"digits_cnn.tflite: {len(tflite):,} bytes, test accuracy {accuracy:.3f} "
        f"({len(x_test)} held-out digits in digits_samples.npz, input {name!r})"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "examples")
