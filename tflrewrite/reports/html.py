"""The HTML report: one self-contained file, its charts drawn by matplotlib as inline SVG (text
as paths, no fonts to fetch), no script and nothing fetched over the network, so that it
opens offline and travels as one attachment.

`rewrite_report` builds the rewrite command's report; `page`, `section`, `table`, `figure`
and `pareto_chart` are the blocks another report (explore's) builds from. matplotlib is the
optional extra `tflrewrite[html]`, imported only here, only when a report is drawn."""

from __future__ import annotations

import hashlib
import html
import importlib.util
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tflrewrite import __version__
from tflrewrite.errors import UsageError
from tflrewrite.fileio import atomic_write
from tflrewrite.model import Model
from tflrewrite.reports.audit import breakdown
from tflrewrite.reports.nodes import OpFigures, Sqnr, bytes_by_type
from tflrewrite.reports.stages import Stages

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXTRA = "pip install 'tflrewrite[html]'"

# Colours of the two sides of every before/after chart, and of the charts' single series.
BEFORE, AFTER = "#9aa5b1", "#1f6feb"
# Charts list at most this many bars; the tables below them list everything.
MOST_BARS = 24
MOST_LAYERS = 80

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1180px;padding:0 20px 40px;color:#1f2328}
h1{font-size:22px;margin:24px 0 4px}h2{font-size:18px;margin:32px 0 8px;
border-bottom:1px solid #d0d7de;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.lead{color:#59636e;margin:0 0 12px}nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px;display:block;
max-width:100%;overflow-x:auto}
th,td{padding:3px 10px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:8px 0 18px}figcaption{color:#59636e;font-size:13px;max-width:900px}
svg{max-width:100%;height:auto}.note{color:#59636e}code{font-size:12px}
details{margin:6px 0}summary{cursor:pointer}
"""


def check_available(flag: str = "--html") -> None:
    """Refuse early, before any work, where matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"{flag} draws its charts with matplotlib: {EXTRA}")


# ------------------------------------------------------------------ building blocks


def page(title: str, sections: Sequence[str], *, lead: str = "") -> str:
    """A whole HTML document: `sections` (from `section`) under a title and a contents line."""
    links = " ".join(
        f'<a href="#{m.group(1)}">{m.group(2)}</a>'
        for m in (re.match(r'<section id="([^"]+)"><h2>([^<]*)</h2>', s) for s in sections)
        if m
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>{_esc(title)}</h1>\n<p class=lead>{lead}</p>\n<nav>{links}</nav>\n"
        + "\n".join(sections)
        + f'\n<p class="note">made by tflrewrite {_esc(__version__)}</p>\n</body></html>\n'
    )


def section(key: str, title: str, *parts: str) -> str:
    """A titled section; `parts` are HTML (tables, figures, paragraphs), in order."""
    return f'<section id="{_esc(key)}"><h2>{_esc(title)}</h2>\n' + "\n".join(parts) + "</section>"


def table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: set[int] = frozenset()
) -> str:
    """An HTML table; cells are text (escaped here), columns in `numeric` right-aligned."""

    def cells(tag: str, values: Sequence[Any]) -> str:
        return "".join(
            f"<{tag}{' class=n' if i in numeric else ''}>{_esc(str(v))}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table>"


def paragraph(text: str, css: str = "") -> str:
    return f"<p{' class=' + css if css else ''}>{_esc(text)}</p>"


def figure(fig: Figure, caption: str = "", *, titles: dict[str, str] | None = None) -> str:
    """`fig` as inline SVG in a <figure>. Its element ids get a prefix made from its content,
    so that charts in one page never share an id; `titles` maps an artist's gid to a text
    the browser shows on hovering it (an SVG <title>)."""
    import matplotlib

    sink = io.StringIO()
    # a fixed salt: the same ids from run to run; text as outlines: no font to fetch
    with matplotlib.rc_context({"svg.hashsalt": "tflrewrite", "svg.fonttype": "path"}):
        fig.savefig(sink, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = sink.getvalue()
    svg = svg[svg.index("<svg") :]
    for gid, text in (titles or {}).items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{_esc(text)}</title>', 1)
    prefix = "f" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"
    svg = re.sub(r'(\bid="|href="#|url\(#)', lambda m: m.group(1) + prefix, svg)
    note = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{svg}{note}</figure>"


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib Figure of its own (no pyplot: no global state, no GUI backend)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


@dataclass
class ParetoPoint:
    """One candidate of a sweep: its size, its fidelity, and what hovering it shows."""

    size: float
    fidelity: float
    label: str  # its settings, in a few words
    command: str = ""  # the command line that reproduces it
    front: bool = False  # on the Pareto front


def pareto_chart(
    points: Sequence[ParetoPoint],
    *,
    size_label: str = "zipped bytes",
    fidelity_label: str = "SQNR dB",
    caption: str = "",
) -> str:
    """Size against fidelity, the front joined by a line; hovering a point shows its
    settings and its command line."""
    fig = new_figure(8.5, 4.8)
    ax = fig.add_subplot()
    titles = {}
    for i, p in enumerate(points):
        colour = AFTER if p.front else BEFORE
        ax.plot([p.size], [p.fidelity], "o", color=colour, markersize=7, gid=f"pareto-{i}")
        titles[f"pareto-{i}"] = p.label + (f"\n{p.command}" if p.command else "")
    front = sorted((p for p in points if p.front), key=lambda p: p.size)
    if front:
        ax.step(
            [p.size for p in front], [p.fidelity for p in front], where="post", color=AFTER, lw=1
        )
    ax.set_xlabel(size_label)
    ax.set_ylabel(fidelity_label)
    ax.grid(alpha=0.3)
    return figure(fig, caption or "hover a point for its settings and command", titles=titles)


# ------------------------------------------------------------------ the rewrite report


def rewrite_report(
    report: dict,
    *,
    original: Model,
    rewritten: Model,
    stages: Stages | None = None,
    ops: Sequence[OpFigures] = (),
    sqnr: Sqnr | None = None,
) -> str:
    """The rewrite command's report (reports.summary.build's `report`) as a page: sizes,
    the weights' histograms at each step (`stages`, from pipeline.apply's on_step), per
    layer figures (`ops`, reports.nodes.per_op, SQNR measured as `sqnr` says)."""
    sections = [
        _summary(report),
        _sizes(original, rewritten),
        _histograms(stages),
        _layers(ops, sqnr),
        _steps(report),
    ]
    lead = (
        f"{_esc(report['input'])} &rarr; {_esc(report['output'])}, "
        f"recipe <code>{_esc(report['recipe'])}</code>"
    )
    return page(f"tflrewrite: {os.path.basename(report['output'])}", sections, lead=lead)


def write(path: str, text: str) -> None:
    """Write a page atomically (fileio.atomic_write)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def _summary(report: dict) -> str:
    rows = [("file bytes", report["input_bytes"], report["output_bytes"])]
    if "input_zip_bytes" in report:
        rows.append(("zipped bytes", report["input_zip_bytes"], report["output_zip_bytes"]))
    sizes = table(
        ("", "input", "output", "output/input"),
        [(n, f"{a:,}", f"{b:,}", f"{b / a:.3f}x" if a else "") for n, a, b in rows],
        numeric={1, 2, 3},
    )
    parts = [sizes]
    verify = report.get("verify")
    if verify is None:
        parts.append(paragraph("the models were not run (--no-verify)", "note"))
    elif "outputs" not in verify:
        parts.append(paragraph(f"verify: {verify.get('error') or verify.get('skipped')}", "note"))
    else:
        parts.append(
            paragraph(
                f"outputs against the input in {verify['runtime']}, {verify['samples']} "
                f"samples ({verify['inputs']}):"
            )
        )
        parts.append(
            table(
                ("output", "SQNR dB", "max |err|", "top-1 agreement"),
                [
                    (o["name"], _db(o["sqnr_db"]), f"{o['max_abs_error']:.4g}", _fraction(o))
                    for o in verify["outputs"]
                ],
                numeric={1, 2, 3},
            )
        )
    return section("summary", "Summary", *parts)


def _fraction(output: dict) -> str:
    agree = output.get("top1_agreement")
    return "" if agree is None else f"{agree:.3f}"


def _sizes(original: Model, rewritten: Model) -> str:
    tensors_before, tensors_after = breakdown(original)[0], breakdown(rewritten)[0]
    ops_before, ops_after = bytes_by_type(original), bytes_by_type(rewritten)
    kinds = sorted(
        set(ops_before) | set(ops_after),
        key=lambda k: -max(ops_before.get(k, 0), ops_after.get(k, 0)),
    )
    by_op = [(k, ops_before.get(k, 0), ops_after.get(k, 0)) for k in kinds]
    before, after = _by_name(tensors_before), _by_name(tensors_after)
    names = sorted(
        set(before) | set(after), key=lambda n: (-max(before.get(n, 0), after.get(n, 0)), n)
    )
    by_tensor = [(n, before.get(n, 0), after.get(n, 0)) for n in names]
    return section(
        "sizes",
        "Size: before and after",
        paragraph(
            "The bytes of the constants (weights, biases, tables) by the type of op that reads "
            "them (a buffer counts once for each type of op that reads it; int8 weights read "
            "through a DEQUANTIZE count at the op that reads its output), and by tensor."
        ),
        "<h3>by op type</h3>",
        _pair_bars(by_op, "constant bytes", "by op type"),
        _pair_table("op type", by_op),
        "<h3>by tensor</h3>",
        _pair_bars(by_tensor, "bytes", "by tensor, the largest"),
        "<details><summary>every constant tensor</summary>"
        + _pair_table("tensor", by_tensor)
        + "</details>",
    )


def _by_name(audits: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in audits:
        if a.bytes:
            label = a.name if a.subgraph == 0 else f"{a.name} (subgraph {a.subgraph})"
            out[label] = out.get(label, 0) + a.bytes
    return out


def _pair_table(what: str, rows: list[tuple[str, int, int]]) -> str:
    return table(
        (what, "before", "after", "after/before"),
        [(n, f"{a:,}", f"{b:,}", f"{b / a:.3f}x" if a else "new") for n, a, b in rows],
        numeric={1, 2, 3},
    )


def _pair_bars(rows: list[tuple[str, int, int]], unit: str, what: str) -> str:
    shown = rows[:MOST_BARS]
    fig = new_figure(9, 0.9 + 0.32 * len(shown))
    ax = fig.add_subplot()
    y = range(len(shown))
    ax.barh(
        [i - 0.2 for i in y], [b for _, b, _ in shown], height=0.4, color=BEFORE, label="before"
    )
    ax.barh([i + 0.2 for i in y], [a for _, _, a in shown], height=0.4, color=AFTER, label="after")
    ax.set_yticks(list(y), [_clip(_short(n), 48) for n, _, _ in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    more = f" ({len(shown)} of {len(rows)}; the table lists all)" if len(rows) > len(shown) else ""
    return figure(fig, f"{unit} {what}, before (grey) and after (blue){more}")


def _histograms(stages: Stages | None) -> str:
    title = "Weights at each step"
    if stages is None or not stages.weights:
        return section("weights", title, paragraph("no weights to show", "note"))
    names = stages.names
    fig = new_figure(2.3 * len(names) + 0.6, 1.55 * len(stages.weights) + 0.5)
    grid = fig.subplots(len(stages.weights), len(names), squeeze=False, sharey="row")
    for row, h in zip(grid, stages.weights):
        for col, (ax, stage) in enumerate(zip(row, h.stages)):
            _histogram(ax, h, stage)
            if col == 0:
                ax.set_ylabel(f"{_clip(h.name, 26)}\n{list(h.shape)}", fontsize=7)
            if h is stages.weights[0]:
                ax.set_title(stage.name, fontsize=9)
    caption = (
        f"The values of the {len(stages.weights)} largest weights after each step "
        f"({' -> '.join(names)}), in real values (int8 dequantized), on one set of bins per "
        "weight; counts on a log scale, so the bin of zeros (pruned weights) and the clusters "
        "stand out. Each panel says its share of zeros and its distinct stored values."
    )
    return section("weights", title, figure(fig, caption))


def _histogram(ax: Any, h: Any, stage: Any) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.tick_params(labelsize=6)
    if stage.counts is None:
        ax.text(
            0.5,
            0.5,
            "not stored densely",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=7,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.stairs(stage.counts + 0.0, h.edges, fill=True, color=AFTER, baseline=0.5)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_minor_formatter(NullFormatter())
    size = int(stage.counts.sum()) or 1
    zeros = f"zeros {100 * stage.zeros / size:.1f}%"
    ax.text(
        0.02,
        0.97,
        f"{zeros}\n{stage.distinct:,} distinct ({stage.dtype.lower()})",
        transform=ax.transAxes,
        va="top",
        fontsize=6,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
    )


def _layers(ops: Sequence[OpFigures], sqnr: Sqnr | None) -> str:
    shown = [o for o in ops if o.weight is not None or o.measured]
    title = "Per layer"
    if not shown:
        return section(
            "layers", title, paragraph("no layer with weights or a measured output", "note")
        )
    about = (
        f"SQNR against the input model's, on {sqnr.source}"
        if sqnr is not None and not sqnr.missing
        else f"SQNR ({sqnr.missing if sqnr else 'not measured'})"
    )
    rows = [
        (
            f"{o.index}" if o.subgraph == 0 else f"{o.subgraph}:{o.index}",
            o.type,
            _short(o.output or ""),
            _short(o.weight or ""),
            "" if o.bytes_before is None else f"{o.bytes_before:,}",
            f"{o.bytes:,}",
            "" if o.sparsity is None else f"{o.sparsity:.3f}",
            _distinct(o),
            _db(o.sqnr_db) if o.measured else "",
        )
        for o in shown
    ]
    header = (
        "op",
        "type",
        "output",
        "weight",
        "bytes before",
        "bytes after",
        "sparsity",
        "distinct (per channel)",
        "SQNR dB",
    )
    return section(
        "layers",
        title,
        paragraph(
            f"Each op that reads a weight or whose output was measured: its constants' bytes, "
            f"its weight's share of zeros and distinct stored values, and its output's {about}. "
            "Ops are numbered as in the output model (Model Explorer's node ids)."
        ),
        _layer_chart(shown),
        table(header, rows, numeric={0, 4, 5, 6, 7, 8}),
    )


def _distinct(o: OpFigures) -> str:
    if o.distinct is None:
        return ""
    per = "" if o.channel_distinct is None else f" ({o.channel_distinct:,})"
    return f"{o.distinct:,}{per}"


def _layer_chart(shown: list[OpFigures]) -> str:
    rows = shown[:MOST_LAYERS]
    fig = new_figure(10, 1.0 + 0.26 * len(rows))
    axes = fig.subplots(1, 3, sharey=True)
    y = list(range(len(rows)))
    labels = [_clip(f"{o.index} {o.type.lower()}", 30) for o in rows]
    finite = [
        o.sqnr_db for o in rows if o.measured and o.sqnr_db is not None and math.isfinite(o.sqnr_db)
    ]
    cap = max(finite, default=60.0) + 10
    axes[0].barh(y, [_capped(o, cap) for o in rows], color=AFTER)
    axes[0].set_xlabel("output SQNR dB (identical: at the edge)")
    axes[1].barh(y, [o.sparsity or 0.0 for o in rows], color=AFTER)
    axes[1].set_xlim(0, 1)
    axes[1].set_xlabel("weight sparsity")
    axes[2].barh(
        [i - 0.2 for i in y],
        [o.bytes_before or 0 for o in rows],
        height=0.4,
        color=BEFORE,
        label="before",
    )
    axes[2].barh(
        [i + 0.2 for i in y], [o.bytes for o in rows], height=0.4, color=AFTER, label="after"
    )
    axes[2].set_xlabel("constant bytes")
    axes[2].legend(fontsize=7, loc="lower right")
    axes[0].set_yticks(y, labels, fontsize=7)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    more = f" (the first {len(rows)} of {len(shown)})" if len(shown) > len(rows) else ""
    return figure(fig, f"per layer, in op order{more}")


def _capped(o: OpFigures, cap: float) -> float:
    if not o.measured or o.sqnr_db is None:
        return 0.0
    return cap if math.isinf(o.sqnr_db) else o.sqnr_db


def _steps(report: dict) -> str:
    parts = []
    for step in report["passes"]:
        done = [t for t in step["tensors"] if "before" in t and "after" in t]
        left = [t for t in step["tensors"] if t.get("action") == "skipped"]
        parts.append(
            f"<h3>{_esc(step['pass'])}: {len(done)} tensor(s) changed, {len(left)} left alone</h3>"
        )
        if done:
            parts.append(
                table(
                    (
                        "tensor",
                        "action",
                        "sparsity",
                        "after",
                        "per-channel distinct",
                        "after",
                        "weight MSE",
                    ),
                    [_step_row(t) for t in done],
                    numeric={2, 3, 4, 5, 6},
                )
            )
        if left:
            parts.append(
                "<details><summary>left alone</summary>"
                + table(("tensor", "why"), [(t["tensor"], t.get("reason", "")) for t in left])
                + "</details>"
            )
    if not parts:
        parts.append(paragraph("nothing was asked of it: the model was copied", "note"))
    return section("steps", "What each step did", *parts)


def _step_row(t: dict) -> tuple:
    b, a = t["before"], t["after"]
    return (
        t["tensor"],
        t.get("action", ""),
        f"{b['sparsity']:.3f}",
        f"{a['sparsity']:.3f}",
        "" if b.get("channel_unique") is None else f"{b['channel_unique']:,}",
        "" if a.get("channel_unique") is None else f"{a['channel_unique']:,}",
        f"{t['mse']:.3g}" if "mse" in t else "",
    )


def _db(value: float | None) -> str:
    return "identical" if value is None or math.isinf(value) else f"{value:.2f}"


def _short(name: str) -> str:
    """A tensor name for a table cell: the first of the names a converter fused with `;`."""
    first = name.split(";")[0]
    return _clip(first if first == name else first + ";...", 64)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def _esc(text: str) -> str:
    return html.escape(text, quote=True)
