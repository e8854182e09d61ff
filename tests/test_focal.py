"""The sigmoid focal loss: against the mpmath oracle in every dtype (values and gradients),
against torchvision's formula where that formula is finite, equal to BCE with gamma = 0 and
alpha off, its limits, PyTorch and JAX autograd, every backend, and Paddle's flavour."""

from __future__ import annotations

import functools
import inspect

import ml_dtypes
import numpy as np
import oracle
import portable
import pytest
import samples
import tolerances

import bceloss
from bceloss import _call, _evaluate
from bceloss.compat import paddle as pd

FOCAL = bceloss.sigmoid_focal_loss
BCEL = bceloss.binary_cross_entropy_with_logits
DTYPES = ("float16", "bfloat16", "float32", "float64")
CASES = [(0.25, 2.0), (-1.0, 0.5), (0.75, 1.0), (-1.0, 3.5), (0.25, 0.0)]


def _tol(dtype, gamma):
    # m = 1 - p_t carries a few ulp of rounding, raised to the power gamma: the focal loss is
    # held to max(8, 4 + 2 gamma) ulp (the half types: 1 ulp, being rounded once from float32)
    return 1.0 if dtype in tolerances.HALF else max(tolerances.MAX_ULP, 4 + 2 * gamma)


@functools.cache
def _case(alpha, gamma, n=160, seed=0):
    """x (|x| up to 1e4, exact in every dtype), y, and the oracle's terms, float64."""
    rng = np.random.default_rng(seed)
    x = portable._portable(samples.logits(rng, (n,)))
    y = portable._portable(samples.targets(rng, (n,)))
    terms = np.array([oracle.focal_terms(a, b, alpha, gamma) for a, b in zip(x, y, strict=True)])
    return x, y, terms.T


def _log_m(x, y):
    """log(1 - p_t) in float64, from log-sigmoids: where m underflows it is below the
    smallest normal number of a dtype."""
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(y) - np.logaddexp(0, x), np.log1p(-y) - np.logaddexp(0, -x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("alpha", "gamma"), CASES)
def test_values_and_gradients_against_oracle(dtype, alpha, gamma):
    x, y, (loss, dx, dy, sx, sy) = _case(alpha, gamma)
    dt = tolerances.np_dtype(dtype)
    X, Y = x.astype(dt), y.astype(dt)
    got = FOCAL(X, Y, alpha, gamma)
    assert got.dtype == dt
    assert got.shape == x.shape
    tol = _tol(dtype, gamma)
    err = tolerances.ulp_error(got, loss, dt)
    assert err.max() <= tol, (err.max(), x[err.argmax()], y[err.argmax()])
    value, (gx, gy) = bceloss.value_and_grad(FOCAL, argnums=(0, 1))(X, Y, alpha, gamma, "sum")
    tolerances.assert_values(value, oracle.exact_sum(loss), dtype, reduced=True)
    assert gx.dtype == gy.dtype == dt
    _assert_gradients(gx, gy, x, y, (dx, dy, sx, sy), dt, gamma, tol)


def _assert_gradients(gx, gy, x, y, exact, dt, gamma, tol):
    """d/dx within `tol` ulp of its largest term, and d/dy too where m = 1 - p_t is a normal
    number of the computation dtype (float32 for the half types); `exact` is the oracle's
    (d/dx, d/dy, |terms of d/dx|, |terms of d/dy|)."""
    dx, dy, sx, sy = exact
    _within(gx, dx, sx, dt, tol)
    # where m is below the smallest normal number of the computation dtype, m^gamma comes from
    # log m: relative error about gamma |x| eps (documented), checked on its own below
    ct = np.float32 if tolerances.is_half(dt) else dt
    tiny = _log_m(x, y) < np.log(float(ml_dtypes.finfo(ct).smallest_normal))
    _within(gy[~tiny], dy[~tiny], sy[~tiny], dt, tol)
    eps = float(ml_dtypes.finfo(dt).eps)
    bound = 4 * (gamma + 1) * (np.abs(x[tiny]) + 1) * (eps * sy[tiny] + tolerances.ulp(0.0, dt))
    assert (np.abs(gy[tiny].astype(np.float64) - dy[tiny]) <= bound).all()


def _within(got, exact, scale, dt, ulps):
    # below the smallest normal number a factor (m^gamma) may underflow: a few dozen of
    # the smallest subnormal number off, absolutely
    tolerances.assert_gradient(got, exact, scale, dt, ulps=ulps, subnormals=64)


def _torchvision(x, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss's definition, in float64 NumPy."""
    p = 1 / (1 + np.exp(-x))
    ce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))  # BCE with logits
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


@pytest.mark.parametrize(("alpha", "gamma"), CASES)
def test_matches_torchvision_where_its_formula_is_finite(alpha, gamma):
    rng = np.random.default_rng(3)
    x = rng.uniform(-8, 8, 500)  # 1 - p_t >= 3e-4: torchvision's form keeps 12 digits
    y = samples.targets(rng, (500,))
    np.testing.assert_allclose(FOCAL(x, y, alpha, gamma), _torchvision(x, y, alpha, gamma),
                               rtol=1e-11, atol=0)  # fmt: skip
    for red, fn in (("mean", np.mean), ("sum", np.sum)):
        got = FOCAL(x, y, alpha, gamma, red)
        assert got == pytest.approx(fn(_torchvision(x, y, alpha, gamma)), rel=1e-11)


def test_where_torchvisions_formula_loses_every_digit():
    x = np.array([20.0, -30.0], np.float32)
    y = np.array([1.0, 0.0], np.float32)
    with np.errstate(over="ignore"):
        naive = _torchvision(x, y, 0.25, 2.0).astype(np.float32)
    assert (naive == 0).all()  # 1 - p_t rounds to 0 in float32
    exact = [oracle.focal_terms(a, b, 0.25, 2.0)[0] for a, b in zip(x, y, strict=True)]
    assert tolerances.ulp_error(FOCAL(x, y), exact, np.float32).max() <= tolerances.MAX_ULP
    assert (FOCAL(x, y) > 0).all()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gamma_0_and_alpha_off_is_bce_in_value_and_gradient(reduction):
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        x = np.append(samples.logits(rng, (200,)), [np.inf, -np.inf]).astype(dtype)
        y = np.append(samples.targets(rng, (200,)), [0.3, 0.6]).astype(dtype)
        np.testing.assert_array_equal(FOCAL(x, y, -1, 0, reduction), BCEL(x, y, None, reduction))
        if reduction != "none":
            got = bceloss.value_and_grad(FOCAL, argnums=(0, 1))(x, y, -1.0, 0.0, reduction)
            want = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, None, reduction)
            for a, b in zip(got[1], want[1], strict=True):
                np.testing.assert_array_equal(a, b)


def test_infinite_logits_give_limits():
    # x -> +inf: m -> 1 - y, ce ~ (1 - y) x, l ~ a_t (1 - y)^(gamma + 1) x, and
    # dl/dx -> a_t (1 - y)^(gamma + 1); x -> -inf likewise with y for 1 - y, negated
    x = np.array([np.inf, np.inf, -np.inf, -np.inf, np.inf])
    y = np.array([0.3, 1.0, 0.3, 0.0, 0.0])
    alpha, gamma = 0.25, 2.0
    at = alpha * y + (1 - alpha) * (1 - y)
    loss = FOCAL(x, y, alpha, gamma)
    np.testing.assert_array_equal(loss, [np.inf, 0, np.inf, 0, np.inf])
    _, (gx, gy) = bceloss.value_and_grad(FOCAL, argnums=(0, 1))(x, y, alpha, gamma, "sum")
    side = np.where(x > 0, 1 - y, y)
    np.testing.assert_allclose(gx, np.sign(x) * at * side ** (gamma + 1), rtol=1e-15)
    # d/dy of the coefficient of |x|: (2 alpha - 1) side^3 -+ 3 a_t side^2, times |x|
    coef = (2 * alpha - 1) * side**3 + np.where(x > 0, -1, 1) * 3 * at * side**2
    np.testing.assert_array_equal(gy, np.where(coef == 0, 0.0, np.where(coef > 0, np.inf, -np.inf)))
    assert not np.isnan(gx).any()


def test_finite_differences_of_the_reduced_loss():
    rng = np.random.default_rng(5)
    x = rng.uniform(-6, 6, 40)
    y = samples.targets(rng, (40,))
    for alpha, gamma in CASES:
        _, (gx, gy) = bceloss.value_and_grad(FOCAL, argnums=(0, 1))(x, y, alpha, gamma, "sum")
        h = 1e-6
        fx = (FOCAL(x + h, y, alpha, gamma) - FOCAL(x - h, y, alpha, gamma)) / (2 * h)
        np.testing.assert_allclose(gx, fx, rtol=1e-6, atol=1e-9)
        inner = (y > h) & (y < 1 - h)
        fy = (FOCAL(x, y + h, alpha, gamma) - FOCAL(x, y - h, alpha, gamma)) / (2 * h)
        np.testing.assert_allclose(gy[inner], fy[inner], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"alpha": "0.25"}, TypeError, "alpha must be a real number; got str"),
        ({"gamma": None}, TypeError, "gamma must be a real number; got NoneType"),
        ({"gamma": True}, TypeError, "gamma must be a real number; got bool"),
        ({"gamma": -1.0}, ValueError, "gamma must be a finite number >= 0; got -1.0"),
        ({"alpha": float("nan")}, ValueError, "alpha must be a finite number; got nan"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
    ],
)
def test_errors(kwargs, exc, msg):
    with pytest.raises(exc, match=f"^{msg}"):
        FOCAL(np.zeros(3), np.ones(3), **kwargs)


def test_signature_is_torchvisions_plus_where():
    sig = str(inspect.signature(FOCAL))
    assert sig == "(input, target, alpha=0.25, gamma=2.0, reduction='none', *, where=None)"


def test_on_every_library(typed):
    b, dtype = typed
    alpha, gamma = 0.25, 2.0
    x, y, (loss, dx, _, sx, _) = _case(alpha, gamma)
    keep = np.abs(x) < 1e3  # float16 holds these
    keep &= np.abs(loss) >= float(np.finfo(np.float64).smallest_normal)  # XLA flushes those to 0
    X, Y = b.asarray(x[keep], dtype), b.asarray(y[keep], dtype)
    got = b.to_numpy(FOCAL(X, Y, alpha, gamma))
    tol = _tol(dtype, gamma) + (1 if dtype in tolerances.HALF else 0)
    dt = tolerances.np_dtype(dtype)
    assert tolerances.ulp_error(got, loss[keep], dt).max() <= tol
    value, gx = bceloss.value_and_grad(FOCAL)(X, Y, alpha, gamma, "sum")
    tolerances.assert_values(b.to_numpy(value), oracle.exact_sum(loss[keep]), dtype, reduced=True)
    _within(b.to_numpy(gx), dx[keep], sx[keep], dt, tol)


def test_torch_autograd_first_and_second_order():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    rng = np.random.default_rng(6)
    x = torch.asarray(rng.uniform(-4, 4, 12), dtype=torch.float64).requires_grad_()
    y = torch.asarray(rng.uniform(0.05, 0.95, 12), dtype=torch.float64).requires_grad_()
    for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5), (0.5, 3.0)]:

        def f(a, b, alpha=alpha, gamma=gamma):
            return FOCAL(a, b, alpha, gamma, "sum")

        assert torch.autograd.gradcheck(f, (x, y))
        assert torch.autograd.gradgradcheck(f, (x, y))
        f(x, y).backward()
        _, (gx, gy) = bceloss.value_and_grad(FOCAL, argnums=(0, 1))(
            x.detach().numpy(), y.detach().numpy(), alpha, gamma, "sum"
        )
        np.testing.assert_allclose(x.grad.numpy(), gx, rtol=1e-14)
        np.testing.assert_allclose(y.grad.numpy(), gy, rtol=1e-14)
        x.grad = y.grad = None


@pytest.mark.slow  # 8 s: a Hessian and 20 gradients traced by JAX
def test_jax_grad_and_second_derivative():
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        x = jax.numpy.asarray(rng.uniform(-4, 4, 10))
        y = jax.numpy.asarray(rng.uniform(0, 1, 10))

        def f(a):
            return FOCAL(a, y, 0.25, 2.0, "sum")

        g = jax.jit(jax.grad(f))(x)
        _, want = bceloss.value_and_grad(FOCAL)(np.asarray(x), np.asarray(y), 0.25, 2.0, "sum")
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-14)
        # the second derivative against central differences of the closed-form gradient
        h = 1e-5
        hess = np.asarray(jax.hessian(f)(x))
        e = np.eye(10) * h
        fd = [(np.asarray(jax.grad(f)(x + e[i])) - np.asarray(jax.grad(f)(x - e[i]))) / (2 * h)
              for i in range(10)]  # fmt: skip
        np.testing.assert_allclose(hess, np.array(fd), rtol=1e-6, atol=1e-9)


# --- Paddle's flavour


def _paddle_formula(x, y, normalizer, alpha, gamma):
    """paddle.nn.functional.sigmoid_focal_loss's definition ('none'), float64 NumPy."""
    p = 1 / (1 + np.exp(-x))
    ce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    p_t = p * y + (1 - p) * (1 - y)
    loss = (alpha * y + (1 - alpha) * (1 - y)) * ce * (1 - p_t) ** gamma
    return loss if normalizer is None else loss / normalizer


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("normalizer", [None, np.array([3.0]), np.array(2.5)])
@pytest.mark.parametrize("alpha", [0.25, -0.5])  # Paddle applies a negative alpha too
def test_paddle_matches_its_formula(reduction, normalizer, alpha):
    rng = np.random.default_rng(8)
    x = rng.uniform(-8, 8, (6, 5))
    y = samples.targets(rng, (6, 5))
    want = _paddle_formula(x, y, normalizer, alpha, 2.0)
    want = {"none": want, "mean": np.mean(want), "sum": np.sum(want)}[reduction]
    got = pd.sigmoid_focal_loss(x, y, normalizer, alpha, 2.0, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-11)


def test_paddle_defaults_documented_example_and_signature():
    sig = "(logit, label, normalizer=None, alpha=0.25, gamma=2.0, reduction='sum', name=None)"
    assert str(inspect.signature(pd.sigmoid_focal_loss)) == sig
    logit = np.array([[0.97, 0.91, 0.03], [0.55, 0.43, 0.71]], np.float32)
    label = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    fg_num = np.array([2.0], np.float32)
    got = pd.sigmoid_focal_loss(logit, label, normalizer=fg_num)
    assert got.dtype == np.float32
    assert got.shape == ()
    assert float(got) == pytest.approx(0.65782464, rel=1e-6)  # Paddle's printed value
    x, y = logit.astype(np.float64), label.astype(np.float64)
    exact = sum(oracle.focal_terms(a, b)[0] for a, b in zip(x.ravel(), y.ravel(), strict=True))
    assert tolerances.ulp_error(got, exact / 2, np.float32) <= tolerances.max_ulp(
        np.float32, reduced=True
    )


def test_paddle_ignored_label_and_gradient():
    x = np.array([1.0, -2.0, 3.0])
    y = np.array([1.0, -100.0, 0.0])
    loss = pd.sigmoid_focal_loss(x, y, reduction="none")
    assert loss[1] == 0
    _, gx = bceloss.value_and_grad(pd.sigmoid_focal_loss)(x, y)
    assert gx[1] == 0
    _, want = bceloss.value_and_grad(FOCAL)(x[[0, 2]], y[[0, 2]], 0.25, 2.0, "sum")
    np.testing.assert_array_equal(gx[[0, 2]], want)


@pytest.mark.parametrize(
    ("args", "exc", "msg"),
    [
        ((np.zeros(3, np.float16), np.zeros(3, np.float16)), TypeError, "logit must have one of"),
        ((np.zeros(3), np.zeros(3, np.float32)), ValueError, "label must have the dtype of logit"),
        ((np.zeros(3), np.zeros(3), np.ones((1, 1))), ValueError,
         r"normalizer must have zero or one dimension; got shape \(1, 1\)"),
        ((np.zeros(3), np.zeros(3), np.ones(1, np.int64)), TypeError,
         "normalizer must have one of the dtypes float32, float64; got int64"),
        ((np.zeros(3), np.zeros(3), 2.0), TypeError, "normalizer must be an array"),
        ((np.zeros(3), np.zeros(3), np.ones(2)), ValueError, "normalizer must broadcast"),
        ((np.zeros(3), np.zeros(3), None, 0.25, 2.0, "MEAN_"), ValueError, "reduction must be"),
    ],
)  # fmt: skip
def test_paddle_errors(args, exc, msg):
    with pytest.raises(exc, match=f"^{msg}"):
        pd.sigmoid_focal_loss(*args)


def test_paddle_normalizer_is_differentiable_on_torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    n = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    out = pd.sigmoid_focal_loss(x, y, n)
    out.backward()
    # d/dn (L / n) = -L / n^2, with L the unnormalized sum
    total = float(pd.sigmoid_focal_loss(x, y))
    assert float(n.grad) == pytest.approx(-total / 4, rel=1e-14)


# --- m = 1 - p_t tiny: subnormal targets, targets near 0 and 1 at large logits ---------------

# slow: the oracle of (0.25, 0.3) and (0.75, 0.05) takes 2.5-3 s a dtype (cached, paid by
# whichever library comes first: so every library of theirs is marked)
TINY_CASES = [
    (0.25, 2.0),
    (-1.0, 0.5),
    pytest.param(0.25, 0.3, marks=pytest.mark.slow),
    pytest.param(0.75, 0.05, marks=pytest.mark.slow),
    (-1.0, 3.5),
    (0.75, 1.0),
]
LIBRARIES = ("numpy", "array_api_strict", "torch")  # JAX (XLA) flushes subnormals to 0


@functools.cache
def _tiny_case(dtype, alpha, gamma):
    """Where m is below the smallest normal number of `dtype`, or m^gamma is: subnormal
    targets (m = y + exp(-|x|) adds two numbers of the subnormal range for x near
    log(smallest normal)) and targets 0 and 1 at large logits, and targets a few ulp from 0
    or 1 at large logits (both signs); x, y exact in `dtype`, float64, and the oracle's terms.
    """
    info = np.finfo(dtype)
    tiny = float(info.smallest_normal)
    far = -np.log(tiny) + np.array([0.2, 7.5, 15.8, 22.5, 60.0, 9800.0])  # 88.0, 95.2, ...
    sub = [float(info.smallest_subnormal), {np.float32: 1e-40, np.float64: 1e-310}[dtype],
           tiny / 3, tiny * 0.999, 0.0]  # fmt: skip
    x = [-v for v in far for _ in sub]
    y = sub * len(far)
    x += [v for v in far for _ in (0, 1)]  # targets 1: the mirror image
    y += [1.0] * (2 * len(far))
    # targets near 0 and 1, normal numbers, at large logits of either sign
    near = [1e-30, 1e-20, 1e-8, float(info.eps), float(info.eps) / 2]
    big = [30.0, 100.0, 1e3, 1e4]
    for v in big:
        for t in near:
            x += [-v, v, v, -v]
            y += [t, 1 - t, t, 1 - t]
    x, y = (np.array(a).astype(dtype).astype(np.float64) for a in (x, y))
    exact = [oracle.focal_terms(a, b, alpha, gamma) for a, b in zip(x, y, strict=True)]
    return x, y, np.array(exact).T


def _library(name, dtype):
    """(to the library's array of `dtype`, back to float64 NumPy), skipping where absent."""
    mod = pytest.importorskip(name, reason=f"{name} is not installed")
    if name == "torch":
        return (lambda a: mod.asarray(a, dtype=getattr(mod, dtype.__name__)),
                lambda a: a.detach().double().numpy())  # fmt: skip
    if name == "array_api_strict":
        return (lambda a: mod.asarray(a, dtype=getattr(mod, dtype.__name__)),
                lambda a: np.from_dlpack(mod.astype(a, mod.float64)))  # fmt: skip
    return (lambda a: np.asarray(a, dtype)), (lambda a: np.asarray(a, np.float64))


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("alpha", "gamma"), TINY_CASES)
def test_tiny_m_against_oracle(library, dtype, alpha, gamma):
    # the array-API formula on every library (the kernel, on NumPy and PyTorch CPU arrays,
    # has its own bound there: tests/test_kernels_focal.py). The loss within
    # max(8, 4 + 2 gamma) ulp, both gradients within that of their largest term: here d/dy
    # too (no gamma |x| eps allowance: m and m^gamma are computed scaled where they are tiny)
    x, y, (loss, dx, dy, sx, sy) = _tiny_case(dtype, alpha, gamma)
    to, back = _library(library, dtype)
    X, Y = to(x), to(y)
    tol = _tol(np.dtype(dtype).name, gamma)
    got = back(_evaluate.evaluate(FOCAL._bceloss_bind(X, Y, alpha, gamma), fast=False))
    err = tolerances.ulp_error(got, loss, dtype)
    assert err.max() <= tol, (err.max(), x[err.argmax()], y[err.argmax()])
    call = FOCAL._bceloss_bind(X, Y, alpha, gamma, "sum")
    _, (gx, gy) = _evaluate.loss_and_grad(call, (0, 1), fast=False)
    _within(back(gx), dx, sx, dtype, tol)
    _within(back(gy), dy, sy, dtype, tol)
    # the samples reach what they are for: with gamma < 1, m^gamma is a normal number where
    # m is not, and so are gradients there
    held = (_log_m(x, y) < np.log(float(np.finfo(dtype).smallest_normal))) & (np.abs(dy) > 1e-300)
    assert held.sum() >= (3 if gamma < 1 else 0)


def torch_hessian_diag(fn, x):
    """The second derivatives of an elementwise sum: d/dx of the sum of its gradient."""
    import torch

    x = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(fn(x), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    return h.double().numpy()


@pytest.mark.parametrize("library", [*LIBRARIES, "jax"])
@pytest.mark.parametrize("fast", [True, False])  # the kernel (NumPy, PyTorch CPU) or formula
def test_target_outside_0_1_is_nan_on_both_paths(library, fast):
    # 1 - p_t is negative for y = 1.5 at x = 4 (and m^gamma has no real value): NaN, loss
    # and both gradients, at the outside elements only; the others as if alone
    if library == "jax":
        jnp = pytest.importorskip("jax.numpy", reason="jax is not installed")
        to, back = jnp.asarray, np.asarray  # float32 (JAX by default)
    else:
        to, back = _library(library, np.float64)
    x = np.array([-3.0, 4.0, 0.5, 20.0, -1.0, 2.0])
    y = np.array([1.5, 1.5, 0.3, -0.5, 1.0 + 2**-20, 0.0])
    inside = (y >= 0) & (y <= 1)

    def value(call):  # fast: the library's own route (PyTorch CPU tensors: NumPy views)
        return _call.run(call) if fast else _evaluate.evaluate(call, fast=False)

    for alpha, gamma in [(0.25, 2.0), (-1.0, 1.5), (0.6, 0.0)]:
        call = FOCAL._bceloss_bind(to(x), to(y), alpha, gamma, "none")
        got = back(value(call))
        _, (gx, gy) = _evaluate.loss_and_grad(
            FOCAL._bceloss_bind(to(x), to(y), alpha, gamma, "sum"), (0, 1), fast=fast
        )
        alone = FOCAL._bceloss_bind(to(x[inside]), to(y[inside]), alpha, gamma, "none")
        want = back(value(alone))
        for v in (got, back(gx), back(gy)):
            assert np.isnan(v[~inside]).all()
            assert not np.isnan(v[inside]).any()
        np.testing.assert_array_equal(got[inside], want)
    if library == "torch":  # NaN in every order: the second derivative too
        xt, yt = to(x), to(y)
        diag = torch_hessian_diag(lambda a: FOCAL(a, yt, 0.25, 2.0, "sum"), xt)
        assert np.isnan(diag[~inside]).all()
        assert not np.isnan(diag[inside]).any()
    # Paddle's ignored label -100 is outside [0, 1] too: it still gives 0, on both paths
    call = pd.sigmoid_focal_loss._bceloss_bind(x, np.where(inside, y, -100.0), None, 0.25, 2.0)
    assert _evaluate.evaluate(call, fast=fast) == _evaluate.evaluate(
        pd.sigmoid_focal_loss._bceloss_bind(x[inside], y[inside], None, 0.25, 2.0), fast=fast
    )
