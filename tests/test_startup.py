"""What a fresh `tflrewrite` process does besides the rewrite: how it loads the Numba kernels
and how it exits. Each test runs commands in new interpreters; none of them times anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tflrewrite.reports.audit import zip_size
from tflrewrite.reports.summary import zip_size_soon

# Modules that only Numba's preparation to compile imports (its target context's refresh).
REFRESH_ONLY = ("numba.misc.gdb_hook", "numba.np.polynomial.polynomial_functions")

KERNEL = textwrap.dedent("""
    import numpy as np

    from tflrewrite.kernels._jit import jit


    @jit
    def running_total(x):
        return np.cumsum(x)  # code from numba.np.arraymath, whose import probes for BLAS
""")

PROBE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import probe_kernel

    total = probe_kernel.running_total(np.arange(5.0))
    stats = probe_kernel.running_total.stats
    arraymath = sys.modules.get("numba.np.arraymath")
    print(json.dumps({
        "total": total.tolist(),
        "hits": sum(stats.cache_hits.values()),
        "misses": sum(stats.cache_misses.values()),
        "modules": sorted(m for m in sys.modules if m in json.loads(sys.argv[2])),
        "have_blas": getattr(arraymath, "_HAVE_BLAS", None),
    }))
""")


def _probe(folder, modules: list[str]) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(folder / "numba-cache"))
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), json.dumps(modules)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="kernels run as Python")
def test_kernels_compile_on_a_miss_and_load_without_compiler_on_a_hit(tmp_path):
    (tmp_path / "probe_kernel.py").write_text(KERNEL)
    watched = [*REFRESH_ONLY, "scipy.linalg"]
    try:
        import scipy.linalg.cython_blas  # noqa: F401

        blas = True
    except ImportError:
        blas = False
    compiled = _probe(tmp_path, watched)
    loaded = _probe(tmp_path, watched)
    assert compiled["total"] == loaded["total"] == [0.0, 1.0, 3.0, 6.0, 10.0]
    assert (compiled["misses"], compiled["hits"]) == (1, 0)
    assert (loaded["misses"], loaded["hits"]) == (0, 1)
    # Compiling prepares Numba's whole target context; loading from the cache does not.
    assert set(REFRESH_ONLY) <= set(compiled["modules"])
    assert loaded["modules"] == []
    # Neither imports SciPy's BLAS for arraymath's probe, and both leave its flag as the
    # probe would have set it.
    assert compiled["have_blas"] is loaded["have_blas"] is blas


def _tflrewrite(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tflrewrite", *argv], capture_output=True, text=True
    )


def test_command_keeps_exit_status_and_output_through_its_quick_exit(example_model, tmp_path):
    out = tmp_path / "out.tflite"
    flags = ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights"]
    done = _tflrewrite(str(example_model), "-o", str(out), *flags, "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # all of it reached the pipe
    assert report["output_bytes"] == out.stat().st_size
    # The input's zipped size is measured in a thread from the start; the same figure.
    assert report["input_zip_bytes"] == zip_size(example_model.read_bytes(), example_model.name)
    assert report["output_zip_bytes"] == zip_size(out.read_bytes(), out.name)
    assert [p["pass"] for p in report["passes"]] == ["prune", "quantize", "cluster"]

    refused = _tflrewrite(str(example_model), "-o", str(out), "--prune", "2")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "tflrewrite" in refused.stderr

    failed = _tflrewrite(
        "verify", str(example_model), str(out), "--samples", "2", "--min-sqnr", "999"
    )
    assert failed.returncode == 1
    assert "below --min-sqnr" in failed.stderr
    assert "reference:" in failed.stdout


def test_profilers_still_get_the_usual_exit(tmp_path):
    stats = tmp_path / "recipes.prof"
    result = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "tflrewrite", "recipes"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert stats.stat().st_size > 0  # cProfile wrote its results after the command returned


def test_zip_size_soon_gives_zip_size_or_none(example_model, tmp_path):
    pending = zip_size_soon(str(example_model))
    assert pending.result() == zip_size(example_model.read_bytes(), example_model.name)
    assert zip_size_soon(str(tmp_path / "missing.tflite")) is None
    assert zip_size_soon(str(tmp_path)) is None  # not a file


# What Numba imports only to look, or for kernels that allocate arrays themselves.
NOT_LOADED = ("numba.np.arrayobj", "numpy.ma", "scipy", "yaml")

RUN_AND_LIST = textwrap.dedent("""
    import contextlib, io, json, sys
    from tflrewrite import cli

    sys.argv = ["tflrewrite", *sys.argv[1:]]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main()
        except SystemExit as e:
            assert not e.code, e.code
    print(json.dumps(sorted(sys.modules)))
""")


def _modules_after(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, *argv], capture_output=True, text=True, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_commands_without_kernels_do_not_import_numba(example_model):
    assert "numba" not in _modules_after("recipes")
    assert "numba" not in _modules_after("audit", str(example_model))


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="kernels run as Python")
def test_a_rewrite_loads_only_the_numba_it_runs(example_model, tmp_path):
    flags = ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights", "--no-verify"]
    for flag_set in (flags, [*flags[:2], "--prune-pattern", "2:4", *flags[2:]]):
        args = (str(example_model), "-o", str(tmp_path / "out.tflite"), "--force", *flag_set)
        _modules_after(*args)  # compiles the kernels where their cache is cold, as compiling
        modules = _modules_after(*args)  # needs all of Numba; this run loads them
        assert "numba" in modules  # the kernels ran
        assert modules & set(NOT_LOADED) == set(), flag_set


def test_a_kernel_is_made_once_on_first_use_from_any_thread(tmp_path):
    (tmp_path / "probe_kernel.py").write_text(KERNEL)
    code = textwrap.dedent("""
        import sys
        from concurrent.futures import ThreadPoolExecutor
        sys.path.insert(0, sys.argv[1])
        import numpy as np
        import probe_kernel

        kernel = probe_kernel.running_total
        assert "numba" not in sys.modules and kernel._dispatcher is None
        with ThreadPoolExecutor(4) as pool:
            totals = list(pool.map(lambda n: kernel(np.arange(float(n))), range(2, 10)))
        assert [t[-1] for t in totals] == [n * (n - 1) / 2 for n in range(2, 10)]
        assert kernel.dispatcher is kernel._dispatcher is not None
        assert kernel.__name__ == "running_total" and "probe_kernel" in repr(kernel)
        print("ok")
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="kernels run as Python")
def test_kernels_type_plain_arrays_as_numba_does():
    import numba
    import numpy as np

    from tflrewrite.kernels import stats

    typeof = stats._zeros.dispatcher.typeof_pyval
    grid = np.arange(24, dtype=np.float32).reshape(4, 6)
    frozen = grid.copy()
    frozen.flags.writeable = False
    arrays = [
        grid,
        np.asfortranarray(grid),
        grid[:, ::2],  # neither C nor F contiguous
        grid[1],
        frozen,
        np.zeros((2, 0, 3), np.int8),
        np.array(3.0),
        np.ones(5, np.bool_),
        np.arange(4, dtype=np.uint64),
        np.ones(3, np.complex64),
        np.ones(3, np.float16),  # no Numba type: Numba's own path decides
        np.ma.masked_array([1.0, 2.0]),  # not a plain ndarray: Numba's own path
        (1, 2.0),
    ]
    for a in arrays:
        assert _outcome(typeof, a) == _outcome(numba.typeof, a), a


def _outcome(typeof, value):
    """typeof(value), or the class of what it raised."""
    try:
        return typeof(value)
    except Exception as e:  # noqa: BLE001 - compared, not handled
        return type(e)
