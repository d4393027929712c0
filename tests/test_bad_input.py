"""Bad input: every file that is not a model tflrewrite can read ends in one clear line on
stderr naming the file, exit code 2, no traceback, no output file, the input untouched; and
no input makes it hang or allocate far beyond the file's size.

Hand-made cases (one per kind of damage, each through `audit` and the rewrite command),
then a seeded corpus of mutated and truncated corpus models run in-process under a time
limit with Python's allocations measured (tracemalloc sees numpy's arrays too), and some
of them again as real processes under an address-space limit: those also run the rewrite's
LiteRT verify step, which can only be watched from outside (a crash there kills the
process). Last, names that are not UTF-8, which must survive the table, verify and the
report.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb

from tflrewrite import reader
from tflrewrite.cli import main

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ running the CLI


class Hang(BaseException):
    """Raised by SIGALRM: a BaseException so that no `except Exception` can swallow it."""


# The rewrite these tests run: a lossless copy, read and written back (the default recipe
# would refuse an int8 model, before any of the writing these tests watch).
COPY = ["--recipe", "identity"]
TIME_LIMIT_S = 10.0  # a healthy case takes well under 0.2 s; a hang takes forever
MiB = 1 << 20


def allocation_limit(file_size: int) -> int:
    """The most Python (and numpy) may allocate at once to read, audit or rewrite a file,
    once the modules are imported (see `warm_imports`). Measured on every corpus model:
    at most 4 bytes per file byte on the large ones (audit holds the file, a copy to zip
    and the zip) and 0.4 MiB on the small ones, whose graph tables dominate. 16 per byte
    and 32 MiB leave room for that; a blow-up is orders of magnitude beyond."""
    return 16 * file_size + 32 * MiB


def run_cli(argv: list[str]) -> tuple[int, str, str, int]:
    """main(argv) in-process: (exit code, stdout, stderr, peak bytes allocated).
    Anything escaping main (an exception, a Hang) propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise Hang(f"{argv} ran over {TIME_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    tracing = tracemalloc.is_tracing()  # e.g. python -X tracemalloc: leave it running
    if tracing:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    try:
        signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        if not tracing:
            tracemalloc.stop()
    return code, out.getvalue(), err.getvalue(), peak


def assert_one_line(err: str, path: str | os.PathLike) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"want one line on stderr, got {err!r}"
    line = lines[0]
    assert line.startswith("tflrewrite: "), line
    assert os.fspath(path) in line, f"{line!r} does not name {os.fspath(path)!r}"
    assert "Traceback" not in line
    return line


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_refused(path: Path, problem: str, tmp_path: Path, default_output=True) -> None:
    """`audit PATH`, `PATH -o OUT` and `PATH` (default output): each exit 2, one stderr
    line naming PATH and matching `problem`, nothing on stdout, no file written anywhere,
    the input unchanged."""
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "out.tflite"
    before = path.read_bytes() if path.is_file() and os.access(path, os.R_OK) else None
    folders = {d: listing(d) for d in {path.parent, out_dir} if d.is_dir()}
    commands = [["audit", str(path)], [str(path), "-o", str(out), *COPY]]
    if default_output:
        commands.append([str(path), *COPY])
    for argv in commands:
        code, stdout, stderr, _ = run_cli(argv)
        assert code == 2, f"{argv}: exit {code}, stderr {stderr!r}"
        line = assert_one_line(stderr, path)
        assert re.search(problem, line), f"{argv}: {line!r} does not say {problem!r}"
        assert stdout == "", f"{argv}: partial output {stdout!r}"
        assert not out.exists()
        for d, names in folders.items():
            assert listing(d) == names, f"{argv}: files appeared in {d}"
        if before is not None:
            assert path.read_bytes() == before


# ------------------------------------------------------------------ building bad models


@pytest.fixture(scope="session")
def warm_imports(tf_models, tmp_path_factory) -> None:
    """Both commands once on a good model, so that measured peaks leave out importing the
    modules they load on first use (about 16 MiB, the passes and their kernels)."""
    good = tf_models["int8_full"]
    out = tmp_path_factory.mktemp("warm") / "out.tflite"
    for argv in (["audit", str(good)], [str(good), "-o", str(out), "--no-verify", *COPY]):
        assert run_cli(argv)[0] == 0


@pytest.fixture(scope="session")
def base_bytes(tf_models, warm_imports) -> bytes:
    """A small quantized model: one subgraph, weights, metadata."""
    return tf_models["int8_full"].read_bytes()


def pack(model: fb.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def edited(data: bytes, edit) -> bytes:
    """The model in `data`, unpacked with the schema's object API, changed by `edit`,
    packed again."""
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    edit(model)
    return pack(model)


def constant_tensor(model: fb.ModelT, rank: int = 1) -> fb.TensorT:
    sg = model.subgraphs[0]
    return next(
        t
        for t in sg.tensors
        if model.buffers[t.buffer].data is not None
        and len(model.buffers[t.buffer].data) > 16
        and len(t.shape) >= rank
    )


def vector_length_at(data: bytes, where: str) -> int:
    """The file offset of the uint32 length that prefixes a vector (or string) in `data`,
    found through the schema's raw tables. Field slots are the schema's vtable offsets."""
    m = fb.Model.GetRootAs(data, 0)
    sg = m.Subgraphs(0)
    weight = next(i for i in range(m.BuffersLength()) if m.Buffers(i).DataLength() > 16)
    op = sg.Operators(0)
    tables = {
        "model.operator_codes": (m, 6),
        "model.subgraphs": (m, 8),
        "model.buffers": (m, 12),
        "subgraph.tensors": (sg, 4),
        "subgraph.inputs": (sg, 6),
        "subgraph.operators": (sg, 10),
        "operator.inputs": (op, 6),
        "tensor.shape": (sg.Tensors(0), 4),
        "tensor.name": (sg.Tensors(0), 10),
        "buffer.data": (m.Buffers(weight), 4),
    }
    table, slot = tables[where]
    field = table._tab.Offset(slot)
    assert field, f"{where} is absent from the test model"
    return table._tab.Vector(field) - 4  # Vector() is where the elements start


def patch_u32(data: bytes, at: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, at, value)
    return bytes(out)


# ------------------------------------------------------------------ hand-made cases


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data,problem",
    [
        (b"", r"empty file"),
        (b"hello, this is a text file\nand not a model\n", r"not a TFLite model"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), r"not a TFLite model"),
        (b"TFL", r"too short"),
        (b"\x10\x00\x00\x00TFL2" + bytes(64), r"file identifier"),
        (b"\x00\x00\x00\x00TFL3", r"root table offset points into the header"),
    ],
    ids=["empty", "text", "png", "three-bytes", "identifier-TFL2", "identifier-only"],
)
def test_not_a_model(tmp_path, data, problem):
    assert_refused(write(tmp_path, "bad.tflite", data), problem, tmp_path)


def test_bad_file_identifier(tmp_path, base_bytes):
    data = base_bytes[:4] + b"TFL2" + base_bytes[8:]
    assert_refused(write(tmp_path, "m.tflite", data), r"file identifier b'TFL2'", tmp_path)


@pytest.mark.parametrize("root", [10**6, 0xFFFFFFFF, None], ids=["past", "max", "size"])
def test_root_offset_past_the_end(tmp_path, base_bytes, root):
    data = patch_u32(base_bytes, 0, len(base_bytes) if root is None else root)
    assert_refused(write(tmp_path, "m.tflite", data), r"root table offset", tmp_path)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.25, 0.5, 0.75, 0.95])
def test_truncated(tmp_path, base_bytes, fraction):
    cut = max(12, int(len(base_bytes) * fraction))
    path = write(tmp_path, "m.tflite", base_bytes[:cut])
    assert_refused(path, r"corrupt|past the end|no subgraphs|no buffers", tmp_path)


def test_truncated_by_one_byte_is_still_never_a_traceback(tmp_path, base_bytes):
    # The last bytes of a flatbuffer may be padding nothing refers to: a refusal or a
    # success, but either is clean.
    path = write(tmp_path, "m.tflite", base_bytes[:-1])
    code, _, stderr, _ = run_cli(["audit", str(path)])
    assert code in (0, 2)
    if code == 2:
        assert_one_line(stderr, path)


def _bad_buffer_index(m):
    constant_tensor(m).buffer = len(m.buffers) + 5


def _bad_tensor_index(m):
    m.subgraphs[0].operators[0].inputs[0] = len(m.subgraphs[0].tensors) + 7


def _bad_input_index(m):
    m.subgraphs[0].inputs[0] = 12345


def _bad_output_index(m):
    m.subgraphs[0].outputs[0] = -5


def _bad_opcode_index(m):
    m.subgraphs[0].operators[0].opcodeIndex = len(m.operatorCodes) + 3


def _unknown_builtin(m):
    m.operatorCodes[0].builtinCode = 250
    m.operatorCodes[0].deprecatedBuiltinCode = 127


def _unknown_tensor_type(m):
    m.subgraphs[0].tensors[0].type = 100


def _data_size_mismatch(m):
    # one more row of a weight, on an axis other than the one its scales run along
    t = constant_tensor(m, rank=2)
    axis = t.quantization.quantizedDimension if t.quantization else -1
    grow = next(a for a in reversed(range(len(t.shape))) if a != axis)
    t.shape = np.array([int(d) + (a == grow) for a, d in enumerate(t.shape)], np.int32)


def _negative_dimension(m):
    m.subgraphs[0].tensors[0].shape = np.array([1, -3], np.int32)


def per_axis_tensor(m: fb.ModelT, rank: int = 1) -> fb.TensorT:
    return next(
        t
        for t in m.subgraphs[0].tensors
        if t.quantization is not None
        and t.quantization.scale is not None
        and len(t.quantization.scale) > 1
        and len(t.shape) >= rank
    )


def _quantized_axis_out_of_range(m):
    # found by the corpus below: the audit's per-channel counts failed in numpy
    t = per_axis_tensor(m)
    t.quantization.quantizedDimension = len(t.shape) + 20


def _scales_for_another_axis(m):
    t = per_axis_tensor(m, rank=2)
    t.quantization.quantizedDimension = next(
        a for a, d in enumerate(t.shape) if d != len(t.quantization.scale)
    )


def _zero_points_missing(m):
    t = per_axis_tensor(m)
    t.quantization.zeroPoint = t.quantization.zeroPoint[:1]


def _bad_signature_subgraph(m):
    m.signatureDefs = [fb.SignatureDefT()]
    m.signatureDefs[0].subgraphIndex = 4


def _no_subgraphs(m):
    m.subgraphs = []


def _no_buffers(m):
    m.buffers = []


def _bad_metadata_buffer(m):
    m.metadata[0].buffer = 999


def _opcode_version_zero(m):
    m.operatorCodes[0].version = 0


EDITS = {
    "buffer-index": (_bad_buffer_index, r"refers to buffer \d+; the model has \d+"),
    "tensor-index": (_bad_tensor_index, r"refers to tensor \d+; the subgraph has \d+"),
    "input-index": (_bad_input_index, r"input refers to tensor 12345"),
    "output-index": (_bad_output_index, r"output refers to tensor -5"),
    "opcode-index": (_bad_opcode_index, r"uses operator code \d+; the model has \d+"),
    "unknown-builtin-250": (_unknown_builtin, r"unknown builtin code 250"),
    "unknown-tensor-type": (_unknown_tensor_type, r"unknown type code 100"),
    "data-size-vs-shape": (_data_size_mismatch, r"holds \d+ bytes of data but shape"),
    "negative-dimension": (_negative_dimension, r"negative dimension"),
    "quantized-axis": (_quantized_axis_out_of_range, r"quantized along axis 2\d but has"),
    "quantized-axis-count": (_scales_for_another_axis, r"quantization scales for the \d+"),
    "zero-points": (_zero_points_missing, r"\d+ quantization scales but 1 zero points"),
    "signature-subgraph": (_bad_signature_subgraph, r"signature 0 refers to subgraph 4"),
    "no-subgraphs": (_no_subgraphs, r"no subgraphs"),
    "no-buffers": (_no_buffers, r"no buffers"),
    "metadata-buffer": (_bad_metadata_buffer, r"metadata 0 refers to buffer 999"),
    "opcode-version-0": (_opcode_version_zero, r"has version 0"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_inconsistent_model(tmp_path, base_bytes, case):
    edit, problem = EDITS[case]
    assert_refused(write(tmp_path, "m.tflite", edited(base_bytes, edit)), problem, tmp_path)


def _string_tensor(m: fb.ModelT) -> tuple[fb.TensorT, np.ndarray]:
    """A constant STRING tensor and its packed data: int32 count, count + 1 int32 offsets."""
    for sg in m.subgraphs:
        for t in sg.tensors:
            data = m.buffers[t.buffer].data
            if t.type == fb.TensorType.STRING and data is not None and len(data) > 8:
                packed = np.array(data, np.uint8)
                m.buffers[t.buffer].data = packed
                return t, packed
    raise AssertionError("no constant string tensor")


def _set_i32(packed: np.ndarray, index: int, value: int) -> None:
    packed[4 * index : 4 * index + 4] = np.frombuffer(struct.pack("<i", value), np.uint8)


STRING_EDITS = {
    # LiteRT loads these unchecked and its kernels read where the offsets point (found by
    # the corpus below: a SIGBUS in the rewrite's verify step)
    "offset-past-the-end": (lambda t, d: _set_i32(d, 2, 0x7FFFFFFF), r"malformed string"),
    "huge-count": (lambda t, d: _set_i32(d, 0, 0x7FFFFFFF), r"malformed string"),
    "negative-count": (lambda t, d: _set_i32(d, 0, -1), r"malformed string"),
    "first-offset": (lambda t, d: _set_i32(d, 1, 0), r"malformed string"),
    "offsets-go-back": (lambda t, d: _set_i32(d, 2, 4), r"malformed string"),
    "count-vs-shape": (
        lambda t, d: setattr(t, "shape", np.array([int(np.prod(t.shape)) + 1], np.int32)),
        r"holds \d+ strings but has shape",
    ),
}


@pytest.mark.parametrize("case", sorted(STRING_EDITS))
def test_malformed_string_data(tmp_path, tf_models, case):
    edit, problem = STRING_EDITS[case]

    def damage(m):
        edit(*_string_tensor(m))

    data = edited(tf_models["string_and_variables"].read_bytes(), damage)
    assert_refused(write(tmp_path, "m.tflite", data), problem, tmp_path)


def test_edited_model_without_damage_is_read(base_bytes):
    # the edits above start from a model that packs back to a readable one
    assert reader.read_bytes(edited(base_bytes, lambda m: None)).subgraphs


VECTORS = [
    "model.operator_codes",
    "model.subgraphs",
    "model.buffers",
    "subgraph.tensors",
    "subgraph.inputs",
    "subgraph.operators",
    "operator.inputs",
    "tensor.shape",
    "tensor.name",
    "buffer.data",
]


@pytest.mark.parametrize("length", [0x7FFFFFF0, 0xFFFFFFFF, None], ids=["2G", "4G", "size"])
@pytest.mark.parametrize("where", VECTORS)
def test_vector_length_that_lies(tmp_path, base_bytes, where, length):
    at = vector_length_at(base_bytes, where)
    data = patch_u32(base_bytes, at, len(base_bytes) if length is None else length)
    path = write(tmp_path, "m.tflite", data)
    assert_refused(path, r"corrupt|past the end", tmp_path)
    _, _, _, peak = run_cli(["audit", str(path)])
    assert peak < allocation_limit(len(data))


def repeating_model(subgraphs: int, tensors: int, dims: int) -> bytes:
    """A model whose vector entries repeat one table: `subgraphs` entries naming one
    subgraph, whose `tensors` entries name one tensor, whose sparsity lists `dims` entries
    naming one dimension. Legal-looking offsets, a few kilobytes, but unpacked naively it
    is subgraphs x tensors x dims objects."""
    b = flatbuffers.Builder(1024)
    fb.DimensionMetadataStart(b)
    fb.DimensionMetadataAddDenseSize(b, 1)
    dim = fb.DimensionMetadataEnd(b)
    fb.SparsityParametersStartDimMetadataVector(b, dims)
    for _ in range(dims):
        b.PrependUOffsetTRelative(dim)
    dim_vector = b.EndVector()
    fb.SparsityParametersStart(b)
    fb.SparsityParametersAddDimMetadata(b, dim_vector)
    sparsity = fb.SparsityParametersEnd(b)
    shape = b.CreateNumpyVector(np.array([1, 4], np.int32))
    fb.TensorStart(b)
    fb.TensorAddShape(b, shape)
    fb.TensorAddType(b, fb.TensorType.FLOAT32)
    fb.TensorAddSparsity(b, sparsity)
    tensor = fb.TensorEnd(b)
    fb.SubGraphStartTensorsVector(b, tensors)
    for _ in range(tensors):
        b.PrependUOffsetTRelative(tensor)
    tensor_vector = b.EndVector()
    fb.SubGraphStart(b)
    fb.SubGraphAddTensors(b, tensor_vector)
    subgraph = fb.SubGraphEnd(b)
    fb.ModelStartSubgraphsVector(b, subgraphs)
    for _ in range(subgraphs):
        b.PrependUOffsetTRelative(subgraph)
    subgraph_vector = b.EndVector()
    fb.BufferStart(b)
    buffer = fb.BufferEnd(b)
    fb.ModelStartBuffersVector(b, 1)
    b.PrependUOffsetTRelative(buffer)
    buffer_vector = b.EndVector()
    fb.ModelStart(b)
    fb.ModelAddVersion(b, 3)
    fb.ModelAddSubgraphs(b, subgraph_vector)
    fb.ModelAddBuffers(b, buffer_vector)
    b.Finish(fb.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize(
    "subgraphs,tensors,dims",
    [(2000, 2000, 1), (1, 2000, 2000), (40, 40, 40)],
    ids=["subgraphs-x-tensors", "tensors-x-dims", "all-three"],
)
def test_repeated_tables_do_not_multiply(tmp_path, warm_imports, subgraphs, tensors, dims):
    data = repeating_model(subgraphs, tensors, dims)
    assert len(data) < 40_000  # yet millions of objects if unpacked entry by entry
    path = write(tmp_path, "m.tflite", data)
    assert_refused(path, r"more tables than the file has room for", tmp_path)
    _, _, _, peak = run_cli(["audit", str(path)])
    assert peak < allocation_limit(len(data))


def test_repeating_model_without_repeats_is_read():
    # the builder above makes a model the reader accepts when nothing repeats
    assert len(reader.read_bytes(repeating_model(1, 1, 1)).subgraphs[0].tensors) == 1


def test_directory(tmp_path):
    folder = tmp_path / "model.tflite"
    folder.mkdir()
    assert_refused(folder, r"is a directory", tmp_path)


def test_missing_path(tmp_path):
    assert_refused(tmp_path / "no-such.tflite", r"No such file", tmp_path)


def test_dangling_symlink(tmp_path):
    link = tmp_path / "link.tflite"
    link.symlink_to(tmp_path / "gone.tflite")
    assert_refused(link, r"No such file", tmp_path)


def test_path_through_a_file(tmp_path):
    # (without -o the rewrite first refuses the output beside it, in the same "folder")
    file = write(tmp_path, "plain", b"x")
    assert_refused(file / "model.tflite", r"Not a directory", tmp_path, default_output=False)


def test_unreadable_file(tmp_path, base_bytes):
    path = write(tmp_path, "m.tflite", base_bytes)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip(
                "running as root (or with CAP_DAC_OVERRIDE): chmod 000 does not "
                "stop this process from reading the file"
            )
        assert_refused(path, r"Permission denied", tmp_path)
    finally:
        path.chmod(0o644)
    assert path.read_bytes() == base_bytes


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_named_pipe_is_refused_not_waited_on(tmp_path):
    # Opening a FIFO for reading blocks until a writer comes: a hang unless refused first.
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    assert_refused(fifo, r"not a regular file", tmp_path)


# ------------------------------------------------------------------ output paths


@pytest.fixture
def good(tmp_path, base_bytes) -> Path:
    return write(tmp_path, "m.tflite", base_bytes)


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_input_is_refused(good, base_bytes, force):
    spellings = [str(good), os.path.join(str(good.parent), ".", good.name)]
    for out in spellings:
        code, stdout, stderr, _ = run_cli([str(good), "-o", out, *COPY] + ["--force"] * force)
        assert code == 2
        line = assert_one_line(stderr, out)
        assert "input" in line and stdout == ""
        assert good.read_bytes() == base_bytes
    assert listing(good.parent) == ["m.tflite"]


def test_output_as_a_link_to_the_input_is_refused(good, base_bytes, tmp_path):
    link = tmp_path / "link.tflite"
    link.symlink_to(good)
    code, _, stderr, _ = run_cli([str(good), "-o", str(link), "--force", *COPY])
    assert code == 2 and "input" in assert_one_line(stderr, link)
    assert good.read_bytes() == base_bytes and link.is_symlink()


def test_existing_output_needs_force(good, base_bytes, tmp_path):
    out = write(tmp_path, "out.tflite", b"keep me")
    code, stdout, stderr, _ = run_cli([str(good), "-o", str(out), *COPY])
    assert code == 2 and "--force" in assert_one_line(stderr, out) and stdout == ""
    assert out.read_bytes() == b"keep me"

    code, stdout, stderr, _ = run_cli([str(good), "-o", str(out), "--force", *COPY])
    assert code == 0 and stderr == "" and str(out) in stdout
    assert reader.read(out).subgraphs
    assert good.read_bytes() == base_bytes
    assert listing(tmp_path) == ["m.tflite", "out.tflite"]


def test_bad_input_with_force_leaves_existing_output_alone(tmp_path):
    bad = write(tmp_path, "bad.tflite", b"not a model at all")
    out = write(tmp_path, "out.tflite", b"keep me")
    code, _, stderr, _ = run_cli([str(bad), "-o", str(out), "--force", *COPY])
    assert code == 2 and "not a TFLite model" in assert_one_line(stderr, bad)
    assert out.read_bytes() == b"keep me"
    assert listing(tmp_path) == ["bad.tflite", "out.tflite"]


# ------------------------------------------------------------------ the seeded corpus

SEED = 20250611
FUZZ_MODELS = ("control_flow", "multi_signature", "int8_full", "sparse_fc_int8")
PER_MODEL = 64  # 4 x 64 = 256 variants
KINDS = ("truncate", "flip", "u32", "insdel")
VARIANTS = [(name, i) for name in FUZZ_MODELS for i in range(PER_MODEL)]


def table_mask(data: bytes) -> np.ndarray:
    """True for the bytes of the graph tables: everything but the data of buffers larger
    than 64 bytes (weights), found through the schema's raw tables."""
    mask = np.ones(len(data), bool)
    m = fb.Model.GetRootAs(data, 0)
    for i in range(m.BuffersLength()):
        b = m.Buffers(i)
        field = b._tab.Offset(4)
        if field and b.DataLength() > 64:
            start = b._tab.Vector(field)
            mask[start : start + b.DataLength()] = False
    return mask


def mutate(data: bytes, name: str, i: int) -> tuple[str, bytes]:
    """Variant i of a model: (what was done, the bytes). Deterministic in (SEED, model, i)."""
    rng = np.random.default_rng([SEED, FUZZ_MODELS.index(name), i])
    kind = KINDS[i % len(KINDS)]
    buf = bytearray(data)
    n = len(buf)
    tables = np.flatnonzero(table_mask(data))

    def somewhere() -> int:  # mostly in the tables, where damage matters
        return int(rng.choice(tables)) if rng.random() < 0.8 else int(rng.integers(0, n))

    if kind == "truncate":
        cut = int(rng.integers(0, n))
        return f"truncate at {cut}", bytes(buf[:cut])
    if kind == "flip":
        count = int(rng.integers(1, 21))
        where = sorted(somewhere() for _ in range(count))
        for at in where:
            buf[at] ^= int(rng.integers(1, 256))
        return f"flip {count} bytes at {where}", bytes(buf)
    if kind == "u32":
        aligned = tables[(tables % 4 == 0) & (tables + 4 <= n)]
        done = []
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.choice(aligned))
            value = int(
                rng.choice(
                    [
                        0,
                        1,
                        0xFFFFFFFF,
                        0x7FFFFFFF,
                        0x80000000,
                        n,
                        n + 4,
                        n - 4,
                        int(rng.integers(0, 2**32)),
                        int(rng.integers(0, n)),
                        int(rng.integers(2, 300)),
                    ]
                )
            )
            struct.pack_into("<I", buf, at, value)
            done.append((at, hex(value)))
        return f"uint32 at {done}", bytes(buf)
    at, run = somewhere(), int(rng.integers(1, 65))
    if rng.random() < 0.5:
        buf[at:at] = rng.integers(0, 256, run, dtype=np.uint8).tobytes()
        return f"insert {run} bytes at {at}", bytes(buf)
    del buf[at : at + run]
    return f"delete {run} bytes at {at}", bytes(buf)


@pytest.fixture(scope="session")
def fuzz_bases(tf_models, warm_imports) -> dict[str, bytes]:
    return {name: tf_models[name].read_bytes() for name in FUZZ_MODELS}


def check_variant(path: Path, data: bytes, tmp_path: Path) -> tuple[int, int]:
    """Audit and rewrite one variant in-process; returns their exit codes."""
    out = tmp_path / "out.tflite"
    codes = []
    # --no-verify: running LiteRT is checked in child processes (see below)
    for argv in (["audit", str(path)], [str(path), "-o", str(out), "--no-verify", *COPY]):
        code, stdout, stderr, peak = run_cli(argv)
        assert code in (0, 2), f"{argv}: exit {code}, stderr {stderr!r}"
        assert "Traceback" not in stdout + stderr
        assert peak < allocation_limit(len(data)), f"{argv}: allocated {peak:,} bytes"
        if code == 2:
            assert_one_line(stderr, path)
            assert not out.exists() and stdout == ""
        else:
            assert stderr == ""
        codes.append(code)
        assert path.read_bytes() == data, "the input changed"
    if codes[1] == 0:
        assert reader.read(out).subgraphs  # what the rewrite wrote reads back
    assert listing(tmp_path) == sorted([path.name] + (["out.tflite"] if codes[1] == 0 else []))
    return codes[0], codes[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,i", VARIANTS, ids=[f"{name}-{i:02d}-{KINDS[i % 4]}" for name, i in VARIANTS]
)
def test_mutated_model(fuzz_bases, tmp_path, name, i):
    what, data = mutate(fuzz_bases[name], name, i)
    path = write(tmp_path, "variant.tflite", data)
    try:
        check_variant(path, data, tmp_path)
    except Exception as e:
        raise AssertionError(f"{name} variant {i} ({what}): {e}") from e


COMPRESSION_FLAGS = [
    ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights", "--min-size", "0"],
    ["--prune-pattern", "2:4", "--quantize", "float16", "--target", "cpu"],
]


@pytest.mark.parametrize("flags", COMPRESSION_FLAGS, ids=["prune-cluster-int8", "2:4-f16-cpu"])
def test_passes_on_damaged_models_that_still_read(fuzz_bases, tmp_path, flags):
    """What the reader accepts, the passes take too: damaged weights (NaN, huge values,
    odd shapes) end in a clean result or one line, never a traceback."""
    rewritten = 0
    for name, i in VARIANTS[1::8]:  # byte flips: the mutation that most often still reads
        _, data = mutate(fuzz_bases[name], name, i)
        path = write(tmp_path, "variant.tflite", data)
        try:
            reader.read(path)
        except Exception:
            continue
        out = tmp_path / "out.tflite"
        code, stdout, stderr, _ = run_cli(
            [str(path), "-o", str(out), "--force", "--no-verify", *flags]
        )
        assert code in (0, 2) and "Traceback" not in stdout + stderr, (name, i, stderr)
        if code == 2:
            assert_one_line(stderr, path)
        rewritten += code == 0
        out.unlink(missing_ok=True)
    assert rewritten > 0


def test_the_corpus_is_mostly_refused_but_not_only(fuzz_bases, tmp_path):
    # The mutations must exercise both paths: refusals (most) and models still readable.
    refused = read = 0
    for name, i in VARIANTS[::4]:
        _, data = mutate(fuzz_bases[name], name, i + 1)  # flips: either outcome happens
        try:
            reader.read_bytes(data)
            read += 1
        except Exception:
            refused += 1
    assert refused and read


# ------------------------------------------------------------------ as real processes
#
# The rewrite command ends by running the input and the output in LiteRT (verify): native
# code, where a bad model can kill the process, so that step is checked in child processes,
# never in-process, where a crash would take the test session with it.

PROCESS_VARIANTS = VARIANTS[::26]  # 10 variants, every kind, every model
REWRITES = 20  # about 0.7 s each (start-up, LiteRT, verify), two at a time
ADDRESS_SPACE = 4 << 30  # the interpreter, numpy, the schema module and LiteRT fit well within
PROCESS_ENV = dict(
    os.environ,
    OPENBLAS_NUM_THREADS="1",
    OMP_NUM_THREADS="1",
    PYTHONIOENCODING="utf-8:strict",  # a UTF-8 terminal, as most users have
)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_process(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tflrewrite", *argv],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=120,
        preexec_fn=_limits,
        env=PROCESS_ENV,
        cwd=ROOT,
    )


def process_problem(done: subprocess.CompletedProcess, path: Path, out: Path | None) -> str:
    """What is wrong with how a `tflrewrite` process ended, or "" if nothing."""
    if done.returncode < 0:
        return f"killed by signal {-done.returncode}: {done.stderr[-300:]!r}"
    if done.returncode not in (0, 2):
        return f"exit {done.returncode}: {done.stderr[-300:]!r}"
    if "Traceback" in done.stdout + done.stderr:
        return f"traceback: {done.stderr[-300:]!r}"
    if done.returncode == 2:
        lines = done.stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("tflrewrite: ") or str(path) not in lines[0]:
            return f"exit 2 without one line naming the file: {done.stderr!r}"
        if out is not None and out.exists():
            return "exit 2 but the output was written"
    elif out is not None and not out.exists():
        return "exit 0 but no output"
    return ""


def run_all(jobs: list[tuple[str, list[str], Path, Path | None]]) -> list[str]:
    """Run (label, argv, input, output) jobs two at a time; the problems, labelled."""
    from concurrent.futures import ThreadPoolExecutor

    def one(job):
        label, argv, path, out = job
        problem = process_problem(run_process(argv), path, out)
        return f"{label}: {problem}" if problem else ""

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [p for p in pool.map(one, jobs) if p]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as a memory bound is Linux's")
def test_mutated_models_as_processes(fuzz_bases, tmp_path):
    """`audit` on 10 variants, and the whole rewrite command, verify included, on up to
    REWRITES of the variants the reader accepts (taken from each model in turn): exit 0 or
    2 with one line, never a crash or a traceback."""
    jobs, audit_codes, readable = [], set(), {name: [] for name in FUZZ_MODELS}
    for name, i in VARIANTS:
        what, data = mutate(fuzz_bases[name], name, i)
        label = f"{name} variant {i} ({what})"
        path = write(tmp_path, f"{name}-{i:02d}.tflite", data)
        if (name, i) in PROCESS_VARIANTS:
            jobs.append((label + " audit", ["audit", str(path)], path, None))
            audit_codes.add(run_cli(["audit", str(path)])[0])
        try:
            reader.read_bytes(data)
        except Exception:  # noqa: BLE001 - refused: the in-process test covers it
            continue
        out = tmp_path / f"{name}-{i:02d}.out.tflite"
        argv = [str(path), "-o", str(out), *COPY]
        readable[name].append((label + " rewrite", argv, path, out))
    assert audit_codes == {0, 2}, "the audited variants should show both outcomes"
    turns = [job for group in itertools.zip_longest(*readable.values()) for job in group if job]
    assert len(turns) >= REWRITES, "too few variants are readable to test the whole command"
    jobs += turns[:REWRITES]
    problems = run_all(jobs)
    assert not problems, f"{len(problems)} of {len(jobs)} processes:\n" + "\n".join(problems)
    for name, i in VARIANTS:
        assert (tmp_path / f"{name}-{i:02d}.tflite").read_bytes() == mutate(
            fuzz_bases[name], name, i
        )[1]


# ------------------------------------------------------------------ names that are not UTF-8


def _non_utf8_names(m: fb.ModelT) -> None:
    sg = m.subgraphs[0]
    sg.tensors[sg.inputs[0]].name = b"input\xff"
    constant_tensor(m).name = b"weights\xfe"


def test_audit_of_non_utf8_names_on_a_utf8_terminal(tmp_path, base_bytes):
    path = write(tmp_path, "m.tflite", edited(base_bytes, _non_utf8_names))
    assert process_problem(run_process(["audit", str(path)]), path, None) == ""


def test_rewrite_of_non_utf8_names(tmp_path, base_bytes):
    path = write(tmp_path, "m.tflite", edited(base_bytes, _non_utf8_names))
    out = tmp_path / "out.tflite"
    assert process_problem(run_process([str(path), "-o", str(out), *COPY]), path, out) == ""


# ------------------------------------------------------------------ known gaps (not the reader)


def _resource_as_input(m: fb.ModelT) -> None:
    # found by the corpus (string_and_variables, two flipped bytes): the model's only input
    # becomes the RESOURCE tensor of a variable; LiteRT loads it, but refuses any value
    sg = m.subgraphs[0]
    sg.inputs = np.array(
        [i for i, t in enumerate(sg.tensors) if t.type == fb.TensorType.RESOURCE][:1], np.int32
    )


def test_rewrite_of_a_model_whose_input_is_a_resource(tmp_path, tf_models):
    data = edited(tf_models["string_and_variables"].read_bytes(), _resource_as_input)
    path = write(tmp_path, "m.tflite", data)
    out = tmp_path / "out.tflite"
    assert process_problem(run_process([str(path), "-o", str(out), *COPY]), path, out) == ""
