"""Runs a model in LiteRT on seeded inputs: the oracle the tests compare rewrites against."""

from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def interpreter(path_or_bytes) -> Interpreter:
    kwargs = {
        "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "num_threads": 1,
    }
    if isinstance(path_or_bytes, (bytes, bytearray)):
        interp = Interpreter(model_content=bytes(path_or_bytes), **kwargs)
    else:
        interp = Interpreter(model_path=str(path_or_bytes), **kwargs)
    return interp


def seeded_value(detail: dict, rng: np.random.Generator) -> np.ndarray:
    shape, dtype = tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = (info.min, info.max) if dtype.itemsize == 1 else (0, 4)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "SOU":
        return np.array([b"tflrewrite"] * int(np.prod(shape)), dtype=object).reshape(shape)
    raise TypeError(f"no seeded input for dtype {dtype}")


def run_all(path_or_bytes, seed: int = 0, samples: int = 3) -> dict[str, list[np.ndarray]]:
    """Outputs of every signature (or of the main subgraph when there are none) on seeded
    inputs, keyed 'signature/output'."""
    interp = interpreter(path_or_bytes)
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    signatures = interp.get_signature_list()
    for _ in range(samples):
        if signatures:
            for key in sorted(signatures):
                runner = interp.get_signature_runner(key)
                feeds = {
                    name: seeded_value(d, rng)
                    for name, d in sorted(runner.get_input_details().items())
                }
                for name, value in sorted(runner(**feeds).items()):
                    out.setdefault(f"{key}/{name}", []).append(np.copy(value))
        else:
            interp.allocate_tensors()
            for d in interp.get_input_details():
                interp.set_tensor(d["index"], seeded_value(d, rng))
            interp.invoke()
            for d in interp.get_output_details():
                out.setdefault(d["name"], []).append(np.copy(interp.get_tensor(d["index"])))
    return out


# --------------------------------------------------------------------------- XNNPACK probe
#
# The ai-edge-litert wheel is built without XNNPACK's log messages (the string "XNNPACK has
# switched to sparse inference mode!" is not in the binary), but its libpywrap_litert_common.so
# keeps local symbols. So the probe runs the model in a child Python under gdb and reports
# what XNNPACK did: the flags the delegate passed to xnn_create_runtime_v4 (bit 0 is
# XNN_FLAG_HINT_SPARSE_INFERENCE), whether xnn_subgraph_rewrite_for_nchw ran, and how many
# NCHW convolutions and sparse-matrix (SpMM) 1x1 convolutions it created. Those NCHW
# operators exist only when XNNPACK has switched to sparse inference mode.
#
# XNNPACK refuses the sparse path on x86 CPUs with AVX (xnn_is_chw_compatible_config). With
# emulate_sse=True the probe clears the AVX-and-later bits of XNNPACK's hardware_config
# before the first runtime is created (no microkernel is chosen before then), so XNNPACK runs
# every op as on an x86 CPU with SSE4.1 but no AVX. The layout of hardware_config is this
# build's (arch_flags at offset 8, SSE, SSE2, SSSE3 and SSE4.1 in bits 0-3); the probe checks
# those four bits are set before masking and reports an error otherwise.

PROBE_TAG = "TFLREWRITE_PROBE"
SSE_BITS = 0xF

PROBE_CHILD = r"""
import sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
model, feed, out, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
interp = Interpreter(model_path=model, num_threads=1)
interp.allocate_tensors()
with np.load(feed) as f:
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], f[d["name"]])
interp.invoke()
np.savez(out, *[interp.get_tensor(d["index"]) for d in interp.get_output_details()])
times = []
for _ in range(runs):
    t = time.perf_counter()
    interp.invoke()
    times.append((time.perf_counter() - t) * 1e3)
print("TFLREWRITE_PROBE times_ms=" + ",".join(f"{x:.4f}" for x in times), flush=True)
"""


def _probe_script(emulate_sse: bool) -> str:
    mask = ""
    if emulate_sse:
        flags = "*(unsigned long long*)((char*)&hardware_config+8)"
        mask = (
            f"  if ({flags} & {SSE_BITS}) == {SSE_BITS}\n"
            f'    printf "{PROBE_TAG} arch_flags=0x%llx\\n", {flags}\n'
            f"    set var {flags} = {flags} & {SSE_BITS}\n"
            f'    printf "{PROBE_TAG} masked_to=0x%llx\\n", {flags}\n'
            "  else\n"
            f'    printf "{PROBE_TAG} unknown_layout=0x%llx\\n", {flags}\n'
            "  end\n"
        )
    return (
        "set pagination off\nset confirm off\nset breakpoint pending on\n"
        "break xnn_create_runtime_v4\ncommands\n  silent\n"
        f'  printf "{PROBE_TAG} runtime_flags=%u\\n", $r8\n{mask}  continue\nend\n'
        f'dprintf xnn_subgraph_rewrite_for_nchw,"{PROBE_TAG} rewrite_for_nchw\\n"\n'
        f'dprintf xnn_create_convolution2d_nchw_f32,"{PROBE_TAG} nchw_convolution\\n"\n'
        f'dprintf create_spmm_path,"{PROBE_TAG} spmm\\n"\n'
        "run\n"
    )


def xnnpack_probe(
    path, feed: dict[str, np.ndarray], emulate_sse: bool = False, runs: int = 0, timeout=300
) -> dict:
    """Run `path` once with LiteRT's default XNNPACK delegate under gdb on `feed` (input name
    -> array), then `runs` more invokes timed. Returns {"error": why} when the probe cannot
    run here, else {"runtimes": [flags, ...], "hint": any runtime got the sparse hint,
    "rewrite": calls of the NCHW rewrite, "nchw": NCHW convolutions, "spmm": SpMM 1x1
    convolutions, "switched": nchw > 0, "outputs": [arrays], "times_ms": [...],
    "arch_flags": (before, after) when emulate_sse}."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    gdb = shutil.which("gdb")
    if gdb is None:
        return {"error": "gdb is not installed"}
    with tempfile.TemporaryDirectory(prefix="xnnprobe-") as tmp:
        script, inputs, outputs = (os.path.join(tmp, n) for n in ("cmds", "in.npz", "out.npz"))
        with open(script, "w") as f:
            f.write(_probe_script(emulate_sse))
        np.savez(inputs, **feed)
        cmd = [
            gdb,
            "-nx",
            "-q",
            "-batch",
            "-iex",
            "set auto-load off",
            "-x",
            script,
            "--args",
            sys.executable,
            "-c",
        ]
        cmd += [PROBE_CHILD, str(path), inputs, outputs, str(runs)]
        env = dict(os.environ, PYTHONHASHSEED="0")
        proc = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=timeout, env=env
        )
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if PROBE_TAG in ln]
        found = [ln.split(PROBE_TAG, 1)[1].strip() for ln in lines]
        result = _parse_probe(found)
        if not os.path.exists(outputs) or "runtimes" not in result:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            return {
                "error": f"the probe did not run the model (gdb exit {proc.returncode}):\n{tail}"
            }
        if emulate_sse and "arch_flags" not in result:
            return {"error": "hardware_config does not have the layout the probe knows"}
        with np.load(outputs) as f:
            result["outputs"] = [f[k] for k in sorted(f.files, key=lambda k: int(k[4:]))]
    return result


def _parse_probe(found: list[str]) -> dict:
    out: dict = {"runtimes": [], "rewrite": 0, "nchw": 0, "spmm": 0, "times_ms": []}
    before = after = None
    for item in found:
        key, _, value = item.partition("=")
        if key == "runtime_flags":
            out["runtimes"].append(int(value))
        elif key in ("rewrite_for_nchw", "nchw_convolution", "spmm"):
            name = {"rewrite_for_nchw": "rewrite", "nchw_convolution": "nchw"}.get(key, key)
            out[name] += 1
        elif key == "times_ms" and value:
            out["times_ms"] = [float(x) for x in value.split(",")]
        elif key == "arch_flags":
            before = int(value, 16)
        elif key == "masked_to":
            after = int(value, 16)
    if not out["runtimes"]:
        out.pop("runtimes")
    else:
        out["hint"] = any(f & 1 for f in out["runtimes"])
    if before is not None and after is not None:
        out["arch_flags"] = (before, after)
    out["switched"] = out["nchw"] > 0
    return out


def grid_inputs(int8_model, count: int, seed: int) -> list[list[np.ndarray]]:
    """Seeded inputs on the int8 input grid of `int8_model` (behind a float input: the
    grid of the QUANTIZE that reads it)."""
    from tflrewrite import reader

    sg = reader.read(int8_model).subgraphs[0]
    grids = []
    for t in sg.inputs:
        q = t if t.dtype != "FLOAT32" else next(o for o in sg.operators if t in o.inputs).outputs[0]
        if q.dtype in ("INT8", "UINT8", "INT16"):
            info = np.iinfo(q.dtype.lower())
            scale, zero = float(q.quantization.scale[0]), int(q.quantization.zero_point[0])
            grids.append((scale, zero, info, t))
        else:  # a float input read by a float op: uniform in [-1, 1]
            grids.append((None, None, None, t))
    rng = np.random.default_rng(seed)
    return [
        [
            rng.uniform(-1, 1, size=t.shape).astype(np.float32)
            if s is None
            else ((rng.integers(i.min, i.max + 1, size=t.shape) - z) * s).astype(np.float32)
            for s, z, i, t in grids
        ]
        for _ in range(count)
    ]
