"""Conversions between gpunet's estimators and scikit-learn's own: ``to_sklearn()`` gives a fitted
``sklearn.neural_network`` estimator, ``from_sklearn(est)`` a fitted gpunet one, each
predicting what the other does (labels equal, probabilities and outputs to float64 rounding
for float64 models, to float32 rounding for float32 ones)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'gpunet[data]')")

from sklearn import neural_network  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402

from gpunet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ACTIVATIONS = ["identity", "logistic", "tanh", "relu"]
FLOAT64 = dict(rtol=1e-6, atol=1e-12)      # the bound; the results agree to ~1e-15
FLOAT32 = dict(rtol=1e-5, atol=1e-6)


def _data(task, dtype=np.float64, n=160, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    score = X[:, 0] - X[:, 1] + 0.5 * X[:, 2] * X[:, 3]
    if task == "binary":
        y = np.where(score > 0, "yes", "no")
    elif task == "multiclass":
        y = np.digitize(score, [-1.0, 0.0, 1.0])           # 4 integer classes
    elif task == "multilabel":
        y = np.stack([score > 0, X[:, 4] > 0, X[:, 0] + X[:, 4] > 0.5], axis=1).astype(np.int64)
    elif task == "single_output":
        y = score
    elif task == "multi_output":
        y = np.stack([score, X[:, 4] ** 2, -X[:, 1]], axis=1)
    else:   # poisson counts
        y = rng.poisson(np.exp(0.3 * score)).astype(np.float64)
    return X.astype(dtype), y


CLASSIFIER_TASKS = ["binary", "multiclass", "multilabel"]
REGRESSOR_TASKS = ["single_output", "multi_output", "poisson"]


def _gpunet_estimator(task, activation, dtype="float64", solver="adam"):
    X, y = _data(task)
    if task in CLASSIFIER_TASKS:
        est = MLPClassifier((9, 7), activation=activation, solver=solver, max_iter=40, random_state=0, dtype=dtype,
                            learning_rate_init=0.01)
    else:
        est = MLPRegressor((9, 7), activation=activation, solver=solver, max_iter=40, random_state=0, dtype=dtype,
                           loss="poisson" if task == "poisson" else "squared_error", learning_rate_init=0.01)
    return est.fit(X, y), X


def _sklearn_estimator(task, activation, dtype=np.float64):
    X, y = _data(task, dtype=dtype)
    options = dict(hidden_layer_sizes=(9, 7), activation=activation, max_iter=60, random_state=1,
                   learning_rate_init=0.01)
    if task in CLASSIFIER_TASKS:
        est = neural_network.MLPClassifier(**options)
    else:
        est = neural_network.MLPRegressor(**options, loss="poisson" if task == "poisson" else "squared_error")
    return est.fit(X, y), X


def _assert_same_predictions(first, second, X, tolerance=FLOAT64):
    """Labels equal and probabilities close for classifiers; outputs close for regressors
    (the two libraries add and multiply in different orders: they differ in the last bits)."""
    expected = first.predict(X)
    assert np.asarray(second.predict(X)).shape == np.asarray(expected).shape
    if hasattr(first, "predict_proba"):
        np.testing.assert_array_equal(second.predict(X), expected)
        np.testing.assert_allclose(second.predict_proba(X), first.predict_proba(X), **tolerance)
        assert len(np.unique(expected)) > 1, "the test needs more than one predicted label"
    else:
        np.testing.assert_allclose(second.predict(X), expected, **tolerance)


def _assert_same_fitted_attributes(first, second):
    for name in ("n_features_in_", "n_layers_", "n_outputs_", "out_activation_", "n_iter_"):
        assert getattr(second, name) == getattr(first, name), name
    for ours, theirs in zip(first.coefs_ + first.intercepts_, second.coefs_ + second.intercepts_):
        np.testing.assert_array_equal(ours, theirs)
    assert len(first.coefs_) == len(second.coefs_)
    if hasattr(first, "classes_"):
        np.testing.assert_array_equal(second.classes_, first.classes_)
    if hasattr(first, "loss_curve_"):
        assert second.loss_curve_ == first.loss_curve_


# ---- gpunet -> scikit-learn -> gpunet --------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("task", CLASSIFIER_TASKS + REGRESSOR_TASKS)
def test_to_sklearn_predicts_the_same(task, activation):
    ours, X = _gpunet_estimator(task, activation)
    theirs = ours.to_sklearn()
    expected_class = neural_network.MLPClassifier if task in CLASSIFIER_TASKS else neural_network.MLPRegressor
    assert type(theirs) is expected_class
    assert theirs.get_params()["activation"] == activation
    assert theirs.get_params()["hidden_layer_sizes"] == (9, 7)
    _assert_same_fitted_attributes(ours, theirs)
    _assert_same_predictions(ours, theirs, X)
    back = type(ours).from_sklearn(theirs)
    _assert_same_fitted_attributes(ours, back)
    _assert_same_predictions(ours, back, X)


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "multi_output"])
def test_float32_models_convert_keeping_their_coefficients(task):
    ours, X = _gpunet_estimator(task, "tanh", dtype="float32")
    theirs = ours.to_sklearn()
    assert all(c.dtype == np.float32 for c in theirs.coefs_ + theirs.intercepts_)
    # scikit-learn computes in X's dtype, gpunet in the model's: the same to float32 rounding
    X32 = X.astype(np.float32)
    if task == "multi_output":
        np.testing.assert_allclose(theirs.predict(X32), ours.predict(X32), **FLOAT32)
    else:
        np.testing.assert_allclose(theirs.predict_proba(X32), ours.predict_proba(X32), **FLOAT32)
        assert (theirs.predict(X32) == ours.predict(X32)).mean() > 0.99
    back = type(ours).from_sklearn(theirs)
    assert back.net_.dtype == np.float32
    _assert_same_predictions(ours, back, X32, tolerance=FLOAT32)


def test_a_solver_scikit_learn_lacks_becomes_adam():
    ours, X = _gpunet_estimator("multiclass", "relu", solver="rmsprop")
    theirs = ours.to_sklearn()
    assert theirs.solver == "adam"
    assert theirs.alpha == ours.alpha and theirs.random_state == ours.random_state
    _assert_same_predictions(ours, theirs, X)


def test_lbfgs_models_convert_both_ways():
    ours, X = _gpunet_estimator("binary", "logistic", solver="lbfgs")
    theirs = ours.to_sklearn()
    assert theirs.solver == "lbfgs" and not hasattr(theirs, "loss_curve_")
    _assert_same_predictions(ours, theirs, X)
    _assert_same_predictions(theirs, MLPClassifier.from_sklearn(theirs), X)


def test_leaky_relu_has_no_sklearn_twin():
    ours, _ = _gpunet_estimator("binary", "leaky_relu")
    with pytest.raises(ValueError, match="scikit-learn's MLPs have no 'leaky_relu' hidden activation"):
        ours.to_sklearn()


def test_an_unfitted_estimator_cannot_convert():
    with pytest.raises(NotFittedError):
        MLPClassifier().to_sklearn()
    with pytest.raises(NotFittedError):
        MLPRegressor.from_sklearn(neural_network.MLPRegressor())


# ---- scikit-learn -> gpunet --------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("task", CLASSIFIER_TASKS + REGRESSOR_TASKS)
def test_sklearn_trained_estimators_convert_and_predict_the_same(task, activation):
    theirs, X = _sklearn_estimator(task, activation)
    gpunet_class = MLPClassifier if task in CLASSIFIER_TASKS else MLPRegressor
    ours = gpunet_class.from_sklearn(theirs)
    assert type(ours) is gpunet_class
    assert ours.net_.dtype == np.float64 and ours.net_.sizes == [5, 9, 7, theirs.n_outputs_]
    _assert_same_fitted_attributes(theirs, ours)
    _assert_same_predictions(theirs, ours, X)
    # the network itself holds the coefficients now, not only coefs_
    np.testing.assert_array_equal(np.asarray(ours.net_.weights[0]), theirs.coefs_[0])


def test_a_float32_sklearn_model_becomes_a_float32_gpunet_model():
    theirs, X = _sklearn_estimator("multiclass", "relu", dtype=np.float32)
    assert theirs.coefs_[0].dtype == np.float32
    ours = MLPClassifier.from_sklearn(theirs)
    assert ours.net_.dtype == np.float32
    _assert_same_predictions(theirs, ours, X, tolerance=FLOAT32)


def test_gpunet_parameters_can_be_given_and_the_model_trains_on():
    theirs, X = _sklearn_estimator("multiclass", "tanh")
    ours = MLPClassifier.from_sklearn(theirs, dtype="float32", clip_norm=5.0)
    assert ours.net_.dtype == np.float32 and ours.clip_norm == 5.0
    assert ours.get_params()["max_iter"] == theirs.max_iter == 60
    _assert_same_predictions(theirs, ours, X, tolerance=FLOAT32)
    _, y = _data("multiclass")
    before = ours.score(X, y)
    ours.set_params(warm_start=True, max_iter=20).fit(X, y)      # continues from the converted network
    assert ours.score(X, y) >= before - 0.05


def test_the_converted_sklearn_estimator_trains_on():
    ours, X = _gpunet_estimator("multiclass", "relu")
    theirs = ours.to_sklearn()
    _, y = _data("multiclass")
    theirs.partial_fit(X, y)
    assert theirs.t_ == ours.t_ + len(X)
    assert len(theirs.loss_curve_) == len(ours.loss_curve_) + 1
    assert not np.array_equal(theirs.coefs_[0], ours.coefs_[0])


def test_feature_names_carry_over():
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    X, y = _data("binary")
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)])
    theirs = neural_network.MLPClassifier(hidden_layer_sizes=(6,), max_iter=30, random_state=0).fit(frame, y)
    ours = MLPClassifier.from_sklearn(theirs)
    np.testing.assert_array_equal(ours.feature_names_in_, theirs.feature_names_in_)
    np.testing.assert_array_equal(ours.predict(frame), theirs.predict(frame))
    with pytest.raises(ValueError, match="feature names"):
        ours.predict(frame[frame.columns[::-1]])
    np.testing.assert_array_equal(ours.to_sklearn().feature_names_in_, theirs.feature_names_in_)


def test_wrong_kinds_of_estimators_are_refused():
    classifier, _ = _sklearn_estimator("binary", "relu")
    with pytest.raises(TypeError, match="expected a fitted sklearn.neural_network.MLPRegressor, got MLPClassifier"):
        MLPRegressor.from_sklearn(classifier)
    ours, _ = _gpunet_estimator("binary", "relu")
    with pytest.raises(TypeError, match="expected a fitted sklearn.neural_network.MLPClassifier"):
        MLPClassifier.from_sklearn(ours)


def test_activations_without_a_gpunet_twin_are_refused():
    theirs, _ = _sklearn_estimator("binary", "relu")
    theirs.set_params(activation="softplus")       # not one scikit-learn offers: set after fitting
    with pytest.raises(ValueError, match="hidden activation 'softplus' has no gpunet twin"):
        MLPClassifier.from_sklearn(theirs)
    theirs, _ = _sklearn_estimator("single_output", "relu")
    theirs.out_activation_ = "softmax"
    with pytest.raises(ValueError, match="has the output 'identity'"):
        MLPRegressor.from_sklearn(theirs)
    theirs.out_activation_ = "softplus"
    with pytest.raises(ValueError, match="output activation 'softplus' has no gpunet twin"):
        MLPRegressor.from_sklearn(theirs)


def test_conversion_leaves_the_source_and_the_random_state_alone():
    theirs, X = _sklearn_estimator("multiclass", "relu")
    state = np.random.RandomState(5)
    theirs.set_params(random_state=state)
    snapshot = state.get_state()[1].copy()
    coefs = [c.copy() for c in theirs.coefs_]
    ours = MLPClassifier.from_sklearn(theirs)
    np.testing.assert_array_equal(state.get_state()[1], snapshot)
    assert ours.random_state is not state
    for before, after in zip(coefs, theirs.coefs_):
        np.testing.assert_array_equal(before, after)
    ours.coefs_[0][...] = 0                          # the copies are the new estimator's own
    assert np.abs(theirs.coefs_[0]).max() > 0


def test_no_warning_escapes_a_conversion(recwarn):
    ours, _ = _gpunet_estimator("binary", "relu")
    recwarn.clear()
    MLPClassifier.from_sklearn(ours.to_sklearn())
    assert not [w for w in recwarn if issubclass(w.category, (ConvergenceWarning, UserWarning))]
