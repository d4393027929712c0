"""Deployment targets: how the rewritten model is laid down for a runtime.

Each target module exports TARGET, a Target: what runs after the passes (`run`, with a
pass's contract: a new model, the input never changed, one record per weight it
considered), the recipe steps it runs its own way, and its estimate of a weight's stored
bytes, which size budgets plan with. TARGETS names each one with a line of what it lays
down; the module that does it is ``tflrewrite.targets.<name>`` (a dash in the name is an
underscore in the module). Modules are imported only when used: some pull in Numba, and
`--help` should not wait.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the command's --help imports this module: it stays light
    import numpy as np

    from tflrewrite.model import Model, Operator, Subgraph
    from tflrewrite.passes.common import Pass, PassResult
    from tflrewrite.weights import Weight

DEFAULT = "generic"  # the passes' own output: dense, as portable as the input

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

# What a --max-bytes budget says it could not meet on a target whose estimate is the dense
# size: there pruning and clustering shrink the zipped file, not the file.
DENSE_HINT = " (with this target pruning and clustering shrink zipped bytes, not bytes)"


class EstimateBytes(Protocol):
    def __call__(
        self,
        w: Weight,
        stored: np.ndarray,
        *,
        subgraph: Subgraph,
        readers: list[Operator],
        quantize_mode: str | None,
    ) -> int: ...


def dense_bytes(
    w: Weight,
    stored: np.ndarray,
    *,
    subgraph: Subgraph,
    readers: list[Operator],
    quantize_mode: str | None,
) -> int:
    """Bytes of `stored` (groups x rows x d, as the file would hold a candidate's values of
    `w`) kept dense: the estimate of every target that stores weights as they are."""
    return stored.nbytes


@dataclass(frozen=True)
class Target:
    """A runtime layout. `run`: what it lays down after the passes (None where the passes'
    dense output is the layout already). `steps`: recipe steps it runs its own way, by
    step name (data-aware variants still take precedence). `estimate_bytes`: a weight's
    file bytes once laid down, from the values a candidate setting would store (`quantize_mode`,
    the recipe's quantize mode or None). `bytes_hint`: what a --max-bytes budget it could
    not meet adds to its message. `unsupported`: (activation dtype, op type) -> why its
    runtime has no integer kernel for it (such ops stay float); `tied`: (activation dtype,
    op type) whose kernel there needs one scale on input and output. Full-integer
    quantization (its quantize step, and the --min-sqnr planner) honours both."""

    name: str
    run: Callable[[Model], PassResult] | None
    steps: Mapping[str, Pass] = field(default_factory=dict)
    estimate_bytes: EstimateBytes = dense_bytes
    bytes_hint: str = DENSE_HINT
    unsupported: Mapping[tuple[str, str], str] = field(default_factory=dict)
    tied: frozenset[tuple[str, str]] = frozenset()

    def own_steps(self) -> Mapping[str, Pass]:
        """The steps this target runs its own way, its quantize step among them where its
        runtime lacks integer kernels."""
        if not (self.unsupported or self.tied):
            return self.steps
        from tflrewrite.passes import quantize

        return {**self.steps, "quantize": quantize.for_runtime(self.unsupported, self.tied)}


def load(name: str) -> Target:
    """Target `name` (one of TARGETS)."""
    if name not in TARGETS:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}").TARGET
