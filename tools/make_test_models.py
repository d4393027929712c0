#!/usr/bin/env python3
"""Build the small TensorFlow-made ``.tflite`` test corpus.

Usage::

    python tools/make_test_models.py OUTDIR

Writes one ``<name>.tflite`` per model into OUTDIR, ``OUTDIR/manifest.json``
(name -> {"file", "kind", "notes", "num_subgraphs", "ops", "sparsity", ...}) and
``OUTDIR/build_info.json`` (TF version, skipped optional models and why, time).
Every model is loaded and invoked with ``ai_edge_litert.interpreter.Interpreter``
(falling back to the builtin kernels without XNNPACK, noted in the manifest, when
the default delegate refuses a model); a model that cannot be built or run
is an error (non-zero exit), except the optional ones listed in
``OPTIONAL_MODELS``, which are listed with the reason under ``"skipped"`` in
``build_info.json``.

The script is deterministic (fixed seeds, op determinism), needs no network
(sklearn's bundled ``load_digits``), and runs in well under two minutes on two
CPU cores.  It deliberately does not import ``tflrewrite``: the corpus must not
depend on the code it tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("GLOG_minloglevel", "3")
os.environ.setdefault("PYTHONHASHSEED", "0")

import numpy as np  # noqa: E402

OPTIONAL_MODELS = {"sparse_fc_int8", "string_and_variables"}
ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed timestamp so the trailing zip is reproducible


# --------------------------------------------------------------------------- #
# quiet helpers
# --------------------------------------------------------------------------- #
def _libc_fflush() -> None:
    """Flush C stdio buffers so buffered native log lines go to /dev/null, not to the
    terminal at exit."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # pragma: no cover - non-glibc platforms
        pass


@contextlib.contextmanager
def _quiet_fds():
    """Silence C++ logging (MLIR converter, TF runtime) written straight to fd 1/2."""
    sys.stdout.flush()
    sys.stderr.flush()
    _libc_fflush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        _libc_fflush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- #
# data
# --------------------------------------------------------------------------- #
def load_digits_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 8, 8, 1)
    y = d.target.astype(np.int64)
    # fixed split: first 1437 train, last 360 test
    return (x[:1437], y[:1437]), (x[1437:], y[1437:])


# --------------------------------------------------------------------------- #
# flatbuffer inspection (ai_edge_litert.schema_py_generated)
# --------------------------------------------------------------------------- #
def _op_names():
    from ai_edge_litert import schema_py_generated as s

    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}


def _type_names():
    from ai_edge_litert import schema_py_generated as s

    return {v: k for k, v in vars(s.TensorType).items() if not k.startswith("_")}


def inspect_flatbuffer(data: bytes) -> dict:
    from ai_edge_litert import schema_py_generated as s

    if data[4:8] != b"TFL3":
        raise ValueError(f"not a TFLite flatbuffer (identifier {data[4:8]!r})")
    m = s.Model.GetRootAs(data, 0)
    opn, tyn = _op_names(), _type_names()
    codes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == s.BuiltinOperator.CUSTOM:
            codes.append("CUSTOM:" + (oc.CustomCode() or b"").decode())
        else:
            codes.append(opn.get(code, str(code)))
    ops_used: set[str] = set()
    op_counts: dict[str, int] = {}
    sparse_tensors = []
    variable_tensors = 0
    tensor_types: set[str] = set()
    n_ops = 0
    subgraphs = []
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        subgraphs.append(
            {
                "name": (sg.Name() or b"").decode(),
                "tensors": sg.TensorsLength(),
                "operators": sg.OperatorsLength(),
            }
        )
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            tensor_types.add(tyn.get(tensor.Type(), str(tensor.Type())))
            if tensor.IsVariable():
                variable_tensors += 1
            if tensor.Sparsity() is not None:
                sp = tensor.Sparsity()
                fmt = {0: "DENSE", 1: "SPARSE_CSR"}
                sparse_tensors.append(
                    {
                        "subgraph": g,
                        "tensor": t,
                        "name": (tensor.Name() or b"").decode(),
                        "type": tyn.get(tensor.Type(), str(tensor.Type())),
                        "shape": tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else [],
                        "traversal_order": sp.TraversalOrderAsNumpy().tolist()
                        if sp.TraversalOrderLength()
                        else [],
                        "block_map": sp.BlockMapAsNumpy().tolist() if sp.BlockMapLength() else [],
                        "dim_formats": [
                            fmt.get(sp.DimMetadata(k).Format(), str(sp.DimMetadata(k).Format()))
                            for k in range(sp.DimMetadataLength())
                        ],
                    }
                )
        for o in range(sg.OperatorsLength()):
            name = codes[sg.Operators(o).OpcodeIndex()]
            ops_used.add(name)
            op_counts[name] = op_counts.get(name, 0) + 1
            n_ops += 1
    metadata = []
    for i in range(m.MetadataLength()):
        metadata.append((m.Metadata(i).Name() or b"").decode())
    sigs = []
    for i in range(m.SignatureDefsLength()):
        sd = m.SignatureDefs(i)
        sigs.append(
            {
                "key": (sd.SignatureKey() or b"").decode(),
                "subgraph_index": sd.SubgraphIndex(),
                "inputs": [(sd.Inputs(j).Name() or b"").decode() for j in range(sd.InputsLength())],
                "outputs": [
                    (sd.Outputs(j).Name() or b"").decode() for j in range(sd.OutputsLength())
                ],
            }
        )
    return {
        "num_subgraphs": m.SubgraphsLength(),
        "subgraphs": subgraphs,
        "num_operators": n_ops,
        "ops": sorted(ops_used),
        "op_counts": dict(sorted(op_counts.items())),
        "tensor_types": sorted(tensor_types),
        "has_signature_defs": m.SignatureDefsLength() > 0,
        "signature_defs": sigs,
        "metadata_names": metadata,
        "sparsity": bool(sparse_tensors),
        "sparse_tensors": sparse_tensors,
        "variable_tensors": variable_tensors,
        "num_buffers": m.BuffersLength(),
    }


# --------------------------------------------------------------------------- #
# running with LiteRT
# --------------------------------------------------------------------------- #
def _fake_input(detail: dict, rng: np.random.Generator) -> np.ndarray:
    shape = [int(d) if int(d) > 0 else 1 for d in detail["shape"]]
    dt = np.dtype(detail["dtype"])
    if dt.kind in "SOU":  # string tensors
        words = [b"seven", b"two", b"zebra"]
        n = int(np.prod(shape))
        return np.array([words[i % len(words)] for i in range(n)], dtype=object).reshape(shape)
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -8), min(int(info.max), 8)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)
    return rng.standard_normal(size=shape).astype(dt)


def make_interpreter(path: Path, default_delegates: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = (
        OpResolverType.AUTO
        if default_delegates
        else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    with _quiet_fds():  # "INFO: Created TensorFlow Lite XNNPACK delegate" etc.
        return Interpreter(model_path=str(path), experimental_op_resolver_type=kind)


@_quiet_fds()
def run_with_litert(path: Path, inputs: dict | None = None, default_delegates: bool = True) -> dict:
    """Load ``path`` in LiteRT and invoke every signature (or the main subgraph).

    Returns ``{signature_key or "<main>": {output_name: ndarray}}``.  Raises on failure.
    """
    rng = np.random.default_rng(0)
    interp = make_interpreter(path, default_delegates)
    results = {}
    sigs = interp.get_signature_list()
    if sigs:
        for key, io_names in sigs.items():
            runner = interp.get_signature_runner(key)
            feed = {}
            in_details = runner.get_input_details()
            for name in io_names["inputs"]:
                if inputs and name in inputs:
                    feed[name] = inputs[name]
                else:
                    feed[name] = _fake_input(in_details[name], rng)
            results[key] = {k: np.asarray(v) for k, v in runner(**feed).items()}
    else:
        interp.allocate_tensors()
        for d in interp.get_input_details():
            val = inputs[d["name"]] if inputs and d["name"] in inputs else _fake_input(d, rng)
            interp.set_tensor(d["index"], val)
        interp.invoke()
        results["<main>"] = {
            d["name"]: np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()
        }
    return results


@_quiet_fds()
def classifier_accuracy(
    path: Path, x: np.ndarray, y: np.ndarray, default_delegates: bool = True
) -> float:
    """Top-1 accuracy of a single-input, single-output classifier on (x, y)."""
    interp = make_interpreter(path, default_delegates)
    interp.allocate_tensors()
    ind = interp.get_input_details()[0]
    outd = interp.get_output_details()[0]
    correct = 0
    for i in range(len(x)):
        xi = x[i : i + 1].reshape(ind["shape"])
        if ind["dtype"] != np.float32:
            scale, zp = ind["quantization"]
            xi = np.clip(np.round(xi / scale + zp), -128, 127).astype(ind["dtype"])
        interp.set_tensor(ind["index"], xi)
        interp.invoke()
        out = interp.get_tensor(outd["index"])
        correct += int(np.argmax(out) == y[i])
    return correct / len(x)


# --------------------------------------------------------------------------- #
# model builders
# --------------------------------------------------------------------------- #
def _convert(converter) -> bytes:
    with _quiet_fds():
        return converter.convert()


def build_cnn(tf, train, epochs=2):
    keras = tf.keras
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"),
            keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dwconv"),
            keras.layers.Conv2D(16, 1, activation="relu", name="pwconv"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="logits"),
            keras.layers.Softmax(name="probs"),
        ],
        name="digits_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x, y = train
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=True)
    return static_batch(tf, model)


def static_batch(tf, model):
    """Re-wrap trained layers behind a batch-1 Input so the converter emits static
    shapes (a plain RESHAPE for Flatten instead of SHAPE/STRIDED_SLICE/PACK)."""
    keras = tf.keras
    inp = keras.Input(shape=(8, 8, 1), batch_size=1, name="image")
    out = inp
    for layer in model.layers:
        out = layer(out)
    return keras.Model(inp, out, name=model.name)


def representative(x, n=100):
    def gen():
        for i in range(min(n, len(x))):
            yield [x[i : i + 1].astype(np.float32)]

    return gen


def make_float32_cnn(tf, cnn):
    conv = tf.lite.TFLiteConverter.from_keras_model(cnn)
    return _convert(conv), "Keras Conv2D+DepthwiseConv2D+Conv2D(1x1)+MaxPool+Dense+Softmax, float32"


def make_float16_weights(tf, cnn):
    conv = tf.lite.TFLiteConverter.from_keras_model(cnn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    return _convert(conv), "float16 weights, each behind a DEQUANTIZE op to float32"


def make_int8_full(tf, cnn, x_train):
    conv = tf.lite.TFLiteConverter.from_keras_model(cnn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative(x_train)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return _convert(conv), "full-integer int8 PTQ (100 digits samples), int8 input/output"


def make_dynamic_range(tf, cnn):
    conv = tf.lite.TFLiteConverter.from_keras_model(cnn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    return _convert(
        conv
    ), "dynamic-range: int8 weights (tensors >= 1024 elements), float activations"


def build_sparse_fc(tf, train, sparsity=0.8):
    keras = tf.keras
    model = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(256, activation="relu", name="fc1"),
            keras.layers.Dense(256, activation="relu", name="fc2"),
            keras.layers.Dense(10, activation="softmax", name="fc3"),
        ],
        name="digits_sparse_fc",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x, y = train
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # magnitude-prune every kernel to ~80% zeros, then fine-tune one epoch while
    # re-applying the masks after every step so the zeros survive training
    masks = {}
    for name in ("fc1", "fc2", "fc3"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        thresh = np.quantile(np.abs(kernel), sparsity)
        masks[name] = (np.abs(kernel) > thresh).astype(np.float32)
        layer.set_weights([kernel * masks[name], bias])

    class ReapplyMasks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for lname, mask in masks.items():
                layer = self.model.get_layer(lname)
                layer.kernel.assign(layer.kernel * mask)

    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[ReapplyMasks()])
    for lname, mask in masks.items():
        layer = model.get_layer(lname)
        layer.kernel.assign(layer.kernel * mask)
    return static_batch(tf, model)


def make_sparse_fc(tf, model):
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return _convert(
        conv
    ), "3 Dense layers (64-256-256-10), kernels ~80% zeros, EXPERIMENTAL_SPARSITY"


def make_sparse_fc_int8(tf, model, x_train):
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY, tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative(x_train)
    return _convert(conv), (
        "sparse_fc with EXPERIMENTAL_SPARSITY + DEFAULT + representative dataset "
        "(int8 PTQ, float I/O)"
    )


def build_sparse_pointwise(tf, train, sparsity=0.75):
    """A MobileNet-like stack of 1x1 convolutions after a 3x3 stem, a global mean and a Dense
    classifier, trained on digits, then magnitude-pruned: the 1x1 kernels and the Dense
    kernel to `sparsity` zeros (the stem stays dense), fine-tuned one epoch with the masks
    re-applied after every step so the zeros survive."""
    keras = tf.keras
    inp = keras.Input(shape=(8, 8, 1), batch_size=1, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inp)
    for i, width in enumerate((128, 256, 256)):
        x = keras.layers.Conv2D(width, 1, activation="relu", name=f"pw{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, x, name="sparse_pointwise")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x_train, y_train = train
    model.fit(x_train, y_train, batch_size=16, epochs=2, verbose=0)
    masks = {}
    for name in ("pw1", "pw2", "pw3", "logits"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        masks[name] = (np.abs(kernel) > np.quantile(np.abs(kernel), sparsity)).astype(np.float32)
        layer.set_weights([kernel * masks[name], bias])

    class ReapplyMasks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for lname, mask in masks.items():
                layer = self.model.get_layer(lname)
                layer.kernel.assign(layer.kernel * mask)

    model.fit(x_train, y_train, batch_size=16, epochs=1, verbose=0, callbacks=[ReapplyMasks()])
    for lname, mask in masks.items():
        layer = model.get_layer(lname)
        layer.kernel.assign(layer.kernel * mask)
    return model


def make_pointwise(tf, model, *, sparse: bool, float16: bool):
    """`build_sparse_pointwise`'s model converted with EXPERIMENTAL_SPARSITY (sparse: 1x1
    and Dense kernels stored sparse behind DENSIFY) or without it (its dense equivalent:
    the same weights), float32 or with float16 weights behind DEQUANTIZE."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if float16:
        conv.optimizations.append(tf.lite.Optimize.DEFAULT)
        conv.target_spec.supported_types = [tf.float16]
    what = "sparse behind DENSIFY (EXPERIMENTAL_SPARSITY)" if sparse else "dense"
    dtype = "float16 weights behind DEQUANTIZE" if float16 else "float32"
    return _convert(conv), (
        f"3x3 stem + 1x1 convs 16-128-256-256 + MEAN + Dense(10), {dtype}; 1x1 and Dense "
        f"kernels 75% zeros (magnitude-pruned, fine-tuned), {what}"
    )


def make_control_flow(tf):
    class ControlFlow(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.constant(np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(4, 4))

        @tf.function(
            input_signature=[
                tf.TensorSpec([1, 4], tf.float32, name="x"),
                tf.TensorSpec([], tf.int32, name="n"),
            ]
        )
        def __call__(self, x, n):
            def body(i, acc):
                acc = tf.tanh(tf.matmul(acc, self.w) + 0.5)
                return i + 1, acc

            _, y = tf.while_loop(lambda i, acc: i < n, body, [tf.constant(0), x])
            z = tf.cond(
                tf.reduce_sum(y) > 0.0,
                lambda: y * 2.0 + 1.0,
                lambda: tf.nn.relu(y) - 1.0,
            )
            return {"y": z}

    m = ControlFlow()
    cf = m.__call__.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], m)
    return _convert(
        conv
    ), "tf.while_loop (input-dependent trip count n) + tf.cond from a concrete function"


def make_sparse_convnet(tf):
    """A small MobileNet-like float CNN laid out the way XNNPACK's sparse inference wants it:
    a 3x3 stride-2 first conv on 3 channels with an explicit PAD of 1 (SAME with stride 2
    pads 0/1, which XNNPACK refuses), depthwise 3x3 + 1x1 pointwise blocks (stride-2
    depthwise convs also padded explicitly), one residual ADD, and a global MEAN before the
    classifier. Seeded random weights (no training): biases are nonzero so outputs are O(1)."""
    keras = tf.keras
    seeds = iter(range(100, 200))

    def init(kernel: str = "kernel_initializer") -> dict:
        # A seed per layer: layers of one shape with one seed get identical weights, which
        # the converter would store once.
        return {
            kernel: keras.initializers.HeNormal(seed=next(seeds)),
            "bias_initializer": keras.initializers.RandomNormal(0.0, 0.1, seed=next(seeds)),
        }

    inp = keras.Input(shape=(32, 32, 3), batch_size=1, name="image")
    x = keras.layers.ZeroPadding2D(1, name="stem_pad")(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu6", name="stem", **init())(x)
    for i, (width, stride, residual) in enumerate(
        [(32, 1, False), (64, 2, False), (64, 1, True), (128, 2, False), (128, 1, False)]
    ):
        y = x
        if stride == 2:
            y = keras.layers.ZeroPadding2D(1, name=f"pad{i}")(y)
        pad = "valid" if stride == 2 else "same"
        y = keras.layers.DepthwiseConv2D(
            3,
            strides=stride,
            padding=pad,
            activation="relu6",
            name=f"dw{i}",
            **init("depthwise_initializer"),
        )(y)
        y = keras.layers.Conv2D(width, 1, activation="relu6", name=f"pw{i}", **init())(y)
        x = keras.layers.Add(name=f"add{i}")([x, y]) if residual else y
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(10, name="logits", **init())(x)
    model = keras.Model(inp, x, name="sparse_convnet")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    return _convert(conv), (
        "MobileNet-like float32: PAD + 3x3/2 conv on 3 channels, 5 depthwise + 1x1 blocks "
        "(one residual ADD), MEAN, Dense(10); seeded random weights, for --target xnnpack"
    )


def make_transpose_conv_bmm(tf):
    """TRANSPOSE_CONV and BATCH_MATMUL with constant weights: the other two weight ops."""
    rng = np.random.default_rng(1)
    filt = tf.constant(rng.normal(0, 0.3, (3, 3, 8, 4)).astype(np.float32))  # HW,out,in
    rhs = tf.constant(rng.normal(0, 0.2, (1, 16, 12)).astype(np.float32))

    class Decoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 4], tf.float32, name="x")])
        def __call__(self, x):
            y = tf.nn.conv2d_transpose(x, filt, [1, 8, 8, 8], strides=2, padding="SAME")
            y = tf.reshape(tf.nn.relu(y), [1, 32, 16])
            return {"y": tf.linalg.matmul(y, rhs)}

    m = Decoder()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.__call__.get_concrete_function()], m)
    return _convert(conv), "conv2d_transpose (TRANSPOSE_CONV) + matmul with a constant 3-D rhs"


def make_multi_signature(tf, tmp: Path):
    class Codec(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(2)
            self.enc_w = tf.Variable(rng.standard_normal((64, 8)).astype(np.float32) * 0.2)
            self.enc_b = tf.Variable(np.zeros(8, np.float32))
            self.dec_w = tf.Variable(rng.standard_normal((8, 64)).astype(np.float32) * 0.2)
            self.dec_b = tf.Variable(np.zeros(64, np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 64], tf.float32, name="pixels")])
        def encode(self, pixels):
            return {"code": tf.nn.relu(tf.matmul(pixels, self.enc_w) + self.enc_b)}

        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32, name="code")])
        def decode(self, code):
            return {"pixels": tf.sigmoid(tf.matmul(code, self.dec_w) + self.dec_b)}

    m = Codec()
    sm = tmp / "multi_signature_savedmodel"
    with _quiet_fds():
        tf.saved_model.save(
            m,
            str(sm),
            signatures={
                "encode": m.encode.get_concrete_function(),
                "decode": m.decode.get_concrete_function(),
            },
        )
    conv = tf.lite.TFLiteConverter.from_saved_model(str(sm), signature_keys=["encode", "decode"])
    return _convert(
        conv
    ), "SavedModel tf.Module with signatures 'encode' (1x64->1x8) and 'decode' (1x8->1x64)"


def make_string_and_variables(tf, tmp: Path):
    """A resource variable (VAR_HANDLE/ASSIGN_VARIABLE/READ_VARIABLE, CALL_ONCE init
    subgraph) plus string tensors (string input, GATHER on strings, string-keyed
    HASHTABLE lookup)."""

    class Stateful(tf.Module):
        def __init__(self):
            super().__init__()
            self.counter = tf.Variable(np.zeros([1, 4], np.float32), name="counter")
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(["zero", "one", "two", "seven"]),
                    tf.constant([0, 1, 2, 7], tf.int64),
                ),
                default_value=-1,
            )

        @tf.function(
            input_signature=[
                tf.TensorSpec([1, 4], tf.float32, name="x"),
                tf.TensorSpec([3], tf.string, name="words"),
            ]
        )
        def step(self, x, words):
            self.counter.assign_add(x)
            total = self.counter.read_value()
            picked = tf.gather(words, tf.constant([2, 0]))
            ids = self.table.lookup(words)
            return {"total": total, "picked": picked, "ids": ids}

    m = Stateful()
    sm = tmp / "string_and_variables_savedmodel"
    with _quiet_fds():
        tf.saved_model.save(m, str(sm), signatures={"step": m.step.get_concrete_function()})
    conv = tf.lite.TFLiteConverter.from_saved_model(str(sm), signature_keys=["step"])
    conv.experimental_enable_resource_variables = True
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return _convert(conv), (
        "resource variable 'counter' (assign_add each call; state persists between invokes), "
        "string input 'words' with GATHER on strings and a string-keyed HASHTABLE lookup"
    )


def make_with_metadata(float32_bytes: bytes):
    """float32_cnn + an extra Metadata entry (own buffer) + a trailing zip with labels.txt.

    Mirrors what the TFLite Support metadata writer does: repack the model with the
    flatbuffers object API, then append a zip of associated files after the flatbuffer.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromPackedBuf(float32_bytes, 0)
    payload = json.dumps(
        {"name": "digits_cnn", "labels": "labels.txt", "author": "tflrewrite tests"},
        sort_keys=True,
    ).encode()
    buf = s.BufferT()
    buf.data = np.frombuffer(payload, dtype=np.uint8).copy()
    model.buffers.append(buf)
    md = s.MetadataT()
    md.name = b"extra_info"
    md.buffer = len(model.buffers) - 1
    if model.metadata is None:
        model.metadata = []
    model.metadata.append(md)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    fb = bytes(builder.Output())

    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("labels.txt", date_time=ZIP_DATE)
        zf.writestr(info, "".join(f"{i}\n" for i in range(10)))
    zipped = zbuf.getvalue()
    return fb + zipped, len(fb), len(zipped), payload


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #
def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except Exception:  # pragma: no cover
        pass
    tf.keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()

    train, test = load_digits_data()
    x_test, y_test = test
    manifest: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    failures: list[str] = []

    def add(name, kind, data: bytes, notes: str, classifier: bool = False, extra=None):
        path = out / f"{name}.tflite"
        path.write_bytes(data)
        info = inspect_flatbuffer(data)
        entry = {"file": path.name, "kind": kind, "notes": notes, "size_bytes": len(data)}
        try:
            run_with_litert(path)  # raises if LiteRT cannot load / run it
            delegates = True
            entry["runs_with_default_delegates"] = True
        except RuntimeError as e:
            # e.g. XNNPACK refuses a sparse int8 FULLY_CONNECTED; the builtin kernels may not
            run_with_litert(path, default_delegates=False)  # still an error if this fails
            delegates = False
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            entry["runs_with_default_delegates"] = False
            entry["notes"] += (
                "; fails with LiteRT default delegates (XNNPACK): "
                + first
                + " -- runs with OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES"
            )
        if classifier:
            entry["digits_test_accuracy"] = round(
                classifier_accuracy(path, x_test, y_test, delegates), 4
            )
        entry.update(info)
        if extra:
            entry.update(extra)
        manifest[name] = entry
        _log(
            f"  {name:22s} {len(data):8d} B  subgraphs={info['num_subgraphs']} "
            f"sparse={info['sparsity']} sigs={len(info['signature_defs'])} "
            f"ops={','.join(info['ops'])}"
        )

    def attempt(name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            if name in OPTIONAL_MODELS:
                skipped[name] = msg
                _log(f"  {name:22s} SKIPPED ({msg})")
            else:
                failures.append(f"{name}: {msg}")
                _log(f"  {name:22s} FAILED ({msg})")
                import traceback

                traceback.print_exc()

    with tempfile.TemporaryDirectory(prefix="tflrewrite-models-") as tmpd:
        tmp = Path(tmpd)
        with _quiet_fds():
            cnn = build_cnn(tf, train)
        cnn_keras_acc = float(np.mean(np.argmax(cnn.predict(x_test, verbose=0), -1) == y_test))
        f32: dict[str, bytes] = {}

        def _f32():
            data, notes = make_float32_cnn(tf, cnn)
            f32["data"] = data
            add(
                "float32_cnn",
                "float32",
                data,
                notes + f"; keras test acc {cnn_keras_acc:.4f}",
                True,
            )

        attempt("float32_cnn", _f32)

        def _f16():
            data, notes = make_float16_weights(tf, cnn)
            add("float16_weights", "float16", data, notes, True)

        attempt("float16_weights", _f16)

        def _i8():
            data, notes = make_int8_full(tf, cnn, train[0])
            add("int8_full", "int8", data, notes, True)

        attempt("int8_full", _i8)

        def _dr():
            data, notes = make_dynamic_range(tf, cnn)
            add("dynamic_range", "dynamic_range", data, notes, True)

        attempt("dynamic_range", _dr)

        def _tc():
            data, notes = make_transpose_conv_bmm(tf)
            add("transpose_conv_bmm", "float32", data, notes)

        attempt("transpose_conv_bmm", _tc)

        def _scn():
            data, notes = make_sparse_convnet(tf)
            add("sparse_convnet", "float32", data, notes)

        attempt("sparse_convnet", _scn)

        with _quiet_fds():
            sparse_model = build_sparse_fc(tf, train)

        def sparse_notes(data: bytes, notes: str) -> str:
            info = inspect_flatbuffer(data)
            if not info["sparsity"]:
                raise RuntimeError("converter produced no tensor with SparsityParameters")
            return notes + (
                f"; {len(info['sparse_tensors'])} sparse tensor(s) "
                f"({', '.join(t['type'] + str(t['shape']) for t in info['sparse_tensors'])}); "
                f"DENSIFY ops: {info['op_counts'].get('DENSIFY', 0)}"
            )

        def _sp():
            data, notes = make_sparse_fc(tf, sparse_model)
            add("sparse_fc", "sparse_float32", data, sparse_notes(data, notes), True)

        attempt("sparse_fc", _sp)

        def _spi8():
            data, notes = make_sparse_fc_int8(tf, sparse_model, train[0])
            add("sparse_fc_int8", "sparse_int8", data, sparse_notes(data, notes), True)

        attempt("sparse_fc_int8", _spi8)

        def _cf():
            data, notes = make_control_flow(tf)
            info = inspect_flatbuffer(data)
            if info["num_subgraphs"] < 2 or not ({"WHILE", "IF"} & set(info["ops"])):
                raise RuntimeError(f"expected WHILE/IF subgraphs, got ops {info['ops']}")
            add("control_flow", "control_flow", data, notes)

        attempt("control_flow", _cf)

        def _ms():
            data, notes = make_multi_signature(tf, tmp)
            info = inspect_flatbuffer(data)
            if len(info["signature_defs"]) != 2:
                raise RuntimeError(f"expected 2 signature defs, got {info['signature_defs']}")
            add("multi_signature", "multi_signature", data, notes)

        attempt("multi_signature", _ms)

        def _sv():
            data, notes = make_string_and_variables(tf, tmp)
            path = out / "string_and_variables.tflite"
            path.write_bytes(data)
            # behavioural check: state persists and strings round-trip
            interp = make_interpreter(path)
            with _quiet_fds():
                run = interp.get_signature_runner("step")
            words = np.array([b"seven", b"two", b"zebra"], dtype=object)
            x = np.ones([1, 4], np.float32)
            run(x=x, words=words)
            r = run(x=x, words=words)
            assert np.allclose(r["total"], 2.0), r["total"]
            assert list(r["picked"]) == [b"zebra", b"seven"], r["picked"]
            assert list(r["ids"]) == [7, 2, -1], r["ids"]
            add(
                "string_and_variables",
                "stateful_string",
                data,
                notes + "; checked: total==2 after 2 calls",
            )

        attempt("string_and_variables", _sv)

        def _md():
            if "data" not in f32:
                raise RuntimeError("float32_cnn missing")
            data, fb_len, zip_len, payload = make_with_metadata(f32["data"])
            path = out / "with_metadata.tflite"
            path.write_bytes(data)
            ref = run_with_litert(out / "float32_cnn.tflite", {"image": x_test[:1]})
            got = run_with_litert(path, {"image": x_test[:1]})
            for k in ref:
                for o in ref[k]:
                    if not np.array_equal(ref[k][o], got[k][o]):
                        raise RuntimeError("with_metadata output differs from float32_cnn")
            with zipfile.ZipFile(path) as zf:  # the trailing zip is readable as a zip
                assert zf.read("labels.txt").startswith(b"0\n1\n")
            add(
                "with_metadata",
                "float32_metadata",
                data,
                "float32_cnn repacked with the flatbuffers object API + Metadata 'extra_info' "
                "(JSON in its own buffer) + trailing ZIP_STORED zip holding labels.txt; outputs "
                "identical to float32_cnn",
                True,
                extra={
                    "flatbuffer_bytes": fb_len,
                    "trailing_bytes": zip_len,
                    "trailing_zip_members": ["labels.txt"],
                    "extra_info_payload": payload.decode(),
                },
            )

        attempt("with_metadata", _md)

        with _quiet_fds():
            pointwise = build_sparse_pointwise(tf, train)
        for name, sparse, float16 in (
            ("sparse_pointwise", True, False),
            ("sparse_pointwise_f16", True, True),
            ("dense_pointwise", False, False),
            ("dense_pointwise_f16", False, True),
        ):

            def _pw(name=name, sparse=sparse, float16=float16):
                data, notes = make_pointwise(tf, pointwise, sparse=sparse, float16=float16)
                if sparse:
                    notes = sparse_notes(data, notes)
                kind = ("sparse_" if sparse else "") + ("float16" if float16 else "float32")
                add(name, kind, data, notes, True)

            attempt(name, _pw)

    for entry in manifest.values():
        entry.setdefault("flatbuffer_bytes", entry["size_bytes"])
        entry.setdefault("trailing_bytes", 0)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    build_info = {
        "generator": "tools/make_test_models.py",
        "tensorflow": tf.__version__,
        "models": sorted(manifest),
        "skipped": skipped,
        "seconds": round(time.monotonic() - t0, 1),
    }
    (out / "build_info.json").write_text(json.dumps(build_info, indent=1) + "\n")
    _log(f"{len(manifest)} models, {len(skipped)} skipped, {time.monotonic() - t0:.1f}s")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
