"""The Keras side of fine-tuning: which layers hold weights the stages constrain, how their
kernels are viewed by output channel, and batch norms folded into the layer before them.

Works for Keras 3 and tf_keras models alike: it touches only what both share (layer class
names, `_flatten_layers`, functional nodes, variables with `assign`/`numpy`). Imports no
TensorFlow itself.

Kernel layouts (Keras) and their output-channel axis:
    Dense (in, out), Conv1D (k, in, out), Conv2D (h, w, in, out): the last axis;
    DepthwiseConv2D (h, w, in, mult): the last two axes together, in * mult channels in the
    order TensorFlow gives its outputs; Conv2DTranspose (h, w, out, in): axis 2.
Rows (one per output channel) list each channel's weights in the order TFLite stores them
(FULLY_CONNECTED OI, CONV_2D and TRANSPOSE_CONV OHWI, DEPTHWISE_CONV_2D 1HWO), so a row
here is the same set, in the same order, as the converted tensor's channel row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tflrewrite.errors import UsageError

# class name -> (attribute names the kernel may have, output axis, depthwise)
SUPPORTED: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "Dense": (("kernel",), -1, False),
    "Conv1D": (("kernel",), -1, False),
    "Conv2D": (("kernel",), -1, False),
    "DepthwiseConv2D": (("depthwise_kernel", "kernel"), -1, True),
    "Conv2DTranspose": (("kernel",), -2, False),
}
KERAS_PACKAGES = ("keras", "tf_keras")


@dataclass(eq=False)
class Kernel:
    """A weight the stage constrains: a supported layer's kernel."""

    layer: Any
    variable: Any  # the layer's Keras variable
    out_axis: int
    depthwise: bool
    folded_bn: str | None = None  # name of the batch norm folded into it

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def kind(self) -> str:
        return type(self.layer).__name__

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.variable.shape)

    def rows(self, values: np.ndarray) -> np.ndarray:
        """Kernel-shaped values as (output channels, weights per channel)."""
        return np.ascontiguousarray(to_rows(values, self.out_axis, self.depthwise))

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        return from_rows(rows, self.shape, out_axis=self.out_axis, depthwise=self.depthwise)


def to_rows(values: Any, out_axis: int, depthwise: bool, *, ops: Any = np) -> Any:
    """(channels, n) view of a kernel; `ops` is numpy or tf (the same calls exist in both)."""
    shape = list(values.shape)
    if depthwise:
        values = ops.reshape(values, shape[:-2] + [shape[-2] * shape[-1]])
        shape = shape[:-2] + [shape[-2] * shape[-1]]
    axis = out_axis % len(shape)
    perm = [axis] + [i for i in range(len(shape)) if i != axis]
    return ops.reshape(ops.transpose(values, perm), [shape[axis], -1])


def from_rows(
    rows: Any, shape: tuple[int, ...], *, out_axis: int, depthwise: bool, ops: Any = np
) -> Any:
    """Inverse of to_rows for a kernel of `shape`."""
    full = list(shape)
    if depthwise:
        full = full[:-2] + [full[-2] * full[-1]]
    axis = out_axis % len(full)
    rest = [d for i, d in enumerate(full) if i != axis]
    moved = ops.reshape(rows, [full[axis]] + rest)
    perm = list(range(1, axis + 1)) + [0] + list(range(axis + 1, len(full)))
    out = ops.transpose(moved, perm)
    return ops.reshape(out, list(shape)) if depthwise else out


def is_keras_class(layer: Any) -> bool:
    return type(layer).__module__.split(".")[0] in KERAS_PACKAGES


def flavour(model: Any) -> str:
    """'keras3' or 'tf_keras': whose Model the model's class derives from."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root == "tf_keras":
            return "tf_keras"
        if root == "keras":
            return "keras3"
    raise UsageError(f"not a Keras model: a {type(model).__name__}")


def sublayers(layer: Any) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=True))


def find_kernels(model: Any) -> tuple[list[Kernel], list[tuple[str, str]]]:
    """The kernels of supported Keras layers (each once, in layer order), and the layers
    left alone with why: subclassed layers and unsupported Keras layers that own a weight
    of rank 2 or more (their weights still train, unconstrained)."""
    kernels: list[Kernel] = []
    alone: list[tuple[str, str]] = []
    seen: set[int] = set()
    for layer in sublayers(model):
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        name = type(layer).__name__
        if is_keras_class(layer) and name in SUPPORTED:
            attrs, axis, depthwise = SUPPORTED[name]
            var = next((getattr(layer, a) for a in attrs if hasattr(layer, a)), None)
            if var is not None and len(var.shape) >= 2:
                kernels.append(Kernel(layer, var, axis, depthwise))
            continue
        own = _own_weights(layer)
        if not any(len(v.shape) >= 2 for v in own):
            continue
        if not is_keras_class(layer):
            alone.append((layer.name, f"subclassed layer {name}: trained, not pruned or clustered"))
        elif name != "BatchNormalization":
            alone.append((layer.name, f"{name} is not a supported layer: trained as it is"))
    return kernels, alone


def _own_weights(layer: Any) -> list:
    inner = {id(v) for sub in sublayers(layer) for v in sub.weights}
    return [v for v in layer.weights if id(v) not in inner]


# ------------------------------------------------------------------ batch norm folding


def is_batchnorm(layer: Any) -> bool:
    return is_keras_class(layer) and type(layer).__name__ == "BatchNormalization"


def fold_pairs(model: Any, kernels: list[Kernel]) -> tuple[list[tuple[Kernel, Any]], list[str]]:
    """(kernel, batch norm) pairs to fold: a batch norm over the last axis whose only input
    is the output of a supported layer that nothing else reads. Notes say which batch norms
    stay as they are, and why."""
    by_layer = {id(k.layer): k for k in kernels}
    edges = _edges(model)
    notes: list[str] = []
    pairs = []
    for layer in sublayers(model):
        if not is_batchnorm(layer):
            continue
        if edges is None:
            notes.append(f"{layer.name}: not folded (no layer graph to read)")
            continue
        inputs = edges["inputs"].get(id(layer))
        if inputs is None or len(inputs) != 1:
            notes.append(f"{layer.name}: not folded (not called once on one input)")
            continue
        producer = inputs[0]
        k = by_layer.get(id(producer))
        axis = _bn_axis(layer)
        if k is None:
            notes.append(f"{layer.name}: not folded (its input is not a conv or dense layer)")
        elif edges["readers"].get(id(producer), []) != [layer] or id(producer) in edges["out"]:
            notes.append(f"{layer.name}: not folded ({producer.name}'s output has other readers)")
        elif axis != -1:
            notes.append(f"{layer.name}: not folded (normalizes axis {axis}, not the channels)")
        else:
            pairs.append((k, layer))
    return pairs, notes


def _bn_axis(layer: Any) -> int | None:
    """The axis the batch norm normalizes, counted from the end (-1: channels last)."""
    axis = layer.axis
    if not isinstance(axis, int):  # tf_keras keeps a list
        axis = list(axis)
        if len(axis) != 1:
            return None
        axis = int(axis[0])
    if axis < 0:
        return axis
    try:
        return axis - len(layer.input.shape)
    except (AttributeError, ValueError, RuntimeError):
        return None


def _edges(model: Any) -> dict | None:
    """Who reads whom among the model's layers: Sequential by order, functional by its
    nodes; None for a subclassed model (its call is code, not a graph)."""
    name = type(model).__name__
    layers = list(model.layers)
    if name == "Sequential" and is_keras_class(model):
        inputs = {id(b): [a] for a, b in zip(layers, layers[1:])}
        readers = {id(a): [b] for a, b in zip(layers, layers[1:])}
        return {"inputs": inputs, "readers": readers, "out": {id(layers[-1])}}
    nodes = getattr(model, "_nodes_by_depth", None)
    if not nodes or not is_keras_class(model):
        return None
    inputs: dict[int, list] = {}
    readers: dict[int, list] = {}
    calls: dict[int, int] = {}
    for depth_nodes in nodes.values():
        for node in depth_nodes:
            layer = getattr(node, "operation", None) or getattr(node, "layer", None)
            tensors = _flat(node.input_tensors)
            producers = [t._keras_history[0] for t in tensors]
            calls[id(layer)] = calls.get(id(layer), 0) + 1
            inputs[id(layer)] = producers
            for p in producers:
                readers.setdefault(id(p), []).append(layer)
    for key, count in calls.items():
        if count > 1:  # a shared layer: its weights serve several inputs; never fold it
            inputs[key] = []
            readers[key] = [None, None]
    outs = {id(t._keras_history[0]) for t in _flat(model.outputs)}
    return {"inputs": inputs, "readers": readers, "out": outs}


def _flat(x: Any) -> list:
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat(v)]
    if isinstance(x, list | tuple):
        return [t for v in x for t in _flat(v)]
    return [x]


def fold(k: Kernel, bn: Any) -> None:
    """Move the batch norm's per-channel scale into the kernel and its shift into the batch
    norm's offset, leaving the batch norm an exact identity plus that offset: gamma 1, mean
    0, and a variance v with float32(v + epsilon) == 1, so that it computes x * 1 + beta.
    The converter then folds a multiplication by exactly 1 into the kernel: the weights the
    stage trains are, bit for bit, the weights the .tflite stores."""
    eps = np.float32(bn.epsilon)
    beta = _value(bn.beta) if bn.beta is not None else 0.0
    mean, var = _value(bn.moving_mean), _value(bn.moving_variance)
    scale = fold_scale(bn)
    shift = (beta - mean * scale).astype(np.float32)
    rows = k.rows(_value(k.variable)) * scale[:, None]
    k.variable.assign(k.from_rows(rows).astype(np.float32))
    bias = getattr(k.layer, "bias", None)
    if bias is not None and getattr(k.layer, "use_bias", False):
        bias.assign((_value(bias) * scale).astype(np.float32))
    unit = _unit_variance(eps)
    bn.moving_variance.assign(np.full(var.shape, unit, np.float32))
    if bn.gamma is not None:
        bn.gamma.assign(np.ones(var.shape, np.float32))
    if bn.beta is not None:
        bn.beta.assign(shift)
        bn.moving_mean.assign(np.zeros(var.shape, np.float32))
    else:  # no offset to hold the shift: x - mean is the same shift
        bn.moving_mean.assign(-shift)
    k.folded_bn = bn.name


def fold_scale(bn: Any) -> np.ndarray:
    """The per-channel factor folding the batch norm multiplies a kernel by: gamma / sigma."""
    gamma = _value(bn.gamma) if bn.gamma is not None else np.float32(1)
    var = _value(bn.moving_variance)
    return (gamma / np.sqrt(var + np.float32(bn.epsilon))).astype(np.float32)


def _unit_variance(eps: np.float32) -> np.float32:
    """A float32 v with v + eps == 1 and 1 / sqrt(v + eps) == 1 in float32."""
    v = np.float32(1) - eps
    for _ in range(8):
        s = np.float32(v + eps)
        if s == np.float32(1):
            return v
        v = np.nextafter(v, np.float32(2) if s < 1 else np.float32(0), dtype=np.float32)
    raise ValueError(f"no float32 variance makes a unit batch norm with epsilon {eps}")


def _value(v: Any) -> np.ndarray:
    return np.asarray(v.numpy(), dtype=np.float32)
