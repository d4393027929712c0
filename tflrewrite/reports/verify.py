"""Runs a reference and a candidate model side by side in LiteRT (or, for models laid down
for TensorFlow Lite Micro, in the tflite-micro package's interpreter) and measures how far
apart their outputs are."""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from tflrewrite.errors import TflRewriteError
from tflrewrite.model import Model


@dataclass
class OutputReport:
    name: str
    shape: list[int]
    sqnr_db: float  # inf when identical
    max_abs_error: float
    top1_agreement: float | None  # for classifier-shaped outputs
    identical: bool


@dataclass
class VerifyReport:
    reference: str
    candidate: str
    samples: int
    inputs: str  # where the inputs came from
    outputs: list[OutputReport] = field(default_factory=list)

    @property
    def min_sqnr_db(self) -> float:
        return min((o.sqnr_db for o in self.outputs), default=math.inf)

    def to_json(self) -> dict:
        out = asdict(self)
        out["min_sqnr_db"] = self.min_sqnr_db
        for o in out["outputs"]:  # JSON has no infinity
            o["sqnr_db"] = None if math.isinf(o["sqnr_db"]) else o["sqnr_db"]
        if math.isinf(out["min_sqnr_db"]):
            out["min_sqnr_db"] = None
        return out


class Runner:
    """One model in a LiteRT interpreter, fed and read in real (dequantized) values.

    `content` runs model bytes instead of the file at `path` (which then only names it);
    `keep_tensors` keeps every intermediate tensor readable after a run (calibration and
    per-layer comparison need them; LiteRT otherwise reuses their memory).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        xnnpack: bool = False,
        content: bytes | None = None,
        keep_tensors: bool = False,
    ):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = (
            OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        self.path = os.fspath(path)
        source = {"model_path": self.path} if content is None else {"model_content": content}
        try:
            self.interpreter = Interpreter(
                **source,
                num_threads=1,
                experimental_op_resolver_type=resolver,
                experimental_preserve_all_tensors=keep_tensors,
            )
            self.interpreter.allocate_tensors()
            self.inputs = self.interpreter.get_input_details()
            self.outputs = self.interpreter.get_output_details()
        except UnicodeDecodeError:  # LiteRT decodes tensor names as strict UTF-8
            raise TflRewriteError(
                f"{self.path}: LiteRT cannot report tensors whose names are not UTF-8"
            ) from None
        except (RuntimeError, ValueError) as e:
            raise TflRewriteError(f"{self.path}: LiteRT cannot load it: {_first_line(e)}") from None

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


def tflm_available() -> bool:
    """Whether the tflite-micro package (the `tflm` extra) is installed."""
    return importlib.util.find_spec("tflite_micro") is not None


class TflmRunner:
    """One model in the tflite-micro package's interpreter, with Runner's interface: the
    one runtime here with TFLM's DECODE op. Reads the file with tflrewrite's reader too,
    for the names of the inputs and outputs and the arena size."""

    def __init__(self, path: str | os.PathLike):
        from tflite_micro.python.tflite_micro import runtime

        from tflrewrite import reader

        self.path = os.fspath(path)
        model = reader.read(self.path)
        with open(self.path, "rb") as f:
            self._data = f.read()  # the interpreter reads the model where it lies
        try:
            self.interpreter = runtime.Interpreter.from_bytes(self._data, arena_size=_arena(model))
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


def random_inputs(runners: list[Runner], samples: int, seed: int) -> list[list[np.ndarray]]:
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
    path: str | os.PathLike, runner: Runner, limit: int | None
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


def compare(
    reference: Runner,
    candidate: Runner,
    samples: list[list[np.ndarray]],
    source: str,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    if len(reference.inputs) != len(candidate.inputs):
        raise TflRewriteError(
            f"{candidate.path}: has {len(candidate.inputs)} inputs, "
            f"the reference {len(reference.inputs)}"
        )
    if len(reference.outputs) != len(candidate.outputs):
        raise TflRewriteError(
            f"{candidate.path}: has {len(candidate.outputs)} outputs, "
            f"the reference {len(reference.outputs)}"
        )
    refs: list[list[np.ndarray]] = [[] for _ in reference.outputs]
    cands: list[list[np.ndarray]] = [[] for _ in reference.outputs]
    for k, sample in enumerate(samples):
        for acc, value in zip(refs, reference.run(sample)):
            acc.append(value)
        for acc, value in zip(cands, candidate.run(sample)):
            acc.append(value)
        if progress:
            progress(k + 1)
    report = VerifyReport(reference.path, candidate.path, len(samples), source)
    for detail, r, c in zip(reference.outputs, refs, cands):
        report.outputs.append(output_report(detail["name"], np.stack(r), np.stack(c)))
    return report


def output_report(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputReport:
    """Compare one output over all samples (first axis = samples)."""
    if ref.shape != cand.shape:
        raise TflRewriteError(f"output {name!r}: shapes differ ({ref.shape} vs {cand.shape})")
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    return OutputReport(
        name=name,
        shape=list(ref.shape[1:]),
        sqnr_db=sqnr_db(r, c),
        max_abs_error=float(np.max(np.abs(r - c))) if r.size else 0.0,
        top1_agreement=top1_agreement(r, c),
        identical=bool(np.array_equal(ref, cand)),
    )


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `cand` against `ref`, in dB."""
    return power_ratio_db(float(np.sum(ref**2)), float(np.sum((ref - cand) ** 2)))


def power_ratio_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): inf without noise, -inf without signal."""
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float | None:
    """Fraction of samples whose arg-max agrees, for classifier-shaped outputs (one vector
    of two or more scores per sample); None for other outputs."""
    per_sample = ref.reshape(ref.shape[0], -1)
    squeezed = [d for d in ref.shape[1:] if d != 1]
    if len(squeezed) != 1 or squeezed[0] < 2:
        return None
    other = cand.reshape(cand.shape[0], -1)
    return float(np.mean(per_sample.argmax(axis=1) == other.argmax(axis=1)))


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
