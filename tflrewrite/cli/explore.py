"""`tflrewrite explore`: runs the deployment tree's paths on models, prints each Pareto front
and writes every candidate, explore.json and an HTML page."""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import sys
from typing import Any, TextIO

from tflrewrite.cli.common import Parser, expand_models, formatter, positive, size
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.reports.text import clip, db
from tflrewrite.targets import DEFAULT, TARGETS

CALIBRATION_SAMPLES = 100  # as the rewrite command's --calibration-samples
RANDOM_SEED = 1  # random evaluation inputs: not the calibration's seed-0 ones

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
    from tflrewrite import explore
    from tflrewrite.fileio import check_output_path

    models = expand_models(args.models)
    folders = _folders(models, args.output)
    explore.check_folder(args.output, inputs=models, force=args.force)
    if args.html:
        from tflrewrite.reports import html

        html.check_available()
        check_output_path(args.html, models, args.force)
    _check(args)
    budgets = None
    explored = []
    for path in models:
        subject = _subject(path, args)
        if budgets is None or len(models) > 1:
            budgets = _budgets(subject, args)
        explored.append((subject, _plans(path, folders[path], args, budgets)))
    total = sum(1 + sum(p.refused is None for p in plans) for _, plans in explored)
    results = explore.run(
        explored,
        workers=args.jobs,
        ray=args.ray,
        budget=_user_budget(args),
        on_done=_progress(total - len(explored), several=len(models) > 1),
    )
    for e in results:
        explore.assign_files(e, os.path.relpath(folders[e.subject.path], args.output))
    doc = explore.save(results, args.output, force=args.force)
    if args.html:
        from tflrewrite.reports import html, sweep

        html.write(args.html, sweep.page(doc))
    for e in results:
        _print(e, sys.stdout, verbose=args.verbose)
    sys.stdout.write(f"\nevery candidate: {os.path.join(args.output, explore.RECORD)}\n")
    if args.html:
        sys.stdout.write(f"html report: {args.html}\n")
    return 1 if any(not e.front for e in results) else 0


def _check(args: argparse.Namespace) -> None:
    if args.target == "ethos-u" and args.calibration is None:
        raise UsageError(
            "explore --target ethos-u: Ethos-U runs full int8, which needs --calibration"
        )
    if args.target != "ethos-u":
        for flag, given in (
            ("--accelerator", args.accelerator),
            ("--max-vela-bytes", args.max_vela_bytes),
        ):
            if given is not None:
                raise UsageError(f"{flag} is for --target ethos-u")
    if args.ray is not None:
        from tflrewrite import fanout

        if not fanout.ray_available():
            raise UsageError(f"--ray needs Ray: {fanout.RAY_EXTRA}")


def _folders(models: list[str], output: str) -> dict[str, str]:
    """Where each model's candidates go: DIR for one model, DIR/NAME for several."""
    if len(models) == 1:
        return {models[0]: output}
    folders: dict[str, str] = {}
    for path in models:
        stem = os.path.splitext(os.path.basename(path))[0]
        folder = os.path.join(output, stem)
        if folder in folders.values():
            raise UsageError(f"{path}: another model is also named {stem}; explore them apart")
        folders[path] = folder
    return folders


def _subject(path: str, args: argparse.Namespace) -> Any:
    """The model at `path` with its calibration, evaluation samples and labels."""
    from tflrewrite import calibrate, reader, runtime
    from tflrewrite.explore import Subject, read_labels

    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise TflRewriteError(f"{path}: cannot read it: {e.strerror or e}") from None
    reader.read_bytes(content, path)  # refuses what is not a model, before any work
    runner = runtime.load(content, name=path)
    calibration = held_out = None
    n = args.calibration_samples
    if args.calibration is not None:
        calibration, held_out = calibrate.load(args.calibration, runner, n).split(n)
    labelled = args.calibration if _is_npz(args.calibration) else None
    labels = None
    if args.inputs is not None:
        if not os.path.isfile(args.inputs):
            raise TflRewriteError(f"{args.inputs}: no such file")
        values = runtime.npz_inputs(args.inputs, runner, None)
        if not values:
            raise TflRewriteError(f"{args.inputs}: holds no samples")
        evaluation = calibrate.Samples(values, os.path.basename(args.inputs))
        labels = read_labels(args.inputs, count=len(values))
    elif held_out is not None:
        evaluation = held_out
        if labelled:
            labels = read_labels(labelled, start=n, count=len(held_out.values))
    elif calibration is not None and args.calibration != calibrate.RANDOM:
        source = f"{calibration.source}, the calibration samples themselves (none held out)"
        evaluation = calibrate.Samples(calibration.values, source)
        if labelled:
            labels = read_labels(labelled, count=len(calibration.values))
    else:
        values = runtime.random_inputs([runner], args.samples, RANDOM_SEED)
        evaluation = calibrate.Samples(values, f"random inputs (seed {RANDOM_SEED})")
    return Subject(
        path=path,
        model=content,
        target=args.target,
        calibration=calibration,
        evaluation=evaluation,
        labels=labels,
        accelerator=args.accelerator,
    )


def _is_npz(spec: str | None) -> bool:
    return spec is not None and os.path.isfile(spec)


def _user_budget(args: argparse.Namespace) -> tuple[str, int] | None:
    for metric, value in (
        ("zip", args.max_zip_bytes),
        ("bytes", args.max_bytes),
        ("vela", args.max_vela_bytes),
    ):
        if value is not None:
            return metric, value
    return None


def _budgets(subject: Any, args: argparse.Namespace) -> list[tuple[str, int]]:
    from tflrewrite import explore

    given = _user_budget(args)
    metric = given[0] if given else explore.BUDGET_DEFAULT[args.target]
    return explore.budget_sizes(subject.model, metric=metric, limit=given and given[1])


def _plans(path: str, folder: str, args: argparse.Namespace, budgets: list) -> list[Any]:
    """Each candidate of the tree as the rewrite command would run it, or why it cannot."""
    from tflrewrite import explore

    candidates = explore.tree(
        target=args.target, calibrated=args.calibration is not None, budgets=budgets
    )
    if args.only:
        patterns = [p.strip() for p in args.only.split(",") if p.strip()]
        chosen = [c for c in candidates if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
        if not chosen:
            names = ", ".join(c.name for c in candidates)
            raise UsageError(f"--only {args.only}: matches none of the candidates: {names}")
        candidates = chosen
    return [_plan(c, path, folder, args) for c in candidates]


def _plan(candidate: Any, path: str, folder: str, args: argparse.Namespace) -> Any:
    from tflrewrite import recipes
    from tflrewrite.cli import rewrite
    from tflrewrite.explore import Plan

    argv = [path, "-o", os.path.join(folder, candidate.file), *candidate.flags]
    if candidate.calibrated:
        argv += ["--calibration", args.calibration]
        if args.calibration_samples != CALIBRATION_SAMPLES:
            argv += ["--calibration-samples", str(args.calibration_samples)]
    if args.target != DEFAULT:
        argv += ["--target", args.target]
    if args.accelerator and "--max-vela-bytes" in candidate.flags:
        argv += ["--accelerator", args.accelerator]
    command = shlex.join(["tflrewrite", *argv])
    try:
        flags = rewrite.parser().parse_args(argv)
        recipe = rewrite.recipe_from_args(flags)
        budget = rewrite.budget_from_args(flags)
        recipes.check(recipe, calibrated=candidate.calibrated, method=flags.method)
    except TflRewriteError as e:
        return Plan(candidate, command, refused=str(e))
    return Plan(candidate, command, recipe, budget, flags.method or "data")


def _progress(total: int, *, several: bool) -> Any:
    from tflrewrite.progress import Lines

    lines = Lines("explore:", total)

    def done(subject: Any, name: str, row: dict) -> None:
        where = f"{os.path.basename(subject.path)}: " if several else ""
        lines(f"{where}{name}: {_short(row)}")

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


def _columns(e: Any) -> list[tuple[str, str]]:
    """(header, measure key) of the table's figures, the target's own among them."""
    cols = [("bytes", "bytes"), ("zipped", "zip_bytes")]
    if e.subject.target == "ethos-u":
        cols += [("Vela weights", "vela_encoded_weights_bytes"), ("cycles", "vela_cycles")]
    if e.subject.target == "tflm":
        cols += [("TFLM weights", "tflm_weight_bytes"), ("arena", "tflm_arena_bytes")]
    cols += [("SQNR dB", "sqnr_db"), ("top-1 agree", "top1_agreement")]
    if e.fidelity_measure in ("accuracy", "mse"):
        cols.append((e.fidelity_measure, e.fidelity_measure))
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


def _print(e: Any, out: TextIO, *, verbose: bool) -> None:
    from tflrewrite.explore import FIDELITY_HELP, SIZE_LABEL
    from tflrewrite.reports.text import print_table

    s = e.subject
    ok = [r for r in e.rows if r.get("status") == "ok"]
    labels = "" if s.labels is None else ", with labels"
    out.write(
        f"\n{s.path}: {len(e.rows)} candidates for target {s.target}, measured on "
        f"{len(s.evaluation.values)} samples ({s.evaluation.source}){labels}\n"
    )
    cols = _columns(e)
    if "error" in e.reference:
        out.write(f"  the input itself: {e.reference['error']}\n")
    else:
        ref = e.reference["measures"]
        figures = ", ".join(
            f"{h} {_cell(ref, k)}" for h, k in cols if k not in ("sqnr_db", "top1_agreement")
        )
        out.write(f"  the input: {figures}\n")
    size_label = SIZE_LABEL[e.size_measure]
    fidelity = FIDELITY_HELP[e.fidelity_measure]
    within = "" if e.budget is None else f", within {e.budget[1]:,} {size_label}"
    out.write(f"\nPareto front: {size_label} against {fidelity}{within}\n")
    shown = e.front if not verbose else range(len(e.rows))
    table = [("#", "candidate", *(h for h, _ in cols), "file")]
    for i in shown:
        row = e.rows[i]
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
    failed = [r for r in e.rows if r.get("status") != "ok"]
    for r in failed:
        out.write(f"  {r['status']}: {r['name']}: {r['reason']}\n")
    out.write(f"  {len(ok)} of {len(e.rows)} candidates ran\n")
