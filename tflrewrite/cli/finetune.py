"""`tflrewrite finetune`: parses, checks the files, calls tflrewrite.finetune, prints.

Importing this module imports no TensorFlow: tflrewrite.finetune's api does, when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from tflrewrite.cli.common import Parser, formatter, fraction, positive, write_json
from tflrewrite.errors import TflRewriteError

EPILOG = """\
stages:
  qat    every weight trains
  pqat   the pruning mask is fixed: pruned weights stay exactly zero
  cqat   each weight keeps its cluster; the centroids train
  pcqat  both (zero is a cluster of its own)
The mask and the clusters come from the post-training passes' kernels (magnitude pruning,
exact 1-D k-means), on the kernels as the .tflite will store them, batch norms folded in.
pqat and pcqat first train under the mask with the batch norms still unfolded (--prune-
epochs, default half of --epochs); then the batch norms are folded, pcqat forms its
clusters, and the rest trains on int8-snapped kernels. Kernels with channels of fewer
than 16 weights are clustered, not pruned, unless --prune-all. Then: TFLiteConverter
full-integer int8 (float input and output, activation ranges from 256 training samples)
and the rewriter's prune and cluster passes, which re-impose zeros and clusters and say
if they had to change anything.

TRAIN.npz holds `x` and `y`, or one array per model input (keyed by its name) and `y`.
The loss is inferred for classifiers (sparse categorical for class ids, categorical for
one-hot rows, binary for 0/1; from logits unless the model ends in softmax or sigmoid).

examples:
  tflrewrite finetune model.keras --data train.npz --val val.npz --stage pcqat \\
      --prune 0.5 --cluster 16 -o model.int8.tflite
  tflrewrite finetune model.h5 --data train.npz --stage qat --epochs 1 -o qat.tflite

Needs TensorFlow: pip install 'tflrewrite[keras]'; tf_keras models also tf-keras. exit
codes: 0 done, 1 a promised property (zeros, clusters) does not hold in the output, 2 bad
usage or bad input.
"""


def parser() -> argparse.ArgumentParser:
    from tflrewrite.finetune.stages import LOSSES, STAGES
    from tflrewrite.targets import TARGETS

    p = Parser(
        prog="tflrewrite finetune",
        formatter_class=formatter,
        description="Fine-tune a Keras model for a few epochs while keeping its pruning "
        "and clustering, then convert it to full-integer int8 and run the rewriter's passes "
        "and target. Keras 3 (TensorFlow backend) and tf_keras models.",
        epilog=EPILOG,
    )
    p.add_argument("model", metavar="KERAS_MODEL", help=".keras, .h5 or a SavedModel directory")
    p.add_argument("--data", metavar="TRAIN.npz", required=True, help="training data")
    p.add_argument("--val", metavar="VAL.npz", help="held-out data: accuracy before and after")
    p.add_argument("--stage", choices=STAGES, required=True, help="what training keeps")
    p.add_argument("-o", "--output", metavar="OUT.tflite", required=True)
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    g = p.add_argument_group("compression")
    g.add_argument(
        "--prune", metavar="S", type=fraction, default=0.5, help="sparsity (default: 0.5)"
    )
    g.add_argument(
        "--prune-scope",
        choices=["tensor", "channel"],
        default="tensor",
        help="the unit that reaches S (default: tensor)",
    )
    g.add_argument(
        "--prune-all",
        action="store_true",
        help="also prune kernels whose channels hold fewer than 16 weights (3x3 depthwise, "
        "a first 3x3 conv): by default they are clustered but not pruned",
    )
    g.add_argument(
        "--cluster", metavar="K", type=int, default=16, help="clusters per unit (default: 16)"
    )
    g.add_argument(
        "--granularity",
        choices=["tensor", "channel"],
        default="tensor",
        help="the clustering unit (default: tensor; the int8 weights then have one scale "
        "per tensor, so the tensor holds at most K int8 values)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", metavar="N", type=_count, default=4, help="(default: 4)")
    g.add_argument(
        "--prune-epochs",
        metavar="N",
        type=_count,
        help="pqat/pcqat: epochs of recovery under the mask, batch norms unfolded, before "
        "the rest (default: half of --epochs, rounded down)",
    )
    g.add_argument(
        "--lr",
        metavar="LR",
        type=float,
        default=2e-3,
        help="Adam's rate, decayed to 0 along a half cosine in each phase (default: 2e-3)",
    )
    g.add_argument(
        "--distill",
        metavar="W",
        type=float,
        default=0.9,
        help="weight of the given model's own outputs as soft targets, against the labels' "
        "1 - W (classifiers; default: 0.9; 0: labels only)",
    )
    g.add_argument("--batch", metavar="B", type=positive, default=32, help="(default: 32)")
    g.add_argument("--seed", metavar="N", type=int, default=0, help="(default: 0)")
    g.add_argument("--loss", choices=LOSSES, help="the loss (default: inferred)")
    p.add_argument(
        "--target",
        choices=list(TARGETS),
        default="generic",
        help="how to lay the result down (see `tflrewrite --help`; default: generic)",
    )
    p.add_argument("--json", metavar="FILE|-", help="also write the report as JSON")
    return p


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from tflrewrite.fileio import atomic_write, check_output_path

    for path, what in ((args.model, "model"), (args.data, "data"), (args.val, "validation")):
        if path is not None and not os.path.exists(path):
            raise TflRewriteError(f"{path}: no such {what} file")
    check_output_path(args.output, [args.model, args.data], args.force)
    from tflrewrite.finetune import api
    from tflrewrite.finetune.data import load_npz

    options = api.Options(
        stage=args.stage,
        sparsity=args.prune,
        clusters=args.cluster,
        granularity=args.granularity,
        prune_scope=args.prune_scope,
        prune_all=args.prune_all,
        epochs=args.epochs,
        prune_epochs=args.prune_epochs,
        lr=args.lr,
        distill=args.distill,
        batch=args.batch,
        seed=args.seed,
        loss=args.loss,
        target=args.target,
    )
    model = api.load_model(args.model)
    names = api.input_names(model)
    data = load_npz(args.data, names, "data")
    val = load_npz(args.val, names, "validation") if args.val else None
    result = api.finetune(model, data, val=val, options=options, progress=_epoch_line)
    atomic_write(args.output, lambda f: f.write(result.tflite))
    if args.json:
        write_json(args.json, result.report)
    if args.json != "-":
        print_report(args.model, args.output, result.report, sys.stdout)
    return 0 if result.report["ok"] else 1


def _epoch_line(e: Any) -> None:
    parts = [f"loss {e.loss:.4f}"]
    if e.accuracy is not None:
        parts.append(f"accuracy {e.accuracy:.4f}")
    if e.val_loss is not None:
        parts.append(f"val loss {e.val_loss:.4f}")
    if e.val_accuracy is not None:
        parts.append(f"val accuracy {e.val_accuracy:.4f}")
    sys.stderr.write(f"tflrewrite: epoch {e.epoch}: {', '.join(parts)} ({e.seconds:.1f} s)\n")


def print_report(source: str, output: str, report: dict, out: TextIO) -> None:
    from tflrewrite.reports.text import print_table

    o = report["options"]
    out.write(
        f"{source} -> {output}\n  {o['stage']} ({report['keras']}): {len(report['epochs'])} "
        f"epochs in {report['finetune_seconds']:.1f} s, then full-integer int8 (weights per "
        f"{report['int8_weights']}) and the rewriter in {report['convert_seconds']:.1f} s\n"
        f"  {report['bytes']:,} bytes, {report['zip_bytes']:,} zipped\n"
    )
    for key, label in (("val_before", "given model"), ("val_start", "pruned/clustered")):
        if report.get(key) and report[key]["accuracy"] is not None:
            out.write(f"  val accuracy, {label} (float): {report[key]['accuracy']:.4f}\n")
    if report["epochs"] and report["epochs"][-1]["val_accuracy"] is not None:
        out.write(
            f"  val accuracy, fine-tuned (float): {report['epochs'][-1]['val_accuracy']:.4f}\n"
        )
    if report.get("val_int8_accuracy") is not None:
        out.write(f"  val accuracy, int8 .tflite in LiteRT: {report['val_int8_accuracy']:.4f}\n")
    folded = report["batchnorm"]["folded"]
    if folded:
        out.write(f"  batch norms folded before training: {len(folded)}\n")
    for note in report["batchnorm"]["not_folded"]:
        out.write(f"  batch norm {note}\n")
    for layer, reason in report.get("not_pruned", {}).items():
        out.write(f"  not pruned: {layer}: {reason}\n")
    for item in report["left_alone"]:
        out.write(f"  left alone: {item['layer']}: {item['reason']}\n")
    for name in report["unmatched"]:
        out.write(f"  not found in the converted model: {name} (not checked, not rewritten)\n")
    for step in report["rewrite"]:
        changed = ", ".join(step["changed"]) or "nothing"
        out.write(f"  rewriter {step['pass']}: {step['weights']} weights, changed: {changed}\n")
    rows = [("layer", "kind", "int8 shape", "sparsity", "zeros kept", "ch.unique", "unique", "ok")]
    for c in report["layers"]:
        kept = c["pruned_still_zero"]
        rows.append(
            (
                c["layer"],
                c["kind"],
                "x".join(map(str, c["shape"])),
                f"{c['sparsity']:.3f}",
                "" if kept is None else ("yes" if kept else "NO"),
                str(c["channel_unique"]),
                str(c["tensor_unique"]),
                "yes" if c["ok"] else "NO",
            )
        )
    print_table(rows, out, right={3, 5, 6})
