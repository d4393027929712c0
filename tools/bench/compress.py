#!/usr/bin/env python3
"""Times tflrewrite's weight compression of a ~20M-parameter float model against
ai-edge-quantizer's weight-only int8 recipe, in-process and as whole commands.

    python tools/bench/compress.py [--repeats 7] [--cmd-repeats 5] [--out-dir DIR]
                                   [--profile auto|yes|no] [--no-commands]

ai-edge-quantizer (AEQ) is a bench-only peer, not a dependency of tflrewrite:
`pip install ai-edge-quantizer` (it needs no TensorFlow). Building the model once needs
TensorFlow (`pip install -e ".[keras]"`); it runs in a subprocess, so the timed process
never imports TensorFlow.

1. Builds (once; cached in --out-dir) a float32 Keras model: input [1, 2048], five Dense
   layers of 2048 units with seeded random weights and non-zero biases (about 21M
   parameters, about 84 MB), converted with TFLiteConverter.from_keras_model (so the
   file has a serving_default signature, which AEQ needs). LiteRT must run it.
2. In-process timing: --repeats rounds after one untimed warm-up of each contender
   (which also compiles / loads the Numba kernels), interleaved with the order rotating
   each round. Each output is deleted after its run, outside the timed span; all write
   into the page cache of the same directory without fsync.
     rw    plain open().read() + write() of the model's bytes
     (a)   AEQ: Quantizer(path) + weight_only_wi8_afp32 recipe, quantize(), export_model()
     (a')  AEQ: the same with quantize(serialize_to_path=...) (what its own CLI does); info
     (b)   tflrewrite: reader.read -> pipeline.apply(recipe of `--quantize int8-weights`)
           -> writer.write
     (c)   the same with the recipe of `--prune 0.5 --cluster 16 --quantize int8-weights`
   The recipes are built by tflrewrite.cli.rewrite.recipe_from_args, so they are exactly the
   command's. In-process numbers leave out the command's report and verify.
   Targets: (b) <= 1x (a), (c) <= 2x (a) (medians of the per-round ratios).
3. Whole commands, each a fresh process (start-up, imports, Numba cache loads included),
   --cmd-repeats rounds, interleaved and rotated like above, after one untimed warm-up.
   tflrewrite's modules are first compiled to __pycache__ where stale, as `pip install`
   does (AEQ's, in site-packages, have theirs), so that PYTHONDONTWRITEBYTECODE does not
   make every tflrewrite process compile its modules from source:
     tflrewrite MODEL -o OUT --force --quantize int8-weights --no-verify          (b)
     tflrewrite MODEL -o OUT --force --prune 0.5 --cluster 16 --quantize int8-weights
       --no-verify                                                                 (c)
     the same (c) with the default report and verify                               (c+v)
     python aeq_script.py MODEL OUT: a minimal AEQ script (imports, quantize, export)
     tflrewrite recipes (the command's start-up, all passes imported), for reference
     python -c pass (the interpreter's own start-up), for reference
   Target: (c) no slower than the AEQ script.
   Both tables also give median CPU seconds (all threads; user + system for a command) and
   CPU ratios, for information: on a shared machine they move far less than wall times.
4. Checks: output sizes of (a), (b), (c) with `tflrewrite audit` figures (bytes, zipped
   bytes, bytes by dtype, weight sparsity and most distinct values in a channel), and LiteRT
   runs the float model and every output on one seeded random input (max |diff| vs float).
5. With --profile yes, or with auto when a target is missed: cProfile of (b) and (c)
   in-process, the top 15 entries by cumulative time.

The last line is a one-line summary. Exit status 0 when every target is met and the checks
pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402

DEFAULT_CACHE = Path.home() / ".cache" / "tflrewrite-bench"
WIDTH, LAYERS, SEED = 2048, 5, 0
B_FLAGS = ["--quantize", "int8-weights"]
C_FLAGS = ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights"]

# ---------------------------------------------------------------- building the model


def model_path(out_dir: Path) -> Path:
    return out_dir / f"fc{LAYERS}x{WIDTH}_keras_float32_seed{SEED}.tflite"


def build_model(path: Path) -> None:
    """Runs in a subprocess (TensorFlow stays out of the timed process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    rng = np.random.default_rng(SEED)
    inp = tf.keras.Input(shape=(WIDTH,), batch_size=1, name="input")
    x = inp
    layers = []
    for i in range(LAYERS):
        layer = tf.keras.layers.Dense(
            WIDTH, activation="relu" if i < LAYERS - 1 else None, name=f"dense_{i}"
        )
        x = layer(x)
        layers.append(layer)
    model = tf.keras.Model(inp, x, name="fc_stack")
    for layer in layers:
        n_in, n_out = layer.kernel.shape
        w = rng.standard_normal((n_in, n_out), dtype=np.float32) / np.float32(np.sqrt(n_in))
        b = rng.standard_normal(n_out, dtype=np.float32) * np.float32(0.01)  # non-zero: kept
        layer.set_weights([w, b])
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def ensure_model(out_dir: Path) -> tuple[Path, str]:
    path = model_path(out_dir)
    if path.exists():
        return path, "cached"
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--build", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0 or not path.exists():
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(
            "compress.py: building the model needs TensorFlow (pip install -e '.[keras]')"
        )
    return path, f"built with TensorFlow in {time.perf_counter() - t:.1f} s"


# ---------------------------------------------------------------- bytecode


def ensure_bytecode() -> str:
    """Compiles tflrewrite's modules to __pycache__ where they are missing or stale, as
    `pip install` does for an installed package and as the first import does unless
    PYTHONDONTWRITEBYTECODE is set: AEQ's modules in site-packages have theirs, so each
    command starts from bytecode. Without it, every tflrewrite process compiles its own
    modules from source first (about 0.1-0.2 s)."""
    import compileall

    import tflrewrite
    import tflrewrite.kernels

    folders = sorted({Path(tflrewrite.__file__).parent, Path(tflrewrite.kernels.__file__).parent})
    for folder in folders:
        if not compileall.compile_dir(str(folder), quiet=1):
            raise SystemExit(f"compress.py: could not compile {folder} to bytecode")
    note = " (PYTHONDONTWRITEBYTECODE is set here)" if sys.dont_write_bytecode else ""
    return f"{', '.join(map(str, folders))} compiled to __pycache__ where stale{note}"


# ---------------------------------------------------------------- LiteRT


def litert_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


# ---------------------------------------------------------------- the contenders


def rw(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data)


def aeq_export(src: str, dst: str) -> None:
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(src)
    qt.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    result = qt.quantize(enable_progress_report=False)
    result.export_model(dst)


def aeq_serialize(src: str, dst: str) -> None:
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(src)
    qt.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    qt.quantize(serialize_to_path=dst, enable_progress_report=False)


def cli_recipe(flags: list[str]):
    from tflrewrite.cli import rewrite

    return rewrite.recipe_from_args(rewrite.parser().parse_args(["MODEL", *flags]))


def tflrewrite_run(src: str, dst: str, recipe, phases: dict | None = None) -> None:
    from tflrewrite import pipeline, reader, writer

    t0 = time.perf_counter()
    model = reader.read(src)
    t1 = time.perf_counter()
    result = pipeline.apply(model, recipe)
    t2 = time.perf_counter()
    writer.write(result.model, dst)
    t3 = time.perf_counter()
    if phases is not None:
        phases.update(read=t1 - t0, apply=t2 - t1, write=t3 - t2)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- whole commands

AEQ_SCRIPT = textwrap.dedent(
    """\
    import sys
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(sys.argv[1])
    qt.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    qt.quantize().export_model(sys.argv[2], overwrite=True)
    """
)


def tflrewrite_command() -> list[str]:
    exe = Path(sys.executable).parent / "tflrewrite"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("tflrewrite")
    return [found] if found else [sys.executable, "-m", "tflrewrite"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(cmd: list[str], out: str | None) -> tuple[float, dict]:
    """Wall seconds of one fresh process, and its CPU seconds (user + system, all threads)
    as extra "cpu"; its output is deleted untimed."""
    if out:
        remove(out)
    c0 = children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    cpu = children_cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(
            f"compress.py: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    if out:
        remove(out)
    return elapsed, {"cpu": cpu}


# ---------------------------------------------------------------- timing helpers


def interleaved(
    contenders: dict[str, Callable[[], tuple[float, dict]]], repeats: int
) -> list[dict[str, float]]:
    """Runs each contender once untimed, then `repeats` rounds with the order rotated. A
    contender times itself (leaving out its clean-up) and returns (seconds, extra figures)."""
    names = list(contenders)
    for name in names:
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


def timed(fn: Callable[[], dict | None], out: str) -> tuple[float, dict]:
    """Times fn() (wall, and CPU of every thread of this process as extra "cpu"), then
    deletes `out` untimed."""
    c0, t0 = time.process_time(), time.perf_counter()
    extra = fn()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    remove(out)
    return elapsed, {**(extra or {}), "cpu": cpu}


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def med_ratio(rows: list[dict[str, float]], num: str, den: str) -> float:
    return statistics.median(r[num] / r[den] for r in rows)


def profile(label: str, fn: Callable[[], None], top: int = 15) -> None:
    gc.collect()
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    lines = [ln for ln in s.getvalue().splitlines() if ln.strip()]
    print(f"\nprofile  {label}: top {top} by cumulative time")
    for line in lines:
        if "function calls" in line or line.lstrip().startswith(("ncalls", "Ordered by")):
            print("  " + line.strip())
        elif line[:1] == " " or line[:1].isdigit():
            print("  " + line.rstrip())


# ---------------------------------------------------------------- checks


def audit_figures(path: Path) -> dict:
    proc = subprocess.run(
        [*tflrewrite_command(), "audit", str(path), "--json", "-"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-300:]}
    return json.loads(proc.stdout)


def _weights_line(doc: dict) -> str:
    """Sparsity and channel-unique range over the weight tensors (2-D constants)."""
    tensors = [
        t
        for t in doc.get("tensors", [])
        if t.get("bytes") and t.get("shape") and len(t["shape"]) == 2 and t["shape"][0] > 1
    ]
    if not tensors:
        return ""
    sp = [t["sparsity"] for t in tensors if t.get("sparsity") is not None]
    cu = [t["channel_unique"] for t in tensors if t.get("channel_unique") is not None]
    parts = [f"{len(tensors)} weights"]
    if sp:
        parts.append(f"sparsity {min(sp):.3f}-{max(sp):.3f}")
    if cu:
        parts.append(f"ch.unique <= {max(cu)}")
    return ", ".join(parts)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="in-process rounds (default 7)")
    parser.add_argument(
        "--cmd-repeats", type=int, default=5, help="whole-command rounds (default 5)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}"
    )
    parser.add_argument(
        "--profile",
        choices=["auto", "yes", "no"],
        default="auto",
        help="cProfile (b) and (c) in-process (auto: when a target is missed)",
    )
    parser.add_argument("--no-commands", action="store_true", help="skip the whole commands")
    parser.add_argument("--build", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build_model(Path(args.build))
        return 0
    if args.repeats < 1 or args.cmd_repeats < 1:
        parser.error("--repeats and --cmd-repeats must be at least 1")
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        parser.error("needs ai-edge-quantizer: pip install ai-edge-quantizer (bench only)")

    out_dir = args.out_dir.expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. the model
    src, how = ensure_model(out_dir)
    size = src.stat().st_size
    x = np.random.default_rng(1).uniform(-1, 1, (1, WIDTH)).astype(np.float32)
    try:
        expected = litert_outputs(src, x)
    except Exception:
        src.unlink()  # a bad cached file must not stay
        raise
    from tflrewrite import reader

    float_model = reader.read(str(src))
    params = sum(
        int(np.prod(t.shape)) for _, _, t in float_model.tensors() if t.is_constant and t.shape
    )
    del float_model
    import ai_edge_quantizer

    import tflrewrite

    aeq_version = getattr(ai_edge_quantizer, "__version__", None)
    if aeq_version is None:
        from importlib.metadata import version

        aeq_version = version("ai-edge-quantizer")
    print(f"model    {src} ({how})")
    print(
        f"         {size:,} bytes ({size / 2**20:.1f} MiB), {params:,} parameters, "
        f"{LAYERS} FULLY_CONNECTED {WIDTH}x{WIDTH} + bias, float32; LiteRT runs it"
    )
    print(
        f"         tflrewrite {tflrewrite.__version__}, ai-edge-quantizer {aeq_version}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(f"bytecode {ensure_bytecode()}")

    srcs = str(src)
    outs = {k: str(out_dir / f"bench_compress_{k}.tflite") for k in ("rw", "a", "a2", "b", "c")}
    recipe_b, recipe_c = cli_recipe(B_FLAGS), cli_recipe(C_FLAGS)

    # 4. checks first: one run of each, kept for the checks (also a warm-up)
    aeq_export(srcs, outs["a"])
    tflrewrite_run(srcs, outs["b"], recipe_b)
    tflrewrite_run(srcs, outs["c"], recipe_c)
    print()
    print("check    output sizes and audit figures; LiteRT on one random input (seed 1)")
    ok_checks = True
    table = [("", "bytes", "of float", "zipped", "by dtype", "weights", "max |diff| vs float")]
    for label, path in (
        ("float", srcs),
        ("(a) AEQ", outs["a"]),
        ("(b)", outs["b"]),
        ("(c)", outs["c"]),
    ):
        doc = audit_figures(Path(path))
        try:
            got = litert_outputs(Path(path), x)
            diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
            if not np.all(np.isfinite(diff)):
                ok_checks = False
            diff_s = f"{diff:.4g}"
        except Exception as e:  # noqa: BLE001 - report, don't stop the bench
            ok_checks = False
            diff_s = f"LiteRT FAILED: {str(e).splitlines()[0][:60]}"
        if "error" in doc:
            ok_checks = False
            table.append((label, f"{os.path.getsize(path):,}", "", "audit FAILED", "", "", diff_s))
            continue
        by_dtype = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in doc.get("by_dtype", {}).items())
        table.append(
            (
                label,
                f"{doc['bytes']:,}",
                f"{doc['bytes'] / size:.3f}",
                f"{doc['zip_bytes']:,}",
                by_dtype,
                _weights_line(doc),
                diff_s if label != "float" else "",
            )
        )
    _print_table(table, right={1, 2, 3})
    for path in outs.values():
        remove(path)

    # 2. in-process timing
    def phased(out: str, recipe) -> Callable[[], tuple[float, dict]]:
        def fn() -> tuple[float, dict]:
            phases: dict = {}
            return timed(lambda: tflrewrite_run(srcs, out, recipe, phases) or phases, out)

        return fn

    rows = interleaved(
        {
            "rw": lambda: timed(lambda: rw(srcs, outs["rw"]), outs["rw"]),
            "a": lambda: timed(lambda: aeq_export(srcs, outs["a"]), outs["a"]),
            "a2": lambda: timed(lambda: aeq_serialize(srcs, outs["a2"]), outs["a2"]),
            "b": phased(outs["b"], recipe_b),
            "c": phased(outs["c"], recipe_c),
        },
        args.repeats,
    )
    print()
    print(
        f"in-process  {args.repeats} interleaved rounds (order rotates) after a warm-up; "
        "input in the page cache;\n"
        "            outputs to the page cache (no fsync), deleted untimed.\n"
        "            tflrewrite = read + pipeline.apply + write: the command's report and "
        "verify are NOT included."
    )
    print("  round      rw s     (a) s    (a') s     (b) s     (c) s   (b)/(a)  (c)/(a)")
    for k, r in enumerate(rows, 1):
        print(
            f"  {k:5d}  {r['rw']:8.3f}  {r['a']:8.3f}  {r['a2']:8.3f}  {r['b']:8.3f}  "
            f"{r['c']:8.3f}  {r['b'] / r['a']:7.2f}x {r['c'] / r['a']:7.2f}x"
        )
    m = {k: med(rows, k) for k in ("rw", "a", "a2", "b", "c")}
    rb, rc = med_ratio(rows, "b", "a"), med_ratio(rows, "c", "a")
    print(
        f"  med.   {m['rw']:8.3f}  {m['a']:8.3f}  {m['a2']:8.3f}  {m['b']:8.3f}  {m['c']:8.3f}"
        f"  {rb:7.2f}x {rc:7.2f}x   (ratios: medians of per-round ratios)"
    )
    mc = {k: med(rows, k + ".cpu") for k in ("rw", "a", "a2", "b", "c")}
    print(
        f"  cpu    {mc['rw']:8.3f}  {mc['a']:8.3f}  {mc['a2']:8.3f}  {mc['b']:8.3f}  {mc['c']:8.3f}"
        f"  {med_ratio(rows, 'b.cpu', 'a.cpu'):7.2f}x {med_ratio(rows, 'c.cpu', 'a.cpu'):7.2f}x"
        "   (CPU s of all threads, for information: less noisy on a shared machine)"
    )
    for name in ("b", "c"):
        print(
            f"  ({name}) phases, medians: read {med(rows, name + '.read'):.3f} s, "
            f"apply {med(rows, name + '.apply'):.3f} s, write {med(rows, name + '.write'):.3f} s"
        )
    print(
        "  rw = plain read()+write() of the file; (a) = AEQ quantize() + export_model();\n"
        "  (a') = AEQ quantize(serialize_to_path=...), for information; "
        f"(b) = {' '.join(B_FLAGS)}; (c) = {' '.join(C_FLAGS)}"
    )
    ok_b, ok_c = rb <= 1.0, rc <= 2.0
    print(
        f"  targets: (b) <= 1x (a): {rb:.2f}x {'met' if ok_b else 'MISSED'}; "
        f"(c) <= 2x (a): {rc:.2f}x {'met' if ok_c else 'MISSED'}; "
        f"(a)/rw = {med_ratio(rows, 'a', 'rw'):.2f}x"
    )

    # 3. whole commands
    ok_cmd = True
    cmd_summary = "whole commands skipped"
    if not args.no_commands:
        tool = tflrewrite_command()
        with tempfile.TemporaryDirectory(prefix="tflrewrite-bench-") as tmp:
            script = Path(tmp) / "aeq_script.py"
            script.write_text(AEQ_SCRIPT)
            cmd_out = {k: str(out_dir / f"bench_cmd_{k}.tflite") for k in ("b", "c", "cv", "aeq")}
            commands = {
                "b": [*tool, srcs, "-o", cmd_out["b"], "--force", *B_FLAGS, "--no-verify"],
                "c": [*tool, srcs, "-o", cmd_out["c"], "--force", *C_FLAGS, "--no-verify"],
                "cv": [*tool, srcs, "-o", cmd_out["cv"], "--force", *C_FLAGS],
                "aeq": [sys.executable, str(script), srcs, cmd_out["aeq"]],
                "start": [*tool, "recipes"],
                "py": [sys.executable, "-c", "pass"],
            }
            crow = interleaved(
                {k: (lambda k=k: run_command(commands[k], cmd_out.get(k))) for k in commands},
                args.cmd_repeats,
            )
        print()
        print(
            f"commands  {args.cmd_repeats} interleaved rounds (order rotates) after a warm-up; "
            "each a fresh process, wall time of subprocess.run"
        )
        labels = {
            "b": f"tflrewrite {' '.join(B_FLAGS)} --no-verify",
            "c": f"tflrewrite {' '.join(C_FLAGS)} --no-verify",
            "cv": f"tflrewrite {' '.join(C_FLAGS)} (report + verify)",
            "aeq": "AEQ script (import, quantize, export)",
            "start": "tflrewrite recipes (start-up: imports of all passes)",
            "py": "python -c pass",
        }
        print("  " + "".join(f"{k:>9s}" for k in labels))
        for r in crow:
            print("  " + "".join(f"{r[k]:9.3f}" for k in labels))
        cm = {k: med(crow, k) for k in labels}
        print("  " + "".join(f"{cm[k]:9.3f}" for k in labels) + "   medians, s")
        print(
            "  "
            + "".join(f"{med(crow, k + '.cpu'):9.3f}" for k in labels)
            + "   CPU s (user + system), medians, for information"
        )
        for k, label in labels.items():
            ratio_s = (
                ""
                if k in ("aeq", "start", "py")
                else f"  {med_ratio(crow, k, 'aeq'):.2f}x AEQ script"
            )
            print(f"  {k:>5s}  {label:<72s} {cm[k]:7.3f} s{ratio_s}")
        r_cmd = med_ratio(crow, "c", "aeq")
        r_cmd_v = med_ratio(crow, "cv", "aeq")
        ok_cmd = r_cmd <= 1.0
        print(
            f"  target: whole (c) <= AEQ script: {r_cmd:.2f}x {'met' if ok_cmd else 'MISSED'} "
            f"(with the default report + verify: {r_cmd_v:.2f}x; CPU "
            f"{med_ratio(crow, 'c.cpu', 'aeq.cpu'):.2f}x)"
        )
        cmd_summary = (
            f"whole (c) {cm['c']:.2f} s vs AEQ script {cm['aeq']:.2f} s = {r_cmd:.2f}x "
            f"(<= 1x{'' if ok_cmd else ' MISSED'}; with verify {r_cmd_v:.2f}x)"
        )

    # 5. profiles
    all_ok = ok_b and ok_c and ok_cmd
    if args.profile == "yes" or (args.profile == "auto" and not all_ok):
        profile(f"(b) {' '.join(B_FLAGS)}", lambda: tflrewrite_run(srcs, outs["b"], recipe_b))
        remove(outs["b"])
        profile(f"(c) {' '.join(C_FLAGS)}", lambda: tflrewrite_run(srcs, outs["c"], recipe_c))
        remove(outs["c"])

    print()
    print(
        f"compress {size / 2**20:.1f} MiB, {params / 1e6:.1f}M params: in-process "
        f"(a) AEQ {m['a']:.3f} s, rw {m['rw']:.3f} s, (b) {m['b']:.3f} s = {rb:.2f}x "
        f"(<= 1x{'' if ok_b else ' MISSED'}), (c) {m['c']:.3f} s = {rc:.2f}x "
        f"(<= 2x{'' if ok_c else ' MISSED'}); {cmd_summary}; "
        f"checks {'passed' if ok_checks else 'FAILED'}"
    )
    return 0 if all_ok and ok_checks else 1


def _print_table(rows: list[tuple[str, ...]], right: set[int]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ]
        print("  " + "  ".join(cells).rstrip())


if __name__ == "__main__":
    sys.exit(main())
