"""Finite-difference check of ``MLP.loss_and_grad``.

Central differences ``(L(theta + h e_i) - L(theta - h e_i)) / 2h`` in float64 on a float64
copy of the network, compared entry by entry with the analytic gradient.
"""
from __future__ import annotations

import numpy as np

from .validation import check_int, check_real

__all__ = ["gradcheck"]


def gradcheck(net, X, y, eps=1e-5, max_params=None, seed=0, atol=1e-7) -> float:
    """Worst relative error ``|g - g_fd| / max(|g| + |g_fd|, atol)`` over the checked entries.

    The check runs on a float64 copy of ``net`` (same architecture and parameters) and
    leaves ``net`` unchanged. ``max_params`` checks a random subset of that many entries
    (drawn with ``seed``); by default every parameter is checked (2 forward passes each).
    The default step ``eps`` = 1e-5 is near the float64 optimum (machine epsilon to the
    1/3), where truncation and rounding errors of the difference quotient are both ~1e-11.
    ``atol`` keeps entries whose true value is below that noise from counting as large
    relative errors. A correct gradient scores ~1e-6 or less; a wrong one ~1e-2 or more.
    A pre-activation within ``eps`` of a ReLU kink can inflate single entries.
    """
    from .mlp import MLP
    from .backend import to_numpy
    eps = check_real("eps", eps, low=0.0, low_open=True)
    atol = check_real("atol", atol, low=0.0, low_open=True)
    if max_params is not None:
        max_params = check_int("max_params", max_params, low=1)

    cfg = net.config()
    cfg["dtype"] = "float64"
    probe = MLP(**cfg)
    probe.set_flat_params(to_numpy(net.flat_params).astype(np.float64))
    x = probe._device_features(X)
    targets = probe._device_targets(probe._check_targets(y, x.shape[0]))

    probe._loss_and_grad_device(x, targets)
    analytic = to_numpy(probe.flat_grads).copy()

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
        up = float(probe._loss_device(x, targets))
        theta[i] = saved - eps
        down = float(probe._loss_device(x, targets))
        theta[i] = saved
        numeric[k] = (up - down) / (2 * eps)
    a = analytic[indices]
    return float(np.max(np.abs(a - numeric) / np.maximum(np.abs(a) + np.abs(numeric), atol)))
