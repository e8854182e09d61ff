"""Per-sample gradients with torch.func: bceloss's BCEWithLogitsLoss against PyTorch's own,
eager and under torch.compile, on an MLP (64 -> 256 -> C, multi-label targets).

For each batch x labels it times `vmap(grad(loss of one sample))` over the batch (the
gradients of every parameter for every sample, as differentially private training takes
them), as medians of interleaved repeats (bceloss and PyTorch alternate, so a busy moment
hits both), and prints the times and the ratios bceloss / PyTorch (below 1: bceloss is
faster). Compiled, bceloss's loss runs eagerly under the transform, and the compiler runs the
whole transform eagerly with it (docs/backends.md): PyTorch's is one graph.

    python benchmarks/bench_per_sample.py [--repeats 7] [--sizes 64x10,256x100] [--no-compile]
"""

from __future__ import annotations

import argparse
import logging
import types
import warnings

import torch
from bench_training import interleaved_medians  # (this script's folder)
from torch.func import functional_call, grad, vmap

import bceloss

SIZES = ((64, 10), (256, 100))


def _workload(rows: int, labels: int, loss_fn, compiled: bool):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, labels)
    )
    params = {name: p.detach() for name, p in net.named_parameters()}
    x = torch.randn(rows, 64)
    y = (torch.rand(rows, labels) > 0.7).float()

    def one(p, xi, yi):  # the loss of one sample
        return loss_fn(functional_call(net, p, (xi[None],)), yi[None])

    def per_sample(p, a, b):
        return vmap(grad(one), in_dims=(None, 0, 0))(p, a, b)

    if compiled:  # (each workload its own code object: static shapes, one graph each)
        per_sample = types.FunctionType(
            per_sample.__code__.replace(),
            per_sample.__globals__,
            "per_sample",
            None,
            per_sample.__closure__,
        )
        per_sample = torch.compile(per_sample, dynamic=False)
    return lambda: per_sample(params, x, y)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", default=",".join(f"{r}x{c}" for r, c in SIZES))
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    # (the compiler's reports of the graph break, and PyTorch's of a non-leaf's .grad)
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor")
    losses = {
        "bceloss": bceloss.binary_cross_entropy_with_logits,
        "PyTorch": torch.nn.functional.binary_cross_entropy_with_logits,
    }
    print(f"{'batch x labels':>15} {'mode':>8} {'bceloss us':>11} {'PyTorch us':>11} {'ratio':>6}")
    for rows, labels in sizes:
        for compiled in [False] if args.no_compile else [False, True]:
            fns = [(n, _workload(rows, labels, f, compiled)) for n, f in losses.items()]
            medians = interleaved_medians(fns, args.repeats)
            ours, theirs = (medians[n] for n in losses)
            mode = "compiled" if compiled else "eager"
            print(
                f"{f'{rows}x{labels}':>15} {mode:>8} {ours:11.1f} {theirs:11.1f} "
                f"{ours / theirs:6.2f}"
            )


if __name__ == "__main__":
    main()
