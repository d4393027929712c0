"""Tests for tflrewrite.runtime_version: the runtime table, version ordering, metadata bytes."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tflrewrite import runtime_version as rv
from tflrewrite.runtime_version import (
    MIN_RUNTIME,
    WIDTH,
    decode_min_runtime_version,
    encode_min_runtime_version,
    min_runtime_version,
    version_key,
)

# --- version ordering ---------------------------------------------------------------------


def test_versions_compare_numerically_not_as_text():
    assert version_key("1.10.0") > version_key("1.9.0")
    assert version_key("2.14.4") > version_key("2.14.0")
    assert version_key("2.3.0") < version_key("2.11.0")
    assert version_key("1.13.1") > version_key("1.13.0")
    assert version_key("2.3") < version_key("2.3.0")  # equal prefix: the longer is later


def test_version_key_rejects_non_numeric():
    for bad in ("", "1..0", "1.x.0", "v1.0", "1.0-rc1"):
        with pytest.raises(ValueError):
            version_key(bad)


def test_min_runtime_version_takes_numeric_maximum():
    # GATHER v1 needs 1.6.0 and SUM v1 needs 1.10.0: text order would wrongly pick 1.6.0.
    assert min_runtime_version([("GATHER", 1), ("SUM", 1), ("ADD", 1)]) == "1.10.0"
    assert min_runtime_version([("PADV2", 1), ("TILE", 1)]) == "1.10.1"
    assert min_runtime_version([("CONV_2D", 1)]) == "1.5.0"
    assert min_runtime_version(iter([("CONV_2D", 8), ("FULLY_CONNECTED", 9)])) == "2.15.0"


def test_min_runtime_version_skips_unknown_pairs():
    assert min_runtime_version([]) is None
    assert min_runtime_version([("CUSTOM", 1), ("NOT_AN_OP", 1)]) is None
    assert min_runtime_version([("CONV_2D", 999), ("BROADCAST_TO", 1)]) is None
    assert min_runtime_version([("CUSTOM", 1), ("RESHAPE", 1), ("CONV_2D", 999)]) == "1.5.0"


# --- the table ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "version", "runtime"),
    [
        ("CONV_2D", 1, "1.5.0"),
        ("CONV_2D", 8, "2.15.0"),
        ("FULLY_CONNECTED", 1, "1.5.0"),
        ("FULLY_CONNECTED", 8, "2.3.0"),  # the version that adds sparse weights
        ("FULLY_CONNECTED", 14, "2.21.0"),
        ("DEPTHWISE_CONV_2D", 2, "1.12.0"),
        ("TILE", 1, "1.10.1"),
        ("TRANSPOSE", 7, "2.14.4"),
        ("UNIDIRECTIONAL_SEQUENCE_LSTM", 1, "1.13.1"),
        ("BROADCAST_TO", 2, "2.5.0"),
        ("WHERE", 2, "2.8.0"),
        ("DYNAMIC_UPDATE_SLICE", 6, "2.22.0"),
        ("ADD", 6, "2.23.0"),
        ("STABLEHLO_CASE", 1, "2.17.0"),
    ],
)
def test_table_spot_checks(op, version, runtime):
    assert MIN_RUNTIME[(op, version)] == runtime


def test_table_shape():
    assert len(MIN_RUNTIME) == 420
    assert ("BROADCAST_TO", 1) not in MIN_RUNTIME
    for (op, version), runtime in MIN_RUNTIME.items():
        assert isinstance(op, str) and op == op.upper()
        assert isinstance(version, int) and version >= 1
        version_key(runtime)  # every entry parses
        assert len(runtime) < WIDTH


def test_table_runtime_never_decreases_with_op_version():
    for (op, version), runtime in MIN_RUNTIME.items():
        later = MIN_RUNTIME.get((op, version + 1))
        if later is not None:
            assert version_key(later) >= version_key(runtime), (op, version)


def test_table_names_are_builtin_operators():
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    names = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    assert {op for op, _ in MIN_RUNTIME} <= names


# --- metadata bytes -----------------------------------------------------------------------


def test_width_is_sixteen():
    assert WIDTH == 16
    assert len(encode_min_runtime_version("1.14.0")) == 16
    assert len(encode_min_runtime_version("")) == 16


def test_encode_exact_bytes():
    assert encode_min_runtime_version("1.14.0") == b"1.14.0" + b"\0" * 10
    assert encode_min_runtime_version("") == b"\0" * 16
    assert encode_min_runtime_version("x" * 15) == b"x" * 15 + b"\0"


def test_encode_rejects_what_does_not_fit():
    with pytest.raises(ValueError):
        encode_min_runtime_version("x" * 16)  # upstream writes nothing for 16 or more
    with pytest.raises(ValueError):
        encode_min_runtime_version("1.\u00e9")
    with pytest.raises(ValueError):
        encode_min_runtime_version("1.0\0")


@pytest.mark.parametrize("version", ["1.5.0", "1.10.1", "2.14.4", "2.23.0", "", "123.456.7890"])
def test_round_trip(version):
    data = encode_min_runtime_version(version)
    assert decode_min_runtime_version(data) == version
    assert encode_min_runtime_version(decode_min_runtime_version(data)) == data


def test_decode_stops_at_first_nul_and_accepts_any_length():
    assert decode_min_runtime_version(b"2.3.0\0garbage\0\0\0") == "2.3.0"
    assert decode_min_runtime_version(b"1.14.0") == "1.14.0"
    assert decode_min_runtime_version(bytearray(b"1.6.0\0\0")) == "1.6.0"
    assert decode_min_runtime_version(b"") == ""
    with pytest.raises(ValueError):
        decode_min_runtime_version(b"\xff\xfe\0")


# --- the module stays standard-library only -----------------------------------------------


def test_module_imports_only_the_standard_library():
    tree = ast.parse(Path(rv.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names)


def test_update_raises_the_model_entry_and_only_raises(tmp_path):
    """A pass that raises an op version must raise min_runtime_version with it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import corpus

    from tflrewrite import reader, writer
    from tflrewrite.runtime_version import (
        METADATA_NAME,
        decode_min_runtime_version,
        update_min_runtime_version,
    )

    model = reader.read(corpus.tf_models()["float32_cnn"])
    before = decode_min_runtime_version(model.metadata_entry(METADATA_NAME).buffer.data.tobytes())
    assert update_min_runtime_version(model) == before  # nothing raised: nothing changes
    fc = next(op for sg in model.subgraphs for op in sg.operators if op.type == "FULLY_CONNECTED")
    fc.opcode = model.opcode("FULLY_CONNECTED", 8)
    assert update_min_runtime_version(model) == "2.3.0"
    out = tmp_path / "m.tflite"
    writer.write(model, out)
    again = reader.read(out)
    stored = again.metadata_entry(METADATA_NAME).buffer.data.tobytes()
    assert decode_min_runtime_version(stored) == "2.3.0" and len(stored) == 16
    assert len(again.buffers) == len(reader.read(corpus.tf_models()["float32_cnn"]).buffers)
