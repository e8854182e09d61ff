"""MindSpore tensors in and out (SPEC §6): every entry point, values and gradients against
the float64 oracle and MindSpore's own loss, mindspore.grad in PyNative, jit and GRAPH_MODE,
the Cell, and the errors of the NumPy route."""

from __future__ import annotations

import re

import numpy as np
import oracle
import pytest
import tolerances
from flavours import F32, logits_case, probs_case

import bceloss
from bceloss.compat import mindspore as bm

ms = pytest.importorskip("mindspore", reason="mindspore is not installed")
from mindspore import Tensor, mint, nn

REDUCTIONS = ["none", "mean", "sum"]


def T(a):
    return Tensor(np.asarray(a))


def exact_logits(x, y, w, p, reduction):
    loss, dx, dy = oracle.elementwise(oracle.logits_terms, x, y, w, p)
    if reduction == "none":
        return loss, dx, dy
    n = 1 if reduction == "sum" else loss.size
    return oracle.exact_sum(loss) / n, dx / n, dy / n


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["functional", "cell", "core"])
def test_logits_values_and_gradients_against_oracle_and_mindspore(form, reduction):
    x, y, w, p = logits_case()
    if form == "functional":
        fn = lambda a, b: bm.binary_cross_entropy_with_logits(a, b, T(w), reduction, T(p))
    elif form == "cell":
        fn = bm.BCEWithLogitsLoss(reduction, T(w), T(p))
        assert isinstance(fn, nn.Cell)
    else:
        fn = lambda a, b: bceloss.binary_cross_entropy_with_logits(a, b, T(w), reduction, T(p))
    got = fn(T(x), T(y))
    assert isinstance(got, Tensor)
    assert got.shape == (x.shape if reduction == "none" else ())
    assert got.dtype == ms.float32
    value, dx, dy = exact_logits(x, y, w, p, reduction)
    tolerances.assert_values(got.asnumpy(), value, F32, reduced=reduction != "none")
    total = (lambda a, b: fn(a, b).sum()) if reduction == "none" else fn
    gx, gy = ms.grad(total, grad_position=(0, 1))(T(x), T(y))
    largest_x, largest_y = tolerances.logits_grad_scales(x, y, w, p)
    n = 1 if reduction != "mean" else x.size
    tolerances.assert_within_ulp_of_largest_term(gx.asnumpy(), dx, largest_x / n, F32)
    tolerances.assert_within_ulp_of_largest_term(gy.asnumpy(), dy, largest_y / n, F32)
    theirs = mint.nn.functional.binary_cross_entropy_with_logits
    ref = theirs(T(x), T(y), T(w), reduction, T(p))
    np.testing.assert_allclose(got.asnumpy(), ref.asnumpy(), rtol=1e-5, atol=1e-6)
    rx, ry = ms.grad(lambda a, b: theirs(a, b, T(w), reduction, T(p)).sum(), grad_position=(0, 1))(
        T(x), T(y)
    )
    np.testing.assert_allclose(gx.asnumpy(), rx.asnumpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gy.asnumpy(), ry.asnumpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["functional", "cell", "core"])
def test_probabilities_values_and_gradient(form, reduction):
    x, y, w = probs_case()
    w = np.broadcast_to(w, x.shape).copy()  # MindSpore CPU is wrong with a broadcast weight
    fns = {
        "functional": lambda a, b: bm.binary_cross_entropy(a, b, T(w), reduction),
        "cell": bm.BCELoss(T(w), reduction),
        "core": lambda a, b: bceloss.binary_cross_entropy(a, b, T(w), reduction),
    }
    fn = fns[form]
    got = fn(T(x), T(y))
    loss, dx, _ = oracle.elementwise(oracle.probs_terms, x, y, w)
    n = x.size if reduction == "mean" else 1
    value = loss if reduction == "none" else oracle.exact_sum(loss) / n
    tolerances.assert_values(got.asnumpy(), value, F32, reduced=reduction != "none")
    gx = ms.grad(lambda a: fn(a, T(y)).sum())(T(x))
    np.testing.assert_allclose(gx.asnumpy(), dx / n, rtol=1e-5)
    if reduction == "none":  # MindSpore where it clamps as PyTorch does (not near 0 and 1)
        ref = mint.nn.functional.binary_cross_entropy(T(x), T(y), T(w), reduction).asnumpy()
        inside = (x > 1e-6) & (x < 1 - 1e-6)
        np.testing.assert_allclose(got.asnumpy()[inside], ref[inside], rtol=1e-5, atol=1e-6)


def test_weight_and_pos_weight_gradients():
    x, y, w, p = logits_case()
    f = lambda ww, pp: bm.binary_cross_entropy_with_logits(T(x), T(y), ww, "sum", pp)
    gw, gp = ms.grad(f, grad_position=(0, 1))(T(w), T(p))
    assert gw.shape == w.shape
    assert gp.shape == p.shape
    eps = 1e-3
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    for i in range(w.size):
        d = np.zeros_like(w, np.float64)
        d[i] = eps
        num = (
            bceloss.binary_cross_entropy_with_logits(x64, y64, w + d, "sum", p.astype(np.float64))
            - bceloss.binary_cross_entropy_with_logits(x64, y64, w - d, "sum", p.astype(np.float64))
        ) / (2 * eps)
        assert abs(gw.asnumpy()[i] - num) <= 1e-3 * max(1, abs(num))


def test_deliberate_differences_pinned():
    x = T(np.array([np.inf, -np.inf, -17.0], F32))
    y = T(np.array([1.0, 0.0, 0.0], F32))
    ours = bm.binary_cross_entropy_with_logits(x, y, reduction="none").asnumpy()
    theirs = mint.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_array_equal(ours[:2], [0.0, 0.0])  # the limits
    assert np.isnan(theirs.asnumpy()[:2]).any()  # MindSpore: NaN
    assert ours[2] == pytest.approx(4.139937718785167e-08, rel=1e-6)
    # float16 sums accumulate in float32 or wider
    big = T(np.full(60_000, 3.0, np.float16))
    ones = T(np.ones(60_000, np.float16))
    got = bm.binary_cross_entropy_with_logits(big, ones, reduction="mean")
    assert got.dtype == ms.float16
    assert np.isfinite(got.asnumpy())


def test_mean_gradient_follows_the_size_of_each_call():
    # at x = 0, y = 0 the gradient of the mean over n elements is sigmoid(0) / n = 0.5 / n.
    # (MindSpore 2.10's own loss, in a fresh process, gives 0.05 at both sizes: it keeps the
    # first call's n; not asserted here, as what it keeps depends on the calls before)
    ours = ms.value_and_grad(bm.binary_cross_entropy_with_logits)
    for n in (10, 1000, 7):
        x, y = T(np.zeros(n, F32)), T(np.zeros(n, F32))
        np.testing.assert_array_equal(ours(x, y)[1].asnumpy(), np.full(n, 0.5 / n, F32))


def test_jit_and_graph_mode():
    x, y, w, p = logits_case()
    eager = ms.value_and_grad(bm.BCEWithLogitsLoss("mean", T(w), T(p)))(T(x), T(y))
    loss = bm.BCEWithLogitsLoss("mean", T(w), T(p))

    @ms.jit
    def cell_step(a, b):
        return ms.value_and_grad(loss)(a, b)

    @ms.jit
    def functional_step(a, b):
        f = lambda u: bm.binary_cross_entropy_with_logits(u, b, None, "mean", None)
        return ms.value_and_grad(f)(a)

    for value, grad in (cell_step(T(x), T(y)),):
        np.testing.assert_allclose(value.asnumpy(), eager[0].asnumpy(), rtol=1e-6)
        np.testing.assert_allclose(grad.asnumpy(), eager[1].asnumpy(), rtol=1e-6)
    value, grad = functional_step(T(x), T(y))
    want = ms.value_and_grad(lambda u: bm.binary_cross_entropy_with_logits(u, T(y)))(T(x))
    np.testing.assert_allclose(grad.asnumpy(), want[1].asnumpy(), rtol=1e-6)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        value, grad = ms.value_and_grad(loss)(T(x), T(y))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(grad.asnumpy(), eager[1].asnumpy(), rtol=1e-6)


def test_dense_training_step_lowers_the_loss():
    rng = np.random.default_rng(0)
    data = T(rng.normal(size=(64, 4)).astype(F32))
    labels = T((rng.uniform(size=(64, 1)) < 0.5).astype(F32))
    net = nn.Dense(4, 1)
    loss_fn = bm.BCEWithLogitsLoss()
    # the Dense layer's gradients through the loss are those through MindSpore's own loss
    ours = ms.value_and_grad(lambda a, b: loss_fn(net(a), b), None, net.trainable_params())
    theirs = ms.value_and_grad(
        lambda a, b: ms.mint.nn.functional.binary_cross_entropy_with_logits(net(a), b),
        None,
        net.trainable_params(),
    )
    for got, want in zip(ours(data, labels)[1], theirs(data, labels)[1], strict=True):
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-7)
    opt = nn.SGD(net.trainable_params(), learning_rate=0.5)
    grad_fn = ms.value_and_grad(lambda a, b: loss_fn(net(a), b), None, opt.parameters)
    first = None
    for _ in range(20):
        value, grads = grad_fn(data, labels)
        opt(grads)
        first = float(value) if first is None else first
    assert float(value) < first


def test_cell_parameters_and_numpy_stays_numpy():
    w = np.ones(3, F32)
    loss = bm.BCEWithLogitsLoss("sum", T(w))
    params = dict(loss.parameters_and_names())
    assert isinstance(params["weight"], ms.Parameter)
    assert not params["weight"].requires_grad
    plain = bm.BCELoss(w)
    out = plain(np.full(3, 0.5, F32), np.ones(3, F32))
    assert isinstance(out, np.ndarray)


def test_numpy_beside_mindspore_is_a_constant_and_arguments_untouched():
    x, y, w, p = logits_case()
    tx, xs = T(x), x.copy()
    got = bm.binary_cross_entropy_with_logits(tx, y, w, "mean", p)  # NumPy target, weights
    assert isinstance(got, Tensor)
    gx = ms.grad(lambda a: bm.binary_cross_entropy_with_logits(a, y, w, "mean", p))(tx)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(tx.asnumpy(), xs)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((np.zeros(3, np.float64), np.zeros(3, np.float64)), TypeError, "input must have one of"),
        ((np.zeros(3, F32), np.zeros(4, F32)), ValueError, "target must have the shape"),
        ((np.zeros(3, F32), np.zeros(3, np.int32)), TypeError, "target must have a floating"),
    ],
)
def test_bad_input_keeps_types_and_messages(args, error, message):
    with pytest.raises(error, match=message):
        bm.binary_cross_entropy_with_logits(*(T(a) for a in args))
    with pytest.raises(error, match=message):
        bm.binary_cross_entropy_with_logits(*args)
    with pytest.raises(ValueError, match="reduction must be one of"):
        bm.binary_cross_entropy_with_logits(T(args[0]), T(args[0]), reduction="avg")
    with pytest.raises(ValueError, match="must hold probabilities"):
        bm.binary_cross_entropy(T(np.array([1.5], F32)), T(np.array([1.0], F32)))


def test_other_kinds_beside_mindspore_are_a_type_error():
    torch = pytest.importorskip("torch")
    x, y = np.array([0.5, -2.0], F32), np.array([1.0, 0.25], F32)
    with pytest.raises(TypeError, match="all arrays of one call must be of one kind") as e:
        bm.binary_cross_entropy_with_logits(T(x), torch.tensor(y, requires_grad=True))
    # the message's conversion, run, makes the target a mindspore tensor: the loss of the arrays
    shown = re.search(r"mindspore's: (.*)\)$", str(e.value)).group(1)
    import mindspore

    target = eval(shown, {"mindspore": mindspore, "target": torch.tensor(y, requires_grad=True)})
    assert isinstance(target, Tensor)
    got = bm.binary_cross_entropy_with_logits(T(x), target)
    np.testing.assert_array_equal(got.asnumpy(), bm.binary_cross_entropy_with_logits(x, y))


def test_a_recorded_forward_computes_the_gradients_its_bprop_returns(monkeypatch):
    # under grad / value_and_grad the forward computes the gradients in the loss's own pass
    # and the bprop returns them (one kernel pass a step); where the bprop gets an output
    # gradient other than 1, or the forward's gradients are not the ones it asks for (two
    # losses in one function, a forward whose bprop never ran), it computes them: always the
    # numbers of a call computed afresh
    from bceloss import _evaluate, _mindspore

    passes = []
    for name in ("evaluate", "loss_and_grad"):
        real = getattr(_evaluate, name)
        monkeypatch.setattr(
            _evaluate, name, lambda *a, _real=real, **k: passes.append(1) or _real(*a, **k)
        )
    rng = np.random.default_rng(12)
    x, x2 = (T(rng.normal(0, 3, (64, 10)).astype(F32)) for _ in range(2))
    y, y2 = (T(rng.random((64, 10)).astype(F32)) for _ in range(2))
    loss = bm.binary_cross_entropy_with_logits
    ref = [g.asnumpy() for g in ms.grad(lambda a, b: loss(a, b) * 1.0, (0, 1))(x, y)]
    ref2 = [g.asnumpy() for g in ms.grad(lambda a, b: loss(a, b) * 1.0, (0, 1))(x2, y2)]
    passes.clear()
    value, grads = ms.value_and_grad(loss, (0, 1))(x, y)
    assert len(passes) == 1  # the forward's pass only
    for g, want in zip(grads, ref, strict=True):
        np.testing.assert_array_equal(g.asnumpy(), want)
    assert value.asnumpy() == loss(x, y).asnumpy()
    # an output gradient of 3: computed in the bprop, 3 times the gradients
    for g, want in zip(ms.grad(lambda a, b: 3 * loss(a, b), (0, 1))(x, y), ref, strict=True):
        np.testing.assert_allclose(g.asnumpy(), 3 * want, rtol=2e-7)
    # two losses in one function, and recorded forwards whose bprop never runs
    for _ in range(2 * _mindspore._EagerLoss.EARLY_MAX):
        ms.grad(lambda a, b: (loss(a, b), loss(b, a))[0] * 0 + loss(a, b), (0, 1))(x, y)
    gx, gx2 = ms.grad(lambda a, b: loss(a, y) + loss(b, y2), (0, 1))(x, x2)
    np.testing.assert_array_equal(gx.asnumpy(), ref[0])
    np.testing.assert_array_equal(gx2.asnumpy(), ref2[0])


def test_a_recorded_forward_computes_gradients_only_where_its_pass_gives_them(monkeypatch):
    # reduction='none' and a weight tensor's gradient are computed in the bprop: the forward
    # computes the loss alone (no gradient pass thrown away); a scaled loss (loss scaling)
    # takes the forward's gradients times the scale
    from bceloss import _mindspore

    calls = []
    real = _mindspore._value_and_gradients
    monkeypatch.setattr(_mindspore, "_value_and_gradients", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(13)
    x = T(rng.normal(0, 3, (32, 8)).astype(F32))
    y = T(rng.random((32, 8)).astype(F32))
    w = T(rng.random(8).astype(F32) + 0.5)
    loss = bm.binary_cross_entropy_with_logits
    for fn, wrt in (
        (lambda a, b, c: loss(a, b, reduction="none").sum(), (0, 1)),
        (lambda a, b, c: loss(a, b, c), (0, 1, 2)),
    ):
        calls.clear()
        ms.grad(fn, wrt)(x, y, w)
        assert len(calls) == 1  # the bprop's
    calls.clear()
    scaled = ms.grad(lambda a, b: 1024 * loss(a, b), (0, 1))(x, y)
    assert len(calls) == 1  # the forward's
    plain = ms.grad(lambda a, b: loss(a, b), (0, 1))(x, y)
    for g, h in zip(scaled, plain, strict=True):
        np.testing.assert_allclose(g.asnumpy(), 1024 * h.asnumpy(), rtol=1e-7)


def test_a_repeated_call_form_of_probabilities_checks_values_every_call():
    # a remembered form of BCE on probabilities still checks each call's values
    rng = np.random.default_rng(9)
    for loss in (bm.binary_cross_entropy, bm.BCELoss()):
        for step in range(5):
            p = rng.random((16, 5)).astype(F32)
            if step == 4:
                p[2, 2] = 1.5
            x, y = T(p), T(rng.random((16, 5)).astype(F32))
            if step == 4:
                with pytest.raises(ValueError, match=r"must hold probabilities in \[0, 1\]"):
                    loss(x, y)
            else:
                assert np.isfinite(loss(x, y).asnumpy())
