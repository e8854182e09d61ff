"""The elementwise math of the BCE family, written once against an array API namespace.

x: input (logits or probabilities), y: target, w: weight, p: pos_weight (None means 1).
Each function returns (loss, d loss / d x, d loss / d y), computing only what is asked
for and sharing the intermediates. This is the reference the fast paths are tested against.
"""

from __future__ import annotations

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


def logits(xp, x, y, w=None, p=None, *, loss=True, grad_input=False, grad_target=False):
    """BCE with logits: l = w ((1 - y) x + lw softplus(-x)), lw = 1 + (p - 1) y."""
    # |x|, max(x, 0) and max(-x, 0) all split at the one test x >= 0, so that autograd, which
    # differentiates the gradients below for second order, takes every kink from the same
    # side: the pieces then join into the smooth function (abs and clip disagree at 0).
    nonneg = x >= 0
    zero = _zero(xp, x)
    relu_pos = xp.where(nonneg, x, zero)
    relu_neg = xp.where(nonneg, zero, -x)
    e = xp.exp(-(relu_pos + relu_neg))  # exp(-|x|)
    log1p_e = xp.log1p(e)
    q = 1 - y
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
    return _weighted(xp, w, l), _weighted(xp, w, gx), _weighted(xp, w, gy)


def logits_grad_pos_weight(xp, x, y, w=None):
    """d l / d p of BCE with logits: w y softplus(-x), the loss being linear in p.

    softplus(-x) = max(-x, 0) + log1p(exp(-|x|)), both terms >= 0; y = 0 gives 0 even at
    x = -inf. (d l / d w is the loss without w: `logits(xp, x, y, None, p)`.)
    """
    nonneg = x >= 0
    zero = _zero(xp, x)
    relu_neg = xp.where(nonneg, zero, -x)
    softplus_neg = relu_neg + xp.log1p(xp.exp(-(xp.where(nonneg, x, zero) + relu_neg)))
    return _weighted(xp, w, _mul_limit(xp, y, softplus_neg))


def probabilities(xp, x, y, w=None, *, loss=True, grad_input=False, grad_target=False):
    """BCE on probabilities: l = -w (y max(log x, -100) + (1 - y) max(log(1 - x), -100))."""
    log_x = xp.clip(xp.log(x), min=LOG_FLOOR)
    log_q = xp.clip(xp.log1p(-x), min=LOG_FLOOR)
    l = gx = gy = None
    if loss:
        # Both logs are <= 0, so for y in [0, 1] the two terms add without cancelling.
        l = -(y * log_x + (1 - y) * log_q)
    if grad_input:
        gx = (x - y) / xp.clip(x * (1 - x), min=GRAD_EPS)
    if grad_target:
        gy = log_q - log_x
    return _weighted(xp, w, l), _weighted(xp, w, gx), _weighted(xp, w, gy)
