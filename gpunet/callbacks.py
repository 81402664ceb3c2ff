"""Callbacks: code of the user's that ``fit`` calls at the start and end of training and of
each epoch (and, optionally, after each step).

A callback subclasses ``Callback`` and overrides the hooks it needs. Every hook gets the
``run`` (``gpunet.train.TrainingRun``): ``run.net`` (the model), ``run.history``,
``run.epoch`` (0-based), ``run.epochs``, ``run.optimizer``, and ``run.stop_training``, which
a callback sets to stop ``fit`` after the current epoch (or step). ``run.save_checkpoint(path)``
writes everything needed to resume (``fit(..., resume_from=path)``).

``on_batch_end`` is called only when a callback overrides it; its ``loss`` is the step's
loss on the backend, and reading it (``float(loss)``) waits for the GPU: one host
synchronisation per step, which the rest of ``fit`` avoids. A fit with a batch hook runs its
steps eagerly (no CUDA graph).

Built in: ``EarlyStopping`` (``gpunet.schedules``, also ``fit(early_stopping=...)``),
``ModelCheckpoint``, ``CSVLogger``, ``LambdaCallback``, and the progress displays ``fit``'s
``verbose`` chooses (``ProgressBar``, ``EpochLogger``).
"""
from __future__ import annotations

import csv
import math
import os
import sys
from typing import Any, Callable, TextIO

from .schedules import EarlyStopping
from .validation import check_bool, check_int

__all__ = ["Callback", "EarlyStopping", "EarlyStoppingCallback", "ModelCheckpoint", "CSVLogger", "LambdaCallback",
           "ProgressBar", "EpochLogger", "progress_callback", "bar_can_be_drawn", "check_callbacks",
           "wants_batch_hooks"]


class Callback:
    """The base of callbacks: the hooks ``fit`` calls, each doing nothing here.

    ``logs`` is the epoch's record (what ``History`` appends: ``loss``, the metric,
    ``val_*``, ``lr``, ``time``)."""

    def on_train_begin(self, run: Any) -> None:
        """Called once training starts, after every argument is checked and the model claimed.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """

    def on_epoch_begin(self, run: Any, epoch: int) -> None:
        """Called when an epoch starts.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        epoch : int
            The epoch (0-based).
        """

    def on_batch_end(self, run: Any, batch: int, loss: Any) -> None:
        """Called after each step is queued (only when a callback overrides it; the steps then run eagerly).

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        batch : int
            The step's index in the epoch (0-based).
        loss : backend array
            The step's loss, 0-d on the backend: reading it (``float(loss)``) waits for the GPU.
        """

    def on_epoch_end(self, run: Any, epoch: int, logs: dict) -> None:
        """Called when an epoch has ended and its figures are known.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        epoch : int
            The epoch that ended (0-based).
        logs : dict
            Its figures: ``loss``, the metric, ``val_*``, ``lr``, ``time``.
        """

    def on_train_end(self, run: Any) -> None:
        """Called once training ends: every epoch ran, a callback stopped it, it diverged (``run.diverged``) or was interrupted (``run.interrupted``).

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """


class EarlyStoppingCallback(Callback):
    """An ``EarlyStopping`` (``gpunet.schedules``) at work in a fit.

    It feeds the stopper each epoch's
    monitored value, keeps a device copy of the best epoch's parameters when it is to
    restore them, stops the run, notes the outcome on the History, and at the end (stopped,
    finished, diverged or interrupted) puts the best parameters back. ``fit`` wraps an
    ``EarlyStopping`` given in ``callbacks`` or as ``early_stopping`` in one of these.

    Parameters
    ----------
    stopper : gpunet.schedules.EarlyStopping
        The rule: what to monitor, the patience, whether to restore the best parameters.

    Raises
    ------
    TypeError
        ``stopper`` is not an ``EarlyStopping``.
    """

    def __init__(self, stopper: EarlyStopping) -> None:
        if not isinstance(stopper, EarlyStopping):
            raise TypeError(f"EarlyStoppingCallback takes a gpunet.schedules.EarlyStopping, got "
                            f"{type(stopper).__name__}")
        self.stopper = stopper
        self.best_params = None

    def on_train_begin(self, run: Any) -> None:
        """Reset the stopper (unless resuming) and make the buffer for the best parameters.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """
        if run.resumed_from is None:      # a resumed run has its stopper's state from the checkpoint
            self.stopper.reset()
        if self.stopper.restore_best_weights and self.best_params is None:
            self.best_params = run.net.flat_params.copy()

    def on_epoch_end(self, run: Any, epoch: int, logs: dict) -> None:
        """Feed the monitored value to the stopper, keep the best parameters, stop when it says so.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        epoch : int
            The epoch that ended (0-based).
        logs : dict
            Its figures: ``loss``, the metric, ``val_*``, ``lr``, ``time``.

        Raises
        ------
        ValueError
            The monitored key is not among the epoch's figures.
        """
        stopper, history = self.stopper, run.history
        if stopper.monitor not in logs:
            raise ValueError(f"early stopping monitors {stopper.monitor!r}, which this fit does not record "
                             f"(it records {', '.join(logs)})")
        if stopper.update(epoch + 1, logs[stopper.monitor]) and self.best_params is not None:
            self.best_params[...] = run.net.flat_params
        history.best_epoch, history.best_value = stopper.best_epoch, stopper.best_value
        if stopper.should_stop:
            history.stopped_epoch = epoch + 1
            run.stop_training = True

    def on_train_end(self, run: Any) -> None:
        """Put the best epoch's parameters back (when kept and any epoch counted).

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """
        if self.best_params is not None and self.stopper.best_epoch is not None:
            with run.net.writing_parameters():
                run.net.flat_params[...] = self.best_params
            run.kept = f"the parameters of its best epoch ({self.stopper.best_epoch})"

    def state(self, to_host: Callable) -> dict:
        """The stopper's progress and best parameters, for a checkpoint.

        Parameters
        ----------
        to_host : callable
            Copies a backend array to a host NumPy array.

        Returns
        -------
        dict
            ``best_value``, ``best_epoch``, ``wait`` and ``best_params`` (a host array, or
            None when none is kept yet).
        """
        stopper = self.stopper
        return {"best_value": stopper.best_value, "best_epoch": stopper.best_epoch, "wait": stopper.wait,
                "best_params": None if self.best_params is None or stopper.best_epoch is None
                else to_host(self.best_params)}

    def load_state(self, state: dict, net: Any) -> None:
        """Take the progress a checkpoint kept (``state``'s shape).

        Parameters
        ----------
        state : dict
            What ``state`` returned, its best parameters a host array or None.
        net : gpunet.MLP
            The model whose backend and dtype the best parameters take.
        """
        stopper = self.stopper
        stopper.best_value, stopper.best_epoch, stopper.wait = state["best_value"], state["best_epoch"], state["wait"]
        if state.get("best_params") is not None:
            self.best_params = net.backend.asarray(state["best_params"], dtype=net.dtype)


def wants_batch_hooks(callbacks: list) -> bool:
    """Whether any of ``callbacks`` has an ``on_batch_end`` of its own.

    Parameters
    ----------
    callbacks : list of Callback
        A fit's callbacks.

    Returns
    -------
    bool
        True when a step must report to them (and so run eagerly, reading its loss).
    """
    return any(type(c).on_batch_end is not Callback.on_batch_end or "on_batch_end" in vars(c) for c in callbacks)


def check_callbacks(callbacks: Any) -> list:
    """The callbacks a fit was given, checked.

    Parameters
    ----------
    callbacks : None, Callback, EarlyStopping or iterable of them
        What ``fit(callbacks=...)`` got.

    Returns
    -------
    list of Callback
        A new list; an ``EarlyStopping`` among them wrapped in an ``EarlyStoppingCallback``.

    Raises
    ------
    TypeError
        Something that is not a callback (a plain function must be wrapped in ``LambdaCallback``).
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, (Callback, EarlyStopping)):
        callbacks = [callbacks]
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise TypeError(f"callbacks must be a list of gpunet.callbacks.Callback, got {type(callbacks).__name__}") \
            from None
    checked = []
    for c in callbacks:
        if isinstance(c, EarlyStopping):
            c = EarlyStoppingCallback(c)
        elif not isinstance(c, Callback):
            raise TypeError(f"callbacks must be gpunet.callbacks.Callback objects, got {type(c).__name__} "
                            "(wrap a function in LambdaCallback)")
        checked.append(c)
    return checked


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda run, epoch, logs: ...)``.

    Parameters
    ----------
    on_train_begin, on_epoch_begin, on_batch_end, on_epoch_end, on_train_end : callable, optional
        Each called as the hook of its name, with the hook's arguments (see ``Callback``).

    Raises
    ------
    TypeError
        An argument that is not callable.
    """

    def __init__(self, on_train_begin: Callable | None = None, on_epoch_begin: Callable | None = None,
                 on_batch_end: Callable | None = None, on_epoch_end: Callable | None = None,
                 on_train_end: Callable | None = None) -> None:
        given = {"on_train_begin": on_train_begin, "on_epoch_begin": on_epoch_begin, "on_batch_end": on_batch_end,
                 "on_epoch_end": on_epoch_end, "on_train_end": on_train_end}
        for name, fn in given.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
            if fn is not None:
                setattr(self, name, fn)    # the instance attribute shadows the base hook


class ModelCheckpoint(Callback):
    """Write checkpoints to resume from during a fit.

    A checkpoint (``run.save_checkpoint``) holds the parameters, optimizer state, history,
    schedule position, early-stopping state and the shuffle RNG; one is written at the end
    of every ``every`` epochs, or, with ``monitor``, when that metric improves.

    ``path`` may hold ``{epoch}`` (1-based) and any history key of the epoch, as in
    ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``. Each write is atomic (a temporary file renamed
    over the target), so a crash leaves the previous checkpoint whole. ``weights_only``
    writes a plain model file instead (``MLP.save``). ``last_path`` holds the last file
    written.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write, a format string with ``{epoch}`` and the history's keys.
    every : int, default 1
        Write at the end of every ``every`` epochs (without ``monitor``).
    monitor : str, optional
        A history key (``"val_loss"``...): write when it improves instead.
    mode : {"auto", "min", "max"}, default "auto"
        Whether ``monitor`` improves downwards; "auto": for keys ending in ``loss``.
    weights_only : bool, default False
        Write a model file (``MLP.save``), not a resumable checkpoint.

    Raises
    ------
    ValueError
        An empty path, a folder that does not exist, or a bad ``every`` or ``mode``.
    TypeError
        ``every`` is not an int or ``weights_only`` not a bool.
    """

    def __init__(self, path: str | os.PathLike, every: int = 1, monitor: str | None = None, mode: str = "auto",
                 weights_only: bool = False) -> None:
        self.path = os.fspath(path)
        if not self.path:
            raise ValueError("ModelCheckpoint needs a path")
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ValueError(f"ModelCheckpoint: the folder {folder} does not exist")
        self.every = check_int("every", every, low=1)
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.weights_only = check_bool("weights_only", weights_only)
        self.best = None
        self.last_path = None

    def on_train_begin(self, run: Any) -> None:
        """Forget the best value of an earlier fit.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """
        self.best = None

    def _improved(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        minimize = self.monitor.endswith("loss") if self.mode == "auto" else self.mode == "min"
        better = self.best is None or (value < self.best if minimize else value > self.best)
        if better:
            self.best = value
        return better

    def on_epoch_end(self, run: Any, epoch: int, logs: dict) -> None:
        """Write the checkpoint when the epoch is due or the monitored metric improved.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        epoch : int
            The epoch that ended (0-based).
        logs : dict
            Its figures: ``loss``, the metric, ``val_*``, ``lr``, ``time``.

        Raises
        ------
        ValueError
            The monitored key is not among the epoch's figures.
        """
        if self.monitor is not None:
            if self.monitor not in logs:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which this fit does not record "
                                 f"(it records {', '.join(logs)})")
            if not self._improved(float(logs[self.monitor])):
                return
        elif (epoch + 1) % self.every:
            return
        if not getattr(run, "writes_files", True):     # a distributed fit: rank 0 writes
            return
        path = self.path.format(epoch=epoch + 1, **logs)
        if self.weights_only:
            run.net.save(path)
        else:
            run.save_checkpoint(path)
        self.last_path = path


class CSVLogger(Callback):
    """Log each epoch's figures to a CSV file.

    One row per epoch (the epoch, 1-based, then its figures), flushed as it is written, so
    the file can be followed while training runs.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file.
    append : bool, default False
        Continue an existing file (a resumed run) instead of starting it over.

    Raises
    ------
    TypeError
        ``append`` is not a bool.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        self.path = os.fspath(path)
        self.append = check_bool("append", append)
        self._file = None
        self._writer = None
        self._columns = None

    def on_train_begin(self, run: Any) -> None:
        """Open the file (appending to a resumed run's when asked).

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """
        if not getattr(run, "writes_files", True):     # a distributed fit: rank 0 writes
            return
        exists = self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        self._file = open(self.path, "a" if self.append else "w", newline="", encoding="utf-8")
        self._columns = None
        if exists:
            with open(self.path, newline="", encoding="utf-8") as existing:
                self._columns = next(csv.reader(existing), None)
        self._writer = csv.writer(self._file)

    def on_epoch_end(self, run: Any, epoch: int, logs: dict) -> None:
        """Write the epoch's row and flush it (nothing where the file was not opened).

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        epoch : int
            The epoch that ended (0-based).
        logs : dict
            Its figures: ``loss``, the metric, ``val_*``, ``lr``, ``time``.
        """
        if self._file is None:
            return
        if self._columns is None:
            self._columns = ["epoch", *logs]
            self._writer.writerow(self._columns)
        self._writer.writerow([epoch + 1, *(logs.get(c, "") for c in self._columns[1:])])
        self._file.flush()

    def on_train_end(self, run: Any) -> None:
        """Close the file.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """
        if self._file is not None:
            self._file.close()
            self._file = None


def _format(logs: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items() if k != "time")


class EpochLogger(Callback):
    """``verbose=2``: one line per epoch, for logs, CI and anything else that is not a terminal.

    Parameters
    ----------
    stream : file-like, optional
        Where the lines go (the current ``sys.stderr`` when None).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def on_epoch_end(self, run: Any, epoch: int, logs: dict) -> None:
        """Print the epoch's line.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        epoch : int
            The epoch that ended (0-based).
        logs : dict
            Its figures: ``loss``, the metric, ``val_*``, ``lr``, ``time``.
        """
        stream = self.stream if self.stream is not None else sys.stderr
        width = len(str(run.epochs))
        print(f"epoch {epoch + 1:>{width}}/{run.epochs}  {_format(logs)}  ({logs.get('time', 0.0):.2f} s)",
              file=stream, flush=True)

    def on_train_end(self, run: Any) -> None:
        """Print how an early end left the model, when it ended early.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """
        stream = self.stream if self.stream is not None else sys.stderr
        if run.interrupted:
            print(f"interrupted in epoch {run.epoch + 1}; the model keeps {run.kept}", file=stream, flush=True)
        elif run.history.stopped_epoch is not None:
            print(f"stopped early after epoch {run.history.stopped_epoch}; best epoch "
                  f"{run.history.best_epoch}", file=stream, flush=True)


class ProgressBar(Callback):
    """``verbose=1``: a tqdm bar over the epochs.

    ``tqdm.auto`` draws a widget in a notebook and text in a terminal; the postfix shows the
    last epoch's figures."""

    def __init__(self) -> None:
        self._bar = None

    def on_train_begin(self, run: Any) -> None:
        """Open the bar (at the resumed epoch when resuming).

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """
        from tqdm.auto import tqdm
        self._bar = tqdm(total=run.epochs, initial=run.epoch, unit="epoch", dynamic_ncols=True, leave=True)

    def on_epoch_end(self, run: Any, epoch: int, logs: dict) -> None:
        """Advance the bar and show the epoch's figures.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        epoch : int
            The epoch that ended (0-based).
        logs : dict
            Its figures: ``loss``, the metric, ``val_*``, ``lr``, ``time``.
        """
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "time"}, refresh=False)
        self._bar.update(1)

    def on_train_end(self, run: Any) -> None:
        """Close the bar.

        Parameters
        ----------
        run : gpunet.train.TrainingRun
            The fit in progress.
        """
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()
    except AttributeError:
        return False
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


def bar_can_be_drawn() -> bool:
    """Whether a progress bar can be shown here.

    Returns
    -------
    bool
        tqdm is installed, and stderr is a terminal or this runs in a notebook kernel.
    """
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return _in_notebook() or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def progress_callback(verbose: Any) -> Callback | None:
    """What ``fit(verbose=...)`` shows.

    Parameters
    ----------
    verbose : {0, 1, 2, "auto"}
        0 nothing, 1 a bar (lines where a bar cannot be drawn), 2 a line per epoch; "auto"
        a bar where one can be drawn, else lines.

    Returns
    -------
    Callback or None
        A ``ProgressBar``, an ``EpochLogger``, or None for nothing.

    Raises
    ------
    ValueError
        Any other ``verbose``.
    """
    if verbose == "auto":
        verbose = 1 if bar_can_be_drawn() else 2
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    if verbose == 0:
        return None
    if verbose == 1 and bar_can_be_drawn():
        return ProgressBar()
    return EpochLogger()
