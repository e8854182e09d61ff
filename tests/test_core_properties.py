"""Hypothesis: random shapes, broadcast weights, dtypes and extreme values, held to the oracle."""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import tolerances
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tolerances import MAX_ULP

import bceloss

DTYPES = [np.float32, np.float64]
LOGITS = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
    st.sampled_from(
        [0.0, -0.0, 1e-30, -1e-30, 17.0, -17.0, 88.0, -88.0, 1e4, -1e4, np.inf, -np.inf, np.nan]
    ),
)
UNIT = st.one_of(st.floats(0, 1, width=32), st.sampled_from([0.0, 1.0, 0.5, 1 - 2**-24, 2**-24]))
POSITIVE = st.one_of(st.floats(0, 10, width=32), st.sampled_from([0.0, 1.0]))


@st.composite
def broadcastable(draw, shape):
    """A shape that broadcasts to `shape`: leading axes dropped, some axes set to 1."""
    drop = draw(st.integers(0, len(shape)))
    kept = shape[drop:]
    return tuple(1 if draw(st.booleans()) else n for n in kept)


def _weights(dtype, shape):
    """None, or weights in [0, 10] of a shape that broadcasts to `shape`."""
    return st.none() | broadcastable(shape).flatmap(
        lambda s: hnp.arrays(dtype, s, elements=POSITIVE)
    )


@st.composite
def logits_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    x = draw(hnp.arrays(dtype, shape, elements=LOGITS))
    y = draw(hnp.arrays(dtype, shape, elements=UNIT))
    w = draw(_weights(dtype, shape))
    p = draw(_weights(dtype, shape))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return x, y, w, p, reduction


def _reduce(values, reduction):
    if reduction == "none":
        return values
    total = oracle.exact_sum(values) if not np.isnan(values).any() else np.nan
    if np.isinf(values).any() and not np.isnan(values).any():
        total = np.inf
    if reduction == "sum":
        return total
    return total / values.size if values.size else np.nan


@pytest.mark.slow  # 2 s: 150 examples against the oracle
@settings(max_examples=150, deadline=None)
@given(logits_cases())
def test_logits_loss_matches_the_oracle(case):
    x, y, w, p, reduction = case
    got = bceloss.binary_cross_entropy_with_logits(x, y, w, reduction, p)
    exact, _, _ = oracle.elementwise(
        oracle.logits_terms, x, y, 1.0 if w is None else w, 1.0 if p is None else p
    )
    want = _reduce(exact, reduction)
    assert got.dtype == x.dtype
    assert got.shape == (x.shape if reduction == "none" else ())
    assert (tolerances.ulp_error(got, want, x.dtype) <= MAX_ULP + 1).all()


@st.composite
def probability_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    x = draw(hnp.arrays(dtype, shape, elements=UNIT))
    y = draw(hnp.arrays(dtype, shape, elements=UNIT))
    w = draw(_weights(dtype, shape))
    return x, y, w


@settings(max_examples=100, deadline=None)
@given(probability_cases())
def test_probability_loss_and_gradient_match_the_oracle(case):
    x, y, w = case
    got = bceloss.binary_cross_entropy(x, y, w, "none")
    exact, dx, _ = oracle.elementwise(oracle.probs_terms, x, y, 1.0 if w is None else w)
    assert (tolerances.ulp_error(got, exact, x.dtype) <= MAX_ULP).all()
    _, g = bceloss.value_and_grad(bceloss.binary_cross_entropy)(x, y, w, "sum")
    assert g.shape == x.shape
    scale, _ = tolerances.probs_grad_scales(x, y, 1.0 if w is None else w)
    assert (np.abs(g - dx) <= MAX_ULP * tolerances.ulp(scale, x.dtype)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_gradient_shapes_and_sums_under_broadcast(dtype, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    w_shape = data.draw(broadcastable(shape))
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(dtype)
    y = rng.random(shape).astype(dtype)
    w = rng.random(w_shape).astype(dtype)
    _, (gx, gy) = bceloss.value_and_grad(bceloss.binary_cross_entropy_with_logits, (0, 1))(
        x, y, w, "sum"
    )
    assert gx.shape == gy.shape == shape
    _, dx, dy = oracle.elementwise(oracle.logits_terms, x, y, w)
    np.testing.assert_allclose(gx, dx, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-7)
    np.testing.assert_allclose(gy, dy, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-6)
