"""Learning-rate schedules and early stopping for ``fit``.

A schedule is a multiplier of the optimizer's base learning rate, a function of ``t``, the
number of whole units (epochs, or optimizer steps) done since ``fit`` started:

    lr(t) = optimizer.lr * schedule.factor(t, total)

``per="epoch"`` (the default) evaluates it once before each epoch (t = 0, 1, ...);
``per="step"`` before every optimizer step (t counts steps over all epochs). ``total`` is
the number of units the ``fit`` call will run (epochs, or epochs x steps per epoch), which
``CosineDecay(total=None)`` uses as its horizon. The lr handed to the optimizer is a Python
float, so a per-step schedule reads nothing back from the GPU.

Schedules compose by ``LinearWarmup(w, then=...)``: warm up for ``w`` units, then run the
inner schedule with its clock starting at 0 and horizon ``total - w``. A plain callable
``f(epoch) -> factor`` is accepted too, evaluated per epoch.

``EarlyStopping`` watches one per-epoch record of the history (``"val_loss"``,
``"val_accuracy"``, ``"val_r2"``, or a training one such as ``"loss"``), stops when it has
not improved by ``min_delta`` for ``patience`` epochs and by default puts back the
parameters of the best epoch.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from .validation import check_bool, check_int, check_real

__all__ = ["Schedule", "StepDecay", "ExponentialDecay", "CosineDecay", "LinearWarmup",
           "EarlyStopping", "as_schedule", "as_early_stopping"]

_UNITS = ("epoch", "step")


def _check_per(per):
    if per not in _UNITS:
        raise ValueError(f"per must be 'epoch' or 'step', got {per!r}")
    return per


class Schedule:
    """Base class of the schedules: subclasses define ``factor(t, total)`` and set ``per``."""

    per = "epoch"

    def factor(self, t: int, total: int | None = None) -> float:
        """The multiplier of the optimizer's base learning rate at unit ``t``.

        Parameters
        ----------
        t : int
            Units (epochs, or optimizer steps with ``per="step"``) done since ``fit`` started.
        total : int or None
            The units the ``fit`` call runs, its horizon; None when not known.

        Returns
        -------
        float
            The factor, at least 0.
        """
        raise NotImplementedError

    def lr(self, base_lr: float, t: int, total: int | None = None) -> float:
        """The learning rate for unit ``t`` of ``total``: ``base_lr * factor(t, total)``.

        Parameters
        ----------
        base_lr : float
            The optimizer's own learning rate.
        t : int
            Units done since ``fit`` started.
        total : int or None
            The units the ``fit`` call runs, when known.

        Returns
        -------
        float
            The learning rate of unit ``t``.

        Raises
        ------
        TypeError, ValueError
            When ``factor`` returns something other than a finite real number >= 0.
        """
        value = self.factor(t, total)
        check_real("schedule factor", value, low=0.0)
        return float(base_lr) * float(value)


class StepDecay(Schedule):
    """Multiply by ``gamma`` every ``step_size`` units: ``gamma ** (t // step_size)``.

    As ``torch.optim.lr_scheduler.StepLR``.

    Parameters
    ----------
    step_size : int
        Units (>= 1) between two cuts of the rate.
    gamma : float, default 0.1
        The factor of each cut, in (0, 1].
    per : {"epoch", "step"}, default "epoch"
        What a unit is.

    Raises
    ------
    TypeError, ValueError
        For an argument of the wrong type or out of its range.
    """

    def __init__(self, step_size: int, gamma: float = 0.1, per: str = "epoch") -> None:
        self.step_size = check_int("step_size", step_size, low=1)
        self.gamma = check_real("gamma", gamma, low=0.0, high=1.0, low_open=True)
        self.per = _check_per(per)

    def factor(self, t: int, total: int | None = None) -> float:
        return self.gamma ** (t // self.step_size)

    def __repr__(self):
        return f"StepDecay(step_size={self.step_size}, gamma={self.gamma:g}, per={self.per!r})"


class ExponentialDecay(Schedule):
    """Multiply by ``gamma`` every unit: ``gamma ** t`` (``ExponentialLR``).

    Parameters
    ----------
    gamma : float
        The factor per unit, in (0, 1].
    per : {"epoch", "step"}, default "epoch"
        What a unit is.

    Raises
    ------
    TypeError, ValueError
        For an argument of the wrong type or out of its range.
    """

    def __init__(self, gamma: float, per: str = "epoch") -> None:
        self.gamma = check_real("gamma", gamma, low=0.0, high=1.0, low_open=True)
        self.per = _check_per(per)

    def factor(self, t: int, total: int | None = None) -> float:
        return self.gamma ** t

    def __repr__(self):
        return f"ExponentialDecay(gamma={self.gamma:g}, per={self.per!r})"


class CosineDecay(Schedule):
    """Half a cosine from 1 down to ``min_factor`` over ``total`` units, then flat.

    As ``CosineAnnealingLR`` with ``eta_min = min_factor * lr``::

        factor(t) = min_factor + (1 - min_factor) * (1 + cos(pi * min(t, T) / T)) / 2

    Parameters
    ----------
    total : int or None, default None
        T, in units (>= 1); None takes it from ``fit``: the whole run (what is left after a
        warm-up).
    min_factor : float, default 0.0
        The factor at the end, in [0, 1].
    per : {"epoch", "step"}, default "epoch"
        What a unit is.

    Raises
    ------
    TypeError, ValueError
        For an argument of the wrong type or out of its range.
    """

    def __init__(self, total: int | None = None, min_factor: float = 0.0, per: str = "epoch") -> None:
        self.total = None if total is None else check_int("total", total, low=1)
        self.min_factor = check_real("min_factor", min_factor, low=0.0, high=1.0)
        self.per = _check_per(per)

    def factor(self, t: int, total: int | None = None) -> float:
        """The cosine's value at unit ``t``, over ``self.total`` units or else ``total``.

        Parameters
        ----------
        t : int
            Units done since ``fit`` started.
        total : int or None
            The units the ``fit`` call runs (the horizon when ``self.total`` is None).

        Returns
        -------
        float
            The factor, from 1 down to ``min_factor``.

        Raises
        ------
        ValueError
            When neither ``self.total`` nor ``total`` gives the horizon.
        """
        horizon = self.total if self.total is not None else total
        if horizon is None:
            raise ValueError("CosineDecay(total=None) needs the run length; fit() passes it")
        horizon = max(int(horizon), 1)
        progress = min(t, horizon) / horizon
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self):
        return f"CosineDecay(total={self.total}, min_factor={self.min_factor:g}, per={self.per!r})"


class LinearWarmup(Schedule):
    """Ramp linearly from ``start_factor`` to 1 over ``warmup`` units, then hold or hand over.

    As ``LinearLR``; after the warm-up the factor is 1, or ``then``'s (its clock restarts at 0;
    its horizon is what is left)::

        factor(t) = start_factor + (1 - start_factor) * t / warmup    for t < warmup
                    then.factor(t - warmup, total - warmup)            afterwards (or 1)

    Parameters
    ----------
    warmup : int
        Units (>= 1) of the ramp.
    start_factor : float, default 0.1
        The factor at t = 0, in [0, 1].
    then : Schedule or None, default None
        The schedule after the warm-up, counting in the same units.
    per : {"epoch", "step"}, default "epoch"
        What a unit is.

    Raises
    ------
    TypeError
        When ``then`` is not a ``Schedule`` (or another argument has the wrong type).
    ValueError
        When ``then`` counts other units, or an argument is out of its range.
    """

    def __init__(self, warmup: int, start_factor: float = 0.1, then: Schedule | None = None,
                 per: str = "epoch") -> None:
        self.warmup = check_int("warmup", warmup, low=1)
        self.start_factor = check_real("start_factor", start_factor, low=0.0, high=1.0)
        self.per = _check_per(per)
        if then is not None:
            if not isinstance(then, Schedule):
                raise TypeError(f"then must be a Schedule, got {type(then).__name__}")
            if then.per != self.per:
                raise ValueError(f"the warm-up counts per {self.per!r} but the schedule after it per "
                                 f"{then.per!r}; give both the same per=")
        self.then = then

    def factor(self, t: int, total: int | None = None) -> float:
        if t < self.warmup:
            return self.start_factor + (1.0 - self.start_factor) * t / self.warmup
        if self.then is None:
            return 1.0
        rest = None if total is None else max(total - self.warmup, 1)
        return self.then.factor(t - self.warmup, rest)

    def __repr__(self):
        return (f"LinearWarmup(warmup={self.warmup}, start_factor={self.start_factor:g}, "
                f"then={self.then!r}, per={self.per!r})")


class _PerEpochFunction(Schedule):
    """A user's ``f(epoch) -> factor`` as a per-epoch schedule."""

    per = "epoch"

    def __init__(self, function):
        self.function = function

    def factor(self, t, total=None):
        return self.function(t)

    def __repr__(self):
        return f"schedule({self.function!r})"


def as_schedule(schedule: Schedule | Callable[[int], float] | None) -> Schedule | None:
    """``fit``'s ``schedule`` argument as a ``Schedule`` (or None).

    Parameters
    ----------
    schedule : Schedule, callable or None
        A schedule, or a function ``f(epoch) -> factor`` (wrapped as a per-epoch schedule).

    Returns
    -------
    Schedule or None
        The schedule; None for None.

    Raises
    ------
    TypeError
        For anything else.
    """
    if schedule is None or isinstance(schedule, Schedule):
        return schedule
    if callable(schedule):
        return _PerEpochFunction(schedule)
    raise TypeError(f"schedule must be a gpunet.schedules.Schedule or a callable f(epoch) -> factor, "
                    f"got {type(schedule).__name__}")


class EarlyStopping:
    """Stop ``fit`` when a per-epoch metric stops improving.

    ``fit`` records the outcome on the History: ``stopped_epoch`` (1-based, None when it ran
    every epoch), ``best_epoch`` and ``best_value``.

    Parameters
    ----------
    monitor : str, default "val_loss"
        A history key: ``"val_loss"``, ``"val_accuracy"`` / ``"val_r2"`` (need
        ``validation_data``), or ``"loss"``, ``"accuracy"``, ``"r2"``.
    patience : int, default 10
        Epochs in a row without improvement after which training stops (0 stops at the
        first such epoch).
    min_delta : float, default 0.0
        How much better than the best so far counts as an improvement.
    mode : {"auto", "min", "max"}, default "auto"
        Whether lower or higher is better; ``"auto"``: lower for losses, higher otherwise.
    restore_best_weights : bool, default True
        At the end of ``fit`` (stopped early or not) put back the parameters of the best epoch.

    Raises
    ------
    TypeError
        When ``monitor`` is not a string (or another argument has the wrong type).
    ValueError
        For an unknown ``mode``, or a value out of its range.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 10, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = True) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a history key such as 'val_loss', got {type(monitor).__name__}")
        self.monitor = monitor
        self.patience = check_int("patience", patience, low=0)
        self.min_delta = check_real("min_delta", min_delta, low=0.0)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.restore_best_weights = check_bool("restore_best_weights", restore_best_weights)
        self.reset()

    @property
    def minimize(self) -> bool:
        """Whether a lower value of the monitored metric is better."""
        if self.mode == "auto":
            return self.monitor.endswith("loss")
        return self.mode == "min"

    def reset(self) -> None:
        """Forget the run so far (``fit`` calls this at its start)."""
        self.best_value = None
        self.best_epoch = None
        self.wait = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record the monitored ``value`` of ``epoch``; a NaN never improves.

        Parameters
        ----------
        epoch : int
            The epoch, 1-based.
        value : float
            The monitored metric's value after it.

        Returns
        -------
        bool
            True when it is a new best.
        """
        value = float(value)
        if self.best_value is None:
            improved = not math.isnan(value)
        elif self.minimize:
            improved = value < self.best_value - self.min_delta
        else:
            improved = value > self.best_value + self.min_delta
        if improved:
            self.best_value, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1
        return improved

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row (at least one) brought no improvement."""
        return self.wait > 0 and self.wait >= self.patience

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, min_delta={self.min_delta:g}, "
                f"mode={self.mode!r}, restore_best_weights={self.restore_best_weights})")


def as_early_stopping(early_stopping: EarlyStopping | bool | None) -> EarlyStopping | None:
    """``fit``'s ``early_stopping`` argument as an ``EarlyStopping`` (or None).

    Parameters
    ----------
    early_stopping : EarlyStopping, bool or None
        None or False: none; True: ``EarlyStopping()`` with its defaults; or an ``EarlyStopping``.

    Returns
    -------
    EarlyStopping or None
        The rule, or None for none.

    Raises
    ------
    TypeError
        For anything else.
    """
    if early_stopping is None or early_stopping is False:
        return None
    if early_stopping is True:
        return EarlyStopping()
    if isinstance(early_stopping, EarlyStopping):
        return early_stopping
    raise TypeError(f"early_stopping must be True, False/None or a gpunet.schedules.EarlyStopping, "
                    f"got {type(early_stopping).__name__}")
