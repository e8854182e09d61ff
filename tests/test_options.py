"""label_smoothing, where and reduction='weighted_mean' on both BCE forms: against the mpmath
oracle in every dtype (gradients included), their invariants (smoothing == BCE on smoothed
targets, f(x, y, where=m) == f(x[m], y[m]), weighted_mean == sum(w l) / sum(w)), no leak
from masked-out NaN and inf (autograd included), every backend, and their errors."""

from __future__ import annotations

import math

import numpy as np
import oracle
import portable
import pytest
import samples
import tolerances

import bceloss

BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits
DTYPES = ("float16", "bfloat16", "float32", "float64")


def _logits_case(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = portable._portable(samples.logits(rng, (n // 6, 6)))
    y = portable._portable(samples.targets(rng, (n // 6, 6)))
    w = portable._portable(rng.uniform(0, 3, (1, 6)))
    p = portable._portable(samples.positive_weights(rng, (6,)))
    return x, y, w, p


def _probs_case(n=120, seed=1):
    rng = np.random.default_rng(seed)
    x = portable._portable(samples.probabilities(rng, (n,)), low=1e-3)
    y = portable._portable(samples.targets(rng, (n,)))
    return x, y, portable._portable(rng.uniform(0, 3, n))


# --- label smoothing


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [0.1, 0.5, 1.0])
def test_smoothing_logits_against_oracle(dtype, s):
    x, y, w, p = _logits_case()
    loss, dx, dy = oracle.elementwise(
        lambda *a: oracle.smoothed_terms(*a[:2], s, *a[2:]), x, y, w, p
    )
    dt = tolerances.np_dtype(dtype)
    X, Y, W, P = (a.astype(dt) for a in (x, y, w, p))
    got = BCEL(X, Y, W, "none", P, label_smoothing=s)
    tolerances.assert_values(got, loss, dtype)
    value, (gx, gy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(
        X, Y, W, "sum", P, label_smoothing=s
    )
    tolerances.assert_values(value, oracle.exact_sum(loss), dtype, reduced=True)
    ys = y * (1 - s) + s / 2
    lx, ly = tolerances.logits_grad_scales(x, ys, w, p)
    tolerances.assert_gradient(gx, dx, lx, dtype)
    tolerances.assert_gradient(gy, dy, ly * (1 - s), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_smoothing_probabilities_against_oracle(dtype):
    s = 0.2
    x, y, w = _probs_case()
    loss, dx, dy = oracle.elementwise(
        lambda a, b, c: oracle.smoothed_terms(a, b, s, c, logits=False), x, y, w
    )
    X, Y, W = (a.astype(dtype) for a in (x, y, w))
    tolerances.assert_values(BCE(X, Y, W, "none", label_smoothing=s), loss, dtype)
    _, (gx, gy) = bceloss.value_and_grad(BCE, argnums=(0, 1))(X, Y, W, "sum", label_smoothing=s)
    ys = y * (1 - s) + s / 2
    np.testing.assert_allclose(gx, dx, rtol=1e-5 if dtype == "float32" else 1e-13)
    _, sy = tolerances.probs_grad_scales(x, y, w)
    tolerances.assert_gradient(gy, dy, sy * (1 - s), dtype)
    assert (ys >= 0).all()


def test_smoothing_is_bce_on_smoothed_targets():
    x, y, w, p = _logits_case(seed=2)
    s = 0.3
    ys = y * (1 - s) + s / 2
    got = BCEL(x, y, w, "none", p, label_smoothing=s)
    np.testing.assert_allclose(got, BCEL(x, ys, w, "none", p), rtol=1e-12, atol=1e-300)
    px, py, pw = _probs_case(seed=3)
    np.testing.assert_allclose(
        BCE(px, py, pw, "none", label_smoothing=s), BCE(px, py * (1 - s) + s / 2, pw, "none"),
        rtol=1e-13,
    )  # fmt: skip
    # the target gradient carries the chain rule's 1 - s; finite differences agree
    _, gy = bceloss.value_and_grad(BCEL, argnums=1)(x, y, w, "sum", p, label_smoothing=s)
    _, gys = bceloss.value_and_grad(BCEL, argnums=1)(x, ys, w, "sum", p)
    np.testing.assert_allclose(gy, gys * (1 - s), rtol=1e-12)
    xs, yt = np.array([0.3, -1.2]), np.array([0.4, 0.9])
    _, g = bceloss.value_and_grad(BCEL, argnums=1)(xs, yt, reduction="sum", label_smoothing=s)
    h = 1e-6
    fd = [(BCEL(xs, yt + h * e, reduction="sum", label_smoothing=s)
           - BCEL(xs, yt - h * e, reduction="sum", label_smoothing=s)) / (2 * h)
          for e in np.eye(2)]  # fmt: skip
    np.testing.assert_allclose(g, fd, rtol=1e-7)


def test_smoothing_zero_is_bce_and_the_classes_take_it():
    x, y, w, p = _logits_case(seed=4)
    np.testing.assert_array_equal(BCEL(x, y, w, "none", p, label_smoothing=0.0),
                                  BCEL(x, y, w, "none", p))  # fmt: skip
    loss = bceloss.BCEWithLogitsLoss(w, "mean", p, label_smoothing=0.25)
    np.testing.assert_array_equal(loss(x, y), BCEL(x, y, w, "mean", p, label_smoothing=0.25))
    assert "label_smoothing=0.25" in repr(loss)
    assert repr(bceloss.BCELoss()) == "BCELoss()"
    px, py, _ = _probs_case()
    cls = bceloss.BCELoss(reduction="sum", label_smoothing=0.1)
    np.testing.assert_array_equal(cls(px, py), BCE(px, py, None, "sum", label_smoothing=0.1))


@pytest.mark.parametrize(
    ("value", "exc", "msg"),
    [
        (-0.1, ValueError, r"label_smoothing must be in \[0, 1\]; got -0.1"),
        (1.5, ValueError, r"label_smoothing must be in \[0, 1\]; got 1.5"),
        (math.nan, ValueError, r"label_smoothing must be in \[0, 1\]; got nan"),
        ("0.1", TypeError, "label_smoothing must be a real number; got str"),
        (None, TypeError, "label_smoothing must be a real number; got NoneType"),
        (True, TypeError, "label_smoothing must be a real number; got bool"),
    ],
)
def test_smoothing_errors(value, exc, msg):
    for fn in (BCE, BCEL):
        with pytest.raises(exc, match=f"^{msg}$"):
            fn(np.full(2, 0.5), np.ones(2), label_smoothing=value)
    for cls in (bceloss.BCELoss, bceloss.BCEWithLogitsLoss):
        with pytest.raises(exc, match=f"^{msg}$"):
            cls(label_smoothing=value)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        BCEL(np.zeros(2), np.ones(2), None, "mean", None, 0.1)
    with pytest.raises(TypeError):
        BCE(np.full(2, 0.5), np.ones(2), None, "mean", 0.1)


# --- where


def _mask(shape, seed=5):
    rng = np.random.default_rng(seed)
    return rng.random(shape) < 0.6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "weighted_mean"])
def test_where_equals_indexing(dtype, reduction):
    x, y, w, p = _logits_case(seed=6)
    m = _mask(x.shape)
    dt = tolerances.np_dtype(dtype)
    X, Y, W, P = (a.astype(dt) for a in (x, y, w, p))
    Wb, Pb = np.broadcast_to(W, x.shape), np.broadcast_to(P, x.shape)
    got = BCEL(X, Y, W, reduction, P, where=m)
    want = BCEL(X[m], Y[m], Wb[m], reduction, Pb[m])
    np.testing.assert_array_equal(got, want)
    f = bceloss.value_and_grad(BCEL, argnums=(0, 1))
    value, (gx, gy) = f(X, Y, W, reduction, P, where=m)
    want_value, (wx, wy) = f(X[m], Y[m], Wb[m], reduction, Pb[m])
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(gx[m], wx)
    np.testing.assert_array_equal(gy[m], wy)
    assert (gx[~m] == 0).all()
    assert (gy[~m] == 0).all()
    px, py, pw = _probs_case(seed=7)
    pm = _mask(px.shape, seed=8)
    PX, PY, PW = (a.astype(dt) for a in (px, py, pw))
    np.testing.assert_array_equal(
        BCE(PX, PY, PW, reduction, where=pm), BCE(PX[pm], PY[pm], PW[pm], reduction)
    )


def test_where_none_reduction_is_zero_outside_and_broadcasts():
    x, y, w, p = _logits_case(seed=9)
    cols = np.array([True, False, True, True, False, True])  # (6,): a mask per label
    got = BCEL(x, y, w, "none", p, where=cols)
    np.testing.assert_array_equal(got[:, ~cols], 0)
    np.testing.assert_array_equal(got[:, cols], BCEL(x, y, w, "none", p)[:, cols])
    assert BCEL(x, y, w, "mean", p, where=cols) == pytest.approx(
        BCEL(x, y, w, "none", p)[:, cols].mean(), rel=1e-14
    )
    # nothing kept: 'mean' is NaN (an empty mean), 'sum' is 0, gradients are 0
    none = np.zeros(x.shape, bool)
    assert np.isnan(BCEL(x, y, where=none))
    assert BCEL(x, y, reduction="sum", where=none) == 0
    _, g = bceloss.value_and_grad(BCEL)(x, y, where=none)
    assert (g == 0).all()


@pytest.mark.parametrize("size", [1, 300, 20000])  # the kernel from 1 element; blocks
def test_weighted_mean_without_a_weight_is_mean_where_nothing_is_kept(size):
    # 'weighted_mean' without a weight is 'mean' (docs/options.md), the gradients of a
    # mask keeping nothing included: 0, not 0 / 0 (NumPy's value_and_grad, PyTorch's
    # autograd); with a weight the weights' sum 0 gives NaN
    rng = np.random.default_rng(size)
    x, y = rng.normal(0, 3, (size, 2)), rng.random((size, 2))
    none = np.zeros(x.shape, bool)
    for wrt in ((0,), (0, 1)):
        grad = bceloss.value_and_grad(BCEL, argnums=wrt)
        value, grads = grad(x, y, reduction="weighted_mean", where=none)
        assert np.isnan(value)
        assert all((g == 0).all() for g in np.atleast_1d(grads) if g is not None)
    _, g = bceloss.value_and_grad(BCEL)(x, y, np.ones(2), reduction="weighted_mean", where=none)
    assert np.isnan(g).all()
    torch = pytest.importorskip("torch", reason="PyTorch is optional")
    X = torch.from_numpy(x).requires_grad_()
    for reduction in ("mean", "weighted_mean"):
        for _ in range(3):  # validated, remembered, kept
            loss = BCEL(X, torch.from_numpy(y), reduction=reduction, where=torch.from_numpy(none))
            (gx,) = torch.autograd.grad(loss, X)
            assert torch.isnan(loss), reduction
            assert (gx == 0).all(), reduction


def _poisoned(seed=10):
    x, y, w, p = _logits_case(seed=seed)
    m = _mask(x.shape, seed=seed)
    x, y = x.copy(), y.copy()
    x[~m] = np.where(np.arange((~m).sum()) % 2, np.nan, np.inf)
    y[~m] = np.nan
    w = np.broadcast_to(w, x.shape).copy()
    w[~m] = np.inf
    return x, y, w, p, m


def test_nan_and_inf_masked_out_do_not_leak():
    x, y, w, p, m = _poisoned()
    for red in ("mean", "sum", "weighted_mean"):
        value, (gx, gy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, w, red, p, where=m)
        assert np.isfinite(value)
        assert np.isfinite(gx).all()
        assert np.isfinite(gy).all()
    assert np.isfinite(BCEL(x, y, w, "none", p, where=m)).all()
    # probabilities: masked-out values outside [0, 1] are padding, not an error
    px = np.where(m, 1 / (1 + np.exp(-np.nan_to_num(x))), 7.0)
    assert np.isfinite(BCE(px, np.nan_to_num(y), w, "mean", where=m))
    with pytest.raises(ValueError, match="must hold probabilities"):
        BCE(px, np.nan_to_num(y), w, "mean")


def test_no_leak_through_torch_autograd_first_and_second_order():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    x, y, w, p, m = _poisoned(seed=11)
    X, Y, W, P = (torch.asarray(a).requires_grad_() for a in (x, y, w, p))
    M = torch.asarray(m)
    for red in ("mean", "weighted_mean"):
        out = BCEL(X, Y, W, red, P, where=M)
        gx, gy, gw, gp = torch.autograd.grad(out, (X, Y, W, P), create_graph=True)
        for g in (gx, gy, gw, gp):
            assert torch.isfinite(g).all()
        assert (gx[~M] == 0).all()
        (hx,) = torch.autograd.grad(gx.sum(), (X,))
        assert torch.isfinite(hx).all()
    # on the kept elements, autograd is value_and_grad (input and target)
    out = BCEL(X, Y, W, "mean", P, where=M)
    out.backward()
    _, (vx, vy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, w, "mean", p, where=m)
    np.testing.assert_allclose(X.grad.numpy(), vx, rtol=1e-14)
    np.testing.assert_allclose(Y.grad.numpy(), vy, rtol=1e-14)


@pytest.mark.slow  # 3.5 s: JAX traces a gradient and a second derivative
def test_no_leak_through_jax_grad():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    x, y, w, p, m = _poisoned(seed=12)
    with jax.enable_x64(True):
        J = [jax.numpy.asarray(a) for a in (x, y, w, p, m)]

        def f(a, b, c):
            return BCEL(a, b, c, "weighted_mean", J[3], where=J[4])

        gx, gy, gw = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(*J[:3])
        for g in (gx, gy, gw):
            assert np.isfinite(np.asarray(g)).all()
        _, (vx, vy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(
            x, y, w, "weighted_mean", p, where=m
        )
        np.testing.assert_allclose(np.asarray(gx), vx, rtol=1e-14)
        np.testing.assert_allclose(np.asarray(gy), vy, rtol=1e-14)
        hx = jax.grad(lambda a: jax.grad(f)(a, *J[1:3]).sum())(J[0])
        assert np.isfinite(np.asarray(hx)).all()


@pytest.mark.parametrize(
    ("where", "exc", "msg"),
    [
        (np.ones(6, np.int64), TypeError, "where must have a bool dtype; got int64"),
        (np.ones(5, bool), ValueError, r"where must broadcast to input shape \(20, 6\)"),
        ([True] * 6, TypeError, "where must be an array"),
    ],
)
def test_where_errors(where, exc, msg):
    x, y, _, _ = _logits_case()
    with pytest.raises(exc, match=f"^{msg}"):
        BCEL(x, y, where=where)


# --- weighted_mean


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_mean_against_oracle(dtype):
    x, y, w, p = _logits_case(seed=13)
    m = _mask(x.shape, seed=13)
    loss, _, _ = oracle.elementwise(oracle.logits_terms, x, y, w, p)
    wb = np.broadcast_to(w, x.shape)
    exact = oracle.exact_sum(loss[m]) / oracle.exact_sum(wb[m])
    dt = tolerances.np_dtype(dtype)
    X, Y, W, P = (a.astype(dt) for a in (x, y, w, p))
    got = BCEL(X, Y, W, "weighted_mean", P, where=m)
    assert got.dtype == dt
    tolerances.assert_values(got, exact, dtype, reduced=True)
    # d/dx = w dl/dx / sum(w): the gradient of 'sum' over the weights' sum
    _, g = bceloss.value_and_grad(BCEL)(X, Y, W, "weighted_mean", P, where=m)
    _, gs = bceloss.value_and_grad(BCEL)(X, Y, W, "sum", P, where=m)
    total = oracle.exact_sum(wb[m].astype(dt))
    np.testing.assert_allclose(g.astype(float), gs.astype(float) / total,
                               rtol=2e-2 if dtype in tolerances.HALF else 1e-6)  # fmt: skip


def test_weighted_mean_without_weight_is_mean_and_zero_weights_give_nan():
    x, y, _, p = _logits_case(seed=14)
    np.testing.assert_array_equal(BCEL(x, y, None, "weighted_mean", p),
                                  BCEL(x, y, None, "mean", p))  # fmt: skip
    assert np.isnan(BCEL(x, y, np.zeros(6), "weighted_mean"))
    px, py, pw = _probs_case()
    want = np.sum(pw * BCE(px, py, None, "none")) / np.sum(pw)
    assert BCE(px, py, pw, "weighted_mean") == pytest.approx(want, rel=1e-13)
    loss = bceloss.BCELoss(pw, "weighted_mean")
    np.testing.assert_array_equal(loss(px, py), BCE(px, py, pw, "weighted_mean"))


def test_weighted_mean_weight_gradient_on_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    x, y, w, p = _logits_case(seed=15)
    X, Y, P = (torch.asarray(a) for a in (x, y, p))
    W = torch.asarray(w).requires_grad_()
    out = BCEL(X, Y, W, "weighted_mean", P)
    out.backward()
    # against PyTorch's own autograd of sum(w l) / sum(w)
    W2 = torch.asarray(w).requires_grad_()
    l = torch.nn.functional.binary_cross_entropy_with_logits(X, Y, reduction="none", pos_weight=P)
    ref = (W2 * l).sum() / W2.expand_as(l).sum()
    ref.backward()
    assert float(out.detach()) == pytest.approx(float(ref.detach()), rel=1e-13)
    np.testing.assert_allclose(W.grad.numpy(), W2.grad.numpy(), rtol=1e-10, atol=1e-15)


# --- every backend


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean"])
def test_options_on_every_library(typed, reduction):
    b, dtype = typed
    x, y, w, p = _logits_case(seed=16)
    x = np.clip(x, -1e3, 1e3)  # float16 holds the losses
    m = _mask(x.shape, seed=16)
    want = BCEL(x, y, w, reduction, p, where=m, label_smoothing=0.1)
    _, want_g = bceloss.value_and_grad(BCEL)(x, y, w, reduction, p, where=m, label_smoothing=0.1)
    X, Y, W, P = (b.asarray(a, dtype) for a in (x, y, w, p))
    M = b.asarray(m)
    got = BCEL(X, Y, W, reduction, P, where=M, label_smoothing=0.1)
    value, g = bceloss.value_and_grad(BCEL)(X, Y, W, reduction, P, where=M, label_smoothing=0.1)
    rtol = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 1e-5, "float64": 1e-13}[dtype]
    np.testing.assert_allclose(b.to_numpy(got), want, rtol=rtol)
    np.testing.assert_allclose(b.to_numpy(value), want, rtol=rtol)
    np.testing.assert_allclose(b.to_numpy(g), want_g, rtol=rtol, atol=rtol * np.abs(want_g).max())
    if b.label == "dask":
        assert b.module().Array in type(got).__mro__  # the count and the weights' sum stay lazy
