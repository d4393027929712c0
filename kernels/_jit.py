"""The one place that sets Numba's options for every kernel.

fastmath stays off: kernel results are written into models and must equal their numpy
twins exactly. cache=True keeps compiled code in __pycache__ so later runs start fast.
NUMBA_DISABLE_JIT=1 runs the kernels as plain Python (for coverage and debugging).
"""

from __future__ import annotations

import numba

jit = numba.njit(cache=True, fastmath=False, nogil=True)
