"""Checks of user input, each raising a TypeError or ValueError that names the problem.

All checks run before a model is touched, so a refused call leaves it unchanged.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["check_real", "check_int", "check_bool", "check_float_dtype", "as_host_array",
           "check_features", "check_labels", "check_targets", "check_binary_targets", "check_sample_weight"]


def check_real(name, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """A finite real number within [low, high] (open ends where asked)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_int(name, value, *, low=None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def check_float_dtype(dtype) -> np.dtype:
    """float32 or float64, given as a name or a dtype."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dt.name}")
    return dt


def as_host_array(name, x) -> np.ndarray:
    """A NumPy view of x (CuPy arrays are copied to the host) with a numeric dtype."""
    from .backend import to_numpy
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        arr = to_numpy(x)
    except Exception as exc:
        raise TypeError(f"{name} could not be read as an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _check_finite(name, arr, dtype=None):
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    # finite float64 values past float32's range would turn into inf in a float32 model
    if (dtype is not None and arr.dtype.kind == "f" and arr.size
            and np.dtype(dtype).itemsize < arr.dtype.itemsize):
        limit = float(np.finfo(dtype).max)
        if float(np.abs(arr).max()) > limit:
            raise ValueError(f"{name} has values beyond the {np.dtype(dtype).name} range of the model "
                             f"(|value| > {limit:.4g})")


def check_features(x, n_features: int, name="X", dtype=None) -> np.ndarray:
    """X must be (N, n_features), N >= 1, real and finite (in ``dtype`` too). Returns the host array."""
    arr = as_host_array(name, x)
    if arr.ndim != 2:
        hint = " (for one example use X.reshape(1, -1), for one feature X.reshape(-1, 1))" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_examples, n_features), got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no examples")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features but the network's input layer has {n_features}")
    _check_finite(name, arr, dtype)
    return arr


def check_labels(y, n_examples: int, n_classes: int, name="y") -> np.ndarray:
    """Class labels: integers (N,) in [0, n_classes), or one-hot / probability rows (N, n_classes).

    Returns int64 labels (N,) or float64 targets (N, n_classes).
    """
    arr = as_host_array(name, y)
    if arr.ndim == 2 and arr.shape[1] == 1 and n_classes != 1:
        arr = arr[:, 0]
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be labels (N,) or one-hot (N, {n_classes}), got shape {arr.shape}")
    if arr.shape[0] != n_examples:
        raise ValueError(f"X has {n_examples} examples but {name} has {arr.shape[0]}")
    _check_finite(name, arr)
    if arr.ndim == 2:
        if arr.shape[1] != n_classes:
            raise ValueError(f"one-hot {name} has width {arr.shape[1]} but the network has {n_classes} outputs")
        if (arr < 0).any() or not np.allclose(arr.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError(f"one-hot {name} rows must be non-negative and sum to 1")
        return arr.astype(np.float64)
    if arr.dtype.kind == "f":
        if (arr != np.round(arr)).any():
            raise ValueError(f"{name} holds fractional class labels; labels must be whole numbers 0..{n_classes - 1}")
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} holds booleans; pass integer class labels 0..{n_classes - 1}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        lo, hi = arr.min(), arr.max()
        raise ValueError(f"{name} has labels in [{lo:g}, {hi:g}] but must lie in 0..{n_classes - 1} "
                         f"(the network has {n_classes} outputs)")
    return arr.astype(np.int64)


def check_targets(y, n_examples: int, n_outputs: int, name="y", dtype=None) -> np.ndarray:
    """Regression targets (N, n_outputs), or (N,) when n_outputs == 1. Returns float64 (N, n_outputs)."""
    arr = as_host_array(name, y)
    if arr.ndim == 1 and n_outputs == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, {n_outputs}), got {arr.shape}")
    if arr.shape[0] != n_examples:
        raise ValueError(f"X has {n_examples} examples but {name} has {arr.shape[0]}")
    if arr.shape[1] != n_outputs:
        raise ValueError(f"{name} has {arr.shape[1]} columns but the network has {n_outputs} outputs")
    _check_finite(name, arr, dtype)
    return arr.astype(np.float64)


def check_binary_targets(y, n_examples: int, n_outputs: int, name="y") -> np.ndarray:
    """Targets of independent binary outputs (binary or multilabel classification): (N, n_outputs)
    indicators or probabilities in [0, 1], or (N,) when n_outputs == 1. Returns float64 (N, n_outputs)."""
    arr = as_host_array(name, y)
    if arr.ndim == 1 and n_outputs == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 0/1 indicators of shape (N, {n_outputs}), got shape {arr.shape}")
    if arr.shape[0] != n_examples:
        raise ValueError(f"X has {n_examples} examples but {name} has {arr.shape[0]}")
    if arr.shape[1] != n_outputs:
        raise ValueError(f"{name} has {arr.shape[1]} columns but the network has {n_outputs} outputs")
    _check_finite(name, arr)
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{name} must hold 0/1 indicators or probabilities in [0, 1], "
                         f"got values in [{arr.min():g}, {arr.max():g}]")
    return arr.astype(np.float64)


def check_sample_weight(w, n_examples: int, name="sample_weight") -> np.ndarray | None:
    """Per-example weights (N,): real, finite, >= 0 and not all zero. None stays None
    (every example weighs the same). Returns float64 (N,)."""
    if w is None:
        return None
    arr = as_host_array(name, w)
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} holds booleans; pass non-negative numbers")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one weight per example), got shape {arr.shape}")
    if arr.shape[0] != n_examples:
        raise ValueError(f"X has {n_examples} examples but {name} has {arr.shape[0]}")
    _check_finite(name, arr)
    if (arr < 0).any():
        raise ValueError(f"{name} has {int((arr < 0).sum())} negative weight(s); weights must be >= 0")
    if not arr.any():
        raise ValueError(f"{name} is all zeros: no example would count")
    return arr.astype(np.float64)
