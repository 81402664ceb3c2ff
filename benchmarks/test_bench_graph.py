"""``fit``'s steps over an epoch, as fit runs them: the small 784-128-10 network at batch 128,
64 steps (8192 random examples), SGD with momentum, float32. On CuPy gpunet replays each
step as one CUDA graph (gpunet.step_graph), and its eager steps (a dozen launches each)
alternate with it round by round: *graph/eager* is what the graph saves. The PyTorch peer
runs the same 64 steps over batches already on the device, eagerly and, on a GPU, as
``torch.compile(mode="reduce-overhead")``, its own CUDA-graph mode; on the CPU the compiled
peer is the default mode. On NumPy gpunet's figure is the eager epoch (a CPU has no graph).

Each implementation is checked before it is timed: one epoch from the same start ends with
finite parameters and a loss below the start's.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import gpunet as gn
from benchsupport import MLPSize, describe, device_sync, mlp_problem, mlp_step_flops, torch_mlp, torch_peer, torch_sync
from gpunet.step_graph import StepGraph
from gpunet.train import TrainingStep, prepare, run_epoch

SIZE = MLPSize("small", (784, 128, 10), 128)
LR, MOMENTUM = 0.01, 0.9
STEPS, SMOKE_STEPS = 64, 4       # the smoke run (the kernel emulator in CI) keeps it short


def _smoke(request):
    return bool(request.config.getoption("benchmark_disable"))


@functools.lru_cache(maxsize=2)
def _data(steps):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((steps * SIZE.batch, SIZE.widths[0])).astype(np.float32)
    y = rng.integers(0, SIZE.widths[-1], steps * SIZE.batch)
    return X, y


def _gpunet_epoch(backend, steps, graphed):
    """(epoch, sync): one epoch of fit's steps, replayed as graphs or run eagerly."""
    X, y = _data(steps)
    params = mlp_problem(SIZE)[0]
    net = gn.MLP(list(SIZE.widths), activation="relu", output="softmax", loss="cross_entropy", dtype="float32",
                 seed=0, backend=backend.name)
    for p, host in zip(net.params, params):
        p[...] = backend.asarray(host)
    plan = prepare(net, X, y, epochs=1, batch_size=SIZE.batch, lr=LR, momentum=MOMENTUM, nesterov=False,
                   clip_norm=None, validation_data=None, shuffle=True, progress=False, optimizer=None,
                   schedule=None, early_stopping=None, sample_weight=None)
    step = TrainingStep(net, plan.optimizer, plan.clip_norm)
    graph = StepGraph(step, plan) if graphed else None
    start_loss = net.evaluate_loss(plan.x, plan.targets)

    def epoch():
        run_epoch(net, plan, step, 0, graph)     # a graphed epoch takes gpunet's GEMM kernel itself
        return step

    epoch()
    loss_sum, _ = step.end_epoch()            # checked: trains, stays finite
    assert np.isfinite(loss_sum) and loss_sum / plan.n < float(start_loss), (loss_sum / plan.n, start_loss)
    return epoch, device_sync(backend.name)


@functools.lru_cache(maxsize=None)
def _torch_epoch(backend_name, steps, mode):
    """(epoch, sync) of the PyTorch peer: ``mode`` None (eager) or a torch.compile mode."""
    peer = torch_peer(backend_name)
    if isinstance(peer, str):
        return peer
    torch, device = peer
    if mode == "reduce-overhead" and device != "cuda":
        return "torch.compile(mode='reduce-overhead') is CUDA graphs: GPU only"
    X, y = _data(steps)
    model, opt = torch_mlp(mlp_problem(SIZE)[0], device, LR, MOMENTUM)
    xs = torch.from_numpy(X).to(device).split(SIZE.batch)
    ys = torch.from_numpy(y).to(device).split(SIZE.batch)

    def step(x, t):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        return loss

    if mode is not None:
        try:
            step = torch.compile(step, mode=mode)
            step(xs[0], ys[0])   # compiles (and records its graphs): outside the timed part
        except Exception as exc:  # no C++ compiler, an unsupported platform...
            return f"torch.compile does not work here: {type(exc).__name__}: {str(exc)[:200]}"

    def epoch():
        for x, t in zip(xs, ys):
            step(x, t)

    epoch()
    return epoch, torch_sync(device)


PEERS = {"torch-eager": None, "torch-compile": "reduce-overhead"}


@pytest.mark.parametrize("impl", ["gpunet", *PEERS])
def test_fit_epoch(benchmark, measure, request, backend, impl):
    steps = SMOKE_STEPS if _smoke(request) else STEPS
    graphed = backend.name == "cupy"
    device = "gpu" if graphed else "cpu"
    partners = []
    if impl == "gpunet":
        epoch, sync = _gpunet_epoch(backend, steps, graphed)
        if graphed:
            partners.append(("eager", *_gpunet_epoch(backend, steps, False)))
        for peer, mode in PEERS.items():
            built = _torch_epoch(backend.name, steps, mode if graphed else (None if peer == "torch-eager" else "default"))
            if not isinstance(built, str) and not (peer == "torch-compile" and _smoke(request)):
                partners.append((peer, *built))
        name = backend.name
    else:
        if impl == "torch-compile" and _smoke(request):
            pytest.skip("torch.compile takes tens of seconds to warm up: not in a smoke run")
        built = _torch_epoch(backend.name, steps, PEERS[impl] if graphed else (None if impl == "torch-eager" else
                                                                               "default"))
        if isinstance(built, str):
            pytest.skip(built)
        (epoch, sync), name = built, "torch"
    describe(benchmark, case="fit_epoch", impl=impl, backend=name, device=device, size=SIZE, dtype="float32",
             flops=mlp_step_flops(SIZE.widths, SIZE.batch) * steps, bound="compute", steps=steps,
             graphs=bool(graphed and impl == "gpunet"))
    measure(epoch, sync=sync, partners=partners)
