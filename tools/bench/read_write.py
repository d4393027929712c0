#!/usr/bin/env python3
"""Times tflrewrite's read + write of a large float model against simply reading and
writing the same bytes, and measures the peak memory of tflrewrite's read + write.

    python tools/bench/read_write.py [--mb 100] [--repeats 7] [--out-dir DIR] [--dims INxOUT]

1. Builds (once; cached in --out-dir) a float32 model of at least --mb megabytes (10^6
   bytes): a stack of FULLY_CONNECTED layers with [2560x2048] / [2048x2560] weights, packed
   with the schema bindings' object API (not tflrewrite's writer), and checks that LiteRT
   loads and runs it. --dims 128x128 makes many small layers instead (per-tensor costs).
2. Times --repeats rounds of three contenders, interleaved with the order rotating each
   round so that drift hits all alike:
   (a) baseline:   open(path).read(), then f.write(those bytes) to a new file
   (i) baseline:   readinto a preallocated, already-mapped buffer, then write it
   (b) tflrewrite: reader.read(path), then writer.write(model, out)   (atomic write)
   All read a file that is already in the page cache (an untimed warm-up run of each comes
   first), all write into the page cache of the same directory without fsync, and each
   output is deleted after its run, outside the timed span. Reports the medians and the
   medians of the per-round ratios (b)/(a) and (b)/(i); target <= 3x.
3. Runs (b) once more in a fresh subprocess and reports the rise of its peak RSS (VmHWM)
   over its RSS after imports, and, in another fresh subprocess, the tracemalloc peak
   (Python and numpy heap allocations), each as a multiple of the model size; target < 2x.
   The baseline (a) is measured the same way for comparison.
4. Checks the output with tools/fbdiff.py (structurally equal to the input) and that LiteRT
   gives the same result for it as for the input.

Exit status 0 when every target is met and the checks pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

import numpy as np  # noqa: E402

DEFAULT_DIMS = (2048, 2560)  # a layer's inputs and outputs; the next layer's are swapped
DEFAULT_CACHE = Path.home() / ".cache" / "tflrewrite-bench"


# ---------------------------------------------------------------- building the model


def model_path(out_dir: Path, layers: int, n_in: int, n_out: int) -> Path:
    return out_dir / f"fc{layers}_float32_{n_out}x{n_in}.tflite"


def build_model(path: Path, layers: int, n_in: int, n_out: int) -> None:
    """Pack a stack of `layers` FULLY_CONNECTED layers with the schema's object API, with
    [n_out x n_in] weights, then [n_in x n_out], and so on."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    class AlignedBufferT(fb.BufferT):
        """BufferT whose data vector is 16-byte aligned (as the converter makes it) and is
        copied into the builder without an intermediate bytes object."""

        def Pack(self, builder):  # noqa: N802 - the bindings' name
            raw = self.data.reshape(-1).view(np.uint8)
            builder.StartVector(1, raw.size, 16)
            builder.head -= raw.size
            builder.Bytes[builder.head : builder.head + raw.size] = raw.data
            data = builder.EndVector()
            fb.BufferStart(builder)
            fb.BufferAddData(builder, data)
            return fb.BufferEnd(builder)

    rng = np.random.default_rng(0)
    dims = [n_in] + [n_out if i % 2 == 0 else n_in for i in range(layers)]
    buffers = [fb.BufferT()]  # buffer 0: the empty sentinel
    tensors = []

    def tensor(name, shape, data=None):
        buffers.append(fb.BufferT() if data is None else AlignedBufferT(data=data))
        tensors.append(
            fb.TensorT(
                shape=list(shape),
                type=fb.TensorType.FLOAT32,
                buffer=len(buffers) - 1,
                name=name.encode(),
            )
        )
        return len(tensors) - 1

    x = tensor("input", [1, dims[0]])
    first = x
    operators = []
    for i in range(layers):
        n_in, n_out = dims[i], dims[i + 1]
        w = rng.standard_normal((n_out, n_in), dtype=np.float32)
        w *= np.float32(1.0 / math.sqrt(n_in))
        b = rng.standard_normal(n_out, dtype=np.float32) * np.float32(0.01)
        wi = tensor(f"dense_{i}/weights", [n_out, n_in], w)
        bi = tensor(f"dense_{i}/bias", [n_out], b)
        y = tensor(f"dense_{i}/output", [1, n_out])
        last = i == layers - 1
        options = fb.FullyConnectedOptionsT()
        options.fusedActivationFunction = (
            fb.ActivationFunctionType.NONE if last else fb.ActivationFunctionType.RELU
        )
        operators.append(
            fb.OperatorT(
                opcodeIndex=0,
                inputs=[x, wi, bi],
                outputs=[y],
                builtinOptionsType=fb.BuiltinOptions.FullyConnectedOptions,
                builtinOptions=options,
            )
        )
        x = y

    code = fb.BuiltinOperator.FULLY_CONNECTED
    model = fb.ModelT(
        version=3,
        operatorCodes=[fb.OperatorCodeT(deprecatedBuiltinCode=code, builtinCode=code, version=1)],
        subgraphs=[
            fb.SubGraphT(
                tensors=tensors, inputs=[first], outputs=[x], operators=operators, name=b"main"
            )
        ],
        description=b"tflrewrite read/write benchmark",
        buffers=buffers,
        signatureDefs=[
            fb.SignatureDefT(
                inputs=[fb.TensorMapT(name=b"input", tensorIndex=first)],
                outputs=[fb.TensorMapT(name=b"output", tensorIndex=x)],
                signatureKey=b"serving_default",
                subgraphIndex=0,
            )
        ],
    )
    data_bytes = sum(b.data.nbytes for b in buffers if b.data is not None)
    builder = flatbuffers.Builder(data_bytes + 16 * len(buffers) + (1 << 20))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = memoryview(builder.Bytes)[builder.Head() :]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, path)


def run_litert(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"]).copy()


def litert_input(n_in: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, n_in), dtype=np.float32)


# ---------------------------------------------------------------- the two contenders


def baseline(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data)


def baseline_into(src: str, dst: str, buf: memoryview) -> None:
    """The baseline with no allocation: readinto a buffer whose pages are already mapped."""
    with open(src, "rb", buffering=0) as f:
        n = 0
        while n < len(buf):
            got = f.readinto(buf[n:])
            if not got:
                break
            n += got
    with open(dst, "wb", buffering=0) as f:
        done = 0
        while done < n:
            done += f.write(buf[done:n])


def tflrewrite_rw(src: str, dst: str) -> tuple[float, float]:
    """Returns the seconds spent reading and writing."""
    from tflrewrite import reader, writer

    t0 = time.perf_counter()
    model = reader.read(src)
    t1 = time.perf_counter()
    writer.write(model, dst)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- memory, in a subprocess


def _status() -> dict[str, int]:
    """Current RSS and its parts, in bytes, from /proc/self/status (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _peak_rss() -> int:
    """This process's peak RSS in bytes. VmHWM, not ru_maxrss: Linux carries ru_maxrss
    across exec, so a child's would start at its parent's RSS at the fork."""
    hwm = _status().get("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak_rss() -> None:
    """Lower the peak RSS to the current RSS (Linux >= 4.0), so that the imports' own
    transient peak is not mistaken for the baseline."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child(kind: str, src: str, dst: str, trace: bool) -> None:
    """Run one contender once and print its memory use as JSON."""
    import tracemalloc

    from tflrewrite import reader, writer  # noqa: F401 - imports count in the baseline

    gc.collect()
    _reset_peak_rss()
    start = _status()
    before = start.get("VmRSS") or _peak_rss()
    if trace:
        tracemalloc.start()
    if kind == "baseline":
        with open(src, "rb") as f:
            data = f.read()
        with open(dst, "wb") as f:
            f.write(data)
        during = _status()  # the data still alive
        del data
    else:
        model = reader.read(src)
        writer.write(model, dst)
        during = _status()  # the model and its memory map still alive
        del model
    result = {"before": before, "peak": _peak_rss(), "start": start, "during": during}
    if trace:
        result["traced_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(json.dumps(result))


def measure_memory(kind: str, src: Path, dst: Path, trace: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(src), str(dst)]
    if trace:
        cmd.append("--trace")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    finally:
        remove(str(dst))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def _dims(text: str) -> tuple[int, int]:
    try:
        n_in, n_out = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not INxOUT, e.g. 2048x2560") from None
    if n_in < 1 or n_out < 1:
        raise argparse.ArgumentTypeError("dimensions must be positive")
    return n_in, n_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100, help="least model size, 10^6 bytes")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}"
    )
    parser.add_argument(
        "--dims",
        type=_dims,
        default=DEFAULT_DIMS,
        metavar="INxOUT",
        help="a layer's weights (default 2048x2560); e.g. 128x128 for many small tensors",
    )
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "DST"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, trace=args.trace)
        return 0
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    out_dir = args.out_dir.expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    n_in, n_out = args.dims
    layers = max(1, math.ceil(args.mb * 1e6 / (n_in * n_out * 4)))
    src = model_path(out_dir, layers, n_in, n_out)
    x = litert_input(n_in)

    # 1. the model, built once
    t = time.perf_counter()
    if src.exists():
        how = "cached"
    else:
        build_model(src, layers, n_in, n_out)
        how = f"built in {time.perf_counter() - t:.1f} s"
    size = src.stat().st_size
    mb = size / 1e6
    try:
        expected = run_litert(src, x)
    except Exception:
        src.unlink()  # a bad cached file must not stay
        raise
    print(f"model    {src} ({how})")
    print(
        f"         {mb:.1f} MB, {layers} FULLY_CONNECTED layers ({n_in}x{n_out} float32), "
        f"{3 * layers + 1} tensors; "
        f"LiteRT loads and runs it (output {expected.shape}, |y|max {abs(expected).max():.3g})"
    )

    out_a = str(out_dir / "bench_baseline.tflite")
    out_b = str(out_dir / "bench_tflrewrite.tflite")
    srcs = str(src)
    buf = memoryview(bytearray(size))

    # 4. correctness of tflrewrite's output (also the warm-up of all three contenders: the
    # input enters the page cache and the readinto buffer's pages get mapped)
    from fbdiff import diff_files

    baseline(srcs, out_a)
    remove(out_a)
    baseline_into(srcs, out_a, buf)
    remove(out_a)
    tflrewrite_rw(srcs, out_b)
    differences = diff_files(srcs, out_b)
    same_result = np.array_equal(run_litert(Path(out_b), x), expected)
    out_size = os.path.getsize(out_b)
    remove(out_b)
    print(
        f"check    output {out_size / 1e6:.1f} MB; fbdiff vs input: "
        + ("structurally equal" if not differences else f"{len(differences)} DIFFERENCES")
        + f"; LiteRT result {'identical' if same_result else 'DIFFERENT'}"
    )
    for line in differences[:10]:
        print("         " + line)

    # 2. interleaved timing; the order rotates each round so no contender always goes first
    contenders = ["a", "i", "b"]
    rows = []
    for k in range(args.repeats):
        times = {}
        for which in contenders[k % 3 :] + contenders[: k % 3]:
            gc.collect()
            if which == "a":
                t0 = time.perf_counter()
                baseline(srcs, out_a)
                times["a"] = time.perf_counter() - t0
                remove(out_a)
            elif which == "i":
                t0 = time.perf_counter()
                baseline_into(srcs, out_a, buf)
                times["i"] = time.perf_counter() - t0
                remove(out_a)
            else:
                t0 = time.perf_counter()
                r, w = tflrewrite_rw(srcs, out_b)
                times["b"] = time.perf_counter() - t0
                times["read"], times["write"] = r, w
                remove(out_b)
        times["ratio"] = times["b"] / times["a"]
        times["ratio_i"] = times["b"] / times["i"]
        rows.append(times)
    del buf

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    med_a, med_i, med_b, med_ratio, med_ratio_i = (
        med(k) for k in ("a", "i", "b", "ratio", "ratio_i")
    )
    print()
    print(
        f"timing   {args.repeats} interleaved rounds (order rotates), input already in the "
        "page cache,\n         outputs written to the page cache (no fsync) and deleted untimed"
    )
    print("         (a) read()+write()   (i) readinto(preallocated)+write()   (b) tflrewrite")
    print("  round     (a) s     (i) s     (b) s  = read s + write s    (b)/(a)  (b)/(i)")
    for k, r in enumerate(rows, 1):
        print(
            f"  {k:5d}  {r['a']:8.3f}  {r['i']:8.3f}  {r['b']:8.3f}    {r['read']:6.3f}   "
            f"{r['write']:6.3f}    {r['ratio']:6.2f}x  {r['ratio_i']:6.2f}x"
        )
    print(
        f"  med.   {med_a:8.3f}  {med_i:8.3f}  {med_b:8.3f}    {med('read'):6.3f}   "
        f"{med('write'):6.3f}    {med_ratio:6.2f}x  {med_ratio_i:6.2f}x"
    )
    print(
        f"  GB/s   {mb / med_a / 1e3:8.2f}  {mb / med_i / 1e3:8.2f}  {mb / med_b / 1e3:8.2f}"
        "    (ratios: medians of the per-round ratios)"
    )

    # 3. memory, each in a fresh process
    mem_b = measure_memory("tflrewrite", src, Path(out_b), trace=False)
    traced_b = measure_memory("tflrewrite", src, Path(out_b), trace=True)
    mem_a = measure_memory("baseline", src, Path(out_a), trace=False)
    traced_a = measure_memory("baseline", src, Path(out_a), trace=True)

    def x_(n: float) -> str:
        return f"{n / size:.2f}x"

    print()
    print("memory   each in a fresh process; multiples of the model size")
    print("               peak RSS rise   RSS anon / file-backed at end   tracemalloc peak")
    for name, m, tr in (("baseline", mem_a, traced_a), ("tflrewrite", mem_b, traced_b)):
        rise = m["peak"] - m["before"]
        anon = m["during"].get("RssAnon", 0) - m["start"].get("RssAnon", 0)
        file_ = m["during"].get("RssFile", 0) - m["start"].get("RssFile", 0)
        print(
            f"  {name:10s}  {x_(rise):>14s}   {x_(anon):>13s} / {x_(file_):<16s}"
            f"   {x_(tr['traced_peak']):>16s}"
        )
    print(
        "  (RSS counts the pages of tflrewrite's memory-mapped input that the write touched:\n"
        "   shared, file-backed page-cache pages, not memory of its own; the anonymous part\n"
        "   is what the process allocated.)"
    )

    rise_b = (mem_b["peak"] - mem_b["before"]) / size
    traced = traced_b["traced_peak"] / size
    ok_time = med_ratio <= 3 and med_ratio_i <= 3
    ok_mem = rise_b < 2 and traced < 2
    print()
    print(
        f"read+write {mb:.1f} MB: median {med_b:.3f} s vs baseline {med_a:.3f} s = "
        f"{med_ratio:.2f}x ({med_ratio_i:.2f}x vs readinto {med_i:.3f} s; "
        f"target <= 3x{'' if ok_time else ', MISSED'}); "
        f"peak RSS +{rise_b:.2f}x model, tracemalloc {traced:.2f}x "
        f"(target < 2x{'' if ok_mem else ', MISSED'}); "
        f"output {'structurally equal' if not differences else 'DIFFERS'}"
    )
    return 0 if ok_time and ok_mem and not differences and same_result else 1


if __name__ == "__main__":
    sys.exit(main())
