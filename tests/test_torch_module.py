"""PyTorch users' habits: the loss classes as torch.nn.Modules, torch.compile(fullgraph=True)
and torch.export through one registered operator, autocast; against PyTorch's own losses."""

from __future__ import annotations

import copy
import hashlib
import io
import math
import pathlib
import pickle
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch_graphs

import bceloss

torch = pytest.importorskip("torch", reason="PyTorch is optional")
F = torch.nn.functional
BCEL = bceloss.binary_cross_entropy_with_logits


def _mlp(labels: int, seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, labels)
    )


def _python(code: str) -> str:
    """What a fresh Python process running `code` prints."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return out.stdout


def _batch(rows: int, labels: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 64, generator=g)
    y = (torch.rand(rows, labels, generator=g) > 0.7).float()
    return x, y


# --- modules ---------------------------------------------------------------------------


def test_core_losses_are_torch_modules():
    for loss in (bceloss.BCEWithLogitsLoss(), bceloss.BCELoss()):
        assert isinstance(loss, torch.nn.Module)
        assert isinstance(loss, (bceloss.BCEWithLogitsLoss, bceloss.BCELoss))
        assert type(loss).__name__ in ("BCEWithLogitsLoss", "BCELoss")
    heads = torch.nn.ModuleList([torch.nn.Linear(3, 2), bceloss.BCEWithLogitsLoss()])
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), bceloss.BCELoss())
    assert "BCEWithLogitsLoss" in repr(heads)
    assert "BCELoss" in repr(model)
    assert not model.eval()[1].training


def test_repr_is_pytorchs_with_the_options_set_and_no_tensor():
    pos_weight = torch.arange(1.0, 40.0)
    ours = bceloss.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="sum", label_smoothing=0.1)
    theirs = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    assert repr(theirs) == "BCEWithLogitsLoss()"
    assert repr(bceloss.BCEWithLogitsLoss(pos_weight=pos_weight)) == repr(theirs)
    assert repr(ours) == "BCEWithLogitsLoss(reduction='sum', label_smoothing=0.1)"
    lines = repr(torch.nn.Sequential(torch.nn.Linear(2, 39), ours)).splitlines()
    assert lines[2] == "  (1): BCEWithLogitsLoss(reduction='sum', label_smoothing=0.1)"


def test_a_parameter_assigned_as_pos_weight_is_a_parameter_and_learns():
    # a Parameter is a module's parameter (the optimizer sees it), not a buffer, as with
    # PyTorch's loss; and it gets its gradient (PyTorch's loss refuses to run with a
    # pos_weight that requires one): for 'mean',
    # d l / d p_j = sum over rows of y softplus(-x) in column j, over the element count
    x, y = _batch(8, 5)
    logits = x[:, :5].double()
    y = y.double()
    for loss in (bceloss.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss()):
        loss.pos_weight = torch.nn.Parameter(torch.linspace(0.5, 3.0, 5, dtype=torch.float64))
        assert [p is loss.pos_weight for p in loss.parameters()] == [True]
        assert "pos_weight" not in dict(loss.named_buffers())
    ours = bceloss.BCEWithLogitsLoss()
    ours.pos_weight = torch.nn.Parameter(torch.linspace(0.5, 3.0, 5, dtype=torch.float64))
    ours(logits, y).backward()
    want = (y * F.softplus(-logits)).sum(0) / logits.numel()
    torch.testing.assert_close(ours.pos_weight.grad, want, rtol=1e-13, atol=0)
    ours.pos_weight = None  # and back, as PyTorch's loss takes it
    ours.pos_weight = torch.ones(5)
    assert list(ours.parameters()) == []
    assert torch.equal(dict(ours.named_buffers())["pos_weight"], torch.ones(5))


def test_import_bceloss_where_torch_is_blocked():
    # sys.modules["torch"] = None is how a program hides an optional dependency
    code = "import sys; sys.modules['torch'] = None; import bceloss; print(bceloss.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr


def test_weight_and_pos_weight_are_buffers_that_follow_the_model():
    pos_weight = torch.tensor([1.0, 2.0, 3.0])
    weight = torch.tensor([0.5, 1.0, 2.0])
    loss = bceloss.BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight)
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(4, 3), "loss": loss})
    state = model.state_dict()
    assert torch.equal(state["loss.pos_weight"], pos_weight)
    assert torch.equal(state["loss.weight"], weight)
    fresh = torch.nn.ModuleDict(
        {
            "head": torch.nn.Linear(4, 3),
            "loss": bceloss.BCEWithLogitsLoss(weight=torch.ones(3), pos_weight=torch.ones(3)),
        }
    )
    fresh.load_state_dict(state)
    assert torch.equal(fresh["loss"].pos_weight, pos_weight)
    model.to(torch.float64)
    assert loss.pos_weight.dtype == loss.weight.dtype == torch.float64
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.rand(5, 3, dtype=torch.float64)
    want = F.binary_cross_entropy_with_logits(x, y, weight, pos_weight=pos_weight.double())
    torch.testing.assert_close(loss(x, y), want, rtol=1e-14, atol=0)


def test_a_missing_weight_is_not_in_the_state_and_a_numpy_weight_stays_an_attribute():
    assert bceloss.BCELoss().state_dict() == {}
    w = np.array([1.0, 2.0])
    loss = bceloss.BCELoss(weight=w)
    assert loss.state_dict() == {}
    assert loss.weight is w
    got = loss(np.array([0.5, 0.25]), np.array([1.0, 0.0]))
    assert float(got) == pytest.approx((np.log(2) + 2 * np.log(4 / 3)) / 2, rel=1e-15)
    # deleted, an option is gone as a module's attribute is, a buffer as a buffer is
    for value in (w, torch.ones(2)):
        loss.weight = value
        del loss.weight
        missing = "'BCELoss' object has no attribute 'weight'"
        with pytest.raises(AttributeError, match=missing):
            loss.weight  # noqa: B018
        with pytest.raises(AttributeError, match=missing):
            del loss.weight
        assert "weight" not in dict(loss.named_buffers())


@pytest.mark.parametrize("option", ["weight", "pos_weight"])
@pytest.mark.parametrize(
    "value",
    [2.0, math.nan, np.array([1.0, 2.0, 0.5], np.float32)],
    ids=["float", "nan", "numpy"],
)
@pytest.mark.parametrize(("module", "device"), [(False, "cpu"), (True, "cpu"), (False, "meta")])
def test_a_number_or_numpy_option_beside_tensors_is_refused_with_the_conversion(
    option, value, module, device
):
    # as PyTorch's own losses refuse them (a TypeError, measured): the message shows the call
    # that makes the option a tensor (on the input's device), and the loss with it is
    # PyTorch's loss with that tensor (a meta tensor's: its shape and dtype)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, generator=g).to(device)
    y = torch.rand(4, 3, generator=g).to(device)
    if module:
        loss = bceloss.BCEWithLogitsLoss(**{option: value})
        call = lambda: loss(x, y)
    else:
        call = lambda: BCEL(x, y, **{option: value})
    with pytest.raises(TypeError, match=rf"^(all arrays|{option} must be an array)") as refused:
        call()
    shown = re.search(
        r"(torch\.as_tensor\(.*?\)) holds|: (torch\.as_tensor\(.*\))\)$", str(refused.value)
    )
    assert shown is not None, str(refused.value)
    code = shown.group(1) or shown.group(2)
    converted = eval(code, {"torch": torch, option: value, "input": x})
    assert isinstance(converted, torch.Tensor)
    assert converted.device == x.device
    got = bceloss.BCEWithLogitsLoss(**{option: converted})(x, y)
    want = F.binary_cross_entropy_with_logits(x, y, **{option: converted})
    assert (got.shape, got.dtype, got.device) == (want.shape, want.dtype, want.device)
    if device == "cpu":
        torch.testing.assert_close(got, want, rtol=2e-6, atol=0, equal_nan=True)


def test_a_tensor_beside_numpy_arrays_is_refused_with_the_conversion():
    # the other way round: a tensor that requires grad, which np.asarray refuses, is shown
    # detached and on the CPU first
    x = np.array([[0.5, -1.0, 2.0]], np.float32)
    y = np.array([[1.0, 0.0, 0.5]], np.float32)
    weight = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    with pytest.raises(TypeError, match="got input from numpy and weight from torch") as refused:
        BCEL(x, y, weight=weight)
    code = re.search(r"numpy's: (.*)\)$", str(refused.value)).group(1)
    converted = eval(code, {"weight": weight})
    assert isinstance(converted, np.ndarray)
    want = F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(y), weight.detach())
    np.testing.assert_allclose(BCEL(x, y, weight=converted), want.numpy(), rtol=2e-6)


def test_pickle_and_deepcopy_keep_the_module():
    loss = bceloss.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 0.5]), reduction="sum")
    x, y = torch.tensor([[0.3, -1.0]]), torch.tensor([[1.0, 0.0]])
    buffer = io.BytesIO()
    torch.save(torch.nn.ModuleList([loss]), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)[0]
    for other in (loaded, copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert isinstance(other, torch.nn.Module)
        assert isinstance(other, bceloss.BCEWithLogitsLoss)
        assert torch.equal(other.pos_weight, loss.pos_weight)
        assert torch.equal(other(x, y), loss(x, y))


def _lane_kept(loss) -> bool:
    from bceloss import _module_types

    return _module_types.LANE in vars(loss)


def test_a_module_reads_its_options_at_every_call_as_pytorchs_does(monkeypatch):
    # a loss module keeps the form of its calls (its own lane): an option set, a buffer
    # replaced, changed in place or written into the buffers straight away, a grad mode
    # switched between calls, each is read at the next call as PyTorch's own module reads it
    from bceloss import _dispatch

    express = _dispatch.EXPRESS_LANES[torch.Tensor]
    expressed = []  # the calls the express lane took: not those the module's lane served
    monkeypatch.setitem(
        _dispatch.EXPRESS_LANES, torch.Tensor, lambda *a: expressed.append(1) or express(*a)
    )
    gen = torch.Generator().manual_seed(3)
    ours, theirs = bceloss.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss()
    p, w = torch.rand(5, generator=gen) + 0.5, torch.rand(5, generator=gen) + 0.5
    changes = {
        "none": lambda m: None,
        "reduction": lambda m: setattr(m, "reduction", "sum"),
        "pos_weight set": lambda m: setattr(m, "pos_weight", p.clone()),
        "in place": lambda m: m.pos_weight.mul_(3.0),
        "buffer replaced": lambda m: m._buffers.__setitem__("pos_weight", 2 * p),
        "weight written in the buffers": lambda m: m._buffers.__setitem__("weight", w.clone()),
        "float64": lambda m: m.to(torch.float64),
        "weight None": lambda m: setattr(m, "weight", None),
        "reduction back": lambda m: setattr(m, "reduction", "mean"),
    }
    served = []
    for name, change in changes.items():
        change(ours)
        change(theirs)
        dtype = ours.pos_weight.dtype if ours.pos_weight is not None else torch.float32
        for call in range(8):
            x = (3 * torch.randn(16, 5, generator=gen, dtype=dtype)).requires_grad_()
            y = (torch.rand(16, 5, generator=gen, dtype=dtype) > 0.5).to(dtype)
            before = len(expressed)
            with torch.set_grad_enabled(call % 4 != 2):
                got, want = ours(x, y), theirs(x, y)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0, msg=name)
            if got.requires_grad:
                (gx,) = torch.autograd.grad(got, x)
                (want_gx,) = torch.autograd.grad(want, x)
                # (PyTorch's p y (sigmoid(x) - 1) + (1 - y) sigmoid(x) cancels: a few ulp of p)
                torch.testing.assert_close(gx, want_gx, rtol=1e-5, atol=1e-6, msg=name)
        served.append((name, len(expressed) == before))  # the last call's
    # (the calls after each change were served by the module's own lane once it kept them)
    assert served == [(name, True) for name in changes]
    # a weight written into the buffers where there was none, of a shape that does not
    # broadcast: refused, as PyTorch refuses it
    ours._buffers["weight"] = theirs._buffers["weight"] = torch.rand(3, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        theirs(x, y)
    with pytest.raises(ValueError, match="weight"):
        ours(x, y)


def test_a_module_alternating_between_forms_is_served_by_its_lane(monkeypatch):
    # a module called with batches of two shapes in turn (two heads, a last smaller batch)
    # keeps both forms: after the first calls no call searches the express lane, and each
    # loss is PyTorch's
    from bceloss import _dispatch

    express = _dispatch.EXPRESS_LANES[torch.Tensor]
    expressed = []
    monkeypatch.setitem(
        _dispatch.EXPRESS_LANES, torch.Tensor, lambda *a: expressed.append(1) or express(*a)
    )
    gen = torch.Generator().manual_seed(8)
    ours = bceloss.BCEWithLogitsLoss(pos_weight=torch.rand(5, generator=gen) + 0.5)
    theirs = torch.nn.BCEWithLogitsLoss(pos_weight=ours.pos_weight)
    for call in range(12):
        if call == 8:
            served_from = len(expressed)
        rows = (16, 3)[call % 2]
        x = torch.randn(rows, 5, generator=gen).requires_grad_()
        y = (torch.rand(rows, 5, generator=gen) > 0.5).float()
        torch.testing.assert_close(ours(x, y), theirs(x, y), rtol=1e-6, atol=0)
    assert len(expressed) == served_from


def test_a_modules_lane_keeps_autograds_ways_and_the_losss_errors():
    # calls of a module's own lane: a retained graph's second backward computes the gradient
    # again, an output gradient other than 1 scales it, an input modified in place after the
    # forward raises as in PyTorch, and a probability outside [0, 1] raises the loss's error
    gen = torch.Generator().manual_seed(4)
    ours, theirs = bceloss.BCELoss(weight=torch.rand(6, generator=gen)), torch.nn.BCELoss()
    theirs.weight = ours.weight
    x = torch.rand(32, 6, generator=gen).requires_grad_()
    y = (torch.rand(32, 6, generator=gen) > 0.5).float()
    for _ in range(4):
        ours(x, y).backward()
    assert _lane_kept(ours)
    x.grad = None
    (want,) = torch.autograd.grad(theirs(x, y), x)
    loss = ours(x, y)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, want, rtol=1e-6, atol=1e-9)
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * want, rtol=1e-6, atol=1e-9)
    x.grad = None
    ours(x, y).backward(torch.tensor(-0.75))
    torch.testing.assert_close(x.grad, -0.75 * want, rtol=1e-6, atol=1e-9)
    loss = ours(x, y)
    with torch.no_grad():
        x.mul_(0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with torch.no_grad():
        x[3, 2] = 1.5
    with pytest.raises(ValueError, match="input") as raised:
        ours(x, y)
    with pytest.raises(ValueError, match="input") as functional:
        bceloss.binary_cross_entropy(x, y, ours.weight)
    assert str(raised.value) == str(functional.value)


def test_a_module_whose_class_is_changed_reads_its_options_through_the_new_class(monkeypatch):
    # found by review: a module's class swapped for a subclass whose option is computed (as
    # parametrize and FSDP's fully_shard swap a module's class), or its options' reading
    # patched, after the module kept its lane: the next call reads them as the class says
    x = torch.randn(8, 5, requires_grad=True)
    y = (torch.rand(8, 5, generator=torch.Generator().manual_seed(6)) > 0.5).float()
    want = F.binary_cross_entropy_with_logits(x, y, reduction="sum")
    loss = bceloss.BCEWithLogitsLoss()
    for _ in range(5):
        loss(x, y)
    assert _lane_kept(loss)

    class Summed(type(loss)):
        reduction = property(lambda self: "sum", lambda self, value: None)

    loss.__class__ = Summed
    torch.testing.assert_close(loss(x, y), want, rtol=1e-6, atol=0)
    patched = bceloss.BCEWithLogitsLoss()
    for _ in range(5):
        patched(x, y)
    assert _lane_kept(patched)
    kind = type(patched)
    reads = kind._options
    monkeypatch.setattr(kind, "_options", lambda self: {**reads(self), "reduction": "sum"})
    torch.testing.assert_close(patched(x, y), want, rtol=1e-6, atol=0)


def test_a_modules_lane_is_neither_pickled_nor_copied():
    loss = bceloss.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 0.5]))
    x, y = torch.tensor([[0.3, -1.0]]), torch.tensor([[1.0, 0.0]])
    for _ in range(4):
        want = loss(x, y)
    assert _lane_kept(loss)
    for other in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss)), copy.copy(loss)):
        assert not _lane_kept(other)
        assert torch.equal(other(x, y), want)
    assert _lane_kept(loss)


def test_eager_calls_between_compiled_ones_compile_nothing_again():
    # the lane an eager call keeps in the module's __dict__ is not among what the compiled
    # graph of a model holding the module checks
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    net, loss = _mlp(10), bceloss.BCEWithLogitsLoss(pos_weight=torch.full((10,), 2.0))
    x, y = _batch(64, 10)
    step = torch.compile(lambda x, y: loss(net(x), y), backend=backend, fullgraph=True)
    for _ in range(3):
        compiled = step(x, y)
    for _ in range(5):
        eager = loss(net(x), y)
    assert _lane_kept(loss)
    assert torch.equal(step(x, y), compiled)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    assert len(compiles) == 1


def test_without_torch_the_classes_stay_plain_and_torch_is_not_imported():
    code = (
        "import sys, bceloss; l = bceloss.BCEWithLogitsLoss(); "
        "print([c.__module__ for c in type(l).__mro__], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = "['bceloss._modules', 'bceloss._modules', 'bceloss._modules', 'builtins']"
    assert out.stdout.strip() == f"{modules} False"


# --- torch.compile and torch.export ------------------------------------------------------


@pytest.mark.parametrize(("rows", "labels"), [(64, 10), (1024, 1000)])
def test_compiled_training_step_equals_eager(rows, labels):
    torch._dynamo.reset()
    x, y = _batch(rows, labels)
    pos_weight = torch.linspace(0.5, 2.0, labels)
    results = []
    for compiled in (False, True):
        net = _mlp(labels)
        loss_fn = bceloss.BCEWithLogitsLoss(pos_weight=pos_weight)

        def step(x, y, net=net, loss_fn=loss_fn):
            return loss_fn(net(x), y)

        run = torch.compile(step, fullgraph=True) if compiled else step
        loss = run(x, y)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in net.parameters()]))
    (eager, eager_grads), (comp, comp_grads) = results
    assert torch.equal(eager, comp)  # the operator runs the eager computation
    want = F.binary_cross_entropy_with_logits(_mlp(labels)(x), y, pos_weight=pos_weight)
    torch.testing.assert_close(comp, want.detach(), rtol=2e-6, atol=0)
    for g, h in zip(eager_grads, comp_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)  # the matmuls' own order


def test_a_compiled_loss_adds_few_checks_to_each_call_of_its_graph():
    # each object the compiler reads of a loss's Python it checks at every call of the
    # graph (a cost a small training step pays): the loss's options and a few functions, no
    # object met by two paths (each such pair costs a check in Python); PyTorch's own loss
    # is the yardstick
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    x, y = _batch(64, 10)
    checks = {}
    for name, loss_fn in (
        ("bceloss", bceloss.BCEWithLogitsLoss()),
        ("PyTorch", torch.nn.BCEWithLogitsLoss()),
    ):
        torch._dynamo.reset()
        net = _mlp(10)

        def step(x, y, net=net, loss_fn=loss_fn):
            return loss_fn(net(x), y)

        torch.compile(step, fullgraph=True)(x, y).backward()
        (entry,) = _debug_get_cache_entry_list(step.__code__)
        guards = str(entry.guard_manager)
        checks[name] = (len(guards.splitlines()), guards.count("LAMBDA_GUARD"))
    torch._dynamo.reset()
    assert checks["bceloss"][1] <= checks["PyTorch"][1], checks
    assert checks["bceloss"][0] <= checks["PyTorch"][0] + 70, checks


def _set_option(loss, change):
    name, value = change
    setattr(loss, name, value() if callable(value) else value)


# changes of a compiled loss module's options between calls, each a new graph whose operator
# holds the options of the call (a Parameter as the weight too)
_CHANGES = [
    ("reduction", "sum"),
    ("label_smoothing", 0.1),
    ("label_smoothing", 0.2),
    ("label_smoothing", 0),
    ("pos_weight", lambda: torch.linspace(0.5, 2.0, 10)),
    ("weight", lambda: torch.nn.Parameter(torch.linspace(1.0, 2.0, 10))),
    ("weight", None),
    ("where", lambda: torch.arange(10) % 3 > 0),
]


def test_a_compiled_module_reads_its_options_as_they_are_at_each_call():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(16, 10, generator=g) * 3).requires_grad_()
    y = (torch.rand(16, 10, generator=g) > 0.5).float()
    loss = bceloss.BCEWithLogitsLoss()
    compiled = torch.compile(lambda a, b: loss(a, b), fullgraph=True)
    for change in [None, *_CHANGES]:
        if change is not None:
            _set_option(loss, change)
        got = compiled(x, y)
        (got_grad,) = torch.autograd.grad(got, x)
        want = loss(x, y)  # eager: the same kernel, the same bits
        (want_grad,) = torch.autograd.grad(want, x)
        assert torch.equal(got.detach(), want.detach()), change
        assert torch.equal(got_grad, want_grad), change
    # the last options against PyTorch's loss (which has no mask nor smoothing: by hand)
    weight = (torch.arange(10) % 3 > 0).float()
    pos_weight = torch.linspace(0.5, 2.0, 10)
    smoothed = y * (1 - 0) + 0 / 2
    plain = F.binary_cross_entropy_with_logits(
        x, smoothed, weight=weight, pos_weight=pos_weight, reduction="sum"
    )
    torch.testing.assert_close(got, plain, rtol=2e-6, atol=0)


def _checked(loss, *args) -> int:
    """How many objects the compiler checks at each call of a graph calling `loss`."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda a, b: loss(a, b))(*args)
    assert explained.graph_break_count == 0
    return len(explained.out_guards)


@pytest.mark.parametrize("probabilities", [False, True])
def test_a_compiled_loss_module_is_checked_about_as_much_as_pytorchs_own(probabilities):
    # the module type's forward reads, inside a graph being compiled, its options as one string
    # written when they were set, and its buffers: the compiler checks at most a few objects
    # more at each call than for PyTorch's loss (a forward reading its options one by one and
    # writing them in Python, as the functional form does, is checked for about twice as many)
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(8, 4, generator=g), (torch.rand(8, 4, generator=g) > 0.5).float()
    if probabilities:
        ours, theirs = bceloss.BCELoss(), torch.nn.BCELoss()
    else:
        ours = bceloss.BCEWithLogitsLoss(pos_weight=torch.ones(4), reduction="sum")
        theirs = torch.nn.BCEWithLogitsLoss(pos_weight=torch.ones(4), reduction="sum")
    counted = _checked(ours, x, y)
    assert counted <= _checked(theirs, x, y) + 8
    # so is a copy and a module loaded from a pickle, whose written options are made again as
    # it loads (a pickle keeps none: another bceloss may have written them)
    for copied in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert "_bceloss_written" not in copied.__getstate__()
        assert _checked(copied, x, y) == counted
        torch._dynamo.reset()
        assert torch.equal(torch.compile(copied, fullgraph=True)(x, y), ours(x, y))


@pytest.mark.parametrize("smoothing", [np.float64(0.2), np.float32(0.1), np.int64(0)])
def test_a_compiled_module_takes_a_numpy_scalar_option_as_the_number_it_holds(smoothing):
    # as eager does (a compiled graph refused it before: the compiler made it an array)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(8, 4, generator=g).requires_grad_()
    y = (torch.rand(8, 4, generator=g) > 0.5).float()
    loss = bceloss.BCEWithLogitsLoss(label_smoothing=smoothing)
    torch._dynamo.reset()
    got = torch.compile(lambda a, b: loss(a, b), fullgraph=True)(x, y)
    want = loss(x, y)
    assert torch.equal(got, want)
    assert torch.equal(*(torch.autograd.grad(v, x)[0] for v in (got, want)))
    s = float(smoothing)
    plain = F.binary_cross_entropy_with_logits(x, y * (1 - s) + s / 2)
    torch.testing.assert_close(got, plain, rtol=2e-6, atol=0)


def test_a_compiled_module_follows_an_option_deleted_and_set_again():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(8, 4, generator=g), (torch.rand(8, 4, generator=g) > 0.5).float()
    loss = bceloss.BCEWithLogitsLoss(where=torch.arange(4) > 0)
    # (no fullgraph: a graph that raises is the compiler's error there, not the loss's)
    compiled = torch.compile(lambda a, b: loss(a, b))
    torch._dynamo.reset()
    assert torch.equal(compiled(x, y), loss(x, y))
    del loss.where
    with pytest.raises(AttributeError, match="where"):
        loss(x, y)
    with pytest.raises(AttributeError, match="where"):
        compiled(x, y)
    loss.where = None
    got = compiled(x, y)
    assert torch.equal(got, loss(x, y))
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(x, y), rtol=2e-6, atol=0)
    assert _checked(loss, x, y) <= _checked(torch.nn.BCEWithLogitsLoss(), x, y) + 8


def test_a_compiled_module_reads_its_options_after_class_changes_and_shallow_copies():
    # found by review: each gave the compiled graph options that were no longer the module's
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(8, 4, generator=g), (torch.rand(8, 4, generator=g) > 0.5).float()
    made = type(bceloss.BCEWithLogitsLoss())

    class Doubled(made):
        def forward(self, input, target):
            return 2 * super().forward(input, target)

    class Child(Doubled):  # (it kept the made type's forward's place: the plain class's)
        pass

    plain = bceloss.BCEWithLogitsLoss()(x, y)
    assert torch.equal(Child()(x, y), 2 * plain)
    # options set while of another class, then the made type again
    loss = bceloss.BCEWithLogitsLoss()
    loss.__class__ = Child
    loss.reduction = "sum"
    loss.__class__ = made
    compiled = torch.compile(lambda a, b: loss(a, b))
    torch._dynamo.reset()
    assert torch.equal(compiled(x, y), F.binary_cross_entropy_with_logits(x, y, reduction="sum"))
    # a shallow copy shares the buffers: the twin's Parameter weight leaves them
    twin = copy.copy(loss)
    twin.weight = torch.nn.Parameter(torch.linspace(0.5, 2.0, 4))
    torch._dynamo.reset()
    assert torch.equal(compiled(x, y), loss(x, y))
    assert torch.equal(torch.compile(twin)(x, y), twin(x, y))


@pytest.mark.parametrize("stored", ["parameter", "buffer"])
def test_a_parametrized_pos_weight_is_read_through_its_parametrization(stored):
    # torch.nn.utils.parametrize replaces the option by a property of a subclass (softplus
    # of a raw parameter or buffer here): the loss reads it, eager and compiled, as PyTorch's
    # does (a buffer leaves the buffers, where the module type's forward reads its options)
    from torch.nn.utils import parametrize

    class Softplus(torch.nn.Module):
        def forward(self, w):
            return F.softplus(w)

    g = torch.Generator().manual_seed(21)
    x, y = torch.randn(16, 3, generator=g) * 2, torch.rand(16, 3, generator=g)
    raw = torch.tensor([0.0, 1.0, -1.0])
    results = {}
    for name, cls in (
        ("bceloss", bceloss.BCEWithLogitsLoss),
        ("PyTorch", torch.nn.BCEWithLogitsLoss),
    ):
        pos_weight = raw.clone() if stored == "buffer" else torch.nn.Parameter(raw.clone())
        loss = cls(pos_weight=pos_weight)
        parametrize.register_parametrization(loss, "pos_weight", Softplus())
        torch._dynamo.reset()
        with torch.no_grad():  # (PyTorch's own has no gradient wrt pos_weight)
            results[name] = [loss(x, y), torch.compile(loss, fullgraph=True)(x, y)]
            # a deep copy is of the parametrized class and reads the option as it does
            # (found by review: it was made a module type again, which saw no pos_weight)
            results[name].append(copy.deepcopy(loss)(x, y))
    eager, compiled, copied = results["bceloss"]
    assert torch.equal(eager, compiled)
    assert torch.equal(eager, copied)
    for theirs in results["PyTorch"]:
        torch.testing.assert_close(eager, theirs, rtol=2e-6, atol=0)
    want = F.binary_cross_entropy_with_logits(x, y, pos_weight=F.softplus(raw))
    torch.testing.assert_close(eager, want, rtol=2e-6, atol=0)
    # (the plain pos_weight, raw, gives another loss: the test tells them apart)
    assert not torch.allclose(want, F.binary_cross_entropy_with_logits(x, y, pos_weight=raw))


def test_a_subclass_of_a_module_type_is_its_own_type():
    # found by review: a user's subclass of a loss's module type was made a module type
    # again, whose own option properties hid the subclass's: an `_array` of its own was
    # ignored, and a property computing an option gave the plain option's loss silently
    g = torch.Generator().manual_seed(22)
    x, y = torch.randn(8, 2, generator=g), (torch.rand(8, 2, generator=g) > 0.5).float()
    p = torch.tensor([1.5, 0.5])

    class Tripled(type(bceloss.BCEWithLogitsLoss())):
        def _array(self, name):
            value = super()._array(name)
            return 3 * value if name == "pos_weight" and value is not None else value

    loss = Tripled(pos_weight=p)
    assert type(loss) is Tripled
    want = F.binary_cross_entropy_with_logits(x, y, pos_weight=3 * p)
    for _ in range(5):  # (the calls a module's own lane would serve)
        torch.testing.assert_close(loss(x, y), want, rtol=1e-6, atol=0)
    copied = copy.deepcopy(loss)
    assert type(copied) is Tripled
    torch.testing.assert_close(copied(x, y), want, rtol=1e-6, atol=0)

    class Computed(type(bceloss.BCEWithLogitsLoss())):
        pos_weight = property(lambda self: 3 * p)

    class TheirComputed(torch.nn.BCEWithLogitsLoss):
        pos_weight = property(lambda self: 3 * p)

    # an option the class computes cannot be a buffer too: PyTorch's own refuses it alike
    for cls in (Computed, TheirComputed):
        with pytest.raises(KeyError, match="'pos_weight' already exists"):
            cls(pos_weight=p)


def test_a_compiled_loss_takes_the_operators_tensors_in_their_order():
    # compiled_loss names the operator's tensors as literals (a global would be one more
    # check at every call of a compiled graph): they are the operators' operands, in order
    from bceloss import _call, _torch

    assert _call.ARRAYS in _torch.compiled_loss.__code__.co_consts
    assert _torch._OPERANDS == _call.ARRAYS


def test_a_loss_first_called_inside_a_compiled_function_of_a_fresh_process():
    # bceloss imported before torch, no loss made: the first call is traced, and imports the
    # PyTorch adapter inside the trace (which must leave what the trace read as it was, then
    # and after an eager call)
    code = (
        "import bceloss\n"
        "import torch\n"
        "x = torch.linspace(-3, 3, 24).reshape(8, 3).requires_grad_()\n"
        "y = torch.linspace(0, 1, 24).reshape(8, 3)\n"
        "def f(a, b):\n"
        "    return bceloss.binary_cross_entropy_with_logits(a, b, reduction='sum')\n"
        "compiled = torch.compile(f, fullgraph=True)\n"
        "values = [compiled(x, y) for _ in range(2)] + [f(x, y)]\n"
        "values.insert(2, compiled(x, y))  # after an eager call: no recompile\n"
        "values[0].backward()\n"
        "print(*(repr(v.item()) for v in values), repr(x.grad.sum().item()))\n"
        "from torch._dynamo.utils import counters\n"
        "print(counters['stats']['unique_graphs'])\n"
    )
    first, graphs = _python(code).splitlines()
    *compiled, eager, grad = (float(v) for v in first.split())
    x = torch.linspace(-3, 3, 24).reshape(8, 3).requires_grad_()
    y = torch.linspace(0, 1, 24).reshape(8, 3)
    want = F.binary_cross_entropy_with_logits(x, y, reduction="sum")
    assert compiled == [eager] * 3
    torch.testing.assert_close(torch.tensor(eager), want.detach(), rtol=1e-6, atol=0)
    want.backward()
    torch.testing.assert_close(torch.tensor(grad), x.grad.sum(), rtol=1e-5, atol=1e-6)
    assert graphs == "1"  # traced once: no recompile


@pytest.mark.parametrize("size", [50, 6000])  # below and above the kernel's threshold
def test_compiled_gradients_of_every_operand_equal_eager(size):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(size)
    x0 = torch.randn(size, generator=g) * 4
    y0 = torch.rand(size, generator=g)
    w0, p0 = torch.rand(size, generator=g) + 0.5, torch.rand(size, generator=g) + 0.5
    m = torch.rand(size, generator=g) > 0.2

    def f(x, y, w, p):
        return bceloss.binary_cross_entropy_with_logits(
            x, y, w, "sum", p, label_smoothing=0.1, where=m
        )

    grads = []
    for run in (f, torch.compile(f, fullgraph=True)):
        arrays = [a.clone().requires_grad_() for a in (x0, y0, w0, p0)]
        value = run(*arrays)
        value.backward()
        grads.append((value.detach(), [a.grad for a in arrays]))
    assert torch.equal(grads[0][0], grads[1][0])
    for g_eager, g_comp in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.equal(g_eager, g_comp)


WEIGHTED_MEAN = bceloss.BCEWithLogitsLoss(torch.rand(5) + 0.5, "weighted_mean")
MODULE_BCE = bceloss.BCELoss(torch.rand(5) + 0.5)
CALLS = {
    "bce_with_logits": lambda x, y, w: bceloss.binary_cross_entropy_with_logits(x, y, w),
    "pos_weight_none": lambda x, y, w: bceloss.binary_cross_entropy_with_logits(
        x, y, reduction="none", pos_weight=w
    ),
    "bce": lambda x, y, w: bceloss.binary_cross_entropy(torch.sigmoid(x), y, w, "sum"),
    "focal": lambda x, y, w: bceloss.sigmoid_focal_loss(x, y, 0.3, 1.5, "mean"),
    "weighted_mean": lambda x, y, w: WEIGHTED_MEAN(x, y),
    "module_bce": lambda x, y, w: MODULE_BCE(torch.sigmoid(x), y),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_no_graph_break_and_the_eager_numbers(name):
    torch._dynamo.reset()
    fn = CALLS[name]
    x, y, w = torch.randn(40, 5), torch.rand(40, 5), torch.rand(5) + 0.5
    assert torch._dynamo.explain(fn)(x, y, w).graph_break_count == 0
    assert torch.equal(torch.compile(fn, fullgraph=True)(x, y, w), fn(x, y, w))


# (deprecated: a DeprecationWarning in PyTorch 2.13, a FutureWarning in 2.14)
@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated")
def test_jit_trace_records_the_operator_and_replays_the_eager_numbers():
    # torch.jit.trace (deprecated, still in use) records a core loss as one operator (NumPy
    # views of traced tensors failed): the traced model, saved and loaded, computes the eager
    # model's loss and gradients on new inputs
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5))
    loss = bceloss.BCEWithLogitsLoss(pos_weight=torch.full((5,), 2.0))
    weight = torch.rand(5)

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.loss = model, loss

        def forward(self, x, y):
            out = self.model(x)
            return self.loss(out, y) + BCEL(out, y, weight, reduction="sum")

    x, y = torch.randn(8, 6), (torch.rand(8, 5) > 0.5).float()
    step = Step()
    for _ in range(5):  # (the module's own lane kept: tracing takes the operator all the same)
        step(x, y)
    traced = torch.jit.trace(step, (x, y), check_trace=False)
    assert "bceloss::routed_loss" in str(traced.graph)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x2, y2 = torch.randn(8, 6), (torch.rand(8, 5) > 0.5).float()
    want = step(x2, y2)
    want_grads = torch.autograd.grad(want, list(step.parameters()))
    want_torch = F.binary_cross_entropy_with_logits(
        model(x2), y2, pos_weight=loss.pos_weight
    ) + F.binary_cross_entropy_with_logits(model(x2), y2, weight, reduction="sum")
    torch.testing.assert_close(want, want_torch, rtol=1e-6, atol=0)
    for replay in (traced, loaded):
        got = replay(x2, y2)
        assert torch.equal(got, want)
        grads = torch.autograd.grad(got, list(replay.parameters()))
        assert all(map(torch.equal, grads, want_grads))
    # a loss of NumPy arrays inside the traced function (a metric) is computed, not traced
    # (found by review: refused as not a tensor)
    metrics = []

    def logged(x):
        metrics.append(BCEL(np.array([0.5, -1.0]), np.array([1.0, 0.0])))
        return torch.sigmoid(x)

    torch.jit.trace(logged, (x2,))
    assert metrics[-1] == BCEL(np.array([0.5, -1.0]), np.array([1.0, 0.0]))


def test_export_round_trip():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp(10)
            self.loss = bceloss.BCEWithLogitsLoss(pos_weight=torch.full((10,), 2.0))

        def forward(self, x, y):
            return self.loss(self.net(x), y)

    model = Model()
    x, y = _batch(64, 10)
    exported = torch.export.export(model, (x, y))
    # the loss alone, though the parameters require grad: nothing differentiates a program
    assert "bceloss.loss.default" in str(exported.graph)
    assert "loss_and_grad" not in str(exported.graph)
    assert torch.equal(exported.module()(x, y), model(x, y))
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    assert torch.equal(torch.export.load(buffer).module()(x, y), model(x, y))


def test_a_float_option_that_changes_between_compiled_calls_is_read_each_time():
    # the compiler makes a float argument that changes between calls a symbol (and every
    # float one under dynamic=True): the operator's options still hold each call's value
    torch._dynamo.reset()
    x, y = _batch(8, 3)
    x = x[:, :3]
    focal = bceloss.sigmoid_focal_loss
    for dynamic in (None, True):
        smoothed = torch.compile(
            lambda x, y, s: BCEL(x, y, label_smoothing=s), fullgraph=True, dynamic=dynamic
        )
        focused = torch.compile(
            lambda x, y, g: focal(x, y, gamma=g, reduction="sum"), fullgraph=True, dynamic=dynamic
        )
        for v in (0.1, 0.2, 0.35):
            assert torch.equal(smoothed(x, y, v), BCEL(x, y, label_smoothing=v))
            assert torch.equal(focused(x, y, 10 * v), focal(x, y, gamma=10 * v, reduction="sum"))


def test_a_second_derivative_through_the_operators_is_refused():
    # the operators' backward has no derivative: a gradient of a gradient through a compiled
    # function that runs them (backend "eager") or an exported program raises, never a
    # silent zero; eagerly the loss differentiates twice (test_torch_autograd)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, generator=g, dtype=torch.float64)
    pos_weight = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    loss = bceloss.BCEWithLogitsLoss(pos_weight=pos_weight)  # two gradients: bceloss::loss
    compiled = torch.compile(loss, backend="eager", fullgraph=True)
    exported = torch.export.export(loss, (x, y)).module()
    for fn in (compiled, exported):
        (gx,) = torch.autograd.grad(fn(x, y), x, create_graph=True)
        with pytest.raises(RuntimeError, match="have no second derivative"):
            gx.sum().backward()
    # the input's gradient alone (bceloss::loss_and_grad, which computes it in its forward):
    # a graph of its gradient cannot be built
    torch._dynamo.reset()
    fused = torch.compile(bceloss.BCEWithLogitsLoss(), backend="eager", fullgraph=True)
    with pytest.raises(RuntimeError, match="have no second derivative"):
        torch.autograd.grad(fused(x, y), x, create_graph=True)


def test_a_saved_export_loads_in_a_new_process_after_import_bceloss(tmp_path):
    # the operators are registered by `import bceloss` when torch is imported before it
    exported = torch.export.export(bceloss.BCEWithLogitsLoss(), _batch(4, 64))
    torch.export.save(exported, tmp_path / "loss.pt2")
    x, y = _batch(4, 64)
    torch.save((x, y), tmp_path / "batch.pt")
    code = (
        "import sys, torch, bceloss\n"
        f"x, y = torch.load({str(tmp_path / 'batch.pt')!r})\n"
        f"program = torch.export.load({str(tmp_path / 'loss.pt2')!r})\n"
        "print(repr(program.module()(x, y).item()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert float(out.stdout) == bceloss.BCEWithLogitsLoss()(x, y).item()


def test_a_compiled_graph_of_another_bceloss_is_not_served_from_the_cache(monkeypatch, tmp_path):
    # the compiler's on-disk caches know a graph by its code, not by the Python of the
    # operators it calls: the build (a digest of the operators' module) is written into the
    # graph, so a graph another bceloss traced (whose operators may differ) misses the cache
    from torch._dynamo.utils import counters

    from bceloss import _torch

    folder = pathlib.Path(_torch.__file__).parent
    source = b"".join((folder / name).read_bytes() for name in ("_torch.py", "_torch_inductor.py"))
    assert hashlib.sha256(source).hexdigest()[:16] == _torch._BUILD
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x, y = torch.randn(8, 3, requires_grad=True), torch.rand(8, 3)

    def cached(build):
        monkeypatch.setattr(_torch, "_BUILD", build)
        torch._dynamo.reset()
        counters.clear()
        torch.compile(lambda a, b: BCEL(a, b, reduction="sum"), fullgraph=True)(x, y).backward()
        return counters["aot_autograd"]["autograd_cache_hit"] > 0

    assert not cached("one build")
    assert cached("one build")
    assert not cached("another build")
    torch._dynamo.reset()
    # the options it writes bind as the eager call's
    written = "(('reduction', 'sum'), ('bceloss', 'another build'))"
    assert _torch._options_of(written) == {"reduction": "sum"}


def test_bad_input_is_refused_when_the_compiled_graph_runs():
    torch._dynamo.reset()
    f = torch.compile(lambda p, y: bceloss.binary_cross_entropy(p, y), fullgraph=True)
    y = torch.zeros(3)
    assert float(f(torch.tensor([0.2, 0.5, 0.9]), y)) > 0
    # the form is kept: its C kernel checks the values of every call and falls back to the
    # Python kernel, whose ValueError reaches the graph as PyTorch's RuntimeError
    # (PyTorch's own compiled BCE returns NaN here)
    with pytest.raises(RuntimeError, match=r"ValueError: input must hold probabilities in"):
        f(torch.tensor([0.2, 1.5, 0.9]), y)
    with pytest.raises(RuntimeError, match=r"probabilities in \[0, 1\]; got values from -0.5"):
        f(torch.tensor([0.2, -0.5, 0.9]), y)
    # a shape is checked as the graph is traced (the compiler wraps the error) or run
    errors = (ValueError, torch._dynamo.exc.TorchRuntimeError)
    with pytest.raises(errors, match=r"target must have the shape of input \(3,\)"):
        f(torch.tensor([0.2, 0.5, 0.9]), torch.zeros(4))
    # a NumPy weight beside tensors cannot be an operand: dynamo runs the module's frame
    # eagerly and compiles the frames it calls, the express lane among them, which steps
    # aside: the library's error, not the compiler's
    # (dynamo warns of what it meets in the frames it compiles: ignored here)
    torch._dynamo.reset()
    loss = bceloss.BCEWithLogitsLoss(weight=np.ones(3, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TypeError, match="all arrays of one call must be of one kind"):
            torch.compile(loss)(torch.randn(4, 3), torch.rand(4, 3))


# --- autocast and devices ----------------------------------------------------------------


@pytest.mark.parametrize("compiled", [False, True])
def test_autocast_gives_float32_as_pytorch_does(compiled):
    torch._dynamo.reset()
    x = torch.randn(16, 4).to(torch.bfloat16)
    y = torch.rand(16, 4).to(torch.bfloat16)
    fn = bceloss.binary_cross_entropy_with_logits
    run = torch.compile(fn, fullgraph=True) if compiled else fn
    with torch.autocast("cpu", torch.bfloat16):
        got = run(x, y)
        want = F.binary_cross_entropy_with_logits(x, y)
    assert got.dtype == want.dtype == torch.float32
    exact = F.binary_cross_entropy_with_logits(x.double(), y.double())
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0)


# (PyTorch 2.14's fake tensors read .grad of the non-leaf inputs opcheck clones: its warning)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_the_operators_pass_pytorchs_own_checks():
    # torch.library.opcheck: schema, autograd registration, fake implementation against the
    # kernel, and AOT dispatch with dynamic shapes, for each operator as graphs call them
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(6, 4, generator=g, dtype=torch.float64)
    w = torch.rand(4, generator=g, dtype=torch.float64)
    fn = "bceloss._functional.binary_cross_entropy_with_logits"
    none = "(('reduction', 'none'),)"
    calls = [
        (torch.ops.bceloss.loss.default, (fn, x, y, None, None, None, "()")),
        (torch.ops.bceloss.loss.default, (fn, x, y, w, w, None, none)),
        (torch.ops.bceloss.loss_and_grad.default, (fn, x, y, None, w, None, "()")),
        (torch.ops.bceloss.loss_and_grad.default, (fn, x, y, w, None, None, none)),
        # the reduced loss's own, whose CPU kernel is C (opcheck calls each several times:
        # the C kernel runs the form after its first calls); they have no autograd formula
        # (graphs call them where nothing needs a gradient, or through routed_loss)
        (torch.ops.bceloss.reduced_loss.default, (fn, x.detach(), y, w, None, None, "()")),
        (torch.ops.bceloss.reduced_loss_and_grad.default, (fn, x.detach(), y, None, w, None, "()")),
        # what a compiled graph holds, decomposed into those above where it is traced
        (torch.ops.bceloss.routed_loss.default, (fn, x, y, None, w, None, "()")),
        (
            torch.ops.bceloss.routed_loss.default,
            (fn, x, y.clone().requires_grad_(), w, w, None, none),
        ),
    ]
    for op, args in calls:
        results = torch.library.opcheck(op, args)
        assert set(results.values()) == {"SUCCESS"}, (op, results)


def test_the_operators_kernels_compute_whatever_the_grad_mode_around_them():
    # a kernel called below autograd (as another dispatcher layer may call it) with a tensor
    # that requires grad, grad mode on: the eager loss's numbers, grad mode left as it was
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(6, 4, generator=g, dtype=torch.float64)
    fn = "bceloss._functional.binary_cross_entropy_with_logits"
    cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    want = bceloss.binary_cross_entropy_with_logits(x, y)
    (want_gx,) = torch.autograd.grad(want, x)
    for _ in range(3):  # validated, remembered, then guarded
        loss = torch.ops.bceloss.loss.default.redispatch(cpu, fn, x, y, None, None, None, "()")
        pair = torch.ops.bceloss.loss_and_grad.default.redispatch(
            cpu, fn, x, y, None, None, None, "()"
        )
        assert torch.is_grad_enabled()
        for value in (loss, pair[0]):
            torch.testing.assert_close(value, want.detach(), rtol=0, atol=0)
        torch.testing.assert_close(pair[1], want_gx, rtol=0, atol=0)


def test_meta_tensors_give_shapes_and_dtypes():
    x = torch.randn(3, 4, device="meta", dtype=torch.float64)
    out = bceloss.binary_cross_entropy_with_logits(x, x, reduction="none")
    assert (out.device.type, out.shape, out.dtype) == ("meta", (3, 4), torch.float64)
    mean = bceloss.binary_cross_entropy(x, x)
    assert (mean.device.type, mean.shape, mean.dtype) == ("meta", (), torch.float64)


def test_a_plain_loss_copies_as_itself_and_a_subclass_forward_is_called():
    # made before torch is imported, a loss is a plain class: copied or unpickled after the
    # import it stays one (not a module type whose __init__ never ran); a subclass's forward
    # is what calling it runs, plain or module
    code = (
        "import copy, pickle, numpy as np, bceloss\n"
        "class Doubled(bceloss.BCELoss):\n"
        "    def forward(self, input, target):\n"
        "        return 2 * super().forward(input, target)\n"
        "plain, doubled = bceloss.BCELoss(), Doubled()\n"
        "p, y = np.full(3, 0.5), np.ones(3)\n"
        "print(float(doubled(p, y)) == 2 * float(plain(p, y)))\n"
        "import torch\n"
        "for c in (copy.deepcopy(plain), pickle.loads(pickle.dumps(plain))):\n"
        "    print(type(c) is bceloss.BCELoss, float(c(p, y)) == float(plain(p, y)))\n"
        "t, u = torch.from_numpy(p), torch.from_numpy(y)\n"
        "print(float(Doubled()(t, u)) == 2 * float(plain(p, y)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"] * 6


def test_a_plain_loss_in_a_compiled_function():
    # made before torch is imported, a loss is a plain class, whose options a compiled
    # function reads as attributes: the eager value, and PyTorch's
    code = (
        "import bceloss\n"
        "loss = bceloss.BCEWithLogitsLoss(reduction='sum', label_smoothing=0.1)\n"
        "import torch\n"
        "x = torch.linspace(-3, 3, 24).reshape(8, 3)\n"
        "y = torch.linspace(0, 1, 24).reshape(8, 3)\n"
        "loss.pos_weight = torch.tensor([0.5, 1.0, 2.0])\n"
        "compiled = torch.compile(lambda a, b: loss(a, b), fullgraph=True)(x, y)\n"
        "print(type(loss).__mro__[1].__name__, repr(compiled.item()), repr(loss(x, y).item()))\n"
    )
    kind, compiled, eager = _python(code).split()
    assert kind == "_CoreLoss"  # (a plain class: no torch.nn.Module among its bases)
    assert compiled == eager
    x = torch.linspace(-3, 3, 24).reshape(8, 3)
    y = torch.linspace(0, 1, 24).reshape(8, 3) * 0.9 + 0.05  # label_smoothing=0.1
    want = F.binary_cross_entropy_with_logits(
        x, y, pos_weight=torch.tensor([0.5, 1.0, 2.0]), reduction="sum"
    )
    torch.testing.assert_close(torch.tensor(float(eager)), want, rtol=2e-6, atol=0)


def test_a_loss_made_inside_a_compiled_function():
    # nn.BCEWithLogitsLoss(...)(out, y) inside a model's forward: the loss made and called in
    # the compiled function (its module type made beforehand: a compiler cannot trace a class
    # statement), in this process and in a fresh one importing bceloss before torch
    class Summed(bceloss.BCEWithLogitsLoss):  # (a class defined after torch's adapter)
        def __init__(self, pos_weight):
            super().__init__(pos_weight=pos_weight, reduction="sum")

    def step(x, y, p):
        return Summed(p)(x, y)

    g = torch.Generator().manual_seed(22)
    x = torch.randn(16, 5, generator=g, requires_grad=True)
    y, p = torch.rand(16, 5, generator=g), torch.rand(5, generator=g) + 0.5
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(x, y, p)
    eager = step(x, y, p)
    assert torch.equal(compiled, eager)
    grads = [torch.autograd.grad(v, x)[0] for v in (compiled, eager)]
    assert torch.equal(*grads)
    want = F.binary_cross_entropy_with_logits(x, y, pos_weight=p, reduction="sum")
    torch.testing.assert_close(eager, want, rtol=2e-6, atol=0)
    code = (
        "import bceloss\n"
        "import torch\n"
        "x = torch.linspace(-3, 3, 24).reshape(8, 3)\n"
        "y = torch.linspace(0, 1, 24).reshape(8, 3)\n"
        "def step(a, b):\n"
        "    return bceloss.BCELoss(reduction='sum')(torch.sigmoid(a), b)\n"
        "print(repr(torch.compile(step, fullgraph=True)(x, y).item()), repr(step(x, y).item()))\n"
    )
    compiled, eager = _python(code).split()
    assert compiled == eager
    x = torch.linspace(-3, 3, 24).reshape(8, 3)
    y = torch.linspace(0, 1, 24).reshape(8, 3)
    want = F.binary_cross_entropy(torch.sigmoid(x), y, reduction="sum")
    torch.testing.assert_close(torch.tensor(float(eager)), want, rtol=2e-6, atol=0)


def test_compiled_calls_bind_their_arguments_as_eager_calls_do():
    torch._dynamo.reset()
    x, y = torch.randn(4), torch.rand(4)
    F_ = bceloss.binary_cross_entropy_with_logits
    # Python's own errors, word for word: too many positional arguments (label_smoothing is
    # keyword-only), an argument given twice (never the keyword's value silently)
    for call in (
        lambda x, y: F_(x, y, None, "mean", None, 0.1),
        lambda x, y: F_(x, y, input=y),
        lambda x, y: F_(x, y, None, "sum", weight=y),
    ):
        with pytest.raises(TypeError) as eager:
            call(x, y)
        torch._dynamo.reset()
        with pytest.raises(Exception, match=re.escape(str(eager.value))):
            torch.compile(call, fullgraph=True)(x, y)
    weight = np.ones(4, np.float32)
    with pytest.raises(Exception, match=r"weight must be a torch\.Tensor in a compiled graph"):
        torch.compile(lambda x, y: F_(x, y, weight), fullgraph=True)(x, y)
    # the options name the build that wrote them ('bceloss'): no argument of the loss's
    for fullgraph in (True, False):
        with pytest.raises(Exception, match="unexpected keyword argument 'bceloss'"):
            torch.compile(lambda x, y: F_(x, y, bceloss="x"), fullgraph=fullgraph)(x, y)
    smooth = torch.compile(lambda x, y: F_(x, y, label_smoothing=0.25), fullgraph=True)
    assert torch.equal(smooth(x, y), F_(x, y, label_smoothing=0.25))


def test_autocast_widens_every_half_operand_eager_and_compiled_alike():
    torch._dynamo.reset()
    x = torch.randn(8, dtype=torch.float64)
    y = torch.rand(8).to(torch.bfloat16)
    fn = bceloss.binary_cross_entropy_with_logits
    with torch.autocast("cpu", torch.bfloat16):
        eager = fn(x, y)
        compiled = torch.compile(fn, fullgraph=True)(x, y)
    assert eager.dtype == compiled.dtype == torch.float64
    assert torch.equal(eager, compiled)
    assert torch.equal(eager, fn(x, y.float()))


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_a_flavour_in_a_compiled_function_runs_eagerly_between_graphs():
    # the flavours are not operators: torch.compile runs them outside its graph (it crashed
    # on fake tensors), with the eager value and gradient; fullgraph=True refuses the break.
    # (Resuming its graph after the break, dynamo reads .grad of the loss, a non-leaf tensor,
    # and PyTorch warns of it, as for any function that torch.compiler.disable keeps out.)
    from bceloss.compat import paddle as pd

    def f(a, b):
        return 2 * pd.binary_cross_entropy_with_logits(a, b, pos_weight=torch.ones(3))

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=gen, requires_grad=True)
    y = torch.rand(8, 3, generator=gen)
    (want,) = torch.autograd.grad(f(x, y), x)
    got = torch.compile(f)(x, y)
    assert torch.equal(got, f(x, y))
    assert torch.equal(torch.autograd.grad(got, x)[0], want)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"flavours \(bceloss\.compat\)"):
        torch.compile(f, fullgraph=True)(x, y)


def test_a_compiled_loss_whose_input_alone_needs_a_gradient_computes_it_in_its_forward():
    # where only the input needs a gradient of a reduced loss, the graph holds one operator
    # computing loss and gradient (as the eager forward does) and the backward multiplies
    # in graph ops; otherwise the loss operator and its backward operator. Eager's bits both
    # (reduction='none' too, whose elementwise gradient eager's forward computes on the CPU)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 10, generator=gen, requires_grad=True)
    y = torch.rand(64, 10, generator=gen)
    m = torch.rand(64, 10, generator=gen)

    def summed(a, b):
        return 2.5 * bceloss.binary_cross_entropy_with_logits(a, b, reduction="sum")

    def elementwise(a, b):
        return bceloss.binary_cross_entropy_with_logits(a, b, reduction="none")

    for fn, target, op in (
        # (the reduced loss's own operators: their CPU calls run in C)
        (summed, y, "bceloss.reduced_loss_and_grad"),
        (summed, y.clone().requires_grad_(), "bceloss.loss"),
        (elementwise, y, "bceloss.loss_and_grad"),
        (elementwise, y.clone().requires_grad_(), "bceloss.loss"),
    ):
        _, forward = torch_graphs.graphs(fn, x, target)
        assert f"torch.ops.{op}.default(" in forward
        wrt = (x, target) if target.requires_grad else (x,)
        compiled = torch.compile(fn, fullgraph=True)(x, target)
        eager = fn(x, target)
        assert torch.equal(compiled, eager)
        seed = m if fn is elementwise else None
        ours = torch.autograd.grad(compiled, wrt, seed)
        theirs = torch.autograd.grad(eager, wrt, seed)
        for g, h in zip(ours, theirs, strict=True):
            assert torch.equal(g, h)


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_compiled_gradients_of_any_output_gradient_equal_eagers(dtype, autocast):
    # the compiled graph fuses the input's gradient into the forward exactly where eager's
    # forward does (after autocast widens halves): a loss scaled by 1.5 (two rounding steps
    # otherwise) has eager's gradient to the last bit
    g = torch.Generator().manual_seed(12)
    x = (torch.randn(32, 6, generator=g) * 3).to(dtype)
    y = (torch.rand(32, 6, generator=g) > 0.5).to(dtype)
    torch._dynamo.reset()
    loss = bceloss.BCEWithLogitsLoss()
    compiled = torch.compile(loss, fullgraph=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        results = []
        for fn in (loss, compiled, loss, compiled):
            xr = x.clone().requires_grad_()
            value = fn(xr, y)
            (grad,) = torch.autograd.grad(value, xr, torch.tensor(1.5, dtype=value.dtype))
            results.append((value.detach(), grad))
    for value, grad in results[1:]:
        assert value.dtype == results[0][0].dtype
        assert torch.equal(value, results[0][0])
        assert grad.dtype == x.dtype
        assert torch.equal(grad, results[0][1])
