"""The fine-tune hook: stages keep their zeros and clusters through training, conversion and
the rewriter; Keras 3 and tf_keras; refusals as one line; the same seed, the same bytes.

Tiny models on sklearn's digits, one epoch each: these check properties, not accuracy
(tools/bench/finetune_mnist.py measures that)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tflrewrite.finetune import keras_layers, stages
from tflrewrite.kernels import prune

# ------------------------------------------------------------------ no TensorFlow needed


@pytest.mark.parametrize(
    "shape, out_axis, depthwise",
    [
        ((5, 7), -1, False),  # Dense (in, out)
        ((3, 4, 6), -1, False),  # Conv1D (k, in, out)
        ((3, 3, 4, 6), -1, False),  # Conv2D (h, w, in, out)
        ((3, 3, 4, 2), -1, True),  # DepthwiseConv2D (h, w, in, mult)
        ((3, 3, 6, 4), -2, False),  # Conv2DTranspose (h, w, out, in)
    ],
)
def test_rows_round_trip_and_match_tflite_layout(shape, out_axis, depthwise):
    w = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    rows = keras_layers.to_rows(w, out_axis, depthwise)
    back = keras_layers.from_rows(rows, shape, out_axis=out_axis, depthwise=depthwise)
    assert np.array_equal(back, w)
    # The converter's layouts: FC (out, in), CONV_2D / TRANSPOSE_CONV OHWI, DEPTHWISE 1HWO.
    if depthwise:
        tflite = w.reshape(1, *shape[:2], -1)
        expected = np.moveaxis(tflite, 3, 0).reshape(tflite.shape[3], -1)
    elif out_axis == -2:
        expected = np.transpose(w, (2, 0, 1, 3)).reshape(shape[2], -1)
    else:
        expected = np.moveaxis(w, -1, 0).reshape(shape[-1], -1)
    assert np.array_equal(rows, expected)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("scope", ["tensor", "channel"])
def test_plan_prunes_and_clusters_like_the_kernels(granularity, scope):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(6, 40)).astype(np.float32)
    options = stages.StageOptions(
        stage="pcqat", sparsity=0.5, clusters=8, granularity=granularity, prune_scope=scope
    )
    p = stages.plan(rows, options)
    if scope == "channel":
        mask = prune.smallest_k_mask(np.abs(rows), prune.prune_count(40, 0.5))
    else:
        flat = np.abs(rows).reshape(1, -1)
        mask = prune.smallest_k_mask(flat, prune.prune_count(240, 0.5)).reshape(rows.shape)
    assert np.array_equal(~p.keep, mask)
    assert np.all(p.rows[mask] == 0) and np.all(p.rows[~mask] != 0)
    units = p.rows if granularity == "channel" else p.rows.reshape(1, -1)
    assert stages.distinct_per_row(units).max() <= 8
    assert np.array_equal(p.centroids[p.assign], p.rows)
    assert not p.trainable[p.assign[mask]].any()  # the zero cluster never moves


def test_cli_refusals_without_tensorflow(tmp_path):
    """Bad stage, missing data, no TensorFlow: one line each, exit 2; --help needs no
    TensorFlow."""
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: TensorFlow is missing first")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 8, 8, 1), np.float32), y=np.zeros(2, np.int64))
    script = textwrap.dedent("""
        import json, sys

        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                    raise ImportError("No module named " + repr(name))
                return None

        sys.meta_path.insert(0, NoTensorFlow())
        from tflrewrite.cli import main
        codes = []
        for argv in json.loads(sys.argv[1]):
            try:
                codes.append(main(argv))
            except SystemExit as e:
                codes.append(e.code)
            sys.stderr.write("--\\n")
        assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
        print(json.dumps(codes))
    """)
    out = str(tmp_path / "out.tflite")
    common = ["finetune", str(model), "-o", out]
    argvs = [
        ["finetune", "--help"],
        [*common, "--data", str(data), "--stage", "bogus"],
        [*common, "--data", str(tmp_path / "missing.npz"), "--stage", "pcqat"],
        [*common, "--data", str(data), "--stage", "pcqat"],
    ]
    import json

    r = subprocess.run(
        [sys.executable, "-c", script, json.dumps(argvs)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [0, 2, 2, 2]
    messages = [m.strip() for m in r.stderr.split("--\n")[1:4]]
    assert all(len(m.splitlines()) == 1 for m in messages), messages
    assert "invalid choice: 'bogus'" in messages[0]
    assert "missing.npz: no such data file" in messages[1]
    assert "needs TensorFlow" in messages[2] and "tflrewrite[keras]" in messages[2]
    assert not (tmp_path / "out.tflite").exists()


# ------------------------------------------------------------------ with TensorFlow

K = 8  # clusters in these tests: fewer than the int8 values a channel would otherwise hold


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)


def _tiny(keras, x, y):
    """Conv + BN, depthwise + BN, conv + BN, dense: every kind of fold and kernel layout the
    bench's model has, channels short (9 taps) and long enough to prune, trained a little."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            layers.Input((8, 8, 1)),
            layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
            layers.BatchNormalization(name="conv_bn"),
            layers.ReLU(),
            layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw"),
            layers.BatchNormalization(name="dw_bn"),
            layers.ReLU(),
            layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv2"),
            layers.BatchNormalization(name="conv2_bn"),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(10, name="fc"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def keras3_model(digits):
    keras = pytest.importorskip("keras")
    return _tiny(keras, digits[0], digits[2])


def _int8_weights(tflite: bytes) -> list:
    from tflrewrite import reader
    from tflrewrite.weights import find_weights

    weights = find_weights(reader.read_bytes(tflite, "out"))[0]
    return [w for w in weights if w.tensor.dtype == "INT8"]


def _expected_masks(model, sparsity: float, prune_all: bool = False) -> dict:
    """Per kernel, where magnitude pruning per tensor zeroes weights: magnitudes as the int8
    model stores them (a following batch norm's gamma / sigma folded in), kernels of short
    channels left out unless `prune_all`."""
    kernels, _ = keras_layers.find_kernels(model)
    layers = list(model.layers)
    masks = {}
    for k in kernels:
        rows = k.rows(k.variable.numpy())
        after = (layers[layers.index(k.layer) + 1 :] or [None])[0]
        if type(after).__name__ == "BatchNormalization":
            sigma = np.sqrt(after.moving_variance.numpy() + after.epsilon)
            rows = rows * np.abs(after.gamma.numpy() / sigma)[:, None]
        if rows.shape[1] < stages.MIN_PRUNE_ROW and not prune_all:
            continue
        flat = np.abs(rows).reshape(1, -1)
        mask = prune.smallest_k_mask(flat, prune.prune_count(flat.size, sparsity))
        masks[k.name] = mask.reshape(rows.shape)
    return masks


def _check(model, result, sparsity: float, clusters: int, prune_all: bool = False) -> None:
    """Checked on the file, not taken from the report: every weight the mask on the given
    model pruned is zero in the int8 model, and every kernel holds at most `clusters` int8
    values (one scale per tensor: per tensor, and so per output channel)."""
    report = result.report
    assert report["ok"] and not report["unmatched"]
    by_tensor = {w.name: w for w in _int8_weights(result.tflite)}
    masks = _expected_masks(model, sparsity, prune_all)
    assert set(masks) == {c["layer"] for c in report["layers"]} - set(report["not_pruned"])
    for c in report["layers"]:
        w = by_tensor[c["tensor"]]
        stored = w.channels(w.tensor.data)
        if c["layer"] in masks:
            assert np.all(stored[masks[c["layer"]]] == 0), c["layer"]
        assert stages.distinct_per_row(stored).max() <= clusters, c["layer"]
        assert np.unique(stored).size <= clusters, c["layer"]


def _run(model, digits, **options):
    from tflrewrite.finetune import Options, finetune

    x_train, x_val, y_train, y_val = digits
    defaults = dict(stage="pcqat", sparsity=0.5, clusters=K, epochs=1, seed=0)
    defaults.update(options)
    epochs = []
    result = finetune(model, (x_train, y_train), (x_val, y_val), Options(**defaults), epochs.append)
    assert [e.epoch for e in epochs] == list(range(1, defaults["epochs"] + 1))
    return result


@pytest.mark.slow
def test_pcqat_keras3_keeps_zeros_and_clusters(keras3_model, digits):
    before = [v.numpy().copy() for v in keras3_model.weights]
    result = _run(keras3_model, digits, epochs=2)  # a recovery epoch, then a pcqat one
    _check(keras3_model, result, 0.5, K)
    r = result.report
    assert [e["stage"] for e in r["epochs"]] == ["pqat", "pcqat"]
    assert r["keras"] == "keras3" and r["int8_weights"] == "tensor"
    assert r["batchnorm"]["folded"] == {"conv": "conv_bn", "dw": "dw_bn", "conv2": "conv2_bn"}
    assert set(r["not_pruned"]) == {"conv", "dw"}
    assert {c["kind"] for c in r["layers"]} == {"Conv2D", "DepthwiseConv2D", "Dense"}
    assert all(c["changed_by_rewrite"] == 0 for c in r["layers"])  # already int8-exact
    assert 0.0 <= r["val_int8_accuracy"] <= 1.0
    # The caller's model is left as it was.
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, keras3_model.weights))


@pytest.mark.slow
def test_same_seed_same_bytes(keras3_model, digits):
    a = _run(keras3_model, digits, seed=3)
    b = _run(keras3_model, digits, seed=3)
    assert a.tflite == b.tflite


@pytest.mark.slow
def test_pqat_prune_all_channel_quantization(keras3_model, digits):
    """Depthwise kernels and short channels pruned too when asked; no clusters, so the int8
    weights get one scale per channel."""
    result = _run(keras3_model, digits, stage="pqat", sparsity=0.75, prune_all=True)
    r = result.report
    assert r["ok"] and r["int8_weights"] == "channel" and not r["not_pruned"]
    assert all(c["quantization"] == "channel" for c in r["layers"])
    by_tensor = {w.name: w for w in _int8_weights(result.tflite)}
    masks = _expected_masks(keras3_model, 0.75, prune_all=True)
    assert set(masks) == {c["layer"] for c in r["layers"]}
    for c in r["layers"]:
        w = by_tensor[c["tensor"]]
        assert np.all(w.channels(w.tensor.data)[masks[c["layer"]]] == 0), c["layer"]


@pytest.mark.slow
def test_dataset_input(keras3_model, digits):
    """A tf.data.Dataset, unbatched or batched, trains as arrays do (without distillation:
    the soft targets are computed for arrays only)."""
    import tensorflow as tf

    from tflrewrite.finetune import Options, finetune

    x_train, _, y_train, _ = digits
    ds = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    for data in (ds, ds.batch(64)):
        result = finetune(keras3_model, data, options=Options(stage="pqat", epochs=1))
        r = result.report
        assert r["ok"] and r["loss"]["distill"] == 0.0
        assert len(r["epochs"]) == 1 and r["epochs"][0]["accuracy"] is not None


@pytest.mark.slow
def test_cqat_per_channel_clusters(keras3_model, digits):
    result = _run(keras3_model, digits, stage="cqat", granularity="channel", clusters=4)
    assert result.report["ok"] and result.report["int8_weights"] == "channel"
    for w in _int8_weights(result.tflite):
        assert stages.distinct_per_row(w.channels(w.tensor.data)).max() <= 4


@pytest.mark.slow
def test_other_layers_and_a_subclassed_one(digits):
    """Conv1D and Conv2DTranspose are constrained like the others; a subclassed layer with
    a weight of its own is trained as it is and named in the report."""
    keras = pytest.importorskip("keras")

    class Mix(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], shape[-1]), initializer="identity")

        def call(self, x):
            return keras.ops.matmul(x, self.w)

    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            layers.Input((8, 8, 1)),
            layers.Conv2D(4, 3, padding="same", name="c0"),
            layers.Conv2DTranspose(4, 3, padding="same", name="up"),
            layers.BatchNormalization(name="up_bn"),
            layers.ReLU(),
            Mix(name="mix"),
            layers.Reshape((64, 4)),
            layers.Conv1D(8, 5, strides=2, name="c1"),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(10, name="fc"),
        ]
    )
    result = _run(model, digits)
    r = result.report
    assert r["ok"] and not r["unmatched"]
    assert {c["layer"]: c["kind"] for c in r["layers"]} == {
        "c0": "Conv2D",
        "up": "Conv2DTranspose",
        "c1": "Conv1D",
        "fc": "Dense",
    }
    assert r["batchnorm"]["folded"] == {"up": "up_bn"}
    assert [a["layer"] for a in r["left_alone"]] == ["mix"]
    assert set(r["not_pruned"]) == {"c0"}
    _check(model, result, 0.5, K)


@pytest.mark.slow
def test_subclassed_model(digits):
    """No layer graph: its batch norm cannot be folded before training, the converter folds
    it after, and the cluster pass restores K values per tensor in the int8 kernel."""
    keras = pytest.importorskip("keras")

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)
            self.bn = keras.layers.BatchNormalization()
            self.fc = keras.layers.Dense(10)

        def call(self, x, training=False):
            h = keras.activations.relu(self.bn(self.conv(x), training=training))
            return self.fc(keras.ops.reshape(h, (-1, 8 * 8 * 16)))

    keras.utils.set_random_seed(0)
    model = Net()
    model(digits[0][:1])
    result = _run(model, digits)
    r = result.report
    assert r["ok"] and not r["batchnorm"]["folded"]
    assert "no layer graph" in r["batchnorm"]["not_folded"][0]
    conv = next(c for c in r["layers"] if c["kind"] == "Conv2D")
    assert conv["changed_by_rewrite"] > 0 and conv["tensor_unique"] <= K
    for w in _int8_weights(result.tflite):
        assert np.unique(w.tensor.data).size <= K


@pytest.mark.slow
def test_pcqat_tf_keras(digits):
    tf_keras = pytest.importorskip("tf_keras", reason="tf_keras is not installed")
    model = _tiny(tf_keras, digits[0], digits[2])
    result = _run(model, digits, epochs=2)
    assert result.report["keras"] == "tf_keras"
    _check(model, result, 0.5, K)


@pytest.mark.slow
def test_cli_end_to_end(keras3_model, digits, tmp_path, capsys):
    from tflrewrite.cli import main

    x_train, x_val, y_train, y_val = digits
    path = tmp_path / "tiny.keras"
    keras3_model.save(path)
    np.savez(tmp_path / "train.npz", x=x_train, y=y_train)
    np.savez(tmp_path / "val.npz", x=x_val, y=y_val)
    out = tmp_path / "out.tflite"
    argv = ["finetune", str(path), "--data", str(tmp_path / "train.npz"), "--val",
            str(tmp_path / "val.npz"), "--stage", "pcqat", "--cluster", str(K),
            "--epochs", "1", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "tflrewrite: epoch 1:" in captured.err
    assert "int8 .tflite in LiteRT" in captured.out
    assert out.exists()
    assert main(argv) == 2  # exists: no --force
    assert "exists" in capsys.readouterr().err
