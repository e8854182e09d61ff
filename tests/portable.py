"""Samples every dtype holds exactly, with their mpmath oracle values, that the backend
tests hold each library to (with `tolerances.assert_values` and `assert_gradient`).

Values are rounded to bfloat16 and kept within float16's normal range (|x| in [1e-4, 1e4],
or 0, or +-inf), so the same numbers are exact in float16, bfloat16, float32 and float64
and one oracle evaluation serves every (library, dtype).
"""

from __future__ import annotations

import functools

import ml_dtypes
import mpmath as mp
import numpy as np
import oracle
import samples

BF16 = ml_dtypes.bfloat16


def _portable(a, low=1e-4):
    a = np.where(np.abs(a) < low, 0.0, a)
    return a.astype(BF16).astype(np.float64)


def grad_pos_weight(x, y, w):
    """d l / d p = w y log(1 + exp(-x)), in mpmath (SPEC §2's loss is linear in p)."""
    X, Y, W = np.broadcast_arrays(x, y, w)
    out = np.empty(X.shape)
    for idx in np.ndindex(out.shape):
        xi, yi, wi = float(X[idx]), float(Y[idx]), float(W[idx])
        if yi == 0 or wi == 0:
            out[idx] = 0.0
        elif np.isinf(xi):
            out[idx] = 0.0 if xi > 0 else np.inf
        else:
            with mp.workdps(40):
                out[idx] = float(mp.mpf(wi) * mp.mpf(yi) * mp.log1p(mp.exp(-mp.mpf(xi))))
    return out


@functools.cache
def logits_case(n=96, seed=0):
    """x (logits, +-inf included), y, w, p of shape (n // 8, 8) with w (n // 8, 1), p (8,),
    and the oracle's elementwise (loss, d/dx, d/dy, d/dw, d/dp), all float64."""
    rng = np.random.default_rng(seed)
    shape = (n // 8, 8)
    mag = 10.0 ** rng.uniform(-4, 4, shape)
    x = np.where(rng.random(shape) < 0.5, -mag, mag)
    x = np.where(rng.random(shape) < 0.05, 0.0, x)
    x[0, :4] = [np.inf, -np.inf, 1e4, -1e4]
    x = _portable(x)
    y = _portable(samples.targets(rng, shape))
    w = _portable(rng.uniform(0, 3, (shape[0], 1)))
    p = _portable(samples.positive_weights(rng, (shape[1],)))
    loss, dx, dy = oracle.elementwise(oracle.logits_terms, x, y, w, p)
    dw, _, _ = oracle.elementwise(oracle.logits_terms, x, y, 1.0, p)
    dp = grad_pos_weight(x, y, w)
    return (x, y, w, p), (loss, dx, dy, dw, dp)


@functools.cache
def probabilities_case(n=96, seed=1):
    """x (probabilities, 0 and 1 included), y, w of shape (n,), and the oracle's
    elementwise (loss, d/dx, d/dy, d/dw), all float64."""
    rng = np.random.default_rng(seed)
    lo = 10.0 ** rng.uniform(-4, 0, n) * 0.5
    x = np.where(rng.random(n) < 0.5, lo, 1 - lo)
    x[:2] = [0.0, 1.0]
    x = _portable(x)
    y = _portable(samples.targets(rng, (n,)))
    w = _portable(rng.uniform(0, 3, n))
    loss, dx, dy = oracle.elementwise(oracle.probs_terms, x, y, w)
    dw, _, _ = oracle.elementwise(oracle.probs_terms, x, y, 1.0)
    return (x, y, w), (loss, dx, dy, dw)
