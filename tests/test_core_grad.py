"""value_and_grad on the core losses: the oracle, finite differences, and its contract."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import oracle
import pytest
import samples
import tolerances
from tolerances import MAX_ULP

import bceloss

BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_logits_gradients_against_oracle(dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (30, 5)
    x = samples.logits(rng, shape).astype(dtype)
    y = samples.targets(rng, shape).astype(dtype)
    w = rng.uniform(0, 3, (30, 1)).astype(dtype)
    p = samples.positive_weights(rng, (5,)).astype(dtype)
    value, (gx, gy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, w, "sum", p)
    assert gx.dtype == dtype
    assert gy.dtype == dtype
    assert gx.shape == gy.shape == shape
    f = [a.astype(np.float64) for a in np.broadcast_arrays(x, y, w, p)]
    _, dx, dy = oracle.elementwise(oracle.logits_terms, *f)
    X, Y, W, P = f
    # sigmoid clipped at |x| = 700, not tolerances.logits_grad_scales (which lets it go to 0
    # below x = -745, and is a smaller scale from x = -700 on): this test's own measure
    sig = 1 / (1 + np.exp(-np.clip(X, -700, 700)))
    lw = 1 + (P - 1) * Y
    # the terms of SPEC §2's d/dx = w (lw sigmoid(x) - p y) and d/dy = w ((p - 1) softplus(-x) - x)
    tolerances.assert_within_ulp_of_largest_term(gx, dx, W * np.maximum(lw * sig, P * Y), dtype)
    softplus_neg = np.logaddexp(0, -X)
    tolerances.assert_within_ulp_of_largest_term(
        gy, dy, W * np.maximum(np.abs(P - 1) * softplus_neg, np.abs(X)), dtype
    )
    l, _, _ = oracle.elementwise(oracle.logits_terms, *f)
    assert tolerances.ulp_error(value, oracle.exact_sum(l), dtype) <= MAX_ULP + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_gradients_against_oracle(dtype):
    rng = np.random.default_rng(5)
    x = samples.probabilities(rng, (400,)).astype(dtype)
    y = samples.targets(rng, (400,)).astype(dtype)
    w = rng.uniform(0, 3, (400,)).astype(dtype)
    _, (gx, gy) = bceloss.value_and_grad(BCE, argnums=(0, 1))(x, y, w, "sum")
    X, Y, W = (a.astype(np.float64) for a in (x, y, w))
    _, dx, dy = oracle.elementwise(oracle.probs_terms, X, Y, W)
    sx, sy = tolerances.probs_grad_scales(X, Y, W)
    tolerances.assert_within_ulp_of_largest_term(gx, dx, sx, dtype)
    tolerances.assert_within_ulp_of_largest_term(gy, dy, sy, dtype)


@pytest.mark.parametrize("fn", [BCE, BCEL])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_match_central_differences(fn, reduction):
    rng = np.random.default_rng(1)
    shape = (4, 6)
    x = rng.uniform(0.05, 0.95, shape) if fn is BCE else rng.normal(scale=4, size=shape)
    y = rng.random(shape)
    w = rng.uniform(0.5, 2, (6,))
    kw = {"weight": w, "reduction": reduction}
    if fn is BCEL:
        kw["pos_weight"] = rng.uniform(0.1, 3, (4, 1))
    _, (gx, gy) = bceloss.value_and_grad(fn, argnums=(0, 1))(x, y, **kw)
    h = 1e-6
    for arg, grad in ((0, gx), (1, gy)):
        for idx in np.ndindex(shape):
            args = [x.copy(), y.copy()]
            args[arg][idx] += h
            up = float(fn(*args, **kw))
            args[arg][idx] -= 2 * h
            down = float(fn(*args, **kw))
            assert grad[idx] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-9)


def test_infinite_logit_gradients_are_their_limits():
    inf = np.inf
    x = np.array([inf, inf, -inf, -inf, inf])
    y = np.array([1.0, 0.25, 0.0, 0.75, 0.0])
    p = np.array([2.0, 2.0, 2.0, 0.0, 1.0])
    _, (gx, gy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, reduction="sum", pos_weight=p)
    _, dx, dy = oracle.elementwise(oracle.logits_terms, x, y, 1.0, p)
    np.testing.assert_array_equal(gx, dx)
    np.testing.assert_array_equal(gy, dy)


def test_mean_gradient_divides_by_element_count():
    x = np.array([[0.5, -1.0], [2.0, 0.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    _, g_sum = bceloss.value_and_grad(BCEL)(x, y, reduction="sum")
    _, g_mean = bceloss.value_and_grad(BCEL)(x, y)
    np.testing.assert_array_equal(g_mean, g_sum / 4)


def test_broadcast_weight_gradient_keeps_input_shape():
    x = np.zeros((3, 4))
    y = np.ones((3, 4))
    w = np.arange(4.0)
    _, g = bceloss.value_and_grad(BCEL)(x, y, w, "sum")
    assert g.shape == (3, 4)
    np.testing.assert_allclose(g, np.broadcast_to(-0.5 * w, (3, 4)), rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_gradients_have_the_input_dtype_and_are_rounded_once(dtype):
    rng = np.random.default_rng(2)
    x = rng.normal(scale=3, size=200).astype(dtype)
    y = rng.random(200).astype(dtype)
    _, (gx, gy) = bceloss.value_and_grad(BCEL, (0, 1))(x, y, reduction="sum")
    assert gx.dtype == gy.dtype == np.dtype(dtype)
    _, dx, dy = oracle.elementwise(oracle.logits_terms, x.astype(float), y.astype(float))
    assert tolerances.ulp_error(gx, dx, dtype).max() <= 1
    assert tolerances.ulp_error(gy, dy, dtype).max() <= 1


def test_integer_target_gradient_has_the_computation_dtype():
    x = np.array([0.5, -0.5], np.float32)
    _, (gx, gy) = bceloss.value_and_grad(BCEL, (0, 1))(x, np.array([1, 0]))
    assert gx.dtype == gy.dtype == np.float32


def test_loss_classes_and_argnums_forms():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.random((5, 3))
    pw = rng.uniform(0.5, 2, 3)
    module = bceloss.BCEWithLogitsLoss(reduction="sum", pos_weight=pw)
    v1, g1 = bceloss.value_and_grad(module)(x, y)
    v2, g2 = bceloss.value_and_grad(BCEL)(x, y, reduction="sum", pos_weight=pw)
    assert v1 == v2
    np.testing.assert_array_equal(g1, g2)
    assert v1 == module(x, y)
    _, (g3,) = bceloss.value_and_grad(BCEL, argnums=(0,))(x, y, reduction="sum", pos_weight=pw)
    np.testing.assert_array_equal(g3, g2)
    _, gt = bceloss.value_and_grad(module, argnums=1)(x, y)
    _, (_, gt2) = bceloss.value_and_grad(module, argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(gt, gt2)
    _, (gt3, gx3) = bceloss.value_and_grad(module, argnums=(1, 0))(x, y)
    np.testing.assert_array_equal(gt3, gt)
    np.testing.assert_array_equal(gx3, g1)


def test_value_and_grad_keeps_name_and_docs():
    f = bceloss.value_and_grad(BCEL)
    assert f.__name__ == BCEL.__name__
    assert f.__doc__ == BCEL.__doc__


def test_value_and_grad_refuses_reduction_none():
    f = bceloss.value_and_grad(BCE)
    with pytest.raises(
        ValueError, match="scalar loss: reduction must be 'mean' or 'sum'; got 'none'"
    ):
        f(np.array([0.5]), np.array([1.0]), reduction="none")
    with pytest.raises(ValueError, match="got 'none'"):
        bceloss.value_and_grad(bceloss.BCELoss(reduction="none"))(np.array([0.5]), np.array([1.0]))


@pytest.mark.parametrize("fn", [np.sum, lambda x, y: x, "binary_cross_entropy", None])
def test_value_and_grad_refuses_other_functions(fn):
    with pytest.raises(TypeError, match="fn must be a loss function of bceloss"):
        bceloss.value_and_grad(fn)


@pytest.mark.parametrize("argnums", [2, -1, (0, 0), (), True, "0", 0.0, [0, 1]])
def test_value_and_grad_refuses_bad_argnums(argnums):
    with pytest.raises(TypeError, match="argnums must be 0, 1 or a tuple"):
        bceloss.value_and_grad(BCEL, argnums=argnums)
