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

from .metrics import labels_of, predicted_labels
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

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None, *, bias=None, hits=None):
        """Mean loss (0-d backend array) of the batch; writes delta_L into ``delta``.

        ``row_scale`` (N,): per-example factors (sample weights, see NumpyBackend). What a fit
        step adds: ``bias`` (K,), the output layer's bias, which the forward pass then leaves
        to the loss with ``out`` holding ``A W`` (the loss adds it in place, and applies the
        output activation where it does not fold it in, in its kernel where it has one, so
        ``out`` ends holding what the loss took); ``hits`` (N, k) uint8 of a classifier
        receives whether each of a row's predicted labels is right.
        """
        raise NotImplementedError

    def add_squared_errors(self, backend, out, targets, sums):
        """A regressor's running metric: ``sums`` (K,) float64 += the per-output squared
        error of the predictions made from ``out`` (what the loss takes)."""
        return backend.squared_error_sums(out, targets, sums)

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None) -> np.ndarray:
        """The targets checked on the host, in the form ``loss_and_delta`` takes."""
        raise NotImplementedError

    def activate(self, backend, out, out_act):
        """Inference: turn what the loss takes (logits, when folded) into outputs, in place."""
        if not self.needs_output_activation:
            backend.activate(out, out_act)
        return out

    def _hits(self, out, targets, hits):
        """``hits`` (N, k) <- whether each label predicted from the logits ``out`` is right."""
        right = predicted_labels(out, self.label_rule) == labels_of(targets, self.label_rule)
        hits[...] = right.reshape(hits.shape)


class CrossEntropy(Loss):
    name = "cross_entropy"
    is_classifier = True
    needs_output_activation = False
    required_output = "softmax"
    label_rule = "argmax"

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None, *, bias=None, hits=None):
        """out: logits (N, K); targets: int labels (N,) or one-hot (N, K). Writes delta;
        ``hits`` (N, 1)."""
        if targets.ndim == 1:      # the common case: bias and hits inside the fused kernel
            return backend.softmax_xent(out, targets, delta, row_scale, bias=bias,
                                        hits=None if hits is None else hits[:, 0])
        if bias is not None:
            out += bias
        loss = backend.softmax_xent_onehot(out, targets, delta, row_scale)
        if hits is not None:
            self._hits(out, targets, hits)
        return loss

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None):
        return check_labels(y, n_examples, n_outputs, name=name)


class BinaryCrossEntropy(Loss):
    name = "binary_cross_entropy"
    is_classifier = True
    needs_output_activation = False
    required_output = "sigmoid"
    label_rule = "threshold"

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None, *, bias=None, hits=None):
        """out: logits (N, K); targets (N, K) in [0, 1]. Writes delta = (s(z) - y) / N;
        ``hits`` (N, K)."""
        return backend.sigmoid_bce(out, targets, delta, row_scale, bias=bias, hits=hits)

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None):
        return check_binary_targets(y, n_examples, n_outputs, name=name)


class Poisson(Loss):
    name = "poisson"
    needs_output_activation = False
    required_output = "exp"

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None, *, bias=None, hits=None):
        """out: logits z = log(mean) (N, K); targets (N, K) >= 0. Writes delta = (exp(z) - y) / N."""
        return backend.poisson_exp(out, targets, delta, row_scale, bias=bias)

    def add_squared_errors(self, backend, out, targets, sums):
        return backend.squared_error_sums(out, targets, sums, exp_outputs=True)   # the mean exp(z)

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None):
        arr = check_targets(y, n_examples, n_outputs, name=name, dtype=dtype)
        if (arr < 0).any():
            raise ValueError(f"{name} holds {int((arr < 0).sum())} negative value(s); "
                             "the Poisson loss takes counts or rates >= 0")
        return arr


class MeanSquaredError(Loss):
    name = "mse"

    def loss_and_delta(self, backend, out, targets, out_act, delta, row_scale=None, *, bias=None, hits=None):
        """out: activated output a (N, K), or with ``bias`` the output layer's ``A W``;
        targets (N, K). Writes delta."""
        return backend.mse_grad(out, targets, out_act, delta, row_scale, bias=bias)

    def validate_targets(self, y, n_examples, n_outputs, name="y", dtype=None):
        return check_targets(y, n_examples, n_outputs, name=name, dtype=dtype)


LOSSES = {cls.name: cls for cls in (CrossEntropy, BinaryCrossEntropy, Poisson, MeanSquaredError)}


def get_loss(name):
    if not isinstance(name, str):
        raise TypeError(f"loss must be a name, got {type(name).__name__}")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]()
