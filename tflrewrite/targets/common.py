"""What the targets share: the operators that read a weight, the refusals every target
makes whatever its runtime, dense storage of sparse constants for runtimes that read
weights dense, and the refusal of integer ops a runtime has no kernel for."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tflrewrite import sparsity
from tflrewrite.errors import UsageError
from tflrewrite.model import Model, Operator, Subgraph, Tensor
from tflrewrite.passes.common import weight_stats
from tflrewrite.weights import Weight, replace_data


def readers(sg: Subgraph, t: Tensor) -> list[Operator]:
    """The operators of `sg` that read `t`, in graph order."""
    return [op for op in sg.operators if any(x is t for x in op.inputs)]


def refusal(w: Weight, sg: Subgraph) -> str | None:
    """Why a target leaves `w` as the passes stored it, for any runtime: a new layout of a
    buffer other tensors share would change them too, and a subgraph's inputs and outputs
    are the caller's to fill or read in the stored form."""
    if w.aliases:
        return "its buffer is shared with other tensors"
    if w.tensor in sg.inputs or w.tensor in sg.outputs:
        return "a subgraph input or output"
    return None


def densify(model: Model, why: str) -> list[dict]:
    """Sparse constants made dense, and DENSIFY operators of constants replaced by their
    dense result, for runtimes that read every weight buffer as dense (`why` says so in
    the records). A sparse constant whose parameters do not decode is left as it is."""
    records = []
    for si, sg in enumerate(model.subgraphs):
        for t in sg.tensors:
            if t.sparsity is not None and t.is_constant and t.shape is not None:
                try:
                    dense = sparsity.decode(t.data, t.sparsity, t.shape)
                except sparsity.SparsityError:
                    continue
                t.sparsity = None
                replace_data(model, Weight(si, t, "sparse", out_axis=0, in_axis=None), dense)
                records.append(_note(si, t, "densified", why))
        for op in [op for op in sg.operators if op.type == "DENSIFY"]:
            source, out = op.inputs[0], op.outputs[0]
            if source is None or out is None or not source.is_constant or out in sg.outputs:
                continue
            if source.sparsity is not None:
                continue  # not decodable above
            out.buffer = source.buffer  # dense by now
            sg.operators.remove(op)
            if not any(source in (*o.inputs, *o.outputs) for o in sg.operators):
                if source not in sg.inputs and source not in sg.outputs:
                    sg.tensors.remove(source)
            records.append(_note(si, out, "densified", "its DENSIFY operator removed"))
    return records


def _note(si: int, t: Tensor, action: str, reason: str) -> dict:
    stats = weight_stats(np.asarray(t.data).reshape(1, -1)) if t.is_constant else {}
    return {
        "subgraph": si,
        "tensor": t.name,
        "op": None,
        "dtype": t.dtype,
        "shape": list(t.shape or ()),
        "action": action,
        "reason": reason,
        "before": stats,
        "after": stats,
    }


def refuse_integer_gaps(
    model: Model, unsupported: Mapping[tuple[str, str], str], name: str
) -> None:
    """Refuse (a usage error, one line) a model with an op that reads or writes integer
    activations of a dtype its runtime has no kernel of that op for: `unsupported` maps
    (activation dtype, op type) to why."""
    for sg in model.subgraphs:
        for op in sg.operators:
            for t in op.inputs + op.outputs:
                if t is None or t.is_constant:
                    continue
                reason = unsupported.get((t.dtype, op.type))
                if reason is not None:
                    raise UsageError(
                        f"--target {name}: {reason} ({op.type} on {t.dtype} tensor "
                        f"{t.name!r}); quantize the float model with --target {name}, which "
                        "keeps such ops float"
                    )
