"""How close is close enough: the contract's bound (SPEC §3) and the helpers that measure a
result's error in ulp of its dtype, for every test that holds a result to a tolerance.

SPEC §3: a loss is within MAX_ULP = 8 ulp of its exact value, elementwise, and a reduced
value gets one more for its final rounding; a gradient is within 8 ulp of the largest term of
its formula (its terms may cancel, leaving a result far smaller than the error they carry).
The half types (float16, bfloat16) are computed in float32 and rounded once: 1 ulp of their
own. `max_ulp(dtype)` is that bound for a dtype, in the spirit of scikit-learn's
`_atol_for_type`; `oracle` gives the exact values the bound is measured from.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

MAX_ULP = 8  # SPEC §3
HALF = ("float16", "bfloat16")
# two implementations of one formula (a kernel and the array-API form), relatively
RTOL = {"float32": 2e-6, "float64": 4e-15}


def np_dtype(dtype) -> np.dtype:
    """The NumPy dtype of a dtype or dtype name ('bfloat16' is ml_dtypes')."""
    return np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)


def is_half(dtype) -> bool:
    """Whether `dtype` (a dtype or its name) is float16 or bfloat16."""
    return np_dtype(dtype).name in HALF


def max_ulp(dtype, *, reduced=False) -> float:
    """SPEC §3's bound in ulp of `dtype`: MAX_ULP, one more for a reduced value's final
    rounding; 1 for the half types, rounded once from float32 whether reduced or not."""
    return 1.0 if is_half(dtype) else MAX_ULP + reduced


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


def ulp_error_longdouble(got, exact, dtype) -> np.ndarray:
    """|got - exact| in ulp of `dtype` at exact, for an `exact` in np.longdouble (NumPy's own
    functions there): the ulp is np.spacing at exact rounded to `dtype`, and a `got` equal to
    that rounding counts as 0. Unlike `ulp_error`, no float64 oracle is needed."""
    exact_r = exact.astype(dtype)
    same = got == exact_r
    spacing = np.spacing(np.abs(exact_r)).astype(np.longdouble)
    err = np.abs(got.astype(np.longdouble) - exact) / spacing
    return np.where(same, 0, err).astype(np.float64)


def logits_grad_scales(x, y, w=None, p=None):
    """The largest terms of SPEC §2's d/dx = w (lw sigmoid(x) - p y), lw = 1 + (p - 1) y, and
    d/dy = w ((p - 1) softplus(-x) - x), in float64 (an absent w or p is 1): what a gradient's
    error is measured against where its terms cancel."""
    arrays = (np.asarray(1.0 if a is None else a, np.float64) for a in (x, y, w, p))
    X, Y, W, P = np.broadcast_arrays(*arrays)
    with np.errstate(over="ignore", invalid="ignore"):
        sig = 1 / (1 + np.exp(-X))
        lw = 1 + (P - 1) * Y
        dx = W * np.maximum(lw * sig, P * Y)
        dy = W * np.maximum(np.abs(P - 1) * np.logaddexp(0, -X), np.abs(X))
    return dx, dy


def probs_grad_scales(x, y, w):
    """The largest terms of BCE on probabilities' d/dx = w (x - y) / max(x (1 - x), 1e-12) and
    d/dy = w (max(log1p(-x), -100) - max(log x, -100)), in float64: what a gradient's error
    is measured against where its terms cancel."""
    X, Y, W = (np.asarray(a, np.float64) for a in (x, y, w))
    with np.errstate(divide="ignore"):
        logs = np.maximum(
            np.abs(np.maximum(np.log(X), -100)), np.abs(np.maximum(np.log1p(-X), -100))
        )
    return W * np.maximum(X, Y) / np.maximum(X * (1 - X), 1e-12), W * logs


def _beyond_range(got, exact, dtype):
    """Where `exact` is beyond the largest finite number of `dtype` (float16's 65504): asserts
    that `got` is the infinity of its sign there, and returns that mask."""
    over = np.abs(exact) > float(ml_dtypes.finfo(dtype).max)
    assert (got[over] == np.sign(exact[over]) * np.inf).all()
    return over


def assert_values(got, exact, dtype, *, reduced=False):
    """Values within `max_ulp(dtype, reduced=reduced)` ulp of `exact`, elementwise; where the
    exact value is beyond the dtype's range, the infinity of its sign."""
    got = np.asarray(got, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    dt = np_dtype(dtype)
    over = _beyond_range(got, exact, dt)
    tol = max_ulp(dt, reduced=reduced)
    err = ulp_error(got[~over], exact[~over], dt)
    assert err.max(initial=0) <= tol, (dt.name, err.max(), got[~over][err.argmax()])


def assert_gradient(got, exact, largest, dtype, *, ulps=None, subnormals=0):
    """A gradient within `ulps` (default `max_ulp(dtype)`) ulp of `largest`, the largest term
    of its formula, plus `subnormals` times the dtype's smallest subnormal number; where the
    exact value is beyond the dtype's range (float16), the infinity of its sign."""
    dt = np_dtype(dtype)
    got, exact = np.asarray(got, np.float64), np.asarray(exact, np.float64)
    over = _beyond_range(got, exact, dt)
    ulps = max_ulp(dt) if ulps is None else ulps
    with np.errstate(invalid="ignore"):  # inf - inf where both overflowed
        tol = ulps * ulp(largest, dt) + subnormals * ulp(0.0, dt)
        bad = ~(np.abs(got - exact) <= tol) & ~(got == exact) & ~over
    assert not bad.any(), (dt.name, got[bad][:5], exact[bad][:5])


def assert_within_ulp_of_largest_term(got, exact, largest, dtype, ulps=MAX_ULP):
    """A gradient within `ulps` ulp of `largest`, the largest term of its formula, everywhere:
    unlike `assert_gradient`, no infinity stands for a value beyond the dtype's range."""
    tol = ulps * ulp(largest, dtype)
    bad = ~(np.abs(got - exact) <= tol) & ~(got == exact)
    assert not bad.any(), (got[bad][:5], exact[bad][:5])


def assert_close(got, want, dtype, scale=None):
    """Two computations of one formula (a kernel's and the array-API form's) agree: the
    same dtype and shape, and values within RTOL of want (of `scale`, the largest term, where
    terms cancel), or in the half types, where both round float32 values a few float32 ulp
    apart, within 1 ulp (of `scale` where given)."""
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    g, w = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf where both overflowed
        if is_half(dtype):
            if scale is None:
                err = ulp_error(g, w, dtype)
            else:
                err = np.abs(g - w) / ulp(scale, dtype)
            bad = ~(err <= 1.01) & ~(g == w)
        else:
            scale = np.abs(w) if scale is None else np.maximum(np.abs(w), np.abs(scale))
            bad = ~(np.abs(g - w) <= RTOL[np_dtype(dtype).name] * scale) & ~(g == w)
    assert not bad.any(), (g[bad][:5], w[bad][:5])
