"""What the targets share: the operators that read a weight, the refusals every target
makes whatever its runtime, and the refusal of integer ops a runtime has no kernel for."""

from __future__ import annotations

from collections.abc import Mapping

from tflrewrite.errors import UsageError
from tflrewrite.model import Model, Operator, Subgraph, Tensor
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
