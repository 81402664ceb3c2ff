"""A model's input standardisation: ``x' = (x - mean) / scale`` per feature, in float64, and
the running moments it is learned from (which ``fit`` also uses for a stream's targets).

``MLP(standardize=True)`` learns it from the data of its first ``fit`` and applies it to every
input afterwards, so a saved model takes raw data (the command line relies on this). Learning
reads the data in row chunks, merging each chunk's mean and sum of squared deviations (Chan,
Golub and LeVeque's pairwise update), so a memory-mapped file is read once without a
full-size temporary and the variance keeps its precision where the mean is far from zero.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

__all__ = ["InputScaling", "RunningMoments", "row_chunks"]

_CHUNK_ELEMENTS = 1 << 18     # 2 MB of float64 a chunk: a memory map's pass stays small


def row_chunks(arr: np.ndarray, elements: int) -> Iterator[np.ndarray]:
    """Views of ``arr``'s consecutive rows, about ``elements`` values each.

    Each holds at least one row: how large inputs are read without full-size temporaries
    (here, and by ``gpunet.validation``).

    Parameters
    ----------
    arr : numpy.ndarray
        Rows first (a memory map included).
    elements : int
        Values a chunk may hold.

    Yields
    ------
    numpy.ndarray
        Consecutive row slices covering ``arr``.
    """
    rows = max(1, elements // max(1, arr.size // max(1, arr.shape[0])))
    for start in range(0, arr.shape[0], rows):
        yield arr[start:start + rows]


class RunningMoments:
    """Per-column count, mean and sum of squared deviations of rows added a chunk at a time.

    In float64; chunks merge pairwise, which keeps the precision a running sum of squares
    loses when the mean is large.

    Parameters
    ----------
    n_columns : int
        Columns of the rows to come.
    """

    def __init__(self, n_columns: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_columns)
        self.squares = np.zeros(n_columns)

    def add(self, chunk: ArrayLike) -> None:
        """Take in the rows of ``chunk``.

        Parameters
        ----------
        chunk : array-like of shape (n, n_columns)
            Real rows (any dtype; computed in float64).
        """
        chunk = np.asarray(chunk, dtype=np.float64)
        n = chunk.shape[0]
        if n == 0:
            return
        chunk_mean = chunk.mean(axis=0)
        chunk_squares = ((chunk - chunk_mean) ** 2).sum(axis=0)
        delta = chunk_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * (n / total)
        self.squares = self.squares + chunk_squares + delta ** 2 * (self.count * n / total)
        self.count = total


class InputScaling:
    """Per-feature ``mean`` and ``scale``: ``transform`` maps inputs to ``(x - mean) / scale``.

    A feature constant in the data it was learned from gets scale 1 (it maps to zero), as
    scikit-learn's StandardScaler does. Both arrays are read-only float64 copies.

    Parameters
    ----------
    mean : array-like of shape (n_features,)
        Finite means.
    scale : array-like of shape (n_features,)
        Finite, positive scales.

    Raises
    ------
    ValueError
        When the shapes differ or are not 1-D, or a value is not finite or a scale not positive.
    """

    __slots__ = ("mean", "scale")

    def __init__(self, mean: ArrayLike, scale: ArrayLike) -> None:
        mean = np.array(mean, dtype=np.float64, copy=True)
        scale = np.array(scale, dtype=np.float64, copy=True)
        if mean.ndim != 1 or scale.shape != mean.shape:
            raise ValueError(f"input scaling needs one mean and one scale per feature, got shapes "
                             f"{mean.shape} and {scale.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
            raise ValueError("input scaling's mean and scale must be finite")
        if (scale <= 0).any():
            raise ValueError(f"input scaling's scale must be positive (feature {int(np.argmax(scale <= 0))})")
        mean.flags.writeable = scale.flags.writeable = False
        self.mean, self.scale = mean, scale

    @classmethod
    def learn(cls, x: np.ndarray) -> InputScaling:
        """The mean and standard deviation of ``x``, read a chunk of rows at a time in float64.

        Parameters
        ----------
        x : numpy.ndarray of shape (N, F)
            Any real dtype or layout, a memory map included.

        Returns
        -------
        InputScaling
            Its per-feature mean and standard deviation (1 for a constant feature).
        """
        moments = RunningMoments(x.shape[1])
        for chunk in row_chunks(x, _CHUNK_ELEMENTS):
            moments.add(chunk)
        std = np.sqrt(moments.squares / max(moments.count, 1))
        return cls(moments.mean, np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray, dtype: DTypeLike, out: np.ndarray | None = None) -> np.ndarray:
        """``(x - mean) / scale``, computed in float64 a chunk of rows at a time.

        Values beyond ``dtype``'s range come out infinite: the caller checks.

        Parameters
        ----------
        x : numpy.ndarray of shape (N, n_features)
            The inputs.
        dtype : dtype
            The result's dtype.
        out : numpy.ndarray of shape (N, n_features), optional
            Where to write the result.

        Returns
        -------
        numpy.ndarray
            ``out``, or a new C-ordered array of ``dtype``.

        Raises
        ------
        ValueError
            When ``x`` has another number of features.
        """
        if x.shape[1:] != self.mean.shape:
            raise ValueError(f"input scaling is for {self.mean.shape[0]} features, got {x.shape[1]}")
        out = np.empty(x.shape, dtype=dtype) if out is None else out
        start = 0
        with np.errstate(over="ignore"):      # values past ``dtype``'s range become inf: the caller checks
            for chunk in row_chunks(x, _CHUNK_ELEMENTS):
                stop = start + chunk.shape[0]
                out[start:stop] = (np.asarray(chunk, dtype=np.float64) - self.mean) / self.scale
                start = stop
        return out

    def config(self) -> dict:
        """The scaling as a JSON-able dict, which ``from_config`` turns back into it.

        Returns
        -------
        dict
            ``{"mean": [...], "scale": [...]}``: float64 values round-trip exactly through
            their shortest repr.
        """
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_config(cls, config: InputScaling | dict) -> InputScaling:
        """An ``InputScaling`` from ``config()``'s dict (an ``InputScaling`` is returned as it is).

        Parameters
        ----------
        config : InputScaling or dict
            A scaling, or a dict with the keys ``"mean"`` and ``"scale"``.

        Returns
        -------
        InputScaling
            The scaling.

        Raises
        ------
        TypeError
            When ``config`` is neither.
        ValueError
            When its values do not make a scaling.
        """
        if isinstance(config, InputScaling):
            return config
        if not isinstance(config, dict) or set(config) != {"mean", "scale"}:
            raise TypeError("input_scaling must be an InputScaling or a dict with 'mean' and 'scale'")
        try:
            return cls(config["mean"], config["scale"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"input_scaling: {exc}") from None

    def __eq__(self, other):
        return isinstance(other, InputScaling) and np.array_equal(self.mean, other.mean) \
            and np.array_equal(self.scale, other.scale)

    __hash__ = None

    def __repr__(self):
        return f"InputScaling(features={self.mean.shape[0]})"
