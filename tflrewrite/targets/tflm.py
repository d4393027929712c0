"""The TensorFlow Lite Micro target: clustered weights stored as lookup-table compression
(bit-packed indices plus value tables) that TFLM's DECODE operator expands at run time.

Format (tensorflow/lite/micro/compression/decode.py and lut.py, "TFLM DECODE Operator
Design", May 2025; the decoder is tensorflow/lite/micro/kernels/decode.cc and
decode_state_lut.cc). Checked against the interpreter of the `tflite-micro` package,
version 0.dev20261023182759, which decodes this form; tests/test_target_tflm.py runs it.

- A CUSTOM operator with custom_code "TFLM_DECODE" (builtin code 32 in both opcode fields),
  no options, is placed right before each operator that reads a compressed weight. Its
  inputs come in pairs (encoded tensor, ancillary tensor), one output per pair: a tensor
  with no buffer and the weight's dtype, shape and quantization ("tflm_decoded_N"), which
  the reader reads instead of the weight. TFLM keeps a DECODE output alive only until the
  next operator, so every reader gets its own DECODE (one DECODE per reader decodes all
  the weights it reads).
- Encoded tensor: the weight's own tensor (its name kept), now UINT8, shape [bytes], no
  quantization, holding the indices in the weight's row-major element order, `bits`
  (1..7) bits each, most significant bit first, with no padding between channels
  (kernels/bitpack.py).
- Ancillary tensor ("tflm_lut_N"): UINT8, shape [bytes]: a 16-byte DECODE Common Metadata
  header, then the value tables. Short names, because a name is paid for in every weight
  and fused weight names run to 200 bytes.
    byte 0     decode type: 0 = lookup table
    byte 1     DCM version: 1
    bytes 2-3  reserved, 0
    byte 4     LUT version: 1
    byte 5     bits 2-0: index width; bits 7-4: table axis, 15 = one table (see below)
    byte 6     value table stride: elements from one channel's table to the next
    bytes 7-15 reserved, 0
    bytes 16+  the tables, in the weight's dtype, each `stride` elements long
- How the decoder splits a weight into channels (decode_state_lut.cc, Setup): by its
  quantization, not by byte 5: as many channels as the weight has scales; a channel is a
  contiguous run when the quantized dimension is 0, every C-th element when it is the last
  dimension (depthwise weights), and any other dimension is refused. A per-tensor quantized
  weight (or a float weight) is one channel, so per-channel tables there would silently
  decode with channel 0's. Channel c reads the table at c * stride elements: stride 0 makes
  every channel read the one table. This interpreter ignores the axis bits; newer format
  readers take 15 to mean one table, which is what stride 0 writes too.

Each weight gets the smaller of two layouts: one table shared by all channels (stride 0),
or one table per decoder channel (stride = the longest table); the index width is the
fewest bits that address the longest table. A weight stays dense when it needs more than 7
bits, or when the encoded form with its graph overhead is not smaller.

int16 activations (--quantize int16x8): TFLM lacks some of the int16 kernels LiteRT has
(INT16_GAPS). The target's quantize step keeps those ops float; a model that already has
them in int16 is refused. Its RELU6 does not rescale (TIED): the quantize step gives its
input and output one scale, and an integer model where they differ is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tflrewrite.errors import UsageError
from tflrewrite.kernels import bitpack
from tflrewrite.model import Model, Operator, Subgraph, Tensor
from tflrewrite.passes.common import PassResult, weight_stats
from tflrewrite.targets import Target, common
from tflrewrite.weights import Weight, find_weights, record, replace_data

DECODE = "TFLM_DECODE"

DCM_SIZE = 16
LUT_DECODE_TYPE = 0
DCM_VERSION = 1
LUT_VERSION = 1
ONE_TABLE_AXIS = 0xF
MAX_BITS = 7  # byte 5 holds the width in 3 bits

# Weight dtypes this target encodes: those find_weights yields that the decoder's value
# tables hold (decode_state_lut.cc, Decode: bool, float32, int8, int16, int32, int64).
TABLE_DTYPES = ("INT8", "FLOAT32")

# The ops of quantize_graph.INT16_OPS that TFLM cannot run with int16 activations, checked
# by running each in the interpreter of the tflite-micro package above against LiteRT
# (tests/test_quantize_int16.py); every other op there runs within 80 dB of LiteRT.
INT16_GAPS = {
    # kernels/gather.cc: "Type 'INT16' is not supported by gather"
    ("INT16", "GATHER"): "tflite-micro has no int16 GATHER",
    # kernels/resize_bilinear.cc: "Output type is 7, requires float or int8"
    ("INT16", "RESIZE_BILINEAR"): "tflite-micro has no int16 RESIZE_BILINEAR",
}

# tflite-micro's RELU6 clamps the input's integers to the input's 0 and 6 and writes them
# as they are: it never rescales to the output's parameters, which LiteRT's kernel does.
# With the output's own (narrower) range it was 4 dB against LiteRT in int8 and 8 dB in
# int16 on the test model; with one scale from input to output both agree with LiteRT.
TIED = frozenset({("INT8", "RELU6"), ("INT16", "RELU6")})

# Flatbuffer bytes the graph edit costs beyond the encoded and ancillary data, measured on
# written models (tests/test_target_tflm.py checks the bound) so that a weight is encoded
# only when the file really gets smaller: the ancillary tensor (64) with its buffer entry
# (16), the alignment padding of two buffers (30) and a margin; per reader a DECODE
# operator (32) and its output tensor (80); once per model the TFLM_DECODE opcode entry.
# Quantization parameters move from the weight to the first decoded tensor; later readers
# pay for a copy.
ANCILLARY_OVERHEAD = 128
DECODE_OVERHEAD = 112
OPCODE_OVERHEAD = 64


@dataclass
class Lut:
    """A weight as lookup tables and bit-packed indices into them."""

    bits: int
    tables: np.ndarray  # (tables, entries) in the weight's dtype; entries == stride unless shared
    stride: int  # 0: every channel reads the one table
    axis: int  # the format's table axis: ONE_TABLE_AXIS, or the quantized dimension
    packed: np.ndarray  # uint8

    def ancillary(self) -> np.ndarray:
        header = np.zeros(DCM_SIZE, np.uint8)
        header[0], header[1] = LUT_DECODE_TYPE, DCM_VERSION
        header[4] = LUT_VERSION
        header[5] = (self.axis << 4) | self.bits
        header[6] = self.stride
        tables = np.ascontiguousarray(self.tables).reshape(-1).view(np.uint8)
        return np.concatenate([header, tables])

    @property
    def nbytes(self) -> int:
        return int(self.packed.size) + DCM_SIZE + int(self.tables.nbytes)


def run(model: Model) -> PassResult:
    common.refuse_integer_gaps(model, INT16_GAPS, "tflm")
    _refuse_rescaling(model)
    model = model.copy()
    records = common.densify(model, "TFLite Micro has no DENSIFY kernel")
    weights, skipped = find_weights(model)
    records += skipped
    decodes: dict[int, Operator] = {}  # by id(reader): the DECODE placed before it
    for w in weights:
        sg = model.subgraphs[w.subgraph]
        reading = common.readers(sg, w.tensor)
        reason = _not_encodable(w, sg, reading)
        lut = None
        if reason is None:
            lut = plan(w.tensor)
            if isinstance(lut, str):
                reason, lut = lut, None
        if lut is None:
            records.append(record(w, "skipped", reason))
            continue
        number = sum(r["action"] == "encoded" for r in records)
        records.append(_encode(model, sg, w, lut, reading, decodes, number))
    for sg in model.subgraphs:
        place_decodes(sg, decodes)
    return PassResult(model, records)


def estimate_bytes(
    w: Weight,
    stored: np.ndarray,
    *,
    subgraph: Subgraph,
    readers: list[Operator],
    quantize_mode: str | None,
) -> int:
    """File bytes of `w` holding the candidate values `stored` (groups x rows x d) as
    lookup tables: the smaller layout (one shared table, or a table per channel where the
    decoder splits `w` by quantization channel), or dense when it needs more than
    MAX_BITS index bits."""
    quantized = w.tensor.dtype == "INT8" or quantize_mode in ("int8", "int16x8", "int8-weights")
    channels = stored[0] if stored.shape[0] == 1 else stored[:, 0, :]
    n = stored.size
    best = stored.nbytes
    layouts = [(np.unique(stored).size, 1)]
    if quantized and _channel_tables(w.tensor):
        layouts.append((max(np.unique(row).size for row in channels), channels.shape[0]))
    for entries, tables in layouts:
        bits = max(1, int(np.ceil(np.log2(max(entries, 2)))))
        if bits <= MAX_BITS:
            best = min(best, -(-n * bits // 8) + entries * tables * stored.itemsize + DCM_SIZE)
    return best


def _channel_tables(t: Tensor) -> bool:
    """Whether the decoder could give a quantized weight a table per channel: only along
    int8 per-channel quantization (a float weight gets the quantize step's, per channel)."""
    if t.dtype != "INT8":
        return True
    channels = decoder_channels(t)
    return isinstance(channels, tuple) and channels[0] > 1


def decoder_channels(t: Tensor) -> tuple[int, bool] | str:
    """(channels, interleaved) as the decoder splits `t`: one channel per quantization scale,
    interleaved when quantized along the last dimension; a reason when it refuses `t`."""
    q = t.quantization
    if q is None or not q.is_affine:
        return 1, False
    rank = len(t.shape)
    channels = int(q.scale.size)
    if channels > 1 and rank > 0 and q.axis == rank - 1:
        return channels, True
    if q.axis != 0:
        return f"quantized along dimension {q.axis}: the decoder takes 0 or the last one"
    return channels, False


def plan(t: Tensor, shared: bool | None = None) -> Lut | str:
    """The smaller lookup-table form of constant `t` (or, with `shared`, the one shared
    table or the per-channel tables), or why it has none."""
    split = decoder_channels(t)
    if isinstance(split, str):
        return split
    channels, interleaved = split
    keys = _keys(t.data)
    candidates = []
    if shared is not False:
        candidates.append(_shared(keys, channels))
    if channels > 1 and not shared:
        candidates.append(_per_channel(keys, channels, interleaved, t.quantization.axis))
    if not candidates:
        return "one channel: per-channel tables are one table"
    fitting = [c for c in candidates if c.bits <= MAX_BITS]
    if not fitting:
        tables = "one table" if len(candidates) == 1 else "the best tables"
        entries = min(c.tables.shape[1] for c in candidates)
        return (
            f"{entries} distinct values in {tables}: indices would need "
            f"{min(c.bits for c in candidates)} bits, the decoder takes at most {MAX_BITS}"
        )
    best = min(fitting, key=lambda c: c.nbytes)  # ties: the shared table, listed first
    best.tables = best.tables.view(t.np_dtype)
    return best


def decode(lut: Lut, shape: tuple[int, ...], channels: int, interleaved: bool) -> np.ndarray:
    """The values the decoder produces from `lut` (the inverse of plan, for checks)."""
    count = int(np.prod(shape))
    indices = bitpack.unpack(lut.packed, lut.bits, count).astype(np.intp)
    flat = lut.tables.reshape(-1)
    if lut.stride == 0:
        return flat[indices].reshape(shape)
    channel = (
        np.arange(count) % channels if interleaved else np.arange(count) // (count // channels)
    )
    return flat[channel * lut.stride + indices].reshape(shape)


def _keys(values: np.ndarray) -> np.ndarray:
    """Values as unsigned integers of the same width: float tables then keep -0.0 apart
    from +0.0 and every NaN payload, so decoding gives back the very same bits."""
    return np.ascontiguousarray(values).reshape(-1).view(f"u{values.dtype.itemsize}")


def _bits(entries: int) -> int:
    return max(1, (entries - 1).bit_length())


def _shared(keys: np.ndarray, channels: int) -> Lut:
    table, indices = np.unique(keys, return_inverse=True)
    bits = _bits(table.size)
    packed = bitpack.pack(indices, bits) if bits <= MAX_BITS else np.zeros(0, np.uint8)
    stride = 0 if channels > 1 else table.size
    return Lut(bits, table.reshape(1, -1), stride, ONE_TABLE_AXIS, packed)


def _per_channel(keys: np.ndarray, channels: int, interleaved: bool, axis: int) -> Lut:
    rows = keys.reshape(-1, channels).T if interleaved else keys.reshape(channels, -1)
    # Every row's sorted values at once: a value's index is the number of distinct values
    # before it in its row, and the row's table holds each distinct value at its index.
    order = np.argsort(rows, axis=1, kind="stable")
    ranked = np.take_along_axis(rows, order, axis=1)
    rank = np.zeros(rows.shape, np.int64)
    np.cumsum(ranked[:, 1:] != ranked[:, :-1], axis=1, out=rank[:, 1:])
    stride = int(rank[:, -1].max()) + 1 if rows.size else 1
    tables = np.zeros((channels, stride), keys.dtype)
    tables[np.arange(channels)[:, None], rank] = ranked
    bits = _bits(stride)
    if bits > MAX_BITS:
        return Lut(bits, tables, stride, axis, np.zeros(0, np.uint8))
    indices = np.empty(rows.shape, np.uint8)
    np.put_along_axis(indices, order, rank.astype(np.uint8), axis=1)
    flat = indices.T.reshape(-1) if interleaved else indices.reshape(-1)
    return Lut(bits, tables, stride, axis, bitpack.pack(flat, bits))


def graph_overhead(t: Tensor, readers: int, first: bool) -> int:
    """Upper bound of the file bytes the graph edit adds for a weight read by `readers`
    operators; `first` when the model has no DECODE opcode yet (see ANCILLARY_OVERHEAD)."""
    q = t.quantization
    copies = 0
    if q is not None:
        arrays = (q.scale, q.zero_point, q.min, q.max)
        copies = 32 + sum(4 + a.nbytes for a in arrays if a is not None)
    opcode = OPCODE_OVERHEAD if first else 0
    return opcode + ANCILLARY_OVERHEAD + readers * DECODE_OVERHEAD + (readers - 1) * copies


def _refuse_rescaling(model: Model) -> None:
    """Refuse a model whose integer RELU6 (TIED) needs a rescale, which tflite-micro's
    kernel would skip."""
    for sg in model.subgraphs:
        for op in sg.operators:
            x, y = (op.inputs[:1] + [None])[0], (op.outputs[:1] + [None])[0]
            if x is None or y is None or (x.dtype, op.type) not in TIED:
                continue
            if not _same_params(x, y):
                raise UsageError(
                    f"--target tflm: tflite-micro's {op.type} does not rescale, and "
                    f"{y.name!r} has other quantization parameters than its input; "
                    "quantize the float model with --target tflm, which ties them"
                )


def _same_params(a: Tensor, b: Tensor) -> bool:
    qa, qb = a.quantization, b.quantization
    if qa is None or qb is None:
        return qa is qb
    return np.array_equal(qa.scale, qb.scale) and np.array_equal(qa.zero_point, qb.zero_point)


def _not_encodable(w: Weight, sg: Subgraph, readers: list[Operator]) -> str | None:
    t = w.tensor
    if w.dequantize:
        return "read through DEQUANTIZE: left as stored"
    if t.dtype not in TABLE_DTYPES:
        return f"{t.dtype} weights: this target writes tables of {' or '.join(TABLE_DTYPES)}"
    refusal = common.refusal(w, sg)
    if refusal:
        return refusal
    if not readers:
        return "no operator reads it"
    if not t.shape:
        return "a scalar: the decoder does not take scalars"
    return None


def _encode(
    model: Model,
    sg: Subgraph,
    w: Weight,
    lut: Lut,
    readers: list[Operator],
    decodes: dict[int, Operator],
    number: int,
) -> dict:
    t = w.tensor
    before = t.buffer.nbytes
    first = not any(oc.custom_code == DECODE for oc in model.opcodes)
    overhead = graph_overhead(t, len(readers), first)
    split = decoder_channels(t)
    sizes = {
        "bits": lut.bits,
        "tables": "shared" if lut.stride == 0 or lut.tables.shape[0] == 1 else "per channel",
        "table_entries": int(lut.tables.shape[1]),
        "channels": split[0],
        "bytes_before": before,
        "bytes_after": lut.nbytes,
    }
    if lut.nbytes + overhead >= before:
        return record(
            w,
            "skipped",
            f"not smaller: {lut.nbytes:,} bytes of indices and tables and about "
            f"{overhead:,} of graph against {before:,} dense",
            **sizes,
        )
    stats = weight_stats(w.channels(t.data))
    done = record(w, "encoded", **sizes, decode_ops=len(readers), before=stats, after=stats)
    insert_decode(
        model, sg, w, lut=lut, readers=readers, decodes=decodes, number=number
    )  # the weight becomes UINT8
    return done


def insert_decode(
    model: Model,
    sg: Subgraph,
    w: Weight,
    *,
    lut: Lut,
    readers: list[Operator],
    decodes: dict[int, Operator],
    number: int,
) -> None:
    """Turn the weight into `lut`'s encoded tensor, add its ancillary tensor, and give each
    reader a decoded tensor from the DECODE op before it (in `decodes`, by id(reader);
    place_decodes puts them in the operator list). `number` names the new tensors."""
    t = w.tensor
    table_bytes = lut.ancillary()
    ancillary = Tensor(
        f"tflm_lut_{number}", "UINT8", (table_bytes.size,), buffer=model.add_buffer(table_bytes)
    )
    sg.tensors.append(ancillary)
    opcode = model.opcode("CUSTOM", 1, DECODE)
    for k, op in enumerate(readers):
        name = f"tflm_decoded_{number}" + (f"_{k}" if len(readers) > 1 else "")
        decoded = Tensor(
            name,
            t.dtype,
            t.shape,
            buffer=model.empty_buffer(),
            shape_signature=t.shape_signature,
            quantization=t.quantization,
            has_rank=t.has_rank,
            extra=t.extra,
        )
        sg.tensors.append(decoded)
        decode_op = decodes.setdefault(id(op), Operator(opcode, [], []))
        decode_op.inputs += [t, ancillary]
        decode_op.outputs.append(decoded)
        op.inputs = [decoded if x is t else x for x in op.inputs]
    replace_data(model, w, lut.packed, dtype="UINT8", quantization=None)
    t.shape, t.shape_signature = (lut.packed.size,), None


def place_decodes(sg: Subgraph, decodes: dict[int, Operator]) -> None:
    """Each DECODE right before the operator it feeds."""
    ordered: list[Operator] = []
    for op in sg.operators:
        decode_op = decodes.get(id(op))
        if decode_op is not None:
            ordered.append(decode_op)
        ordered.append(op)
    sg.operators = ordered


TARGET = Target(
    name="tflm",
    run=run,
    unsupported=INT16_GAPS,
    tied=TIED,
    estimate_bytes=estimate_bytes,
    bytes_hint="",
)
