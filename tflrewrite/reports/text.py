"""Plain-text tables and number formats for the reports people read."""

from __future__ import annotations

import math
from typing import Any, TextIO


def print_table(rows: list[tuple], out: TextIO, right: set[int] = frozenset()) -> None:
    """Rows of strings as aligned columns; columns in `right` are right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ]
        out.write("  " + "  ".join(cells).rstrip() + "\n")


def ratio(after: int, before: int) -> str:
    return f"{after / before:.3f}x" if before else "-"


def fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def db(value: float | None) -> str:
    if value is None or (math.isinf(value) and value > 0):
        return "inf"
    return f"{value:.2f}"


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters, printable on any terminal: bytes of a name that were
    not UTF-8 (kept by the reader as surrogate escapes) are shown as \\xNN."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if len(text) <= width else text[: width - 1] + "…"


def label_columns(outputs: list[dict]) -> list[tuple[str, ...]]:
    """The header and each output's cells of the columns that labels add to a verify table:
    accuracy or MSE, of the reference and then (after "->") of the candidate; none where no
    output has them."""
    columns = []
    for key, title, form in (
        ("accuracy", "accuracy", "{:.3f}"),
        ("mse", "MSE", "{:.4g}"),
    ):
        if any(o.get(f"candidate_{key}") is not None for o in outputs):
            columns.append((key, title, form))
    rows: list[tuple[str, ...]] = [tuple(t for _, title, _ in columns for t in (title, "->"))]
    for o in outputs:
        cells = []
        for key, _, form in columns:
            for side in ("reference", "candidate"):
                value = o.get(f"{side}_{key}")
                cells.append("" if value is None else form.format(value))
        rows.append(tuple(cells))
    return rows
