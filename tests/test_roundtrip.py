"""`--recipe identity` on every corpus model: same structure, field by field, and
bit-identical LiteRT outputs."""

from __future__ import annotations

import numpy as np
import pytest
from fbdiff import diff, load
from litert import run_all

from tflrewrite import reader, writer
from tflrewrite.cli import main
from tflrewrite.errors import ModelError


def test_identity_recipe_is_lossless(model_name, model_path, tmp_path):
    out = tmp_path / "out.tflite"
    assert main([str(model_path), "-o", str(out), "--recipe", "identity"]) == 0
    original, rewritten = model_path.read_bytes(), out.read_bytes()

    assert diff(load(original), load(rewritten)) == []
    assert reader.read(out).trailing == reader.read(model_path).trailing

    before, after = run_all(original), run_all(rewritten)
    assert before.keys() == after.keys()
    for key in before:
        for x, y in zip(before[key], after[key], strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert _exact(x) == _exact(y), f"{model_name}: output {key} differs"


def test_buffers_are_16_byte_aligned(model_name, model_path):
    data = writer.to_bytes(reader.read(model_path))
    model = load(data)
    base = np.frombuffer(data, np.uint8).ctypes.data
    for i, b in enumerate(model.buffers):
        if b.data is not None and len(b.data):
            assert (b.data.ctypes.data - base) % 16 == 0, f"buffer {i} is not aligned"


def test_output_is_deterministic(model_name, model_path):
    model = reader.read(model_path)
    assert writer.to_bytes(model) == writer.to_bytes(reader.read(model_path))
    assert writer.to_bytes(model.copy()) == writer.to_bytes(model)


@pytest.mark.parametrize("layout", ["large", "small"])
def test_large_model_layout_round_trips(tf_models, layout):
    """The >2 GB layout (buffers after the flatbuffer, Buffer.offset/size), forced on a small
    model: LiteRT runs it, it reads back, and it converts back to the normal layout."""
    path = tf_models["float32_cnn"]
    large = writer.to_bytes(reader.read(path), large=True)
    back = reader.read_bytes(large)
    assert back.buffers_after_flatbuffer
    assert all(b.data is None for b in load(large).buffers[:1])
    again = writer.to_bytes(back, large=(layout == "large"))
    assert diff(load(path.read_bytes()), load(again)) == []
    expected, got = run_all(path.read_bytes()), run_all(again)
    for key in expected:
        assert [_exact(x) for x in expected[key]] == [_exact(y) for y in got[key]]


def test_writer_switches_to_large_layout_when_needed(tf_models, monkeypatch):
    """Past flatbuffers' 2 GB limit the writer must use the large layout by itself; the
    limit is lowered here so that the same code path runs on a small model."""
    path = tf_models["float32_cnn"]
    monkeypatch.setattr(writer, "FLATBUFFER_LIMIT", 10_000)
    data = writer.to_bytes(reader.read(path))
    assert reader.read_bytes(data).buffers_after_flatbuffer
    assert diff(load(path.read_bytes()), load(data)) == []
    with pytest.raises(ModelError, match="large-model layout"):
        writer.to_bytes(reader.read(path), large=False)


def _exact(x: np.ndarray) -> object:
    """The output's exact content: bytes of its elements (strings as a list)."""
    return x.tolist() if x.dtype == object else x.tobytes()
