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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .numpy_backend import NumpyBackend
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
    """Base class of the optimizers: each ``step`` updates the flat parameters in place.

    ``hyper`` is the frozen hyper-parameter value; ``lr`` reads and replaces its learning
    rate (schedules and the scikit-learn estimators set it).

    An optimizer that fit may run inside a CUDA graph (``supports_step_tables``) also gives
    ``table_rows(lrs, model_weight_decay)``, its per-step scalars for the next steps with
    learning rates ``lrs``, takes ``step(..., step_table=...)`` to read them from the device,
    and ``advance(steps)`` accounts for steps run that way."""

    name = "optimizer"
    hyper: _Hyper
    supports_step_tables = False

    @property
    def lr(self) -> float:
        """The learning rate; setting it makes a new ``hyper`` value (checked)."""
        return self.hyper.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.hyper = dataclasses.replace(self.hyper, lr=value)

    def _update_hyper(self, lr, model_weight_decay):
        """The hyper value of one step, kept while (lr, model lambda) stay the same, so a step
        makes no new object in the common case."""
        key = (self.hyper, lr, model_weight_decay)
        if getattr(self, "_step_key", None) != key:
            self._step_key = key
            self._step_hyper = self.hyper.with_update(lr, model_weight_decay)
        return self._step_hyper

    def reset(self) -> None:
        """Forget the state (moments, velocity, step count)."""

    def discard_skipped_steps(self) -> None:
        """Take the steps the backend skipped on the device back out of any step count.

        Steps are skipped after a non-finite gradient; ``fit`` calls this when it reports
        the divergence.
        """

    def table_rows(self, lrs: Sequence[float], model_weight_decay: float = 0.0) -> np.ndarray:
        """The per-step scalars of the next ``len(lrs)`` steps, for a ``StepTable``.

        Parameters
        ----------
        lrs : sequence of float
            The learning rate of each step.
        model_weight_decay : float, default 0.0
            The model's L2 lambda, added to the coupled weight decay.

        Returns
        -------
        numpy.ndarray of shape (len(lrs), STEP_TABLE_WIDTH)
            Float64 rows; here column 0 is each step's learning rate.
        """
        rows = np.zeros((len(lrs), STEP_TABLE_WIDTH))
        rows[:, 0] = [self._update_hyper(lr, model_weight_decay).lr for lr in lrs]
        return rows

    def advance(self, steps: int) -> None:
        """Account for ``steps`` updates run from a step table (nothing to count here).

        Parameters
        ----------
        steps : int
            Updates run.
        """

    # What a checkpoint keeps: the flat buffers (None until the first step makes them) and
    # the integer counters that are this optimizer's state.
    state_buffers: tuple = ()
    state_counters: tuple = ()

    def state(self, to_host: Callable[[Any], np.ndarray]) -> dict:
        """The optimizer's state as host values, for a checkpoint.

        Parameters
        ----------
        to_host : callable
            Copies a backend array to a NumPy array (``gpunet.to_numpy``, say).

        Returns
        -------
        dict
            ``{"kind": class name, "counters": {name: int}, "buffers": {name: array or None}}``,
            None for a buffer not made yet (before the first step).
        """
        buffers = {}
        for name in self.state_buffers:
            value = getattr(self, name)
            buffers[name] = None if value is None else to_host(value)
        return {"kind": type(self).__name__, "counters": {n: int(getattr(self, n)) for n in self.state_counters},
                "buffers": buffers}

    def load_state(self, state: dict, backend: NumpyBackend, params: Any) -> None:
        """Take the ``state`` of an optimizer of the same kind; the hyper-parameters stay this one's.

        Parameters
        ----------
        state : dict
            What ``state`` returned.
        backend : NumpyBackend
            Where the buffers go.
        params : ndarray of shape (P,)
            The model's flat parameters on ``backend``, which the buffers must match.

        Raises
        ------
        ValueError
            When ``state`` is another kind of optimizer's, or a buffer's shape or dtype is not
            the parameters'.
        """
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"the checkpoint's optimizer is {state.get('kind')}, this fit's is {type(self).__name__}")
        for name in self.state_buffers:
            value = state["buffers"].get(name)
            if value is not None and (value.shape != params.shape or value.dtype != params.dtype):
                raise ValueError(f"the checkpoint's optimizer buffer {name} has shape {value.shape} and dtype "
                                 f"{value.dtype}; the model's parameters have {params.shape} and {params.dtype}")
        self.reset()
        for name in self.state_buffers:
            value = state["buffers"].get(name)
            setattr(self, name, None if value is None else backend.asarray(value, dtype=params.dtype))
        for name in self.state_counters:
            setattr(self, name, int(state["counters"][name]))

    def __repr__(self):
        fields = ", ".join(f"{f.name}={getattr(self.hyper, f.name)!r}" for f in dataclasses.fields(self.hyper))
        return f"{type(self).__name__}({fields})"


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum and Nesterov momentum.

    Seed 004's theta <- theta + alpha * Delta, in PyTorch's formulation of momentum::

        g = clip_scale * grad + weight_decay * theta    (weights only)
        v = momentum * v + g
        theta -= lr * (g + momentum * v  if nesterov else  v)

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, > 0.
    momentum : float, default 0.0
        In [0, 1).
    nesterov : bool, default False
        Nesterov momentum (needs momentum > 0).

    Raises
    ------
    TypeError, ValueError
        For a value of the wrong type or out of its range.
    """

    name = "sgd"
    supports_step_tables = True

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False) -> None:
        self.hyper = SGDHyper(lr=_rate("lr", lr), momentum=momentum, nesterov=nesterov)
        self.velocity = None

    @property
    def momentum(self) -> float:
        """The momentum factor."""
        return self.hyper.momentum

    @property
    def nesterov(self) -> bool:
        """Whether the momentum is Nesterov's."""
        return self.hyper.nesterov

    state_buffers = ("velocity",)

    def reset(self) -> None:
        self.velocity = None

    def step(self, backend: NumpyBackend, params: Any, grads: Any, *, weight_decay: float = 0.0, n_decay: int,
             scale: Any = 1.0, skip: Any = False, lr: float | None = None, step_table: StepTable | None = None) -> None:
        """Update ``params`` in place from ``grads``: one optimizer step.

        Parameters
        ----------
        backend : NumpyBackend
            The backend the arrays live on.
        params : ndarray of shape (P,)
            The flat parameters, updated in place.
        grads : ndarray of shape (P,)
            Their gradient.
        weight_decay : float, default 0.0
            The model's L2 lambda (added to the update's coupled decay).
        n_decay : int
            Length of the weights prefix of ``params`` (the decayed part).
        scale : float or 0-d ndarray, default 1.0
            Factor of the gradient (clipping), as the backend's update ops take it.
        skip : bool or 0-d ndarray, default False
            Make the step a no-op (a device flag after a non-finite gradient).
        lr : float or None, default None
            This step's learning rate (a schedule's); None: the optimizer's.
        step_table : StepTable or None, default None
            Read the step's scalars from the table's current row instead (a CUDA graph).
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
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam``, bias-corrected with the step count.

    The update::

        g = clip_scale * grad + (model L2 + weight_decay) * theta      (weights only)
        m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
        theta -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    ``weight_decay`` here is coupled (an L2 term folded into the gradient, so it is scaled by
    the adaptive step like any gradient); ``AdamW`` decouples it. ``eps`` must be positive
    (with 0 a gradient entry that was always 0 would divide 0 by 0). State: ``exp_avg`` (m),
    ``exp_avg_sq`` (v) shaped like the flat parameters, and ``step_count`` t. Steps that the
    fit loop skips on the GPU (from a non-finite gradient to the TrainingDiverged error at
    the end of that epoch) are taken back out of t by ``discard_skipped_steps``.

    Parameters
    ----------
    lr : float, default 0.001
        Learning rate, > 0.
    betas : tuple of (float, float), default (0.9, 0.999)
        The moments' decay rates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, > 0.
    weight_decay : float, default 0.0
        Coupled L2 lambda, >= 0.

    Raises
    ------
    TypeError
        When ``betas`` is not a pair (or a value has the wrong type).
    ValueError
        For a value out of its range.
    """

    name = "adam"
    supports_step_tables = True
    _decoupled = False

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        beta1, beta2 = _check_betas(betas)
        weight_decay = _non_negative("weight_decay", weight_decay)
        self.hyper = AdamHyper(lr=_rate("lr", lr), beta1=beta1, beta2=beta2, eps=eps,
                               weight_decay=0.0 if self._decoupled else weight_decay,
                               decoupled_weight_decay=weight_decay if self._decoupled else 0.0)
        self.reset()

    @property
    def betas(self) -> tuple[float, float]:
        """``(beta1, beta2)``, the moments' decay rates."""
        return (self.hyper.beta1, self.hyper.beta2)

    @property
    def eps(self) -> float:
        """The denominator's epsilon."""
        return self.hyper.eps

    @property
    def weight_decay(self) -> float:
        """The optimizer's own decay: decoupled for AdamW, coupled for Adam."""
        return self.hyper.decoupled_weight_decay if self._decoupled else self.hyper.weight_decay

    state_buffers = ("exp_avg", "exp_avg_sq")
    state_counters = ("step_count",)

    def reset(self) -> None:
        self.exp_avg = self.exp_avg_sq = None
        self.step_count = 0
        self._skipped = None     # device counter of skipped steps (GPU only)

    def __repr__(self):
        return (f"{type(self).__name__}(lr={self.lr:g}, betas={self.betas}, eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g})")

    def step(self, backend: NumpyBackend, params: Any, grads: Any, *, weight_decay: float = 0.0, n_decay: int,
             scale: Any = 1.0, skip: Any = False, lr: float | None = None, step_table: StepTable | None = None) -> None:
        """Update ``params`` in place from ``grads``: one Adam step.

        With a ``step_table`` the step count is the table's (``advance`` adds the steps run
        from it afterwards).

        Parameters
        ----------
        backend : NumpyBackend
            The backend the arrays live on.
        params : ndarray of shape (P,)
            The flat parameters, updated in place.
        grads : ndarray of shape (P,)
            Their gradient.
        weight_decay : float, default 0.0
            The model's L2 lambda (added to the update's coupled decay).
        n_decay : int
            Length of the weights prefix of ``params`` (the decayed part).
        scale : float or 0-d ndarray, default 1.0
            Factor of the gradient (clipping).
        skip : bool or 0-d ndarray, default False
            Make the step a no-op (a device flag after a non-finite gradient).
        lr : float or None, default None
            This step's learning rate; None: the optimizer's.
        step_table : StepTable or None, default None
            Read the step's scalars from the table's current row instead.
        """
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

    def table_rows(self, lrs: Sequence[float], model_weight_decay: float = 0.0) -> np.ndarray:
        """Rows for the next ``len(lrs)`` steps, t = step_count + 1, ...

        Parameters
        ----------
        lrs : sequence of float
            The learning rate of each step.
        model_weight_decay : float, default 0.0
            The model's L2 lambda, added to the coupled weight decay.

        Returns
        -------
        numpy.ndarray of shape (len(lrs), STEP_TABLE_WIDTH)
            Float64 rows: the step size, the square root of the second bias correction and
            the decay factor (``AdamHyper.step_scalars``).
        """
        rows = np.zeros((len(lrs), STEP_TABLE_WIDTH))
        for i, lr in enumerate(lrs):
            rows[i, :3] = self._update_hyper(lr, model_weight_decay).step_scalars(self.step_count + 1 + i)
        return rows

    def advance(self, steps: int) -> None:
        """Add ``steps`` updates run from a step table to the step count.

        Parameters
        ----------
        steps : int
            Updates run.
        """
        self.step_count += int(steps)

    def discard_skipped_steps(self) -> None:
        if self._skipped is not None:
            self.step_count -= int(self._skipped)
            self._skipped[...] = 0


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019) as ``torch.optim.AdamW``: Adam with decoupled decay.

    Its ``weight_decay`` shrinks the weights directly, ``theta *= 1 - lr * weight_decay``,
    before the Adam step, instead of entering the gradient.

    Biases are never decayed (the flat buffer's weights prefix only). A model's own L2
    ``weight_decay`` still enters the gradient, since it is part of the loss.

    Parameters
    ----------
    lr : float, default 0.001
        Learning rate, > 0.
    betas : tuple of (float, float), default (0.9, 0.999)
        The moments' decay rates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, > 0.
    weight_decay : float, default 0.01
        Decoupled decay rate of the weights, >= 0.

    Raises
    ------
    TypeError
        When ``betas`` is not a pair (or a value has the wrong type).
    ValueError
        For a value out of its range.
    """

    name = "adamw"
    _decoupled = True

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e) as ``torch.optim.RMSprop``.

    The update::

        g = clip_scale * grad + (model L2 + weight_decay) * theta      (weights only)
        s = alpha s + (1 - alpha) g^2
        d = sqrt(s - a^2) + eps with a = alpha a + (1 - alpha) g   if centered
            sqrt(s) + eps                                           otherwise
        b = momentum b + g / d,  theta -= lr b      (theta -= lr g / d without momentum)

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, > 0.
    alpha : float, default 0.99
        Decay rate of the squared gradients' average, in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, > 0.
    weight_decay : float, default 0.0
        Coupled L2 lambda, >= 0.
    momentum : float, default 0.0
        In [0, 1).
    centered : bool, default False
        Divide by the gradient's estimated variance rather than its second moment.

    Raises
    ------
    TypeError, ValueError
        For a value of the wrong type or out of its range.
    """

    name = "rmsprop"
    supports_step_tables = True

    def __init__(self, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False) -> None:
        self.hyper = RMSpropHyper(lr=_rate("lr", lr), alpha=alpha, eps=eps, momentum=momentum, centered=centered,
                                  weight_decay=weight_decay)
        self.reset()

    @property
    def alpha(self) -> float:
        """Decay rate of the squared gradients' average."""
        return self.hyper.alpha

    @property
    def eps(self) -> float:
        """The denominator's epsilon."""
        return self.hyper.eps

    @property
    def weight_decay(self) -> float:
        """The coupled L2 lambda."""
        return self.hyper.weight_decay

    @property
    def momentum(self) -> float:
        """The momentum factor."""
        return self.hyper.momentum

    @property
    def centered(self) -> bool:
        """Whether the update is centered."""
        return self.hyper.centered

    state_buffers = ("square_avg", "grad_avg", "momentum_buf")

    def reset(self) -> None:
        self.square_avg = self.grad_avg = self.momentum_buf = None

    def step(self, backend: NumpyBackend, params: Any, grads: Any, *, weight_decay: float = 0.0, n_decay: int,
             scale: Any = 1.0, skip: Any = False, lr: float | None = None, step_table: StepTable | None = None) -> None:
        """Update ``params`` in place from ``grads``: one RMSprop step.

        Parameters
        ----------
        backend : NumpyBackend
            The backend the arrays live on.
        params : ndarray of shape (P,)
            The flat parameters, updated in place.
        grads : ndarray of shape (P,)
            Their gradient.
        weight_decay : float, default 0.0
            The model's L2 lambda (added to the update's coupled decay).
        n_decay : int
            Length of the weights prefix of ``params`` (the decayed part).
        scale : float or 0-d ndarray, default 1.0
            Factor of the gradient (clipping).
        skip : bool or 0-d ndarray, default False
            Make the step a no-op (a device flag after a non-finite gradient).
        lr : float or None, default None
            This step's learning rate; None: the optimizer's.
        step_table : StepTable or None, default None
            Read the step's scalars from the table's current row instead.
        """
        square_avg = _fresh_or_kept(backend, self.square_avg, params)
        if square_avg is not self.square_avg:
            self.square_avg = square_avg
            self.grad_avg = backend.zeros(params.shape, params.dtype) if self.centered else None
            self.momentum_buf = backend.zeros(params.shape, params.dtype) if self.momentum else None
        backend.rmsprop_update(params, grads, self.square_avg, self.grad_avg, self.momentum_buf,
                               self._update_hyper(lr, weight_decay), n_decay=n_decay, scale=scale, skip=skip,
                               step_table=step_table)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def make_optimizer(name: str, lr: float | None = None, **options: Any) -> Optimizer:
    """An optimizer by name, with learning rate ``lr`` and its own keyword options.

    Parameters
    ----------
    name : {"sgd", "adam", "adamw", "rmsprop"}
        The optimizer (any case).
    lr : float or None, default None
        Its learning rate; None: that optimizer's default.
    **options
        Keyword arguments of its constructor, such as ``momentum=0.9`` for SGD or
        ``betas=(0.9, 0.99)`` for Adam.

    Returns
    -------
    Optimizer
        A new optimizer.

    Raises
    ------
    TypeError
        When ``name`` is not a string, or an option is not one this optimizer takes (the
        message lists those it takes).
    ValueError
        For an unknown name.
    """
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
