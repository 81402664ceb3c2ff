"""The multilayer perceptron: batched forward pass and the recursive backward pass.

Notation (rows are examples, as in ``Z = A W + b``):

    A_0 = X                                     (N, n_0)
    Z_l = A_{l-1} W_l + b_l,  A_l = f_l(Z_l)     W_l (n_{l-1}, n_l), b_l (n_l,)

Backward (seed 003, "Recursive local gradients", vectorised over the batch):

    delta_L = dLoss/dZ_L                         (from the loss, see losses.py)
    dW_l = A_{l-1}^T delta_l,  db_l = sum_n delta_l[n]
    delta_{l-1} = (delta_l W_l^T) * f'_{l-1}(Z_{l-1}),  f' read from A_{l-1}

All parameters live in one flat buffer laid out ``[W_1 .. W_L, b_1 .. b_L]``; ``params``
are views into it, and the gradients mirror it. Weights first means weight decay applies
to one prefix of the buffer, so an optimizer step is one op over one array.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS, Activation, get_activation
from .backend import get_backend, to_numpy
from .init import INITIALIZERS, initialize_weight
from .losses import get_loss, row_scale_from_weights
from .validation import (check_features, check_float_dtype, check_int, check_labels, check_real, check_sample_weight,
                         check_targets)

__all__ = ["MLP"]

_INFERENCE_CHUNK = 8192   # rows per forward pass in predict(): bounds the workspace memory
_WORKSPACES_KEPT = 4      # batch shapes whose buffers stay allocated (train, last batch, eval...)


class _Workspace:
    """Activation and local-gradient buffers for one batch size, allocated once and reused."""

    def __init__(self, backend, n, sizes, dtype):
        self.acts = [backend.empty((n, w), dtype) for w in sizes[1:]]     # A_1 .. A_L
        self.deltas = [backend.empty((n, w), dtype) for w in sizes[1:]]   # delta_1 .. delta_L


class MLP:
    """A fully connected network trained by explicit backpropagation.

    Parameters
    ----------
    sizes : layer widths ``[n_0, n_1, ..., n_L]``, input first (at least two).
    activation : hidden activation, a name (``"sigmoid"``, ``"tanh"``, ``"relu"``,
        ``"leaky_relu"``, ``"identity"``), an ``Activation`` such as ``Sigmoid(c=2, beta=0.5)``
        or ``LeakyReLU(0.1)``, or a list with one per hidden layer.
    output : ``"softmax"``, ``"sigmoid"``, ``"tanh"`` or ``"identity"`` (or an ``Activation``).
    loss : ``"cross_entropy"`` (needs a softmax output; a classifier) or ``"mse"`` (a regressor).
    init : ``"glorot_uniform"``, ``"glorot_normal"``, ``"he_uniform"`` or ``"he_normal"``.
    weight_decay : lambda of the L2 regulariser (lambda/2) sum ||W_l||^2; biases are not decayed.
    dtype : ``"float32"`` or ``"float64"``.
    seed : an int makes initialisation and ``fit``'s shuffling reproducible bit for bit.
    """

    def __init__(self, sizes, activation="relu", output="softmax", loss="cross_entropy",
                 init="glorot_uniform", weight_decay=0.0, dtype="float32", seed=None):
        sizes = self._check_sizes(sizes)
        n_hidden = len(sizes) - 2
        hidden = self._check_hidden(activation, n_hidden)
        out_act = get_activation(output, OUTPUT_ACTIVATIONS, "output activation")
        loss_fn = get_loss(loss)
        if loss_fn.name == "cross_entropy" and out_act.name != "softmax":
            raise ValueError(f"loss 'cross_entropy' needs output='softmax', got output={out_act.name!r}; "
                             "use loss='mse' for other outputs")
        if not isinstance(init, str):
            raise TypeError(f"init must be a name, got {type(init).__name__}")
        if init not in INITIALIZERS:
            raise ValueError(f"unknown initialiser {init!r}; choose from {', '.join(INITIALIZERS)}")
        weight_decay = check_real("weight_decay", weight_decay, low=0.0)
        dtype = check_float_dtype(dtype)
        if seed is not None:
            seed = check_int("seed", seed, low=0)

        self.sizes = sizes
        self.hidden_activations = hidden
        self.output_activation = out_act
        self.loss_fn = loss_fn
        self.init = init
        self.weight_decay = weight_decay
        self.dtype = dtype
        self.seed = seed
        self.backend = get_backend()

        init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
        self._shuffle_rng = np.random.default_rng(shuffle_seq)
        self._allocate()
        rng = np.random.default_rng(init_seq)
        host = np.zeros(self.n_params, dtype=np.float64)
        for (w_off, w_shape), (fan_in, fan_out) in zip(self._w_slots, zip(sizes[:-1], sizes[1:])):
            host[w_off:w_off + fan_in * fan_out] = initialize_weight(init, rng, fan_in, fan_out).ravel()
        self.flat_params[...] = self.backend.asarray(host.astype(dtype))

    # ---- construction helpers ------------------------------------------------------
    @staticmethod
    def _check_sizes(sizes):
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
            raise TypeError(f"sizes must be a list of layer widths, got {type(sizes).__name__}")
        sizes = [check_int("layer width", s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least two widths (input and output), got {sizes}")
        bad = [s for s in sizes if s < 1]
        if bad:
            raise ValueError(f"layer widths must be positive, got {sizes}")
        return sizes

    @staticmethod
    def _check_hidden(activation, n_hidden):
        if isinstance(activation, (list, tuple)):
            if len(activation) != n_hidden:
                raise ValueError(f"got {len(activation)} hidden activations for {n_hidden} hidden layer(s)")
            return [get_activation(a, HIDDEN_ACTIVATIONS, "hidden activation") for a in activation]
        act = get_activation(activation, HIDDEN_ACTIVATIONS, "hidden activation")
        return [act] * n_hidden

    def _allocate(self):
        """The flat parameter and gradient buffers, and the per-layer views into them."""
        xp_backend = self.backend
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        self.n_weights = sum(a * b for a, b in pairs)
        self.n_params = self.n_weights + sum(b for _, b in pairs)
        offset, self._w_slots = 0, []
        for a, b in pairs:
            self._w_slots.append((offset, (a, b)))
            offset += a * b
        self._b_slots = []
        for _, b in pairs:
            self._b_slots.append((offset, (b,)))
            offset += b
        self.flat_params = xp_backend.zeros(self.n_params, self.dtype)
        self.flat_grads = xp_backend.zeros(self.n_params, self.dtype)
        self.weights, self.biases = self._views(self.flat_params)
        self.weight_grads, self.bias_grads = self._views(self.flat_grads)
        self._workspaces = OrderedDict()

    def _views(self, flat):
        ws = [flat[o:o + s[0] * s[1]].reshape(s) for o, s in self._w_slots]
        bs = [flat[o:o + s[0]] for o, s in self._b_slots]
        return ws, bs

    # ---- public properties ------------------------------------------------------------
    @property
    def params(self):
        """``[W_1, b_1, ..., W_L, b_L]``: views into the flat buffer (writes go to the model)."""
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def is_classifier(self) -> bool:
        return self.loss_fn.is_classifier

    @property
    def activations(self) -> list[Activation]:
        """The activation of every layer, the output one last."""
        return [*self.hidden_activations, self.output_activation]

    def config(self) -> dict:
        """Everything needed to rebuild this architecture (JSON-able)."""
        return {
            "sizes": list(self.sizes),
            "activation": [a.config() for a in self.hidden_activations],
            "output": self.output_activation.config(),
            "loss": self.loss_fn.name,
            "init": self.init,
            "weight_decay": self.weight_decay,
            "dtype": self.dtype.name,
            "seed": self.seed,
        }

    def __repr__(self):
        hidden = ",".join(a.name for a in self.hidden_activations) or "-"
        return (f"MLP({self.sizes}, activation={hidden}, output={self.output_activation.name}, "
                f"loss={self.loss_fn.name}, dtype={self.dtype.name}, backend={self.backend.name})")

    # ---- the workspace -------------------------------------------------------------
    def _workspace(self, n):
        ws = self._workspaces.get(n)
        if ws is None:
            ws = _Workspace(self.backend, n, self.sizes, self.dtype)
            self._workspaces[n] = ws
            while len(self._workspaces) > _WORKSPACES_KEPT:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(n)
        return ws

    # ---- forward / backward ------------------------------------------------------------
    def _forward(self, x, ws, activate_output=True):
        """Fill ws.acts with A_1..A_L for the backend array x (N, n_0); returns A_L.

        With ``activate_output=False`` (softmax + cross-entropy) A_L holds the logits.
        """
        be = self.backend
        a = x
        last = self.n_layers - 1
        for l, (w, b, act) in enumerate(zip(self.weights, self.biases, self.activations)):
            z = be.matmul(a, w, out=ws.acts[l])
            if l == last and not activate_output:
                z += b
            else:
                be.bias_act(z, b, act)
            a = z
        return a

    def _backward(self, x, ws, delta_out):
        """Fill the flat gradient buffer from delta_L (= ws.deltas[-1]); x is A_0."""
        be = self.backend
        for l in range(self.n_layers - 1, -1, -1):
            delta = ws.deltas[l]
            a_prev = x if l == 0 else ws.acts[l - 1]
            be.matmul(a_prev.T, delta, out=self.weight_grads[l])
            be.bias_grad(delta, out=self.bias_grads[l])
            if l > 0:
                grad_prev = be.matmul(delta, self.weights[l].T, out=ws.deltas[l - 1])
                be.act_backward(grad_prev, ws.acts[l - 1], self.hidden_activations[l - 1])

    def _loss_and_grad_device(self, x, targets, include_decay=True, row_scale=None):
        """One batched forward + backward on backend arrays. Returns the loss as a 0-d
        backend array (no host sync) and leaves the gradient in ``flat_grads``.

        x (N, n_0) of the model dtype; targets: int labels (N,), one-hot (N, K) or
        regression targets (N, K) of the model dtype; row_scale (N,) of the model dtype or
        None: per-example factors of the loss (``row_scale_from_weights``).
        """
        ws = self._workspace(x.shape[0])
        out = self._forward(x, ws, activate_output=self.loss_fn.needs_output_activation)
        loss = self.loss_fn.loss_and_delta(self.backend, out, targets, self.output_activation, ws.deltas[-1],
                                           row_scale)
        self._backward(x, ws, ws.deltas[-1])
        if include_decay and self.weight_decay:
            w = self.flat_params[:self.n_weights]
            loss = loss + 0.5 * self.weight_decay * self.backend.sumsq(w)
            self.flat_grads[:self.n_weights] += self.weight_decay * w
        return loss

    # ---- input handling ----------------------------------------------------------------
    def _device_features(self, X):
        host = check_features(X, self.sizes[0], dtype=self.dtype)
        return self.backend.asarray(host, dtype=self.dtype)

    def _check_targets(self, y, n, name="y"):
        """Validated host targets: int labels or float one-hot for classifiers, floats for regressors."""
        if self.is_classifier:
            return check_labels(y, n, self.sizes[-1], name=name)
        return check_targets(y, n, self.sizes[-1], name=name, dtype=self.dtype)

    def _device_targets(self, host_targets):
        if host_targets.dtype.kind == "i":
            return self.backend.asarray(host_targets)
        return self.backend.asarray(host_targets, dtype=self.dtype)

    # ---- public API ----------------------------------------------------------------------
    def forward(self, X):
        """Network output after the output activation: X (N, n_0) -> (N, n_L), a backend array."""
        x = self._device_features(X)
        return self._infer(x, activate=True)

    def _infer(self, x, activate=True):
        """Output for a validated backend array x, in chunks; logits when activate=False
        and the output is softmax."""
        be = self.backend
        n = x.shape[0]
        result = be.empty((n, self.sizes[-1]), self.dtype)
        for start in range(0, n, _INFERENCE_CHUNK):
            chunk = x[start:start + _INFERENCE_CHUNK]
            ws = self._workspace(chunk.shape[0])
            out = self._forward(chunk, ws, activate_output=self.loss_fn.needs_output_activation)
            if activate and not self.loss_fn.needs_output_activation:
                be.softmax(out, out=out)
            result[start:start + chunk.shape[0]] = out
        return result

    def loss_and_grad(self, X, y, sample_weight=None):
        """Mean loss (plus the L2 term) and its gradient on the batch (X, y).

        ``sample_weight`` (N,) makes the mean a weighted one, ``sum(w l) / sum(w)``.
        Returns ``(loss: float, [dW_1, db_1, ..., dW_L, db_L])``, the gradients new arrays
        of the backend with the shapes of ``params``.
        """
        x = self._device_features(X)
        targets = self._device_targets(self._check_targets(y, x.shape[0]))
        weights = check_sample_weight(sample_weight, x.shape[0])
        row_scale = None if weights is None else self.backend.asarray(row_scale_from_weights(weights), self.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            loss = self._loss_and_grad_device(x, targets, include_decay=True, row_scale=row_scale)
        grads = self.flat_grads.copy()
        ws, bs = self._views(grads)
        return float(loss), [p for pair in zip(ws, bs) for p in pair]

    def loss(self, X, y) -> float:
        """Mean loss (plus the L2 term) on (X, y), without touching the gradients."""
        x = self._device_features(X)
        targets = self._device_targets(self._check_targets(y, x.shape[0]))
        return float(self._loss_device(x, targets))

    def _loss_device(self, x, targets, include_decay=True):
        be = self.backend
        xp = be.xp
        n = x.shape[0]
        total = xp.zeros((), dtype=self.dtype)
        for start in range(0, n, _INFERENCE_CHUNK):
            xc, tc = x[start:start + _INFERENCE_CHUNK], targets[start:start + _INFERENCE_CHUNK]
            ws = self._workspace(xc.shape[0])
            out = self._forward(xc, ws, activate_output=self.loss_fn.needs_output_activation)
            scratch = ws.deltas[-1]
            total = total + self.loss_fn.loss_and_delta(be, out, tc, self.output_activation, scratch) * xc.shape[0]
        loss = total / n
        if include_decay and self.weight_decay:
            loss = loss + 0.5 * self.weight_decay * be.sumsq(self.flat_params[:self.n_weights])
        return loss

    def predict_proba(self, X):
        """Class probabilities (N, n_L) as a NumPy array; classifiers only."""
        if not self.is_classifier:
            raise TypeError("predict_proba is for classifiers (loss='cross_entropy'); use predict()")
        return to_numpy(self.forward(X))

    def predict(self, X):
        """Class labels (N,) for classifiers, outputs (N, n_L) for regressors; NumPy arrays."""
        return self._predict_device(self._device_features(X))

    def _predict_device(self, x):
        """``predict`` for a validated backend array x (N, n_0)."""
        if self.is_classifier:
            return to_numpy(self._infer(x, activate=False).argmax(axis=1))
        return to_numpy(self._infer(x))

    def score(self, X, y) -> float:
        """Accuracy for classifiers; R^2 (averaged over outputs) for regressors."""
        x = self._device_features(X)      # X is checked (and moved) once
        targets = self._check_targets(y, x.shape[0])
        pred = self._predict_device(x)
        if self.is_classifier:
            labels = targets if targets.ndim == 1 else targets.argmax(axis=1)
            return float((pred == labels).mean())
        return r2_score(targets, pred)

    def fit(self, X, y, epochs=10, batch_size=32, lr=0.01, **options):
        """Train by SGD; see ``gpunet.train.fit`` for every option. Returns the History."""
        from .train import fit
        return fit(self, X, y, epochs=epochs, batch_size=batch_size, lr=lr, **options)

    def save(self, path):
        """Write architecture and parameters to a ``.npz`` file (atomically, no pickle)."""
        from .io import save
        save(self, path)

    @classmethod
    def load(cls, path):
        """Rebuild a model written by ``save`` on the active backend."""
        from .io import load
        return load(path)

    def set_flat_params(self, values):
        """Replace all parameters from a flat array of length ``n_params`` (checked)."""
        host = np.asarray(to_numpy(values))
        if host.shape != (self.n_params,):
            raise ValueError(f"expected {self.n_params} parameters, got shape {host.shape}")
        if host.dtype.kind != "f":
            raise TypeError(f"parameters must be floating point, got {host.dtype}")
        if not np.isfinite(host).all():
            raise ValueError("parameters contain NaN or infinite values")
        self.flat_params[...] = self.backend.asarray(host.astype(self.dtype))


def r2_score(targets, pred) -> float:
    """Coefficient of determination, averaged over output columns (scikit-learn's default)."""
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    ss_res = ((targets - pred) ** 2).sum(axis=0)
    ss_tot = ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())
