"""The compression passes. Each module exports one Pass (tflrewrite.passes.common): a name,
an Options dataclass and `run`, which takes a model and returns a new one (the input is
never changed) with one record per weight tensor: what was done, or why not.

PASSES lists them in the order a recipe runs them: pruning first, so that clustering keeps
its zeros; weight quantization before clustering, so that clusters are formed among the
int8 values the file will hold (per-channel scales applied after clustering would give
every channel its own copy of the codebook). A new pass is a new module and a line here.
"""

from __future__ import annotations

from tflrewrite.passes import cluster, equalize, prune, quantize

PASSES = {
    p.name: p
    for p in (
        equalize.PASS,  # function-preserving: first, so every later pass sees its ranges
        prune.PASS,
        quantize.PASS,
        cluster.PASS,
    )
}
