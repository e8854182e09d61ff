"""The independent oracle: the textbook formulas of SPEC §2 in mpmath, at whatever precision
makes them exact (the naive logits form cancels |x| / ln 10 digits, so it gets that many more).

Values come back as float64 arrays of the correctly rounded result (or, with `exact=True`,
as lists of mpf), together with helpers that measure errors in ulp of a dtype.
"""

from __future__ import annotations

import math

import ml_dtypes
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
        lw = 1 + (P - 1) * Y
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


def probs_terms(x, y, w=1.0):
    """(loss, d/dx, d/dy) of BCE on a probability x, logs clamped at -100, exact."""
    x, y, w = float(x), float(y), float(w)
    if math.isnan(x):
        return math.nan, math.nan, math.nan
    with mp.workdps(GUARD_DIGITS + 330):  # 1 - x is exact for every float64 x in [0, 1]
        X, Y, W = _mpf(x), _mpf(y), _mpf(w)
        log_x = max(mp.log(X), -100) if x > 0 else mp.mpf(-100)
        log_q = max(mp.log(1 - X), -100) if x < 1 else mp.mpf(-100)
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


def ulp(value, dtype) -> np.ndarray:
    """The spacing of `dtype` at |value| (its smallest subnormal at 0)."""
    v = np.abs(np.asarray(value, dtype=np.float64))
    info = ml_dtypes.finfo(dtype)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.maximum(v, float(info.smallest_normal))))
    return np.exp2(e - info.nmant)


def ulp_error(got, exact, dtype) -> np.ndarray:
    """|got - exact| in ulp of `dtype` at exact; equal infinities and NaNs count as 0."""
    got = np.asarray(got, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    same = (got == exact) | (np.isnan(got) & np.isnan(exact))
    with np.errstate(invalid="ignore"):
        err = np.abs(got - exact) / ulp(exact, dtype)
    return np.where(same, 0.0, np.where(np.isnan(err), np.inf, err))
