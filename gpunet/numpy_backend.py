"""The reference backend: every op the model uses, on NumPy arrays.

``NumpyBackend`` is the reference implementation of every op, the fusable ones included,
each written as the plain math over ``self.xp``. ``CupyBackend`` (``gpunet.cupy_backend``)
subclasses it with ``xp = cupy`` and overrides only the fusable ops with CUDA kernels, so
any op it does not override runs this same code on the GPU.

Shapes: N examples (rows), n units (columns). Every op that takes ``out`` writes there
and returns it; ``out`` may alias an input where the docstring says so. Activations and
optimizer hyper-parameters arrive as objects (``gpunet.activations``, ``gpunet.optim``)
whose attributes the ops read; this module imports neither.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from .softmax import shift_by_row_max, softmax_rows

__all__ = ["NumpyBackend", "HostBatchBuffers"]


def _scaled_rows(row_values, row_scale):
    """Per-example values (N,) times ``row_scale`` (N,), or as they are when it is None."""
    return row_values if row_scale is None else row_values * row_scale


def _scale_rows(rows, row_scale):
    """Multiply each row of ``rows`` (N, K) in place by ``row_scale`` (N,) unless it is None."""
    if row_scale is not None:
        rows *= row_scale[:, None]


class HostBatchBuffers:
    """Batches made on the host, handed to the ops as they are (the CPU's memory is the
    device's). The protocol the fit loop follows for every batch: ``host_buffers(specs)``
    gives arrays to fill (``specs``: (shape, dtype) pairs, one buffer set per distinct
    specs, reused), ``upload()`` makes them the backend's arrays for the step, ``release()``
    says the step using them has been queued. ``CupyBackend``'s uploader follows the same
    protocol with pinned buffers, a copy stream and events."""

    def __init__(self):
        self._buffers = {}
        self._current = None

    def host_buffers(self, specs):
        specs = tuple((tuple(shape), np.dtype(dtype)) for shape, dtype in specs)
        buffers = self._buffers.get(specs)
        if buffers is None:
            buffers = self._buffers[specs] = [np.empty(shape, dtype) for shape, dtype in specs]
        self._current = buffers
        return buffers

    def upload(self):
        return self._current

    def release(self):
        self._current = None


class NumpyBackend:
    """Reference ops on NumPy arrays (also the CPU production path)."""

    name = "numpy"
    xp = np
    # Capabilities the layers above ask about instead of comparing names:
    # reading a value back costs nothing here (no device to wait for), so the fit loop may
    # check every step; on a GPU it waits for the queued work, so the loop reads once an epoch.
    host_reads_are_free = True

    # ---- arrays -------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """C-contiguous array of this backend (copied to the device when needed): a
        Fortran-ordered, strided, big-endian or other-dtype input is converted once, here,
        so the kernels and the batch gather that follow read rows at full speed."""
        return self.xp.asarray(x, dtype=dtype, order="C")

    def to_numpy(self, x):
        return np.asarray(x)

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        """Wait for queued device work (a no-op on the CPU)."""

    def copy_to_device(self, dst, host):
        """``dst[...] = host``: a host array into an existing backend array (a copy to the
        device on a GPU, no new allocation)."""
        dst[...] = host
        return dst

    # ---- batches that come from the host (memory maps, streams) ---------------------------
    def fits_on_device(self, nbytes: int) -> bool:
        """Whether ``nbytes`` of training data may be moved to the device once (the CPU's
        arrays are already where they are used)."""
        return True

    def batch_uploader(self):
        """What moves batches made on the host to the device (``HostBatchBuffers``)."""
        return HostBatchBuffers()

    # CUDA graphs (gpunet.step_graph): a backend that can record its launches and replay them
    # says so; the CPU has nothing to capture.
    can_capture_graphs = False

    def kernel_gemms(self):
        """Within the block, ``matmul`` takes the backend's own GEMM kernel where it has one
        (what a graph can capture); NumPy's matmul is the only one here."""
        return contextlib.nullcontext()

    def capture(self, fn):
        """Record the launches ``fn()`` makes as a graph (``.launch()`` replays them)."""
        raise NotImplementedError(f"the {self.name} backend has no graphs to capture")

    # Ordering work between threads that queue it on different device streams (a model's
    # readers and its fit, see gpunet.concurrency). On the CPU every op has finished when
    # it returns: there are no streams, and nothing to order.
    def current_stream(self):
        """A token for the stream the calling thread queues work on (None: no streams)."""
        return None

    def synchronize_device(self):
        """Wait for the work queued on every stream of the device (a no-op on the CPU)."""

    def wait_for_stream(self, stream):
        """Make later work of the current stream wait for the work queued on ``stream``."""

    def all_finite(self, x) -> bool:
        """True when no element is NaN or +-Inf (a host-device sync on the GPU)."""
        return bool(self.xp.isfinite(x).all())

    # ---- dense layer --------------------------------------------------------------
    def matmul(self, a, b, out=None):
        """``a @ b``: (N, k) x (k, n) -> (N, n)."""
        return self.xp.matmul(a, b, out=out)

    def bias_act(self, z, b, act):
        """Fusable: ``z <- f(z + b)`` in place. z (N, n) = A W from the GEMM, b (n,)."""
        z += b
        return act.forward(self.xp, z, out=z)

    def act_backward(self, grad, a, act, bias_grad=None):
        """Fusable: ``grad <- grad * f'(z)`` in place, with ``f'`` read from the output a (N, n).
        With ``bias_grad`` (n,), also the column sums of the result there: the layer's delta
        and its bias gradient in one pass (one launch on the GPU)."""
        act.backward(self.xp, grad, a, out=grad)
        if bias_grad is not None:
            self.bias_grad(grad, out=bias_grad)
        return grad

    def activate(self, z, act):
        """``z <- f(z)`` in place, f any activation (softmax row-wise): inference of a model
        whose loss folds its output activation in."""
        return act.forward(self.xp, z, out=z)

    def bias_grad(self, delta, out=None):
        """Fusable: column sums of delta (N, n) -> (n,), the bias gradient."""
        return delta.sum(axis=0, out=out)

    # ---- losses at the output -----------------------------------------------------
    def softmax(self, z, out=None):
        """Row-wise stable softmax of logits z (N, n)."""
        return softmax_rows(self.xp, z, out=out)

    # ``row_scale`` (N,), where the losses take one: each example's loss and gradient row
    # times r_n, the mean still over N. Sample weights w become r = w * N / sum(w): the
    # weighted mean sum(w l) / sum(w). None is r = 1, bit for bit.
    def softmax_xent(self, logits, labels, grad_out, row_scale=None, *, bias=None, hits=None):
        """Fusable: softmax + cross-entropy + gradient from integer labels.

        logits (N, C), labels (N,) ints in [0, C). Writes ``(softmax(z) - e(y)) / N`` into
        ``grad_out`` (N, C) (may alias ``logits``) and returns the mean loss
        ``-(1/N) sum_n log softmax(z_n)[y_n]`` as a 0-d array (no host sync).
        No one-hot array is built: e(y) is subtracted at one index per row.

        In a fit step: ``bias`` (C,), the logits' bias, is added to ``logits`` in place first
        (the forward pass leaves it to the loss); ``hits`` (N,) receives whether each row's
        argmax is its label.
        """
        xp = self.xp
        n = logits.shape[0]
        if bias is not None:
            logits += bias
        if hits is not None:
            xp.equal(logits.argmax(axis=1), labels, out=hits, casting="unsafe")
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

    # Binary cross-entropy and the Poisson deviance pair a loss with its canonical link (sigmoid,
    # exp): both write ``(f(z) - y) / N`` into grad_out (which may alias the logits) and return
    # the mean over N of each row's sum over outputs, as a 0-d array (no host sync).
    # In a fit step the canonical losses also take ``bias`` (K,), the logits' bias, added to
    # ``logits`` in place first (the forward pass leaves it to the loss), and
    # ``sigmoid_bce`` a ``hits`` (N, K) array receiving whether each predicted label
    # (z > 0) is the target's (y > 0.5).
    def sigmoid_bce(self, logits, targets, grad_out, row_scale=None, *, bias=None, hits=None):
        """Fusable: sigmoid output + binary cross-entropy + gradient from the logits z (N, K),
        targets y (N, K) in [0, 1]: per element ``-[y log s(z) + (1 - y) log(1 - s(z))] =
        softplus(z) - y z``, stable for any z; gradient ``(s(z) - y) / N``."""
        xp = self.xp
        n = logits.shape[0]
        if bias is not None:
            logits += bias
        if hits is not None:
            xp.equal(logits > 0, targets > 0.5, out=hits, casting="unsafe")
        terms = xp.logaddexp(0.0, logits) - targets * logits    # softplus(z) - y z
        loss = _scaled_rows(terms.sum(axis=1), row_scale).sum() / n
        probs = xp.exp(-xp.logaddexp(0.0, -logits))               # s(z) = 1 / (1 + e^-z), no overflow
        grad = xp.subtract(probs, targets, out=grad_out)
        grad /= n
        _scale_rows(grad, row_scale)
        return loss

    def poisson_exp(self, logits, targets, grad_out, row_scale=None, *, bias=None):
        """Fusable: exp output + half the Poisson deviance + gradient from the logits z (N, K)
        (the log of the mean), targets y (N, K) >= 0: per element ``exp(z) - y z + y log y - y``
        (0 log 0 = 0; zero where exp(z) = y); gradient ``(exp(z) - y) / N``."""
        xp = self.xp
        n = logits.shape[0]
        if bias is not None:
            logits += bias
        mean = xp.exp(logits)
        y_log_y = targets * xp.log(xp.where(targets > 0, targets, 1.0))
        terms = mean - targets * logits + y_log_y - targets
        loss = _scaled_rows(terms.sum(axis=1), row_scale).sum() / n
        grad = xp.subtract(mean, targets, out=grad_out)
        grad /= n
        _scale_rows(grad, row_scale)
        return loss

    def mse_grad(self, a, targets, act, grad_out, row_scale=None, *, bias=None):
        """Fusable: MSE loss and its gradient at the pre-activation of the output layer.

        a (N, K) output after activation ``act``, targets (N, K). Returns the 0-d loss
        ``1/(2N) sum (a - y)^2`` and writes ``((a - y) / N) * f'(z)`` into grad_out
        (which may alias ``a``). In a fit step, with ``bias`` (K,), ``a`` arrives holding the
        output layer's ``A W`` and becomes ``f(A W + bias)`` in place first (the forward pass
        leaves the output layer's bias and activation to the loss).
        """
        if bias is not None:
            self.bias_act(a, bias, act)
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

    # ---- the bookkeeping of a fit step --------------------------------------------
    def gather_rows(self, idx, srcs, outs, *, step=None, step_stride=0):
        """Fusable: ``outs[k][:] = srcs[k][idx]`` for each pair (a batch's features, targets
        and weights, one launch on the GPU). idx ints in [0, S); srcs[k] (S, ...), outs[k]
        (R, ...) of the source's dtype. With ``step`` (a graph's step counter, a 0-d array)
        the indices are ``idx[step * step_stride:][:R]``: a captured step reads its batch's
        place in the epoch from memory."""
        if step is not None:
            first = int(step) * step_stride
            idx = idx[first:first + outs[0].shape[0]]
        for src, out in zip(srcs, outs):
            self.xp.take(src, idx, axis=0, out=out)
        return outs

    def advance_step(self, counter):
        """Fusable: ``counter += 1`` (a graph's step counter, a 0-d int64 array), in place."""
        counter += 1
        return counter

    def finish_step(self, loss, grads, sums, bad, scale, *, batch_weight, clip_norm, hits=None):
        """Fusable: what a fit step does between its backward pass and its update, in place.

        loss 0-d and grads (P,) of the model's dtype; ``bad`` 0-d bool, set when the loss or
        ``sumsq(grads)`` is not finite (never cleared); ``scale`` 0-d of the dtype: the
        clipping factor ``min(1, clip_norm / (sqrt(sumsq) + 1e-12))``, 1 without ``clip_norm``;
        ``sums`` float64: ``sums[0] += loss * batch_weight`` (a number or a 0-d array) and,
        with ``hits`` (R, k) bools or bytes, ``sums[1] +=`` the rows whose entries all hold.
        """
        xp = self.xp
        gss = self.sumsq(grads)
        if self.host_reads_are_free:    # NumPy scalars: Python's checks are the cheap ones
            if not (math.isfinite(loss) and math.isfinite(gss)):
                bad.fill(True)
        else:
            bad |= ~(xp.isfinite(loss) & xp.isfinite(gss))
        if clip_norm is None:
            scale.fill(1)
        else:
            scale[...] = xp.minimum(1.0, clip_norm / (xp.sqrt(gss) + 1e-12))
        sums[0] += loss * batch_weight
        if hits is not None:
            sums[1] += xp.count_nonzero(hits.all(axis=1) if hits.shape[1] > 1 else hits)
        return sums

    def squared_error_sums(self, out, targets, sums, *, exp_outputs=False):
        """Fusable: ``sums[c] += sum_r (pred_rc - targets_rc)**2`` (float64 sums (K,)), pred
        the outputs (N, K), or their exp with ``exp_outputs`` (a Poisson model's logits): a
        regressor's running metric."""
        pred = self.xp.exp(out) if exp_outputs else out
        diff = pred - targets
        sums += (diff * diff).sum(axis=0)
        return sums

    @staticmethod
    def _decayed_gradient(params, grads, scale, weight_decay, n_decay):
        """``scale * grads`` plus the coupled L2 term ``weight_decay * params`` on the first
        ``n_decay`` entries (the weights): the gradient every optimizer step starts from."""
        g = grads * scale
        if weight_decay:
            g[:n_decay] += weight_decay * params[:n_decay]
        return g

    # The updates take their hyper-parameters as one frozen value (gpunet.optim's SGDHyper,
    # AdamHyper, RMSpropHyper: checked Python numbers); ``n_decay`` is the length of the
    # weights prefix of the flat buffers (decayed; the biases after it are not), ``scale``
    # the clipping factor (a 0-d array or a float) and ``skip`` a 0-d bool array or a bool:
    # when true nothing changes. ``step_table`` (a graph's steps, gpunet.optim.StepTable):
    # the scalars that change between steps come from row ``step_table.step`` of
    # ``step_table.rows`` instead (the learning rate in column 0; Adam's three in 0-2).
    @staticmethod
    def _table_row(step_table):
        return step_table.rows[int(step_table.step)]

    def sgd_update(self, params, grads, velocity, hyper, *, n_decay, scale, skip, step_table=None):
        """Fusable: one SGD step over the whole flat parameter buffer, in place.

        params, grads, velocity: 1-D, same length P (velocity may be None without momentum).

            g = scale * grads + weight_decay * params   (decay on the weights only)
            v = momentum * v + g
            params -= lr * (g + momentum * v if nesterov else v)
        """
        if bool(skip):
            return params
        g = self._decayed_gradient(params, grads, scale, hyper.weight_decay, n_decay)
        momentum = hyper.momentum
        if momentum:
            velocity *= momentum
            velocity += g
            step = g + momentum * velocity if hyper.nesterov else velocity
        else:
            step = g
        lr = hyper.lr if step_table is None else self._table_row(step_table)[0]
        params -= self.xp.asarray(lr, dtype=params.dtype) * step
        return params

    def adam_update(self, params, grads, exp_avg, exp_avg_sq, hyper, *, step, n_decay, scale, skip, skipped=None,
                    step_table=None):
        """Fusable: one Adam (or AdamW) step over the whole flat parameter buffer, in place.

        params, grads, exp_avg (m), exp_avg_sq (v): 1-D, same length P. ``step`` is the
        1-based step count t of this update (bias correction). PyTorch's ``torch.optim.Adam``
        (``weight_decay`` coupled, an L2 term in the gradient) and ``AdamW``
        (``decoupled_weight_decay``, a shrink of the weights before the step):

            g = scale * grads + weight_decay * params            (weights only)
            params *= 1 - lr * decoupled_weight_decay            (weights only)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g^2
            params -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

        ``skipped`` (0-d int64 or None): counts the skipped steps (the optimizer takes them
        back out of t afterwards).
        """
        if bool(skip):
            if skipped is not None:
                skipped += 1
            return params
        lr, beta1, beta2 = hyper.lr, hyper.beta1, hyper.beta2
        if step_table is None:
            step_size = lr / (1.0 - beta1 ** step)
            sqrt_bias_correction2 = math.sqrt(1.0 - beta2 ** step)
            decay_factor = 1.0 - lr * hyper.decoupled_weight_decay
        else:
            step_size, sqrt_bias_correction2, decay_factor = self._table_row(step_table)[:3]
        g = self._decayed_gradient(params, grads, scale, hyper.weight_decay, n_decay)
        if hyper.decoupled_weight_decay:
            params[:n_decay] *= decay_factor
        exp_avg *= beta1
        exp_avg += (1.0 - beta1) * g
        exp_avg_sq *= beta2
        exp_avg_sq += (1.0 - beta2) * (g * g)
        denom = self.xp.sqrt(exp_avg_sq) / sqrt_bias_correction2 + hyper.eps
        params -= step_size * exp_avg / denom
        return params

    def rmsprop_update(self, params, grads, square_avg, grad_avg, momentum_buf, hyper, *, n_decay, scale, skip,
                       step_table=None):
        """Fusable: one RMSprop step over the whole flat parameter buffer, in place.

        params, grads, square_avg: 1-D, same length P; ``grad_avg`` (only when ``centered``)
        and ``momentum_buf`` (only when ``momentum > 0``) likewise, else None.
        PyTorch's ``torch.optim.RMSprop``:

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
        lr, alpha, eps, momentum = hyper.lr, hyper.alpha, hyper.eps, hyper.momentum
        if step_table is not None:
            lr = self._table_row(step_table)[0]
        g = self._decayed_gradient(params, grads, scale, hyper.weight_decay, n_decay)
        square_avg *= alpha
        square_avg += (1.0 - alpha) * (g * g)
        if hyper.centered:
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
