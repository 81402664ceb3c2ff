"""Checks of user input, each raising a TypeError or ValueError that names the problem.

All checks run before a model is touched, so a refused call leaves it unchanged.
"""
from __future__ import annotations

import math
import numbers

from typing import Any, NamedTuple

import numpy as np

from .scaling import row_chunks

__all__ = ["check_real", "check_int", "check_bool", "check_float_dtype", "as_host_array",
           "check_features", "check_labels", "check_targets", "check_binary_targets", "check_sample_weight",
           "check_classes", "infer_classes", "encode_labels", "check_feature_names", "frame_feature_names",
           "select_frame_features", "Learned"]


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


def _is_dataframe(x) -> bool:
    return type(x).__module__.startswith("pandas") and hasattr(x, "columns") and hasattr(x, "dtypes")


def _dataframe_array(name, frame, dtype=None) -> np.ndarray:
    """A pandas DataFrame as one C-ordered array (one copy, however its columns are typed),
    converted a block of rows at a time; a column that is not numeric, or holds a NaN, an
    infinity or a value past ``dtype``'s range, is named."""
    for column, kind in zip(frame.columns, frame.dtypes):
        if not (isinstance(kind, np.dtype) and kind.kind in "biuf"):
            raise TypeError(f"{name} column {column!r} is not numeric (dtype {kind}); encode it as numbers "
                            "first (for example with pandas.get_dummies)")
    if dtype is None:
        dtype = np.result_type(*frame.dtypes) if len(frame.columns) else np.float64
    for j, column in enumerate(frame.columns):   # before a narrower dtype hides a value out of its range
        _check_finite(f"{name} column {column!r}", frame.iloc[:, j].to_numpy(), dtype)
    out = np.empty(frame.shape, dtype=dtype)
    step = max(1, _CHECK_CHUNK // max(1, frame.shape[1]))
    for start in range(0, frame.shape[0], step):   # a block's transpose stays in cache
        out[start:start + step] = frame.iloc[start:start + step].to_numpy(dtype=dtype)
    return out


def as_host_array(name, x, dtype=None) -> np.ndarray:
    """A NumPy view of x (CuPy arrays are copied to the host) with a numeric dtype; a pandas
    DataFrame becomes one C-ordered copy (in ``dtype`` when given)."""
    from .backend import to_numpy
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    if _is_dataframe(x):
        return _dataframe_array(name, x, dtype)
    try:
        arr = to_numpy(x)
    except Exception as exc:
        raise TypeError(f"{name} could not be read as an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


_CHECK_CHUNK = 1 << 20    # elements a check reads at a time: no full-size temporaries


def _row_chunks(arr):
    return row_chunks(arr, _CHECK_CHUNK)


def _all_finite(arr) -> bool:
    """No NaN or infinity in float ``arr``, read in row chunks through min and max."""
    return all(math.isfinite(float(c.min())) and math.isfinite(float(c.max())) for c in _row_chunks(arr))


def _check_finite(name, arr, dtype=None):
    """No NaN or infinity in a float ``arr`` and, for a narrower model ``dtype``, nothing past
    its range (finite float64 values past float32's would turn into inf in a float32 model).
    Read in row chunks through min and max, which make no temporaries: a NaN carries into
    them, so a chunk is only counted through when something is wrong."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    limit = float(np.finfo(dtype).max) if dtype is not None and np.dtype(dtype).itemsize < arr.dtype.itemsize \
        else math.inf
    beyond = False
    for chunk in _row_chunks(arr) if arr.ndim else [arr]:
        low, high = float(chunk.min()), float(chunk.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in _row_chunks(arr))
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
        beyond = beyond or max(high, -low) > limit
    if beyond:
        raise ValueError(f"{name} has values beyond the {np.dtype(dtype).name} range of the model "
                         f"(|value| > {limit:.4g})")


def _check_shape(name, arr, n_features):
    if arr.ndim != 2:
        hint = " (for one example use X.reshape(1, -1), for one feature X.reshape(-1, 1))" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_examples, n_features), got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no examples")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features but the network's input layer has {n_features}")


def check_features(x, n_features: int, name="X", dtype=None, scaling=None, convert=True) -> np.ndarray:
    """X must be (N, n_features), N >= 1, real and finite (in ``dtype`` too). Returns the host
    array, C-ordered and in ``dtype`` when one is given: any other layout (Fortran order, a
    strided view, big-endian, another dtype, a DataFrame) is converted here, once. With a
    ``scaling`` (``gpunet.scaling.InputScaling``) the array returned is the scaled copy.
    ``convert=False`` checks an array (a memory map) in row chunks and returns it as it is."""
    if not convert:
        if _is_dataframe(x) or not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array (a memory map) to be read a batch at a time, "
                            f"got {type(x).__name__}")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        _check_shape(name, x, n_features)
        _check_finite(name, x, None if scaling is not None else dtype)
        return x
    frame = _is_dataframe(x)
    arr = as_host_array(name, x, dtype=None if scaling is not None else dtype)
    _check_shape(name, arr, n_features)
    if scaling is not None:
        if not frame:
            _check_finite(name, arr)
        scaled = scaling.transform(arr, dtype or np.float64)
        if not _all_finite(scaled):           # a tiny scale can push a value past the dtype's range
            raise ValueError(f"{name} has values beyond the {scaled.dtype.name} range once standardised "
                             "with the model's input scaling")
        return scaled
    if frame or dtype is None:                # a DataFrame was checked column by column
        if not frame:
            _check_finite(name, arr, dtype)
        return arr
    converted = not (arr.flags.c_contiguous and arr.dtype == dtype)
    if converted and np.dtype(dtype).itemsize < arr.dtype.itemsize:
        _check_finite(name, arr, dtype)       # the range, before the narrower dtype hides it
        return np.asarray(arr, dtype=dtype, order="C")
    arr = np.asarray(arr, dtype=dtype, order="C")
    _check_finite(name, arr)                  # after the conversion: a contiguous scan
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
                         f"(the network has {n_classes} outputs; for other label values pass "
                         "MLP(classes=[...]) to say which output means which)")
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


# ---- label values and feature names -----------------------------------------------------------
class Learned(NamedTuple):
    """What a model learns from its training data besides parameters (``MLP.learnable``)."""
    classes: Any               # label values of the outputs (numpy array) or None
    feature_names: Any         # list of input column names or None
    input_scaling: Any         # gpunet.scaling.InputScaling or None


def _label_array(y) -> np.ndarray:
    arr = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") and not isinstance(y, np.ndarray) else y)
    if arr.dtype.kind == "O" and arr.size:   # e.g. a pandas object or categorical column
        values = arr.ravel().tolist()
        if all(isinstance(v, str) for v in values):
            arr = arr.astype(str)
        elif all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            arr = np.asarray(values).reshape(arr.shape)
    return arr


def check_classes(classes, n_classes: int, name="classes") -> np.ndarray:
    """The label values of a classifier's outputs, in output order: a 1-D sequence of
    ``n_classes`` distinct numbers or strings (saved with the model as JSON)."""
    if isinstance(classes, (list, tuple)) and not all(isinstance(c, (str, numbers.Real)) for c in classes):
        raise TypeError(f"{name} must be numbers or strings, got {[type(c).__name__ for c in classes][:8]}")
    arr = _label_array(classes)
    if arr.ndim != 1 or arr.shape[0] != n_classes:
        raise ValueError(f"{name} must list the {n_classes} label values of the outputs, got shape {arr.shape}")
    if arr.dtype.kind not in "iufUb":
        raise TypeError(f"{name} must be numbers or strings, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    if len(np.unique(arr)) != arr.shape[0]:
        raise ValueError(f"{name} must be distinct, got {arr.tolist()}")
    return arr


def _index_like(arr, n_classes) -> bool:
    """Whole numbers in [0, n_classes): labels that are already output indices."""
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        return arr.size == 0
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        return False
    return bool(arr.min() >= 0 and arr.max() < n_classes)


def infer_classes(y, n_classes: int, name="y"):
    """The label values a classifier learns from ``y`` (N,): None when they are already output
    indices (whole numbers in [0, n_classes)); the sorted distinct values when they are
    strings or booleans, which must then be ``n_classes`` of them. Numbers outside the
    indices are refused: they may be a mistake, and ``classes=`` says what they mean."""
    arr = _label_array(y)
    if arr.ndim != 1 or _index_like(arr, n_classes) or arr.dtype.kind in "iuf":
        return None
    if arr.dtype.kind not in "Ub":
        raise TypeError(f"{name} must hold class labels (numbers or strings), got dtype {arr.dtype}")
    values = np.unique(arr)
    if values.shape[0] != n_classes:
        raise ValueError(f"{name} has {values.shape[0]} distinct labels ({', '.join(map(str, values[:8]))}"
                         f"{', ...' if values.shape[0] > 8 else ''}) but the network has {n_classes} outputs; "
                         "pass classes=[...] to MLP to fix which output means which label")
    return values


def encode_labels(y, classes, name="y") -> np.ndarray:
    """``y``'s label values as output indices (int64) through ``classes``; a value that is not
    one of them is named."""
    arr = _label_array(y)
    if arr.ndim != 1:
        return arr                    # one-hot rows or targets: no label values to encode
    order = np.argsort(classes, kind="stable")
    ranked = classes[order]
    try:
        pos = np.clip(np.searchsorted(ranked, arr), 0, len(ranked) - 1)
        known = ranked[pos] == arr
    except (TypeError, ValueError):   # strings against numbers
        pos, known = np.zeros(arr.shape, np.int64), np.zeros(arr.shape, bool)
    if not np.all(known):
        unknown = np.unique(arr[~np.asarray(known, bool)])
        raise ValueError(f"{name} has label(s) the model does not know: {', '.join(map(repr, unknown[:5].tolist()))}"
                         f"{', ...' if len(unknown) > 5 else ''}; its classes are {classes.tolist()}")
    return order[pos].astype(np.int64)


def check_feature_names(names, n_features: int, name="feature_names") -> list:
    """``n_features`` distinct strings, the input columns' names in order."""
    if isinstance(names, str) or not hasattr(names, "__len__"):
        raise TypeError(f"{name} must be a list of strings, got {type(names).__name__}")
    names = list(names)
    if len(names) != n_features or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{name} must be {n_features} strings, got {names[:8]}")
    if len(set(names)) != len(names):
        raise ValueError(f"{name} must be distinct")
    return names


def frame_feature_names(x):
    """A DataFrame's column names when they are all strings (what a model learns), else None."""
    if not _is_dataframe(x):
        return None
    names = list(x.columns)
    return names if all(isinstance(n, str) for n in names) else None


def select_frame_features(frame, names, name="X"):
    """The DataFrame's columns ``names``, in that order; missing or extra columns are named."""
    columns = list(frame.columns)
    missing = [n for n in names if n not in columns]
    extra = [c for c in columns if c not in names]
    if missing or extra:
        parts = ([f"lacks the model's feature(s) {missing[:8]}"] if missing else []) + \
                ([f"has column(s) the model was not trained on {extra[:8]}"] if extra else [])
        raise ValueError(f"{name} {' and '.join(parts)}")
    return frame if columns == list(names) else frame[list(names)]

