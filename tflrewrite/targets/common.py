"""What the targets share: the operators that read a weight, and the refusals every target
makes whatever its runtime."""

from __future__ import annotations

from tflrewrite.model import Operator, Subgraph, Tensor
from tflrewrite.weights import Weight


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
