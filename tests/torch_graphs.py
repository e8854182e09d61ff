"""What torch.compile makes of a function: the graph dynamo traces and the forward graph
AOTAutograd derives from it, where bceloss::routed_loss has become the operators that
compute the loss (the tests of the compiled routes read them)."""

from __future__ import annotations


def graphs(fn, *args) -> tuple[str, str]:
    """(the code of dynamo's graph of `fn(*args)`, the code of its AOT forward graph)."""
    import torch  # (the tests that call this import it, or skip)
    from torch._dynamo.backends.common import aot_autograd

    traced, forward = [], []

    def keep_traced(gm, example_inputs):
        traced.append(gm.code)
        return aot_autograd(fw_compiler=keep_forward)(gm, example_inputs)

    def keep_forward(gm, example_inputs):
        forward.append(gm.code)
        return gm

    torch._dynamo.reset()
    torch.compile(fn, backend=keep_traced, fullgraph=True)(*args)
    torch._dynamo.reset()
    return traced[0], forward[0]
