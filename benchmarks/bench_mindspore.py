"""MindSpore PyNative's own BCE with logits against bceloss's MindSpore flavour, forward and
backward (mindspore.value_and_grad) on the same float32 tensors; medians of interleaved
repeats, printed as MindSpore's time over ours."""

from __future__ import annotations

import statistics
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor, mint

from bceloss.compat import mindspore as bm


def main(sizes=(10**4, 10**6, 10**7), repeats=7):
    rng = np.random.default_rng(0)
    for n in sizes:
        x = Tensor(rng.normal(0, 3, n).astype(np.float32))
        y = Tensor((rng.uniform(size=n) < 0.5).astype(np.float32))
        theirs = ms.value_and_grad(mint.nn.functional.binary_cross_entropy_with_logits)
        ours = ms.value_and_grad(bm.binary_cross_entropy_with_logits)
        times = {"mindspore": [], "bceloss": []}
        for f in (theirs, ours):  # warm up
            f(x, y)[1].asnumpy()
        for _ in range(repeats if n < 10**7 else 3):
            for name, f in (("mindspore", theirs), ("bceloss", ours)):
                t = time.perf_counter()
                f(x, y)[1].asnumpy()
                times[name].append(time.perf_counter() - t)
        a, b = statistics.median(times["mindspore"]), statistics.median(times["bceloss"])
        print(
            f"n={n:>9}: mindspore {a * 1e3:9.3f} ms  bceloss {b * 1e3:9.3f} ms  ratio {a / b:6.2f}x"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
