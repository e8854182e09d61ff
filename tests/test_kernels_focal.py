"""`_focal_terms.focal_terms`, the sigmoid focal loss at one element for the fused kernels:
against the mpmath oracle on test_focal's samples and tolerances, against `_formulas.focal` at
infinite logits and NaN, equal to `_kernels.logits_terms` bit for bit with gamma = 0 and alpha
off; and the `_fastmath` functions it brought, against mpmath and NumPy's exact ldexp."""

from __future__ import annotations

import array_api_compat
import mpmath as mp
import numpy as np
import oracle
import pytest
import samples
import tolerances
from numba import njit
from test_focal import CASES, _assert_gradients, _case, _tol

from bceloss import _fastmath, _formulas, _kernels
from bceloss._focal_terms import focal_terms

DTYPES = (np.float32, np.float64)


@njit(error_model="numpy")
def _focal_loop(x, y, w, alpha, gamma, loss, gx, gy):
    # a kernel's loop: scalars read in the loop itself, the index unsigned (no wraparound),
    # the weight a constant 1 when there is none (`_kernels.weight_at`)
    for k in range(np.uint64(x.size)):
        wk = _kernels.weight_at(w, k, x[k])
        loss[k], gx[k], gy[k] = focal_terms(x[k], y[k], wk, alpha, gamma)


def _focal(x, y, alpha, gamma, w=None):
    """(loss, d/dx, d/dy) of focal_terms over arrays in x's dtype; alpha < 0 is None (off).
    gamma goes in as float64 whatever the dtype: a float32 gamma would be rounded (0.3 by
    4e-8 relatively), and m^gamma with it, by -log(m^gamma) times that."""
    dt = x.dtype.type
    w = None if w is None else np.asarray(w, dt)
    out = [np.empty_like(x) for _ in range(3)]
    alpha = None if alpha < 0 else dt(alpha)
    _focal_loop(x, np.asarray(y, dt), w, alpha, np.float64(gamma), *out)
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


@njit(error_model="numpy")
def _bce_loop(x, y, loss, gx, gy):
    one = _fastmath.constants(x[0]).one  # as the kernel passes an absent weight
    for k in range(np.uint64(x.size)):
        loss[k], gx[k], gy[k] = _kernels.logits_terms(x[k], y[k], one, one, False, None)


def _same_bits(a, b):
    """Equal to the last bit, the sign of zero included; NaN where NaN."""
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(
        a[~nan].view(np.dtype(f"u{a.itemsize}")), b[~nan].view(np.dtype(f"u{b.itemsize}"))
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_gamma_0_and_alpha_off_is_the_bce_kernel_bit_for_bit(dtype):
    rng = np.random.default_rng(11)
    special = [np.inf, -np.inf, np.nan, 0.0, 90.0, -104.5, 746.5, -1e4]
    x = np.append(samples.logits(rng, (400,)), special).astype(dtype)
    y = np.append(samples.targets(rng, (400,)), [0.3, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0, 0.25])
    y = y.astype(dtype)
    got = _focal(x, y, -1.0, 0.0)
    want = [np.empty_like(x) for _ in range(3)]
    _bce_loop(x, y, *want)
    assert _same_bits(got[0], want[0])
    assert _same_bits(got[1], want[1])
    # d/dy: -x (the formula's) against (p - 1) log1p(exp(-|x|)) + max(-x, 0) - max(x, 0), the
    # same number up to the sign of a zero
    np.testing.assert_array_equal(got[2], want[2])


# --- the _fastmath functions the focal loss brought ------------------------------------


@njit(error_model="numpy")
def _fastmath_apply(which, a, out, out2):
    c = _fastmath.constants(a[0])
    for i in range(a.size):
        v = a[i]
        # exp_neg_parts up to its clamp (as focal_terms calls it)
        top = _fastmath.scaling(v).parts_arg_max
        t = top if v > top else v  # noqa: FURB136 (NaN passes)
        pm1, n = _fastmath.exp_neg_parts(t)
        if which == 0:
            out[i] = _fastmath.expm1_from_parts(pm1, n)
        elif which == 1:  # and scaled once
            out[i] = _fastmath.ldexp_neg(c.one + pm1, n)
            out2[i] = pm1
        elif which == 2:
            k, f = _fastmath.log_parts(v)
            out[i], out2[i] = k, f


@njit(error_model="numpy")
def _ldexp_neg(v, j, out):
    for i in range(v.size):
        out[i] = _fastmath.ldexp_neg(v[i], j[i])


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
    out = np.empty_like(a)
    _fastmath_apply(0, a, out, out.copy())
    assert _mp_ulps(out, lambda v: mp.expm1(-v), a, dtype).max() <= 2
    special = np.array([0.0, np.inf, np.nan, 1e30], dtype)
    _fastmath_apply(0, special, out := np.empty_like(special), out.copy())
    np.testing.assert_array_equal(out, [0.0, -1.0, np.nan, -1.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_neg_parts_within_2_ulp_out_to_their_clamp(dtype):
    # 2^-n (1 + P) = exp(-t) beyond exp_neg's clamp too (to 0 there), |P| < 0.42
    rng = np.random.default_rng(13)
    big = float(_fastmath._scaling(dtype).parts_arg_max)
    a = np.concatenate([rng.uniform(0, 2, 600), rng.uniform(0, 1.2 * big, 1400)])
    a = a.astype(dtype)
    out, pm1 = np.empty_like(a), np.empty_like(a)
    _fastmath_apply(1, a, out, pm1)
    assert (np.abs(pm1) < 0.42).all()
    assert _mp_ulps(out, lambda v: mp.exp(-v), a, dtype).max() <= 2
    special = np.array([0.0, np.inf, np.nan], dtype)
    _fastmath_apply(1, special, out := np.empty_like(special), out.copy())
    np.testing.assert_array_equal(out, [1.0, 0.0, np.nan])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ldexp_neg_rounds_once(dtype):
    rng = np.random.default_rng(14)
    itype = np.int32 if dtype == np.float32 else np.int64
    v = rng.uniform(0.5, 2.0, 4000).astype(dtype)
    top = -np.finfo(dtype).minexp + np.finfo(dtype).nmant + 8  # past the smallest subnormal
    j = rng.integers(0, top, 4000).astype(itype)
    j[:3] = [0, 5000, -3]  # beyond the range: 0; negative: read as 0
    out = np.empty_like(v)
    _ldexp_neg(v, j, out)
    np.testing.assert_array_equal(out, np.ldexp(v, -np.clip(j, 0, None)))


@njit(error_model="numpy")
def _scaled_down(v, j, out, portable):
    for i in range(v.size):
        if portable:
            out[i] = _fastmath.scaled_down_by_bits(v[i], j[i])
        else:
            out[i] = _fastmath.scaled_down(v[i], j[i])


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_ways_of_scaling_by_powers_of_2_round_once(dtype):
    # exp's 2^-n: vscalef where numba compiles for AVX-512 (this machine's way), the floats'
    # bits elsewhere (the portable way, run here too); both equal C's ldexp over the whole
    # range, subnormal and zero results included
    info = np.finfo(dtype)
    itype = np.int32 if dtype == np.float32 else np.int64
    j = np.arange(0, info.maxexp + 63, dtype=itype).repeat(40)
    v = np.random.default_rng(16).uniform(0.5, 2.0, j.size).astype(dtype)
    v[1::40], v[2::40] = dtype(0.5), np.nextafter(dtype(2), dtype(0))
    want = np.ldexp(v, -j)
    assert (want == 0).any()
    assert (np.abs(want) < info.smallest_normal).any()
    for portable in (False, True):
        out = np.empty_like(v)
        _scaled_down(v, j, out, portable)
        np.testing.assert_array_equal(out, want)
    asm = _scaled_down.inspect_asm(_scaled_down.signatures[-1])
    assert ("vscalef" in asm) == _fastmath._vector_scaling()


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_parts_split_exactly(dtype):
    rng = np.random.default_rng(15)
    info = np.finfo(dtype)
    v = np.concatenate([10.0 ** rng.uniform(np.log10(float(info.smallest_subnormal)), 0, 3000),
                        [float(info.smallest_subnormal), float(info.smallest_normal), 1.0]])  # fmt: skip
    v = v.astype(dtype)
    v = v[v > 0]
    k, f = np.empty_like(v), np.empty_like(v)
    _fastmath_apply(2, v, k, f)
    assert (k == np.round(k)).all()
    m = 1 + f.astype(np.float64)
    assert ((m >= np.sqrt(0.5)) & (m <= np.sqrt(2))).all()
    np.testing.assert_array_equal(np.ldexp(m, k.astype(int)), v.astype(np.float64))
