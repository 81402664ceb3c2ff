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
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import checkpoint, io
from .activations import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS, Activation, get_activation
from .backend import NumpyBackend, resolve_backend, to_numpy, use_backend
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
_SUMMARY_NAMES_SHOWN = 5  # classes or feature names summary() lists before "..."


def _bytes_text(n: int) -> str:
    """``"76,840 bytes (75.0 KiB)"``: exact, then in KiB, MiB, ... once it is that large."""
    size, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n:,} bytes" + ("" if unit == "bytes" else f" ({size:.1f} {unit})")


def _first_few(values) -> str:
    shown = ", ".join(str(v) for v in values[:_SUMMARY_NAMES_SHOWN])
    return shown + (", ..." if len(values) > _SUMMARY_NAMES_SHOWN else "")


def _activation_text(act) -> str:
    """The activation's name, with its parameters when it has any: ``sigmoid(c=2.0, beta=0.5)``."""
    params = ", ".join(f"{k}={v!r}" for k, v in act.config().items() if k != "name")
    return f"{act.name}({params})" if params else act.name


class MLP:
    """A fully connected network trained by explicit backpropagation.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``[n_0, n_1, ..., n_L]``, input first (at least two).
    activation : str, Activation or sequence of them, default "relu"
        The hidden activation: a name (``"sigmoid"``, ``"tanh"``, ``"relu"``,
        ``"leaky_relu"``, ``"identity"``), an ``Activation`` such as ``Sigmoid(c=2, beta=0.5)``
        or ``LeakyReLU(0.1)``, or a list with one per hidden layer.
    output : str or Activation, default "softmax"
        ``"softmax"``, ``"sigmoid"``, ``"tanh"``, ``"identity"`` or ``"exp"`` (or an ``Activation``).
    loss : str, default "cross_entropy"
        ``"cross_entropy"`` (needs a softmax output; a classifier with one class per example),
        ``"binary_cross_entropy"`` (needs a sigmoid output; K independent yes/no labels: binary or
        multilabel classification), ``"poisson"`` (needs an ``"exp"`` output; counts or rates)
        or ``"mse"`` (a regressor with any output).
    init : str, default "glorot_uniform"
        ``"glorot_uniform"``, ``"glorot_normal"``, ``"he_uniform"`` or ``"he_normal"``.
    weight_decay : float, default 0.0
        lambda of the L2 regulariser (lambda/2) sum ||W_l||^2; biases are not decayed.
    dtype : {"float32", "float64"}, default "float32"
        The parameters' and the arithmetic's precision.
    seed : int or None, default None
        An int makes initialisation and ``fit``'s shuffling reproducible bit for bit.
    backend : str, NumpyBackend or None, default None
        None (the active backend, see ``gpunet.use_backend``), a backend name or object.
        The model keeps it: its arrays live there whatever is selected later.
    classes : array-like or None, default None
        The label values of a ``cross_entropy`` classifier's outputs, in output order
        (numbers or strings). Without it, labels are the output indices 0..n_L-1, unless the
        first ``fit`` sees strings (or booleans): then the sorted distinct values. ``predict``
        returns label values; ``fit`` and ``score`` take them.
    feature_names : sequence of str or None, default None
        The input columns' names, learned from the first ``fit`` on a pandas DataFrame with
        string column names; a DataFrame given later must have those columns (they are taken
        in this order).
    metadata : dict or None, default None
        JSON-able, kept with the model and saved in its file (the command line notes its
        target column and data file there).
    standardize : bool, default False
        True makes the first ``fit`` learn each feature's mean and standard deviation
        (``input_scaling``) and every input from then on (fit, predict, score, forward,
        validation data) standardised with them, so the model, and its file, take raw data.
        A later ``fit`` keeps the scaling it has.
    input_scaling : InputScaling, dict or None, default None
        A ``gpunet.scaling.InputScaling`` (or its ``config()`` dict) to apply from the start
        (implies ``standardize``).

    Raises
    ------
    TypeError
        For an argument of the wrong kind: ``sizes`` not a list of widths, ``init`` not a
        name, ``metadata`` not a JSON-able dict, ``classes`` for a loss without classes.
    ValueError
        For a value out of range: fewer than two widths or one below 1, an unknown
        activation, loss, initialiser or dtype, a loss whose output this is not, classes,
        feature names or an input scaling that do not match the widths.

    Notes
    -----
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

    def __init__(self, sizes: Sequence[int], activation: str | Activation | Sequence[str | Activation] = "relu",
                 output: str | Activation = "softmax", loss: str = "cross_entropy", init: str = "glorot_uniform",
                 weight_decay: float = 0.0, dtype: DTypeLike = "float32", seed: int | None = None,
                 backend: str | NumpyBackend | None = None, classes: ArrayLike | None = None,
                 feature_names: Sequence[str] | None = None, metadata: dict | None = None, standardize: bool = False,
                 input_scaling: InputScaling | dict | None = None) -> None:
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

    def copy(self, dtype: DTypeLike | None = None) -> MLP:
        """A new model with this architecture and a copy of the parameters, on the same backend.

        Its shuffling starts from the seed.

        Parameters
        ----------
        dtype : {"float32", "float64"} or None, default None
            The copy's dtype (the parameters converted to it); None keeps this model's.

        Returns
        -------
        MLP
            The copy.
        """
        config = self.config()
        if dtype is not None:
            config["dtype"] = check_float_dtype(dtype).name
        twin = MLP(**config, backend=self.backend)
        with self._guard.reading():
            twin.set_flat_params(to_numpy(self.flat_params).astype(twin.dtype))
        return twin

    # ---- public properties ------------------------------------------------------------
    @property
    def params(self) -> list[Any]:
        """``[W_1, b_1, ..., W_L, b_L]``: views into the flat buffer (writes go to the model)."""
        return self.layout.interleaved(self.flat_params)

    @property
    def n_params(self) -> int:
        """Number of parameters: every weight and bias."""
        return self.layout.n_params

    @property
    def n_weights(self) -> int:
        """Entries of the flat buffer's weights prefix (the decayed part)."""
        return self.layout.n_weights

    @property
    def n_layers(self) -> int:
        """Number of weight layers, ``len(sizes) - 1``."""
        return len(self.sizes) - 1

    @property
    def is_classifier(self) -> bool:
        """Whether the loss is a classifier's (cross-entropy or binary cross-entropy)."""
        return self.loss_fn.is_classifier

    @property
    def activations(self) -> list[Activation]:
        """The activation of every layer, the output one last."""
        return [*self.hidden_activations, self.output_activation]

    def config(self) -> dict:
        """Everything needed to rebuild this architecture: ``MLP(**net.config())``.

        Returns
        -------
        dict
            The constructor's arguments but ``backend``, JSON-able.
        """
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

    def summary(self, batch_size: int | None = None) -> str:
        """A table of the layers and the model's totals, for ``print(net.summary())``.

        One row per layer (its widths, activation, weight and bias shapes, parameters); then
        the parameters' count and bytes, the dtype, backend and loss, and the classes, feature
        names and input scaling where the model has them.

        Parameters
        ----------
        batch_size : int or None, default None
            Adds the memory of a batch of that many rows: the activations ``A_1 .. A_L`` of a
            forward pass, and the buffers of a training step (activations, as many deltas, and
            the gradients); an optimizer's state comes on top.

        Returns
        -------
        str
            The lines of the summary, without a final newline.

        Raises
        ------
        TypeError, ValueError
            When ``batch_size`` is not a positive integer.
        """
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, low=1)
        itemsize = self.dtype.itemsize
        header = ("layer", "in -> out", "activation", "weights", "biases", "parameters")
        rows = [(str(l), f"{n_in} -> {n_out}", _activation_text(act), str((n_in, n_out)), str((n_out,)),
                 f"{n_in * n_out + n_out:,}")
                for l, (n_in, n_out, act) in enumerate(zip(self.sizes[:-1], self.sizes[1:], self.activations), 1)]
        widths = [max(len(row[j]) for row in (header, *rows)) for j in range(len(header))]
        numeric = (0, 5)      # the layer number and the parameter count line up on the right

        def table_line(cells):
            return "  ".join(cell.rjust(width) if j in numeric else cell.ljust(width)
                             for j, (cell, width) in enumerate(zip(cells, widths))).rstrip()

        lines = [f"MLP {' -> '.join(map(str, self.sizes))}", table_line(header), *map(table_line, rows),
                 f"parameters: {self.n_params:,}, taking {_bytes_text(self.n_params * itemsize)}",
                 f"dtype: {self.dtype.name}, backend: {self.backend.name}, loss: {self.loss_fn.name}"]
        if self.classes is not None:
            lines.append(f"classes: {len(self.classes)} ({_first_few(self.classes.tolist())})")
        if self.feature_names is not None:
            lines.append(f"feature names: {len(self.feature_names)} ({_first_few(self.feature_names)})")
        if self.input_scaling is not None:
            lines.append(f"input scaling: each of the {self.sizes[0]} features standardised with its learned "
                         "mean and scale")
        elif self.standardize:
            lines.append("input scaling: learned by the first fit (standardize=True)")
        if batch_size is not None:
            # the buffers of a Workspace: A_l and delta_l of (batch_size, n_l) each, and the flat gradients
            activations = batch_size * sum(self.sizes[1:]) * itemsize
            step = 2 * activations + self.n_params * itemsize
            lines.append(f"batch of {batch_size:,}: forward pass activations take {_bytes_text(activations)}, "
                         f"a training step's buffers {_bytes_text(step)}")
        return "\n".join(lines)

    # ---- the training interface: validated backend arrays, no host reads ------------------
    def validate_features(self, X: ArrayLike, name: str = "X", feature_names: Sequence[str] | None = None,
                          input_scaling: InputScaling | None = None, convert: bool = True) -> np.ndarray:
        """X checked as this network's input: real, finite, in range for the dtype.

        A DataFrame's columns are taken by name when the model has ``feature_names`` (or
        ``feature_names`` is given), and the features standardised with the model's
        ``input_scaling`` (or the one given).

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            An array, a memory map, a list or a DataFrame.
        name : str, default "X"
            What error messages call it.
        feature_names : sequence of str or None, default None
            Column names to take a DataFrame's columns by; None: the model's.
        input_scaling : InputScaling or None, default None
            The standardisation to apply; None: the model's.
        convert : bool, default True
            False checks a NumPy array (a memory map) in row chunks and returns it as it is,
            for ``batch_features`` to convert a batch at a time.

        Returns
        -------
        numpy.ndarray of shape (N, n_0)
            The host array, C-ordered in the model's dtype (X itself with ``convert=False``).

        Raises
        ------
        TypeError, ValueError
            Naming the problem: a wrong shape, a non-numeric or non-finite value, a value out
            of the dtype's range, a missing or extra DataFrame column.
        """
        names = self.feature_names if feature_names is None else feature_names
        if names is not None and frame_feature_names(X) is not None:
            X = select_frame_features(X, names, name=name)
        scaling = self.input_scaling if input_scaling is None else input_scaling
        return check_features(X, self.sizes[0], name=name, dtype=self.dtype, scaling=scaling, convert=convert)

    def batch_features(self, rows: np.ndarray, out: np.ndarray, input_scaling: InputScaling | None = None,
                       name: str = "X") -> np.ndarray:
        """Rows checked by ``validate_features(convert=False)``, converted into ``out``.

        Parameters
        ----------
        rows : numpy.ndarray of shape (R, n_0)
            Checked rows of features (a batch of a memory map's).
        out : numpy.ndarray of shape (R, n_0)
            Where they go, of the model's dtype.
        input_scaling : InputScaling or None, default None
            The standardisation to apply; None: the model's.
        name : str, default "X"
            What error messages call the data.

        Returns
        -------
        numpy.ndarray
            ``out``, standardised when there is a scaling.

        Raises
        ------
        ValueError
            When a standardised value is beyond the dtype's range.
        """
        scaling = self.input_scaling if input_scaling is None else input_scaling
        if scaling is None:
            np.copyto(out, rows, casting="unsafe")     # finite and in range: checked before
            return out
        scaling.transform(rows, out.dtype, out=out)
        if not np.isfinite(out).all():
            raise ValueError(f"{name} has values beyond the {out.dtype.name} range once standardised "
                             "with the model's input scaling")
        return out

    def validate_targets(self, y: ArrayLike, n_examples: int, name: str = "y",
                         classes: np.ndarray | None = None) -> np.ndarray:
        """y checked as the loss's targets for ``n_examples`` examples, on the host.

        Parameters
        ----------
        y : array-like
            Labels or targets, as ``fit`` takes them.
        n_examples : int
            The number of examples (rows of X) they are for.
        name : str, default "y"
            What error messages call them.
        classes : numpy.ndarray or None, default None
            Label values to encode as output indices; None: the model's.

        Returns
        -------
        numpy.ndarray
            Int64 labels (N,) or float64 one-hot rows (N, K) under cross-entropy, float64
            (N, K) otherwise.

        Raises
        ------
        TypeError, ValueError
            Naming the problem: a wrong length or shape, an unknown label, a value the loss
            does not take.
        """
        classes = self.classes if classes is None else classes
        if classes is not None:
            y = encode_labels(y, classes, name=name)
        return self.loss_fn.validate_targets(y, n_examples, self.sizes[-1], name=name, dtype=self.dtype)

    def learnable(self, X: ArrayLike, y: ArrayLike) -> Learned:
        """What a ``fit`` on (X, y) gives the model besides parameters, checked but not yet set.

        What the model has, or what these data tell: string labels, a DataFrame's string
        column names, with ``standardize`` the features' scaling. ``fit`` sets them once it
        trains.

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            Training features.
        y : array-like
            Training labels or targets.

        Returns
        -------
        Learned
            ``(classes, feature_names, input_scaling)``, each None where there is none.
        """
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

    def features(self, X: ArrayLike, name: str = "X") -> Any:
        """X validated (``validate_features``) and moved to the backend in the model's dtype.

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            Features.
        name : str, default "X"
            What error messages call them.

        Returns
        -------
        ndarray of shape (N, n_0)
            A backend array (NumPy or CuPy).
        """
        return self.backend.asarray(self.validate_features(X, name), dtype=self.dtype)

    def targets(self, y: ArrayLike, n_examples: int, name: str = "y") -> Any:
        """y validated (``validate_targets``) and moved to the backend.

        Parameters
        ----------
        y : array-like
            Labels or targets.
        n_examples : int
            The number of examples they are for.
        name : str, default "y"
            What error messages call them.

        Returns
        -------
        ndarray
            A backend array: int64 labels stay integers, the rest take the model's dtype.
        """
        return self.device_targets(self.validate_targets(y, n_examples, name))

    def device_targets(self, host_targets: np.ndarray) -> Any:
        """Validated host targets (``validate_targets``) on the backend.

        Parameters
        ----------
        host_targets : numpy.ndarray
            What ``validate_targets`` returned.

        Returns
        -------
        ndarray
            A backend array: int64 labels stay integers, the rest take the model's dtype.
        """
        if host_targets.dtype.kind == "i":
            return self.backend.asarray(host_targets)
        return self.backend.asarray(host_targets, dtype=self.dtype)

    @property
    def shuffle_rng(self) -> np.random.Generator:
        """The generator ``fit`` draws its shuffles from (seeded by ``seed``)."""
        return self._shuffle_rng

    def workspace(self, rows: int, gradients: bool = True) -> Workspace:
        """New buffers for passes over batches of exactly ``rows`` examples, owned by the caller.

        Parameters
        ----------
        rows : int
            Examples per batch.
        gradients : bool, default True
            Include a flat gradient buffer (for training).

        Returns
        -------
        Workspace
            Activations, deltas and (with ``gradients``) gradients.
        """
        return Workspace(self.backend, rows, self.sizes, self.dtype, self.layout, gradients=gradients)

    def training(self) -> AbstractContextManager[None]:
        """``with net.training():`` claims the model for one training run (``fit``).

        Returns
        -------
        context manager
            Holds the claim inside its ``with`` block; a second claim, from any thread,
            raises RuntimeError while the first lasts.
        """
        return self._fit_claim.claim()

    def reading_parameters(self) -> AbstractContextManager[None]:
        """``with net.reading_parameters():`` queue work that reads the parameters.

        Returns
        -------
        context manager
            No update lands in the middle of the work queued inside its ``with`` block (see
            ``gpunet.concurrency``).
        """
        return self._guard.reading()

    def writing_parameters(self) -> AbstractContextManager[None]:
        """``with net.writing_parameters():`` change the parameters in place (an optimizer step).

        Returns
        -------
        context manager
            Readers wait while it is held, and see the parameters before or after, never between.
        """
        return self._guard.writing()

    def forward_into(self, x: Any, ws: Workspace, leave_output_to_loss: bool = False) -> Any:
        """Fill ``ws.acts`` with A_1..A_L for the backend array x.

        Parameters
        ----------
        x : ndarray of shape (N, n_0)
            Validated features on the backend (``features``).
        ws : Workspace
            Buffers for N rows.
        leave_output_to_loss : bool, default False
            Stop the output layer at ``A_{L-1} W_L``: its bias (and activation) are applied
            by the loss, in its kernel (``loss_and_grad_into``).

        Returns
        -------
        ndarray of shape (N, n_L)
            ``ws.output``, holding what the loss takes: the logits when the softmax is folded
            into the cross-entropy, else the activated output.
        """
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

    def backward_into(self, x: Any, ws: Workspace) -> Any:
        """Fill ``ws.flat_grads`` from delta_L (``ws.deltas[-1]``) back to the input.

        Layer l's gradients are ``dW_l = A_{l-1}^T delta_l`` and ``db_l`` = the column sums of
        delta_l; ``delta_{l-1} = (delta_l W_l^T) * f'(A_{l-1})`` is computed together with its
        column sums, the bias gradient of layer l - 1 (one pass over it, one launch on a GPU).

        Parameters
        ----------
        x : ndarray of shape (N, n_0)
            A_0, the features of the forward pass.
        ws : Workspace
            The forward pass's buffers, with delta_L filled in and gradient buffers.

        Returns
        -------
        ndarray of shape (n_params,)
            ``ws.flat_grads``.
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

    def loss_and_grad_into(self, x: Any, targets: Any, ws: Workspace, row_scale: Any = None,
                           include_decay: bool = True, hits: Any = None) -> Any:
        """One batched forward and backward pass, the gradient left in ``ws.flat_grads``.

        ``ws.output`` ends holding what the loss took (the logits, bias included, where the
        loss folds the output in).

        Parameters
        ----------
        x : ndarray of shape (N, n_0)
            Features of the model's dtype, on the backend.
        targets : ndarray
            Int labels (N,), one-hot rows (N, K) or regression targets (N, K) of the model's
            dtype, on the backend (``targets``).
        ws : Workspace
            Buffers for N rows, with gradients.
        row_scale : ndarray of shape (N,) or None, default None
            Per-example factors of the loss, of the model's dtype (``row_scale_from_weights``).
        include_decay : bool, default True
            Put the L2 term in the loss and the gradient (``fit`` leaves it to the optimizer).
        hits : ndarray of shape (N, k) or None, default None
            A classifier's uint8 buffer that receives which predictions were right.

        Returns
        -------
        ndarray
            The mean loss, a 0-d backend array (no host sync).
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

    def evaluate_outputs(self, x: Any, logits: bool = False) -> Any:
        """Outputs for a validated backend array x, computed in chunks in this thread's buffers.

        Parameters
        ----------
        x : ndarray of shape (N, n_0)
            Validated features on the backend.
        logits : bool, default False
            Return what the loss takes (the logits, where it folds the output activation in)
            instead of the activated output.

        Returns
        -------
        ndarray of shape (N, n_L)
            A new backend array: the activated outputs (probabilities, means), or the logits.
        """
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

    def evaluate_loss(self, x: Any, targets: Any, include_decay: bool = True) -> Any:
        """Mean loss over backend arrays (x, targets), in chunks in this thread's buffers.

        Parameters
        ----------
        x : ndarray of shape (N, n_0)
            Validated features on the backend.
        targets : ndarray
            Validated targets on the backend (``targets``).
        include_decay : bool, default True
            Include the L2 term.

        Returns
        -------
        ndarray
            The mean loss, a 0-d backend array (no host sync).
        """
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
    def forward(self, X: ArrayLike) -> Any:
        """Network output after the output activation, on the backend.

        Rows whose arithmetic overflowed come back non-finite (inf or NaN), as computed, with no
        check (which would read back from a GPU); ``predict``, ``predict_proba`` and ``score``
        raise a ValueError naming such rows instead.

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            Features.

        Returns
        -------
        ndarray of shape (N, n_L)
            A backend array (NumPy or CuPy).
        """
        return self.evaluate_outputs(self.features(X))

    def loss(self, X: ArrayLike, y: ArrayLike) -> float:
        """Mean loss on (X, y), the L2 term included.

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            Features.
        y : array-like
            Labels or targets, as ``fit`` takes them.

        Returns
        -------
        float
            The loss (inf or NaN for inputs whose arithmetic overflows: not defined there).
        """
        x = self.features(X)
        targets = self.targets(y, x.shape[0])
        return float(self.evaluate_loss(x, targets, include_decay=True))

    def loss_and_grad(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
                      ) -> tuple[float, list[Any]]:
        """Mean loss (plus the L2 term) and its gradient on the batch (X, y).

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            Features.
        y : array-like
            Labels or targets, as ``fit`` takes them.
        sample_weight : array-like of shape (N,), optional
            Makes the mean a weighted one, ``sum(w l) / sum(w)``.

        Returns
        -------
        tuple of (float, list of ndarray)
            ``(loss, [dW_1, db_1, ..., dW_L, db_L])``, the gradients new arrays of the
            backend with the shapes of ``params``.
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

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities, for classifiers only.

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            Features.

        Returns
        -------
        numpy.ndarray of shape (N, n_L)
            Probabilities; under binary cross-entropy each column is one yes/no probability.

        Raises
        ------
        TypeError
            For a regressor.
        ValueError
            For rows whose outputs overflow the dtype (named), or X the model does not take.
        """
        if not self.is_classifier:
            raise TypeError("predict_proba is for classifiers (loss='cross_entropy' or 'binary_cross_entropy'); "
                            "use predict()")
        x = self.features(X)
        return self._finite_rows(x, to_numpy(self.evaluate_outputs(x)))

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predicted labels (classifiers) or outputs (regressors), as a NumPy array.

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            Features (a DataFrame's columns are taken by name once the model has names).

        Returns
        -------
        numpy.ndarray
            Class labels (N,) under cross-entropy (the label values of ``classes``); 0/1
            indicators (N, n_L) under binary cross-entropy ((N,) with one output); outputs
            (N, n_L) for regressors.

        Raises
        ------
        ValueError
            For rows whose outputs overflow the dtype (named), or X the model does not take.
        """
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

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Accuracy for classifiers; R^2 (averaged over outputs) for regressors.

        Parameters
        ----------
        X : array-like of shape (N, n_0)
            Features.
        y : array-like
            True labels or targets, as ``fit`` takes them.

        Returns
        -------
        float
            The accuracy or R^2.

        Raises
        ------
        ValueError
            For rows whose outputs overflow the dtype (named), or data the model does not take.
        """
        x = self.features(X)      # X is checked (and moved) once
        targets = self.validate_targets(y, x.shape[0])
        pred = self._predict_validated(x, label_values=False)
        if self.is_classifier:
            truth = labels_of(targets, self.loss_fn.label_rule)
            return accuracy(truth, pred.reshape(truth.shape))
        return r2_score(targets, pred)

    fit = fit     # gpunet.train.fit(net, X, y, ...) as a method: one signature, one docstring

    def to_onnx(self, path: str | os.PathLike, opset: int | None = None) -> Any:
        """Write the model as an ONNX graph that ONNX Runtime runs without gpunet.

        Input ``X`` (N, n_0) in the model's dtype; outputs ``probabilities`` and ``label``
        (what ``predict_proba`` and ``predict`` give) for a classifier, ``outputs`` for a
        regressor; the input scaling and label values are in the graph
        (``gpunet.onnx_export``).

        Parameters
        ----------
        path : str or path-like
            The ``.onnx`` file to write.
        opset : int, optional
            The ONNX opset (default 17).

        Returns
        -------
        onnx.ModelProto
            The model written.

        Raises
        ------
        ImportError
            The ``onnx`` package is not installed (``pip install 'gpunet[onnx]'``).
        """
        try:
            from .onnx_export import to_onnx
        except ImportError as exc:
            raise ImportError(f"MLP.to_onnx needs the onnx package ({exc}): pip install 'gpunet[onnx]'") from None
        return to_onnx(self, path, opset=opset)

    def save(self, path: str | os.PathLike) -> None:
        """Write architecture and parameters to a ``.npz`` file (atomically, no pickle).

        Parameters
        ----------
        path : str or path-like
            The file to write.
        """
        with self._guard.reading():
            params = to_numpy(self.flat_params).copy()
        io.save(path, self.config(), params)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | NumpyBackend | None = None) -> MLP:
        """Rebuild a model written by ``save`` (or the model of a ``fit``'s checkpoint).

        Parameters
        ----------
        path : str or path-like
            The model file.
        backend : str, NumpyBackend or None, default None
            Where the model's arrays live; None: the active backend.

        Returns
        -------
        MLP
            The model, with its parameters, classes, feature names and input scaling.

        Raises
        ------
        ValueError
            When the file is not a readable gpunet model (every field is checked).
        """
        if checkpoint.is_checkpoint(path):        # a fit's checkpoint: its model
            config, params = checkpoint.load_model_parts(path)
            try:
                net = cls(**config, backend=backend)
                net.set_flat_params(params)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path!s} is not a readable gpunet checkpoint: its model is not valid ({exc})") \
                    from None
            return net
        return io.load(path, lambda config: cls(**config, backend=backend))

    def set_flat_params(self, values: ArrayLike) -> None:
        """Replace all parameters from a flat array (checked), as one guarded write.

        Parameters
        ----------
        values : array-like of shape (n_params,)
            Finite floating-point values, laid out ``[W_1 .. W_L, b_1 .. b_L]``.

        Raises
        ------
        ValueError
            For another shape, or a NaN or infinite value.
        TypeError
            For values that are not floating point.
        RuntimeError
            While another thread trains the model.
        """
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

