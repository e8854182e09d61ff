"""Whether two tensors hold the same bits (the compiled and lowered routes' tests hold their
results to eager's with it)."""

from __future__ import annotations


def same_bits(a, b) -> bool:
    """Same dtype, shape and bytes (NaNs and signed zeros told apart as bits)."""
    import torch  # (the tests that call this import it, or skip)

    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            a.detach().reshape(-1).view(torch.uint8), b.detach().reshape(-1).view(torch.uint8)
        )
    )
