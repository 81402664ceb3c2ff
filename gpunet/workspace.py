"""The buffers of one batched forward and backward pass.

A ``Workspace`` holds, for batches of exactly ``rows`` examples, the layer outputs
``A_1 .. A_L``, the local gradients ``delta_1 .. delta_L`` and (when it is made for
training) a flat gradient buffer laid out like the model's parameters, with per-layer
views. Allocated once and reused, so a training step allocates nothing; and owned by one
caller at a time, never shared: ``fit`` makes its own, inference keeps one per thread, so
concurrent calls never write into each other's buffers.
"""
from __future__ import annotations

__all__ = ["Workspace"]


class Workspace:
    """Buffers for passes over ``rows`` examples of a network with widths ``sizes``.

    acts[l], deltas[l]: (rows, sizes[l + 1]) for l = 0 .. L-1; ``output`` is acts[-1].
    flat_grads (n_params,), and weight_grads / bias_grads views into it, when ``gradients``.
    """

    def __init__(self, backend, rows, sizes, dtype, layout=None, gradients=True):
        self.rows = rows
        self.acts = [backend.empty((rows, w), dtype) for w in sizes[1:]]     # A_1 .. A_L
        self.deltas = [backend.empty((rows, w), dtype) for w in sizes[1:]]   # delta_1 .. delta_L
        self.flat_grads = self.weight_grads = self.bias_grads = None
        if gradients:
            self.flat_grads = backend.zeros(layout.n_params, dtype)
            self.weight_grads, self.bias_grads = layout.views(self.flat_grads)

    @property
    def output(self):
        """The output layer's buffer: what the last forward pass left there."""
        return self.acts[-1]
