"""AdaRound: learned up-or-down rounding of int8 weights, chosen to keep a layer's outputs.

A layer computes Y = W X (W: rows x d; X: d x n inputs). With H = X X^T, the output error
of weights W~ against W is tr((W~ - W) H (W~ - W)^T), so H is all the data it needs. Each
weight on row r is s_r times an integer code; AdaRound (Nagel et al., "Up or Down?
Adaptive Rounding for Post-Training Quantization", 2020) relaxes the choice between
floor(w / s) and the code above it to floor(w / s) + h(V), with the rectified sigmoid
h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1), and minimises by Adam

    tr(dW H dW^T) / norm + lambda * sum(1 - |2 h(V) - 1|^beta),

no regulariser for the first WARMUP of the iterations, then beta annealed from 20 to 2 so
that h(V) is pushed to 0 or 1 (the schedule of the BRECQ reference code). V starts where
h(V) = frac(w / s), so W~ = W; the final code rounds up where h(V) >= 0.5. `norm` is
mean(s^2) * mean(diag H): the error of independent rounding noise is then about 1/12 per
weight, whatever the layer's scale, so that one lambda fits every layer.

Codes stay within -127..127. As in kernels.reconstruct.solve, positions in `zeros` stay 0
and no other weight becomes 0 (a weight between 0 and +-1 code takes +-1), so sparsity is
what the mask says. Plain numpy and deterministic (no random state): the work per
iteration is one batched product dQ H, which BLAS does well.
"""

from __future__ import annotations

import numpy as np

ZETA, GAMMA = 1.1, -0.1
ITERATIONS = 1000
LEARNING_RATE = 0.03
# lambda. The paper's 0.01 goes with an unnormalised error; against `norm` below, random
# quadratic problems (tests/test_adaround.py) scored best from 1 up: at 0.01 AdaRound was
# barely better than round-to-nearest and worse than error feedback, at 1 better than both.
REGULARISATION = 1.0
BETA = (20.0, 2.0)
WARMUP = 0.2  # fraction of the iterations without the regulariser
ADAM = (0.9, 0.999, 1e-8)


def adaround(
    w: np.ndarray,
    h: np.ndarray,
    scales: np.ndarray,
    zeros: np.ndarray,
    iterations: int = ITERATIONS,
    learning_rate: float = LEARNING_RATE,
    regularisation: float = REGULARISATION,
) -> np.ndarray:
    """int8 codes (the shape of `w`) for real weights `w` (rows x d, or groups x rows x d)
    on inputs whose X X^T is `h` (d x d, or groups x d x d), with per-row `scales` (rows,
    or groups x rows); `zeros` (the shape of `w`) stay 0."""
    batched = np.ndim(w) == 3
    w3 = np.asarray(w, np.float64).reshape((-1,) + np.shape(w)[-2:])
    h3 = np.asarray(h, np.float64).reshape((-1,) + np.shape(h)[-2:])
    s = np.asarray(scales, np.float64).reshape(w3.shape[0], w3.shape[1], 1)
    zeros3 = np.asarray(zeros, bool).reshape(w3.shape)
    x = w3 / s
    base = np.floor(x)
    fixed = _fixed_codes(x, zeros3)
    free = ~zeros3 & (base >= -127) & (base <= 126) & (base != 0) & (base != -1)
    frac = np.where(free, x - base, 0.5)
    v = _inverse_h(frac)
    h_weighted = _factor(h3 * (1.0 / _norm(s, h3))[:, None, None])
    s2 = s * s
    schedule = (iterations, learning_rate, regularisation)
    v = _optimise(v, x, np.where(free, base, fixed), free, (s2, h_weighted), schedule)
    codes = np.where(free, base + (_h(v) >= 0.5), fixed)
    # The error is a sum over rows: a row keeps round-to-nearest where that is better
    # (the relaxation is a heuristic; on 9-weight rows it sometimes loses).
    worse = _row_errors(codes, x, s2, h3) > _row_errors(fixed, x, s2, h3)
    codes = np.where(worse[:, :, None], fixed, codes)
    out = np.clip(codes, -127, 127).astype(np.int8)
    return out if batched else out[0]


def _optimise(v, x, base, free, quadratic, schedule):
    """V after Adam on the relaxed loss; `quadratic` is (s^2 per row, H / norm): the
    error's gradient in codes is 2 s_r^2 dQ H / norm."""
    (s2, hw), (iterations, lr, reg) = quadratic, schedule
    b1, b2, eps = ADAM
    m = np.zeros_like(v)
    m2 = np.zeros_like(v)
    warm = int(WARMUP * iterations)
    for t in range(iterations):
        sig = 1.0 / (1.0 + np.exp(-v))
        raw = sig * (ZETA - GAMMA) + GAMMA
        hv = np.clip(raw, 0.0, 1.0)
        dq = np.where(free, base + hv, base) - x
        grad_h = 2.0 * s2 * (_times(dq, hw) if isinstance(hw, tuple) else np.matmul(dq, hw))
        if t >= warm:
            beta = _beta(t, warm, iterations)
            a = 2.0 * hv - 1.0
            grad_h -= reg * beta * 2.0 * np.sign(a) * np.abs(a) ** (beta - 1.0)
        g = np.where(
            free & (raw > 0.0) & (raw < 1.0), grad_h * sig * (1.0 - sig) * (ZETA - GAMMA), 0.0
        )
        m = b1 * m + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        step = (m / (1 - b1 ** (t + 1))) / (np.sqrt(m2 / (1 - b2 ** (t + 1))) + eps)
        v = v - lr * step
    return v


def _factor(h):
    """H itself, or where it is of low rank (fewer samples than inputs: a wide dense
    layer), (L, L^T) with L L^T = H, which halves the work of dQ H or better."""
    values, vectors = np.linalg.eigh(h)
    keep = values > values[:, -1:] * 1e-12
    rank = int(keep.sum(axis=1).max())
    if 2 * rank >= h.shape[1]:
        return h
    top = slice(h.shape[1] - rank, None)  # eigh sorts values ascending
    factor = vectors[:, :, top] * np.sqrt(np.maximum(values[:, None, top], 0.0))
    return factor, np.ascontiguousarray(factor.transpose(0, 2, 1))


def _times(dq, factors):
    low, high = factors
    return np.matmul(np.matmul(dq, low), high)


def _row_errors(codes, x, s2, h):
    """groups x rows: s_r^2 dq_r H dq_r^T."""
    dq = codes - x
    return np.einsum("grd,gde,gre->gr", dq, h, dq) * s2[:, :, 0]


def _beta(t, warm, iterations):
    start, end = BETA
    rel = (t - warm) / max(iterations - warm, 1)
    return end + (start - end) * max(0.0, 1.0 - rel)


def _h(v):
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _inverse_h(frac):
    p = (np.clip(frac, 1e-6, 1 - 1e-6) - GAMMA) / (ZETA - GAMMA)
    return np.log(p / (1.0 - p))


def _fixed_codes(x, zeros):
    m = np.maximum(np.minimum(np.floor(np.abs(x) + 0.5), 127.0), 1.0)
    return np.where(zeros, 0.0, np.where(x < 0, -m, m))


def _norm(s, h):
    diag = np.diagonal(h, axis1=1, axis2=2).mean(axis=1)
    out = (s[:, :, 0] ** 2).mean(axis=1) * diag
    return np.where(out > 0, out, 1.0)
