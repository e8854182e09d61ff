"""`python benchmarks/bench_bce.py`: bceloss's speed on this machine against installed anchors.

The benchmark of README's ## Speed; options: --repeats N, --cases ..., --no-compile,
--threads N (`--help`). It lives outside the package: bceloss does not ship it.

BCE with logits in float32, 'mean', forward alone and forward + gradient (d/d input), at
10^4, 10^6 and 10^7 elements and on a (4096, 1000) multi-label batch with a (1000,)
pos_weight. Anchors: a NumPy composite of the stable formula, PyTorch eager (2 threads) and
torch.compile where PyTorch is installed, and the memory-bandwidth limit measured in the same
run (a parallel loop that reads 8 bytes per element, and one that also writes 4). Every
method is timed in turn within each repeat (interleaved: a noisy neighbour slows them all
alike), over about 20 ms of calls in a row, and the table shows medians and ratios. Also: peak extra memory of forward +
gradient (tracemalloc) and the first result of a new process (disk cache warm).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np

import bceloss

BCEL = bceloss.binary_cross_entropy_with_logits
CASES = {"1e4": (10**4,), "1e6": (10**6,), "1e7": (10**7,), "4096x1000 pw": (4096, 1000)}


_POOLS: list = []


def _bandwidth_limits(threads: int):
    """Two streaming loops on `threads` threads (NumPy releases the GIL): one that reads x and
    y (a dot product of each thread's share), one that also writes (x - y into a buffer).
    What the memory system delivers to this process, for the same bytes as the loss."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(threads)
    _POOLS.append(pool)  # shut down after its case (`main`)

    def shares(n):
        return [slice(k * n // threads, (k + 1) * n // threads) for k in range(threads)]

    def read(x, y):
        return sum(pool.map(lambda s: float(np.dot(x[s], y[s])), shares(x.size)))

    def read_write(x, y, out):
        list(pool.map(lambda s: np.subtract(x[s], y[s], out=out[s]), shares(x.size)))

    return read, read_write


def _numpy_composite(x, y, p):
    """What one writes with NumPy: max(x, 0) - x y + log1p(exp(-|x|)), lw for pos_weight."""
    sp = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)  # softplus(-x)
    if p is None:
        return np.mean((1 - y) * x + sp)
    return np.mean((1 - y) * x + (1 + (p - 1) * y) * sp)


def _numpy_composite_grad(x, y, p):
    s = 1 / (1 + np.exp(-x))
    g = s - y if p is None else (1 + (p - 1) * y) * s - p * y
    return _numpy_composite(x, y, p), g / x.size


def _methods(x, y, p, torch_ok, compiled):
    """name -> (forward, forward + gradient) callables; None where a method has no such form."""
    out = np.empty_like(x)
    vg = bceloss.value_and_grad(BCEL)
    read, read_write = _bandwidth_limits(bceloss.get_num_threads())
    sink, xf, yf = np.empty(x.size, x.dtype), x.reshape(-1), y.reshape(-1)
    m = {
        "bceloss": (lambda: BCEL(x, y, pos_weight=p), lambda: vg(x, y, pos_weight=p)),
        "bceloss out=": (None, lambda: vg(x, y, pos_weight=p, out=out)),
        "NumPy composite": (
            lambda: _numpy_composite(x, y, p),
            lambda: _numpy_composite_grad(x, y, p),
        ),
        "bandwidth limit": (lambda: read(xf, yf), lambda: read_write(xf, yf, sink)),
    }
    if torch_ok:
        import torch
        import torch.nn.functional as F

        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        pt = None if p is None else torch.from_numpy(p)

        def torch_fwd(f=F.binary_cross_entropy_with_logits):
            with torch.no_grad():
                return f(xt, yt, pos_weight=pt)

        def torch_fg(f=F.binary_cross_entropy_with_logits):
            xg = xt.detach().requires_grad_()
            f(xg, yt, pos_weight=pt).backward()
            return xg.grad

        m["PyTorch eager"] = (torch_fwd, torch_fg)
        if compiled is not None:
            m["torch.compile"] = (
                lambda: torch_fwd(compiled),
                lambda: torch_fg(compiled),
            )
    return m


def _time(fn, inner):
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) / inner


def _measure(methods, n, repeats):
    """Interleaved medians: per method, (forward seconds, forward + gradient seconds). Each
    sample is the mean of at least 3 calls in a row, about 20 ms of them: PyTorch's OpenMP
    threads spin for some milliseconds after its parallel calls, slowing whatever the next
    call is (a lone call after PyTorch's measures PyTorch's spinning too)."""
    inner = {}
    for name, fns in methods.items():  # warm-up (compile, caches, first-touch pages), calibrate
        for k, f in enumerate(fns):
            if f is not None:
                f()
                inner[name, k] = max(3, min(2000, int(0.02 / max(_time(f, 1), 1e-7))))
    samples = {name: ([], []) for name in methods}
    for _ in range(repeats):
        for name, fns in methods.items():
            for k, f in enumerate(fns):
                if f is not None:
                    samples[name][k].append(_time(f, inner[name, k]))
    return {
        name: tuple(statistics.median(s) if s else math.nan for s in pair)
        for name, pair in samples.items()
    }


def _peak_extra_memory(x, y, out):
    """Peak bytes NumPy allocates during value_and_grad, without and with out= (tracemalloc;
    the kernels' per-thread buffers, on the threads' stacks, are not traced)."""
    vg = bceloss.value_and_grad(BCEL)
    peaks = []
    for kw in ({}, {"out": out}):
        vg(x, y, **kw)
        tracemalloc.start()
        vg(x, y, **kw)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return peaks


_COLD = {
    "bceloss": (
        "import numpy as np, bceloss\n"
        "x = np.linspace(-5, 5, 100000, dtype=np.float32); y = (x > 0).astype(np.float32)\n"
        "t1 = time.perf_counter()\n"
        "bceloss.binary_cross_entropy_with_logits(x, y)\n"
    ),
    "PyTorch": (
        "import torch\n"
        "x = torch.linspace(-5, 5, 100000); y = (x > 0).float()\n"
        "t1 = time.perf_counter()\n"
        "torch.nn.functional.binary_cross_entropy_with_logits(x, y)\n"
    ),
}


def _cold_start(library: str) -> tuple[float, float]:
    """A new process computing the loss of 10^5 elements with `library`: seconds from launch
    to the first result (the process stamps the moment; its interpreter's teardown afterwards
    is not counted), and of that the first call itself."""
    code = (
        "import time\n"
        + _COLD[library]
        + "t2 = time.perf_counter()\n"
        + "print(time.time(), t2 - t1)\n"
    )
    runs = []
    for i in range(6):  # the first warms the disk cache: not counted
        launch = time.time()
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        if res.returncode:
            return math.nan, math.nan
        stamp, first = map(float, res.stdout.split())
        if i:
            runs.append((stamp - launch, first))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def _compile(torch, timeout_note):
    import torch.nn.functional as F

    try:
        import torch._dynamo

        # one graph per case and grad mode: more than the default limit of 8 recompilations
        torch._dynamo.config.recompile_limit = 64
        f = torch.compile(F.binary_cross_entropy_with_logits, dynamic=False)
        t = time.perf_counter()
        xt = torch.zeros(16, requires_grad=True)
        f(xt, torch.zeros(16)).backward()
        timeout_note.append(f"torch.compile first call {time.perf_counter() - t:.1f} s")
        return f
    except Exception as exc:  # noqa: BLE001 (a missing compiler, an unsupported platform...)
        timeout_note.append(f"torch.compile unavailable: {type(exc).__name__}: {exc}"[:200])
        return None


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's threads")
    args = parser.parse_args(argv)

    threads = bceloss.get_num_threads()
    notes = [f"bceloss {bceloss.__version__}, native kernels ({threads} threads)"]
    torch = _torch(args.threads)
    compiled = None
    if torch is not None:
        notes.append(f"PyTorch {torch.__version__} eager, {args.threads} threads")
        if not args.no_compile:
            compiled = _compile(torch, notes)
    else:
        notes.append("PyTorch not installed: no PyTorch anchors")
    print("BCE with logits, float32, 'mean'; medians of", args.repeats, "interleaved repeats")
    for note in notes:
        print("  " + note)
    rng = np.random.default_rng(0)
    header = f"{'case':<14}{'method':<17}{'fwd ms':>9}{'G el/s':>8}{'fwd+grad ms':>13}{'G el/s':>8}"
    print(header)
    print("-" * len(header))
    summary = []
    for case in args.cases:
        shape = CASES[case]
        n = math.prod(shape)
        x = rng.normal(0, 3, shape).astype(np.float32)
        y = (rng.random(shape) < 0.3).astype(np.float32)
        p = rng.uniform(0.5, 4, shape[-1]).astype(np.float32) if len(shape) == 2 else None
        times = _measure(_methods(x, y, p, torch is not None, compiled), n, args.repeats)
        while _POOLS:
            _POOLS.pop().shutdown()
        for name, (tf, tg) in times.items():
            fwd = f"{'-':>9}{'-':>8}" if math.isnan(tf) else f"{tf * 1e3:9.3f}{n / tf / 1e9:8.2f}"
            print(f"{case:<14}{name:<17}{fwd}{tg * 1e3:13.3f}{n / tg / 1e9:8.2f}")
        ours_f, ours_g = times["bceloss"][0], times["bceloss out="][1]
        ratios = []
        for name, (tf, tg) in times.items():
            if name == "bandwidth limit":  # the share of the limit bceloss reaches
                ratios.append(f"{tf / ours_f:.0%} / {tg / ours_g:.0%} of {name}")
            elif not name.startswith("bceloss"):
                ratios.append(f"{tf / ours_f:.1f}x / {tg / ours_g:.1f}x {name}")
        summary.append(f"{case}: bceloss fwd / fwd+grad (out=): " + ", ".join(ratios))
    print()
    for line in summary:
        print(line)
    if "1e7" in args.cases:
        x = rng.normal(0, 3, 10**7).astype(np.float32)
        y = (rng.random(10**7) < 0.3).astype(np.float32)
        fresh, reused = _peak_extra_memory(x, y, np.empty_like(x))
        print(
            f"peak extra memory of fwd+grad at 1e7 (gradient {x.nbytes / 2**20:.0f} MiB): "
            f"{fresh / 2**20:.1f} MiB, with out= {reused / 2**20:.3f} MiB"
        )
    wall, first = _cold_start("bceloss")
    print(f"new process, first result: {wall:.2f} s after launch ({first:.3f} s first call)")
    if torch is not None:
        twall, tfirst = _cold_start("PyTorch")
        print(
            f"  the same with PyTorch: {twall:.2f} s after launch ({tfirst:.3f} s first call);"
            f" bceloss / PyTorch {wall / twall:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
