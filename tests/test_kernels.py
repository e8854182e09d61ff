"""The fused NumPy kernels against the mpmath oracle and the array-API formula.

The kernels are C++ compiled ahead of time (`bceloss._kernels._native`): nothing compiles on
first use. Their elementary functions (`fastmath.hpp`) are reached through the extension's
test probes (`_native.fastmath`, `_native.encode`), the rest through the library's calls.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import math
import multiprocessing
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import oracle
import pytest
import samples
import tolerances
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import MAX_ULP, assert_close

import bceloss
from bceloss import (
    _dispatch,
    _evaluate,
    _kernels,
    _reduce,
    _summation,
    _validation,
)
from bceloss._kernels import _native, launch

BF16 = ml_dtypes.bfloat16
BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits
SHAPE = (64, 80)  # 5120 elements: above the kernel's threshold, cheap for the oracle


def _call(logits, x, y, w=None, p=None, reduction="none"):
    return _validation.validate(
        logits=logits, input=x, target=y, weight=w, pos_weight=p, reduction_name=reduction
    )


def _runs_in_kernel(logits, x, y, w=None, p=None):
    return _kernels.plan(_call(logits, x, y, w, p)) is not None


def _f64(a):
    return None if a is None else np.asarray(a).astype(np.float64)


# The kernel runs on all of SHAPE; the (slow, many-digit) oracle checks the special values
# at the start and a random tenth of the rest.
PICK = np.concatenate([np.arange(8), np.random.default_rng(99).choice(np.arange(8, 5120), 512)])


def _oracle_at(terms, *arrays):
    """(loss, d/dx, d/dy) of the oracle at the PICK elements of the broadcast arrays."""
    cols = [np.broadcast_to(np.asarray(a, np.float64), SHAPE).reshape(-1)[PICK] for a in arrays]
    return oracle.elementwise(terms, *cols)


# --- the vectorisable exp and log ------------------------------------------------------


def _apply(name, a):
    """fastmath.hpp's function `name` at every element of a (float32 or float64)."""
    out = np.empty_like(a)
    _native.fastmath(name, a, out, None, None)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fastmath_within_2_ulp(dtype):
    rng = np.random.default_rng(0)
    n = 200_000
    tiny = 1e-44 if dtype == np.float32 else 1e-320
    arg_max = 110.0 if dtype == np.float32 else 750.0
    cases = {
        "exp_neg": np.concatenate([rng.uniform(0, 2, n), rng.uniform(0, arg_max, n)]),
        "log1p_unit": np.concatenate([rng.uniform(0, 1, n), 10.0 ** rng.uniform(-40, 0, n)]),
        "log": np.concatenate([rng.uniform(0, 2, n), 10.0 ** rng.uniform(-300, 0, n)]),
        "log1p_neg": np.concatenate([rng.uniform(0, 1, n), 1 - 10.0 ** rng.uniform(-15, 0, n)]),
    }
    exact_fns = {
        "exp_neg": lambda v: np.exp(-v),
        "log1p_unit": np.log1p,
        "log": np.log,
        "log1p_neg": lambda v: np.log1p(-v),
    }
    for name, a in cases.items():
        a = np.maximum(a, tiny).astype(dtype)
        if name == "log1p_neg":
            a = a[a < 1]
        out = _apply(name, a)
        exact = exact_fns[name](a.astype(np.longdouble))
        finite = np.isfinite(exact)
        err = tolerances.ulp_error_longdouble(out[finite], exact[finite], dtype)
        assert err.max() <= 2, (name, err.max(), a[finite][np.argmax(err)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fastmath_special_values(dtype):
    out = _apply("exp_neg", np.array([0.0, np.inf, np.nan, 1e4], dtype))
    np.testing.assert_array_equal(out, [1.0, 0.0, np.nan, 0.0])
    v = np.array([0.0, 1.0, np.inf, np.nan, np.finfo(dtype).smallest_subnormal], dtype)
    out = _apply("log", v)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(out, np.log(v.astype(np.float64)), rtol=4e-7)
    out = _apply("log1p_neg", np.array([1.0, 0.0], dtype))
    np.testing.assert_array_equal(out, [-np.inf, 0.0])


# --- the kernels against the oracle ------------------------------------------------------


def _logits_sample(seed, dtype, w_shape=(80,), p_shape=(80,)):
    rng = np.random.default_rng(seed)
    x = samples.logits(rng, SHAPE)
    x.flat[:6] = [np.inf, -np.inf, np.inf, -np.inf, np.nan, 0.0]
    y = samples.targets(rng, SHAPE)
    y.flat[:4] = [0.3, 0.3, 1.0, 0.0]  # infinite logits: limits inf, inf, 0, 0
    w = None if w_shape is None else rng.uniform(0, 3, w_shape)
    p = None if p_shape is None else samples.positive_weights(rng, p_shape)
    return [None if a is None else a.astype(dtype) for a in (x, y, w, p)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("w_shape", "p_shape"), [((80,), (80,)), (SHAPE, None), (None, (1, 80))])
def test_logits_elementwise_against_oracle(dtype, w_shape, p_shape):
    x, y, w, p = _logits_sample(1, dtype, w_shape, p_shape)
    assert _runs_in_kernel(True, x, y, w, p)
    got = BCEL(x, y, w, "none", p)
    assert got.dtype == dtype
    assert got.shape == SHAPE
    ones = np.ones(1)
    args = [_f64(x), _f64(y), ones if w is None else _f64(w), ones if p is None else _f64(p)]
    exact, _, _ = _oracle_at(oracle.logits_terms, *args)
    err = tolerances.ulp_error(got.reshape(-1)[PICK], exact, dtype)
    assert err.max() <= MAX_ULP, (err.max(), x.flat[PICK[np.argmax(err)]])
    assert np.isnan(got.flat[4])
    assert np.isinf(got.flat[0])
    assert np.isinf(got.flat[1])
    assert got.flat[2] == 0
    assert got.flat[3] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probabilities_elementwise_against_oracle(dtype):
    rng = np.random.default_rng(2)
    x = samples.probabilities(rng, SHAPE).astype(dtype)
    x.flat[:3] = [np.nan, 1e-40 if dtype == np.float32 else 1e-310, 1e-44]
    y = samples.targets(rng, SHAPE).astype(dtype)
    w = rng.uniform(0, 3, (80,)).astype(dtype)
    assert _runs_in_kernel(False, x, y, w)
    got = BCE(x, y, w, "none")
    exact, _, _ = _oracle_at(oracle.probs_terms, x, y, w)
    err = tolerances.ulp_error(got.reshape(-1)[PICK], exact, dtype)
    assert err.max() <= MAX_ULP, (err.max(), x.flat[PICK[np.argmax(err)]])
    assert np.isnan(got.flat[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_gradients_against_oracle(dtype):
    x, y, w, p = _logits_sample(3, dtype)
    assert _runs_in_kernel(True, x, y, w, p)
    value, (gx, gy) = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, w, "sum", p)
    assert gx.dtype == gy.dtype == dtype
    _loss, dx, dy = _oracle_at(oracle.logits_terms, x, y, w, p)
    X, Y, W, P = (
        np.broadcast_to(a.astype(np.float64), SHAPE).reshape(-1)[PICK] for a in (x, y, w, p)
    )
    gx, gy = gx.reshape(-1)[PICK], gy.reshape(-1)[PICK]
    finite = np.isfinite(X)
    dx_terms, dy_terms = tolerances.logits_grad_scales(X, Y, W, P)
    tolerances.assert_within_ulp_of_largest_term(gx[finite], dx[finite], dx_terms[finite], dtype)
    tolerances.assert_within_ulp_of_largest_term(gy[finite], dy[finite], dy_terms[finite], dtype)
    # infinite logits: the limits of SPEC §2 (the oracle's), NaN for NaN
    inf = ~finite & ~np.isnan(X)
    np.testing.assert_array_equal(gx[inf], dx[inf].astype(dtype))
    np.testing.assert_array_equal(gy[inf], dy[inf].astype(dtype))
    assert np.isnan(gx[4])
    assert np.isnan(gy[4])
    assert np.isnan(value)  # the NaN logit
    rows = x[1:3], y[1:3]  # two rows without the special values
    exact = oracle.exact_sum(oracle.elementwise(oracle.logits_terms, *rows, w, p)[0])
    assert tolerances.ulp_error(BCEL(*rows, w, "sum", p), exact, dtype) <= MAX_ULP + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_gradients_against_oracle(dtype):
    rng = np.random.default_rng(5)
    x = samples.probabilities(rng, SHAPE).astype(dtype)
    y = samples.targets(rng, SHAPE).astype(dtype)
    w = rng.uniform(0, 3, SHAPE).astype(dtype)
    _, (gx, gy) = bceloss.value_and_grad(BCE, argnums=(0, 1))(x, y, w, "sum")
    _, dx, dy = _oracle_at(oracle.probs_terms, x, y, w)
    sx, sy = tolerances.probs_grad_scales(*(a.reshape(-1)[PICK] for a in (x, y, w)))
    tolerances.assert_within_ulp_of_largest_term(gx.reshape(-1)[PICK], dx, sx, dtype)
    tolerances.assert_within_ulp_of_largest_term(gy.reshape(-1)[PICK], dy, sy, dtype)


# --- the kernels against the array-API formula -------------------------------------------

LAYOUTS = {
    "no weights": (None, None),
    "scalar": ((1,), (1, 1)),
    "same shape": (SHAPE, SHAPE),
    "trailing vector": ((80,), (80,)),
}


def _both(fn, *args, **kwargs):
    """fn's result through the kernel and through the array-API formula (fast=False)."""
    call = fn._bceloss_bind(*args, **kwargs)
    assert _dispatch.kernel_plan(call) is not None
    return _evaluate.evaluate(call), _evaluate.evaluate(call, fast=False)


# every layout in float32 and float64; the half types (converted on the fly) in two of them,
# to keep the number of compiled specialisations small
CASES = [(d, layout) for d in (np.float32, np.float64) for layout in LAYOUTS] + [
    (d, layout) for d in (np.float16, BF16) for layout in ("no weights", "trailing vector")
]


@pytest.mark.parametrize(("dtype", "layout"), CASES)
def test_logits_kernel_matches_formula(dtype, layout):
    w_shape, p_shape = LAYOUTS[layout]
    x, y, w, p = _logits_sample(7, dtype, w_shape, p_shape)
    x.flat[:6] = 1.5  # compared without the special values (the oracle covers them)
    for reduction in ("none", "mean", "sum"):
        assert_close(*_both(BCEL, x, y, w, reduction, p), dtype)
    fast = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, w, "mean", p)
    call = BCEL._bceloss_bind(x, y, w, "mean", p)
    slow = _evaluate.loss_and_grad(call, (0, 1), fast=False)
    assert_close(fast[0], slow[0], dtype)
    scales = tolerances.logits_grad_scales(x, y, w, p)
    for g, h, scale in zip(fast[1], slow[1], scales, strict=True):
        assert_close(g, h, dtype, scale / x.size)


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64])
def test_probabilities_kernel_matches_formula(dtype):
    rng = np.random.default_rng(8)
    x = samples.probabilities(rng, SHAPE).astype(dtype)
    y = samples.targets(rng, SHAPE).astype(dtype)
    w = rng.uniform(0, 3, (80,)).astype(dtype)
    for reduction in ("none", "mean", "sum"):
        assert_close(*_both(BCE, x, y, w, reduction), dtype)
    fast = bceloss.value_and_grad(BCE, argnums=(0, 1))(x, y, w, "sum")
    slow = _evaluate.loss_and_grad(BCE._bceloss_bind(x, y, w, "sum"), (0, 1), fast=False)
    scales = tolerances.probs_grad_scales(x, y, np.broadcast_to(w, SHAPE))
    for g, h, scale in zip(fast[1], slow[1], scales, strict=True):
        assert_close(g, h, dtype, scale)


def _encoded(values, dst):
    """float64 values stored into dst as the kernels store an output of its type."""
    _native.encode(values, dst)


def _round_to_bits(v, bits):
    """float64 v (finite, normal in the target format) rounded to `bits` significant bits, to
    nearest even, computed exactly: the reference for float16 (11) and bfloat16 (8)."""
    m, e = np.frexp(v)
    return np.ldexp(np.rint(m * 2.0**bits), e - bits)


@pytest.mark.parametrize(
    ("dtype", "storage", "bits"), [(np.float16, np.uint16, 11), (BF16, np.int16, 8)]
)
def test_float64_values_round_once_into_the_half_types(dtype, storage, bits):
    # A float64 result stored as float16 or bfloat16 (the gradient of a half input under a
    # float64 target) goes through a float32 rounded to odd: one rounding, where a plain
    # float32 would round twice (1 + 2^-11 + 2^-40 is above float16's midpoint 1 + 2^-11,
    # which float32 rounds it to, and a tie rounds to even: down).
    rng = np.random.default_rng(12)
    ulp = 2.0 ** (1 - bits)
    traps = [1 + ulp / 2 + 2.0**-40, 1 + ulp / 2 - 2.0**-40, 1 + 1.5 * ulp + 2.0**-40,
             3 + 2 * ulp * 0.75 - 2.0**-45, 1 + ulp / 2, 1 + 1.5 * ulp]  # fmt: skip
    top = 60000.0 if dtype == np.float16 else 1e38
    wide = np.exp(rng.uniform(np.log(1e-4), np.log(top), 4000)) * rng.choice([-1, 1], 4000)
    normal = np.concatenate([traps, np.negative(traps), wide, rng.uniform(-4, 4, 4000)])
    got = np.empty(normal.size, storage)
    _encoded(normal, got)
    want = _round_to_bits(normal, bits).astype(dtype)  # exact: already representable
    assert got.tobytes() == want.view(storage).tobytes()
    assert _round_to_bits(np.float64(traps[0]), bits) != _round_to_bits(
        np.float64(np.float32(traps[0])), bits
    )  # the trap is one: rounding through a plain float32 gives the other neighbour
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e300, -1e300, 1e-300, np.nan])
    got = np.empty(special.size, storage)
    _encoded(special, got)
    with np.errstate(over="ignore"):  # 1e300 is inf in float32 already
        want = special.astype(np.float32).astype(dtype)  # exact or far from every midpoint
    np.testing.assert_array_equal(got.view(dtype).astype(np.float32), want.astype(np.float32))
    assert np.signbit(got.view(dtype)).tolist() == np.signbit(want).tolist()


def test_a_half_input_with_a_float64_target_runs_in_the_kernel():
    # the loss is float64 and the input's gradient float16: a float64 result stored as
    # float16 (the case that aborted under the numba kernels)
    rng = np.random.default_rng(13)
    x = rng.normal(0, 4, SHAPE).astype(np.float16)
    y = rng.random(SHAPE)
    for reduction in ("none", "mean"):
        got, want = _both(BCEL, x, y, reduction=reduction)
        assert got.dtype == np.float64
        assert_close(got, want, np.float64)
    fast = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, reduction="sum")
    slow = _evaluate.loss_and_grad(BCEL._bceloss_bind(x, y, reduction="sum"), (0, 1), fast=False)
    assert fast[1][0].dtype == np.float16
    scales = tolerances.logits_grad_scales(x, y, None, None)
    for g, h, scale, dtype in zip(fast[1], slow[1], scales, (np.float16, np.float64), strict=True):
        assert_close(g, h, dtype, scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_loss_does_not_depend_on_the_gradients_asked_for(dtype):
    # the elementwise loss has the same bits whichever gradients the loop computes beside it
    # (a compiler may fuse log1p's last product into the loss's add only where nothing else
    # uses it: float32 logits without pos_weight moved by an ulp when d/dy was asked for;
    # fastmath.hpp's plus_log1p_unit fuses it always)
    rng = np.random.default_rng(14)
    x = rng.normal(0, 3, SHAPE).astype(dtype)
    x.flat[:3] = [0, np.inf, -np.inf]
    y = rng.random(SHAPE).astype(dtype)
    w = (rng.random(80) + 0.5).astype(dtype)
    q = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(dtype)
    calls = [
        BCEL._bceloss_bind(x, y, reduction="none"),
        BCEL._bceloss_bind(x, y, w, reduction="none", label_smoothing=0.1),
        BCEL._bceloss_bind(x, y, reduction="none", pos_weight=w),
        BCE._bceloss_bind(q, y, w, reduction="none"),
        bceloss.sigmoid_focal_loss._bceloss_bind(x, y, reduction="none"),
    ]
    for call in calls:
        plan = _dispatch.kernel_plan(call)
        alone = _kernels.elementwise(call, plan)[0]
        for wanted in (
            {"grad_input": True},
            {"grad_target": True},
            {"grad_input": True, "grad_target": True},
        ):
            assert _kernels.elementwise(call, plan, **wanted)[0].tobytes() == alone.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_plain_loop_gives_the_bits_of_the_general_one(dtype):
    # without label smoothing or an ignored label the logits loop leaves out the operations
    # on them (formulas.hpp, Plain); Paddle's flavour always passes its ignored label -100, so
    # on targets without one it takes the general loop: the same bits, loss and gradients
    # (a NaN target with a NaN pos_weight, not drawn here, may give a NaN of the other sign)
    from bceloss.compat import paddle as paddle_flavour

    rng = np.random.default_rng(15)
    x = rng.normal(0, 20, SHAPE).astype(dtype)
    x.flat[:6] = [0, -0.0, np.inf, -np.inf, np.nan, 1e-30]
    y = rng.random(SHAPE).astype(dtype)
    y.flat[:12:2] = [0, -0.0, 1, 1, 0, 1]
    w = (rng.random(80) * 2).astype(dtype)
    w[:2] = [0, np.inf]
    wanted = {"grad_input": True, "grad_target": True}
    paddle_bcel = paddle_flavour.binary_cross_entropy_with_logits
    for p in (None, (rng.random(80) * 3).astype(dtype)):
        plain = BCEL._bceloss_bind(x, y, w, reduction="none", pos_weight=p)
        general = paddle_bcel._bceloss_bind(x, y, w, reduction="none", pos_weight=p)
        assert (plain.ignore_label, general.ignore_label) == (None, -100)
        got = [
            _kernels.elementwise(c, _dispatch.kernel_plan(c), **wanted) for c in (plain, general)
        ]
        for a, b in zip(*got, strict=True):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_hard_target_loop_gives_the_bits_of_the_general_one(dtype):
    # BCE on probabilities whose targets are all 0 or 1, without label smoothing, reads one
    # log an element (loops.hpp, probabilities_hard); one other target in the piece (these
    # arrays are one piece) sends it to the general loop: the same bits, loss and d/dx, at
    # the edges of [0, 1] too; weighted or not (a reduced loss adds these terms). (A NaN
    # input with a NaN weight, not drawn here, may give a NaN of the other sign.)
    rng = np.random.default_rng(16)
    n = 999
    x = rng.random(n).astype(dtype)
    x[:8] = [0, -0.0, 1, np.nan, 1e-30, 1e-45, np.finfo(dtype).eps, 1 - np.finfo(dtype).eps]
    x[12:40] = np.exp(-rng.uniform(0, 80, 28)).astype(dtype)  # near 0, down to the clamp
    x[40:60] = 1 - np.exp(-rng.uniform(0, 30, 20)).astype(dtype)  # near 1
    y = (rng.random(n) > 0.6).astype(dtype)
    y[:8] = [0, 1, 0, 1, 0, 1, 0, 1]
    y[8:16] = [-0.0, 1, -0.0, 1, -0.0, 1, -0.0, 1]
    y[16:40:2], y[40:60:2] = 1, 0  # the far log where it is large
    soft = np.append(y, dtype(0.5))
    hard = np.append(y, dtype(1))
    xs = np.append(x, dtype(0.25))
    w = np.append((rng.random(n) * 2).astype(dtype), dtype(1))
    w[:3] = [0, np.inf, 1e-30]
    for weight in (None, w):
        for wanted in ({}, {"grad_input": True}):
            got = []
            for target in (hard, soft):
                c = BCE._bceloss_bind(xs, target, weight, reduction="none")
                got.append(_kernels.elementwise(c, _dispatch.kernel_plan(c), **wanted))
            for a, b in zip(*got, strict=True):  # (None where not asked for)
                assert (a is None and b is None) or a[:n].tobytes() == b[:n].tobytes()


def test_a_subnormal_pos_weight_or_target_does_not_underflow_the_loss():
    # p y |x| (x < 0) is computed as p (y |x|): p y first underflowed for a subnormal p or
    # y, and |x| scaled the loss's error up (x = -85, y = 0.5, p = 1e-45: 10.9 ulp, found by
    # hypothesis). The kernel and the array-API formula alike.
    rng = np.random.default_rng(15)
    x = -rng.uniform(80, 88, SHAPE).astype(np.float32)
    y = rng.random(SHAPE).astype(np.float32)
    p = rng.choice(np.float32([1e-45, 3e-45, 1e-42, 2e-40, 1e-39]), SHAPE)
    tiny_y = rng.random(SHAPE) < 0.3
    y[tiny_y], p[tiny_y] = np.float32(1e-44), np.float32(3.0)
    x.flat[0], y.flat[0], p.flat[0] = -85, 0.5, 1e-45
    exact = _oracle_at(oracle.logits_terms, x, y, 1.0, p)[0]
    for got in _both(BCEL, x, y, reduction="none", pos_weight=p):
        assert (tolerances.ulp_error(got.reshape(-1)[PICK], exact, np.float32) <= MAX_ULP).all()


def test_integer_target_and_ignore_label_match_formula():
    from bceloss.compat import paddle

    rng = np.random.default_rng(9)
    x = rng.normal(0, 4, SHAPE).astype(np.float32)
    y = rng.integers(0, 2, SHAPE).astype(np.int64)
    assert_close(*_both(BCEL, x, y, None, "none"), np.float32)
    label = rng.integers(0, 2, SHAPE).astype(np.float32)
    label[::3] = -100  # Paddle's ignored label
    got = paddle.binary_cross_entropy_with_logits(x, label, reduction="none")
    call = paddle.binary_cross_entropy_with_logits._bceloss_bind(x, label, reduction="none")
    assert _dispatch.kernel_plan(call) is not None
    assert_close(got, _evaluate.evaluate(call, fast=False), np.float32)
    assert (got[::3] == 0).all()


def test_every_numpy_layout_runs_in_the_kernel():
    # a column weight (materialised) and transposed inputs (copied) run in the kernel, so the
    # loss is the same function of the elements whatever the layout
    rng = np.random.default_rng(10)
    x = rng.normal(0, 4, SHAPE).astype(np.float32)
    y = rng.random(SHAPE).astype(np.float32)
    w_column = rng.random((64, 1)).astype(np.float32)
    for args in [(x, y, w_column), (x.T, y.T)]:
        assert _runs_in_kernel(True, *args)
        assert_close(*_both(BCEL, *args, reduction="none"), np.float32)
    by_rows = BCEL(x, y, w_column, "none")
    flat = BCEL(x.reshape(-1), y.reshape(-1), np.repeat(w_column, 80), "none")
    assert by_rows.reshape(-1).tobytes() == flat.tobytes()
    assert BCEL(x.T, y.T, reduction="none").tobytes() == BCEL(x, y, reduction="none").T.tobytes()
    # a few elements too: the kernel costs less than the formula at every size
    assert _dispatch.kernel_plan(_call(True, x[:1, :3], y[:1, :3])) is not None


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_fused_results_equal_a_stream_of_blocks_to_the_last_bit(dtype):
    # the fused kernel's block sums are `_summation.block_sums` of its elementwise loss, and its
    # gradient is the elementwise one divided by n: a stream adding up `elementwise`'s loss
    # chunk by chunk (whole blocks) gets the library's bits
    rng = np.random.default_rng(16)
    n = 3 * _summation.BLOCK + 1234
    x = rng.normal(0, 4, n).astype(dtype)
    y = rng.random(n).astype(dtype)
    p = rng.uniform(0.5, 3, (1,)).astype(dtype)
    for reduction in ("sum", "mean"):
        call = _call(True, x, y, None, p, reduction)
        value, (grad,) = _evaluate.loss_and_grad(call, (0,))
        assert _evaluate.evaluate(call).tobytes() == value.tobytes()
        sums = []
        for start in range(0, n, 2 * _summation.BLOCK):  # chunks of two blocks
            part = _call(True, x[start : start + 2 * _summation.BLOCK], y[start:][:16384], None, p)
            sums.append(_summation.block_sums(_evaluate.elementwise(part, whole_size=n)[0]))
        streamed = _summation.combine(np.concatenate(sums))
        streamed = streamed / n if reduction == "mean" else streamed
        with np.errstate(over="ignore"):  # a float16 sum may round to inf
            want = np.asarray(np.float64(streamed)).astype(dtype)
        assert value.tobytes() == want.tobytes()
        pl = _kernels.plan(call)
        _, gx, _ = _kernels.elementwise(call, pl, grad_input=True)
        assert grad.tobytes() == _reduce.gradient(call, gx, x, x.dtype).tobytes()


def test_read_only_inputs_are_accepted_and_untouched():
    x, y, w, p = _logits_sample(11, np.float32)
    x.flat[:6] = 0.5
    copies = [a.copy() for a in (x, y, w, p)]
    for a in (x, y, w, p):
        a.flags.writeable = False
    _value, grad = bceloss.value_and_grad(BCEL)(x, y, w, "mean", p)
    for a, c in zip((x, y, w, p), copies, strict=True):
        np.testing.assert_array_equal(a, c)
    want = _evaluate.loss_and_grad(BCEL._bceloss_bind(x, y, w, "mean", p), (0,), fast=False)
    assert_close(
        grad, want[1][0], np.float32, tolerances.logits_grad_scales(x, y, w, p)[0] / x.size
    )


# --- sums: exact enough, the same for any number of threads ------------------------------


def _block_sums_by_definition(values):
    # element k of a block into lane k % LANES, sequentially; lanes folded by halves
    sums = []
    for start in range(0, values.size, _summation.BLOCK):
        lanes = [0.0] * _summation.LANES
        for k, v in enumerate(values[start : start + _summation.BLOCK].tolist()):
            lanes[k % _summation.LANES] += v
        width = _summation.LANES
        while width > 1:
            width //= 2
            lanes = [lanes[j] + lanes[j + width] for j in range(width)]
        sums.append(lanes[0])
    return np.array(sums)


@pytest.mark.parametrize("n", [1, 63, 65, 5000, _summation.BLOCK, 2 * _summation.BLOCK + 777])
def test_block_sums_follow_the_documented_order(n):
    # plain Python floats against NumPy's (_summation) and the kernel's (through 'sum')
    rng = np.random.default_rng(n)
    values = (rng.random(n) * 10.0 ** rng.integers(-12, 12, n)).astype(np.float32)
    got = _summation.block_sums(values)
    assert got.tobytes() == _block_sums_by_definition(values).tobytes()
    if n >= 5000:
        # the order matters: 2^60 then fours, all in lane 0, which drops each (ulp 256) and a
        # pairwise sum (NumPy's np.sum) adds up first
        values[:] = 0.0
        values[:: _summation.LANES] = 4.0
        values[0] = 2.0**60
        got = _summation.block_sums(values)
        assert got.tobytes() == _block_sums_by_definition(values).tobytes()
        assert got[0] != np.sum(values[: _summation.BLOCK], dtype=np.float64)
    # the kernel sums its own elementwise loss in the same order (float64: every bit shows)
    if n >= _dispatch.KERNEL_MIN_SIZE:
        x, y = rng.random(n), rng.random(n)
        elementwise = bceloss.binary_cross_entropy(x, y, reduction="none")
        total = bceloss.binary_cross_entropy(x, y, reduction="sum")
        assert total.tobytes() == np.float64(_summation.total(elementwise)).tobytes()


THREAD_COUNTS = (1, 2, 3, 4)


@contextlib.contextmanager
def _num_threads(count):
    """The kernels on `count` threads inside the block, the process's setting restored after."""
    before = _kernels.get_num_threads()
    _kernels.set_num_threads(count)
    try:
        yield
    finally:
        _kernels.set_num_threads(before)


def _spy_on_runs(monkeypatch):
    """Record (team, chunks) of every pass of the native kernel: the launcher's last two
    positional arguments to `_native.run`."""
    seen = []
    run = launch.run_native

    def spy(*args):
        seen.append(args[-2:])
        return run(*args)

    monkeypatch.setattr(launch, "run_native", spy)
    return seen


def _blocks(n, where=None):
    """The summation blocks of a call: BLOCK elements each, or BLOCK kept ones under a mask."""
    kept = n if where is None else int(np.count_nonzero(where))
    return max(1, -(-kept // _summation.BLOCK))


def test_sums_and_gradients_do_not_depend_on_the_thread_count(monkeypatch):
    seen = _spy_on_runs(monkeypatch)
    rng = np.random.default_rng(12)
    n = 3 * _summation.BLOCK * 7 + 123  # 22 blocks
    x = rng.normal(0, 4, n).astype(np.float32)
    y = rng.random(n).astype(np.float32)
    f = bceloss.value_and_grad(BCEL, argnums=(0, 1))
    results = []
    for threads in THREAD_COUNTS:
        with _num_threads(threads):
            seen.clear()
            value, (gx, gy) = f(x, y, reduction="sum")
            assert [team for team, _ in seen] == [threads]  # the setting sized the team
            results.append((value.tobytes(), gx.tobytes(), gy.tobytes()))
    assert len(set(results)) == 1, "the bits moved with the thread count"
    # and the sum is the loss's: NumPy's float64 formula, to float32's rounding
    X, Y = x.astype(np.float64), y.astype(np.float64)
    expected = np.sum(np.logaddexp(0, X) - X * Y)
    assert abs(float(value) - expected) <= 1e-6 * expected


def test_masked_sums_and_gradients_do_not_depend_on_the_thread_count(monkeypatch):
    # the same bits on 1 to 4 threads, and those of the kept elements alone (a call small
    # enough to run on the calling thread, without a mask)
    seen = _spy_on_runs(monkeypatch)
    rng = np.random.default_rng(19)
    n = 7 * _summation.BLOCK + 5
    x, y = rng.normal(0, 4, n).astype(np.float32), rng.random(n).astype(np.float32)
    m = rng.random(n) < 0.3
    blocks = _blocks(n, m)
    assert blocks == 3
    f = bceloss.value_and_grad(BCEL)
    value0, grad0 = f(x[m], y[m], reduction="sum")
    for threads in THREAD_COUNTS:
        with _num_threads(threads):
            seen.clear()
            value, grad = f(x, y, reduction="sum", where=m)
            assert [team for team, _ in seen] == [min(threads, blocks)]
        assert value.tobytes() == value0.tobytes()
        assert grad[m].tobytes() == grad0.tobytes()
        assert (grad[~m] == 0).all()


@pytest.mark.parametrize("masked", [False, True])
def test_small_calls_run_on_the_calling_thread_alone(monkeypatch, masked):
    # up to SERIAL_SIZE elements, or on one thread, the caller computes every block as one
    # chunk; above, the thread setting sizes the team, at most a thread a block, with
    # CHUNKS_PER_THREAD chunks a thread (at most one a block)
    seen = _spy_on_runs(monkeypatch)
    rng = np.random.default_rng(13)
    small = launch.SERIAL_SIZE
    for caller in THREAD_COUNTS:
        with _num_threads(caller):
            for n in (small, small + 1, 40 * _summation.BLOCK):
                x, y = rng.normal(0, 3, n), rng.random(n)
                where = rng.random(n) < 0.7 if masked else None
                seen.clear()
                value, _ = bceloss.value_and_grad(BCEL)(x, y, where=where)
                blocks = _blocks(n, where)
                team = 1 if n <= small else min(caller, blocks)
                chunks = 1 if team == 1 else min(launch.CHUNKS_PER_THREAD * team, blocks)
                assert seen == [(team, chunks)]  # loss and gradient, one pass
                keep = np.ones(n, bool) if where is None else where
                loss = np.logaddexp(0, x) - x * y  # NumPy's, in float64
                expected = np.mean(loss[keep])
                assert abs(float(value) - expected) <= 1e-12 * expected


@pytest.mark.parametrize("masked", [False, True])
def test_concurrent_calls_from_many_python_threads_get_the_bits_of_one_call(monkeypatch, masked):
    # 8 Python threads, 20 calls each, every call on a team of 3 (the pool's helpers serve
    # the calls' chunks as they come): each gets what one call alone on one thread gets
    seen = _spy_on_runs(monkeypatch)
    rng = np.random.default_rng(21 + masked)
    n = 3 * launch.SERIAL_SIZE + 5
    x = rng.normal(0, 3, n).astype(np.float32)
    y = rng.random(n).astype(np.float32)
    where = rng.random(n) < 0.8 if masked else None
    step = bceloss.value_and_grad(BCEL, argnums=(0, 1))

    def bits():
        value, (gx, gy) = step(x, y, reduction="sum", where=where)
        return value.tobytes(), gx.tobytes(), gy.tobytes()

    with _num_threads(1):
        want = bits()
    seen.clear()
    with _num_threads(3), concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(lambda: [bits() for _ in range(20)]) for _ in range(8)]
        got = [b for future in futures for b in future.result()]
    assert len(got) == 160
    assert all(b == want for b in got)
    assert [team for team, _ in seen] == [3] * 160  # every call ran on a team


# A subprocess's record of the team each kernel call ran on (the argument before last)
SPY_ON_TEAMS = """
from bceloss._kernels import launch
teams = []
run = launch.run_native
def spy(*args):
    teams.append(args[-2])
    return run(*args)
launch.run_native = spy
"""

FORKED = (
    SPY_ON_TEAMS
    + """
import multiprocessing, os, warnings
import numpy as np, bceloss
from bceloss import _kernels
warnings.simplefilter("ignore", DeprecationWarning)  # (fork of a threaded process)
def threads():  # the process's threads, the kernels' helpers included (Linux)
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
_kernels.set_num_threads(3)
x = np.random.default_rng(0).normal(0, 3, {n}).astype(np.float32)
y = (x > 0.5).astype(np.float32)
before = threads()
parent = bceloss.binary_cross_entropy_with_logits(x, y).tobytes()
assert teams == [3], teams
assert before is None or threads() >= before + 2, (before, threads())  # the pool started
def child(queue):
    teams.clear()
    before = threads()
    value = bceloss.binary_cross_entropy_with_logits(x, y).tobytes()
    queue.put((value, list(teams), before, threads()))
queue = multiprocessing.get_context("fork").SimpleQueue()
process = multiprocessing.get_context("fork").Process(target=child, args=(queue,))
process.start()
process.join(120)
assert process.exitcode == 0, process.exitcode
value, child_teams, before, after = queue.get()
assert child_teams == [3], child_teams
assert before is None or after >= before + 2, (before, after)  # a pool of its own
assert value == parent
"""
)


def _subprocess_env(**variables):
    """The environment for a Python subprocess importing this bceloss (not an installed one)."""
    src = os.path.dirname(os.path.dirname(bceloss.__file__))
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("BCELOSS_NUM_THREADS", None)
    env.update(variables)
    return env


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform"
)
def test_a_process_forked_after_a_parallel_call_computes_in_parallel_too():
    # (a PyTorch DataLoader's workers, a multiprocessing pool.) The child does not inherit
    # the parent's helper threads (fork copies the calling thread alone): it starts a pool
    # of its own on its first parallel call, and gets the parent's bits.
    script = FORKED.format(n=4 * launch.SERIAL_SIZE)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_subprocess_env(),
    )
    assert done.returncode == 0, done.stderr


THREADS_FROM_ENVIRONMENT = (
    SPY_ON_TEAMS
    + """
import os, numpy as np, bceloss
from bceloss import _kernels
x = np.linspace(-4, 4, 40 * launch.SERIAL_SIZE)  # 160 blocks
bceloss.binary_cross_entropy_with_logits(x, (x > 0) * 1.0)
print(_kernels.get_num_threads(), teams)
"""
)


def _run_script(script, **variables):
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_subprocess_env(**variables),
    )


def test_bceloss_num_threads_sets_the_thread_count_at_start_up():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for value, want in (("3", 3), (" 1 ", 1), ("7", 7), (None, cores), ("", cores)):
        variables = {} if value is None else {"BCELOSS_NUM_THREADS": value}
        done = _run_script(THREADS_FROM_ENVIRONMENT, **variables)
        assert done.returncode == 0, (value, done.stderr)
        assert done.stdout.strip() == f"{want} [{want}]", (value, done.stdout)


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "1025"])
def test_a_bad_bceloss_num_threads_is_a_clear_error(value):
    done = _run_script(THREADS_FROM_ENVIRONMENT, BCELOSS_NUM_THREADS=value)
    assert done.returncode != 0
    message = f"BCELOSS_NUM_THREADS must be an integer from 1 to 1024; got {value!r}"
    assert f"ValueError: {message}" in done.stderr, done.stderr


def test_set_num_threads_takes_a_positive_int_only():
    before = _kernels.get_num_threads()
    for bad, error, message in (
        (0, ValueError, "count must be from 1 to 1024; got 0"),
        (-1, ValueError, "count must be from 1 to 1024; got -1"),
        (10000, ValueError, "count must be from 1 to 1024; got 10000"),
        (1.5, TypeError, "count must be an int; got float"),
        (True, TypeError, "count must be an int; got bool"),
        ("2", TypeError, "count must be an int; got str"),
    ):
        with pytest.raises(error, match=f"^{message}$"):
            _kernels.set_num_threads(bad)
        assert _kernels.get_num_threads() == before  # unchanged
    with _num_threads(before + 1):
        assert _kernels.get_num_threads() == before + 1
    assert _kernels.get_num_threads() == before


def test_float32_mean_accumulates_exactly():
    # 4 million elements: a float32 accumulator would be off by ~1e-4 relative; the block
    # sums in float64 combined by fsum give the correctly rounded total of the elementwise
    # losses, and 'mean' rounds it once.
    rng = np.random.default_rng(13)
    n = 4_000_000
    x = rng.normal(0, 4, n).astype(np.float32)
    y = rng.random(n).astype(np.float32)
    elementwise = BCEL(x, y, reduction="none").astype(np.float64)
    exact = math.fsum(elementwise.tolist()) / n
    assert BCEL(x, y) == np.float32(exact)
    # and against the float64 computation: the float32 elementwise rounding errors average out
    reference = float(
        _evaluate.evaluate(_call(True, x.astype(np.float64), y.astype(np.float64))).mean()
    )
    assert abs(exact / reference - 1) < 1e-9


# --- value_and_grad(..., out=) ------------------------------------------------------------


def test_out_receives_the_gradient():
    x, y, w, p = _logits_sample(14, np.float32)
    x.flat[:6] = 0.5
    f = bceloss.value_and_grad(BCEL, argnums=(0, 1))
    value, (gx, gy) = f(x, y, w, "mean", p)
    buffer = np.full(SHAPE, np.nan, np.float32)
    value2, (gx2, gy2) = f(x, y, w, "mean", p, out=buffer)
    assert gx2 is buffer
    assert value2 == value
    np.testing.assert_array_equal(buffer, gx)
    np.testing.assert_array_equal(gy2, gy)
    strided = np.full((64, 160), np.nan, np.float32)[:, ::2]  # not contiguous: copied in
    _, g3 = bceloss.value_and_grad(BCEL)(x, y, w, "mean", p, out=strided)
    assert g3 is strided
    np.testing.assert_array_equal(strided, gx)
    small = np.empty(3, np.float32)  # below the kernel's threshold: copied in too
    _, g4 = bceloss.value_and_grad(BCEL)(x[0, :3], y[0, :3], out=small)
    assert g4 is small
    np.testing.assert_allclose(small, bceloss.value_and_grad(BCEL)(x[0, :3], y[0, :3])[1])


def test_out_is_checked():
    x = np.zeros(SHAPE, np.float32)
    y = np.zeros(SHAPE, np.float32)
    f = bceloss.value_and_grad(BCEL)
    with pytest.raises(ValueError, match=r"out must have the shape of input \(64, 80\)"):
        f(x, y, out=np.empty((80, 64), np.float32))
    with pytest.raises(
        TypeError, match=r"out must have the dtype of input \(float32\); got float64"
    ):
        f(x, y, out=np.empty(SHAPE))
    with pytest.raises(TypeError, match="out must be a NumPy array or PyTorch tensor"):
        f(x, y, out=[0.0])
    read_only = np.empty(SHAPE, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        f(x, y, out=read_only)
    with pytest.raises(ValueError, match="out must not share memory"):
        f(x, y, out=x)
    # a mask living in out's bytes would change as the gradient is written
    raw = np.zeros(x.nbytes, np.uint8)
    with pytest.raises(ValueError, match=r"out must not share memory.*where"):
        f(
            x,
            y,
            where=raw[: x.size].view(bool).reshape(SHAPE),
            out=raw.view(np.float32).reshape(SHAPE),
        )
    with pytest.raises(ValueError, match="argnums must include 0"):
        bceloss.value_and_grad(BCEL, argnums=1)(x, y, out=np.empty(SHAPE, np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1, 7])
@pytest.mark.parametrize("masked", [False, True])
def test_a_callers_out_at_any_address_holds_what_a_fresh_array_holds(dtype, offset, masked):
    # The kernel writes float32 and float64 results straight into the output, float16 through
    # a buffer; a caller's out= may start anywhere, even at an odd byte address (offset 7),
    # and must end up holding what a fresh output holds, every element written (a mask's
    # dropped elements included).
    n = 2 * _summation.BLOCK + 1234
    rng = np.random.default_rng(offset)
    x = (rng.standard_normal(n) * 8).astype(dtype)
    y = rng.random(n).astype(dtype)
    where = rng.random(n) < 0.7 if masked else None
    vg = bceloss.value_and_grad(BCEL, argnums=(0, 1))
    fresh_value, (fresh, fresh_gy) = vg(x, y, where=where)
    buffer = np.full(n + offset, np.nan, dtype)
    out = buffer[offset:]
    if offset == 7:
        raw = np.frombuffer(bytearray(out.nbytes + 1), np.uint8)[1:]
        out = raw.view(dtype)
        out[:] = np.nan
        assert not out.flags.aligned
    value, (gx, gy) = vg(x, y, where=where, out=out)
    assert gx is out
    assert value == fresh_value
    np.testing.assert_array_equal(out, fresh)
    np.testing.assert_array_equal(gy, fresh_gy)
    assert not np.isnan(out).any()
    if masked:
        assert (out[~where] == 0).all()
        assert (out[where] != 0).any()
    # against the formula, which the kernel must follow (a few ulp)
    call = BCEL._bceloss_bind(x, y, where=where)
    slow = _evaluate.loss_and_grad(call, (0,), fast=False)[1][0]
    kept = n if where is None else int(where.sum())
    assert_close(out, slow, dtype, tolerances.logits_grad_scales(x, y, None, None)[0] / kept)


# --- PyTorch CPU tensors through the same kernels -----------------------------------------


def test_torch_cpu_tensors_run_the_kernel_with_autograd():
    torch = pytest.importorskip("torch", reason="PyTorch is optional")
    from bceloss import _torch

    x, y, w, p = _logits_sample(15, np.float32)
    x.flat[:6] = 0.5
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt, wt, pt = (torch.from_numpy(a) for a in (y, w, p))
    call = BCEL._bceloss_bind(xt.detach(), yt, wt, "mean", pt)
    assert _kernels.plan(_torch.numpy_twin(call)) is not None  # the kernel, zero-copy
    loss = BCEL(xt, yt, wt, "mean", pt)
    (3 * loss).backward()
    value, grad = bceloss.value_and_grad(BCEL)(x, y, w, "mean", p)
    assert float(loss.detach()) == float(value)
    np.testing.assert_allclose(xt.grad.numpy(), 3 * grad, rtol=1e-6, atol=1e-38)  # subnormals
    # second order: the backward is differentiable (the array-API formula builds that graph)
    xt.grad = None
    (gx,) = torch.autograd.grad(BCEL(xt, yt, wt, "mean", pt), xt, create_graph=True)
    (hess_diag,) = torch.autograd.grad(gx.sum(), xt)
    X, Y, W, P = (torch.from_numpy(a).double() for a in (x, y, w, p))
    s = torch.sigmoid(X)
    want = W * (1 + (P - 1) * Y) * s * (1 - s) / x.size
    np.testing.assert_allclose(hess_diag.double().numpy(), want.numpy(), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("n", [600, 4095, 4096, 20000])
def test_a_streamed_piece_takes_the_path_of_its_whole_array(n):
    # The library runs the formula below KERNEL_MIN_SIZE elements and the kernel from there; a
    # stream's pieces must follow the whole array's path, or their bits differ.
    rng = np.random.default_rng(n)
    x = rng.normal(0, 6, n).astype(np.float32)
    y = rng.random(n).astype(np.float32)
    piece = _call(True, x[:500], y[:500], reduction="sum")
    formula = _evaluate.elementwise(piece, whole_size=_dispatch.KERNEL_MIN_SIZE - 1)[0]
    fused = _evaluate.elementwise(piece, whole_size=_dispatch.KERNEL_MIN_SIZE)[0]
    assert formula.tobytes() != fused.tobytes()  # the two paths do differ in the last bits
    streamed = _evaluate.elementwise(_call(True, x, y, reduction="sum"), whole_size=n)[0]
    whole = _evaluate.evaluate(_call(True, x, y, reduction="sum"))
    assert np.float32(_summation.total(streamed)).tobytes() == whole.tobytes()


# --- label smoothing, masks and 'weighted_mean' in the kernels (issue 7) -------------------

MASKS = {"full": SHAPE, "column": (SHAPE[0], 1), "trailing": (SHAPE[1],)}  # column: materialised
OPTIONS = {
    "smoothing": ({"label_smoothing": 0.2}, None, ("none", "mean", "sum")),
    "full mask": ({}, "full", ("none", "mean", "sum")),
    "column mask": ({}, "column", ("mean",)),
    "trailing mask": ({}, "trailing", ("sum",)),
    "weighted_mean": ({}, None, ("weighted_mean",)),
    "all": ({"label_smoothing": 0.3}, "full", ("weighted_mean", "mean")),
}
OPTION_CASES = [(d, o) for d in (np.float32, np.float64) for o in OPTIONS] + [
    (d, "all") for d in (np.float16, BF16)
]


def _options_case(seed, dtype, option):
    kwargs, mask, reductions = OPTIONS[option]
    x, y, w, p = _logits_sample(seed, dtype)
    x.flat[:6] = 1.5  # compared without the special values (the oracle covers them)
    rng = np.random.default_rng(seed)
    if mask is not None:
        kwargs = {**kwargs, "where": rng.random(MASKS[mask]) < 0.9}  # >= 4096 of 5120 kept
    probs = samples.probabilities(rng, SHAPE).astype(dtype)
    return x, probs, y, w, p, kwargs, reductions


def _gradient_scales(x, y, w, p, kwargs, reduction):
    """The largest terms of the gradients (`tolerances.logits_grad_scales` at the smoothed target),
    over the reduction's denominator."""
    s = kwargs.get("label_smoothing", 0.0)
    ys = y.astype(np.float64) * (1 - s) + s / 2
    scales = tolerances.logits_grad_scales(x, ys, w, p)
    keep = np.broadcast_to(kwargs.get("where", True), SHAPE)
    denominator = {
        "sum": 1.0,
        "mean": keep.sum(),
        "weighted_mean": np.broadcast_to(w.astype(np.float64), SHAPE)[keep].sum(),
    }[reduction]
    return [sc / denominator for sc in scales]


@pytest.mark.parametrize(("dtype", "option"), OPTION_CASES)
def test_options_in_the_kernel_match_the_formula(dtype, option):
    x, probs, y, w, p, kwargs, reductions = _options_case(17, dtype, option)
    for reduction in reductions:
        assert_close(*_both(BCEL, x, y, w, reduction, p, **kwargs), dtype)
        assert_close(*_both(BCE, probs, y, w, reduction, **kwargs), dtype)
        if reduction == "none":
            continue
        call = BCEL._bceloss_bind(x, y, w, reduction, p, **kwargs)
        fast = bceloss.value_and_grad(BCEL, argnums=(0, 1))(x, y, w, reduction, p, **kwargs)
        slow = _evaluate.loss_and_grad(call, (0, 1), fast=False)
        assert_close(fast[0], slow[0], dtype)
        scales = _gradient_scales(x, y, w, p, kwargs, reduction)
        for g, h, scale in zip(fast[1], slow[1], scales, strict=True):
            assert_close(g, h, dtype, scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("total", ["zero", "subnormal", "tiny", "one", "near the largest"])
def test_weighted_mean_gradients_at_extreme_weight_sums_match_the_formula(dtype, total):
    # the weight sum divides the gradient: at 0, below the smallest normal number and near
    # the largest float the kernel agrees with the formula, inf and NaN included. Near the
    # largest, w l and w d l / d x overflow: the kernel then computes with the weights scaled
    # down by a power of two (`plan.downscaled`), which leaves the ratios as they are; the
    # formula gets the weights so scaled (it would give inf)
    info = np.finfo(dtype)
    total = {
        "zero": 0.0,
        "subnormal": float(info.tiny) / 2,
        "tiny": float(info.tiny) * 2,
        "one": 1.0,
        "near the largest": float(info.max) * 0.75,
    }[total]
    n = 5000
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(n) * 4).astype(dtype)
    y = rng.random(n).astype(dtype)
    probs = samples.probabilities(rng, (n,)).astype(dtype)
    w = np.zeros(n, dtype)
    w[:3] = total / 3  # representable: no subnormal weight loses digits to the division by 3
    w[3] = total - 2 * w[0] - w[0]
    # under a mask, the dropped elements' zeros are divided too (0 / 0 is NaN, as the
    # formula has it)
    keep = np.arange(n) % 7 != 5
    for (fn, first), where in itertools.product(((BCEL, x), (BCE, probs)), (None, keep)):
        call = fn._bceloss_bind(first, y, w, "weighted_mean", where=where)
        assert _dispatch.kernel_plan(call) is not None
        fast = bceloss.value_and_grad(fn)(first, y, w, "weighted_mean", where=where)[1]
        if total > 1:
            call = call.replace(weight=w * dtype(2.0**-64))  # exact
        slow = _evaluate.loss_and_grad(call, (0,), fast=False)[1][0]
        g, h = fast.astype(np.float64), slow.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(h))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(h))
        finite = np.isfinite(h)
        scale = np.abs(h[finite]).max(initial=0.0)
        assert np.all(np.abs(g[finite] - h[finite]) <= 8 * float(info.eps) * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_mask_in_the_kernel_equals_indexing_bit_for_bit(dtype):
    # the kept elements are summed in blocks of BLOCK kept ones: f(x, y, where=m) adds up
    # what f(x[m], y[m]) adds up, in the same order, gradients included
    rng = np.random.default_rng(18)
    n = 3 * _summation.BLOCK + 777
    x, y = rng.normal(0, 4, n).astype(dtype), rng.random(n).astype(dtype)
    w, p = rng.uniform(0, 3, n).astype(dtype), samples.positive_weights(rng, (n,)).astype(dtype)
    m = rng.random(n) < 0.6
    dropped = np.flatnonzero(~m)
    x[dropped[::5]], x[dropped[1::5]] = np.inf, np.nan  # masked out: nothing leaks
    assert _dispatch.kernel_plan(BCEL._bceloss_bind(x, y, where=m)) is not None
    vg = bceloss.value_and_grad(BCEL, argnums=(0, 1))
    for reduction in ("mean", "sum", "weighted_mean"):
        masked = vg(x, y, w, reduction, p, where=m)
        indexed = vg(x[m], y[m], w[m], reduction, p[m])
        assert masked[0].tobytes() == indexed[0].tobytes()
        for g, h in zip(masked[1], indexed[1], strict=True):
            assert g[m].tobytes() == h.tobytes()
            assert (g[~m] == 0).all()
    elementwise = BCEL(x, y, w, "none", p, where=m)
    assert elementwise[m].tobytes() == BCEL(x[m], y[m], w[m], "none", p[m]).tobytes()
    assert (elementwise[~m] == 0).all()


def test_a_mask_whose_true_bytes_are_not_1_is_read_as_numpy_reads_it():
    # NumPy reads any nonzero byte of a bool array as True (a view of other bytes, a mask
    # from C code): a kernel that counted the bytes themselves would pack the kept elements
    # past its buffer (the numba kernels did: the process aborted)
    rng = np.random.default_rng(16)
    n = 3 * launch.SERIAL_SIZE + 7
    x, y = rng.normal(0, 3, n).astype(np.float32), rng.random(n).astype(np.float32)
    m = rng.random(n) < 0.7
    odd = (m.view(np.uint8) * rng.integers(1, 255, n, dtype=np.uint8)).view(bool)
    assert (odd.view(np.uint8) > 1).any()
    assert np.array_equal(odd, m)  # the same mask to NumPy
    vg = bceloss.value_and_grad(BCEL)
    for reduction in ("mean", "sum"):
        value, grad = vg(x, y, reduction=reduction, where=odd)
        value0, grad0 = vg(x, y, reduction=reduction, where=m)
        assert value.tobytes() == value0.tobytes()
        assert grad.tobytes() == grad0.tobytes()
        assert BCEL(x, y, reduction=reduction, where=odd).tobytes() == value0.tobytes()


@pytest.mark.parametrize("kept", [0, _dispatch.KERNEL_MIN_SIZE - 1, _dispatch.KERNEL_MIN_SIZE])
def test_a_mask_keeping_few_elements_takes_the_formula(kept):
    # the path follows the number of elements kept, so that f(x, y, where=m) and
    # f(x[m], y[m]) take the same one
    rng = np.random.default_rng(kept)
    n = 3 * _summation.BLOCK
    x, y = rng.normal(0, 4, n), rng.random(n)
    m = np.zeros(n, bool)
    m[rng.choice(n, kept, replace=False)] = True
    call = BCEL._bceloss_bind(x, y, where=m)
    assert (_dispatch.kernel_plan(call) is not None) == (kept >= _dispatch.KERNEL_MIN_SIZE)
    got = BCEL(x, y, where=m, reduction="sum")
    assert got.tobytes() == BCEL(x[m], y[m], reduction="sum").tobytes()
    if kept == 0:
        assert np.isnan(BCEL(x, y, where=m))


def test_torch_cpu_tensors_take_the_options_through_the_kernel():
    torch = pytest.importorskip("torch", reason="PyTorch is optional")
    from bceloss import _torch

    x, _, y, w, p, kwargs, _ = _options_case(20, np.float32, "all")
    X, Y, W, P, M = (torch.from_numpy(a) for a in (x, y, w, p, kwargs["where"]))
    options = {"label_smoothing": 0.3, "where": M}
    call = BCEL._bceloss_bind(X, Y, W, "weighted_mean", P, **options)
    assert _kernels.plan(_torch.numpy_twin(call)) is not None
    Xg = X.clone().requires_grad_()
    loss = BCEL(Xg, Y, W, "weighted_mean", P, **options)
    loss.backward()
    value, grad = bceloss.value_and_grad(BCEL)(x, y, w, "weighted_mean", p, **kwargs)
    assert float(loss.detach()) == float(value)
    assert Xg.grad.numpy().tobytes() == grad.tobytes()


FOCAL_CASES = [(0.25, 2.0), (-1.0, 0.5), (0.75, 3.5), (-1.0, 0.0)]


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64])
def test_focal_loss_in_the_kernel_matches_the_formula(dtype):
    # the oracle holds focal_terms to its tolerances (test_kernels_focal.py); here the kernel's
    # plumbing: reductions, a mask, gradients, against the formula
    x, y, _, _ = _logits_sample(21, dtype)
    x.flat[:6] = 1.5
    m = np.random.default_rng(21).random(SHAPE) < 0.9
    focal = bceloss.sigmoid_focal_loss
    for alpha, gamma in FOCAL_CASES:
        for reduction in ("none", "mean", "sum"):
            assert_close(*_both(focal, x, y, alpha, gamma, reduction), dtype)
        assert_close(*_both(focal, x, y, alpha, gamma, "mean", where=m), dtype)
        call = focal._bceloss_bind(x, y, alpha, gamma, "sum", where=m)
        fast = bceloss.value_and_grad(focal, argnums=(0, 1))(x, y, alpha, gamma, "sum", where=m)
        slow = _evaluate.loss_and_grad(call, (0, 1), fast=False)
        assert_close(fast[0], slow[0], dtype)
        for g, h in zip(fast[1], slow[1], strict=True):
            assert_close(g, h, dtype, np.full(SHAPE, np.abs(h.astype(np.float64)).max()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paddle_focal_loss_in_the_kernel_matches_the_formula(dtype):
    from bceloss.compat import paddle

    x, y, _, _ = _logits_sample(22, dtype)
    x.flat[:6] = 1.5
    label = y.copy()
    label[::3] = -100  # Paddle's ignored label, and its normalizer
    normalizer = np.array([7.0], dtype)
    got = paddle.sigmoid_focal_loss(x, label, normalizer, reduction="none")
    call = paddle.sigmoid_focal_loss._bceloss_bind(x, label, normalizer, reduction="none")
    assert _dispatch.kernel_plan(call) is not None
    assert_close(got, _evaluate.evaluate(call, fast=False), dtype)
    assert (got[::3] == 0).all()


READ_ONLY = """
import numpy as np, bceloss, sys
x = np.linspace(-5, 5, 100_000, dtype=np.float32)
y = (x > 0).astype(np.float32)
value = bceloss.binary_cross_entropy_with_logits(x, y)
print(float(value))
sys.argv = ["bceloss", "eval", "--sample"]
from bceloss.cli import main
main()
"""


def _tree(root):
    """Every file under root, with its size and modification time."""
    return {
        (path, os.path.getsize(path), os.path.getmtime(path))
        for path in (os.path.join(d, f) for d, _, files in os.walk(root) for f in files)
    }


def test_a_read_only_install_without_a_home_computes_and_writes_nothing(tmp_path):
    # (a container's usual case.) The kernels are compiled at install: a large call and the
    # command line work with no writable home or cache, and the package's files stay as they
    # are (the numba kernels wrote their cache next to the package or failed).
    import shutil

    package = tmp_path / "site" / "bceloss"
    shutil.copytree(os.path.dirname(bceloss.__file__), package)
    for d, _, files in os.walk(package):
        os.chmod(d, 0o555)
        for f in files:
            os.chmod(os.path.join(d, f), 0o444)
    before = _tree(tmp_path / "site")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(tmp_path / "site"),
        "HOME": str(tmp_path / "no-home"),  # does not exist
        "XDG_CACHE_HOME": str(tmp_path / "no-cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", READ_ONLY],
            capture_output=True, text=True, timeout=120, check=False, env=env, cwd=tmp_path,
        )  # fmt: skip
    finally:
        for d, _, _ in os.walk(package):
            os.chmod(d, 0o755)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    x = np.linspace(-5, 5, 100_000)
    want = np.mean(np.logaddexp(0, x) - x * (x > 0))
    assert abs(float(lines[0]) - want) <= 1e-6 * want
    assert "0.09643331520293881" in done.stdout
    assert _tree(tmp_path / "site") == before
    assert not (tmp_path / "no-home").exists()
    assert not (tmp_path / "no-cache").exists()


def test_the_native_entry_points_refuse_arguments_that_would_reach_outside_an_array():
    # the planning never passes these; the checks in native.cpp keep a mistake from reading
    # or writing past an array (each of these crashed the process before the checks)
    a = np.linspace(0.5, 2, 8)
    with pytest.raises(ValueError, match="needs out2"):
        _native.fastmath("log_parts", a, np.empty(8), None, None)
    with pytest.raises(ValueError, match="needs out2"):  # (or j)
        _native.fastmath("ldexp_neg", a, np.empty(8), None, None)
    with pytest.raises(ValueError, match="type"):
        _native.fastmath("exp_neg_parts", a, np.empty(8), np.empty(8, np.float32), None)
    with pytest.raises(ValueError, match="type"):
        _native.fastmath("ldexp_neg", a, np.empty(8), None, np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="no size"):
        _native.kept_blocks(np.empty(5, "V0"), np.empty(2, np.int64))
    shared = np.zeros(16, np.int64)
    with pytest.raises(ValueError, match="overlap"):
        _native.kept_blocks(shared.view(np.uint8)[:64], shared[6:8])
    # starts are copied before the GIL is released: an output over them changes nothing
    x, y = np.linspace(-3, 3, 24), np.linspace(0, 1, 24)
    call = _call(True, x, y)
    pl = _kernels.plan(call)
    want = _kernels.elementwise(call, pl)[0]
    out = np.empty(24)
    starts = out[22:].view(np.int64)  # the last two outputs
    starts[:] = [0, 24]
    launch.run_native(
        0, True, pl.x, pl.y, None, None, None, None, out, None, None, None, None, starts,
        math.nan, 1.0, 0.0, False, 0.0, 0.0, 1.0, 1, 1,
    )  # fmt: skip
    assert out.tobytes() == want.tobytes()


def test_every_loop_compiled_for_avx512_is_vectorised():
    # GCC drops a loop's vectorisation without a word on small changes to the math (a mask
    # pattern it cannot convert; a flag that turns trapping math back on), and the loop then
    # runs 5 to 10 times slower with the same results: held here by the instructions of
    # every segment loop's x86-64-v4 clone, which must use 512-bit registers
    import shutil

    so = _native.__file__
    objdump = shutil.which("objdump")
    if objdump is None or os.uname().machine != "x86_64":
        pytest.skip("needs objdump and an x86-64 build")
    listing = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", so], capture_output=True, text=True, check=True
    ).stdout
    loops, name, wide = {}, None, 0
    for line in listing.splitlines():
        if line.endswith(">:"):
            if name is not None:
                loops[name] = wide
            symbol = line.split("<", 1)[1][:-2]
            name = symbol if "segment" in symbol and symbol.endswith("arch_x86_64_v4") else None
            wide = 0
        elif name is not None and "zmm" in line:
            wide += 1
    if name is not None:
        loops[name] = wide
    if not loops:
        pytest.skip("the extension was built without the x86-64-v4 clones (GCC before 12)")
    # 2 dtypes x 2 weights x (logits: 3 gradients x 2 + probabilities: 2 x 2 + 1 + focal: 3 x 2)
    assert len(loops) >= 68, len(loops)
    scalar = sorted(name for name, count in loops.items() if count == 0)
    assert not scalar, scalar


# --- combine: the exact total of block sums, in C (the PyTorch operator's C kernel) ------

_FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _half_way_sums():
    """Sums whose last rounding lands half-way between two floats: a big value, a tie at
    its last bit, and a tiny value of either sign (or none) that breaks the tie."""
    big = st.floats(1.0, 2.0**60).map(lambda v: math.ldexp(math.frexp(v)[0], math.frexp(v)[1]))
    return st.tuples(big, st.sampled_from([-1.0, 1.0]), st.sampled_from([-1.0, 0.0, 1.0])).map(
        lambda t: [t[0], t[1] * math.ulp(t[0]) / 2, t[2] * math.ulp(t[0]) * 2.0**-40]
    )


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.lists(_FINITE, max_size=40),
        st.lists(st.floats(-1e6, 1e6), max_size=200),
        _half_way_sums(),
        st.lists(st.sampled_from([1e16, -1e16, 1.0, -1.0, 0.5, 2.0**-60, 3.0]), max_size=60),
    )
)
def test_combine_in_c_is_math_fsum(values):
    data = np.asarray(values, dtype=np.float64).tobytes()
    try:
        expected = math.fsum(values)
    except OverflowError:  # a partial sum beyond float64: the Python kernel decides
        assert _native.combine(data) is None
        return
    got = _native.combine(data)
    if got is None:  # only an overflowing partial may make C hand the total back
        assert max((abs(v) for v in values), default=0.0) > 2.0**1000
        return
    assert got == expected, values
    assert math.copysign(1.0, got) == math.copysign(1.0, expected), values


def test_combine_hands_non_finite_values_back():
    for values in ([1.0, math.inf], [math.nan], [-math.inf, 2.0]):
        assert _native.combine(np.asarray(values).tobytes()) is None
