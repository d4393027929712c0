"""`tflrewrite audit`: what each tensor of a model costs, checked against size budgets."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from tflrewrite.cli.common import Parser, expand_models, formatter, positive, size, write_json
from tflrewrite.errors import TflRewriteError
from tflrewrite.reports.text import clip, fmt, print_table, ratio


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tflrewrite audit",
        formatter_class=formatter,
        description="Size audit: bytes, sparsity and distinct values of every tensor, totals "
        "by dtype and by op type, file and zipped (DEFLATE) size.",
        epilog="sparsity = fraction of stored values equal to zero (to the zero point for "
        "quantized tensors);\nunique = distinct stored values; ch.unique = the most "
        "distinct values in one output channel.\nsizes take suffixes: 200k = 200,000, "
        "64KiB = 65,536, 1.5M, 2MiB.\nexit 1 when a model is over a budget.",
    )
    p.add_argument(
        "models", metavar="MODEL", nargs="+", help=".tflite files to audit, or folders of them"
    )
    p.add_argument(
        "--json",
        metavar="FILE|-",
        help="write the audit as JSON (an object per model; a list for several)",
    )
    p.add_argument("--max-bytes", metavar="N", type=size, help="fail if a file is over N bytes")
    p.add_argument(
        "--max-zip-bytes", metavar="N", type=size, help="fail if a zipped file is over N bytes"
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
    p.add_argument(
        "--jobs",
        metavar="N",
        type=positive,
        default=1,
        help="audit N models at a time, each in a process of its own (default: 1)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from tflrewrite import api

    models = expand_models(args.models)
    if args.compare and len(models) != 2:
        raise TflRewriteError("audit: --compare takes exactly two models (before, after)")
    accelerator = None
    if args.vela or args.accelerator:
        from tflrewrite.reports import vela

        accelerator = args.accelerator or vela.DEFAULT_ACCELERATOR
        vela.require(accelerator)
    if args.jobs > 1 and len(models) > 1:
        results, npu = _audit_in_parallel(models, accelerator, args.jobs)
        for r, v in zip(results, npu):
            r.vela = v
    else:
        # Every model is read (and refused, where it is not one) before Vela compiles any.
        results = [api.audit(path) for path in models]
        for r in results if accelerator else []:
            r.vela = vela.compile_report(r.file, accelerator)
        npu = [r.vela for r in results] if accelerator else []
    if args.json:
        docs = [r.to_json() for r in results]
        write_json(args.json, docs[0] if len(docs) == 1 else docs)
    if args.json != "-":
        if args.compare:
            _print_compare(results[0], results[1], sys.stdout)
        else:
            for r in results:
                _print_audit(r, args.all, sys.stdout)
        for r, v in zip(results, npu):
            _print_vela(r, v, sys.stdout)
    failed = _over_budget(results, args.max_bytes, args.max_zip_bytes)
    for r, v in zip(results, npu):
        if v.error:
            print(f"tflrewrite: {r.file}: {v.error}", file=sys.stderr)
    if any(v.error for v in npu):
        return 2
    return 1 if failed else 0


def _audit_in_parallel(
    models: list[str], accelerator: str | None, workers: int
) -> tuple[list[Any], list[Any]]:
    """The audits (and Vela's reports) of `models`, `workers` processes at a time; the
    first model that cannot be audited is refused, as it is one model at a time."""
    from tflrewrite import fanout

    outcomes = fanout.run(_audit_one, [(p, accelerator) for p in models], workers=workers)
    for outcome in outcomes:
        if isinstance(outcome, fanout.Failed):
            raise TflRewriteError(outcome.reason)
    results = [a for a, _ in outcomes]
    return results, [v for _, v in outcomes] if accelerator else []


def _audit_one(path: str, accelerator: str | None) -> tuple[Any, Any]:
    """One model's audit and, with `accelerator`, Vela's report: what a worker runs."""
    from tflrewrite import api

    result = api.audit(path)
    if accelerator is None:
        return result, None
    from tflrewrite.reports import vela

    return result, vela.compile_report(path, accelerator)


def _over_budget(results: list[Any], max_bytes: int | None, max_zip_bytes: int | None) -> bool:
    """Whether a model is over a budget; says which on stderr."""
    failed = False
    for r in results:
        for value, budget, what in (
            (r.bytes, max_bytes, "bytes"),
            (r.zip_bytes, max_zip_bytes, "zipped bytes"),
        ):
            if budget is not None and value > budget:
                print(
                    f"tflrewrite: {r.file}: {value:,} {what}, over the budget of {budget:,}",
                    file=sys.stderr,
                )
                failed = True
    return failed


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
    if r.associated_files:
        files = ", ".join(f"{f['name']} ({f['bytes']:,} bytes)" for f in r.associated_files)
        out.write("  associated files: " + files + "\n")
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
