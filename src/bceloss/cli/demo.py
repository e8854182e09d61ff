"""`bceloss demo`: the reference frameworks' documented examples, then a short training."""

from __future__ import annotations

import numpy as np


def demo() -> None:
    """Print the reference frameworks' documented examples and a few steps of training."""
    import bceloss

    f32 = np.float32
    x = np.array([[-0.8, 1.2, 0.7], [-0.1, -0.4, 0.7]], f32)
    y = np.array([[0.3, 0.8, 1.2], [-0.6, 0.1, 2.2]], f32)
    print("BCEWithLogitsLoss, MindSpore's example (documented 0.3463612):")
    print("   ", bceloss.BCEWithLogitsLoss()(x, y))
    x = np.array([5.0, 1.0, 3.0], f32)
    y = np.array([1.0, 0.0, 1.0], f32)
    print("binary_cross_entropy_with_logits, Paddle's example (documented 0.45618808):")
    print("   ", bceloss.binary_cross_entropy_with_logits(x, y))
    p = np.array([0.2, 0.7, 0.1], f32)
    y = np.array([0.0, 1.0, 0.0], f32)
    w = np.array([1.0, 2.0, 2.0], f32)
    print("binary_cross_entropy with weight (documented 0.38240486; exact 0.382404837):")
    print("   ", bceloss.binary_cross_entropy(p, y, w))

    print("Logistic regression on 2 features, 5 steps of gradient descent:")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(256, 2)).astype(f32)
    labels = (features @ np.array([2.0, -1.0], f32) > 0).astype(f32)
    coef = np.zeros(2, f32)
    step = bceloss.value_and_grad(bceloss.binary_cross_entropy_with_logits)
    for i in range(5):
        loss, grad_logits = step(features @ coef, labels)
        coef -= 2.0 * (features.T @ grad_logits)
        print(f"    step {i}: loss {float(loss):.6f}")
