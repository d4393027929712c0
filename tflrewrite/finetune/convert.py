"""From the fine-tuned Keras model to the deployment .tflite: TFLiteConverter full-integer
int8, then the rewriter's own passes and target, then a check of what the stage promised
in the stored int8 values. Imports TensorFlow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf  # noqa: TID251 (the fine-tune hook is where TensorFlow lives)

from tflrewrite import pipeline, writer
from tflrewrite.errors import TflRewriteError
from tflrewrite.finetune.keras_layers import Kernel
from tflrewrite.finetune.stages import Plan, StageOptions, distinct_per_row
from tflrewrite.model import Model
from tflrewrite.passes import cluster as cluster_pass
from tflrewrite.passes import prune as prune_pass
from tflrewrite.passes.common import Rule
from tflrewrite.recipes import Recipe, Step
from tflrewrite.weights import Weight, find_weights

# A kernel and a converted weight are the same when their channel rows, each scaled to a
# largest magnitude of 1, differ by less than this (relative Frobenius norm). Scaling each
# row first makes the match blind to per-channel scales (int8 scales, a batch norm the
# converter folded); int8 rounding of a kernel that was not snapped stays far below it.
MATCH_TOLERANCE = 0.1


def to_int8(model: Any, calibration: list[list[np.ndarray]], per_channel: bool) -> bytes:
    """Full-integer int8 through TFLiteConverter: int8 weights and activations, float
    input and output, activation ranges from the calibration samples."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # One scale per tensor keeps a per-tensor codebook a per-tensor set of int8 values.
    converter._experimental_disable_per_channel = not per_channel
    try:
        return converter.convert()
    except Exception as e:  # the converter raises many types; all mean the same to a user
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TflRewriteError(f"TFLiteConverter could not convert the model: {line}") from None


@dataclass
class Matched:
    kernel: Kernel
    plan: Plan
    weight: Weight  # in the converted model


def match(
    kernels: list[Kernel], plans: list[Plan], finals: list[np.ndarray], *, model: Model
) -> tuple[list[Matched], list[Kernel]]:
    """Each kernel's weight in the converted model, by shape and values; and the kernels
    that have none (a converter that rewrote the layer beyond recognition)."""
    candidates = [w for w in find_weights(model)[0] if w.tensor.dtype == "INT8"]
    used: set[int] = set()
    matched, missing = [], []
    for k, p, rows in zip(kernels, plans, finals):
        best, best_score = None, MATCH_TOLERANCE
        for w in candidates:
            if id(w) in used or w.tensor.data.size != rows.size:
                continue
            stored = w.channels(w.tensor.data)
            if stored.shape != rows.shape:
                continue
            score = _distance(stored.astype(np.float32), rows)
            if score < best_score:
                best, best_score = w, score
        if best is None:
            missing.append(k)
        else:
            used.add(id(best))
            matched.append(Matched(k, p, best))
    return matched, missing


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _unit_rows(a), _unit_rows(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    top = np.abs(rows).max(axis=1, keepdims=True)
    return rows / np.where(top > 0, top, 1)


def recipe_for(
    options: StageOptions, model: Model, matched: list[Matched], unpruned: dict[str, str]
) -> Recipe:
    """The rewriter's passes for what the stage did, on the weights it trained only: they
    re-impose exact zeros and at most K values per unit where conversion disturbed them.
    Weights stored with one scale per channel are clustered per channel whatever the
    granularity: values of one int8 level mean different things in different channels."""
    ours = {id(m.weight.tensor) for m in matched}
    leave = tuple(
        Rule(f"^{re.escape(w.name)}$", None)
        for w in find_weights(model)[0]
        if id(w.tensor) not in ours
    )
    steps = []
    if options.prunes:
        prune = prune_pass.Options(sparsity=options.sparsity, scope=options.prune_scope)
        kept = tuple(
            Rule(f"^{re.escape(m.weight.name)}$", None)
            for m in matched
            if m.kernel.name in unpruned
        )
        steps.append(Step("prune", prune, leave + kept))
    if options.clusters_weights:
        per_channel = tuple(
            Rule(f"^{re.escape(m.weight.name)}$", {"granularity": "channel"})
            for m in matched
            if _per_channel(m.weight) and options.granularity == "tensor"
        )
        cluster = cluster_pass.Options(clusters=options.clusters, granularity=options.granularity)
        steps.append(Step("cluster", cluster, leave + per_channel))
    return Recipe(f"finetune-{options.stage}", f"after a {options.stage} fine-tune", tuple(steps))


def _per_channel(w: Weight) -> bool:
    q = w.tensor.quantization
    return bool(q is not None and q.per_axis and q.scale.size > 1)


def apply_rewrite(
    model: Model,
    options: StageOptions,
    matched_in: list[Matched],
    *,
    target: str,
    unpruned: dict[str, str],
) -> tuple[bytes, list[dict], list[dict]]:
    """(final .tflite bytes, per matched weight: what the passes changed and whether the
    stage's promises hold, the rewriter's records) for the converted `model`; kernels
    named in `unpruned` are left out of the prune pass, as they were out of training's."""
    recipe = recipe_for(options, model, matched_in, unpruned)
    checked = pipeline.apply(model, recipe)
    after = {w.name: w for w in find_weights(checked.model)[0]}
    rows = []
    for m in matched_in:
        w = after.get(m.weight.name)
        before = m.weight.channels(m.weight.tensor.data)
        now = w.channels(w.tensor.data) if w is not None else before
        rows.append(_check(m, before, now, options))
    final = checked if target == "generic" else pipeline.apply(model, recipe, target=target)
    return writer.to_bytes(final.model), rows, final.records


def _check(m: Matched, before: np.ndarray, now: np.ndarray, options: StageOptions) -> dict:
    k, plan = m.kernel, m.plan
    zeros_kept = None
    if plan.keep is not None:
        zeros_kept = bool(np.all(now[~plan.keep] == 0))
    per_channel = int(distinct_per_row(now).max())
    per_tensor = int(np.unique(now).size)
    out = {
        "layer": k.name,
        "kind": k.kind,
        "tensor": m.weight.name,
        "shape": list(m.weight.shape),
        "quantization": "channel" if _per_channel(m.weight) else "tensor",
        "folded_batchnorm": k.folded_bn,
        "sparsity": float(np.mean(now == 0)),
        "pruned_still_zero": zeros_kept,
        "channel_unique": per_channel,
        "tensor_unique": per_tensor,
        "changed_by_rewrite": int(np.count_nonzero(before != now)),
    }
    ok = zeros_kept is not False
    if options.clusters_weights:
        ok = ok and per_channel <= options.clusters
        if options.granularity == "tensor" and out["quantization"] == "tensor":
            ok = ok and per_tensor <= options.clusters
    out["ok"] = ok
    return out


def int8_accuracy(
    tflite: bytes, samples: list[list[np.ndarray]], y: np.ndarray, *, threshold: float
) -> float:
    """Accuracy of the .tflite in LiteRT (builtin kernels): top-1 against class ids or
    one-hot rows; for one output, above `threshold` against 0/1."""
    from tflrewrite import runtime

    runner = runtime.load(tflite, name="finetuned")
    labels = np.asarray(y).reshape(len(samples), -1)
    hits = 0
    for outputs, label in zip(runner.run_each(samples), labels):
        out = outputs[0].reshape(-1)
        guess = int(out.argmax()) if out.size > 1 else int(out[0] > threshold)
        hits += guess == (int(label.argmax()) if label.size > 1 else int(label[0]))
    return hits / max(len(samples), 1)
