"""Array backends and the switch between them.

``NumpyBackend`` is the reference implementation of every op the model uses, the fusable
ones included, each written as the plain math over ``self.xp``. ``CupyBackend``
(``gpunet.cupy_backend``) subclasses it with ``xp = cupy`` and overrides only the fusable
ops with CUDA kernels, so any op it does not override runs this same code on the GPU.

Shapes: N examples (rows), n units (columns). Every op that takes ``out`` writes there
and returns it; ``out`` may alias an input where the docstring says so.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os

import numpy as np

__all__ = ["NumpyBackend", "set_backend", "get_backend", "use_backend", "to_numpy",
           "BACKEND_NAMES", "gpu_status"]

log = logging.getLogger("gpunet")

BACKEND_NAMES = ("auto", "numpy", "cupy")


def shift_by_row_max(z):
    """``z - max(z, axis=1)`` for z (N, n): every entry <= 0, so its exp cannot overflow.

    A row spanning more than the dtype's range (1e308 and -1e308 in float64) shifts its low
    entries past the range, to -inf, whose exp is the 0 it should be: that overflow is
    intended and does not warn.
    """
    with np.errstate(over="ignore"):
        return z - z.max(axis=1, keepdims=True)


def _scaled_rows(row_values, row_scale):
    """Per-example values (N,) times ``row_scale`` (N,), or as they are when it is None."""
    return row_values if row_scale is None else row_values * row_scale


def _scale_rows(rows, row_scale):
    """Multiply each row of ``rows`` (N, K) in place by ``row_scale`` (N,) unless it is None."""
    if row_scale is not None:
        rows *= row_scale[:, None]


class NumpyBackend:
    """Reference ops on NumPy arrays (also the CPU production path)."""

    name = "numpy"
    xp = np

    # ---- arrays -------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """Array of this backend (copied to the device when needed)."""
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        """Wait for queued device work (a no-op on the CPU)."""

    def all_finite(self, x) -> bool:
        """True when no element is NaN or +-Inf (a host-device sync on the GPU)."""
        return bool(self.xp.isfinite(x).all())

    def take_rows(self, x, idx, out=None):
        """``x[idx]`` for a 1-D integer ``idx``, written into ``out`` (len(idx), ...)."""
        return self.xp.take(x, idx, axis=0, out=out)

    # ---- dense layer --------------------------------------------------------------
    def matmul(self, a, b, out=None):
        """``a @ b``: (N, k) x (k, n) -> (N, n)."""
        return self.xp.matmul(a, b, out=out)

    def bias_act(self, z, b, act):
        """Fusable: ``z <- f(z + b)`` in place. z (N, n) = A W from the GEMM, b (n,)."""
        z += b
        return act.forward(self.xp, z, out=z)

    def act_backward(self, grad, a, act):
        """Fusable: ``grad <- grad * f'(z)`` in place, with ``f'`` read from the output a (N, n)."""
        return act.backward(self.xp, grad, a, out=grad)

    def bias_grad(self, delta, out=None):
        """Fusable: column sums of delta (N, n) -> (n,), the bias gradient."""
        return delta.sum(axis=0, out=out)

    # ---- losses at the output -----------------------------------------------------
    def softmax(self, z, out=None):
        """Row-wise stable softmax of logits z (N, n)."""
        from .activations import Softmax
        return Softmax().forward(self.xp, z, out=out)

    # ``row_scale`` (N,), where the losses take one: each example's loss and gradient row
    # times r_n, the mean still over N. Sample weights w become r = w * N / sum(w): the
    # weighted mean sum(w l) / sum(w). None is r = 1, bit for bit.
    def softmax_xent(self, logits, labels, grad_out, row_scale=None):
        """Fusable: softmax + cross-entropy + gradient from integer labels.

        logits (N, C), labels (N,) ints in [0, C). Writes ``(softmax(z) - e(y)) / N`` into
        ``grad_out`` (N, C) (may alias ``logits``) and returns the mean loss
        ``-(1/N) sum_n log softmax(z_n)[y_n]`` as a 0-d array (no host sync).
        No one-hot array is built: e(y) is subtracted at one index per row.
        """
        xp = self.xp
        n = logits.shape[0]
        rows = xp.arange(n)
        shifted = shift_by_row_max(logits)
        sumexp = xp.exp(shifted).sum(axis=1, keepdims=True)
        logsumexp = xp.log(sumexp)
        # -log softmax(z)[y] = log sum exp(z - max) - (z_y - max)
        row_loss = logsumexp[:, 0] - shifted[rows, labels]
        loss = _scaled_rows(row_loss, row_scale).sum() / n
        probs = xp.exp(shifted - logsumexp, out=grad_out)
        probs[rows, labels] -= 1.0
        probs /= n
        _scale_rows(probs, row_scale)
        return loss

    def softmax_xent_onehot(self, logits, targets, grad_out, row_scale=None):
        """As ``softmax_xent`` with one-hot (or soft) targets (N, C) whose rows sum to 1."""
        xp = self.xp
        n = logits.shape[0]
        shifted = shift_by_row_max(logits)
        logsumexp = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        logp = shifted - logsumexp
        with np.errstate(invalid="ignore"):     # 0 * log 0 (= 0 * -inf) counts as 0
            terms = targets * logp
        row_loss = -xp.where(targets == 0, 0, terms).sum(axis=1)
        loss = _scaled_rows(row_loss, row_scale).sum() / n
        grad = xp.exp(logp, out=grad_out)
        grad -= targets
        grad /= n
        _scale_rows(grad, row_scale)
        return loss

    def mse_grad(self, a, targets, act, grad_out, row_scale=None):
        """Fusable: MSE loss and its gradient at the pre-activation of the output layer.

        a (N, K) output after activation ``act``, targets (N, K). Returns the 0-d loss
        ``1/(2N) sum (a - y)^2`` and writes ``((a - y) / N) * f'(z)`` into grad_out
        (which may alias ``a``).
        """
        n = a.shape[0]
        diff = a - targets
        squares = diff * diff
        _scale_rows(squares, row_scale)     # summed as one array: unit weights change no bit
        loss = squares.sum() / (2 * n)
        diff /= n
        _scale_rows(diff, row_scale)
        act.backward(self.xp, diff, a, out=grad_out)
        return loss

    # ---- optimizer ----------------------------------------------------------------
    def sumsq(self, x):
        """``sum(x**2)`` as a 0-d array (for the global gradient norm)."""
        return self.xp.vdot(x, x).real if x.ndim == 1 else (x * x).sum()

    @staticmethod
    def _decayed_gradient(params, grads, scale, weight_decay, n_decay):
        """``scale * grads`` plus the coupled L2 term ``weight_decay * params`` on the first
        ``n_decay`` entries (the weights): the gradient every optimizer step starts from."""
        g = grads * scale
        if weight_decay:
            g[:n_decay] += float(weight_decay) * params[:n_decay]
        return g

    def sgd_update(self, params, grads, velocity, *, lr, momentum, nesterov,
                   weight_decay, n_decay, scale, skip):
        """Fusable: one SGD step over the whole flat parameter buffer, in place.

        params, grads, velocity: 1-D, same length P. The first ``n_decay`` entries are the
        weights (decayed), the rest biases. ``scale`` is the clipping factor (a 0-d array or
        float) and ``skip`` a 0-d bool array or bool: when true nothing changes.

            g = scale * grads + weight_decay * params   (decay on the weights only)
            v = momentum * v + g
            params -= lr * (g + momentum * v if nesterov else v)

        With ``momentum == 0`` this is plain SGD and ``velocity`` may be None.
        """
        if bool(skip):
            return params
        xp = self.xp
        g = self._decayed_gradient(params, grads, scale, weight_decay, n_decay)
        if momentum:
            velocity *= momentum
            velocity += g
            step = g + momentum * velocity if nesterov else velocity
        else:
            step = g
        params -= xp.asarray(lr, dtype=params.dtype) * step
        return params

    def adam_update(self, params, grads, exp_avg, exp_avg_sq, *, lr, beta1, beta2, eps, step,
                    weight_decay, decoupled_weight_decay, n_decay, scale, skip):
        """Fusable: one Adam (or AdamW) step over the whole flat parameter buffer, in place.

        params, grads, exp_avg (m), exp_avg_sq (v): 1-D, same length P; the first ``n_decay``
        entries are the weights. ``step`` is the 1-based step count t of this update (bias
        correction); ``scale`` and ``skip`` as in ``sgd_update``. PyTorch's ``torch.optim.Adam``
        (``weight_decay`` coupled, an L2 term in the gradient) and ``AdamW``
        (``decoupled_weight_decay``, a shrink of the weights before the step):

            g = scale * grads + weight_decay * params            (weights only)
            params *= 1 - lr * decoupled_weight_decay            (weights only)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g^2
            params -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
        """
        if bool(skip):
            return params
        xp = self.xp
        lr, beta1, beta2, eps = float(lr), float(beta1), float(beta2), float(eps)
        g = self._decayed_gradient(params, grads, scale, weight_decay, n_decay)
        if decoupled_weight_decay:
            params[:n_decay] *= 1.0 - lr * float(decoupled_weight_decay)
        exp_avg *= beta1
        exp_avg += (1.0 - beta1) * g
        exp_avg_sq *= beta2
        exp_avg_sq += (1.0 - beta2) * (g * g)
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2 = 1.0 - beta2 ** step
        denom = xp.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + eps
        params -= (lr / bias_correction1) * exp_avg / denom
        return params

    def rmsprop_update(self, params, grads, square_avg, grad_avg, momentum_buf, *, lr, alpha, eps,
                       momentum, centered, weight_decay, n_decay, scale, skip):
        """Fusable: one RMSprop step over the whole flat parameter buffer, in place.

        params, grads, square_avg: 1-D, same length P; ``grad_avg`` (only when ``centered``)
        and ``momentum_buf`` (only when ``momentum > 0``) likewise, else None. ``scale`` and
        ``skip`` as in ``sgd_update``. PyTorch's ``torch.optim.RMSprop``:

            g = scale * grads + weight_decay * params            (weights only)
            s = alpha * s + (1 - alpha) * g^2
            centered: a = alpha * a + (1 - alpha) * g,  d = sqrt(max(s - a^2, 0)) + eps
            else:     d = sqrt(s) + eps
            momentum: b = momentum * b + g / d,  params -= lr * b
            else:     params -= lr * g / d

        (The ``max(., 0)`` only guards against rounding: s >= a^2 holds exactly.)
        """
        if bool(skip):
            return params
        xp = self.xp
        lr, alpha, eps, momentum = float(lr), float(alpha), float(eps), float(momentum)
        g = self._decayed_gradient(params, grads, scale, weight_decay, n_decay)
        square_avg *= alpha
        square_avg += (1.0 - alpha) * (g * g)
        if centered:
            grad_avg *= alpha
            grad_avg += (1.0 - alpha) * g
            denom = xp.sqrt(xp.maximum(square_avg - grad_avg * grad_avg, 0.0)) + eps
        else:
            denom = xp.sqrt(square_avg) + eps
        if momentum:
            momentum_buf *= momentum
            momentum_buf += g / denom
            params -= lr * momentum_buf
        else:
            params -= lr * (g / denom)
        return params


# ---------------------------------------------------------------------------------
# selection
_active: NumpyBackend | None = None


def gpu_status() -> tuple[bool, str]:
    """(usable, reason): whether CuPy imports and a CUDA device runs a kernel."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            return False, "CuPy found no CUDA device"
        (cupy.arange(3) + 1).sum().item()  # a real launch catches driver mismatches
    except Exception as exc:
        return False, f"CUDA is not usable ({type(exc).__name__}: {exc})"
    return True, f"{count} CUDA device(s)"


def _make(name: str) -> NumpyBackend:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    if key == "numpy":
        return NumpyBackend()
    ok, why = gpu_status()
    if key == "cupy":
        if not ok:
            raise RuntimeError(f"backend 'cupy' was asked for but no GPU is usable: {why}")
        from .cupy_backend import CupyBackend
        return CupyBackend()
    # auto: quietly fall back, with a log record rather than a warning
    if ok:
        from .cupy_backend import CupyBackend
        return CupyBackend()
    log.info("gpunet: using the NumPy backend (%s)", why)
    return NumpyBackend()


def set_backend(name: str = "auto") -> NumpyBackend:
    """Select the array backend for models created and used from now on; returns it.

    ``"auto"``: CuPy when a GPU works, else NumPy. ``"numpy"``. ``"cupy"``: raises
    RuntimeError (with the reason) when no GPU is usable.
    """
    global _active
    _active = _make(name)
    return _active


def get_backend() -> NumpyBackend:
    """The active backend (chosen from ``GPUNET_BACKEND``, default "auto", on first use)."""
    global _active
    if _active is None:
        # an empty variable means unset; a bad one is reported under its own name, since the
        # call that trips over it may be far from where it was set
        name = os.environ.get("GPUNET_BACKEND", "").strip() or "auto"
        try:
            _active = _make(name)
        except (ValueError, RuntimeError) as exc:
            raise type(exc)(f"GPUNET_BACKEND={name!r}: {exc}") from None
    return _active


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("numpy"): ...`` selects a backend for the block, then restores."""
    global _active
    previous = _active
    backend = _make(name)
    _active = backend
    try:
        yield backend
    finally:
        _active = previous


def to_numpy(x) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy array (or anything ``np.asarray`` takes)."""
    get = getattr(x, "get", None)
    if get is not None and type(x).__module__.startswith("cupy"):
        return get()
    return np.asarray(x)
