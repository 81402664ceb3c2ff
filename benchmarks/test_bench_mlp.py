"""Forward, backward and a whole training step of an MLP (ReLU hidden layers, softmax +
cross-entropy, SGD with momentum, float32) at three sizes, and the same training step in
PyTorch (eager, and torch.compile where it works) on the same device: the peer a user would
otherwise pick. Small 784-128-10 at batch 128, medium 784-1024-1024-10 at batch 1024,
large 4096-4096-4096-4096-10 at batch 4096 (GPU only).

gpunet is timed through the same training interface ``fit`` uses per step
(``loss_and_grad_into`` a workspace, and the optimizer's update), so host-side validation and
copies are not in the figure; the peer's step is ``zero_grad``, forward, loss, ``backward``,
``step``. Both start from the same parameters, and both are checked against a float64
reference before they are timed.

``mlp_predict`` times the public ``predict_proba`` (input checks, the parameter guard that
makes inference thread-safe, this thread's buffers, the host copy) in rounds alternating
with its floor, the bare forward pass and softmax into a workspace the caller holds: what
the thread-safety and the checks cost a single thread.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import gpunet as gn
from benchsupport import (MLP_SIZES, assert_close, describe, device_sync, host_float, mlp_backward_flops,
                          mlp_forward_flops, mlp_problem, mlp_step_flops, params_of, torch_grads_like_gpunet,
                          torch_mlp, torch_params_like_gpunet, torch_peer, torch_sync)

DTYPE = "float32"
LR, MOMENTUM = 1e-3, 0.9   # small enough that thousands of steps on one batch stay finite


def _net(backend, size):
    """A gpunet MLP with the reference's parameters, its batch on the device."""
    params, x_host, labels_host, ref = mlp_problem(size)
    net = gn.MLP(list(size.widths), activation="relu", output="softmax", loss="cross_entropy",
                 dtype=DTYPE, seed=0)
    for p, host in zip(net.params, params):
        p[...] = backend.asarray(host)
    return net, backend.asarray(x_host), backend.asarray(labels_host), ref


def _describe(benchmark, case, impl, backend_name, device, size, flops):
    describe(benchmark, case=case, impl=impl, backend=backend_name, device=device, size=size,
             dtype=DTYPE, flops=flops, bound="compute", n_params=size.n_params, batch=size.batch)


def _device(backend):
    return "gpu" if backend.name == "cupy" else "cpu"


@pytest.mark.parametrize("size", params_of(MLP_SIZES))
def test_forward(benchmark, measure, backend, size):
    net, x, labels, (_, ref_logits, _) = _net(backend, size)
    ws = net.workspace(x.shape[0])

    def forward():
        return net.forward_into(x, ws)   # logits, as in training

    assert_close(forward(), ref_logits, DTYPE, "forward logits")
    _describe(benchmark, "mlp_forward", "gpunet", backend.name, _device(backend), size,
              mlp_forward_flops(size.widths, size.batch))
    measure(forward, sync=device_sync(backend.name))


@pytest.mark.parametrize("size", params_of(MLP_SIZES))
def test_backward(benchmark, measure, backend, size):
    net, x, labels, (_, _, ref_grads) = _net(backend, size)
    ws = net.workspace(x.shape[0])
    out = net.forward_into(x, ws)
    net.loss_fn.loss_and_delta(backend, out, labels, net.output_activation, ws.deltas[-1])

    def backward():
        # reads the saved activations and delta_L, writes the gradients: repeatable as is
        return net.backward_into(x, ws)

    backward()
    for got, ref in zip(ws.weight_grads + ws.bias_grads, ref_grads[0::2] + ref_grads[1::2]):
        assert_close(got, ref, DTYPE, "backward gradient")
    _describe(benchmark, "mlp_backward", "gpunet", backend.name, _device(backend), size,
              mlp_backward_flops(size.widths, size.batch))
    measure(backward, sync=device_sync(backend.name))


@pytest.mark.parametrize("size", params_of(MLP_SIZES))
def test_predict(benchmark, measure, backend, size):
    net, x, _, (_, ref_logits, _) = _net(backend, size)
    x_host = gn.to_numpy(x)
    ws = net.workspace(x.shape[0], gradients=False)

    def bare():
        return backend.to_numpy(backend.softmax(net.forward_into(backend.asarray(x_host), ws)))

    def public():
        return net.predict_proba(x_host)

    shifted = ref_logits - ref_logits.max(axis=1, keepdims=True)
    ref_probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    assert_close(public(), ref_probs, DTYPE, "predict_proba")
    assert_close(bare(), ref_probs, DTYPE, "bare forward and softmax")
    _describe(benchmark, "mlp_predict", "gpunet", backend.name, _device(backend), size,
              mlp_forward_flops(size.widths, size.batch))
    measure(public, sync=device_sync(backend.name), partners=[("bare", bare, device_sync(backend.name))])


def _check_first_step(loss, grads, params_after, size):
    """A first SGD step from the shared start: loss and gradient as the reference, and the
    update p - lr * g (the velocity starts at zero, so v = g)."""
    params0, _, _, (ref_loss, _, ref_grads) = mlp_problem(size)
    assert abs(host_float(loss) - ref_loss) <= 1e-4 * max(1.0, ref_loss), (host_float(loss), ref_loss)
    for got, ref in zip(grads, ref_grads):
        assert_close(got, ref, DTYPE, "train step gradient")
    for got, p0, g in zip(params_after, params0, ref_grads):
        # compare the change, not the parameters, so the check sees the small update
        assert_close(_host(got) - p0, -LR * g, DTYPE, "train step update")


def _host(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy().astype(np.float64)
    return gn.to_numpy(x).astype(np.float64)


TORCH_IMPLS = ["torch-eager", "torch-compile"]


@pytest.mark.parametrize("impl", ["gpunet", *TORCH_IMPLS])
@pytest.mark.parametrize("size", params_of(MLP_SIZES))
def test_train_step(benchmark, measure, request, backend, size, impl):
    device = _device(backend)
    if impl == "gpunet":
        step, sync = _gpunet_step(backend, size)
        # the peers that work here alternate with gpunet round by round: the ratio to the
        # peer then comes from the same moments of a noisy machine
        partners = []
        for peer in TORCH_IMPLS:
            built = _torch_step(backend.name, size, peer == "torch-compile", _smoke(request))
            if not isinstance(built, str):
                partners.append((peer, *built))
        name = backend.name
    else:
        built = _torch_step(backend.name, size, impl == "torch-compile", _smoke(request))
        if isinstance(built, str):
            pytest.skip(built)
        (step, sync), partners, name = built, (), "torch"
    _describe(benchmark, "mlp_train_step", impl, name, device, size, mlp_step_flops(size.widths, size.batch))
    measure(step, sync=sync, partners=partners)


@pytest.mark.parametrize("size", params_of(MLP_SIZES))
def test_train_step_outside_gemms(benchmark, measure, backend, size):
    """The step alternating with its own GEMMs replayed alone (nothing else in between, so
    both find the caches the other left): the share of the step spent outside its GEMMs."""
    step, sync = _gpunet_step(backend, size)
    _describe(benchmark, "mlp_step_gemms", "gpunet", backend.name, _device(backend), size,
              mlp_step_flops(size.widths, size.batch))
    measure(step, sync=sync, partners=[("gemms", _gemms_of(backend, step), sync)])


def _smoke(request):
    return bool(request.config.getoption("benchmark_disable"))


def _gpunet_step(backend, size):
    net, x, labels, _ = _net(backend, size)
    opt = gn.SGD(lr=LR, momentum=MOMENTUM)
    ws = net.workspace(x.shape[0])

    def step():
        loss = net.loss_and_grad_into(x, labels, ws, include_decay=False)
        opt.step(backend, net.flat_params, ws.flat_grads, weight_decay=0.0, n_decay=net.n_weights)
        return loss

    loss = step()
    grads = net.layout.interleaved(ws.flat_grads)
    _check_first_step(loss, grads, net.params, size)
    return step, device_sync(backend.name)


def _gemms_of(backend, step):
    """A function replaying the GEMMs one call of ``step`` makes (the same operands and
    output buffers, in the same order) and nothing else. The step is called once to record
    them: the parameters move by one more SGD step, which no timed figure depends on."""
    calls = []
    matmul = backend.matmul

    def recording(a, b, out=None):
        calls.append((a, b, out))
        return matmul(a, b, out=out)

    backend.matmul = recording          # an instance attribute, shadowing the method
    try:
        step()
    finally:
        del backend.matmul
    assert calls and all(out is not None for _, _, out in calls), "the step's GEMMs write into workspaces"

    def gemms():
        for a, b, out in calls:
            matmul(a, b, out=out)
    return gemms


@functools.lru_cache(maxsize=None)
def _torch_step(backend_name, size, compiled, smoke):
    """(step, sync) of the PyTorch peer, built, checked and warmed once per session (it is
    timed on its own and as gpunet's partner), or the reason it cannot run here."""
    peer = torch_peer(backend_name)
    if isinstance(peer, str):
        return peer
    torch, device = peer
    if compiled and smoke:
        return "torch.compile takes tens of seconds to warm up: not in a smoke run"
    params, x_host, labels_host, _ = mlp_problem(size)
    model, opt = torch_mlp(params, device, LR, MOMENTUM)
    x = torch.from_numpy(x_host).to(device)
    y = torch.from_numpy(labels_host).to(device)
    loss_fn = torch.nn.functional.cross_entropy

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        try:
            step = torch.compile(step)
            loss = step()   # compiles: the warm-up, outside the timed part
        except Exception as exc:  # no C++ compiler, an unsupported platform...
            return f"torch.compile does not work here: {type(exc).__name__}: {str(exc)[:200]}"
    else:
        loss = step()
    _check_first_step(loss, torch_grads_like_gpunet(model), torch_params_like_gpunet(model), size)
    if compiled:
        step()   # a second call can still recompile (e.g. once the optimizer state exists)
    return step, torch_sync(device)
