"""scikit-learn estimators: the library's own estimator checks, labels of any type, Pipeline,
GridSearchCV, cross_val_score, pickling, and ``import gpunet`` staying free of sklearn."""
from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_regression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import gpunet as gn  # noqa: E402
from conftest import GPU_OK  # noqa: E402
from gpunet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Small networks and few epochs keep the ~50 checks per estimator to a couple of seconds;
# the learning rate is raised so the accuracy/R^2 checks are still met. Different solvers,
# learning-rate rules and dtypes exercise different code paths (early stopping, which refuses
# partial_fit as scikit-learn's does, is checked by scikit-learn's own tests,
# tests/test_sklearn_suite.py). One check is exempted for the
# float32 regressor only (``exempted_checks`` says why); the checks scikit-learn skips here
# need pandas or SCIPY_ARRAY_API in the environment.
CHECKED = [
    MLPClassifier(hidden_layer_sizes=(16,), max_iter=60, learning_rate_init=0.01, backend="numpy"),
    MLPRegressor(hidden_layer_sizes=(16,), max_iter=60, learning_rate_init=0.01, backend="numpy"),
    MLPClassifier(hidden_layer_sizes=(8, 8), max_iter=40, solver="sgd", learning_rate="invscaling",
                  power_t=0.25, learning_rate_init=0.05, dtype="float32", backend="numpy"),
    MLPRegressor(hidden_layer_sizes=(16,), max_iter=40, solver="rmsprop", learning_rate_init=0.01,
                 batch_size=32, dtype="float32", lr_schedule="warmup_cosine", backend="numpy"),
    MLPClassifier(hidden_layer_sizes=(10,), max_iter=100, solver="lbfgs", backend="numpy"),
    MLPRegressor(hidden_layer_sizes=(10,), max_iter=100, solver="lbfgs", backend="numpy"),
]
# and on CuPy where a GPU works; on the kernel emulator's CuPy (slow: every CUDA thread is a
# fiber) the two default configurations
_ON_CUPY = CHECKED[:2] if "emulator.plugin" in sys.modules else CHECKED
CHECKED += [clone(estimator).set_params(backend="cupy") for estimator in _ON_CUPY if GPU_OK]


def exempted_checks(estimator):
    """Checks expected to fail, each with its reason (scikit-learn >= 1.6 takes them here)."""
    exempted = {}
    if estimator.dtype == "float32" and isinstance(estimator, MLPRegressor):
        exempted["check_methods_subset_invariance"] = (
            "a float32 model's outputs depend on the batch size by ~1 ulp (BLAS picks other "
            "kernels for other row counts); the check compares the float64 predictions it is "
            "handed at atol=1e-7. float64 models (the default) pass it.")
    if estimator.early_stopping or estimator.batch_size != "auto" or estimator.learning_rate == "invscaling":
        why = ("a weight of k equals k copies of a sample only when both fits see the same batches and "
               "rates: minibatches drawn from n and from n + copies differ, so does a validation split, and "
               "invscaling's rate follows the samples seen. In one full batch at a constant rate (the other "
               "estimators here) it holds.")
        exempted["check_sample_weight_equivalence_on_dense_data"] = why
        exempted["check_sample_weight_equivalence_on_sparse_data"] = why
    return exempted


@parametrize_with_checks(CHECKED, expected_failed_checks=exempted_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_import_gpunet_does_not_import_sklearn():
    code = "import sys, gpunet; sys.exit('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _digits(n=600):
    X, y = load_digits(return_X_y=True)
    return X[:n], y[:n]


def test_string_labels_round_trip():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    names = np.array(["setosa", "versicolor", "virginica"])
    y = names[(X[:, 0] > 0.5).astype(int) + (X[:, 1] > 0).astype(int)]
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=150, random_state=0).fit(X, y)
    assert list(clf.classes_) == list(names)
    pred = clf.predict(X)
    assert pred.dtype.kind == "U" and set(pred) <= set(names)
    proba = clf.predict_proba(X)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    assert clf.score(X, y) > 0.9
    assert clf.n_features_in_ == 4 and 1 <= clf.n_iter_ <= 150


def test_non_contiguous_integer_labels():
    X, y = _digits(300)
    y = np.where(y % 2 == 0, -7, 42)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0).fit(X / 16, y)
    assert list(clf.classes_) == [-7, 42]
    assert set(np.unique(clf.predict(X / 16))) <= {-7, 42}


def test_pipeline_in_grid_search_and_cross_val_score():
    X, y = _digits()
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, learning_rate_init=0.01, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(16,), (64,)],
                               "mlpclassifier__learning_rate_init": [1e-3, 1e-2]}, cv=3)
    grid.fit(X, y)
    assert grid.best_params_["mlpclassifier__hidden_layer_sizes"] in [(16,), (64,)]
    assert grid.best_score_ > 0.85
    model = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, learning_rate_init=0.01, random_state=0))
    scores = cross_val_score(model, X, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.85


def test_get_set_params_and_clone():
    clf = MLPClassifier(hidden_layer_sizes=(7, 3), solver="adamw", weight_decay=0.1)
    params = clf.get_params()
    assert params["hidden_layer_sizes"] == (7, 3) and params["solver"] == "adamw"
    clf.set_params(alpha=0.5, solver="rmsprop")
    twin = clone(clf)
    assert twin.get_params()["alpha"] == 0.5 and twin.get_params()["solver"] == "rmsprop"
    assert not hasattr(twin, "net_")


def test_pickle_round_trip_keeps_predictions_and_trains_on():
    X, y = _digits(300)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=20, random_state=1).fit(X / 16, y)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X / 16), clf.predict_proba(X / 16))
    # the rebuilt network's per-layer views still alias its flat buffer
    restored.net_.flat_params[...] = 0
    assert all(float(abs(w).sum()) == 0 for w in restored.net_.weights)
    assert len(clf.coefs_) == 2 and clf.coefs_[0].shape == (64, 16) and clf.intercepts_[1].shape == (10,)


def test_regressor_output_shapes_and_beats_the_mean():
    X, y = make_regression(n_samples=300, n_features=5, noise=1.0, random_state=0)
    y = y / y.std()
    reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=200, random_state=0).fit(X, y)
    assert reg.predict(X).shape == (300,) and reg.score(X, y) > 0.9
    Y = np.stack([y, -2 * y], axis=1)
    reg2 = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=200, random_state=0).fit(X, Y)
    assert reg2.predict(X).shape == (300, 2) and reg2.n_outputs_ == 2 and reg2.score(X, Y) > 0.9


def test_early_stopping_attributes():
    X, y = _digits(500)
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300, early_stopping=True,
                        n_iter_no_change=3, random_state=0).fit(X / 16, y)
    assert clf.n_iter_ < 300
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert len(clf.loss_curve_) == clf.n_iter_ and clf.loss_ == clf.loss_curve_[-1]


def test_training_loss_plateau_stops_like_sklearn():
    X, y = _digits(300)
    clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=500, tol=1e-2,
                        n_iter_no_change=2, random_state=0).fit(X / 16, y)
    assert clf.n_iter_ < 500 and clf._optimizer.learning_rate == 0.01   # scikit-learn's attribute name
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.validation_scores_ is None


@pytest.mark.parametrize("params,error,words", [
    ({"solver": "newton"}, ValueError, "solver"),
    ({"learning_rate": "cyclic"}, ValueError, "learning_rate"),
    ({"n_iter_no_change": 0}, ValueError, "n_iter_no_change"),
    ({"max_fun": 0}, ValueError, "max_fun"),
    ({"activation": "softplus"}, ValueError, "activation"),
    ({"hidden_layer_sizes": (0,)}, ValueError, "hidden_layer_sizes"),
    ({"hidden_layer_sizes": "wide"}, TypeError, "hidden_layer_sizes"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"learning_rate_init": -1.0}, ValueError, "lr"),
    ({"lr_schedule": "triangle"}, ValueError, "lr_schedule"),
    ({"early_stopping": True, "validation_fraction": 1.5}, ValueError, "validation_fraction"),
    ({"dtype": "float16"}, TypeError, "dtype"),
    ({"backend": "tpu"}, ValueError, "backend"),
])
def test_bad_hyper_parameters_are_named_at_fit(params, error, words):
    X, y = _digits(50)
    with pytest.raises(error, match=words):
        MLPClassifier(**{"max_iter": 2, **params}).fit(X, y)


def test_digits_accuracy_and_string_solver_options():
    X, y = _digits(1797)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    for solver in ("adam", "sgd"):
        clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(128,), solver=solver,
                                                            learning_rate_init=0.01 if solver == "sgd" else 1e-3,
                                                            max_iter=40, random_state=0))
        assert clf.fit(Xtr, ytr).score(Xte, yte) > 0.95, solver


def test_backend_parameter_builds_the_model_there():
    X, y = _digits(100)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, backend="numpy").fit(X, y)
    assert clf.net_.backend.name == "numpy"
    assert gn.get_backend() is not None


# ---- warm_start and partial_fit -------------------------------------------------------------
def test_warm_start_continues_from_the_fitted_network():
    X, y = _digits(400)
    X = X / 16
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, tol=0.0, random_state=0, warm_start=True).fit(X, y)
    first_curve = list(clf.loss_curve_)
    net = clf.net_
    clf.fit(X, y)
    # as scikit-learn 1.9: n_iter_ counts this fit's epochs, loss_curve_ and t_ run on
    assert clf.net_ is net and clf.n_iter_ == 5 and len(clf.loss_curve_) == 10 and clf.t_ == 10 * 400
    assert clf.loss_curve_[:5] == first_curve and clf.loss_curve_[5] < first_curve[0]
    fresh = clone(clf).set_params(warm_start=False).fit(X, y)
    assert fresh.n_iter_ == 5 and fresh.loss_curve_ == first_curve   # without it, fit starts over


@pytest.mark.parametrize("change,words", [
    ({"hidden_layer_sizes": (17,)}, "layer widths"),
    ({"activation": "tanh"}, "activation"),
    ({"dtype": "float32"}, "float64"),
])
def test_warm_start_refuses_another_network_and_keeps_the_model(change, words):
    X, y = _digits(200)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0, warm_start=True).fit(X / 16, y)
    coefs = clf.coefs_
    with pytest.raises(ValueError, match=words):
        clf.set_params(**change).fit(X / 16, y)
    for before, after in zip(coefs, clf.coefs_):
        np.testing.assert_array_equal(before, after)


def test_warm_start_needs_the_same_classes():
    X, y = _digits(200)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0, warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match="classes"):
        clf.fit(X[y < 5], y[y < 5])


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_calls_equal_fit_epochs(solver):
    """Two partial_fit calls are two epochs of fit: the optimizer's state carries over."""
    X, y = _digits(300)
    params = dict(hidden_layer_sizes=(16,), solver=solver, learning_rate_init=0.01, shuffle=False, tol=0.0,
                  random_state=3)
    whole = MLPClassifier(max_iter=2, **params).fit(X / 16, y)
    parts = MLPClassifier(**params)
    for _ in range(2):
        parts.partial_fit(X / 16, y, classes=np.arange(10))
    assert parts.n_iter_ == 1 and parts.loss_curve_ == whole.loss_curve_    # n_iter_: per call, as scikit-learn
    for a, b in zip(parts.coefs_ + parts.intercepts_, whole.coefs_ + whole.intercepts_):
        np.testing.assert_array_equal(a, b)


def test_partial_fit_over_chunks_learns_digits():
    X, y = _digits(1797)
    Xtr, Xte, ytr, yte = train_test_split(X / 16, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(64,), learning_rate_init=0.01, random_state=0)
    labels = np.array([str(c) for c in range(10)])
    for epoch in range(15):
        for chunk in np.array_split(np.arange(len(ytr)), 4):
            clf.partial_fit(Xtr[chunk], labels[ytr[chunk]], classes=labels if epoch == 0 else None)
    assert len(clf.loss_curve_) == 60 and clf.n_iter_ == 1 and list(clf.classes_) == list(labels)
    assert clf.score(Xte, labels[yte]) > 0.93


def test_partial_fit_input_errors():
    X, y = _digits(100)
    clf = MLPClassifier(hidden_layer_sizes=(8,))
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    with pytest.raises(ValueError, match=r"`y` has classes not in `self.classes_`"):
        clf.partial_fit(X, y, classes=np.arange(9))        # scikit-learn's message
    clf = MLPClassifier(hidden_layer_sizes=(8,))
    clf.partial_fit(X, y, classes=np.arange(10))
    coefs = clf.coefs_
    with pytest.raises(ValueError, match="is not the same as on last call to partial_fit"):
        clf.partial_fit(X, y, classes=np.arange(11))
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:, :10], y)
    for before, after in zip(coefs, clf.coefs_):
        np.testing.assert_array_equal(before, after)
    reg = MLPRegressor(hidden_layer_sizes=(8,)).partial_fit(X, y.astype(float))
    with pytest.raises(ValueError, match="outputs"):
        reg.partial_fit(X, np.stack([y, y], axis=1).astype(float))


def test_sample_weight_acts_as_repeated_samples_in_full_batch():
    X, y = _digits(120)
    w = np.random.default_rng(0).integers(1, 4, size=len(y))
    params = dict(hidden_layer_sizes=(16,), batch_size=400, max_iter=20, learning_rate_init=0.01, tol=0.0,
                  alpha=1e-2, random_state=0)
    weighted = MLPClassifier(**params).fit(X / 16, y, sample_weight=w)
    repeated = MLPClassifier(**params).fit(np.repeat(X / 16, w, axis=0), np.repeat(y, w))
    for a, b in zip(weighted.coefs_ + weighted.intercepts_, repeated.coefs_ + repeated.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-9)


def test_sample_weight_reaches_partial_fit_and_early_stopping():
    X, y = _digits(300)
    w = np.where(y == 3, 5.0, 1.0)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, early_stopping=True, random_state=0)
    clf.fit(X / 16, y, sample_weight=w)
    clf2 = MLPClassifier(hidden_layer_sizes=(16,), random_state=0)
    clf2.partial_fit(X / 16, y, classes=np.arange(10), sample_weight=w)
    unweighted = MLPClassifier(hidden_layer_sizes=(16,), random_state=0).partial_fit(X / 16, y, classes=np.arange(10))
    assert not np.array_equal(clf2.coefs_[0], unweighted.coefs_[0])
    with pytest.raises(ValueError, match="sample_weight"):
        clf2.partial_fit(X / 16, y, sample_weight=w[:-1])


def test_a_refused_fit_leaves_the_fitted_model_whole():
    X, y = _digits(200)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X / 16, y)
    classes, coefs = clf.classes_.copy(), clf.coefs_
    few = y < 3
    with pytest.raises(ValueError, match="sample_weight"):
        clf.fit(X[few] / 16, y[few], sample_weight=-np.ones(few.sum()))
    np.testing.assert_array_equal(clf.classes_, classes)
    np.testing.assert_array_equal(clf.predict(X / 16), classes[np.argmax(clf.predict_proba(X / 16), axis=1)])
    for before, after in zip(coefs, clf.coefs_):
        np.testing.assert_array_equal(before, after)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y.astype(float))
    with pytest.raises(ValueError, match="sample_weight"):
        reg.fit(X, np.stack([y, y], axis=1).astype(float), sample_weight=np.zeros(len(y)))
    assert reg.n_outputs_ == 1 and reg.predict(X).shape == (len(y),)


def test_multilabel_targets_through_pipeline_and_grid_search():
    X, y = _digits()
    # three overlapping labels per image: even, above four, a multiple of three
    Y = np.stack([y % 2 == 0, y > 4, y % 3 == 0], axis=1).astype(int)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=60, learning_rate_init=0.01, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(16,), (32,)]}, cv=3).fit(X, Y)
    best = grid.best_estimator_[-1]
    assert best.out_activation_ == "logistic" and best.n_outputs_ == 3
    pred = grid.predict(X)
    assert pred.shape == Y.shape and set(np.unique(pred)) <= {0, 1}
    proba = grid.predict_proba(X)
    assert proba.shape == Y.shape and ((proba > 0) & (proba < 1)).all()
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(pred.dtype))
    assert grid.best_score_ > 0.8   # subset accuracy: all three labels right


@pytest.mark.parametrize("kind", ["strings", "integers"])
def test_lbfgs_labels_of_any_type_in_grid_search(kind):
    X, y = _digits(400)
    labels = np.array([f"digit {d}" for d in range(10)]) if kind == "strings" else np.arange(10) * 7 - 20
    pipe = make_pipeline(StandardScaler(), MLPClassifier(solver="lbfgs", max_iter=50, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2).fit(X, labels[y])
    assert set(grid.predict(X)) <= set(labels) and grid.best_score_ > 0.85
    assert grid.score(X, labels[y]) > 0.95


def test_lbfgs_fit_equals_scikit_learns():
    """Same hyper-parameters, same random_state: L-BFGS (deterministic, full batch) lands on
    scikit-learn's weights, here to ~1e-14 in float64."""
    from sklearn.neural_network import MLPClassifier as Theirs
    X, y = _digits(500)
    X = StandardScaler().fit_transform(X)
    ours = MLPClassifier(solver="lbfgs", max_iter=40, random_state=3).fit(X, y)
    theirs = Theirs(solver="lbfgs", max_iter=40, random_state=3).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-10)
    assert not hasattr(ours, "loss_curve_") and not hasattr(theirs, "loss_curve_")   # stochastic solvers only
