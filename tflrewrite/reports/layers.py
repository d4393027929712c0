"""Per-layer error: each quantized activation of a rewritten model against its float twin in
the reference model, on the same inputs, so that a user sees where accuracy goes.

Tensors are matched by name (the quantization pass keeps an activation's name on its integer
form, and gives boundary twins the suffix `_int8` or `_int16`); the candidate's tensors are
dequantized with their own parameters. Both models run in LiteRT with their intermediates
kept.
"""

from __future__ import annotations

import os

import numpy as np

from tflrewrite import runtime
from tflrewrite.reports.verify import power_ratio_db

TWIN_SUFFIXES = ("_int8", "_int16")


def layer_errors(
    reference: str | os.PathLike,
    candidate: str | os.PathLike,
    samples: list | None,
    *,
    quantized_only: bool = True,
    count: int = 8,
    seed: int = 0,
) -> list[dict]:
    """[{"tensor", "op", "sqnr_db"}] for every quantized activation of the candidate that has
    a float twin in the reference, in the candidate's op order; for its float activations
    too where not `quantized_only` (pruning and clustering move those). Without `samples`,
    on `count` seeded random inputs."""
    ref = runtime.load(reference, keep_tensors=True)
    cand = runtime.load(candidate, keep_tensors=True)
    if samples is None:
        samples = runtime.random_inputs([ref, cand], count, seed)
    ref_index = {
        d["name"]: d["index"] for d in ref.tensor_details() if np.dtype(d["dtype"]) == np.float32
    }
    pairs = []  # (name, op type, candidate detail, reference index)
    details = {d["index"]: d for d in cand.tensor_details()}
    for op in cand.op_details():
        for index in op["outputs"]:
            d = details.get(int(index))
            if d is None or not (d["quantization"][0] or _float(d, quantized_only)):
                continue
            name = d["name"]
            twin = ref_index.get(name)
            for suffix in TWIN_SUFFIXES:
                twin = ref_index.get(name.removesuffix(suffix)) if twin is None else twin
            if twin is not None:
                pairs.append((name, op["op_name"], d, twin))
    signal = np.zeros(len(pairs))
    noise = np.zeros(len(pairs))
    for _ in zip(ref.run_each(samples), cand.run_each(samples)):
        for j, (_, _, d, twin) in enumerate(pairs):
            r = ref.stored(twin)
            c = cand.real(d["index"])
            if r is None or r.shape != c.shape:
                continue
            r = r.astype(np.float64)  # float32: its stored values are real
            signal[j] += float(np.sum(r * r))
            noise[j] += float(np.sum((r - c) ** 2))
    out = []
    for (name, op, _, _), s, n in zip(pairs, signal, noise):
        db = power_ratio_db(float(s), float(n))
        out.append({"tensor": name, "op": op, "sqnr_db": None if np.isinf(db) else round(db, 2)})
    return out


def _float(detail: dict, quantized_only: bool) -> bool:
    return not quantized_only and np.dtype(detail["dtype"]) == np.float32
