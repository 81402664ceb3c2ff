"""``gpunet.sklearn`` against ``sklearn.neural_network``: the same estimator call with the
same hyper-parameters (scikit-learn's defaults: one hidden layer of 100 ReLU units, at most
200 iterations, random_state=0) on datasets scikit-learn bundles, standardised, split 75/25.
Each round fits both from scratch, alternating, so the time ratio compares the same moments
of the machine; the test-set scores (accuracy, or R^2) of both go to ``extra_info``, and the
case checks that gpunet's is as good before it is timed. On CuPy, gpunet fits on the GPU
and scikit-learn on the CPU: what a user changing one import line gets.

The FLOPs are the GEMMs of one full-batch forward and backward pass per iteration
(``n_iter_``); L-BFGS evaluates the loss at least once per iteration, so for it they are a
lower bound. Skipped without scikit-learn.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from benchsupport import Size, describe, device_sync, mlp_step_flops, no_sync

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed")

from sklearn import datasets  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import gpunet.sklearn as gns  # noqa: E402

HIDDEN = 100
# (loader, task): classification scores accuracy, regression R^2 on a standardised target
DATASETS = {"digits": (datasets.load_digits, "classification"),
            "breast_cancer": (datasets.load_breast_cancer, "classification"),
            "diabetes": (datasets.load_diabetes, "regression")}
SOLVERS = ("adam", "sgd", "lbfgs")
# gpunet may score this much below scikit-learn before the case fails (same initialisation
# and algorithm in float64: the scores agree to a few 1e-3 in practice)
SCORE_SLACK = {"classification": 0.02, "regression": 0.05}


@functools.lru_cache(maxsize=None)
def _split(name):
    load, task = DATASETS[name]
    X, y = load(return_X_y=True)
    if task == "regression":
        y = (y - y.mean()) / y.std()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test, task


def _fitter(estimator_class, X, y, **params):
    """A fresh fit per call (nothing carried between rounds); returns the fitted estimator."""
    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)   # max_iter reached is expected
            return estimator_class(random_state=0, **params).fit(X, y)
    return fit


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_sklearn_fit(benchmark, measure, backend, dataset, solver):
    X_train, X_test, y_train, y_test, task = _split(dataset)
    theirs_class = MLPClassifier if task == "classification" else MLPRegressor
    ours_class = gns.MLPClassifier if task == "classification" else gns.MLPRegressor
    ours = _fitter(ours_class, X_train, y_train, solver=solver, backend=backend.name)
    theirs = _fitter(theirs_class, X_train, y_train, solver=solver)

    # check before timing: gpunet learns the task as well as scikit-learn does
    ours_fitted, theirs_fitted = ours(), theirs()
    ours_score, theirs_score = ours_fitted.score(X_test, y_test), theirs_fitted.score(X_test, y_test)
    assert np.isfinite(ours_score) and ours_score >= theirs_score - SCORE_SLACK[task], (ours_score, theirs_score)

    outputs = 1 if task == "regression" or len(np.unique(y_train)) == 2 else len(np.unique(y_train))
    widths = (X_train.shape[1], HIDDEN, outputs)
    size = Size("small", (len(X_train), X_train.shape[1]))
    describe(benchmark, case="sklearn_fit", impl="gpunet", backend=backend.name,
             device="gpu" if backend.name == "cupy" else "cpu", size=size, dtype="float64",
             flops=mlp_step_flops(widths, len(X_train)) * ours_fitted.n_iter_, bound="compute",
             dataset=dataset, solver=solver, score=float(ours_score), peer_score=float(theirs_score),
             n_iter=int(ours_fitted.n_iter_), peer_n_iter=int(theirs_fitted.n_iter_),
             score_name="accuracy" if task == "classification" else "R^2")
    measure(ours, sync=device_sync(backend.name), partners=[("scikit-learn", theirs, no_sync)])
