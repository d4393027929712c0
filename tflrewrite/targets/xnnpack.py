"""The XNNPACK target: float weights stored sparse behind DENSIFY ops, so that XNNPACK can run
the model's 1x1 convolutions in its sparse inference mode (the "Fast Sparse ConvNets" path).

What the runtime does, from tensorflow/lite/delegates/xnnpack/xnnpack_delegate.cc and XNNPACK's
src/subgraph.c (xnn_check_nchw_compatibility, xnn_subgraph_rewrite_for_nchw), checked against
ai-edge-litert 2.3.0 with a debugger: on x86-64 with XNNPACK's AVX gate masked
(tests/test_target_xnnpack.py), and once by hand on its aarch64 wheel under qemu-user, where
stock XNNPACK made the same NCHW and SpMM operators for tests' sparse_convnet:
- The delegate unpacks a DENSIFY whose one input is a constant sparse float32/float16 tensor
  (and a float16 -> float32 DEQUANTIZE after it) once, when it takes the graph, and marks the
  result a sparse weight. A delegated partition with a node reading such a weight is created
  with XNN_FLAG_HINT_SPARSE_INFERENCE. Nothing else sets that flag: no option of the Python
  interpreter, no environment variable. The weights must come through DENSIFY.
- With the flag, XNNPACK looks for regions it can run in NCHW layout. A region ends at a MEAN
  over H and W (4-D input) or a DEPTH_TO_SPACE, and grows back through nodes that run in
  NCHW: 1x1 CONV_2D (stride 1, no padding, no dilation, no groups), DEPTHWISE_CONV_2D (3x3
  or 5x5, stride 1 or 2 in both axes, padding k//2 on every side, depth multiplier 1, no
  dilation), FULLY_CONNECTED, MEAN, ADD and MUL of 4-D tensors (a constant operand a scalar
  or a vector), RESIZE_BILINEAR to more than 1x1, and unary elementwise ops on 4-D tensors.
  It must begin at 3x3 stride-2 CONV_2D nodes with padding 1 on every side and 3 input
  channels. A region is dropped when one of its inputs comes from anything else (the
  subgraph's input included), or when a tensor it reads is also read outside it or is a
  subgraph output.
- Padding as XNNPACK sees it: SAME with stride 1 becomes explicit padding (k-1)//2 before and
  the rest after; SAME with stride 2 stays "TensorFlow SAME", which the sparse path refuses;
  a PAD op of zeros on H and W only, read by just one (depthwise) convolution, is folded into
  that convolution's padding (src/subgraph.c, xnn_subgraph_fusion).
- It then counts the zeros of the 1x1 CONV_2D and FULLY_CONNECTED filters of each region, in
  the values it was given: more than 2/3 of them must be zero. The sparse storage is only
  the trigger; XNNPACK reads the zeros, not the format.
- XNNPACK never uses the sparse path on x86 CPUs with AVX: there "dense inference is expected
  to be faster than sparse" (src/xnnpack/hardware-config.h, xnn_is_chw_compatible_config).
  It does on ARM, and on x86 without AVX. And the log line "XNNPACK has switched to sparse
  inference mode!" is compiled out of release builds such as the ai-edge-litert wheels.

Layout, as the TF converter writes a non-FULLY_CONNECTED sparse weight (tensorflow/compiler/
mlir/lite/transforms/dense_to_sparse_pass.cc, PopulateEncodingParams with block size 1 in
every dimension): traversal_order [0 .. rank-1], block_map [], DENSE dim_metadata for every
dimension but the last, which is SPARSE_CSR with segments over the rows formed by the leading
dimensions and the column of each stored value as its index; the buffer holds the nonzero
values in row-major order. The constant keeps its name; a DENSIFY op (version 1) writes the
dense tensor the readers take, and a float16 weight is densified before its DEQUANTIZE.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from tflrewrite.kernels import sparse as kernels
from tflrewrite.model import (
    Conv2DAttrs,
    DimensionMetadata,
    Model,
    Operator,
    Sparsity,
    Subgraph,
    Tensor,
)
from tflrewrite.passes.common import PassResult, weight_stats
from tflrewrite.targets import Target, common
from tflrewrite.targets.cpu import encoded_size
from tflrewrite.weights import Weight, find_weights, record, replace_data

log = logging.getLogger(__name__)

FLOATS = ("FLOAT32", "FLOAT16")

# What a node can do in XNNPACK's layout rewrite (its XNN_LAYOUT_FLAG_COMPATIBLE_* flags).
NCHW, NHWC2NCHW, NCHW2NHWC = 1, 2, 4

# Unary elementwise ops XNNPACK's sparse path takes on 4-D tensors (delegate README).
UNARY = {
    "ABS", "CEIL", "ELU", "FLOOR", "HARD_SWISH", "LEAKY_RELU", "LOGISTIC", "NEG", "RELU",
    "RELU6", "RELU_N1_TO_1", "ROUND", "SQUARE",
}  # fmt: skip
# Ops whose inputs past the first are parameters (axes, sizes, paddings), not values.
FIRST_INPUT_ONLY = {"MEAN", "SUM", "PAD", "RESHAPE", "RESIZE_BILINEAR"}
# Ops whose filter XNNPACK counts zeros of (1x1 convolutions only, for CONV_2D).
COUNTED = {"CONV_2D", "FULLY_CONNECTED"}
# Ops whose float filters this target may store sparse.
FILTER_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}

# File bytes a DENSIFY costs beyond encoded_size's count (which prices a 3-level
# SparsityParameters): the operator table and its two vectors, the dense tensor it writes
# (table, shape vector, name), one more DimensionMetadata for a 4-D weight, and the DENSIFY
# opcode entry. Rounded up; tests/test_target_xnnpack.py checks it bounds the real cost.
DENSIFY_OVERHEAD = 192


@dataclass(frozen=True)
class Options:
    # False: store every float filter sparse wherever that is smaller, qualifying or not
    # (for checking the verdict against the runtime; the CLI always uses True).
    only_sparse_regions: bool = True


@dataclass(eq=False)
class Region:
    """Ops XNNPACK groups into one NCHW region, and whether it would run them sparse."""

    ops: list[Operator]
    ends: bool  # it ends at a MEAN or DEPTH_TO_SPACE
    switched: bool  # XNNPACK would run it in NCHW layout, once the hint is on
    reason: str | None  # why not
    zeros: int = 0  # in the counted filters
    params: int = 0
    filters: list[Tensor] = field(default_factory=list)  # the counted filters, as read
    leak: str | None = None  # why running it NCHW would give wrong results

    @property
    def qualifies(self) -> bool:
        return self.switched and self.ends and self.leak is None

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.params if self.params else 0.0


@dataclass(eq=False)
class Verdict:
    """Whether a subgraph meets XNNPACK's sparse-inference conditions, and if not, why."""

    subgraph: int
    qualifies: bool
    reason: str
    regions: list[Region] = field(default_factory=list)


@dataclass(eq=False)
class _Node:
    op: Operator
    inputs: list[Tensor]  # values XNNPACK sees, after folding a PAD into a convolution
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right from a PAD
    flags: int = 0
    why: str | None = None  # why it cannot run in NCHW layout
    leader: int = 0
    bad: str | None = None  # why its region cannot run in NCHW layout
    ends: bool = False  # it could end a region (MEAN, DEPTH_TO_SPACE)


def run(model: Model, options: Options | None = None) -> PassResult:
    options = options or Options()
    model = model.copy()
    weights, records = find_weights(model)
    for si, sg in enumerate(model.subgraphs):
        verdict = analyze(sg, si)
        log.info("subgraph %d: %s", si, verdict.reason)
        mine = [w for w in weights if w.subgraph == si and w.sparse is None]
        chosen = _chosen_filters(sg, verdict, options)
        for w in weights:
            if w.subgraph == si and w.sparse is not None:
                why = "already stored sparse behind DENSIFY" if w.densify else "stored sparse"
                records.append(record(w, "skipped", why, sparse_inference=verdict.reason))
        densified = 0
        for w in mine:
            why = _not_encodable(sg, w, verdict, chosen)
            if why:
                records.append(record(w, "skipped", why, sparse_inference=verdict.reason))
                continue
            rec = _encode(model, sg, w)
            densified += rec["action"] == "encoded"
            records.append({**rec, "sparse_inference": verdict.reason})
        if verdict.qualifies and not densified:
            log.warning("subgraph %d qualifies, but no filter in it was stored sparse", si)
    return PassResult(model, records)


def check(model: Model) -> list[Verdict]:
    """The verdict for every subgraph of `model`, as it stands."""
    return [analyze(sg, si) for si, sg in enumerate(model.subgraphs)]


# --------------------------------------------------------------------------- the verdict


def analyze(sg: Subgraph, index: int = 0) -> Verdict:
    """Replays XNNPACK's NCHW rewrite on the subgraph: which regions it forms, whether each
    has enough zeros, and the first reason one does not."""
    try:
        return _analyze(sg, index)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        # A damaged graph (missing options, inputs or shapes) is one XNNPACK would refuse
        # too; the target then leaves it dense rather than fail the whole rewrite.
        log.info("subgraph %d: not analysed: %r", index, e)
        why = f"an op lacks the options, inputs or shapes the test needs ({type(e).__name__})"
        return Verdict(index, False, f"does not qualify: {why}")


def _analyze(sg: Subgraph, index: int) -> Verdict:
    roots = _static_roots(sg)
    nodes = _nodes(sg, roots)
    if not any(n.ends for n in nodes):
        why = "it has no MEAN over H and W (4-D input) or DEPTH_TO_SPACE for a region to end at"
        return Verdict(index, False, f"does not qualify: {why}")
    for n in nodes:
        n.flags, n.why = _layout(n, roots)
    regions = _regions(sg, nodes, roots)
    leak = next((r.leak for r in regions if r.leak), None)
    if leak:  # the hint is per subgraph: no region may run sparse if one would go wrong
        return Verdict(index, False, f"does not qualify: {leak}", regions)
    good = [r for r in regions if r.qualifies]
    if good:
        best = max(good, key=lambda r: r.params)
        why = (
            f"qualifies: a region of {len(best.ops)} ops whose {len(best.filters)} 1x1 CONV_2D"
            f" and FULLY_CONNECTED filters are {best.zero_fraction:.1%} zeros (XNNPACK needs "
            "more than 2/3); XNNPACK runs it sparse on ARM and on x86 without AVX, not on "
            "x86 CPUs with AVX"
        )
        return Verdict(index, True, why, regions)
    ends = [r for r in regions if r.ends]
    best = max(ends, key=lambda r: (r.params, len(r.ops)))
    return Verdict(index, False, f"does not qualify: {best.reason}", regions)


def _static_roots(sg: Subgraph) -> dict[int, Tensor]:
    """Tensors XNNPACK sees as static data, by id, mapped to the constant they come from: the
    constants, and what a DENSIFY or DEQUANTIZE of static data writes (unpacked once)."""
    roots = {id(t): t for t in sg.tensors if t.is_constant}
    for op in sg.operators:
        if op.type not in ("DENSIFY", "DEQUANTIZE") or len(op.inputs) != 1:
            continue
        src, out = op.inputs[0], op.outputs[0] if len(op.outputs) == 1 else None
        if src is not None and out is not None and id(src) in roots and out.dtype in FLOATS:
            roots[id(out)] = roots[id(src)]
    return roots


def _nodes(sg: Subgraph, roots: dict[int, Tensor]) -> list[_Node]:
    readers = sg.consumers()
    outputs = {id(t) for t in sg.outputs}
    folded: dict[int, Operator] = {}  # PAD output id -> the PAD folded into its reader
    for op in sg.operators:
        if op.type == "PAD" and _zero_spatial_pad(op, roots):
            out = op.outputs[0]
            users = readers.get(id(out), [])
            if (
                len(users) == 1
                and id(out) not in outputs
                and users[0].type in ("CONV_2D", "DEPTHWISE_CONV_2D")
                and users[0].inputs[0] is out
                and not _tf_same(users[0])
            ):
                folded[id(out)] = op
    nodes = []
    for op in sg.operators:
        if all(t is not None and id(t) in roots for t in op.outputs):
            continue  # unpacks static data: no node
        if op.type == "PAD" and id(op.outputs[0]) in folded:
            continue
        inputs = [t for t in op.inputs if t is not None]
        pad = (0, 0, 0, 0)
        if inputs and id(inputs[0]) in folded:
            pad_op = folded[id(inputs[0])]
            (top, bottom), (left, right) = _pad_amounts(pad_op, roots)[1:3].tolist()
            pad, inputs = (top, bottom, left, right), [pad_op.inputs[0], *inputs[1:]]
        node = _Node(op, inputs, pad)
        node.ends = op.type == "DEPTH_TO_SPACE" or (
            op.type in ("MEAN", "SUM") and bool(inputs) and _rank(inputs[0]) == 4
        )
        nodes.append(node)
    return nodes


def _pad_amounts(op: Operator, roots: dict[int, Tensor]) -> np.ndarray | None:
    paddings = roots.get(id(op.inputs[1])) if len(op.inputs) > 1 and op.inputs[1] else None
    if paddings is None or paddings.data is None or paddings.data.size != 8:
        return None
    return np.asarray(paddings.data).reshape(4, 2).astype(np.int64)


def _zero_spatial_pad(op: Operator, roots: dict[int, Tensor]) -> bool:
    amounts = _pad_amounts(op, roots)
    x = op.inputs[0]
    return (
        amounts is not None
        and x is not None
        and x.dtype in FLOATS
        and _rank(x) == 4
        and not amounts[0].any()
        and not amounts[3].any()
        and bool((amounts >= 0).all())
    )


def _rank(t: Tensor | None) -> int:
    return len(t.shape) if t is not None and t.shape is not None else -1


def _tf_same(op: Operator) -> bool:
    """SAME padding with a stride other than 1: XNNPACK keeps TensorFlow's SAME there."""
    a = op.attrs
    return isinstance(a, Conv2DAttrs) and a.padding == "SAME" and a.stride != (1, 1)


def _name(op: Operator) -> str:
    """The op and its output's name, up to the first ';' (converters join fused names)."""
    out = op.outputs[0] if op.outputs and op.outputs[0] is not None else None
    return f"{op.type} {out.name.split(';')[0]!r}" if out is not None else op.type


def _layout(n: _Node, roots: dict[int, Tensor]) -> tuple[int, str | None]:
    """n's layout flags, and why it has none (xnn_check_nchw_compatibility)."""
    op = n.op
    values = (n.inputs[:1] if op.type in FIRST_INPUT_ONLY else n.inputs) + op.outputs
    odd = sorted({t.dtype for t in values if t is not None and t.dtype not in FLOATS})
    if odd:
        return 0, f"{'/'.join(odd)} tensors: XNNPACK's sparse path is float only"
    dynamic = [t for t in n.inputs if id(t) not in roots]
    if op.type == "CONV_2D":
        return _conv_layout(n)
    if op.type == "DEPTHWISE_CONV_2D":
        return _depthwise_layout(n)
    if op.type == "FULLY_CONNECTED":
        return NCHW, None
    if op.type in ("MEAN", "SUM"):
        axes = _pad_or_axes(op, roots)
        if _rank(n.inputs[0]) != 4:
            return 0, f"{op.type} of a {_rank(n.inputs[0])}-D tensor (4-D needed)"
        if op.type == "MEAN" and axes is not None and sorted(axes % 4) != [1, 2]:
            return 0, f"MEAN over axes {sorted(axes.tolist())} (the sparse path reduces H and W)"
        return NCHW | NCHW2NHWC, None
    if op.type == "DEPTH_TO_SPACE":
        return NCHW2NHWC, None
    if op.type in ("ADD", "MUL"):
        if len(n.inputs) != 2 or any(_rank(t) != 4 for t in n.inputs):
            return 0, f"{op.type} of tensors that are not both 4-D"
        for t in n.inputs:
            if id(t) in roots and sum(d != 1 for d in t.shape) > 1:
                return 0, f"{op.type} with a constant that is neither a scalar nor a vector"
        return NCHW, None
    if op.type == "RESIZE_BILINEAR":
        shape = n.inputs[0].shape or ()
        if len(shape) == 4 and shape[1] > 1 and shape[2] > 1:
            return NCHW, None
        return 0, "RESIZE_BILINEAR of a 1-pixel-high or -wide input"
    if op.type in UNARY:
        if len(dynamic) == 1 and _rank(dynamic[0]) == 4:
            return NCHW, None
        return 0, f"{op.type} of a tensor that is not 4-D"
    return 0, f"XNNPACK does not run {op.type} in NCHW layout"


def _pad_or_axes(op: Operator, roots: dict[int, Tensor]) -> np.ndarray | None:
    t = roots.get(id(op.inputs[1])) if len(op.inputs) > 1 and op.inputs[1] else None
    return None if t is None or t.data is None else np.asarray(t.data).reshape(-1)


def _geometry(n: _Node) -> tuple[int, int, tuple[int, int, int, int], bool, tuple, tuple]:
    """Kernel height and width, padding (top, bottom, left, right) as XNNPACK sees it, whether
    TensorFlow SAME stays, strides and dilations."""
    a, w = n.op.attrs, n.op.inputs[1]
    kh, kw = (w.shape[1], w.shape[2]) if w is not None and _rank(w) == 4 else (0, 0)
    stride, dilation = a.stride, a.dilation
    pad, same = list(n.pad), False
    if a.padding == "SAME":
        if stride == (1, 1):
            th, tw = (kh - 1) * dilation[0], (kw - 1) * dilation[1]
            extra = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
            pad = [a + b for a, b in zip(pad, extra)]
        else:
            same = True
    return kh, kw, tuple(pad), same, stride, dilation


def _conv_layout(n: _Node) -> tuple[int, str | None]:
    kh, kw, pad, same, stride, dilation = _geometry(n)
    x, w = n.inputs[0], n.op.inputs[1]
    cin = w.shape[3] if _rank(w) == 4 else 0
    if _rank(x) == 4 and cin and x.shape[3] != cin:
        return 0, f"a grouped CONV_2D ({x.shape[3] // cin} groups)"
    if dilation != (1, 1):
        return 0, f"CONV_2D with dilation {dilation}"
    if (kh, kw) == (1, 1):
        if any(pad):
            return 0, f"1x1 CONV_2D with padding {pad} (the sparse path takes none)"
        if stride != (1, 1):
            return 0, f"1x1 CONV_2D with stride {stride} (the sparse path takes stride 1)"
        return NCHW, None
    if (kh, kw) == (3, 3):
        if same:
            why = "SAME padding with stride 2, which XNNPACK keeps as TensorFlow SAME"
            return 0, f"3x3 CONV_2D with {why} (pad 1 with a PAD op and use VALID)"
        if pad != (1, 1, 1, 1):
            return 0, f"3x3 CONV_2D with padding {pad} (the sparse path needs 1 on every side)"
        if stride != (2, 2):
            return 0, f"3x3 CONV_2D with stride {stride} (the sparse path needs 2)"
        if cin != 3:
            return 0, f"3x3 CONV_2D on {cin} input channels (the sparse path needs 3)"
        return NHWC2NCHW, None
    return 0, f"a {kh}x{kw} CONV_2D (the sparse path takes 1x1, and 3x3 stride 2 to start)"


def _depthwise_layout(n: _Node) -> tuple[int, str | None]:
    kh, kw, pad, same, stride, dilation = _geometry(n)
    x, w = n.inputs[0], n.op.inputs[1]
    if dilation != (1, 1):
        return 0, f"DEPTHWISE_CONV_2D with dilation {dilation}"
    if same:
        why = "SAME padding with stride 2, which XNNPACK keeps as TensorFlow SAME"
        return 0, f"DEPTHWISE_CONV_2D with {why} (pad with a PAD op and use VALID)"
    if _rank(x) == 4 and _rank(w) == 4 and w.shape[3] != x.shape[3]:
        return 0, "DEPTHWISE_CONV_2D with a depth multiplier other than 1"
    if stride[0] != stride[1] or stride[0] not in (1, 2):
        return 0, f"DEPTHWISE_CONV_2D with stride {stride} (the sparse path takes 1 or 2)"
    if kh != kw or kh not in (3, 5):
        return 0, f"a {kh}x{kw} DEPTHWISE_CONV_2D (the sparse path takes 3x3 and 5x5)"
    if pad != (kh // 2,) * 4:
        return 0, (
            f"{kh}x{kw} DEPTHWISE_CONV_2D with padding {pad} "
            f"(the sparse path needs {kh // 2} on every side)"
        )
    return NCHW, None


def _regions(sg: Subgraph, nodes: list[_Node], roots: dict[int, Tensor]) -> list[Region]:
    """xnn_subgraph_rewrite_for_nchw over the nodes: grow regions back from their ends, drop
    those fed from outside or read from outside, then count zeros."""
    producer = {id(t): k for k, n in enumerate(nodes) for t in n.op.outputs if t is not None}
    external = {id(t) for t in sg.inputs} | {id(t) for t in sg.outputs}
    for k, n in enumerate(nodes):
        n.leader = k

    def dynamic(n: _Node) -> list[Tensor]:
        return [t for t in n.inputs if id(t) not in roots]

    def join(k: int, t: Tensor) -> bool:
        n = nodes[k]
        if id(t) in external or id(t) not in producer:
            n.bad = n.bad or (
                f"{_name(n.op)} reads the subgraph input {t.name!r}; a region must begin at a "
                "3x3 stride-2 CONV_2D on 3 channels"
            )
            return False
        p = nodes[producer[id(t)]]
        if p.flags & (NHWC2NCHW | NCHW) and not p.bad:
            p.flags &= ~NCHW2NHWC
            if p.leader != n.leader:
                p.leader = n.leader = max(p.leader, n.leader)
                return True
            return False
        n.bad = n.bad or p.bad or f"{_name(p.op)} cannot run in NCHW layout: {p.why}"
        return False

    update = False
    for k, n in enumerate(nodes):
        if n.flags & NCHW2NHWC:
            for t in dynamic(n):
                update |= join(k, t)
    started = update  # XNNPACK stops here when no region end took in a producer
    while update:
        update = False
        for k, n in enumerate(nodes):
            if n.bad or not n.flags & (NCHW | NCHW2NHWC):
                continue
            for t in dynamic(n):
                update |= join(k, t)
    for n in nodes:
        lead = nodes[n.leader]
        lead.bad = lead.bad or n.bad

    members: dict[int, list[_Node]] = {}
    for n in nodes:
        members.setdefault(n.leader, []).append(n)
    readers: dict[int, list[_Node]] = {}
    for n in nodes:
        for t in n.inputs:
            readers.setdefault(id(t), []).append(n)
    outputs = {id(t) for t in sg.outputs}
    regions = []
    for _, group in sorted(members.items()):
        if len(group) > 1 or group[0].ends:
            regions.append(_region(group, readers, outputs, roots, started))
    return regions


def _region(
    group: list[_Node],
    readers: dict[int, list[_Node]],
    outputs: set[int],
    roots: dict[int, Tensor],
    started: bool,
) -> Region:
    active = [n for n in group if n.flags & (NCHW | NCHW2NHWC)]
    reason = next((n.bad for n in group if n.bad), None)
    if reason is None:  # every tensor the region reads must be read only inside it
        for n in active:
            for t in n.inputs:
                if id(t) in roots:
                    continue
                others = [r for r in readers[id(t)] if r not in active]
                if others or id(t) in outputs:
                    where = _name(others[0].op) if others else "the subgraph's outputs"
                    reason = f"{t.name!r} is read inside the region and by {where}"
                    break
            if reason:
                break
    zeros = params = 0
    filters = []
    for n in group:
        w = n.op.inputs[1] if len(n.op.inputs) > 1 else None
        if n.op.type not in COUNTED or w is None or id(w) not in roots:
            continue
        if n.op.type == "CONV_2D" and (_rank(w) != 4 or max(w.shape[1], w.shape[2]) != 1):
            continue
        count = w.shape[0] * w.shape[-1]
        zeros, params = zeros + count - _nonzeros(roots[id(w)]), params + count
        filters.append(w)
    if reason is None and not params:
        reason = "its region has no 1x1 CONV_2D or FULLY_CONNECTED filter"
    if reason is None and zeros * 3 <= params * 2:
        reason = (
            f"the 1x1 CONV_2D and FULLY_CONNECTED filters of its region are {zeros / params:.1%}"
            " zeros; XNNPACK runs sparse only above 2/3 (prune them further)"
        )
    if reason is None and not started:
        reason = "no region end (MEAN, DEPTH_TO_SPACE) reads an op that runs in NCHW layout"
    region = Region([n.op for n in group], any(n.ends for n in group), reason is None, reason)
    region.zeros, region.params, region.filters = zeros, params, filters
    if region.switched:
        region.leak = _leak(group, active, readers, outputs)
    return region


def _leak(
    group: list[_Node], active: list[_Node], readers: dict[int, list[_Node]], outputs: set[int]
) -> str | None:
    """An op of a region XNNPACK switches to NCHW whose 4-D output is read outside it.
    XNNPACK lays that op's input out NCHW but its output NHWC, and computes it wrongly
    (seen with ai-edge-litert 2.3.0: outputs 19% off). Region ends write NHWC by design."""
    for n in active:
        if n.flags & NCHW2NHWC:
            continue
        for t in n.op.outputs:
            shape = t.shape if t is not None else None
            if shape is None or len(shape) != 4 or shape[1] * shape[2] == 1:
                continue
            outside = [r for r in readers.get(id(t), []) if r not in group]
            if outside or id(t) in outputs:
                where = _name(outside[0].op) if outside else "the subgraph's outputs"
                return (
                    f"XNNPACK would also run {_name(n.op)} in NCHW layout while {where} reads "
                    "its output as NHWC, which it computes wrongly"
                )
    return None


def _nonzeros(t: Tensor) -> int:
    """Nonzero values a static filter stands for (a sparse constant stores only values)."""
    values = t.data
    if values is None:
        return 0
    if values.dtype == np.float16:  # -0.0 is zero, as xnn_float16_is_zero has it
        return int(np.count_nonzero(values.view(np.uint16) & 0x7FFF))
    return int(np.count_nonzero(values))


# --------------------------------------------------------------------------- the storage


def _chosen_filters(sg: Subgraph, verdict: Verdict, options: Options) -> set[int]:
    """Ids of the tensors (as the ops read them) whose constants this target may encode."""
    if options.only_sparse_regions:
        ops = [op for r in verdict.regions if r.qualifies for op in r.ops]
    else:
        ops = list(sg.operators)
    return {id(op.inputs[1]) for op in ops if op.type in FILTER_OPS and len(op.inputs) > 1}


def _not_encodable(sg: Subgraph, w: Weight, verdict: Verdict, chosen: set[int]) -> str | None:
    t = w.tensor
    read_as = [dq.outputs[0] for dq in w.dequantize] if w.dequantize else [t]
    if not any(id(x) in chosen for x in read_as):
        if not verdict.qualifies:
            return f"left dense: the subgraph {verdict.reason}"
        return "outside the region XNNPACK runs sparse: sparse storage would only shrink the file"
    if t.dtype not in FLOATS:
        return f"{t.dtype} weights: XNNPACK's sparse inference is float only"
    refusal = common.refusal(w, sg)
    if refusal:
        return refusal
    reading = common.readers(sg, t)
    if w.dequantize:
        if any(op.type != "DEQUANTIZE" for op in reading):
            return "read by ops other than its DEQUANTIZE"
        if any(dq.outputs[0].dtype != "FLOAT32" for dq in w.dequantize):
            return "its DEQUANTIZE does not write float32"
    elif any(op.type not in FILTER_OPS or op.inputs.index(t) != 1 for op in reading):
        return "read by an op other than as a convolution or FULLY_CONNECTED filter"
    if t.dtype == "FLOAT16" and not w.dequantize:
        return "float16 filter read without a DEQUANTIZE"
    return None


def csr_sparsity(shape: tuple[int, ...], segments: np.ndarray, indices: np.ndarray) -> Sparsity:
    """SparsityParameters of a tensor whose leading dimensions are dense and whose last is
    SPARSE_CSR (the converter's random sparsity), with the narrowest index dtypes."""
    seg = segments.astype(kernels.smallest_index_dtype(int(segments[-1])))
    top = int(indices.max()) if indices.size else 0
    idx = indices.astype(kernels.smallest_index_dtype(top))
    dims = [DimensionMetadata("DENSE", dense_size=int(d)) for d in shape[:-1]]
    dims.append(DimensionMetadata("SPARSE_CSR", segments=seg, indices=idx))
    return Sparsity(
        traversal_order=np.arange(len(shape), dtype=np.int32),
        block_map=np.zeros(0, np.int32),
        dim_metadata=dims,
    )


def _encode(model: Model, sg: Subgraph, w: Weight) -> dict:
    t = w.tensor
    dense = t.data
    rows, cols = math.prod(t.shape[:-1]), t.shape[-1]
    segments, indices, values = kernels.block_csr_encode(dense.reshape(rows, cols), 1)
    stats = weight_stats(w.channels(dense))
    sizes = {"nonzeros": int(indices.size), "elements": int(dense.size)}
    sizes["bytes_before"] = t.buffer.nbytes
    if indices.size == 0:
        why = "every value is zero: an empty buffer would read as a non-constant tensor"
        return record(w, "skipped", why, **sizes)
    after = encoded_size(segments, indices, values.nbytes) + DENSIFY_OVERHEAD + len(t.name)
    sizes["bytes_after"] = after
    if after >= sizes["bytes_before"]:
        why = (
            f"not smaller: {after:,} bytes sparse behind DENSIFY against "
            f"{sizes['bytes_before']:,} dense ({indices.size:,} of {dense.size:,} nonzero)"
        )
        return record(w, "skipped", why, **sizes)
    replace_data(model, w, values.reshape(-1))
    t.sparsity = csr_sparsity(t.shape, segments, indices)
    out = Tensor(
        f"{t.name}_densified",
        t.dtype,
        t.shape,
        buffer=model.empty_buffer(),
        shape_signature=t.shape_signature,
    )
    sg.tensors.append(out)
    densify = Operator(model.opcode("DENSIFY", 1), [t], [out])
    readers = w.dequantize or [op for op in sg.operators if any(x is t for x in op.inputs)]
    for op in readers:
        op.inputs = [out if x is t else x for x in op.inputs]
    first = min(sg.operators.index(op) for op in readers)
    sg.operators.insert(first, densify)
    dims = t.sparsity.dim_metadata[-1]
    return record(
        w,
        "encoded",
        **sizes,
        layout="CSR on the last axis behind DENSIFY",
        index_dtypes=[str(dims.segments.dtype), str(dims.indices.dtype)],
        before=stats,
        after=stats,
    )


TARGET = Target(name="xnnpack", run=run)
