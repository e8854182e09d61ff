"""Core loss values against the mpmath oracle: elementwise, reduced, every dtype."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import oracle
import pytest
import samples
import tolerances
from tolerances import MAX_ULP

import bceloss

BF16 = ml_dtypes.bfloat16
FULL = [np.float32, np.float64]
HALF = [np.float16, BF16]


def _cast(dtype, *arrays):
    return [None if a is None else np.asarray(a).astype(dtype) for a in arrays]


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


def _logits_case(seed, shape=(40, 7), pw_shape=(7,), w_shape=(40, 1), dtype=np.float32):
    rng = np.random.default_rng(seed)
    x, y = samples.logits(rng, shape), samples.targets(rng, shape)
    p = samples.positive_weights(rng, pw_shape) if pw_shape is not None else None
    w = rng.uniform(0, 3, w_shape) if w_shape is not None else None
    return _cast(dtype, x, y, w, p)


def _oracle_logits(x, y, w, p):
    args = [_f64(x), _f64(y), 1.0 if w is None else _f64(w), 1.0 if p is None else _f64(p)]
    return oracle.elementwise(oracle.logits_terms, *args)


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("w_shape", "pw_shape"), [(None, None), ((40, 1), (7,)), ((7,), None)])
def test_logits_elementwise_within_8_ulp(dtype, seed, w_shape, pw_shape):
    x, y, w, p = _logits_case(seed, w_shape=w_shape, pw_shape=pw_shape, dtype=dtype)
    got = bceloss.binary_cross_entropy_with_logits(x, y, w, "none", p)
    exact, _, _ = _oracle_logits(x, y, w, p)
    assert got.dtype == dtype
    assert got.shape == x.shape
    err = tolerances.ulp_error(got, exact, dtype)
    assert err.max() <= MAX_ULP, (err.max(), x.ravel()[err.argmax()], y.ravel()[err.argmax()])


@pytest.mark.parametrize("dtype", FULL)
@pytest.mark.parametrize("seed", range(4))
def test_probabilities_elementwise_within_8_ulp(dtype, seed):
    rng = np.random.default_rng(seed)
    x, y, w = _cast(
        dtype,
        samples.probabilities(rng, (300,)),
        samples.targets(rng, (300,)),
        rng.uniform(0, 3, (300,)),
    )
    got = bceloss.binary_cross_entropy(x, y, w, reduction="none")
    exact, _, _ = oracle.elementwise(oracle.probs_terms, _f64(x), _f64(y), _f64(w))
    err = tolerances.ulp_error(got, exact, dtype)
    assert err.max() <= MAX_ULP


@pytest.mark.parametrize("dtype", HALF)
# slow: the oracle of 500 logits up to 6e4 (tens of thousands of digits), 5 s a dtype
@pytest.mark.parametrize("form", [pytest.param("logits", marks=pytest.mark.slow), "probabilities"])
def test_half_types_are_rounded_once(dtype, form):
    # Computed in float32 and rounded once: within 1 ulp of the half type at the exact value.
    rng = np.random.default_rng(7)
    shape = (500,)
    if form == "logits":
        x, y = _cast(dtype, samples.logits(rng, shape, max_abs=6e4), samples.targets(rng, shape))
        got = bceloss.binary_cross_entropy_with_logits(x, y, reduction="none")
        exact, _, _ = oracle.elementwise(oracle.logits_terms, _f64(x), _f64(y))
    else:
        x, y = _cast(dtype, samples.probabilities(rng, shape), samples.targets(rng, shape))
        got = bceloss.binary_cross_entropy(x, y, reduction="none")
        exact, _, _ = oracle.elementwise(oracle.probs_terms, _f64(x), _f64(y))
    assert got.dtype == np.dtype(dtype)
    exact_in_range = np.abs(exact) <= float(ml_dtypes.finfo(dtype).max)
    err = tolerances.ulp_error(got[exact_in_range], exact[exact_in_range], dtype)
    assert err.max() <= 1.0


@pytest.mark.parametrize("dtype", [*FULL, *HALF])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_against_exact_sum(dtype, reduction):
    x, y, w, p = _logits_case(11, shape=(64, 9), pw_shape=(9,), w_shape=(64, 1), dtype=dtype)
    got = bceloss.binary_cross_entropy_with_logits(x, y, w, reduction, p)
    exact, _, _ = _oracle_logits(x, y, w, p)
    total = oracle.exact_sum(exact)
    want = total / exact.size if reduction == "mean" else total
    assert got.shape == ()
    assert got.dtype == np.dtype(dtype)
    assert isinstance(got, np.ndarray)
    # every term >= 0 and within 8 ulp (half types: float32 math), then one rounding
    if abs(want) > float(ml_dtypes.finfo(dtype).max):
        assert got == np.inf  # a float16 'sum' can exceed 65504; the mean cannot
        return
    tol = tolerances.max_ulp(dtype, reduced=True)
    assert tolerances.ulp_error(got, want, dtype) <= tol


def test_mean_divides_by_element_count_not_weight_sum():
    x = np.array([0.5, -1.0, 2.0, 0.0])
    y = np.array([1.0, 0.0, 1.0, 0.0])
    w = np.array([0.0, 0.0, 3.0, 1.0])
    exact, _, _ = oracle.elementwise(oracle.logits_terms, x, y, w)
    got = bceloss.binary_cross_entropy_with_logits(x, y, w)
    assert got == pytest.approx(oracle.exact_sum(exact) / 4, rel=1e-15)


def test_float16_mean_of_a_million_elements_does_not_overflow():
    # The sum (~7e5) is far beyond float16's max (65504); a float16 accumulator gives inf.
    x = np.zeros(10**6, np.float16)
    y = np.zeros(10**6, np.float16)
    got = bceloss.binary_cross_entropy_with_logits(x, y)
    assert got.dtype == np.float16
    assert float(got) == float(np.float16(math.log(2)))
    assert float(bceloss.binary_cross_entropy(np.full(10**6, 0.5, np.float16), y)) == float(
        np.float16(math.log(2))
    )


def test_float32_mean_of_many_elements_matches_float64():
    rng = np.random.default_rng(3)
    x = rng.normal(scale=3, size=2 * 10**6).astype(np.float32)
    y = rng.random(2 * 10**6).astype(np.float32)
    got = float(bceloss.binary_cross_entropy_with_logits(x, y))
    want = float(
        bceloss.binary_cross_entropy_with_logits(x.astype(np.float64), y.astype(np.float64))
    )
    assert abs(got - want) <= 0.5 * np.spacing(np.float32(want))


@pytest.mark.parametrize("dtype", FULL)
def test_infinite_logits_give_their_limits(dtype):
    inf = np.inf
    x = np.array([inf, inf, inf, -inf, -inf, -inf, inf, -inf], dtype)
    y = np.array([1.0, 0.0, 0.25, 0.0, 1.0, 0.25, 0.5, 0.5], dtype)
    w = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 0.0, 1.0], dtype)
    p = np.array([1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 1.0, 0.0], dtype)
    got = bceloss.binary_cross_entropy_with_logits(x, y, w, "none", p)
    want, _, _ = oracle.elementwise(oracle.logits_terms, x, y, w, p)
    np.testing.assert_array_equal(got, want.astype(dtype))
    np.testing.assert_array_equal(got, np.array([0, inf, inf, 0, inf, 0, 0, 0], dtype))


def test_nan_propagates():
    x = np.array([np.nan, 0.0, 1.0])
    y = np.array([0.5, np.nan, 1.0])
    out = bceloss.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert np.isnan(out[:2]).all()
    assert np.isfinite(out[2])
    assert np.isnan(bceloss.binary_cross_entropy_with_logits(x, y))
    probs = bceloss.binary_cross_entropy(
        np.array([np.nan, 0.5]), np.array([1.0, 1.0]), reduction="none"
    )
    assert np.isnan(probs[0])
    assert probs[1] == pytest.approx(math.log(2), rel=1e-15)


def test_probability_logs_are_clamped_at_minus_100():
    x = np.array([0.0, 1.0, 0.0, 1.0, 1e-50])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    got = bceloss.binary_cross_entropy(x, y, reduction="none")
    np.testing.assert_array_equal(got, [100.0, 100.0, 0.0, 0.0, 100.0])


@pytest.mark.parametrize(
    "fn", [bceloss.binary_cross_entropy, bceloss.binary_cross_entropy_with_logits]
)
def test_empty_input(fn):
    e = np.zeros((0, 3), np.float32)
    assert np.isnan(fn(e, e))
    assert fn(e, e, reduction="sum") == 0.0
    assert fn(e, e, reduction="sum").dtype == np.float32
    assert fn(e, e, reduction="none").shape == (0, 3)


def test_zero_dimensional_input():
    got = bceloss.binary_cross_entropy_with_logits(np.array(0.0), np.array(1.0), reduction="none")
    assert isinstance(got, np.ndarray)
    assert got.shape == ()
    assert got == pytest.approx(math.log(2), rel=1e-15)


def test_integer_and_bool_targets_are_cast_to_the_input_dtype():
    x = np.array([0.5, -2.0, 3.0], np.float32)
    for target in (np.array([1, 0, 1]), np.array([True, False, True])):
        got = bceloss.binary_cross_entropy_with_logits(x, target, reduction="none")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(
            got,
            bceloss.binary_cross_entropy_with_logits(
                x, target.astype(np.float32), reduction="none"
            ),
        )


@pytest.mark.parametrize(
    ("xdt", "ydt", "want"),
    [
        (np.float32, np.float64, np.float64),
        (np.float64, np.float32, np.float64),
        (np.float16, np.float32, np.float32),
        (np.float16, BF16, np.float32),
        (BF16, np.float16, np.float32),
        (BF16, BF16, BF16),
    ],
)
def test_input_and_target_dtypes_promote(xdt, ydt, want):
    x = np.array([0.25, -1.5], xdt)
    y = np.array([1.0, 0.0], ydt)
    assert bceloss.binary_cross_entropy_with_logits(x, y).dtype == np.dtype(want)
    p = np.array([0.25, 0.5], xdt)
    assert bceloss.binary_cross_entropy(p, y).dtype == np.dtype(want)


def test_weights_take_the_computation_dtype():
    # As in PyTorch: a float64 weight does not promote a float32 loss.
    x = np.array([0.25, -1.5], np.float32)
    y = np.array([1.0, 0.0], np.float32)
    w = np.array([0.5, 2.0])
    assert bceloss.binary_cross_entropy_with_logits(x, y, w, pos_weight=w).dtype == np.float32


@pytest.mark.parametrize(
    ("x", "y", "w", "fn", "documented", "exact"),
    [
        (
            [[-0.8, 1.2, 0.7], [-0.1, -0.4, 0.7]],
            [[0.3, 0.8, 1.2], [-0.6, 0.1, 2.2]],
            None,
            bceloss.binary_cross_entropy_with_logits,
            0.3463612,
            None,
        ),
        (
            [5.0, 1.0, 3.0],
            [1.0, 0.0, 1.0],
            None,
            bceloss.binary_cross_entropy_with_logits,
            0.45618808,
            None,
        ),
        (
            [0.2, 0.7, 0.1],
            [0.0, 1.0, 0.0],
            [1.0, 2.0, 2.0],
            bceloss.binary_cross_entropy,
            0.38240486,
            None,
        ),
    ],
)
def test_documented_examples(x, y, w, fn, documented, exact):
    f32 = np.float32
    x, y = np.array(x, f32), np.array(y, f32)
    w = None if w is None else np.array(w, f32)
    got = fn(x, y, w)
    assert got.dtype == f32
    # The references compute in float32 and print a value within 2 ulp of the exact one;
    # ours is within 1 ulp of the exact loss (mpmath on the float32-rounded inputs).
    assert tolerances.ulp_error(got, documented, f32) <= 2
    terms = (
        oracle.logits_terms
        if fn is bceloss.binary_cross_entropy_with_logits
        else oracle.probs_terms
    )
    args = [x, y] if w is None else [x, y, w]
    exact_values, _, _ = oracle.elementwise(terms, *args)
    assert tolerances.ulp_error(got, oracle.exact_sum(exact_values) / x.size, f32) <= 1
