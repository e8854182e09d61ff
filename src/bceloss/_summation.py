"""How the library adds up losses: fixed blocks, each summed in float64, combined exactly.

The flattened (C-order) elementwise loss is cut into blocks of BLOCK consecutive elements;
each block is summed in float64 (pairwise on NumPy), and the block sums are combined with
`math.fsum`, which is exactly rounded and so independent of the order the blocks arrive in.
Anyone who computes the same blocks (a thread of a kernel, a chunk of a file stream, a Dask
worker) and hands the block sums on gets the same total, to the last bit.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 1 << 13  # NumPy's buffer size: a block is one pairwise sum, in one cast buffer


def block_sums(values) -> np.ndarray:
    """The float64 sums of the consecutive BLOCK-element blocks of `values` (C order)."""
    flat = np.ravel(values)
    full = flat.size - flat.size % BLOCK
    head = np.sum(flat[:full].reshape(-1, BLOCK), axis=1, dtype=np.float64)
    if full == flat.size:
        return head
    return np.append(head, np.sum(flat[full:], dtype=np.float64))


def combine(sums) -> float:
    """The exactly rounded total of block sums, in any order."""
    return math.fsum(np.asarray(sums, dtype=np.float64).tolist())


def total(values) -> float:
    """The library's sum of a NumPy array: `combine(block_sums(values))`."""
    return combine(block_sums(values))
