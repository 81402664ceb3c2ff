"""Optimizers: in-place updates of the flat parameter buffer.

Each optimizer keeps its state (e.g. the momentum velocity) as flat buffers shaped like the
parameters, and calls one backend op for the whole update, which the GPU backend fuses
into a single kernel launch.
"""
from __future__ import annotations

from .validation import check_real

__all__ = ["SGD"]


class SGD:
    """Stochastic gradient descent (seed 004: theta <- theta + alpha * Delta), with optional
    momentum and Nesterov momentum (PyTorch's formulation)::

        g = clip_scale * grad + weight_decay * theta    (weights only)
        v = momentum * v + g
        theta -= lr * (g + momentum * v  if nesterov else  v)
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
        self.lr = check_real("lr", lr, low=0.0, low_open=True)
        self.momentum = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = nesterov
        self.velocity = None

    def reset(self):
        self.velocity = None

    def step(self, backend, params, grads, *, weight_decay, n_decay, scale=1.0, skip=False, lr=None):
        """Update ``params`` (flat, length P) in place from ``grads`` (flat, length P)."""
        if self.momentum and (self.velocity is None or self.velocity.shape != params.shape
                              or self.velocity.dtype != params.dtype):
            self.velocity = backend.zeros(params.shape, params.dtype)
        backend.sgd_update(params, grads, self.velocity, lr=self.lr if lr is None else lr,
                           momentum=self.momentum, nesterov=self.nesterov,
                           weight_decay=weight_decay, n_decay=n_decay, scale=scale, skip=skip)
