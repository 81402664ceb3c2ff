"""Bad input is refused with a TypeError/ValueError naming the problem, before anything
changes: parameters, the shuffling RNG and the optimizer's velocity stay bit for bit as
they were. Valid but unusual input (int features, whole-number float labels, nested
lists, (N, 1) targets) is accepted and means the same as its plain form."""
from __future__ import annotations

import numpy as np
import pytest

import gpunet as gn
from gpunet.optim import SGD
from gpunet.schedules import EarlyStopping

N_EXAMPLES, N_FEATURES, N_CLASSES = 12, 4, 3
FIT_OPTIONS = dict(epochs=1, batch_size=4, lr=0.1, progress=False)


def make_classifier(dtype="float32"):
    return gn.MLP([N_FEATURES, 6, N_CLASSES], activation="tanh", seed=7, dtype=dtype)


def make_regressor(n_outputs=2, dtype="float32"):
    return gn.MLP([N_FEATURES, 6, n_outputs], activation="tanh", output="identity", loss="mse",
                  seed=7, dtype=dtype)


@pytest.fixture
def X():
    return np.random.default_rng(3).normal(size=(N_EXAMPLES, N_FEATURES))


@pytest.fixture
def labels():
    return np.arange(N_EXAMPLES) % N_CLASSES


@pytest.fixture
def targets():
    return np.random.default_rng(4).normal(size=(N_EXAMPLES, 2))


def model_state(net):
    """Everything a refused call could have disturbed, in comparable form (the gradients
    live in the caller's workspace, not in the model)."""
    return (gn.to_numpy(net.flat_params).tobytes(),
            repr(net.shuffle_rng.bit_generator.state))


def assert_refused(net, call, error, match):
    before = model_state(net)
    with pytest.raises(error, match=match):
        call()
    assert model_state(net) == before, "a refused call changed the model"


def assert_trains_like_fresh_twin(net, make, X, y):
    """The observable check: after the refusal, training gives exactly what a model that
    never saw the bad call gives (same params, same shuffling)."""
    twin = make()
    net.fit(X, y, **FIT_OPTIONS)
    twin.fit(X, y, **FIT_OPTIONS)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(twin.flat_params))


# ---- bad features X: every method that takes X -------------------------------------------------
def _with_value(X, value):
    bad = X.copy()
    bad[5, 1] = value
    return bad


BAD_X = [
    ("too_few_features", lambda X: X[:, :3], ValueError, "3 features but the network's input layer has 4"),
    ("too_many_features", lambda X: np.hstack([X, X]), ValueError, "8 features"),
    ("rank_1", lambda X: X[0], ValueError, r"must be 2-D .*reshape"),
    ("rank_3", lambda X: X[None], ValueError, "must be 2-D"),
    ("strings", lambda X: np.full(X.shape, "1.0"), TypeError, "real numbers"),
    ("object", lambda X: X.astype(object), TypeError, "real numbers"),
    ("complex", lambda X: X.astype(np.complex128), TypeError, "real numbers"),
    ("ragged_list", lambda X: [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], TypeError, "could not be read as an array"),
    ("none", lambda X: None, TypeError, "must be an array"),
    ("nan", lambda X: _with_value(X, np.nan), ValueError, "NaN or infinite"),
    ("inf", lambda X: _with_value(X, np.inf), ValueError, "NaN or infinite"),
    ("minus_inf", lambda X: _with_value(X, -np.inf), ValueError, "NaN or infinite"),
    ("empty", lambda X: X[:0], ValueError, "empty"),
    # finite in float64 but infinite once cast to the float32 model
    ("beyond_float32", lambda X: _with_value(X, 1e39), ValueError, "float32"),
]


@pytest.mark.parametrize("make_bad, error, match", [c[1:] for c in BAD_X], ids=[c[0] for c in BAD_X])
@pytest.mark.parametrize("method", ["fit", "loss_and_grad", "loss", "score", "predict", "predict_proba", "forward"])
def test_bad_features_are_refused(backend, method, make_bad, error, match, X, labels):
    net = make_classifier()
    bad = make_bad(X)
    y = labels  # X is checked first, so good labels isolate the X problem
    calls = {
        "fit": lambda: net.fit(bad, y, **FIT_OPTIONS),
        "loss_and_grad": lambda: net.loss_and_grad(bad, y),
        "loss": lambda: net.loss(bad, y),
        "score": lambda: net.score(bad, y),
        "predict": lambda: net.predict(bad),
        "predict_proba": lambda: net.predict_proba(bad),
        "forward": lambda: net.forward(bad),
    }
    assert_refused(net, calls[method], error, match)
    if method == "fit":
        assert_trains_like_fresh_twin(net, make_classifier, X, labels)


# ---- bad class labels -------------------------------------------------------------------------
BAD_LABELS = [
    ("fractional", lambda y: y + 0.5, ValueError, "fractional class labels"),
    ("negative", lambda y: y - 1, ValueError, r"must lie in 0\.\.2"),
    ("too_large", lambda y: y + 1, ValueError, r"must lie in 0\.\.2 \(the network has 3 outputs; .*classes="),
    ("nan", lambda y: np.where(y == 1, np.nan, y), ValueError, "NaN or infinite"),
    ("inf", lambda y: np.where(y == 1, np.inf, y), ValueError, "NaN or infinite"),
    ("strings", lambda y: y.astype(str), TypeError, "real numbers"),
    ("object", lambda y: y.astype(object), TypeError, "real numbers"),
    ("complex", lambda y: y.astype(np.complex64), TypeError, "real numbers"),
    ("booleans", lambda y: y > 0, TypeError, "booleans"),
    ("none", lambda y: None, TypeError, "must be an array"),
    ("one_hot_too_wide", lambda y: np.eye(4)[y], ValueError, "width 4 but the network has 3 outputs"),
    ("one_hot_too_narrow", lambda y: np.eye(2)[y % 2], ValueError, "width 2"),
    ("one_hot_rows_sum_to_2", lambda y: 2 * np.eye(3)[y], ValueError, "sum to 1"),
    ("one_hot_all_zero_row", lambda y: np.eye(3)[y] * (np.arange(len(y)) != 4)[:, None], ValueError, "sum to 1"),
    ("one_hot_negative", lambda y: np.eye(3)[y] * 3 - np.eye(3)[(y + 1) % 3] * 2 - np.eye(3)[(y + 2) % 3] * 0,
     ValueError, "non-negative"),
    ("one_hot_nan", lambda y: np.where(np.eye(3)[y] == 1, np.nan, 0.0), ValueError, "NaN or infinite"),
    ("too_short", lambda y: y[:5], ValueError, "12 examples but y has 5"),
    ("too_long", lambda y: np.concatenate([y, y]), ValueError, "12 examples but y has 24"),
    ("rank_3", lambda y: y[:, None, None], ValueError, "must be labels"),
]


# fit learns label values from strings and booleans (MLP.classes): those are refused only
# where their count does not match the outputs; elsewhere a model without classes refuses them
FIT_REFUSES = {
    "strings": None,
    "booleans": (ValueError, r"2 distinct labels \(False, True\) but the network has 3 outputs; pass classes="),
    "complex": (TypeError, "must hold class labels"),
}


@pytest.mark.parametrize("case, make_bad, error, match", BAD_LABELS, ids=[c[0] for c in BAD_LABELS])
@pytest.mark.parametrize("method", ["fit", "loss_and_grad", "loss", "score"])
def test_bad_labels_are_refused(backend, method, case, make_bad, error, match, X, labels):
    if method == "fit" and case in FIT_REFUSES:
        if FIT_REFUSES[case] is None:     # digit strings: learned as the label values "0", "1", "2"
            net = make_classifier()
            net.fit(X, make_bad(labels), **FIT_OPTIONS)
            assert net.classes.tolist() == ["0", "1", "2"]
            return
        error, match = FIT_REFUSES[case]
    net = make_classifier()
    bad = make_bad(labels)
    call = {
        "fit": lambda: net.fit(X, bad, **FIT_OPTIONS),
        "loss_and_grad": lambda: net.loss_and_grad(X, bad),
        "loss": lambda: net.loss(X, bad),
        "score": lambda: net.score(X, bad),
    }[method]
    assert_refused(net, call, error, match)
    if method == "fit":
        assert_trains_like_fresh_twin(net, make_classifier, X, labels)


# ---- bad regression targets -------------------------------------------------------------------
BAD_TARGETS = [
    ("too_many_columns", lambda t: np.hstack([t, t[:, :1]]), ValueError, "3 columns but the network has 2 outputs"),
    ("one_dimensional", lambda t: t[:, 0], ValueError, r"must have shape \(N, 2\)"),
    ("rank_3", lambda t: t[:, :, None], ValueError, r"must have shape \(N, 2\)"),
    ("nan", lambda t: _with_value(t, np.nan), ValueError, "NaN or infinite"),
    ("inf", lambda t: _with_value(t, np.inf), ValueError, "NaN or infinite"),
    ("strings", lambda t: t.astype(str), TypeError, "real numbers"),
    ("too_short", lambda t: t[:7], ValueError, "12 examples but y has 7"),
    ("beyond_float32", lambda t: _with_value(t, -1e39), ValueError, "float32"),
]


@pytest.mark.parametrize("make_bad, error, match", [c[1:] for c in BAD_TARGETS], ids=[c[0] for c in BAD_TARGETS])
@pytest.mark.parametrize("method", ["fit", "loss_and_grad", "score"])
def test_bad_regression_targets_are_refused(backend, method, make_bad, error, match, X, targets):
    net = make_regressor()
    bad = make_bad(targets)
    call = {
        "fit": lambda: net.fit(X, bad, **FIT_OPTIONS),
        "loss_and_grad": lambda: net.loss_and_grad(X, bad),
        "score": lambda: net.score(X, bad),
    }[method]
    assert_refused(net, call, error, match)
    if method == "fit":
        assert_trains_like_fresh_twin(net, make_regressor, X, targets)


def test_predict_proba_on_a_regressor_is_refused(X):
    net = make_regressor()
    assert_refused(net, lambda: net.predict_proba(X), TypeError, "classifiers")


# ---- bad training options ---------------------------------------------------------------------
BAD_FIT_OPTIONS = [
    ("batch_size_zero", dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
    ("batch_size_negative", dict(batch_size=-4), ValueError, "batch_size must be a positive integer"),
    ("batch_size_float", dict(batch_size=4.0), TypeError, "batch_size must be an integer"),
    ("batch_size_bool", dict(batch_size=True), TypeError, "batch_size must be an integer"),
    ("epochs_negative", dict(epochs=-1), ValueError, "epochs must be >= 0"),
    ("epochs_float", dict(epochs=2.5), TypeError, "epochs must be an integer"),
    ("lr_zero", dict(lr=0.0), ValueError, "lr must be > 0"),
    ("lr_negative", dict(lr=-0.1), ValueError, "lr must be > 0"),
    ("lr_nan", dict(lr=float("nan")), ValueError, "lr must be finite"),
    ("lr_inf", dict(lr=float("inf")), ValueError, "lr must be finite"),
    ("lr_string", dict(lr="0.1"), TypeError, "lr must be a real number"),
    ("lr_list", dict(lr=[0.1]), TypeError, "lr must be a real number"),
    ("momentum_negative", dict(momentum=-0.1), ValueError, "momentum must be >= 0"),
    ("momentum_one", dict(momentum=1.0), ValueError, "momentum must be < 1"),
    ("momentum_large", dict(momentum=5.0), ValueError, "momentum must be < 1"),
    ("momentum_nan", dict(momentum=float("nan")), ValueError, "momentum must be finite"),
    ("nesterov_without_momentum", dict(nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
    ("nesterov_not_bool", dict(momentum=0.9, nesterov="yes"), TypeError, "nesterov must be a bool"),
    ("clip_norm_zero", dict(clip_norm=0.0), ValueError, "clip_norm must be > 0"),
    ("clip_norm_negative", dict(clip_norm=-1.0), ValueError, "clip_norm must be > 0"),
    ("clip_norm_nan", dict(clip_norm=float("nan")), ValueError, "clip_norm must be finite"),
    ("clip_norm_inf", dict(clip_norm=float("inf")), ValueError, "clip_norm must be finite"),
    ("clip_norm_string", dict(clip_norm="1"), TypeError, "clip_norm must be a real number"),
    ("shuffle_not_bool", dict(shuffle="yes"), TypeError, "shuffle must be True or False"),
    ("progress_not_bool", dict(progress=None), TypeError, "progress must be True or False"),
    ("optimizer_without_step", dict(optimizer=object()), TypeError, "optimizer must have a step"),
    ("optimizer_unknown_name", dict(optimizer="nadam"), ValueError, "unknown optimizer 'nadam'"),
    ("adam_with_momentum", dict(optimizer="adam", momentum=0.9), ValueError, "momentum/nesterov apply to optimizer='sgd'"),
    ("schedule_not_callable", dict(schedule=3), TypeError, "schedule must be a gpunet.schedules.Schedule"),
    ("early_stopping_not_bool", dict(early_stopping="yes"), TypeError, "early_stopping must be True"),
    ("early_stopping_on_missing_validation", dict(early_stopping=EarlyStopping(monitor="val_loss")), ValueError,
     "monitors 'val_loss' but fit\\(\\) got no validation_data"),
]


@pytest.mark.parametrize("options, error, match", [c[1:] for c in BAD_FIT_OPTIONS], ids=[c[0] for c in BAD_FIT_OPTIONS])
def test_bad_fit_options_are_refused(backend, options, error, match, X, labels):
    net = make_classifier()
    assert_refused(net, lambda: net.fit(X, labels, **{**FIT_OPTIONS, **options}), error, match)
    assert_trains_like_fresh_twin(net, make_classifier, X, labels)


BAD_VALIDATION = [
    ("not_a_pair", lambda X, y: X, TypeError, "validation_data must be a pair"),
    ("triple", lambda X, y: (X, y, y), TypeError, "validation_data must be a pair"),
    ("wrong_features", lambda X, y: (X[:, :2], y), ValueError, "X_val has 2 features"),
    ("nan_features", lambda X, y: (_with_value(X, np.nan), y), ValueError, "X_val contains 1 NaN"),
    ("empty", lambda X, y: (X[:0], y[:0]), ValueError, "X_val is empty"),
    ("labels_out_of_range", lambda X, y: (X, y + 5), ValueError, r"y_val has labels .* must lie in 0\.\.2"),
    ("length_mismatch", lambda X, y: (X, y[:3]), ValueError, "y_val has 3"),
    ("string_labels", lambda X, y: (X, y.astype(str)), TypeError, "y_val must hold real numbers"),
]


@pytest.mark.parametrize("make_bad, error, match", [c[1:] for c in BAD_VALIDATION], ids=[c[0] for c in BAD_VALIDATION])
def test_bad_validation_data_is_refused_before_training(backend, make_bad, error, match, X, labels):
    net = make_classifier()
    validation_data = make_bad(X, labels)
    assert_refused(net, lambda: net.fit(X, labels, validation_data=validation_data, **FIT_OPTIONS),
                   error, match)
    assert_trains_like_fresh_twin(net, make_classifier, X, labels)


def test_refused_fit_leaves_optimizer_velocity_alone(backend, X, labels):
    net = make_classifier()
    optimizer = SGD(lr=0.1, momentum=0.9)
    net.fit(X, labels, epochs=1, batch_size=4, optimizer=optimizer, progress=False)
    velocity = gn.to_numpy(optimizer.velocity).tobytes()
    bad_calls = [
        lambda: net.fit(X, labels + 7, optimizer=optimizer, progress=False),
        lambda: net.fit(X, labels, batch_size=0, optimizer=optimizer, progress=False),
        lambda: net.fit(X, labels, validation_data=(X, labels[:2]), optimizer=optimizer, progress=False),
        lambda: net.fit(_with_value(X, np.nan), labels, optimizer=optimizer, progress=False),
    ]
    for call in bad_calls:
        assert_refused(net, call, ValueError, None)
        assert gn.to_numpy(optimizer.velocity).tobytes() == velocity


def test_zero_epochs_changes_nothing(X, labels):
    net = make_classifier()
    before = model_state(net)
    history = net.fit(X, labels, epochs=0, progress=False)
    assert history.epochs == 0
    assert model_state(net)[0] == before[0]


# ---- the constructor ----------------------------------------------------------------------------
BAD_CONSTRUCTIONS = [
    ("unknown_activation", dict(activation="swish"), ValueError, "unknown hidden activation 'swish'"),
    ("softmax_as_hidden", dict(activation="softmax"), ValueError, "'softmax' cannot be used as hidden activation"),
    ("activation_not_a_name", dict(activation=3), TypeError, "hidden activation must be a name"),
    ("unknown_output", dict(output="softplus", loss="mse"), ValueError, "unknown output activation 'softplus'"),
    ("relu_as_output", dict(output="relu", loss="mse"), ValueError, "'relu' cannot be used as output activation"),
    ("unknown_loss", dict(loss="hinge"), ValueError, "unknown loss 'hinge'"),
    ("loss_not_a_name", dict(loss=None), TypeError, "loss must be a name"),
    ("unknown_init", dict(init="orthogonal"), ValueError, "unknown initialiser 'orthogonal'"),
    ("init_not_a_name", dict(init=1), TypeError, "init must be a name"),
    ("activation_list_too_long", dict(activation=["relu", "tanh", "relu"]), ValueError,
     r"got 3 hidden activations for 2 hidden layer\(s\)"),
    ("activation_list_too_short", dict(activation=["relu"]), ValueError, "got 1 hidden activations for 2"),
    ("activation_list_with_unknown", dict(activation=["relu", "gelu"]), ValueError, "unknown hidden activation 'gelu'"),
    ("dtype_int32", dict(dtype=np.int32), TypeError, "dtype must be 'float32' or 'float64', got int32"),
    ("dtype_int32_name", dict(dtype="int32"), TypeError, "got int32"),
    ("dtype_float16", dict(dtype="float16"), TypeError, "got float16"),
    ("dtype_object", dict(dtype=object), TypeError, "got object"),
    ("dtype_complex", dict(dtype="complex128"), TypeError, "got complex128"),
    ("dtype_unknown_name", dict(dtype="double precision"), TypeError, "dtype must be 'float32' or 'float64'"),
    ("cross_entropy_with_sigmoid", dict(output="sigmoid"), ValueError, "needs output='softmax'"),
    ("cross_entropy_with_tanh", dict(output="tanh", loss="cross_entropy"), ValueError, "needs output='softmax'"),
    ("cross_entropy_with_identity", dict(output="identity"), ValueError, "needs output='softmax'"),
    ("weight_decay_negative", dict(weight_decay=-1e-3), ValueError, "weight_decay must be >= 0"),
    ("weight_decay_nan", dict(weight_decay=float("nan")), ValueError, "weight_decay must be finite"),
    ("weight_decay_string", dict(weight_decay="0.1"), TypeError, "weight_decay must be a real number"),
    ("seed_negative", dict(seed=-1), ValueError, "seed must be >= 0"),
    ("seed_float", dict(seed=1.5), TypeError, "seed must be an integer"),
]


@pytest.mark.parametrize("options, error, match", [c[1:] for c in BAD_CONSTRUCTIONS],
                         ids=[c[0] for c in BAD_CONSTRUCTIONS])
def test_bad_constructor_options_are_refused(options, error, match):
    with pytest.raises(error, match=match):
        gn.MLP([N_FEATURES, 5, 5, N_CLASSES], **options)


BAD_SIZES = [
    ("one_width", [4], ValueError, "at least two widths"),
    ("no_widths", [], ValueError, "at least two widths"),
    ("zero_hidden", [4, 0, 3], ValueError, "layer widths must be positive"),
    ("zero_input", [0, 3], ValueError, "layer widths must be positive"),
    ("negative_output", [4, -3], ValueError, "layer widths must be positive"),
    ("float_width", [4, 2.5, 3], TypeError, "layer width must be an integer, got float"),
    ("whole_float_width", [4.0, 3], TypeError, "layer width must be an integer"),
    ("string_width", [4, "5", 3], TypeError, "layer width must be an integer, got str"),
    ("bool_width", [4, True, 3], TypeError, "layer width must be an integer, got bool"),
    ("none_width", [4, None], TypeError, "layer width must be an integer"),
    ("a_number", 5, TypeError, "sizes must be a list of layer widths"),
    ("a_string", "43", TypeError, "sizes must be a list of layer widths"),
]


@pytest.mark.parametrize("sizes, error, match", [c[1:] for c in BAD_SIZES], ids=[c[0] for c in BAD_SIZES])
def test_bad_sizes_are_refused(sizes, error, match):
    with pytest.raises(error, match=match):
        gn.MLP(sizes)


def test_activation_list_for_a_network_without_hidden_layers_is_refused():
    with pytest.raises(ValueError, match="got 1 hidden activations for 0 hidden layer"):
        gn.MLP([4, 3], activation=["relu"])


@pytest.mark.parametrize("make, error, match", [
    (lambda: gn.Sigmoid(c=0), ValueError, "sigmoid c must be > 0"),
    (lambda: gn.Sigmoid(c=-2.0), ValueError, "sigmoid c must be > 0"),
    (lambda: gn.Sigmoid(beta=0), ValueError, "sigmoid beta must be > 0"),
    (lambda: gn.Sigmoid(beta=-1), ValueError, "sigmoid beta must be > 0"),
    (lambda: gn.Sigmoid(c=float("nan")), ValueError, "sigmoid c must be finite"),
    (lambda: gn.Sigmoid(beta=float("inf")), ValueError, "sigmoid beta must be finite"),
    (lambda: gn.Sigmoid(c="2"), TypeError, "sigmoid c must be a real number"),
    (lambda: gn.LeakyReLU(1.0), ValueError, r"slope must be in \[0, 1\)"),
    (lambda: gn.LeakyReLU(-0.1), ValueError, r"slope must be in \[0, 1\)"),
    (lambda: gn.LeakyReLU(float("nan")), ValueError, "slope must be finite"),
    (lambda: gn.LeakyReLU(None), TypeError, "slope must be a real number"),
], ids=["c_zero", "c_negative", "beta_zero", "beta_negative", "c_nan", "beta_inf", "c_string",
        "slope_one", "slope_negative", "slope_nan", "slope_none"])
def test_bad_activation_parameters_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("name, error, match", [
    ("tensorflow", ValueError, "unknown backend 'tensorflow'; choose from auto, numpy, cupy"),
    ("", ValueError, "unknown backend ''"),
    (None, TypeError, "backend name must be a string"),
    (1, TypeError, "backend name must be a string"),
])
def test_unknown_backend_names_are_refused_and_change_nothing(name, error, match):
    with gn.use_backend("numpy") as active:
        with pytest.raises(error, match=match):
            gn.set_backend(name)
        with pytest.raises(error, match=match):
            with gn.use_backend(name):
                pass  # pragma: no cover - never entered
        assert gn.get_backend() is active


# ---- valid but unusual input ------------------------------------------------------------------
def test_integer_features_mean_the_same_as_floats(backend, labels):
    X_int = np.random.default_rng(5).integers(-3, 4, size=(N_EXAMPLES, N_FEATURES))
    for int_dtype in (np.int64, np.int32, np.uint8):
        Xi = (X_int + 3).astype(int_dtype) if int_dtype is np.uint8 else X_int.astype(int_dtype)
        Xf = Xi.astype(np.float64)
        net, twin = make_classifier(), make_classifier()
        np.testing.assert_array_equal(gn.to_numpy(net.forward(Xi)), gn.to_numpy(net.forward(Xf)))
        assert net.loss_and_grad(Xi, labels)[0] == net.loss_and_grad(Xf, labels)[0]
        net.fit(Xi, labels, **FIT_OPTIONS)
        twin.fit(Xf, labels, **FIT_OPTIONS)
        np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(twin.flat_params))


def test_whole_number_float_labels_mean_the_same_as_ints(backend, X, labels):
    net = make_classifier()
    for same in (labels.astype(np.float64), labels.astype(np.float32), labels.astype(np.uint8),
                 labels[:, None], labels.tolist()):
        assert net.loss(X, same) == net.loss(X, labels)
        assert net.score(X, same) == net.score(X, labels)
    net_a, net_b = make_classifier(), make_classifier()
    net_a.fit(X, labels.astype(np.float64), **FIT_OPTIONS)
    net_b.fit(X, labels, **FIT_OPTIONS)
    np.testing.assert_array_equal(gn.to_numpy(net_a.flat_params), gn.to_numpy(net_b.flat_params))


def test_one_hot_and_soft_targets_are_accepted(backend, X, labels):
    net = make_classifier("float64")
    one_hot = np.eye(N_CLASSES)[labels]
    np.testing.assert_allclose(net.loss(X, one_hot), net.loss(X, labels), rtol=1e-12)
    assert net.score(X, one_hot) == net.score(X, labels)
    soft = np.full((N_EXAMPLES, N_CLASSES), 1.0 / N_CLASSES)
    assert np.isfinite(net.loss_and_grad(X, soft)[0])


def test_nested_python_lists_are_accepted(backend, X, labels):
    net, twin = make_classifier(), make_classifier()
    np.testing.assert_array_equal(net.predict(X.tolist()), net.predict(X))
    assert net.score(X.tolist(), labels.tolist()) == net.score(X, labels)
    net.fit(X.tolist(), labels.tolist(), **FIT_OPTIONS)
    twin.fit(X, labels, **FIT_OPTIONS)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(twin.flat_params))


def test_column_targets_for_one_output_regression(backend, X, targets):
    column, flat = targets[:, :1], targets[:, 0]
    net, twin = make_regressor(1), make_regressor(1)
    assert net.loss(X, column) == net.loss(X, flat)
    assert net.score(X, column) == net.score(X, flat)
    loss_col, grads_col = net.loss_and_grad(X, column)
    loss_flat, grads_flat = net.loss_and_grad(X, flat)
    assert loss_col == loss_flat
    for g_col, g_flat in zip(grads_col, grads_flat):
        np.testing.assert_array_equal(gn.to_numpy(g_col), gn.to_numpy(g_flat))
    net.fit(X, column, **FIT_OPTIONS)
    twin.fit(X, flat, **FIT_OPTIONS)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(twin.flat_params))
    assert net.predict(X).shape == (N_EXAMPLES, 1)


def test_float64_model_accepts_values_beyond_the_float32_range(X, targets):
    # only the model's own dtype bounds the input; 1e39 is an ordinary float64
    net = make_regressor(dtype="float64")
    big = _with_value(targets, 1e39)
    assert np.isfinite(net.loss(X, big))


def test_batch_sizes_at_the_edges_are_accepted(X, labels):
    net = make_classifier()
    for batch_size in (1, N_EXAMPLES, 10 * N_EXAMPLES, None):
        history = net.fit(X, labels, epochs=1, batch_size=batch_size, lr=0.05, progress=False)
        assert history.epochs == 1 and np.isfinite(history["loss"][0])
