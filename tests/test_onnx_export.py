"""ONNX export (gpunet.onnx_export.to_onnx): for every hidden activation, every output and loss,
float32 and float64, with and without the model's input scaling, ONNX Runtime's outputs match
``predict_proba``/``predict`` (classifiers) and ``forward``/``predict`` (regressors) on batches
of 1 and 37 rows; the files pass onnx.checker."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'gpunet[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")

import gpunet as gn  # noqa: E402
from gpunet.onnx_export import DEFAULT_OPSET, MIN_OPSET, build_onnx_model, to_onnx  # noqa: E402
from gpunet.scaling import InputScaling  # noqa: E402

N_FEATURES = 5
BATCHES = (1, 37)
# how close ONNX Runtime's arithmetic (its own exp, tanh, sigmoid, GEMM order) comes to gpunet's
TOLERANCE = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-14)}

HIDDEN = {
    "sigmoid": "sigmoid",
    "scaled_sigmoid": gn.Sigmoid(c=1.7159, beta=0.6666),
    "tanh": "tanh",
    "relu": "relu",
    "leaky_relu": gn.LeakyReLU(0.2),
    "identity": "identity",
    "mixed_per_layer": ["tanh", gn.LeakyReLU(0.05)],
}
# (output, loss, number of outputs)
HEADS = {
    "softmax_cross_entropy": ("softmax", "cross_entropy", 4),
    "sigmoid_binary_one_output": ("sigmoid", "binary_cross_entropy", 1),
    "sigmoid_multilabel": ("sigmoid", "binary_cross_entropy", 3),
    "identity_mse": ("identity", "mse", 2),
    "tanh_mse": ("tanh", "mse", 2),
    "sigmoid_mse": ("sigmoid", "mse", 1),
    "scaled_sigmoid_mse": (gn.Sigmoid(c=2.0, beta=0.5), "mse", 2),
    "softmax_mse": ("softmax", "mse", 3),
    "exp_poisson": ("exp", "poisson", 2),
    "exp_mse": ("exp", "mse", 1),
}


def _model(hidden, head, dtype, scaled, seed=0, **options):
    output, loss, n_out = HEADS[head]
    activation = HIDDEN[hidden]
    n_hidden = len(activation) if isinstance(activation, list) else 2
    rng = np.random.default_rng(seed)
    scaling = InputScaling(rng.normal(size=N_FEATURES) * 3, rng.uniform(0.5, 4.0, N_FEATURES)) if scaled else None
    net = gn.MLP([N_FEATURES, *[7] * n_hidden, n_out], activation=activation, output=output, loss=loss,
                 dtype=dtype, seed=seed, input_scaling=scaling, **options)
    # larger weights than the initialisation's: outputs spread over the activations' range
    net.set_flat_params(gn.to_numpy(net.flat_params) * 1.5 + rng.normal(size=net.n_params) * 0.1)
    return net


def _inputs(net, rows, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, N_FEATURES))
    if net.input_scaling is not None:
        X = X * net.input_scaling.scale + net.input_scaling.mean
    return X.astype(net.dtype)     # the graph's input dtype: both sides see the same numbers


def _run(path_or_model, X):
    model = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"X": X})))


def _check_against_gpunet(net, path):
    onnx.checker.check_model(str(path), full_check=True)
    tolerance = TOLERANCE[net.dtype.name]
    for rows in BATCHES:
        X = _inputs(net, rows)
        outputs = _run(path, X)
        if net.is_classifier:
            assert set(outputs) == {"probabilities", "label"}
            assert outputs["probabilities"].dtype == net.dtype
            np.testing.assert_allclose(outputs["probabilities"], net.predict_proba(X), **tolerance)
            np.testing.assert_array_equal(outputs["label"], net.predict(X))
            assert outputs["label"].shape == net.predict(X).shape
        else:
            assert set(outputs) == {"outputs"}
            assert outputs["outputs"].dtype == net.dtype
            np.testing.assert_allclose(outputs["outputs"], gn.to_numpy(net.forward(X)), **tolerance)
            np.testing.assert_allclose(outputs["outputs"], net.predict(X), **tolerance)


@pytest.mark.parametrize("scaled", [False, True], ids=["raw", "input_scaling"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("hidden", list(HIDDEN))
def test_onnx_runtime_matches_gpunet(tmp_path, hidden, head, dtype, scaled):
    net = _model(hidden, head, dtype, scaled)
    path = tmp_path / "model.onnx"
    to_onnx(net, path)
    _check_against_gpunet(net, path)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("head", list(HEADS))
def test_a_network_without_hidden_layers(tmp_path, head, dtype):
    output, loss, n_out = HEADS[head]
    net = gn.MLP([N_FEATURES, n_out], output=output, loss=loss, dtype=dtype, seed=3)
    to_onnx(net, tmp_path / "linear.onnx")
    _check_against_gpunet(net, tmp_path / "linear.onnx")


@pytest.mark.parametrize("classes", [["cat", "dog", "emu", "yak"], [10, 20, 30, 40], [0.5, 1.5, 2.5, 3.5],
                                     ["ü", "日本", "", "x y"]], ids=["strings", "ints", "floats", "unicode"])
def test_a_classifier_with_label_values_gives_them(tmp_path, classes):
    net = _model("relu", "softmax_cross_entropy", "float32", scaled=False, classes=classes)
    to_onnx(net, tmp_path / "labels.onnx")
    X = _inputs(net, 37)
    outputs = _run(tmp_path / "labels.onnx", X)
    expected = net.predict(X)
    assert len(set(expected.tolist())) > 1, "the test needs predictions of more than one class"
    if isinstance(classes[0], str):
        assert outputs["label"].tolist() == expected.tolist()
    else:
        np.testing.assert_array_equal(outputs["label"], expected)
        assert outputs["label"].dtype == np.asarray(classes).dtype


def test_a_trained_standardised_classifier(tmp_path):
    """The usual way a model comes to be: fit with standardize=True on raw, offset features."""
    rng = np.random.default_rng(7)
    X = (rng.normal(size=(300, N_FEATURES)) * [1, 10, 100, 0.1, 5] + [0, 50, -300, 2, 7]).astype(np.float32)
    y = np.where(X[:, 1] > 50, "high", "low")
    net = gn.MLP([N_FEATURES, 16, 2], standardize=True, seed=0)
    net.fit(X, y, epochs=20, batch_size=32, lr=0.05, progress=False)
    proto = net.to_onnx(tmp_path / "trained.onnx")          # the method is the module's function
    assert proto == build_onnx_model(net)
    outputs = _run(tmp_path / "trained.onnx", X)
    np.testing.assert_allclose(outputs["probabilities"], net.predict_proba(X), **TOLERANCE["float32"])
    assert outputs["label"].tolist() == net.predict(X).tolist()
    assert net.score(X, y) > 0.9


def test_graph_interface_and_metadata(tmp_path):
    net = gn.MLP([N_FEATURES, 6, 3], seed=0, classes=["a", "b", "c"],
                 feature_names=[f"f{i}" for i in range(N_FEATURES)])
    model = to_onnx(net, tmp_path / "m.onnx")
    assert model == onnx.load(str(tmp_path / "m.onnx"))
    (graph_input,) = model.graph.input
    assert graph_input.name == "X"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = graph_input.type.tensor_type.shape.dim
    assert [dims[0].dim_param, dims[1].dim_value] == ["N", N_FEATURES]
    assert [o.name for o in model.graph.output] == ["probabilities", "label"]
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.STRING
    assert [(o.domain, o.version) for o in model.opset_import] == [("", DEFAULT_OPSET)]
    props = {p.key: p.value for p in model.metadata_props}
    assert props == {"gpunet.loss": "cross_entropy", "classes": '["a", "b", "c"]',
                     "feature_names": '["f0", "f1", "f2", "f3", "f4"]'}
    assert model.producer_name == "gpunet"


@pytest.mark.parametrize("opset", [MIN_OPSET, onnx.defs.onnx_opset_version()], ids=["oldest", "newest"])
def test_opsets_in_range(tmp_path, opset):
    net = _model("leaky_relu", "sigmoid_binary_one_output", "float32", scaled=True)
    model = build_onnx_model(net, opset=opset)
    assert model.opset_import[0].version == opset
    if opset <= 21:     # what this onnxruntime surely runs; newer opsets are checked by onnx.checker only
        X = _inputs(net, 37)
        np.testing.assert_allclose(_run(model, X)["probabilities"], net.predict_proba(X), **TOLERANCE["float32"])


@pytest.mark.parametrize("opset", [12, onnx.defs.onnx_opset_version() + 1, "17", 17.0, True])
def test_opsets_out_of_range_are_refused(tmp_path, opset):
    with pytest.raises(ValueError, match="opset must be an int from 13"):
        to_onnx(gn.MLP([3, 2], seed=0), tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


def test_an_activation_without_an_onnx_form_is_refused(tmp_path):
    class Softsign(gn.Sigmoid):      # a subclass keeps the name but may change the math
        def forward(self, xp, z, out=None):
            return xp.divide(z, 1 + abs(z), out=out)

    net = gn.MLP([3, 4, 2], activation=Softsign(), seed=0)
    with pytest.raises(ValueError, match="no ONNX form for the activation Softsign"):
        to_onnx(net, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_the_export_reads_the_parameters_as_they_are_now(tmp_path):
    net = _model("tanh", "identity_mse", "float64", scaled=False)
    before = build_onnx_model(net)
    net.set_flat_params(np.zeros(net.n_params))
    X = _inputs(net, 4)
    np.testing.assert_array_equal(_run(build_onnx_model(net), X)["outputs"], np.zeros((4, 2)))
    assert np.abs(_run(before, X)["outputs"]).max() > 0.1
