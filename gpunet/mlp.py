"""The multilayer perceptron: batched forward pass and the recursive backward pass.

Notation (rows are examples, as in ``Z = A W + b``):

    A_0 = X                                     (N, n_0)
    Z_l = A_{l-1} W_l + b_l,  A_l = f_l(Z_l)     W_l (n_{l-1}, n_l), b_l (n_l,)

Backward (seed 003, "Recursive local gradients", vectorised over the batch):

    delta_L = dLoss/dZ_L                         (from the loss, see losses.py)
    dW_l = A_{l-1}^T delta_l,  db_l = sum_n delta_l[n]
    delta_{l-1} = (delta_l W_l^T) * f'_{l-1}(Z_{l-1}),  f' read from A_{l-1}

All parameters live in one flat buffer laid out ``[W_1 .. W_L, b_1 .. b_L]``
(``gpunet.parameters``); ``params`` are views into it. The buffers of a pass live in a
``Workspace`` owned by its caller, so any number of threads may use one model for
inference at once, and ``fit`` trains it while they do (``gpunet.concurrency``).
"""
from __future__ import annotations

import json
import threading
import warnings
from collections import OrderedDict

import numpy as np

from . import io
from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS, Activation, get_activation
from .backend import resolve_backend, to_numpy, use_backend
from .concurrency import ExclusiveClaim, ParameterGuard
from .init import INITIALIZERS, initialize_weight
from .losses import get_loss, row_scale_from_weights
from .metrics import accuracy, labels_of, predicted_labels, r2_score
from .parameters import ParameterLayout
from .train import fit
from .scaling import InputScaling
from .validation import (Learned, check_bool, check_classes, check_feature_names, check_features, check_float_dtype, check_int, check_real,
                         check_sample_weight, encode_labels, frame_feature_names, infer_classes,
                         select_frame_features)
from .workspace import Workspace

__all__ = ["MLP"]

_INFERENCE_CHUNK = 8192   # rows per forward pass of inference: bounds the workspace memory
_WORKSPACES_KEPT = 4      # batch shapes whose inference buffers a thread keeps allocated


class MLP:
    """A fully connected network trained by explicit backpropagation.

    Parameters
    ----------
    sizes : layer widths ``[n_0, n_1, ..., n_L]``, input first (at least two).
    activation : hidden activation, a name (``"sigmoid"``, ``"tanh"``, ``"relu"``,
        ``"leaky_relu"``, ``"identity"``), an ``Activation`` such as ``Sigmoid(c=2, beta=0.5)``
        or ``LeakyReLU(0.1)``, or a list with one per hidden layer.
    output : ``"softmax"``, ``"sigmoid"``, ``"tanh"``, ``"identity"`` or ``"exp"`` (or an ``Activation``).
    loss : ``"cross_entropy"`` (needs a softmax output; a classifier with one class per example),
        ``"binary_cross_entropy"`` (needs a sigmoid output; K independent yes/no labels: binary or
        multilabel classification), ``"poisson"`` (needs an ``"exp"`` output; counts or rates)
        or ``"mse"`` (a regressor with any output).
    init : ``"glorot_uniform"``, ``"glorot_normal"``, ``"he_uniform"`` or ``"he_normal"``.
    weight_decay : lambda of the L2 regulariser (lambda/2) sum ||W_l||^2; biases are not decayed.
    dtype : ``"float32"`` or ``"float64"``.
    seed : an int makes initialisation and ``fit``'s shuffling reproducible bit for bit.
    backend : None (the active backend, see ``gpunet.use_backend``), a backend name or object.
        The model keeps it: its arrays live there whatever is selected later.
    classes : the label values of a ``cross_entropy`` classifier's outputs, in output order
        (numbers or strings). Without it, labels are the output indices 0..n_L-1, unless the
        first ``fit`` sees strings (or booleans): then the sorted distinct values. ``predict``
        returns label values; ``fit`` and ``score`` take them.
    feature_names : the input columns' names, learned from the first ``fit`` on a pandas
        DataFrame with string column names; a DataFrame given later must have those columns
        (they are taken in this order).
    metadata : a JSON-able dict kept with the model and saved in its file (the command line
        notes its target column and data file there).
    standardize : True makes the first ``fit`` learn each feature's mean and standard
        deviation (``input_scaling``) and every input from then on (fit, predict, score,
        forward, validation data) standardised with them, so the model, and its file, take
        raw data. A later ``fit`` keeps the scaling it has.
    input_scaling : a ``gpunet.scaling.InputScaling`` (or its ``config()`` dict) to apply
        from the start (implies ``standardize``).

    Threads: ``forward``, ``predict``, ``predict_proba``, ``score``, ``loss`` and
    ``loss_and_grad`` may be called on one model from any number of threads at once and give
    exactly the single-threaded results (each thread computes in buffers of its own). ``fit``
    owns the model while it runs: a second ``fit`` of it raises RuntimeError, and so does
    ``set_flat_params`` from another thread. Inference during a ``fit`` sees the parameters
    as they are between two optimizer steps, never part of an update.

    The training interface (``features``, ``targets``, ``workspace``, ``forward_into``,
    ``backward_into``, ``loss_and_grad_into``, ``evaluate_loss``, ``evaluate_outputs``,
    ``shuffle_rng``, ``training``, ``reading_parameters``, ``writing_parameters``) works on
    validated backend arrays without reading anything back to the host; ``fit``,
    ``gradcheck`` and the scikit-learn estimators are written against it, and so can a
    custom training loop be (``docs/architecture.md``).
    """

    def __init__(self, sizes, activation="relu", output="softmax", loss="cross_entropy",
                 init="glorot_uniform", weight_decay=0.0, dtype="float32", seed=None, backend=None,
                 classes=None, feature_names=None, metadata=None, standardize=False, input_scaling=None):
        sizes = self._check_sizes(sizes)
        n_hidden = len(sizes) - 2
        hidden = self._check_hidden(activation, n_hidden)
        out_act = get_activation(output, OUTPUT_ACTIVATIONS, "output activation")
        loss_fn = get_loss(loss)
        if loss_fn.required_output is not None and out_act != get_activation(loss_fn.required_output):
            raise ValueError(f"loss {loss_fn.name!r} needs output={loss_fn.required_output!r} (its canonical "
                             f"link, with default parameters), got output={out_act!r}; use loss='mse' for "
                             "other outputs")
        if not isinstance(init, str):
            raise TypeError(f"init must be a name, got {type(init).__name__}")
        if init not in INITIALIZERS:
            raise ValueError(f"unknown initialiser {init!r}; choose from {', '.join(INITIALIZERS)}")
        weight_decay = check_real("weight_decay", weight_decay, low=0.0)
        dtype = check_float_dtype(dtype)
        if seed is not None:
            seed = check_int("seed", seed, low=0)
        if classes is not None:
            if loss_fn.label_rule != "argmax":
                raise TypeError("classes names the outputs of a cross_entropy classifier; this loss has none")
            classes = check_classes(classes, sizes[-1])
        if feature_names is not None:
            feature_names = check_feature_names(feature_names, sizes[0])
        metadata = self._check_metadata(metadata)
        standardize = check_bool("standardize", standardize)
        if input_scaling is not None:
            input_scaling = InputScaling.from_config(input_scaling)
            if input_scaling.mean.shape[0] != sizes[0]:
                raise ValueError(f"input_scaling is for {input_scaling.mean.shape[0]} features, "
                                 f"the network has {sizes[0]} inputs")
            standardize = True

        self.sizes = sizes
        self.hidden_activations = hidden
        self.output_activation = out_act
        self.loss_fn = loss_fn
        self.init = init
        self.weight_decay = weight_decay
        self.dtype = dtype
        self.seed = seed
        self.classes = classes
        self.feature_names = feature_names
        self.metadata = metadata
        self.standardize = standardize
        self.input_scaling = input_scaling
        self.backend = resolve_backend(backend)
        self.layout = ParameterLayout(sizes)
        self._guard = ParameterGuard(self.backend)
        self._fit_claim = ExclusiveClaim("fit() of this model")
        self._per_thread = threading.local()      # .workspaces: this thread's inference buffers

        init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
        self._shuffle_rng = np.random.default_rng(shuffle_seq)
        self.flat_params = self.backend.zeros(self.n_params, self.dtype)
        self.weights, self.biases = self.layout.views(self.flat_params)
        rng = np.random.default_rng(init_seq)
        host = np.zeros(self.n_params, dtype=np.float64)
        for (w_off, _), (fan_in, fan_out) in zip(self.layout.weight_slots, zip(sizes[:-1], sizes[1:])):
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
    def _check_metadata(metadata) -> dict:
        if metadata is None:
            return {}
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        try:
            return json.loads(json.dumps(metadata, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata must be JSON-able (it is saved with the model): {exc}") from None

    @staticmethod
    def _check_hidden(activation, n_hidden):
        if isinstance(activation, (list, tuple)):
            if len(activation) != n_hidden:
                raise ValueError(f"got {len(activation)} hidden activations for {n_hidden} hidden layer(s)")
            return [get_activation(a, HIDDEN_ACTIVATIONS, "hidden activation") for a in activation]
        act = get_activation(activation, HIDDEN_ACTIVATIONS, "hidden activation")
        return [act] * n_hidden

    # ---- pickling and copies: the architecture, the parameters and the shuffling state ----
    def __getstate__(self):
        with self._guard.reading():
            params = to_numpy(self.flat_params).copy()
        return {"config": self.config(), "params": params, "backend": self.backend.name,
                "shuffle_rng": self._shuffle_rng.bit_generator.state}

    def __setstate__(self, state):
        try:
            with use_backend(state["backend"]) as backend:
                self.__init__(**state["config"], backend=backend)
        except RuntimeError as exc:       # e.g. pickled on a GPU machine, loaded without one
            warnings.warn(f"gpunet: rebuilding the model on NumPy ({exc})", RuntimeWarning, stacklevel=2)
            self.__init__(**state["config"], backend="numpy")
        self.set_flat_params(state["params"])
        self._shuffle_rng.bit_generator.state = state["shuffle_rng"]

    def copy(self, dtype=None) -> "MLP":
        """A new model with this architecture and a copy of the parameters (converted to
        ``dtype`` when given), on the same backend; its shuffling starts from the seed."""
        config = self.config()
        if dtype is not None:
            config["dtype"] = check_float_dtype(dtype).name
        twin = MLP(**config, backend=self.backend)
        with self._guard.reading():
            twin.set_flat_params(to_numpy(self.flat_params).astype(twin.dtype))
        return twin

    # ---- public properties ------------------------------------------------------------
    @property
    def params(self):
        """``[W_1, b_1, ..., W_L, b_L]``: views into the flat buffer (writes go to the model)."""
        return self.layout.interleaved(self.flat_params)

    @property
    def n_params(self) -> int:
        return self.layout.n_params

    @property
    def n_weights(self) -> int:
        """Entries of the flat buffer's weights prefix (the decayed part)."""
        return self.layout.n_weights

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
            "classes": None if self.classes is None else self.classes.tolist(),
            "feature_names": self.feature_names,
            "metadata": self.metadata,
            "standardize": self.standardize,
            "input_scaling": None if self.input_scaling is None else self.input_scaling.config(),
        }

    def __repr__(self):
        hidden = ",".join(a.name for a in self.hidden_activations) or "-"
        return (f"MLP({self.sizes}, activation={hidden}, output={self.output_activation.name}, "
                f"loss={self.loss_fn.name}, dtype={self.dtype.name}, backend={self.backend.name})")

    # ---- the training interface: validated backend arrays, no host reads ------------------
    def validate_features(self, X, name="X", feature_names=None, input_scaling=None, convert=True) -> np.ndarray:
        """X checked as this network's input (N, n_0): real, finite, in range for the dtype;
        a DataFrame's columns are taken by name when the model has ``feature_names`` (or
        ``feature_names`` is given), and standardised with the model's ``input_scaling`` (or
        the one given). Returns the host array, C-ordered in the model's dtype; with
        ``convert=False`` a NumPy array (a memory map) is checked in row chunks and returned
        as it is, for ``batch_features`` to convert a batch at a time."""
        names = self.feature_names if feature_names is None else feature_names
        if names is not None and frame_feature_names(X) is not None:
            X = select_frame_features(X, names, name=name)
        scaling = self.input_scaling if input_scaling is None else input_scaling
        return check_features(X, self.sizes[0], name=name, dtype=self.dtype, scaling=scaling, convert=convert)

    def batch_features(self, rows, out, input_scaling=None, name="X"):
        """Rows of features checked by ``validate_features(convert=False)`` written into
        ``out`` (R, n_0) of the model's dtype, standardised with the model's input scaling
        (or the one given). Returns ``out``."""
        scaling = self.input_scaling if input_scaling is None else input_scaling
        if scaling is None:
            np.copyto(out, rows, casting="unsafe")     # finite and in range: checked before
            return out
        scaling.transform(rows, out.dtype, out=out)
        if not np.isfinite(out).all():
            raise ValueError(f"{name} has values beyond the {out.dtype.name} range once standardised "
                             "with the model's input scaling")
        return out

    def validate_targets(self, y, n_examples, name="y", classes=None) -> np.ndarray:
        """y checked as the loss's targets for ``n_examples`` examples (host): int64 labels (N,)
        or float64 one-hot rows (N, K) under cross-entropy, float64 (N, K) otherwise. Label
        values are encoded as output indices through ``classes`` (the model's by default)."""
        classes = self.classes if classes is None else classes
        if classes is not None:
            y = encode_labels(y, classes, name=name)
        return self.loss_fn.validate_targets(y, n_examples, self.sizes[-1], name=name, dtype=self.dtype)

    def learnable(self, X, y) -> Learned:
        """What a ``fit`` on (X, y) gives the model: what it has, or what these data tell
        (string labels; a DataFrame's string column names; with ``standardize``, the
        features' scaling); checked, and not yet set (``fit`` sets them once it trains)."""
        classes = self.classes
        if classes is None and self.loss_fn.label_rule == "argmax":
            classes = infer_classes(y, self.sizes[-1])
        names = self.feature_names
        if names is None:
            names = frame_feature_names(X)
            if names is not None:
                names = check_feature_names(names, self.sizes[0], name="X's column names")
        scaling = self.input_scaling
        if self.standardize and scaling is None:
            if names is not None and frame_feature_names(X) is not None:
                X = select_frame_features(X, names)
            scaling = InputScaling.learn(check_features(X, self.sizes[0]))   # raw, checked finite
        return Learned(classes, names, scaling)

    def features(self, X, name="X"):
        """X validated and moved to the backend in the model's dtype (N, n_0)."""
        return self.backend.asarray(self.validate_features(X, name), dtype=self.dtype)

    def targets(self, y, n_examples, name="y"):
        """y validated and moved to the backend: int64 labels stay integers, the rest take
        the model's dtype."""
        return self.device_targets(self.validate_targets(y, n_examples, name))

    def device_targets(self, host_targets):
        """Validated host targets (``validate_targets``) on the backend."""
        if host_targets.dtype.kind == "i":
            return self.backend.asarray(host_targets)
        return self.backend.asarray(host_targets, dtype=self.dtype)

    @property
    def shuffle_rng(self) -> np.random.Generator:
        """The generator ``fit`` draws its shuffles from (seeded by ``seed``)."""
        return self._shuffle_rng

    def workspace(self, rows, gradients=True) -> Workspace:
        """New buffers for passes over batches of exactly ``rows`` examples, owned by the
        caller (with a flat gradient buffer when ``gradients``)."""
        return Workspace(self.backend, rows, self.sizes, self.dtype, self.layout, gradients=gradients)

    def training(self):
        """``with net.training():`` claims the model for one training run (``fit``); a second
        claim, from any thread, raises RuntimeError while the first lasts."""
        return self._fit_claim.claim()

    def reading_parameters(self):
        """``with net.reading_parameters():`` queue work that reads the parameters: no
        update lands in the middle of it (see ``gpunet.concurrency``)."""
        return self._guard.reading()

    def writing_parameters(self):
        """``with net.writing_parameters():`` change the parameters in place (an optimizer
        step): readers wait, and see the parameters before or after, never between."""
        return self._guard.writing()

    def forward_into(self, x, ws, leave_output_to_loss=False):
        """Fill ``ws.acts`` with A_1..A_L for the backend array x (N, n_0); returns
        ``ws.output``, which holds what the loss takes: the logits when the softmax is folded
        into the cross-entropy, else the activated output. With ``leave_output_to_loss`` the
        output layer stops at ``A_{L-1} W_L``: its bias (and activation) are applied by the
        loss, in its kernel (``loss_and_grad_into``)."""
        be = self.backend
        a = x
        last = self.n_layers - 1
        activate_output = self.loss_fn.needs_output_activation
        for l, (w, b, act) in enumerate(zip(self.weights, self.biases, self.activations)):
            z = be.matmul(a, w, out=ws.acts[l])
            if l < last or not leave_output_to_loss:
                if l == last and not activate_output:
                    z += b
                else:
                    be.bias_act(z, b, act)
            a = z
        return a

    def backward_into(self, x, ws):
        """Fill ``ws.flat_grads`` from delta_L (``ws.deltas[-1]``) back to the input; x is A_0.

        Layer l's gradients are ``dW_l = A_{l-1}^T delta_l`` and ``db_l`` = the column sums of
        delta_l; ``delta_{l-1} = (delta_l W_l^T) * f'(A_{l-1})`` is computed together with its
        column sums, the bias gradient of layer l - 1 (one pass over it, one launch on a GPU).
        """
        be = self.backend
        last = self.n_layers - 1
        be.bias_grad(ws.deltas[last], out=ws.bias_grads[last])
        for l in range(last, -1, -1):
            delta = ws.deltas[l]
            a_prev = x if l == 0 else ws.acts[l - 1]
            be.matmul(a_prev.T, delta, out=ws.weight_grads[l])
            if l > 0:
                grad_prev = be.matmul(delta, self.weights[l].T, out=ws.deltas[l - 1])
                be.act_backward(grad_prev, ws.acts[l - 1], self.hidden_activations[l - 1],
                                bias_grad=ws.bias_grads[l - 1])
        return ws.flat_grads

    def loss_and_grad_into(self, x, targets, ws, row_scale=None, include_decay=True, hits=None):
        """One batched forward and backward pass: returns the mean loss as a 0-d backend
        array (no host sync) and leaves its gradient in ``ws.flat_grads``.

        x (N, n_0) of the model dtype; targets: int labels (N,), one-hot (N, K) or
        regression targets (N, K) of the model dtype; row_scale (N,) of the model dtype or
        None: per-example factors of the loss (``row_scale_from_weights``). With
        ``include_decay`` the L2 term is in the loss and the gradient (``fit`` leaves it to
        the optimizer instead). A classifier's ``hits`` (N, k) uint8 receives which of its
        predictions were right (``fit``'s running accuracy). ``ws.output`` ends holding what
        the loss took (the logits, bias included, where the loss folds the output in).
        """
        out = self.forward_into(x, ws, leave_output_to_loss=True)
        loss = self.loss_fn.loss_and_delta(self.backend, out, targets, self.output_activation, ws.deltas[-1],
                                           row_scale, bias=self.biases[-1], hits=hits)
        self.backward_into(x, ws)
        if include_decay and self.weight_decay:
            w = self.flat_params[:self.n_weights]
            loss = loss + 0.5 * self.weight_decay * self.backend.sumsq(w)
            ws.flat_grads[:self.n_weights] += self.weight_decay * w
        return loss

    def _thread_workspace(self, rows, gradients=False) -> Workspace:
        """This thread's cached buffers for ``rows`` examples (the last few shapes are kept)."""
        cache = getattr(self._per_thread, "workspaces", None)
        if cache is None:
            cache = self._per_thread.workspaces = OrderedDict()
        key = (rows, gradients)
        ws = cache.get(key)
        if ws is None:
            ws = cache[key] = self.workspace(rows, gradients=gradients)
            while len(cache) > _WORKSPACES_KEPT:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return ws

    def evaluate_outputs(self, x, logits=False):
        """Outputs (N, n_L) for a validated backend array x, computed in chunks in this
        thread's buffers: the activated output (probabilities, means), or with ``logits``
        what the loss takes (the logits, where it folds the output activation in)."""
        be = self.backend
        n = x.shape[0]
        result = be.empty((n, self.sizes[-1]), self.dtype)
        loss_fn, out_act = self.loss_fn, self.output_activation
        # overflowing rows come out non-finite, which the callers report (no NumPy warnings)
        with self._guard.reading(), np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, n, _INFERENCE_CHUNK):
                chunk = x[start:start + _INFERENCE_CHUNK]
                out = self.forward_into(chunk, self._thread_workspace(chunk.shape[0]))
                if not logits:
                    loss_fn.activate(be, out, out_act)
                result[start:start + chunk.shape[0]] = out
        return result

    def evaluate_loss(self, x, targets, include_decay=True):
        """Mean loss over backend arrays (x, targets) as a 0-d backend array (no host sync),
        in chunks in this thread's buffers; the L2 term included unless ``include_decay`` is
        False."""
        be = self.backend
        n = x.shape[0]
        total = be.xp.zeros((), dtype=self.dtype)
        with self._guard.reading():
            for start in range(0, n, _INFERENCE_CHUNK):
                xc, tc = x[start:start + _INFERENCE_CHUNK], targets[start:start + _INFERENCE_CHUNK]
                ws = self._thread_workspace(xc.shape[0])
                out = self.forward_into(xc, ws)
                chunk_loss = self.loss_fn.loss_and_delta(be, out, tc, self.output_activation, ws.deltas[-1])
                total = total + chunk_loss * xc.shape[0]
            loss = total / n
            if include_decay and self.weight_decay:
                loss = loss + 0.5 * self.weight_decay * be.sumsq(self.flat_params[:self.n_weights])
        return loss

    # ---- public API ----------------------------------------------------------------------
    def forward(self, X):
        """Network output after the output activation: X (N, n_0) -> (N, n_L), a backend array.
        Rows whose arithmetic overflowed come back non-finite (inf or NaN), as computed, with no
        check (which would read back from a GPU); ``predict``, ``predict_proba`` and ``score``
        raise a ValueError naming such rows instead."""
        return self.evaluate_outputs(self.features(X))

    def loss(self, X, y) -> float:
        """Mean loss on (X, y) including the L2 term (not defined for overflowing inputs: inf or NaN)."""
        x = self.features(X)
        targets = self.targets(y, x.shape[0])
        return float(self.evaluate_loss(x, targets, include_decay=True))

    def loss_and_grad(self, X, y, sample_weight=None):
        """Mean loss (plus the L2 term) and its gradient on the batch (X, y).

        ``sample_weight`` (N,) makes the mean a weighted one, ``sum(w l) / sum(w)``.
        Returns ``(loss: float, [dW_1, db_1, ..., dW_L, db_L])``, the gradients new arrays
        of the backend with the shapes of ``params``.
        """
        x = self.features(X)
        targets = self.targets(y, x.shape[0])
        weights = check_sample_weight(sample_weight, x.shape[0])
        row_scale = None if weights is None else self.backend.asarray(row_scale_from_weights(weights), self.dtype)
        ws = self._thread_workspace(x.shape[0], gradients=True)
        with np.errstate(over="ignore", invalid="ignore"), self._guard.reading():
            loss = self.loss_and_grad_into(x, targets, ws, row_scale=row_scale, include_decay=True)
            grads = ws.flat_grads.copy()
        return float(loss), self.layout.interleaved(grads)

    def predict_proba(self, X):
        """Class probabilities (N, n_L) as a NumPy array; classifiers only (under binary
        cross-entropy each column is one yes/no probability)."""
        if not self.is_classifier:
            raise TypeError("predict_proba is for classifiers (loss='cross_entropy' or 'binary_cross_entropy'); "
                            "use predict()")
        x = self.features(X)
        return self._finite_rows(x, to_numpy(self.evaluate_outputs(x)))

    def predict(self, X):
        """NumPy arrays: class labels (N,) under cross-entropy; 0/1 indicators (N, n_L) under
        binary cross-entropy ((N,) with one output); outputs (N, n_L) for regressors."""
        return self._predict_validated(self.features(X))

    def _predict_validated(self, x, label_values=True):
        if self.is_classifier:
            logits = self.evaluate_outputs(x, logits=True)
            self._finite_rows(x, logits)
            labels = to_numpy(predicted_labels(logits, self.loss_fn.label_rule))
            labels = labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels
            return self.classes[labels] if label_values and self.classes is not None else labels
        return self._finite_rows(x, to_numpy(self.evaluate_outputs(x)))

    def _finite_rows(self, x, outputs):
        """``outputs`` when every row is finite; else a ValueError naming the rows of X whose
        outputs overflowed (a silent NaN probability or label 0 would be a wrong answer)."""
        xp = np if isinstance(outputs, np.ndarray) else self.backend.xp
        if bool(xp.isfinite(outputs).all()):
            return outputs
        bad = np.flatnonzero(~np.isfinite(to_numpy(outputs)).all(axis=1))
        shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
        largest = float(to_numpy(abs(x[self.backend.asarray(bad)]).max()))
        raise ValueError(f"the network's outputs are not finite for {bad.size} row(s) of X (rows {shown}): "
                         f"their arithmetic overflows {self.dtype.name} (largest |value| in them {largest:.3g}). "
                         "Scale the features, or use dtype='float64'.")

    def score(self, X, y) -> float:
        """Accuracy for classifiers; R^2 (averaged over outputs) for regressors."""
        x = self.features(X)      # X is checked (and moved) once
        targets = self.validate_targets(y, x.shape[0])
        pred = self._predict_validated(x, label_values=False)
        if self.is_classifier:
            truth = labels_of(targets, self.loss_fn.label_rule)
            return accuracy(truth, pred.reshape(truth.shape))
        return r2_score(targets, pred)

    fit = fit     # gpunet.train.fit(net, X, y, ...) as a method: one signature, one docstring

    def save(self, path):
        """Write architecture and parameters to a ``.npz`` file (atomically, no pickle)."""
        with self._guard.reading():
            params = to_numpy(self.flat_params).copy()
        io.save(path, self.config(), params)

    @classmethod
    def load(cls, path, backend=None):
        """Rebuild a model written by ``save``, on ``backend`` (None: the active one)."""
        return io.load(path, lambda config: cls(**config, backend=backend))

    def set_flat_params(self, values):
        """Replace all parameters from a flat array of length ``n_params`` (checked)."""
        host = np.asarray(to_numpy(values))
        if host.shape != (self.n_params,):
            raise ValueError(f"expected {self.n_params} parameters, got shape {host.shape}")
        if host.dtype.kind != "f":
            raise TypeError(f"parameters must be floating point, got {host.dtype}")
        if not np.isfinite(host).all():
            raise ValueError("parameters contain NaN or infinite values")
        if self._fit_claim.held_by_other_thread:
            raise RuntimeError("another thread is training this model (fit); set its parameters after fit returns")
        with self._guard.writing():
            self.flat_params[...] = self.backend.asarray(host.astype(self.dtype))

