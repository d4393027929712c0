"""Runs a Model, a .tflite file or its bytes in LiteRT, or in tflite-micro for TFLite Micro.

This is the one place that runs models. Passes that fit to data, calibration, verification
and the reports all go through it, so that each of them feeds inputs, reads outputs and
kept intermediates in the same real (dequantized) values, loads with the same kernels
(LiteRT's builtin ones, one thread, unless asked for XNNPACK or the model holds custom ops
only the default XNNPACK delegate implements) and fails with the same messages; and so that
serialising a Model to run it is not a pass's business.
The interpreters' packages are imported only when a model is loaded: commands that run
nothing (audit, recipes) never import them.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Iterable, Iterator

import numpy as np

from tflrewrite.errors import TflRewriteError
from tflrewrite.model import Model


def load(
    source: Model | str | os.PathLike | bytes,
    *,
    name: str | None = None,
    micro: bool = False,
    keep_tensors: bool = False,
    xnnpack: bool = False,
) -> Runner | TflmRunner:
    """An interpreter for `source`: a Model (serialised here), a file, or a file's bytes.
    `name` names it in errors (a file's path by default); `micro` runs it in tflite-micro,
    the one runtime with TFLM's DECODE op (the caller, who knows what laid the model down,
    says so). `keep_tensors` and `xnnpack` are LiteRT's (see Runner)."""
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
    return Runner(path, xnnpack=xnnpack, content=content, keep_tensors=keep_tensors)


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
    says which way it loaded), as LiteRT's default interpreter would run it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        xnnpack: bool = False,
        content: bytes | None = None,
        keep_tensors: bool = False,
    ):
        self.path = os.fspath(path)
        source = {"model_path": self.path} if content is None else {"model_content": content}
        try:
            try:
                self.interpreter = _interpreter(source, xnnpack, keep_tensors)
                self.interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as e:
                if xnnpack or UNRESOLVED not in str(e):
                    raise
                # Custom ops that only the default XNNPACK delegate implements (MediaPipe's
                # Convolution2DTransposeBias): LiteRT's default interpreter runs them.
                self.interpreter = _interpreter(source, True, keep_tensors)
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


# LiteRT's message for a custom op its builtin resolver lacks.
UNRESOLVED = "unresolved custom op"


def _interpreter(source: dict, xnnpack: bool, keep_tensors: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        # LiteRT warns that keeping tensors with the default delegates costs memory: it is
        # what keep_tensors asks for (and XNNPACK keeps them readable: tests/test_propagate)
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        return Interpreter(
            **source,
            num_threads=1,
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
        try:
            for i, (detail, value) in enumerate(zip(self.inputs, sample)):
                self.interpreter.set_input(_to_stored(value, detail), i)
            self.interpreter.invoke()
            return [_to_real(self.interpreter.get_output(i), d) for i, d in enumerate(self.outputs)]
        except (RuntimeError, ValueError) as e:
            raise TflRewriteError(
                f"{self.path}: tflite-micro failed to run it: {_first_line(e)}"
            ) from None


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


def npz_inputs(
    path: str | os.PathLike, runner: BaseRunner, limit: int | None
) -> list[list[np.ndarray]]:
    """Samples from an .npz: one array per model input, keyed by input name (or, for a
    single-input model, any single array), first axis = samples."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise TflRewriteError(f"{path}: not a readable .npz ({_first_line(e)})") from None
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
                f"{path}: no array for model input {name!r} "
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
                    f"{path}: sample {k} for input {detail['name']!r} has "
                    f"shape {value.shape}, the model wants {shape}"
                )
            sample.append(value.reshape(shape))
        samples.append(sample)
    return samples


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
