"""The accuracy figure of docs/accuracy.md: the error in ulp of the BCE with logits against x.

    python benchmarks/plot_accuracy.py [--out docs/img/accuracy.svg]

For float32 logits x in [-30, 30], it measures the error of each element of the loss, in
units in the last place (ulp) of the exact loss rounded to float32, for

- bceloss (`binary_cross_entropy_with_logits(x, y, reduction="none")` on NumPy arrays);
- PyTorch's formula `(1 - y) x - log_sigmoid(x)`: the real `torch.nn.functional` in float32
  when PyTorch is installed, else that formula evaluated in float32 NumPy;
- Paddle's formula as its CPU kernel evaluates it (paddle/phi/kernels/cpu/
  sigmoid_cross_entropy_with_logits_kernel.cc), `max(x, 0) - x y + log(1 + exp(-|x|))`, in
  float32 NumPy: log(1 + e) rather than log1p(e), so it also loses e < 2^-24 for x << 0.

The exact loss comes from mpmath at 50 digits. Two targets show the cancellations: y = 0,
where PyTorch's x - log_sigmoid(x) subtracts two nearly equal numbers for x << 0 (and
Paddle's 1 + exp(-|x|) rounds to 1), and y = 0.99999 (rounded to float32), where Paddle's
x - x y subtracts two nearly equal numbers for x >> 0. Each point is the
largest error over a bin of 0.25 in x. Needs matplotlib and mpmath (not CI dependencies).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
import mpmath
import numpy as np

import bceloss

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.0, 0.99999)
BIN = 0.25


def exact(x, y):
    """The loss (1 - y) x + softplus(-x) at 50 digits, for float32 arrays x and y."""
    mpmath.mp.dps = 50
    out = np.empty(x.shape, np.float64)
    for i, (xi, yi) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
        x_, y_ = mpmath.mpf(xi), mpmath.mpf(yi)
        out[i] = float((1 - y_) * x_ + mpmath.log1p(mpmath.exp(-x_)))
    return out


def ulp_error(value, reference):
    """|value - reference| in ulp of the reference rounded to float32."""
    ulp = np.spacing(np.abs(reference).astype(np.float32)).astype(np.float64)
    return np.abs(value.astype(np.float64) - reference) / ulp


def pytorch(x, y):
    """PyTorch's loss: the real one if PyTorch is installed, else its formula in NumPy."""
    try:
        import torch
    except ImportError:
        with np.errstate(over="ignore"):
            log_sigmoid = -np.log1p(np.exp(-x))  # float32, as PyTorch's formula
            log_sigmoid = np.where(x < 0, x - np.log1p(np.exp(x)), log_sigmoid)
        return (1 - y) * x - log_sigmoid, "PyTorch's formula (1 - y) x - log_sigmoid(x)"
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(x), torch.from_numpy(y), reduction="none"
    )
    return loss.numpy(), f"PyTorch {torch.__version__.split('+')[0]}: (1 - y) x - log_sigmoid(x)"


def paddle(x, y):
    """Paddle's CPU kernel's formula, in float32 (log(1 + e), as the kernel writes it)."""
    return np.maximum(x, 0) - x * y + np.log(1 + np.exp(-np.abs(x)))


def binned_max(x, err):
    """The largest error in each bin of BIN in x, at the bin's centre."""
    edges = np.arange(x.min(), x.max() + BIN, BIN)
    idx = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
    worst = np.zeros(len(edges) - 1)
    np.maximum.at(worst, idx, err)
    return edges[:-1] + BIN / 2, worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "accuracy.svg")
    parser.add_argument("--points", type=int, default=6001)
    args = parser.parse_args(argv)

    x = np.linspace(-30, 30, args.points).astype(np.float32)
    floor = 1e-2  # errors below are drawn on this line (an exact result has error 0)
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(11, 4.6), sharey=True)
    for ax, y0 in zip(axes, TARGETS, strict=True):
        y = np.full_like(x, y0)
        reference = exact(x, y)
        ours = np.asarray(bceloss.binary_cross_entropy_with_logits(x, y, reduction="none"))
        theirs, torch_label = pytorch(x, y)
        curves = [
            ("bceloss", ours, "C0"),
            (torch_label, theirs, "C3"),
            ("Paddle's CPU kernel: max(x, 0) - x y + log(1 + exp(-|x|))", paddle(x, y), "C2"),
        ]
        for label, value, color in curves:
            centre, worst = binned_max(x, ulp_error(value, reference))
            print(f"y = {float(y[0]):.8g}  {label[:40]:40}  max {worst.max():.3g} ulp")
            on_top = 3 if label == "bceloss" else 2  # drawn over the others where they agree
            ax.semilogy(
                centre, np.maximum(worst, floor), color=color, label=label, lw=1.6, zorder=on_top
            )
        ax.set_title(f"target y = {float(y[0]):.8g} (float32)")
        ax.set_xlabel("logit x (float32)")
        ax.axhline(8, color="0.5", ls=":", lw=1)
        ax.text(-29.5, 10, "8 ulp: bceloss's bound", color="0.4", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(f"error in ulp (max over bins of {BIN} in x)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("BCE with logits in float32: error against the exact loss (mpmath)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, metadata={"Date": None})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
