"""The one place that sets Numba's options for every kernel.

fastmath stays off: kernel results are written into models and must equal their numpy
twins exactly. cache=True keeps compiled code in __pycache__ so later runs start fast.
NUMBA_DISABLE_JIT=1 runs the kernels as plain Python (for coverage and debugging).
"""

from __future__ import annotations

import sys

import numba


def _skip_blas_probe() -> None:
    """Keep Numba from importing scipy.linalg when it first loads a kernel.

    Numba's first dispatch imports numba.np.arraymath, which checks at import time that
    SciPy's BLAS can be imported (scipy.linalg.cython_blas): a third of a second that no
    kernel here needs (they call no BLAS). Importing that module now, with the BLAS module
    marked absent, skips the check; the flag it sets is then put back to what the check
    would have found had SciPy's BLAS been importable, so that BLAS-backed functions still
    compile for other Numba code in the process (Numba imports SciPy's BLAS itself when it
    compiles one). Where anything here differs from what this expects, Numba is left alone.
    """
    name = "scipy.linalg.cython_blas"
    if "numba.np.arraymath" in sys.modules or name in sys.modules:
        return
    sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        from numba.np import arraymath
    except Exception:  # noqa: BLE001 - a Numba this does not fit: its own first dispatch
        return
    finally:
        del sys.modules[name]
    if getattr(arraymath, "_HAVE_BLAS", None) is False:
        arraymath._HAVE_BLAS = "scipy" in sys.modules  # Numba imports SciPy when present


_skip_blas_probe()

jit = numba.njit(cache=True, fastmath=False, nogil=True)
