"""The core against PyTorch's own functions on CPU, in float64, where both are exact enough
to agree to a few ulp: values for every reduction and broadcast, and gradients."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import bceloss

torch = pytest.importorskip("torch", reason="PyTorch is the reference these tests compare to")
F = torch.nn.functional

SHAPES = [
    # input shape, weight shape, pos_weight shape
    ((7,), None, None),
    ((5, 4), (4,), (4,)),
    ((3, 5, 4), (5, 1), (1, 1, 4)),
    ((6, 3), (6, 3), ()),
    ((2, 3), (), None),
]


def _case(seed, shape, w_shape, p_shape, probs):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.001, 0.999, shape) if probs else rng.normal(scale=6, size=shape)
    y = rng.random(shape)
    w = None if w_shape is None else rng.uniform(0, 2, w_shape)
    p = None if p_shape is None else rng.uniform(0.1, 4, p_shape)
    return x, y, w, p


def _t(a, grad=False):
    return None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("shape", "w_shape", "p_shape"), SHAPES)
@pytest.mark.parametrize("seed", range(3))
def test_logits_values_match_torch(reduction, shape, w_shape, p_shape, seed):
    x, y, w, p = _case(seed, shape, w_shape, p_shape, probs=False)
    got = bceloss.binary_cross_entropy_with_logits(x, y, w, reduction, p)
    want = F.binary_cross_entropy_with_logits(
        _t(x), _t(y), _t(w), reduction=reduction, pos_weight=_t(p)
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-13, atol=0)
    assert got.shape == tuple(want.shape)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("shape", "w_shape", "p_shape"), SHAPES)
def test_probability_values_match_torch(reduction, shape, w_shape, p_shape):
    x, y, w, _ = _case(4, shape, w_shape, p_shape, probs=True)
    got = bceloss.binary_cross_entropy(x, y, w, reduction)
    want = F.binary_cross_entropy(
        _t(x),
        _t(y),
        None if w is None else _t(np.broadcast_to(w, shape).copy()),
        reduction=reduction,
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-13, atol=0)


def test_probability_clamps_match_torch():
    x = np.array([0.0, 1.0, 0.0, 1.0, 1e-60, 1 - 1e-16])
    y = np.array([1.0, 0.0, 0.3, 0.6, 0.5, 0.5])
    got = bceloss.binary_cross_entropy(x, y, reduction="none")
    want = F.binary_cross_entropy(_t(x), _t(y), reduction="none")
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-14)


@pytest.mark.parametrize(("shape", "w_shape", "p_shape"), SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_logits_gradients_match_torch_autograd(shape, w_shape, p_shape, reduction):
    x, y, w, p = _case(9, shape, w_shape, p_shape, probs=False)
    _, (gx, gy) = bceloss.value_and_grad(bceloss.binary_cross_entropy_with_logits, (0, 1))(
        x, y, w, reduction, p
    )
    tx, ty = _t(x, True), _t(y, True)
    F.binary_cross_entropy_with_logits(
        tx, ty, _t(w), reduction=reduction, pos_weight=_t(p)
    ).backward()
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gy, ty.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_probability_gradients_match_torch_autograd(reduction):
    x, y, w, _ = _case(2, (6, 5), (5,), None, probs=True)
    _, (gx, gy) = bceloss.value_and_grad(bceloss.binary_cross_entropy, (0, 1))(x, y, w, reduction)
    tx, ty = _t(x, True), _t(y, True)
    F.binary_cross_entropy(
        tx, ty, _t(np.broadcast_to(w, x.shape).copy()), reduction=reduction
    ).backward()
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gy, ty.grad.numpy(), rtol=1e-12)


def test_float32_is_more_accurate_than_torch_where_torch_cancels():
    # SPEC §2: PyTorch's form returns 0 at x = -17, y = 0 in float32; the loss is 4.14e-8.
    x = np.array([-17.0, -30.0], np.float32)
    y = np.zeros(2, np.float32)
    ours = bceloss.binary_cross_entropy_with_logits(x, y, reduction="none")
    exact = np.log1p(np.exp(x.astype(np.float64)))
    np.testing.assert_allclose(ours, exact, rtol=1e-6)
    assert ours[0] == pytest.approx(4.14e-8, rel=1e-3)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (bceloss.binary_cross_entropy, F.binary_cross_entropy),
        (bceloss.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
    ],
)
def test_signatures_follow_torch(ours, theirs):
    legacy = {"size_average", "reduce"}
    want = [
        (p.name, p.default)
        for p in inspect.signature(theirs).parameters.values()
        if p.name not in legacy
    ]
    # our keyword-only options (label_smoothing, where) come after PyTorch's arguments
    got = [
        (p.name, p.default)
        for p in inspect.signature(ours).parameters.values()
        if p.kind != p.KEYWORD_ONLY
    ]
    assert got == want


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(bceloss.BCELoss, torch.nn.BCELoss), (bceloss.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss)],
)
def test_class_signatures_follow_torch(ours, theirs):
    legacy = {"size_average", "reduce", "self"}
    want = [
        (p.name, p.default)
        for p in inspect.signature(theirs.__init__).parameters.values()
        if p.name not in legacy
    ]
    got = [
        (p.name, p.default)
        for p in inspect.signature(ours.__init__).parameters.values()
        if p.name != "self" and p.kind != p.KEYWORD_ONLY
    ]
    assert got == want
