"""Metrics: accuracy and the coefficient of determination R^2, in one place.

``fit`` keeps running sums on the device during an epoch (a classifier's right predictions,
a regressor's squared errors per output: see ``gpunet.train.TrainingStep``; no host sync)
and turns them into the epoch's figure once (``metric_from_sums``); ``score`` and the
validation data use ``accuracy`` and ``r2_score`` on whole arrays. Both paths compute R^2
as scikit-learn does: per output column, then averaged.
"""
from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "r2_score", "r2_from_sums", "total_sum_of_squares", "metric_name", "labels_of",
           "predicted_labels", "metric_from_sums"]


def metric_name(is_classifier: bool) -> str:
    """The name of a model's metric in histories and scores: "accuracy" or "r2"."""
    return "accuracy" if is_classifier else "r2"


def labels_of(targets, rule="argmax"):
    """The labels targets stand for, on any backend: for "argmax", int labels (N,) from labels
    or one-hot/probability rows (N, K); for "threshold", 0/1 indicators (N, K) (y > 0.5)."""
    if rule == "threshold":
        return (targets > 0.5).astype(np.int64)
    return targets if targets.ndim == 1 else targets.argmax(axis=1)


def predicted_labels(logits, rule="argmax"):
    """A classifier's labels from the logits its loss takes: the argmax (N,), or 0/1
    indicators (N, K) where the sigmoid passes 0.5 (the logit passes 0)."""
    if rule == "threshold":
        return (logits > 0).astype(np.int64)
    return logits.argmax(axis=1)


def accuracy(labels, predicted) -> float:
    """Fraction of rows whose ``predicted`` labels all equal ``labels`` (N,) or (N, K), any
    backend: plain accuracy for one label per row, subset accuracy for indicator rows."""
    hits = predicted == labels
    if hits.ndim == 2:
        hits = hits.all(axis=1)
    return float(hits.mean())


def r2_from_sums(ss_res, ss_tot) -> float:
    """R^2 averaged over outputs from per-output sums of squared residuals ``ss_res`` and of
    squared deviations from the mean ``ss_tot`` (host arrays (K,)). A constant target counts
    1 when it is predicted exactly and 0 otherwise, as scikit-learn does."""
    ss_res = np.asarray(ss_res, dtype=np.float64)
    ss_tot = np.asarray(ss_tot, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def total_sum_of_squares(targets) -> np.ndarray:
    """Per-output ``sum((y - mean(y))^2)`` of host targets (N,) or (N, K), in float64."""
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    return ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)


def r2_score(targets, pred) -> float:
    """Coefficient of determination, averaged over output columns (scikit-learn's default);
    host arrays (N,) or (N, K)."""
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    return r2_from_sums(((targets - pred) ** 2).sum(axis=0), total_sum_of_squares(targets))


def metric_from_sums(metric_sum, n_examples: int, ss_tot) -> float:
    """The epoch's metric from fit's running sums (host): accuracy when
    ``ss_tot`` is None, else R^2 with the targets' per-output ``ss_tot``."""
    if ss_tot is None:
        return float(metric_sum) / n_examples
    return r2_from_sums(metric_sum, ss_tot)
