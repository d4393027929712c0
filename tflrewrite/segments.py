"""Sub-models of a subgraph's op ranges, so that a model can be run a piece at a time.

A segment is ops [start, stop) of the main subgraph as a model of its own: its inputs are
the non-constant tensors those ops read that no op of the segment makes, its outputs the
tensors it makes that a later op or the graph's outputs read. Ops that compute from
constants alone go into each segment that reads what they make (see Plan). The sub-model shares the
whole model's Tensor, Operator and Buffer objects (nothing here copies weights), so that
building it costs what the segment holds, not what the model holds. Segments that call
other subgraphs (control flow) carry every other subgraph, at their indices.
"""

from __future__ import annotations

from dataclasses import dataclass

from tflrewrite.model import Buffer, Model, Operator, Subgraph, Tensor

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


@dataclass
class Plan:
    """What the segments of one subgraph share, taken once (O(model)): the last op that
    reads each tensor (len(operators) for the graph's outputs), and the ops that compute
    from constants alone (a float16 model's DEQUANTIZE of each weight, say). Those are
    made again inside each segment that reads what they make rather than carried from
    segment to segment: what they make is the same for every sample (weights, a hundred
    samples of them would be the cut's largest tensors), and XNNPACK folds a DEQUANTIZE
    of constants into the op that reads it, leaving its output unwritten when it is a
    segment's output."""

    last_read: dict[int, int]
    derived: dict[int, int]  # id(tensor made from constants alone) -> index of its op


def plan(sg: Subgraph) -> Plan:
    derived: dict[int, int] = {}
    outputs = {id(t) for t in sg.outputs}
    for i, op in enumerate(sg.operators):
        if _from_constants(op, derived) and not any(id(t) in outputs for t in op.outputs if t):
            derived.update({id(t): i for t in op.outputs if t is not None})
    last: dict[int, int] = {}
    for i, op in enumerate(sg.operators):
        for t in op.inputs:
            if t is not None and not t.is_constant and id(t) not in derived:
                last[id(t)] = i
    for t in sg.outputs:
        last[id(t)] = len(sg.operators)
    return Plan(last, derived)


def _from_constants(op: Operator, derived: dict[int, int]) -> bool:
    inputs = [t for t in op.inputs if t is not None]
    return (
        bool(inputs)
        and op.type not in STATEFUL
        and op.type not in CALLS_SUBGRAPHS
        and "RANDOM" not in op.type
        and all(t.is_constant or id(t) in derived for t in inputs)
    )


def stateful(model: Model) -> bool:
    """Whether the main subgraph keeps state between runs (variables): such a model runs
    whole, never in segments."""
    sg = model.subgraphs[0]
    return any(op.type in STATEFUL for op in sg.operators) or any(t.is_variable for t in sg.tensors)


def extract(
    model: Model, start: int, stop: int, *, plan: Plan, keep: frozenset[int] = frozenset()
) -> Segment:
    """Ops [start, stop) of the main subgraph as a model (see the module's docstring),
    with the ops from constants alone that they read from (see Plan); `plan` is
    plan(the main subgraph), taken once for many segments. Tensors it makes whose id is in
    `keep` are outputs too, whether or not a later op reads them."""
    sg = model.subgraphs[0]
    own = [i for i in range(start, stop) if not _derived_op(sg, i, plan)]
    wanted = set(own)
    todo = list(own)
    while todo:  # the constant-only ops these read from, and theirs
        for t in sg.operators[todo.pop()].inputs:
            i = plan.derived.get(id(t)) if t is not None else None
            if i is not None and i not in wanted:
                wanted.add(i)
                todo.append(i)
    ops = [sg.operators[i] for i in sorted(wanted)]  # graph order: producers first
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
            later = plan.last_read.get(id(t), -1) >= stop or id(t) in keep
            shared = id(t) not in plan.derived and later
            (outputs if shared else internal).append(t)
    part = Subgraph(name=sg.name, tensors=tensors, inputs=inputs, outputs=outputs, operators=ops)
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


def _derived_op(sg: Subgraph, i: int, plan: Plan) -> bool:
    outs = [t for t in sg.operators[i].outputs if t is not None]
    return bool(outs) and all(id(t) in plan.derived for t in outs)
