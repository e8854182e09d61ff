"""The validated call record.

A loss function binds its arguments with `bind` (names, defaults, its flavour's checks,
`_validation`) into a `LossCall`; the call's `backend` (chosen by `_dispatch` from the
arrays' library) then computes it (`run`). Nothing here imports another module of the
package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# a LossCall's arrays, in the order the adapters pass them on
ARRAYS = ("input", "target", "weight", "pos_weight", "where")


@dataclass(frozen=True)
class LossCall:
    """One validated call of a loss function: its arrays, its options, its result's form."""

    xp: Any  # the arrays' namespace (array-api-compat's)
    backend: Any  # the adapter of the arrays' library (`_dispatch.backend`)
    logits: bool
    input: Any
    target: Any
    weight: Any
    pos_weight: Any
    reduction: str
    dtype: Any  # the result's dtype
    shape: tuple[int, ...]  # the elementwise loss's shape (a Paddle weight may widen it)
    ignore_label: float | None = None
    where: Any = None  # a bool array broadcastable to the input: the elements kept
    label_smoothing: float = 0.0  # the target becomes y (1 - s) + s / 2
    gamma: float | None = None  # not None: the sigmoid focal loss, with this exponent
    alpha: float | None = None  # the focal loss's weight of the positives (None: off)

    @property
    def kind(self) -> str:
        """'probabilities', 'logits' or 'focal' (the sigmoid focal loss, from logits)."""
        if self.gamma is not None:
            return "focal"
        return "logits" if self.logits else "probabilities"

    def replace(self, **changes) -> LossCall:
        """A copy with `changes`: `dataclasses.replace` without running `__init__` again
        (a quarter of its time; a PyTorch training step makes several)."""
        assert changes.keys() <= self.__dict__.keys(), changes.keys() - self.__dict__.keys()
        copy = object.__new__(LossCall)
        copy.__dict__.update(self.__dict__, **changes)
        return copy


def run(call: LossCall):
    """The loss of a validated call, by its library's adapter (differentiable where the
    library is recording)."""
    return call.backend.loss(call)
