"""The HTML report (--html): every section of a prune, cluster and int8-weights rewrite of the
example model, the weights' histograms at each step from pipeline.apply's on_step, a page
that loads nothing from the network, and one that renders in headless Chromium without an
error (Debian's chromium package; tools/headless.py drives it)."""

from __future__ import annotations

import os
import re
import shutil
import sys

import numpy as np
import pytest

from tflrewrite import pipeline, reader, recipes
from tflrewrite.cli import main
from tflrewrite.reports import html
from tflrewrite.reports.stages import Stages

pytest.importorskip("matplotlib", reason="the html extra (pip install 'tflrewrite[html]')")

import headless  # noqa: E402  (tools/, on the path from conftest.py)

FLAGS = ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights"]
SECTIONS = ["summary", "sizes", "weights", "layers", "steps"]


@pytest.fixture(scope="module")
def report(tmp_path_factory, example_model):
    """The example rewritten with FLAGS, its calibration samples held out for the figures."""
    folder = tmp_path_factory.mktemp("html")
    page = folder / "report.html"
    out = folder / "out.tflite"
    samples = example_model.parent / "digits_samples.npz"
    argv = [str(example_model), "-o", str(out), *FLAGS, "--html", str(page)]
    assert main([*argv, "--calibration", str(samples), "--method", "magnitude"]) == 0
    return page


def test_every_section_is_there(report):
    text = report.read_text()
    ids = re.findall(r'<section id="([^"]+)">', text)
    assert ids == SECTIONS
    assert text.count("<svg") == 4  # sizes by op type and by tensor, histograms, per layer
    assert "FULLY_CONNECTED" in text and "sequential_1/fc_1/MatMul" in text


def test_per_layer_rows_carry_sparsity_distinct_values_and_sqnr(report):
    layers = report.read_text().split('<section id="layers">')[1].split("</section>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", layers)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows[1:]]
    fc = [c for c in cells if c[1] == "FULLY_CONNECTED"]
    assert len(fc) == 2
    for c in fc:
        assert c[6] == "0.500"  # pruned to half
        assert int(c[7].split()[0]) <= 16  # clustered to 16 values, zero among them
        assert float(c[8]) > 0  # measured on the held-out samples
    assert "samples of digits_samples.npz" in layers


def test_the_page_is_self_contained(report):
    text = report.read_text()
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert not re.search(r'(src|href)="(?!#)', text)  # only links within the page
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))  # charts never share an element id


def test_on_step_sees_each_step_and_the_histograms_count_zeros(example_model):
    model = reader.read(example_model)
    recipe = recipes.load("identity").with_options(
        {
            "prune": {"sparsity": 0.5},
            "quantize": {"mode": "int8-weights"},
            "cluster": {"clusters": 16},
        }
    )
    stages = Stages(model)
    seen = []

    def on_step(name, stepped):
        seen.append(name)
        stages.add(name, stepped)

    result = pipeline.apply(model, recipe, on_step=on_step)
    assert seen == [r["pass"] for r in result.records] == ["prune", "quantize", "cluster"]
    assert stages.names == ["original", *seen]
    largest = stages.weights[0]
    assert largest.name == "sequential_1/fc_1/MatMul"
    original, pruned, quantized, clustered = largest.stages
    total = int(np.prod(largest.shape))
    assert all(int(s.counts.sum()) == total for s in largest.stages)
    assert original.zeros == 0 and abs(pruned.zeros / total - 0.5) < 0.01
    assert quantized.dtype == "INT8" and clustered.distinct <= 16
    zero_bin = np.searchsorted(largest.edges, 0.0) - 1
    assert pruned.counts[zero_bin] >= pruned.zeros  # the zeros are counted, in their bin


def test_the_page_is_the_same_from_run_to_run(example_model):
    model = reader.read(example_model)
    stages = Stages(model, count=2)
    doc = {"input": "a.tflite", "output": "b.tflite", "recipe": "identity", "passes": []}
    doc.update(input_bytes=1, output_bytes=1)
    pages = [
        html.rewrite_report(doc, original=model, rewritten=model, stages=stages) for _ in range(2)
    ]
    assert pages[0] == pages[1]


def test_without_matplotlib_it_says_which_extra_before_any_work(
    example_model, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    out, page = tmp_path / "out.tflite", tmp_path / "r.html"
    assert main([str(example_model), "-o", str(out), *FLAGS, "--html", str(page)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tflrewrite[html]" in err[0]
    assert not out.exists() and not page.exists()


@pytest.mark.skipif(headless.browser() is None, reason="no chromium (apt-get install chromium)")
def test_it_renders_in_headless_chromium_without_errors(report, tmp_path):
    shot = tmp_path / "report.png"
    rendered = headless.render(report, screenshot=shot)
    assert rendered.problems == []
    assert rendered.sections == SECTIONS
    assert len(rendered.charts) == 4
    assert all(c["width"] > 400 and c["height"] > 150 for c in rendered.charts)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("TFLREWRITE_SCREENSHOTS")  # a folder to keep the screenshot in
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "rewrite_report.png"))
    print(f"screenshot: {shot}")


def test_an_existing_page_is_kept_without_force(example_model, tmp_path, capsys):
    page = tmp_path / "r.html"
    page.write_text("keep me")
    out = tmp_path / "out.tflite"
    assert main([str(example_model), "-o", str(out), "--html", str(page)]) == 2
    assert "--force" in capsys.readouterr().err
    assert page.read_text() == "keep me" and not out.exists()


def test_pareto_chart_points_say_their_settings_and_command_on_hover():
    points = [
        html.ParetoPoint(size=30_000, fidelity=25.0, label="prune 0.5", command="tflrewrite a"),
        html.ParetoPoint(
            size=50_000, fidelity=40.0, label="int8", command="tflrewrite b", front=True
        ),
        html.ParetoPoint(size=20_000, fidelity=12.0, label="cluster 8 & <x>", front=True),
    ]
    chart = html.pareto_chart(points, size_label="zipped bytes", fidelity_label="SQNR dB")
    titles = re.findall(r"<title>(.*?)</title>", chart, flags=re.S)
    assert titles == ["prune 0.5\ntflrewrite a", "int8\ntflrewrite b", "cluster 8 &amp; &lt;x&gt;"]
    doc = html.page("explore", [html.section("pareto", "Pareto front", chart)])
    assert doc.count("<svg") == 1 and 'href="#pareto"' in doc
