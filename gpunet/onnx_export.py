"""ONNX export of a ``gpunet.MLP``: ``to_onnx(net, path)`` writes a graph that ONNX Runtime (or
any ONNX consumer) runs without gpunet.

The graph takes ``X`` (N, n_0) in the model's dtype (float32 or float64) and computes what
the model computes:

- the model's input scaling, ``(X - mean) / scale`` in float64 as gpunet does, cast back to
  the model's dtype, when ``net.input_scaling`` is set;
- each dense layer ``Z = A W + b`` as MatMul and Add, and its activation: the scaled sigmoid
  ``c * Sigmoid(beta z)``, Tanh, Relu, the leaky ReLU ``Max(z, slope * z)``, identity (no
  node), Softmax over the last axis, Exp.

Its outputs:

- a classifier (``cross_entropy``, ``binary_cross_entropy``): ``probabilities`` (N, n_L), what
  ``net.predict_proba`` returns (a softmax, or one sigmoid per output), and ``label``, what
  ``net.predict`` returns: the argmax of the logits (int64, or the model's ``classes``
  gathered from a constant: strings, integers, floats or booleans), or 0/1 indicators
  (int64, (N,) with one output, else (N, n_L)) where a logit passes 0;
- a regressor: ``outputs`` (N, n_L), what ``net.forward`` and ``net.predict`` return.

It reads the model's public attributes only, under ``net.reading_parameters()`` (a
concurrent ``fit`` cannot change the parameters half way through the copy), and imports
nothing of the model: it sits in the model's layer, so ``MLP.to_onnx`` can call it.

Needs the ``onnx`` package (``pip install 'gpunet[onnx]'``); ``import gpunet`` never imports it.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .activations import Activation, Exp, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .backend import to_numpy

__all__ = ["to_onnx", "build_onnx_model", "DEFAULT_OPSET", "MIN_OPSET"]

DEFAULT_OPSET = 17
MIN_OPSET = 13       # Softmax over one axis (earlier opsets flatten the trailing axes), Squeeze's axes input
_INPUT = "X"


class _GraphBuilder:
    """Nodes and constants of one graph, each given a fresh, readable name."""

    def __init__(self):
        self.nodes, self.initializers, self._names = [], [], set()

    def name(self, stem: str) -> str:
        candidate, n = stem, 1
        while candidate in self._names:
            n += 1
            candidate = f"{stem}_{n}"
        self._names.add(candidate)
        return candidate

    def constant(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name=name))
        return name

    def node(self, op: str, inputs, stem: str, output: str | None = None, **attributes) -> str:
        output = output or self.name(stem)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=self.name(f"{stem}_{op}"),
                                           **attributes))
        return output


def _activation(graph: _GraphBuilder, act: Activation, z: str, stem: str, dtype: np.dtype) -> str:
    """The nodes of ``act`` applied to ``z``; returns the output's name. Exact classes only: a
    subclass may change the math it inherits."""
    kind = type(act)
    if kind is Identity:
        return z
    if kind is Sigmoid:
        # c / (1 + exp(-beta z)) = c * sigmoid(beta z); the plain sigmoid is one node
        if act.beta != 1.0:
            z = graph.node("Mul", [z, graph.constant(f"{stem}_beta", np.array(act.beta, dtype))], f"{stem}_scaled")
        a = graph.node("Sigmoid", [z], stem)
        if act.c != 1.0:
            a = graph.node("Mul", [a, graph.constant(f"{stem}_c", np.array(act.c, dtype))], f"{stem}_times_c")
        return a
    if kind is Tanh:
        return graph.node("Tanh", [z], stem)
    if kind is ReLU:
        return graph.node("Relu", [z], stem)
    if kind is LeakyReLU:
        # max(z, slope z), as gpunet computes it: LeakyRelu's alpha is a float32 attribute,
        # which would round a float64 model's slope
        sloped = graph.node("Mul", [z, graph.constant(f"{stem}_slope", np.array(act.slope, dtype))], f"{stem}_sloped")
        return graph.node("Max", [z, sloped], stem)
    if kind is Exp:
        return graph.node("Exp", [z], stem)
    if kind is Softmax:
        return graph.node("Softmax", [z], stem, axis=-1)
    raise ValueError(f"no ONNX form for the activation {act!r}")


def _labels(graph: _GraphBuilder, net, logits: str):
    """The ``label`` output (name, element type, shape) of a classifier, from the logits as
    ``net.predict`` computes it."""
    n_outputs = net.sizes[-1]
    if net.loss_fn.label_rule == "threshold":
        passed = graph.node("Greater", [logits, graph.constant("zero", np.zeros((), net.dtype))], "logit_positive")
        if n_outputs == 1:   # predict returns (N,) for one yes/no output
            indicators = graph.node("Cast", [passed], "indicators", to=TensorProto.INT64)
            graph.node("Squeeze", [indicators, graph.constant("output_axis", np.array([1], np.int64))],
                       "label", output="label")
            return "label", TensorProto.INT64, ["N"]
        graph.node("Cast", [passed], "label", output="label", to=TensorProto.INT64)
        return "label", TensorProto.INT64, ["N", n_outputs]
    if net.classes is None:
        graph.node("ArgMax", [logits], "label", output="label", axis=1, keepdims=0)
        return "label", TensorProto.INT64, ["N"]
    index = graph.node("ArgMax", [logits], "label_index", axis=1, keepdims=0)
    classes = np.asarray(net.classes)
    if classes.dtype.kind == "U":
        values, elem_type = classes.astype(object), TensorProto.STRING
    else:
        values, elem_type = classes, helper.np_dtype_to_tensor_dtype(classes.dtype)
    graph.node("Gather", [graph.constant("classes", values), index], "label", output="label", axis=0)
    return "label", elem_type, ["N"]


def build_onnx_model(net: Any, opset: int | None = None) -> onnx.ModelProto:
    """The ONNX model of ``net`` (see the module docstring), checked by ``onnx.checker``.

    Parameters
    ----------
    net : MLP
        The model; its parameters are copied as they are now.
    opset : int or None
        The ONNX operator set, from ``MIN_OPSET`` (13) to the installed onnx's newest; None is
        ``DEFAULT_OPSET`` (17), which ONNX Runtime 1.14 and later run.

    Returns
    -------
    onnx.ModelProto
        The model: input ``X``; outputs ``probabilities`` and ``label`` (classifiers) or
        ``outputs`` (regressors).

    Raises
    ------
    ValueError
        For an opset out of range, or an activation with no ONNX form (a subclass of one of
        gpunet's, say).
    """
    opset = DEFAULT_OPSET if opset is None else opset
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an int from {MIN_OPSET} to {newest} (this onnx's newest), got {opset!r}")
    dtype = np.dtype(net.dtype)
    elem_type = helper.np_dtype_to_tensor_dtype(dtype)
    with net.reading_parameters():
        weights = [to_numpy(w).copy() for w in net.weights]
        biases = [to_numpy(b).copy() for b in net.biases]

    graph = _GraphBuilder()
    graph.name(_INPUT)
    a = _INPUT
    if net.input_scaling is not None:
        # gpunet standardises in float64 and rounds once to the model's dtype
        wide = graph.node("Cast", [a], "input_float64", to=TensorProto.DOUBLE)
        centred = graph.node("Sub", [wide, graph.constant("input_mean", net.input_scaling.mean)], "input_centred")
        scaled = graph.node("Div", [centred, graph.constant("input_scale", net.input_scaling.scale)], "input_scaled")
        a = graph.node("Cast", [scaled], "input_standardised", to=elem_type)

    last = net.n_layers - 1
    for l, (w, b, act) in enumerate(zip(weights, biases, net.activations)):
        layer = f"layer{l + 1}"
        product = graph.node("MatMul", [a, graph.constant(f"{layer}_W", w)], f"{layer}_AW")
        z = graph.node("Add", [product, graph.constant(f"{layer}_b", b)], f"{layer}_Z")
        if l == last:
            logits = z
        a = _activation(graph, act, z, f"{layer}_A", dtype)

    n_outputs = net.sizes[-1]
    if net.is_classifier:
        graph.node("Identity", [a], "probabilities", output="probabilities")
        outputs = [helper.make_tensor_value_info("probabilities", elem_type, ["N", n_outputs]),
                   helper.make_tensor_value_info(*_labels(graph, net, logits))]
    else:
        graph.node("Identity", [a], "outputs", output="outputs")
        outputs = [helper.make_tensor_value_info("outputs", elem_type, ["N", n_outputs])]

    onnx_graph = helper.make_graph(graph.nodes, "gpunet_mlp",
                                   [helper.make_tensor_value_info(_INPUT, elem_type, ["N", net.sizes[0]])],
                                   outputs, initializer=graph.initializers, doc_string=repr(net))
    model = helper.make_model_gen_version(onnx_graph, opset_imports=[helper.make_opsetid("", opset)],
                                          producer_name="gpunet")
    metadata = {"gpunet.loss": net.loss_fn.name}
    if net.feature_names is not None:
        metadata["feature_names"] = json.dumps(list(net.feature_names))
    if net.classes is not None:
        metadata["classes"] = json.dumps(np.asarray(net.classes).tolist())
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def to_onnx(net: Any, path: str | os.PathLike, opset: int | None = None) -> onnx.ModelProto:
    """Write ``net`` as an ONNX model to ``path`` and return the model.

    Parameters
    ----------
    net : MLP
        The model; its parameters are copied as they are now.
    path : str or os.PathLike
        The file to write (exactly that name; ``.onnx`` is the custom); nothing is written
        when the model cannot be exported.
    opset : int or None
        As for ``build_onnx_model``.

    Returns
    -------
    onnx.ModelProto
        The model written (``build_onnx_model``).

    Raises
    ------
    ValueError
        As ``build_onnx_model`` raises.
    """
    model = build_onnx_model(net, opset)
    onnx.save_model(model, os.fspath(path))
    return model
