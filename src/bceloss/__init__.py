"""bceloss: the binary cross-entropy family, exact and the same on every array library.

The core follows PyTorch (`binary_cross_entropy`, `binary_cross_entropy_with_logits`,
`BCELoss`, `BCEWithLogitsLoss`); `bceloss.compat` holds the MindSpore and Paddle flavours.
`sigmoid_focal_loss` is torchvision's, computed without cancellation. `value_and_grad` gives
any of them with its closed-form gradient. `set_num_threads` sets how many threads the
compiled kernels run large NumPy calls on.
"""

import contextlib as _contextlib
import sys as _sys

from bceloss import compat
from bceloss._functional import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    sigmoid_focal_loss,
)
from bceloss._kernels.threads import get_num_threads, set_num_threads
from bceloss._modules import BCELoss, BCEWithLogitsLoss
from bceloss._value_and_grad import value_and_grad

__version__ = "0.1.0"

if _sys.modules.get("torch") is not None:
    # PyTorch already imported: its operators (`bceloss::loss` and its kin) are registered
    # now (about 10 ms), so that a saved torch.export program that holds them
    # loads after `import bceloss` (else the first loss on a tensor registers them). A
    # PyTorch the adapter cannot use fails at the first loss on a tensor, not here.
    with _contextlib.suppress(ImportError, AttributeError):
        from bceloss import _torch  # noqa: F401

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "compat",
    "get_num_threads",
    "set_num_threads",
    "sigmoid_focal_loss",
    "value_and_grad",
]
