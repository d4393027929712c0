"""The report after a rewrite: sizes before and after, what each pass did to each weight,
and how far the rewritten model's outputs moved (verify on seeded inputs)."""

from __future__ import annotations

import contextlib
import math
import os
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TextIO

from tflrewrite.errors import RuntimeCrashError, TflRewriteError
from tflrewrite.reports.audit import zip_size
from tflrewrite.reports.text import clip, db, fmt, label_columns, print_table, ratio
from tflrewrite.reports.verdict import judge, not_measured

if TYPE_CHECKING:
    from tflrewrite.runtime import Child

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


def runner_soon() -> Child:
    """The child process that build runs the models in, started now: it imports LiteRT
    (PRELOAD) while the command rewrites the model. Pass it to build; close it where the
    command ends before build has run (closing it twice does no harm)."""
    from tflrewrite import runtime

    return runtime.Child(preload=PRELOAD)


def _zip_file_size(path: str) -> int:
    with open(path, "rb") as f:
        return zip_size(f.read(), os.path.basename(path))


def build(
    input_path: str,
    output_path: str,
    *,
    recipe: Any,
    records: list[dict],
    verify_samples: int = 8,
    seed: int = 0,
    data: Any = None,
    input_zip: Future[int] | None = None,
    child: Child | None = None,
    input_data: bytes | None = None,
    output_data: bytes | None = None,
    default: dict | None = None,
    hint: str | None = None,
) -> dict:
    """The report of a rewrite. Verify runs on `data` (calibrate.Samples: real samples the
    calibration did not use, where there are some, and their labels if they have some) or
    on `verify_samples` seeded random inputs; with real samples it also measures each
    quantized activation (reports.layers).
    `input_zip` is the input's zipped size from zip_size_soon(input_path), if the caller
    started it; the output's is measured beside it either way. The models run in `child`
    (from runner_soon), which build closes once they have run, or in a runtime.Child of
    its own. `input_data` and `output_data`, where given, are the models' bytes, and the
    paths only name them. `default` says why the recipe was chosen, where the user did not
    choose one; `hint` is what to try, should the verdict find the output degraded."""
    ins = _Side(input_path, input_data)
    outs = _Side(output_path, output_data)
    report: dict[str, Any] = {
        "input": input_path,
        "output": output_path,
        "recipe": recipe.name,
        "steps": [s.to_json() for s in recipe.steps],
        "input_bytes": ins.size(),
        "output_bytes": outs.size(),
    }
    if default is not None:
        report["default"] = default
    if report["input_bytes"] <= ZIP_LIMIT and report["output_bytes"] <= ZIP_LIMIT:
        pending = input_zip if input_data is None else None
        pending = pending or ins.zip_soon()
        output_zip_bytes = outs.zip()  # while the input's deflates
        report["input_zip_bytes"] = pending.result()
        report["output_zip_bytes"] = output_zip_bytes
    report["passes"] = records
    began = time.perf_counter()
    _verify(report, ins, outs, verify_samples=verify_samples, seed=seed, data=data, child=child)
    seconds = phase_seconds(records)
    if "verify" in report:
        seconds["verify"] = round(time.perf_counter() - began, 3)
    if seconds:
        report["seconds"] = seconds
    verify = report.get("verify")
    if verify is None:
        report["verdict"] = not_measured("the models were not run")
    elif "error" in verify or "skipped" in verify:
        report["verdict"] = not_measured("verify " + ("failed" if "error" in verify else "skipped"))
    else:
        report["verdict"] = judge(verify, hint=hint)
    return report


class _Side:
    """A model the report measures: a file, or bytes that `path` names."""

    def __init__(self, path: str, data: bytes | None):
        self.path, self.data = path, data

    @property
    def source(self) -> str | bytes:
        return self.path if self.data is None else self.data

    def size(self) -> int:
        return os.path.getsize(self.path) if self.data is None else len(self.data)

    def zip(self) -> int:
        if self.data is None:
            return _zip_file_size(self.path)
        return zip_size(self.data, os.path.basename(self.path))

    def zip_soon(self) -> Future[int]:
        pending = zip_size_soon(self.path) if self.data is None else None
        if pending is None:
            pending = Future()
            pending.set_result(self.zip())
        return pending


def _verify(
    report: dict,
    ins: _Side,
    outs: _Side,
    *,
    verify_samples: int,
    seed: int,
    data: Any,
    child: Child | None,
) -> None:
    """report["verify"] and report["layers"]: both models run, where they can."""
    # LiteRT has no TFLM_DECODE kernel: a model laid down for TFLite Micro runs in its
    # interpreter, and the input with it so that both sides run the same kernels.
    tflm = any(step["pass"] == "target:tflm" for step in report["passes"])
    if data is None and not verify_samples:
        return
    from tflrewrite import runtime
    from tflrewrite.reports.layers import layer_errors
    from tflrewrite.reports.verify import compare_files

    if tflm and not runtime.tflm_available():
        report["verify"] = {
            "skipped": "the output's TFLM_DECODE ops run only in TFLite Micro, and the "
            "tflite-micro package is not installed (pip install 'tflrewrite[tflm]')"
        }
        return
    # The runtimes run in a child process, so that one that crashes ends the report, not
    # the command: the report then holds the error, and its "crash" says what died.
    if data is None:
        given = {"count": verify_samples, "seed": seed}
    else:
        given = {"samples": data.values, "source": data.source, "labels": data.labels}
    if ins.data is not None or outs.data is not None:
        given["names"] = (ins.path, outs.path)
    with child or runtime.Child(preload=PRELOAD) as runner:
        with _measured(report, "verify"):
            result = runner.call(compare_files, ins.source, outs.source, micro=tflm, **given)
            report["verify"] = {
                **result.to_json(verdict=False),
                "runtime": "tflite-micro" if tflm else "LiteRT",
            }
        if data is not None and not tflm and "crash" not in report:
            with _measured(report, "layers"):
                report["layers"] = runner.call(
                    layer_errors, ins.source, outs.source, data.values[:LAYER_SAMPLES]
                )


# What the child that runs the models imports as it starts, while this process goes on.
PRELOAD = ("tflrewrite.reports.verify", "tflrewrite.reports.layers", "ai_edge_litert.interpreter")


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
    "precision": "{precision}: {op} (output {tensor}): {reason}",
}

# Per-layer errors run both models keeping every tensor; a few samples show the trend.
LAYER_SAMPLES = 16
LAYERS_SHOWN = 5


@contextlib.contextmanager
def _measured(report: dict, key: str) -> Iterator[None]:
    """Where a measurement fails, report[key] = {"error": why}; where a runtime crashed,
    report["crash"] says so too."""
    try:
        yield
    except TflRewriteError as e:
        report[key] = {"error": str(e)}
        if isinstance(e, RuntimeCrashError):
            report["crash"] = str(e)


def print_report(report: dict, out: TextIO, verbose: bool = False) -> None:
    out.write(f"{report['output'] or '(in memory)'}: recipe {report['recipe']}\n")
    if "default" in report:
        out.write(_wrapped(report["default"]["note"]))
    elif not report["passes"]:
        out.write(
            _wrapped(
                f"recipe {report['recipe']} asks for nothing: the model was read and written "
                "back with every field the same, and no tflrewrite metadata entry; its bytes "
                "may still differ, laid out anew (buffers 16-byte aligned). Try --prune, "
                "--cluster, --quantize or --recipe (see `tflrewrite recipes`)"
            )
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
        if step["pass"] == "floor":
            _print_floor(step, out)
            continue
        _print_step(step, out, verbose)
    _print_verify(report, out)
    _print_seconds(report.get("seconds"), out)
    if "verdict" in report:
        out.write(f"\nverdict: {report['verdict']['line']}\n")


def _wrapped(text: str) -> str:
    return textwrap.fill(text, 90, initial_indent="  ", subsequent_indent="  ") + "\n"


def _print_step(step: dict, out: TextIO, verbose: bool) -> None:
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


def _print_verify(report: dict, out: TextIO) -> None:
    verify = report.get("verify")
    if verify is None:
        return
    if "error" in verify or "skipped" in verify:
        out.write(f"\nverify: {verify.get('error') or 'skipped: ' + verify['skipped']}\n")
        return
    labels = f", labels {verify['labels']}" if "labels" in verify else ""
    out.write(
        f"\nverify against the input in {verify['runtime']}, {verify['samples']} samples, "
        f"{verify['inputs']}{labels}:\n"
    )
    scored = label_columns(verify["outputs"])
    table = [("output", "SQNR dB", "max |err|", "top-1 agree", *scored[0])]
    for o, extra in zip(verify["outputs"], scored[1:]):
        table.append(
            (
                clip(o["name"], 44),
                "inf" if o["sqnr_db"] is None else f"{o['sqnr_db']:.2f}",
                f"{o['max_abs_error']:.4g}",
                "" if o["top1_agreement"] is None else f"{o['top1_agreement']:.3f}",
                *extra,
            )
        )
    print_table(table, out, right=set(range(1, len(table[0]))))
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
    kept = "per layer, the least estimated error that fits"
    if step.get("kept") == "uniform":
        kept = f"the recipe's own settings, kept: {step['why']}"
    out.write(
        f"\nbudget: {step['measure']} at most {step['limit']:,}: {step['got']:,} after "
        f"{step['runs']} run(s); {kept}:\n"
    )
    if "calibration_sqnr_db" in step:
        sqnr = step["calibration_sqnr_db"]
        out.write(
            f"  output SQNR on the calibration samples: {db(sqnr['planned'])} dB planned, "
            f"{db(sqnr['uniform'])} dB the recipe as given ({step['uniform_got']:,} "
            f"{step['measure']})\n"
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


def _print_floor(step: dict, out: TextIO) -> None:
    """The quality floor's choice: what it met, and what each raised region cost and
    bought (alone, over full int8)."""
    share = step["raised_weight_bytes"] / max(step["weight_bytes"], 1)
    budget = step.get("budget")
    within = f", within {budget['limit']:,} {budget['measure']}" if budget else ""
    out.write(
        f"\nfloor: worst output at least {step['min_sqnr_db']:g} dB SQNR on {step['samples']} "
        f"held-out samples ({step['source']}){within}: {db(step['sqnr_db'])} dB, full int8 "
        f"{db(step['int8_sqnr_db'])} dB; {step['raised_ops']} op(s) raised, "
        f"{share:.1%} of weight bytes to float16; {step['measurements']} candidates measured\n"
    )
    if step.get("refine"):
        out.write(f"  refine: {step['refine']}\n")
    table = [("region (raised alone)", "precision", "ops", "+bytes", "+dB")]
    regions: dict[str, list] = {}
    for t in step["tensors"]:
        regions.setdefault(t["region"], []).append(t)
    for name, ops in regions.items():
        first = ops[0]
        table.append(
            (
                clip(name, 44),
                first["precision"],
                str(len(ops)),
                f"{first['region_bytes']:,}",
                db(first["region_gain_db"]),
            )
        )
    if len(table) > 1:
        print_table(table, out, right={2, 3, 4})
