"""Per-op figures of a rewritten model, for the HTML report's layer table and the Model
Explorer overlays: the bytes of each op's constants before and after, its weight's sparsity
and distinct values, and the SQNR of its output against the input model's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tflrewrite.model import Model, Operator, Subgraph, Tensor
from tflrewrite.reports.audit import WEIGHT_INPUTS, TensorAudit, breakdown
from tflrewrite.reports.layers import TWIN_SUFFIXES

# Per-layer SQNR runs both models keeping every tensor; a few samples show the trend (as the
# text report's reports.summary.LAYER_SAMPLES).
SAMPLES = 16


@dataclass
class OpFigures:
    subgraph: int
    index: int  # in its subgraph: Model Explorer's node id for it
    type: str
    output: str | None  # its first output's name
    weight: str | None  # the weight it reads (behind a DEQUANTIZE, if any)
    bytes: int  # its constants' bytes, those behind its DEQUANTIZE inputs included
    bytes_before: int | None  # the same op's in the input model (matched by output name)
    sparsity: float | None  # of its weight's stored values
    distinct: int | None  # distinct stored values of its weight
    channel_distinct: int | None  # the most in one output channel
    sqnr_db: float | None  # its output against the input model's; inf where identical
    measured: bool  # whether sqnr_db was measured (None then means it could not be)


@dataclass
class Sqnr:
    """Per-activation SQNR against the input model, by tensor name (None: identical), or
    why there is none; `source` says which inputs it was measured on."""

    by_tensor: dict[str, float | None]
    source: str = ""
    missing: str = ""


def measure_sqnr(report: dict, *, samples: Any = None, count: int = 8) -> Sqnr:
    """The SQNR of every activation of the report's output against its input (float ones
    too: pruning and clustering move those), on `samples` (calibrate.Samples, the first
    SAMPLES of them) or `count` seeded random inputs; LiteRT runs in a child process.
    Nothing where the report did not verify, or verified in tflite-micro, which keeps no
    intermediate tensors."""
    verify = report.get("verify")
    if verify is None:
        return Sqnr({}, missing="not measured: the models were not run, as --no-verify asks")
    if "error" in verify or "skipped" in verify or verify.get("runtime") != "LiteRT":
        return Sqnr({}, missing="not measured: the report's verify did not run in LiteRT")
    from tflrewrite import runtime
    from tflrewrite.errors import TflRewriteError
    from tflrewrite.reports.layers import layer_errors

    values = None if samples is None else samples.values[:SAMPLES]
    source = f"{count} random inputs (seed 0)" if values is None else _source(samples, values)
    try:
        with runtime.Child(preload=("tflrewrite.reports.layers",)) as child:
            found = child.call(
                layer_errors,
                report["input"],
                report["output"],
                values,
                quantized_only=False,
                count=count,
            )
    except TflRewriteError as e:
        return Sqnr({}, missing=f"not measured: {e}")
    return Sqnr({x["tensor"]: x["sqnr_db"] for x in found}, source=source)


def _source(samples: Any, values: list) -> str:
    return f"{len(values)} samples of {samples.source}"


def per_op(original: Model, rewritten: Model, sqnr: Sqnr) -> list[OpFigures]:
    """The figures of every op of `rewritten`, subgraph by subgraph, in op order."""
    audits = {(a.subgraph, a.index): a for a in breakdown(rewritten)[0]}
    before = _bytes_by_output(original)
    out = []
    for si, sg in enumerate(rewritten.subgraphs):
        positions = {id(t): ti for ti, t in enumerate(sg.tensors)}
        producers = _producers(sg)
        for oi, op in enumerate(sg.operators):
            weight = _weight(op, producers)
            audit = None if weight is None else audits.get((si, positions.get(id(weight), -1)))
            out.append(_figures(si, oi, op, producers, audit, before, sqnr))
    return out


def _figures(
    si: int,
    oi: int,
    op: Operator,
    producers: dict[int, Operator],
    audit: TensorAudit | None,
    before: dict[tuple[int, str], int],
    sqnr: Sqnr,
) -> OpFigures:
    name = _output_name(op)
    key = name
    for suffix in TWIN_SUFFIXES if name is not None else ():
        key = key.removesuffix(suffix)
    measured = name is not None and name in sqnr.by_tensor
    db = sqnr.by_tensor.get(name) if measured else None
    return OpFigures(
        subgraph=si,
        index=oi,
        type=op.type,
        output=name,
        weight=None if audit is None else audit.name,
        bytes=_constant_bytes(op, producers),
        bytes_before=before.get((si, key)) if key is not None else None,
        sparsity=None if audit is None else audit.sparsity,
        distinct=None if audit is None else audit.unique,
        channel_distinct=None if audit is None else audit.channel_unique,
        sqnr_db=math.inf if measured and db is None else db,
        measured=measured,
    )


def bytes_by_type(model: Model) -> dict[str, int]:
    """Constant bytes by the types of the ops that read them, as audit's `by_op` counts them
    (each buffer once for each type of op that reads it), but a constant behind a DEQUANTIZE
    counted at the ops that read the DEQUANTIZE's output: where int8 weights go."""
    readers: dict[int, set[str]] = {}
    sizes: dict[int, int] = {}
    for sg in model.subgraphs:
        producers = _producers(sg)
        for op in sg.operators:
            if op.type == "DEQUANTIZE" and all(t is None or t.is_constant for t in op.inputs):
                continue
            for t in op.inputs:
                stored = None if t is None else _stored(t, producers)
                if stored is not None:
                    readers.setdefault(id(stored.buffer), set()).add(op.type)
                    sizes[id(stored.buffer)] = stored.buffer.nbytes
    for _, _, t in model.tensors():
        if t.is_constant and id(t.buffer) not in sizes:
            readers[id(t.buffer)] = {"(unused)"}
            sizes[id(t.buffer)] = t.buffer.nbytes
    out: dict[str, int] = {}
    for key, types in readers.items():
        for kind in types:
            out[kind] = out.get(kind, 0) + sizes[key]
    return dict(sorted(out.items()))


def _output_name(op: Operator) -> str | None:
    return next((t.name for t in op.outputs if t is not None), None)


def _weight(op: Operator, producers: dict[int, Operator]) -> Tensor | None:
    """The stored weight an op reads, looking through a DEQUANTIZE in front of it."""
    slot = WEIGHT_INPUTS.get(op.type)
    if slot is None or len(op.inputs) <= slot[0] or op.inputs[slot[0]] is None:
        return None
    return _stored(op.inputs[slot[0]], producers)


def _stored(t: Tensor, producers: dict[int, Operator]) -> Tensor | None:
    if t.is_constant:
        return t
    producer = producers.get(id(t))
    if producer is not None and producer.type == "DEQUANTIZE" and producer.inputs:
        source = producer.inputs[0]
        if source is not None and source.is_constant:
            return source
    return None


def _constant_bytes(op: Operator, producers: dict[int, Operator]) -> int:
    """The bytes of an op's constant inputs, those behind a DEQUANTIZE included; a
    DEQUANTIZE of a constant counts nothing itself (its reader counts it). A buffer that
    several ops read counts for each of them."""
    if op.type == "DEQUANTIZE" and all(t is None or t.is_constant for t in op.inputs):
        return 0
    found = {}
    for t in op.inputs:
        stored = None if t is None else _stored(t, producers)
        if stored is not None:
            found[id(stored.buffer)] = stored.buffer.nbytes
    return sum(found.values())


def _bytes_by_output(model: Model) -> dict[tuple[int, str], int]:
    """Each op's constant bytes, by (subgraph, its first output's name)."""
    out = {}
    for si, sg in enumerate(model.subgraphs):
        producers = _producers(sg)
        for op in sg.operators:
            name = _output_name(op)
            if name is not None:
                out[(si, name)] = _constant_bytes(op, producers)
    return out


def _producers(sg: Subgraph) -> dict[int, Operator]:
    return {id(t): op for op in sg.operators for t in op.outputs if t is not None}
