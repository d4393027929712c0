"""The layers of docs/ARCHITECTURE.md hold: each module imports only from the layers its
row allows (imports inside functions included), and no module imports itself back through
others. ruff's banned-api rule keeps flatbuffers and the schema bindings to the I/O layer;
this test keeps the rest of the table."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Module name prefixes -> layer; the longest matching prefix wins.
LAYERS = {
    "tflrewrite": "base",  # __version__
    "tflrewrite.errors": "base",
    "tflrewrite.progress": "base",
    "tflrewrite.fileio": "base",
    "tflrewrite.kernels": "kernels",
    "tflrewrite.model": "ir",
    "tflrewrite.weights": "ir",
    "tflrewrite.sparsity": "ir",
    "tflrewrite.provenance": "ir",
    "tflrewrite.runtime_version": "ir",
    "tflrewrite.segments": "ir",
    "tflrewrite.schema": "io",
    "tflrewrite.archive": "io",
    "tflrewrite.reader": "io",
    "tflrewrite.writer": "io",
    "tflrewrite.runtime": "runtime",
    "tflrewrite.propagate": "runtime",
    "tflrewrite.reports": "reports",
    "tflrewrite.calibrate": "passes",
    "tflrewrite.passes": "passes",
    "tflrewrite.targets": "passes",
    "tflrewrite.recipes": "plan",
    "tflrewrite.pipeline": "plan",
    "tflrewrite.api": "plan",
    "tflrewrite.budget": "plan",
    "tflrewrite.floor": "plan",
    "tflrewrite.tree": "plan",
    "tflrewrite.fanout": "plan",
    "tflrewrite.cli": "face",
    "tflrewrite.__main__": "face",
    "tflrewrite.finetune": "face",
}

# What each layer may import besides itself (DESIGN.md §2: a layer imports only from
# layers below it; passes and targets reach models through the runtime, never through the
# writer or the reports).
ALLOWED = {
    "base": set(),
    "kernels": set(),
    "ir": {"base", "kernels"},
    "io": {"base", "ir"},
    "runtime": {"base", "ir", "io"},
    "reports": {"base", "kernels", "ir", "io", "runtime"},
    "passes": {"base", "kernels", "ir", "runtime"},
    "plan": {"base", "kernels", "ir", "io", "runtime", "reports", "passes"},
    "face": {"base", "kernels", "ir", "io", "runtime", "reports", "passes", "plan"},
}


def modules() -> dict[str, Path]:
    """Every tflrewrite module by import name (kernels/ is tflrewrite.kernels)."""
    found = {}
    paths = sorted((ROOT / "tflrewrite").rglob("*.py")) + sorted((ROOT / "kernels").glob("*.py"))
    for path in paths:
        rel = path.relative_to(ROOT).with_suffix("").parts
        if rel[:2] == ("tflrewrite", "kernels"):
            continue  # a checkout's link to kernels/, if any
        parts = ["tflrewrite", *rel] if rel[0] == "kernels" else list(rel)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The tflrewrite modules `path` imports, anywhere in it."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.startswith("tflrewrite"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("tflrewrite"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in known else node.module)
    return deps


def layer(module: str) -> str:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    for name in modules():
        assert layer(name) in ALLOWED, name


def test_modules_import_only_the_layers_below_them():
    wrong = []
    for name, deps in graph().items():
        mine = layer(name)
        for dep in sorted(deps):
            theirs = layer(dep)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{name} ({mine}) imports {dep} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    deps = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(deps.get(name, ())):
            if dep.startswith(name + "."):
                continue  # a package importing its own modules is how packages load
            if state.get(dep) == 1:
                cycles.append(" -> ".join(path[path.index(dep) :] + [dep]))
            elif dep in deps and dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(deps):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)
