"""Finite-difference check of ``MLP.loss_and_grad``.

Central differences ``(L(theta + h e_i) - L(theta - h e_i)) / 2h`` in float64 on a float64
copy of the network, compared entry by entry with the analytic gradient.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .backend import to_numpy
from .mlp import MLP      # for the annotation (the check itself takes any object with MLP's interface)
from .validation import check_int, check_real

__all__ = ["gradcheck"]


def gradcheck(net: MLP, X: ArrayLike, y: ArrayLike, eps: float = 1e-5, max_params: int | None = None,
              seed: int | None = 0, atol: float = 1e-7) -> float:
    """Worst relative error ``|g - g_fd| / max(|g| + |g_fd|, atol)`` over the checked entries.

    The check runs on a float64 copy of ``net`` (same architecture and parameters) and
    leaves ``net`` unchanged. A correct gradient scores ~1e-6 or less; a wrong one ~1e-2 or
    more. A pre-activation within ``eps`` of a ReLU kink can inflate single entries.

    Parameters
    ----------
    net : MLP
        The model whose ``loss_and_grad`` is checked.
    X : array-like of shape (N, n_0)
        Inputs.
    y : array-like
        Targets, as ``net.loss`` takes them.
    eps : float, default 1e-5
        The step h, near the float64 optimum (machine epsilon to the 1/3), where truncation
        and rounding errors of the difference quotient are both ~1e-11.
    max_params : int or None, default None
        Check a random subset of that many entries; None checks every parameter (two
        forward passes each).
    seed : int or None, default 0
        Seeds the subset.
    atol : float, default 1e-7
        Keeps entries whose true value is below the noise from counting as large relative
        errors.

    Returns
    -------
    float
        The worst relative error.

    Raises
    ------
    TypeError
        When ``net`` is not a ``gpunet.MLP`` (or an argument has the wrong type).
    ValueError
        For an argument out of range, or X and y the model does not take.
    """
    eps = check_real("eps", eps, low=0.0, low_open=True)
    atol = check_real("atol", atol, low=0.0, low_open=True)
    if max_params is not None:
        max_params = check_int("max_params", max_params, low=1)

    if not all(hasattr(net, name) for name in ("copy", "features", "targets", "loss_and_grad_into")):
        raise TypeError(f"gradcheck checks a gpunet.MLP, got {type(net).__name__}")
    probe = net.copy(dtype="float64")
    x = probe.features(X)
    targets = probe.targets(y, x.shape[0])

    ws = probe.workspace(x.shape[0])
    probe.loss_and_grad_into(x, targets, ws)
    analytic = to_numpy(ws.flat_grads)

    theta = probe.flat_params
    if max_params is None or max_params >= probe.n_params:
        indices = np.arange(probe.n_params)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(probe.n_params, max_params, replace=False))
    numeric = np.empty(len(indices))
    for k, i in enumerate(indices):
        i = int(i)
        saved = float(theta[i])
        theta[i] = saved + eps
        up = float(probe.evaluate_loss(x, targets))
        theta[i] = saved - eps
        down = float(probe.evaluate_loss(x, targets))
        theta[i] = saved
        numeric[k] = (up - down) / (2 * eps)
    a = analytic[indices]
    return float(np.max(np.abs(a - numeric) / np.maximum(np.abs(a) + np.abs(numeric), atol)))
