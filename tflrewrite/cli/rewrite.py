"""`tflrewrite MODEL`, the default command: rewrites a model by a recipe and the flags."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Any

from tflrewrite import __version__
from tflrewrite.cli.common import Parser, formatter, fraction, positive, size, write_json
from tflrewrite.errors import UsageError
from tflrewrite.targets import TARGETS

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
  tflrewrite float.tflite --quantize int16x8 --calibration samples.npz   int16 activations
  tflrewrite float.tflite --prune 0.5 --cluster 16 --quantize int8 --calibration samples.npz
  tflrewrite float.tflite --quantize int8-weights --cluster 16 --granularity channel
  tflrewrite float.tflite --prune 0.5 --cluster 16 --quantize int8 --calibration s.npz
      --max-zip-bytes 40k     the settings per layer with least error in 40 kB zipped
  tflrewrite model.tflite -o out.tflite --force  replaces out.tflite if it exists
  tflrewrite audit model.tflite --max-zip-bytes 200k      exit 1 when over budget (for CI)
  tflrewrite audit before.tflite after.tflite --compare
  tflrewrite verify model.tflite out.tflite --min-sqnr 30

exit codes: 0 done; 1 a budget or verification check failed, or LiteRT (tflite-micro)
crashed running a model (the output is written; the report says which); 2 bad usage, bad
input, or an output that cannot be written (nothing is left of it); 130 and 143 interrupted
(SIGINT, SIGTERM), leaving no partial output.
"""


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
        epilog=EPILOG.format(targets=_targets_help()),
        formatter_class=formatter,
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
    g = p.add_argument_group(
        "size budget (per-layer --prune / --cluster settings chosen to fit it with "
        "the least estimated output error; one at a time)"
    )
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
        type=positive,
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


def run(args: argparse.Namespace) -> int:
    from tflrewrite.reports import summary

    input_zip = summary.zip_size_soon(args.model)  # the report's figure, beside the work
    from tflrewrite import recipes
    from tflrewrite.fileio import check_output_path

    output = args.output or default_output(args.model)
    recipe = recipe_from_args(args)
    check_output_path(output, [args.model], args.force)
    recipes.check(recipe, calibrated=args.calibration is not None, method=args.method)
    # LiteRT runs in a child process for the report (a crash there ends only the child),
    # started now so that it loads while this one rewrites.
    child = None if args.no_verify else summary.runner_soon()
    try:
        return _rewrite(args, recipe, output, input_zip, child)
    finally:
        if child is not None:
            child.close()


def _rewrite(args: argparse.Namespace, recipe: Any, output: str, input_zip: Any, child: Any) -> int:
    """The rewrite itself, its output and its report, once the flags are known to be good."""
    from tflrewrite import reader, rewrite, writer
    from tflrewrite.reports import summary

    data, held_out = _calibration(args)
    model = reader.read(args.model)
    method = args.method or "data"
    budget = _budget(args)
    if budget is None:
        result = rewrite.apply(
            model, recipe, progress=_step_note, target=args.target, data=data, method=method
        )
    else:
        from tflrewrite import budget as budgets

        result = budgets.apply(
            model,
            recipe,
            budget=budget,
            progress=_step_note,
            target=args.target,
            data=data,
            method=method,
            accelerator=args.accelerator,
            name=os.path.basename(output),
        )
    large = {"auto": None, "yes": True, "no": False}[args.large]
    writer.write(result.model, output, large=large)
    report = summary.build(
        input_path=args.model,
        output_path=output,
        recipe=recipe,
        records=result.records,
        verify_samples=0 if args.no_verify else args.samples,
        data=None if args.no_verify else held_out,
        input_zip=input_zip,
        child=child,
    )
    if args.json:
        write_json(args.json, report)
    if args.json != "-":
        summary.print_report(report, sys.stdout, verbose=args.verbose)
    if "crash" in report:  # a runtime died running the models, in the report's child process
        print(
            f"tflrewrite: {report['crash']}; {output} is written, its report is incomplete",
            file=sys.stderr,
        )
        return 1
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


def _calibration(args: argparse.Namespace) -> tuple[Any, Any]:
    """(calibration samples, samples to verify on) from --calibration, or (None, None)."""
    from tflrewrite import calibrate

    if args.calibration is None:
        return None, None
    data, held_out = calibrate.for_model(args.model, args.calibration, args.calibration_samples)
    if args.calibration == calibrate.RANDOM:
        return data, None
    if held_out is None:
        source = f"{data.source}, the calibration samples themselves (none held out)"
        held_out = calibrate.Samples(data.values[: max(args.samples, 32)], source)
    return data, held_out


def _step_note(name: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"tflrewrite: {name}...\n")
