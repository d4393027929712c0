"""Runs a model over many samples one segment of ops at a time, keeping only the cut: the
activations that ops not yet run, or the graph's outputs, still read.

Layer-wise passes need each layer's inputs over every sample, with the layers before it
as they left them. A Cursor walks the main subgraph in order: `advance(k)` runs ops up to
k (exclusive) as one sub-model (tflrewrite.segments), once, batched over the samples, and
frees each activation once its last reader has run. A pass reads layer k's input from the
cut, edits layer k's weights, and the next advance runs layer k as edited: one pass over
the model in all, and memory that follows the widest cut rather than the whole model. A
cursor whose model does not change (the original, which a fit aims at) can advance on a
thread of its own while the caller works (start_advance): with a second core free, its
runs then cost the caller little.

Integer segments run with LiteRT's builtin kernels, as the whole model runs in verify:
the passes then fit to exactly the activations a whole-model run gives. All-float
segments run with XNNPACK (see FLOAT_XNNPACK). Each run takes runtime.THREADS threads, one
for a small segment (SMALL_WORK): the cursor's runs stand between one layer's fit and the
next, and LiteRT's kernels give the same results on any count.

Batching resizes a segment's inputs from [1, ...] to [n, ...]. Where that fails, changes
an output's shape other than its first axis, or changes the first sample's outputs in any
bit (a RESHAPE to a fixed [1, ...] shape, say, or a float kernel that rounds a batch
otherwise), the segment is halved until the part that cannot take a batch runs one sample
at a time. Models that keep state between runs (variables)
run whole, one sample at a time, for each advance.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from tflrewrite import runtime, segments
from tflrewrite.errors import TflRewriteError
from tflrewrite.model import Model, Tensor

# Bytes of activations one batched run of a segment may take: samples are run in chunks
# of this much. Small: LiteRT's convolutions slow down per sample once a batch outgrows
# the cache (measured on 3x3 convolutions, 16 channels, 32x32: 0.5 ms a sample in chunks
# of 1 MB, 1.5 ms in one batch of 8 MB; 0.35 ms run one at a time in the whole model).
CHUNK_BYTES = 2**20
# Whether segments whose activations are all float run with XNNPACK: three to four times
# faster than the builtin float kernels (LiteRT's Invoke 25 -> 13 s in a data-aware prune +
# cluster + int8 of a 200-layer 3x3 convolution stack). Its float rounding differs from
# the builtin kernels' by about 1e-7 relative, far under any compression's noise, but it
# can tip a few of the fit's discrete choices (a pruning mask, a codebook): outputs of the
# data-aware prune and cluster of float models differ from those of the builtin kernels,
# and are as good (tools/bench/datafit_mnist.py: 0.952 test accuracy either way, 37,986
# against 37,969 zipped bytes; conv200 17.82 dB either way). Integer segments keep the
# builtin kernels, whose codes a whole-model run in verify reproduces bit for bit. XNNPACK
# runs int8 segments twice as fast (a 200-layer int8 stack: 5.2 -> 2.3 s), but its
# requantization rounds otherwise and moves the fits more than float rounding does:
# tools/bench/datafit_table.py went both ways by up to 0.9 dB, and lost 1.3 dB on
# keyword_spotting_on_off_v3's AdaRound.
FLOAT_XNNPACK = True
# A segment whose multiply-adds over all samples (estimated: see _work) are fewer than this
# runs on one thread: LiteRT's threads gain it nothing, and a float segment's XNNPACK
# pool of two threads took 0.4-0.6 ms to stop when its interpreter was freed, against 0.02
# ms for one (a 128 x 128 FULLY_CONNECTED over 128 samples: 2M multiply-adds, 0.12 ms to
# run on either count).
SMALL_WORK = 2**23


class Cursor:
    """The main subgraph of `model` over `samples` (lists of real input values, in model
    input order), advanced op range by op range. The model's constants may change between
    advances (a pass fitting layer by layer), its graph may not. `name` names it in
    errors. `ranges`: keep `ranges`, the (low, high) of every float32 activation the
    cursor has made (its model's inputs too), keyed by id(tensor), each taken as its ops
    ran (the low and high calibration takes, from the cursor's own runs); None where the
    cursor cannot (a model run whole)."""

    def __init__(
        self, model: Model, samples: list[list[np.ndarray]], *, name: str, ranges: bool = False
    ):
        sg = model.subgraphs[0]
        self.model, self.name = model, name
        self.count = len(samples)
        self._position = 0
        self._pending: Future | None = None
        self._thread: ThreadPoolExecutor | None = None
        self.unbatched: list[tuple[int, int]] = []  # op ranges run one sample at a time
        self._ops = len(sg.operators)
        self._plan = segments.plan(sg)
        self._last = self._plan.last_read
        self._whole = segments.stateful(model)
        self._samples = samples if self._whole else None
        self._live: dict[int, np.ndarray | list[np.ndarray]] = {}
        self.ranges: dict[int, tuple[float, float]] | None = None
        if ranges and not self._whole:
            self.ranges = {}
        for i, t in enumerate(sg.inputs):
            self._live[id(t)] = np.stack([_to_stored(t, s[i]) for s in samples])
            self._note(t, self._live[id(t)])

    # -------------------------------------------------------------- reading the cut

    @property
    def position(self) -> int:
        """The op the cursor stands at: ops before it have run."""
        self.wait()
        return self._position

    def stored(self, t: Tensor) -> np.ndarray:
        """Tensor `t` of the cut over every sample, as LiteRT stores it: samples x t's
        shape. KeyError where the cut does not hold it, ValueError where its shape
        differs between samples."""
        self.wait()
        value = self._live[id(t)]
        return value if isinstance(value, np.ndarray) else np.stack(value)

    def real(
        self, t: Tensor, start: int = 0, stop: int | None = None, dtype: type = np.float32
    ) -> np.ndarray:
        """Samples [start, stop) of tensor `t` of the cut in real values (`dtype`,
        dequantized where it has a scale)."""
        return real_values(t, self.stored(t)[start:stop], dtype=dtype)

    def outputs(self) -> list[np.ndarray]:
        """The graph's outputs over every sample, once advanced to the end."""
        self.advance(self._ops)
        return [self.stored(t) for t in self.model.subgraphs[0].outputs]

    # -------------------------------------------------------------- moving on

    def holds(self, t: Tensor) -> bool:
        """Whether the cut holds tensor `t`."""
        self.wait()
        return id(t) in self._live

    def advance(self, stop: int, hold: tuple[Tensor, ...] = ()) -> None:
        """Run ops [position, stop) on the cut. The cut then keeps the tensors of `hold`
        that it holds or that these ops make, as well as those a later op reads, until the
        next advance: a caller reading tensors of several ops ahead runs them in one
        segment rather than one segment each."""
        self.wait()
        self._advance(stop, hold)

    def start_advance(self, stop: int, hold: tuple[Tensor, ...] = ()) -> None:
        """advance(stop, hold) on the cursor's own thread, returning at once, so that the caller's
        own work overlaps it (LiteRT's runs and numpy's copies let go of the GIL). Reading
        the cursor, or advancing it again, waits for it to finish; its error, if any, is
        raised there. The thread is started once and kept for the cursor's later advances:
        a pass advances once a layer, and starting a thread each time cost the caller more
        than the run it moved away (1,526 FULLY_CONNECTED layers: 0.9 ms a start)."""
        self.wait()
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name} cursor")
        self._pending = self._thread.submit(self._advance, stop, hold)

    def wait(self) -> None:
        """Let an advance started by start_advance finish (raising its error)."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        pending.result()

    def _advance(self, stop: int, hold: tuple[Tensor, ...] = ()) -> None:
        if stop < self._position:
            raise ValueError(f"the cursor is at op {self._position}, past {stop}")
        keep = frozenset(id(t) for t in hold)
        if stop > self._position and self._whole:
            self._advance_whole(stop, keep)
        elif stop > self._position:
            self._run(self._position, stop, keep)
        self._position = stop
        for key in [k for k in self._live if self._last.get(k, -1) < stop and k not in keep]:
            del self._live[key]

    def _run(self, start: int, stop: int, keep: frozenset[int] = frozenset()) -> None:
        seg = segments.extract(self.model, start, stop, plan=self._plan, keep=keep)
        if not seg.outputs:
            return  # nothing later reads what it makes
        floats = all(t.dtype == "FLOAT32" for t in seg.inputs + seg.outputs + seg.internal)
        name = f"{self.name}, ops {start}..{stop - 1}"
        xnnpack = FLOAT_XNNPACK and floats
        watched = self._watched(seg)
        runner = runtime.load(
            seg.model,
            name=name,
            xnnpack=xnnpack,
            threads=runtime.THREADS if _work(seg) * self.count >= SMALL_WORK else 1,
            keep_tensors=bool(watched),
        )
        inputs = [self._live[id(t)] for t in seg.inputs]
        outs = self._batched(runner, seg, inputs, watched)
        if outs is None and stop - start > 1:
            middle = (start + stop) // 2
            self._run(start, middle, keep)
            self._run(middle, stop, keep)
            return
        if outs is None:
            self.unbatched.append((start, stop))
            outs = self._each(runner, inputs, watched)
        for t, value in zip(seg.outputs, outs):
            self._live[id(t)] = value
            for part in value if isinstance(value, list) else [value]:
                self._note(t, part)

    def _note(self, t: Tensor, value: np.ndarray) -> None:
        """Widen t's range (where kept) to take in `value`, as stored."""
        if self.ranges is None or t.dtype != "FLOAT32" or not value.size:
            return
        low, high = float(value.min()), float(value.max())
        if id(t) in self.ranges:
            was = self.ranges[id(t)]
            low, high = min(low, was[0]), max(high, was[1])
        self.ranges[id(t)] = (low, high)

    def _watched(self, seg: segments.Segment) -> list[tuple[Tensor, int]]:
        """(tensor, index in the segment's model) of the float32 activations made inside
        the segment whose ranges are kept: read after each run."""
        if self.ranges is None:
            return []
        index = {id(t): i for i, t in enumerate(seg.model.subgraphs[0].tensors)}
        return [(t, index[id(t)]) for t in seg.internal if t.dtype == "FLOAT32"]

    def _note_inside(self, runner, watched: list[tuple[Tensor, int]]) -> None:
        for t, i in watched:
            value = runner.stored(i)
            if value is not None:
                self._note(t, value)

    def _batched(self, runner, seg, inputs: list, watched=()) -> list[np.ndarray] | None:
        """The segment's outputs over every sample from runs on chunks of samples, or None
        where the segment does not take a batch."""
        n = self.count
        if n < 2 or not all(_batchable(x) for x in inputs):
            return None
        try:
            first = runner.run_batch([x[0] for x in inputs])
        except TflRewriteError:
            return None
        if not all(o.ndim and o.shape[0] == 1 for o in first):
            return None
        chunk = self._chunk(seg, inputs, first)
        outs = [np.empty((n, *o.shape), o.dtype) for o in first]
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            part = [x[start:stop].reshape((stop - start, *x.shape[2:])) for x in inputs]
            into = [out[start:stop].reshape((stop - start, *out.shape[2:])) for out in outs]
            try:
                runner.run_batch(part, into=into)
            except TflRewriteError:  # no batch here, or outputs of other shapes
                return None
            self._note_inside(runner, watched)
            if start == 0 and not all(_same(out[0], o) for out, o in zip(outs, first)):
                return None
        return outs

    def _each(self, runner, inputs: list, watched=()) -> list:
        """The segment's outputs, one run per sample: stacked, or a list per output where
        their shapes differ between samples."""
        got = []
        for i in range(self.count):
            got.append(runner.run_batch([x[i] for x in inputs]))
            self._note_inside(runner, watched)
        outs = []
        for k in range(len(runner.outputs)):
            values = [g[k] for g in got]
            same = all(v.shape == values[0].shape for v in values)
            outs.append(np.stack(values) if same else values)
        return outs

    def _chunk(self, seg: segments.Segment, inputs: list, first: list) -> int:
        per_sample = sum(x[0].nbytes for x in inputs) + sum(o.nbytes for o in first)
        per_sample += sum(stored_bytes(t) for t in seg.internal)
        return int(max(1, min(self.count, CHUNK_BYTES // max(per_sample, 1))))

    def _advance_whole(self, stop: int, keep: frozenset[int]) -> None:
        """Run the whole model once per sample, keeping the cut at `stop` (and `keep`)."""
        sg = self.model.subgraphs[0]
        runner = runtime.load(self.model, name=self.name, keep_tensors=True)
        index = {id(t): i for i, t in enumerate(sg.tensors)}
        made = [
            t for op in sg.operators[self._position : stop] for t in op.outputs if t is not None
        ]
        kept = [t for t in made if self._last.get(id(t), -1) >= stop or id(t) in keep]
        values: dict[int, list] = {id(t): [] for t in kept}
        for sample in self._samples:
            runner.run(sample)
            for t in kept:
                value = runner.stored(index[id(t)])
                if value is not None:
                    values[id(t)].append(value)
        for t in kept:
            got = values[id(t)]
            if len(got) < self.count:
                continue  # not computed (a branch not taken): nothing to hand on
            same = all(v.shape == got[0].shape for v in got)
            self._live[id(t)] = np.stack(got) if same else got


def real_values(
    t: Tensor, stored: np.ndarray, *, count: int = 1, dtype: type = np.float32
) -> np.ndarray:
    """Stored activations of `t` in real values of `dtype` (float64 for int64 `stored`).
    `count`: `stored` is a sum of that many of them (the zero point counts as often)."""
    q = t.quantization
    if stored.dtype.kind in "iu" and q is not None and q.is_affine:
        zero = 0 if q.zero_point is None or not q.zero_point.size else int(q.zero_point.flat[0])
        if stored.dtype == np.int64:
            return (stored - zero * count) * float(q.scale.flat[0])
        scale = dtype(q.scale.flat[0])
        return (stored.astype(dtype) - dtype(zero)) * scale
    return stored.astype(dtype, copy=False)


def _to_stored(t: Tensor, value: np.ndarray) -> np.ndarray:
    """A real input value in the dtype the model stores input `t` in (as runtime feeds
    inputs)."""
    q = t.quantization
    dtype = t.np_dtype
    if dtype is None:
        return np.asarray(value)
    if dtype.kind in "iu" and q is not None and q.is_affine:
        zero = 0 if q.zero_point is None or not q.zero_point.size else int(q.zero_point.flat[0])
        info = np.iinfo(dtype)
        codes = np.round(np.asarray(value, np.float64) / float(q.scale.flat[0])) + zero
        return np.clip(codes, info.min, info.max).astype(dtype)
    return np.asarray(value).astype(dtype, copy=False)


def _batchable(x) -> bool:
    """Whether a tensor over the samples has a first axis of 1 per sample to batch on."""
    return isinstance(x, np.ndarray) and x.ndim >= 2 and x.shape[1] == 1


def _same(batched: np.ndarray, alone: np.ndarray) -> bool:
    """Whether a sample's outputs from a batched run are exactly those of a run on it
    alone. Kernels that take another path for a batch round floats otherwise (LiteRT's
    FULLY_CONNECTED, say), and the fit's discrete choices can tip on it: such segments
    run one sample at a time, as the whole model runs in verify."""
    return batched.shape == alone.shape and bool(np.array_equal(batched, alone))


def stored_bytes(t: Tensor) -> int:
    """Bytes of one sample of tensor `t` as stored (0 where its shape or dtype is unknown)."""
    return 0 if t.np_dtype is None else _elements(t) * t.np_dtype.itemsize


def _work(seg: segments.Segment) -> int:
    """A segment's multiply-adds for one sample, roughly: per op, its largest constant
    input's size at each output position (output elements over the last axis), or its
    output elements where it reads no constant of two axes or more."""
    total = 0
    for op in seg.model.subgraphs[0].operators:
        made = sum(_elements(t) for t in op.outputs if t is not None)
        weights = [
            _elements(t)
            for t in op.inputs
            if t is not None and t.is_constant and t.shape is not None and len(t.shape) > 1
        ]
        last = next((t.shape[-1] for t in op.outputs if t is not None and t.shape), 1)
        total += max(weights) * made // max(last, 1) if weights else made
    return total


def _elements(t: Tensor) -> int:
    return 0 if t.shape is None else int(np.prod(t.shape, dtype=np.int64))
