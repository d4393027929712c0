"""Deployment targets: how the rewritten model is laid down for a runtime.

A target runs after the passes and follows their contract: ``run(model, options, rules)``
returns a PassResult with a new model (the input is never changed) and one record per
weight it considered. ``generic`` (the default) leaves the dense model as it is; ``cpu``
stores FULLY_CONNECTED weights in the block-sparse form LiteRT's CPU kernels read.
"""

from __future__ import annotations

from tflrewrite.targets import cpu, generic

TARGETS = {
    "generic": generic,
    "cpu": cpu,
}
