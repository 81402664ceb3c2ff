"""The fit loop: epochs of SGD over random minibatches (seed 004), with clipping and history.

``batch_size=1`` is per-example SGD, ``batch_size=None`` (or >= N) full batch, anything
between random minibatches re-drawn every epoch. Each step is one batched forward and
backward pass and one optimizer update over the flat parameter buffer.

``fit`` runs in four named phases: *prepare* (every argument and array checked, before the
model is touched: ``FitPlan``), *epoch* (shuffle, gather each batch), *step* (``TrainingStep``:
forward, loss and backward into its own buffers, the divergence flag, clipping, and the
optimizer update under the model's write lock) and *record* (the epoch's history, the
validation data, progress and early stopping).

Nothing in a step reads a value back to the host on the GPU: the loss and the metric are
summed on the device and read once per epoch. A non-finite loss or gradient sets a sticky
device flag that turns every later update of the epoch into a no-op, so the parameters
stay as they were before the bad step; the flag is read at the end of the epoch (after
every step where the backend's reads are free, i.e. on the CPU) and training stops with an
error. The model is used through its public training interface only (``MLP``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import as_batch_stream
from .feeds import RowsFeed, StreamFeed, epoch_order, with_weights
from .metrics import (accuracy, labels_of, metric_from_sums, metric_name, predicted_labels,
                      r2_score, total_sum_of_squares)
from .optim import make_optimizer
from .schedules import as_early_stopping, as_schedule
from .step_graph import StepGraph, graphs_wanted
from .validation import Learned, check_bool, check_int, check_real, check_sample_weight
from . import checkpoint
from .callbacks import (Callback, EarlyStoppingCallback, EpochLogger, ProgressBar, check_callbacks, progress_callback,
                        wants_batch_hooks)
from .distributed import Communicator, fingerprint, params_hash, shard_bounds

__all__ = ["fit", "History", "TrainingDiverged", "TrainingInterrupted", "TrainingRun", "TrainingStep", "FitPlan",
           "prepare", "batches", "run_epoch", "record_epoch", "evaluate", "rank_shards", "with_empty_shards"]

log = logging.getLogger("gpunet")


class TrainingDiverged(FloatingPointError):
    """The loss or gradient became NaN or infinite during ``fit``.

    The model then keeps parameters whose outputs are finite (see ``fit``); the message says
    which."""


class History(dict, Callback):
    """Per-epoch records of a ``fit``, and the first of its callbacks.

    ``history["loss"]``, ``history["accuracy"]`` (or ``"r2"``), ``"val_loss"`` and
    ``"val_accuracy"`` with validation data, ``history["time"]`` in seconds and
    ``history["lr"]`` the learning rate of each epoch's last step: lists, one entry an epoch.
    With early stopping: ``stopped_epoch`` (1-based epoch after which it stopped; None when
    every epoch ran), ``best_epoch`` and ``best_value`` of the monitored metric.

    Parameters
    ----------
    *args, **kwargs
        As for ``dict``: the records to start from (``fit`` makes it with ``for_plan``).
    """

    stopped_epoch = None
    best_epoch = None
    best_value = None

    @property
    def stopped_early(self) -> bool:
        """Whether early stopping ended the fit before its last epoch.

        Returns
        -------
        bool
            True when ``stopped_epoch`` is set.
        """
        return self.stopped_epoch is not None

    @property
    def epochs(self) -> int:
        """The number of epochs recorded.

        Returns
        -------
        int
            The length of ``history["loss"]``.
        """
        return len(self.get("loss", []))

    def __repr__(self):
        last = {k: v[-1] for k, v in self.items() if v}
        return f"History(epochs={self.epochs}, last={last})"

    @classmethod
    def for_plan(cls, plan: Any) -> "History":
        """An empty history with the keys a fit of ``plan`` records.

        Parameters
        ----------
        plan : FitPlan
            The checked fit (``prepare``).

        Returns
        -------
        History
            Empty lists under ``loss``, the metric, ``time``, ``val_*`` with validation
            data, and ``lr``.
        """
        history = cls(loss=[], **{plan.metric: []}, time=[])
        if plan.validation is not None:
            history["val_loss"], history[f"val_{plan.metric}"] = [], []
        history["lr"] = []
        return history

    def on_epoch_end(self, run: Any, epoch: int, logs: dict) -> None:
        """Append the epoch's figures.

        Parameters
        ----------
        run : TrainingRun
            The fit in progress.
        epoch : int
            The epoch that ended (0-based).
        logs : dict
            Its figures, by key.
        """
        for key, value in logs.items():
            self.setdefault(key, []).append(value)

    __hash__ = object.__hash__      # a callback among others (dict's would be None)


# ---- phase 1: prepare ------------------------------------------------------------------------
@dataclass
class FitPlan:
    """Everything a ``fit`` call will do, checked: the data on the device, the optimizer, the
    schedule and the stopping rule. Made by ``prepare`` before the model is touched."""

    epochs: int
    batch_size: int
    optimizer: Any
    clip_norm: float | None
    shuffle: bool
    schedule: Any
    base_lr: float | None
    callbacks: list           # gpunet.callbacks.Callback: progress, early stopping, the caller's
    x: Any                    # (N, n_0) backend array (None when a feed gives the batches)
    targets: Any              # (N,) labels or (N, K), backend
    weights: Any              # (N,) backend array of weight ratios, or None
    loss_denominator: float   # N, or the weights' sum (None for a stream: counted each epoch)
    ss_tot: Any               # per-output spread of the targets (regressors), else None
    validation: Any           # (x_val, targets_val) on the backend, or None
    metric: str
    learned: Any = None       # labels, feature names and input scaling the model will have (MLP.learnable)
    feed: Any = None          # gpunet.feeds.RowsFeed or StreamFeed: batches made on the host
    resume: Any = None        # gpunet.checkpoint.Checkpoint to continue from, or None
    comm: Any = None          # gpunet.distributed.Communicator: this rank's part of a data-parallel fit
    host_weights: Any = None  # (N,) host weight ratios (a distributed fit shares its batches by them)

    @property
    def n(self):
        """Training examples (None for a stream, whose size each epoch tells)."""
        return self.x.shape[0] if self.feed is None else self.feed.n

    @property
    def steps_per_epoch(self):
        if self.feed is not None:
            return self.feed.steps_per_epoch
        return -(-self.n // self.batch_size)

    def epoch_totals(self):
        """(examples, the loss's denominator, the targets' spread) of the epoch just run."""
        if self.feed is not None and self.feed.n is None:
            return self.feed.totals()
        return self.n, self.loss_denominator, self.ss_tot

    @property
    def schedule_per_step(self) -> bool:
        return self.schedule is not None and self.schedule.per == "step"

    @property
    def schedule_units(self) -> int:
        """The schedule's horizon: epochs, or optimizer steps for a per-step schedule."""
        return self.epochs * self.steps_per_epoch if self.schedule_per_step else self.epochs

    def lr_for(self, epoch: int, step: int):
        """The learning rate of step ``step`` of epoch ``epoch`` (a Python float: no device
        sync), or None without a schedule."""
        if self.schedule is None:
            return None
        t = epoch * self.steps_per_epoch + step if self.schedule_per_step else epoch
        return self.schedule.lr(self.base_lr, t, self.schedule_units)


def prepare(net, X, y, *, epochs, batch_size, lr, momentum, nesterov, clip_norm, validation_data, shuffle,
            progress, optimizer, schedule, early_stopping, sample_weight, host_batches=None, verbose=None,
            callbacks=None, resume_from=None, communicator=None) -> FitPlan:
    """Check every argument of ``fit`` and move the data to the model's backend."""
    epochs = check_int("epochs", epochs, low=0)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (or None for full batch), got {batch_size}")
    optimizer = _optimizer_for(optimizer, lr, momentum, nesterov)
    if clip_norm is not None:
        clip_norm = check_real("clip_norm", clip_norm, low=0.0, low_open=True)
    shuffle = check_bool("shuffle", shuffle)
    progress = check_bool("progress", progress)
    shown = progress_callback(("auto" if progress else 0) if verbose is None else verbose)
    if communicator is not None:
        if not isinstance(communicator, Communicator):
            raise TypeError(f"communicator must be a gpunet.distributed.Communicator, got "
                            f"{type(communicator).__name__}")
        if as_batch_stream(X) is not None:
            raise TypeError("a data-parallel fit shards arrays (or memory maps) that every rank holds; "
                            "a BatchStream is not sharded")
        if not communicator.is_main:
            shown = None                   # rank 0 alone shows progress
    callbacks = check_callbacks(callbacks)
    resume = None if resume_from is None else checkpoint.load(resume_from, net, optimizer)

    data = _training_data(net, X, y, sample_weight, batch_size, shuffle, epochs, host_batches)
    validation = _check_validation(net, validation_data, data["learned"])
    schedule = as_schedule(schedule)
    base_lr = getattr(optimizer, "lr", None)
    if schedule is not None and base_lr is None:
        raise TypeError("a schedule scales the optimizer's lr attribute, and this optimizer has none")
    if schedule is not None and schedule.per == "step" and data["feed"] is not None \
            and data["feed"].steps_per_epoch is None:
        raise ValueError("a per-step schedule needs the number of steps an epoch: "
                         "pass BatchStream(..., n_batches=...)")
    stopper = as_early_stopping(early_stopping)
    if stopper is not None:
        callbacks.insert(0, EarlyStoppingCallback(stopper))
    # early stoppings first: a checkpoint or a log written at an epoch's end sees their verdict
    callbacks.sort(key=lambda c: not isinstance(c, EarlyStoppingCallback))
    for c in callbacks:
        if isinstance(c, EarlyStoppingCallback):
            _check_monitor(c.stopper.monitor, net.is_classifier, validation is not None)
    if shown is not None:
        callbacks.append(shown)            # last: it shows what the others noted
    if resume is not None:
        resume.check_plan(epochs, callbacks)
    plan = FitPlan(epochs=epochs, optimizer=optimizer, clip_norm=clip_norm, shuffle=shuffle,
                   schedule=schedule, base_lr=base_lr, callbacks=callbacks, validation=validation,
                   metric=metric_name(net.is_classifier), resume=resume, comm=communicator, **data)
    if communicator is not None:
        _check_ranks_agree(net, plan, X, y, sample_weight, validation_data)
    return plan


def _check_ranks_agree(net, plan, X, y, sample_weight, validation_data):
    """Refuse, on every rank alike, a data-parallel fit whose ranks differ in the model, its
    parameters or shuffle state, the data, or the fit's arguments; the message names what."""
    facts = {f"the model's {key}": value for key, value in net.config().items() if key != "metadata"}
    facts.update({
        "the model's parameters": params_hash(net.flat_params, net.backend),
        "the shuffle generator's state": repr(net.shuffle_rng.bit_generator.state),
        "the number of examples": plan.n,
        "the features (sampled rows)": fingerprint(X if isinstance(X, np.ndarray) else np.asarray(X)),
        "the targets (sampled)": None if y is None else fingerprint(np.asarray(y)),
        "the sample weights": None if sample_weight is None else fingerprint(np.asarray(sample_weight)),
        "the validation data": None if validation_data is None else
        tuple(fingerprint(np.asarray(part)) for part in validation_data),
        "batch_size, epochs, shuffle, clip_norm": (plan.batch_size, plan.epochs, plan.shuffle, plan.clip_norm),
        "the optimizer": repr(plan.optimizer),
        "the schedule": repr(plan.schedule),
        "the callbacks": [type(c).__name__ for c in plan.callbacks if not isinstance(c, (ProgressBar, EpochLogger))],
    })
    plan.comm.check_same(facts)


_SGD_DEFAULTS = {"lr": 0.01, "momentum": 0.0, "nesterov": False}


def _optimizer_for(optimizer, lr, momentum, nesterov):
    """The optimizer ``fit`` uses: built from a name (or SGD) with ``lr``, ``momentum`` and
    ``nesterov`` (defaults 0.01, 0, False), or the object given, which they must then not
    contradict (they would otherwise be ignored without a word)."""
    if optimizer is None or isinstance(optimizer, str):
        given = {"lr": lr, "momentum": momentum, "nesterov": nesterov}
        lr, momentum, nesterov = (_SGD_DEFAULTS[k] if v is None else v for k, v in given.items())
        return _optimizer_by_name("sgd" if optimizer is None else optimizer, lr, momentum, nesterov)
    if not hasattr(optimizer, "step"):
        raise TypeError(f"optimizer must have a step() method, got {type(optimizer).__name__}")
    set_there = {"lr": getattr(optimizer, "lr", None), "momentum": getattr(optimizer, "momentum", None),
                 "nesterov": getattr(optimizer, "nesterov", None)}
    for name, value in {"lr": lr, "momentum": momentum, "nesterov": nesterov}.items():
        if value is not None and value != set_there[name]:
            raise ValueError(f"fit got {name}={value!r} and the optimizer object {optimizer!r}, whose "
                             f"{name} is {set_there[name]!r}: set it on the optimizer (fit's {name} configures "
                             "only the optimizer it builds from a name)")
    return optimizer


def _training_data(net, X, y, sample_weight, batch_size, shuffle, epochs, host_batches) -> dict:
    """The training data checked, and where its batches come from: the backend (in-memory
    data, moved once), a memory map read a batch of rows at a time, or a stream."""
    stream = as_batch_stream(X)
    if stream is not None:
        return _stream_data(net, stream, y, sample_weight, epochs)
    learned = net.learnable(X, y)
    on_host = _batches_from_host(net, X, host_batches)
    x_host = net.validate_features(X, feature_names=learned.feature_names, input_scaling=learned.input_scaling,
                                   convert=not on_host)
    y_host = net.validate_targets(y, x_host.shape[0], classes=learned.classes)
    w_host = check_sample_weight(sample_weight, x_host.shape[0])
    if w_host is not None:
        # only ratios matter: at most 1, so no batch sum overflows a float32 model
        w_host = w_host / w_host.max()
    be, n = net.backend, x_host.shape[0]
    batch_size = n if batch_size is None else min(batch_size, n)
    data = dict(batch_size=batch_size, learned=learned, x=None, targets=None, weights=None, feed=None,
                host_weights=w_host,
                loss_denominator=float(n if w_host is None else w_host.sum()),
                # R^2 from running sums needs the targets' spread, once
                ss_tot=None if net.is_classifier else total_sum_of_squares(y_host))
    if on_host:
        data["feed"] = RowsFeed(net, x_host, y_host, w_host, batch_size, shuffle, learned.input_scaling)
    else:
        data.update(x=be.asarray(x_host, dtype=net.dtype), targets=net.device_targets(y_host),
                    weights=None if w_host is None else be.asarray(w_host, dtype=net.dtype))
    return data


def _batches_from_host(net, X, host_batches) -> bool:
    """Whether X's batches are read from the host as they are needed: a memory map, or an
    array larger than the device's share of memory, unless ``host_batches`` says."""
    if host_batches is not None:
        host_batches = check_bool("host_batches", host_batches)
        if host_batches and not isinstance(X, np.ndarray):
            raise TypeError(f"host_batches=True reads the batches of a NumPy array (a memory map), "
                            f"got {type(X).__name__}")
        return host_batches
    if isinstance(X, np.memmap):
        return True
    return isinstance(X, np.ndarray) and X.ndim == 2 and \
        not net.backend.fits_on_device(X.shape[0] * X.shape[1] * net.dtype.itemsize)


def _stream_data(net, stream, y, sample_weight, epochs) -> dict:
    if y is not None:
        raise TypeError("a BatchStream yields its targets with its batches: y must be None")
    if sample_weight is not None:
        raise TypeError("a BatchStream yields its weights with its batches, as (X, y, w): "
                        "sample_weight must be None")
    if stream.one_shot and epochs > 1:
        raise ValueError(f"the BatchStream is a one-shot iterator, which serves one epoch, not {epochs}: "
                         "pass a function that returns a new iterator for each epoch")
    if net.standardize and net.input_scaling is None:
        raise ValueError("standardize=True learns the scaling from the whole data before training, which a "
                         "stream cannot give: pass MLP(input_scaling=gpunet.scaling.InputScaling.learn(sample))")
    learned = Learned(net.classes, net.feature_names, net.input_scaling)
    return dict(batch_size=None, learned=learned, x=None, targets=None, weights=None, host_weights=None,
                feed=StreamFeed(net, stream, learned), loss_denominator=None, ss_tot=None)


def _check_validation(net, validation_data, learned):
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError("validation_data must be a pair (X_val, y_val)")
    be = net.backend
    xv = be.asarray(net.validate_features(validation_data[0], name="X_val", feature_names=learned.feature_names,
                                          input_scaling=learned.input_scaling), dtype=net.dtype)
    yv = net.validate_targets(validation_data[1], xv.shape[0], name="y_val", classes=learned.classes)
    return xv, net.device_targets(yv)


def _optimizer_by_name(name, lr, momentum, nesterov):
    """``fit(optimizer="adam", lr=...)``: momentum and Nesterov only where they mean something."""
    key = name.strip().lower()
    options = {}
    if key == "sgd":
        options = {"momentum": momentum, "nesterov": nesterov}
    elif key == "rmsprop":
        if nesterov:
            raise ValueError("nesterov=True applies to optimizer='sgd' only")
        options = {"momentum": momentum}
    elif key in ("adam", "adamw") and (momentum or nesterov):
        raise ValueError(f"momentum/nesterov apply to optimizer='sgd' (momentum also to 'rmsprop'); "
                         f"{name!r} uses betas instead: pass an optimizer object such as "
                         "gpunet.optim.Adam(lr=1e-3, betas=(0.9, 0.999))")
    return make_optimizer(name, lr=lr, **options)


def _check_monitor(monitor, is_classifier, has_validation):
    metric = metric_name(is_classifier)
    known = ["loss", metric] + (["val_loss", f"val_{metric}"] if has_validation else [])
    if monitor not in known:
        if monitor in ("val_loss", f"val_{metric}"):
            raise ValueError(f"early stopping monitors {monitor!r} but fit() got no validation_data")
        raise ValueError(f"early stopping cannot monitor {monitor!r}; this fit records {', '.join(known)}")


# ---- phase 3: step ----------------------------------------------------------------------------
class TrainingStep:
    """One optimizer step of ``net`` on a batch, with fit's running sums and divergence flag.

    ``step(x, targets, row_scale, batch_weight, lr)`` runs the forward and backward pass in
    buffers of its own (one ``Workspace`` per batch size), then ``finish_step`` flags a
    non-finite loss or gradient, computes the clipping factor for ``clip_norm`` and adds the
    loss and a classifier's right predictions to the epoch's sums (a regressor's squared
    errors go to its own sums), and ``optimizer`` updates the parameters under the model's
    write lock, so concurrent readers see them before or after the update. On the device it
    reads nothing back: the flag, the factor and the sums stay there until ``end_epoch``.
    Where reads are free (the CPU) a bad step raises at once.

    With a ``communicator`` (``gpunet.distributed``) the step is one rank's share of a global
    batch: its gradient, scaled by the share (``share``: its rows' or weights' part of the
    batch), is summed across the ranks before the finish, so every rank updates with the
    global batch's gradient; a rank with no rows in a batch takes part with zeros.
    """

    def __init__(self, net, optimizer, clip_norm=None, communicator=None):
        self.net = net
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.comm = communicator
        self._zero_grads = self._zero_loss = None
        self._buffers = {}
        self._updating = net.writing_parameters()   # reusable: no allocation per step
        self._n_decay = net.n_weights
        self._no_options = {}
        self._hit_columns = None if not net.is_classifier else (
            1 if net.loss_fn.label_rule == "argmax" else net.sizes[-1])
        be = net.backend
        # the epoch's device sums: [loss, right predictions, a regressor's K squared errors]
        self.sums = be.zeros(2 + (0 if net.is_classifier else net.sizes[-1]), np.float64)
        self.bad = be.zeros((), np.bool_)
        self.scale = be.zeros((), net.dtype)
        self.epoch = self.steps = 0

    def begin_epoch(self, epoch: int):
        """Zero the epoch's device sums and divergence flag."""
        self.epoch, self.steps = epoch, 0
        self.sums.fill(0)
        self.bad.fill(False)

    def workspace(self, rows):
        """The step's buffers for batches of ``rows`` examples (made on first use)."""
        return self._buffers_for(rows)[0]

    def _buffers_for(self, rows):
        buffers = self._buffers.get(rows)
        if buffers is None:
            hits = None if self._hit_columns is None else \
                self.net.backend.zeros((rows, self._hit_columns), np.uint8)
            buffers = self._buffers[rows] = (self.net.workspace(rows), hits)
        return buffers

    def __call__(self, x, targets, row_scale=None, batch_weight=None, lr=None, share=1.0):
        """One step on the batch (x, targets) with per-example ``row_scale`` (and their sum
        ``batch_weight``; default the batch size); ``lr`` overrides the optimizer's rate.
        Distributed: ``share`` is this rank's part of the global batch, and ``x`` None when
        it has no rows of it."""
        self.steps += 1
        with np.errstate(over="ignore", invalid="ignore"):
            if x is None:
                loss, grads = self._no_rows()
            else:
                loss = self._gradients(x, targets, row_scale, batch_weight, share)
                grads = self._buffers[x.shape[0]][0].flat_grads
            if self.net.backend.host_reads_are_free and bool(self.bad):
                raise TrainingDiverged(
                    f"loss or gradient became non-finite at epoch {self.epoch + 1}, step {self.steps} "
                    f"(loss={float(loss)}); the update of that step was not made. "
                    "Try a smaller learning rate or clip_norm.")
            with self._updating:
                self._update(grads, lr)
        return loss

    def _no_rows(self):
        """A rank's part of a global batch that has no rows for it: zeros to the sum."""
        be, net = self.net.backend, self.net
        if self._zero_grads is None:
            self._zero_grads = be.zeros(net.n_params, net.dtype)
            self._zero_loss = be.zeros((), net.dtype)
        self._zero_grads.fill(0)
        self.comm.allreduce_sum(self._zero_grads, be)
        be.finish_step(self._zero_loss, self._zero_grads, self.sums, self.bad, self.scale, batch_weight=0.0,
                       clip_norm=self.clip_norm, hits=None)
        return self._zero_loss, self._zero_grads

    def device_step(self, x, targets, step_table):
        """The step's device work alone, for a CUDA graph to capture (``gpunet.step_graph``):
        the caller holds the write lock (``updating``) and counts the step; the optimizer
        reads its per-step scalars from ``step_table``."""
        with np.errstate(over="ignore", invalid="ignore"):
            self._gradients(x, targets, None, None)
            self._update(self._buffers[x.shape[0]][0].flat_grads, None, step_table)

    def updating(self):
        """The model's write lock, held around an update (reusable)."""
        return self._updating

    def _gradients(self, x, targets, row_scale, batch_weight, share=1.0):
        """Forward and backward pass (and, distributed, the sum across ranks), then the
        finish: flag, clip factor, running sums."""
        net, be = self.net, self.net.backend
        ws, hits = self._buffers.get(x.shape[0]) or self._buffers_for(x.shape[0])
        loss = net.loss_and_grad_into(x, targets, ws, row_scale=row_scale, include_decay=False, hits=hits)
        if self.comm is not None:
            if share != 1.0:
                ws.flat_grads *= share
            self.comm.allreduce_sum(ws.flat_grads, be)
        be.finish_step(loss, ws.flat_grads, self.sums, self.bad, self.scale,
                       batch_weight=x.shape[0] if batch_weight is None else batch_weight,
                       clip_norm=self.clip_norm, hits=hits)
        if hits is None:
            net.loss_fn.add_squared_errors(be, ws.output, targets, self.sums[2:])
        return loss

    def _update(self, grads, lr, step_table=None):
        net = self.net
        # an optimizer of the user's may take neither: each is passed only when it is set
        extra = self._no_options if lr is None and step_table is None else (
            {"lr": lr} if step_table is None else {"lr": lr, "step_table": step_table})
        self.optimizer.step(net.backend, net.flat_params, grads, weight_decay=net.weight_decay,
                            n_decay=self._n_decay, scale=self.scale, skip=self.bad, **extra)

    def end_epoch(self):
        """(loss sum, metric sum) of the epoch on the host: one read of the device. The metric
        sum is a classifier's count of right predictions, a regressor's per-output squared
        errors. Raises TrainingDiverged when a step was non-finite (its update and all later
        ones skipped)."""
        be = self.net.backend
        if not be.host_reads_are_free and bool(self.bad):
            discard = getattr(self.optimizer, "discard_skipped_steps", None)
            if discard is not None:
                discard()
            raise TrainingDiverged(
                f"loss or gradient became non-finite during epoch {self.epoch + 1}; the updates from the first "
                "bad step on were not made. Try a smaller learning rate or clip_norm.")
        if self.comm is not None:          # each rank summed its shards: the epoch's sums are theirs together
            self.comm.allreduce_sum(self.sums, be)
            wait = getattr(self.comm, "wait", None)
            if wait is not None:           # queued device sums: waited for with a deadline, not forever
                wait()
        sums = be.to_numpy(self.sums)
        return float(sums[0]), (sums[1] if self.net.is_classifier else sums[2:])


# ---- phase 2: epoch ---------------------------------------------------------------------------
def batches(backend, x, targets, weights, order, batch_size, sizes=None):
    """The minibatches of one epoch on the backend: ``(x_b, targets_b, row_scale, batch_weight)``
    gathered in ``order`` (host indices, moved to the device once), ``batch_size`` rows each
    (the last may be short), or ``sizes[i]`` rows the i-th when given; row_scale and
    batch_weight are None without ``weights``. Each batch is gathered in one op into buffers
    kept for the epoch: a batch's arrays are valid until the next one is drawn."""
    order = backend.asarray(order)
    sources = (x, targets) if weights is None else (x, targets, weights)
    kept = {}
    if sizes is None:
        sizes = [min(batch_size, order.shape[0] - start) for start in range(0, order.shape[0], batch_size)]
    start = 0
    for rows in sizes:
        idx = order[start:start + rows]
        start += rows
        batch = kept.get(rows)
        if batch is None:
            batch = kept[rows] = [backend.empty((rows, *a.shape[1:]), a.dtype) for a in sources]
        backend.gather_rows(idx, sources, batch)
        yield with_weights(batch, weights is not None)


def run_epoch(net, plan: FitPlan, step: TrainingStep, epoch: int, graph=None, run=None):
    """One pass over the data in (shuffled) batches, as replays of ``graph`` (a
    ``StepGraph``) when given; returns the lr of its last step. With a ``run``
    (``TrainingRun``) its batch hooks are called after each step, and the pass stops after
    the step in flight once an interrupt or a callback asks it to."""
    lr = plan.base_lr if plan.schedule is None else plan.lr_for(epoch, 0)
    step_lr = None if plan.schedule is None else lr
    step.begin_epoch(epoch)
    shares = None
    if plan.comm is not None:
        epoch_batches, shares = _rank_batches(net, plan)
    elif plan.feed is not None:
        epoch_batches = plan.feed.epoch(epoch)
    else:
        order = epoch_order(net, plan.n, plan.shuffle)
        if graph is not None:
            lrs = [plan.lr_for(epoch, index) for index in range(plan.steps_per_epoch)]
            graph.run_epoch(order, lrs)
            return lr if lrs[-1] is None else lrs[-1]
        epoch_batches = batches(net.backend, plan.x, plan.targets, plan.weights, order, plan.batch_size)
    for index, (x, targets, row_scale, batch_weight) in enumerate(epoch_batches):
        if plan.schedule_per_step and index:
            lr = step_lr = plan.lr_for(epoch, index)
        loss = step(x, targets, row_scale, batch_weight, step_lr, share=1.0 if shares is None else shares[index])
        if run is not None:
            if run.batch_hooks:
                run.notify("on_batch_end", index, loss)
            # a data-parallel fit stops at an epoch's end, where its ranks can agree
            if plan.comm is None and (run.interrupt_requested or (run.batch_hooks and run.stop_training)):
                break
    return lr


def _rank_batches(net, plan: FitPlan):
    """This rank's shards of the epoch's global batches (``gpunet.distributed``), and each
    shard's share of its batch; a shard without rows comes as ``x`` None."""
    order = epoch_order(net, plan.n, plan.shuffle)
    mine, shares = rank_shards(order, plan.batch_size, plan.comm, plan.host_weights)
    if plan.feed is not None:
        shards = plan.feed.batches_for(mine)
    else:
        shards = batches(net.backend, plan.x, plan.targets, plan.weights, np.concatenate(mine),
                         plan.batch_size, sizes=[m.shape[0] for m in mine if m.shape[0]])
    return with_empty_shards(shards, mine), shares


def rank_shards(order, batch_size, comm, weights=None):
    """A rank's part of an epoch: every rank draws the same ``order``, cuts each global batch
    of ``batch_size`` rows into ``comm.size`` nearly equal shards and takes its own.
    Returns (the shards' row indices, each shard's share of its batch: rows, or the part of
    the batch's ``weights``)."""
    mine, shares = [], []
    for start in range(0, order.shape[0], batch_size):
        batch = order[start:start + batch_size]
        lo, hi = shard_bounds(batch.shape[0], comm.size, comm.rank)
        mine.append(batch[lo:hi])
        if weights is None:
            shares.append((hi - lo) / batch.shape[0])
        else:
            total = float(weights[batch].sum())
            shares.append(float(weights[mine[-1]].sum()) / total if total > 0 else 0.0)
    return mine, shares


def with_empty_shards(shards, mine):
    """The batches of the non-empty shards in ``mine``, with ``(None,) * 4`` in the place of
    an empty one (the step then adds zeros to the sum)."""
    for idx in mine:
        yield next(shards) if idx.shape[0] else (None, None, None, None)


# ---- phase 4: record --------------------------------------------------------------------------
def record_epoch(net, plan: FitPlan, sums, lr, started) -> dict:
    """The epoch's figures (``started``: its ``perf_counter`` start): what the callbacks get
    and ``History`` appends."""
    loss_sum, metric_sum = sums
    n, loss_denominator, ss_tot = plan.epoch_totals()
    record = {"loss": loss_sum / loss_denominator, plan.metric: metric_from_sums(metric_sum, n, ss_tot)}
    if plan.validation is not None:
        record["val_loss"], record[f"val_{plan.metric}"] = evaluate(net, *plan.validation)
    record["lr"] = lr
    record["time"] = time.perf_counter() - started
    return record


def evaluate(net, x, targets):
    """(loss without the L2 term, metric) on backend arrays (x, targets)."""
    with np.errstate(over="ignore", invalid="ignore"):
        loss = float(net.evaluate_loss(x, targets, include_decay=False))
        out = net.evaluate_outputs(x, logits=net.is_classifier)
    if net.is_classifier:
        rule = net.loss_fn.label_rule
        return loss, accuracy(labels_of(targets, rule), predicted_labels(out, rule))
    be = net.backend
    return loss, r2_score(be.to_numpy(targets), be.to_numpy(out))


# ---- the run: what callbacks see, interrupts, divergence ------------------------------------------
class TrainingRun:
    """A fit in progress, as its callbacks see it: ``net``, ``history``, ``optimizer``,
    ``epoch`` (0-based, the current or last one), ``epochs``, ``stop_training`` (set it to
    stop after this epoch or step), ``interrupted`` and ``diverged`` (how it ended),
    ``kept`` (which parameters the model holds after an early end), ``resumed_from`` (the
    checkpoint it continues, or None) and ``save_checkpoint(path)``."""

    def __init__(self, net, plan: FitPlan, history: History, callbacks):
        self.net, self.plan, self.history, self.callbacks = net, plan, history, callbacks
        self.optimizer = plan.optimizer
        self.epochs = plan.epochs
        self.epoch = 0
        self.first_epoch = 0
        self.stop_training = False
        self.interrupted = False
        self.interrupt_requested = False
        self.diverged = False
        self.kept = "the parameters of its last step"
        self.resumed_from = None
        self.writes_files = plan.comm is None or plan.comm.is_main    # rank 0 alone writes
        self.batch_hooks = wants_batch_hooks(callbacks)
        self._epoch_start = self._fit_start = None

    def notify(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def save_checkpoint(self, path):
        """Write a checkpoint of this run at the end of its current epoch (``gpunet.checkpoint``)."""
        checkpoint.save(path, self)

    def mark_epoch_start(self):
        """Keep the parameters the epoch starts from (a device copy, no host read), and
        those the fit started from: what a diverged fit falls back to."""
        if self._epoch_start is None:
            self._fit_start = self.net.flat_params.copy()
            self._epoch_start = self.net.flat_params.copy()
        else:
            self._epoch_start[...] = self.net.flat_params

    def fall_back(self):
        """After a divergence: the parameters the epoch started from if the model's outputs
        on (up to 4096 of) the training or validation examples are finite with them, else
        those the fit started from. The last good step's may be finite yet overflow."""
        if self._epoch_start is None:
            return
        candidates = [(self._epoch_start, f"the parameters it had at the start of epoch {self.epoch + 1}"),
                      (self._fit_start, "the parameters it had before this fit")]
        for params, kept in candidates:
            with self.net.writing_parameters():
                self.net.flat_params[...] = params
            self.kept = kept
            if self._outputs_finite():
                return

    def _outputs_finite(self) -> bool:
        x = self.plan.x if self.plan.x is not None else (None if self.plan.validation is None
                                                         else self.plan.validation[0])
        if x is None:                  # a stream or a memory map without validation data: nothing at hand
            return True
        with np.errstate(over="ignore", invalid="ignore"):
            out = self.net.evaluate_outputs(x[:4096])
        return bool(np.isfinite(self.net.backend.to_numpy(out)).all())


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or another KeyboardInterrupt) stopped ``fit`` at a step boundary.

    The model keeps the parameters of its last step (the best epoch's with early stopping).
    A subclass of KeyboardInterrupt, so code that does not catch it stops as on any Ctrl-C.

    Parameters
    ----------
    message : str
        What happened, and what the model keeps.
    history : History
        The epochs that completed (the one interrupted is not recorded).
    epoch : int
        The epoch it stopped in (0-based).
    """

    def __init__(self, message: str, history: History, epoch: int) -> None:
        super().__init__(message)
        self.history, self.epoch = history, epoch


@contextlib.contextmanager
def _stop_at_a_step_boundary(run):
    """While fit runs in the main thread with Python's default SIGINT handling, Ctrl-C asks
    the loop to stop after the step in flight; a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def request_stop(signum, frame):
        if run.interrupt_requested:
            signal.default_int_handler(signum, frame)
        run.interrupt_requested = True
    signal.signal(signal.SIGINT, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _train_epochs(net, plan: FitPlan, run: TrainingRun, step: TrainingStep, graph):
    """The epochs from ``run.first_epoch``; returns when all ran or the run was stopped."""
    for epoch in range(run.first_epoch, plan.epochs):
        run.epoch = epoch
        started = time.perf_counter()
        run.mark_epoch_start()
        run.notify("on_epoch_begin", epoch)
        lr = run_epoch(net, plan, step, epoch, graph, run)
        if plan.comm is None and (run.interrupt_requested or run.stop_training):   # stopped within the epoch
            run.interrupted = run.interrupt_requested
            return
        record = record_epoch(net, plan, step.end_epoch(), lr, started)
        if plan.comm is not None:          # every rank must hold the same parameters
            plan.comm.check_same({f"the parameters after epoch {epoch + 1}": params_hash(net.flat_params, net.backend)})
        run.notify("on_epoch_end", epoch, record)
        if plan.comm is not None:          # the ranks stop together: any rank's Ctrl-C or callback
            votes = plan.comm.allgather((run.stop_training, run.interrupt_requested))
            run.stop_training = any(stop for stop, _ in votes)
            run.interrupt_requested = any(asked for _, asked in votes)
        if run.stop_training or run.interrupt_requested:
            run.interrupted = run.interrupt_requested
            return


# ---- the loop ---------------------------------------------------------------------------------
def fit(net: Any, X: Any, y: Any = None, epochs: int = 10, batch_size: int | None = 32, lr: float | None = None, *,
        momentum: float | None = None, nesterov: bool | None = None, clip_norm: float | None = None,
        validation_data: tuple | None = None, shuffle: bool = True, progress: bool = True,
        verbose: int | str | None = None, optimizer: Any = None, schedule: Any = None, early_stopping: Any = None,
        sample_weight: Any = None, host_batches: bool | None = None, callbacks: list | None = None,
        resume_from: str | os.PathLike | None = None, communicator: Any = None) -> History:
    """Train the model in place by minibatch SGD (or another optimizer) and return its history.

    Each step is one batched forward and backward pass and one optimizer update; on a GPU
    nothing in a step reads a value back to the host. Every argument is checked before the
    model is touched. The model is claimed for the whole call: a second ``fit`` of it (from
    any thread) raises RuntimeError, and other threads' inference sees the parameters
    between two optimizer steps. ``MLP.fit`` is this function bound to the model.

    Parameters
    ----------
    net : gpunet.MLP
        The model (``net.fit(...)`` passes it).
    X : array-like, pandas.DataFrame, numpy.memmap or gpunet.data.BatchStream
        Features (N, n_0). A DataFrame's columns are taken by name once the model has learned
        them; a memory map is checked once in row chunks and read a batch of rows at a time;
        a ``BatchStream`` (or a function returning an epoch's batches) yields
        ``(X_batch, y_batch[, w_batch])`` and then y must be None.
    y : array-like, optional
        Class labels (N,) (numbers, or strings and booleans the model learns as its
        ``classes``) or one-hot rows (N, K) for classifiers; targets (N, K) for regressors.
    epochs : int, default 10
        The total number of epochs (counted from the first, also when resuming).
    batch_size : int or None, default 32
        Examples a step; 1 is per-example SGD, None (or >= N) full batch.
    lr : float, optional
        Learning rate of the optimizer fit builds (default 0.01).
    momentum : float, optional
        Momentum of the SGD or RMSprop fit builds (default 0).
    nesterov : bool, optional
        Nesterov momentum for the SGD fit builds (default False).
    clip_norm : float, optional
        Rescale the gradient when its global L2 norm exceeds this.
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch (``val_loss`` and ``val_accuracy`` or ``val_r2``).
    shuffle : bool, default True
        Draw a new order of the examples every epoch.
    progress : bool, default True
        False shows nothing (as ``verbose=0``).
    verbose : {0, 1, 2, "auto"}, optional
        0 silent, 1 a bar over the epochs where one can be drawn (a terminal, or a notebook
        through ``tqdm.auto``), 2 a line per epoch on stderr; "auto" (the default unless
        ``progress=False``) a bar where one can be drawn, else lines. Nothing shown adds a
        host synchronisation per step.
    optimizer : str or gpunet.optim.Optimizer, optional
        ``"sgd"`` (default), ``"adam"``, ``"adamw"``, ``"rmsprop"`` (built with ``lr``, and
        ``momentum``/``nesterov`` where they apply), or an object, whose state then carries
        over between calls and which ``lr``/``momentum``/``nesterov`` must not contradict.
    schedule : gpunet.schedules.Schedule or callable, optional
        Scales the optimizer's lr per epoch or per step (``f(epoch) -> factor`` per epoch);
        ``history["lr"]`` holds the lr of each epoch's last step.
    early_stopping : bool or gpunet.schedules.EarlyStopping, optional
        Stop on a stalled per-epoch metric and restore the best epoch's parameters.
    sample_weight : array-like, optional
        (N,) weights: every batch minimises ``sum(w l) / sum(w)``; ``history["loss"]`` is
        the weighted mean over the epoch (the metrics stay unweighted).
    host_batches : bool, optional
        Make the batches come from the host a batch at a time (on a GPU, copied while the
        step before runs) rather than moving the data to the device once. None: memory maps,
        and arrays larger than half the device's free memory.
    callbacks : list of gpunet.callbacks.Callback, optional
        Called at the start and end of training and of each epoch (``ModelCheckpoint``,
        ``CSVLogger``, ``LambdaCallback``, ``EarlyStopping``, your own).
    resume_from : str or os.PathLike, optional
        A checkpoint (``ModelCheckpoint``) of a fit with the same data and arguments:
        training continues from its next epoch and ends bit for bit where the uninterrupted
        fit ends.
    communicator : gpunet.distributed.Communicator, optional
        Train data-parallel: every rank (process) calls ``fit`` with the same data and
        arguments, takes its shard of each global batch of ``batch_size`` rows, and the
        gradients are summed across ranks once a step, so every rank holds the parameters
        the single-process fit with that batch size would. Rank 0 alone shows progress and
        writes files. See ``gpunet.distributed``.

    Returns
    -------
    History
        Per-epoch ``loss``, ``accuracy`` or ``r2``, ``val_*``, ``lr`` and ``time``, and with
        early stopping ``stopped_epoch``, ``best_epoch`` and ``best_value``.

    Raises
    ------
    TypeError, ValueError
        A bad argument or array, named; the model is unchanged.
    RuntimeError
        The model is being trained by another ``fit``.
    gpunet.distributed.DistributedError
        Data-parallel: the ranks differ in the model, data or arguments (named), their
        parameters drifted apart, or a collective timed out (a rank died).
    TrainingDiverged
        The loss or gradient became non-finite; the model keeps parameters whose outputs are
        finite (the best epoch's with early stopping, else the diverging epoch's start, else
        those from before the fit).
    TrainingInterrupted
        Ctrl-C (a KeyboardInterrupt) stopped training at a step boundary; it carries the
        history, and the model keeps its last step's parameters (the best epoch's with early
        stopping).
    """
    plan = prepare(net, X, y, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov,
                   clip_norm=clip_norm, validation_data=validation_data, shuffle=shuffle, progress=progress,
                   optimizer=optimizer, schedule=schedule, early_stopping=early_stopping,
                   sample_weight=sample_weight, host_batches=host_batches, verbose=verbose, callbacks=callbacks,
                   resume_from=resume_from, communicator=communicator)
    with net.training():
        net.classes, net.feature_names, net.input_scaling = plan.learned   # what the data told, once checked
        history = History.for_plan(plan)
        run = TrainingRun(net, plan, history, [history, *plan.callbacks])
        step = TrainingStep(net, plan.optimizer, plan.clip_norm, communicator=plan.comm)
        if plan.resume is not None:
            checkpoint.restore(plan.resume, run)
        eager = run.batch_hooks or plan.comm is not None     # a graph holds no collective here
        graph = StepGraph(step, plan) if not eager and graphs_wanted(net, plan.optimizer, plan) else None
        with _stop_at_a_step_boundary(run):
            _run_to_the_end(net, plan, run, step, graph)
    return history


def _run_to_the_end(net, plan, run, step, graph):
    """The epochs with the callbacks' begin and end around them, however they end."""
    try:
        run.notify("on_train_begin")
        _train_epochs(net, plan, run, step, graph)
    except TrainingDiverged as exc:
        run.diverged = True
        run.fall_back()
        diverged = exc
    except KeyboardInterrupt:             # a second Ctrl-C, or fit outside the main thread
        run.interrupted = True
    finally:
        run.notify("on_train_end")
    if run.diverged:
        # the parameters of the last good step may be finite yet overflow at inference
        raise TrainingDiverged(f"{diverged} The model keeps {run.kept}.") from None
    if run.interrupted:
        raise TrainingInterrupted(f"training interrupted in epoch {run.epoch + 1}; {len(run.history['loss'])} "
                                  f"epoch(s) completed, the model keeps {run.kept}", run.history, run.epoch)
