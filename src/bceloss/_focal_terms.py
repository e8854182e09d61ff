"""The sigmoid focal loss at one element, for the fused kernels: `_formulas.focal` term for
term, with `_fastmath`'s branch-free exp and log and a select for every branch, so that a loop
calling `focal_terms` with scalars it has read itself vectorises.

m^gamma (m = 1 - p_t) is computed in float64 whatever the compute type and rounded once, with
the exponent gamma log m carried in two pieces (an integer multiple of ln 2 and a small rest):
rounding it whole would cost gamma |log m| half-ulps of m^gamma.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core.extending import overload

from bceloss._fastmath import (
    FLAGS,
    constants,
    exp_neg,
    exp_neg_parts,
    expm1_from_parts,
    from_bits,
    ldexp_neg,
    log1p_small,
    log1p_unit,
    log_parts,
    plus_log1p_unit,
    scaling,
    times,
    to_bits,
    weighted,
)


def _like(value, like):
    """A float `value` in the float type of `like`."""


@overload(_like)
def _like_impl(value, like):
    conv = {types.float32: np.float32, types.float64: np.float64}.get(like)
    return None if conv is None else (lambda value, like: conv(value))


def _off(alpha) -> bool:
    return alpha is None or isinstance(alpha, types.NoneType)


def alpha_t(alpha, y, q):
    """a_t = alpha y + (1 - alpha)(1 - y), q = 1 - y; 1 (a constant) when alpha is None."""


@overload(alpha_t, inline="always")
def _alpha_t(alpha, y, q):
    if _off(alpha):
        return lambda alpha, y, q: constants(y).one
    return lambda alpha, y, q: _like(alpha, y) * y + (constants(y).one - _like(alpha, y)) * q


def alpha_mix(alpha, at, ce, v):
    """(2 alpha - 1) ce + a_t v: d (a_t c) / dy where dc / dy = v; v itself when alpha is None."""


@overload(alpha_mix, inline="always")
def _alpha_mix(alpha, at, ce, v):
    if _off(alpha):
        return lambda alpha, at, ce, v: v
    return lambda alpha, at, ce, v: (
        (constants(v).two * _like(alpha, v) - constants(v).one) * ce + at * v
    )


def split_high(v):
    """The leading bits of a float64 v >= 0: split_high(v) k is exact for integers k < 2^11."""


@overload(split_high, inline="always")
def _split_high(v):
    if v != types.float64:
        return None
    mask = np.int64(-(1 << 11))  # clears the low 11 of the 52 mantissa bits
    return lambda v: from_bits(to_bits(v) & mask)


@njit(fastmath=FLAGS, cache=True, error_model="numpy", inline="always")
def _power(m, scaled, shift, u, log1p_e, gamma, normal, zero):
    """m^gamma, every float argument float64, as `_formulas._power`: from log m, where m is
    `normal` (not below the compute type's smallest normal number); else from m (1 + e) =
    near + far e (see `focal_terms`), `scaled` = (near + e) 2^shift, or where that is 0
    (`zero`: near = 0) from log m = -u - log1p(e), u = |x|, e = exp(-u)."""
    c = constants(m)
    ln2 = c.ln2_hi + c.ln2_lo
    # -log m = K ln2 - log1p(f) + extra, from log v = k ln2 + log1p(f): v = m, K = -k, extra
    # 0; or v = (near + e) 2^shift, K = shift - k, extra = log1p(e). K >= 0 is below 2^11.
    k, f = log_parts(m if normal else scaled)
    l1 = log1p_small(f)
    kk = (c.zero if normal else shift) - k
    extra = c.zero if normal else log1p_e
    t = gamma * (u + log1p_e) if zero else gamma * ((kk * ln2 - l1) + extra)
    t = c.exp_arg_max if t > c.exp_arg_max else t  # noqa: FURB136 (NaN passes)
    # exp(-t) = 2^-j exp(-rho), j = round(t / ln2), rho = t - j ln2 in [-ln2/2, ln2/2]
    jm = t * c.log2e + c.round_magic
    jf = jm - c.round_magic
    j = to_bits(jm) - to_bits(c.round_magic)
    # rho without rounding the large t: gamma K = g_hi K + g_lo K with g_hi K exact, and so
    # is g_hi K - j; what is rounded is of the size of rho (zero: t is rounded, error gamma u
    # eps, as in `_formulas`)
    g_hi = split_high(gamma)
    rho = ((g_hi * kk - jf) + (gamma - g_hi) * kk) * ln2 + gamma * (extra - l1)
    rho = (t - jf * c.ln2_hi) - jf * c.ln2_lo if zero else rho
    return ldexp_neg(exp_neg(rho), j)


@njit(fastmath=FLAGS, cache=True, error_model="numpy", inline="always")
def focal_terms(x, y, w, alpha, gamma):
    """(loss, d/dx, d/dy) of the sigmoid focal loss at one element, as `_formulas.focal`.

    Args:
        x, y, w: logit, target, weight, in the compute type (float32 or float64).
        alpha: None (alpha off: a constant of the compiled code) or a float.
        gamma: a float >= 0, best float64 whatever the compute type (m^gamma is computed in
            float64: a float32 gamma such as 0.3 is off by up to 2^-25 relatively, and
            m^gamma by -log(m^gamma) times that). 0 gives `_formulas.focal`'s gamma == 0
            branch (BCE with logits, weighted by a_t), values and gradients.

    Returns:
        (loss, d loss / d x, d loss / d y) in the compute type. NaN in x gives NaN; an
        infinite x, the limits of `_formulas._focal_limit`.
    """
    c, sc = constants(x), scaling(x)
    g = _like(gamma, x)
    g0 = g == c.zero
    u = abs(x)
    e = exp_neg(u)  # as `_kernels.logits_terms`, to the last bit
    log1p_e = log1p_unit(e)  # log1p(exp(-|x|))
    # exp(-|x|) = 2^-n (1 + P) once more, clamped further out than exp_neg: for expm1(-|x|)
    # and a scaled exp(-|x|) that does not underflow
    pm1, n = exp_neg_parts(sc.parts_arg_max if u > sc.parts_arg_max else u)  # noqa: FURB136
    relu_pos = x if x > c.zero else c.zero  # noqa: FURB136 (a select: vectorises)
    relu_neg = -x if x < c.zero else c.zero
    q = c.one - y
    nonneg = x >= c.zero
    # ce, BCE with logits as `_kernels.logits_terms` computes it: softplus(-x) =
    # max(-x, 0) + log1p(exp(-|x|)) makes (1 - y) max(x, 0) + y max(-x, 0) + log1p(exp(-|x|))
    # a sum of terms >= 0; d ce / d x = (1 - y) sigmoid(x) - y sigmoid(-x), as
    # 1 - sigmoid(x) = sigmoid(-x).
    ce = plus_log1p_unit(times(q, relu_pos, c) + times(y, relu_neg, c), e)
    inv = c.one / (c.one + e)
    er = e * inv
    sig_pos = inv if nonneg else er  # sigmoid(x)
    sig_neg = er if nonneg else inv  # sigmoid(-x)
    ce_x = q * sig_pos - y * sig_neg
    # m = 1 - p_t = y sigmoid(-x) + (1 - y) sigmoid(x) = (near + far e) / (1 + e), near = 1 - y
    # for x >= 0 and y below (far the other): terms >= 0, in float64.
    near = q if nonneg else y
    far = y if nonneg else q
    ed = np.float64(e)
    cd = constants(ed)
    md = (np.float64(near) + np.float64(far) * ed) / (cd.one + ed)
    normal = md >= c.tiny
    # m below the smallest normal number: near too, so far = 1 - near rounds to 1, and
    # m (1 + e) = near + e. Scaled by 2^S both keep their digits (e 2^S from the same P).
    near_s = near * sc.tiny_scale
    e_s = ldexp_neg(c.one + pm1, n - sc.tiny_shift)
    zero = (near == c.zero) & (md < c.tiny)
    # m^gamma stays in float64 until it has multiplied its factor: in float32 it may be
    # subnormal where the product is not
    mg = _power(md, np.float64(near_s) + np.float64(e_s), np.float64(sc.tiny_shift),
                np.float64(u), np.float64(log1p_e), np.float64(gamma), normal, zero)  # fmt: skip
    # r = sigmoid(x) sigmoid(-x) / m and ce / m. Below the smallest normal number, e and m are
    # their scaled copies' (1 + e = 1, log1p(e) = e), and ce = near |x| + log1p(e), so
    #   r = e / (near + e),  ce / m = (near |x| + e) / (near + e),
    # 1 and 1 for a target 0 or 1 (near = 0), as in `_formulas.focal`.
    some = near_s != c.zero
    rs = c.one / (near_s + e_s if some else c.one)
    r_tiny = e_s * rs if some else c.one
    ce_by_m_tiny = (near_s * u + e_s) * rs if some else c.one
    rm = c.one / (_like(md, x) if normal else c.one)
    r = sig_pos * sig_neg * rm if normal else r_tiny
    ce_by_m = ce * rm if normal else ce_by_m_tiny
    at = alpha_t(alpha, y, q)
    loss = ce if g0 else _like(times(mg, np.float64(ce), cd), x)
    # d/dx: a_t m^gamma (gamma (1 - 2y) r ce + d ce / d x), dm/dx = (1 - 2y) s c
    gx = g * (c.one - c.two * y) * times(r, ce, c) + ce_x
    gx = ce_x if g0 else _like(mg * np.float64(gx), x)
    # d/dy: m^gamma ((2 alpha - 1) ce + a_t (gamma (c - s) ce / m - x)), with
    # c - s = sigmoid(-x) - sigmoid(x) = expm1(-|x|) / (1 + exp(-|x|)) for x >= 0, negated
    # below: no cancellation near x = 0; it has the sign of -x, so the inner sum does not cancel
    tanh = expm1_from_parts(pm1, n) * inv
    c_minus_s = tanh if nonneg else -tanh
    inner = -x if g0 else g * c_minus_s * ce_by_m - x
    gy = alpha_mix(alpha, at, ce, inner)
    gy = gy if g0 else _like(mg * np.float64(gy), x)
    # x = +-inf: |x| times the coefficient of |x| in the loss, side^gamma ((2 alpha - 1) side
    # -+ a_t (gamma + 1)) with side = near = m there (`_formulas._focal_limit`)
    sign_g1 = -(g + c.one) if nonneg else g + c.one
    lim = alpha_mix(alpha, at, near, sign_g1)
    vanish = (mg == cd.zero) & (gamma > 0)  # m^gamma = 0 (0^0 is 1)
    lim = c.zero if vanish | (lim == c.zero) else lim * c.inf
    gy = lim if u == c.inf else gy
    loss, gx = weighted(at, loss, c), at * gx
    return weighted(w, loss, c), w * gx, weighted(w, gy, c)
