"""The fused kernels of the BCE family on NumPy arrays, compiled ahead of time.

One pass over memory computes the elementwise loss and, for `value_and_grad`, both
gradients, with weight and pos_weight read in place (the usual layouts are never
materialised) and float16/bfloat16 widened to float32 on the fly, on every core. The math is
`_formulas`' term for term, with branch-free exp and log that the compiler vectorises; the
tests hold it to `_formulas` and the oracle.

- `formulas.hpp`: the terms at one element (`logits`, `probabilities`, `focal`, twins of
  `_formulas`'), over `fastmath.hpp`'s exp, log and storage conversions;
- `loops.hpp`, `loops.cpp`: the loops over a run of blocks, compiled for each vector width;
- `threads.hpp`, `threads.cpp`: the helper threads; `threads.py`: how many;
- `launch.hpp`, `launch.cpp`: a planned call run on the threads, from its arguments;
- `torch_kernel.hpp`, `torch_kernel.cpp`: the C kernel of the PyTorch operator
  `bceloss::reduced_loss_and_grad` on CPU tensors (`bceloss._torch_kernel` installs it), and
  `combine`, `_summation.combine`'s twin;
- `native.cpp`: the Python entry points (module `_native`);
- `plan.py`: which calls run here, and their arrays laid out for the kernels;
- `launch.py`: a plan run: `loss`, `elementwise`, `loss_and_grad`; `Prepared`, a plan's
  constants kept for the calls of one form (the express lanes of NumPy and PyTorch, and the
  registered operators).

`_evaluate` runs `loss` and `loss_and_grad` above `_dispatch`'s size threshold, and
`elementwise` at every size for streams and Dask blocks, so that they add up to the
library's bits; PyTorch CPU tensors come here as NumPy views (`_torch.numpy_twin`).
"""

from __future__ import annotations

from bceloss._kernels.launch import Prepared, elementwise, loss, loss_and_grad, prepare
from bceloss._kernels.plan import Plan, plan
from bceloss._kernels.threads import get_num_threads, set_num_threads

__all__ = [
    "Plan",
    "Prepared",
    "elementwise",
    "get_num_threads",
    "loss",
    "loss_and_grad",
    "plan",
    "prepare",
    "set_num_threads",
]
