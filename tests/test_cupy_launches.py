"""What one training step costs the GPU's host side: kernel launches and allocations.

On a GPU every launch costs the host several microseconds, which is what bounds a small
network's step, and every allocation is a trip to CuPy's memory pool. A warmed-up bare step
of an L-layer MLP (softmax + cross-entropy, SGD: ``loss_and_grad_into`` and the update)
makes 5L + 1 launches: 3L - 1 GEMMs, bias + activation for the L - 1 hidden layers, one
fused softmax-cross-entropy (the logits' bias and the mean loss inside), the output layer's
bias gradient, L - 1 activation backwards each with its layer's bias gradient, and one
optimizer update (a column sum takes a second launch past 64K elements). A whole ``fit``
step adds the batch gather and the finish (non-finite flag, clipping factor, running loss
and accuracy): 5L + 3, within the 6L + 1 the GPU issue sets for L >= 2. It allocates one
0-d array: the loss it returns.

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


def _column_sum_launches(rows, width):
    return 1 if layout.column_sums_chunks(rows, width)[0] == 1 else 2


def _expected_launches(widths, rows):
    """(3L-1) GEMMs + (L-1) bias+act + 1 softmax-xent + the L column sums (the hidden
    layers' fused with their act backward) + 1 update: 5L + 1 when each sum is one launch."""
    layers = len(widths) - 1
    return (3 * layers - 1) + (layers - 1) + 1 + sum(_column_sum_launches(rows, n) for n in widths[1:]) + 1


@pytest.mark.parametrize("rows", [64, 1000])
@pytest.mark.parametrize("widths", ARCHS, ids=lambda w: "-".join(map(str, w)))
def test_a_bare_training_step_makes_5L_plus_1_launches(widths, rows):
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


def _fit_step_launches(emulator, widths, output, loss, optimizer, batch, y_of):
    """Launches of one ``fit`` step: two warmed epochs of 4 and of 2 steps, differenced, so
    what an epoch does once (the shuffle's copy, zeroing the sums, the one read) cancels."""
    rng = np.random.default_rng(2)
    counts = []
    for steps in (2, 4):
        X = rng.normal(size=(batch * steps, widths[0])).astype(np.float32)
        y = y_of(rng, batch * steps)
        net = gn.MLP(widths, output=output, loss=loss, dtype="float32", seed=0, backend="cupy")
        net.fit(X, y, epochs=1, batch_size=batch, optimizer=optimizer(), progress=False)
        before = emulator.launch_counts()
        net.fit(X, y, epochs=1, batch_size=batch, optimizer=optimizer(), progress=False)
        counts.append(emulator.launch_counts() - before)
    per_step = counts[1].copy()
    per_step.subtract(counts[0])
    assert all(v % 2 == 0 for v in per_step.values()), per_step
    return {k: v // 2 for k, v in per_step.items() if v}


FIT_CASES = {
    "softmax": ("softmax", "cross_entropy", lambda rng, n: rng.integers(0, 10, n)),
    "sigmoid": ("sigmoid", "binary_cross_entropy", lambda rng, n: (rng.random((n, 10)) < 0.3).astype(np.float32)),
    "identity": ("identity", "mse", lambda rng, n: rng.normal(size=(n, 10)).astype(np.float32)),
    "exp": ("exp", "poisson", lambda rng, n: rng.poisson(2.0, (n, 10)).astype(np.float32)),
}


@pytest.mark.parametrize("optimizer", [lambda: SGD(lr=1e-3, momentum=0.9), lambda: Adam(lr=1e-3)], ids=["sgd", "adam"])
@pytest.mark.parametrize("case", list(FIT_CASES))
@pytest.mark.parametrize("widths", [[784, 128, 10], [20, 64, 64, 10]], ids=lambda w: "-".join(map(str, w)))
def test_a_fit_step_makes_at_most_6L_plus_1_launches(widths, case, optimizer, monkeypatch):
    """The eager step (a small one is replayed as one CUDA graph by default:
    tests/test_cupy_graphs.py)."""
    emulator = sys.modules.get("emulator.plugin")
    if emulator is None:
        pytest.skip("launches are counted on the host kernel emulator")
    monkeypatch.setenv("GPUNET_CUDA_GRAPHS", "0")
    output, loss, y_of = FIT_CASES[case]
    with gn.use_backend("cupy"):
        made = _fit_step_launches(emulator, widths, output, loss, optimizer, 128, y_of)
    layers = len(widths) - 1
    assert sum(made.values()) <= 6 * layers + 1, made
    assert made["matmul"] == 3 * layers - 1, made
    assert made.get("gather_rows_u32") == 1 and made.get(f"finish_step_f32") == 1, made
    # every launch is one of gpunet's kernels or a GEMM: no CuPy element-wise op in a step
    assert all(name == "matmul" or name.endswith(("_f32", "_u32")) for name in made), made
    if widths == [784, 128, 10] and case == "softmax":
        update = "sgd_update_f32" if "sgd" in str(made) else "adam_update_f32"
        assert made == {"gather_rows_u32": 1, "matmul": 5, "bias_act_f32": 1, "softmax_xent_warp_f32": 1,
                        "column_sums_f32": 1, "act_backward_colsum_f32": 1, "finish_step_f32": 1,
                        update: 1}, made
