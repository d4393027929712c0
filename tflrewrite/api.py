"""The Python API: rewrite, audit, verify and explore models as the commands do, without
printing.

Each command is a thin layer over a function here (tflrewrite/cli/ parses and prints), and
each function takes the command's flags as keyword arguments of the same names:

    import tflrewrite

    result = tflrewrite.rewrite("model.tflite", quantize="int8", calibration="samples.npz")
    result.report["verdict"]["line"], result.data   # the report (as --json), the bytes
    result.save("model.int8.tflite")                # atomic

A model is a path, the bytes of a file, or a tflrewrite.model.Model; data (calibration,
verify's inputs) is an .npz path, "random", a folder of images, or arrays keyed as an
.npz's (with `y`, labels or regression targets, where there are some).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.model import Model

if TYPE_CHECKING:
    from tflrewrite.recipes import Recipe
    from tflrewrite.reports.audit import Audit
    from tflrewrite.reports.verify import VerifyReport

ModelLike = str | os.PathLike | bytes | bytearray | memoryview | Model
DataLike = str | os.PathLike | Mapping[str, np.ndarray]

# What a report calls a model that came as bytes, as a Model, or that stays in memory.
BYTES_NAME, MODEL_NAME, IN_MEMORY = "<bytes>", "<model>", "(in memory)"

# What the tree's default path does not show; said beside the default it chose.
EXPLORE = (
    "`tflrewrite explore MODEL` would try the tree's other paths (pruning, clustering and "
    "both, with and without full int8) and show the smallest models for each fidelity"
)


@dataclass
class Result:
    """A rewritten model: `model` (the IR), `data` (the file's bytes), `report` (the
    rewrite report as `--json` writes it; its "verdict" says how faithful the model is),
    and `output`, the file it was written to, if any."""

    model: Model
    report: dict
    output: str | None = None
    overlays: dict[str, str] = field(default_factory=dict)  # measure -> file (overlay=)
    _image: Any = field(default=None, repr=False)  # writer.FileImage
    _data: bytes | None = field(default=None, repr=False)
    _input: str | None = field(default=None, repr=False)  # the input's path, never replaced

    @property
    def data(self) -> bytes:
        """The rewritten model's file, in bytes."""
        if self._data is None:
            self._data = self._image.to_bytes()
        return self._data

    @property
    def verdict(self) -> str:
        """The report's one-line verdict on fidelity."""
        return self.report["verdict"]["line"]

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> None:
        """Write the model to `path` atomically (whole or not at all); never over the input
        file, nor over another existing file unless `overwrite`."""
        from tflrewrite.fileio import atomic_write, check_output_path

        check_output_path(path, [self._input] if self._input else [], overwrite)
        if self._data is not None:
            atomic_write(path, lambda f: f.write(self._data))
        else:
            atomic_write(path, self._image.write_to)

    def text(self, *, verbose: bool = False) -> str:
        """The report as the command prints it."""
        import io

        from tflrewrite.reports import summary

        out = io.StringIO()
        summary.print_report(self.report, out, verbose=verbose)
        return out.getvalue()


def rewrite(
    model: ModelLike,
    *,
    recipe: str | os.PathLike | Recipe | None = None,
    prune: float | None = None,
    prune_pattern: str | None = None,
    prune_scope: str | None = None,
    cluster: int | None = None,
    granularity: str | None = None,
    cluster_init: str | None = None,
    quantize: str | None = None,
    calibration_method: str | None = None,
    io: str | None = None,
    rounding: str | None = None,
    equalize: bool = False,
    calibration: DataLike | None = None,
    calibration_samples: int = 100,
    method: str | None = None,
    max_zip_bytes: int | None = None,
    max_bytes: int | None = None,
    max_vela_bytes: int | None = None,
    accelerator: str | None = None,
    min_sqnr: float | None = None,
    skip: str | None = None,
    min_size: int | None = None,
    target: str = "generic",
    verify: bool = True,
    samples: int = 8,
    large: bool | None = None,
    output: str | os.PathLike | None = None,
    force: bool = False,
    html: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Rewrite `model` as `tflrewrite MODEL` does, with its flags as keyword arguments
    (`verify=False` is --no-verify; `large` None, True, False are --large auto, yes, no;
    `html` and `overlay` the files of --html and --overlay; `min_sqnr` is --min-sqnr, which
    implies `quantize="int8"` where no quantize step is asked for).

    With no recipe, none of the flags that ask for a step, no size budget and the generic
    target, the deployment tree's default for the model is chosen (default_recipe), and
    the report's "default" says which and why. The model is written to `output`, where
    given, before it is verified (never over the input, nor over an existing file unless
    `force`); else it stays in memory (Result.data, Result.save). `progress` gets the
    name of each step as it starts. Raises TflRewriteError (UsageError for settings that
    do not go together) for anything the command refuses."""
    from tflrewrite.reports import summary

    src = _Input.of(model)
    # The input's zipped size for the report, measured in a thread beside the work.
    input_zip = summary.zip_size_soon(src.path) if src.path else None
    from tflrewrite import recipes
    from tflrewrite.fileio import check_output_path

    output = None if output is None else os.fspath(output)
    if min_sqnr is not None and quantize is None and not _quantizes(recipe):
        quantize = "int8"  # the floor chooses precision from full int8
    chosen = build_recipe(
        recipe,
        prune=prune,
        prune_pattern=prune_pattern,
        prune_scope=prune_scope,
        cluster=cluster,
        granularity=granularity,
        cluster_init=cluster_init,
        quantize=quantize,
        calibration_method=calibration_method,
        io=io,
        rounding=rounding,
        equalize=equalize,
        skip=skip,
        min_size=min_size,
    )
    extras = Extras.of(html=html, overlay=overlay)
    for path in ([] if output is None else [output]) + extras.files():
        check_output_path(path, [src.path] if src.path else [], force)
    budgets = (max_zip_bytes, max_bytes, max_vela_bytes)
    default = None
    if recipe is None and not chosen.steps and target == "generic" and budgets == (None,) * 3:
        chosen, default = default_recipe(
            src.model(), calibrated=calibration is not None, name=src.name
        )
        chosen = _for_tensors(chosen, skip=skip, min_size=min_size)
    if budgets != (None,) * 3 and min_sqnr is None:  # the planner chooses prune and cluster
        from tflrewrite.budget import with_planner_steps

        chosen = with_planner_steps(chosen)
    recipes.check(chosen, calibrated=calibration is not None, method=method, floor=min_sqnr)
    if min_sqnr is not None:
        _check_floor(calibration)
    # LiteRT runs in a child process for the report (a crash there ends only the child),
    # started now so that it loads while this one rewrites.
    child = summary.runner_soon() if verify else None
    try:
        return _rewrite(
            src,
            chosen,
            output=output,
            calibration=calibration,
            calibration_samples=calibration_samples,
            method=method,
            budgets=budgets,
            accelerator=accelerator,
            min_sqnr=min_sqnr,
            target=target,
            samples=samples if verify else 0,
            large=large,
            progress=progress,
            input_zip=input_zip,
            child=child,
            default=default,
            extras=extras,
        )
    finally:
        if child is not None:
            child.close()


def _rewrite(
    src: _Input,
    recipe: Recipe,
    *,
    output: str | None,
    calibration: DataLike | None,
    calibration_samples: int,
    method: str | None,
    budgets: tuple[int | None, int | None, int | None],
    accelerator: str | None,
    min_sqnr: float | None,
    target: str,
    samples: int,
    large: bool | None,
    progress: Callable[[str], None] | None,
    input_zip: Any,
    child: Any,
    default: dict | None,
    extras: Extras,
) -> Result:
    """The rewrite itself, its output and its report, once the settings are known to be
    good."""
    from tflrewrite import pipeline, writer
    from tflrewrite.fileio import atomic_write
    from tflrewrite.reports import summary

    data, held_out = _calibration(src, calibration, calibration_samples, samples)
    model = src.model()
    method = method or "data"
    budget = _budget(budgets, accelerator)
    stages = extras.stages(model)
    if min_sqnr is not None:
        from tflrewrite import floor

        result = floor.apply(
            model,
            recipe,
            floor.Floor(min_sqnr, budget),
            held_out=held_out,
            progress=progress,
            target=target,
            data=data,
            method=method,
            name=os.path.basename(output or default_output(src.path or "model.tflite")),
        )
    elif budget is None:
        result = pipeline.apply(
            model,
            recipe,
            progress=progress,
            target=target,
            data=data,
            method=method,
            on_step=None if stages is None else stages.add,
        )
    else:
        from tflrewrite import budget as planner

        result = planner.apply(
            model,
            recipe,
            budget=budget,
            progress=progress,
            target=target,
            data=data,
            method=method,
            accelerator=accelerator,
            name=os.path.basename(output or default_output(src.path or "model.tflite")),
        )
    image = writer.serialize(result.model, large=large)
    out_data = None
    if output is not None:
        atomic_write(output, image.write_to)
    else:
        out_data = image.to_bytes()
    real_data = calibration is not None and not _is_random(calibration)
    report = summary.build(
        input_path=src.name,
        output_path=output or IN_MEMORY,
        recipe=recipe,
        records=result.records,
        verify_samples=samples,
        data=held_out if samples else None,
        input_zip=input_zip,
        child=child,
        input_data=None if src.path else src.data(),
        output_data=out_data,
        default=default,
        hint=_HINT_MILDER if real_data else _HINT_DATA,
    )
    if output is None:
        report["output"] = None
    overlays = extras.write(
        report,
        original=model,
        rewritten=result.model,
        stages=stages,
        samples=held_out,
        count=max(samples, 1),
    )
    return Result(result.model, report, output, overlays, image, out_data, src.path)


@dataclass(frozen=True)
class Extras:
    """The files written beside the model: the HTML report (--html) and Model Explorer
    overlays (--overlay)."""

    html: str | None = None
    overlay: str | None = None

    @classmethod
    def of(cls, *, html: Any, overlay: Any) -> Extras:
        """Refuses, before any work, what cannot be made (matplotlib missing for HTML)."""
        if html is not None:
            from tflrewrite.reports import html as pages

            pages.check_available()
        return cls(
            None if html is None else os.fspath(html),
            None if overlay is None else os.fspath(overlay),
        )

    def files(self) -> list[str]:
        found = [] if self.html is None else [self.html]
        if self.overlay is not None:
            from tflrewrite.reports import overlay

            found += overlay.paths(self.overlay).values()
        return found

    def stages(self, model: Model) -> Any:
        """The weights' histograms after each step, for the HTML report, or None."""
        if self.html is None:
            return None
        from tflrewrite.reports.stages import Stages

        return Stages(model)

    def write(
        self,
        report: dict,
        *,
        original: Model,
        rewritten: Model,
        stages: Any,
        samples: Any,
        count: int,
    ) -> dict[str, str]:
        """Write them from the report and the models; the overlay files by measure."""
        if self.html is None and self.overlay is None:
            return {}
        from tflrewrite.reports import nodes

        sqnr = nodes.measure_sqnr(report, samples=samples, count=count)
        ops = nodes.per_op(original, rewritten, sqnr)
        files = {}
        if self.overlay is not None:
            from tflrewrite.reports import overlay

            files = overlay.write(self.overlay, model=rewritten, ops=ops)
        if self.html is not None:
            from tflrewrite.reports import html

            if stages is not None and len(stages.names) == 1:  # a budget's runs: the chosen one
                stages.add("output", rewritten)
            page = html.rewrite_report(
                report, original=original, rewritten=rewritten, stages=stages, ops=ops, sqnr=sqnr
            )
            html.write(self.html, page)
        return files


_HINT_DATA = "try --calibration DATA.npz, the data-aware path"
_HINT_MILDER = "try milder settings (less --prune, more --cluster) or `tflrewrite finetune`"


def default_output(model: str) -> str:
    """Where the command writes by default: MODEL with .tflrewrite before .tflite."""
    root, ext = os.path.splitext(model)
    return f"{root}.tflrewrite{ext or '.tflite'}"


def build_recipe(
    recipe: str | os.PathLike | Recipe | None = None,
    *,
    prune: float | None = None,
    prune_pattern: str | None = None,
    prune_scope: str | None = None,
    cluster: int | None = None,
    granularity: str | None = None,
    cluster_init: str | None = None,
    quantize: str | None = None,
    calibration_method: str | None = None,
    io: str | None = None,
    rounding: str | None = None,
    equalize: bool = False,
    skip: str | None = None,
    min_size: int | None = None,
) -> Recipe:
    """The recipe `recipe` (a built-in's name, a TOML file, a Recipe; identity where None)
    with the flags' options: each flag overrides its pass's option, adding the pass where
    the recipe lacks it; `skip` and `min_size` apply to every step."""
    from tflrewrite import recipes

    overrides = {
        "prune": _given(sparsity=prune, pattern=prune_pattern, scope=prune_scope),
        "quantize": _given(mode=quantize, method=calibration_method, io=io, rounding=rounding),
        "cluster": _given(clusters=cluster, granularity=granularity, init=cluster_init),
    }
    if isinstance(recipe, recipes.Recipe):
        base = recipe
    else:
        base = recipes.load("identity" if recipe is None else os.fspath(recipe))
    if equalize and all(s.name != "equalize" for s in base.steps):
        from tflrewrite.passes import equalize as equalization

        overrides["equalize"] = {"iterations": equalization.Options().iterations}
    return _for_tensors(base.with_options(overrides), skip=skip, min_size=min_size)


def _for_tensors(recipe: Recipe, *, skip: str | None, min_size: int | None) -> Recipe:
    common = _given(skip=skip, min_size=min_size)
    if common:
        recipe = recipe.with_options({s.name: common for s in recipe.steps})
    return recipe


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def model_kind(model: Model) -> str:
    """What the deployment tree starts from: "float" (float32 or float16 weights), "int8
    weights" (int8 weights behind DEQUANTIZE, float activations), "int8" (full integer,
    or int8 weights that float ops read themselves), or "no weights" (none the passes
    edit)."""
    from tflrewrite.weights import find_weights

    found, _ = find_weights(model)
    if not found:
        return "no weights"
    if any(w.tensor.dtype in ("FLOAT32", "FLOAT16") for w in found):
        return "float"
    if any(w.dequantize for w in found):
        return "int8 weights"
    return "int8"


def default_recipe(model: Model, *, calibrated: bool, name: str) -> tuple[Recipe, dict]:
    """The deployment tree's default path for `model` and why: a float model gets int8
    weights per channel, which is what the TF converter's default optimization does to a
    float model, needs no data, and keeps about 40 dB; with calibration data, a float model
    or one with int8 weights becomes full int8, fitted to the data, as NPUs and
    microcontrollers need. Other models have no default: refused (UsageError) with what to
    try, since a copy would not be what anybody running the command wants, and a script
    that then uses the output must stop here, where the reason is known. `name` names the
    model in the refusal."""
    from tflrewrite import recipes

    kind = model_kind(model)
    if calibrated and kind in ("float", "int8 weights"):
        chosen = recipes.BUILTIN["full-int8"]
        why = (
            f"for a model with {'float' if kind == 'float' else 'int8'} weights and "
            "--calibration data: full int8, weights and activations, fitted to the samples"
        )
    elif kind == "float":
        chosen = recipes.BUILTIN["int8-weights"]
        why = (
            "for a float model: int8 weights per channel, read through DEQUANTIZE (the TF "
            "converter's default optimization); with --calibration DATA.npz it is full int8"
        )
    else:
        raise UsageError(f"{name}: {_NO_DEFAULT[kind]}")
    note = f"no recipe or flags given, so the default {why}. {EXPLORE}"
    return chosen, {"model": kind, "recipe": chosen.name, "note": note}


_NO_DEFAULT = {
    "int8": "already full-integer int8, so there is no default rewrite and nothing was "
    "written: ask for one, e.g. --prune 0.5 --cluster 16 (with --calibration "
    "DATA.npz to fit them to data), or a --recipe (`tflrewrite recipes`); "
    "--recipe identity copies it",
    "int8 weights": "its weights are already int8, so without data there is no default "
    "rewrite and nothing was written: --calibration DATA.npz makes it full int8; "
    "or ask for --prune, --cluster or a --recipe (`tflrewrite recipes`)",
    "no weights": "no weights that tflrewrite compresses, so there is no "
    "default rewrite and nothing was written (--recipe identity copies it)",
}


def _calibration(src: _Input, spec: DataLike | None, count: int, samples: int) -> tuple[Any, Any]:
    """(calibration samples, samples to verify on) from `spec`, or (None, None)."""
    from tflrewrite import calibrate

    if spec is None:
        return None, None
    data, held_out = calibrate.for_model(src.source(), spec, count)
    if _is_random(spec):
        return data, None
    if held_out is None:
        source = f"{data.source}, the calibration samples themselves (none held out)"
        held_out = data.head(max(samples, 32), source)
    return data, held_out


def _quantizes(recipe: str | os.PathLike | Recipe | None) -> bool:
    """Whether `recipe` (as rewrite takes it) has a quantize step."""
    from tflrewrite import recipes

    if recipe is None:
        return False
    chosen = recipe if isinstance(recipe, recipes.Recipe) else recipes.load(os.fspath(recipe))
    return any(s.name == "quantize" for s in chosen.steps)


def _check_floor(calibration: DataLike | None) -> None:
    """What --min-sqnr needs beyond the recipe: real samples to measure on."""
    if calibration is not None and _is_random(calibration):
        raise UsageError(
            "--min-sqnr measures SQNR on held-out calibration samples: give real ones "
            "(--calibration DATA.npz or a folder of images), not random inputs"
        )


def _is_random(spec: DataLike) -> bool:
    from tflrewrite import calibrate

    return isinstance(spec, str) and spec == calibrate.RANDOM


def _budget(budgets: tuple[int | None, int | None, int | None], accelerator: str | None) -> Any:
    given = [(m, v) for m, v in zip(("zip", "bytes", "vela"), budgets) if v is not None]
    if len(given) > 1:
        raise UsageError("give one size budget at a time (max_zip_bytes, max_bytes or vela)")
    if given:
        from tflrewrite.budget import Budget  # only a budgeted run needs the planner

        return Budget(*given[0])
    if accelerator:
        raise UsageError("--accelerator is for --max-vela-bytes")
    return None


def audit(model: ModelLike, *, vela: bool = False, accelerator: str | None = None) -> Audit:
    """The size audit of `model` as `tflrewrite audit` makes it: bytes, sparsity and
    distinct values of every tensor, totals, file and zipped size. With `vela` (or an
    `accelerator`), Arm's Vela compiles it too and `.vela` holds its figures."""
    from tflrewrite.reports import audit as audits

    if vela or accelerator:
        from tflrewrite.reports import vela as velas

        accelerator = accelerator or velas.DEFAULT_ACCELERATOR
        velas.require(accelerator)
    src = _Input.of(model)
    loaded = src.model()
    result = audits.audit(loaded, src.name, src.file_bytes())
    if accelerator:
        result.vela = _vela(src, accelerator)
    return result


def _vela(src: _Input, accelerator: str) -> Any:
    from tflrewrite.reports import vela

    if src.path:
        return vela.compile_report(src.path, accelerator)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tflrewrite-audit-") as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(src.data())
        return vela.compile_report(path, accelerator)


def verify(
    reference: ModelLike,
    candidate: ModelLike,
    *,
    inputs: DataLike | None = None,
    samples: int | None = None,
    seed: int = 0,
    xnnpack: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Run both models on the same inputs, as `tflrewrite verify` does, and compare every
    output: SQNR, max error, top-1 agreement, and with labels (`y` in `inputs`) accuracy or
    MSE of both. `inputs`: an .npz or arrays keyed as one (the first `samples` of them),
    else `samples` (16) seeded random inputs. The models run in a child process: a runtime
    that crashes raises RuntimeCrashError. `.verdict` grades the fidelity."""
    from tflrewrite import runtime
    from tflrewrite.reports import verify as verifying

    sides = [_Input.of(reference), _Input.of(candidate)]
    models = [s.model() for s in sides]
    # LiteRT has no kernel for TFLite Micro's decode op: such models run in tflite-micro,
    # and the reference with them so that both sides use the same kernels.
    micro = any(oc.custom_code == "TFLM_DECODE" for m in models for oc in m.opcodes)
    if micro and xnnpack:
        raise TflRewriteError("verify: --xnnpack cannot run TFLite Micro models")
    if micro and not runtime.tflm_available():
        raise TflRewriteError(
            "verify: the models hold TFLM_DECODE ops, which only TFLite Micro runs: "
            "pip install 'tflrewrite[tflm]'"
        )
    # In a child process: a runtime that crashes ends it, and this raises RuntimeCrashError.
    return runtime.isolated(
        verifying.compare_files,
        sides[0].source(),
        sides[1].source(),
        npz=inputs,
        count=samples if inputs is not None else (samples or 16),
        seed=seed,
        micro=micro,
        xnnpack=xnnpack,
        names=(sides[0].name, sides[1].name),
        progress=progress,
    )


@dataclass
class Explored:
    """What explore found and wrote into the folder `output`. `record` is explore.json's
    document: for each model its candidates (settings, figures, the command line that makes
    the same bytes, the file, relative to `output`) and its front by name. `html`: the page
    written, if any."""

    record: dict
    output: str
    html: str | None = None

    @property
    def candidates(self) -> list[dict]:
        """Every candidate of every model, in order, as explore.json lists them."""
        return [row for m in self.record["models"] for row in m["candidates"]]

    @property
    def front(self) -> list[dict]:
        """The candidates on each model's Pareto front, smallest first."""
        rows = []
        for m in self.record["models"]:
            by_name = {r["name"]: r for r in m["candidates"]}
            rows += [by_name[name] for name in m["front"]]
        return rows

    @property
    def files(self) -> list[str]:
        """Every file written: the candidates' models, explore.json, the HTML page."""
        from tflrewrite.tree import RECORD

        found = [os.path.join(self.output, r["file"]) for r in self.candidates if r["file"]]
        found.append(os.path.join(self.output, RECORD))
        return found + ([self.html] if self.html else [])


def explore(
    model: ModelLike | list[ModelLike] | tuple[ModelLike, ...],
    *,
    output: str | os.PathLike,
    calibration: DataLike | None = None,
    calibration_samples: int = 100,
    inputs: DataLike | None = None,
    samples: int = 32,
    target: str = "generic",
    accelerator: str | None = None,
    max_zip_bytes: int | None = None,
    max_bytes: int | None = None,
    max_vela_bytes: int | None = None,
    only: str | list[str] | tuple[str, ...] | None = None,
    jobs: int = 1,
    ray: str | bool | None = None,
    html: str | os.PathLike | None = None,
    force: bool = False,
    progress: Callable[[str, dict, int, int], None] | None = None,
) -> Explored:
    """Explore the deployment tree for `model` (or a list of models) as `tflrewrite explore`
    does, with its flags as keyword arguments: every candidate rewrite for the target,
    measured against the model on `inputs` (else the calibration samples held out, else
    `samples` random inputs), written into the folder `output` (for several models, each
    into output/NAME), with explore.json and, given `html`, the page. `only`: shell patterns
    of candidate names, a list or comma-separated; `ray`: True for the Ray cluster Ray
    finds, or its address; `progress(model, candidate, done, total)` as each candidate is
    measured. Raises TflRewriteError for what the command refuses, before anything is
    written."""
    from tflrewrite import tree
    from tflrewrite.fileio import check_output_path

    several = isinstance(model, (list, tuple))
    sources = [_Input.of(m) for m in (model if several else [model])]
    output = os.fspath(output)
    folders = tree.folders([s.name for s in sources], output)
    paths = [s.path for s in sources if s.path is not None]
    tree.check_folder(output, inputs=paths, force=force)
    if html is not None:
        from tflrewrite.reports import html as pages

        pages.check_available()
        html = os.fspath(html)
        check_output_path(html, paths, force)
    budget = _explore_budget(
        target=target,
        calibration=calibration,
        accelerator=accelerator,
        budgets=(max_zip_bytes, max_bytes, max_vela_bytes),
        jobs=jobs,
        ray=ray,
    )
    patterns = [p.strip() for p in only.split(",") if p.strip()] if isinstance(only, str) else only
    budgets = None
    explored = []
    for src in sources:
        subject = tree.subject(
            src.name,
            src.file_bytes(),
            target=target,
            calibration=calibration,
            calibration_samples=calibration_samples,
            inputs=inputs,
            samples=samples,
            accelerator=accelerator,
        )
        if budgets is None or several:
            budgets = tree.budgets_for(subject.model, target=target, given=budget)
        plans = tree.plans(
            subject,
            folder=folders[src.name],
            calibration=calibration,
            calibration_samples=calibration_samples,
            budgets=budgets,
            only=patterns or (),
        )
        explored.append((subject, plans))
    total = sum(p.refused is None for _, plans in explored for p in plans)
    count = 0

    def done(subject: Any, name: str, row: dict) -> None:
        nonlocal count
        count += 1
        if progress is not None:
            progress(subject.path, row, count, total)

    results = tree.run(
        explored,
        workers=jobs,
        ray="" if ray is True else (None if ray is False else ray),
        budget=budget,
        on_done=done,
    )
    for e in results:
        tree.assign_files(e, os.path.relpath(folders[e.subject.path], output))
    record = tree.save(results, output, force=force)
    if html is not None:
        from tflrewrite.reports import html as pages
        from tflrewrite.reports import sweep

        pages.write(html, sweep.page(record))
    return Explored(record, output, html)


def _explore_budget(
    *,
    target: str,
    calibration: Any,
    accelerator: str | None,
    budgets: tuple[int | None, int | None, int | None],
    jobs: int,
    ray: Any,
) -> tuple[str, int] | None:
    """The user's size budget (metric, limit), or None, once the settings are known to go
    together."""
    from tflrewrite.targets import TARGETS

    if target not in TARGETS:
        raise UsageError(f"target {target!r}: not one of {', '.join(TARGETS)}")
    if jobs < 1:
        raise UsageError(f"jobs: not a positive whole number: {jobs}")
    given = [(m, v) for m, v in zip(("zip", "bytes", "vela"), budgets) if v is not None]
    if len(given) > 1:
        raise UsageError("give one size budget at a time (max_zip_bytes, max_bytes or vela)")
    if target == "ethos-u" and calibration is None:
        raise UsageError(
            "explore --target ethos-u: Ethos-U runs full int8, which needs --calibration"
        )
    if target != "ethos-u":
        for flag, value in (("--accelerator", accelerator), ("--max-vela-bytes", budgets[2])):
            if value is not None:
                raise UsageError(f"{flag} is for --target ethos-u")
    if ray is not None and ray is not False:
        from tflrewrite import fanout

        if not fanout.ray_available():
            raise UsageError(f"--ray needs Ray: {fanout.RAY_EXTRA}")
    return given[0] if given else None


class _Input:
    """A model given to the API: a file (`path`), a file's bytes, or a Model; `name` names
    it in reports and errors. Read once, when first needed."""

    def __init__(self, name: str, path: str | None, data: Any = None, model: Any = None):
        self.name, self.path = name, path
        self._data, self._model = data, model

    @classmethod
    def of(cls, model: ModelLike) -> _Input:
        if isinstance(model, Model):
            return cls(MODEL_NAME, None, model=model)
        if isinstance(model, (bytes, bytearray, memoryview)):
            return cls(BYTES_NAME, None, data=bytes(model))
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            return cls(path, path)
        raise TypeError(f"a model is a path, bytes or a Model, not {type(model).__name__}")

    def model(self) -> Model:
        if self._model is None:
            from tflrewrite import reader

            if self.path is not None:
                self._model = reader.read(self.path)
            else:
                self._model = reader.read_bytes(self._data, self.name)
        return self._model

    def data(self) -> bytes:
        """The model's file in bytes (a Model is serialised, once)."""
        if self._data is None:
            if self.path is not None:
                return self.file_bytes()
            from tflrewrite import writer

            self._data = writer.to_bytes(self._model)
        return self._data

    def file_bytes(self) -> bytes:
        """The file's bytes as they are on disk (or `data()` for a model given in memory)."""
        if self.path is None:
            return self.data()
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError as e:
            raise TflRewriteError(f"{self.path}: cannot read it: {e.strerror or e}") from None

    def source(self) -> str | bytes:
        """What runtime.load takes: the path, or the bytes."""
        return self.path if self.path is not None else self.data()
