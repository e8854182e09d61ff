"""The C kernels of bceloss::reduced_loss_and_grad and bceloss::reduced_loss on CPU tensors
(`_torch_kernel`), held to the Python kernels of bceloss::loss_and_grad and bceloss::loss
bit for bit: a form's call falls back to the Python kernel, which hands the form's
constants to the C kernel once the library remembers the form; its next calls run in C."""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch_graphs
from torch_bits import same_bits

import bceloss
from bceloss import _memo

torch = pytest.importorskip("torch", reason="PyTorch is optional")
from bceloss import _torch, _torch_kernel  # (_torch defines the operators)
from bceloss._kernels import _native

FN = "bceloss._functional.binary_cross_entropy_with_logits"
OPS = torch.ops.bceloss


def _options(**options) -> str:
    return repr(tuple(options.items()))


def _both(x, y, w=None, p=None, where=None, gradient=True, **options):
    """(the C operator's results of three calls, the Python operator's), with grad mode
    off: the library remembers a form at its second call, the C kernel the form at the
    next call it falls back for, so the last call runs in C (where it can). Each result a
    tuple: (loss, gradient), or (loss,) without `gradient`."""
    written = _options(**options)
    c, python = (
        (OPS.reduced_loss_and_grad, OPS.loss_and_grad) if gradient else (OPS.reduced_loss, OPS.loss)
    )
    with torch.no_grad():
        expected = python(FN, x, y, w, p, where, written)
        calls = [c(FN, x, y, w, p, where, written) for _ in range(3)]
    if not gradient:
        return [(r,) for r in calls], (expected,)
    return calls, expected


@pytest.fixture(autouse=True)
def _fresh():
    _memo.forget()
    yield
    _memo.forget()


def test_the_kernel_is_installed_on_this_pytorch():
    # CI's PyTorch has the stable C ABI: the C kernel must be what compiled graphs call
    assert _torch_kernel._CODES, "the C kernel was not installed"


def _cases():
    g = torch.Generator().manual_seed(0)
    rows, labels = 64, 10
    x = torch.randn(rows, labels, generator=g) * 4
    y = (torch.rand(rows, labels, generator=g) > 0.7).float()
    big = torch.randn(3 * 8192 + 5, generator=g) * 3  # four blocks, the last short
    ybig = torch.rand(big.shape, generator=g)
    pw = torch.rand(labels, generator=g) * 3
    w = torch.rand(rows, labels, generator=g)
    yield "plain", (x, y), {}, True
    yield "sum", (x, y), {"reduction": "sum"}, True
    yield "float64", (x.double(), y.double()), {}, True
    yield "float32 input, float64 target", (x, y.double()), {}, True
    yield "bool target", (x, y.bool()), {}, True
    yield "int64 target", (x, y.long()), {}, True
    yield "pos_weight", (x, y, None, pw), {}, True
    yield "pos_weight (1, C)", (x, y, None, pw[None]), {}, True
    yield "weight", (x, y, w), {}, True
    yield "weight and pos_weight float64", (x, y, w.double(), pw.double()), {}, True
    yield "label smoothing", (x, y), {"label_smoothing": 0.1}, True
    yield "blocks", (big, ybig), {}, True
    yield "blocks, sum", (big, ybig), {"reduction": "sum"}, True
    yield "3-d", (x.reshape(8, 8, 10), y.reshape(8, 8, 10)), {}, True
    yield "0-d", (x[0, 0], y[0, 0]), {}, True
    # the kernel cannot run these in place: every call falls back, with the same results
    yield "transposed input", (x.t(), y.t()), {}, False
    yield "weight broadcast along rows", (x, y, w[:, :1].clone()), {}, False
    yield "weight broadcast along rows, strided", (x, y, w[:, :1]), {}, False
    yield "mask", (x, y, None, None, y > 0), {}, False
    yield "none", (x, y), {"reduction": "none"}, False
    yield "empty", (x[:0], y[:0]), {"reduction": "sum"}, False
    yield "float16 pos_weight", (x, y, None, pw.half()), {}, False
    yield "infinite logits", (x.masked_fill(y == 0, math.inf), y), {}, True


@pytest.mark.parametrize("gradient", [True, False], ids=["loss_and_grad", "loss"])
@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_the_c_kernel_gives_the_python_kernels_bits(case, gradient):
    _, tensors, options, kept = case
    calls, python = _both(*tensors, gradient=gradient, **options)
    for got in calls:
        assert len(got) == len(python)
        for a, b in zip(got, python, strict=True):
            assert same_bits(a, b), (a, b)
    # the forms it runs are kept after their first call; the others are not
    assert _native.torch_kept() == int(kept and options.get("reduction") != "none")


def test_block_totals_are_rounded_once_as_math_fsum_rounds_them():
    # blocks weighed 1e16, 1 and -1e16 in turn: the big blocks' sums nearly cancel, and
    # a plain float64 sum of the blocks' sums loses the small ones' last bits
    g = torch.Generator().manual_seed(3)
    blocks = 45
    n = blocks * 8192
    x = torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.rand(n, generator=g, dtype=torch.float64)
    scale = torch.tensor([1e16, 1.0, -1e16] * (blocks // 3), dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64) * scale.repeat_interleave(8192)
    for reduction in ("sum", "mean"):
        calls, python = _both(x, y, w, reduction=reduction)
        assert same_bits(calls[-1][0], python[0])
        assert same_bits(calls[-1][1], python[1])
    assert _native.torch_kept() == 2


def test_the_thread_count_changes_nothing_but_the_speed():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20 * 8192, generator=g)
    y = torch.rand(x.shape, generator=g)
    results = []
    count = bceloss._kernels.get_num_threads()
    try:
        for threads in (1, 2, 3):
            bceloss._kernels.set_num_threads(threads)
            results.append(_both(x, y)[0][-1])
    finally:
        bceloss._kernels.set_num_threads(count)
    for got in results[1:]:
        assert same_bits(got[0], results[0][0])
        assert same_bits(got[1], results[0][1])


# many small forms; a few large ones (several blocks: each thread's calls on a team of
# PyTorch's OpenMP runtime of its own)
@pytest.mark.parametrize(
    ("shapes", "repeats"),
    [([(r, 7) for r in range(3, 40)], 20), ([(8, 8192 + r) for r in range(4)], 10)],
    ids=["small", "large"],
)
def test_threads_calling_forms_at_once_each_get_their_own_results(shapes, repeats):
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(s, generator=g), torch.rand(s, generator=g)) for s in shapes]
    expected = [_both(x, y)[1] for x, y in data]
    _memo.forget()
    failures = []

    def work(seed):
        order = np.random.default_rng(seed).permutation(len(data))
        for _ in range(repeats):
            for i in order:
                got = OPS.reduced_loss_and_grad(FN, *data[i], None, None, None, "()")
                if not (same_bits(got[0], expected[i][0]) and same_bits(got[1], expected[i][1])):
                    failures.append(i)

    with torch.no_grad():
        _in_threads(work, 4)
    assert not failures


def test_the_librarys_error_comes_through_the_c_kernel():
    with pytest.raises(RuntimeError, match=r"target must have the shape of input \(3, 4\)") as e:
        OPS.reduced_loss_and_grad(FN, torch.randn(3, 4), torch.rand(3, 5), None, None, None, "()")
    assert "At:" not in str(e.value)  # the message, not the Python kernel's traceback


def test_forget_clears_the_c_kernels_forms():
    _both(torch.randn(5, 3), torch.rand(5, 3))
    assert _native.torch_kept() == 1
    _memo.forget()
    assert _native.torch_kept() == 0


def test_a_pytorch_without_the_abi_keeps_the_python_kernel(monkeypatch):
    monkeypatch.setattr(_torch_kernel, "_libtorch", lambda: None)
    assert _torch_kernel.install() is False


def test_a_compiled_training_step_calls_the_c_kernel_and_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 10, generator=g, requires_grad=True)
    y = (torch.rand(64, 10, generator=g) > 0.5).float()
    pw = torch.rand(10, generator=g) * 2
    loss = bceloss.BCEWithLogitsLoss(pos_weight=pw)
    compiled = torch.compile(loss, fullgraph=True)
    eager_value = loss(x, y)
    (eager_grad,) = torch.autograd.grad(eager_value, x)
    for _ in range(3):
        value = compiled(x, y)
        (grad,) = torch.autograd.grad(value, x)
        assert same_bits(value.detach(), eager_value.detach())
        assert same_bits(grad, eager_grad)
    assert _native.torch_kept() == 1


@pytest.mark.parametrize("grad", [True, False])
def test_a_compiled_call_of_a_kept_form_runs_no_python_of_bcelosss_or_torch_librarys(grad):
    # inductor's graph hands its buffers to the C kernel through one C function of bceloss's
    # (`_native.torch_lowered_run`, the lowered operator): neither a Python function of
    # bceloss's, nor a Python kernel, nor torch.library's Python autograd wrapper (which an
    # operator with an autograd formula registered in Python pays at every run) is called
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 10, generator=g, requires_grad=grad)
    y = (torch.rand(64, 10, generator=g) > 0.5).float()
    loss = bceloss.BCEWithLogitsLoss()
    compiled = torch.compile(loss, fullgraph=True)

    def call():
        value = compiled(x, y)
        return torch.autograd.grad(value, x)[0] if grad else value

    for _ in range(3):
        expected = call()
    called, builtins = set(), []

    def record(frame, event, arg):
        if event == "call":
            called.add(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")
        elif event == "c_call":
            builtins.append(arg)

    sys.setprofile(record)
    try:
        result = call()
    finally:
        sys.setprofile(None)
    assert same_bits(result, expected)
    assert _native.torch_kept() == 1
    assert any(f is _native.torch_lowered_run for f in builtins)
    # (the module's forward is the frame the compiler replaced: its compiled code runs there)
    forward = type(loss).forward.__code__
    called.discard(f"{forward.co_filename}:{forward.co_name}")
    # (bceloss's frames by the package's folder: a checkout's path may name bceloss too)
    package = os.path.dirname(bceloss.__file__) + os.sep
    python = [
        f for f in called if f.startswith(package) or "_library" in f or f.endswith("redispatch")
    ]
    assert not python, python


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_the_express_lane_predicts_the_forms_the_c_kernel_keeps(case):
    # `_torch_kernel.keeps` (with contiguous tensors) is torch_kernel.cpp's layout_of in
    # Python: the eager lane calls the C operators only for forms the C kernel runs itself
    _, tensors, options, kept = case
    x, y, w, p, where = (*tensors, None, None, None)[:5]
    if where is not None or options.get("reduction") == "none":
        return  # the lane does not take the C operators there (`_torch._c_call`)
    contiguous = all(a is None or a.is_contiguous() for a in (x, y, w, p))
    assert (_torch_kernel.keeps(x, y, w, p) and contiguous) == kept


def _eager_route(x, y, w, p, options):
    """(loss, gradient wrt x for an output gradient of 1.5) of the eager call."""
    x = x.detach().requires_grad_()
    loss = bceloss.binary_cross_entropy_with_logits(x, y, w, pos_weight=p, **options)
    (grad,) = torch.autograd.grad(loss, x, torch.tensor(1.5, dtype=loss.dtype))
    return loss.detach(), grad


def _usual_route(x, y, w, p, options):
    """The same, as the library computes a call it has not seen (validated, then run)."""
    from bceloss import _call

    x = x.detach().requires_grad_()
    bind = bceloss.binary_cross_entropy_with_logits._bceloss_bind
    loss = _call.run(bind(x, y, w, pos_weight=p, **options))
    (grad,) = torch.autograd.grad(loss, x, torch.tensor(1.5, dtype=loss.dtype))
    return loss.detach(), grad


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_eager_calls_of_a_form_the_c_kernel_keeps_run_there_with_the_usual_bits(case):
    # the express lane's node computes a training step's loss and gradient with the C
    # operator (called straight at its CPU kernel) once the form is remembered: the bits
    # of the usual route, with new values at every call, training and under no_grad
    _, tensors, options, kept = case
    x, y, w, p, where = (*tensors, None, None, None)[:5]
    if where is not None or options.get("reduction") == "none":
        return
    g = torch.Generator().manual_seed(8)
    for _ in range(6):
        x = x + torch.randn(x.shape, generator=g, dtype=x.dtype) if x.is_contiguous() else x
        got, usual = _eager_route(x, y, w, p, options), _usual_route(x, y, w, p, options)
        for a, b in zip(got, usual, strict=True):
            assert same_bits(a, b), (a, b)
        with torch.no_grad():
            value = bceloss.binary_cross_entropy_with_logits(x, y, w, pos_weight=p, **options)
        assert same_bits(value, usual[0])
    # the training step's form and the no_grad one's (the lane's forms include grad mode)
    assert _native.torch_kept() == (2 if kept else 0)


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_an_eager_call_of_a_kept_form_runs_the_c_kernel(grad_mode):
    # after the first calls of a form, the lane's node no longer runs the NumPy kernel, nor
    # the C operator through the dispatcher: the C kernel's loops of the form the operator
    # ran run on the tensors straight away (`_native.torch_run_tensors`)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(64, 10, generator=g, requires_grad=grad_mode)
    y = (torch.rand(64, 10, generator=g) > 0.5).float()
    loss = bceloss.BCEWithLogitsLoss()
    with torch.set_grad_enabled(grad_mode):
        for _ in range(4):
            value = loss(x, y)
        from bceloss._kernels import launch

        ran, builtins = [], []

        def record(frame, event, arg):
            if event == "c_call":
                builtins.append(arg)

        original = launch.Prepared.loss_and_grad
        try:
            launch.Prepared.loss_and_grad = lambda *a: ran.append(1) or original(*a)
            sys.setprofile(record)
            got = loss(x, y)
        finally:
            sys.setprofile(None)
            launch.Prepared.loss_and_grad = original
    assert same_bits(got, value)
    assert not ran
    assert any(f is _native.torch_run_tensors for f in builtins)
    assert not [f for f in builtins if "redispatch" in getattr(f, "__name__", "")]
    assert _native.torch_kept() == 1


def test_a_loss_computed_inside_a_calls_fallback_leaves_each_form_its_own(monkeypatch):
    # Python code run while a call of the C operator falls back to the Python kernel (a
    # garbage collector's callback, a signal handler: here the kernel's own Python) computing
    # a loss of another form: the outer call keeps its own form and the handle of it, the
    # inner one its own; each later call gives its own form's bits (before, the outer form's
    # calls ran the inner form's loops on its tensors: another loss, a write past its
    # gradient)
    g = torch.Generator().manual_seed(21)
    xa, ya = torch.randn(4, 3, generator=g), (torch.rand(4, 3, generator=g) > 0.5).float()
    xb, yb = torch.randn(256, 100, generator=g), (torch.rand(256, 100, generator=g) > 0.5).float()
    fn = bceloss.binary_cross_entropy_with_logits
    for _ in range(2):  # (validated, remembered: the next call falls back)
        _eager_route(xa, ya, None, None, {})
    inner_done = []
    on_kernel = _torch._Recipe._on_kernel

    def with_inner_loss(recipe, arrays, gradient):
        if not inner_done:
            inner_done.append(True)
            with torch.no_grad():
                for _ in range(3):
                    fn(xb, yb)
        return on_kernel(recipe, arrays, gradient)

    monkeypatch.setattr(_torch._Recipe, "_on_kernel", with_inner_loss)
    _eager_route(xa, ya, None, None, {})
    monkeypatch.undo()
    assert inner_done
    for _ in range(3):
        for a, b in zip(
            _eager_route(xa, ya, None, None, {}), _usual_route(xa, ya, None, None, {}), strict=True
        ):
            assert same_bits(a, b)
        with torch.no_grad():
            inner = fn(xb, yb)
        assert same_bits(inner, _usual_route(xb, yb, None, None, {})[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "loss", [bceloss.binary_cross_entropy, bceloss.BCELoss(reduction="sum")], ids=["fn", "module"]
)
def test_eager_bce_on_probabilities_checks_every_call_and_keeps_the_usual_bits(loss, dtype):
    # a remembered form of BCE on probabilities (the C kernel's where it reads the tensors:
    # float32 and float64) checks its input's values at every call, whichever lane takes
    # it: a value outside [0, 1] is the loss's own ValueError, NaN passes
    from bceloss import _call

    g = torch.Generator().manual_seed(10)
    core = getattr(loss, "function", loss)
    options = loss._options() if hasattr(loss, "_options") else {}
    for step in range(7):
        p = torch.rand(64, 10, generator=g, dtype=dtype)
        y = torch.rand(64, 10, generator=g, dtype=dtype)
        if step == 5:
            p[2, 3] = 1.25
        if step == 6:
            p[0, 0] = math.nan
        for grad_mode in (True, False):
            x = p.clone().requires_grad_(grad_mode)
            with torch.set_grad_enabled(grad_mode):
                if step == 5:
                    with pytest.raises(ValueError, match=r"must hold probabilities in \[0, 1\]"):
                        loss(x, y)
                    continue
                got = loss(x, y)
                usual = _call.run(core._bceloss_bind(x, y, **options))
            assert same_bits(got.detach(), usual.detach())
            if grad_mode:
                (ours,) = torch.autograd.grad(got, x)
                (theirs,) = torch.autograd.grad(usual, x)
                assert same_bits(ours, theirs)
    # training and no_grad forms run in C where the C kernel reads the tensors
    assert _native.torch_kept() == (0 if dtype is torch.bfloat16 else 2)


@pytest.mark.parametrize("bad_call", [1, 2, 4])
@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_a_probability_the_c_kernel_refuses_is_the_losss_own_error(bad_call, grad_mode, layout):
    # the express lane leaves the check of a call it runs in C to the C kernel (a form kept:
    # its loops' check; a form not yet kept: the fallback's), other calls check in Python:
    # either way the loss's ValueError, with no other exception as its context, and the
    # next call of the form computes as before
    from bceloss import _call

    torch._dynamo.reset()
    _memo.forget()
    g = torch.Generator().manual_seed(16 + bad_call)
    y = torch.rand(10, 64, generator=g).t() if layout == "transposed" else torch.rand(64, 10)
    for call in range(6):
        p = torch.rand(10, 64, generator=g).t() if layout == "transposed" else torch.rand(64, 10)
        if call == bad_call:
            p[5, 5] = 1.0 + 2**-20
        x = p.clone(memory_format=torch.preserve_format).requires_grad_(grad_mode)
        with torch.set_grad_enabled(grad_mode):
            if call == bad_call:
                with pytest.raises(ValueError, match=r"must hold probabilities in \[0, 1\]") as e:
                    bceloss.binary_cross_entropy(x, y)
                assert e.value.__context__ is None
                continue
            got = bceloss.binary_cross_entropy(x, y)
            usual = _call.run(bceloss.binary_cross_entropy._bceloss_bind(x, y))
        assert same_bits(got.detach(), usual.detach())


def test_threads_training_at_once_each_get_their_own_results():
    # eager training steps of many forms in four threads: the lane's C operator calls, the
    # C kernel's fallbacks to the lane's recipe (a thread's own) and the forms kept at once
    g = torch.Generator().manual_seed(11)
    data = [(torch.randn(r, 6, generator=g), torch.rand(r, 6, generator=g)) for r in range(3, 30)]
    losses = (bceloss.binary_cross_entropy_with_logits, bceloss.binary_cross_entropy)
    expected = {}
    for i, (x, y) in enumerate(data):
        for k, loss in enumerate(losses):
            p = x.sigmoid() if k else x
            expected[i, k] = _usual_route_of(loss, p, y)
    _memo.forget()
    failures = []

    def work(seed):
        order = np.random.default_rng(seed).permutation(len(data))
        for _ in range(8):
            for i in order:
                for k, loss in enumerate(losses):
                    x = (data[i][0].sigmoid() if k else data[i][0]).requires_grad_()
                    value = loss(x, data[i][1])
                    (grad,) = torch.autograd.grad(value, x)
                    want = expected[i, k]
                    if not (same_bits(value, want[0]) and same_bits(grad, want[1])):
                        failures.append((i, k))

    _in_threads(work, 4)
    assert not failures
    assert _native.torch_kept() == 2 * len(data)


# A process's threads (Linux), before and after large calls of a form the C kernel keeps: run
# on PyTorch's OpenMP team, they start no thread of bceloss's; a NumPy call does.
ON_PYTORCHS_TEAM = """
import os, numpy as np, torch, bceloss
def threads():
    return len(os.listdir("/proc/self/task"))
torch.set_num_threads(2)
torch.ones(1 << 22).add_(1)  # a parallel operation of PyTorch's: its team started
x = torch.randn(64, 8192, generator=torch.Generator().manual_seed(0)).requires_grad_()
y = (torch.rand(64, 8192, generator=torch.Generator().manual_seed(1)) > 0.5).float()
loss = bceloss.BCEWithLogitsLoss(pos_weight=torch.full((8192,), 1.5))
bceloss.set_num_threads(1)  # the first calls (the Python kernel's) on the calling thread
for _ in range(3):
    loss(x, y).backward()
    with torch.no_grad():
        loss(x, y)
bceloss.set_num_threads(2)
before = threads()
x.grad = None
value = loss(x, y)
value.backward()
with torch.no_grad():
    plain = loss(x, y)
after = threads()
numpy = bceloss.binary_cross_entropy_with_logits(
    x.detach().numpy(), y.numpy(), pos_weight=np.full(8192, 1.5, np.float32)
)
assert threads() == after + 1, (after, threads())  # the NumPy call's helper
assert after == before, (before, after)
assert value.item() == plain.item() == float(numpy), (value.item(), plain.item(), numpy)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads on Linux")
def test_large_calls_from_pytorch_run_on_its_own_openmp_team():
    # PyTorch's intra-op threads spin a while after each of its parallel operations: helpers
    # of bceloss's beside them would share the cores with spinning threads
    assert torch.backends.openmp.is_available()  # (CI's PyTorch)
    _run_alone(ON_PYTORCHS_TEAM)


# A child forked from a process whose PyTorch ran parallel operations: the loss's first calls
# in the parent (its C kernel installed there and its large calls run on PyTorch's team), or
# in the child alone (bceloss imported before PyTorch, as sorted imports have it; the C kernel
# installed in the child). Each child's large calls run on threads of its own, with the bits
# its parent computes on NumPy arrays.
FORKED = """
import multiprocessing, os, sys, warnings
import bceloss
import torch
warnings.simplefilter("ignore", DeprecationWarning)  # (fork of a threaded process)
torch.set_num_threads(2)
bceloss.set_num_threads(2)
torch.ones(1 << 22).add_(1)  # a parallel operation of PyTorch's: its team started
x = torch.randn(64, 8192, generator=torch.Generator().manual_seed(0))
y = (torch.rand(64, 8192, generator=torch.Generator().manual_seed(1)) > 0.5).float()
expected = float(bceloss.binary_cross_entropy_with_logits(x.numpy(), y.numpy()))
if {in_parent}:
    with torch.no_grad():
        assert [bceloss.BCEWithLogitsLoss()(x, y).item() for _ in range(4)] == [expected] * 4
assert ("bceloss._torch" in sys.modules) == {in_parent}  # (where the C kernel is installed)
def threads():  # the process's threads (Linux)
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
def child(queue):
    loss = bceloss.BCEWithLogitsLoss()
    with torch.no_grad():
        # four blocks or fewer: the calling thread alone, without PyTorch's team
        before = threads()
        few = [loss(x[:3], y[:3]).item() for _ in range(4)]
        alone = threads() == before
        queue.put(([loss(x, y).item() for _ in range(4)], few, alone))
queue = multiprocessing.get_context("fork").SimpleQueue()
process = multiprocessing.get_context("fork").Process(target=child, args=(queue,), daemon=True)
process.start()
process.join(60)
assert process.exitcode == 0, process.exitcode  # (None: a child hung on the parent's team)
got, few, alone = queue.get()
assert got == [expected] * 4, (got, expected)
assert alone
assert few == [float(bceloss.binary_cross_entropy_with_logits(x[:3].numpy(), y[:3].numpy()))] * 4
"""


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform"
)
@pytest.mark.parametrize("in_parent", [True, False], ids=["kernel in parent", "kernel in child"])
def test_a_process_forked_after_pytorchs_parallel_work_computes_on_threads_of_its_own(in_parent):
    # (a DataLoader's workers.) An OpenMP runtime's team does not survive a fork (PyTorch's
    # own parallel operations hang in such a child): the child runs its large calls on
    # bceloss's own helpers
    _run_alone(FORKED.format(in_parent=in_parent))


# PyTorch's thread count bounds the team (a DataLoader worker sets it to 1, as may a user):
# with one thread, large calls start no thread, neither bceloss's nor the OpenMP runtime's.
ONE_PYTORCH_THREAD = """
import os, torch, bceloss
def threads():
    return len(os.listdir("/proc/self/task"))
torch.set_num_threads(1)
bceloss.set_num_threads(2)
x = torch.randn(64, 8192, generator=torch.Generator().manual_seed(0))
y = (torch.rand(64, 8192, generator=torch.Generator().manual_seed(1)) > 0.5).float()
loss = bceloss.BCEWithLogitsLoss()
bceloss.set_num_threads(1)  # the first calls (the Python kernel's) on the calling thread
with torch.no_grad():
    for _ in range(3):
        loss(x, y)
bceloss.set_num_threads(2)
before = threads()
with torch.no_grad():
    values = [loss(x, y).item() for _ in range(3)]
assert threads() == before, (before, threads())
assert values == [float(bceloss.binary_cross_entropy_with_logits(x.numpy(), y.numpy()))] * 3
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads on Linux")
def test_large_calls_from_pytorch_use_no_more_threads_than_pytorch():
    _run_alone(ONE_PYTORCH_THREAD)


def _run_alone(script):
    """`script` run in a Python process of its own (bceloss's thread count its default),
    which must succeed."""
    env = {k: v for k, v in os.environ.items() if k != "BCELOSS_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr


def _in_threads(work, count):
    """work(seed) in `count` threads at once (seeds 0, 1, ...), until all end."""
    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(count)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def _usual_route_of(loss, x, y):
    from bceloss import _call

    x = x.detach().requires_grad_()
    value = _call.run(loss._bceloss_bind(x, y))
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def test_the_c_kernel_checks_probabilities_of_a_kept_form_at_every_call():
    # a form of BCE on probabilities the express lane kept in the C kernel, called on the
    # operator directly with a value outside [0, 1]: the library's error, not a number
    g = torch.Generator().manual_seed(13)
    fn = "bceloss._functional.binary_cross_entropy"
    p, y = torch.rand(64, 10, generator=g), torch.rand(64, 10, generator=g)
    for _ in range(5):
        bceloss.binary_cross_entropy(p.clone().requires_grad_(), y).backward()
    assert _native.torch_kept() == 1
    options = _torch._c_call(
        _memo.validated(bceloss.binary_cross_entropy._bceloss_bind, (p, y), {}),
        bceloss.binary_cross_entropy._bceloss_bind,
    )[1]
    bad = p.clone()
    bad[3, 3] = 1.5
    with torch.no_grad():
        kept = OPS.reduced_loss_and_grad(fn, p, y, None, None, None, options)
        usual = OPS.loss_and_grad(fn, p, y, None, None, None, options)
        assert same_bits(kept[0], usual[0])
        assert same_bits(kept[1], usual[1])
        with pytest.raises(RuntimeError, match=r"input must hold probabilities in \[0, 1\]"):
            OPS.reduced_loss_and_grad(fn, bad, y, None, None, None, options)


@pytest.mark.parametrize(
    "case",
    [
        ("float32", torch.float32, {}, "reduced_loss_and_grad"),
        ("probabilities", torch.float32, {"probabilities": True}, "reduced_loss_and_grad"),
        ("bfloat16", torch.bfloat16, {}, "loss"),
        ("mask", torch.float32, {"where": "mask"}, "loss_and_grad"),
        ("weighted_mean", torch.float32, {"weight": "w", "reduction": "weighted_mean"}, "loss"),
    ],
    ids=lambda c: c[0],
)
def test_a_compiled_call_takes_the_c_operators_only_for_forms_the_c_kernel_runs(case):
    # a form the C kernel cannot run would go through its fallback at every call (whose
    # strings PyTorch's C ABI leaks): the graph calls the Python operators instead
    _, dtype, options, op = case
    g = torch.Generator().manual_seed(14)
    draw = torch.rand if options.get("probabilities") else torch.randn
    x = draw(16, 5, generator=g).to(dtype).requires_grad_()
    y = torch.rand(16, 5, generator=g).to(dtype)
    kwargs = {}
    if options.get("where"):
        kwargs["where"] = torch.rand(16, 5, generator=g) > 0.3
    if options.get("weight"):
        kwargs["weight"] = torch.rand(5, generator=g).to(dtype).requires_grad_()
    if "reduction" in options:
        kwargs["reduction"] = options["reduction"]

    if options.get("probabilities"):
        function = bceloss.binary_cross_entropy
    else:
        function = bceloss.binary_cross_entropy_with_logits

    def loss(a, b):
        return function(a, b, **kwargs)

    traced, forward = torch_graphs.graphs(loss, x, y)
    # one operator traced, whose route is taken where AOTAutograd traces it
    assert traced.count("torch.ops.bceloss.") == 1
    assert "torch.ops.bceloss.routed_loss.default(" in traced
    assert f"torch.ops.bceloss.{op}.default(" in forward
    torch._dynamo.reset()
    compiled_loss = torch.compile(loss, fullgraph=True)
    for _ in range(2):  # the first call keeps the form, the second runs it in C
        got, want = compiled_loss(x, y), loss(x, y)
        assert same_bits(got, want)
        assert same_bits(*(torch.autograd.grad(v * 0.75, x)[0] for v in (got, want)))


def test_the_unit_range_check_at_a_tensors_data_pointer_agrees_with_numpy():
    # the check a remembered form of BCE on probabilities makes at every eager call, read
    # in C at the tensor's data pointer: NaN passes, anything below 0 or above 1 does not
    g = torch.Generator().manual_seed(15)
    for dtype in (torch.float32, torch.float64):
        for n in (0, 1, 7, 4096, 4097, 10_000):
            p = torch.rand(n, generator=g, dtype=dtype)
            cases = [p]
            for bad in (-1e-30, 1.0 + 1e-6, float("inf"), float("nan")):
                if n:
                    q = p.clone()
                    q[torch.randint(n, (1,), generator=g)] = bad
                    cases.append(q)
            for q in cases:
                want = not bool(((q < 0) | (q > 1)).any())
                assert _torch_kernel.in_unit_range(q) is want
                assert _torch._in_unit_range(q) is want
                # a view that starts inside its storage: its own elements only
                if n > 2:
                    view = q[1:]
                    assert _torch._in_unit_range(view) is not bool(((view < 0) | (view > 1)).any())


def _negative_view(values):
    """(a leaf, the tensor of these values whose negative bit is set made from it, the sign
    of those values in the leaf's)."""
    return (-values).clone(), torch._neg_view, -1


def _zero_tensor(values):
    """(PyTorch's zero tensor of these values' shape, itself: no memory behind it)."""
    return torch._efficientzerotensor(values.shape, dtype=values.dtype), lambda t: t, 1


@pytest.mark.parametrize("kind", [_negative_view, _zero_tensor], ids=lambda k: k.__name__[1:])
@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("operand", ["input", "target", "weight", "pos_weight"])
@pytest.mark.parametrize("loss", ["logits", "probabilities"])
def test_a_tensor_whose_memory_does_not_hold_its_values_gives_their_loss(
    loss, operand, grad_mode, kind
):
    # a negative view stores its values negated behind a flag; a zero tensor has no memory
    # (its data pointer is 0): the calls of a form kept in C before must read the values
    if loss == "probabilities" and operand == "pos_weight":
        return
    g = torch.Generator().manual_seed(16)
    x = torch.randn(64, 10, generator=g)
    tensors = {
        "input": x if loss == "logits" else torch.sigmoid(x),
        "target": torch.rand(64, 10, generator=g),
        "weight": torch.rand(10, generator=g),
        "pos_weight": torch.rand(10, generator=g) + 0.5,
    }
    if loss == "probabilities":
        del tensors["pos_weight"]
    leaf, make, sign = kind(tensors[operand])
    given = {**tensors, operand: make(leaf)}
    plain = {**tensors, operand: torch.from_numpy(make(leaf).numpy(force=True).copy())}
    if loss == "logits":
        ours = bceloss.binary_cross_entropy_with_logits
        theirs = torch.nn.functional.binary_cross_entropy_with_logits
    else:
        ours = bceloss.binary_cross_entropy
        theirs = torch.nn.functional.binary_cross_entropy

    def step(loss_fn, arguments):
        # (loss, gradient wrt the input's values)
        arguments = dict(arguments)
        odd = arguments["input"] is given["input"] and operand == "input"
        x = leaf.detach() if odd else arguments.pop("input").detach()
        x.requires_grad_(grad_mode)
        arguments["input"] = make(x) if odd else x
        with torch.set_grad_enabled(grad_mode):
            value = loss_fn(arguments.pop("input"), arguments.pop("target"), **arguments)
        if not grad_mode:
            return value, None
        (grad,) = torch.autograd.grad(value, x)
        return value.detach(), sign * grad if odd else grad

    for _ in range(4):  # the form kept, in C where it can
        step(ours, tensors)
    for _ in range(3):
        got, want, usual = step(ours, given), step(theirs, plain), step(ours, plain)
        for a, b, c in zip(got, want, usual, strict=True):
            if a is not None:
                assert same_bits(a, c)  # the loss of a plain tensor of the same values
                torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)  # PyTorch's
    if operand == "input" and loss == "probabilities" and kind is _negative_view:
        # stored in [0, 1], values outside: refused
        with pytest.raises(ValueError, match="probabilities"):
            ours(torch._neg_view(tensors["input"]), tensors["target"], tensors["weight"])


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("operand", ["input", "target", "weight"])
@pytest.mark.parametrize("loss", ["logits", "probabilities"])
def test_a_tensor_whose_storage_was_freed_is_refused_at_every_call(loss, operand, grad_mode):
    # storage resized to no bytes (as FSDP frees a parameter): no memory behind the elements,
    # which neither a form kept in C nor NumPy's view may read (PyTorch's own raises too)
    g = torch.Generator().manual_seed(17)
    x = torch.randn(64, 10, generator=g)
    tensors = {
        "input": x if loss == "logits" else torch.sigmoid(x),
        "target": torch.rand(64, 10, generator=g),
        "weight": torch.rand(64, 10, generator=g),
    }
    fn = (
        bceloss.binary_cross_entropy_with_logits
        if loss == "logits"
        else bceloss.binary_cross_entropy
    )
    for _ in range(6):
        given = {k: v.clone() for k, v in tensors.items()}
        given["input"].requires_grad_(grad_mode)
        with torch.set_grad_enabled(grad_mode):
            usual = fn(given.pop("input"), given.pop("target"), **given)
            given = {k: v.clone() for k, v in tensors.items()}
            given[operand].untyped_storage().resize_(0)
            given["input"].requires_grad_(grad_mode)
            # (the library's message at every call: through the C kernel's fallback too)
            with pytest.raises(RuntimeError, match=r"^a tensor whose storage holds no memory"):
                fn(given.pop("input"), given.pop("target"), **given)
        assert usual.isfinite()  # the form's plain calls still compute, in C from the third
    assert _native.torch_kept() == 1


@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize(
    "options",
    [{}, {"reduction": "none"}, {"where": "mask"}, {"reduction": "weighted_mean"}, {"float64": 1}],
    ids=["mean", "none", "where", "weighted_mean", "float64"],
)
@pytest.mark.parametrize("loss", ["logits", "probabilities"])
def test_the_callers_tensors_stay_resizable_as_after_pytorchs_own_loss(loss, options, grad_mode):
    # NumPy's views of the tensors (the first calls of a form, forms outside the C kernel,
    # the gradient it writes) leave each storage resizable, as PyTorch's own loss does:
    # Tensor.numpy() marks a storage not resizable for good (a target buffer resized for the
    # next batch, or a parameter FSDP frees, then raised)
    g = torch.Generator().manual_seed(18)
    dtype = torch.float64 if options.get("float64") else torch.float32
    x = torch.randn(32, 5, generator=g, dtype=dtype)
    tensors = {
        "input": x if loss == "logits" else torch.sigmoid(x),
        "target": torch.rand(32, 5, generator=g, dtype=dtype),
        "weight": torch.rand(5, generator=g, dtype=dtype),
    }
    if loss == "logits":
        tensors["pos_weight"] = torch.rand(5, generator=g, dtype=dtype) + 0.5
    if options.get("where"):
        tensors["where"] = torch.rand(32, 5, generator=g) > 0.3
    reduction = options.get("reduction", "mean")
    fn = (
        bceloss.binary_cross_entropy_with_logits
        if loss == "logits"
        else bceloss.binary_cross_entropy
    )
    for _ in range(5):  # validated, remembered, kept (in C where it can)
        given = {k: v.clone() for k, v in tensors.items()}
        given["input"].requires_grad_(grad_mode)
        call = dict(given)
        with torch.set_grad_enabled(grad_mode):
            value = fn(call.pop("input"), call.pop("target"), **call, reduction=reduction)
        if grad_mode:
            value.sum().backward()
            assert given["input"].grad.untyped_storage().resizable()
        for name, t in given.items():
            assert t.untyped_storage().resizable(), name
            t.untyped_storage().resize_(t.untyped_storage().nbytes() + 8)  # as PyTorch's


def test_operands_on_another_device_than_the_inputs_are_refused_at_every_call():
    # NumPy's views of a CPU call read CPU tensors only: a weight elsewhere is an error at
    # every call, never copied over
    x, y = torch.randn(8, 3), torch.rand(8, 3)
    for _ in range(4):
        bceloss.binary_cross_entropy_with_logits(x, y)
        with pytest.raises(TypeError, match="meta"):
            bceloss.binary_cross_entropy_with_logits(x, y, torch.ones(3, device="meta"))
