"""Quantization. Mode "int8" quantizes the whole graph, weights and activations, from
calibration data (tflrewrite.passes.quantize_graph); mode "int16x8" too, with int16
activations and int8 weights (the TF converter's 16x8). The weight-only modes: float weights to
int8 (per-channel symmetric, zero point 0) or to float16, each read through a DEQUANTIZE op.

LiteRT evaluates a DEQUANTIZE of a constant once, when the interpreter is prepared, so the
file shrinks while the arithmetic stays float; biases stay float and need no new scales.
Float16 weights already behind a DEQUANTIZE keep that op, which now reads int8.

A sparse weight (behind DENSIFY) gets its new values sparse in its own layout, the DENSIFY
writing the int8 or float16 tensor its DEQUANTIZE reads (the DENSIFY kernel takes float32,
float16 and int8), or dense behind DEQUANTIZE where sparse would not be smaller: the
record's "stored" says which. One that FULLY_CONNECTED reads sparse itself is left alone:
LiteRT has no sparse kernel for float activations with int8 or float16 weights.

Rounding is half away from zero, as TFLite's own weight quantizer rounds; zero maps to
zero and a unit's K distinct values map to at most K int8 values, so earlier pruning and
per-channel clustering survive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tflrewrite import calibrate
from tflrewrite.errors import UsageError
from tflrewrite.model import Model
from tflrewrite.passes import quantize_graph, weight_only
from tflrewrite.passes.common import (
    ACTIVATION_RANGES,
    INPUT_SUMS,
    QUANTIZED_FROM,
    Data,
    Pass,
    PassResult,
    Rule,
    check_regex,
    select,
)

MODES = ("int8", "int8-weights", "float16", "int16x8")
# The modes that quantize activations too, from calibration data.
FULL_INTEGER = ("int8", "int16x8")
ROUNDINGS = ("feedback", "adaround")


@dataclass(frozen=True, kw_only=True)
class Options:
    mode: str = "int8-weights"
    # Below this a DEQUANTIZE op costs more bytes than it saves; the TF converter's own
    # weight quantization uses the same threshold (weights_min_num_elements).
    min_size: int = 1024
    skip: str | None = None
    # Modes int8 and int16x8 only: how activation ranges are chosen from the calibration
    # samples, and the dtype of the model's inputs and outputs.
    method: str = "minmax"
    io: str = "float"
    # Modes int8 and int16x8 with data-aware fitting: how the int8 weights are re-rounded
    # (tflrewrite.passes.datafit's refine step): error feedback, or AdaRound.
    rounding: str = "feedback"

    def __post_init__(self) -> None:
        check_regex(self.skip, "--skip")
        if self.mode not in MODES:
            raise UsageError(f"quantize: mode must be {', '.join(MODES)}, not {self.mode!r}")
        for name, value, allowed in (
            ("method", self.method, calibrate.METHODS),
            ("io", self.io, tuple(quantize_graph.IO_TYPES)),
            ("rounding", self.rounding, ROUNDINGS),
        ):
            if value not in allowed:
                raise UsageError(f"quantize: {name} must be {', '.join(allowed)}, not {value!r}")
        if self.mode not in FULL_INTEGER and (self.method, self.io) != ("minmax", "float"):
            raise UsageError(
                "quantize: method and io are options of mode int8 or int16x8 "
                "(--quantize int8 or int16x8)"
            )
        if self.mode not in FULL_INTEGER and self.rounding != "feedback":
            raise UsageError(
                "quantize: rounding is an option of mode int8 or int16x8 "
                "(--quantize int8 or int16x8)"
            )
        io = quantize_graph.MODE_IO.get(self.mode)
        if io is not None and self.io not in io:
            raise UsageError(f"quantize: io of mode {self.mode} must be {', '.join(io)}")


def run(
    model: Model,
    options: Options,
    rules: tuple[Rule, ...] = (),
    *,
    data: Data | None = None,
    unsupported: Mapping[tuple[str, str], str] | None = None,
    tied: frozenset[tuple[str, str]] = frozenset(),
) -> PassResult:
    """Modes int8 and int16x8 calibrate on `data`'s samples; the weight-only modes need no
    data. `unsupported`: (activation dtype, op type) -> why a runtime cannot run that op in
    that dtype; such ops stay float. `tied`: (activation dtype, op type) kept in one scale
    from input to output (a target's own quantize step, see for_runtime)."""
    quantize_graph.check_rules(options, rules)
    if options.mode in FULL_INTEGER:
        samples = None if data is None else data.samples
        sums = {} if _sums_wanted(model, data) else None
        result = quantize_graph.run(
            model,
            options,
            rules,
            data=samples,
            unsupported=unsupported,
            tied=tied,
            sums=sums,
            ranges=None if sums is not None else _ranges_found(model, data, options),
        )
        if sums is not None:
            data.found[INPUT_SUMS] = sums
        if data is not None and QUANTIZED_FROM in data.wanted:
            data.found[QUANTIZED_FROM] = model
        return result
    model, chosen, records = select(model, options, rules, refuse=weight_only.not_quantizable)
    records += weight_only.quantize_weights(model, chosen)
    return PassResult(model, records)


def _sums_wanted(model: Model, data: Data | None) -> bool:
    """Whether calibration, which runs `model` over the samples, also sums its layer
    inputs for a later step (INPUT_SUMS): wanted, and `model` is the reference."""
    return (
        data is not None
        and INPUT_SUMS in data.wanted
        and (data.reference is None or data.reference is model)
    )


def _ranges_found(model: Model, data: Data | None, options: Options) -> dict | None:
    """`model`'s activation ranges where the step before ran this very model over these
    samples as it made it (ACTIVATION_RANGES) and they are what calibration would take
    (method minmax), else None."""
    found = None if data is None else data.found.get(ACTIVATION_RANGES)
    if found is None or options.method != "minmax":
        return None
    made, samples, ranges = found
    return ranges if made is model and samples is data.samples else None


def _wants(options: Options) -> frozenset[str]:
    """Activation ranges, where the step calibrates and would take them (_ranges_found)."""
    calibrates = options.mode in FULL_INTEGER and options.method == "minmax"
    return frozenset({ACTIVATION_RANGES}) if calibrates else frozenset()


PASS = Pass(name="quantize", Options=Options, run=run, wants=_wants)


def for_runtime(
    unsupported: Mapping[tuple[str, str], str], tied: frozenset[tuple[str, str]] = frozenset()
) -> Pass:
    """The quantize step of a target whose runtime lacks some integer kernels: ops of
    those (activation dtype, op type) stay float, their records giving the reason; and
    the `tied` ones, whose kernels there do not rescale, keep one scale from input to
    output."""

    def run_for_runtime(
        model: Model, options: Options, rules: tuple[Rule, ...] = (), *, data: Data | None = None
    ) -> PassResult:
        return run(model, options, rules, data=data, unsupported=unsupported, tied=tied)

    return Pass(name="quantize", Options=Options, run=run_for_runtime, wants=_wants)
