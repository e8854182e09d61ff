"""The elementwise math of the BCE family, written once against an array API namespace.

x: input (logits or probabilities), y: target, w: weight, p: pos_weight (None means 1).
Each function returns (loss, d loss / d x, d loss / d y), computing only what is asked
for and sharing the intermediates. This is the reference the fast paths are tested against.
"""

from __future__ import annotations

import decimal
import functools
import math
import struct

import array_api_compat

LOG_FLOOR = -100.0  # PyTorch, Paddle and MindSpore clamp log(x) and log(1 - x) here
GRAD_EPS = 1e-12  # ... and the denominator x (1 - x) of the gradient here


def _zero(xp, like):
    return xp.zeros((), dtype=like.dtype, device=array_api_compat.device(like))


def _mul_limit(xp, a, b):
    """a * b, reading 0 * inf as 0: the loss's limit as a logit goes to +-inf."""
    prod = a * b
    return xp.where((a == 0) & xp.isinf(b), _zero(xp, prod), prod)


def _weighted(xp, w, v):
    if v is None or w is None:
        return v
    return _mul_limit(xp, w, v)


def _split(xp, x):
    """x >= 0, max(x, 0), max(-x, 0), |x| and exp(-|x|).

    |x|, max(x, 0) and max(-x, 0) all split at the one test x >= 0, so that autograd, which
    differentiates the gradients below for second order, takes every kink from the same
    side: the pieces then join into the smooth function (abs and clip disagree at 0).
    """
    nonneg = x >= 0
    zero = _zero(xp, x)
    relu_pos = xp.where(nonneg, x, zero)
    relu_neg = xp.where(nonneg, zero, -x)
    abs_x = relu_pos + relu_neg
    return nonneg, relu_pos, relu_neg, abs_x, xp.exp(-abs_x)


def smoothed(xp, y, smoothing=0.0):
    """(y', 1 - y') for the smoothed target y' = y (1 - s) + s / 2 (Keras' label smoothing).

    1 - y' is computed as (1 - y)(1 - s) + s / 2, a sum of terms >= 0 for y in [0, 1]:
    1 - y' itself would cancel where y' is near 1. With s = 0 it is (y, 1 - y).
    """
    q = 1 - y
    if not smoothing:
        return y, q
    keep, half = 1 - smoothing, smoothing / 2
    return y * keep + half, q * keep + half


def logits(
    xp, x, y, w=None, p=None, *, smoothing=0.0, loss=True, grad_input=False, grad_target=False
):
    """BCE with logits: l = w ((1 - y) x + lw softplus(-x)), lw = 1 + (p - 1) y.

    With `smoothing` s, y is the smoothed target (see `smoothed`) and d l / d y carries the
    chain rule's factor 1 - s.
    """
    nonneg, relu_pos, relu_neg, abs_x, e = _split(xp, x)
    log1p_e = xp.log1p(e)
    y, q = smoothed(xp, y, smoothing)
    py = y if p is None else p * y
    l = gx = gy = None
    if loss:
        # softplus(-x) = max(-x, 0) + log1p(exp(-|x|)) turns (1 - y) x + lw softplus(-x) into
        #   (1 - y) max(x, 0) + p y max(-x, 0) + lw log1p(exp(-|x|)),  lw = (1 - y) + p y,
        # a sum of terms >= 0 for y in [0, 1] and p >= 0: nothing cancels. One of the first
        # two is 0: they are (1 - y) |x| where x >= 0 and p (y |x|) elsewhere (p y first
        # would underflow for a subnormal p or y, and |x| then scale up the loss).
        body = log1p_e if p is None else (q + py) * log1p_e
        relu_part = _mul_limit(xp, xp.where(nonneg, q, y), abs_x)
        if p is not None:
            relu_part = xp.where(nonneg, relu_part, _mul_limit(xp, p, relu_part))
        l = relu_part + body
    if grad_input:
        # lw sigmoid(x) - p y = (1 - y) sigmoid(x) - p y sigmoid(-x), since
        # 1 - sigmoid(x) = sigmoid(-x): no 1 - sigmoid(x) computed for large x.
        r = 1 / (1 + e)
        er = e * r
        sig_pos = xp.where(nonneg, r, er)
        sig_neg = xp.where(nonneg, er, r)
        gx = q * sig_pos - py * sig_neg
    if grad_target:
        # (p - 1) softplus(-x) - x, with softplus(-x) = max(-x, 0) + log1p(exp(-|x|)) and
        # x = max(x, 0) - max(-x, 0), is (p - 1) log1p(exp(-|x|)) + p max(-x, 0) - max(x, 0):
        # no term grows with |x| only to cancel another. With p = 1 it is exactly -x.
        if p is None:
            gy = -x
        else:
            gy = (p - 1) * log1p_e + _mul_limit(xp, p, relu_neg) - relu_pos
        if smoothing:
            gy = gy * (1 - smoothing)
    parts = _weighted(xp, w, l), _weighted(xp, w, gx), _weighted(xp, w, gy)
    if w is not None and p is not None:
        # weight 0 wins over an infinite pos_weight (whose terms may be inf or 0 * inf):
        # 0 * inf read as 0, as the loss is 0 there; NaN in x, y or p still gives NaN
        void = (w == 0) & ~(xp.isnan(x) | xp.isnan(y) | xp.isnan(p))
        parts = tuple(None if v is None else xp.where(void, _zero(xp, v), v) for v in parts)
    return parts


def logits_grad_pos_weight(xp, x, y, w=None):
    """d l / d p of BCE with logits: w y softplus(-x), the loss being linear in p.

    softplus(-x) = max(-x, 0) + log1p(exp(-|x|)), both terms >= 0; y = 0 gives 0 even at
    x = -inf. (d l / d w is the loss without w: `logits(xp, x, y, None, p)`.)
    """
    _, _, relu_neg, _, e = _split(xp, x)
    softplus_neg = relu_neg + xp.log1p(e)
    return _weighted(xp, w, _mul_limit(xp, y, softplus_neg))


def probabilities(
    xp, x, y, w=None, *, smoothing=0.0, loss=True, grad_input=False, grad_target=False
):
    """BCE on probabilities: l = -w (y max(log x, -100) + (1 - y) max(log(1 - x), -100)).

    `smoothing` as in `logits`.
    """
    log_x = xp.clip(xp.log(x), min=LOG_FLOOR)
    log_q = xp.clip(xp.log1p(-x), min=LOG_FLOOR)
    y, q = smoothed(xp, y, smoothing)
    l = gx = gy = None
    if loss:
        # Both logs are <= 0, so for y in [0, 1] the two terms add without cancelling.
        l = -(y * log_x + q * log_q)
    if grad_input:
        gx = (x - y) / xp.clip(x * (1 - x), min=GRAD_EPS)
    if grad_target:
        gy = log_q - log_x
        if smoothing:
            gy = gy * (1 - smoothing)
    return _weighted(xp, w, l), _weighted(xp, w, gx), _weighted(xp, w, gy)


def _rounded_to(value: float, bits: int) -> float:
    """`value` as a float of `bits` bits (32 or 64) holds it, round to nearest."""
    return struct.unpack("f", struct.pack("f", value))[0] if bits == 32 else value


@functools.cache
def _scaling(bits: int, top: int, gamma: float):
    """Constants for m^gamma where m = 1 - p_t is below 2^-S, in a float of `bits` bits whose
    smallest normal number is 2^-top. There m is scaled by 2^S and m^gamma by 2^(gamma S).

    S = min(floor(top / gamma), top), so that m^gamma >= 2^-top, a normal number, where m is
    not scaled; the scaled m 2^S < 1, so nothing overflows; and 2^(-gamma S) >= 2^-top is a
    normal number. S >= 24 (float32) or 53 (float64) unless gamma > top / 24: then m below
    the smallest normal number gives a product below the smallest subnormal anyway.

    Returns S, L = round(S ln 2), C = 2^S exp(-L) (e^-|x| 2^S = exp(L - |x|) C: L - |x| is exact
    where it matters, |x| >= L / 2), C^gamma, 2^(-gamma S), gamma split as g_hi + g_lo with
    g_hi of 10 bits, gamma rounded to the float (g_c) and the rest (g_r): all floats.
    """
    s = min(math.floor(top / gamma), top)
    l_hi = round(s * math.log(2))
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        ln2 = decimal.Decimal(2).ln()
        g = decimal.Decimal(gamma)
        log_c = s * ln2 - l_hi
        c, c_gamma, unscale = (float(v.exp()) for v in (log_c, g * log_c, -g * s * ln2))
    mant, exp = math.frexp(gamma)
    g_hi = math.ldexp(round(mant * 2**10), exp - 10)
    g_c = _rounded_to(gamma, bits)
    return s, l_hi, c, c_gamma, unscale, g_hi, gamma - g_hi, g_c, gamma - g_c


class _Modulation:
    """m^gamma, m = 1 - p_t = y sigmoid(-x) + (1 - y) sigmoid(x), and the ratios of the focal
    loss's gradients, r = sigmoid(x) sigmoid(-x) / m and ce / m, where m is tiny too.

    m (1 + e) = near + far e, e = exp(-|x|), near = 1 - y for x >= 0 and y below (far the
    other): a sum of terms >= 0. Where m < 2^-S (`_scaling`) it is computed scaled,
    m 2^S = (near 2^S + far e 2^S) / (1 + e): near 2^S is exact and e 2^S = exp(L - |x|) C keeps
    its digits where e is subnormal or zero. So m below the smallest normal number (a target
    0 or 1 at a large logit, or a subnormal target) keeps its digits; and m^gamma is kept as
    (m 2^S)^gamma, times 2^(-gamma S) only after it has multiplied its factor (`times`): in the
    dtype m^gamma may be subnormal where the product is not.

    Every `where` evaluates its branches on safe values only (the "double where"), so that
    autograd, differentiating the gradients for second order, meets no 0 * inf.
    """

    def __init__(self, xp, x, y, gamma):
        self.xp = xp
        info = xp.finfo(x.dtype)
        smallest = float(info.smallest_normal)
        s, l_hi, c, c_gamma, unscale, g_hi, g_lo, g_c, g_r = _scaling(
            info.bits, round(-math.log2(smallest)), gamma
        )
        one = xp.ones((), dtype=x.dtype, device=array_api_compat.device(x))
        self.nonneg, _, _, u, e = _split(xp, x)  # u = |x|
        self.u, self.e, self.ope = u, e, 1 + e
        q = 1 - y
        near, far = xp.where(self.nonneg, q, y), xp.where(self.nonneg, y, q)
        self.m = (near + far * e) / self.ope  # one rounding of a sum of terms >= 0
        self.scaled = self.m < 2.0**-s
        # e 2^S = exp(L - |x|) C: L - |x| is exact for |x| >= L / 2 (the scaled elements'),
        # and exp(a + b) = exp(a) exp(b) with b = S ln 2 - L folded into the constant C
        u_s = xp.where(self.scaled, u, l_hi)
        self.e_k = xp.where(self.scaled, xp.exp(l_hi - u_s) * c, e)
        self.near_k = xp.where(self.scaled, near * 2.0**s, near)  # exact: a power of 2
        self.d_k = self.near_k + far * self.e_k  # m (1 + e) (2^S where scaled)
        m_k = self.d_k / self.ope
        # m 2^S subnormal or zero: then near = 0 (a target 0 or 1) and m = e / (1 + e), so
        #   (m 2^S)^gamma = exp(gamma (L - |x|)) C^gamma,
        # with gamma d = g_hi round(d) (exact) + (g_hi (d - round(d)) + g_lo d), d = L - |x|:
        # rounding gamma d whole would cost gamma |d| half-ulps of the power
        zero = self.scaled & (near == 0) & (m_k < smallest) & (u < math.inf)
        # gamma d below t_min: (m 2^S)^gamma is 0 to far below the smallest subnormal number,
        # even times the largest float; d clamped there keeps the split's second factor
        # finite (|g_lo d| grows with |x|: 0 * inf otherwise, NaN where the loss is 0)
        t_min = -(3 * math.log(float(info.max)) + 100)
        d = xp.clip(l_hi - xp.where(zero, u, l_hi), min=t_min / gamma)
        d_hi = xp.round(d)
        by_exp = xp.exp(g_hi * d_hi) * xp.exp(g_hi * (d - d_hi) + g_lo * d) * c_gamma
        # m^gamma = m^g_c m^g_r, g_c = gamma rounded to the dtype (xp.pow's exponent is):
        # float32(0.3) is 4e-8 off, and m^gamma by |log m^gamma| times that
        base = xp.where(zero, one, xp.where(self.scaled, m_k, self.m))
        power = xp.pow(base, xp.asarray(g_c, dtype=x.dtype, device=array_api_compat.device(x)))
        if g_r:
            # g_r may be < 0: 0^g_r would be inf, and 0^g_c 0^g_r NaN where m = 0
            power = power * xp.pow(xp.where(base == 0, one, base), g_r)
        self.mg = xp.where(zero, by_exp, power)  # m^gamma, times 2^(gamma S) where scaled
        self.unscale = xp.where(self.scaled, unscale, one)
        self.inv_scale = 2.0**-s

    def times(self, v):
        """m^gamma v, reading 0 * inf as 0; 2^(-gamma S) multiplies the product, not m^gamma."""
        return _mul_limit(self.xp, self.mg, v) * self.unscale

    def ce(self, ce):
        """ce = near |x| + log1p(e) rebuilt from the scaled terms where m is scaled, where e may
        be subnormal: ce 2^S = near 2^S |x| + e 2^S (log1p(e) / e), rounded once when scaled
        back. (PyTorch's float32 log1p returns 0 for the smallest subnormal numbers.)"""
        xp = self.xp
        one = xp.ones((), dtype=self.m.dtype, device=array_api_compat.device(self.m))
        small = self.e <= xp.finfo(self.m.dtype).eps
        e_safe = xp.where(small, one, self.e)
        # log1p(e) / e = 1 - e / 2 + e^2 / 3 - ...: 1 - e / 2 to the last bit for e <= eps
        ratio = xp.where(small, 1 - self.e / 2, xp.log1p(e_safe) / e_safe)
        self.ce_k = _mul_limit(xp, self.near_k, self.u) + self.e_k * ratio
        return xp.where(self.scaled, self.ce_k * self.inv_scale, ce)

    def ratios(self, sig_pos, sig_neg, ce):
        """(r, ce / m), `ce` from `ce`: with m (1 + e) = D (D 2^S where scaled, `d_k`),
            r = sigmoid(x) sigmoid(-x) / m = e / ((1 + e) D),
            ce / m = (near |x| + log1p(e)) (1 + e) / D,
        computed from the scaled terms where m is scaled (D = 0, a target 0 or 1 where e
        underflows: their limits, 1 and 1)."""
        xp = self.xp
        one = xp.ones((), dtype=self.m.dtype, device=array_api_compat.device(self.m))
        pos = self.scaled & (self.d_k > 0)
        d_safe = xp.where(pos, self.d_k, one)
        m_safe = xp.where(self.scaled, one, self.m)
        r_k = xp.where(pos, self.e_k / (self.ope * d_safe), one)
        ce_by_m_k = xp.where(pos, self.ce_k * self.ope / d_safe, one)
        r = xp.where(self.scaled, r_k, sig_pos * sig_neg / m_safe)
        ce_by_m = xp.where(self.scaled, ce_by_m_k, ce / m_safe)
        return r, ce_by_m


def focal(
    xp, x, y, w=None, alpha=None, gamma=2.0, *, loss=True, grad_input=False, grad_target=False
):
    """Sigmoid focal loss: l = w a_t (1 - p_t)^gamma ce (torchvision's, Lin et al. 2017).

    ce is BCE with logits (`logits`), p_t = y sigmoid(x) + (1 - y) sigmoid(-x),
    a_t = alpha y + (1 - alpha)(1 - y) (1 when alpha is None). The identity
    1 - sigmoid(x) = sigmoid(-x) gives m = 1 - p_t = y sigmoid(-x) + (1 - y) sigmoid(x), a
    sum of terms >= 0: no 1 - p_t that rounds to 0 (torchvision's does from |x| = 17 in
    float32, and its gradient is NaN at infinite logits). With s = sigmoid(x),
    c = sigmoid(-x), dm/dx = (1 - 2y) s c, dm/dy = c - s = -tanh(x / 2):

        d l / d x = w a_t m^gamma (gamma (1 - 2y) r ce + d ce / d x),   r = s c / m
        d l / d y = w m^gamma ((2 alpha - 1) ce + a_t (gamma (c - s) ce / m - x))

    r and ce / m stay bounded where m underflows; they and m^gamma are computed from m scaled
    by a power of 2 where m is tiny (`_Modulation`). gamma = 0 and alpha None give `logits`
    exactly. Infinite logits give their limits. A target outside [0, 1] gives NaN (values
    and gradients): m may be negative there, and m^gamma has no real value.
    """
    # the "double where": an outside target computes on y = 1/2, then its results become NaN
    outside = (y < 0) | (y > 1)
    y = xp.where(outside, xp.ones_like(y) / 2, y)
    ce, ce_x, _ = logits(xp, x, y, loss=True, grad_input=grad_input)
    at = None if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    l = gx = gy = None
    mod = None if gamma == 0 else _Modulation(xp, x, y, gamma)  # gamma 0: m^0 = 1, BCE
    if mod is not None:
        ce = mod.ce(ce)
    if grad_input or grad_target:
        sig_pos = sig_neg = None
        if mod is not None:
            inv = 1 / mod.ope
            er = mod.e * inv
            sig_pos = xp.where(mod.nonneg, inv, er)  # sigmoid(x)
            sig_neg = xp.where(mod.nonneg, er, inv)  # sigmoid(-x)
            r, ce_by_m = mod.ratios(sig_pos, sig_neg, ce)
    if loss:
        l = ce if mod is None else mod.times(ce)
        l = _weighted(xp, at, l)
    if grad_input:
        gx = ce_x
        if mod is not None:
            gx = mod.times(gamma * (1 - 2 * y) * _mul_limit(xp, r, ce) + ce_x)
        gx = _weighted(xp, at, gx)
    if grad_target:
        if mod is None:
            inner = -x
        else:
            # c - s = (e - 1) / (1 + e) for x >= 0, its negative below: expm1, no cancellation
            # near x = 0. It has the sign of -x, so nothing cancels in gamma (c - s) ce / m - x.
            tanh = xp.expm1(-mod.u) * inv
            c_minus_s = xp.where(mod.nonneg, tanh, -tanh)
            inner = gamma * c_minus_s * ce_by_m - x
        gy = inner if at is None else (2 * alpha - 1) * ce + at * inner
        if mod is not None:
            gy = mod.times(gy)
        gy = xp.where(xp.isinf(x), _focal_limit(xp, x, y, alpha, at, gamma), gy)
    # times NaN or 1, not a `where`: autograd differentiates a `where` to 0 at its constant
    # branch, and the second derivative would be 0 where the loss is NaN
    void = xp.where(outside, xp.nan, xp.ones_like(y))
    l, gx, gy = (None if v is None else v * void for v in (l, gx, gy))
    return _weighted(xp, w, l), _weighted(xp, w, gx), _weighted(xp, w, gy)


def _focal_limit(xp, x, y, alpha, at, gamma):
    """d l / d y of the focal loss at x = +-inf: |x| times the coefficient of |x| in l.

    As x -> +inf, m -> 1 - y and ce ~ (1 - y) x, so l ~ a_t (1 - y)^(gamma + 1) x; as
    x -> -inf, l ~ a_t y^(gamma + 1) |x|. Their y-derivatives' coefficients give the sign
    (a zero coefficient gives 0).
    """
    side = xp.where(x >= 0, 1 - y, y)  # 1 - y at +inf, y at -inf
    sign = xp.where(x >= 0, -xp.ones_like(y), xp.ones_like(y))  # d side / d y
    coef = sign * (gamma + 1) * xp.pow(side, gamma)
    if at is not None:
        coef = (2 * alpha - 1) * xp.pow(side, gamma + 1) + at * coef
    return _mul_limit(xp, coef, xp.abs(x))
