"""`tflrewrite explore` on the example model with a small candidate set: explore.json against
its schema, a Pareto front that is one, every model written and loadable, commands that make
the same bytes, accuracy on labels that are never fed to the model, failures and crashes as
rows, the same results from two workers as from one, and the HTML page in headless
Chromium. Also the fleets: several models or a folder for explore, rewrite and audit."""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from tflrewrite import calibrate, fanout, recipes, runtime, tree
from tflrewrite.cli import main
from tflrewrite.errors import UsageError
from tflrewrite.reports.audit import zip_size

ROOT = Path(__file__).resolve().parent.parent
# Data-free candidates: quick, and enough to make a front of several points.
ONLY = "int8-weights,float16,prune0.5,prune0.5-int8-weights,cluster16-int8-weights"
NAMES = ONLY.split(",")


def _eval_npz(folder: Path) -> Path:
    """The example's samples under keys that are not the model's input name: `x` for the
    images and `y` for the labels, so that `y` must be told apart from an input."""
    with np.load(ROOT / "examples" / "digits_samples.npz") as npz:
        images, labels = npz["serving_default_image:0"], npz["y"]
    path = folder / "eval.npz"
    np.savez(path, x=images[:120], y=labels[:120])
    return path


def _explore(folder: Path, model: Path, *extra: str) -> tuple[int, dict]:
    out = folder / "explored"
    code = main(["explore", str(model), "--only", ONLY, "-o", str(out), *extra])
    doc = json.loads((out / "explore.json").read_text()) if (out / "explore.json").exists() else {}
    return code, doc


@pytest.fixture(scope="module")
def explored(tmp_path_factory, example_model):
    folder = tmp_path_factory.mktemp("explore")
    page = folder / "explore.html"
    inputs = _eval_npz(folder)
    code, doc = _explore(folder, example_model, "--inputs", str(inputs), "--html", str(page))
    assert code == 0
    return folder / "explored", doc, page, inputs


def _rows(doc: dict) -> list[dict]:
    return doc["models"][0]["candidates"]


def test_explore_json_holds_every_candidate_and_is_valid(explored):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test extra")
    _, doc, _, _ = explored
    schema = json.loads((ROOT / "schemas" / "explore.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert [r["name"] for r in _rows(doc)] == NAMES
    assert all(r["status"] == "ok" for r in _rows(doc))
    model = doc["models"][0]
    assert model["evaluation"] == {"source": "eval.npz", "samples": 120, "labels": "classes"}
    assert model["fidelity_measure"] == "accuracy" and model["size_measure"] == "zip_bytes"


def test_the_front_is_the_pareto_front(explored):
    _, doc, _, _ = explored
    rows = _rows(doc)
    front = [r for r in rows if r["front"] is not None]
    assert (
        front
        and [r["name"] for r in sorted(front, key=lambda r: r["front"])]
        == doc["models"][0]["front"]
    )

    def point(r):
        return r["measures"]["zip_bytes"], r["measures"]["accuracy"]

    def beats(a, b):  # a dominates b
        return a[0] <= b[0] and a[1] >= b[1] and a != b

    for r in front:  # nothing beats a point of the front
        assert not any(beats(point(o), point(r)) for o in rows), r["name"]
    for r in rows:  # and every other point is beaten by, or equal to, one of the front
        if r["front"] is None:
            assert any(beats(point(f), point(r)) or point(f) == point(r) for f in front)
    sizes = [point(r)[0] for r in sorted(front, key=lambda r: r["front"])]
    assert sizes == sorted(sizes)  # front-01 is the smallest


def test_every_model_is_written_and_the_front_named_to_be_found(explored):
    out, doc, _, _ = explored
    for r in _rows(doc):
        path = out / r["file"]
        content = path.read_bytes()
        if r["front"] is not None:
            assert path.name == f"front-{r['front']:02d}-{r['name']}.tflite"
        else:
            assert path.name == f"{r['name']}.tflite"
        assert len(content) == r["measures"]["bytes"]
        assert zip_size(content, f"{r['name']}.tflite") == r["measures"]["zip_bytes"]
        runtime.load(str(path))  # loads in LiteRT


def test_accuracy_is_on_the_labels_and_y_is_never_an_input(explored, example_model):
    out, doc, _, inputs = explored
    runner = runtime.load(str(example_model))
    samples = runtime.npz_inputs(inputs, runner, None)  # `x` alone: `y` is left out
    assert len(samples) == 120
    with np.load(inputs) as npz:
        labels = npz["y"]
    for name, measures in [("input", doc["models"][0]["reference"]["measures"])] + [
        (r["file"], r["measures"]) for r in _rows(doc)[:2]
    ]:
        model = example_model if name == "input" else out / name
        r = runtime.load(str(model))
        hits = [int(r.run(s)[0].argmax() == y) for s, y in zip(samples, labels)]
        assert measures["accuracy"] == pytest.approx(np.mean(hits))
    assert doc["models"][0]["reference"]["measures"]["accuracy"] > 0.9


def test_each_command_line_makes_the_same_model(explored, tmp_path):
    out, doc, _, _ = explored
    for r in _rows(doc):
        if r["name"] not in ("prune0.5", "cluster16-int8-weights"):
            continue
        argv = shlex.split(r["command"])[1:]
        argv[argv.index("-o") + 1] = str(tmp_path / "again.tflite")
        assert main([*argv, "--no-verify", "--force"]) == 0
        assert (tmp_path / "again.tflite").read_bytes() == (out / r["file"]).read_bytes()


def _untimed(doc: dict, folder: Path) -> list:
    """Each model's candidates less their timings, with command lines relative to `folder`
    (where the models were written), and its front."""
    found = []
    for m in doc["models"]:
        rows = [
            {k: v for k, v in r.items() if k != "seconds"}
            | {"command": r["command"].replace(str(folder), "DIR")}
            for r in m["candidates"]
        ]
        found.append(({k: v for k, v in m.items() if k != "candidates"}, rows))
    return found


def test_the_api_gives_the_command_s_models_record_and_front(explored, example_model, tmp_path):
    import tflrewrite

    out, doc, _, inputs = explored
    seen = []
    result = tflrewrite.explore(
        str(example_model),
        output=tmp_path / "api",
        inputs=str(inputs),
        only=NAMES,
        progress=lambda model, row, done, total: seen.append((row["name"], done, total)),
    )
    assert _untimed(result.record, tmp_path / "api") == _untimed(doc, out)
    assert json.loads((tmp_path / "api" / "explore.json").read_text()) == result.record
    assert [r["name"] for r in result.candidates] == NAMES
    assert [r["name"] for r in result.front] == doc["models"][0]["front"]
    assert [(done, total) for _, done, total in seen] == [(k, 5) for k in range(1, 6)]
    assert sorted(name for name, _, _ in seen) == sorted(NAMES)
    assert sorted(result.files) == sorted(
        [str(tmp_path / "api" / r["file"]) for r in _rows(doc)]
        + [str(tmp_path / "api" / "explore.json")]
    )
    for r in _rows(doc):
        assert (tmp_path / "api" / r["file"]).read_bytes() == (out / r["file"]).read_bytes()


def test_the_api_takes_bytes_and_arrays(example_model, tmp_path):
    import tflrewrite

    with np.load(ROOT / "examples" / "digits_samples.npz") as npz:
        arrays = {k: npz[k][:60] for k in npz.files}  # 40 calibrate, 20 held out, labelled
    result = tflrewrite.explore(
        example_model.read_bytes(),
        output=tmp_path / "out",
        calibration=arrays,
        calibration_samples=40,
        only="int8",
    )
    (row,) = result.candidates
    assert row["status"] == "ok" and row["measures"]["accuracy"] > 0.8
    assert row["command"].startswith("tflrewrite '<bytes>' -o ")
    assert "--calibration '<arrays>' --calibration-samples 40" in row["command"]
    (model,) = result.record["models"]
    assert model["evaluation"]["samples"] == 20 and model["evaluation"]["labels"] == "classes"
    with pytest.raises(UsageError, match="one size budget"):
        tflrewrite.explore(
            example_model.read_bytes(), output=tmp_path / "no", max_bytes=1, max_zip_bytes=1
        )
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("target", ["generic", "tflm", "ethos-u"])
def test_each_candidate_s_recipe_is_the_rewrite_command_s(target, tmp_path):
    """The tree makes each candidate's recipe and budget from its flags as the rewrite
    command's parser does."""
    from tflrewrite.cli import rewrite

    budgets = [("zip", 40_000), ("bytes", 50_000), ("vela", 30_000)]
    for calibrated in (False, True):
        for c in tree.tree(target=target, calibrated=calibrated, budgets=budgets):
            flags = rewrite.parser().parse_args(["m.tflite", *c.flags])
            expected = (rewrite.recipe_from_args(flags), rewrite.budget_from_args(flags))
            assert tree.settings(c.flags) == expected, c.name


def test_a_failing_candidate_is_a_row_with_its_reason(example_model):
    """Full int8 needs calibration data: given none, that candidate fails in its worker and
    the other still runs."""
    content = example_model.read_bytes()
    samples = runtime.random_inputs([runtime.load(content)], 4, 0)
    subject = tree.Subject(
        path=str(example_model),
        model=content,
        target="generic",
        calibration=None,
        evaluation=calibrate.Samples(samples, "random"),
    )
    base = recipes.load("identity")
    plans = [
        tree.Plan(
            tree.Candidate("int8", ("--quantize", "int8")),
            "tflrewrite m --quantize int8",
            base.with_options({"quantize": {"mode": "int8"}}),
        ),
        tree.Plan(
            tree.Candidate("float16", ("--quantize", "float16")),
            "tflrewrite m --quantize float16",
            base.with_options({"quantize": {"mode": "float16"}}),
        ),
        tree.Plan(tree.Candidate("refused", ()), "tflrewrite m", refused="not today"),
    ]
    (e,) = tree.run([(subject, plans)])
    failed, ran, refused = e.rows
    assert failed["status"] == "failed" and "calibration" in failed["reason"]
    assert ran["status"] == "ok" and ran["measures"]["sqnr_db"] > 40
    assert refused["status"] == "refused" and refused["reason"] == "not today"
    assert e.models[0] is None and e.models[1] and e.front == [1]


def _abort_on(value: int) -> int:
    if value == 2:
        os.abort()  # as a runtime's native code dies
    return value * 10


def test_a_crash_ends_only_its_own_job():
    done = []
    results = fanout.run(
        _abort_on, [(1,), (2,), (3,), (4,)], workers=2, on_done=lambda i, r: done.append(i)
    )
    assert results[0] == 10 and results[2:] == [30, 40]
    assert isinstance(results[1], fanout.Failed) and "SIGABRT" in results[1].reason
    assert sorted(done) == [0, 1, 2, 3]


@pytest.mark.slow
def test_two_workers_give_the_same_results_as_one(explored, tmp_path, example_model):
    out, doc, _, inputs = explored
    code, again = _explore(tmp_path, example_model, "--inputs", str(inputs), "--jobs", "2")
    assert code == 0

    def without_times(d):  # nor the output folder in the command lines
        rows = [{k: v for k, v in r.items() if k not in ("seconds", "command")} for r in _rows(d)]
        return rows, d["models"][0]["front"]

    assert without_times(again) == without_times(doc)
    for r in _rows(doc):
        assert (tmp_path / "explored" / r["file"]).read_bytes() == (out / r["file"]).read_bytes()


def test_the_html_page_renders_in_headless_chromium(explored, tmp_path):
    pytest.importorskip("matplotlib", reason="the html extra (pip install 'tflrewrite[html]')")
    import headless  # tools/, on the path from conftest.py

    _, doc, page, _ = explored
    text = page.read_text()
    assert text.count("<svg") == 1 and "<script" not in text
    for r in _rows(doc):  # each point's hover text: its settings and its command
        assert r["command"].replace("'", "&#x27;") in text
    if headless.browser() is None:
        pytest.skip("no chromium (apt-get install chromium)")
    shot = tmp_path / "explore.png"
    rendered = headless.render(page, screenshot=shot)
    assert rendered.problems == []
    assert rendered.sections == ["model-1"]
    assert len(rendered.charts) == 1 and rendered.charts[0]["width"] > 400
    keep = os.environ.get("TFLREWRITE_SCREENSHOTS")  # a folder to keep the screenshot in
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "explore_report.png"))


# ------------------------------------------------------------------ refusals


def test_refusals_are_one_line_and_write_nothing(example_model, tmp_path, capsys):
    model = str(example_model)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    inside = tmp_path / "inside"
    inside.mkdir()
    shutil.copy(example_model, inside / "m.tflite")
    cases = [
        ["explore", model, "-o", str(taken)],
        ["explore", model, "-o", str(tmp_path / "new"), "--only", "nothing*"],
        ["explore", model, "-o", str(tmp_path / "new"), "--target", "ethos-u"],
        ["explore", str(inside / "m.tflite"), "-o", str(inside), "--force"],
        ["explore", model, "-o", str(tmp_path / "new"), "--inputs", str(tmp_path / "no.npz")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tflrewrite: "), (argv, err)
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(taken)) == ["keep.txt"]


def test_labels_score_classes_by_accuracy_and_values_by_mse():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert tree.label_score(scores, np.array([1, 0, 0])) == {"accuracy": 2 / 3}
    values = np.array([[1.0], [2.0], [4.0]])
    assert tree.label_score(values, np.array([1.0, 2.0, 3.0])) == {"mse": 1 / 3}


def test_pareto_keeps_what_nothing_beats():
    points = [(10, 0.5), (20, 0.9), (15, 0.4), (20, 0.9), (30, 0.8), (5, 0.1)]
    assert tree.pareto(points) == [5, 0, 1]


# ------------------------------------------------------------------ fleets


@pytest.fixture
def fleet(tmp_path, example_model):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("a", "b"):
        shutil.copy(example_model, folder / f"{name}.tflite")
    return folder


@pytest.mark.slow
def test_explore_takes_a_folder_of_models(fleet, tmp_path):
    out = tmp_path / "explored"
    argv = ["explore", str(fleet), "--only", "int8-weights,float16", "-o", str(out)]
    assert main([*argv, "--jobs", "2"]) == 0
    doc = json.loads((out / "explore.json").read_text())
    assert [m["input"] for m in doc["models"]] == [str(fleet / "a.tflite"), str(fleet / "b.tflite")]
    for m, name in zip(doc["models"], "ab"):
        for r in m["candidates"]:
            assert r["file"].startswith(f"{name}/") and (out / r["file"]).is_file()
    a, b = ([(r["name"], r["measures"]) for r in m["candidates"]] for m in doc["models"])
    assert a == b  # the same model twice


def test_rewrite_takes_several_models_into_a_folder(fleet, tmp_path, capsys):
    out = tmp_path / "out"
    flags = ["--quantize", "int8-weights", "--no-verify"]
    assert main([str(fleet), *flags, "-o", str(out), "--jobs", "2", "--json", "-"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["output"] for r in reports] == [str(out / "a.tflite"), str(out / "b.tflite")]
    one = tmp_path / "one.tflite"
    assert main([str(fleet / "a.tflite"), *flags, "-o", str(one)]) == 0
    assert (out / "a.tflite").read_bytes() == one.read_bytes() == (out / "b.tflite").read_bytes()
    capsys.readouterr()
    for argv in (
        [str(fleet), *flags],  # where to?
        [str(fleet), *flags, "-o", str(one)],  # a file, for several
        [str(fleet), *flags, "-o", str(tmp_path / "o2"), "--html", str(tmp_path / "r.html")],
        [str(fleet / "a.tflite"), str(fleet / "a.tflite"), *flags, "-o", str(tmp_path / "o3")],
        [str(fleet), *flags, "-o", str(out)],  # the outputs exist: --force
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tflrewrite: "), (argv, err)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_audit_takes_a_folder_and_jobs(fleet, capsys):
    assert main(["audit", str(fleet), "--json", "-"]) == 0
    one_by_one = json.loads(capsys.readouterr().out)
    assert main(["audit", str(fleet), "--json", "-", "--jobs", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == one_by_one
    assert [d["file"] for d in one_by_one] == [str(fleet / "a.tflite"), str(fleet / "b.tflite")]
    (fleet / "c.tflite").write_bytes(b"not a model")
    assert main(["audit", str(fleet), "--jobs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c.tflite" in err[0]


def test_progress_is_a_line_per_finished_candidate_on_a_terminal_only():
    from tflrewrite.progress import Lines

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown, piped = Terminal(), io.StringIO()
    for stream in (shown, piped):
        lines = Lines("explore:", 2, stream)
        lines("int8: 1 zipped byte")
        lines("float16: failed")
    assert shown.getvalue().splitlines() == [
        "explore: [1/2] int8: 1 zipped byte",
        "explore: [2/2] float16: failed",
    ]
    assert piped.getvalue() == ""
