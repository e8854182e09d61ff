"""The throughput figure of docs/performance.md: elements per second against the input's size.

    python benchmarks/plot_throughput.py [--repeats 21] [--no-compile] [--out FILE ...]

Times the forward BCE with logits, float32, reduction 'mean', of

- bceloss on NumPy arrays (`binary_cross_entropy_with_logits(x, y)`),
- PyTorch eager (`torch.nn.functional.binary_cross_entropy_with_logits` on CPU tensors that
  share the arrays' memory),
- the same function under `torch.compile` (skipped with a note when it fails or when its
  first compilation takes longer than --compile-budget seconds),

at sizes from 10^3 to 10^7 elements. Each timing is the median of --repeats repeats; a
repeat times every method at every size once in turn (interleaved, so a slow period of a
shared machine affects all of them alike), each over enough calls to last about 20 ms. PyTorch gets as many
threads as the machine has cores. The figure's caption holds the date, the machine and the
library versions. Needs matplotlib and PyTorch (not CI dependencies); about two minutes on
two cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

import bceloss

ROOT = Path(__file__).resolve().parents[1]
SIZES = [10**3, 3 * 10**3, 10**4, 3 * 10**4, 10**5, 3 * 10**5, 10**6, 3 * 10**6, 10**7]


def cpu_name():
    """The processor's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def per_call(fn, calls):
    """Seconds per call of fn over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def compiled_loss(torch, budget, notes):
    """torch.compile of PyTorch's loss, or None (with the reason in notes)."""
    try:
        torch._dynamo.config.recompile_limit = 64  # one compilation per size
        fn = torch.compile(torch.nn.functional.binary_cross_entropy_with_logits, dynamic=False)
        x = torch.zeros(SIZES[0])
        start = time.perf_counter()
        fn(x, x)
        seconds = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 (no C++ compiler, an unsupported platform...)
        notes.append(f"torch.compile unavailable ({type(exc).__name__})")
        return None
    if seconds > budget:
        notes.append(f"torch.compile skipped: its first compilation took {seconds:.0f} s")
        return None
    return fn


def measure(cases, repeats, target=0.02):
    """{(case, name): median seconds per call}; each repeat runs every case and method once."""
    calls = {}
    for key, fn in cases.items():  # warm-up: compilation, caches, first-touch pages
        fn()
        calls[key] = max(1, round(target / max(per_call(fn, 3), 1e-7)))
    times = {key: [] for key in cases}
    for _ in range(repeats):
        for key, fn in cases.items():
            times[key].append(per_call(fn, calls[key]))
    return {key: statistics.median(t) for key, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        action="append",
        help="the figure's file (repeat for several formats; default docs/img/throughput.svg)",
    )
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--compile-budget", type=float, default=60.0, help="seconds")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    notes = []
    compiled = None if args.no_compile else compiled_loss(torch, args.compile_budget, notes)
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    rng = np.random.default_rng(0)
    cases = {}
    for n in SIZES:
        x = rng.standard_normal(n, dtype=np.float32)
        y = (rng.random(n) < 0.5).astype(np.float32)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        cases[n, "bceloss (NumPy)"] = lambda x=x, y=y: bceloss.binary_cross_entropy_with_logits(
            x, y
        )
        cases[n, "PyTorch eager"] = lambda tx=tx, ty=ty: loss(tx, ty)
        if compiled is not None:
            cases[n, "torch.compile"] = lambda tx=tx, ty=ty: compiled(tx, ty)
    load = [os.getloadavg()[0]]
    times = measure(cases, args.repeats)
    load.append(os.getloadavg()[0])
    results = {}
    for (n, name), seconds in times.items():
        results.setdefault(name, []).append(n / seconds / 1e9)
        print(f"{n:>10,}  {name:16} {seconds * 1e3:9.4f} ms  {n / seconds / 1e9:6.3f} G el/s")

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"bceloss (NumPy)": "C0o-", "PyTorch eager": "C3s-", "torch.compile": "C1^-"}
    for name, rates in results.items():
        ax.loglog(SIZES, rates, styles[name], label=name, lw=1.6, ms=4)
    ax.set_xlabel("elements")
    ax.set_ylabel("throughput (10^9 elements / s)")
    ax.set_title("BCE with logits, float32, 'mean', forward, CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    caption = (
        f"{date}, {cpu_name()}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{min(load):.1f} to {max(load):.1f}); median of {args.repeats} interleaved repeats. "
        f"bceloss {bceloss.__version__}, "
        f"NumPy {np.__version__}, PyTorch {torch.__version__.split('+')[0]}"
    )
    if notes:
        caption += "; " + "; ".join(notes)
    fig.text(0.5, 0.01, caption, ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    print(caption)
    for out in args.out or [ROOT / "docs" / "img" / "throughput.svg"]:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, metadata={"Date": None} if out.suffix == ".svg" else None)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
