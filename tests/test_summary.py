"""``MLP.summary()``: one row per layer, and totals that agree with the model itself."""
from __future__ import annotations

import re

import numpy as np
import pytest

import gpunet as gn


def table_rows(text):
    """The layer rows: (layer, n_in, n_out, activation, weight shape, bias shape, parameters)."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"^\s*(\d+)\s+(\d+) -> (\d+)\s+(\S+)\s+(\(\d+, \d+\))\s+(\(\d+,\))\s+([\d,]+)$", line)
        if match:
            layer, n_in, n_out, act, weights, biases, count = match.groups()
            rows.append((int(layer), int(n_in), int(n_out), act, weights, biases, int(count.replace(",", ""))))
    return rows


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_and_totals_match_the_model(dtype):
    net = gn.MLP([20, 64, 32, 3], activation=["relu", "tanh"], dtype=dtype, seed=0)
    text = net.summary()
    rows = table_rows(text)
    assert [row[0] for row in rows] == [1, 2, 3]
    assert [(row[1], row[2]) for row in rows] == [(20, 64), (64, 32), (32, 3)]
    assert [row[3] for row in rows] == ["relu", "tanh", "softmax"]
    for (_, n_in, n_out, _, weights, biases, count), W, b in zip(rows, net.weights, net.biases):
        assert weights == str(W.shape) and biases == str(b.shape)
        assert count == W.size + b.size
    assert sum(row[-1] for row in rows) == net.n_params
    itemsize = np.dtype(dtype).itemsize
    assert f"parameters: {net.n_params:,}, taking {net.n_params * itemsize:,} bytes" in text
    assert net.flat_params.nbytes == net.n_params * itemsize      # what the line claims, measured
    assert f"dtype: {dtype}, backend: {net.backend.name}, loss: cross_entropy" in text


def test_the_table_lines_up_when_printed():
    text = gn.MLP([784, 1024, 1024, 10], seed=0).summary()
    lines = text.splitlines()
    table = lines[1:5]                       # the header and three layers
    assert table[0].split() == ["layer", "in", "->", "out", "activation", "weights", "biases", "parameters"]
    assert len({len(line) for line in table}) == 1, "the parameter counts should end in one column"
    assert lines[0] == "MLP 784 -> 1024 -> 1024 -> 10"
    assert not text.endswith("\n")


def test_activation_parameters_are_shown():
    net = gn.MLP([4, 8, 8, 2], activation=[gn.Sigmoid(c=2, beta=0.5), gn.LeakyReLU(0.1)], output="identity",
                 loss="mse")
    layer_lines = net.summary().splitlines()[2:5]
    assert re.search(r" 4 -> 8\s+sigmoid\(c=2\.0, beta=0\.5\)\s", layer_lines[0])
    assert re.search(r" 8 -> 8\s+leaky_relu\(slope=0\.1\)\s", layer_lines[1])
    assert re.search(r" 8 -> 2\s+identity\s", layer_lines[2])
    assert "loss: mse" in net.summary()


def test_batch_memory_is_the_workspace_a_pass_allocates():
    net = gn.MLP([20, 64, 3], seed=0)
    batch = 48
    ws = net.workspace(batch)                # the buffers fit allocates for such a batch
    activations = sum(a.nbytes for a in ws.acts)
    step = activations + sum(d.nbytes for d in ws.deltas) + ws.flat_grads.nbytes
    text = net.summary(batch_size=batch)
    assert f"batch of {batch}: forward pass activations take {activations:,} bytes" in text
    assert f"a training step's buffers {step:,} bytes" in text
    assert "batch of" not in net.summary()


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("32", TypeError)])
def test_a_bad_batch_size_is_refused(bad, error):
    with pytest.raises(error, match="batch_size"):
        gn.MLP([4, 2]).summary(batch_size=bad)


def test_classes_feature_names_and_scaling_appear_when_the_model_has_them():
    plain = gn.MLP([4, 8, 3], seed=0).summary()
    assert "classes" not in plain and "feature names" not in plain and "input scaling" not in plain

    names = [f"f{j}" for j in range(7)]
    net = gn.MLP([7, 8, 3], classes=["setosa", "versicolor", "virginica"], feature_names=names, standardize=True,
                 seed=0)
    text = net.summary()
    assert "classes: 3 (setosa, versicolor, virginica)" in text
    assert "feature names: 7 (f0, f1, f2, f3, f4, ...)" in text
    assert "input scaling: learned by the first fit" in text

    X = np.random.default_rng(0).normal(5.0, 3.0, size=(30, 7))
    net.fit(X, np.array(["setosa", "versicolor", "virginica"])[np.arange(30) % 3], epochs=1, progress=False)
    assert "input scaling: each of the 7 features standardised" in net.summary()
