"""The generic target: dense storage, the model exactly as the passes left it."""

from __future__ import annotations

from dataclasses import dataclass

from tflrewrite.model import Model
from tflrewrite.passes.common import PassResult, Rule

NAME = "generic"


@dataclass(frozen=True)
class Options:
    pass


def run(model: Model, options: Options | None = None, rules: tuple[Rule, ...] = ()) -> PassResult:
    """Nothing to lay down differently: the same model, no records."""
    return PassResult(model, [])
