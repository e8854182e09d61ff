"""The PyTorch losses under `torch.func` transforms (grad, vmap of grad, jacrev, jacfwd, vjp,
jvp, hessian) against torch.nn.functional's own losses under the same transforms, in float64,
at a size below and one above the fused kernel's threshold; forward mode at infinite logits
against the oracle; the [0, 1] check under vmap; and which path (kernel or formula) runs."""

from __future__ import annotations

import re

import mpmath as mp
import oracle
import pytest

import bceloss
from bceloss import _kernels

torch = pytest.importorskip("torch", reason="PyTorch is the reference these tests compare to")
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

# PyTorch's first forward-mode derivative loads decompositions through torch.jit.script
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated")
F = torch.nn.functional
BCE = bceloss.binary_cross_entropy
BCEL = bceloss.binary_cross_entropy_with_logits
SMALL, LARGE = 50, 5000  # a minibatch of a few labels, and of a few thousand
BATCH = 4
ARGS = (0, 1, 2, 3)  # input, target, weight, pos_weight


def _case(n, seed=0):
    """Logits, targets, weights (BATCH, n); pos_weight (n,); probabilities (BATCH, n)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    x = torch.randn(BATCH, n, generator=g, dtype=torch.float64) * 4
    # probabilities away from 0 and 1: there PyTorch's second derivative loses digits
    return x, rand(BATCH, n), rand(BATCH, n) + 0.5, rand(n) * 3 + 0.1, rand(BATCH, n) * 0.9 + 0.05


# PyTorch's second derivative of binary_cross_entropy (probabilities) is off by up to 5e-11
# relatively on [0.05, 0.95] (measured against mpmath; ours: 1e-15): compared at this rtol
PROBABILITY_RTOL = 1e-9


def _compare(make, rtol=1e-12):
    """`make(lib)` with bceloss and with torch.nn.functional as `lib`: the same results."""
    _close(make(bceloss), make(F), rtol)


def _close(ours, theirs, rtol=1e-12):
    if isinstance(theirs, tuple):
        assert isinstance(ours, tuple)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            _close(a, b, rtol)
        return
    assert ours.dtype == theirs.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=1e-15)


def _exact_probability_hessian(x, y, w):
    """The exact d2 l / dx2 and d2 l / dx dy of l = -w (y log x + (1 - y) log(1 - x))."""
    dxx, dxy = [], []
    with mp.workdps(40):
        for a, b, c in zip(x.tolist(), y.tolist(), w.tolist(), strict=True):
            a, b, c = mp.mpf(a), mp.mpf(b), mp.mpf(c)
            dxx.append(float(c * (b / a**2 + (1 - b) / (1 - a) ** 2)))
            dxy.append(float(-c / (a * (1 - a))))
    return torch.tensor(dxx, dtype=torch.float64), torch.tensor(dxy, dtype=torch.float64)


def _logits(lib, reduction="mean"):
    def f(x, y, w, p):
        return lib.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=p)

    return f


def _probabilities(lib, reduction="mean"):
    def f(x, y, w):
        return lib.binary_cross_entropy(x, y, w, reduction=reduction)

    return f


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_grad_of_all_four_arguments(n, reduction):
    x, y, w, p, _ = _case(n)
    _compare(lambda lib: grad(_logits(lib, reduction), ARGS)(x, y, w, p))


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_per_sample_gradients(n):
    # vmap(grad): one gradient per row, pos_weight shared (not batched) by all rows
    x, y, w, p, q = _case(n, seed=1)
    _compare(lambda lib: vmap(grad(_logits(lib), ARGS), in_dims=(0, 0, 0, None))(x, y, w, p))
    # PyTorch's binary_cross_entropy does not differentiate with respect to its weight
    _compare(lambda lib: vmap(grad(_probabilities(lib), (0, 1)))(q, y, w))


def test_per_sample_gradients_with_a_batched_mask():
    x, y, _, _, _ = _case(SMALL, seed=2)
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) < 0.7

    def masked_mean(a, b, m):  # what `where` means, written with PyTorch's loss
        return (F.binary_cross_entropy_with_logits(a, b, reduction="none") * m).sum() / m.sum()

    ours = vmap(grad(lambda a, b, m: BCEL(a, b, where=m)))(x, y, keep)
    _close(ours, vmap(grad(masked_mean))(x, y, keep))


@pytest.mark.parametrize("jacobian", [jacrev, jacfwd])
def test_jacobians_of_the_elementwise_loss(jacobian):
    x, y, w, p, q = _case(SMALL, seed=4)
    _compare(lambda lib: jacobian(_logits(lib, "none"), ARGS)(x[0], y[0], w[0], p))
    _compare(lambda lib: jacobian(_probabilities(lib, "none"), (0, 1))(q[0], y[0], w[0]))


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_vjp_and_jvp_of_the_elementwise_loss(n):
    # the products the Jacobians above are made of, at sizes where a Jacobian is too large
    x, y, w, p, q = _case(n, seed=5)
    u, v = torch.randn(2, BATCH, n, generator=torch.Generator().manual_seed(6), dtype=x.dtype)
    primals, tangents = (x, y, w, p), (v, u, v.abs(), v[0])
    _compare(lambda lib: vjp(_logits(lib, "none"), *primals)[1](u))
    _compare(lambda lib: jvp(_logits(lib, "none"), primals, tangents))
    _compare(lambda lib: jvp(lambda a, b: _probabilities(lib, "none")(a, b, w), (q, y), (v, u)))


def test_hessians():
    x, y, w, p, q = _case(SMALL, seed=7)
    # every block, with respect to input, target, weight and pos_weight
    _compare(lambda lib: hessian(_logits(lib), ARGS)(x[0], y[0], w[0], p))
    _compare(lambda lib: hessian(_probabilities(lib), (0, 1))(q[0], y[0], w[0]), PROBABILITY_RTOL)
    (hxx, hxy), (hyx, hyy) = hessian(_probabilities(bceloss), (0, 1))(q[0], y[0], w[0])
    dxx, dxy = _exact_probability_hessian(q[0], y[0], w[0])
    for h, exact in ((hxx, dxx), (hxy, dxy), (hyx, dxy), (hyy, 0 * dxy)):
        torch.testing.assert_close(h, torch.diag(exact) / SMALL, rtol=1e-14, atol=0)
    # PyTorch does not differentiate its probability loss with respect to weight: the mixed
    # block d2 L / dx dw of the mean is diag(d l / dx without weights) / n
    mixed = hessian(_probabilities(bceloss), (0, 2))(q[0], y[0], w[0])[0][1]
    _close(mixed, torch.diag(grad(F.binary_cross_entropy)(q[0], y[0])))


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_hessian_vector_products(n):
    # forward over reverse, as `hessian` computes, at sizes where a Hessian is too large
    x, y, w, p, q = _case(n, seed=8)
    v = torch.randn(BATCH, n, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    _compare(lambda lib: jvp(grad(_logits(lib)), (x, y, w, p), (v, v / 3, v.abs(), v[0]))[1])
    _compare(
        lambda lib: jvp(
            grad(lambda a, b: _probabilities(lib)(a, b, w), (0, 1)), (q, y), (v / 100, v / 3)
        )[1],
        PROBABILITY_RTOL,
    )


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_hessian_vector_products_with_plain_forward_ad(n):
    # torch.autograd.forward_ad's dual tensors are not functorch-wrapped: the backward must
    # not drop their tangents (the NumPy kernel would)
    from torch.autograd import forward_ad

    x, y, w, p, _ = _case(n, seed=11)
    v = torch.randn(BATCH, n, generator=torch.Generator().manual_seed(12), dtype=x.dtype)

    def hvp(lib):
        xr = x.clone().requires_grad_()
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(xr, v)
            loss = lib.binary_cross_entropy_with_logits(dual, y, weight=w, pos_weight=p)
            (g,) = torch.autograd.grad(loss, xr)  # no graph: the kernel's backward would run
            return forward_ad.unpack_dual(g).tangent

    _compare(hvp)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_vmap_of_the_probability_loss(n, reduction):
    _, y, w, _, q = _case(n, seed=10)
    _compare(lambda lib: vmap(_probabilities(lib, reduction))(q, y, w))


def test_vmap_still_checks_probabilities():
    _, y, _, _, q = _case(SMALL, seed=11)
    q = q.clone()
    q[2, 7], q[3, 1] = 1.5, -0.25  # one bad value in each of two rows
    # the message of the eager call: the range of the bad values of every row
    message = "input must hold probabilities in [0, 1]; got values from -0.25 to 1.5"
    for run in (BCE, vmap(BCE), vmap(grad(BCE)), grad(BCE)):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            run(q, y)
    assert vmap(BCE)(q[:2], y[:2]).shape == (2,)  # the rows without one are accepted


def test_forward_mode_is_the_closed_form_at_infinite_logits():
    # traced through the formula, forward mode gives NaN here; the loss's jvp is SPEC §2's
    inf = torch.inf
    x = torch.tensor([-inf, -1e4, -30.0, 0.0, 2.0, 1e4, inf], dtype=torch.float64)
    y = torch.tensor([0.3, 0.5, 1.0, 0.25, 0.0, 0.5, 0.2], dtype=torch.float64)
    p = torch.tensor([2.0, 0.5, 1.5, 3.0, 1.0, 2.0, 0.75], dtype=torch.float64)
    terms = zip(x.tolist(), y.tolist(), [1.0] * len(x), p.tolist(), strict=True)
    exact = torch.tensor([oracle.logits_terms(*t)[1] for t in terms], dtype=torch.float64)
    for jacobian in (jacfwd, jacrev):
        d = jacobian(lambda a: BCEL(a, y, reduction="none", pos_weight=p))(x)
        torch.testing.assert_close(d, torch.diag(exact), rtol=1e-15, atol=0)
    # d2 l / dx2 = lw sigmoid(x) sigmoid(-x): 0 at infinite logits (and at |x| = 1e4)
    h = hessian(lambda a: BCEL(a, y, reduction="sum", pos_weight=p))(x)
    s = torch.sigmoid(x)
    torch.testing.assert_close(h, torch.diag((1 + (p - 1) * y) * s * (1 - s)), rtol=1e-14, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "weighted_mean"])
def test_gradcheck_forward_mode_and_batched(reduction):
    # numerical derivatives: reverse and forward mode, and both under vmap
    x, y, w, p, q = (t[..., :6] for t in _case(SMALL, seed=12))
    checks = {"check_forward_ad": True, "check_batched_grad": True}
    checks["check_batched_forward_grad"] = True
    logits = [t.clone().requires_grad_() for t in (x[:2], y[:2], w[0], p)]
    assert torch.autograd.gradcheck(_logits(bceloss, reduction), logits, **checks)
    probs = [t.clone().requires_grad_() for t in (q[:2], y[:2], w[0])]
    assert torch.autograd.gradcheck(_probabilities(bceloss, reduction), probs, **checks)


def test_the_kernel_runs_for_backward_but_not_under_vmap(monkeypatch):
    ran = []
    for name, label in (("loss", "torch_loss"), ("loss_and_grad", "torch_gradients")):
        original = getattr(_kernels, name)

        def spy(*args, _original=original, _label=label, **kwargs):
            ran.append(_label)
            return _original(*args, **kwargs)

        monkeypatch.setattr(_kernels, name, spy)
    x, y, w, p, _ = _case(LARGE, seed=13)
    x.requires_grad_()
    BCEL(x, y, w, pos_weight=p).backward()
    assert ran == ["torch_gradients"]  # one pass: the forward computes the gradient too
    ran.clear()
    per_sample = vmap(grad(_logits(bceloss)), in_dims=(0, 0, 0, None))(x.detach(), y, w, p)
    assert not any(ran)
    _close(per_sample / BATCH, x.grad)  # each row's mean against the mean of all rows


def _transforms_in_a_compiled_function():
    """(name, the transform of a loss(input, target) function, applied to input and target)."""
    yield "grad", lambda f: grad(f)
    yield "vmap(grad)", lambda f: vmap(grad(f))  # per-sample gradients
    yield "vmap", lambda f: vmap(f)  # a loss a row (the operator under vmap: a row a call)
    yield "jacrev", lambda f: jacrev(f)
    yield "hessian", lambda f: hessian(f)
    yield "jacfwd", lambda f: jacfwd(f)  # (forward mode: its tangent was lost, a zero)
    yield "jvp", lambda f: lambda x, y: jvp(lambda a: f(a, y), (x,), (torch.ones_like(x),))[1]


def _losses_in_a_compiled_function():
    """(name, a loss(input, target), whether it takes probabilities)."""
    pos_weight = torch.linspace(0.5, 2.0, SMALL, dtype=torch.float64)
    yield "functional", lambda x, y: BCEL(x, y, reduction="sum"), False
    yield "BCEWithLogitsLoss", bceloss.BCEWithLogitsLoss(pos_weight=pos_weight), False
    yield "BCELoss", bceloss.BCELoss(), True


# (resuming a graph after the break, dynamo reads .grad of a non-leaf tensor: PyTorch warns)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("loss", list(_losses_in_a_compiled_function()), ids=lambda c: c[0])
@pytest.mark.parametrize(
    "transform", list(_transforms_in_a_compiled_function()), ids=lambda c: c[0]
)
def test_transforms_inside_a_compiled_function_run_the_loss_eagerly(transform, loss):
    # PyTorch's transforms take no custom operator in a compiled graph (a Function inside one
    # fails on the compiler's fake tensors): the loss runs eagerly there, a graph break, with
    # eager's results to the last bit (the compiler ran the frames it meets then, NumPy views
    # among them, until it raised); fullgraph=True refuses the break with the reason
    _, apply = transform
    _, fn, probabilities = loss
    x, y, *_, p = _case(SMALL, seed=9)
    x = p if probabilities else x
    eager = apply(fn)(x, y)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: apply(fn)(a, b))(x, y)
    assert torch.equal(compiled, eager)
    torch._dynamo.reset()  # the other order: a transform of a compiled loss
    assert torch.equal(apply(torch.compile(lambda a, b: fn(a, b)))(x, y), eager)
    theirs = torch.nn.BCELoss() if probabilities else None
    if theirs is None:
        pw = getattr(fn, "pos_weight", None)
        theirs = torch.nn.BCEWithLogitsLoss(
            pos_weight=pw, reduction=getattr(fn, "reduction", "sum")
        )
    rtol = PROBABILITY_RTOL if probabilities else 1e-12
    _close(compiled, apply(theirs)(x, y), rtol)
    torch._dynamo.reset()
    with pytest.raises(
        torch._dynamo.exc.Unsupported, match=r"eagerly under a torch\.func transform"
    ):
        torch.compile(lambda a, b: apply(fn)(a, b), fullgraph=True)(x, y)
    torch._dynamo.reset()
