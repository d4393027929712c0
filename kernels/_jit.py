"""The one place that sets Numba's options for every kernel.

fastmath stays off: kernel results are written into models and must equal their numpy
twins exactly. Each kernel keeps its compiled code in __pycache__ (Numba's disk cache) so
later runs start fast, and loads it from there without Numba's preparation to compile.
NUMBA_DISABLE_JIT=1 runs the kernels as plain Python (for coverage and debugging).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import numba
from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher

T = TypeVar("T")


def _without_blas_probe(load: Callable[[], T]) -> T:
    """load(), where Numba's numba.np.arraymath, if load imports it, skips its BLAS probe.

    That module checks at import time that SciPy's BLAS can be imported
    (scipy.linalg.cython_blas): a third of a second that no kernel here needs (they call no
    BLAS). Numba imports it before it compiles anything, and while it loads a cached kernel
    that uses one of its functions. With the BLAS module marked absent meanwhile, the check
    is skipped; the flag it sets is then put back to what the check would have found had
    SciPy's BLAS been importable, so that BLAS-backed functions still compile for other
    Numba code in the process (Numba imports SciPy's BLAS itself when it compiles one).
    Where anything here differs from what this expects, Numba is left alone: if arraymath
    fails to import this way, load() runs again without it.
    """
    name = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or name in sys.modules:
        return load()
    sys.modules[name] = None  # type: ignore[assignment]  # its import raises ImportError
    try:
        return load()
    except Exception:
        if "numba.np.arraymath" in sys.modules:
            raise
    finally:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]
        arraymath = sys.modules.get("numba.np.arraymath")
        if getattr(arraymath, "_HAVE_BLAS", None) is False:
            arraymath._HAVE_BLAS = "scipy" in sys.modules  # Numba imports SciPy when present
    return load()  # a Numba this does not fit: its own imports, BLAS probe and all


class _CacheFirst(FunctionCache):
    """A kernel's disk cache that loads compiled code without preparing to compile.

    Before it looks in the cache, Numba refreshes its target context: it imports and
    registers the implementations of every Python and NumPy feature it can compile (some
    hundred modules, arraymath among them), a tenth to a quarter of a second at the first
    dispatch. Code loaded from the cache needs none of that, only Numba's runtime (NRT),
    whose functions it links to. So this loads first and refreshes only on a miss, before
    Numba compiles (its compiler refreshes again, which is then cheap). The code that runs
    is the same either way; only when the context is ready differs.
    """

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        from numba.core.runtime.nrt import rtsys

        rtsys.initialize(target_context)  # once per process; the cached code calls NRT
        with self._guard_against_spurious_io_errors():
            compiled = _without_blas_probe(lambda: self._load_overload(sig, target_context))
            if compiled is not None:
                return compiled
        _without_blas_probe(target_context.refresh)  # Numba's own load does this first
        return None


_OPTIONS = {"fastmath": False, "nogil": True}

# What _CacheFirst uses of Numba's own cache; a Numba without it keeps its own.
_FITS = all(
    callable(getattr(FunctionCache, name, None))
    for name in ("_load_overload", "_guard_against_spurious_io_errors")
)


def jit(fn: Callable) -> Callable:
    """`@jit`: a Numba kernel with the options above, loaded from its cache when it can be.
    The kernel gets its disk cache here rather than from njit(cache=True), which would
    make one only for this to replace it."""
    if not _FITS:
        return numba.njit(cache=True, **_OPTIONS)(fn)
    kernel = numba.njit(**_OPTIONS)(fn)
    if isinstance(kernel, Dispatcher):  # not under NUMBA_DISABLE_JIT=1
        kernel._cache = _CacheFirst(kernel.py_func)
    return kernel
