"""The independent oracle: the textbook formulas of SPEC §2 in mpmath, at whatever precision
makes them exact (the naive logits form cancels |x| / ln 10 digits, so it gets that many more).

Values come back as float64 arrays of the correctly rounded result (or, with `exact=True`,
as lists of mpf); `tolerances` measures how far a result may be from them.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np

GUARD_DIGITS = 30


def _digits(x) -> int:
    return GUARD_DIGITS + (int(abs(x) / 2.3) if math.isfinite(x) else 0)


def _mpf(v) -> mp.mpf:
    return mp.mpf(float(v))


def _sigmoid(x):
    return 1 / (1 + mp.exp(-x))


def logits_terms(x, y, w=1.0, p=1.0):
    """(loss, d/dx, d/dy) of w ((1 - y) x + lw log(1 + exp(-x))), lw = 1 + (p - 1) y, exact."""
    x, y, w, p = float(x), float(y), float(w), float(p)
    if math.isnan(x):
        return math.nan, math.nan, math.nan
    with mp.workdps(_digits(x)):
        X, Y, W, P = _mpf(x), _mpf(y), _mpf(w), _mpf(p)
        lw = (1 - Y) + P * Y  # not 1 + (P - 1) Y: at y = 1 and a tiny p, 30 digits cancel
        if math.isinf(x):
            return _inf_limit(x, y, w, p)
        sp_neg = mp.log(1 + mp.exp(-X))
        loss = W * ((1 - Y) * X + lw * sp_neg)
        dx = W * (lw * _sigmoid(X) - P * Y)
        dy = W * ((P - 1) * sp_neg - X)
        return float(loss), float(dx), float(dy)


def _inf_limit(x, y, w, p):
    # x -> +inf: loss ~ w (1 - y) x;  x -> -inf: loss ~ w p y |x|.  0 * inf is read as 0.
    coef = w * (1 - y) if x > 0 else w * p * y
    loss = 0.0 if coef == 0 else math.copysign(math.inf, coef)
    dx = w * (1 - y) if x > 0 else -w * p * y
    dy_coef = -w if x > 0 else w * p
    dy = 0.0 if dy_coef == 0 else math.copysign(math.inf, dy_coef)
    return loss, dx, dy


def _clamped_logs(x, X):
    """log x and log(1 - x) of a probability (float x, mpf X), clamped at -100 as PyTorch's
    BCE clamps them (log 0 included), at the working precision of the caller."""
    log_x = max(mp.log(X), -100) if x > 0 else mp.mpf(-100)
    log_q = max(mp.log(1 - X), -100) if x < 1 else mp.mpf(-100)
    return log_x, log_q


def probs_terms(x, y, w=1.0):
    """(loss, d/dx, d/dy) of BCE on a probability x, logs clamped at -100, exact."""
    x, y, w = float(x), float(y), float(w)
    if math.isnan(x):
        return math.nan, math.nan, math.nan
    with mp.workdps(GUARD_DIGITS + 330):  # 1 - x is exact for every float64 x in [0, 1]
        X, Y, W = _mpf(x), _mpf(y), _mpf(w)
        log_x, log_q = _clamped_logs(x, X)
        loss = -W * (Y * log_x + (1 - Y) * log_q)
        dx = W * (X - Y) / max(X * (1 - X), mp.mpf(1e-12))
        dy = W * (log_q - log_x)
        return float(loss), float(dx), float(dy)


def elementwise(fn, *arrays):
    """Apply a scalar oracle over broadcast arrays: (loss, dx, dy) as float64 arrays."""
    cols = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in arrays])
    shape = cols[0].shape
    out = [np.empty(shape) for _ in range(3)]
    for idx in np.ndindex(shape):
        for o, v in zip(out, fn(*(c[idx] for c in cols)), strict=True):
            o[idx] = v
    return tuple(out)


def exact_sum(values) -> float:
    """The correctly rounded sum of float64 values (math.fsum)."""
    return math.fsum(np.asarray(values, dtype=np.float64).ravel().tolist())


def focal_terms(x, y, alpha=0.25, gamma=2.0, w=1.0):
    """(loss, d/dx, d/dy, |terms of d/dx|, |terms of d/dy|) of torchvision's sigmoid focal
    loss w a_t (1 - p_t)^gamma ce, from its textbook definition: p = sigmoid(x),
    ce = -(y log p + (1 - y) log(1 - p)), p_t = p y + (1 - p)(1 - y),
    a_t = alpha y + (1 - alpha)(1 - y) (1 when alpha < 0). Finite x only. The last two
    are the sums of the absolute values of the derivatives' terms (what an error is
    measured against)."""
    x, y, w, alpha, gamma = float(x), float(y), float(w), float(alpha), float(gamma)
    with mp.workdps(_digits(x)):  # 1 - p keeps its digits up to |x| / ln 10 more
        X, Y, W, A, G = _mpf(x), _mpf(y), _mpf(w), _mpf(alpha), _mpf(gamma)
        p = _sigmoid(X)
        ce = -(Y * mp.log(p) + (1 - Y) * mp.log(1 - p))
        m = 1 - (p * Y + (1 - p) * (1 - Y))
        at, dat = (A * Y + (1 - A) * (1 - Y), 2 * A - 1) if alpha >= 0 else (1, 0)
        mg = m**G
        # d/dg of m^gamma: gamma m^(gamma - 1) dm, with dm/dx = (1 - 2y) p (1 - p),
        # dm/dy = 1 - 2p; dce/dx = p - y, dce/dy = -x
        mg1 = G * m ** (G - 1) if gamma else mp.mpf(0)
        dx = at * (mg1 * (1 - 2 * Y) * p * (1 - p) * ce + mg * (p - Y))
        dy = dat * mg * ce + at * (mg1 * (1 - 2 * p) * ce - mg * X)
        # the terms, with 1 - 2y, p - y and 1 - 2p split as SPEC §3 measures BCE's d/dx
        tx = [mg1 * (1 + 2 * Y) * p * (1 - p) * ce, mg * p, mg * Y]
        ty = [dat * mg * ce, at * mg1 * (1 + 2 * p) * ce, at * mg * X]
        return (
            float(W * at * mg * ce),
            float(W * dx),
            float(W * dy),
            float(abs(W * at) * sum(abs(t) for t in tx)),
            float(abs(W) * sum(abs(t) for t in ty)),
        )


def smoothed_terms(x, y, s, w=1.0, p=1.0, *, logits=True):
    """(loss, d/dx, d/dy) of BCE (logits: SPEC §2 with pos_weight p; else on probabilities,
    logs clamped at -100) at the smoothed target y (1 - s) + s / 2, taken exactly; d/dy
    includes the chain rule's factor 1 - s."""
    x, y, s, w, p = float(x), float(y), float(s), float(w), float(p)
    digits = _digits(x) if logits else GUARD_DIGITS + 330
    with mp.workdps(digits):
        X, Y, S, W, P = _mpf(x), _mpf(y), _mpf(s), _mpf(w), _mpf(p)
        Ys = Y * (1 - S) + S / 2
        if logits:
            lw = 1 + (P - 1) * Ys
            sp_neg = mp.log(1 + mp.exp(-X))
            loss = W * ((1 - Ys) * X + lw * sp_neg)
            dx = W * (lw * _sigmoid(X) - P * Ys)
            dys = W * ((P - 1) * sp_neg - X)
        else:
            log_x, log_q = _clamped_logs(x, X)
            loss = -W * (Ys * log_x + (1 - Ys) * log_q)
            dx = W * (X - Ys) / max(X * (1 - X), mp.mpf(1e-12))
            dys = W * (log_q - log_x)
        return float(loss), float(dx), float((1 - S) * dys)
