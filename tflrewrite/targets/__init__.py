"""Deployment targets: how the rewritten model is laid down for a runtime.

A target runs after the passes and follows their contract: ``run(model)`` returns a
PassResult with a new model (the input is never changed) and one record per weight it
considered. TARGETS names each one with a line of what it lays down; the module that does
it is ``tflrewrite.targets.<name>`` (a dash in the name is an underscore in the module).
Modules are imported only when used: some pull in Numba, and `--help` should not wait.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TARGETS = {
    "generic": "dense weights, exactly as the passes left them (the most portable output)",
    "cpu": "FULLY_CONNECTED weights block-sparse where LiteRT's CPU kernel reads them and "
    "the file gets smaller (int8: 1x16 blocks, float32: 1x4; pair with --prune-pattern)",
    "xnnpack": "float conv/FC weights sparse behind DENSIFY where XNNPACK's sparse inference "
    "takes them (1x1 convs > 2/3 zeros; runs sparse on ARM, not on x86 with AVX)",
    "tflm": "clustered weights as TFLite Micro lookup tables: bit-packed indices expanded by "
    "TFLM_DECODE ops (pair with --cluster)",
    "ethos-u": "dense full-integer int8 for Arm's Vela: per-tensor FULLY_CONNECTED weights, "
    "and --cluster as one codebook per weight shaped for Vela's weight codec",
}


def load(name: str) -> ModuleType:
    """The module of target `name` (one of TARGETS)."""
    if name not in TARGETS:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
