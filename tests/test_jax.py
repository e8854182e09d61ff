"""JAX: jax.grad, value_and_grad, jit, jvp, vmap and second derivatives through the losses,
against the mpmath oracle; the [0, 1] check under tracing; the accumulation dtype."""

from __future__ import annotations

import numpy as np
import portable
import pytest
import tolerances

import bceloss

jax = pytest.importorskip("jax", reason="JAX is not installed")
jnp = jax.numpy

BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _np(a):
    return np.asarray(a.astype(jnp.float64))


@pytest.mark.parametrize(
    ("dtype", "jit"),
    [
        ("float16", True),
        ("bfloat16", True),
        ("float32", True),
        ("float64", True),
        ("float64", False),
    ],
)
def test_logits_grad_against_oracle(dtype, jit):
    # x holds +-inf and +-1e4; gradients flow to input, target, weight and pos_weight
    (x, y, w, p), (loss, dx, dy, dw, dp) = portable.logits_case()
    args = [jnp.asarray(a, dtype=dtype) for a in (x, y, w, p)]

    def f(x, y, w, p):
        return BCEL(x, y, w, "sum", p)

    vg = jax.value_and_grad(f, argnums=(0, 1, 2, 3))
    value, (gx, gy, gw, gp) = (jax.jit(vg) if jit else vg)(*args)
    assert value.dtype == gx.dtype == gw.dtype == jnp.dtype(dtype)
    tolerances.assert_values(_np(value), sum(loss.ravel().tolist()), dtype, reduced=True)
    lx, ly = tolerances.logits_grad_scales(x, y, w, p)
    tolerances.assert_gradient(_np(gx), dx, lx, dtype)
    tolerances.assert_gradient(_np(gy), dy, ly, dtype)
    rtol = 2e-2 if dtype in tolerances.HALF else 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(_np(gw), dw.sum(axis=1, keepdims=True), rtol=rtol)
    np.testing.assert_allclose(_np(gp), dp.sum(axis=0), rtol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_probabilities_grad_against_oracle(dtype):
    (x, y, w), (_, dx, dy, dw) = portable.probabilities_case()
    args = [jnp.asarray(a, dtype=dtype) for a in (x, y, w)]
    gx, gy, gw = jax.jit(jax.grad(lambda *a: BCE(*a, reduction="sum"), argnums=(0, 1, 2)))(*args)
    sx, sy = tolerances.probs_grad_scales(x, y, w)
    tolerances.assert_gradient(_np(gx), dx, sx, dtype)
    tolerances.assert_gradient(_np(gy), dy, sy, dtype)
    tolerances.assert_values(_np(gw), dw, dtype)


def test_second_derivatives_closed_form_up_to_1e4():
    # d2l/dx2 = w lw s(x) s(-x) and d2l/dxdy = -w (s(x) + p s(-x)), s the sigmoid; exact at
    # x = 0 (the kink of |x|) and finite, here 0, at |x| = 1e4.
    x = jnp.array([0.0, -1e4, 1e4, -30.0, 3.0, 0.5])
    y = jnp.array([0.25, 0.5, 0.5, 1.0, 0.0, 0.7])
    w = jnp.array([1.5, 1.0, 1.0, 2.0, 1.0, 0.5])
    p = jnp.array([2.0, 2.0, 2.0, 0.5, 3.0, 1.0])

    def f(x, y):
        return BCEL(x, y, w, "sum", p)

    hxx = jnp.diagonal(jax.jit(jax.hessian(f))(x, y))
    hxy = jnp.diagonal(jax.jit(jax.jacfwd(jax.grad(f), argnums=1))(x, y))
    s, sn = jax.nn.sigmoid(x), jax.nn.sigmoid(-x)
    lw = 1 + (p - 1) * y
    np.testing.assert_allclose(hxx, w * lw * s * sn, rtol=1e-14, atol=0)
    np.testing.assert_allclose(hxy, -w * (s + p * sn), rtol=1e-14, atol=0)
    assert hxx[0] == w[0] * lw[0] / 4
    assert np.isfinite(hxx).all()
    assert np.isfinite(hxy).all()


def test_forward_mode_and_vmap():
    x = jnp.array([[0.3, -2.0, 5.0], [1e4, -1e4, 0.0]])
    y = jnp.array([[1.0, 0.0, 0.5], [0.2, 0.2, 1.0]])
    t = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    _, tangent = jax.jit(lambda a, t: jax.jvp(lambda a: BCEL(a, y, reduction="sum"), (a,), (t,)))(
        x, t
    )
    _, g = bceloss.value_and_grad(BCEL)(x, y, reduction="sum")
    np.testing.assert_allclose(tangent, jnp.sum(g * t), rtol=1e-15)
    per_row = jax.jit(jax.vmap(lambda a, b: BCEL(a, b)))(x, y)
    rows = jnp.stack([BCEL(x[i], y[i]) for i in range(2)])
    np.testing.assert_allclose(per_row, rows, rtol=1e-15)


def test_value_and_grad_agrees_with_jax_grad():
    (x, y, w, p), _ = portable.logits_case()
    x, y, w, p = (jnp.asarray(a) for a in (x, y, w, p))
    value, (gx, gy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, w, "mean", p)
    jv, (jx, jy) = jax.value_and_grad(BCEL, argnums=(0, 1))(x, y, w, "mean", p)
    assert value == jv
    np.testing.assert_array_equal(gx, jx)
    np.testing.assert_array_equal(gy, jy)
    # and under jit, where bceloss.value_and_grad sees tracers
    jitted = jax.jit(bceloss.value_and_grad(BCEL, argnums=(0, 1)), static_argnums=3)
    value, (gx, gy) = jitted(x, y, w, "mean", p)
    np.testing.assert_allclose(gx, jx, rtol=1e-14)
    np.testing.assert_allclose(gy, jy, rtol=1e-14)


def test_probability_check_is_skipped_under_tracing():
    x = jnp.array([0.5, 1.5])
    y = jnp.array([1.0, 0.0])
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
        BCE(x, y)
    # under jit the values are not known: no check, the loss of log1p(-1.5) = NaN
    assert np.isnan(jax.jit(BCE)(x, y))


def _reduce_sum_dtypes(jaxpr):
    """The output dtypes of every reduce_sum in a jaxpr and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "reduce_sum":
            found.append(str(eqn.outvars[0].aval.dtype))
        for v in eqn.params.values():
            inner = getattr(v, "jaxpr", v)
            if hasattr(inner, "eqns"):
                found += _reduce_sum_dtypes(inner)
    return found


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_sums_accumulate_in_float32_without_x64(x64, dtype):
    # JAX without 64-bit types has no float64: sums run in float32 (never in a half type)
    with jax.enable_x64(x64):
        x = jnp.zeros(8, dtype=dtype)
        jaxpr = jax.make_jaxpr(lambda x: BCEL(x, x))(x).jaxpr
        assert _reduce_sum_dtypes(jaxpr) == ["float64" if x64 else "float32"]
        big = jnp.zeros(10**5, dtype=dtype)  # a float16 sum would overflow at 65504
        assert float(BCEL(big, big)) == pytest.approx(np.log(2), rel=1e-2)
