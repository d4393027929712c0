#!/usr/bin/env python3
"""Latency of a MobileNet-v1-like float model in LiteRT's XNNPACK, dense against the output of
`--target xnnpack`, with XNNPACK's sparse inference mode observed, not assumed.

    python tools/bench/xnnpack_sparse.py [--size 224] [--alpha 1.0] [--sparsity 0.75]
                                         [--runs 30] [--rounds 5] [--out-dir DIR]

1. Builds once (TensorFlow, in a subprocess; cached in --out-dir, default
   ~/.cache/tflrewrite-bench) a MobileNet v1 of input --size and width --alpha with seeded
   He-normal weights, laid out as XNNPACK's sparse path wants: an explicit PAD before each
   stride-2 convolution, depthwise 3x3 + 1x1 blocks, MEAN, Dense(1000).
2. `tflrewrite --prune S` gives the dense pruned model, `tflrewrite --prune S --target
   xnnpack` the sparse one: the same weights, once dense, once behind DENSIFY. Prints the
   target's verdict and the file sizes, and checks LiteRT's builtin kernels give both the
   same outputs.
3. Runs each model in LiteRT with XNNPACK (one thread) in a child process under gdb
   (tests/litert.py, xnnpack_probe), which reports the flags the delegate gave XNNPACK, how
   many NCHW and SpMM convolutions XNNPACK created (it creates them only in sparse inference
   mode), the outputs, and --runs timed invokes after one untimed one. Two XNNPACK set-ups:
     stock  XNNPACK as it runs on this CPU. On x86 CPUs with AVX it never uses its sparse
            path (src/xnnpack/hardware-config.h), so dense and sparse should time alike.
     sse    the AVX-and-later bits of XNNPACK's hardware_config cleared before its first
            runtime is made: every kernel, dense or sparse, is what XNNPACK picks for an x86
            CPU without AVX. Here the sparse model switches to sparse inference.
   Rounds interleave the four runs and a fifth, the stock dense model without gdb (what
   the debugger costs: its breakpoints are on set-up functions, none on an invoke), rotating
   their order. Each run's figure is the median of its invokes; the script prints the
   median over rounds and the median of the per-round sparse/dense ratios.

Not measured here: an ARM CPU, where stock XNNPACK takes the sparse path by itself, and
accuracy (the weights are random). Exit status 0 when the sparse model switched to sparse
inference in the sse set-up and every output check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "tflrewrite-bench"
INPUT = "image"  # the Keras input; LiteRT names it serving_default_image:0
FEED_NAME = "serving_default_image:0"
# MobileNet v1: (pointwise width, depthwise stride) per block.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5
BLOCKS += [(1024, 2), (1024, 1)]


def model_path(out_dir: Path, size: int, alpha: float) -> Path:
    return out_dir / f"mobilenet_v1_{alpha:g}_{size}_padded_seed0.tflite"


def build_model(path: Path, size: int, alpha: float) -> None:
    """Runs in a subprocess (TensorFlow stays out of the timed processes)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    keras = tf.keras
    seeds = iter(range(1000))

    def init(kernel: str = "kernel_initializer") -> dict:
        return {
            kernel: keras.initializers.HeNormal(seed=next(seeds)),
            "bias_initializer": keras.initializers.RandomNormal(0.0, 0.05, seed=next(seeds)),
        }

    inp = keras.Input(shape=(size, size, 3), batch_size=1, name=INPUT)
    x = keras.layers.ZeroPadding2D(1)(inp)
    x = keras.layers.Conv2D(int(32 * alpha), 3, strides=2, activation="relu6", **init())(x)
    for width, stride in BLOCKS:
        if stride == 2:
            x = keras.layers.ZeroPadding2D(1)(x)
        x = keras.layers.DepthwiseConv2D(
            3,
            strides=stride,
            padding="valid" if stride == 2 else "same",
            activation="relu6",
            **init("depthwise_initializer"),
        )(x)
        x = keras.layers.Conv2D(int(width * alpha), 1, activation="relu6", **init())(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(1000, **init())(x)
    data = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, x)).convert()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def ensure_model(out_dir: Path, size: int, alpha: float) -> tuple[Path, str]:
    path = model_path(out_dir, size, alpha)
    if path.exists():
        return path, "cached"
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cmd = [sys.executable, __file__, "--build", str(path), "--size", str(size)]
    proc = subprocess.run([*cmd, "--alpha", str(alpha)], capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit("xnnpack_sparse.py: building the model needs TensorFlow")
    return path, f"built with TensorFlow in {time.perf_counter() - t:.1f} s"


def rewrite(src: Path, out: Path, flags: list[str]) -> None:
    import contextlib
    import io

    from tflrewrite.cli import main as tflrewrite

    with contextlib.redirect_stdout(io.StringIO()):
        code = tflrewrite([str(src), "-o", str(out), "--force", "--no-verify", *flags])
    if code != 0:
        raise SystemExit(f"tflrewrite {' '.join(flags)} failed (exit {code})")


def builtin_output(path: Path, feed: dict) -> np.ndarray:
    from litert import interpreter

    interp = interpreter(path)
    interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], feed[d["name"]])
    interp.invoke()
    return np.copy(interp.get_tensor(interp.get_output_details()[0]["index"]))


def plain_run(path: Path, feed: dict, runs: int) -> list[float]:
    """The probe's child script without gdb."""
    from litert import PROBE_CHILD

    with tempfile.TemporaryDirectory(prefix="xnnbench-") as tmp:
        inputs, outputs = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inputs, **feed)
        cmd = [sys.executable, "-c", PROBE_CHILD, str(path), inputs, outputs, str(runs)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if "times_ms=" in ln)
    return [float(x) for x in line.split("times_ms=", 1)[1].split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--sparsity", type=float, default=0.75)
    p.add_argument("--runs", type=int, default=30, help="timed invokes per run")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build:
        build_model(args.build, args.size, args.alpha)
        return 0

    from litert import xnnpack_probe

    from tflrewrite import reader
    from tflrewrite.targets import xnnpack

    src, how = ensure_model(args.out_dir, args.size, args.alpha)
    print(f"model: {src.name} ({src.stat().st_size:,} bytes, {how})")
    work = Path(tempfile.mkdtemp(prefix="xnnbench-"))
    dense, sparse = work / "dense.tflite", work / "sparse.tflite"
    flags = ["--prune", str(args.sparsity)]
    rewrite(src, dense, flags)
    rewrite(src, sparse, [*flags, "--target", "xnnpack"])
    verdict = xnnpack.check(reader.read(dense))[0]
    print(f"verdict: {verdict.reason}")
    size_ratio = sparse.stat().st_size / dense.stat().st_size
    print(
        f"files: dense pruned {dense.stat().st_size:,} B, --target xnnpack "
        f"{sparse.stat().st_size:,} B ({size_ratio:.3f}x)"
    )

    rng = np.random.default_rng(0)
    feed = {FEED_NAME: rng.standard_normal((1, args.size, args.size, 3)).astype(np.float32)}
    reference = builtin_output(dense, feed)
    ok = np.array_equal(reference, builtin_output(sparse, feed))
    print(f"builtin kernels, dense vs sparse outputs identical: {ok}")

    runs = {
        ("stock", "dense"): (dense, False),
        ("stock", "sparse"): (sparse, False),
        ("sse", "dense"): (dense, True),
        ("sse", "sparse"): (sparse, True),
    }
    medians: dict[tuple, list[float]] = {k: [] for k in runs}
    evidence: dict[tuple, dict] = {}
    keys = list(runs)
    no_gdb: list[float] = []
    rotation = [*keys, ("stock", "dense, no gdb")]
    for r in range(args.rounds):
        order = rotation[r % len(rotation) :] + rotation[: r % len(rotation)]
        for key in order:
            if key not in runs:
                no_gdb.append(statistics.median(plain_run(dense, feed, args.runs)))
                continue
            path, emulate = runs[key]
            got = xnnpack_probe(path, feed, emulate_sse=emulate, runs=args.runs)
            if "error" in got:
                print(f"{key}: the XNNPACK probe cannot run here: {got['error']}")
                return 1
            medians[key].append(statistics.median(got["times_ms"]))
            evidence.setdefault(key, got)

    print(f"\nXNNPACK, 1 thread, {args.rounds} rounds x {args.runs} invokes (ms, medians):")
    print(f"  {'set-up':6} {'model':6} {'median':>8}  hint  NCHW convs  SpMM  max|out - builtin|")
    for key in keys:
        got = evidence[key]
        err = float(np.max(np.abs(got["outputs"][0] - reference)))
        ok = ok and err <= 1e-4 * max(1.0, float(np.max(np.abs(reference))))
        print(
            f"  {key[0]:6} {key[1]:6} {statistics.median(medians[key]):8.2f}  "
            f"{'yes' if got['hint'] else 'no':4}  {got['nchw']:10d}  {got['spmm']:4d}  {err:.3g}"
        )
    print(f"  stock  dense  {statistics.median(no_gdb):8.2f}  (the same run without gdb)")
    before, after = evidence[("sse", "sparse")]["arch_flags"]
    print(f"  sse: XNNPACK hardware_config arch_flags 0x{before:x} -> 0x{after:x}")

    ratios = {}
    for setup in ("stock", "sse"):
        per_round = [
            s / d
            for s, d in zip(medians[(setup, "sparse")], medians[(setup, "dense")], strict=True)
        ]
        ratios[setup] = statistics.median(per_round)
    switched = evidence[("sse", "sparse")]["switched"]
    stock_switched = evidence[("stock", "sparse")]["switched"]
    vs_stock_dense = statistics.median(medians[("sse", "sparse")]) / statistics.median(
        medians[("stock", "dense")]
    )
    print(
        f"\nsparse/dense latency: stock {ratios['stock']:.3f}x (sparse mode: "
        f"{'yes' if stock_switched else 'no'}), sse {ratios['sse']:.3f}x (sparse mode: "
        f"{'yes' if switched else 'no'}); sse sparse / stock dense {vs_stock_dense:.3f}x"
    )
    ok = ok and switched
    print(
        f"summary: {src.name} pruned {args.sparsity:g}: file {size_ratio:.3f}x; XNNPACK "
        f"sparse/dense {ratios['sse']:.3f}x as on x86 without AVX (sparse inference "
        f"{'on' if switched else 'OFF'}), {ratios['stock']:.3f}x on this CPU as it is; "
        f"checks {'pass' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
