"""replace_data's bookkeeping of the buffer list: a new buffer takes the old one's place
exactly when no tensor holds the old one any more, whatever else changed the model."""

from __future__ import annotations

import numpy as np

from tflrewrite import reader, writer
from tflrewrite.model import Buffer, Model, Subgraph, Tensor
from tflrewrite.weights import Weight, replace_data


def _model(n: int) -> tuple[Model, list[Tensor]]:
    model = Model()
    tensors = []
    for i in range(n):
        buffer = model.add_buffer(np.full(4, i, np.float32))
        tensors.append(Tensor(f"w{i}", "FLOAT32", (4,), buffer=buffer))
    model.subgraphs.append(Subgraph(tensors=list(tensors)))
    return model, tensors


def _weight(t: Tensor, *aliases: Tensor) -> Weight:
    return Weight(0, t, "FULLY_CONNECTED", out_axis=0, in_axis=None, aliases=list(aliases))


def _values(t: Tensor) -> list[float]:
    return t.data.tolist()


def test_each_new_buffer_takes_the_place_of_the_one_it_replaces():
    model, tensors = _model(50)
    before = len(model.buffers)
    for step in range(3):
        for i, t in enumerate(tensors):
            replace_data(model, _weight(t), np.full(4, 100 * step + i, np.float32))
    assert len(model.buffers) == before
    assert [b for b in model.buffers[1:]] == [t.buffer for t in tensors]
    assert _values(tensors[7]) == [207.0] * 4


def test_a_buffer_another_tensor_still_holds_stays():
    model, (a, b) = _model(2)
    other = Tensor("reads_a", "FLOAT32", (4,), buffer=a.buffer)  # not a weight, same buffer
    model.subgraphs[0].tensors.append(other)
    old = a.buffer
    replace_data(model, _weight(a), np.ones(4, np.float32))
    assert model.buffers[1] is old and model.buffers[-1] is a.buffer  # appended
    replace_data(model, _weight(other), np.zeros(4, np.float32))
    assert old not in model.buffers and model.buffers[1] is other.buffer  # now it goes
    replace_data(model, _weight(b, a), np.full(4, 5, np.float32))  # aliases move together
    assert a.buffer is b.buffer and _values(a) == [5.0] * 4


def test_changes_made_beside_replace_data_lose_nothing(tmp_path):
    model, (a, b) = _model(2)
    replace_data(model, _weight(a), np.ones(4, np.float32))  # the index now exists
    model.buffers.insert(1, Buffer(np.zeros(8, np.uint8)))  # places move
    extra = model.add_buffer(np.full(4, 9, np.float32))  # a buffer it has not seen
    c = Tensor("c", "FLOAT32", (4,), buffer=extra)
    model.subgraphs[0].tensors.append(c)
    replace_data(model, _weight(c), np.full(4, 3, np.float32))
    assert extra not in model.buffers and model.buffers[-1] is c.buffer
    # A holder it has not seen: its buffer may leave the list, and the writer, which
    # writes every buffer a tensor holds, still keeps its values.
    late = Tensor("late", "FLOAT32", (4,), buffer=b.buffer)
    model.subgraphs[0].tensors.append(late)
    replace_data(model, _weight(b), np.full(4, 2, np.float32))
    out = tmp_path / "m.tflite"
    writer.write(model, out)
    back = {t.name: _values(t) for t in reader.read(out).subgraphs[0].tensors}
    assert back == {"w0": [1.0] * 4, "w1": [2.0] * 4, "c": [3.0] * 4, "late": [1.0] * 4}


def test_release_pages_drops_mapped_pages_and_keeps_the_values(tmp_path):
    """A weight's pages in the memory-mapped input leave the process's memory once a pass
    is done with them, and read back the same on the next touch."""
    import mmap

    from tflrewrite.model import release_pages

    values = np.arange(4 * mmap.PAGESIZE, dtype=np.uint8)
    path = tmp_path / "pages.bin"
    path.write_bytes(values.tobytes())
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mapped, dtype=np.uint8)[100:].view(np.int8)
    before = view.copy()
    release_pages(view)
    assert np.array_equal(view, before)
    release_pages(before)  # not mapped: nothing to do
    assert np.array_equal(view, before)
