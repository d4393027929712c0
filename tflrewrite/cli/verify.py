"""`tflrewrite verify`: runs two models on the same inputs and compares their outputs."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from tflrewrite.cli.common import Parser, formatter, positive, write_json
from tflrewrite.reports.text import clip, db, label_columns, print_table
from tflrewrite.reports.verdict import HELP as VERDICT_HELP


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tflrewrite verify",
        formatter_class=formatter,
        description="Run REFERENCE and CANDIDATE in LiteRT on the same inputs and compare "
        "every output (quantized outputs are dequantized first).",
        epilog="SQNR = 10 log10(sum ref^2 / sum (ref - cand)^2), inf when identical.\n"
        "top-1 agreement: for outputs with one score vector per sample, the fraction "
        "of samples\nwhose arg-max is the same.\n"
        "random inputs: uniform over the range a quantized input represents (from "
        "whichever model\nquantizes it), else uniform in [-1, 1].\n"
        "labels: an .npz's y, one per sample: integers are class labels (top-1 accuracy of "
        "both models),\nfloats regression targets (MSE of both); y is never a model input.\n"
        "exit 1 when the lowest SQNR is below --min-sqnr.\n\n" + VERDICT_HELP,
    )
    p.add_argument("reference", metavar="REFERENCE")
    p.add_argument("candidate", metavar="CANDIDATE")
    p.add_argument(
        "--inputs",
        metavar="FILE.npz",
        help="inputs: one array per model input, keyed by input name, first axis "
        "= samples, and optionally y, their labels (default: seeded random inputs)",
    )
    p.add_argument(
        "--samples",
        metavar="N",
        type=positive,
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


def run(args: argparse.Namespace) -> int:
    from tflrewrite import api
    from tflrewrite.progress import Progress

    bar: list[Progress] = []

    def show(done: int, total: int) -> None:
        if not bar:
            bar.append(Progress("verify", total))
        bar[0](done)

    report = api.verify(
        args.reference,
        args.candidate,
        inputs=args.inputs,
        samples=args.samples,
        seed=args.seed,
        xnnpack=args.xnnpack,
        progress=show,
    )
    if args.json:
        write_json(args.json, report.to_json())
    if args.json != "-":
        _print_verify(report, sys.stdout)
    if args.min_sqnr is not None and report.min_sqnr_db < args.min_sqnr:
        print(
            f"tflrewrite: {args.candidate}: SQNR {db(report.min_sqnr_db)} dB is below "
            f"--min-sqnr {args.min_sqnr}",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_verify(report: Any, out: TextIO) -> None:
    labels = f", labels {report.labels}" if report.labels else ""
    out.write(
        f"reference: {report.reference}\ncandidate: {report.candidate}\n"
        f"{report.samples} samples, inputs: {report.inputs}{labels}\n"
    )
    doc = report.to_json()
    scored = label_columns(doc["outputs"])
    table = [("output", "shape", "SQNR dB", "max |err|", "top-1 agree", "identical", *scored[0])]
    for o, extra in zip(report.outputs, scored[1:]):
        table.append(
            (
                clip(o.name, 40),
                "x".join(map(str, o.shape)),
                db(o.sqnr_db),
                f"{o.max_abs_error:.4g}",
                "" if o.top1_agreement is None else f"{o.top1_agreement:.3f}",
                "yes" if o.identical else "no",
                *extra,
            )
        )
    print_table(table, out, right={2, 3, 4, *range(6, len(table[0]))})
    out.write(f"\nverdict: {doc['verdict']['line']}\n")
