"""Optimizers: in-place updates of the flat parameter buffer.

Each optimizer keeps its state (e.g. the momentum velocity) as flat buffers shaped like the
parameters, and calls one backend op for the whole update, which the GPU backend fuses
into a single kernel launch.
"""
from __future__ import annotations

import inspect

from .validation import check_real

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "OPTIMIZERS", "make_optimizer"]


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


def _fresh_or_kept(backend, buffer, params):
    """``buffer`` while it still matches ``params`` (backend, shape, dtype), else zeros like it."""
    if (buffer is None or not isinstance(buffer, backend.xp.ndarray)
            or buffer.shape != params.shape or buffer.dtype != params.dtype):
        return backend.zeros(params.shape, params.dtype)
    return buffer


def _check_betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (check_real("beta1", betas[0], low=0.0, high=1.0, high_open=True),
            check_real("beta2", betas[1], low=0.0, high=1.0, high_open=True))


class Adam:
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam``, bias-corrected with the step count::

        g = clip_scale * grad + (model L2 + weight_decay) * theta      (weights only)
        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
        theta -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    ``weight_decay`` here is coupled (an L2 term folded into the gradient, so it is scaled by
    the adaptive step like any gradient); ``AdamW`` decouples it. State: ``exp_avg`` (m),
    ``exp_avg_sq`` (v) shaped like the flat parameters, and ``step_count`` t. Steps that the
    fit loop skips on the GPU (from a non-finite gradient to the TrainingDiverged error at
    the end of that epoch) are taken back out of t when the error is raised.
    """

    name = "adam"
    _decoupled = False

    def __init__(self, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        self.lr = check_real("lr", lr, low=0.0, low_open=True)
        self.betas = _check_betas(betas)
        self.eps = check_real("eps", eps, low=0.0)
        self.weight_decay = check_real("weight_decay", weight_decay, low=0.0)
        self.reset()

    def reset(self):
        self.exp_avg = self.exp_avg_sq = None
        self.step_count = 0

    def __repr__(self):
        return (f"{type(self).__name__}(lr={self.lr:g}, betas={self.betas}, eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g})")

    def step(self, backend, params, grads, *, weight_decay=0.0, n_decay, scale=1.0, skip=False, lr=None):
        """Update ``params`` (flat, length P) in place from ``grads`` (flat, length P).

        ``weight_decay`` is the model's L2 lambda (always coupled: it is part of the loss),
        ``n_decay`` the length of the weights prefix, ``lr`` overrides ``self.lr`` (schedules).
        """
        exp_avg = _fresh_or_kept(backend, self.exp_avg, params)
        if exp_avg is not self.exp_avg:          # new or changed parameters: start over
            self.exp_avg = exp_avg
            self.exp_avg_sq = backend.zeros(params.shape, params.dtype)
            self.step_count = 0
        self.step_count += 1
        coupled, decoupled = float(weight_decay), 0.0
        if self._decoupled:
            decoupled = self.weight_decay
        else:
            coupled += self.weight_decay
        backend.adam_update(params, grads, self.exp_avg, self.exp_avg_sq,
                            lr=self.lr if lr is None else lr, beta1=self.betas[0], beta2=self.betas[1],
                            eps=self.eps, step=self.step_count, weight_decay=coupled,
                            decoupled_weight_decay=decoupled, n_decay=n_decay, scale=scale, skip=skip)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019) as ``torch.optim.AdamW``: Adam whose ``weight_decay``
    shrinks the weights directly, ``theta *= 1 - lr * weight_decay``, before the Adam step,
    instead of entering the gradient. Biases are never decayed (the flat buffer's weights
    prefix only). A model's own L2 ``weight_decay`` still enters the gradient, since it is
    part of the loss."""

    name = "adamw"
    _decoupled = True

    def __init__(self, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop:
    """RMSprop (Hinton's lecture 6e) as ``torch.optim.RMSprop``::

        g = clip_scale * grad + (model L2 + weight_decay) * theta      (weights only)
        s = alpha s + (1 - alpha) g^2
        d = sqrt(s - a^2) + eps with a = alpha a + (1 - alpha) g   if centered
            sqrt(s) + eps                                           otherwise
        b = momentum b + g / d,  theta -= lr b      (theta -= lr g / d without momentum)
    """

    name = "rmsprop"

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False):
        self.lr = check_real("lr", lr, low=0.0, low_open=True)
        self.alpha = check_real("alpha", alpha, low=0.0, high=1.0, high_open=True)
        self.eps = check_real("eps", eps, low=0.0)
        self.weight_decay = check_real("weight_decay", weight_decay, low=0.0)
        self.momentum = check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
        if not isinstance(centered, bool):
            raise TypeError(f"centered must be a bool, got {type(centered).__name__}")
        self.centered = centered
        self.reset()

    def reset(self):
        self.square_avg = self.grad_avg = self.momentum_buf = None

    def __repr__(self):
        return (f"RMSprop(lr={self.lr:g}, alpha={self.alpha:g}, eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g}, momentum={self.momentum:g}, centered={self.centered})")

    def step(self, backend, params, grads, *, weight_decay=0.0, n_decay, scale=1.0, skip=False, lr=None):
        """Update ``params`` (flat, length P) in place from ``grads`` (flat, length P)."""
        square_avg = _fresh_or_kept(backend, self.square_avg, params)
        if square_avg is not self.square_avg:
            self.square_avg = square_avg
            self.grad_avg = backend.zeros(params.shape, params.dtype) if self.centered else None
            self.momentum_buf = backend.zeros(params.shape, params.dtype) if self.momentum else None
        backend.rmsprop_update(params, grads, self.square_avg, self.grad_avg, self.momentum_buf,
                               lr=self.lr if lr is None else lr, alpha=self.alpha, eps=self.eps,
                               momentum=self.momentum, centered=self.centered,
                               weight_decay=float(weight_decay) + self.weight_decay,
                               n_decay=n_decay, scale=scale, skip=skip)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def make_optimizer(name, lr=None, **options):
    """An optimizer by name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``, any case) with
    learning rate ``lr`` (None: that optimizer's default) and its own keyword options."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer must be a name or an optimizer object, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[key]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"optimizer {key!r} takes no option(s) {', '.join(unknown)}; "
                        f"it takes {', '.join(sorted(accepted))}")
    if lr is not None:
        options["lr"] = lr
    return cls(**options)
