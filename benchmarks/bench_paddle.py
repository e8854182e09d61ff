"""`python benchmarks/bench_paddle.py`: the Paddle flavour on paddle tensors against Paddle's own.

BCE with logits in float32, 'mean', forward + backward (`loss.backward()` filling the
logits' `.grad`), on the same paddle tensors: Paddle eager's
`paddle.nn.functional.binary_cross_entropy_with_logits` against
`bceloss.compat.paddle.binary_cross_entropy_with_logits`, at 10^4, 10^6 and 10^7 elements.
Both are timed in turn within each repeat (interleaved: a noisy neighbour slows both
alike), each over about 20 ms of passes in a row; the table shows medians and the ratio
Paddle / bceloss. Options: --repeats N,
--sizes 4 6 7 (`--help`). It lives outside the package: bceloss does not ship it.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np

with warnings.catch_warnings():  # Paddle warns on import when ccache is absent
    warnings.simplefilter("ignore")
    import paddle

from bceloss.compat import paddle as pd


def _steps(fn, x, y, inner: int) -> float:
    """`inner` forward + backward passes in a row; the seconds one took, on average."""
    start = time.perf_counter()
    for _ in range(inner):
        x.clear_gradient()
        fn(x, y).backward()
        _ = x.grad  # the gradient is there
    return (time.perf_counter() - start) / inner


def _inner(fn, x, y) -> int:
    """Passes per timing: about 20 ms of work (one pass is too short to time alone at 10^4,
    and a lone call pays for the other loss having just run)."""
    once = _steps(fn, x, y, 3)
    return max(1, min(1000, int(0.02 / max(once, 1e-7))))


def run(sizes, repeats):
    rng = np.random.default_rng(0)
    methods = {
        "paddle": paddle.nn.functional.binary_cross_entropy_with_logits,
        "bceloss": pd.binary_cross_entropy_with_logits,
    }
    print(f"paddle {paddle.__version__}, float32, 'mean', forward + backward, median of {repeats}")
    print(f"{'elements':>10} {'paddle ms':>10} {'bceloss ms':>11} {'ratio':>7}")
    for exponent in sizes:
        n = 10**exponent
        x = paddle.to_tensor(rng.normal(0, 3, n).astype(np.float32), stop_gradient=False)
        y = paddle.to_tensor((rng.random(n) > 0.5).astype(np.float32))
        inner = {}
        for name, fn in methods.items():  # warm up: first calls compile and allocate
            _steps(fn, x, y, 3)
            inner[name] = _inner(fn, x, y)
        times = {name: [] for name in methods}
        for _ in range(repeats):
            for name, fn in methods.items():
                times[name].append(_steps(fn, x, y, inner[name]))
        med = {name: statistics.median(t) for name, t in times.items()}
        ratio = med["paddle"] / med["bceloss"]
        print(
            f"{f'10^{exponent}':>10} {med['paddle'] * 1e3:10.3f} "
            f"{med['bceloss'] * 1e3:11.3f} {ratio:6.2f}x"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 7])
    args = parser.parse_args(argv)
    run(args.sizes, args.repeats)


if __name__ == "__main__":
    main()
