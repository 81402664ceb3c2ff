"""Bundled datasets (all generated or shipped offline) and the usual preparation steps.

- ``load_digits``: the 8x8 handwritten digits (UCI "Optical Recognition of Handwritten
  Digits", the 1797-image set scikit-learn also ships), 1797 x 64, 10 classes; bundled in
  ``gpunet/datasets/digits.npz`` (pixel counts 0-16 and labels as uint8, 45 KB), so it needs
  nothing installed. The data are CC BY 4.0 (Alpaydin and Kaynak, UCI Machine Learning
  Repository).
- ``load_mnist1d``: MNIST-1D (Greydanus 2020), generated from its templates by the
  ``mnist1d`` package, never downloaded; 4000 + 1000 x 40, 10 classes.
- ``make_spirals``: a synthetic K-armed spiral classification set (NumPy only).
- ``make_regression``: a synthetic smooth non-linear regression set (NumPy only).
- ``BatchStream``: training data that arrive a batch at a time (``fit`` takes one in place
  of X and y), for data made on the fly or read from somewhere too big for memory.

Every loader returns ``Dataset(X_train, y_train, X_test, y_test, name)`` with float64
features and int64 labels (regression: float64 targets (N, K)).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .validation import check_int, check_real

__all__ = ["Dataset", "load_digits", "load_mnist1d", "make_spirals", "make_regression",
           "train_test_split", "Standardizer", "load_dataset", "DATASETS", "BatchStream", "as_batch_stream"]


class Dataset(NamedTuple):
    """A dataset split into training and test parts, as every loader here returns it.

    Parameters
    ----------
    X_train, X_test : numpy.ndarray of shape (N, n_features)
        Float64 features.
    y_train, y_test : numpy.ndarray
        Int64 labels (N,), or float64 regression targets (N, K).
    name : str
        The dataset's name.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    name: str

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return self.X_train.shape[1]

    @property
    def n_classes(self) -> int:
        """Number of classes (classification) or of outputs (regression)."""
        if self.y_train.ndim == 1:
            return int(max(self.y_train.max(), self.y_test.max())) + 1
        return self.y_train.shape[1]


def train_test_split(X: ArrayLike, y: ArrayLike, test_size: float = 0.2, seed: int | None = 0,
                     stratify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and split; with integer labels and ``stratify`` every class keeps its share.

    Parameters
    ----------
    X : array-like of shape (N, ...)
        Features.
    y : array-like of shape (N, ...)
        Labels or targets.
    test_size : float, default 0.2
        The share of the examples held out, in (0, 1).
    seed : int or None, default 0
        Seeds the shuffle.
    stratify : bool, default True
        Keep each class's share in both parts (integer labels y of shape (N,) only).

    Returns
    -------
    tuple of numpy.ndarray
        ``(X_train, y_train, X_test, y_test)``.

    Raises
    ------
    ValueError
        When X and y have different lengths, or ``test_size`` is out of range.
    """
    test_size = check_real("test_size", test_size, low=0.0, high=1.0, low_open=True, high_open=True)
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} examples but y has {len(y)}")
    rng = np.random.default_rng(seed)
    if stratify and y.ndim == 1 and y.dtype.kind in "iu":
        test_idx = []
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            test_idx.append(members[:int(round(test_size * len(members)))])
        test = np.zeros(len(y), dtype=bool)
        test[np.concatenate(test_idx)] = True
        train_idx, test_idx = rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))
    else:
        order = rng.permutation(len(y))
        n_test = int(round(test_size * len(y)))
        test_idx, train_idx = order[:n_test], order[n_test:]
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


class Standardizer:
    """Zero mean, unit variance per feature, fitted on training data only."""

    def fit(self, X: ArrayLike) -> Standardizer:
        """Learn each feature's mean and standard deviation (1 for a constant feature).

        Parameters
        ----------
        X : array-like of shape (N, n_features)
            Training features.

        Returns
        -------
        Standardizer
            self, with ``mean_`` and ``scale_``.
        """
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)   # constant features stay at zero
        return self

    def transform(self, X: ArrayLike) -> np.ndarray:
        """Standardise ``X`` with the fitted mean and scale.

        Parameters
        ----------
        X : array-like of shape (N, n_features)
            Features.

        Returns
        -------
        numpy.ndarray
            ``(X - mean_) / scale_`` in float64.
        """
        return (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_

    def fit_transform(self, X: ArrayLike) -> np.ndarray:
        """``fit(X)``, then ``transform(X)``.

        Parameters
        ----------
        X : array-like of shape (N, n_features)
            Training features.

        Returns
        -------
        numpy.ndarray
            X standardised, in float64.
        """
        return self.fit(X).transform(X)


def _standardized(name, X_train, y_train, X_test, y_test):
    scaler = Standardizer().fit(X_train)
    return Dataset(scaler.transform(X_train), y_train, scaler.transform(X_test), y_test, name)


DIGITS_FILE = Path(__file__).resolve().parent / "datasets" / "digits.npz"


def load_digits(test_size: float = 0.2, seed: int | None = 0, standardize: bool = True) -> Dataset:
    """The bundled digits (1797 8x8 images, pixel counts 0-16), split with stratification.

    Parameters
    ----------
    test_size : float, default 0.2
        The share held out for testing.
    seed : int or None, default 0
        Seeds the split.
    standardize : bool, default True
        Standardise the features with the training part's mean and scale.

    Returns
    -------
    Dataset
        1797 x 64 float64 features, int64 labels 0-9.
    """
    with np.load(DIGITS_FILE, allow_pickle=False) as bundled:
        X, y = bundled["images"].astype(np.float64), bundled["labels"].astype(np.int64)
    split = train_test_split(X, y, test_size=test_size, seed=seed)
    return _standardized("digits", *split) if standardize else Dataset(*split, "digits")


def load_mnist1d(num_samples: int = 5000, seed: int = 42, standardize: bool = True) -> Dataset:
    """MNIST-1D generated locally with the reference generator's default settings.

    4000 train / 1000 test sequences of length 40 with the defaults; the global random
    states of NumPy and ``random``, which the generator seeds, are left as they were.

    Parameters
    ----------
    num_samples : int, default 5000
        Sequences generated (at least 20), a fifth of them for testing.
    seed : int, default 42
        The generator's seed (the reference split).
    standardize : bool, default True
        Standardise the features with the training part's mean and scale.

    Returns
    -------
    Dataset
        Float64 sequences, int64 labels 0-9.

    Raises
    ------
    ImportError
        When the ``mnist1d`` package is not installed.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError("MNIST-1D is generated by the mnist1d package: pip install 'gpunet[data]'") from None
    args = get_dataset_args()
    args.num_samples = check_int("num_samples", num_samples, low=20)
    args.seed = check_int("seed", seed, low=0)
    # the generator seeds the global RNGs of NumPy and random; leave both as they were
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    parts = (d["x"].astype(np.float64), d["y"].astype(np.int64),
             d["x_test"].astype(np.float64), d["y_test"].astype(np.int64))
    return _standardized("mnist1d", *parts) if standardize else Dataset(*parts, "mnist1d")


def make_spirals(n_samples: int = 3000, n_classes: int = 3, noise: float = 0.2, test_size: float = 0.2,
                 seed: int | None = 0) -> Dataset:
    """Interleaved 2-D spirals, one arm per class: not linearly separable.

    Parameters
    ----------
    n_samples : int, default 3000
        Points in all (at least 2).
    n_classes : int, default 3
        Arms (at least 2).
    noise : float, default 0.2
        Standard deviation of the angle's noise.
    test_size : float, default 0.2
        The share held out for testing.
    seed : int or None, default 0
        Seeds the points and the split.

    Returns
    -------
    Dataset
        Standardised (N, 2) features, int64 labels.
    """
    n_samples = check_int("n_samples", n_samples, low=2)
    n_classes = check_int("n_classes", n_classes, low=2)
    noise = check_real("noise", noise, low=0.0)
    rng = np.random.default_rng(seed)
    y = np.arange(n_samples) % n_classes
    r = rng.uniform(0.1, 1.0, n_samples)
    theta = 4.0 * r + 2 * np.pi * y / n_classes + rng.normal(0, noise, n_samples)
    X = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return _standardized("spirals", *train_test_split(X, y.astype(np.int64), test_size=test_size, seed=seed))


def make_regression(n_samples: int = 2000, n_features: int = 8, noise: float = 0.1, test_size: float = 0.2,
                    seed: int | None = 0) -> Dataset:
    """A smooth non-linear regression set, on which an MLP clearly beats a linear fit.

    ``y = sin(2 x . u) + (x . v)^2 / 4 + x_0 x_1 / 2 + noise``, with x ~ N(0, I).

    Parameters
    ----------
    n_samples : int, default 2000
        Examples in all (at least 2).
    n_features : int, default 8
        Features (at least 2).
    noise : float, default 0.1
        Standard deviation of the targets' Gaussian noise.
    test_size : float, default 0.2
        The share held out for testing.
    seed : int or None, default 0
        Seeds the data and the split.

    Returns
    -------
    Dataset
        Standardised features and float64 targets of shape (N, 1).
    """
    n_samples = check_int("n_samples", n_samples, low=2)
    n_features = check_int("n_features", n_features, low=2)
    noise = check_real("noise", noise, low=0.0)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    u, v = rng.normal(size=n_features) / np.sqrt(n_features), rng.normal(size=n_features) / np.sqrt(n_features)
    y = np.sin(2 * X @ u) + 0.25 * (X @ v) ** 2 + 0.5 * X[:, 0] * X[:, 1]
    y = (y + noise * rng.normal(size=n_samples))[:, None]
    split = train_test_split(X, y, test_size=test_size, seed=seed, stratify=False)
    return _standardized("regression", *split)


DATASETS = {"digits": load_digits, "mnist1d": load_mnist1d, "spirals": make_spirals,
            "regression": make_regression}


def load_dataset(name: str, seed: int | None = 0) -> Dataset:
    """One of ``DATASETS`` by name, with its loader's defaults.

    Parameters
    ----------
    name : {"digits", "mnist1d", "spirals", "regression"}
        The dataset.
    seed : int or None, default 0
        Seeds the split (MNIST-1D keeps its reference split).

    Returns
    -------
    Dataset
        The dataset.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name == "mnist1d":
        return load_mnist1d()      # the reference split is fixed by the generator's seed
    return DATASETS[name](seed=seed)


class BatchStream:
    """Training data that arrive a batch at a time: ``net.fit(BatchStream(batches), epochs=3)``.

    ``batches`` is either a function called once per epoch (with no argument, or with the
    epoch's index when it takes one) that returns an iterable of batches, or an iterable
    that starts over each time it is iterated (a list of batches, a ``torch`` DataLoader).
    A batch is ``(X_batch, y_batch)`` or ``(X_batch, y_batch, w_batch)``, each as ``fit``
    takes them (any size; the last may be short). A one-shot iterator (a generator object)
    serves a single epoch, so ``fit`` refuses more.

    The stream decides the batches and their order: ``fit``'s ``batch_size`` and ``shuffle``
    do not apply, nor does ``sample_weight`` (weights come in the batches). Each batch is
    checked as it arrives; a bad one raises ValueError naming the epoch and the batch, and
    the model keeps the steps made before it. Label values need ``MLP(classes=...)`` and
    standardisation a given ``input_scaling``: a stream cannot be read ahead to learn them.

    Parameters
    ----------
    batches : callable or iterable
        A function returning an epoch's batches, or an iterable of batches.
    n_batches : int or None, default None
        How many batches an epoch yields, when known; a per-step schedule needs it.

    Raises
    ------
    TypeError
        When ``batches`` is neither a function nor an iterable (a string is not one).
    """

    def __init__(self, batches: Callable[..., Iterable[tuple]] | Iterable[tuple],
                 n_batches: int | None = None) -> None:
        if isinstance(batches, (str, bytes)) or not (callable(batches) or hasattr(batches, "__iter__")):
            raise TypeError(f"BatchStream takes a function returning an epoch's batches or an iterable of "
                            f"batches, got {type(batches).__name__}")
        if n_batches is not None:
            n_batches = check_int("n_batches", n_batches, low=1)
        self.batches = batches
        self.n_batches = n_batches
        self.one_shot = not callable(batches) and iter(batches) is batches
        self._takes_epoch = callable(batches) and _takes_an_argument(batches)
        self._served = False

    def epoch(self, index: int) -> Iterator[tuple]:
        """An iterator over the batches of epoch ``index``.

        Parameters
        ----------
        index : int
            The epoch, 0-based (passed to a function that takes an argument).

        Returns
        -------
        iterator
            The epoch's ``(X_batch, y_batch[, w_batch])`` tuples.

        Raises
        ------
        TypeError
            When the function returns something that is not an iterable.
        ValueError
            When a one-shot iterator was used up by an earlier epoch.
        """
        if callable(self.batches):
            made = self.batches(index) if self._takes_epoch else self.batches()
            if made is None or not hasattr(made, "__iter__"):
                raise TypeError(f"the BatchStream's function returned {type(made).__name__}, not an iterable "
                                "of batches")
            return iter(made)
        if self.one_shot and self._served:
            raise ValueError("the BatchStream's iterator was used up by an earlier epoch: pass a function "
                             "that returns a new iterator for each epoch")
        self._served = True
        return iter(self.batches)

    def __repr__(self):
        return f"BatchStream({self.batches!r}, n_batches={self.n_batches})"


def _takes_an_argument(fn) -> bool:
    import inspect
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def as_batch_stream(X: object) -> BatchStream | None:
    """``fit``'s X as a ``BatchStream`` when it is one, a function or an iterator.

    Parameters
    ----------
    X : object
        What ``fit`` was given as X.

    Returns
    -------
    BatchStream or None
        The stream; None for data (arrays, lists, DataFrames): a list stays X.
    """
    if isinstance(X, BatchStream):
        return X
    if isinstance(X, np.ndarray) or hasattr(X, "__array__") or hasattr(X, "columns"):
        return None
    if callable(X) or (hasattr(X, "__next__") and hasattr(X, "__iter__")):
        return BatchStream(X)
    return None
