"""PyTorch autograd through the losses: backward() gives SPEC §2's gradients for input,
target, weight and pos_weight (at infinite logits too), gradcheck and gradgradcheck pass,
half types work, and nothing but the [0, 1] check reads a value back to the host."""

from __future__ import annotations

import math
import re

import numpy as np
import portable
import pytest
import tolerances

import bceloss

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits
F = torch.nn.functional
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}  # fmt: skip


def _leaf(a, dtype):
    return torch.asarray(np.asarray(a, np.float64)).to(DTYPES[dtype]).requires_grad_()


def _np(t):
    return t.detach().double().numpy()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_logits_backward_against_oracle(dtype):
    # x holds +-inf and +-1e4, where autograd through the formula's `where`s gives NaN
    (x, y, w, p), (loss, dx, dy, dw, dp) = portable.logits_case()
    X, Y, W, P = (_leaf(a, dtype) for a in (x, y, w, p))
    out = BCEL(X, Y, W, "sum", P)
    assert out.grad_fn is not None
    out.backward()
    tolerances.assert_values(_np(out), sum(loss.ravel().tolist()), dtype, reduced=True)
    for t in (X, Y, W, P):
        assert t.grad.dtype == t.dtype
        assert t.grad.shape == t.shape
    lx, ly = tolerances.logits_grad_scales(x, y, w, p)
    tolerances.assert_gradient(_np(X.grad), dx, lx, dtype)
    tolerances.assert_gradient(_np(Y.grad), dy, ly, dtype)
    # d/dw and d/dp sum over the broadcast axes; their terms are >= 0, so compare relatively
    rtol = 2e-2 if dtype in tolerances.HALF else 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(_np(W.grad), dw.sum(axis=1, keepdims=True), rtol=rtol)
    np.testing.assert_allclose(_np(P.grad), dp.sum(axis=0), rtol=rtol)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_probabilities_backward_against_oracle(dtype):
    (x, y, w), (_, dx, dy, dw) = portable.probabilities_case()
    X, Y, W = (_leaf(a, dtype) for a in (x, y, w))
    BCE(X, Y, W, "none").backward(torch.ones(x.shape, dtype=DTYPES[dtype]))
    sx, sy = tolerances.probs_grad_scales(x, y, w)
    tolerances.assert_gradient(_np(X.grad), dx, sx, dtype)
    tolerances.assert_gradient(_np(Y.grad), dy, sy, dtype)
    tolerances.assert_values(_np(W.grad), dw, dtype)


def _float64_case(seed, probabilities=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 4, generator=g, dtype=torch.float64) * 0.9 + 0.05
    if not probabilities:
        x = (x - 0.5) * 12
    y = torch.rand(3, 4, generator=g, dtype=torch.float64)
    w = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    p = torch.rand(3, 1, generator=g, dtype=torch.float64) * 3
    return [t.requires_grad_() for t in (x, y, w, p)]


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck_and_gradgradcheck_logits(reduction):
    x, y, w, p = _float64_case(0)

    def f(x, y, w, p):
        return BCEL(x, y, w, reduction, p)

    assert torch.autograd.gradcheck(f, (x, y, w, p))
    assert torch.autograd.gradgradcheck(f, (x, y, w, p))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck_and_gradgradcheck_probabilities(reduction):
    x, y, w, _ = _float64_case(1, probabilities=True)

    def f(x, y, w):
        return BCE(x, y, w, reduction)

    assert torch.autograd.gradcheck(f, (x, y, w))
    assert torch.autograd.gradgradcheck(f, (x, y, w))


def test_second_derivative_is_exact_at_0_and_finite_at_1e4():
    # d2 l / dx2 = w lw sigmoid(x) sigmoid(-x); at x = 0 exactly: w lw / 4, where |x| and
    # max(x, 0) have their kink (autograd through abs/clip would give 0 here).
    x = torch.tensor([0.0, -1e4, 1e4, 3.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.25, 0.5, 0.5, 1.0], dtype=torch.float64)
    p = torch.tensor([2.0, 2.0, 2.0, 0.5], dtype=torch.float64)
    (g,) = torch.autograd.grad(BCEL(x, y, reduction="sum", pos_weight=p), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    lw = 1 + (p - 1) * y
    s = torch.sigmoid(x.detach())
    np.testing.assert_allclose(h.numpy(), (lw * s * (1 - s)).numpy(), rtol=1e-14, atol=0)
    assert h[0] == lw[0] / 4


def test_matches_torch_own_losses():
    # an independent implementation, where its formula is accurate (moderate logits)
    x, y, w, p = _float64_case(2)
    for ours, theirs, args in (
        (BCEL, torch.nn.functional.binary_cross_entropy_with_logits, {"pos_weight": p.detach()}),
        (BCE, torch.nn.functional.binary_cross_entropy, {}),
    ):
        xx = torch.sigmoid(x.detach()).requires_grad_() if ours is BCE else x
        # PyTorch does not differentiate its losses with respect to weight or pos_weight
        ga = torch.autograd.grad(ours(xx, y, w.detach(), **args), (xx, y))
        gb = torch.autograd.grad(theirs(xx, y, w.detach(), **args), (xx, y))
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_value_and_grad_agrees_with_autograd():
    x, y, w, p = _float64_case(3)
    for fn, args in ((BCEL, (x, y, w, "mean", p)), (BCE, (torch.sigmoid(x.detach()), y, w))):
        value, grads = bceloss.value_and_grad(fn, argnums=(0, 1))(*args)
        a = args[0].detach().requires_grad_()
        b = y.detach().requires_grad_()
        loss = fn(a, b, *args[2:])
        auto = torch.autograd.grad(loss, (a, b))
        assert value.item() == loss.item()
        for ours, theirs in zip(grads, auto, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_loss_classes_and_flavours_backpropagate():
    # float32: MindSpore has no float64
    x, y, w, p = (t.detach().float().requires_grad_() for t in _float64_case(4))
    losses = [
        bceloss.BCEWithLogitsLoss(w, "mean", p),
        bceloss.compat.mindspore.BCEWithLogitsLoss("mean", w, p),
        bceloss.compat.paddle.BCEWithLogitsLoss(w, "mean", p),
    ]
    grads = [torch.autograd.grad(f(x, y), (x, y, w, p)) for f in losses]
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_paddle_ignored_labels_get_zero_gradient():
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, -100.0, 0.0], dtype=torch.float64)
    bceloss.compat.paddle.binary_cross_entropy_with_logits(x, y, reduction="sum").backward()
    assert x.grad[1] == 0
    assert x.grad[0] == pytest.approx(-1 / (1 + math.e))


def test_no_autograd_node_unless_recording():
    x = torch.tensor([0.5, -1.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0])
    assert BCEL(x.detach(), y).grad_fn is None
    with torch.no_grad():
        assert BCEL(x, y).grad_fn is None
    assert type(BCEL(x, y).grad_fn).__name__ == "BCELossFunctionBackward"


def test_nothing_but_the_probability_check_reads_values():
    # 'meta' tensors have no data: any read of a value (a host synchronisation on an
    # accelerator) raises. The logits loss, its backward and value_and_grad never read one.
    x = torch.empty(64, 8, device="meta", requires_grad=True)
    y = torch.empty(64, 8, device="meta")
    w = torch.empty(8, device="meta", requires_grad=True)
    for reduction in ("none", "mean", "sum"):
        out = BCEL(x, y, w, reduction, w)
        assert out.device.type == "meta"
    out.backward()
    assert x.grad.device.type == "meta"
    assert w.grad.shape == w.shape
    _, g = bceloss.value_and_grad(BCEL)(x.detach(), y)
    assert g.device.type == "meta"
    # ... and probabilities, checked to lie in [0, 1] where there are values to read, go
    # through unchecked on meta tensors (shape inference: a model made on the meta device)
    p = torch.empty(64, 8, device="meta")
    assert BCE(p, y).device.type == "meta"
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
        BCE(torch.full((64, 8), 1.5), y.new_zeros((64, 8), device="cpu"))


@pytest.mark.parametrize("n", [300, 6000])  # below and above the NumPy kernel's threshold
def test_cpu_tensors_with_nothing_recording_give_numpy_bits(n):
    # a CPU call with nothing recording runs on NumPy views of its tensors: the loss ('none'
    # included) and value_and_grad (out= written in place) have NumPy's bits, agree with
    # PyTorch's own loss, and leave the arguments as they were
    rng = np.random.default_rng(n)
    x = rng.normal(0, 3, (n // 100, 100)).astype(np.float32)
    y = rng.random(x.shape).astype(np.float32)
    w, p = (rng.random(100).astype(np.float32) + 0.5 for _ in range(2))
    X, Y, W, P = (torch.from_numpy(a.copy()) for a in (x, y, w, p))
    for reduction in ("none", "mean", "sum"):
        got = BCEL(X, Y, W, reduction, P)
        want = BCEL(x, y, w, reduction, p)
        assert got.dtype == torch.float32
        assert tuple(got.shape) == want.shape
        assert got.numpy().tobytes() == want.tobytes()
        own = torch.nn.functional.binary_cross_entropy_with_logits(
            X.double(), Y.double(), W.double(), reduction=reduction, pos_weight=P.double()
        )
        np.testing.assert_allclose(got.double().numpy(), own.numpy(), rtol=2e-6, atol=1e-7)
    out = torch.full(x.shape, math.nan)
    value, (gx, gy) = bceloss.value_and_grad(BCEL, (0, 1))(X, Y, W, "mean", P, out=out)
    want_value, (want_gx, want_gy) = bceloss.value_and_grad(BCEL, (0, 1))(x, y, w, "mean", p)
    assert gx is out
    assert value.numpy().tobytes() == want_value.tobytes()
    assert gx.numpy().tobytes() == want_gx.tobytes()
    assert gy.numpy().tobytes() == want_gy.tobytes()
    for t, a in ((X, x), (Y, y), (W, w), (P, p)):
        assert t.numpy().tobytes() == a.tobytes()


@pytest.mark.parametrize("n", [300, 6000])
@pytest.mark.parametrize("seed", [0.0, 3.0, math.inf])
def test_backward_scales_by_any_output_gradient(n, seed):
    # the CPU backward divides the mean's denominator by the output's gradient: a zero one
    # (0 * loss) raised ZeroDivisionError, an infinite one has to give inf and NaN as PyTorch
    gen = torch.Generator().manual_seed(n)
    x = (3 * torch.randn(n, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.rand(n, generator=gen, dtype=torch.float64)
    x.data[:3] = torch.tensor([0.0, math.inf, -math.inf])
    (seed * BCEL(x, y)).backward()
    ours, x.grad = x.grad, None
    (seed * torch.nn.functional.binary_cross_entropy_with_logits(x, y)).backward()
    torch.testing.assert_close(ours, x.grad, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("n", [300, 6000])  # below and above the NumPy kernel's threshold
def test_cpu_forward_computes_the_gradient_for_one_backward(n):
    # a recorded CPU forward computes d/dx in the loss's pass; backward() returns it (NumPy's
    # bits for an output gradient of 1), a retained graph's second backward computes it
    # again, reduction='none' scales it elementwise, and an argument modified in place still
    # raises as in PyTorch. The loss's bits do not depend on what requires grad.
    rng = np.random.default_rng(n)
    x = rng.normal(0, 3, (n // 100, 100)).astype(np.float32)
    y = rng.random(x.shape).astype(np.float32)
    w = rng.random(100).astype(np.float32) + 0.5
    X, Y, W = (torch.from_numpy(a.copy()) for a in (x, y, w))
    X.requires_grad_()
    want_value, want_gx = bceloss.value_and_grad(BCEL)(x, y, w, "sum")
    for _ in range(4):  # the first call's node, then a remembered form's (in C once kept)
        X.grad = None
        loss = BCEL(X, Y, W, "sum")
        assert loss.detach().numpy().tobytes() == want_value.tobytes()
        loss.backward(retain_graph=True)
        assert X.grad.numpy().tobytes() == want_gx.tobytes()
        first = X.grad.clone()
        loss.backward()  # the graph was retained: the gradient is computed again
        torch.testing.assert_close(X.grad, 2 * first, rtol=2e-7, atol=0)
        X.grad = None
        BCEL(X, Y, W, "sum").backward(torch.tensor(-0.75))  # not 1: scaled
        torch.testing.assert_close(X.grad, -0.75 * first, rtol=2e-7, atol=0)
    for target in (Y, Y.clone().requires_grad_()):  # the target's gradient: another path
        for reduction in ("mean", "none"):
            assert BCEL(X, target, W, reduction).detach().numpy().tobytes() == (
                BCEL(x, y, w, reduction).tobytes()
            )
    # against PyTorch's own: scaled by an output gradient of 2.5, and elementwise
    m = torch.rand(X.shape, generator=torch.Generator().manual_seed(n))
    Xd, Yd = X.detach().double().requires_grad_(), Y.double()
    own = torch.nn.functional.binary_cross_entropy_with_logits
    for reduction, seed in (
        ("mean", lambda l: 2.5 * l),
        ("none", lambda l: 2.5 * l.mean()),
        ("none", lambda l: (l * m).sum()),
    ):
        (gx,) = torch.autograd.grad(seed(BCEL(X, Y, reduction=reduction)), X)
        (want,) = torch.autograd.grad(seed(own(Xd, Yd, reduction=reduction)), Xd)
        torch.testing.assert_close(gx.double(), want, rtol=2e-6, atol=2e-7)
    for _ in range(4):  # the first call's node, then a remembered form's (in C once kept)
        loss = BCEL(X, Y)
        with torch.no_grad():
            X.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def _usual_route(fn, *args, **kwargs):
    # the loss as the library computes a call it has not seen: validated, then run
    from bceloss import _call

    return _call.run(fn._bceloss_bind(*args, **kwargs))


def _bits(t):
    return None if t is None else t.detach().numpy().tobytes()


def test_a_repeated_call_form_skips_validation_with_the_usual_results(monkeypatch):
    # an eager call of a form validated before (`_memo`, `_torch.express`) runs without
    # validating again: the same loss, node and gradients as the usual route, with new values
    # in the tensors (weights changed in place included), each form on its own
    from bceloss import _memo, _validation

    gen = torch.Generator().manual_seed(5)
    validated = []
    real = _validation.validate
    monkeypatch.setattr(_validation, "validate", lambda **k: validated.append(1) or real(**k))
    _memo.forget()
    pos_weight = torch.rand(10, generator=gen) + 0.5
    module = bceloss.BCEWithLogitsLoss(pos_weight=pos_weight, label_smoothing=0.1)
    forms = [
        (BCEL, {}, torch.float32),
        (BCEL, {"reduction": "sum"}, torch.float64),
        (BCEL, {"reduction": "none"}, torch.float32),
        (BCEL, {"weight": torch.rand(10, generator=gen)}, torch.float32),
        (bceloss.sigmoid_focal_loss, {"reduction": "mean", "gamma": 1.5}, torch.float32),
        (module, {}, torch.float32),
    ]
    for fn, kwargs, dtype in forms:
        for grad_mode, needs in ((True, (True, False)), (True, (True, True)), (False, (True,))):
            lane = 0  # validations of the lane's calls
            for _ in range(3):
                x = (4 * torch.randn(64, 10, generator=gen, dtype=dtype)).requires_grad_()
                y = torch.rand(64, 10, generator=gen, dtype=dtype).requires_grad_(needs[-1])
                pos_weight.mul_(1.5)  # a buffer changed in place between calls
                with torch.set_grad_enabled(grad_mode):
                    before = len(validated)
                    got = fn(x, y, **kwargs)
                    lane += len(validated) - before
                    usual = (_usual_route if fn is not module else _module_route)(
                        fn, x, y, **kwargs
                    )
                assert _bits(got) == _bits(usual)
                assert got.dtype == usual.dtype
                assert got.shape == usual.shape
                assert type(got.grad_fn).__name__ == type(usual.grad_fn).__name__
                if grad_mode:
                    wrt = (x, y) if needs[-1] else (x,)
                    seed = torch.rand(got.shape, generator=gen, dtype=dtype)
                    ours = torch.autograd.grad(got, wrt, seed)
                    theirs = torch.autograd.grad(usual, wrt, seed)
                    assert list(map(_bits, ours)) == list(map(_bits, theirs))
            assert lane == 2  # the first two calls of a form only


@pytest.mark.parametrize("guards", [True, False])
def test_the_lanes_check_in_c_takes_only_calls_of_the_form_it_guards(monkeypatch, guards):
    # the express lane's first look (`_torch._Guarded`: PyTorch's TensorGuards) skips the
    # form for a call like the one it guards, and takes every call that differs in a
    # tensor's class, dtype, shape, strides, requires_grad or kind (an inference tensor),
    # in grad mode, or in an option's value, type, name or place to the form's route: each
    # with the usual route's results or error; without TensorGuards (another PyTorch) the
    # form alone serves, with the same results
    from bceloss import _memo, _torch

    if not guards:
        monkeypatch.setattr(_torch, "_TensorGuards", None)
    _memo.forget()
    forms = []
    real = _memo.form
    monkeypatch.setattr(_memo, "form", lambda *a, **k: forms.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(11)

    def tensors(shape=(64, 10), dtype=torch.float32, grad=(True, False)):
        x = (4 * torch.randn(shape, generator=gen, dtype=dtype)).requires_grad_(grad[0])
        y = torch.rand(shape, generator=gen, dtype=dtype).requires_grad_(grad[1])
        return x, y

    def call(x, y, *args, grad_mode=True, **kwargs):
        before = len(forms)
        with torch.set_grad_enabled(grad_mode):
            try:
                got = BCEL(x, y, *args, **kwargs)
            except (TypeError, ValueError) as e:
                with pytest.raises(type(e), match=re.escape(str(e))):
                    _usual_route(BCEL, x, y, *args, **kwargs)
                return len(forms) - before
            usual = _usual_route(BCEL, x, y, *args, **kwargs)
        assert _bits(got) == _bits(usual)
        assert (got.dtype, got.requires_grad) == (usual.dtype, usual.requires_grad)
        if got.requires_grad:
            wrt = [t for t in (x, y) if t.requires_grad]
            ours, theirs = (torch.autograd.grad(v, wrt) for v in (got, usual))
            assert list(map(_bits, ours)) == list(map(_bits, theirs))
        return len(forms) - before

    options = {"reduction": "sum", "label_smoothing": 0.0}
    for _ in range(3):  # validated, remembered, then guarded
        call(*tensors(), **options)
    assert call(*tensors(), **options) == (0 if guards else 1)
    x64, y64 = tensors(dtype=torch.float64)
    xt, yt = (t.t() for t in tensors((10, 64)))
    x_param, y_param = tensors()
    with torch.inference_mode():
        x_inference, y_inference = tensors(grad=(False, False))
    others = [
        ((x64, y64), options),
        (tensors((32, 20)), options),
        ((xt.detach().requires_grad_(), yt), options),
        (tensors(grad=(False, False)), options),
        (tensors(grad=(True, True)), options),
        ((torch.nn.Parameter(x_param.detach()), y_param), options),
        ((x_inference, y_inference), {**options, "grad_mode": False}),
        (tensors(), {**options, "grad_mode": False}),
        (tensors(), {"reduction": "mean", "label_smoothing": 0.0}),
        (tensors(), {"reduction": "sum", "label_smoothing": False}),  # == 0.0: refused
        (tensors(), {"reduction": "sum", "label_smoothing": 0}),
        (tensors(), {"label_smoothing": 0.0, "reduction": "sum"}),
        ((*tensors(), None, "sum"), {"label_smoothing": 0.0}),
        (tensors(), {**options, "weight": torch.rand(10, generator=gen)}),
        (tensors(), {**options, "weight": np.ones(10, np.float32)}),  # refused: NumPy's
    ]
    for args, kwargs in others:
        assert call(*args, **kwargs) == 1, kwargs
    assert call(*tensors(), **options) == (0 if guards else 1)  # the form's own, still
    # more forms than the check keeps (each remembered, called again and again): the first
    # ones keep theirs, the others the form; one tensor in two arguments has the form
    w = torch.rand(64, 10, generator=gen)
    for _ in range(4):
        for rows in range(1, 7):
            call(*tensors((rows, 10)), **options)
        assert call(*tensors(), **options) == (0 if guards else 1)
        assert call(*tensors(), weight=w, pos_weight=w) == 1


def test_a_repeated_call_form_of_other_layouts_and_sizes_gives_the_usual_results():
    # the express lane's kernel constants kept for a form (`_kernels.Prepared`) against the
    # usual route: transposed (strided) tensors, a pos_weight of the input's shape,
    # 'weighted_mean' without a weight, 'none' with nothing recording, and a loss large
    # enough for the kernel's helper threads
    from bceloss import _kernels, _memo

    gen = torch.Generator().manual_seed(7)
    _memo.forget()
    big = 4 * _kernels.launch.SERIAL_SIZE + 37
    cases = [
        ((10, 64), True, {"reduction": "sum"}),
        ((64, 10), False, {"pos_weight": "full", "reduction": "weighted_mean"}),
        ((3, big // 3), False, {"label_smoothing": 0.2}),
        ((big,), False, {"reduction": "sum", "weight": "full"}),
    ]
    for shape, transposed, options in cases:
        for grad_mode, reduction in ((True, None), (False, None), (False, "none")):
            kwargs = dict(options) if reduction is None else {**options, "reduction": reduction}
            for _ in range(3):
                x = 4 * torch.randn(shape, generator=gen, dtype=torch.float64)
                y = torch.rand(shape, generator=gen, dtype=torch.float64)
                if transposed:
                    x, y = x.t(), y.t()
                x.requires_grad_()
                for name in ("weight", "pos_weight"):
                    if kwargs.get(name) is not None:
                        kwargs[name] = torch.rand(x.shape, generator=gen, dtype=x.dtype) + 0.5
                with torch.set_grad_enabled(grad_mode):
                    got = BCEL(x, y, **kwargs)
                    usual = _usual_route(BCEL, x, y, **kwargs)
                assert _bits(got) == _bits(usual), (shape, kwargs)
                if grad_mode:
                    ours, theirs = (torch.autograd.grad(v, x) for v in (got, usual))
                    assert _bits(ours[0]) == _bits(theirs[0]), (shape, kwargs)
    remembered = [m for m in _memo._CALLS.values() if isinstance(m, _memo.Remembered)]
    assert sum(bool(m.adapter) and m.adapter.prepared is not None for m in remembered) >= 8


def test_cpu_tensors_are_computed_on_the_cpu_whatever_the_default_device():
    # the forward's gradient is allocated beside the input, not on the default device
    # (torch.set_default_device("cuda") on a GPU machine; "meta" here); every call of a form
    # alike, the first two (validated) and the later ones (the express lane)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, dtype=torch.float64)
    want = F.binary_cross_entropy_with_logits(x, y)
    (want_gx,) = torch.autograd.grad(want, x)
    weighted = {"reduction": "weighted_mean", "weight": torch.ones(3, dtype=x.dtype)}
    torch.set_default_device("meta")
    try:
        for kwargs in ({}, weighted):
            for _ in range(4):
                loss = BCEL(x.to("cpu"), y.to("cpu"), **kwargs)
                (gx,) = torch.autograd.grad(loss, x)
                torch.testing.assert_close(loss, want.to("cpu"), rtol=1e-15, atol=0)
                torch.testing.assert_close(gx, want_gx.to("cpu"), rtol=1e-14, atol=1e-17)
    finally:
        torch.set_default_device(None)


def test_a_0d_loss_with_an_integer_target_has_pytorchs_value_and_gradient():
    x = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    for reduction in ("none", "mean"):
        loss = BCEL(x, torch.tensor(1, dtype=torch.int16), reduction=reduction)
        want = F.binary_cross_entropy_with_logits(x, torch.tensor(1.0, dtype=x.dtype))
        torch.testing.assert_close(loss, want, rtol=1e-15, atol=0)
        grads = [torch.autograd.grad(v, x)[0] for v in (loss, want)]
        torch.testing.assert_close(*grads, rtol=1e-15, atol=0)


def _module_route(module, x, y):
    return _usual_route(module.function, x, y, **module._options())


def test_a_repeated_call_form_is_still_refused_and_changes_of_form_are_seen():
    from bceloss import _memo

    _memo.forget()
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.rand(4, 3)
    for _ in range(2):  # an error is raised on every call, never remembered as a form
        with pytest.raises(ValueError, match="target must have the shape of input"):
            BCEL(x, y[:2])
        with pytest.raises(TypeError, match="reduction must be a str"):
            BCEL(x, y, reduction=1)
    assert BCEL(x, y).grad_fn is not None
    assert BCEL(x.detach(), y).grad_fn is None  # requires_grad is part of the form
    with torch.no_grad():  # and grad mode
        assert BCEL(x, y).grad_fn is None
    assert BCEL(x.double(), y.double()).dtype == torch.float64
    # an integer target (cast when computed) and a mask: the usual route's results
    for args, kwargs in (
        ((x, (y > 0.5).long()), {}),
        ((x, y), {"where": y > 0.2}),
    ):
        assert BCEL(*args, **kwargs).grad_fn is not None
        assert _bits(BCEL(*args, **kwargs)) == _bits(_usual_route(BCEL, *args, **kwargs))
    BCE(torch.rand(4, 3), y)
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]"):
        BCE(torch.rand(4, 3) + 1, y)  # checked on every call


def _node_of(value) -> str:
    """Which of bceloss's autograd Functions made `value` (the function that defines it)."""
    return value.grad_fn._forward_cls.__qualname__.split(".")[0]


def _losses(probabilities, g):
    """(bceloss's loss module, PyTorch's) of the same options, and how the model's output
    reaches them."""
    if probabilities:
        w = torch.rand(10, generator=g)
        return bceloss.BCELoss(weight=w), torch.nn.BCELoss(weight=w), torch.sigmoid
    p = torch.rand(10, generator=g) + 0.5
    return bceloss.BCEWithLogitsLoss(pos_weight=p), torch.nn.BCEWithLogitsLoss(pos_weight=p), None


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("probabilities", [False, True])
def test_activation_checkpointing_runs_the_loss_again_as_pytorchs_own(reentrant, probabilities):
    # the loss inside a segment of torch.utils.checkpoint, whose backward runs the segment's
    # forward again (the non-reentrant form checks that it saves tensors of the same shapes):
    # four steps each (a call validated, remembered, guarded, then the module's own lane), the
    # values and gradients of the same steps without checkpointing, to the last bit, and
    # PyTorch's own loss's within float32's rounding
    from torch.utils.checkpoint import checkpoint

    g = torch.Generator().manual_seed(3)
    ours, theirs, last = _losses(probabilities, g)
    net = torch.nn.Linear(8, 10)
    x = torch.randn(64, 8, generator=g).requires_grad_()
    y = (torch.rand(64, 10, generator=g) > 0.5).float()

    def steps(loss, checkpointed):
        def segment(x):
            out = net(x)
            return loss(out if last is None else last(out), y)

        got = []
        for _ in range(4):
            net.zero_grad()
            x.grad = None
            value = checkpoint(segment, x, use_reentrant=reentrant) if checkpointed else segment(x)
            value.backward()
            got.append((value.detach(), net.weight.grad.clone(), x.grad.clone()))
        if loss is ours and not checkpointed:  # the last call took the C kernel's lean node
            assert _node_of(value) == "_c_apply", _node_of(value)
        return got

    plain, theirs_steps = steps(ours, False), steps(theirs, True)
    for got, same, pytorchs in zip(steps(ours, True), plain, theirs_steps, strict=True):
        for a, b, c in zip(got, same, pytorchs, strict=True):
            assert torch.equal(a, b)
            torch.testing.assert_close(a, c, rtol=2e-6, atol=1e-8)


@pytest.mark.parametrize("probabilities", [False, True])
def test_saved_tensor_hooks_pack_the_tensors_pytorchs_loss_saves(probabilities):
    # torch.autograd.graph.saved_tensors_hooks (how memory is offloaded or checkpointed):
    # the loss's node saves its tensors through them, as many as PyTorch's loss saves, and
    # its backward reads what they unpack
    g = torch.Generator().manual_seed(4)
    ours, theirs, last = _losses(probabilities, g)
    x = torch.randn(32, 10, generator=g)
    y = (torch.rand(32, 10, generator=g) > 0.5).float()

    def run(loss, hooked):
        z = x.clone().requires_grad_()
        packed, unpacked = [], []

        def pack(t):
            packed.append(t)
            return len(packed) - 1, t.clone()  # the backward gets the copy

        def unpack(kept):
            unpacked.append(kept[0])
            return kept[1]

        for _ in range(4):  # validated, remembered, guarded, then the module's own lane
            z.grad = None
            packed.clear()
            unpacked.clear()
            if hooked:
                with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                    value = loss(z if last is None else last(z), y)
            else:
                value = loss(z if last is None else last(z), y)
            value.backward()
        if loss is ours:  # the last call took the C kernel's lean node (`_c_apply`)
            assert _node_of(value) == "_c_apply", _node_of(value)
        return value.detach(), z.grad, len(packed), sorted(set(unpacked))

    value, grad, saved, read = run(ours, True)
    plain_value, plain_grad, _, _ = run(ours, False)
    assert torch.equal(value, plain_value)
    assert torch.equal(grad, plain_grad)
    theirs_value, theirs_grad, theirs_saved, _ = run(theirs, True)
    # the sigmoid's output, the input, the target and the option (PyTorch's broadcast)
    assert saved == theirs_saved
    assert read == list(range(saved))  # the backward unpacked each
    torch.testing.assert_close(value, theirs_value, rtol=2e-6, atol=0)
    torch.testing.assert_close(grad, theirs_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("probabilities", [False, True])
def test_an_undefined_output_gradient_leaves_the_input_without_one(probabilities):
    # a Function after the loss whose backward gives the loss no gradient (None): PyTorch's
    # loss then leaves x.grad None; so does each of bceloss's nodes (none materializes the
    # missing gradient as zeros), the C kernel's lean one among them (the last calls)
    class Cut(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            return a * 1

        @staticmethod
        def backward(ctx, grad):
            return None

    g = torch.Generator().manual_seed(7)
    ours, theirs, last = _losses(probabilities, g)
    x = torch.randn(8, 10, generator=g)
    y = (torch.rand(8, 10, generator=g) > 0.5).float()
    other = torch.zeros((), requires_grad=True)  # something else to differentiate
    nodes = []
    for loss in (theirs, *[ours] * 5):
        z = x.clone().requires_grad_()
        value = loss(z if last is None else last(z), y)
        (Cut.apply(value) + other).backward()
        assert z.grad is None
        if loss is ours:
            nodes.append(_node_of(value))
    assert nodes[-1] == "_c_apply", nodes
