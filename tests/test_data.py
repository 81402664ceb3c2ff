"""The bundled datasets: the digits ship inside the package (no scikit-learn needed) and are
scikit-learn's digits value for value; splits are stratified and reproducible."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from gpunet.data import DIGITS_FILE, load_dataset, load_digits, train_test_split


def test_digits_are_bundled_and_load_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)       # any import of it now fails
    d = load_digits(standardize=False)
    assert DIGITS_FILE.is_file() and DIGITS_FILE.stat().st_size < 100_000
    assert d.X_train.shape == (1438, 64) and d.X_test.shape == (359, 64)
    assert d.X_train.dtype == np.float64 and d.y_train.dtype == np.int64
    X = np.concatenate([d.X_train, d.X_test])
    assert X.min() == 0 and X.max() == 16 and (X == np.round(X)).all()
    assert np.bincount(np.concatenate([d.y_train, d.y_test])).tolist() == \
        [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert load_dataset("digits").name == "digits"


def test_bundled_digits_equal_scikit_learns():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is not installed")
    bunch = datasets.load_digits()
    with np.load(DIGITS_FILE, allow_pickle=False) as bundled:
        np.testing.assert_array_equal(bundled["images"], bunch.data)
        np.testing.assert_array_equal(bundled["labels"], bunch.target)


def test_the_split_is_stratified_and_reproducible():
    a, b = load_digits(seed=5), load_digits(seed=5)
    np.testing.assert_array_equal(a.X_test, b.X_test)
    assert not np.array_equal(load_digits(seed=6).y_test, a.y_test)
    train_share = np.bincount(a.y_train) / len(a.y_train)
    test_share = np.bincount(a.y_test) / len(a.y_test)
    assert np.abs(train_share - test_share).max() < 0.01
    X, y = np.arange(40).reshape(20, 2), np.repeat([0, 1], 10)
    X_tr, y_tr, X_te, y_te = train_test_split(X, y, test_size=0.3, seed=0)
    assert np.bincount(y_te).tolist() == [3, 3] and len(X_tr) == 14
