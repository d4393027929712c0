"""Running a model a segment at a time (tflrewrite.segments, tflrewrite.propagate): every
cut equals the whole model's intermediates, on branches and joins, on ops that cannot take
a batch, and on custom ops only the default XNNPACK delegate runs; calibration of such a
model."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tflrewrite import calibrate, pipeline, propagate, reader, recipes, runtime, segments, writer
from tflrewrite.model import Conv2DAttrs, FullyConnectedAttrs, Model, Operator, Subgraph, Tensor
from tflrewrite.schema import make_options


class Builder:
    """A float model built op by op with the IR."""

    def __init__(self, shape: tuple[int, ...]):
        self.model = Model()
        self.sg = Subgraph(name="main")
        self.model.subgraphs.append(self.sg)
        self.rng = np.random.default_rng(0)
        self.x = self.tensor("input", shape)
        self.sg.inputs.append(self.x)

    def tensor(self, name: str, shape: tuple, data: np.ndarray | None = None, dtype="FLOAT32"):
        buffer = self.model.empty_buffer() if data is None else self.model.add_buffer(data)
        t = Tensor(name, dtype, tuple(shape), buffer=buffer)
        self.sg.tensors.append(t)
        return t

    def op(self, kind: str, inputs: list, out_shape: tuple, name: str, **fields) -> Tensor:
        y = self.tensor(name, out_shape)
        self.sg.operators.append(Operator(self.model.opcode(kind), inputs, [y], **fields))
        return y

    def conv(self, x: Tensor, channels: int, name: str, act: str = "RELU") -> Tensor:
        c_in = x.shape[3]
        w = (self.rng.normal(size=(channels, 3, 3, c_in)) * 0.4).astype(np.float32)
        b = (self.rng.normal(size=channels) * 0.1).astype(np.float32)
        attrs = Conv2DAttrs(padding="SAME", stride=(1, 1), dilation=(1, 1), activation=act)
        inputs = [x, self.tensor(f"{name}/w", w.shape, w), self.tensor(f"{name}/b", b.shape, b)]
        return self.op("CONV_2D", inputs, (*x.shape[:3], channels), name, attrs=attrs)

    def fc(self, x: Tensor, units: int, name: str) -> Tensor:
        w = (self.rng.normal(size=(units, x.shape[-1])) * 0.3).astype(np.float32)
        b = np.zeros(units, np.float32)
        attrs = FullyConnectedAttrs("NONE", "DEFAULT", False, False)
        inputs = [x, self.tensor(f"{name}/w", w.shape, w), self.tensor(f"{name}/b", b.shape, b)]
        return self.op("FULLY_CONNECTED", inputs, (1, units), name, attrs=attrs)

    def done(self, *outputs: Tensor) -> Model:
        self.sg.outputs.extend(outputs)
        return self.model


def residual_model() -> Model:
    """Branches and joins: ADD of a conv and its input, CONCATENATION of a tensor and a
    conv of it, MUL of two branches, and two graph outputs (one read by later ops too)."""
    b = Builder((1, 6, 6, 3))
    y1 = b.conv(b.x, 4, "conv1")
    y2 = b.conv(y1, 4, "conv2")
    y3 = b.op("ADD", [y1, y2], (1, 6, 6, 4), "add", options=make_options("AddOptions"))
    y4 = b.conv(y3, 4, "conv3", act="NONE")
    cat = make_options("ConcatenationOptions", axis=3)
    y5 = b.op("CONCATENATION", [y3, y4], (1, 6, 6, 8), "concat", options=cat)
    y6 = b.conv(y5, 2, "conv4", act="NONE")
    y7 = b.conv(y5, 2, "conv5", act="NONE")
    y8 = b.op("MUL", [y6, y7], (1, 6, 6, 2), "mul", options=make_options("MulOptions"))
    return b.done(y8, y3)


def reshape_model() -> Model:
    """A RESHAPE to the constant shape [1, 72]: it cannot take a batch."""
    b = Builder((1, 6, 6, 3))
    y1 = b.conv(b.x, 2, "conv1")
    shape = b.tensor("shape", (2,), np.array([1, 72], np.int32), dtype="INT32")
    options = make_options("ReshapeOptions", newShape=[1, 72])
    y2 = b.op("RESHAPE", [y1, shape], (1, 72), "reshape", options=options)
    y3 = b.fc(y2, 5, "fc")
    return b.done(y3)


def custom_model() -> Model:
    """MediaPipe's Convolution2DTransposeBias (a CUSTOM op that only LiteRT's default
    XNNPACK delegate implements) between two convolutions."""
    b = Builder((1, 5, 5, 3))
    y1 = b.conv(b.x, 4, "conv1")
    w = (b.rng.normal(size=(3, 3, 3, 4)) * 0.4).astype(np.float32)  # O x H x W x I
    bias = (b.rng.normal(size=3) * 0.1).astype(np.float32)
    params = np.frombuffer(struct.pack("<3i", 1, 2, 2), np.uint8)  # SAME, stride 2 x 2
    y2 = b.tensor("deconv", (1, 10, 10, 3))
    b.sg.operators.append(
        Operator(
            b.model.opcode("CUSTOM", 1, "Convolution2DTransposeBias"),
            [y1, b.tensor("deconv/w", w.shape, w), b.tensor("deconv/b", bias.shape, bias)],
            [y2],
            custom_options=params,
        )
    )
    y3 = b.conv(y2, 2, "conv2", act="NONE")
    return b.done(y3)


def samples_for(model: Model, n: int, seed: int = 0) -> list[list[np.ndarray]]:
    runner = runtime.load(model, keep_tensors=True)
    return runtime.random_inputs([runner], n, seed)


def whole_model_tensors(model: Model, samples) -> list[dict[int, np.ndarray]]:
    """Every tensor of the main subgraph, per sample, from whole-model runs."""
    runner = runtime.load(model, keep_tensors=True)
    sg = model.subgraphs[0]
    out = []
    for sample in samples:
        runner.run(sample)
        out.append({id(t): runner.stored(i) for i, t in enumerate(sg.tensors)})
    return out


def assert_cut_matches(model: Model, samples, step: int = 1) -> propagate.Cursor:
    """Advance a cursor op by op (`step` at a time) and compare every tensor of every cut
    with the whole model's."""
    whole = whole_model_tensors(model, samples)
    sg = model.subgraphs[0]
    cursor = propagate.Cursor(model, samples, name="test")
    plan = segments.plan(sg)
    last = plan.last_read
    for k in list(range(0, len(sg.operators), step)) + [len(sg.operators)]:
        cursor.advance(k)
        live = [t for t in sg.tensors if id(t) in cursor._live]
        # the cut: made before k (or an input), read at or after k
        for t in live:
            assert last[id(t)] >= k
            want = np.stack([w[id(t)] for w in whole])
            np.testing.assert_allclose(cursor.stored(t), want, rtol=1e-5, atol=1e-5)
        made = {id(t) for t in sg.inputs} | {id(t) for op in sg.operators[:k] for t in op.outputs}
        read = {id(t) for op in sg.operators[k:] for t in op.inputs if t is not None}
        wanted = ((read | {id(t) for t in sg.outputs}) & made) - set(plan.derived)
        assert {id(t) for t in live} == wanted
    return cursor


def test_segments_of_a_residual_model_give_the_whole_models_intermediates():
    model = residual_model()
    samples = samples_for(model, 9)
    for step in (1, 2, 3):
        cursor = assert_cut_matches(model, samples, step)
        assert cursor.unbatched == []  # every segment took the batch
    outputs = propagate.Cursor(model, samples, name="test").outputs()
    runner = runtime.load(model)
    for i, sample in enumerate(samples):
        for got, want in zip(outputs, runner.run(sample)):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_an_advance_on_its_own_thread_gives_the_same_cut_and_raises_its_errors():
    model = residual_model()
    samples = samples_for(model, 9)
    sg = model.subgraphs[0]
    alone = propagate.Cursor(model, samples, name="test")
    behind = propagate.Cursor(model, samples, name="test")
    for k in range(len(sg.operators) + 1):
        alone.advance(k)
        behind.start_advance(k)
        assert behind.position == k  # reading it waits for the thread
        for t in sg.tensors:
            if id(t) in alone._live:
                assert np.array_equal(behind.stored(t), alone.stored(t))
        assert behind._live.keys() == alone._live.keys()
    behind.start_advance(0)  # behind the cursor: refused on the thread, raised by the reader
    with pytest.raises(ValueError, match="past 0"):
        behind.stored(sg.outputs[0])
    assert behind.position == len(sg.operators)


def test_held_tensors_stay_in_the_cut_until_the_next_advance():
    """An advance that holds tensors made on the way runs them as one segment and keeps
    them, with the bytes a step-by-step walk gives; the next advance lets them go."""
    model = residual_model()
    samples = samples_for(model, 9)
    sg = model.subgraphs[0]
    last = segments.plan(sg).last_read
    steps = propagate.Cursor(model, samples, name="test")
    made = {}
    for k in range(1, len(sg.operators) + 1):
        steps.advance(k)
        for t in sg.operators[k - 1].outputs:
            made[id(t)] = steps.stored(t)
    ahead = propagate.Cursor(model, samples, name="test")
    stop = len(sg.operators) - 1
    hold = tuple(op.outputs[0] for op in sg.operators[:stop] if last[id(op.outputs[0])] < stop)
    assert hold  # some tensors a step-by-step walk would have let go
    ahead.start_advance(stop, hold)
    for t in hold:
        assert ahead.holds(t)
        assert np.array_equal(ahead.stored(t), made[id(t)])
    ahead.advance(stop)
    assert not any(ahead.holds(t) for t in hold)
    for t in sg.tensors:
        if ahead.holds(t) and id(t) in made:
            assert np.array_equal(ahead.stored(t), made[id(t)])


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_segments_run_on_several_threads_give_the_bytes_of_one(monkeypatch, kind):
    model = residual_model()
    samples = samples_for(model, 9)
    if kind == "int8":  # the builtin kernels (float segments take XNNPACK)
        data = calibrate.Samples(samples, "random")
        model = pipeline.apply(model, recipes.load("full-int8"), data=data).model
    sg = model.subgraphs[0]
    cuts = []
    monkeypatch.setattr(propagate, "SMALL_WORK", 0)  # these segments are small
    for threads in (1, 3):
        monkeypatch.setattr(runtime, "THREADS", threads)
        cursor = propagate.Cursor(model, samples, name="test")
        cut = []
        for k in range(len(sg.operators) + 1):
            cursor.advance(k)
            cut += [cursor.stored(t) for t in sg.tensors if id(t) in cursor._live]
        cuts.append(cut)
    assert len(cuts[0]) == len(cuts[1]) > len(sg.operators)
    assert all(np.array_equal(a, b) for a, b in zip(*cuts))
    assert any(x.dtype == np.int8 for x in cuts[0]) == (kind == "int8")


@pytest.mark.parametrize("step", [1, 3])
def test_a_cursor_keeps_each_activations_range_as_calibration_takes_it(step):
    model = residual_model()
    samples = samples_for(model, 9)
    cursor = propagate.Cursor(model, samples, name="test", ranges=True)
    for k in range(0, len(model.subgraphs[0].operators) + step, step):
        cursor.advance(min(k, len(model.subgraphs[0].operators)))
    want = calibrate.ranges(model, calibrate.Samples(samples, "random"))
    assert cursor.ranges.keys() == want.keys()
    for key, (low, high) in want.items():
        assert cursor.ranges[key] == pytest.approx((low, high), rel=1e-5, abs=1e-6)


def test_a_segment_model_has_the_segments_inputs_and_outputs_only():
    model = residual_model()
    sg = model.subgraphs[0]
    seg = segments.extract(model, 2, 5, plan=segments.plan(sg))  # add, conv3, concat
    names = lambda ts: [t.name for t in ts]  # noqa: E731
    assert names(seg.inputs) == ["conv1", "conv2"]
    assert names(seg.outputs) == ["add", "concat"]  # add: a graph output; concat: read later
    assert names(seg.internal) == ["conv3"]
    assert len(seg.model.subgraphs[0].operators) == 3
    constants = {id(t.buffer) for t in seg.model.subgraphs[0].tensors if t.is_constant}
    assert constants <= {id(b) for b in seg.model.buffers}
    assert len(seg.model.buffers) == 1 + len(constants)  # the segment's weights, no others
    # the sub-model runs in LiteRT and gives the whole model's values
    samples = samples_for(model, 3)
    whole = whole_model_tensors(model, samples)
    runner = runtime.load(seg.model)
    for w in whole:
        got = runner.run_batch([w[id(t)] for t in seg.inputs])
        for t, value in zip(seg.outputs, got):
            np.testing.assert_allclose(value, w[id(t)], rtol=1e-6, atol=1e-6)


def test_a_reshape_that_blocks_batching_runs_per_sample_and_alone():
    model = reshape_model()
    samples = samples_for(model, 7)
    for step in (3, 1):  # one segment of all three ops, then one op a segment
        cursor = assert_cut_matches(model, samples, step=step)
        # halved down to the RESHAPE, which ran per sample; the convolution took the batch
        # (the float FULLY_CONNECTED may not: LiteRT rounds a batch otherwise)
        assert (1, 2) in cursor.unbatched and (0, 1) not in cursor.unbatched


def test_chunks_smaller_than_the_samples_give_the_same_cut(monkeypatch):
    model = residual_model()
    samples = samples_for(model, 10)
    monkeypatch.setattr(propagate, "CHUNK_BYTES", 3000)  # a few samples per run
    assert_cut_matches(model, samples, step=2)


def test_a_custom_op_only_xnnpack_runs_is_propagated_and_calibrated():
    model = custom_model()
    samples = samples_for(model, 6)  # loads: the runtime falls back to the default delegates
    assert runtime.load(model).xnnpack
    assert_cut_matches(model, samples)
    data = calibrate.Samples(samples, "random")
    ranges = calibrate.ranges(model, data)
    whole = whole_model_tensors(model, samples)
    for t in model.subgraphs[0].tensors:
        if t.is_constant:
            continue
        values = np.stack([w[id(t)] for w in whole])
        assert ranges[id(t)] == pytest.approx((values.min(), values.max()), rel=1e-6, abs=1e-6)


def test_full_int8_of_a_model_with_that_custom_op(tmp_path):
    model = custom_model()
    data = calibrate.Samples(samples_for(model, 16), "random")
    recipe = recipes.load("full-int8")
    out = pipeline.apply(model, recipe, data=data)
    kept = [t for step in out.records for t in step["tensors"] if t["action"] == "kept float"]
    assert kept and kept[0]["op"] == "CUSTOM"
    refined = [t for t in out.records[-1]["tensors"] if t["action"] == "rounded"]
    assert len(refined) == 2  # both convolutions, around the float custom op
    path = tmp_path / "out.tflite"
    writer.write(out.model, path)
    got = runtime.Runner(path)
    ref = runtime.load(model)
    for sample in data.values[:4]:
        a, b = got.run(sample)[0], ref.run(sample)[0]
        assert np.abs(a - b).max() < 0.1 * np.abs(b).max()


def test_control_flow_segments_carry_the_subgraphs_they_call(tf_models):
    """WHILE and IF read bodies from other subgraphs; a scalar input cannot take a batch."""
    model = reader.read(tf_models["control_flow"])
    assert len(model.subgraphs) > 1
    samples = samples_for(model, 5)
    for step in (1, 2):
        cursor = assert_cut_matches(model, samples, step)
        assert cursor.unbatched  # the scalar loop count runs per sample
    seg = segments.extract(model, 0, 1, plan=segments.plan(model.subgraphs[0]))
    assert seg.model.subgraphs[1:] == model.subgraphs[1:]


def test_a_model_with_variables_runs_whole_for_each_advance(tf_models):
    model = reader.read(tf_models["string_and_variables"])
    assert segments.stateful(model)
    samples = samples_for(model, 3)
    cursor = propagate.Cursor(model, samples, name="test")
    outputs = cursor.outputs()
    runner = runtime.load(model)
    for i, sample in enumerate(samples):
        want = runner.run(sample)
        for got, w in zip(outputs, want):
            np.testing.assert_array_equal(got[i], w)


def test_ops_on_constants_alone_go_with_the_ops_that_read_them(tf_models):
    """A float16 model's DEQUANTIZE of each weight: made inside each segment that reads
    it, never carried in the cut (a copy per sample of every weight)."""
    model = reader.read(tf_models["float16_weights"])
    sg = model.subgraphs[0]
    plan = segments.plan(sg)
    dequantized = [op for op in sg.operators if op.type == "DEQUANTIZE"]
    assert dequantized and all(id(op.outputs[0]) in plan.derived for op in dequantized)
    samples = samples_for(model, 6)
    assert_cut_matches(model, samples)  # no cut holds a derived tensor
    k = next(i for i, op in enumerate(sg.operators) if op.type == "CONV_2D")
    seg = segments.extract(model, k, k + 1, plan=plan)
    types = [op.type for op in seg.model.subgraphs[0].operators]
    assert types[-1] == "CONV_2D" and "DEQUANTIZE" in types
    assert all(not t.is_constant for t in seg.inputs) and len(seg.inputs) == 1
