"""The reduced loss's operators lowered for inductor (`bceloss._torch_inductor`): a compiled
graph's calls after the first of each site run the C kernel's loops on the graph's own
buffers; held to eager bit for bit, to the library's errors, and to a graph the compiler
loads from its cache in a new process."""

import os
import subprocess
import sys
import textwrap

import pytest
from torch_bits import same_bits

torch = pytest.importorskip("torch")

import bceloss
from bceloss import _torch_inductor, _torch_kernel
from bceloss._kernels import _native


def _losses(dtype):
    g = torch.Generator().manual_seed(3)
    labels = 10
    pos_weight = (torch.rand(labels, generator=g) + 0.5).to(dtype)
    weight = (torch.rand(labels, generator=g) + 0.5).to(dtype)
    return [
        ("BCEWithLogitsLoss", bceloss.BCEWithLogitsLoss(), torch.randn),
        ("pos_weight and weight", bceloss.BCEWithLogitsLoss(weight, pos_weight=pos_weight), None),
        ("sum", bceloss.BCEWithLogitsLoss(reduction="sum"), None),
        ("BCELoss", bceloss.BCELoss(), torch.rand),
        ("BCELoss weight", bceloss.BCELoss(weight), torch.rand),
    ]


@pytest.mark.parametrize("entry", ["C", "Python"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("grad", [True, False])
def test_lowered_calls_give_eagers_bits(dtype, grad, entry, monkeypatch):
    # the graph's call is `_native.torch_lowered_run`, or `run` (its twin, where PyTorch gives
    # no address of its tensor-data function); the graph looks it up at every call
    torch._dynamo.reset()
    _torch_inductor._handles.clear()
    if entry == "Python":
        from torch._inductor.select_algorithm import extern_kernels

        monkeypatch.setattr(extern_kernels, _torch_inductor._NAME, _torch_inductor.run)
    for name, loss, _ in _losses(dtype):
        g = torch.Generator().manual_seed(11)
        draw = torch.rand if name.startswith("BCELoss") else torch.randn
        x = draw(64, 10, generator=g, dtype=dtype)
        y = (torch.rand(64, 10, generator=g) > 0.6).to(dtype)
        compiled = torch.compile(loss, fullgraph=True, dynamic=False)

        def run(f, x=x, y=y):
            x = x.clone().requires_grad_(grad)
            value = f(x, y)
            return (value, torch.autograd.grad(value, x)[0]) if grad else (value,)

        expected = run(loss)
        for _ in range(3):  # the first call of a site takes the operator, the next the handle
            got = run(compiled)
            assert all(same_bits(a, b) for a, b in zip(got, expected, strict=True)), name
    # each site's later calls ran through a kept form's handle
    assert len(_torch_inductor._handles) == 5


def test_a_weight_and_a_pos_weight_of_one_shape_are_sites_of_their_own():
    # a compiled loss with only a weight and one with only a pos_weight of the same shape:
    # two call sites (before, they shared one, and the second ran the first's form: the
    # loss without its weight)
    torch._dynamo.reset()
    _torch_inductor._handles.clear()
    g = torch.Generator().manual_seed(23)
    x, y = torch.randn(64, 10, generator=g), (torch.rand(64, 10, generator=g) > 0.5).float()
    v = torch.rand(10, generator=g) + 0.5
    for loss in (bceloss.BCEWithLogitsLoss(pos_weight=v), bceloss.BCEWithLogitsLoss(weight=v)):
        compiled = torch.compile(loss, fullgraph=True, dynamic=False)

        def run(f):
            xi = x.clone().requires_grad_()
            value = f(xi, y)
            return value, torch.autograd.grad(value, xi)[0]

        expected = run(loss)
        for _ in range(3):
            assert all(same_bits(a, b) for a, b in zip(run(compiled), expected, strict=True))
    assert len(_torch_inductor._handles) == 2


def test_the_graphs_call_is_the_c_entry_where_the_c_kernel_reads_tensors(monkeypatch):
    assert _torch_kernel.reads_tensors()  # (PyTorch 2.13 and 2.14 give their data function)
    assert _torch_inductor._entry() is _native.torch_lowered_run
    monkeypatch.setattr(_torch_kernel, "_READS_TENSORS", [])
    assert _torch_inductor._entry() is _torch_inductor.run


def test_a_probability_outside_the_unit_interval_in_a_lowered_call_is_the_librarys_error():
    torch._dynamo.reset()
    _torch_inductor._handles.clear()
    g = torch.Generator().manual_seed(5)
    p, y = torch.rand(64, 10, generator=g), (torch.rand(64, 10, generator=g) > 0.5).float()
    loss = bceloss.BCELoss()
    compiled = torch.compile(loss, fullgraph=True, dynamic=False)
    for _ in range(2):
        compiled(p.clone().requires_grad_(), y).backward()
    assert len(_torch_inductor._handles) == 1
    bad = p.clone()
    bad[2, 7] = 1.5
    with pytest.raises(ValueError, match=r"input must hold probabilities in \[0, 1\]") as eager:
        loss(bad, y)
    message = str(eager.value).splitlines()[0]
    with pytest.raises(RuntimeError) as lowered:
        compiled(bad.requires_grad_(), y)
    assert message in str(lowered.value)


def test_a_graph_from_the_compilers_cache_runs_in_a_new_process(tmp_path):
    # the graph a process compiled, loaded by another from inductor's cache: its lowered call
    # finds its function there too, and gives the same bits
    script = textwrap.dedent(
        """
        import torch, bceloss
        from torch._dynamo.utils import counters
        torch.manual_seed(2)
        g = torch.Generator().manual_seed(2)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Sigmoid())
        loss = bceloss.BCELoss()
        x, y = torch.randn(32, 8, generator=g), (torch.rand(32, 16, generator=g) > 0.5).float()
        f = torch.compile(lambda x, y: loss(net(x), y), fullgraph=True, dynamic=False)
        values = []
        for _ in range(3):
            net.zero_grad()
            value = f(x, y)
            value.backward()
            values.append((value.item(), net[0].weight.grad.sum().item()))
        from bceloss import _torch_inductor
        print(values, len(_torch_inductor._handles), counters["inductor"]["fxgraph_cache_hit"])
        """
    )
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path), TORCHINDUCTOR_FX_GRAPH_CACHE="1")
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    first, second = (" ".join(r[:-2]) for r in runs)
    assert first == second
    # each ran its later steps through the lowered call (a handle of the loss's one site)
    assert runs[0][-2] == runs[1][-2] == "1"
    assert int(runs[0][-1]) == 0
    assert int(runs[1][-1]) > 0  # the second process loaded the first one's graph
