"""The MindSpore and Paddle flavours of the BCE family.

`bceloss.compat.mindspore` and `bceloss.compat.paddle` take each framework's names,
argument order and checks, and compute the core's numbers: no second copy of the math.
"""

from bceloss.compat import mindspore, paddle

__all__ = ["mindspore", "paddle"]
