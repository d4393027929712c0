"""What a fresh `tflrewrite` process does besides the rewrite: how it loads the Numba kernels
and how it exits. Each test runs commands in new interpreters; none of them times anything."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
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


# Tests of what the start-up tricks save, which plain Numba does not.
WITH_TRICKS = pytest.mark.skipif(
    "1" in (os.environ.get("NUMBA_DISABLE_JIT"), os.environ.get("TFLREWRITE_PLAIN_NUMBA")),
    reason="kernels run as Python, or with plain Numba",
)


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


@pytest.mark.slow
@WITH_TRICKS
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


# What Numba imports only to look, or for kernels that allocate arrays themselves (numpy 1.x
# imports numpy.ma itself); matplotlib, which only --html draws with; and explore's machinery
# and Ray, which only explore, several models and --ray use.
EXPLORE_ONLY = ("tflrewrite.tree", "tflrewrite.fanout", "ray")
NOT_LOADED = ("numba.np.arrayobj", "scipy", "yaml", "matplotlib", *EXPLORE_ONLY) + (
    ("numpy.ma",) if int(np.__version__.split(".")[0]) >= 2 else ()
)

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


def test_explore_and_ray_stay_out_of_the_other_commands(example_model, tmp_path):
    out = str(tmp_path / "out.tflite")
    for argv in (
        ("recipes",),
        ("audit", str(example_model), str(example_model)),
        ("verify", str(example_model), str(example_model), "--samples", "1"),
        (str(example_model), "-o", out, "--quantize", "float16", "--no-verify"),
    ):
        assert _modules_after(*argv) & set(EXPLORE_ONLY) == set(), argv
    assert "ray" not in _modules_after("explore", "--help")


@pytest.mark.slow
@WITH_TRICKS
def test_a_rewrite_loads_only_the_numba_it_runs(example_model, tmp_path):
    flags = ["--prune", "0.5", "--cluster", "16", "--quantize", "int8-weights", "--no-verify"]
    for flag_set in (flags, [*flags[:2], "--prune-pattern", "2:4", *flags[2:]]):
        args = (str(example_model), "-o", str(tmp_path / "out.tflite"), "--force", *flag_set)
        _modules_after(*args)  # compiles the kernels where their cache is cold, as compiling
        modules = _modules_after(*args)  # needs all of Numba; this run loads them
        assert "numba" in modules  # the kernels ran
        assert modules & set(NOT_LOADED) == set(), flag_set


@pytest.mark.slow
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


# Runs kernels of every kind on fixed data; prints a digest of all their outputs and the class
# of one kernel's disk cache. argv[1] == "untested": as under a Numba release the tricks are
# not tested on.
KERNEL_RESULTS = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from tflrewrite.kernels import _jit
    if sys.argv[1] == "untested":  # (not by Numba's version: its cache keeps the version)
        _jit.TESTED = ((0, 0), (0, 1))
    from tflrewrite.kernels import bitpack, kmeans1d, prune, quantize, reconstruct, sparse, stats

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 48)).astype(np.float32)
    q = rng.integers(-128, 128, (6, 48)).astype(np.int8)
    h = np.cov(rng.standard_normal((48, 200)))
    results = [
        prune.prune_rows(w, 20),
        prune.n_of_m_mask(np.abs(w), 2, 4),
        prune.block_mask(np.abs(w), 4, 3),
        quantize.symmetric_int8_rows(w.astype(np.float64)),
        kmeans1d.cluster_int8(q, 5, True, True),
        kmeans1d.cluster_float_rows(w, 4, True),
        kmeans1d.optimal_kmeans_1d(np.sort(w.ravel()), None, 7),
        stats.int8_counts(q),
        stats.sq_diff_per_row(w, w[::-1].copy()),
        bitpack.unpack(bitpack.pack(q.ravel().view(np.uint8) % 32, 5), 5, q.size),
        sparse.block_csr_encode(np.where(np.abs(w) > 1, w, 0), 4),
        reconstruct.obc_prune_rows(w, h, w == 0, np.full(6, 12)),
    ]
    digest = hashlib.sha256()
    def add(r):
        if isinstance(r, (tuple, list)):
            for part in r:
                add(part)
        else:
            digest.update(np.ascontiguousarray(r).tobytes())
    add(results)
    cache = type(quantize._symmetric_int8_rows.dispatcher._cache).__name__
    print(json.dumps({"digest": digest.hexdigest(), "cache": cache}))
""")


def _kernel_results(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TFLREWRITE_PLAIN_NUMBA"}
    if mode == "plain":
        env["TFLREWRITE_PLAIN_NUMBA"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_RESULTS, mode], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="kernels run as Python")
def test_kernels_give_the_same_results_without_the_start_up_tricks():
    tricks, plain, untested = (_kernel_results(m) for m in ("tricks", "plain", "untested"))
    assert tricks["cache"] == "CacheFirst"
    assert plain["cache"] == untested["cache"] == "FunctionCache"
    assert tricks["digest"] == plain["digest"] == untested["digest"]


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="kernels run as Python")
@pytest.mark.parametrize(
    "owner, name",
    [("FunctionCache", "_load_overload"), ("Dispatcher", "typeof_pyval"), ("rtsys", "initialize")],
)
def test_a_numba_without_what_the_tricks_use_gets_plain_numba(monkeypatch, owner, name):
    import numba
    from numba.core.caching import FunctionCache
    from numba.core.dispatcher import Dispatcher
    from numba.core.runtime.nrt import rtsys

    from tflrewrite.kernels import _jit

    target = {"FunctionCache": FunctionCache, "Dispatcher": Dispatcher, "rtsys": rtsys}[owner]
    assert _jit._cache_first(numba) is not None
    monkeypatch.setattr(target, name, None)
    assert _jit._cache_first(numba) is None


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="needs SciPy")
def test_a_numba_that_needs_scipy_at_import_gets_it(tmp_path):
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text("import scipy\n\n__version__ = '0.68.1'\n")
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from tflrewrite.kernels._jit import _import_numba

        numba = _import_numba()
        print(numba.__file__.startswith(sys.argv[1]), "scipy" in sys.modules)
    """)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
