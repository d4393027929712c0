"""The generic target: dense storage, the model exactly as the passes left it."""

from __future__ import annotations

from tflrewrite.targets import Target

# The passes leave every weight dense: there is nothing to lay down.
TARGET = Target(name="generic", run=None)
