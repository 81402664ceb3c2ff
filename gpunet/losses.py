"""Losses at the network output, and the gradient they start the backward pass with.

Both return the mean loss over the batch and ``delta_L``, the gradient with respect to the
output layer's pre-activation ``z_L`` (N, K), which is where the recursion of seed 003
("Recursive local gradients") starts:

- ``cross_entropy`` with a softmax output: ``delta_L = (softmax(z) - e(y)) / N``, the
  ``f(x) - e(y)`` of seed 000, computed from the logits in one fused op.
- ``mse``: ``L = 1/(2N) sum (a - y)^2`` (seed 003), ``delta_L = ((a - y) / N) * f'(z)``.

With per-example weights each example's term is scaled (``row_scale_from_weights``).
"""
from __future__ import annotations

__all__ = ["CrossEntropy", "MeanSquaredError", "LOSSES", "get_loss", "row_scale_from_weights"]


def row_scale_from_weights(w, total=None):
    """The ``row_scale`` the losses take, ``w * N / sum(w)``, from per-example weights w
    (N,), host or device (``total``: their sum, when the caller has it): the batch's mean
    loss becomes ``sum(w l) / sum(w)``; unit weights give exactly 1. A batch whose weights
    are all zero gets zeros (it adds nothing), without reading the sum back."""
    if total is None:
        total = w.sum()
    return w * (w.shape[0] / (total + (total == 0)))   # 0 / 1 rather than 0 / 0


class CrossEntropy:
    name = "cross_entropy"
    is_classifier = True
    # the output layer keeps raw logits during training; softmax is folded into the loss
    needs_output_activation = False

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None):
        """out: logits (N, K); targets: int labels (N,) or one-hot (N, K). Writes delta.
        ``row_scale`` (N,): per-example factors (sample weights, see NumpyBackend)."""
        if targets.ndim == 1:
            return backend.softmax_xent(out, targets, delta, row_scale)
        return backend.softmax_xent_onehot(out, targets, delta, row_scale)


class MeanSquaredError:
    name = "mse"
    is_classifier = False
    needs_output_activation = True

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None):
        """out: activated output a (N, K); targets (N, K). Writes delta."""
        return backend.mse_grad(out, targets, out_act, delta, row_scale)


LOSSES = {"cross_entropy": CrossEntropy, "mse": MeanSquaredError}


def get_loss(name):
    if not isinstance(name, str):
        raise TypeError(f"loss must be a name, got {type(name).__name__}")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]()
