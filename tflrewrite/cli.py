"""The `tflrewrite` command: parses arguments, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

from tflrewrite import __version__
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.reports.text import clip, db, fmt, print_table, ratio
from tflrewrite.targets import TARGETS

COMMANDS = ("audit", "verify", "recipes", "finetune")

DESCRIPTION = """\
Rewrite a trained TensorFlow Lite model into a smaller deployment model, and measure it.

commands:
  tflrewrite MODEL [-o OUT] [--recipe NAME|FILE]   rewrite MODEL (the default command)
  tflrewrite audit MODEL... [--json FILE|-]        what each tensor costs; size budgets
  tflrewrite verify REFERENCE CANDIDATE            run both in LiteRT, compare outputs
  tflrewrite recipes                               list the built-in recipes
  tflrewrite finetune KERAS_MODEL --data TRAIN.npz  QAT/PQAT/CQAT/PCQAT, then int8 (TensorFlow)

Run `tflrewrite COMMAND --help` for each command's options.
"""

EPILOG = """\
targets (--target):
{targets}

examples:
  tflrewrite model.tflite --prune 0.5 --cluster 16      writes model.tflrewrite.tflite
  tflrewrite model.tflite --recipe prune-cluster-int8 -o small.tflite
  tflrewrite float.tflite --quantize int8 --calibration samples.npz   full-integer int8
  tflrewrite float.tflite --prune 0.5 --cluster 16 --quantize int8 --calibration samples.npz
  tflrewrite float.tflite --quantize int8-weights --cluster 16 --granularity channel
  tflrewrite float.tflite --prune 0.5 --cluster 16 --quantize int8 --calibration s.npz
      --max-zip-bytes 40k     the settings per layer with least error in 40 kB zipped
  tflrewrite model.tflite -o out.tflite --force  replaces out.tflite if it exists
  tflrewrite audit model.tflite --max-zip-bytes 200k      exit 1 when over budget (for CI)
  tflrewrite audit before.tflite after.tflite --compare
  tflrewrite verify model.tflite out.tflite --min-sqnr 30

exit codes: 0 done, 1 a budget or verification check failed, 2 bad usage or bad input.
"""


def _targets_help() -> str:
    width = max(map(len, TARGETS))
    lines = []
    for name, summary in TARGETS.items():
        wrapped = textwrap.wrap(summary, 86 - width - 4)
        lines.append(f"  {name:<{width}}  {wrapped[0]}")
        lines.extend(" " * (width + 4) + rest for rest in wrapped[1:])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Tensor names and paths that are not UTF-8 reach us as surrogate escapes; show them as
    # \xNN rather than fail on a strict UTF-8 terminal.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        if argv and argv[0] in COMMANDS:
            command, rest = argv[0], argv[1:]
        else:
            command, rest = "rewrite", argv
        args = PARSERS[command]().parse_args(rest)
        return HANDLERS[command](args)
    except TflRewriteError as e:
        print(f"tflrewrite: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tflrewrite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit code 2, like every other refusal."""

    def error(self, message: str) -> Any:
        raise TflRewriteError(f"{self.prog.split()[-1]}: {message} (see --help)")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


# ---------------------------------------------------------------- rewrite


def rewrite_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tflrewrite",
        description=DESCRIPTION,
        epilog=EPILOG.format(targets=_targets_help()),
        formatter_class=_formatter,
    )
    p.add_argument("model", metavar="MODEL", help="the .tflite model to rewrite (never modified)")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="where to write the result (default: MODEL's name with .tflrewrite "
        "before .tflite, in the same folder)",
    )
    p.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        default="identity",
        help="a built-in recipe (see `tflrewrite recipes`) or a TOML recipe file "
        "with per-tensor rules; the flags below override it (default: "
        "identity, or just what the flags ask for)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace OUT if it exists (the input is never replaced)",
    )
    g = p.add_argument_group("cross-layer equalization (the model computes the same)")
    g.add_argument(
        "--equalize",
        action="store_true",
        help="first rescale the channels of consecutive float layers (conv, depthwise, "
        "fully connected; ReLU, pooling or nothing between) to equal weight ranges, as in "
        "DFQ, so that per-tensor scales and codebooks lose less; pairs joined by ReLU6 are "
        "left alone. Measure it: it does not help every model",
    )
    g = p.add_argument_group("pruning (zeros stay zeros in every later step)")
    g.add_argument(
        "--prune",
        metavar="S",
        type=_fraction,
        help="magnitude pruning to sparsity S, e.g. 0.5; existing zeros count",
    )
    g.add_argument(
        "--prune-pattern",
        metavar="P",
        help="unstructured (default), N:M = keep N of every M along the input "
        "channels (2:4 for Ethos-U85 and GPUs), 1x16 or 1x4 blocks (TFLite's "
        "sparse FULLY_CONNECTED kernels)",
    )
    g.add_argument(
        "--prune-scope",
        choices=["channel", "tensor", "global"],
        help="the unit that reaches S: every output channel (default), every "
        "tensor, or all weights together",
    )
    g = p.add_argument_group("clustering (exact optimal 1-D k-means)")
    g.add_argument(
        "--cluster",
        metavar="K",
        type=int,
        help="at most K distinct values per unit, zero counted (it stays a cluster of its own)",
    )
    g.add_argument(
        "--granularity",
        choices=["tensor", "channel"],
        help="the clustering unit (default: tensor, one codebook per tensor, "
        "what Vela's palettes favour)",
    )
    g.add_argument(
        "--cluster-init",
        choices=["optimal", "linear", "kmeans++", "density"],
        help="optimal (default) or, for comparison with TF Model Optimization, "
        "Lloyd's k-means from its initialisations",
    )
    g = p.add_argument_group("quantization")
    g.add_argument(
        "--quantize",
        choices=["int8", "int8-weights", "float16"],
        help="int8: the whole model, weights and activations, from --calibration data "
        "(full integer, what NPUs and microcontrollers run); int8-weights: float weights "
        "to int8 per channel, read through DEQUANTIZE (weight-only); float16: weights to "
        "float16. With --cluster, clusters are formed among the int8 values",
    )
    g.add_argument(
        "--calibration-method",
        choices=["minmax", "percentile", "mse"],
        help="activation ranges: minmax (default), percentile (0.01%% tails clipped), "
        "or mse (the clipping with the least rounding plus clipping error)",
    )
    g.add_argument(
        "--io",
        choices=["float", "int8", "uint8"],
        help="dtype of the int8 model's inputs and outputs (default: float, with "
        "QUANTIZE/DEQUANTIZE at the edges)",
    )
    g.add_argument(
        "--rounding",
        choices=["feedback", "adaround"],
        help="with --quantize int8 and --calibration (data method, no --cluster): how "
        "the int8 weights are re-rounded to keep each layer's outputs: feedback "
        "(default; error feedback, as in GPTQ) or adaround (learned up-or-down rounding)",
    )
    g = p.add_argument_group("calibration data (makes compression data-aware)")
    g.add_argument(
        "--calibration",
        metavar="NPZ|DIR|random",
        help="sample inputs: an .npz with one array per model input (keyed by input "
        "name; first axis = samples), a folder of images (resized to an image model's "
        "input; pixels scaled to [0, 1], or to the range of a quantized input), or "
        "`random` for seeded random inputs (ranges and "
        "fits are then guesses, and the report says so). Needed by --quantize int8; with "
        "it, --prune and --cluster fit each layer to the original model's outputs",
    )
    g.add_argument(
        "--calibration-samples",
        metavar="N",
        type=_positive,
        default=100,
        help="use the first N samples (default: 100); the rest verify the result",
    )
    g.add_argument(
        "--method",
        choices=["data", "magnitude"],
        help="with --calibration: data (default) prunes with weight updates that make up "
        "for each removed weight, clusters with error feedback, and corrects biases, "
        "layer by layer; magnitude ignores the data (the data-free path)",
    )
    g = p.add_argument_group(
        "size budget (per-layer --prune / --cluster settings chosen to fit it with "
        "the least estimated output error; one at a time)"
    )
    budget = g.add_mutually_exclusive_group()
    budget.add_argument(
        "--max-zip-bytes",
        metavar="N",
        type=_size,
        help="the zipped output at most N bytes (what a download or an OTA update costs)",
    )
    budget.add_argument(
        "--max-bytes",
        metavar="N",
        type=_size,
        help="the output file at most N bytes (clusters shrink the file as lookup "
        "tables with --target tflm, FULLY_CONNECTED weights pruned in blocks as sparse "
        "blocks with --target cpu; other targets store every weight)",
    )
    budget.add_argument(
        "--max-vela-bytes",
        metavar="N",
        type=_size,
        help="Vela's encoded weights at most N bytes (runs the ethos-u-vela package; "
        "with --target ethos-u)",
    )
    g.add_argument(
        "--accelerator",
        metavar="NAME",
        help="the Ethos-U configuration for --max-vela-bytes (default: ethos-u55-128)",
    )
    g = p.add_argument_group("which weights")
    g.add_argument("--skip", metavar="REGEX", help="leave tensors whose name matches alone")
    g.add_argument(
        "--min-size", metavar="N", type=int, help="leave weights with fewer than N elements alone"
    )
    g = p.add_argument_group("report")
    g.add_argument("--json", metavar="FILE|-", help="also write the report as JSON")
    g.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running both models in LiteRT after the rewrite",
    )
    g.add_argument(
        "--samples",
        metavar="N",
        type=_positive,
        default=8,
        help="seeded random inputs for the verify figures (default: 8)",
    )
    p.add_argument(
        "--large",
        choices=["auto", "yes", "no"],
        default="auto",
        help="store buffers after the flatbuffer, LiteRT's layout for models over "
        "2 GB (default: auto: when the input does or the model needs it)",
    )
    p.add_argument(
        "--target",
        choices=list(TARGETS),
        default="generic",
        help="how to lay the result down for a runtime (see targets below; default: generic)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list skipped tensors too")
    p.add_argument("--version", action="version", version=f"tflrewrite {__version__}")
    return p


def default_output(model: str) -> str:
    root, ext = os.path.splitext(model)
    return f"{root}.tflrewrite{ext or '.tflite'}"


def recipe_from_args(args: argparse.Namespace) -> Any:
    from tflrewrite import recipes

    overrides = {
        "prune": _given(sparsity=args.prune, pattern=args.prune_pattern, scope=args.prune_scope),
        "quantize": _given(
            mode=args.quantize, method=args.calibration_method, io=args.io, rounding=args.rounding
        ),
        "cluster": _given(
            clusters=args.cluster, granularity=args.granularity, init=args.cluster_init
        ),
    }
    recipe = recipes.load(args.recipe)
    if args.equalize and all(s.name != "equalize" for s in recipe.steps):
        from tflrewrite.passes import equalize

        overrides["equalize"] = {"iterations": equalize.Options().iterations}
    recipe = recipe.with_options(overrides)
    common = _given(skip=args.skip, min_size=args.min_size)
    if common:
        recipe = recipe.with_options({s.name: common for s in recipe.steps})
    return recipe


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def run_rewrite(args: argparse.Namespace) -> int:
    from tflrewrite.reports import summary

    input_zip = summary.zip_size_soon(args.model)  # the report's figure, beside the work
    from tflrewrite import reader, rewrite, writer
    from tflrewrite.fileio import check_output_path

    output = args.output or default_output(args.model)
    recipe = recipe_from_args(args)
    check_output_path(output, [args.model], args.force)
    data, held_out = _calibration(args, recipe)
    model = reader.read(args.model)
    method = args.method or "data"
    budget = _budget(args)
    if budget is None:
        result = rewrite.apply(model, recipe, _step_note, args.target, data=data, method=method)
    else:
        from tflrewrite import budget as budgets

        result = budgets.apply(
            model,
            recipe,
            budget,
            _step_note,
            args.target,
            data,
            method,
            args.accelerator,
            os.path.basename(output),
        )
    large = {"auto": None, "yes": True, "no": False}[args.large]
    writer.write(result.model, output, large=large)
    report = summary.build(
        args.model,
        output,
        recipe,
        result.records,
        verify_samples=0 if args.no_verify else args.samples,
        data=None if args.no_verify else held_out,
        input_zip=input_zip,
    )
    if args.json:
        _write_json(args.json, report)
    if args.json != "-":
        summary.print_report(report, sys.stdout, verbose=args.verbose)
    return 0


def _budget(args: argparse.Namespace) -> Any:
    for metric, value in (
        ("zip", args.max_zip_bytes),
        ("bytes", args.max_bytes),
        ("vela", args.max_vela_bytes),
    ):
        if value is not None:
            from tflrewrite.budget import Budget  # only a budgeted run needs the planner

            return Budget(metric, value)
    if args.accelerator:
        raise UsageError("--accelerator is for --max-vela-bytes")
    return None


def _calibration(args: argparse.Namespace, recipe: Any) -> tuple[Any, Any]:
    """(calibration samples, samples to verify on) from --calibration, or (None, None)."""
    from tflrewrite import calibrate

    _check_rounding(args, recipe)
    if args.calibration is None:
        if args.method == "data":
            raise TflRewriteError("--method data needs --calibration samples")
        return None, None
    uses = [
        s.name
        for s in recipe.steps
        if s.name != "equalize" and (s.name != "quantize" or s.options.mode == "int8")
    ]
    if not uses:
        raise TflRewriteError(
            "--calibration: nothing uses it (it serves --quantize int8, --prune and --cluster)"
        )
    data, held_out = calibrate.for_model(args.model, args.calibration, args.calibration_samples)
    if args.calibration == calibrate.RANDOM:
        return data, None
    if held_out is None:
        source = f"{data.source}, the calibration samples themselves (none held out)"
        held_out = calibrate.Samples(data.values[: max(args.samples, 32)], source)
    return data, held_out


def _check_rounding(args: argparse.Namespace, recipe: Any) -> None:
    """Rounding other than feedback is done by the data-aware fit of full int8 weights,
    which clustering replaces: a usage error where it would not run."""
    quantize = [s.options for s in recipe.steps if s.name == "quantize"]
    if not quantize or quantize[0].rounding == "feedback":
        return
    if (
        args.calibration is None
        or args.method == "magnitude"
        or any(s.name == "cluster" for s in recipe.steps)
    ):
        raise UsageError(
            f"--rounding {quantize[0].rounding} needs --quantize int8 with --calibration, "
            "the data method and no --cluster"
        )


def _step_note(name: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"tflrewrite: {name}...\n")


# ---------------------------------------------------------------- audit


def audit_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tflrewrite audit",
        formatter_class=_formatter,
        description="Size audit: bytes, sparsity and distinct values of every tensor, totals "
        "by dtype and by op type, file and zipped (DEFLATE) size.",
        epilog="sparsity = fraction of stored values equal to zero (to the zero point for "
        "quantized tensors);\nunique = distinct stored values; ch.unique = the most "
        "distinct values in one output channel.\nsizes take suffixes: 200k = 200,000, "
        "64KiB = 65,536, 1.5M, 2MiB.\nexit 1 when a model is over a budget.",
    )
    p.add_argument("models", metavar="MODEL", nargs="+", help=".tflite files to audit")
    p.add_argument(
        "--json",
        metavar="FILE|-",
        help="write the audit as JSON (an object per model; a list for several)",
    )
    p.add_argument("--max-bytes", metavar="N", type=_size, help="fail if a file is over N bytes")
    p.add_argument(
        "--max-zip-bytes", metavar="N", type=_size, help="fail if a zipped file is over N bytes"
    )
    p.add_argument(
        "--compare", action="store_true", help="show two models side by side (before, after)"
    )
    p.add_argument("--all", action="store_true", help="list every tensor, not only those with data")
    p.add_argument(
        "--vela",
        action="store_true",
        help="also compile each model with Arm's Vela (pip install 'tflrewrite[ethos-u]') and "
        "report its encoded weight size, SRAM, cycles and NPU/CPU operators",
    )
    p.add_argument(
        "--accelerator",
        metavar="NAME",
        help="Vela's accelerator configuration (default: ethos-u55-128; implies --vela)",
    )
    return p


def run_audit(args: argparse.Namespace) -> int:
    from tflrewrite import reader
    from tflrewrite.reports import audit

    if args.compare and len(args.models) != 2:
        raise TflRewriteError("audit: --compare takes exactly two models (before, after)")
    accelerator = None
    if args.vela or args.accelerator:
        from tflrewrite.reports import vela

        accelerator = args.accelerator or vela.DEFAULT_ACCELERATOR
        vela.require(accelerator)
    results = []
    for path in args.models:
        model = reader.read(path)
        with open(path, "rb") as f:
            results.append(audit.audit(model, path, f.read()))
    npu = [vela.compile_report(r.file, accelerator) for r in results] if accelerator else []
    if args.json:
        docs = [r.to_json() for r in results]
        for doc, v in zip(docs, npu):
            doc["vela"] = v.to_json()
        _write_json(args.json, docs[0] if len(docs) == 1 else docs)
    if args.json != "-":
        if args.compare:
            _print_compare(results[0], results[1], sys.stdout)
        else:
            for r in results:
                _print_audit(r, args.all, sys.stdout)
        for r, v in zip(results, npu):
            _print_vela(r, v, sys.stdout)
    failed = False
    for r in results:
        for value, budget, what in (
            (r.bytes, args.max_bytes, "bytes"),
            (r.zip_bytes, args.max_zip_bytes, "zipped bytes"),
        ):
            if budget is not None and value > budget:
                print(
                    f"tflrewrite: {r.file}: {value:,} {what}, over the budget of {budget:,}",
                    file=sys.stderr,
                )
                failed = True
    for r, v in zip(results, npu):
        if v.error:
            print(f"tflrewrite: {r.file}: {v.error}", file=sys.stderr)
    if any(v.error for v in npu):
        return 2
    return 1 if failed else 0


def _print_vela(r: Any, v: Any, out: TextIO) -> None:
    if v.error:
        return

    def _n(value: int | None) -> str:
        return "?" if value is None else f"{value:,}"

    out.write(
        f"{r.file}\n  Vela {v.vela_version or '?'} for {v.accelerator} ({v.system_config}, "
        f"{v.memory_mode}): NPU encoded weights {_n(v.npu_encoded_weights_bytes)} bytes "
        f"(original {_n(v.original_weights_bytes)}, constant data {r.constant_bytes:,}); "
        f"SRAM used {_n(v.sram_used_bytes)} bytes; {_n(v.cycles_total)} cycles"
        + ("" if v.inference_time_s is None else f" = {v.inference_time_s * 1e3:.3f} ms")
        + f"; {_n(v.npu_operators)} operators on the NPU, {_n(v.cpu_operators)} on the CPU\n"
    )


def _print_audit(r: Any, everything: bool, out: TextIO) -> None:
    out.write(
        f"{r.file}\n  {r.bytes:,} bytes, {r.zip_bytes:,} zipped "
        f"({ratio(r.zip_bytes, r.bytes)}); {r.subgraphs} subgraph(s), "
        f"{sum(r.operators.values())} operators; constant data {r.constant_bytes:,} bytes\n"
    )
    if r.by_dtype:
        out.write("  by dtype: " + ", ".join(f"{k} {v:,}" for k, v in r.by_dtype.items()) + "\n")
    if r.by_op:
        out.write("  by op:    " + ", ".join(f"{k} {v:,}" for k, v in r.by_op.items()) + "\n")
    if r.metadata:
        out.write("  metadata: " + ", ".join(r.metadata) + "\n")
    if r.tflrewrite:
        p = r.tflrewrite
        steps = ", ".join(s.get("pass", "?") for s in p.get("steps", []))
        out.write(
            f"  made by tflrewrite {p.get('version')}: recipe {p.get('recipe')} "
            f"({steps}), {len(p.get('tensors', []))} tensor edits\n"
        )
    rows = [t for t in r.tensors if everything or t.bytes]
    header = ("sg", "idx", "name", "dtype", "shape", "bytes", "sparsity", "unique", "ch.unique")
    table = [header] + [
        (
            str(t.subgraph),
            str(t.index),
            clip(t.name, 40),
            t.dtype,
            "x".join(map(str, t.shape)) if t.shape is not None else "?",
            f"{t.bytes:,}",
            "" if t.sparsity is None else f"{t.sparsity:.3f}",
            "" if t.unique is None else str(t.unique),
            "" if t.channel_unique is None else str(t.channel_unique),
        )
        for t in rows
    ]
    print_table(table, out, right={0, 1, 5, 6, 7, 8})


def _print_compare(a: Any, b: Any, out: TextIO) -> None:
    out.write(f"before: {a.file}\nafter:  {b.file}\n")
    table = [("", "before", "after", "after/before")]
    for label, x, y in (
        ("file bytes", a.bytes, b.bytes),
        ("zipped bytes", a.zip_bytes, b.zip_bytes),
        ("constant bytes", a.constant_bytes, b.constant_bytes),
    ):
        table.append((label, f"{x:,}", f"{y:,}", ratio(y, x)))
    for dtype in sorted(set(a.by_dtype) | set(b.by_dtype)):
        x, y = a.by_dtype.get(dtype, 0), b.by_dtype.get(dtype, 0)
        table.append((f"  {dtype}", f"{x:,}", f"{y:,}", ratio(y, x)))
    print_table(table, out, right={1, 2, 3})
    out.write("\n")
    after = {(t.subgraph, t.name): t for t in b.tensors if t.bytes}
    rows = [("name", "bytes", "->", "sparsity", "->", "unique", "->")]
    for t in (t for t in a.tensors if t.bytes):
        u = after.get((t.subgraph, t.name))
        if u is None:
            continue
        rows.append(
            (
                clip(t.name, 40),
                f"{t.bytes:,}",
                f"{u.bytes:,}",
                fmt(t.sparsity),
                fmt(u.sparsity),
                fmt(t.unique),
                fmt(u.unique),
            )
        )
    print_table(rows, out, right={1, 2, 3, 4, 5, 6})


# ---------------------------------------------------------------- verify


def verify_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tflrewrite verify",
        formatter_class=_formatter,
        description="Run REFERENCE and CANDIDATE in LiteRT on the same inputs and compare "
        "every output (quantized outputs are dequantized first).",
        epilog="SQNR = 10 log10(sum ref^2 / sum (ref - cand)^2), inf when identical.\n"
        "top-1 agreement: for outputs with one score vector per sample, the fraction "
        "of samples\nwhose arg-max is the same.\n"
        "random inputs: uniform over the range a quantized input represents (from "
        "whichever model\nquantizes it), else uniform in [-1, 1].\n"
        "exit 1 when the lowest SQNR is below --min-sqnr.",
    )
    p.add_argument("reference", metavar="REFERENCE")
    p.add_argument("candidate", metavar="CANDIDATE")
    p.add_argument(
        "--inputs",
        metavar="FILE.npz",
        help="inputs: one array per model input, keyed by input name, first axis "
        "= samples (default: seeded random inputs)",
    )
    p.add_argument(
        "--samples",
        metavar="N",
        type=_positive,
        default=None,
        help="how many samples to run (default: 16 random, or all in --inputs)",
    )
    p.add_argument(
        "--seed", metavar="S", type=int, default=0, help="seed of the random inputs (default: 0)"
    )
    p.add_argument("--min-sqnr", metavar="DB", type=float, help="fail below this SQNR")
    p.add_argument(
        "--xnnpack",
        action="store_true",
        help="run with LiteRT's default delegate (XNNPACK) instead of the builtin kernels",
    )
    p.add_argument("--json", metavar="FILE|-", help="write the report as JSON")
    return p


def run_verify(args: argparse.Namespace) -> int:
    from tflrewrite import reader, runtime
    from tflrewrite.progress import Progress
    from tflrewrite.reports import verify

    models = [reader.read(path) for path in (args.reference, args.candidate)]
    # LiteRT has no kernel for TFLite Micro's decode op: such models run in tflite-micro,
    # and the reference with them so that both sides use the same kernels.
    micro = any(oc.custom_code == "TFLM_DECODE" for m in models for oc in m.opcodes)
    if micro and args.xnnpack:
        raise TflRewriteError("verify: --xnnpack cannot run TFLite Micro models")
    if micro and not runtime.tflm_available():
        raise TflRewriteError(
            "verify: the models hold TFLM_DECODE ops, which only TFLite Micro runs: "
            "pip install 'tflrewrite[tflm]'"
        )
    if micro:
        ref, cand = runtime.TflmRunner(args.reference), runtime.TflmRunner(args.candidate)
    else:
        ref = runtime.Runner(args.reference, args.xnnpack)
        cand = runtime.Runner(args.candidate, args.xnnpack)
    if args.inputs:
        samples = runtime.npz_inputs(args.inputs, ref, args.samples)
        source = args.inputs
    else:
        n = args.samples or 16
        samples = runtime.random_inputs([ref, cand], n, args.seed)
        source = f"random (seed {args.seed})"
    report = verify.compare(ref, cand, samples, source, Progress("verify", len(samples)))
    if args.json:
        _write_json(args.json, report.to_json())
    if args.json != "-":
        out = sys.stdout
        out.write(
            f"reference: {report.reference}\ncandidate: {report.candidate}\n"
            f"{report.samples} samples, inputs: {report.inputs}\n"
        )
        table = [("output", "shape", "SQNR dB", "max |err|", "top-1 agree", "identical")]
        for o in report.outputs:
            table.append(
                (
                    clip(o.name, 40),
                    "x".join(map(str, o.shape)),
                    db(o.sqnr_db),
                    f"{o.max_abs_error:.4g}",
                    "" if o.top1_agreement is None else f"{o.top1_agreement:.3f}",
                    "yes" if o.identical else "no",
                )
            )
        print_table(table, out, right={2, 3, 4})
    if args.min_sqnr is not None and report.min_sqnr_db < args.min_sqnr:
        print(
            f"tflrewrite: {args.candidate}: SQNR {db(report.min_sqnr_db)} dB is below "
            f"--min-sqnr {args.min_sqnr}",
            file=sys.stderr,
        )
        return 1
    return 0


# ---------------------------------------------------------------- recipes


def recipes_parser() -> argparse.ArgumentParser:
    return _Parser(prog="tflrewrite recipes", description="List the built-in recipes.")


def run_recipes(args: argparse.Namespace) -> int:
    from tflrewrite import recipes

    width = max(len(n) for n in recipes.BUILTIN)
    for r in recipes.BUILTIN.values():
        print(f"{r.name:<{width}}  {r.description}")
    print(
        "\nFlags (--prune, --cluster, --quantize, ...) override a recipe's options or add "
        "its missing steps;\na TOML file given to --recipe can set options per tensor "
        "(see `tflrewrite --help`)."
    )
    return 0


PARSERS = {
    "rewrite": rewrite_parser,
    "audit": audit_parser,
    "verify": verify_parser,
    "recipes": recipes_parser,
    "finetune": lambda: __import__("tflrewrite.finetune.cli").finetune.cli.parser(),
}
HANDLERS = {
    "rewrite": run_rewrite,
    "audit": run_audit,
    "verify": run_verify,
    "recipes": run_recipes,
    "finetune": lambda args: __import__("tflrewrite.finetune.cli").finetune.cli.run(args),
}


# ---------------------------------------------------------------- helpers

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(i?)b?\s*$", re.IGNORECASE)


def _size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 200000, 200k, 64KiB)")
    number, prefix, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    base = 1024 if binary else 1000
    return int(number * base ** " kmg".index(prefix or " "))


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"not a fraction in [0, 1): {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def _write_json(target: str, doc: Any) -> None:
    text = json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    from tflrewrite.fileio import atomic_write

    atomic_write(target, lambda f: f.write(text.encode()))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
