"""The explore command's HTML page, drawn from explore.json's document: for each model its
Pareto chart (hovering a point shows the candidate's settings and the command that makes
it) and a table of every candidate."""

from __future__ import annotations

import os
from typing import Any

from tflrewrite.reports import html

# Figures in the candidates' table: (header, key in a candidate's measures).
COLUMNS = {
    "generic": [],
    "ethos-u": [("Vela weights", "vela_encoded_weights_bytes"), ("cycles", "vela_cycles")],
    "tflm": [("TFLM weights", "tflm_weight_bytes"), ("arena", "tflm_arena_bytes")],
}


def page(doc: dict) -> str:
    """The whole page for explore.json's `doc`."""
    models = doc["models"]
    sections = [_model(m, k) for k, m in enumerate(models)]
    if len(models) == 1:
        title = f"tflrewrite explore: {os.path.basename(models[0]['input'])}"
    else:
        title = f"tflrewrite explore: {len(models)} models"
    lead = "Every candidate of the deployment tree, measured; the front in blue."
    return html.page(title, sections, lead=lead)


def _model(m: dict, k: int) -> str:
    ok = [r for r in m["candidates"] if r["status"] == "ok"]
    points = [p for p in (_point(r, m) for r in ok) if p is not None]
    parts = [html.paragraph(_lead(m))]
    if points:
        fidelity = m["fidelity_label"]
        parts.append(
            html.pareto_chart(
                points,
                size_label=m["size_label"],
                fidelity_label=fidelity,
                caption=f"{m['size_label']} against {fidelity}; the front joined by a line. "
                "Hover a point for its settings and the command that makes it.",
            )
        )
    else:
        parts.append(html.paragraph("No candidate ran: nothing to chart.", "note"))
    parts.append(_table(m))
    failed = [r for r in m["candidates"] if r["status"] != "ok"]
    if failed:
        rows = [(r["name"], r["status"], r["reason"]) for r in failed]
        parts.append(html.table(["candidate", "status", "reason"], rows))
    return html.section(f"model-{k + 1}", os.path.basename(m["input"]), *parts)


def _lead(m: dict) -> str:
    e = m["evaluation"]
    labels = {"classes": ", with class labels", "values": ", with target values", None: ""}
    text = (
        f"{m['input']}, target {m['target']}: {len(m['candidates'])} candidates, measured on "
        f"{e['samples']} samples ({e['source']}){labels[e['labels']]}."
    )
    ref = m["reference"].get("measures")
    if ref:
        text += f" The input: {ref['bytes']:,} bytes, {ref['zip_bytes']:,} zipped"
        for key in ("accuracy", "mse"):
            if ref.get(key) is not None:
                text += f", {key} {ref[key]:.4g}"
        text += "."
    return text


def _point(row: dict, m: dict) -> html.ParetoPoint | None:
    measures = row["measures"]
    size, fidelity = measures.get(m["size_measure"]), measures.get(m["fidelity_measure"])
    if size is None or fidelity is None:
        return None
    figures = ", ".join(f"{h} {_cell(measures, key)}" for h, key in _columns(m))
    return html.ParetoPoint(
        size=float(size),
        fidelity=float(fidelity),
        label=f"{row['name']}: {figures}",
        command=row["command"],
        front=row.get("front") is not None,
    )


def _columns(m: dict) -> list[tuple[str, str]]:
    cols = [("bytes", "bytes"), ("zipped", "zip_bytes"), *COLUMNS.get(m["target"], [])]
    cols += [("SQNR dB", "sqnr_db"), ("top-1 agree", "top1_agreement")]
    if m["fidelity_measure"] in ("accuracy", "mse"):
        cols.append((m["fidelity_measure"], m["fidelity_measure"]))
    return cols


def _cell(measures: dict, key: str) -> str:
    value: Any = measures.get(key)
    if key == "sqnr_db" and measures.get("identical"):
        return "inf"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if key in ("accuracy", "top1_agreement") else f"{value:.4g}"
    return f"{value:,}"


def _table(m: dict) -> str:
    cols = _columns(m)
    ok = [r for r in m["candidates"] if r["status"] == "ok"]
    ok.sort(key=lambda r: (r.get("front") is None, r.get("front") or 0))
    rows = [
        (
            "" if r.get("front") is None else r["front"],
            r["name"],
            *(_cell(r["measures"], key) for _, key in cols),
            r["file"],
            r["command"],
        )
        for r in ok
    ]
    header = ["front", "candidate", *(h for h, _ in cols), "file", "command"]
    return html.table(header, rows, numeric=set(range(2, 2 + len(cols))))
