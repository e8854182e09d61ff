"""value_and_grad: the loss and its closed-form gradient in one call."""

from __future__ import annotations

import functools

from bceloss import _evaluate, _validation


def value_and_grad(fn, argnums=0):
    """Return a function computing `fn`'s loss and its gradient.

    Args:
      fn: a loss of the library: a core or flavour function, or a loss class instance.
      argnums: 0 for d loss / d input, 1 for d loss / d target, or a tuple of them.

    Returns:
      A function with fn's signature returning (loss, grad) for an int argnums and
      (loss, (grad, ...)) for a tuple. Gradients have the shape and dtype of their
      argument. The loss must be a scalar: reduction='none' raises ValueError.
      It also takes a keyword `out`: an array (NumPy, or a PyTorch tensor) of the input's
      shape and dtype that receives d loss / d input and is returned in its place. At large
      sizes a fresh gradient's first-touch page faults cost as much as the math; `out`
      reuses one buffer (it must be writeable and share no memory with the arguments).

    Raises:
      TypeError: fn is not a loss of the library, or argnums is not 0, 1 or a tuple of them.

    Examples:
      >>> import numpy as np, bceloss
      >>> f = bceloss.value_and_grad(bceloss.binary_cross_entropy_with_logits)
      >>> loss, grad = f(np.array([0.0, 2.0]), np.array([1.0, 0.0]), reduction="sum")
      >>> print(np.round(grad, 4))
      [-0.5     0.8808]
      >>> buffer = np.empty(2)
      >>> loss, grad = f(np.array([0.0, 2.0]), np.array([1.0, 0.0]), out=buffer)
      >>> grad is buffer
      True
    """
    bind = _validation.loss_bind(fn)
    wrt = _validation.argnums(argnums)

    @functools.wraps(fn)
    def run(*args, out=None, **kwargs):
        call = bind(*args, **kwargs)
        _validation.scalar_loss(call)
        if out is not None:
            _validation.gradient_out(out, call, wrt)
        fused = out is not None and getattr(getattr(out, "flags", None), "c_contiguous", False)
        value, grads = _evaluate.loss_and_grad(call, wrt, out=out if fused else None)
        if out is not None and grads[wrt.index(0)] is not out:
            out[...] = grads[wrt.index(0)]  # the kernel did not run: copy the gradient in
            grads = tuple(out if i == 0 else g for i, g in zip(wrt, grads, strict=True))
        return value, (grads[0] if isinstance(argnums, int) else grads)

    return run
