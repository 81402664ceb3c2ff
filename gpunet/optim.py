"""Optimizers: in-place updates of the flat parameter buffer.

Each optimizer keeps its state (e.g. the momentum velocity) as flat buffers shaped like the
parameters, and calls one backend op for the whole update, which the GPU backend fuses
into a single kernel launch.

The hyper-parameters of an update travel as one frozen value (``SGDHyper``, ``AdamHyper``,
``RMSpropHyper``), checked once when it is made, from the optimizer through the backend op
to the kernel launcher: no layer spells the list out again. The coupled ``weight_decay`` in
it is the total L2 lambda of the update: the model's (part of its loss) plus the optimizer's
own coupled decay.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass

import numpy as np

from .validation import check_real

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "SGDHyper", "AdamHyper", "RMSpropHyper",
           "OPTIMIZERS", "make_optimizer", "StepTable", "STEP_TABLE_WIDTH"]


def _rate(name, value):
    return check_real(name, value, low=0.0, low_open=True)


def _fraction(name, value):
    """A decay or momentum factor in [0, 1)."""
    return check_real(name, value, low=0.0, high=1.0, high_open=True)


def _non_negative(name, value):
    return check_real(name, value, low=0.0)


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


class _Hyper:
    """Checks and normalises the fields of a frozen hyper-parameter value when it is made."""

    _checks: dict = {}

    def __post_init__(self):
        for name, check in self._checks.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))

    def with_update(self, lr=None, model_weight_decay=0.0):
        """This value for one step: ``lr`` from a schedule (None keeps it) and the model's L2
        lambda added to the coupled ``weight_decay``."""
        if lr is None and not model_weight_decay:
            return self
        return dataclasses.replace(self, lr=self.lr if lr is None else lr,
                                   weight_decay=self.weight_decay + float(model_weight_decay))


@dataclass(frozen=True)
class SGDHyper(_Hyper):
    """One SGD update: ``lr`` (>= 0: a schedule may pass 0), ``momentum`` in [0, 1),
    ``nesterov`` (needs momentum > 0) and the coupled L2 ``weight_decay`` on the weights."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    _checks = {"lr": _non_negative, "momentum": _fraction, "nesterov": _flag, "weight_decay": _non_negative}

    def __post_init__(self):
        super().__post_init__()
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")


@dataclass(frozen=True)
class AdamHyper(_Hyper):
    """One Adam/AdamW update: ``lr``, ``beta1``, ``beta2`` in [0, 1), ``eps`` > 0, the coupled L2
    ``weight_decay`` and AdamW's ``decoupled_weight_decay`` (a shrink of the weights)."""

    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: float = 0.0
    _checks = {"lr": _non_negative, "beta1": _fraction, "beta2": _fraction, "eps": _rate,
               "weight_decay": _non_negative, "decoupled_weight_decay": _non_negative}

    def step_scalars(self, t: int) -> tuple:
        """The update's scalars at step t (1-based), in double: the step size
        ``lr / (1 - beta1^t)``, ``sqrt(1 - beta2^t)`` and the decay factor
        ``1 - lr * decoupled_weight_decay``; the kernel rounds each once to its type."""
        return (self.lr / (1.0 - self.beta1 ** t), math.sqrt(1.0 - self.beta2 ** t),
                1.0 - self.lr * self.decoupled_weight_decay)


@dataclass(frozen=True)
class RMSpropHyper(_Hyper):
    """One RMSprop update: ``lr``, ``alpha`` in [0, 1), ``eps`` > 0, ``momentum`` in [0, 1),
    ``centered`` and the coupled L2 ``weight_decay``."""

    lr: float
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False
    weight_decay: float = 0.0
    _checks = {"lr": _non_negative, "alpha": _fraction, "eps": _rate, "momentum": _fraction, "centered": _flag,
               "weight_decay": _non_negative}


STEP_TABLE_WIDTH = 4     # scalars per step row (kernels/optim.cu: GN_STEP_TABLE_WIDTH)


class StepTable:
    """The scalars that change between the steps of an epoch a CUDA graph replays (its
    learning rates, Adam's bias corrections), one row per step in device memory, and
    ``step``, the device counter of the step running, which the graph's last launch advances:
    a replayed launch cannot take new arguments, so the update kernels read these instead.
    ``load`` writes an epoch's rows (``Optimizer.table_rows``) and zeroes the counter."""

    def __init__(self, backend, capacity: int, dtype):
        self.backend = backend
        self.rows = backend.zeros((max(1, capacity), STEP_TABLE_WIDTH), dtype)
        self.step = backend.zeros((), np.int64)

    def load(self, rows: np.ndarray):
        if rows.shape[0] > self.rows.shape[0] or rows.shape[1] != STEP_TABLE_WIDTH:
            raise ValueError(f"{rows.shape[0]} rows of {rows.shape[1]} for a table of shape {self.rows.shape}")
        self.backend.copy_to_device(self.rows[:rows.shape[0]], rows.astype(self.rows.dtype))
        self.step.fill(0)


class Optimizer:
    """Base class. ``hyper`` is the frozen hyper-parameter value; ``lr`` reads and replaces its
    learning rate (schedules and the scikit-learn estimators set it).

    An optimizer that fit may run inside a CUDA graph (``supports_step_tables``) also gives
    ``table_rows(lrs, model_weight_decay)``, its per-step scalars for the next steps with
    learning rates ``lrs``, takes ``step(..., step_table=...)`` to read them from the device,
    and ``advance(steps)`` accounts for steps run that way."""

    name = "optimizer"
    hyper: _Hyper
    supports_step_tables = False

    @property
    def lr(self) -> float:
        return self.hyper.lr

    @lr.setter
    def lr(self, value):
        self.hyper = dataclasses.replace(self.hyper, lr=value)

    def _update_hyper(self, lr, model_weight_decay):
        """The hyper value of one step, kept while (lr, model lambda) stay the same, so a step
        makes no new object in the common case."""
        key = (self.hyper, lr, model_weight_decay)
        if getattr(self, "_step_key", None) != key:
            self._step_key = key
            self._step_hyper = self.hyper.with_update(lr, model_weight_decay)
        return self._step_hyper

    def reset(self):
        """Forget the state (moments, velocity, step count)."""

    def discard_skipped_steps(self):
        """Take the steps the backend skipped on the device (after a non-finite gradient)
        back out of any step count; called by ``fit`` when it reports the divergence."""

    def table_rows(self, lrs, model_weight_decay=0.0) -> np.ndarray:
        """(len(lrs), STEP_TABLE_WIDTH) float64: column 0 the learning rate of each step."""
        rows = np.zeros((len(lrs), STEP_TABLE_WIDTH))
        rows[:, 0] = [self._update_hyper(lr, model_weight_decay).lr for lr in lrs]
        return rows

    def advance(self, steps: int):
        """Account for ``steps`` updates run from a step table (nothing to count here)."""

    def __repr__(self):
        fields = ", ".join(f"{f.name}={getattr(self.hyper, f.name)!r}" for f in dataclasses.fields(self.hyper))
        return f"{type(self).__name__}({fields})"


class SGD(Optimizer):
    """Stochastic gradient descent (seed 004: theta <- theta + alpha * Delta), with optional
    momentum and Nesterov momentum (PyTorch's formulation)::

        g = clip_scale * grad + weight_decay * theta    (weights only)
        v = momentum * v + g
        theta -= lr * (g + momentum * v  if nesterov else  v)
    """

    name = "sgd"
    supports_step_tables = True

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
        self.hyper = SGDHyper(lr=_rate("lr", lr), momentum=momentum, nesterov=nesterov)
        self.velocity = None

    @property
    def momentum(self) -> float:
        return self.hyper.momentum

    @property
    def nesterov(self) -> bool:
        return self.hyper.nesterov

    def reset(self):
        self.velocity = None

    def step(self, backend, params, grads, *, weight_decay=0.0, n_decay, scale=1.0, skip=False, lr=None,
             step_table=None):
        """Update ``params`` (flat, length P) in place from ``grads`` (flat, length P).

        ``weight_decay`` is the model's L2 lambda, ``n_decay`` the length of the weights
        prefix, ``lr`` overrides the optimizer's rate for this step (schedules); ``scale``
        (clipping) and ``skip`` as the backend's update ops take them; ``step_table`` (a
        ``StepTable`` of ``table_rows``): the learning rate is read from its current row.
        """
        if self.momentum:
            self.velocity = _fresh_or_kept(backend, self.velocity, params)
        backend.sgd_update(params, grads, self.velocity, self._update_hyper(lr, weight_decay),
                           n_decay=n_decay, scale=scale, skip=skip, step_table=step_table)


def _fresh_or_kept(backend, buffer, params):
    """``buffer`` while it still matches ``params`` (backend, shape, dtype), else zeros like it."""
    if (buffer is None or not isinstance(buffer, backend.xp.ndarray)
            or buffer.shape != params.shape or buffer.dtype != params.dtype):
        return backend.zeros(params.shape, params.dtype)
    return buffer


def _check_betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return betas[0], betas[1]


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam``, bias-corrected with the step count::

        g = clip_scale * grad + (model L2 + weight_decay) * theta      (weights only)
        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
        theta -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    ``weight_decay`` here is coupled (an L2 term folded into the gradient, so it is scaled by
    the adaptive step like any gradient); ``AdamW`` decouples it. ``eps`` must be positive
    (with 0 a gradient entry that was always 0 would divide 0 by 0). State: ``exp_avg`` (m),
    ``exp_avg_sq`` (v) shaped like the flat parameters, and ``step_count`` t. Steps that the
    fit loop skips on the GPU (from a non-finite gradient to the TrainingDiverged error at
    the end of that epoch) are taken back out of t by ``discard_skipped_steps``.
    """

    name = "adam"
    supports_step_tables = True
    _decoupled = False

    def __init__(self, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        beta1, beta2 = _check_betas(betas)
        weight_decay = _non_negative("weight_decay", weight_decay)
        self.hyper = AdamHyper(lr=_rate("lr", lr), beta1=beta1, beta2=beta2, eps=eps,
                               weight_decay=0.0 if self._decoupled else weight_decay,
                               decoupled_weight_decay=weight_decay if self._decoupled else 0.0)
        self.reset()

    @property
    def betas(self) -> tuple[float, float]:
        return (self.hyper.beta1, self.hyper.beta2)

    @property
    def eps(self) -> float:
        return self.hyper.eps

    @property
    def weight_decay(self) -> float:
        """The optimizer's own decay: decoupled for AdamW, coupled for Adam."""
        return self.hyper.decoupled_weight_decay if self._decoupled else self.hyper.weight_decay

    def reset(self):
        self.exp_avg = self.exp_avg_sq = None
        self.step_count = 0
        self._skipped = None     # device counter of skipped steps (GPU only)

    def __repr__(self):
        return (f"{type(self).__name__}(lr={self.lr:g}, betas={self.betas}, eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g})")

    def step(self, backend, params, grads, *, weight_decay=0.0, n_decay, scale=1.0, skip=False, lr=None,
             step_table=None):
        """Update ``params`` (flat, length P) in place from ``grads`` (flat, length P); the
        arguments as for ``SGD.step``. With a ``step_table`` the step count is the table's
        (``advance`` adds the steps run from it afterwards)."""
        exp_avg = _fresh_or_kept(backend, self.exp_avg, params)
        if exp_avg is not self.exp_avg:          # new or changed parameters: start over
            self.exp_avg = exp_avg
            self.exp_avg_sq = backend.zeros(params.shape, params.dtype)
            self.step_count = 0
        if step_table is None:
            self.step_count += 1
        skipped = None
        if not isinstance(skip, (bool, int)) and not backend.host_reads_are_free:
            # a device flag: the update counts a skipped step there (read back only when fit
            # reports the divergence, see discard_skipped_steps)
            if self._skipped is None:
                self._skipped = backend.zeros((), "int64")
            skipped = self._skipped
        elif skip:
            self.step_count -= 1
        backend.adam_update(params, grads, self.exp_avg, self.exp_avg_sq, self._update_hyper(lr, weight_decay),
                            step=max(self.step_count, 1), n_decay=n_decay, scale=scale, skip=skip, skipped=skipped,
                            step_table=step_table)

    def table_rows(self, lrs, model_weight_decay=0.0) -> np.ndarray:
        """Rows for the next len(lrs) steps, t = step_count + 1, ...: the step size, sqrt of
        the second bias correction and the decay factor (``AdamHyper.step_scalars``)."""
        rows = np.zeros((len(lrs), STEP_TABLE_WIDTH))
        for i, lr in enumerate(lrs):
            rows[i, :3] = self._update_hyper(lr, model_weight_decay).step_scalars(self.step_count + 1 + i)
        return rows

    def advance(self, steps: int):
        self.step_count += int(steps)

    def discard_skipped_steps(self):
        if self._skipped is not None:
            self.step_count -= int(self._skipped)
            self._skipped[...] = 0


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


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e) as ``torch.optim.RMSprop``::

        g = clip_scale * grad + (model L2 + weight_decay) * theta      (weights only)
        s = alpha s + (1 - alpha) g^2
        d = sqrt(s - a^2) + eps with a = alpha a + (1 - alpha) g   if centered
            sqrt(s) + eps                                           otherwise
        b = momentum b + g / d,  theta -= lr b      (theta -= lr g / d without momentum)
    """

    name = "rmsprop"
    supports_step_tables = True

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False):
        self.hyper = RMSpropHyper(lr=_rate("lr", lr), alpha=alpha, eps=eps, momentum=momentum, centered=centered,
                                  weight_decay=weight_decay)
        self.reset()

    alpha = property(lambda self: self.hyper.alpha)
    eps = property(lambda self: self.hyper.eps)
    weight_decay = property(lambda self: self.hyper.weight_decay)
    momentum = property(lambda self: self.hyper.momentum)
    centered = property(lambda self: self.hyper.centered)

    def reset(self):
        self.square_avg = self.grad_avg = self.momentum_buf = None

    def step(self, backend, params, grads, *, weight_decay=0.0, n_decay, scale=1.0, skip=False, lr=None,
             step_table=None):
        """Update ``params`` (flat, length P) in place from ``grads`` (flat, length P); the
        arguments as for ``SGD.step``."""
        square_avg = _fresh_or_kept(backend, self.square_avg, params)
        if square_avg is not self.square_avg:
            self.square_avg = square_avg
            self.grad_avg = backend.zeros(params.shape, params.dtype) if self.centered else None
            self.momentum_buf = backend.zeros(params.shape, params.dtype) if self.momentum else None
        backend.rmsprop_update(params, grads, self.square_avg, self.grad_avg, self.momentum_buf,
                               self._update_hyper(lr, weight_decay), n_decay=n_decay, scale=scale, skip=skip,
                               step_table=step_table)


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
