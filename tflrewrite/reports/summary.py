"""The report after a rewrite: sizes before and after, what each pass did to each weight,
and how far the rewritten model's outputs moved (verify on seeded inputs)."""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import Future
from typing import Any, TextIO

from tflrewrite.errors import TflRewriteError
from tflrewrite.reports.audit import zip_size
from tflrewrite.reports.text import clip, db, fmt, print_table, ratio

# Zipping costs about a second of CPU per 20 MB; past this the report leaves it to `audit`.
ZIP_LIMIT = 64 * 2**20


def zip_size_soon(path: str) -> Future[int] | None:
    """The zipped size of the file at `path` (audit.zip_size), measured from now on in a
    background thread; None where the file is over ZIP_LIMIT. zlib lets go of the GIL
    while it deflates, so a command that starts this before it rewrites the model gets the
    input's figure while it imports, rewrites and verifies. The thread is a daemon: a
    command that fails does not wait for it. None too where `path` is not a file it can
    read now: the command says why, and the report would measure it itself."""
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > ZIP_LIMIT:
            return None
    except OSError:
        return None
    future: Future[int] = Future()

    def measure() -> None:
        try:
            future.set_result(_zip_file_size(path))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the figure
            future.set_exception(e)

    threading.Thread(target=measure, name="tflrewrite-zip-size", daemon=True).start()
    return future


def _zip_file_size(path: str) -> int:
    with open(path, "rb") as f:
        return zip_size(f.read(), os.path.basename(path))


def build(
    input_path: str,
    output_path: str,
    recipe: Any,
    records: list[dict],
    verify_samples: int = 8,
    seed: int = 0,
    data: Any = None,
    input_zip: Future[int] | None = None,
) -> dict:
    """The report of a rewrite. Verify runs on `data` (calibrate.Samples: real samples the
    calibration did not use, where there are some) or on `verify_samples` seeded random
    inputs; with real samples it also measures each quantized activation (reports.layers).
    `input_zip` is the input's zipped size from zip_size_soon(input_path), if the caller
    started it; the output's is measured beside it either way."""
    report: dict[str, Any] = {
        "input": input_path,
        "output": output_path,
        "recipe": recipe.name,
        "steps": [s.to_json() for s in recipe.steps],
        "input_bytes": os.path.getsize(input_path),
        "output_bytes": os.path.getsize(output_path),
    }
    if report["input_bytes"] <= ZIP_LIMIT and report["output_bytes"] <= ZIP_LIMIT:
        pending = input_zip or zip_size_soon(input_path)
        output_zip_bytes = _zip_file_size(output_path)  # while the input's deflates
        report["input_zip_bytes"] = pending.result()
        report["output_zip_bytes"] = output_zip_bytes
    report["passes"] = records
    # LiteRT has no TFLM_DECODE kernel: a model laid down for TFLite Micro runs in its
    # interpreter, and the input with it so that both sides run the same kernels.
    tflm = any(step["pass"] == "target:tflm" for step in records)
    began = time.perf_counter()
    if data is not None:
        report["verify"] = _verify(input_path, output_path, data.values, data.source, tflm)
        if not tflm:
            report["layers"] = _layers(input_path, output_path, data.values[:LAYER_SAMPLES])
    elif verify_samples:
        report["verify"] = _verify(input_path, output_path, verify_samples, seed, tflm)
    seconds = phase_seconds(records)
    if "verify" in report:
        seconds["verify"] = round(time.perf_counter() - began, 3)
    if seconds:
        report["seconds"] = seconds
    return report


# The phases whose seconds the report gives, as the steps' records carry them.
PHASES = ("calibrate", "capture", "propagate", "fit")


def phase_seconds(records: list[dict]) -> dict[str, float]:
    """Seconds by phase, summed over the steps that timed theirs (calibration, and the
    data-aware fit: capture of each layer's inputs, propagation through the model being
    compressed, the fit itself)."""
    out: dict[str, float] = {}
    for step in records:
        for key, value in step.get("seconds", {}).items():
            out[key] = round(out.get(key, 0) + value, 3)
    return out


# Records that are not about a weight, and how the text report says them.
NOTES = {
    "calibrated": "calibrated on {samples} samples ({source}); ranges by {method}",
    "kept float": "kept float: {op} (output {tensor}): {reason}",
}

# Per-layer errors run both models keeping every tensor; a few samples show the trend.
LAYER_SAMPLES = 16
LAYERS_SHOWN = 5


def _verify(reference: str, candidate: str, samples: Any, source: Any, tflm: bool) -> dict:
    """Verify on `samples` (a list of samples from `source`), or on that many seeded
    random inputs (`source` is then the seed); in LiteRT, or in tflite-micro if `tflm`."""
    from tflrewrite import runtime
    from tflrewrite.reports import verify

    if tflm and not runtime.tflm_available():
        return {
            "skipped": "the output's TFLM_DECODE ops run only in TFLite Micro, and the "
            "tflite-micro package is not installed (pip install 'tflrewrite[tflm]')"
        }
    try:
        ref, cand = runtime.load(reference, micro=tflm), runtime.load(candidate, micro=tflm)
        if isinstance(samples, int):
            inputs, source = (
                runtime.random_inputs([ref, cand], samples, source),
                f"random (seed {source})",
            )
        else:
            inputs = samples
        result = verify.compare(ref, cand, inputs, source).to_json()
    except TflRewriteError as e:
        return {"error": str(e)}
    result["runtime"] = "tflite-micro" if tflm else "LiteRT"
    return result


def _layers(reference: str, candidate: str, samples: list) -> list[dict] | dict:
    from tflrewrite.reports.layers import layer_errors

    try:
        return layer_errors(reference, candidate, samples)
    except TflRewriteError as e:
        return {"error": str(e)}


def print_report(report: dict, out: TextIO, verbose: bool = False) -> None:
    out.write(f"{report['output']}: recipe {report['recipe']}\n")
    if not report["passes"]:
        out.write(
            "  nothing was asked of it, so the model was copied unchanged; try --prune, "
            "--cluster, --quantize or --recipe (see `tflrewrite recipes`)\n"
        )
    rows = [
        ("", "input", "output", "output/input"),
        (
            "bytes",
            f"{report['input_bytes']:,}",
            f"{report['output_bytes']:,}",
            ratio(report["output_bytes"], report["input_bytes"]),
        ),
    ]
    if "input_zip_bytes" in report:
        rows.append(
            (
                "zipped",
                f"{report['input_zip_bytes']:,}",
                f"{report['output_zip_bytes']:,}",
                ratio(report["output_zip_bytes"], report["input_zip_bytes"]),
            )
        )
    print_table(rows, out, right={1, 2, 3})
    for step in report["passes"]:
        if step["pass"] == "budget":
            _print_budget(step, out)
            continue
        done = [t for t in step["tensors"] if "before" in t]
        skipped = [t for t in step["tensors"] if t["action"] == "skipped"]
        notes = [t for t in step["tensors"] if t["action"] in NOTES]
        out.write(f"\n{step['pass']}: {len(done)} tensor(s) changed, {len(skipped)} left alone\n")
        for t in notes:
            out.write("  " + NOTES[t["action"]].format(**t) + "\n")
        if done:
            table = [("tensor", "sparsity", "->", "ch.unique", "->", "weight MSE")]
            for t in done:
                b, a = t["before"], t["after"]
                table.append(
                    (
                        clip(t["tensor"], 44),
                        f"{b['sparsity']:.3f}",
                        f"{a['sparsity']:.3f}",
                        fmt(b["channel_unique"]),
                        fmt(a["channel_unique"]),
                        f"{t['mse']:.3g}" if "mse" in t else "",
                    )
                )
            print_table(table, out, right={1, 2, 3, 4, 5})
        for t in skipped if verbose else []:
            out.write(f"  left alone: {t['tensor']}: {t['reason']}\n")
    _print_verify(report, out)
    _print_seconds(report.get("seconds"), out)


def _print_verify(report: dict, out: TextIO) -> None:
    verify = report.get("verify")
    if verify is None:
        return
    if "error" in verify or "skipped" in verify:
        out.write(f"\nverify: {verify.get('error') or 'skipped: ' + verify['skipped']}\n")
        return
    out.write(
        f"\nverify against the input in {verify['runtime']}, {verify['samples']} samples, "
        f"{verify['inputs']}:\n"
    )
    table = [("output", "SQNR dB", "max |err|", "top-1 agree")]
    for o in verify["outputs"]:
        table.append(
            (
                clip(o["name"], 44),
                "inf" if o["sqnr_db"] is None else f"{o['sqnr_db']:.2f}",
                f"{o['max_abs_error']:.4g}",
                "" if o["top1_agreement"] is None else f"{o['top1_agreement']:.3f}",
            )
        )
    print_table(table, out, right={1, 2, 3})
    layers = report.get("layers")
    if isinstance(layers, list) and layers:
        ranked = sorted(layers, key=lambda x: math.inf if x["sqnr_db"] is None else x["sqnr_db"])
        out.write(
            f"\nleast faithful of {len(layers)} quantized activations (SQNR against float):\n"
        )
        table = [("tensor", "op", "SQNR dB")]
        for x in ranked[:LAYERS_SHOWN]:
            db = "inf" if x["sqnr_db"] is None else f"{x['sqnr_db']:.2f}"
            table.append((clip(x["tensor"], 44), x["op"], db))
        print_table(table, out, right={2})


def _print_seconds(seconds: dict | None, out: TextIO) -> None:
    if not seconds:
        return
    known = [key for key in (*PHASES, "verify") if key in seconds]
    parts = [f"{key} {seconds[key]:.1f} s" for key in known + sorted(set(seconds) - set(known))]
    out.write(f"\ntime: {', '.join(parts)}\n")


def _print_budget(step: dict, out: TextIO) -> None:
    out.write(
        f"\nbudget: {step['measure']} at most {step['limit']:,}: {step['got']:,} after "
        f"{step['runs']} run(s); per layer, the least estimated error that fits:\n"
    )
    table = [("tensor", "sparsity", "clusters", "est. dB", "est. bytes", "chosen over")]
    for t in step["tensors"]:
        table.append(
            (
                clip(t["tensor"], 36),
                f"{t['sparsity']:.3f}",
                f"{t['clusters']} per {t['granularity']}" if t["clusters"] else "-",
                db(t["estimated_sqnr_db"]),
                f"{t['estimated_bytes']:,}",
                t["reason"],
            )
        )
    print_table(table, out, right={1, 2, 3, 4})
