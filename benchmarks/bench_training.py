"""A PyTorch user's training loop: bceloss's BCEWithLogitsLoss against PyTorch's own, eager
and under torch.compile, on an MLP (64 -> 256 -> C, SGD, multi-label targets).

For each batch x labels it times, as medians of interleaved repeats (the machine is shared:
bceloss and PyTorch alternate, so a busy moment hits both; each loss's workload is built
twice, before and after the other's, as the order of building moves the times):
  step     a whole training step: forward, loss, backward, optimizer step
  loss     the loss alone, forward + backward, on logits that require grad
  no_grad  the loss forward under torch.no_grad() (evaluation)
and prints the times and the ratios bceloss / PyTorch (below 1: bceloss is faster).

    python benchmarks/bench_training.py [--repeats 15] [--sizes 64x10,256x100,...] [--no-compile]
        [--probabilities] [--phases] [--operator]

--probabilities: BCELoss on the model's sigmoid (and on probabilities for `loss` and
`no_grad`) in place of BCEWithLogitsLoss on its logits.

--phases: where a step's time goes instead: zero_grad, forward (the model and the loss),
backward and the optimizer's step, each timed inside the step (interleaved as above); compiled,
the forward again with the compiler's per-call checks of the objects its graph read (guards)
skipped (`torch.compiler.set_stance(skip_guard_eval_unsafe=True)`), which tells their cost
from the graph's.

--operator: what the compiled step's call of bceloss's loss costs where the step makes it
(the lowered call inductor's graph makes, `bceloss._torch_inductor`, or the C kernel's
operator `bceloss::reduced_loss_and_grad` where the graph calls that; each call timed by a
wrapper that the graph finds, as it looks the function up at every call), against the same
call repeated in a loop (under no_grad, as the graph calls it): the step's other work evicts
what the call needs from the caches between two calls.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import torch

import bceloss

F = torch.nn.functional
SIZES = ((64, 10), (256, 100), (1024, 1000), (4096, 1000))


def _timed(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def _inner(fn) -> int:
    """Calls per timing: about 20 ms of work."""
    once = _timed(fn, 3)
    return max(1, min(2000, int(0.02 / max(once, 1e-7))))


def interleaved_medians(fns, repeats: int) -> dict:
    """The median time of a call (us) of each (name, fn) in `fns`, by name: each warmed up
    (two calls: compile, allocate), then timed about 20 ms of calls at a time in `repeats`
    rounds, the functions taking turns (a busy moment hits each); one name's times pooled."""
    for _, fn in fns:
        fn()
        fn()
    inner = [_inner(fn) for _, fn in fns]
    times: dict = {}
    for _ in range(repeats):
        for (name, fn), calls in zip(fns, inner, strict=True):
            times.setdefault(name, []).append(_timed(fn, calls))
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def _workloads(rows: int, labels: int, loss_fn, compiled: bool, probabilities: bool):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, labels)]
    net = torch.nn.Sequential(*layers, *([torch.nn.Sigmoid()] if probabilities else []))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(rows, 64)
    y = (torch.rand(rows, labels) > 0.7).float()
    draw = torch.rand if probabilities else torch.randn
    logits = draw(rows, labels).requires_grad_()

    def train(x, y):
        return loss_fn(net(x), y)

    # each workload's own code object and static shapes, as a training loop of one batch
    # size compiles (one code object for all would leave the compiler a graph for several
    # shapes, dynamic ones, after the second)
    train = types.FunctionType(
        train.__code__.replace(), train.__globals__, "train", None, train.__closure__
    )
    forward = torch.compile(train, fullgraph=True, dynamic=False) if compiled else train
    alone = torch.compile(loss_fn, fullgraph=True, dynamic=False) if compiled else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        forward(x, y).backward()
        opt.step()

    def loss():
        logits.grad = None
        alone(logits, y).backward()

    def no_grad():
        with torch.no_grad():
            alone(logits, y)

    def phases():
        """A step's phases' times in ns: zero_grad, forward (the loss included), backward,
        optimizer step."""
        t0 = time.perf_counter_ns()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter_ns()
        value = forward(x, y)
        t2 = time.perf_counter_ns()
        value.backward()
        t3 = time.perf_counter_ns()
        opt.step()
        t4 = time.perf_counter_ns()
        return (t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    return {"step": step, "loss": loss, "no_grad": no_grad, "phases": phases}


PHASES = ("zero_grad", "forward", "backward", "optimizer")


def _phase_times(fns, repeats: int, calls: int = 200) -> dict:
    """Medians over `repeats` interleaved rounds of each phase's mean time (us) over `calls`
    steps, for each (name, phases function) in `fns`, pooled by name."""
    times: dict = {}
    for _ in range(repeats):
        for name, fn in fns:
            total = [0] * len(PHASES)
            for _ in range(calls):
                total = [a + b for a, b in zip(total, fn(), strict=True)]
            for phase, ns in zip(PHASES, total, strict=True):
                times.setdefault(name, {}).setdefault(phase, []).append(ns / calls / 1e3)
    return {n: {p: statistics.median(v) for p, v in d.items()} for n, d in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sizes", default=",".join(f"{r}x{c}" for r, c in SIZES))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--probabilities", action="store_true")
    parser.add_argument("--phases", action="store_true")
    parser.add_argument("--operator", action="store_true")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    torch.set_num_threads(torch.get_num_threads())
    if args.probabilities:
        losses = {"bceloss": bceloss.BCELoss(), "PyTorch": torch.nn.BCELoss()}
    else:
        losses = {"bceloss": bceloss.BCEWithLogitsLoss(), "PyTorch": torch.nn.BCEWithLogitsLoss()}
    if args.operator:
        for rows, labels in sizes:
            _print_operator(rows, labels, losses["bceloss"], args.probabilities, args.repeats)
        return
    modes = [False] if args.no_compile else [False, True]
    width = 18 if args.phases else 8
    print(
        f"{'batch x labels':>15} {'mode':>8} {'what':>{width}} {'bceloss us':>11} "
        f"{'PyTorch us':>11} {'ratio':>6}"
    )
    for rows, labels in sizes:
        for compiled in modes:
            # each loss's workload built twice, in the order bceloss, PyTorch, PyTorch,
            # bceloss: the order a process builds them in moves a small step's time by a
            # few percent (a compiled 64 x 10 step: 1.03-1.04x built second, 1.09-1.12x
            # built first, measured), which the two builds of each loss share out evenly
            order = [*losses, *reversed(losses)]
            work = [
                (name, _workloads(rows, labels, losses[name], compiled, args.probabilities))
                for name in order
            ]
            if args.phases:
                _print_phases(rows, labels, compiled, losses, work, args.repeats)
                continue
            for what in ("step", "loss", "no_grad"):
                medians = interleaved_medians([(name, w[what]) for name, w in work], args.repeats)
                ours, theirs = (medians[n] for n in losses)
                mode = "compiled" if compiled else "eager"
                print(
                    f"{f'{rows}x{labels}':>15} {mode:>8} {what:>8} {ours:11.1f} "
                    f"{theirs:11.1f} {ours / theirs:6.2f}"
                )


def _print_phases(rows, labels, compiled, losses, work, repeats) -> None:
    fns = [(name, w["phases"]) for name, w in work]
    for _, fn in fns:  # warm up: compile, allocate
        for _ in range(20):
            fn()
    runs = [("", _phase_times(fns, repeats))]
    if compiled:  # the compiler's checks of each call's objects (guards) left out
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            runs.append((" no guards", _phase_times(fns, repeats)))
    mode = "compiled" if compiled else "eager"
    for suffix, times in runs:
        for phase in PHASES if not suffix else ("forward",):
            ours, theirs = (times[n][phase] for n in losses)
            print(
                f"{f'{rows}x{labels}':>15} {mode:>8} {phase + suffix:>18} {ours:11.1f} "
                f"{theirs:11.1f} {ours / theirs:6.2f}"
            )


def _print_operator(rows, labels, loss_fn, probabilities, repeats, steps=500) -> None:
    step = _workloads(rows, labels, loss_fn, True, probabilities)["step"]
    for _ in range(20):  # warm up: compile (the compiler traces the operator itself), allocate
        step()
    # what the graph calls for the loss: the lowered call inductor makes (`_torch_inductor`),
    # or the operator where it is not lowered; both looked up at every call of the graph
    from torch._inductor.select_algorithm import extern_kernels

    from bceloss import _torch_inductor

    lowered = hasattr(extern_kernels, _torch_inductor._NAME)
    owner, name = (
        (extern_kernels, _torch_inductor._NAME)
        if lowered
        else (torch.ops.bceloss.reduced_loss_and_grad, "default")
    )
    real = getattr(owner, name)
    spent, seen = [0, 0], []

    def timed(*args, **kwargs):
        start = time.perf_counter_ns()
        out = real(*args, **kwargs)
        spent[0] += time.perf_counter_ns() - start
        spent[1] += 1
        if not seen:
            seen.append((args, kwargs))
        return out

    setattr(owner, name, timed)
    try:
        in_step, in_loop = [], []
        with torch.no_grad():
            for _ in range(repeats):
                spent[:] = [0, 0]
                with torch.enable_grad():
                    for _ in range(steps):
                        step()
                in_step.append(spent[0] / spent[1] / 1e3)
                in_loop.append(_timed(lambda: real(*seen[0][0], **seen[0][1]), steps) * 1e6)
    finally:
        setattr(owner, name, real)
    what = "lowered call" if lowered else "operator"
    print(
        f"{rows}x{labels}: bceloss's {what} {statistics.median(in_step):.1f} us a call "
        f"inside a compiled step, {statistics.median(in_loop):.1f} us in a loop of calls"
    )


if __name__ == "__main__":
    main()
