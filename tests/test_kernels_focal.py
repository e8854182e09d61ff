"""The sigmoid focal loss at one element in the fused kernel (formulas.hpp's `focal`, run
through `_kernels.elementwise`): against the mpmath oracle on test_focal's samples and
tolerances, against `_formulas.focal` at infinite logits and NaN, equal to the BCE kernel bit
for bit with gamma = 0 and alpha off; and the fastmath.hpp functions it brought, through the
extension's test probe (`_native.fastmath`), against mpmath and NumPy's exact ldexp."""

from __future__ import annotations

import dataclasses

import array_api_compat
import mpmath as mp
import numpy as np
import oracle
import pytest
import samples
import tolerances
from test_focal import CASES, _assert_gradients, _case, _tol

import bceloss
from bceloss import _formulas, _kernels, _validation
from bceloss._kernels import _native, launch

DTYPES = (np.float32, np.float64)


def _terms(call, focal=None):
    """(loss, d/dx, d/dy) of a validated call, elementwise, as the kernel computes them; with
    `focal`, the plan's focal options replaced by it."""
    plan = _kernels.plan(call)
    assert plan is not None
    if focal is not None:
        plan = dataclasses.replace(plan, focal=focal)
    return _kernels.elementwise(call, plan, loss=True, grad_input=True, grad_target=True)


def _focal(x, y, alpha, gamma, w=None):
    """(loss, d/dx, d/dy) of the kernel's focal loss over arrays in x's dtype; alpha < 0 is
    off. gamma goes in as float64 whatever the dtype (the plan's): a float32 gamma would be
    rounded (0.3 by 4e-8 relatively), and m^gamma with it, by -log(m^gamma) times that. The
    focal code runs even where the plan takes BCE's (gamma = 0 with alpha off)."""
    dt = x.dtype.type
    y = np.asarray(y, dt)
    if w is None:  # the public binding
        call = bceloss.sigmoid_focal_loss._bceloss_bind(x, y, alpha, gamma, "none")
    else:  # as the binding validates, with a weight
        call = _validation.validate(
            logits=True,
            input=x,
            target=y,
            weight=np.asarray(w, dt),
            pos_weight=None,
            reduction_name="none",
            focal=_validation.focal_options(alpha, gamma),
        )
    focal = (None if alpha < 0 else dt(alpha), np.float64(gamma))
    planned = _kernels.plan(call).focal
    if planned is None:  # gamma = 0, alpha off: BCE's kernel
        assert gamma == 0
        assert alpha < 0
    else:
        assert planned == focal
        assert all(type(a) is type(b) for a, b in zip(planned, focal, strict=True))
    out = _terms(call, focal=focal)
    assert all(a.dtype == dt for a in out)
    return out


def _check_against_oracle(x, y, alpha, gamma, dtype, exact):
    """test_focal's checks: the loss within _tol ulp, the gradients within _tol ulp of their
    largest term, d/dy where m is below the smallest normal number within its bound."""
    loss, dx, dy, sx, sy = exact
    got, gx, gy = _focal(x.astype(dtype), y, alpha, gamma)
    tol = _tol(np.dtype(dtype).name, gamma)
    err = tolerances.ulp_error(got, loss, dtype)
    assert err.max() <= tol, (err.max(), x[err.argmax()], y[err.argmax()])
    _assert_gradients(gx, gy, x, y, (dx, dy, sx, sy), dtype, gamma, tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("alpha", "gamma"), CASES)
def test_against_oracle(dtype, alpha, gamma):
    x, y, exact = _case(alpha, gamma)
    _check_against_oracle(x, y, alpha, gamma, dtype, exact)


def _tiny_case(dtype, alpha, gamma):
    # m = 1 - p_t below the smallest normal number: targets 0 and 1, and subnormal ones (1e-40
    # is subnormal in float32, 1e-310 in float64), where m (1 + e) = y + exp(-|x|) adds two
    # numbers of the subnormal range (x near -log(smallest normal) makes both count)
    far = {np.float32: (-88.0, -95.0, -103.0, -110.0), np.float64: (-709.0, -720.0, -745.0)}
    sub = {np.float32: 1e-40, np.float64: 1e-310}[dtype]
    x = np.array([v for v in far[dtype] for _ in range(3)] + [-1e4, 1e4, 200.0, -300.0, 1e3])
    y = np.array([sub, 0.0, 8 * sub] * len(far[dtype]) + [sub, 1.0, 1.0, 0.0, 1.0])
    y = y.astype(dtype).astype(np.float64)
    exact = [oracle.focal_terms(a, b, alpha, gamma) for a, b in zip(x, y, strict=True)]
    return x, y, np.array(exact).T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("alpha", "gamma"), [(-1.0, 0.5), (0.25, 0.3), (0.75, 0.05)])
def test_m_below_the_smallest_normal_number_against_oracle(dtype, alpha, gamma):
    x, y, exact = _tiny_case(dtype, alpha, gamma)
    _check_against_oracle(x, y, alpha, gamma, dtype, exact)
    # d/dy there is m^gamma (-a_t x) in the main, a normal number for these gamma < 1, held
    # to the oracle's digits: in float32 everywhere (m^gamma from float64); in float64 for a
    # subnormal target (from (y + exp(-|x|)) 2^S), while a target 0 or 1 (log m = -|x| -
    # log1p(exp(-|x|)), rounded) keeps test_focal's bound, gamma |x| eps, as the formula does
    _, _, gy = _focal(x.astype(dtype), y, alpha, gamma)
    dy = exact[2]
    held = np.abs(dy) >= float(np.finfo(dtype).smallest_normal)
    if dtype == np.float64:
        held &= (y != 0) & (y != 1)
    assert held.sum() >= 4
    err = tolerances.ulp_error(gy[held], dy[held], dtype)
    assert err.max() <= _tol(np.dtype(dtype).name, gamma), (err, x[held], y[held])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("alpha", "gamma"), CASES)
def test_limits_and_nan_match_the_formula(dtype, alpha, gamma):
    # infinite logits: the limits of _formulas._focal_limit, 0 * inf read as 0 (weight 0,
    # target at the logit's side); NaN in, NaN out; and a few finite logits beside them
    x = np.array([np.inf, -np.inf, np.nan, 0.0, 30.0, -30.0, 1e4, -1e4])
    y = np.array([0.0, 1.0, 0.3, 0.7, 1 - 2.0**-20])
    w = np.array([1.0, 0.0, 2.5])
    X, Y, W = (a.astype(dtype).ravel() for a in np.meshgrid(x, y, w, indexing="ij"))
    got = _focal(X, Y, alpha, gamma, W)
    xp = array_api_compat.array_namespace(X)
    with np.errstate(all="ignore"):  # the formula's where() evaluates log(0) on the side
        want = _formulas.focal(xp, X, Y, W, None if alpha < 0 else alpha, gamma,
                               grad_input=True, grad_target=True)  # fmt: skip
    eps = float(np.finfo(dtype).eps)
    limit = ~np.isfinite(X)
    for g, f in zip(got, want, strict=True):
        # at +-inf and NaN the same class: NaN, +-inf, 0 (0 * inf read as 0), or finite
        for cls in (np.isnan, np.isposinf, np.isneginf, lambda v: v == 0):
            assert np.array_equal(cls(g[limit]), cls(f[limit])), (X[limit], Y[limit], W[limit])
        # the rest within the tolerance, and a few of the smallest subnormals where the
        # formula rounds m^gamma to the dtype before it multiplies (the kernel after)
        tiny = 64 * float(np.finfo(dtype).smallest_subnormal)
        np.testing.assert_allclose(g, f, rtol=_tol(np.dtype(dtype).name, gamma) * eps, atol=tiny)
    assert np.isnan(np.array(got)[:, np.isnan(X)]).all()


def _bce(x, y):
    """(loss, d/dx, d/dy) of BCE with logits elementwise, no weight, no pos_weight: the
    kernel's logits terms."""
    call = _validation.validate(
        logits=True, input=x, target=y, weight=None, pos_weight=None, reduction_name="none"
    )
    assert call.gamma is None
    assert _kernels.plan(call).focal is None
    return _terms(call)


def _same_bits(a, b):
    """Equal to the last bit, the sign of zero included; NaN where NaN."""
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(
        a[~nan].view(np.dtype(f"u{a.itemsize}")), b[~nan].view(np.dtype(f"u{b.itemsize}"))
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_gamma_0_and_alpha_off_is_the_bce_kernel_bit_for_bit(monkeypatch, dtype):
    kinds = []  # the kernel each pass runs: _native.run's first argument
    run = launch.run_native

    def spy(*args):
        kinds.append(args[0])
        return run(*args)

    monkeypatch.setattr(launch, "run_native", spy)
    rng = np.random.default_rng(11)
    special = [np.inf, -np.inf, np.nan, 0.0, 90.0, -104.5, 746.5, -1e4]
    x = np.append(samples.logits(rng, (400,)), special).astype(dtype)
    y = np.append(samples.targets(rng, (400,)), [0.3, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0, 0.25])
    y = y.astype(dtype)
    got = _focal(x, y, -1.0, 0.0)
    want = _bce(x, y)
    assert kinds == [launch._KINDS["focal"], launch._KINDS["logits"]]  # two kernels compared
    assert _same_bits(got[0], want[0])
    assert _same_bits(got[1], want[1])
    # d/dy: -x (the formula's) against (p - 1) log1p(exp(-|x|)) + max(-x, 0) - max(x, 0), the
    # same number up to the sign of a zero
    np.testing.assert_array_equal(got[2], want[2])


# --- the fastmath.hpp functions the focal loss brought --------------------------------

# exp_neg_parts' clamp (fastmath.hpp, Constants<F>::parts_arg_max: twice exp_neg's)
PARTS_ARG_MAX = {np.float32: 2 * 104.0, np.float64: 2 * 746.0}


def _probe(name, a, j=None, pair=False):
    """fastmath.hpp's `name` at every element of a (and j), through the extension's probe:
    out, or (out, out2) for the functions returning two."""
    out = np.empty_like(a)
    out2 = np.empty_like(a) if pair else None
    _native.fastmath(name, a, out, out2, None if j is None else np.asarray(j, np.int64))
    return (out, out2) if pair else out


def _mp_ulps(got, fn, a, dtype):
    """|got - fn(a)| in ulp of dtype at the exact value, fn evaluated by mpmath (40 digits)."""
    with mp.workdps(40):
        exact = np.array([float(fn(mp.mpf(float(v)))) for v in a])
    return tolerances.ulp_error(got, exact, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_expm1_from_parts_within_2_ulp(dtype):
    rng = np.random.default_rng(12)
    a = np.concatenate([rng.uniform(0, 2, 800), 10.0 ** rng.uniform(-30, 0, 800),
                        rng.uniform(2, 50, 400)]).astype(dtype)  # fmt: skip
    out = _probe("expm1_from_parts", a)
    assert _mp_ulps(out, lambda v: mp.expm1(-v), a, dtype).max() <= 2
    out = _probe("expm1_from_parts", np.array([0.0, np.inf, np.nan, 1e30], dtype))
    np.testing.assert_array_equal(out, [0.0, -1.0, np.nan, -1.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_neg_parts_within_2_ulp_out_to_their_clamp(dtype):
    # 2^-n (1 + P) = exp(-t) beyond exp_neg's clamp too (to 0 there), |P| < 0.42
    rng = np.random.default_rng(13)
    big = PARTS_ARG_MAX[dtype]
    # the clamp is there: P at big and far beyond it are one, just below it another
    _, pm1 = _probe("exp_neg_parts", np.array([big, 1e30, 0.999 * big], dtype), pair=True)
    assert pm1[0] == pm1[1] != pm1[2]
    a = np.concatenate([rng.uniform(0, 2, 600), rng.uniform(0, 1.2 * big, 1400)])
    a = a.astype(dtype)
    out, pm1 = _probe("exp_neg_parts", a, pair=True)
    assert (np.abs(pm1) < 0.42).all()
    assert _mp_ulps(out, lambda v: mp.exp(-v), a, dtype).max() <= 2
    out, _ = _probe("exp_neg_parts", np.array([0.0, np.inf, np.nan], dtype), pair=True)
    np.testing.assert_array_equal(out, [1.0, 0.0, np.nan])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ldexp_neg_rounds_once(dtype):
    rng = np.random.default_rng(14)
    v = rng.uniform(0.5, 2.0, 4000).astype(dtype)
    top = -np.finfo(dtype).minexp + np.finfo(dtype).nmant + 8  # past the smallest subnormal
    j = rng.integers(0, top, 4000)
    j[:3] = [0, 5000, -3]  # beyond the range: 0; negative: read as 0
    out = _probe("ldexp_neg", v, j)
    np.testing.assert_array_equal(out, np.ldexp(v, -np.clip(j, 0, None)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaling_by_powers_of_2_from_their_bits_rounds_once(dtype):
    # exp's 2^-n, built from the floats' bits (2^-(j - 64) times 2^-64 where 2^-j would be
    # subnormal): equal to C's ldexp over the whole range, subnormal and zero results included
    info = np.finfo(dtype)
    j = np.arange(0, info.maxexp + 63).repeat(40)
    v = np.random.default_rng(16).uniform(0.5, 2.0, j.size).astype(dtype)
    v[1::40], v[2::40] = dtype(0.5), np.nextafter(dtype(2), dtype(0))
    want = np.ldexp(v, -j)
    assert (want == 0).any()
    assert (np.abs(want) < info.smallest_normal).any()
    np.testing.assert_array_equal(_probe("scaled_down_by_bits", v, j), want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_parts_split_exactly(dtype):
    rng = np.random.default_rng(15)
    info = np.finfo(dtype)
    v = np.concatenate([10.0 ** rng.uniform(np.log10(float(info.smallest_subnormal)), 0, 3000),
                        [float(info.smallest_subnormal), float(info.smallest_normal), 1.0]])  # fmt: skip
    v = v.astype(dtype)
    v = v[v > 0]
    k, f = _probe("log_parts", v, pair=True)
    assert (k == np.round(k)).all()
    m = 1 + f.astype(np.float64)
    assert ((m >= np.sqrt(0.5)) & (m <= np.sqrt(2))).all()
    np.testing.assert_array_equal(np.ldexp(m, k.astype(int)), v.astype(np.float64))
