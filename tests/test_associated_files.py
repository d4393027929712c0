"""Associated files survive: a converter-made model populated the way TFLite Support's
metadata writer does it (`zipfile` in append mode on the .tflite, so offsets count from the
file's start) with 0, 1 and several files, one whose archive counts from its own start,
one re-appended after a re-packed flatbuffer, and one with zip64 records. Identity and
every built-in recipe give an output whose `zipfile` members and bytes are the input's,
with offsets counting from where they did, and whose flatbuffer part is byte for byte
what the same recipe writes for the model without the archive. Checked here with Python's
zipfile and struct, not with tflrewrite's own archive code."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tflrewrite import reader, writer
from tflrewrite.cli import main
from tflrewrite.recipes import BUILTIN

DATE = (2024, 5, 1, 12, 0, 0)
LABELS = "".join(f"label_{i}\n" for i in range(10)).encode()
VOCAB = "".join(f"{w} {i}\n" for i, w in enumerate(["the", "a", "ünïcode", "zip"] * 40)).encode()
NOTES = json.dumps({"author": "tests", "classes": 10}).encode()

# name -> (kind of base: "file" or "archive", files); files are (name, bytes, compression)
POPULATED = {
    "none": ("file", []),
    "one": ("file", [("labels.txt", LABELS, zipfile.ZIP_STORED)]),
    "several": (
        "file",
        [
            ("labels.txt", LABELS, zipfile.ZIP_STORED),
            ("vocab.txt", VOCAB, zipfile.ZIP_DEFLATED),
            ("extra/notes_ü.json", NOTES, zipfile.ZIP_DEFLATED),
        ],
    ),
    "archive_start": ("archive", [("labels.txt", LABELS, zipfile.ZIP_DEFLATED)]),
}


def _add(z: zipfile.ZipFile, files: list) -> None:
    for name, data, compression in files:
        z.writestr(zipfile.ZipInfo(name, date_time=DATE), data, compress_type=compression)


def populate(model: Path, out: Path, files: list) -> None:
    """TFLite Support's way (metadata.py, MetadataPopulator._populate_associated_files)."""
    shutil.copy(model, out)
    with zipfile.ZipFile(out, "a") as z:
        _add(z, files)


def append_archive(model: Path, out: Path, files: list) -> None:
    """An archive made on its own, then appended: its offsets count from its own start."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as z:
        _add(z, files)
    out.write_bytes(model.read_bytes() + sink.getvalue())


@pytest.fixture(scope="module")
def corpus(tf_models, tmp_path_factory) -> dict[str, Path]:
    base = tf_models["float32_cnn"]
    folder = tmp_path_factory.mktemp("associated")
    models = {}
    for name, (kind, files) in POPULATED.items():
        models[name] = folder / f"{name}.tflite"
        (populate if kind == "file" else append_archive)(base, models[name], files)
    # A tool re-packs the flatbuffer (to another size) and appends the archive as it was:
    # its offsets now count from a position that is neither the file's start nor its own.
    several = models["several"].read_bytes()
    repacked = writer.to_bytes(reader.read(base))
    models["reappended"] = folder / "reappended.tflite"
    models["reappended"].write_bytes(repacked + several[base.stat().st_size :])
    assert len(repacked) != base.stat().st_size
    return models


def listing(data: bytes) -> list[tuple]:
    """What a zip reader sees: each member's name, header fields and bytes; the comment."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        members = [
            (i.filename, i.date_time, i.compress_type, i.CRC, i.file_size, z.read(i))
            for i in z.infolist()
        ]
        return [*members, z.comment]


def base_and_start(data: bytes) -> tuple[int, int]:
    """(where the archive's offsets count from, where its first record lies), from its end
    record and central directory (no zip64 records in these archives)."""
    end = data.rfind(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack_from("<HII", data, end + 10)
    cd = end - cd_size
    base, at, locals_ = cd - cd_offset, cd, []
    for _ in range(count):
        n, m, k = struct.unpack_from("<HHH", data, at + 28)
        locals_.append(base + struct.unpack_from("<I", data, at + 42)[0])
        at += 46 + n + m + k
    return base, min([cd, *locals_])


# Full-integer modes, which calibrate.
FULL = ("int8", "int16x8")


def rewrite(model: Path, out: Path, recipe: str) -> bytes:
    argv = [str(model), "-o", str(out), "--recipe", recipe, "--no-verify", "--force"]
    if any(s.name == "quantize" and s.options.mode in FULL for s in BUILTIN[recipe].steps):
        argv += ["--calibration", "random"]
    assert main(argv) == 0
    return out.read_bytes()


@pytest.fixture(scope="module")
def bare_outputs(tf_models, tmp_path_factory) -> dict[str, bytes]:
    """Each recipe's output for the model without an archive."""
    folder = tmp_path_factory.mktemp("bare")
    return {r: rewrite(tf_models["float32_cnn"], folder / f"{r}.tflite", r) for r in BUILTIN}


@pytest.mark.parametrize("name", [*POPULATED, "reappended"])
def test_the_inputs_are_what_they_claim(corpus, tf_models, name):
    data = corpus[name].read_bytes()
    fb_size = tf_models["float32_cnn"].stat().st_size
    base, start = base_and_start(data)
    listed = listing(data)
    assert len(listed) - 1 == len(POPULATED.get(name, POPULATED["several"])[1])
    if name == "none":
        assert len(data) == fb_size + 22  # the empty archive: an end record alone
    expected_base = {"archive_start": start, "reappended": base}.get(name, 0)
    assert base == expected_base
    if name == "reappended":
        assert base not in (0, start)


@pytest.mark.parametrize("recipe", sorted(BUILTIN))
@pytest.mark.parametrize("name", [*POPULATED, "reappended"])
def test_recipes_keep_the_archive(corpus, bare_outputs, tmp_path, name, recipe):
    data = corpus[name].read_bytes()
    out = rewrite(corpus[name], tmp_path / "out.tflite", recipe)
    assert listing(out) == listing(data)
    # The flatbuffer part is what the recipe writes without an archive, then the archive.
    bare = bare_outputs[recipe]
    assert out[: len(bare)] == bare
    base, start = base_and_start(out)
    assert start == len(bare)
    # Offsets count from the file's start as the metadata writer's do (a stale base, too),
    # or from the archive's own start where they came so.
    assert base == (start if name == "archive_start" else 0)
    # Read again, the output gives back the same model: the same bytes when written.
    again = reader.read(tmp_path / "out.tflite")
    assert writer.to_bytes(again) == out


def test_archive_after_a_model_that_grows(tf_models, tmp_path):
    """Full int8 adds tensors, quantization tables and QUANTIZE ops: on this small-weight
    model the flatbuffer grows, so the archive moves later in the file."""
    model = tmp_path / "in.tflite"
    populate(tf_models["control_flow"], model, POPULATED["several"][1])
    out = rewrite(model, tmp_path / "out.tflite", "full-int8")
    assert base_and_start(out)[1] > tf_models["control_flow"].stat().st_size
    assert listing(out) == listing(model.read_bytes())
    assert base_and_start(out)[0] == 0


def test_zip64_records_are_moved(tf_models, tmp_path, monkeypatch):
    """zipfile writes zip64 records (the zip64 end record and locator, offsets in each
    entry's zip64 extra field) past ZIP64_LIMIT; lowered here, a small model has them."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    model = tmp_path / "in.tflite"
    populate(tf_models["float32_cnn"], model, POPULATED["several"][1])
    data = model.read_bytes()
    assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]
    monkeypatch.undo()
    out = rewrite(model, tmp_path / "out.tflite", "int8-weights")
    assert len(out) < len(data) - 20_000  # the archive moved well back
    assert listing(out) == listing(data)
    end64 = out.rfind(b"PK\x06\x06")
    cd_size, cd_offset = struct.unpack_from("<QQ", out, end64 + 40)
    assert end64 - cd_size - cd_offset == 0  # offsets count from the file's start
    cd = end64 - cd_size
    assert struct.unpack_from("<I", out, cd + 42)[0] == 0xFFFFFFFF  # in the zip64 extra


def test_other_trailing_bytes_are_kept_verbatim(tf_models, tmp_path):
    """Bytes after the flatbuffer that are no zip archive, and bytes after an archive."""
    base = tf_models["float32_cnn"].read_bytes()
    bare = writer.to_bytes(reader.read(tf_models["float32_cnn"]))
    tail = b"signed-by: someone\n" + bytes(range(256))
    (tmp_path / "a.tflite").write_bytes(base + tail)
    assert writer.to_bytes(reader.read(tmp_path / "a.tflite")) == bare + tail

    populate(tf_models["float32_cnn"], tmp_path / "b.tflite", POPULATED["one"][1])
    (tmp_path / "b.tflite").write_bytes((tmp_path / "b.tflite").read_bytes() + tail)
    out = writer.to_bytes(reader.read(tmp_path / "b.tflite"))
    assert out.endswith(tail) and out.startswith(bare)
    assert listing(out) == listing((tmp_path / "b.tflite").read_bytes())


def test_broken_archives_are_kept_verbatim(tf_models, tmp_path):
    """An end record whose directory points nowhere is no archive to move: its bytes stay
    as they were, and reading does not fail."""
    base = tf_models["float32_cnn"].read_bytes()
    bare = writer.to_bytes(reader.read(tf_models["float32_cnn"]))
    broken = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, 46, 7, 0)
    (tmp_path / "m.tflite").write_bytes(base + broken)
    assert writer.to_bytes(reader.read(tmp_path / "m.tflite")) == bare + broken


def test_audit_lists_associated_files(corpus, capsys):
    assert main(["audit", str(corpus["several"]), "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["associated_files"] == [
        {"name": name, "bytes": len(data)} for name, data, _ in POPULATED["several"][1]
    ]
    assert main(["audit", str(corpus["several"])]) == 0
    text = capsys.readouterr().out
    assert f"associated files: labels.txt ({len(LABELS)} bytes), vocab.txt ({len(VOCAB):,}" in text
    assert main(["audit", str(corpus["none"]), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["associated_files"] == []


def test_trailing_bytes_start_where_the_flatbuffer_ends(model_name, model_path):
    """The reader finds the flatbuffer's last referenced byte by walking it: bytes appended
    to any corpus model come back exactly, no more (a walk that stopped short would take
    flatbuffer bytes for trailing ones) and no less (one that ran long would eat them)."""
    data = model_path.read_bytes()
    had = reader.read_bytes(data).trailing
    tail = b"\x01appended\x00bytes"
    assert reader.read_bytes(data + tail).trailing == had + tail
    if model_name != "with_metadata":
        assert had == b""


def test_the_walk_knows_every_union():
    """Each union field of the schema names its member tables (schema._UNION_ENUMS): one
    left out would hide whatever its tables point at from the walk."""
    from tflrewrite import schema

    unions = [p for fields in schema.pointers().values() for p in fields if p.kind == "union"]
    assert unions and all(p.members for p in unions)


def test_damaged_archives_never_fail_the_read(corpus):
    """Bytes of the archive changed at random (seeded): the model still reads and writes,
    its flatbuffer as before, its trailing bytes whole (moved where they still form an
    archive)."""
    data = corpus["several"].read_bytes()
    fb_size = len(data) - len(reader.read(corpus["several"]).trailing)
    bare = writer.to_bytes(reader.read_bytes(data[:fb_size]))
    rng = np.random.default_rng(15)
    for _ in range(200):
        damaged = bytearray(data)
        for at in rng.integers(fb_size, len(data), size=int(rng.integers(1, 4))):
            damaged[at] = int(rng.integers(0, 256))
        model = reader.read_bytes(bytes(damaged))
        assert len(model.trailing) == len(data) - fb_size
        out = writer.to_bytes(model)
        assert out[: len(bare)] == bare and len(out) == len(bare) + len(model.trailing)
