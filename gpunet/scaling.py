"""A model's input standardisation: ``x' = (x - mean) / scale`` per feature, in float64, and
the running moments it is learned from (which ``fit`` also uses for a stream's targets).

``MLP(standardize=True)`` learns it from the data of its first ``fit`` and applies it to every
input afterwards, so a saved model takes raw data (the command line relies on this). Learning
reads the data in row chunks, merging each chunk's mean and sum of squared deviations (Chan,
Golub and LeVeque's pairwise update), so a memory-mapped file is read once without a
full-size temporary and the variance keeps its precision where the mean is far from zero.
"""
from __future__ import annotations

import numpy as np

__all__ = ["InputScaling", "RunningMoments"]

_CHUNK_ELEMENTS = 1 << 18     # 2 MB of float64 a chunk: a memory map's pass stays small


def _row_chunks(arr):
    rows = max(1, _CHUNK_ELEMENTS // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], rows):
        yield arr[start:start + rows]


class RunningMoments:
    """Per-column count, mean and sum of squared deviations of rows added a chunk at a time
    (float64): chunks merge pairwise, which keeps the precision a running sum of squares
    loses when the mean is large."""

    def __init__(self, n_columns: int):
        self.count = 0
        self.mean = np.zeros(n_columns)
        self.squares = np.zeros(n_columns)

    def add(self, chunk):
        """Take in the rows of ``chunk`` (n, n_columns)."""
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
    """Per-feature ``mean`` and ``scale`` (float64, scale > 0): ``transform`` maps inputs to
    ``(x - mean) / scale``. A feature constant in the data it was learned from gets scale 1
    (it maps to zero), as scikit-learn's StandardScaler does."""

    __slots__ = ("mean", "scale")

    def __init__(self, mean, scale):
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
    def learn(cls, x) -> "InputScaling":
        """The mean and standard deviation of ``x`` (N, F) (any real dtype or layout, a memmap
        included), read a chunk of rows at a time in float64."""
        moments = RunningMoments(x.shape[1])
        for chunk in _row_chunks(x):
            moments.add(chunk)
        std = np.sqrt(moments.squares / max(moments.count, 1))
        return cls(moments.mean, np.where(std > 0, std, 1.0))

    def transform(self, x, dtype, out=None) -> np.ndarray:
        """``(x - mean) / scale`` as a C-ordered array of ``dtype`` (into ``out`` when given),
        computed in float64 a chunk of rows at a time."""
        if x.shape[1:] != self.mean.shape:
            raise ValueError(f"input scaling is for {self.mean.shape[0]} features, got {x.shape[1]}")
        out = np.empty(x.shape, dtype=dtype) if out is None else out
        start = 0
        with np.errstate(over="ignore"):      # values past ``dtype``'s range become inf: the caller checks
            for chunk in _row_chunks(x):
                stop = start + chunk.shape[0]
                out[start:stop] = (np.asarray(chunk, dtype=np.float64) - self.mean) / self.scale
                start = stop
        return out

    def config(self) -> dict:
        """JSON-able: float64 values round-trip exactly through their shortest repr."""
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_config(cls, config) -> "InputScaling":
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
