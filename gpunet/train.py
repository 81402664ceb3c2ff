"""The fit loop: epochs of SGD over random minibatches (seed 004), with clipping and history.

``batch_size=1`` is per-example SGD, ``batch_size=None`` (or >= N) full batch, anything
between random minibatches re-drawn every epoch. Each step is one batched forward and
backward pass and one optimizer update over the flat parameter buffer.

Nothing in a step reads a value back to the host on the GPU: the loss and the metric are
summed on the device and read once per epoch. A non-finite loss or gradient sets a sticky
device flag that turns every later update of the epoch into a no-op, so the parameters
stay as they were before the bad step; the flag is read at the end of the epoch (on the
CPU after every step, where reading it is free) and training stops with an error.
"""
from __future__ import annotations

import logging
import sys
import time

import numpy as np

from .losses import row_scale_from_weights
from .optim import make_optimizer
from .schedules import as_early_stopping, as_schedule
from .validation import check_bool, check_int, check_real, check_sample_weight

__all__ = ["fit", "History", "TrainingDiverged"]

log = logging.getLogger("gpunet")


class TrainingDiverged(FloatingPointError):
    """The loss or gradient became NaN or infinite; the model holds the last good parameters."""


class History(dict):
    """Per-epoch records: ``history["loss"]``, ``history["accuracy"]`` (or ``"r2"``), and
    ``"val_loss"``/``"val_accuracy"`` with validation data; ``history["time"]`` in seconds;
    ``history["lr"]`` the learning rate of each epoch's last step.

    With early stopping: ``stopped_epoch`` (1-based epoch after which it stopped; None when
    every epoch ran), ``best_epoch`` and ``best_value`` of the monitored metric."""

    stopped_epoch = None
    best_epoch = None
    best_value = None

    @property
    def stopped_early(self) -> bool:
        return self.stopped_epoch is not None

    @property
    def epochs(self) -> int:
        return len(self.get("loss", []))

    def __repr__(self):
        last = {k: v[-1] for k, v in self.items() if v}
        return f"History(epochs={self.epochs}, last={last})"


def _progress_bar(enabled, epochs):
    """A tqdm bar over epochs when asked for, tqdm is installed and stderr is a terminal."""
    if not enabled or epochs == 0:
        return None
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        log.info("gpunet: install tqdm (pip install 'gpunet[progress]') for a progress bar")
        return None
    return tqdm(total=epochs, unit="epoch", dynamic_ncols=True, leave=True)


def _check_validation(net, validation_data):
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise TypeError("validation_data must be a pair (X_val, y_val)")
    from .validation import check_features
    xv = check_features(validation_data[0], net.sizes[0], name="X_val", dtype=net.dtype)
    yv = net._check_targets(validation_data[1], xv.shape[0], name="y_val")
    return net.backend.asarray(xv, dtype=net.dtype), net._device_targets(yv)


def fit(net, X, y, *, epochs=10, batch_size=32, lr=0.01, momentum=0.0, nesterov=False,
        clip_norm=None, validation_data=None, shuffle=True, progress=True, optimizer=None,
        schedule=None, early_stopping=None, sample_weight=None):
    """Train ``net`` in place and return a ``History``.

    X (N, n_0); y: labels (N,) or one-hot (N, K) for classifiers, (N, K) targets for
    regressors. ``lr``, ``momentum``, ``nesterov`` configure SGD unless an ``optimizer``
    is given: an object (e.g. ``gpunet.optim.Adam(lr=1e-3)``), whose state then carries
    over between calls, or a name (``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``) built
    with ``lr`` (and ``momentum``/``nesterov`` where they apply).
    ``clip_norm`` rescales the gradient when its global L2 norm exceeds it.
    ``schedule`` (``gpunet.schedules``, or ``f(epoch) -> factor``) scales the optimizer's
    lr per epoch or per step; ``history["lr"]`` holds the lr of each epoch's last step.
    ``early_stopping`` (True or a ``gpunet.schedules.EarlyStopping``) stops on a stalled
    per-epoch metric and restores the best epoch's parameters; see ``History``.
    ``sample_weight`` (N,) weighs each example's loss: every batch minimises its weighted
    mean ``sum(w l) / sum(w)``, and ``history["loss"]`` is the weighted mean over the epoch
    (accuracy and R^2 stay unweighted, as does the validation data).
    Every argument is checked before the model is touched.
    """
    epochs = check_int("epochs", epochs, low=0)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (or None for full batch), got {batch_size}")
    if optimizer is None or isinstance(optimizer, str):
        optimizer = _optimizer_by_name("sgd" if optimizer is None else optimizer, lr, momentum, nesterov)
    elif not hasattr(optimizer, "step"):
        raise TypeError(f"optimizer must have a step() method, got {type(optimizer).__name__}")
    if clip_norm is not None:
        clip_norm = check_real("clip_norm", clip_norm, low=0.0, low_open=True)
    shuffle = check_bool("shuffle", shuffle)
    progress = check_bool("progress", progress)

    from .validation import check_features
    x_host = check_features(X, net.sizes[0], dtype=net.dtype)
    y_host = net._check_targets(y, x_host.shape[0])
    w_host = check_sample_weight(sample_weight, x_host.shape[0])
    if w_host is not None:
        # only ratios matter: at most 1, so no batch sum overflows a float32 model
        w_host = w_host / w_host.max()
    val = _check_validation(net, validation_data)
    schedule = as_schedule(schedule)
    base_lr = getattr(optimizer, "lr", None)
    if schedule is not None and base_lr is None:
        raise TypeError("a schedule scales the optimizer's lr attribute, and this optimizer has none")
    stopper = as_early_stopping(early_stopping)
    if stopper is not None:
        _check_monitor(stopper.monitor, net.is_classifier, val is not None)

    be = net.backend
    xp = be.xp
    n = x_host.shape[0]
    bs = n if batch_size is None else min(batch_size, n)
    x_all = be.asarray(x_host, dtype=net.dtype)
    t_all = net._device_targets(y_host)
    w_all = None if w_host is None else be.asarray(w_host, dtype=net.dtype)
    loss_denominator = float(n if w_host is None else w_host.sum())
    metric = "accuracy" if net.is_classifier else "r2"
    history = History(loss=[], **{metric: []}, time=[])
    if val is not None:
        history["val_loss"], history[f"val_{metric}"] = [], []
    # R^2 from running sums needs the targets' spread, once
    ss_tot = None if net.is_classifier else ((y_host - y_host.mean(axis=0)) ** 2).sum(axis=0)
    eager = be.name == "numpy"    # on the CPU a check per step costs nothing
    counts_steps = not eager and isinstance(getattr(optimizer, "step_count", None), int)

    history["lr"] = []
    steps_per_epoch = -(-n // bs)
    per_step = schedule is not None and schedule.per == "step"
    total_units = epochs * steps_per_epoch if per_step else epochs
    epoch_lr = base_lr
    best_params = None
    if stopper is not None:
        stopper.reset()
        if stopper.restore_best_weights:
            best_params = net.flat_params.copy()

    bar = _progress_bar(progress, epochs)
    try:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            order = net._shuffle_rng.permutation(n) if shuffle else np.arange(n)
            order_dev = be.asarray(order)
            loss_sum = xp.zeros((), dtype=np.float64)
            metric_sum = xp.zeros(() if net.is_classifier else (y_host.shape[1],), dtype=np.float64)
            bad = xp.zeros((), dtype=bool)
            # on the device a bad step is skipped, not refused: an optimizer that counts its
            # steps (Adam's bias correction) must not count the skipped ones
            skipped = xp.zeros((), dtype=np.int64) if counts_steps else None
            if schedule is not None and not per_step:
                epoch_lr = schedule.lr(base_lr, epoch, total_units)
            for step, start in enumerate(range(0, n, bs)):
                if per_step:    # a Python float per step: no device sync
                    epoch_lr = schedule.lr(base_lr, epoch * steps_per_epoch + step, total_units)
                lr_arg = {} if schedule is None else {"lr": epoch_lr}
                idx = order_dev[start:start + bs]
                xb = be.take_rows(x_all, idx)
                tb = be.take_rows(t_all, idx)
                nb = xb.shape[0]
                row_scale, batch_weight = None, nb
                if w_all is not None:
                    wb = be.take_rows(w_all, idx)
                    batch_weight = wb.sum()
                    row_scale = row_scale_from_weights(wb, batch_weight)
                with np.errstate(over="ignore", invalid="ignore"):
                    loss = net._loss_and_grad_device(xb, tb, include_decay=False, row_scale=row_scale)
                    gss = be.sumsq(net.flat_grads)
                    bad = bad | ~xp.isfinite(loss) | ~xp.isfinite(gss)
                    scale = 1.0
                    if clip_norm is not None:
                        scale = xp.minimum(1.0, clip_norm / (xp.sqrt(gss) + 1e-12)).astype(net.dtype)
                    if eager and bool(bad):
                        raise TrainingDiverged(
                            f"loss or gradient became non-finite at epoch {epoch + 1}, step {step + 1} "
                            f"(loss={float(loss)}); parameters are those from before that step. "
                            "Try a smaller learning rate or clip_norm.")
                    optimizer.step(be, net.flat_params, net.flat_grads, weight_decay=net.weight_decay,
                                   n_decay=net.n_weights, scale=scale, skip=bad, **lr_arg)
                    if skipped is not None:
                        skipped += bad
                    loss_sum += loss * batch_weight     # the batch's sum of (weighted) losses
                    metric_sum += _batch_metric(net, xb, tb)
            if not eager and bool(bad):
                if skipped is not None:
                    optimizer.step_count -= int(skipped)
                raise TrainingDiverged(
                    f"loss or gradient became non-finite during epoch {epoch + 1}; parameters are those "
                    "from before the first bad step. Try a smaller learning rate or clip_norm.")
            record = {"loss": float(loss_sum) / loss_denominator}
            if net.is_classifier:
                record[metric] = float(metric_sum) / n
            else:
                record[metric] = _r2_from_sums(be.to_numpy(metric_sum), ss_tot)
            if val is not None:
                record["val_loss"], record[f"val_{metric}"] = _evaluate(net, *val)
            record["lr"] = epoch_lr
            record["time"] = time.perf_counter() - t0
            for key, value in record.items():
                history[key].append(value)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "time"}, refresh=False)
                bar.update(1)
            if stopper is not None and _early_stopping_epoch(stopper, history, net, epoch, best_params):
                break
        if best_params is not None and stopper.best_epoch is not None:
            net.flat_params[...] = best_params
    finally:
        if bar is not None:
            bar.close()
    return history


def _batch_metric(net, xb, tb):
    """Running metric of the batch just trained on, from the outputs its forward pass left
    in the workspace: correct predictions (classifier) or per-output squared error."""
    out = net._workspace(xb.shape[0]).acts[-1]
    if net.is_classifier:
        labels = tb if tb.ndim == 1 else tb.argmax(axis=1)
        return (out.argmax(axis=1) == labels).sum()
    diff = out - tb
    return (diff * diff).sum(axis=0)


def _r2_from_sums(ss_res, ss_tot):
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def _evaluate(net, x, targets):
    """(loss, metric) on validation arrays already on the device."""
    from .mlp import r2_score
    with np.errstate(over="ignore", invalid="ignore"):
        loss = float(net._loss_device(x, targets, include_decay=False))
        out = net._infer(x, activate=False)
    if net.is_classifier:
        labels = targets if targets.ndim == 1 else targets.argmax(axis=1)
        return loss, float((out.argmax(axis=1) == labels).mean())
    return loss, r2_score(net.backend.to_numpy(targets), net.backend.to_numpy(out))


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
    metric = "accuracy" if is_classifier else "r2"
    known = ["loss", metric] + (["val_loss", f"val_{metric}"] if has_validation else [])
    if monitor not in known:
        if monitor in ("val_loss", f"val_{metric}"):
            raise ValueError(f"early stopping monitors {monitor!r} but fit() got no validation_data")
        raise ValueError(f"early stopping cannot monitor {monitor!r}; this fit records {', '.join(known)}")


def _early_stopping_epoch(stopper, history, net, epoch, best_params):
    """Feed the epoch's monitored value to ``stopper``, keep the best parameters (a device
    copy), note the outcome on ``history``; True when training should stop now."""
    if stopper.update(epoch + 1, history[stopper.monitor][-1]):
        if best_params is not None:
            best_params[...] = net.flat_params
    history.best_epoch, history.best_value = stopper.best_epoch, stopper.best_value
    if stopper.should_stop:
        history.stopped_epoch = epoch + 1
        return True
    return False
