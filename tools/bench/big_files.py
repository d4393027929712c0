#!/usr/bin/env python3
"""Big files: read + write of a model with thousands of tensors against a plain read and
write of its bytes, and (with --gb) `--quantize int8-weights` of a multi-GB float model.

    python tools/bench/big_files.py [--tensors 5000] [--repeats 9] [--old REV|none]
                                    [--out-dir DIR] [--gb 2.5] [--keep]

1. Tables. Builds once (cached in --out-dir) read_write.py's stack of FULLY_CONNECTED
   layers with 128x128 float32 weights, enough layers for --tensors tensors (about 110 MB
   at 5000), packed with the schema bindings' object API. Then --repeats rounds, the order
   rotating each round, of:
     (a) plain:      open(src).read(), then write those bytes to a new file
     (b) tflrewrite: reader.read(src), then writer.write(model, dst)    (this checkout)
     (o) tflrewrite at REV (default b339d91, the object-API reader and writer), in a
         child process with a git worktree of REV: the same calls, timed in the child
   The input is in the page cache; outputs go to the page cache (no fsync) and are deleted
   untimed. Reports medians and the medians of the per-round ratios (b)/(a) and (o)/(a);
   target (b)/(a) <= 1.5x. Checks that (b) writes the same bytes as (o) and that LiteRT
   gives the input's result for (b)'s output.
2. --gb G: builds a float32 FC model of G GB (10^9 bytes) with 2048x2560 weights in
   LiteRT's >2 GB layout (tables, then the weights at Buffer.offset), checks that LiteRT
   runs it, then runs whole commands, fresh processes, order rotating: (q) `tflrewrite
   MODEL -o OUT --quantize int8-weights`, (n) the same with --no-verify, and (e)
   ai-edge-quantizer's weight-only int8 (compress.py's AEQ script) where it is installed.
   Reports wall seconds and peak RSS (of the process and the children it waited for) as
   a multiple of the input's size (target <= 1.3x), and checks that LiteRT loads and runs
   each output, close to the float model's result. The big files are deleted afterwards
   unless --keep.

Exit status 0 when the targets are met and the checks pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tools" / "bench")]

import numpy as np  # noqa: E402
from read_write import baseline, build_model, litert_input, model_path, remove  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "tflrewrite-bench"

# The other revision's side: read and write on request, timing itself.
SERVER = """
import sys, time
root = sys.argv[1]
sys.path.insert(0, root)
import tflrewrite
assert tflrewrite.__file__.startswith(root), tflrewrite.__file__
from tflrewrite import reader, writer
for line in sys.stdin:
    src, dst = line.split()
    t0, c0 = time.perf_counter(), time.process_time()
    writer.write(reader.read(src), dst)
    print(time.perf_counter() - t0, time.process_time() - c0, flush=True)
"""


def tflrewrite_rw(src: str, dst: str) -> None:
    from tflrewrite import reader, writer

    writer.write(reader.read(src), dst)


class OtherRevision:
    """A child process reading and writing with another revision's tflrewrite."""

    def __init__(self, rev: str, tmp: Path):
        self.tree = tmp / "other"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(self.tree), rev],
            check=True,
        )
        (self.tree / "tflrewrite" / "kernels").symlink_to(self.tree / "kernels")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.tree)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, src: str, dst: str) -> tuple[float, float]:
        """Wall and CPU seconds of one read + write."""
        self.proc.stdin.write(f"{src} {dst}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("big_files.py: the other revision's process died")
        wall, cpu = line.split()
        return float(wall), float(cpu)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.tree)],
            check=False,
        )


def litert_run(path: str, x: np.ndarray) -> np.ndarray:
    """The model's output for `x`, from LiteRT in a child process (its memory stays out of
    this one's)."""
    code = (
        "import sys, numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "i = Interpreter(model_path=sys.argv[1]); i.allocate_tensors()\n"
        "x = np.load(sys.argv[2])\n"
        "i.set_tensor(i.get_input_details()[0]['index'], x); i.invoke()\n"
        "np.save(sys.argv[3], i.get_tensor(i.get_output_details()[0]['index']))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/x.npy", x)
        subprocess.run(
            [sys.executable, "-c", code, path, f"{tmp}/x.npy", f"{tmp}/y.npy"],
            check=True,
            capture_output=True,
        )
        return np.load(f"{tmp}/y.npy")


# ---------------------------------------------------------------- 1. tables


def tables(args: argparse.Namespace, out_dir: Path) -> bool:
    n_in = n_out = 128
    layers = max(1, math.ceil((args.tensors - 1) / 3))
    src = model_path(out_dir, layers, n_in, n_out)
    how = "cached"
    if not src.exists():
        t = time.perf_counter()
        build_model(src, layers, n_in, n_out)
        how = f"built in {time.perf_counter() - t:.1f} s"
    size = src.stat().st_size
    print(f"tables   {src} ({how}): {size / 1e6:.1f} MB, {3 * layers + 1} tensors, {layers} ops")

    srcs = str(src)
    outs = {k: str(out_dir / f"big_files_{k}.tflite") for k in "abo"}
    x = litert_input(n_in)
    with tempfile.TemporaryDirectory() as tmp:
        other = None if args.old == "none" else OtherRevision(args.old, Path(tmp))
        try:
            runs = {
                "a": lambda: baseline(srcs, outs["a"]),
                "b": lambda: tflrewrite_rw(srcs, outs["b"]),
            }
            # warm-up: page cache, imports, first-call costs; and the checks
            for run in runs.values():
                run()
            same = None
            if other is not None:
                other.run(srcs, outs["o"])
                same = Path(outs["b"]).read_bytes() == Path(outs["o"]).read_bytes()
            result = np.array_equal(litert_run(outs["b"], x), litert_run(srcs, x))
            for out in outs.values():
                remove(out)

            order = ["a", "b"] + (["o"] if other is not None else [])
            rows = []
            for k in range(args.repeats):
                times = {}
                for which in order[k % len(order) :] + order[: k % len(order)]:
                    if which == "o":
                        times["o"], times["o cpu"] = other.run(srcs, outs["o"])
                    else:
                        t0, c0 = time.perf_counter(), time.process_time()
                        runs[which]()
                        times[which] = time.perf_counter() - t0
                        times[which + " cpu"] = time.process_time() - c0
                    remove(outs[which])
                rows.append(times)
        finally:
            if other is not None:
                other.close()

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def ratio(k: str, cpu: str = "") -> float:
        return statistics.median(r[k + cpu] / r["a" + cpu] for r in rows)

    print(
        f"         {args.repeats} rounds, order rotating; medians, ratios as medians of the "
        "per-round ratios;\n         CPU: user + system seconds of the process (the same "
        "work, less the machine's load)"
    )
    print("                                wall s      ratio      CPU s      ratio")
    names = {
        "a": "plain read()+write()",
        "b": "tflrewrite, this tree",
        "o": f"tflrewrite {args.old}",
    }
    for k in order:
        print(
            f"  ({k}) {names[k]:24s} {med(k):7.3f}   {ratio(k):6.2f}x   "
            f"{med(k + ' cpu'):7.3f}   {ratio(k, ' cpu'):6.2f}x"
        )
    if other is not None:
        print(f"  output of (b) {'byte-identical to' if same else 'DIFFERS from'} (o)'s")
    print(f"  LiteRT on (b)'s output: {'same result as the input' if result else 'DIFFERENT'}")
    ok = ratio("b") <= 1.5
    print(
        f"read+write of {3 * layers + 1} tensors: {ratio('b'):.2f}x a plain read+write "
        f"(target <= 1.5x{'' if ok else ', MISSED'}), CPU {ratio('b', ' cpu'):.2f}x"
        + (
            ""
            if other is None
            else f"; {args.old}: {ratio('o'):.2f}x, CPU {ratio('o', ' cpu'):.2f}x"
        )
    )
    return ok and result and same is not False


# ---------------------------------------------------------------- 2. a multi-GB model


def build_large(path: Path, gb: float) -> int:
    """A float32 FC stack of `gb` GB in LiteRT's >2 GB layout, packed with the object API:
    tables first (Buffer.offset/size), then each weight 16-byte aligned. Returns n_in."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    n_in, n_out = 2048, 2560
    layers = max(1, math.ceil(gb * 1e9 / (n_in * n_out * 4)))
    rng = np.random.default_rng(0)
    dims = [n_in] + [n_out if i % 2 == 0 else n_in for i in range(layers)]
    sizes = [4 * dims[i] * dims[i + 1] for i in range(layers)] + [4 * d for d in dims[1:]]
    header = 1 << 20  # room for the tables; the data starts here
    offsets = header + np.concatenate([[0], np.cumsum([s + (-s) % 16 for s in sizes])[:-1]])

    buffers, tensors = [fb.BufferT()], []

    def tensor(name: str, shape: list[int], data: int | None = None) -> int:
        b = fb.BufferT()
        if data is not None:
            b.offset, b.size = int(offsets[data]), sizes[data]
        buffers.append(b)
        tensors.append(fb.TensorT(shape=shape, type=0, buffer=len(buffers) - 1, name=name.encode()))
        return len(tensors) - 1

    x = first = tensor("input", [1, n_in])
    ops = []
    for i in range(layers):
        w = tensor(f"dense_{i}/weights", [dims[i + 1], dims[i]], i)
        bias = tensor(f"dense_{i}/bias", [dims[i + 1]], layers + i)
        y = tensor(f"dense_{i}/output", [1, dims[i + 1]])
        options = fb.FullyConnectedOptionsT()
        options.fusedActivationFunction = 1 if i < layers - 1 else 0  # RELU
        ops.append(
            fb.OperatorT(
                opcodeIndex=0,
                inputs=[x, w, bias],
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
        subgraphs=[fb.SubGraphT(tensors=tensors, inputs=[first], outputs=[x], operators=ops)],
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
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    head = builder.Output()
    assert len(head) <= header
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        f.write(bytes(header - len(head)))
        for i in range(layers):
            w = rng.standard_normal((dims[i + 1], dims[i]), dtype=np.float32)
            w *= np.float32(1 / math.sqrt(dims[i]))
            f.seek(int(offsets[i]))
            f.write(w.data)
        for i in range(layers):
            f.seek(int(offsets[layers + i]))
            f.write((rng.standard_normal(dims[i + 1], dtype=np.float32) * 0.01).data)
        f.truncate(int(offsets[-1]) + sizes[-1])
    os.replace(tmp, path)
    return n_in


AEQ_SCRIPT = """\
import sys
from ai_edge_quantizer import quantizer, recipe

qt = quantizer.Quantizer(sys.argv[1])
qt.load_quantization_recipe(recipe.weight_only_wi8_afp32())
qt.quantize().export_model(sys.argv[2], overwrite=True)
"""


# Runs a command and prints its wall seconds and peak RSS. A small process of its own, so
# that the peak RSS Linux reports for the command (ru_maxrss, which a process keeps across
# fork and exec) does not start at this bench's.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({
    "wall": time.perf_counter() - t0, "rss": usage.ru_maxrss * 1024,
    "code": os.waitstatus_to_exitcode(status), "err": err.decode(errors="replace")[-2000:],
}))
"""


def run_command(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of `cmd`, a fresh process (with the children it
    waited for)."""
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=True
    )
    result = json.loads(proc.stdout)
    if result["code"] != 0:
        raise SystemExit(f"big_files.py: {cmd} failed with {result['code']}: {result['err']}")
    return result["wall"], result["rss"]


def large(args: argparse.Namespace, out_dir: Path) -> bool:
    src = out_dir / f"fc_float32_{args.gb:g}GB_large_layout.tflite"
    t = time.perf_counter()
    n_in = build_large(src, args.gb)
    size = src.stat().st_size
    print(f"\nlarge    {src}: {size / 1e9:.2f} GB, built in {time.perf_counter() - t:.0f} s")
    x = litert_input(n_in)
    expected = litert_run(str(src), x)
    print("         LiteRT loads and runs it")

    tfl = [sys.executable, "-m", "tflrewrite", str(src)]
    outs = {k: str(out_dir / f"big_files_large_{k}.tflite") for k in "qne"}
    cmds = {
        "q": [*tfl, "-o", outs["q"], "--force", "--quantize", "int8-weights"],
        "n": [*tfl, "-o", outs["n"], "--force", "--quantize", "int8-weights", "--no-verify"],
    }
    names = {"q": "tflrewrite --quantize int8-weights", "n": "  the same, --no-verify"}
    try:
        import ai_edge_quantizer  # noqa: F401

        script = out_dir / "big_files_aeq.py"
        script.write_text(AEQ_SCRIPT)
        cmds["e"] = [sys.executable, str(script), str(src), outs["e"]]
        names["e"] = "ai-edge-quantizer weight-only int8"
    except ImportError:
        print("         ai-edge-quantizer is not installed: its contender is skipped")

    results: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    checks = {}
    try:
        order = list(cmds)
        for k in range(args.big_repeats):
            for which in order[k % len(order) :] + order[: k % len(order)]:
                elapsed, rss = run_command(cmds[which])
                results[which].append((elapsed, rss))
                if which not in checks:
                    y = litert_run(outs[which], x)
                    err = float(np.abs(y - expected).max() / np.abs(expected).max())
                    checks[which] = (os.path.getsize(outs[which]), err)
                remove(outs[which])
    finally:
        for out in outs.values():
            remove(out)
        if not args.keep:
            remove(str(src))

    print(f"         {args.big_repeats} rounds of whole commands, order rotating; medians")
    ok = True
    for k, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        rss = statistics.median(r[1] for r in rows) / size
        out_size, err = checks[k]
        print(
            f"  ({k}) {names[k]:36s} {wall:7.1f} s  peak RSS {rss:4.2f}x input  "
            f"output {out_size / 1e9:.2f} GB, LiteRT runs it: max error {err:.1e} of |y|max"
        )
        ok &= err < 0.05
    rss_q = statistics.median(r[1] for r in results["q"]) / size
    line = f"int8-weights of {size / 1e9:.2f} GB: peak RSS {rss_q:.2f}x input (target <= 1.3x)"
    if "e" in results:
        ratio = statistics.median(q[0] / e[0] for q, e in zip(results["q"], results["e"]))
        line += f"; {ratio:.2f}x ai-edge-quantizer's time (target <= 1x)"
        ok &= ratio <= 1
    print(line)
    return ok and rss_q <= 1.3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tensors", type=int, default=5000, help="tensors (default 5000)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--old", default="b339d91", help="revision to compare, or none")
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}"
    )
    parser.add_argument("--gb", type=float, help="also the multi-GB int8-weights run")
    parser.add_argument("--big-repeats", type=int, default=3, help="its rounds (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the multi-GB model")
    args = parser.parse_args(argv)
    out_dir = args.out_dir.expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = tables(args, out_dir)
    if args.gb:
        ok &= large(args, out_dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
