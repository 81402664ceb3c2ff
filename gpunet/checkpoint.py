"""Checkpoints: a fit's whole state at the end of an epoch, to resume it bit for bit.

A checkpoint is an ``.npz`` file read without pickle, written atomically (a temporary file
renamed over the target). It holds the model's config and parameters, the optimizer's
buffers and counters, the shuffle generator's state, the history so far, the epochs done,
and each early stopping's progress (with its best parameters). ``fit(..., resume_from=path)``
checks it against the model and the fit before anything is touched, then continues from the
next epoch; with the same data and arguments it ends where the uninterrupted fit ends, bit
for bit (the shuffles, the schedule's position and Adam's bias corrections all continue).
``MLP.load`` also reads a checkpoint's model (``load_model``).

The run is used through what ``gpunet.train.TrainingRun`` shows callbacks; this module
imports neither the model nor the fit loop.
"""
from __future__ import annotations

import os
import zipfile

from . import io
from .callbacks import EarlyStoppingCallback
from .backend import to_numpy

__all__ = ["Checkpoint", "save", "load", "restore", "FORMAT", "FORMAT_VERSION"]

FORMAT = "gpunet.Checkpoint"
FORMAT_VERSION = 1
# the model's config keys a resumed fit must share with the checkpoint (what it learns from
# the data, such as classes or the input scaling, it learns again)
_ARCHITECTURE = ("sizes", "activation", "output", "loss", "weight_decay", "dtype")
_MAX_STATE_CHARS = 1 << 26


def _bad(path, why):
    return ValueError(f"{path!s} is not a readable gpunet checkpoint: {why}")


def _stoppers(run):
    return [c for c in run.callbacks if isinstance(c, EarlyStoppingCallback)]


def save(path, run) -> None:
    """Write ``run``'s state (``gpunet.train.TrainingRun``) at the end of its current epoch."""
    net, history = run.net, run.history
    with net.reading_parameters():
        params = to_numpy(net.flat_params).copy()
    optimizer = run.optimizer.state(to_numpy) if hasattr(run.optimizer, "state") else None
    stoppers = [c.state(to_numpy) for c in _stoppers(run)]
    arrays = {"params": params}
    if optimizer is not None:
        for name, value in optimizer.pop("buffers").items():
            if value is not None:
                arrays[f"optimizer.{name}"] = value
    for i, stopper in enumerate(stoppers):
        best = stopper.pop("best_params")
        if best is not None:
            arrays[f"stopper{i}.best_params"] = best
    state = {"epoch": run.epoch + 1, "epochs": run.epochs, "rng": net.shuffle_rng.bit_generator.state,
             "history": dict(history), "history_attrs": {"stopped_epoch": history.stopped_epoch,
                                                           "best_epoch": history.best_epoch,
                                                           "best_value": history.best_value},
             "optimizer": optimizer, "stoppers": stoppers}
    io.save_archive(path, FORMAT, FORMAT_VERSION, {"model": net.config(), "state": state}, arrays)


class Checkpoint:
    """A checkpoint read and checked against the model and optimizer that will resume it."""

    def __init__(self, path, config, state, arrays):
        self.path, self.config, self.state, self.arrays = path, config, state, arrays

    @property
    def epoch(self) -> int:
        """Epochs completed when it was written."""
        return self.state["epoch"]

    def check_plan(self, epochs, callbacks) -> None:
        """Refuse a fit that cannot continue this run: fewer epochs than it has done, or
        another number of early stoppings."""
        if epochs < self.epoch:
            raise ValueError(f"{self.path}: the checkpoint has done {self.epoch} epoch(s); fit(epochs={epochs}) "
                             "would have nothing left (epochs is the total, counted from the first)")
        n_stoppers = sum(isinstance(c, EarlyStoppingCallback) for c in callbacks)
        if n_stoppers != len(self.state["stoppers"]):
            raise ValueError(f"{self.path}: the checkpointed fit had {len(self.state['stoppers'])} early stopping(s), "
                             f"this one has {n_stoppers}; resume with the same early_stopping and callbacks")


def _read(path):
    """(config, state, arrays) of a checkpoint file; a ValueError for anything else."""
    meta, arrays = io.load_archive(path, FORMAT, FORMAT_VERSION, ("model", "state"), _MAX_STATE_CHARS,
                                   what="checkpoint")
    config, state = meta["model"], meta["state"]
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise _bad(path, "its model and state are not JSON objects")
    needed = {"epoch", "epochs", "rng", "history", "history_attrs", "optimizer", "stoppers"}
    if not needed <= set(state):
        raise _bad(path, f"its state lacks {sorted(needed - set(state))}")
    if "params" not in arrays:
        raise _bad(path, "it holds no parameters")
    if type(state["epoch"]) is not int or state["epoch"] < 1:
        raise _bad(path, f"its epoch count is {state['epoch']!r}")
    return config, state, arrays


def load(path, net, optimizer) -> Checkpoint:
    """The checkpoint at ``path``, checked against ``net`` (architecture, parameter count and
    dtype) and ``optimizer`` (its kind and buffer shapes): a ValueError names any mismatch."""
    path = os.fspath(path)
    config, state, arrays = _read(path)
    mine = net.config()
    differs = [k for k in _ARCHITECTURE if config.get(k) != mine.get(k)]
    if differs:
        raise ValueError(f"{path}: the checkpoint's model differs from this one in {', '.join(differs)} "
                         f"({', '.join(f'{k}={config.get(k)!r}' for k in differs)})")
    params = arrays["params"]
    if params.shape != (net.n_params,) or params.dtype != net.dtype:
        raise _bad(path, f"its parameters are {params.shape} {params.dtype}, the model has ({net.n_params},) "
                         f"{net.dtype}")
    saved = state["optimizer"]
    if saved is not None:
        kind = type(optimizer).__name__
        if saved.get("kind") != kind:
            raise ValueError(f"{path}: the checkpointed fit used the optimizer {saved.get('kind')}, this one {kind}")
        for name in getattr(optimizer, "state_buffers", ()):
            value = arrays.get(f"optimizer.{name}")
            if value is not None and value.shape != params.shape:
                raise _bad(path, f"its optimizer buffer {name} has shape {value.shape}")
    for i, _ in enumerate(state["stoppers"]):
        best = arrays.get(f"stopper{i}.best_params")
        if best is not None and best.shape != params.shape:
            raise _bad(path, f"its best parameters have shape {best.shape}")
    return Checkpoint(path, config, state, arrays)


def restore(ckpt: Checkpoint, run) -> None:
    """Put ``ckpt``'s state into the model, optimizer, history and early stoppings of ``run``,
    which then starts at the checkpoint's next epoch."""
    net, state, arrays = run.net, ckpt.state, ckpt.arrays
    net.set_flat_params(arrays["params"])
    if state["optimizer"] is not None:
        saved = dict(state["optimizer"])
        saved["buffers"] = {name: arrays.get(f"optimizer.{name}") for name in run.optimizer.state_buffers}
        run.optimizer.load_state(saved, net.backend, net.flat_params)
    try:
        net.shuffle_rng.bit_generator.state = state["rng"]
    except (TypeError, ValueError, KeyError) as exc:
        raise _bad(ckpt.path, f"its shuffle state does not fit this model's generator ({exc})") from None
    history = run.history
    for key, values in state["history"].items():
        history[key] = list(values)
    for key, value in state["history_attrs"].items():
        setattr(history, key, value)
    for i, (callback, saved) in enumerate(zip(_stoppers(run), state["stoppers"])):
        callback.load_state({**saved, "best_params": arrays.get(f"stopper{i}.best_params")}, net)
    run.first_epoch = run.epoch = ckpt.epoch
    run.resumed_from = ckpt.path


def load_model_parts(path):
    """(config, params) of a checkpoint's model, for ``MLP.load``."""
    config, _, arrays = _read(os.fspath(path))
    return config, arrays["params"]


def is_checkpoint(path) -> bool:
    """Whether ``path`` names a checkpoint file (by its format member), without reading more."""
    try:
        with zipfile.ZipFile(os.fspath(path)) as archive:
            return "format.npy" in archive.namelist() and "state.npy" in archive.namelist()
    except io.READ_ERRORS:     # not a zip this zipfile reads: the model loader names the problem
        return False

