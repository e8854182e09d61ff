"""The elementwise math of the BCE family, written once against an array API namespace.

x: input (logits or probabilities), y: target, w: weight, p: pos_weight (None means 1).
Each function returns (loss, d loss / d x, d loss / d y), computing only what is asked
for and sharing the intermediates. This is the reference the fast paths are tested against.
"""

from __future__ import annotations

import math

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
    """x >= 0, max(x, 0), max(-x, 0) and exp(-|x|).

    |x|, max(x, 0) and max(-x, 0) all split at the one test x >= 0, so that autograd, which
    differentiates the gradients below for second order, takes every kink from the same
    side: the pieces then join into the smooth function (abs and clip disagree at 0).
    """
    nonneg = x >= 0
    zero = _zero(xp, x)
    relu_pos = xp.where(nonneg, x, zero)
    relu_neg = xp.where(nonneg, zero, -x)
    return nonneg, relu_pos, relu_neg, xp.exp(-(relu_pos + relu_neg))


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
    nonneg, relu_pos, relu_neg, e = _split(xp, x)
    log1p_e = xp.log1p(e)
    y, q = smoothed(xp, y, smoothing)
    py = y if p is None else p * y
    l = gx = gy = None
    if loss:
        # softplus(-x) = max(-x, 0) + log1p(exp(-|x|)) turns (1 - y) x + lw softplus(-x) into
        #   (1 - y) max(x, 0) + p y max(-x, 0) + lw log1p(exp(-|x|)),  lw = (1 - y) + p y,
        # a sum of terms >= 0 for y in [0, 1] and p >= 0: nothing cancels.
        body = log1p_e if p is None else (q + py) * log1p_e
        l = _mul_limit(xp, q, relu_pos) + _mul_limit(xp, py, relu_neg) + body
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
    return _weighted(xp, w, l), _weighted(xp, w, gx), _weighted(xp, w, gy)


def logits_grad_pos_weight(xp, x, y, w=None):
    """d l / d p of BCE with logits: w y softplus(-x), the loss being linear in p.

    softplus(-x) = max(-x, 0) + log1p(exp(-|x|)), both terms >= 0; y = 0 gives 0 even at
    x = -inf. (d l / d w is the loss without w: `logits(xp, x, y, None, p)`.)
    """
    _, _, relu_neg, e = _split(xp, x)
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


def _power(xp, m, y, q, sp_pos, sp_neg, gamma):
    """m ** gamma for m = 1 - p_t = y sigmoid(-x) + (1 - y) sigmoid(x), from log m where m
    is below the smallest normal number (it has lost digits there, or underflowed, while
    m ** gamma, gamma < 1, may still be a normal number).

    log m = logaddexp(log y - softplus(x), log(1 - y) - softplus(-x)), since
    log sigmoid(-x) = -softplus(x). Each branch of the `where`s is evaluated on safe values
    only (the "double where"), so that autograd, differentiating this for second order,
    meets no 0 * inf from the branch not taken.
    """
    normal = m >= xp.finfo(m.dtype).smallest_normal
    one = xp.ones((), dtype=m.dtype, device=array_api_compat.device(m))
    direct = xp.pow(xp.where(normal, m, one), gamma)
    a = xp.log(xp.where(normal, one, y)) - sp_pos
    b = xp.log(xp.where(normal, one, q)) - sp_neg
    hi = xp.maximum(a, b)
    finite = hi > -math.inf  # both -inf: m = 0 at an infinite logit, log m = -inf
    gap = xp.where(finite, xp.minimum(a, b) - xp.where(finite, hi, one), -one)
    log_m = hi + xp.log1p(xp.exp(gap))
    return xp.where(normal, direct, xp.exp(gamma * log_m))


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

    r and ce / m are the ratios that stay bounded where m underflows (r <= 1, and both go
    to 1 as the target goes to 0 or 1 and |x| to infinity). gamma = 0 and alpha None give
    `logits` exactly. Infinite logits give their limits.
    """
    ce, ce_x, _ = logits(xp, x, y, loss=True, grad_input=grad_input)
    at = None if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    l = gx = gy = None
    if gamma == 0:  # m^0 = 1: BCE, weighted by a_t
        mg = None
    else:
        nonneg, relu_pos, relu_neg, e = _split(xp, x)
        log1p_e = xp.log1p(e)
        inv = 1 / (1 + e)
        sig_pos = xp.where(nonneg, inv, e * inv)  # sigmoid(x)
        sig_neg = xp.where(nonneg, e * inv, inv)  # sigmoid(-x)
        q = 1 - y
        # m = y sigmoid(-x) + (1 - y) sigmoid(x) over the common denominator 1 + exp(-|x|):
        # one rounding of a sum of terms >= 0, one division (m's error is raised to gamma)
        m = xp.where(nonneg, q + y * e, y + q * e) / (1 + e)
        mg = _power(xp, m, y, q, relu_pos + log1p_e, relu_neg + log1p_e, gamma)
        normal = m >= xp.finfo(m.dtype).smallest_normal
        m_safe = xp.where(normal, m, xp.ones_like(m))
    if loss:
        l = ce if mg is None else _mul_limit(xp, mg, ce)
        l = _weighted(xp, at, l)
    if grad_input:
        gx = ce_x
        if mg is not None:
            r = xp.where(normal, sig_pos * sig_neg / m_safe, xp.ones_like(m))
            gx = mg * (gamma * (1 - 2 * y) * _mul_limit(xp, r, ce) + ce_x)
        gx = _weighted(xp, at, gx)
    if grad_target:
        if mg is None:
            inner = -x
        else:
            # c - s = (e - 1) / (1 + e) for x >= 0, its negative below: expm1, no cancellation
            # near x = 0. It has the sign of -x, so nothing cancels in gamma (c - s) ce / m - x.
            tanh = xp.expm1(-(relu_pos + relu_neg)) * inv
            c_minus_s = xp.where(nonneg, tanh, -tanh)
            ce_by_m = xp.where(normal, ce / m_safe, xp.ones_like(m))
            inner = gamma * c_minus_s * ce_by_m - x
        gy = inner if at is None else (2 * alpha - 1) * ce + at * inner
        if mg is not None:
            gy = mg * gy
        gy = xp.where(xp.isinf(x), _focal_limit(xp, x, y, alpha, at, gamma), gy)
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
