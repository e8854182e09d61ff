"""Several processes computing the loss at once: `python benchmarks/bench_contention.py`.

Each method is timed in one process alone, then in `--procs` processes running it at the
same time (more threads than cores: every process starts its own thread pool). It prints the
median time of a call in both cases and the slowdown; the anchors (NumPy's composite,
PyTorch eager where installed) meet the same contention in the same run. Environment
variables such as OMP_WAIT_POLICY pass on to the workers:

    python benchmarks/bench_contention.py
    OMP_WAIT_POLICY=passive python benchmarks/bench_contention.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np

SIZES = (10**4, 10**5, 10**6, 10**7)


def _callable(method: str, n: int):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, n).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.float32)
    if method == "bceloss":
        import bceloss

        return lambda: bceloss.binary_cross_entropy_with_logits(x, y)
    if method == "NumPy composite":
        from bench_bce import _numpy_composite  # the script next to this one

        return lambda: _numpy_composite(x, y, None)
    import torch
    import torch.nn.functional as F

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return lambda: F.binary_cross_entropy_with_logits(xt, yt)


def _worker(method: str, n: int, seconds: float) -> None:
    """Warm up, say "ready", wait for a line on stdin, then call for `seconds` and print the
    median seconds of a call."""
    fn = _callable(method, n)
    fn()
    inner = max(1, int(1e6 // n))
    samples = []
    print("ready", flush=True)
    sys.stdin.readline()  # the workers start together, each warmed up
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 3:
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t) / inner)
    print(statistics.median(samples))


def _run(method: str, n: int, procs: int, seconds: float) -> float:
    """The median call time of `procs` workers started together (the slowest worker's)."""
    cmd = [sys.executable, __file__, "--worker", method, str(n), str(seconds)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    workers = [subprocess.Popen(cmd, **pipes) for _ in range(procs)]
    for w in workers:
        w.stdout.readline()  # "ready"
    for w in workers:
        w.stdin.write("go\n")
        w.stdin.flush()
    return max(float(w.communicate()[0]) for w in workers)


def main(argv: list[str] | None = None) -> int:
    """Print the table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2, help="processes at once")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        method, n, seconds = args.worker
        _worker(method, int(n), float(seconds))
        return 0
    methods = ["bceloss", "NumPy composite"]
    try:
        import torch  # noqa: F401

        methods.append("PyTorch eager")
    except ImportError:
        print("PyTorch not installed: no PyTorch anchor")
    print(f"BCE with logits, float32, 'mean'; median call, 1 process vs {args.procs} at once")
    header = f"{'n':>9}  {'method':<16}{'alone ms':>10}{'together ms':>13}{'slowdown':>10}"
    print(header)
    print("-" * len(header))
    for n in SIZES:
        for method in methods:
            alone = _run(method, n, 1, args.seconds)
            together = _run(method, n, args.procs, args.seconds)
            print(
                f"{n:>9.0e}  {method:<16}{alone * 1e3:10.3f}{together * 1e3:13.3f}"
                f"{together / alone:9.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
