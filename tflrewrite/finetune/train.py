"""The fine-tuning loop: a compiled train step that keeps what the stage holds fixed.

Each constrained kernel is trained through its own parameters: free weights (qat), weights
under a fixed mask (pqat), or centroids under a fixed assignment (cqat, pcqat). Every step
the layer's kernel is rebuilt from them, then fake-quantized to int8 (symmetric, per output
channel or per tensor, as the converter will store it; a nonzero weight never rounds to
zero). The gradient of the loss with respect to the kernel goes straight through the
rounding to the parameters: times the mask, or summed over each centroid's weights. So
pruned weights are exactly zero at every step, each weight keeps its cluster, and the
kernel the converter finally reads already sits on the int8 grid it will quantize it to.

Works for Keras 3 and tf_keras models alike: it calls the model, reads gradients with a
GradientTape and updates tf.Variables with its own Adam, so no Keras optimizer, compile or
fit is involved. Imported only when fine-tuning runs (it imports TensorFlow).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tensorflow as tf  # noqa: TID251 (the fine-tune hook is where TensorFlow lives)

from tflrewrite.errors import UsageError
from tflrewrite.finetune.keras_layers import Kernel, from_rows, to_rows
from tflrewrite.finetune.stages import LOSSES, Plan


def raw(v: Any) -> tf.Variable:
    """The tf.Variable behind a Keras 3 variable (tf_keras variables are tf.Variables)."""
    return v if isinstance(v, tf.Variable) else v.value


def fake_quant(rows: tf.Tensor, per_channel: bool) -> tf.Tensor:
    """Rows snapped to symmetric int8 (scale = max |w| / 127), as real values."""
    top = tf.reduce_max(tf.abs(rows), axis=1 if per_channel else None, keepdims=per_channel)
    scale = tf.where(top > 0, top / 127.0, tf.ones_like(top))
    x = rows / scale
    q = tf.sign(x) * tf.floor(tf.abs(x) + 0.5)
    q = tf.where(tf.logical_and(tf.equal(q, 0.0), tf.not_equal(rows, 0.0)), tf.sign(rows), q)
    return tf.clip_by_value(q, -127.0, 127.0) * scale


class Constrained:
    """A kernel trained through the parameters its stage leaves free."""

    def __init__(self, kernel: Kernel, plan: Plan, quant: str | None):
        self.kernel = kernel
        self.var = raw(kernel.variable)
        self.quant = quant  # "channel", "tensor" or None (no fake quantization)
        if plan.assign is None:
            self.param = tf.Variable(plan.rows, name=f"{kernel.name}/free")
            self.keep = None if plan.keep is None else tf.constant(plan.keep, tf.float32)
            self.assign = None
        else:
            self.param = tf.Variable(plan.centroids, name=f"{kernel.name}/centroids")
            self.assign = tf.constant(plan.assign, tf.int32)
            self.train_mask = tf.constant(plan.trainable, tf.float32)

    def rows(self) -> tf.Tensor:
        if self.assign is not None:
            rows = tf.gather(self.param, self.assign)
        elif self.keep is not None:
            rows = self.param * self.keep
        else:
            rows = tf.identity(self.param)
        return rows if self.quant is None else fake_quant(rows, self.quant == "channel")

    def param_gradient(self, grad: tf.Tensor) -> tf.Tensor:
        g = to_rows(grad, self.kernel.out_axis, self.kernel.depthwise, ops=tf)
        if self.assign is None:
            return g if self.keep is None else g * self.keep
        summed = tf.math.unsorted_segment_sum(
            tf.reshape(g, [-1]), tf.reshape(self.assign, [-1]), tf.size(self.param)
        )
        return summed * self.train_mask

    def materialize(self) -> None:
        k = self.kernel
        rows = from_rows(self.rows(), k.shape, out_axis=k.out_axis, depthwise=k.depthwise, ops=tf)
        self.var.assign(rows)


class Adam:
    """Adam over plain tf.Variables (Kingma and Ba, with the bias correction in the step),
    its rate decayed to zero over `steps` along a half cosine (constant when None)."""

    def __init__(self, params: list[tf.Variable], lr: float, steps: int | None = None):
        self.params = params
        self.lr = lr
        self.steps = steps
        self.m = [tf.Variable(tf.zeros_like(p), trainable=False) for p in params]
        self.v = [tf.Variable(tf.zeros_like(p), trainable=False) for p in params]
        self.t = tf.Variable(0.0, trainable=False)

    def apply(self, grads: list[tf.Tensor]) -> None:
        b1, b2 = 0.9, 0.999
        t = self.t.assign_add(1.0)
        lr = self.lr
        if self.steps:
            done = tf.minimum((t - 1.0) / float(self.steps), 1.0)
            lr = lr * 0.5 * (1.0 + tf.cos(np.pi * done))
        step = lr * tf.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.assign(b1 * m + (1.0 - b1) * g)
            v.assign(b2 * v + (1.0 - b2) * tf.square(g))
            p.assign_sub(step * m / (tf.sqrt(v) + 1e-7))


# ------------------------------------------------------------------ losses


@dataclass(frozen=True)
class Loss:
    kind: str  # one of LOSSES
    from_logits: bool
    # Distillation from the given model's own outputs (classifiers): the weight of the
    # soft-target term and its temperature (Hinton et al. 2015); 0: labels only.
    distill: float = 0.0
    temperature: float = 2.0

    @property
    def distills(self) -> bool:
        return self.distill > 0 and self.kind in ("sparse-categorical", "categorical")

    def logits(self, out: tf.Tensor) -> tf.Tensor:
        out = tf.cast(out, tf.float32)
        return out if self.from_logits else tf.math.log(tf.clip_by_value(out, 1e-7, 1.0))

    def total(self, y: Any, out: tf.Tensor) -> tf.Tensor:
        """The training loss: the task's, mixed with distillation when y is (labels,
        teacher outputs)."""
        if not isinstance(y, tuple):
            return self(y, out)
        labels, teacher = y
        t = self.temperature
        soft = tf.nn.softmax(self.logits(teacher) / t)
        kd = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(soft, self.logits(out) / t))
        return (1.0 - self.distill) * self(labels, out) + self.distill * t * t * kd

    def __call__(self, y: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
        out = tf.cast(out, tf.float32)
        if self.kind == "mse":
            return tf.reduce_mean(tf.square(tf.cast(y, tf.float32) - out))
        if self.kind == "sparse-categorical":
            labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
            if self.from_logits:
                return tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=out)
                )
            p = tf.gather(out, labels, batch_dims=1)
            return -tf.reduce_mean(tf.math.log(tf.clip_by_value(p, 1e-7, 1.0)))
        y = tf.cast(tf.reshape(y, tf.shape(out)), tf.float32)
        if self.kind == "categorical":
            if self.from_logits:
                return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y, out))
            p = tf.clip_by_value(out, 1e-7, 1.0)
            return -tf.reduce_mean(tf.reduce_sum(y * tf.math.log(p), axis=-1))
        if self.from_logits:
            return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, out))
        p = tf.clip_by_value(out, 1e-7, 1.0 - 1e-7)
        return -tf.reduce_mean(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))

    def correct(self, y: Any, out: tf.Tensor) -> tf.Tensor:
        """How many samples the output classifies right (0 for regression)."""
        if isinstance(y, tuple):
            y = y[0]
        if self.kind == "mse":
            return tf.constant(0.0)
        if self.kind == "binary":
            hit = tf.equal(
                tf.cast(tf.reshape(y, [-1]) > 0.5, tf.int32),
                tf.cast(tf.reshape(out, [-1]) > (0.0 if self.from_logits else 0.5), tf.int32),
            )
        else:
            labels = tf.reshape(y, [-1]) if self.kind == "sparse-categorical" else None
            if labels is None:
                labels = tf.argmax(y, axis=-1)
            hit = tf.equal(tf.cast(labels, tf.int64), tf.argmax(out, axis=-1))
        return tf.reduce_sum(tf.cast(hit, tf.float32))

    @property
    def classifies(self) -> bool:
        return self.kind != "mse"


def infer_loss(y: np.ndarray, out: np.ndarray, *, given: str | None, probs: bool | None) -> Loss:
    """The loss for targets `y` and model outputs `out` (a batch of each): sparse
    categorical for class ids, categorical for one-hot rows, binary for 0/1 against one
    output. `probs` says whether the outputs are probabilities (the model ends in softmax
    or sigmoid), or None to judge by the values: in [0, 1], rows summing to 1."""
    if probs is None:
        in_unit = bool(np.all(out >= 0) and np.all(out <= 1))
        rows_sum_to_one = out.ndim == 2 and bool(np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
        probs = in_unit and (out.ndim == 2 and (out.shape[1] == 1 or rows_sum_to_one))
    if given is not None:
        return Loss(given, not probs)
    if out.ndim != 2:
        raise UsageError(f"cannot infer a loss for outputs of shape {list(out.shape)}: give --loss")
    n_out = out.shape[1]
    integral = y.dtype.kind in "iub" or bool(np.all(np.equal(np.mod(y, 1), 0)))
    if n_out > 1 and integral and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        return Loss("sparse-categorical", not probs)
    if n_out > 1 and y.shape[1:] == out.shape[1:]:
        return Loss("categorical", not probs)
    if n_out == 1 and integral and set(np.unique(y).tolist()) <= {0, 1}:
        return Loss("binary", not probs)
    raise UsageError(
        f"cannot infer a loss for targets of shape {list(y.shape)} and outputs of shape "
        f"{list(out.shape)}: give --loss ({', '.join(LOSSES)})"
    )


def ends_in_probabilities(model: Any) -> bool | None:
    """True when the model's last layer is a softmax or sigmoid, False when it is linear,
    None when that cannot be told from the layer."""
    try:
        last = model.layers[-1]
    except (AttributeError, IndexError):
        return None
    if type(last).__name__ == "Softmax":
        return True
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", None)
    if name in ("softmax", "sigmoid"):
        return True
    if name == "linear":
        return False
    return None


# ------------------------------------------------------------------ the loop


@dataclass
class Epoch:
    epoch: int
    stage: str
    loss: float
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


class Source(Protocol):
    def batches(self, epoch: int) -> Iterator[tuple[Any, Any]]:
        """The (x, y) batches of an epoch."""


class Trainer:
    """Trains `model` through the constrained kernels' parameters and every other trainable
    weight (plus `extra` variables of layers in inference mode); evaluates it."""

    def __init__(
        self,
        model: Any,
        *,
        constrained: list[Constrained],
        extra: list[Any],
        loss: Loss,
        lr: float = 1e-3,
        steps: int | None = None,
    ):
        self.model = model
        self.constrained = constrained
        self.loss = loss
        self.lr, self.steps = lr, steps
        kernel_ids = {id(c.var) for c in constrained}
        free, seen = [], set()
        for v in [raw(v) for v in model.trainable_weights] + [raw(v) for v in extra]:
            if id(v) not in kernel_ids and id(v) not in seen:
                seen.add(id(v))
                free.append(v)
        self.free = free
        self.watched = [c.var for c in constrained] + free
        self.adam: Adam | None = None  # made when training starts: evaluation needs none
        self._step: Any = None
        self._eval: Any = None
        self._materialize = tf.function(self._materialize_all)

    def _materialize_all(self) -> None:
        for c in self.constrained:
            c.materialize()

    def _train_step(self, x: Any, y: Any) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(self.watched)
            out = self.model(x, training=True)
            loss = self.loss.total(y, out)
            if self.model.losses:
                loss = loss + tf.add_n([tf.cast(r, tf.float32) for r in self.model.losses])
        grads = tape.gradient(loss, self.watched)
        grads = [
            tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for v, g in zip(self.watched, grads)
        ]
        n = len(self.constrained)
        params = [c.param_gradient(g) for c, g in zip(self.constrained, grads[:n])]
        self.adam.apply(params + grads[n:])
        self._materialize_all()
        return loss * tf.cast(tf.shape(out)[0], tf.float32), self.loss.correct(y, out)

    def _eval_step(self, x: Any, y: Any) -> tuple[tf.Tensor, tf.Tensor]:
        out = self.model(x, training=False)
        return self.loss(y, out) * tf.cast(tf.shape(out)[0], tf.float32), self.loss.correct(y, out)

    def start(self) -> None:
        """Put every constrained kernel at its starting point (pruned, clustered, snapped)."""
        self._materialize()

    def evaluate(self, source: Source) -> tuple[float, float | None]:
        """(mean loss, accuracy or None) over one pass of `source`."""
        total = correct = count = 0.0
        for x, y in source.batches(0):
            if self._eval is None:
                self._eval = _compile(self._eval_step, x, y)
            loss, hits = self._eval(x, y)
            total += float(loss)
            correct += float(hits)
            count += _batch_size(y)
        if not count:
            return float("nan"), None
        return total / count, (correct / count if self.loss.classifies else None)

    def fit(
        self,
        source: Source,
        epochs: int,
        val: Source | None,
        progress: Callable[[Epoch], None] | None,
        first: int = 1,
        stage: str = "",
    ) -> list[Epoch]:
        """Trains `epochs` epochs, numbered from `first`; one record per epoch."""
        if self.adam is None:
            params = [c.param for c in self.constrained] + self.free
            self.adam = Adam(params, self.lr, self.steps)
        history = []
        for epoch in range(first, first + epochs):
            start = time.perf_counter()
            total = correct = count = 0.0
            for x, y in source.batches(epoch):
                if self._step is None:
                    self._step = _compile(self._train_step, x, y)
                loss, hits = self._step(x, y)
                total += float(loss)
                correct += float(hits)
                count += _batch_size(y)
            seconds = time.perf_counter() - start
            val_loss = val_acc = None
            if val is not None:
                val_loss, val_acc = self.evaluate(val)
            record = Epoch(
                epoch,
                stage,
                total / max(count, 1),
                correct / max(count, 1) if self.loss.classifies else None,
                val_loss,
                val_acc,
                seconds,
            )
            history.append(record)
            if progress:
                progress(record)
        return history


def _compile(fn: Callable, x: Any, y: Any) -> Any:
    """fn as one graph for batches of any size: traced once, not again for a last, smaller
    batch (a trace costs more than an epoch of a small model)."""

    def spec(a: Any) -> tf.TensorSpec:
        a = tf.convert_to_tensor(a)
        return tf.TensorSpec([None, *a.shape[1:]], a.dtype)

    specs = [tf.nest.map_structure(spec, x), tf.nest.map_structure(spec, y)]
    return tf.function(fn, input_signature=specs)


def _batch_size(y: Any) -> int:
    return int((y[0] if isinstance(y, tuple) else y).shape[0])
