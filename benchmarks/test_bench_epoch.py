"""One epoch of ``MLP.fit`` on a real dataset: scikit-learn's digits (1437 training images of
8x8, 10 classes), a 64-256-10 ReLU network, minibatches of 32, SGD with momentum. This is
what a user times: shuffling, batching, the per-step bookkeeping of ``fit`` and every launch
of a small batch, not only the arithmetic. The PyTorch peer runs the same loop by hand.

Without scikit-learn (a bare GPU machine) the epoch runs on random data of the same shape,
which costs the same; ``extra_info["dataset"]`` says which one was used.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import gpunet as gn
from benchsupport import MLPSize, describe, device_sync, mlp_step_flops, torch_mlp, torch_peer, torch_sync

WIDTHS = (64, 256, 10)
BATCH, LR, MOMENTUM = 32, 0.02, 0.9
EPOCH = MLPSize("small", WIDTHS, BATCH)


@functools.lru_cache(maxsize=1)
def _dataset():
    try:
        from gpunet.data import load_digits
        data = load_digits()
        return data.X_train, data.y_train, "digits"
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.standard_normal((1437, 64)), rng.integers(0, 10, 1437), "random, digits-shaped"


@pytest.mark.parametrize("impl", ["gpunet", "torch-eager"])
@pytest.mark.parametrize("size", [pytest.param(EPOCH, id=str(EPOCH))])
def test_epoch(benchmark, measure, backend, size, impl):
    X, y, name = _dataset()
    partners = []
    if impl == "gpunet":
        epoch, sync = _gpunet_epoch(backend, X, y)
        _check_epoch(epoch(), name)   # warm-up: workspaces, kernels, the first shuffle
        backend_name = backend.name
        peer = _torch_epoch(backend.name, name)
        if not isinstance(peer, str):   # the peer alternates with gpunet round by round
            partners.append(("torch-eager", *peer))
    else:
        peer = _torch_epoch(backend.name, name)
        if isinstance(peer, str):
            pytest.skip(peer)
        (epoch, sync), backend_name = peer, "torch"
    describe(benchmark, case="epoch_digits", impl=impl, backend=backend_name,
             device="gpu" if backend.name == "cupy" else "cpu", size=size, dtype="float32",
             flops=mlp_step_flops(WIDTHS, len(X)), bound="compute", dataset=name, examples=len(X))
    measure(epoch, sync=sync, partners=partners)


def _check_epoch(loss, dataset):
    assert np.isfinite(loss), loss
    if dataset == "digits":   # a training epoch must train: well below chance (log 10 = 2.3)
        assert loss < 1.5, loss


def _gpunet_epoch(backend, X, y):
    net = gn.MLP(list(WIDTHS), activation="relu", output="softmax", loss="cross_entropy",
                 dtype="float32", seed=0)
    opt = gn.SGD(lr=LR, momentum=MOMENTUM)

    def epoch():
        history = net.fit(X, y, epochs=1, batch_size=BATCH, optimizer=opt, progress=False)
        return history["loss"][-1]

    return epoch, device_sync(backend.name)


@functools.lru_cache(maxsize=None)
def _torch_epoch(backend_name, dataset):
    """(epoch, sync) of the PyTorch peer, built and warmed once per session, or the reason
    it cannot run here."""
    peer = torch_peer(backend_name)
    if isinstance(peer, str):
        return peer
    torch, device = peer
    X, y, _ = _dataset()
    with gn.use_backend("numpy"):
        params = [np.array(p) for p in gn.MLP(list(WIDTHS), dtype="float32", seed=0).params]
    model, opt = torch_mlp(params, device, LR, MOMENTUM)
    # as fit does: the whole set on the device once per epoch, a fresh shuffle per epoch
    x_host, y_host = np.asarray(X), np.asarray(y)
    rng = np.random.default_rng(0)
    loss_fn = torch.nn.functional.cross_entropy

    def epoch():
        x_all = torch.from_numpy(x_host).to(device=device, dtype=torch.float32)
        y_all = torch.from_numpy(y_host).to(device)
        order = torch.from_numpy(rng.permutation(len(x_host))).to(device)
        total = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)   # fit tracks accuracy too
        for start in range(0, len(x_host), BATCH):
            idx = order[start:start + BATCH]
            xb, yb = x_all[idx], y_all[idx]
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            correct += (out.detach().argmax(dim=1) == yb).sum()
        return float(total) / len(x_host)

    _check_epoch(epoch(), dataset)
    return epoch, torch_sync(device)
