"""Runs a Model, a .tflite file or its bytes in LiteRT, or in tflite-micro for TFLite Micro.

This is the one place that runs models. Passes that fit to data, calibration, verification
and the reports all go through it, so that each of them feeds inputs, reads outputs and
kept intermediates in the same real (dequantized) values, loads with the same kernels
(LiteRT's builtin ones on one thread, unless asked for XNNPACK or more threads, or the
model holds custom ops only the default XNNPACK delegate implements) and fails with the
same messages; and so that serialising a Model to run it is not a pass's business.
The interpreters' packages are imported only when a model is loaded: commands that run
nothing (audit, recipes) never import them. A Child runs functions that run models in a
child process, where a runtime's crash ends the child rather than the command.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pickle
import re
import signal
import struct
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from tflrewrite.errors import RuntimeCrashError, TflRewriteError
from tflrewrite.model import Model


def load(
    source: Model | str | os.PathLike | bytes,
    *,
    name: str | None = None,
    micro: bool = False,
    keep_tensors: bool = False,
    xnnpack: bool = False,
    threads: int = 1,
) -> Runner | TflmRunner:
    """An interpreter for `source`: a Model (serialised here), a file, or a file's bytes.
    `name` names it in errors (a file's path by default); `micro` runs it in tflite-micro,
    the one runtime with TFLM's DECODE op (the caller, who knows what laid the model down,
    says so). `keep_tensors`, `xnnpack` and `threads` are LiteRT's (see Runner)."""
    content = None
    if isinstance(source, Model):
        from tflrewrite import writer

        content = writer.to_bytes(source)
    elif isinstance(source, bytes):
        content = source
    path = name or ("<bytes>" if content is not None else os.fspath(source))
    if micro:
        model = source if isinstance(source, Model) else None
        return TflmRunner(path, content=content, model=model)
    return Runner(
        path, xnnpack=xnnpack, content=content, keep_tensors=keep_tensors, threads=threads
    )


class BaseRunner:
    """What both runtimes offer: `path` (names the model in errors), `inputs` and `outputs`
    (LiteRT's tensor descriptions), `run` on one sample and `run_each` over many."""

    path: str
    inputs: list[dict]
    outputs: list[dict]

    def run(self, sample: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def run_each(self, samples: Iterable[list[np.ndarray]]) -> Iterator[list[np.ndarray]]:
        """Runs the samples one at a time (memory stays that of one inference), yielding
        each one's outputs; kept tensors read before the next step are that sample's."""
        for sample in samples:
            yield self.run(sample)


class Runner(BaseRunner):
    """One model in a LiteRT interpreter, fed and read in real (dequantized) values.

    `content` runs model bytes instead of the file at `path` (which then only names it);
    `keep_tensors` keeps every intermediate tensor readable after a run (calibration and
    per-layer comparison need them; LiteRT otherwise reuses their memory). A model with
    custom ops that the builtin kernels lack loads with the default delegates (`xnnpack`
    says which way it loaded), as LiteRT's default interpreter would run it. `threads`:
    LiteRT's threads for one run (its kernels split a run's outputs among them, so they
    give the same results on any count: tests/test_propagate.py).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        xnnpack: bool = False,
        content: bytes | None = None,
        keep_tensors: bool = False,
        threads: int = 1,
    ):
        self.path = os.fspath(path)
        source = {"model_path": self.path} if content is None else {"model_content": content}
        _tell("doing", (self.path, "LiteRT", "loading"))
        try:
            try:
                self.interpreter = _interpreter(source, xnnpack, keep_tensors, threads)
                self.interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as e:
                if xnnpack or UNRESOLVED not in str(e):
                    raise
                # Custom ops that only the default XNNPACK delegate implements (MediaPipe's
                # Convolution2DTransposeBias): LiteRT's default interpreter runs them.
                self.interpreter = _interpreter(source, True, keep_tensors, threads)
                self.interpreter.allocate_tensors()
                xnnpack = True
            self.inputs = self.interpreter.get_input_details()
            self.outputs = self.interpreter.get_output_details()
        except UnicodeDecodeError:  # LiteRT decodes tensor names as strict UTF-8
            raise TflRewriteError(
                f"{self.path}: LiteRT cannot report tensors whose names are not UTF-8"
            ) from None
        except (RuntimeError, ValueError) as e:
            raise TflRewriteError(f"{self.path}: LiteRT cannot load it: {_first_line(e)}") from None
        self.xnnpack = xnnpack
        self._by_name: dict[str, dict] = {}
        self._by_index: dict[int, dict] = {}
        self._shapes = [tuple(int(x) for x in d["shape"]) for d in self.inputs]

    def run(self, sample: list[np.ndarray]) -> list[np.ndarray]:
        _tell("doing", (self.path, "LiteRT", "running"))
        try:
            for detail, value in zip(self.inputs, sample):
                self.interpreter.set_tensor(detail["index"], _to_stored(value, detail))
            self.interpreter.invoke()
        except (RuntimeError, ValueError) as e:  # ValueError: an input LiteRT cannot be fed
            raise TflRewriteError(
                f"{self.path}: LiteRT failed to run it: {_first_line(e)}"
            ) from None
        return [_to_real(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]

    def run_batch(
        self, inputs: list[np.ndarray], *, into: list[np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """One run on inputs in stored form (the model's input dtypes, as `stored` gives
        tensors), the model's inputs resized first to the arrays' shapes where those
        differ (a batch of samples on the first axis, say); the outputs as stored. No
        conversion to or from real values: segments of a model hand each other their
        tensors as LiteRT keeps them. `into`: arrays of the outputs' shapes to copy them
        into (one copy, not two), returned; an output of another shape is an error."""
        shapes = [tuple(x.shape) for x in inputs]
        try:
            if shapes != self._shapes:
                for detail, shape in zip(self.inputs, shapes):
                    self.interpreter.resize_tensor_input(detail["index"], shape, strict=False)
                self.interpreter.allocate_tensors()
                self._shapes = shapes
            for detail, value in zip(self.inputs, inputs):
                self.interpreter.set_tensor(detail["index"], value)
            self.interpreter.invoke()
            if into is None:
                return [self.interpreter.get_tensor(d["index"]) for d in self.outputs]
            for detail, out in zip(self.outputs, into):
                view = self.interpreter.tensor(detail["index"])()  # LiteRT's own memory
                if view.shape != out.shape:
                    raise ValueError(f"output {detail['name']} is {view.shape}, not {out.shape}")
                out[...] = view
                del view  # LiteRT refuses to run again while a view of it is held
            return into
        except (RuntimeError, ValueError) as e:
            self._shapes = []  # resized or not: resize again next time
            raise TflRewriteError(
                f"{self.path}: LiteRT failed to run it: {_first_line(e)}"
            ) from None

    def tensor_details(self) -> list[dict]:
        """LiteRT's description of every tensor of the main subgraph."""
        return self.interpreter.get_tensor_details()

    def op_details(self) -> list[dict]:
        """LiteRT's description of every op of the main subgraph, in run order (LiteRT
        offers it only under a private name)."""
        return self.interpreter._get_ops_details()

    def stored(self, index: int) -> np.ndarray | None:
        """Tensor `index` as stored after the last run (keep_tensors), or None where the run
        never computed it (LiteRT has no data for it)."""
        try:
            return self.interpreter.get_tensor(index)
        except ValueError:
            return None

    def real(self, tensor: str | int) -> np.ndarray:
        """A kept tensor after the last run, by name (the last of that name) or index, in
        float64 real values: dequantized where it has a scale. Float64 throughout, unlike
        `run`'s outputs (which keep a float tensor's dtype): the data-aware passes fit in it."""
        if not self._by_index:
            details = self.tensor_details()
            self._by_name = {d["name"]: d for d in details}
            self._by_index = {d["index"]: d for d in details}
        detail = (self._by_name if isinstance(tensor, str) else self._by_index)[tensor]
        value = self.interpreter.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        if scale:
            return (value.astype(np.float64) - zero) * scale
        return value.astype(np.float64)


# Threads for work one process does side by side (statistics' chunks, rows of a kernel, a
# model segment's run): one per core this process may run on, up to four, or one where
# OMP_NUM_THREADS=1 asks a process to compute on one thread (tflrewrite.fanout's workers,
# one per core).
def compute_threads() -> int:
    if os.environ.get("OMP_NUM_THREADS") == "1":
        return 1
    affinity = getattr(os, "sched_getaffinity", None)
    return max(1, min(4, len(affinity(0)) if affinity else os.cpu_count() or 1))


THREADS = compute_threads()


def one_blas_thread():
    """A context in which numpy's BLAS computes on the calling thread alone: the work that
    runs models and kernels between BLAS calls spreads itself over THREADS threads, and
    OpenBLAS's own threads busy-wait for their next call, taking those cores from LiteRT's
    and the kernels' threads. Measured on two cores: a 128 x 128 int8 FULLY_CONNECTED ran
    in 0.75 ms a segment alone and in 6.0 ms after each 128 x 128 solve; the data-aware
    prune + cluster + int8 of tools/bench/datafit_scale.py's 1,526-layer stack took 41.5
    s instead of 66.3 s. With one thread, BLAS's sums are also the same on any machine,
    whatever its count of cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


# LiteRT's message for a custom op its builtin resolver lacks.
UNRESOLVED = "unresolved custom op"


def _interpreter(source: dict, xnnpack: bool, keep_tensors: bool, threads: int):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        # LiteRT warns that keeping tensors with the default delegates costs memory: it is
        # what keep_tensors asks for (and XNNPACK keeps them readable: tests/test_propagate)
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        return Interpreter(
            **source,
            num_threads=threads,
            experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=keep_tensors,
        )


def tflm_available() -> bool:
    """Whether the tflite-micro package (the `tflm` extra) is installed."""
    return importlib.util.find_spec("tflite_micro") is not None


class TflmRunner(BaseRunner):
    """One model in the tflite-micro package's interpreter, with Runner's interface: the
    one runtime here with TFLM's DECODE op. Reads the file with tflrewrite's reader too
    (unless given the `model` itself), for the names of the inputs and outputs and the
    arena size; `content` runs bytes instead of the file at `path`, as in Runner."""

    def __init__(
        self, path: str | os.PathLike, content: bytes | None = None, model: Model | None = None
    ):
        from tflite_micro.python.tflite_micro import runtime as micro

        from tflrewrite import reader

        self.path = os.fspath(path)
        if model is None:
            model = (
                reader.read(self.path) if content is None else reader.read_bytes(content, self.path)
            )
        if content is None:
            with open(self.path, "rb") as f:
                content = f.read()
        self._data = content  # the interpreter reads the model where it lies
        _tell("doing", (self.path, "tflite-micro", "loading"))
        try:
            self.interpreter = micro.Interpreter.from_bytes(self._data, arena_size=_arena(model))
            sg = model.subgraphs[0]
            self.inputs = [
                _tflm_detail(self.interpreter.get_input_details(i), i, t.name)
                for i, t in enumerate(sg.inputs)
            ]
            self.outputs = [
                _tflm_detail(self.interpreter.get_output_details(i), i, t.name)
                for i, t in enumerate(sg.outputs)
            ]
        except (RuntimeError, ValueError) as e:
            raise TflRewriteError(
                f"{self.path}: tflite-micro cannot load it: {_first_line(e)}"
            ) from None

    def run(self, sample: list[np.ndarray]) -> list[np.ndarray]:
        _tell("doing", (self.path, "tflite-micro", "running"))
        try:
            for i, (detail, value) in enumerate(zip(self.inputs, sample)):
                self.interpreter.set_input(_to_stored(value, detail), i)
            self.interpreter.invoke()
            return [_to_real(self.interpreter.get_output(i), d) for i, d in enumerate(self.outputs)]
        except (RuntimeError, ValueError) as e:
            raise TflRewriteError(
                f"{self.path}: tflite-micro failed to run it: {_first_line(e)}"
            ) from None

    def arena_bytes(self) -> int | None:
        """The arena bytes TFLM allocated for the model (its recording allocator's total,
        which print_allocations writes to file descriptor 2); None where it says nothing."""
        sys.stderr.flush()
        with tempfile.TemporaryFile() as sink:
            saved = os.dup(2)
            try:
                os.dup2(sink.fileno(), 2)
                self.interpreter.print_allocations()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            said = sink.read().decode("utf-8", "replace")
        found = re.search(r"Arena allocation total (\d+) bytes", said)
        return int(found.group(1)) if found else None


def _arena(model: Model) -> int:
    """Arena bytes that surely hold the model's tensors: the package's default (ten times
    the file) does not count weights that DECODE ops expand into the arena at run time."""
    activations = sum(
        int(np.prod(t.shape or (1,))) * (t.np_dtype.itemsize if t.np_dtype is not None else 8)
        for _, _, t in model.tensors()
        if not t.is_constant
    )
    items = sum(len(sg.tensors) + len(sg.operators) for sg in model.subgraphs)
    return 2 * activations + 256 * items + 2**20


def _tflm_detail(detail: dict, index: int, name: str) -> dict:
    """A tflite-micro tensor description in LiteRT's form (per-tensor quantization only)."""
    q = detail["quantization_parameters"]
    scales, zeros = q["scales"], q["zero_points"]
    quantization = (float(scales[0]), int(zeros[0])) if scales.size == 1 else (0.0, 0)
    return {
        "index": index,
        "name": name,
        "dtype": detail["dtype"],
        "shape": np.asarray(detail["shape"]),
        "quantization": quantization,
    }


# ------------------------------------------------------------------ inputs


def random_inputs(runners: list[BaseRunner], samples: int, seed: int) -> list[list[np.ndarray]]:
    """Seeded inputs in real values: uniform over the range a quantized input can represent
    (taken from whichever model quantizes it), else uniform in [-1, 1] for floats; integer
    and boolean inputs get their dtype's values."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        sample = []
        for i, detail in enumerate(runners[0].inputs):
            lo, hi = -1.0, 1.0
            for r in runners:
                scale, zero = r.inputs[i]["quantization"]
                if scale:
                    info = np.iinfo(r.inputs[i]["dtype"])
                    lo, hi = scale * (info.min - zero), scale * (info.max - zero)
                    break
            dtype = np.dtype(detail["dtype"])
            shape = detail["shape"]
            if dtype == np.bool_:
                sample.append(rng.random(shape) < 0.5)
            elif dtype.kind in "iu" and not detail["quantization"][0]:
                info = np.iinfo(dtype)
                sample.append(
                    rng.integers(max(info.min, -128), min(info.max, 127) + 1, size=shape).astype(
                        dtype
                    )
                )
            else:
                sample.append(rng.uniform(lo, hi, size=shape).astype(np.float32))
        out.append(sample)
    return out


# The array of an .npz that holds labels or regression targets for the samples, never a model
# input (unless the model has an input of that name): class labels as integers, targets as
# floats, first axis = samples.
LABELS = "y"


def npz_inputs(
    path: str | os.PathLike, runner: BaseRunner, limit: int | None
) -> list[list[np.ndarray]]:
    """Samples from an .npz: one array per model input, keyed by input name (or, for a
    single-input model, any single array besides the labels), first axis = samples."""
    return array_inputs(npz_arrays(path), runner, limit, where=os.fspath(path))


def npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an .npz, by key."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise TflRewriteError(f"{path}: not a readable .npz ({_first_line(e)})") from None


def array_inputs(
    arrays: Mapping[str, np.ndarray], runner: BaseRunner, limit: int | None, *, where: str
) -> list[list[np.ndarray]]:
    """Samples from arrays keyed as in an .npz (see npz_inputs); `where` names them in
    errors. The labels (LABELS) are not an input."""
    if not any(d["name"] == LABELS for d in runner.inputs):
        arrays = {k: v for k, v in arrays.items() if k != LABELS}
    columns = []
    for i, detail in enumerate(runner.inputs):
        name = detail["name"]
        if name in arrays:
            columns.append(arrays[name])
        elif len(arrays) == 1 and len(runner.inputs) == 1:
            columns.append(next(iter(arrays.values())))
        elif f"input_{i}" in arrays:
            columns.append(arrays[f"input_{i}"])
        else:
            raise TflRewriteError(
                f"{where}: no array for model input {name!r} "
                f"(arrays: {', '.join(sorted(arrays)) or 'none'})"
            )
    n = min(len(c) for c in columns)
    if limit is not None:
        n = min(n, limit)
    samples = []
    for k in range(n):
        sample = []
        for column, detail in zip(columns, runner.inputs):
            value = np.asarray(column[k])
            shape = tuple(detail["shape"])
            if value.size != int(np.prod(shape)):
                raise TflRewriteError(
                    f"{where}: sample {k} for input {detail['name']!r} has "
                    f"shape {value.shape}, the model wants {shape}"
                )
            sample.append(value.reshape(shape))
        samples.append(sample)
    return samples


def array_labels(
    arrays: Mapping[str, np.ndarray], runner: BaseRunner, count: int, *, where: str
) -> np.ndarray | None:
    """The first `count` labels (LABELS) of arrays keyed as in an .npz, or None where there
    are none. Integers are class labels, which need an output of one score per class;
    floats are regression targets, which need an output of their size per sample."""
    if LABELS not in arrays or any(d["name"] == LABELS for d in runner.inputs):
        return None
    y = np.asarray(arrays[LABELS])
    if y.dtype.kind not in "biuf" or y.ndim == 0:
        raise TflRewriteError(
            f"{where}: {LABELS} must hold integer class labels or float targets, one per "
            f"sample (it holds {y.dtype} of shape {y.shape})"
        )
    if len(y) < count:
        raise TflRewriteError(f"{where}: {LABELS} holds {len(y)} labels for {count} samples")
    y = y[:count]
    if not any(_fits(y, d["shape"]) for d in runner.outputs):
        shapes = ", ".join("x".join(map(str, d["shape"])) for d in runner.outputs)
        want = (
            f"an output of more than {int(y.max(initial=0))} class scores"
            if y.dtype.kind in "biu"
            else f"an output of {int(np.prod(y.shape[1:]))} values per sample"
        )
        raise TflRewriteError(
            f"{where}: {LABELS} fits no output of the model: its {y.dtype} values need "
            f"{want} (outputs: {shapes})"
        )
    return y


def _fits(y: np.ndarray, shape: Sequence[int]) -> bool:
    """Whether labels `y` (first axis = samples) go with an output of this shape (batch of
    one first): class labels with one score vector, targets with as many values."""
    per_sample = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if y.dtype.kind in "biu":
        classes = [d for d in shape[1:] if d != 1]
        one_each = y.size == len(y)
        return len(classes) == 1 and classes[0] >= 2 and one_each and _in_range(y, classes[0])
    return y.size == len(y) * per_sample


def _in_range(y: np.ndarray, classes: int) -> bool:
    return y.size == 0 or (int(y.min()) >= 0 and int(y.max()) < classes)


def _to_stored(value: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if scale and dtype.kind in "iu":
        info = np.iinfo(dtype)
        q = np.round(np.asarray(value, np.float64) / scale) + zero
        return np.clip(q, info.min, info.max).astype(dtype)
    return np.asarray(value).astype(dtype, copy=False)


def _to_real(value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if scale and np.dtype(detail["dtype"]).kind in "iu":
        return (value.astype(np.float64) - zero) * scale
    return value.copy()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------ a child process

# In a Child's process, the stream of messages to the parent; None in every other process.
_parent: Any = None


def _tell(kind: str, value: Any) -> None:
    if _parent is not None:
        message = pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL)
        with _telling:  # runs on several threads (a cursor's advance) must not interleave
            _send(_parent, message)


_telling = threading.Lock()


def _send(stream: BinaryIO, message: bytes) -> None:
    """One message: its length, then its bytes (a pickle), so that a message the other
    side cannot unpickle still leaves the stream in step."""
    stream.write(struct.pack("<Q", len(message)) + message)
    stream.flush()


def _receive(stream: BinaryIO) -> bytes:
    """The next message's bytes; EOFError where the stream ends before it does."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (size,) = struct.unpack("<Q", head)
    message = stream.read(size)
    if len(message) < size:
        raise EOFError
    return message


def progress(done: int, total: int) -> None:
    """How far a function running in a Child has got, passed on to the `progress` that the
    parent gave Child.call; nothing outside a Child."""
    _tell("progress", (done, total))


# What the child runs: this process's import path, then the loop of _serve. The cyclic
# collector runs rarely, as in the command's own process (tflrewrite.__main__): the
# imports make tens of thousands of objects that live as long as the child, and little
# cyclic garbage.
_BOOT = (
    "import gc, sys; gc.set_threshold(50_000, *gc.get_threshold()[1:]); sys.path[:] = {path!r}; "
    "from tflrewrite.runtime import _serve; _serve({fd})"
)


class Child:
    """A child process that runs functions for this one, so that a runtime's crash (a
    segfault or an abort in native code) ends the child, not the command: `call` then
    raises RuntimeCrashError naming the model that the runtime was loading or running (the
    runners say which as they go).

    The child is a fresh interpreter, as multiprocessing's "spawn" makes (forking a process
    that holds Numba's and LiteRT's threads is unsafe), but started without re-running the
    parent's main module: a script that calls tflrewrite needs no `__main__` guard. It
    imports `preload` as soon as it starts, while the parent goes on; `env` adds to (or
    replaces some of) the parent's environment variables in it; it ignores SIGINT (a
    Ctrl-C reaches the whole process group, and the parent, which decides, ends it); its
    stdout and stderr go to a temporary file that the parent passes on to its stderr after
    each call, so that what a runtime prints as it dies never makes more than the one line.
    Calls and results travel pickled over a socket pair. Use it as a context manager, or
    close() it.
    """

    def __init__(self, preload: Sequence[str] = (), env: Mapping[str, str] | None = None):
        import socket
        import subprocess

        self._output = tempfile.TemporaryFile()
        self._passed = 0  # bytes of the child's output passed on so far
        self._crash: str | None = None
        ours, theirs = socket.socketpair()
        with theirs:
            boot = _BOOT.format(path=list(sys.path), fd=theirs.fileno())
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", boot, *preload],
                    stdin=subprocess.DEVNULL,
                    stdout=self._output,
                    stderr=self._output,
                    pass_fds=(theirs.fileno(),),
                    env=None if env is None else {**os.environ, **env},
                )
            except OSError as e:
                ours.close()
                self._output.close()
                raise TflRewriteError(
                    f"cannot start {sys.executable or 'Python'} to run the models: {e}"
                ) from None
        self._socket = ours
        self._reader = ours.makefile("rb")
        self._writer = ours.makefile("wb")

    def call(
        self,
        function: Callable[..., Any],
        /,
        *args: Any,
        progress: Callable[[int, int], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """function(*args, **kwargs) in the child: a module-level function, picklable
        arguments and result. Its exceptions are raised here; `progress(done, total)` gets
        what it tells runtime.progress."""
        if self._crash is not None:
            raise RuntimeCrashError(self._crash)
        try:
            kind, value = self._exchange((function, args, kwargs), progress)
        except BaseException:  # an interrupt, a crash, or arguments that do not pickle
            self.close()
            raise
        self._pass_on_output()
        if kind == "error":
            raise value
        return value

    def _exchange(self, job: tuple, progress: Callable[[int, int], None] | None) -> tuple:
        doing = None
        message = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _send(self._writer, message)
            while True:
                kind, value = pickle.loads(_receive(self._reader))
                if kind == "doing":
                    doing = value
                elif kind == "progress" and progress is not None:
                    progress(*value)
                elif kind in ("ok", "error"):
                    return kind, value
        except (EOFError, BrokenPipeError, ConnectionResetError):  # the child died
            self._crash = self._crash_text(doing)
            raise RuntimeCrashError(self._crash) from None

    def close(self) -> None:
        """End the child. It holds nothing that needs a clean exit (it writes no files, and
        its output was passed on after each call), so it is killed, which is quicker than
        its interpreter's shutdown."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._reader, self._writer, self._socket, self._output):
            try:
                stream.close()
            except OSError:  # the writer's last flush, to a child that is gone
                pass

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pass_on_output(self) -> None:
        text = self._new_output()
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()

    def _new_output(self) -> str:
        fd = self._output.fileno()
        # pread: the child writes through the same open file, whose offset must stay its own
        data = os.pread(fd, max(os.fstat(fd).st_size - self._passed, 0), self._passed)
        self._passed += len(data)
        return data.decode("utf-8", "backslashreplace")

    def _crash_text(self, doing: tuple[str, str, str] | None) -> str:
        import subprocess

        try:
            code = self._process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:  # its end of the socket is closed, yet it lives
            self._process.kill()
            code = None
        if code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"killed by {signal.Signals(-code).name}: {signal.strsignal(-code)}"
        else:
            how = f"exit status {code}"
        said = [line.strip() for line in self._new_output().splitlines() if line.strip()]
        if said:
            how += f"; its last words: {said[-1][:160]}"
        if doing is None:
            return f"the process that runs the models died ({how})"
        path, runtime, verb = doing
        return f"{path}: {runtime} crashed {verb} it ({how})"


def isolated(
    function: Callable[..., Any],
    /,
    *args: Any,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> Any:
    """function(*args, **kwargs) in a Child of its own, which ends with the call."""
    with Child() as child:
        return child.call(function, *args, progress=progress, **kwargs)


def _serve(fd: int) -> None:
    """The child's loop: import the modules named after the boot code, then run each
    (function, args, kwargs) that comes and send back ("ok", result) or ("error",
    exception); end when the parent closes its end."""
    import socket

    global _parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in sys.argv[1:]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the call that needs it will say why
            pass
    sock = socket.socket(fileno=fd)
    jobs = sock.makefile("rb")
    _parent = sock.makefile("wb")
    while True:
        try:
            job = _receive(jobs)
        except EOFError:
            return
        try:
            function, args, kwargs = pickle.loads(job)
            reply = ("ok", function(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - raised again in the parent
            reply = ("error", _portable(e))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            message = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - a result that does not pickle
            message = pickle.dumps(("error", _portable(e)), protocol=pickle.HIGHEST_PROTOCOL)
        _send(_parent, message)


def _portable(e: Exception) -> Exception:
    """`e` as it can travel to the parent: itself where it pickles and unpickles, else a
    TflRewriteError or RuntimeError with its text; the child's traceback goes along as a
    note on anything that is not a TflRewriteError (that is, on bugs)."""
    if not isinstance(e, TflRewriteError):
        e.add_note("in tflrewrite's runtime child process:\n" + traceback.format_exc().rstrip())
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        if isinstance(e, TflRewriteError):
            return TflRewriteError(str(e))
        return RuntimeError(f"{type(e).__name__}: {e}")
