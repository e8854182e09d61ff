"""Paddle users' own tensors (issue #19, SPEC §6): paddle.Tensor in, paddle.Tensor out, the
loss inside Paddle's autograd, the flavour classes as paddle.nn.Layer, paddle.jit.to_static;
against the float64 oracle and Paddle 3.3's own losses, with SPEC §5's differences pinned."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import textwrap
import warnings

import ml_dtypes
import numpy as np
import oracle
import pytest
import test_compat_paddle as flavour_tests
import tolerances
from flavours import F32, F64, arr, logits_case, probs_case

import bceloss
from bceloss.compat import paddle as pd

with warnings.catch_warnings():  # Paddle's import warns where ccache is absent
    warnings.simplefilter("ignore")
    import paddle

F = paddle.nn.functional
REDUCTIONS = ["none", "mean", "sum"]


def tensor(a, grad=False):
    """A CPU paddle.Tensor of NumPy array `a` (bfloat16 through float32)."""
    a = np.asarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return paddle.to_tensor(a.astype(F32)).astype("bfloat16")
    return paddle.to_tensor(a, stop_gradient=not grad)


def _out(loss, reduction, rng):
    """The scalar whose backward gives the loss's gradients: a 'none' loss weighed by a
    random output gradient G (returned, None for the reduced ones)."""
    if reduction != "none":
        return loss, None
    g = rng.uniform(0.5, 2.0, tuple(loss.shape)).astype(loss.numpy().dtype)
    return (loss * tensor(g)).sum(), g


# --------------------------------------------------------------- the entry points

LOGITS_FORMS = {
    "flavour": lambda x, y, w, r, p: pd.binary_cross_entropy_with_logits(x, y, w, r, p),
    "flavour_keywords": lambda x, y, w, r, p: pd.binary_cross_entropy_with_logits(
        logit=x, label=y, weight=w, reduction=r, pos_weight=p, name="loss"
    ),
    "flavour_layer": lambda x, y, w, r, p: pd.BCEWithLogitsLoss(w, r, p)(x, y),
    "core": lambda x, y, w, r, p: bceloss.binary_cross_entropy_with_logits(x, y, w, r, p),
    "core_class": lambda x, y, w, r, p: bceloss.BCEWithLogitsLoss(w, r, p)(x, y),
}
PROBS_FORMS = {
    "flavour": lambda x, y, w, r: pd.binary_cross_entropy(x, y, w, r),
    "flavour_layer": lambda x, y, w, r: pd.BCELoss(w, r)(x, y),
    "core": lambda x, y, w, r: bceloss.binary_cross_entropy(x, y, w, r),
    "core_class": lambda x, y, w, r: bceloss.BCELoss(w, r)(x, y),
}


def _reduce_exact(terms, reduction, g, n):
    """The oracle's elementwise terms as the reduced loss's gradient: times G for 'none',
    divided by the number of elements for 'mean'."""
    if reduction == "none":
        return terms * g
    return terms / n if reduction == "mean" else terms


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", list(LOGITS_FORMS))
def test_logits_values_and_gradients_against_the_oracle(form, reduction, dtype):
    x, y, w, p = logits_case(5, (6, 4), dtype)
    y[0] = rng_targets = np.random.default_rng(5).uniform(0, 1, 4).astype(dtype)  # soft labels
    assert rng_targets.shape == (4,)
    tx, ty, tw, tp = (tensor(a, grad=True) for a in (x, y, w, p))
    loss = LOGITS_FORMS[form](tx, ty, tw, reduction, tp)
    assert isinstance(loss, paddle.Tensor)
    assert loss.dtype == tx.dtype
    assert tuple(loss.shape) == (x.shape if reduction == "none" else ())
    assert not loss.stop_gradient
    value, dx, dy = oracle.elementwise(oracle.logits_terms, x, y, w, p)
    exact = value if reduction == "none" else oracle.exact_sum(value)
    if reduction == "mean":
        exact /= value.size
    tolerances.assert_values(loss.numpy(), exact, dtype, reduced=reduction != "none")

    out, g = _out(loss, reduction, np.random.default_rng(6))
    out.backward()
    n = x.size
    largest_x, largest_y = tolerances.logits_grad_scales(x, y, w, p)
    for got, terms, largest in ((tx.grad, dx, largest_x), (ty.grad, dy, largest_y)):
        want = _reduce_exact(terms, reduction, g, n)
        scale = _reduce_exact(largest, reduction, g, n)
        assert got.dtype == tx.dtype
        tolerances.assert_gradient(got.numpy(), want, scale, dtype, ulps=12)
    # d l / d w = the loss without the weight; d l / d p = w y softplus(-x): summed over rows
    x64, y64, w64, p64 = (a.astype(F64) for a in (x, y, w, p))
    sp = np.logaddexp(0, -x64)
    unweighted = (1 - y64) * x64 + (1 + (p64 - 1) * y64) * sp
    gg = 1.0 if g is None else g.astype(F64)
    scale = 1 / n if reduction == "mean" else 1.0
    rtol = 2e-6 if dtype == F32 else 1e-13
    np.testing.assert_allclose(tw.grad.numpy(), (gg * unweighted).sum(0) * scale, rtol=rtol)
    np.testing.assert_allclose(tp.grad.numpy(), (gg * w64 * y64 * sp).sum(0) * scale, rtol=rtol)
    assert tuple(tw.grad.shape) == (4,)
    assert tuple(tp.grad.shape) == (4,)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", list(PROBS_FORMS))
def test_probabilities_values_and_gradients_against_the_oracle(form, reduction, dtype):
    x, y, w = probs_case(7, (5, 4), dtype)
    tx, ty, tw = (tensor(a, grad=True) for a in (x, y, w))
    loss = PROBS_FORMS[form](tx, ty, tw, reduction)
    assert isinstance(loss, paddle.Tensor)
    assert loss.dtype == tx.dtype
    assert tuple(loss.shape) == (x.shape if reduction == "none" else ())
    value, dx, dy = oracle.elementwise(oracle.probs_terms, x, y, w)
    exact = value if reduction == "none" else oracle.exact_sum(value)
    if reduction == "mean":
        exact /= value.size
    tolerances.assert_values(loss.numpy(), exact, dtype, reduced=reduction != "none")
    out, g = _out(loss, reduction, np.random.default_rng(8))
    out.backward()
    largest_x, largest_y = tolerances.probs_grad_scales(x, y, w)
    for got, terms, largest in ((tx.grad, dx, largest_x), (ty.grad, dy, largest_y)):
        want = _reduce_exact(terms, reduction, g, x.size)
        scale = _reduce_exact(largest, reduction, g, x.size)
        tolerances.assert_gradient(got.numpy(), want, scale, dtype, ulps=12)
    unweighted, _, _ = oracle.elementwise(oracle.probs_terms, x, y)
    want_w = _reduce_exact(unweighted, reduction, g, x.size).sum(1, keepdims=True)
    np.testing.assert_allclose(tw.grad.numpy(), want_w, rtol=2e-6 if dtype == F32 else 1e-13)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_against_paddles_own_losses_where_paddle_is_right(reduction, dtype):
    # moderate nonzero logits: there Paddle's formula keeps its digits (SPEC §5)
    rng = np.random.default_rng(9)
    x = rng.uniform(0.1, 6, (8, 5)) * rng.choice([-1, 1], (8, 5))
    y = (rng.random((8, 5)) > 0.5).astype(F64)
    w, p = rng.uniform(0.5, 2, (5,)), rng.uniform(0.5, 3, (5,))
    q = rng.uniform(0.05, 0.95, (8, 5))
    x, y, w, p, q = (a.astype(dtype) for a in (x, y, w, p, q))
    # Paddle's max(x, 0) - x y + log1p(exp(-|x|)) is off by an ulp of |x| where it cancels
    tol = {"rtol": 1e-5, "atol": 2e-6} if dtype == F32 else {"rtol": 1e-12, "atol": 4e-15}
    cases = [
        (F.binary_cross_entropy_with_logits, pd.binary_cross_entropy_with_logits, (x, y, w), p),
        (F.binary_cross_entropy, pd.binary_cross_entropy, (q, y, w), None),
    ]
    for theirs, ours, (a, b, c), pos in cases:
        grads = []
        for fn in (theirs, ours):
            ta, tb, tc = tensor(a, grad=True), tensor(b), tensor(c)
            kwargs = {} if pos is None else {"pos_weight": tensor(pos)}
            loss = fn(ta, tb, tc, reduction=reduction, **kwargs)
            grads.append((loss, ta))
            (loss.sum() if reduction == "none" else loss).backward()
        (l_theirs, t_theirs), (l_ours, t_ours) = grads
        assert l_ours.shape == l_theirs.shape
        assert l_ours.dtype == l_theirs.dtype
        np.testing.assert_allclose(l_ours.numpy(), l_theirs.numpy(), **tol)
        np.testing.assert_allclose(t_ours.grad.numpy(), t_theirs.grad.numpy(), **tol)


def test_sigmoid_focal_loss_against_paddles_own():
    rng = np.random.default_rng(10)
    x = rng.uniform(-4, 4, (6, 3)).astype(F32)
    y = (rng.random((6, 3)) > 0.6).astype(F32)
    norm = arr([3.0])
    for reduction in REDUCTIONS:
        results = []
        for fn in (F.sigmoid_focal_loss, pd.sigmoid_focal_loss):
            tx = tensor(x, grad=True)
            loss = fn(tx, tensor(y), normalizer=tensor(norm), reduction=reduction)
            (loss.sum() if reduction == "none" else loss).backward()
            results.append((loss, tx.grad))
        (l0, g0), (l1, g1) = results
        assert l1.shape == l0.shape
        np.testing.assert_allclose(l1.numpy(), l0.numpy(), rtol=1e-5)
        np.testing.assert_allclose(g1.numpy(), g0.numpy(), rtol=1e-5, atol=1e-7)


def test_a_normalizer_that_requires_grad_is_refused():
    x, y = tensor(arr([[1.0, -1.0]]), grad=True), tensor(arr([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"normalizer requires a gradient.*normalizer\.detach"):
        pd.sigmoid_focal_loss(x, y, normalizer=tensor(arr([2.0]), grad=True))


def test_widened_weight_gives_the_joint_shape_and_sums_the_gradient_back():
    x, y, _, _ = logits_case(11, (2, 3))
    w = np.random.default_rng(11).uniform(0, 2, (4, 2, 3)).astype(F32)
    tx, tw = tensor(x, grad=True), tensor(w, grad=True)
    loss = pd.binary_cross_entropy_with_logits(tx, tensor(y), tw, reduction="none")
    assert tuple(loss.shape) == (4, 2, 3)
    loss.sum().backward()
    value, grads = bceloss.value_and_grad(pd.binary_cross_entropy_with_logits, argnums=0)(
        x, y, w, "sum"
    )
    np.testing.assert_allclose(float(loss.sum()), value, rtol=1e-6)
    np.testing.assert_allclose(tx.grad.numpy(), grads, rtol=1e-6)
    assert tuple(tw.grad.shape) == (4, 2, 3)


def test_ignored_label_gives_zero_loss_and_gradient():
    x, y, _, _ = logits_case(12, (3, 4))
    y[1, 2] = -100.0
    tx = tensor(x, grad=True)
    loss = pd.binary_cross_entropy_with_logits(tx, tensor(y), reduction="none")
    assert loss.numpy()[1, 2] == 0
    loss.sum().backward()
    assert tx.grad.numpy()[1, 2] == 0


def test_large_tensors_take_the_kernel_and_agree_with_numpy():
    rng = np.random.default_rng(13)
    x = rng.normal(0, 4, 100_000).astype(F32)
    y = (rng.random(100_000) > 0.5).astype(F32)
    for reduction in ("mean", "sum"):
        tx = tensor(x, grad=True)
        loss = pd.binary_cross_entropy_with_logits(tx, tensor(y), reduction=reduction)
        (loss * 3.0).backward()
        value, grad = bceloss.value_and_grad(pd.binary_cross_entropy_with_logits)(
            x, y, reduction=reduction
        )
        np.testing.assert_array_equal(loss.numpy(), value)
        np.testing.assert_allclose(tx.grad.numpy(), 3 * grad, rtol=2e-7)


def test_bfloat16_and_float16_through_the_core():
    x, y, _, _ = logits_case(14, (3, 4))
    for dtype in ("float16", "bfloat16"):
        np_dtype = tolerances.np_dtype(dtype)
        tx = tensor(x).astype(dtype)
        got = bceloss.binary_cross_entropy_with_logits(tx, tensor(y).astype(dtype))
        assert got.dtype == getattr(paddle, dtype)
        want = bceloss.binary_cross_entropy_with_logits(x.astype(np_dtype), y.astype(np_dtype))
        assert float(got.astype("float32")) == float(want.astype(F32))


# ------------------------------------------- the deliberate differences (SPEC §5)


def test_infinite_logits_give_limits_and_finite_gradients():
    tx = tensor(arr([np.inf, np.inf, -np.inf, -np.inf]), grad=True)
    y = tensor(arr([1.0, 0.0, 0.0, 1.0]))
    loss = pd.binary_cross_entropy_with_logits(tx, y, reduction="none")
    np.testing.assert_array_equal(loss.numpy(), [0.0, np.inf, 0.0, np.inf])
    loss2 = pd.binary_cross_entropy_with_logits(tx, y, reduction="sum")
    loss2.backward()
    np.testing.assert_array_equal(tx.grad.numpy(), [0.0, 1.0, 0.0, -1.0])
    theirs = F.binary_cross_entropy_with_logits(tensor(arr([np.inf])), tensor(arr([1.0])))
    assert np.isnan(theirs.numpy())  # Paddle's


def test_no_cancellation_at_minus_17():
    x, y = tensor(arr([-17.0])), tensor(arr([0.0]))
    exact, _, _ = oracle.logits_terms(F32(-17.0), F32(0.0))
    got = pd.binary_cross_entropy_with_logits(x, y, reduction="none").numpy()
    assert tolerances.ulp_error(got, exact, F32).max() <= tolerances.MAX_ULP
    assert F.binary_cross_entropy_with_logits(x, y, reduction="none").numpy()[0] == 0  # Paddle's


def test_gradient_sign_at_logit_zero_is_sigmoid_0_minus_y():
    tx = tensor(arr([0.0, 0.0]), grad=True)
    pd.binary_cross_entropy_with_logits(tx, tensor(arr([0.0, 1.0])), reduction="sum").backward()
    np.testing.assert_array_equal(tx.grad.numpy(), [0.5, -0.5])


# ------------------------------------------------------------ autograd in a graph


def _model_and_batch(seed=0):
    paddle.seed(seed)
    model = paddle.nn.Sequential(
        paddle.nn.Linear(16, 32), paddle.nn.ReLU(), paddle.nn.Linear(32, 5)
    )
    rng = np.random.default_rng(seed)
    x = tensor(rng.normal(size=(64, 16)).astype(F32))
    y = tensor((rng.random((64, 5)) > 0.7).astype(F32))
    return model, x, y


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_weight_gradient_equals_paddles_own(reduction):
    model, x, y = _model_and_batch()
    pos = tensor(arr([1.0, 2.0, 0.5, 1.0, 3.0]))
    grads = []
    for loss_fn in (paddle.nn.BCEWithLogitsLoss, pd.BCEWithLogitsLoss):
        model.clear_gradients()
        loss = loss_fn(reduction=reduction, pos_weight=pos)(model(x), y)
        (loss.mean() if reduction == "none" else loss).backward()
        grads.append([p.grad.numpy().copy() for p in model.parameters()])
    for theirs, ours in zip(*grads, strict=True):  # float32 rounding of sums over the batch
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * np.abs(theirs).max())


def test_a_training_loop_lowers_the_loss():
    model, x, y = _model_and_batch(1)
    loss_fn = pd.BCEWithLogitsLoss()
    opt = paddle.optimizer.SGD(learning_rate=0.5, parameters=model.parameters())
    losses = []
    for _ in range(20):
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def test_label_gradient_with_the_input_gradient():
    # (a second backward, retain_graph=True, is not tested: Paddle 3.3.1 crashes there with
    # any PyLayer, a two-line one included)
    x, y, _, _ = logits_case(15, (3, 4))
    tx, ty = tensor(x, grad=True), tensor(y, grad=True)
    pd.binary_cross_entropy_with_logits(tx, ty).backward()
    _, dx, dy = oracle.elementwise(oracle.logits_terms, x, y)
    largest_x, largest_y = tolerances.logits_grad_scales(x, y)
    tolerances.assert_gradient(tx.grad.numpy(), dx / x.size, largest_x / x.size, F32)
    tolerances.assert_gradient(ty.grad.numpy(), dy / x.size, largest_y / x.size, F32)


def test_nothing_recorded_without_grad():
    x, y, _, _ = logits_case(16, (3, 4))
    tx = tensor(x, grad=True)
    with paddle.no_grad():
        loss = pd.binary_cross_entropy_with_logits(tx, tensor(y))
    assert loss.stop_gradient
    assert pd.binary_cross_entropy_with_logits(tensor(x), tensor(y)).stop_gradient


def test_numpy_arrays_beside_paddle_tensors_are_constants():
    x, y, w, p = logits_case(17, (3, 4))
    tx = tensor(x, grad=True)
    loss = pd.binary_cross_entropy_with_logits(tx, y, w, "mean", p)
    assert isinstance(loss, paddle.Tensor)
    loss.backward()
    value, grad = bceloss.value_and_grad(pd.binary_cross_entropy_with_logits)(x, y, w, "mean", p)
    np.testing.assert_array_equal(loss.numpy(), value)
    np.testing.assert_allclose(tx.grad.numpy(), grad, rtol=1e-6)


def test_torch_tensors_beside_paddle_tensors_are_a_type_error():
    torch = pytest.importorskip("torch", reason="PyTorch is optional")
    x, y, _, _ = logits_case(18, (2, 3))
    with pytest.raises(
        TypeError, match="one kind; got logit from paddle and label from torch"
    ) as e:
        pd.binary_cross_entropy_with_logits(tensor(x), torch.tensor(y, requires_grad=True))
    # the message's conversion, run, makes the label a paddle tensor: the loss of the arrays
    shown = re.search(r"paddle's: (.*?); NumPy", str(e.value)).group(1)
    label = eval(shown, {"paddle": paddle, "label": torch.tensor(y, requires_grad=True)})
    assert isinstance(label, paddle.Tensor)
    got = pd.binary_cross_entropy_with_logits(tensor(x), label)
    np.testing.assert_array_equal(got.numpy(), pd.binary_cross_entropy_with_logits(x, y))


def test_callers_tensors_are_untouched():
    x, y, w, p = logits_case(19, (3, 4))
    y[0, 0] = -100.0
    tensors = [tensor(a, grad=True) for a in (x, y, w, p)]
    for reduction in REDUCTIONS:
        loss = pd.binary_cross_entropy_with_logits(*tensors[:3], reduction, tensors[3])
        (loss.sum() if reduction == "none" else loss).backward()
        for t, a in zip(tensors, (x, y, w, p), strict=True):
            np.testing.assert_array_equal(t.numpy(), a)
            assert not t.stop_gradient


# ------------------------------------------------------------------- errors


def _paddle_args(args, kwargs):
    def convert(a):
        return tensor(a) if isinstance(a, np.ndarray) else a

    return [convert(a) for a in args], {k: convert(v) for k, v in kwargs.items()}


@pytest.mark.parametrize(("fn", "args", "kwargs", "exc", "msg"), list(flavour_tests._cases()))
def test_bad_input_keeps_the_flavours_errors(fn, args, kwargs, exc, msg):
    args, kwargs = _paddle_args(args, kwargs)
    if not any(isinstance(a, paddle.Tensor) for a in (*args, *kwargs.values())):
        pytest.fail("the case must hold a paddle tensor")
    with pytest.raises(exc, match=msg.format(i=flavour_tests.NAMES[fn])):
        fn(*args, **kwargs)


# ---------------------------------------------------------------- the Layers


def test_flavour_classes_are_paddle_layers_in_a_model():
    for loss in (pd.BCEWithLogitsLoss(), pd.BCELoss()):
        assert isinstance(loss, paddle.nn.Layer)
        assert isinstance(loss, (pd.BCEWithLogitsLoss, pd.BCELoss))
        assert type(loss).__name__ in ("BCEWithLogitsLoss", "BCELoss")

    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.head = paddle.nn.Linear(3, 2)
            self.loss = pd.BCEWithLogitsLoss(pos_weight=tensor(arr([1.0, 2.0])))

        def forward(self, x, y):
            return self.loss(self.head(x), y)

    net = Net()
    assert [name for name, _ in net.named_sublayers()] == ["head", "loss"]
    assert "loss.pos_weight" in net.state_dict()
    loss = net(tensor(np.ones((4, 3), F32)), tensor(np.ones((4, 2), F32)))
    loss.backward()
    assert net.head.weight.grad is not None
    net.eval()
    assert not net.loss.training


def test_a_parameter_assigned_as_pos_weight_is_a_parameter_and_learns():
    # a Parameter is a layer's parameter (the optimizer sees it), not a buffer, as with
    # Paddle's loss; and it gets its gradient (Paddle's loss gives none): for 'mean',
    # d l / d p_j = sum over rows of y softplus(-x) in column j, over the element count.
    # No tensor in the repr, as Paddle's own losses.
    x, y, _, _ = logits_case(21, (6, 4), F64)
    for loss in (pd.BCEWithLogitsLoss(), paddle.nn.BCEWithLogitsLoss()):
        loss.pos_weight = paddle.create_parameter([4], "float64")
        loss.pos_weight.set_value(tensor(np.array([0.5, 1.0, 2.0, 3.0])))
        assert [p is loss.pos_weight for p in loss.parameters()] == [True]
        assert loss.buffers() == []
        loss(tensor(x), tensor(y)).backward()
    ours = pd.BCEWithLogitsLoss()
    ours.pos_weight = paddle.create_parameter([4], "float64")
    ours.pos_weight.set_value(tensor(np.array([0.5, 1.0, 2.0, 3.0])))
    ours(tensor(x), tensor(y)).backward()
    want = (y * np.logaddexp(0, -x)).sum(0) / x.size
    np.testing.assert_allclose(ours.pos_weight.grad.numpy(), want, rtol=1e-13)
    ours.pos_weight = None  # and back to a buffer
    ours.pos_weight = tensor(np.ones(4))
    assert ours.parameters() == []
    assert [name for name, _ in ours.named_buffers()] == ["pos_weight"]
    assert repr(pd.BCEWithLogitsLoss(pos_weight=tensor(arr([1.0, 2.0])))) == "BCEWithLogitsLoss()"
    assert repr(pd.BCELoss(reduction="sum")) == "BCELoss(reduction='sum')"


def test_buffers_round_trip_through_state_dict_and_follow_to_dtype():
    w, p = tensor(arr([0.5, 1.0, 2.0])), tensor(arr([1.0, 2.0, 3.0]))
    loss = pd.BCEWithLogitsLoss(weight=w, pos_weight=p)
    state = loss.state_dict()
    assert list(state) == ["weight", "pos_weight"]
    other = pd.BCEWithLogitsLoss(weight=tensor(np.zeros(3, F32)), pos_weight=tensor(arr([0.0] * 3)))
    other.set_state_dict(state)
    np.testing.assert_array_equal(other.weight.numpy(), w.numpy())
    np.testing.assert_array_equal(other.pos_weight.numpy(), p.numpy())
    other.to(dtype="float64")
    assert other.weight.dtype == paddle.float64
    assert other.pos_weight.dtype == paddle.float64
    x, y, _, _ = logits_case(20, (2, 3), F64)
    got = other(tensor(x), tensor(y))
    assert got.dtype == paddle.float64
    want = bceloss.binary_cross_entropy_with_logits(x, y, w.numpy().astype(F64), "mean", None)
    want = pd.binary_cross_entropy_with_logits(
        x, y, w.numpy().astype(F64), pos_weight=p.numpy().astype(F64)
    )
    np.testing.assert_array_equal(got.numpy(), want)
    bce = pd.BCELoss(weight=tensor(arr([1.0, 2.0])))
    assert list(bce.state_dict()) == ["weight"]
    back = pickle.loads(pickle.dumps(loss))
    assert isinstance(back, paddle.nn.Layer)
    np.testing.assert_array_equal(back.pos_weight.numpy(), p.numpy())


def test_numpy_options_stay_plain_attributes():
    loss = pd.BCEWithLogitsLoss(weight=arr([1.0, 2.0]))
    assert list(loss.state_dict()) == []
    assert isinstance(loss.weight, np.ndarray)
    got = loss(tensor(arr([[0.5, -1.0]])), tensor(arr([[1.0, 0.0]])))
    assert isinstance(got, paddle.Tensor)


# ---------------------------------------------------------------- to_static


class _Net(paddle.nn.Layer):
    """A model and its loss, a Layer (`functional`: the loss's functional form)."""

    def __init__(self, model, functional):
        super().__init__()
        self.model = model
        self.functional = functional
        self.loss = pd.BCEWithLogitsLoss(pos_weight=tensor(arr([1.0, 2.0, 1.0, 1.0, 2.0])))

    def forward(self, x, y):
        if self.functional:
            return pd.binary_cross_entropy_with_logits(
                self.model(x), y, pos_weight=self.loss.pos_weight
            )
        return self.loss(self.model(x), y)


@pytest.mark.parametrize("functional", [False, True])
def test_to_static_gives_the_eager_value_and_gradient(functional):
    model, x, y = _model_and_batch(2)
    net = _Net(model, functional)
    loss = net(x, y)
    loss.backward()
    eager = float(loss), model[0].weight.grad.numpy().copy()
    static = paddle.jit.to_static(net)
    for _ in range(2):  # the first call translates, the second runs the translation
        net.clear_gradients()
        loss = static(x, y)
        loss.backward()
        assert float(loss) == eager[0]
        np.testing.assert_allclose(model[0].weight.grad.numpy(), eager[1], rtol=1e-6, atol=1e-8)


_FULL_GRAPH = """
    import warnings
    warnings.simplefilter("ignore")
    import paddle, bceloss
    from bceloss.compat import paddle as pd
    lin = paddle.nn.Linear(3, 2)
    {make}
    def f(x, y):
        return {call}
    g = paddle.jit.to_static(f, full_graph=True)
    try:
        g(paddle.ones([4, 3]), paddle.ones([4, 2]))
    except RuntimeError as e:
        print(e)
"""


@pytest.mark.parametrize(
    ("make", "call"),
    [
        ("", "pd.binary_cross_entropy_with_logits(lin(x), y)"),
        ("", "bceloss.binary_cross_entropy_with_logits(lin(x), y)"),
        ("loss = pd.BCEWithLogitsLoss()", "loss(lin(x), y)"),
    ],
)
def test_to_static_full_graph_is_refused_with_a_clear_message(make, call, tmp_path):
    # a fresh process: the first use of bceloss with paddle tensors is inside the graph; a
    # file: the translator reads the function's source
    script = tmp_path / "full_graph.py"
    script.write_text(textwrap.dedent(_FULL_GRAPH.format(make=make, call=call)))
    out = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True)
    assert "bceloss cannot be traced into a static Paddle graph" in out.stdout
    assert "full_graph=False" in out.stdout


def test_a_tensor_off_the_cpu_is_refused_with_a_clear_message():
    # no GPU here: a stand-in with a GPU place, as the adapter reads it
    from bceloss import _paddle

    class GpuPlace:
        def is_cpu_place(self):
            return False

        def __str__(self):
            return "Place(gpu:0)"

    class OnGpu:
        place = GpuPlace()

    msg = r"Paddle tensors on the CPU only; logit is on Place\(gpu:0\): .*\.cpu\(\)"
    with pytest.raises(ValueError, match=msg):
        _paddle._numpy(OnGpu(), "logit")


def test_a_repeated_call_form_is_validated_once(monkeypatch):
    # the NumPy views of a call of a form validated before are not validated again (`_memo`):
    # the same loss and gradients as a call validated afresh
    from bceloss import _memo, _validation

    counts = []
    real = _validation.validate
    monkeypatch.setattr(_validation, "validate", lambda **k: counts.append(1) or real(**k))
    rng = np.random.default_rng(8)
    pos_weight = tensor(rng.random(10).astype(F32) + 0.5)
    results = {}
    for fresh in (False, True):
        _memo.forget()
        before = len(counts)
        for step in range(3):
            x = tensor(rng.normal(0, 3, (64, 10)).astype(F32), grad=True)
            y = tensor(rng.random((64, 10)).astype(F32))
            if fresh:
                _memo.forget()
                x = tensor(results[step][0], grad=True)
                y = tensor(results[step][1])
            loss = pd.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight)
            loss.backward()
            got = (loss.numpy().tobytes(), x.grad.numpy().tobytes())
            if fresh:
                assert got == results[step][2]
            else:
                results[step] = (x.numpy(), y.numpy(), got)
        assert len(counts) - before == (3 if fresh else 2)


def test_a_repeated_call_form_of_probabilities_checks_values_every_call():
    # a remembered form of BCE on probabilities still checks each call's values
    rng = np.random.default_rng(9)
    for loss in (pd.binary_cross_entropy, pd.BCELoss()):
        for step in range(5):
            p = rng.random((16, 5)).astype(F32)
            if step == 4:
                p[2, 2] = 1.5
            x, y = tensor(p, grad=True), tensor(rng.random((16, 5)).astype(F32))
            if step == 4:
                with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
                    loss(x, y)
            else:
                loss(x, y).backward()
                assert np.isfinite(x.grad.numpy()).all()
