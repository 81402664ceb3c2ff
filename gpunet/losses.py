"""Losses at the network output, and the gradient they start the backward pass with.

Each returns the mean loss over the batch and ``delta_L``, the gradient with respect to the
output layer's pre-activation ``z_L`` (N, K), which is where the recursion of seed 003
("Recursive local gradients") starts:

- ``cross_entropy`` with a softmax output: ``delta_L = (softmax(z) - e(y)) / N``, the
  ``f(x) - e(y)`` of seed 000, computed from the logits in one fused op.
- ``binary_cross_entropy`` with a (plain) sigmoid output, for binary and multilabel
  classification (K independent yes/no outputs): ``L = -(1/N) sum_n sum_k [y log s(z) +
  (1 - y) log(1 - s(z))]``, ``delta_L = (s(z) - y) / N``.
- ``poisson`` with an exp output (a Poisson regressor's mean): half the Poisson deviance,
  ``L = (1/N) sum_n sum_k [exp(z) - y z + y log y - y]`` (zero at a perfect fit),
  ``delta_L = (exp(z) - y) / N``.
- ``mse``: ``L = 1/(2N) sum (a - y)^2`` (seed 003), ``delta_L = ((a - y) / N) * f'(z)``.

The first three pair a loss with its canonical output activation, so the gradient at the
logits is ``f(z) - y`` and the activation is folded into the loss (the output layer keeps
the logits during training). With per-example weights each example's term is scaled
(``row_scale_from_weights``).

A loss also says what its targets are (``validate_targets``), how a classifier's outputs
become labels (``label_rule``: "argmax" or "threshold") and how inference turns the logits
into outputs (``activate``).
"""
from __future__ import annotations

import numpy as np

from .validation import check_binary_targets, check_labels, check_targets

__all__ = ["CrossEntropy", "BinaryCrossEntropy", "Poisson", "MeanSquaredError", "LOSSES", "get_loss",
           "row_scale_from_weights"]


def row_scale_from_weights(w, total=None):
    """The ``row_scale`` the losses take, ``w * N / sum(w)``, from per-example weights w
    (N,), host or device (``total``: their sum, when the caller has it): the batch's mean
    loss becomes ``sum(w l) / sum(w)``; unit weights give exactly 1. A batch whose weights
    are all zero gets zeros (it adds nothing), without reading the sum back."""
    if total is None:
        total = w.sum()
    return w * (w.shape[0] / (total + (total == 0)))   # 0 / 1 rather than 0 / 0


class Loss:
    """Base class: the registry entry of a loss (see the module docstring)."""

    name = "loss"
    is_classifier = False
    needs_output_activation = True    # False: the output layer keeps logits, the loss folds f in
    required_output: str | None = None   # the output activation the loss needs, by name
    label_rule: str | None = None     # classifiers: "argmax" (one class) or "threshold" (K yes/no)

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None):
        """Mean loss (0-d backend array) of the batch; writes delta_L into ``delta``."""
        raise NotImplementedError

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None) -> np.ndarray:
        """The targets checked on the host, in the form ``loss_and_delta`` takes."""
        raise NotImplementedError

    def activate(self, backend, out, out_act):
        """Inference: turn what the loss takes (logits, when folded) into outputs, in place."""
        if not self.needs_output_activation:
            backend.activate(out, out_act)
        return out


class CrossEntropy(Loss):
    name = "cross_entropy"
    is_classifier = True
    needs_output_activation = False
    required_output = "softmax"
    label_rule = "argmax"

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None):
        """out: logits (N, K); targets: int labels (N,) or one-hot (N, K). Writes delta.
        ``row_scale`` (N,): per-example factors (sample weights, see NumpyBackend)."""
        if targets.ndim == 1:
            return backend.softmax_xent(out, targets, delta, row_scale)
        return backend.softmax_xent_onehot(out, targets, delta, row_scale)

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None):
        return check_labels(y, n_examples, n_outputs, name=name)


class BinaryCrossEntropy(Loss):
    name = "binary_cross_entropy"
    is_classifier = True
    needs_output_activation = False
    required_output = "sigmoid"
    label_rule = "threshold"

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None):
        """out: logits (N, K); targets (N, K) in [0, 1]. Writes delta = (s(z) - y) / N."""
        return backend.sigmoid_bce(out, targets, delta, row_scale)

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None):
        return check_binary_targets(y, n_examples, n_outputs, name=name)


class Poisson(Loss):
    name = "poisson"
    needs_output_activation = False
    required_output = "exp"

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None):
        """out: logits z = log(mean) (N, K); targets (N, K) >= 0. Writes delta = (exp(z) - y) / N."""
        return backend.poisson_exp(out, targets, delta, row_scale)

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None):
        arr = check_targets(y, n_examples, n_outputs, name=name, dtype=dtype)
        if (arr < 0).any():
            raise ValueError(f"{name} holds {int((arr < 0).sum())} negative value(s); "
                             "the Poisson loss takes counts or rates >= 0")
        return arr


class MeanSquaredError(Loss):
    name = "mse"

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None):
        """out: activated output a (N, K); targets (N, K). Writes delta."""
        return backend.mse_grad(out, targets, out_act, delta, row_scale)

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None):
        return check_targets(y, n_examples, n_outputs, name=name, dtype=dtype)


LOSSES = {cls.name: cls for cls in (CrossEntropy, BinaryCrossEntropy, Poisson, MeanSquaredError)}


def get_loss(name):
    if not isinstance(name, str):
        raise TypeError(f"loss must be a name, got {type(name).__name__}")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]()
