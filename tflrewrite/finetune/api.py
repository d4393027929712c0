"""`finetune()`: a short PQAT / CQAT / PCQAT / QAT stage on a Keras model, then conversion
to full-integer int8 and the rewriter. Imports TensorFlow when called, never before."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.finetune.data import Arrays, from_user
from tflrewrite.finetune.stages import StageOptions

# Calibration samples for the converter's activation ranges, drawn from the training data.
CALIBRATION_SAMPLES = 256


@dataclass(frozen=True)
class Options:
    stage: str = "pcqat"
    sparsity: float = 0.5
    clusters: int = 16
    granularity: str = "tensor"
    # Per tensor, as TF Model Optimization ranks: on the MNIST bench (README), 96.8% after
    # PCQAT against 95.8% with every channel at 50%.
    prune_scope: str = "tensor"
    epochs: int = 4
    # pqat, pcqat: epochs of the recovery phase (None: half the epochs, rounded down); see
    # `phases`.
    prune_epochs: int | None = None
    lr: float = 2e-3
    # Weight of distillation from the given model's own outputs (soft targets, arrays
    # only): on the MNIST bench, 96.8% after PCQAT against 96.5% from the labels alone.
    distill: float = 0.9
    decay: bool = True  # the rate falls to 0 along a half cosine over each phase
    batch: int = 32
    seed: int = 0
    loss: str | None = None  # inferred for classifiers when None
    target: str = "generic"
    # How the stage meets batch norms and int8 (see the README's fine-tune section):
    fold_batchnorm: bool = True  # fold them into the kernel before training
    fake_quant: bool = True  # train on int8-snapped kernels
    weight_quant: str | None = None  # tensor | channel; None: tensor iff clustering per tensor
    prune_all: bool = False  # also prune kernels of short channels (stages.MIN_PRUNE_ROW)
    calibration: int = CALIBRATION_SAMPLES

    def __post_init__(self) -> None:
        self.stage_options  # noqa: B018  (validates)
        if self.epochs < 0 or self.batch < 1 or self.calibration < 1:
            raise UsageError("epochs must be >= 0, batch and calibration >= 1")
        if self.prune_epochs is not None and self.prune_epochs < 0:
            raise UsageError(f"prune epochs must be >= 0, not {self.prune_epochs}")
        if not 0.0 <= self.distill <= 1.0:
            raise UsageError(f"distill must be in [0, 1], not {self.distill}")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be > 0, not {self.lr}")
        if self.weight_quant not in (None, "tensor", "channel"):
            raise UsageError(f"weight_quant must be tensor or channel, not {self.weight_quant!r}")
        from tflrewrite.finetune.stages import LOSSES
        from tflrewrite.targets import TARGETS

        if self.loss is not None and self.loss not in LOSSES:
            raise UsageError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.target not in TARGETS:
            raise UsageError(f"target must be one of {', '.join(TARGETS)}, not {self.target!r}")

    @property
    def stage_options(self) -> StageOptions:
        return StageOptions(
            stage=self.stage,
            sparsity=self.sparsity,
            clusters=self.clusters,
            granularity=self.granularity,
            prune_scope=self.prune_scope,
        )

    @property
    def phases(self) -> list[Phase]:
        """The stage as phases, in order.

        A stage that prunes starts with a recovery phase: magnitude pruning of a trained
        model can cost most of its accuracy (the MNIST bench's CNN at 50%: 96% to 76%, to
        17% with its depthwise kernels pruned too), much of it because the batch norms'
        statistics no longer fit. So the mask
        is fixed first and the weights recover under it, the batch norms still unfolded and
        on batch statistics, as the model was trained. Then the batch norms are folded, the
        clusters formed on the recovered weights (the same kernel), and the last phase
        trains what the stage leaves free on int8-snapped kernels. Zeros stay zero through
        every step of both phases. Without the recovery phase the bench ends at 94.3%,
        with it at 96.8%."""
        s = self.stage_options
        last = Phase(s, self.epochs, recovery=False)
        if not s.prunes or self.epochs < 2:
            return [last]
        first = (
            self.epochs // 2 if self.prune_epochs is None else min(self.prune_epochs, self.epochs)
        )
        pqat = dataclasses.replace(s, stage="pqat")
        return [Phase(pqat, first, recovery=True), Phase(s, self.epochs - first, False)]

    @property
    def int8_weights(self) -> str:
        if self.weight_quant:
            return self.weight_quant
        s = self.stage_options
        return "tensor" if s.clusters_weights and s.granularity == "tensor" else "channel"


@dataclass(frozen=True)
class Phase:
    stage: StageOptions  # what is held fixed
    epochs: int
    recovery: bool  # batch norms unfolded and on batch statistics, no int8 snapping


@dataclass
class Result:
    tflite: bytes  # the deployment model
    report: dict = field(default_factory=dict)


def finetune(
    model: Any,
    data: Any,
    val: Any = None,
    options: Options | None = None,
    progress: Callable[[Any], None] | None = None,
) -> Result:
    """Fine-tune `model` (Keras 3 or tf_keras) with the stage in `options`, convert it to
    full-integer int8 and run the rewriter's passes and target over it.

    Args:
        model: a Keras 3 (TensorFlow backend) or tf_keras model. It is left as it was.
        data: (x, y) arrays (x a list of arrays for several inputs), or a tf.data.Dataset
            of (x, y), batched or not.
        val: the same forms, or None; its accuracy is reported before and after, in float
            and for the int8 .tflite in LiteRT.
        options: the stage and its settings.
        progress: called with each finished epoch (train.Epoch).
    """
    options = options or Options()
    tf = _tensorflow()
    from tflrewrite.finetune import keras_layers

    flavour = keras_layers.flavour(model)
    if flavour == "keras3":
        import keras

        if keras.backend.backend() != "tensorflow":
            raise UsageError(
                f"Keras 3 runs on {keras.backend.backend()}: fine-tuning needs its TensorFlow "
                "backend (KERAS_BACKEND=tensorflow)"
            )
    _seed(tf, flavour, options.seed)
    snapshot = [(v, v.numpy()) for v in model.weights]
    flags = [(layer, layer.trainable) for layer in keras_layers.sublayers(model)]
    momenta = [(bn, bn.momentum) for bn, _ in flags if keras_layers.is_batchnorm(bn)]
    try:
        return _run(tf, model, flavour, data, val, options, progress)
    finally:
        for layer, trainable in flags:
            layer.trainable = trainable
        for bn, momentum in momenta:
            bn.momentum = momentum
        for v, value in snapshot:
            v.assign(value)


def _run(tf, model, flavour, data, val, options, progress) -> Result:
    from tflrewrite.finetune import keras_layers, train

    train_data = _as_source(tf, data, model, options, shuffle=True)
    val_data = None if val is None else _as_source(tf, val, model, options, shuffle=False)
    kernels, alone = keras_layers.find_kernels(model)
    if not kernels:
        raise UsageError(
            "the model has no Dense, Conv1D, Conv2D, DepthwiseConv2D or "
            "Conv2DTranspose layers to fine-tune"
        )
    loss = _loss(model, train_data, options)
    report: dict[str, Any] = {
        "keras": flavour,
        "options": asdict(options),
        "int8_weights": options.int8_weights,
        "loss": asdict(loss),
        "left_alone": [{"layer": n, "reason": r} for n, r in alone],
    }
    if val_data is not None:
        report["val_before"] = _pair(
            train.Trainer(model, constrained=[], extra=[], loss=loss).evaluate(val_data)
        )
    pairs, notes = keras_layers.fold_pairs(model, kernels) if options.fold_batchnorm else ([], [])
    report["not_pruned"] = _not_pruned(kernels, options)
    plans = _fine_tune(model, kernels, pairs, loss, train_data, val_data, options, progress, report)
    report["batchnorm"] = {
        "folded": {k.name: k.folded_bn for k in kernels if k.folded_bn},
        "not_folded": notes,
    }
    tflite = _deploy(model, kernels, plans, train_data, options, report)
    if val_data is not None and loss.classifies:
        from tflrewrite.finetune import convert

        samples, y = val_data.arrays()
        threshold = 0.0 if loss.from_logits else 0.5
        report["val_int8_accuracy"] = convert.int8_accuracy(tflite, samples, y, threshold=threshold)
    return Result(tflite, report)


def _loss(model: Any, train_data: _Source, options: Options) -> Any:
    """The loss for the model's outputs and the data's targets; with distillation, the given
    model's outputs go on the training arrays as soft targets before anything changes it."""
    from tflrewrite.finetune import train

    x0, y0 = next(iter(train_data.batches(0)))
    out0 = model(x0, training=False)
    if isinstance(out0, list | tuple | dict):
        raise UsageError("the model has several outputs: finetune trains one-output models")
    out0 = _numpy(out0)
    probs = train.ends_in_probabilities(model)
    loss = train.infer_loss(np.asarray(y0), out0, given=options.loss, probs=probs)
    if options.distill > 0 and train_data.array_data is not None:
        loss = dataclasses.replace(loss, distill=options.distill)
    if loss.distills:
        train_data.array_data.teacher = _outputs(model, train_data.array_data, options.batch)
    return dataclasses.replace(loss, distill=loss.distill if loss.distills else 0.0)


def _not_pruned(kernels: list, options: Options) -> dict[str, str]:
    from tflrewrite.finetune import stages

    if not options.stage_options.prunes:
        return {}
    out = {}
    for k in kernels:
        reason = stages.not_pruned(k.rows(k.variable.numpy()).shape[1], options.prune_all)
        if reason:
            out[k.name] = reason
    return out


def _fine_tune(model, kernels, pairs, loss, train_data, val_data, options, progress, report):
    """Runs the stage's phases; returns the last phase's plans (what it held fixed)."""
    from tflrewrite.finetune import keras_layers, stages, train

    bns = [layer for layer in keras_layers.sublayers(model) if keras_layers.is_batchnorm(layer)]
    report["prepare_seconds"] = report["finetune_seconds"] = 0.0
    history: list[Any] = []
    keeps: list[Any] = [None] * len(kernels)
    folded = False
    for phase in options.phases:
        start = time.perf_counter()
        if phase.recovery:
            _recovery_batchnorms(bns)
        elif not folded:
            _fold_and_freeze(pairs, bns)
            folded = True
        scales = {} if folded else {id(k): keras_layers.fold_scale(bn) for k, bn in pairs}
        plans = []
        for k, keep in zip(kernels, keeps):
            stage = phase.stage
            if k.name in report["not_pruned"]:
                stage = dataclasses.replace(stage, sparsity=0.0)
            rows = k.rows(k.variable.numpy())
            plans.append(stages.plan(rows, stage, keep=keep, channel_scale=scales.get(id(k))))
        keeps = [p.keep for p in plans]
        quant = options.int8_weights if options.fake_quant and not phase.recovery else None
        constrained = [train.Constrained(k, p, quant) for k, p in zip(kernels, plans)]
        extra = [] if phase.recovery else _frozen_batchnorm_variables(pairs, bns)
        steps = train_data.steps(phase.epochs) if options.decay else None
        trainer = train.Trainer(
            model, constrained=constrained, extra=extra, loss=loss, lr=options.lr, steps=steps
        )
        trainer.start()
        report["prepare_seconds"] += time.perf_counter() - start
        if val_data is not None and "val_start" not in report:
            report["val_start"] = _pair(trainer.evaluate(val_data))
        start = time.perf_counter()
        first, label = len(history) + 1, phase.stage.stage
        history += trainer.fit(train_data, phase.epochs, val_data, progress, first, label)
        report["finetune_seconds"] += time.perf_counter() - start
    report["epochs"] = [asdict(e) for e in history]
    return plans


def _deploy(model, kernels, plans, train_data, options, report) -> bytes:
    """Full-integer int8 through the converter, the rewriter, and the checks."""
    from tflrewrite.finetune import convert
    from tflrewrite.reports.audit import zip_size

    finals = [k.rows(k.variable.numpy()) for k in kernels]
    calibration = train_data.calibration(options.calibration, options.seed)
    start = time.perf_counter()
    converted = convert.to_int8(model, calibration, options.int8_weights == "channel")
    ir = _read(converted)
    matched, missing = convert.match(kernels, plans, finals, model=ir)
    tflite, checks, records = convert.apply_rewrite(
        ir,
        options.stage_options,
        matched,
        target=options.target,
        unpruned=report["not_pruned"],
    )
    report["convert_seconds"] = time.perf_counter() - start
    report["layers"] = checks
    report["unmatched"] = [k.name for k in missing]
    report["rewrite"] = _rewrite_summary(records)
    report["ok"] = all(c["ok"] for c in checks) and not missing
    report["bytes"] = len(tflite)
    report["zip_bytes"] = zip_size(tflite)
    return tflite


def _numpy(t: Any) -> np.ndarray:
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


def _outputs(model: Any, arrays: Arrays, batch: int) -> np.ndarray:
    run = arrays.batches(batch, None)
    return np.concatenate([_numpy(model(x, training=False)) for x, _ in run(0)])


def _fold_and_freeze(pairs: list, bns: list) -> None:
    from tflrewrite.finetune import keras_layers

    for k, bn in pairs:
        keras_layers.fold(k, bn)
    for bn in bns:
        # Inference mode from here on: the statistics of a few batches would otherwise move
        # the scales folded into the kernels and the int8 model is calibrated on.
        bn.trainable = False


def _frozen_batchnorm_variables(pairs: list, bns: list) -> list:
    """What still trains in batch norms run in inference mode: the offset (the bias of a
    folded one), and the scale of one that was not folded."""
    folded = {id(bn) for _, bn in pairs}
    out = []
    for bn in bns:
        out += [v for v in (bn.beta, None if id(bn) in folded else bn.gamma) if v is not None]
    return out


# The most a batch norm's moving statistics may keep of their past per step in a recovery
# phase: pruning changes every layer's statistics at once, and a phase of a few hundred
# steps at a momentum of 0.99 would end with a quarter of the pre-pruning statistics still
# in them, to be folded into the kernels.
RECOVERY_MOMENTUM = 0.9


def _recovery_batchnorms(bns: list) -> None:
    for bn in bns:
        if bn.trainable:
            bn.momentum = min(float(bn.momentum), RECOVERY_MOMENTUM)


def _read(tflite: bytes) -> Any:
    from tflrewrite import reader

    return reader.read_bytes(tflite, "converted")


def _rewrite_summary(records: list[dict]) -> list[dict]:
    out = []
    for step in records:
        changed = [
            t["tensor"]
            for t in step["tensors"]
            if t.get("action") not in (None, "skipped") and t.get("mse", 0) > 0
        ]
        done = [t for t in step["tensors"] if t.get("action") not in (None, "skipped")]
        out.append({"pass": step["pass"], "weights": len(done), "changed": changed})
    return out


def _pair(values: tuple[float, float | None]) -> dict:
    return {"loss": values[0], "accuracy": values[1]}


def _has_inputs(model: Any) -> bool:
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def input_names(model: Any) -> list[str]:
    """The model's input names, as keys of an .npz."""
    names = getattr(model, "input_names", None)
    if names:
        return list(names)
    if _has_inputs(model):
        return [str(t.name).split(":")[0] for t in model.inputs]
    return ["x"]


def _tensorflow() -> Any:
    try:
        import tensorflow as tf  # noqa: TID251 (the fine-tune hook is where TensorFlow lives)
    except ImportError as e:
        raise TflRewriteError(
            f"finetune needs TensorFlow ({e}); install it with: pip install 'tflrewrite[keras]'"
        ) from None
    return tf


def _seed(tf: Any, flavour: str, seed: int) -> None:
    """Seeds every generator training may draw from (Keras dropout included), and asks
    TensorFlow for deterministic kernels, so that a seed gives the same bytes."""
    if flavour == "tf_keras":
        import tf_keras

        tf_keras.utils.set_random_seed(seed)
    else:
        import keras

        keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class _Source:
    """Training or validation data as batches per epoch, calibration samples and arrays."""

    def __init__(self, arrays: Arrays | None, dataset: Any, batch: int, seed: int | None):
        self.array_data, self.dataset, self.batch, self.seed = arrays, dataset, batch, seed

    def batches(self, epoch: int) -> Any:
        if self.array_data is not None:
            return self.array_data.batches(self.batch, self.seed)(epoch)
        return iter(self.dataset)

    def steps(self, epochs: int) -> int | None:
        """Batches in `epochs` epochs; None when a dataset does not know its size."""
        if self.array_data is not None:
            return epochs * -(-len(self.array_data) // self.batch)
        n = int(self.dataset.cardinality())
        return epochs * n if n > 0 else None

    def calibration(self, n: int, seed: int) -> list[list[np.ndarray]]:
        if self.array_data is not None:
            return self.array_data.samples(n, seed)
        out: list[list[np.ndarray]] = []
        for x, _ in self.dataset.unbatch().take(n):
            xs = list(x) if isinstance(x, tuple | list) else [x]
            out.append([np.asarray(a, np.float32)[None] for a in xs])
        return out

    def arrays(self) -> tuple[list[list[np.ndarray]], np.ndarray]:
        if self.array_data is not None:
            a = self.array_data
            return [[x[i : i + 1].astype(np.float32) for x in a.xs] for i in range(len(a))], a.y
        samples, ys = [], []
        for x, y in self.dataset.unbatch():
            xs = list(x) if isinstance(x, tuple | list) else [x]
            samples.append([np.asarray(a, np.float32)[None] for a in xs])
            ys.append(np.asarray(y))
        return samples, np.stack(ys)


def _as_source(tf: Any, data: Any, model: Any, options: Options, shuffle: bool) -> _Source:
    n_inputs = len(model.inputs) if _has_inputs(model) else 1
    arrays = from_user(data, n_inputs)
    if arrays is not None:
        return _Source(arrays, None, options.batch, options.seed if shuffle else None)
    if not isinstance(data, tf.data.Dataset):
        raise UsageError("data must be (x, y) arrays or a tf.data.Dataset of (x, y)")
    x_spec = data.element_spec[0]
    first = x_spec[0] if isinstance(x_spec, tuple | list) else x_spec
    if _has_inputs(model):  # batched when its elements have the rank of the model's input
        batched = first.shape.rank == len(model.inputs[0].shape)
    else:
        batched = first.shape.rank is not None and first.shape.rank > 0 and first.shape[0] is None
    return _Source(None, data if batched else data.batch(options.batch), options.batch, None)


def load_model(path: str | os.PathLike) -> Any:
    """A Keras model from a .keras file (Keras 3), an .h5 file (Keras 3, else tf_keras) or a
    SavedModel directory (tf_keras), without its training configuration."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TflRewriteError(f"{path}: no such model file")
    _tensorflow()
    errors = []
    loaders = []
    if os.path.isdir(path):
        loaders = ["tf_keras"]
    elif path.endswith(".keras"):
        loaders = ["keras"]
    elif path.endswith((".h5", ".hdf5")):
        loaders = ["keras", "tf_keras"]
    else:
        raise TflRewriteError(f"{path}: not a .keras or .h5 file or a SavedModel directory")
    for name in loaders:
        try:
            module = __import__(name)
        except ImportError:
            errors.append(f"{name} is not installed")
            continue
        try:
            return module.models.load_model(path, compile=False)
        except Exception as e:  # Keras raises many types for a file it cannot load
            errors.append(f"{name}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    raise TflRewriteError(f"{path}: cannot load the model ({'; '.join(errors)})")
