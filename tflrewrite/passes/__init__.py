"""The compression passes. Each takes a model and its options and returns a new model
(the input is never changed) with one record per weight tensor: what was done, or why not.

PASSES lists them in the order a recipe runs them: pruning first, so that clustering keeps
its zeros; weight quantization before clustering, so that clusters are formed among the
int8 values the file will hold (per-channel scales applied after clustering would give
every channel its own copy of the codebook).
"""

from __future__ import annotations

from tflrewrite.passes import cluster, equalize, prune, quantize

PASSES = {
    "equalize": equalize,  # function-preserving: first, so every later pass sees its ranges
    "prune": prune,
    "quantize": quantize,
    "cluster": cluster,
}
