"""The one place that sets Numba's options for every kernel.

fastmath stays off: kernel results are written into models and must equal their numpy twins
(tests/twins.py) exactly. Each kernel keeps its compiled code in __pycache__ (Numba's disk
cache) so later runs start fast, and loads it from there without Numba's preparation to
compile. A kernel costs nothing until it is first called: importing Numba takes a third of a
second and making each dispatcher a millisecond, so a command pays for Numba only when it
runs a kernel, and then only for the kernels it runs. Kernels take their scratch arrays from
their callers: a kernel that allocates arrays itself makes Numba import its array module
when it loads the kernel from the cache, a tenth of a second at a process's first rewrite.
NUMBA_DISABLE_JIT=1 runs the kernels as plain Python (for coverage and debugging).
TFLREWRITE_PLAIN_NUMBA=1 turns the start-up tricks here off (should a Numba misbehave with them).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

_OPTIONS = {"fastmath": False, "nogil": True}
# TFLREWRITE_PLAIN_NUMBA=1 turns every start-up trick below off: plain Numba, a slower start
# and the same results. Read once, when this module is imported.
PLAIN = os.environ.get("TFLREWRITE_PLAIN_NUMBA") == "1"
# The Numba releases the tricks are tested on, [first, end) (tests/test_startup.py; pyproject
# pins numba to the same). Any other gets plain Numba.
TESTED = ((0, 59), (0, 69))


class Kernel:
    """A Numba kernel, made from its Python function on the first call (or the first look
    at a dispatcher attribute such as ``stats``). Numba code that calls a kernel compiles
    against its dispatcher."""

    def __init__(self, fn: Callable) -> None:
        functools.update_wrapper(self, fn)
        self.py_func = fn
        self._dispatcher: Any = None

    def __call__(self, *args: Any) -> Any:
        dispatcher = self._dispatcher
        if dispatcher is None:
            dispatcher = self.dispatcher
        return dispatcher(*args)

    @property
    def dispatcher(self) -> Any:
        if self._dispatcher is None:
            with _MAKING:  # kernels run in threads: one import of Numba, one dispatcher each
                if self._dispatcher is None:
                    self._dispatcher = _numba()(self.py_func)
        return self._dispatcher

    @property
    def _numba_type_(self) -> Any:  # how Numba types a global it finds in a kernel's code
        return self.dispatcher._numba_type_

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_dispatcher", "dispatcher"):
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __repr__(self) -> str:
        return f"<kernel {self.__module__}.{self.__qualname__}>"


def jit(fn: Callable) -> Kernel:
    """`@jit`: a Numba kernel with the options above, loaded from its cache when it can be."""
    return Kernel(fn)


_MAKING = threading.RLock()


@functools.cache
def _numba() -> Callable[[Callable], Any]:
    """Imports Numba and returns what makes a kernel's dispatcher (once per process): with the
    start-up tricks below where this Numba is a release they are tested on and has what they
    use, else plain Numba's (a slower start, the same compiled code)."""
    if PLAIN:
        import numba
    else:
        numba = _import_numba()
    plain = numba.njit(cache=True, **_OPTIONS)
    if PLAIN or not _tested(numba):
        return plain
    try:
        return _cache_first(numba) or plain
    except Exception:  # noqa: BLE001 - Numba's internals are not what the tricks expect
        return plain


def _tested(numba: Any) -> bool:
    """Whether this Numba's release is one the start-up tricks are tested on."""
    found = re.match(r"(\d+)\.(\d+)\.", getattr(numba, "__version__", ""))
    return found is not None and TESTED[0] <= (int(found[1]), int(found[2])) < TESTED[1]


def _cache_first(numba: Any) -> Callable[[Callable], Any] | None:
    """What makes a dispatcher that loads from its cache first and types plain arrays itself,
    or None where this Numba lacks what that uses."""
    from numba.core.base import BaseContext
    from numba.core.caching import FunctionCache, NullCache
    from numba.core.dispatcher import Dispatcher
    from numba.core.runtime.nrt import rtsys
    from numba.np import numpy_support

    uses = [
        (FunctionCache, "_load_overload"),
        (FunctionCache, "_guard_against_spurious_io_errors"),
        (BaseContext, "refresh"),
        (rtsys, "initialize"),
        (Dispatcher, "typeof_pyval"),
        (numpy_support, "from_dtype"),
        (numpy_support, "map_layout"),
    ]
    if not all(callable(getattr(owner, name, None)) for owner, name in uses):
        return None
    cache_first = _cache_first_class(FunctionCache, rtsys)

    def make(fn: Callable) -> Any:
        # The disk cache is set here rather than by njit(cache=True), which would make one
        # only for this to replace it.
        kernel = numba.njit(**_OPTIONS)(fn)
        if not isinstance(kernel, Dispatcher):  # NUMBA_DISABLE_JIT=1
            return kernel
        if not isinstance(getattr(kernel, "_cache", None), NullCache):  # not where it was
            return numba.njit(cache=True, **_OPTIONS)(fn)
        kernel._cache = cache_first(kernel.py_func)
        kernel.typeof_pyval = _typeof_plain_arrays(kernel.typeof_pyval)
        return kernel

    return make


def _cache_first_class(function_cache: type, rtsys: Any) -> type:
    """CacheFirst, a subclass of Numba's FunctionCache (passed in: Numba loads late)."""

    class CacheFirst(function_cache):
        """A kernel's disk cache that loads compiled code without preparing to compile.

        Before it looks in the cache, Numba refreshes its target context: it imports and
        registers the implementations of every Python and NumPy feature it can compile
        (some hundred modules, arraymath among them), a tenth to a quarter of a second at
        the first dispatch. Code loaded from the cache needs none of that, only Numba's
        runtime (NRT), whose functions it links to. So this loads first and refreshes only
        on a miss, before Numba compiles (its compiler refreshes again, which is then
        cheap). The code that runs is the same either way; only when the context is ready
        differs.
        """

        def load_overload(self, sig: Any, target_context: Any) -> Any:
            rtsys.initialize(target_context)  # once per process; the cached code calls NRT
            with self._guard_against_spurious_io_errors():
                compiled = _without_blas_probe(lambda: self._load_overload(sig, target_context))
                if compiled is not None:
                    return compiled
            _without_blas_probe(target_context.refresh)  # Numba's own load does this first
            return None

    return CacheFirst


def _typeof_plain_arrays(general: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A dispatcher's typeof_pyval (`general`), but for a plain ndarray the type Numba's own
    typeof gives without first asking whether the array is a numpy.ma.MaskedArray: that
    question imports numpy.ma, a twentieth of a second at a process's first kernel call, and
    a plain ndarray is never one. Numba asks this for each array type a kernel has not seen
    before, and for every argument when it loads or compiles an overload."""
    from numba.core import types
    from numba.np import numpy_support

    def typeof_pyval(val: Any) -> Any:
        if type(val) is not np.ndarray:
            return general(val)
        try:
            dtype = numpy_support.from_dtype(val.dtype)
            layout = numpy_support.map_layout(val)
            return types.Array(dtype, val.ndim, layout, readonly=not val.flags.writeable)
        except Exception:  # noqa: BLE001 - Numba's own path says what is wrong
            return general(val)

    return typeof_pyval


def _import_numba() -> Any:
    """`import numba`, less two imports it makes only to look, a twentieth of a second:
    SciPy's, to check that its version is at least 1.0 (no SciPy this project installs is
    older), and PyYAML's, to read a .numba_config.yaml in the working directory, which is
    left to it where there is such a file. A Numba that needs either is imported again,
    with both."""
    looks = ["scipy"] + ([] if os.path.isfile(".numba_config.yaml") else ["yaml"])
    if "numba" in sys.modules:  # imported already, or being imported by another thread
        looks = []
    looks = [name for name in looks if name not in sys.modules]
    for name in looks:
        sys.modules[name] = None  # type: ignore[assignment]  # its import raises ImportError
    try:
        import numba

        return numba
    except ImportError:
        if not looks:
            raise
        for name in [m for m in sys.modules if m == "numba" or m.startswith("numba.")]:
            del sys.modules[name]  # half imported: the import below starts again
    finally:
        for name in looks:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    import numba

    return numba


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
            arraymath._HAVE_BLAS = importlib.util.find_spec("scipy") is not None
    return load()  # a Numba this does not fit: its own imports, BLAS probe and all
