"""Shared pieces of the benchmark suite: problem sizes, FLOP and byte counts, the float64
references every result is checked against before it is timed, and the PyTorch peer.

Conventions (BENCHMARKING.md): ``flops`` counts the arithmetic a case must do (for an MLP
the GEMMs it actually performs: 2*N*n_in*n_out each), ``bytes`` the fewest bytes it must
move (each input read once, each output written once). ``bound`` says which ceiling the
case is compared with: "compute" (the measured matmul rate) or "memory" (the copy bandwidth).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

TIERS = ("small", "medium", "large")


@dataclasses.dataclass(frozen=True)
class Size:
    """An array problem size. ``tier`` is what ``--size`` filters on; ``gpu_only`` sizes
    would take too long (or too much memory) on a CPU."""

    tier: str
    shape: tuple
    gpu_only: bool = False

    @property
    def label(self) -> str:
        return "x".join(str(d) for d in self.shape)

    def __str__(self):
        return f"{self.tier}-{self.label}"


@dataclasses.dataclass(frozen=True)
class MLPSize:
    """An MLP (layer widths, input first) and the batch it trains on."""

    tier: str
    widths: tuple
    batch: int
    gpu_only: bool = False

    @property
    def label(self) -> str:
        return "-".join(str(w) for w in self.widths) + f" b{self.batch}"

    @property
    def pairs(self):
        return list(zip(self.widths[:-1], self.widths[1:]))

    @property
    def n_params(self) -> int:
        return sum(a * b + b for a, b in self.pairs)

    def __str__(self):
        return f"{self.tier}-" + "-".join(str(w) for w in self.widths) + f"-b{self.batch}"


MLP_SIZES = [
    MLPSize("small", (784, 128, 10), 128),
    MLPSize("medium", (784, 1024, 1024, 10), 1024),
    MLPSize("large", (4096, 4096, 4096, 4096, 10), 4096, gpu_only=True),
]


def params_of(sizes):
    """pytest params with readable ids (``small-128x10``)."""
    return [pytest.param(s, id=str(s)) for s in sizes]


def describe(benchmark, *, case, impl, backend, device, size, dtype, flops=0, bytes=0,
             bound="memory", work=None, **more):
    """Name the group (one per case) and fill ``extra_info``, from which ``gpunet bench``
    computes rates and fractions of the ceilings. impl: "fused", "unfused", "gpunet",
    "torch-eager", ...; backend: "numpy", "cupy" or "torch"; device: "cpu" or "gpu";
    ``work`` (default the FLOPs, else the bytes) is the x-axis of the report's plot."""
    benchmark.group = case
    benchmark.extra_info.update(
        case=case, impl=impl, backend=backend, device=device, size=size.tier,
        shape=size.label, dtype=np.dtype(dtype).name, flops=int(flops), bytes=int(bytes),
        bound=bound, work=int(work if work is not None else (flops or bytes)), **more)


# ---- work counts ------------------------------------------------------------------------
def mlp_forward_flops(widths, n) -> int:
    """2*N*n_in*n_out per layer: Z = A W (the bias and activation are O(N*n_out))."""
    return 2 * n * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def mlp_backward_flops(widths, n) -> int:
    """dW = A^T delta for every layer, delta W^T for every layer but the first (the input
    needs no gradient): 4*N*sum minus 2*N*n_0*n_1."""
    pairs = list(zip(widths[:-1], widths[1:]))
    return 2 * n * sum(a * b for a, b in pairs) + 2 * n * sum(a * b for a, b in pairs[1:])


def mlp_step_flops(widths, n) -> int:
    return mlp_forward_flops(widths, n) + mlp_backward_flops(widths, n)


# ---- checks -------------------------------------------------------------------------------
def tolerance(dtype) -> float:
    """Largest relative error (in the Frobenius norm) allowed against the float64 reference.
    A norm, not an element-wise bound: near a ReLU's kink float32 may flip a few units of
    the mask, which moves single gradient entries but not the gradient as a whole."""
    return 1e-2 if np.dtype(dtype) == np.float32 else 1e-9


def assert_close(got, ref, dtype, what):
    """``got`` (either backend, or torch) matches the float64 reference ``ref``, which is not
    all zeros: a case that computes on zeros measures nothing."""
    got = _host(got)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    scale = float(np.linalg.norm(ref))
    assert scale > 0, f"{what}: the reference is all zeros"
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    err = float(np.linalg.norm(got - ref)) / scale
    assert err <= tolerance(dtype), f"{what}: relative error {err:.2e} (tolerance {tolerance(dtype):g})"


def _host(x) -> np.ndarray:
    if hasattr(x, "detach"):          # torch
        x = x.detach().cpu().numpy()
    elif type(x).__module__.startswith("cupy"):
        x = x.get()
    return np.asarray(x, dtype=np.float64)


def host_float(x) -> float:
    return float(_host(x))


# ---- the reference MLP -----------------------------------------------------------------
def reference_mlp(params, x, labels):
    """ReLU hidden layers, softmax + cross-entropy at the output, in float64, written out
    without gpunet. params [W_1, b_1, ...] with W_l (n_{l-1}, n_l). Returns
    (loss, logits, grads) with grads in the order of params."""
    params = [np.asarray(p, dtype=np.float64) for p in params]
    n_layers = len(params) // 2
    acts = [np.asarray(x, dtype=np.float64)]
    for l in range(n_layers):
        z = acts[-1] @ params[2 * l] + params[2 * l + 1]
        acts.append(np.maximum(z, 0.0) if l < n_layers - 1 else z)
    logits = acts[-1]
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[rows, labels].mean()
    delta = np.exp(logp)
    delta[rows, labels] -= 1.0
    delta /= n
    grads = [None] * len(params)
    for l in range(n_layers - 1, -1, -1):
        grads[2 * l] = acts[l].T @ delta
        grads[2 * l + 1] = delta.sum(axis=0)
        if l:
            delta = (delta @ params[2 * l].T) * (acts[l] > 0)
    return loss, logits, grads


@functools.lru_cache(maxsize=4)
def mlp_problem(size: MLPSize, seed=0):
    """Host inputs for an MLP case, drawn once per session: the initial parameters (gpunet's
    Glorot init with this seed, float32), a random batch, labels, and the float64 reference
    loss/logits/gradients at those parameters (computed once; the large case costs seconds)."""
    import gpunet as gn

    with gn.use_backend("numpy"):
        net = gn.MLP(list(size.widths), activation="relu", output="softmax", loss="cross_entropy",
                     dtype="float32", seed=seed)
        params = [np.array(p) for p in net.params]
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((size.batch, size.widths[0])).astype(np.float32)
    labels = rng.integers(0, size.widths[-1], size.batch).astype(np.int64)
    loss, logits, grads = reference_mlp(params, x, labels)
    return params, x, labels, (loss, logits, grads)


# ---- the PyTorch peer ---------------------------------------------------------------------
def torch_or_none():
    try:
        import torch
    except Exception:  # ImportError, or a broken install
        return None
    return torch


def torch_device(backend_name):
    """The torch device that matches a gpunet backend, or None when torch cannot run there."""
    torch = torch_or_none()
    if torch is None:
        return None
    if backend_name == "numpy":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def torch_peer(backend_name):
    """(torch, device) for the PyTorch peer of a gpunet backend, or the reason it cannot run."""
    torch = torch_or_none()
    if torch is None:
        return "torch is not importable"
    device = torch_device(backend_name)
    if device is None:
        return "torch has no CUDA device here"
    return torch, device


def torch_mlp(params, device, lr, momentum):
    """nn.Sequential of Linear + ReLU with gpunet's parameters, and SGD with momentum
    (PyTorch's formula is gpunet's: v = m v + g; p -= lr v)."""
    import torch
    from torch import nn

    layers = []
    n_layers = len(params) // 2
    for l in range(n_layers):
        w, b = params[2 * l], params[2 * l + 1]
        lin = nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if l < n_layers - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return model, opt


def torch_params_like_gpunet(model):
    """The model's parameters as [W_1 (n_in, n_out), b_1, ...], gpunet's layout."""
    out = []
    for lin in (m for m in model if hasattr(m, "weight")):
        out += [lin.weight.T, lin.bias]
    return out


def torch_grads_like_gpunet(model):
    """The model's gradients in gpunet's layout."""
    out = []
    for lin in (m for m in model if hasattr(m, "weight")):
        out += [lin.weight.grad.T, lin.bias.grad]
    return out


def torch_sync(device):
    if device == "cuda":
        import torch
        return torch.cuda.synchronize
    return no_sync


def no_sync():
    """The ``sync`` of CPU work: nothing is queued."""


def device_sync(backend_name):
    """A function that waits for queued work of a gpunet backend (a no-op for NumPy)."""
    if backend_name == "cupy":
        import cupy
        device = getattr(cupy.cuda, "Device", None)   # absent in a CPU stand-in for cupy
        return device().synchronize if device else cupy.cuda.get_current_stream().synchronize
    return no_sync
