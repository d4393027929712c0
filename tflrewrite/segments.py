"""Sub-models of a subgraph's op ranges, so that a model can be run a piece at a time.

A segment is ops [start, stop) of the main subgraph as a model of its own: its inputs are
the non-constant tensors those ops read that no op of the segment makes, its outputs the
tensors it makes that a later op or the graph's outputs read. The sub-model shares the
whole model's Tensor, Operator and Buffer objects (nothing here copies weights), so that
building it costs what the segment holds, not what the model holds. Segments that call
other subgraphs (control flow) carry every other subgraph, at their indices.
"""

from __future__ import annotations

from dataclasses import dataclass

from tflrewrite.model import Buffer, Model, Subgraph, Tensor

# Ops whose options name other subgraphs by index.
CALLS_SUBGRAPHS = frozenset(
    {
        "WHILE",
        "IF",
        "CALL_ONCE",
        "STABLEHLO_COMPOSITE",
        "STABLEHLO_WHILE",
        "STABLEHLO_CASE",
        "STABLEHLO_REDUCE",
        "STABLEHLO_REDUCE_WINDOW",
        "STABLEHLO_SCATTER",
        "STABLEHLO_SORT",
    }
)
# Ops that keep state between invocations: a model with them cannot be cut into pieces
# that run apart.
STATEFUL = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"})


@dataclass
class Segment:
    """Ops [start, stop) as a model: `inputs` and `outputs` are the whole model's tensors,
    in the order of the sub-model's inputs and outputs."""

    model: Model
    start: int
    stop: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    internal: list[Tensor]  # the non-constant tensors made and used inside only


def last_reads(sg: Subgraph) -> dict[int, int]:
    """For each non-constant tensor an op or the graph's outputs read (keyed by id): the
    index of the last op that reads it, len(operators) for the graph's outputs."""
    last: dict[int, int] = {}
    for i, op in enumerate(sg.operators):
        for t in op.inputs:
            if t is not None and not t.is_constant:
                last[id(t)] = i
    for t in sg.outputs:
        last[id(t)] = len(sg.operators)
    return last


def stateful(model: Model) -> bool:
    """Whether the main subgraph keeps state between runs (variables): such a model runs
    whole, never in segments."""
    sg = model.subgraphs[0]
    return any(op.type in STATEFUL for op in sg.operators) or any(t.is_variable for t in sg.tensors)


def extract(model: Model, start: int, stop: int, *, last_read: dict[int, int]) -> Segment:
    """Ops [start, stop) of the main subgraph as a model (see the module's docstring);
    `last_read` is last_reads(the main subgraph), taken once for many segments."""
    sg = model.subgraphs[0]
    ops = sg.operators[start:stop]
    tensors: list[Tensor] = []
    seen: set[int] = set()
    made: set[int] = set()
    inputs: list[Tensor] = []
    calls = False
    for op in ops:
        calls = calls or op.type in CALLS_SUBGRAPHS
        for t in op.inputs:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            tensors.append(t)
            if not t.is_constant and not t.is_variable and id(t) not in made:
                inputs.append(t)
        for t in (op.outputs or []) + (op.intermediates or []):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
            if t is not None:
                made.add(id(t))
    outputs, internal = [], []
    for op in ops:
        for t in op.outputs or []:
            if t is None:
                continue
            (outputs if last_read.get(id(t), -1) >= stop else internal).append(t)
    part = Subgraph(
        name=sg.name, tensors=tensors, inputs=inputs, outputs=outputs, operators=list(ops)
    )
    empty = model.buffers[0] if model.buffers and model.buffers[0].data is None else Buffer()
    buffers = [empty]
    used = {id(empty)}
    for t in tensors:
        if id(t.buffer) not in used:
            used.add(id(t.buffer))
            buffers.append(t.buffer)
    subgraphs = [part] + (model.subgraphs[1:] if calls else [])
    opcodes = list(dict.fromkeys(op.opcode for op in ops))
    sub = Model(
        version=model.version, opcodes=opcodes, subgraphs=subgraphs, buffers=buffers
    )  # buffers and opcodes of carried subgraphs the writer adds as it meets them
    return Segment(sub, start, stop, inputs, outputs, internal)
