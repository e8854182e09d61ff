"""Random inputs that reach the hard corners: logits over 12 decades up to |x| = 1e4,
targets at and between 0 and 1, pos_weight from 1e-3 to 10 (and exactly 0 and 1)."""

from __future__ import annotations

import numpy as np


def logits(rng, shape, max_abs=1e4):
    """Signed logits, log-uniform in magnitude from 1e-8 to max_abs, with exact 0s."""
    mag = 10.0 ** rng.uniform(-8, np.log10(max_abs), size=shape)
    x = np.where(rng.random(shape) < 0.5, -mag, mag)
    return np.where(rng.random(shape) < 0.05, 0.0, x)


def targets(rng, shape):
    """Targets in [0, 1], a quarter exactly 0 and a quarter exactly 1."""
    u = rng.random(shape)
    y = rng.random(shape)
    y = np.where(u < 0.25, 0.0, y)
    y = np.where(u > 0.75, 1.0, y)
    # and some within 1e-6 of 1, where 1 - y is small
    return np.where((u > 0.7) & (u <= 0.75), 1 - 10.0 ** rng.uniform(-7, -3, shape), y)


def probabilities(rng, shape):
    """Probabilities spread over 1e-12 .. 1 - 1e-12, with exact 0s and 1s."""
    lo = 10.0 ** rng.uniform(-12, 0, size=shape) * 0.5
    x = np.where(rng.random(shape) < 0.5, lo, 1 - lo)
    u = rng.random(shape)
    x = np.where(u < 0.03, 0.0, x)
    return np.where(u > 0.97, 1.0, x)


def positive_weights(rng, shape):
    """Weights in [1e-3, 10], some exactly 0 and 1."""
    p = 10.0 ** rng.uniform(-3, 1, size=shape)
    u = rng.random(shape)
    p = np.where(u < 0.1, 0.0, p)
    return np.where(u > 0.8, 1.0, p)
