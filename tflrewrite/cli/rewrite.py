"""`tflrewrite MODEL`, the default command: rewrites a model by a recipe and the flags."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Any

from tflrewrite import __version__
from tflrewrite.cli.common import (
    Parser,
    expand_models,
    formatter,
    fraction,
    positive,
    size,
    write_json,
)
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.reports.verdict import HELP as VERDICT_HELP
from tflrewrite.targets import TARGETS

HTML_EXTRA = "pip install 'tflrewrite[html]'"

DESCRIPTION = """\
Rewrite a trained TensorFlow Lite model into a smaller deployment model, and measure it.

commands:
  tflrewrite MODEL [-o OUT] [--recipe NAME|FILE]   rewrite MODEL (the default command)
  tflrewrite audit MODEL... [--json FILE|-]        what each tensor costs; size budgets
  tflrewrite verify REFERENCE CANDIDATE            run both in LiteRT, compare outputs
  tflrewrite explore MODEL -o DIR [--calibration S]  every path of the tree: the Pareto front
  tflrewrite recipes                               list the built-in recipes
  tflrewrite finetune KERAS_MODEL --data TRAIN.npz  QAT/PQAT/CQAT/PCQAT, then int8 (TensorFlow)

Run `tflrewrite COMMAND --help` for each command's options.
"""

EPILOG = """\
targets (--target):
{targets}

default (no --recipe, none of the flags that ask for a step, no size budget, --target
generic): a float model gets int8 weights per channel (--quantize int8-weights, the TF
converter's default optimization); with --calibration, a float model or one with int8
weights gets full int8 (--quantize int8) fitted to the data. An int8 model has no default:
the command says what to try and writes nothing (exit 2). --recipe identity copies a model.

{verdict}

examples:
  tflrewrite model.tflite                               the default (int8 weights for float)
  tflrewrite model.tflite --calibration samples.npz     the default with data: full int8
  tflrewrite model.tflite --prune 0.5 --cluster 16      writes model.tflrewrite.tflite
  tflrewrite model.tflite --recipe prune-cluster-int8 -o small.tflite
  tflrewrite float.tflite --quantize int8 --calibration samples.npz   full-integer int8
  tflrewrite float.tflite --quantize int16x8 --calibration samples.npz   int16 activations
  tflrewrite float.tflite --prune 0.5 --cluster 16 --quantize int8 --calibration samples.npz
  tflrewrite float.tflite --min-sqnr 40 --calibration samples.npz
                          full int8, with ops raised to int16x8 or float to keep 40 dB
  tflrewrite float.tflite --quantize int8-weights --cluster 16 --granularity channel
  tflrewrite float.tflite --prune 0.5 --cluster 16 --quantize int8 --calibration s.npz
      --max-zip-bytes 40k     the settings per layer with least error in 40 kB zipped
  tflrewrite float.tflite --quantize int8 --calibration s.npz --max-zip-bytes 40k
                          a budget alone: prune and cluster settings chosen per layer
  tflrewrite model.tflite -o out.tflite --force  replaces out.tflite if it exists
  tflrewrite models/ --quantize int8-weights -o small/ --jobs 2   each model into small/
  tflrewrite audit model.tflite --max-zip-bytes 200k      exit 1 when over budget (for CI)
  tflrewrite audit before.tflite after.tflite --compare
  tflrewrite verify model.tflite out.tflite --min-sqnr 30

exit codes: 0 done; 1 a budget or verification check failed, or LiteRT (tflite-micro)
crashed running a model (the output is written; the report says which); 2 bad usage, bad
input, or an output that cannot be written (nothing is left of it); 130 and 143 interrupted
(SIGINT, SIGTERM), leaving no partial output.
"""

BUDGET_HELP = """\
The settings of --prune and --cluster are chosen per layer to meet the budget with the
least estimated output error. Given settings are the fallback: they also run as given,
and a budget they meet is met, never with more error than theirs (estimated, and with
--calibration measured on the samples). A budget alone chooses among sparsity 0-0.9
and 4-256 clusters, one codebook per tensor or per channel (--quantize stays as given).
Large layers whose settings differ by coarse steps get settings in between. The report
lists the setting each layer got and what it was chosen over."""


FLOOR_HELP = """\
Starts from full int8 and measures, on the calibration samples beyond
--calibration-samples (or on the first ones, when none are left), what each region (a
weight op and the ops after it up to the next one) buys raised alone to int16x8, then to
float with float16 weights; then raises the regions with the most dB per byte until the
floor holds, and lowers each back where it still holds. Calibrates once. With --max-bytes
or --max-zip-bytes the choice also fits the budget (nothing is pruned or clustered). No
choice meets it: exit 2, one line with the best SQNR reached, nothing written. The report
lists each raised op, its precision, and what its region cost (bytes) and bought (dB)."""


def _targets_help() -> str:
    width = max(map(len, TARGETS))
    lines = []
    for name, summary in TARGETS.items():
        wrapped = textwrap.wrap(summary, 86 - width - 4)
        lines.append(f"  {name:<{width}}  {wrapped[0]}")
        lines.extend(" " * (width + 4) + rest for rest in wrapped[1:])
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tflrewrite",
        description=DESCRIPTION,
        epilog=EPILOG.format(targets=_targets_help(), verdict=VERDICT_HELP),
        formatter_class=formatter,
    )
    p.add_argument(
        "models",
        metavar="MODEL",
        nargs="+",
        help="the .tflite model to rewrite (never modified); or several, or a folder of "
        "them, with -o FOLDER",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="where to write the result (default: MODEL's name with .tflrewrite "
        "before .tflite, in the same folder); with several models, the folder to write "
        "them to, each under its own name (made if missing)",
    )
    p.add_argument(
        "--recipe",
        metavar="NAME|FILE",
        help="a built-in recipe (see `tflrewrite recipes`) or a TOML recipe file "
        "with per-tensor rules; the flags below override it (default: just what the "
        "flags ask for; with none of them, the tree's default for the model, see below)",
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
        type=fraction,
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
        choices=["int8", "int16x8", "int8-weights", "float16"],
        help="int8: the whole model, weights and activations, from --calibration data "
        "(full integer, what NPUs and microcontrollers run); int16x8: the same with int16 "
        "activations (symmetric) and int8 weights, for models int8 activations lose too "
        "much of; ops LiteRT has no int16 kernel for stay float, and the report names "
        "them; int8-weights: float weights "
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
        choices=["float", "int8", "uint8", "int16"],
        help="dtype of the full-integer model's inputs and outputs (default: float, with "
        "QUANTIZE/DEQUANTIZE at the edges; int8 and uint8 with --quantize int8, int16 "
        "with --quantize int16x8)",
    )
    g.add_argument(
        "--rounding",
        choices=["feedback", "adaround"],
        help="with --quantize int8 or int16x8 and --calibration (data method, no "
        "--cluster): how the int8 weights are re-rounded to keep each layer's outputs: feedback "
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
        "fits are then guesses, and the report says so). Needed by --quantize int8 and "
        "int16x8; with "
        "it, --prune and --cluster fit each layer to the original model's outputs",
    )
    g.add_argument(
        "--calibration-samples",
        metavar="N",
        type=positive,
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
    g = p.add_argument_group("size budget (one at a time)", BUDGET_HELP)
    budget = g.add_mutually_exclusive_group()
    budget.add_argument(
        "--max-zip-bytes",
        metavar="N",
        type=size,
        help="the zipped output at most N bytes (what a download or an OTA update costs)",
    )
    budget.add_argument(
        "--max-bytes",
        metavar="N",
        type=size,
        help="the output file at most N bytes (clusters shrink the file as lookup "
        "tables with --target tflm, FULLY_CONNECTED weights pruned in blocks as sparse "
        "blocks with --target cpu; other targets store every weight)",
    )
    budget.add_argument(
        "--max-vela-bytes",
        metavar="N",
        type=size,
        help="Vela's encoded weights at most N bytes (runs the ethos-u-vela package; "
        "with --target ethos-u)",
    )
    g.add_argument(
        "--accelerator",
        metavar="NAME",
        help="the Ethos-U configuration for --max-vela-bytes (default: ethos-u55-128)",
    )
    g = p.add_argument_group("quality floor", FLOOR_HELP)
    g.add_argument(
        "--min-sqnr",
        metavar="DB",
        type=float,
        help="the worst output's SQNR against MODEL, on held-out calibration samples, at "
        "least DB: ops are raised from full int8 to int16x8 or float where needed (implies "
        "--quantize int8; needs --calibration)",
    )
    g = p.add_argument_group("which weights")
    g.add_argument("--skip", metavar="REGEX", help="leave tensors whose name matches alone")
    g.add_argument(
        "--min-size", metavar="N", type=int, help="leave weights with fewer than N elements alone"
    )
    g = p.add_argument_group("report")
    g.add_argument("--json", metavar="FILE|-", help="also write the report as JSON")
    g.add_argument(
        "--html",
        metavar="FILE",
        help="also write the report as one self-contained HTML page, for a browser offline: "
        "sizes before and after by op type and by tensor, histograms of the largest weights "
        "after each step (zeros counted), and per layer the sparsity, distinct values and "
        f"the SQNR of its output against the input model (charts by matplotlib: {HTML_EXTRA})",
    )
    g.add_argument(
        "--overlay",
        metavar="FILE.json",
        help="also write Model Explorer overlays of the output, one file per measure: "
        "FILE.sqnr.json (each op's output SQNR against the input model), FILE.sparsity.json "
        "and FILE.bytes.json; view them with `model-explorer OUT "
        "--node_data_paths=FILE.sqnr.json,FILE.sparsity.json,FILE.bytes.json` "
        "(pip install ai-edge-model-explorer)",
    )
    g.add_argument(
        "--no-verify",
        action="store_true",
        help="skip running both models in LiteRT after the rewrite",
    )
    g.add_argument(
        "--samples",
        metavar="N",
        type=positive,
        default=8,
        help="seeded random inputs for the verify figures (default: 8)",
    )
    p.add_argument(
        "--jobs",
        metavar="N",
        type=positive,
        default=1,
        help="with several models: how many to rewrite at a time, each in a process of its "
        "own (default: 1)",
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
    from tflrewrite.api import default_output as beside

    return beside(model)


def recipe_from_args(args: argparse.Namespace) -> Any:
    """The recipe the flags ask for (identity and the flags, where no --recipe is given)."""
    from tflrewrite import api

    return api.build_recipe(args.recipe, **_recipe_flags(args))


def _recipe_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prune": args.prune,
        "prune_pattern": args.prune_pattern,
        "prune_scope": args.prune_scope,
        "cluster": args.cluster,
        "granularity": args.granularity,
        "cluster_init": args.cluster_init,
        "quantize": args.quantize,
        "calibration_method": args.calibration_method,
        "io": args.io,
        "rounding": args.rounding,
        "equalize": args.equalize,
        "skip": args.skip,
        "min_size": args.min_size,
    }


def run(args: argparse.Namespace) -> int:
    models = expand_models(args.models)
    if len(args.models) == 1 and models == args.models:
        args.model = models[0]
        return _run_one(args)
    return _run_fleet(args, models)


def _run_one(args: argparse.Namespace, keep: list | None = None) -> int:
    """Rewrite args.model; `keep` gets its report."""
    from tflrewrite import api
    from tflrewrite.reports import summary

    output = args.output or default_output(args.model)
    result = api.rewrite(
        args.model,
        recipe=args.recipe,
        **_recipe_flags(args),
        calibration=args.calibration,
        calibration_samples=args.calibration_samples,
        method=args.method,
        max_zip_bytes=args.max_zip_bytes,
        max_bytes=args.max_bytes,
        max_vela_bytes=args.max_vela_bytes,
        accelerator=args.accelerator,
        min_sqnr=args.min_sqnr,
        target=args.target,
        verify=not args.no_verify,
        samples=args.samples,
        large={"auto": None, "yes": True, "no": False}[args.large],
        output=output,
        force=args.force,
        html=args.html,
        overlay=args.overlay,
        progress=_step_note,
    )
    report = result.report
    if keep is not None:
        keep.append(report)
    if args.json:
        write_json(args.json, report)
    if args.json != "-":
        summary.print_report(report, sys.stdout, verbose=args.verbose)
    say = sys.stderr if args.json == "-" else sys.stdout
    if result.overlays:
        from tflrewrite.reports import overlay

        say.write(f"\noverlays: {overlay.command(report['output'], result.overlays)}\n")
    if args.html:
        say.write(f"html report: {args.html}\n")
    if "crash" in report:  # a runtime died running the models, in the report's child process
        print(
            f"tflrewrite: {report['crash']}; {output} is written, its report is incomplete",
            file=sys.stderr,
        )
        return 1
    return 0


def budget_from_args(args: argparse.Namespace) -> Any:
    """The --max-*-bytes budget the flags ask for (budget.Budget), or None."""
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


def _step_note(name: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"tflrewrite: {name}...\n")


# ------------------------------------------------------------------ several models


def _run_fleet(args: argparse.Namespace, models: list[str]) -> int:
    """Rewrite each of `models` into the folder -o names, --jobs at a time, each in a
    process of its own; their reports in the models' order, the worst exit status."""
    from tflrewrite import fanout
    from tflrewrite.progress import Lines

    outputs = _fleet_outputs(args, models)
    jobs = []
    for model, output in outputs.items():
        one = argparse.Namespace(**vars(args))
        one.model, one.models, one.output, one.json = model, [model], output, None
        jobs.append((one,))
    lines = Lines("tflrewrite:", len(jobs))

    def done(i: int, result: Any) -> None:
        code = result[0] if isinstance(result, tuple) else 2
        lines(
            f"{jobs[i][0].model} -> {jobs[i][0].output}: "
            + ("done" if code == 0 else f"exit {code}")
        )

    results = fanout.run(_rewrite_alone, jobs, workers=args.jobs, on_done=done)
    codes, reports = [], []
    for (one,), result in zip(jobs, results):
        if isinstance(result, fanout.Failed):  # its process died
            print(f"tflrewrite: {one.model}: {result.reason}", file=sys.stderr)
            codes.append(2)
            continue
        code, out, err, report = result
        if args.json != "-":
            sys.stdout.write(("\n" if codes else "") + out)
        sys.stderr.write(err)
        codes.append(code)
        if report is not None:
            reports.append(report)
    if args.json:
        write_json(args.json, reports)
    return max(codes)


def _fleet_outputs(args: argparse.Namespace, models: list[str]) -> dict[str, str]:
    """Each model's output in the -o folder, refused before any work where that is not a
    folder, where two models share a name, or where a flag writes one model's report."""
    from tflrewrite.fileio import check_output_path

    folder = args.output
    if not folder:
        raise UsageError("several models (or a folder) need -o FOLDER to write them to")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{folder}: with several models -o names a folder, and this is a file")
    for flag in ("html", "overlay"):
        if getattr(args, flag):
            raise UsageError(f"--{flag} reports on one model: give one model")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise TflRewriteError(f"{folder}: directory {parent} does not exist")
    outputs: dict[str, str] = {}
    for model in models:
        output = os.path.join(folder, os.path.basename(model))
        if output in outputs.values():
            raise UsageError(f"{model}: another model has the name {os.path.basename(model)}")
        if os.path.isdir(folder):
            check_output_path(output, [model], args.force)
        outputs[model] = output
    os.makedirs(folder, exist_ok=True)
    return outputs


def _rewrite_alone(args: argparse.Namespace) -> tuple[int, str, str, dict | None]:
    """One model of several, in a worker process: (exit status, what it printed on stdout
    and on stderr, its report or None)."""
    import contextlib
    import io

    out, err, kept = io.StringIO(), io.StringIO(), []
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = _run_one(args, keep=kept)
        except TflRewriteError as e:
            print(f"tflrewrite: {e}", file=sys.stderr)
            code = e.exit_code
    return code, out.getvalue(), err.getvalue(), kept[0] if kept else None
