"""Weight initialisers. Biases start at zero.

``glorot_uniform`` is U(-b, b) with ``b = sqrt(6 / (fan_in + fan_out))`` (Glorot and Bengio
2010, seed 000). The others follow the same pattern with the variances of Glorot (normal)
and He et al. 2015 (``2 / fan_in``, suited to ReLU). Weights are always drawn on the host
with NumPy's Generator, so a seed gives the same network on every backend.
"""
from __future__ import annotations

import numpy as np

__all__ = ["INITIALIZERS", "initialize_weight"]


def glorot_uniform(rng, fan_in, fan_out):
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=(fan_in, fan_out))


def glorot_normal(rng, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


def he_uniform(rng, fan_in, fan_out):
    bound = np.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=(fan_in, fan_out))


def he_normal(rng, fan_in, fan_out):
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


INITIALIZERS = {f.__name__: f for f in (glorot_uniform, glorot_normal, he_uniform, he_normal)}


def initialize_weight(name: str, rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """A float64 (fan_in, fan_out) weight matrix drawn by the named initialiser."""
    return INITIALIZERS[name](rng, fan_in, fan_out)
