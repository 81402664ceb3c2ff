"""What one training step costs the GPU's host side: kernel launches and allocations.

On a GPU every launch costs the host several microseconds, which is what bounds a small
network's step, and every allocation is a trip to CuPy's memory pool. A warmed-up step of an
L-layer MLP (softmax + cross-entropy, SGD) makes 6L + 1 launches: 3L - 1 GEMMs, bias +
activation for the L - 1 hidden layers and the bias add of the logits, two for the fused
softmax-cross-entropy and its mean, L - 1 activation backwards, one column sum per bias
gradient (two when the batch is split into row chunks), and one optimizer update. It
allocates one 0-d array: the loss it returns.

Launches are counted on the host kernel emulator (``-p emulator.plugin``, see
tests/emulator), which sees every gpunet kernel and every CuPy operation; allocations are
heard through ``cupy.cuda.MemoryHook`` on a GPU and on the emulator alike.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import gpunet as gn
from gpunet.cuda import layout
from gpunet.optim import SGD, Adam

cupy = pytest.importorskip("cupy")  # skips the module where CuPy is absent (the CPU CI)

pytestmark = pytest.mark.gpu

ARCHS = [[784, 128, 10], [64, 100, 100, 10], [20, 300, 7, 40, 3]]


def _warm_step(widths, optimizer, rows):
    be = gn.get_backend()
    net = gn.MLP(widths, seed=0)
    rng = np.random.default_rng(1)
    x = be.asarray(rng.normal(size=(rows, widths[0])).astype(np.float32))
    y = be.asarray(rng.integers(0, widths[-1], size=rows))

    ws = net.workspace(rows)

    def step():
        loss = net.loss_and_grad_into(x, y, ws, include_decay=False)
        optimizer.step(be, net.flat_params, ws.flat_grads, weight_decay=0.0, n_decay=net.n_weights)
        return loss

    step()   # compiles, builds the optimizer state
    return step


def _expected_launches(widths, rows):
    """(3L-1) GEMMs + (L-1) bias+act + 1 logits bias + 2 softmax-xent + (L-1) act backward
    + 1 update, and the column sums: 6L + 1 when each takes one launch."""
    layers = len(widths) - 1
    column_sum_launches = sum(1 if layout.column_sums_chunks(rows, n)[0] == 1 else 2 for n in widths[1:])
    return 5 * layers + 1 + column_sum_launches


@pytest.mark.parametrize("rows", [64, 1000])
@pytest.mark.parametrize("widths", ARCHS, ids=lambda w: "-".join(map(str, w)))
def test_a_training_step_makes_6L_plus_1_launches(widths, rows):
    emulator = sys.modules.get("emulator.plugin")
    if emulator is None:
        pytest.skip("launches are counted on the host kernel emulator: "
                    "PYTHONPATH=tests python -m pytest -p emulator.plugin -m gpu tests")
    with gn.use_backend("cupy"):
        step = _warm_step(widths, SGD(lr=1e-3, momentum=0.9), rows)
        before = emulator.launch_counts()
        step()
        made = emulator.launch_counts() - before
    layers = len(widths) - 1
    assert made["matmul"] == 3 * layers - 1, made
    assert sum(made.values()) == _expected_launches(widths, rows), made


@pytest.mark.parametrize("optimizer", [lambda: SGD(lr=1e-3, momentum=0.9, nesterov=True), lambda: Adam(lr=1e-3)],
                         ids=["sgd", "adam"])
@pytest.mark.parametrize("widths", ARCHS, ids=lambda w: "-".join(map(str, w)))
def test_a_training_step_allocates_only_its_loss(widths, optimizer, allocation_log):
    with gn.use_backend("cupy"):
        step = _warm_step(widths, optimizer(), 256)
        with allocation_log() as log:
            loss = step()
    assert loss.shape == () and len(log.sizes) <= 1, log.sizes
