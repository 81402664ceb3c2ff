"""Row-wise softmax written once for any array module ``xp`` (NumPy or CuPy).

The reference softmax of the backends and the ``Softmax`` activation both use it, so the
shift that keeps ``exp`` from overflowing is written in one place.
"""
from __future__ import annotations

import numpy as np

__all__ = ["shift_by_row_max", "softmax_rows"]


def shift_by_row_max(z):
    """``z - max(z, axis=1)`` for z (N, n): every entry <= 0, so its exp cannot overflow.

    A row spanning more than the dtype's range (1e308 and -1e308 in float64) shifts its low
    entries past the range, to -inf, whose exp is the 0 it should be: that overflow is
    intended and does not warn.
    """
    with np.errstate(over="ignore"):
        return z - z.max(axis=1, keepdims=True)


def softmax_rows(xp, z, out=None):
    """``exp(z_k) / sum_j exp(z_j)`` along each row of z (N, n), into ``out`` (may be z)."""
    shifted = shift_by_row_max(z)
    e = xp.exp(shifted, out=shifted)
    return xp.divide(e, e.sum(axis=1, keepdims=True), out=out)
