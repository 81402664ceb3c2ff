"""The flat parameter buffer: where each layer's weights and biases live in it.

All parameters of a model live in one contiguous buffer laid out ``[W_1 .. W_L, b_1 .. b_L]``,
and its gradients in a buffer of the same layout, so an optimizer step, a norm for
clipping, a save or an all-reduce is one operation over one array. Weights first means
weight decay applies to one prefix of the buffer (``n_weights`` entries).
"""
from __future__ import annotations

__all__ = ["ParameterLayout"]


class ParameterLayout:
    """Offsets of ``W_l`` (n_{l-1}, n_l) and ``b_l`` (n_l,) in the flat buffer of a network
    with layer widths ``sizes``."""

    def __init__(self, sizes):
        pairs = list(zip(sizes[:-1], sizes[1:]))
        self.sizes = tuple(sizes)
        self.n_weights = sum(a * b for a, b in pairs)
        self.n_params = self.n_weights + sum(b for _, b in pairs)
        offset = 0
        self.weight_slots = []      # (offset, shape) of each W_l
        for a, b in pairs:
            self.weight_slots.append((offset, (a, b)))
            offset += a * b
        self.bias_slots = []        # (offset, shape) of each b_l
        for _, b in pairs:
            self.bias_slots.append((offset, (b,)))
            offset += b

    def views(self, flat):
        """``(weights, biases)``: lists of views into the flat array ``flat`` (n_params,)."""
        weights = [flat[o:o + s[0] * s[1]].reshape(s) for o, s in self.weight_slots]
        biases = [flat[o:o + s[0]] for o, s in self.bias_slots]
        return weights, biases

    def interleaved(self, flat):
        """``[W_1, b_1, ..., W_L, b_L]``: views into ``flat``, in the order of ``MLP.params``."""
        weights, biases = self.views(flat)
        return [p for pair in zip(weights, biases) for p in pair]
