"""The oldest TFLite runtime that builtin operators need; the `min_runtime_version` bytes."""

from __future__ import annotations

from collections.abc import Iterable

# Facts carried over (as data, restated here) from TensorFlow:
#   tensorflow/compiler/mlir/lite/tools/versioning/runtime_version.cc
#       (tensorflow/tensorflow at commit 03f49db5a23ec2b22a59f3f3d72e5744469ea30b):
#       the (builtin operator, op version) -> minimum runtime version table, how versions are
#       compared, and how the string is written into the metadata buffer;
#   tensorflow/compiler/mlir/lite/flatbuffer_export.cc:
#       the buffer width the converter reserves for that metadata entry.

# Name of the Model.metadata entry whose buffer holds the version string.
METADATA_NAME = "min_runtime_version"

# The converter reserves a buffer of this many bytes, all NUL, and later writes the version
# string at its start. A string this long or longer is not written at all (the buffer stays
# all NUL), so at most WIDTH - 1 characters fit and at least one NUL always follows them.
WIDTH = 16

# Per builtin operator, the minimum runtime version of each op version, in op-version order
# starting from 1 (or from _FIRST_OP_VERSION[op] where the table starts later).
_BY_OP: dict[str, tuple[str, ...]] = {
    "ABS": ("1.13.0", "2.4.0", "2.5.0", "2.6.0", "2.12.0"),
    "ADD": ("1.5.0", "1.14.0", "2.4.0", "2.6.0", "2.13.0", "2.23.0"),
    "ADD_N": ("1.14.0",),
    "ARG_MAX": ("1.9.0", "1.14.0", "2.9.0"),
    "ARG_MIN": ("1.9.0", "1.14.0", "2.9.0"),
    "ASSIGN_VARIABLE": ("2.6.0",),
    "ATAN2": ("2.10.0",),
    "AVERAGE_POOL_2D": ("1.5.0", "1.14.0", "2.3.0"),
    "BATCH_MATMUL": ("2.3.0", "2.3.0", "2.4.0", "2.5.0"),
    "BATCH_TO_SPACE_ND": ("1.6.0", "1.14.0", "2.3.0", "2.12.0"),
    "BIDIRECTIONAL_SEQUENCE_LSTM": ("1.14.0", "1.14.0", "1.14.0"),
    "BIDIRECTIONAL_SEQUENCE_RNN": ("1.14.0", "1.14.0", "2.3.0"),
    "BITCAST": ("2.13.0",),
    "BITWISE_XOR": ("2.13.0",),
    "BROADCAST_ARGS": ("2.6.0",),
    "BROADCAST_TO": ("2.5.0", "2.5.0"),  # op versions 2 and 3; version 1 has no entry
    "BUCKETIZE": ("2.8.0",),
    "CALL_ONCE": ("2.5.0",),
    "CAST": ("1.5.0", "2.7.0", "2.8.0", "2.9.0", "2.12.0", "2.15.0", "2.17.0", "2.21.0"),
    "CEIL": ("1.14.0",),
    "COMPLEX_ABS": ("2.5.0",),
    "CONCATENATION": ("1.5.0", "1.14.0", "2.3.0", "2.14.0", "2.21.0"),
    "CONV_2D": ("1.5.0", "1.14.0", "1.14.0", "2.3.0", "2.4.0", "2.9.0", "2.11.0", "2.15.0"),
    "CONV_3D": ("2.5.0",),
    "CONV_3D_TRANSPOSE": ("2.6.0",),
    "COS": ("1.14.0",),
    "CUMSUM": ("2.4.0",),
    "DENSIFY": ("2.2.0",),
    "DEPTH_TO_SPACE": ("2.1.0", "2.5.0"),
    "DEPTHWISE_CONV_2D": ("1.5.0", "1.12.0", "1.14.0", "2.2.0", "2.3.0", "2.3.0", "2.11.0"),
    "DEQUANTIZE": ("1.13.1", "1.14.0", "1.15.0", "2.2.0", "2.7.0", "2.18.0", "2.21.0", "2.22.0"),
    "DILATE": ("2.15.0",),
    "DIV": ("1.6.0", "2.3.0"),
    "DYNAMIC_UPDATE_SLICE": ("2.9.0", "2.17.0", "2.19.0", "2.20.0", "2.21.0", "2.22.0"),
    "ELU": ("1.14.0",),
    "EMBEDDING_LOOKUP": ("1.13.0", "1.14.0", "1.14.0", "2.18.0", "2.21.0"),
    "EMBEDDING_LOOKUP_SPARSE": ("1.5.0",),
    "EQUAL": ("1.14.0", "1.14.0", "2.3.0", "2.13.0", "2.21.0"),
    "EXP": ("1.7.0", "2.12.0"),
    "EXPAND_DIMS": ("1.10.0",),
    "FAKE_QUANT": ("1.5.0", "1.10.0"),
    "FILL": ("1.13.0", "2.3.0", "2.5.0", "2.12.0"),
    "FLOOR": ("1.9.0",),
    "FLOOR_DIV": ("1.14.0", "1.14.0", "2.13.0"),
    "FLOOR_MOD": ("1.13.0", "2.13.0"),
    "FULLY_CONNECTED": (
        "1.5.0",
        "1.10.0",
        "1.14.0",
        "1.14.0",
        "2.0.0",
        "2.1.0",
        "2.3.0",
        "2.3.0",
        "2.3.0",
        "2.11.0",
        "2.15.0",
        "2.17.0",
        "2.18.0",
        "2.21.0",
    ),
    "GATHER": ("1.6.0", "1.14.0", "1.15.0", "2.4.0", "2.5.0", "2.13.0", "2.15.0"),
    "GATHER_ND": ("1.14.0", "2.3.0", "2.5.0", "2.13.0", "2.16.0"),
    "GELU": ("2.9.0", "2.9.0"),
    "GREATER": ("1.14.0", "1.14.0"),
    "GREATER_EQUAL": ("1.14.0", "1.14.0", "2.13.0"),
    "HARD_SWISH": ("1.15.0",),
    "HASHTABLE": ("2.5.0",),
    "HASHTABLE_FIND": ("2.5.0",),
    "HASHTABLE_IMPORT": ("2.5.0",),
    "HASHTABLE_LOOKUP": ("1.5.0",),
    "HASHTABLE_SIZE": ("2.5.0",),
    "IF": ("1.15.0",),
    "IMAG": ("2.5.0",),
    "L2_NORMALIZATION": ("1.5.0", "1.14.0"),
    "L2_POOL_2D": ("1.5.0",),
    "LEAKY_RELU": ("1.13.1", "2.3.0"),
    "LESS": ("1.14.0", "1.14.0", "2.13.0"),
    "LESS_EQUAL": ("1.14.0", "1.14.0"),
    "LOCAL_RESPONSE_NORMALIZATION": ("1.5.0",),
    "LOG": ("1.14.0", "2.15.0"),
    "LOG_SOFTMAX": ("1.14.0", "1.14.0"),
    "LOGICAL_AND": ("1.11.0",),
    "LOGICAL_NOT": ("1.11.0",),
    "LOGICAL_OR": ("1.11.0",),
    "LOGISTIC": ("1.14.0", "1.14.0", "2.3.0"),
    "LSH_PROJECTION": ("1.5.0",),
    "LSTM": ("1.7.0", "1.10.0", "1.14.0", "2.3.0"),
    "MATRIX_DIAG": ("1.14.0",),
    "MATRIX_SET_DIAG": ("1.14.0",),
    "MAX_POOL_2D": ("1.5.0", "1.14.0", "2.3.0"),
    "MAXIMUM": ("1.14.0", "1.14.0", "2.3.0", "2.3.0"),
    "MEAN": ("1.6.0", "1.14.0", "2.4.0"),
    "MINIMUM": ("1.14.0", "1.14.0", "2.3.0", "2.3.0"),
    "MIRROR_PAD": ("1.13.1", "2.3.0", "2.12.0"),
    "MUL": ("1.5.0", "1.14.0", "1.15.0", "2.3.0", "2.6.0", "2.11.0", "2.13.0", "2.23.0"),
    "MULTINOMIAL": ("2.8.0",),
    "NEG": ("1.9.0",),
    "NON_MAX_SUPPRESSION_V4": ("2.1.0",),
    "NON_MAX_SUPPRESSION_V5": ("2.1.0",),
    "NOT_EQUAL": ("1.14.0", "1.14.0", "2.3.0", "2.21.0"),
    "ONE_HOT": ("1.11.0",),
    "PACK": ("1.11.0", "1.14.0", "2.3.0", "2.13.0"),
    "PAD": ("1.5.0", "1.14.0", "2.4.0", "2.6.0", "2.20.0"),
    "PADV2": ("1.9.0", "1.14.0", "2.4.0", "2.6.0", "2.20.0"),
    "POW": ("1.10.0",),
    "PRELU": ("1.8.0",),
    "QUANTIZE": ("1.14.0", "1.15.0", "2.7.0", "2.21.0", "2.21.0", "2.21.0"),
    "RANDOM_STANDARD_NORMAL": ("2.8.0",),
    "RANDOM_UNIFORM": ("2.8.0",),
    "RANGE": ("1.13.0", "2.14.0"),
    "RANK": ("1.14.0",),
    "READ_VARIABLE": ("2.6.0",),
    "REAL": ("2.5.0",),
    "REDUCE_ALL": ("2.6.0",),
    "REDUCE_ANY": ("1.11.0",),
    "REDUCE_MAX": ("1.11.0", "1.14.0", "2.5.0"),
    "REDUCE_MIN": ("1.11.0", "1.14.0", "2.5.0"),
    "REDUCE_PROD": ("1.11.0", "2.6.0"),
    "REDUCE_WINDOW": ("2.15.0",),
    "RELU": ("1.5.0", "2.1.0", "2.5.0"),
    "RELU6": ("1.5.0", "1.14.0", "2.5.0"),
    "RELU_0_TO_1": ("2.10.0",),
    "RELU_N1_TO_1": ("1.5.0",),
    "RESHAPE": ("1.5.0",),
    "RESIZE_BILINEAR": ("1.7.0", "1.14.0", "2.2.0", "2.5.0"),
    "RESIZE_NEAREST_NEIGHBOR": ("1.13.1", "1.14.0", "2.3.0", "2.4.0"),
    "REVERSE_SEQUENCE": ("1.14.0",),
    "REVERSE_V2": ("1.14.0", "2.2.0", "2.5.0"),
    "RFFT2D": ("2.5.0",),
    "RIGHT_SHIFT": ("2.13.0",),
    "RNN": ("1.5.0", "1.14.0", "2.3.0"),
    "ROUND": ("1.14.0",),
    "RSQRT": ("1.10.0", "2.5.0", "2.15.0"),
    "SCATTER_ND": ("2.1.0",),
    "SEGMENT_SUM": ("2.2.0",),
    "SELECT": ("1.14.0", "1.14.0", "2.12.0", "2.12.0"),
    "SELECT_V2": ("2.2.0", "2.12.0"),
    "SHAPE": ("1.10.0",),
    "SIGN": ("2.11.0", "2.12.0"),
    "SIN": ("1.9.0",),
    "SKIP_GRAM": ("1.5.0",),
    "SLICE": ("1.14.0", "1.14.0", "1.14.0", "2.4.0", "2.5.0", "2.14.0", "2.21.0"),
    "SOFTMAX": ("1.5.0", "1.14.0", "2.3.0"),
    "SPACE_TO_BATCH_ND": ("1.6.0", "1.14.0", "2.3.0", "2.12.0"),
    "SPACE_TO_DEPTH": ("1.5.0", "1.14.0"),
    "SPARSE_TO_DENSE": ("1.9.0", "1.14.0", "1.15.0"),
    "SPLIT": ("1.5.0", "1.14.0", "1.14.0", "2.3.0"),
    "SPLIT_V": ("1.13.1", "2.3.0"),
    "SQRT": ("1.10.0", "2.21.0"),
    "SQUARE": ("1.12.0",),
    "SQUARED_DIFFERENCE": ("1.13.1", "2.5.0"),
    "SQUEEZE": ("1.6.0", "2.5.0"),
    "STABLEHLO_ADD": ("2.16.0",),
    "STABLEHLO_AND": ("2.17.0",),
    "STABLEHLO_CASE": ("2.17.0",),
    "STABLEHLO_CBRT": ("2.17.0",),
    "STABLEHLO_COMPOSITE": ("2.17.0",),
    "STABLEHLO_GATHER": ("2.16.0",),
    "STABLEHLO_MAXIMUM": ("2.16.0",),
    "STABLEHLO_MINIMUM": ("2.16.0",),
    "STABLEHLO_MULTIPLY": ("2.16.0",),
    "STABLEHLO_PAD": ("2.16.0",),
    "STABLEHLO_REDUCE_WINDOW": ("2.16.0",),
    "STABLEHLO_RNG_BIT_GENERATOR": ("2.15.0",),
    "STABLEHLO_SCATTER": ("2.15.0",),
    "STABLEHLO_SHIFT_LEFT": ("2.17.0",),
    "STRIDED_SLICE": ("1.6.0", "1.14.0", "2.1.0", "2.2.0", "2.5.0", "2.6.0", "2.14.0", "2.14.0"),
    "SUB": ("1.6.0", "1.14.0", "2.3.0", "2.4.0", "2.4.0"),
    "SUM": ("1.10.0", "1.15.0"),
    "SVDF": ("1.5.0", "1.14.0", "2.2.0", "2.3.0"),
    "TANH": ("1.14.0", "1.14.0", "2.3.0"),
    "TILE": ("1.10.1", "2.2.0", "2.8.0"),
    "TOPK_V2": ("1.7.0", "1.14.0", "2.13.0"),
    "TRANSPOSE": ("1.6.0", "1.14.0", "1.15.0", "2.3.0", "2.4.0", "2.12.0", "2.14.4", "2.22.0"),
    "TRANSPOSE_CONV": ("1.9.0", "2.2.0", "2.3.0", "2.13.0", "2.15.0"),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("1.13.1", "1.14.0", "2.3.0", "2.12.0"),
    "UNIDIRECTIONAL_SEQUENCE_RNN": ("1.14.0", "1.14.0", "2.3.0"),
    "UNIQUE": ("1.14.0",),
    "UNPACK": ("1.11.0", "1.14.0", "2.2.0", "2.3.0", "2.22.0"),
    "UNSORTED_SEGMENT_MAX": ("2.10.0",),
    "UNSORTED_SEGMENT_MIN": ("2.11.0",),
    "UNSORTED_SEGMENT_PROD": ("2.10.0",),
    "UNSORTED_SEGMENT_SUM": ("2.10.0",),
    "VAR_HANDLE": ("2.6.0",),
    "WHERE": ("1.14.0", "2.8.0"),
    "WHILE": ("1.15.0",),
    "ZEROS_LIKE": ("1.12.0",),
}

# The table has no entry for BROADCAST_TO version 1: that op was withdrawn and re-added
# under a new builtin code, so its entries begin at version 2.
_FIRST_OP_VERSION: dict[str, int] = {"BROADCAST_TO": 2}

# (builtin operator name, op version) -> oldest runtime version that runs it.
MIN_RUNTIME: dict[tuple[str, int], str] = {
    (op, _FIRST_OP_VERSION.get(op, 1) + i): runtime
    for op, runtimes in _BY_OP.items()
    for i, runtime in enumerate(runtimes)
}


def version_key(version: str) -> tuple[int, ...]:
    """Sort key for a dotted version string: its parts as integers ("1.10.0" > "1.9.0").

    A version that extends another with equal leading parts sorts after it ("2.3" < "2.3.0"),
    as upstream orders them. Raises ValueError for a part that is not a decimal number.
    """
    parts = version.split(".")
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"not a dotted numeric version: {version!r}")
    return tuple(int(p) for p in parts)


def min_runtime_version(ops: Iterable[tuple[str, int]]) -> str | None:
    """Highest runtime version any of the (builtin operator name, op version) pairs needs.

    Pairs the table does not know (custom ops, unlisted operators or versions) are skipped;
    None when no pair is known.
    """
    best: str | None = None
    for op in ops:
        needed = MIN_RUNTIME.get((op[0], op[1]))
        if needed is not None and (best is None or version_key(needed) > version_key(best)):
            best = needed
    return best


def encode_min_runtime_version(version: str) -> bytes:
    """The exact WIDTH bytes the converter stores for `version`: its ASCII text, then NULs.

    An empty string gives WIDTH NULs (what the converter leaves when no operator is known).
    Raises ValueError for a string that is not ASCII, holds a NUL, or has WIDTH or more
    characters (the converter would not write such a string at all).
    """
    try:
        data = version.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"runtime version is not ASCII: {version!r}") from None
    if b"\0" in data:
        raise ValueError(f"runtime version holds a NUL byte: {version!r}")
    if len(data) >= WIDTH:
        raise ValueError(
            f"runtime version {version!r} has {len(data)} characters; at most {WIDTH - 1} fit"
        )
    return data.ljust(WIDTH, b"\0")


def decode_min_runtime_version(data: bytes) -> str:
    """The version string held in a `min_runtime_version` buffer: its text up to the first NUL.

    Accepts a buffer of any length (older or hand-made models may not use WIDTH bytes);
    raises ValueError when the text is not ASCII.
    """
    text = bytes(data).split(b"\0", 1)[0]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"min_runtime_version buffer is not ASCII: {bytes(data)!r}") from None


def update_min_runtime_version(model) -> str | None:  # noqa: ANN001 - a tflrewrite Model
    """Recompute a model's `min_runtime_version` metadata from the operators it uses, for
    passes that raise op versions. The entry is only ever raised (the table may lack ops the
    converter knew), and only written if the model has one already. Returns the version the
    model now declares, or None when it declares none."""
    entry = model.metadata_entry(METADATA_NAME)
    if entry is None:
        return None
    used = {(op.opcode.name, op.opcode.version) for sg in model.subgraphs for op in sg.operators}
    needed = min_runtime_version(used)
    data = entry.buffer.data.tobytes() if entry.buffer.data is not None else b""
    try:
        current = decode_min_runtime_version(data)
        current_key = version_key(current) if current else None
    except ValueError:  # an unreadable entry is replaced
        current, current_key = "", None
    if needed is None or (current_key is not None and current_key >= version_key(needed)):
        return current or None
    model.set_metadata(METADATA_NAME, encode_min_runtime_version(needed))
    return needed
