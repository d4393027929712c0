"""The zip archive after a model's flatbuffer (TFLite Support's associated files): finding it
among the trailing bytes, listing it, and moving the position its offsets count from.

Records of the zip format used here (PKWARE APPNOTE.TXT; offsets within each record):

    local file header   PK\\3\\4   30 bytes + name + extra, then the member's data
    central directory   PK\\1\\2   46 bytes + name + extra + comment; local header offset
                                 at 42 (0xFFFFFFFF: in the zip64 extra field, id 1)
    zip64 end record    PK\\6\\6   56 bytes; central directory size at 40, offset at 48
    zip64 locator       PK\\6\\7   20 bytes; the zip64 end record's offset at 8
    end record          PK\\5\\6   22 bytes + comment; directory size at 12, offset at 16

Every offset counts from one position, the archive's base. TFLite Support's populator
opens the .tflite with `zipfile` in append mode, so its base is the start of the file;
an archive built alone and appended has its own start as base; a tool that re-packs the
flatbuffer and re-appends the archive leaves a base that is neither. Readers (Python's
zipfile, minizip) find the base from where the central directory ends, so all three open,
but only offsets counted from a real position survive a reader that trusts them.

Moving the base rewrites only offsets: member bytes, names and order stay as they are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_END = b"PK\x05\x06"
_END64 = b"PK\x06\x06"
_LOCATOR64 = b"PK\x06\x07"
_MAX_COMMENT = 0xFFFF
_IN_ZIP64 = 0xFFFFFFFF  # a 32-bit field whose value is in the zip64 records


@dataclass(frozen=True)
class Member:
    name: str
    size: int  # uncompressed bytes


@dataclass(frozen=True)
class _Field:
    """An offset stored in the archive: where (position in the data) and how wide."""

    at: int
    fmt: str  # "<I" or "<Q"


@dataclass(frozen=True)
class Span:
    """Where an archive lies in some bytes, as positions in those bytes."""

    start: int  # its first record
    end: int  # one past its end record's comment
    base: int  # where its offsets count from (negative: before the bytes)
    offsets: tuple[_Field, ...]  # every stored offset, each counting from `base`
    members: tuple[Member, ...]


def find(data: bytes) -> Span | None:
    """The zip archive at the end of `data`, or None. Its end record is found where zipfile
    looks: the last 22 bytes, else the last signature within a comment's reach of the end."""
    window = max(0, len(data) - 22 - _MAX_COMMENT)
    for at in dict.fromkeys((len(data) - 22, data.rfind(_END, window))):
        if at >= 0 and data[at : at + 4] == _END:
            try:
                span = _span(data, at)
            except struct.error:  # a record cut short by the end of the bytes
                span = None
            if span is not None:
                return span
    return None


def members(data: bytes) -> list[Member]:
    """The files of the archive in `data` (none when there is no archive)."""
    span = find(data)
    return [] if span is None else list(span.members)


def detach(data: bytes) -> tuple[bytes, bool]:
    """`data` (bytes read after a flatbuffer) with its archive's offsets made to count from
    the archive's own start; and whether they counted from elsewhere (the file's start, or
    a stale base), so that `attach` gives them the file's start again."""
    span = find(data)
    if span is None:
        return data, False
    return _rebase(data, span, span.start) or data, span.base != span.start


def attach(data: bytes, at: int, from_file: bool) -> bytes:
    """`data` to be written at position `at` of a file: with `from_file`, its archive's
    offsets count from the file's start, as TFLite Support writes them. Offsets that would
    not fit their 32-bit fields count from the archive's own start instead."""
    span = find(data)
    if span is None or not from_file:
        return data
    return _rebase(data, span, -at) or _rebase(data, span, span.start) or data


def _rebase(data: bytes, span: Span, base: int) -> bytes | None:
    """`data` with the archive's offsets counting from `base`; None if one does not fit."""
    out = bytearray(data)
    for f in span.offsets:
        (value,) = struct.unpack_from(f.fmt, data, f.at)
        value += span.base - base
        if not 0 <= value < (_IN_ZIP64 if f.fmt == "<I" else 2**64):
            return None
        struct.pack_into(f.fmt, out, f.at, value)
    return bytes(out)


def _span(data: bytes, end_at: int) -> Span | None:
    """The archive whose end record is at `end_at`, if its records hold together."""
    if end_at + 22 > len(data):
        return None
    disk, cd_disk, here, count, cd_size, cd_offset, comment = struct.unpack_from(
        "<HHHHIIH", data, end_at + 4
    )
    if disk or cd_disk or here != count or end_at + 22 + comment > len(data):
        return None
    offsets = [] if cd_offset == _IN_ZIP64 else [_Field(end_at + 16, "<I")]
    cd_end = end_at
    locator = end_at - 20
    if locator >= 56 and data[locator : locator + 4] == _LOCATOR64:
        record = locator - 56  # zipfile reads the zip64 end record just before its locator
        if data[record : record + 4] != _END64:
            return None
        count, cd_size, cd_offset = struct.unpack_from("<QQQ", data, record + 32)
        offsets = [_Field(record + 48, "<Q"), _Field(locator + 8, "<Q"), *offsets]
        cd_end = record
    cd = cd_end - cd_size
    if cd < 0:
        return None
    span = _directory(data, cd=cd, count=count, base=cd - cd_offset, end=end_at + 22 + comment)
    return None if span is None else replace(span, offsets=(*span.offsets, *offsets))


def _directory(data: bytes, *, cd: int, count: int, base: int, end: int) -> Span | None:
    """Reads the central directory's `count` entries, checking that each points at a local
    header within the bytes."""
    offsets, found, at, start = [], [], cd, cd
    for _ in range(count):
        if data[at : at + 4] != _CENTRAL or at + 46 > len(data):
            return None
        flags = struct.unpack_from("<H", data, at + 8)[0]
        csize, usize, n, m, k = struct.unpack_from("<IIHHH", data, at + 20)
        field = _header_field(data, at, n=n, m=m, usize=usize, csize=csize)
        if field is None:
            return None
        (local,) = struct.unpack_from(field.fmt, data, field.at)
        local += base
        if not 0 <= local < cd or data[local : local + 4] != _LOCAL:
            return None
        encoding = "utf-8" if flags & 0x800 else "cp437"  # bit 11: the name is UTF-8
        name = data[at + 46 : at + 46 + n].decode(encoding, "replace")
        size = _zip64_value(data, at, n=n, m=m, index=0) if usize == _IN_ZIP64 else usize
        offsets.append(field)
        found.append(Member(name, size))
        start = min(start, local)
        at += 46 + n + m + k
    return Span(start, end, base, tuple(offsets), tuple(found))


def _header_field(data: bytes, at: int, *, n: int, m: int, usize: int, csize: int) -> _Field | None:
    """Where a central directory entry keeps its local header's offset."""
    (offset,) = struct.unpack_from("<I", data, at + 42)
    if offset != _IN_ZIP64:
        return _Field(at + 42, "<I")
    index = (usize == _IN_ZIP64) + (csize == _IN_ZIP64)  # the zip64 extra's order
    where = _zip64_at(data, at, n=n, m=m, index=index)
    return None if where is None else _Field(where, "<Q")


def _zip64_value(data: bytes, at: int, *, n: int, m: int, index: int) -> int:
    where = _zip64_at(data, at, n=n, m=m, index=index)
    return 0 if where is None else struct.unpack_from("<Q", data, where)[0]


def _zip64_at(data: bytes, at: int, *, n: int, m: int, index: int) -> int | None:
    """Position of the `index`-th 8-byte value of a central directory entry's zip64 extra
    field (id 1), if it has one that long."""
    pos, stop = at + 46 + n, at + 46 + n + m
    while pos + 4 <= stop:
        kind, length = struct.unpack_from("<HH", data, pos)
        if kind == 1:
            return pos + 4 + 8 * index if 8 * (index + 1) <= length else None
        pos += 4 + length
    return None
