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
    """The hooks ``fit`` calls; each does nothing here. ``logs`` is the epoch's record (what
    ``History`` appends: ``loss``, the metric, ``val_*``, ``lr``, ``time``)."""

    def on_train_begin(self, run) -> None:
        """Training starts (after every argument is checked and the model claimed)."""

    def on_epoch_begin(self, run, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) starts."""

    def on_batch_end(self, run, batch: int, loss) -> None:
        """Step ``batch`` (0-based within the epoch) was queued; ``loss`` is a 0-d backend
        array (reading it synchronises with the GPU)."""

    def on_epoch_end(self, run, epoch: int, logs: dict) -> None:
        """Epoch ``epoch`` ended and ``logs`` holds its figures."""

    def on_train_end(self, run) -> None:
        """Training ended: every epoch ran, a callback stopped it, it diverged
        (``run.diverged``) or it was interrupted (``run.interrupted``)."""


class EarlyStoppingCallback(Callback):
    """``EarlyStopping`` (``gpunet.schedules``) at work in a fit: feeds it each epoch's
    monitored value, keeps a device copy of the best epoch's parameters when it is to
    restore them, stops the run, notes the outcome on the History, and at the end (stopped,
    finished, diverged or interrupted) puts the best parameters back. ``fit`` wraps an
    ``EarlyStopping`` given in ``callbacks`` or as ``early_stopping`` in one of these."""

    def __init__(self, stopper: EarlyStopping):
        if not isinstance(stopper, EarlyStopping):
            raise TypeError(f"EarlyStoppingCallback takes a gpunet.schedules.EarlyStopping, got "
                            f"{type(stopper).__name__}")
        self.stopper = stopper
        self.best_params = None

    def on_train_begin(self, run) -> None:
        if run.resumed_from is None:      # a resumed run has its stopper's state from the checkpoint
            self.stopper.reset()
        if self.stopper.restore_best_weights and self.best_params is None:
            self.best_params = run.net.flat_params.copy()

    def on_epoch_end(self, run, epoch: int, logs: dict) -> None:
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

    def on_train_end(self, run) -> None:
        if self.best_params is not None and self.stopper.best_epoch is not None:
            with run.net.writing_parameters():
                run.net.flat_params[...] = self.best_params
            run.kept = f"the parameters of its best epoch ({self.stopper.best_epoch})"

    def state(self, to_host) -> dict:
        """The stopper's progress and best parameters, for a checkpoint."""
        stopper = self.stopper
        return {"best_value": stopper.best_value, "best_epoch": stopper.best_epoch, "wait": stopper.wait,
                "best_params": None if self.best_params is None or stopper.best_epoch is None
                else to_host(self.best_params)}

    def load_state(self, state, net) -> None:
        stopper = self.stopper
        stopper.best_value, stopper.best_epoch, stopper.wait = state["best_value"], state["best_epoch"], state["wait"]
        if state.get("best_params") is not None:
            self.best_params = net.backend.asarray(state["best_params"], dtype=net.dtype)


def wants_batch_hooks(callbacks) -> bool:
    """Whether any of ``callbacks`` overrides ``on_batch_end``."""
    return any(type(c).on_batch_end is not Callback.on_batch_end or "on_batch_end" in vars(c) for c in callbacks)


def check_callbacks(callbacks) -> list:
    """A list of ``Callback`` objects from None, one, or an iterable of them (an
    ``EarlyStopping`` among them is wrapped in an ``EarlyStoppingCallback``)."""
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
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda run, epoch, logs: ...)``;
    each argument takes the hook's arguments."""

    def __init__(self, on_train_begin: Callable | None = None, on_epoch_begin: Callable | None = None,
                 on_batch_end: Callable | None = None, on_epoch_end: Callable | None = None,
                 on_train_end: Callable | None = None):
        given = {"on_train_begin": on_train_begin, "on_epoch_begin": on_epoch_begin, "on_batch_end": on_batch_end,
                 "on_epoch_end": on_epoch_end, "on_train_end": on_train_end}
        for name, fn in given.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
            if fn is not None:
                setattr(self, name, fn)    # the instance attribute shadows the base hook


class ModelCheckpoint(Callback):
    """Write a checkpoint (``run.save_checkpoint``: parameters, optimizer state, history,
    schedule position, early-stopping state and the shuffle RNG) at the end of every
    ``every`` epochs, or, with ``monitor``, when that metric improves.

    ``path`` may hold ``{epoch}`` (1-based) and any history key of the epoch, as in
    ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``. Each write is atomic (a temporary file renamed
    over the target), so a crash leaves the previous checkpoint whole. ``weights_only``
    writes a plain model file instead (``MLP.save``). ``run.checkpoint_path`` holds the
    last file written."""

    def __init__(self, path: str | os.PathLike, every: int = 1, monitor: str | None = None, mode: str = "auto",
                 weights_only: bool = False):
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

    def on_train_begin(self, run) -> None:
        self.best = None

    def _improved(self, value) -> bool:
        if value is None or math.isnan(value):
            return False
        minimize = self.monitor.endswith("loss") if self.mode == "auto" else self.mode == "min"
        better = self.best is None or (value < self.best if minimize else value > self.best)
        if better:
            self.best = value
        return better

    def on_epoch_end(self, run, epoch: int, logs: dict) -> None:
        if self.monitor is not None:
            if self.monitor not in logs:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which this fit does not record "
                                 f"(it records {', '.join(logs)})")
            if not self._improved(float(logs[self.monitor])):
                return
        elif (epoch + 1) % self.every:
            return
        path = self.path.format(epoch=epoch + 1, **logs)
        if self.weights_only:
            run.net.save(path)
        else:
            run.save_checkpoint(path)
        self.last_path = path


class CSVLogger(Callback):
    """One CSV row per epoch (the epoch, 1-based, then its figures), flushed as it is written,
    so the file can be followed while training runs. ``append`` continues an existing file
    (a resumed run) instead of starting it over."""

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path = os.fspath(path)
        self.append = check_bool("append", append)
        self._file = None
        self._writer = None
        self._columns = None

    def on_train_begin(self, run) -> None:
        exists = self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        self._file = open(self.path, "a" if self.append else "w", newline="", encoding="utf-8")
        self._columns = None
        if exists:
            with open(self.path, newline="", encoding="utf-8") as existing:
                self._columns = next(csv.reader(existing), None)
        self._writer = csv.writer(self._file)

    def on_epoch_end(self, run, epoch: int, logs: dict) -> None:
        if self._columns is None:
            self._columns = ["epoch", *logs]
            self._writer.writerow(self._columns)
        self._writer.writerow([epoch + 1, *(logs.get(c, "") for c in self._columns[1:])])
        self._file.flush()

    def on_train_end(self, run) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _format(logs: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items() if k != "time")


class EpochLogger(Callback):
    """``verbose=2``: one line per epoch to ``stream`` (stderr by default), for logs, CI and
    anything else that is not a terminal."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def on_epoch_end(self, run, epoch: int, logs: dict) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        width = len(str(run.epochs))
        print(f"epoch {epoch + 1:>{width}}/{run.epochs}  {_format(logs)}  ({logs.get('time', 0.0):.2f} s)",
              file=stream, flush=True)

    def on_train_end(self, run) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        if run.interrupted:
            print(f"interrupted in epoch {run.epoch + 1}; the model keeps {run.kept}", file=stream, flush=True)
        elif run.history.stopped_epoch is not None:
            print(f"stopped early after epoch {run.history.stopped_epoch}; best epoch "
                  f"{run.history.best_epoch}", file=stream, flush=True)


class ProgressBar(Callback):
    """``verbose=1``: a tqdm bar over the epochs (``tqdm.auto``: a widget in a notebook, text
    in a terminal), its postfix the last epoch's figures."""

    def __init__(self):
        self._bar = None

    def on_train_begin(self, run) -> None:
        from tqdm.auto import tqdm
        self._bar = tqdm(total=run.epochs, initial=run.epoch, unit="epoch", dynamic_ncols=True, leave=True)

    def on_epoch_end(self, run, epoch: int, logs: dict) -> None:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "time"}, refresh=False)
        self._bar.update(1)

    def on_train_end(self, run) -> None:
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
    """tqdm is installed and stderr is a terminal, or this runs in a notebook kernel."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return _in_notebook() or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def progress_callback(verbose: Any) -> Callback | None:
    """What ``fit(verbose=...)`` shows: 0 nothing, 1 a bar (lines where a bar cannot be
    drawn), 2 a line per epoch; "auto" a bar where one can be drawn, else lines."""
    if verbose == "auto":
        verbose = 1 if bar_can_be_drawn() else 2
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    if verbose == 0:
        return None
    if verbose == 1 and bar_can_be_drawn():
        return ProgressBar()
    return EpochLogger()
