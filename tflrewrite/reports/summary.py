"""The report after a rewrite: sizes before and after, what each pass did to each weight,
and how far the rewritten model's outputs moved (verify on seeded inputs)."""

from __future__ import annotations

import os
from typing import Any, TextIO

from tflrewrite.errors import TflRewriteError
from tflrewrite.reports.audit import zip_size
from tflrewrite.reports.text import clip, fmt, print_table, ratio

# Zipping costs about a second per 20 MB; past this the report leaves it to `audit`.
ZIP_LIMIT = 64 * 2**20


def build(
    input_path: str,
    output_path: str,
    recipe: Any,
    records: list[dict],
    verify_samples: int = 8,
    seed: int = 0,
) -> dict:
    report: dict[str, Any] = {
        "input": input_path,
        "output": output_path,
        "recipe": recipe.name,
        "steps": [s.to_json() for s in recipe.steps],
        "input_bytes": os.path.getsize(input_path),
        "output_bytes": os.path.getsize(output_path),
    }
    if report["input_bytes"] <= ZIP_LIMIT and report["output_bytes"] <= ZIP_LIMIT:
        for key, path in (("input", input_path), ("output", output_path)):
            with open(path, "rb") as f:
                report[f"{key}_zip_bytes"] = zip_size(f.read(), os.path.basename(path))
    report["passes"] = records
    if verify_samples:
        report["verify"] = _verify(input_path, output_path, verify_samples, seed)
    return report


def _verify(reference: str, candidate: str, samples: int, seed: int) -> dict:
    from tflrewrite.reports import verify

    try:
        ref, cand = verify.Runner(reference), verify.Runner(candidate)
        inputs = verify.random_inputs([ref, cand], samples, seed)
        return verify.compare(ref, cand, inputs, f"random (seed {seed})").to_json()
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
        done = [t for t in step["tensors"] if t["action"] != "skipped"]
        skipped = [t for t in step["tensors"] if t["action"] == "skipped"]
        out.write(f"\n{step['pass']}: {len(done)} tensor(s) changed, {len(skipped)} left alone\n")
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
    verify = report.get("verify")
    if verify is None:
        return
    if "error" in verify:
        out.write(f"\nverify: {verify['error']}\n")
        return
    out.write(f"\nverify against the input, {verify['samples']} samples, {verify['inputs']}:\n")
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
