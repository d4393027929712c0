#!/usr/bin/env python3
"""Build the float model the full-integer quantization tests cover every op with.

    python tools/make_int8_ops_model.py OUTDIR

Writes ops_float.tflite (one float32 graph using each op in the int8 op table of
tflrewrite.passes.quantize_graph that the TF converter emits from plain TensorFlow ops),
ops_samples.npz (200 seeded inputs, keyed by the model's input name) and manifest.json.
Deterministic; needs TensorFlow; runs offline in a few seconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def build(tf):
    rng = np.random.default_rng(0)

    def const(*shape):
        return tf.constant((rng.normal(size=shape) * 0.3).astype(np.float32))

    w_conv, w_dw, w_tconv = const(3, 3, 3, 8), const(3, 3, 8, 1), const(3, 3, 8, 8)
    w_fc, slope, rhs, bias = const(16, 10), const(16), const(1, 8, 16), const(8)

    prelu = tf.keras.layers.PReLU(shared_axes=[1, 2])
    prelu.build((1, 10, 10, 16))
    prelu.set_weights([(rng.uniform(0.05, 0.3, size=(1, 1, 16))).astype(np.float32)])

    @tf.function(input_signature=[tf.TensorSpec((1, 16, 16, 3), tf.float32)])
    def model(image):
        x = tf.nn.relu(tf.nn.conv2d(image, w_conv, 1, "SAME") + bias)  # CONV_2D
        x = tf.nn.relu6(tf.nn.depthwise_conv2d(x, w_dw, [1, 1, 1, 1], "SAME"))
        y = tf.nn.conv2d_transpose(x, w_tconv, (1, 16, 16, 8), 1, "SAME")
        x = (x + y - y * 0.5) * y  # ADD, SUB, MUL
        a = tf.nn.avg_pool2d(x, 2, 2, "VALID")
        m = tf.nn.max_pool2d(x, 2, 2, "VALID")
        x = tf.nn.relu6(tf.concat([a, m], -1))  # CONCATENATION, RELU6
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]) - 1.0
        x = prelu(x)  # PRELU
        x = tf.nn.leaky_relu(x, 0.1)
        x = tf.maximum(x, -1.0) + tf.minimum(x, 0.0) * slope  # MAXIMUM, MINIMUM
        x = x * tf.nn.relu6(x + 3.0) / 6.0  # HARD_SWISH
        x = tf.image.resize(x, (20, 20), method="bilinear")
        x = tf.image.resize(x, (10, 10), method="nearest")
        x = x[:, 1:9, 1:9, :]  # STRIDED_SLICE
        s1, s2 = tf.split(x, 2, axis=-1)
        x = tf.transpose(s1, (0, 2, 1, 3)) + s2
        x = tf.nn.tanh(x) + tf.nn.sigmoid(x)
        r = tf.linalg.matmul(tf.reshape(x, (1, 64, 8)), rhs)  # BATCH_MATMUL
        g = tf.gather(r, [0, 2, 5], axis=1)
        x = tf.reduce_mean(x, axis=[1, 2])  # MEAN
        x = tf.squeeze(tf.reshape(x, (1, 1, 8)), axis=1)
        x = tf.nn.relu(tf.concat([x, -x], -1))  # RELU
        x = tf.matmul(x, w_fc) + tf.reduce_mean(g, axis=[1])[:, :10]  # FULLY_CONNECTED
        return tf.nn.softmax(x)

    return model


def main(out: Path) -> None:
    import tensorflow as tf

    out.mkdir(parents=True, exist_ok=True)
    fn = build(tf)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    data = converter.convert()
    (out / "ops_float.tflite").write_bytes(data)

    from ai_edge_litert.interpreter import Interpreter

    name = Interpreter(model_content=data).get_input_details()[0]["name"]
    x = np.random.default_rng(1).normal(size=(200, 1, 16, 16, 3)).astype(np.float32)
    np.savez(out / "ops_samples.npz", **{name: x})
    manifest = {"ops_float": {"file": "ops_float.tflite", "samples": "ops_samples.npz"}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
