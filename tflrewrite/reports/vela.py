"""Arm's Vela compiler (the `ethos-u-vela` package) on a model: what Ethos-U makes of it.

Vela has no stable Python API for compiling a network, so it runs as a subprocess
(`python -m ethosu.vela`, the same interpreter) with its output in a temporary folder; the
figures come from the summary CSV it writes there, and the NPU/CPU operator counts from its
printed network summary. Nothing here imports Vela (or TensorFlow) into this process.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tflrewrite.errors import TflRewriteError

DEFAULT_ACCELERATOR = "ethos-u55-128"
INSTALL_HINT = "--vela needs the ethos-u-vela package: pip install 'tflrewrite[ethos-u]'"

_OPS = re.compile(r"^\s*(CPU|NPU) operators\s*=\s*(\d+)", re.MULTILINE)


@dataclass
class VelaReport:
    accelerator: str
    vela_version: str | None = None
    system_config: str | None = None
    memory_mode: str | None = None
    original_weights_bytes: int | None = None  # "Original Weights Size"
    npu_encoded_weights_bytes: int | None = None  # "NPU Encoded Weights Size"
    weights_area: str | None = None  # the memory Vela places the encoded weights in
    sram_used_bytes: int | None = None
    dram_used_bytes: int | None = None
    off_chip_flash_used_bytes: int | None = None
    cycles_total: int | None = None
    cycles_npu: int | None = None
    inference_time_s: float | None = None
    inferences_per_second: float | None = None
    macs: int | None = None
    npu_operators: int | None = None
    cpu_operators: int | None = None
    error: str | None = None  # one line, when Vela failed on the model

    def to_json(self) -> dict:
        return asdict(self)


def available() -> bool:
    try:
        return importlib.util.find_spec("ethosu.vela") is not None
    except (ImportError, ValueError):
        return False


def version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("ethos-u-vela")
    except metadata.PackageNotFoundError:
        return None


def require(accelerator: str) -> None:
    """Refuse (exit 2) when Vela is not installed or does not know `accelerator`."""
    if not available():
        raise TflRewriteError(f"audit: {INSTALL_HINT}")
    known = accelerators()
    if known and accelerator not in known:
        raise TflRewriteError(
            f"audit: --accelerator {accelerator!r} is not one of Vela's: {', '.join(known)}"
        )


def accelerators() -> list[str]:
    """The accelerator configurations the installed Vela knows ([] if it cannot say)."""
    try:
        from ethosu.vela.architecture_features import Accelerator
    except Exception:  # an unexpected Vela layout: let Vela itself refuse
        return []
    return [a.value for a in Accelerator]


def compile_report(model: str | os.PathLike, accelerator: str = DEFAULT_ACCELERATOR) -> VelaReport:
    """Compile `model` with Vela for `accelerator` and read back its figures. A Vela
    failure does not raise: the report's `error` holds its message in one line."""
    report = VelaReport(accelerator=accelerator, vela_version=version())
    with tempfile.TemporaryDirectory(prefix="tflrewrite-vela-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "ethosu.vela",
            os.fspath(Path(model).resolve()),
            "--output-dir",
            tmp,
            "--accelerator-config",
            accelerator,
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", cwd=tmp)
        except OSError as e:
            report.error = f"could not run Vela: {e}"
            return report
        summaries = sorted(Path(tmp).glob("*_summary_*.csv"))
        if done.returncode != 0 or not summaries:
            report.error = _error_line(done.stderr, done.stdout, done.returncode)
            return report
        with open(summaries[0], newline="") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        report.error = "Vela wrote an empty summary"
        return report
    _fill(report, rows[0])
    for kind, count in _OPS.findall(done.stdout):
        setattr(report, f"{kind.lower()}_operators", int(count))
    return report


def _fill(report: VelaReport, row: dict[str, str]) -> None:
    def num(key: str, scale: float = 1.0, whole: bool = True) -> int | float | None:
        text = (row.get(key) or "").strip()
        try:
            value = float(text) * scale
        except ValueError:
            return None
        if value != value or value in (float("inf"), float("-inf")):  # nan / inf
            return None
        return round(value) if whole else value

    kib = 1024.0  # Vela's *_memory_used columns are in KiB
    report.system_config = row.get("system_config") or None
    report.memory_mode = row.get("memory_mode") or None
    report.original_weights_bytes = num("total_original_weights")
    report.npu_encoded_weights_bytes = num("total_npu_encoded_weights")
    report.weights_area = row.get("weights_storage_area") or None
    report.sram_used_bytes = num("sram_memory_used", kib)
    report.dram_used_bytes = num("dram_memory_used", kib)
    report.off_chip_flash_used_bytes = num("off_chip_flash_memory_used", kib)
    report.cycles_total = num("cycles_total")
    report.cycles_npu = num("cycles_npu")
    report.inference_time_s = num("inference_time", whole=False)
    report.inferences_per_second = num("inferences_per_second", whole=False)
    report.macs = num("nn_macs")


def _error_line(stderr: str, stdout: str, rc: int) -> str:
    """Vela's own message, in one line: the last line of its output that is not a
    traceback frame or one of its default-configuration warnings."""
    for text in (stderr, stdout):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        lines = [
            ln
            for ln in lines
            if not ln.startswith(("Warning: No ", 'File "', "Traceback", "^", "~"))
        ]
        if lines:
            return f"Vela failed (exit {rc}): {lines[-1]}"
    return f"Vela failed (exit {rc}) and wrote no summary"
