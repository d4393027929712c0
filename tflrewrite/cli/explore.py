"""`tflrewrite explore`: parses the flags for api.explore (the deployment tree's paths on
models: every candidate, explore.json and an HTML page written), and prints each Pareto
front."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from tflrewrite.cli.common import Parser, expand_models, formatter, positive, size
from tflrewrite.reports.text import clip, db
from tflrewrite.targets import DEFAULT, TARGETS

CALIBRATION_SAMPLES = 100  # as the rewrite command's --calibration-samples

DESCRIPTION = """\
Explore the deployment tree for MODEL: rewrite it every way the tree offers for the
target, measure each candidate's size and fidelity, and print the Pareto front.

The candidates: weight-only int8 and float16; full int8 (with --calibration); pruning at
50% and 75%, 8, 16 and 32 clusters, and prune+cluster, each with and without full int8
(int8 weights without --calibration); the size-budget planner at three sizes (or at the
--max-*-bytes given). --target ethos-u keeps the full-int8 ones.

Each candidate is measured for size (file bytes, zipped bytes, and the target's own
measure: Vela's encoded weights and cycles for ethos-u, weight and arena bytes for tflm)
and fidelity against MODEL on the evaluation samples (--inputs, else the calibration
samples held out from calibration, else seeded random inputs): SQNR of each output and
top-1 agreement, and with labels (an array `y` in the .npz: class ids, or values) the
accuracy, or the mean squared error, of both models. The front is the target's size
(zipped bytes; file bytes for cpu; TFLM weight bytes for tflm; Vela's encoded weights
for ethos-u) against accuracy (MSE) where there are labels, else against the worst
output's SQNR.
"""

EPILOG = """\
written to DIR: every candidate's model, the front's as front-NN-NAME.tflite (01 the
smallest), the others as NAME.tflite; explore.json with each candidate's settings,
figures and the command line that makes the same model. With several models (or a
folder), each model's candidates go to DIR/NAME/ and one explore.json covers them all.

examples:
  tflrewrite explore model.tflite --calibration samples.npz -o explored/
  tflrewrite explore model.tflite --calibration train.npz --inputs test.npz --jobs 2
      --html explored.html -o explored/      accuracy on test.npz's labels (its y)
  tflrewrite explore models/ --calibration samples.npz --target ethos-u -o explored/
  tflrewrite explore model.tflite --calibration s.npz --only 'prune*' -o explored/
  tflrewrite explore model.tflite --calibration s.npz --ray -o explored/   on the Ray
      cluster this machine belongs to (RAY_ADDRESS, or `ray start` here)

exit codes: 0 done; 1 a model whose front is empty: no candidate ran (explore.json gives
each one's reason), or none is within the --max-*-bytes; 2 bad usage or bad input, nothing
written.
"""


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tflrewrite explore",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,
    )
    p.add_argument("models", metavar="MODEL", nargs="+", help=".tflite models, or folders of them")
    p.add_argument("-o", "--output", metavar="DIR", required=True, help="the folder to write to")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into DIR even where it is not empty (what an earlier explore wrote "
        "there, as its explore.json lists, is removed first)",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--calibration",
        metavar="NPZ|DIR|random",
        help="calibration samples, as for the rewrite command: full int8 and the data-aware "
        "passes need them",
    )
    g.add_argument(
        "--calibration-samples",
        metavar="N",
        type=positive,
        default=CALIBRATION_SAMPLES,
        help=f"calibrate on the first N samples (default: {CALIBRATION_SAMPLES}); the rest "
        "are the evaluation samples where --inputs is not given",
    )
    g.add_argument(
        "--inputs",
        metavar="EVAL.npz",
        help="held-out evaluation samples: one array per model input, and `y` for labels "
        "(integers: class ids, scored by top-1 accuracy; floats: values, by mean squared "
        "error)",
    )
    g.add_argument(
        "--samples",
        metavar="N",
        type=positive,
        default=32,
        help="seeded random evaluation inputs where there are no real ones (default: 32)",
    )
    g = p.add_argument_group("what to explore")
    g.add_argument(
        "--target",
        choices=list(TARGETS),
        default=DEFAULT,
        help=f"the runtime to lay candidates down for (default: {DEFAULT}; see the "
        "rewrite command's --help)",
    )
    g.add_argument(
        "--accelerator",
        metavar="NAME",
        help="the Ethos-U configuration Vela measures for (default: ethos-u55-128)",
    )
    budget = g.add_mutually_exclusive_group()
    for flag, what in (
        ("--max-zip-bytes", "zipped bytes"),
        ("--max-bytes", "file bytes"),
        ("--max-vela-bytes", "Vela's encoded weights (--target ethos-u)"),
    ):
        budget.add_argument(
            flag,
            metavar="N",
            type=size,
            help=f"a budget of {what}: the planner runs at N, and only candidates within "
            "it make the front",
        )
    g.add_argument(
        "--only",
        metavar="NAMES",
        help="only the candidates whose names match, comma-separated shell patterns "
        "(e.g. 'int8,prune*-int8'; names as the table gives them)",
    )
    g = p.add_argument_group("where the candidates run")
    g.add_argument(
        "--jobs",
        metavar="N",
        type=positive,
        default=1,
        help="candidates at a time, each in a process of its own (default: 1)",
    )
    g.add_argument(
        "--ray",
        metavar="ADDRESS",
        nargs="?",
        const="",
        help="run the candidates as tasks on a Ray cluster instead: at ADDRESS, or the one "
        "Ray finds (RAY_ADDRESS, or a cluster started on this machine); its workers need "
        "tflrewrite installed (pip install 'tflrewrite[ray]')",
    )
    g = p.add_argument_group("report")
    g.add_argument(
        "--html",
        metavar="FILE",
        help="also write one self-contained HTML page: each model's Pareto chart (hover a "
        "point for its settings and command) and its candidates (pip install "
        "'tflrewrite[html]')",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list every candidate")
    return p


def run(args: argparse.Namespace) -> int:
    from tflrewrite import api
    from tflrewrite.tree import RECORD

    models = expand_models(args.models)
    result = api.explore(
        models if len(models) > 1 else models[0],
        output=args.output,
        calibration=args.calibration,
        calibration_samples=args.calibration_samples,
        inputs=args.inputs,
        samples=args.samples,
        target=args.target,
        accelerator=args.accelerator,
        max_zip_bytes=args.max_zip_bytes,
        max_bytes=args.max_bytes,
        max_vela_bytes=args.max_vela_bytes,
        only=args.only,
        jobs=args.jobs,
        ray=args.ray,
        html=args.html,
        force=args.force,
        progress=_progress(several=len(models) > 1),
    )
    for model in result.record["models"]:
        _print(model, sys.stdout, verbose=args.verbose)
    sys.stdout.write(f"\nevery candidate: {os.path.join(args.output, RECORD)}\n")
    if args.html:
        sys.stdout.write(f"html report: {args.html}\n")
    return 1 if any(not m["front"] for m in result.record["models"]) else 0


def _progress(*, several: bool) -> Any:
    """One line per measured candidate on a terminal (progress.Lines)."""
    from tflrewrite.progress import Lines

    lines = None

    def done(model: str, row: dict, count: int, total: int) -> None:
        nonlocal lines
        if lines is None:
            lines = Lines("explore:", total)
        where = f"{os.path.basename(model)}: " if several else ""
        lines(f"{where}{row['name']}: {_short(row)}")

    return done


def _short(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    m = row["measures"]
    text = f"{m['zip_bytes']:,} zipped bytes, SQNR {db(m['sqnr_db'])} dB"
    if "accuracy" in m:
        text += f", accuracy {m['accuracy']:.4f}"
    seconds = sum(row.get("seconds", {}).values())
    return text + f" ({seconds:.1f} s)"


# ------------------------------------------------------------------ the tables


def _columns(m: dict) -> list[tuple[str, str]]:
    """(header, measure key) of the table's figures, the target's own among them."""
    cols = [("bytes", "bytes"), ("zipped", "zip_bytes")]
    if m["target"] == "ethos-u":
        cols += [("Vela weights", "vela_encoded_weights_bytes"), ("cycles", "vela_cycles")]
    if m["target"] == "tflm":
        cols += [("TFLM weights", "tflm_weight_bytes"), ("arena", "tflm_arena_bytes")]
    cols += [("SQNR dB", "sqnr_db"), ("top-1 agree", "top1_agreement")]
    if m["fidelity_measure"] in ("accuracy", "mse"):
        cols.append((m["fidelity_measure"], m["fidelity_measure"]))
    return cols


def _cell(measures: dict, key: str) -> str:
    value = measures.get(key)
    if key == "sqnr_db":
        return "inf" if measures.get("identical") else db(value)
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if key in ("accuracy", "top1_agreement") else f"{value:.4g}"
    return f"{value:,}"


def _print(m: dict, out: TextIO, *, verbose: bool) -> None:
    """One model of explore.json (`m`): its input's figures, the front as a table (every
    candidate with `verbose`), and the candidates that did not run."""
    from tflrewrite.reports.text import print_table
    from tflrewrite.tree import FIDELITY_HELP

    rows = m["candidates"]
    ok = [r for r in rows if r.get("status") == "ok"]
    evaluation = m["evaluation"]
    labels = "" if evaluation["labels"] is None else ", with labels"
    out.write(
        f"\n{m['input']}: {len(rows)} candidates for target {m['target']}, measured on "
        f"{evaluation['samples']} samples ({evaluation['source']}){labels}\n"
    )
    cols = _columns(m)
    if "error" in m["reference"]:
        out.write(f"  the input itself: {m['reference']['error']}\n")
    else:
        ref = m["reference"]["measures"]
        figures = ", ".join(
            f"{h} {_cell(ref, k)}" for h, k in cols if k not in ("sqnr_db", "top1_agreement")
        )
        out.write(f"  the input: {figures}\n")
    size_label = m["size_label"]
    fidelity = FIDELITY_HELP[m["fidelity_measure"]]
    within = "" if m["budget"] is None else f", within {m['budget']['limit']:,} {size_label}"
    out.write(f"\nPareto front: {size_label} against {fidelity}{within}\n")
    if verbose:
        shown = rows
    else:
        shown = sorted((r for r in rows if r.get("front") is not None), key=lambda r: r["front"])
    table = [("#", "candidate", *(h for h, _ in cols), "file")]
    for row in shown:
        place = "" if row.get("front") is None else str(row["front"])
        if row.get("status") != "ok":
            table.append((place, clip(row["name"], 40), *("-" for _ in cols), row["status"]))
            continue
        cells = (_cell(row["measures"], k) for _, k in cols)
        table.append((place, clip(row["name"], 40), *cells, row["file"] or ""))
    if len(table) > 1:
        print_table(table, out, right={0, *range(2, 2 + len(cols))})
    else:
        out.write("  (empty: no candidate ran)\n")
    failed = [r for r in rows if r.get("status") != "ok"]
    for r in failed:
        out.write(f"  {r['status']}: {r['name']}: {r['reason']}\n")
    out.write(f"  {len(ok)} of {len(rows)} candidates ran\n")
