"""scikit-learn estimators around ``gpunet.MLP``: ``MLPClassifier`` and ``MLPRegressor``.

A drop-in for ``sklearn.neural_network``: the same parameters, fitted attributes and
semantics as scikit-learn 1.9's estimators (scikit-learn's own ``test_mlp.py`` runs against
them, ``tests/test_sklearn_suite.py``), with the network computed by gpunet, on NumPy or on
a GPU through CuPy (``backend="cupy"``). They pass ``check_estimator`` and work in
``Pipeline``, ``GridSearchCV`` and ``cross_val_score``.

What follows scikit-learn: solvers "sgd", "adam" and "lbfgs" (SciPy's L-BFGS-B over the flat
parameter buffer; on a GPU only that vector crosses per iteration), ``learning_rate``
constant / invscaling / adaptive with ``power_t``, ``tol`` and ``n_iter_no_change`` (``np.inf``
too), early stopping on a held-out split that keeps the best epoch's weights, ``n_iter_`` per
fit, ``t_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``ConvergenceWarning``,
``verbose`` lines on stdout; binary classification with one logistic unit, multilabel (2-D
indicator y) with logistic units, multiclass with a softmax; ``loss="poisson"`` for the
regressor (an exp output); sparse X (CSR/CSC, densified one minibatch at a time); float32 X
training float32 parameters; settable ``coefs_``/``intercepts_``; the initialisation
(uniform, Glorot's bound, factor 2 for the logistic) drawn from ``random_state``.

The estimators' docstrings list the deliberate differences from scikit-learn's.

Needs scikit-learn (``pip install 'gpunet[data]'``), which brings SciPy; ``import gpunet``
never imports either.
"""
from __future__ import annotations

import copy
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.optimize
import scipy.sparse
from numpy.typing import ArrayLike, DTypeLike
from sklearn import neural_network
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .activations import ACTIVATIONS, HIDDEN_ACTIVATIONS
from .backend import to_numpy
from .mlp import MLP
from .losses import row_scale_from_weights
from .optim import SGD, Adam, AdamW, RMSprop
from .schedules import CosineDecay, LinearWarmup, Schedule
from .distributed import Communicator, fingerprint, params_hash, shard_bounds
from .train import TrainingDiverged, TrainingStep, batches, rank_shards, with_empty_shards
from .validation import check_float_dtype, check_real, check_sample_weight

__all__ = ["MLPClassifier", "MLPRegressor"]

# gpunet's hidden activations, and their aliases (scikit-learn's "logistic" is the sigmoid)
_ACTIVATIONS = {**{name: name for name in HIDDEN_ACTIVATIONS},
                **{alias: name for name in HIDDEN_ACTIVATIONS for alias in ACTIVATIONS[name].aliases}}
_STOCHASTIC = ("sgd", "adam", "adamw", "rmsprop")
_SOLVERS = (*_STOCHASTIC, "lbfgs")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")
_SCHEDULES = ("cosine", "warmup_cosine")
# scikit-learn's name of an output activation -> gpunet's output and the loss with that link
_OUTPUTS = {"softmax": ("softmax", "cross_entropy"), "logistic": ("sigmoid", "binary_cross_entropy"),
            "identity": ("identity", "mse"), "exp": ("exp", "poisson")}
_CHUNK = 4096          # rows densified or evaluated at a time outside minibatches
# the hidden activations scikit-learn's MLPs and gpunet's share (scikit-learn has no leaky ReLU)
_SKLEARN_TO_GPUNET_ACTIVATION = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_GPUNET_TO_SKLEARN_ACTIVATION = {ours: theirs for theirs, ours in _SKLEARN_TO_GPUNET_ACTIVATION.items()}
_SKLEARN_SOLVERS = ("lbfgs", "sgd", "adam")
# what a fit records besides the network: carried over by to_sklearn and from_sklearn
_FIT_RECORD = ("n_iter_", "t_", "loss_", "loss_curve_", "best_loss_", "validation_scores_",
               "best_validation_score_", "feature_names_in_")
# the parameters of the placeholder fit a conversion makes (one quiet, deterministic iteration)
_PLACEHOLDER_FIT = {"max_iter": 1, "early_stopping": False, "warm_start": False, "verbose": False,
                    "random_state": 0}
_DIVERGED = ("Solver produced non-finite parameter weights. The input data may contain large values and "
             "need to be preprocessed.")

# the regressor's parameter only: the classifier's docstring leaves it out
_REGRESSOR_LOSS_DOC = """    loss : {"squared_error", "poisson"}, default "squared_error" (regressor only)
        "poisson" fits counts with an exp output (half the Poisson deviance).
"""

_PARAMETERS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : int or tuple of ints, default (100,)
        Widths of the hidden layers; ``()`` gives a linear model.
    activation : {"relu", "tanh", "logistic", "identity", "leaky_relu"}, default "relu"
        Hidden activation ("sigmoid" is accepted for "logistic").
    solver : {"adam", "sgd", "lbfgs", "adamw", "rmsprop"}, default "adam"
        The optimizer: gpunet's Adam, SGD, AdamW or RMSprop over minibatches, or SciPy's
        L-BFGS-B over the whole data (``max_iter`` iterations, ``max_fun`` loss evaluations,
        ``tol`` on the projected gradient).
    alpha : float, default 1e-4
        L2 penalty, scaled as scikit-learn does: ``(alpha / (2 * batch)) * sum ||W||^2`` added
        to the mean loss of a batch. Biases are not penalised.
    batch_size : int or "auto", default "auto"
        Minibatch size; "auto" is ``min(200, n_samples)``; larger values are clipped (with a warning).
    learning_rate : {"constant", "invscaling", "adaptive"}, default "constant"
        The SGD solver's schedule: invscaling sets ``learning_rate_init / (t + 1) ** power_t``
        after each epoch (t: samples seen); adaptive divides the rate by 5 whenever the loss or
        validation score stalls for ``n_iter_no_change`` epochs, and stops below 1e-6.
    learning_rate_init, power_t : default 1e-3, 0.5
    max_iter : int, default 200
        Epochs of the stochastic solvers; iterations of L-BFGS.
    max_fun : int, default 15000
        Loss and gradient evaluations of L-BFGS at most.
""" + _REGRESSOR_LOSS_DOC + """    shuffle : bool, default True
    random_state : int, RandomState or None
        Seeds initialisation, shuffling and the validation split.
    tol, n_iter_no_change : default 1e-4, 10
        Stop (or, adaptive, cut the rate) when the training loss has not fallen by ``tol``, or
        with ``early_stopping`` the validation score not risen by ``tol``, for
        ``n_iter_no_change`` epochs in a row (``np.inf``: never).
    momentum, nesterovs_momentum : default 0.9, True
        SGD momentum (momentum also applies to "rmsprop").
    beta_1, beta_2, epsilon : default 0.9, 0.999, 1e-8
        Adam's moment decay rates and epsilon (epsilon also for RMSprop).
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data (stratified for binary
        classification, as scikit-learn does), score it after every epoch and keep the
        weights of the best epoch.
    validation_fraction : float, default 0.1
    verbose : bool or int, default False
        Print scikit-learn's lines (``Iteration N, loss = ...``) to stdout.
    warm_start : bool, default False
        ``fit`` continues from the fitted network (same layer sizes; for a classifier the same
        classes) with a fresh optimizer; ``n_iter_`` counts the epochs of this fit, ``t_`` runs on.
    lr_schedule : None, "cosine", "warmup_cosine" or a ``gpunet.schedules.Schedule`` (gpunet)
        A per-epoch learning-rate schedule over ``max_iter`` epochs, with ``learning_rate="constant"``.
    weight_decay : float, default 0.01 (gpunet)
        AdamW's decoupled weight decay (``solver="adamw"`` only).
    clip_norm : float or None (gpunet)
        Rescale a batch gradient whose global L2 norm exceeds it.
    dtype : None, "float32" or "float64" (gpunet)
        Arithmetic precision; None follows X (float32 stays float32, anything else float64).
    backend : {None, "auto", "numpy", "cupy"}, default None (gpunet)
        Array backend of the model; None uses gpunet's active backend.
    communicator : gpunet.distributed.Communicator or None, default None (gpunet)
        Fit data-parallel on the ranks ``mpiexec`` started, each with the same data and
        parameters: the stochastic solvers shard every minibatch across the ranks and sum the
        gradient once a step, L-BFGS sums its loss and gradient over the ranks' chunks; every
        rank ends with the single-process fit's coefficients (to rounding). Rank 0 alone
        prints (``verbose``).

    ``partial_fit`` trains one epoch over the given data and keeps the optimizer's state
    between calls (the classifier's first call must name every class in ``classes``; not
    with early stopping or L-BFGS).

    Fitted attributes: ``coefs_``, ``intercepts_`` (NumPy arrays; assigning them changes the
    model), ``n_features_in_``, ``n_outputs_``, ``n_layers_``, ``out_activation_``,
    ``n_iter_``, ``t_``, ``loss_``, ``loss_curve_``, ``best_loss_``, ``validation_scores_``,
    ``best_validation_score_`` (None where they do not apply), and ``net_``, the ``gpunet.MLP``.

    Differences from ``sklearn.neural_network``, all deliberate: the stochastic solvers are
    gpunet's optimizers (PyTorch's formulation: Adam adds epsilon after the bias correction,
    SGD's momentum buffer holds gradients and the current rate multiplies it, where
    scikit-learn's holds past steps taken at past rates); ``loss_`` and ``loss_curve_``
    add the L2 penalty at each epoch's last weights, not at every minibatch's; shuffles and
    validation splits draw from ``random_state`` in another order. So "sgd" and "adam" fits
    are close to scikit-learn's, not equal; L-BFGS (deterministic) lands on scikit-learn's
    weights to rounding. Extensions: the solvers "adamw" and "rmsprop", ``lr_schedule``,
    ``weight_decay``, ``clip_norm``, ``dtype`` and ``backend``.
"""


class _LearningRate:
    """scikit-learn's learning-rate rules around a gpunet optimizer. ``learning_rate`` is the
    rate in force (scikit-learn's tests read it from ``estimator._optimizer``)."""

    def __init__(self, optimizer, rule, initial, power_t):
        self.optimizer, self.rule, self.initial, self.power_t = optimizer, rule, float(initial), float(power_t)

    @property
    def learning_rate(self) -> float:
        return self.optimizer.lr

    @learning_rate.setter
    def learning_rate(self, value):
        self.optimizer.lr = value

    def iteration_ends(self, samples_seen):
        if self.rule == "invscaling":
            self.learning_rate = self.initial / (samples_seen + 1) ** self.power_t

    def trigger_stopping(self, message, verbose) -> bool:
        """Whether to stop after ``n_iter_no_change`` stalled epochs (adaptive: cut the rate
        by 5 instead, until it is below 1e-6)."""
        if self.rule != "adaptive":
            if verbose:
                print(message + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(message + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(message + f" Setting learning rate to {self.learning_rate:f}")
        return False


class _Rows:
    """The training rows of one fit on the backend: dense X moved there once, sparse X kept on
    the host and densified one minibatch at a time. Yields what ``TrainingStep`` takes."""

    def __init__(self, net, X, targets, weights):
        be = net.backend
        self.net, self.n = net, X.shape[0]
        self.sparse = scipy.sparse.issparse(X)
        self.X = X.tocsr() if self.sparse else net.features(X)
        self.targets = net.targets(targets, self.n)
        self.host_weights = None if weights is None else weights / weights.max()
        self.weights = None if weights is None else be.asarray(self.host_weights, dtype=net.dtype)
        self.weight_total = float(self.n if weights is None else (weights / weights.max()).sum())

    def rank_batches(self, order, batch_size, comm, host_weights):
        """This rank's shards of the global batches (``gpunet.train.rank_shards``) and their
        shares; an empty shard comes as ``(None,) * 4``."""
        mine, shares = rank_shards(order, batch_size, comm, host_weights)
        sizes = [m.shape[0] for m in mine if m.shape[0]]
        return with_empty_shards(self.batches(np.concatenate(mine), batch_size, sizes), mine), shares

    def batches(self, order, batch_size, sizes=None):
        """The minibatches in ``order``: ``batch_size`` rows each, or ``sizes[i]`` the i-th."""
        be, net = self.net.backend, self.net
        if not self.sparse:
            yield from batches(be, self.X, self.targets, self.weights, order, batch_size, sizes=sizes)
            return
        if sizes is None:               # sparse rows are sliced here: the batches' sizes are needed
            sizes = [min(batch_size, order.shape[0] - start) for start in range(0, order.shape[0], batch_size)]
        dense = batches(be, self.targets, self.targets, self.weights, order, batch_size, sizes=sizes)
        start = 0
        for rows, (targets, _, row_scale, batch_weight) in zip(sizes, dense):
            x = self.X[order[start:start + rows]].toarray()
            start += rows
            yield be.asarray(x, dtype=net.dtype), targets, row_scale, batch_weight


class _Objective:
    """L-BFGS's loss and gradient over all the rows, on the model's backend: the data moves
    there once (dense X; sparse X is densified a chunk at a time on each evaluation), and per
    evaluation only the flat parameter vector goes in and the flat gradient comes out."""

    def __init__(self, net, X, targets, weights, communicator=None):
        be = net.backend
        self.net = net
        self.comm = communicator
        n = X.shape[0]
        total = float(n if weights is None else np.sum(weights))
        self.chunks = []
        # data-parallel: this rank's rows only; the ranks' parts are summed in __call__
        first, last = (0, n) if communicator is None else shard_bounds(n, communicator.size, communicator.rank)
        for start in range(first, last, _CHUNK):
            rows = slice(start, min(start + _CHUNK, last))
            x = X[rows].tocsr() if scipy.sparse.issparse(X) else net.features(X[rows])
            m = x.shape[0]
            w = None if weights is None else np.asarray(weights[rows], dtype=np.float64)
            share = (m if w is None else w.sum()) / total
            if share == 0:
                continue
            row_scale = None if w is None else be.asarray(row_scale_from_weights(w), net.dtype)
            self.chunks.append((x, net.targets(targets[rows], m), row_scale, share, net.workspace(m)))

    def __call__(self, packed):
        net = self.net
        be = net.backend
        net.set_flat_params(np.asarray(packed).astype(net.dtype))
        loss, grad = 0.0, be.zeros(net.n_params, np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            for x, targets, row_scale, share, ws in self.chunks:
                if scipy.sparse.issparse(x):
                    x = be.asarray(x.toarray(), dtype=net.dtype)
                loss = loss + share * net.loss_and_grad_into(x, targets, ws, row_scale, include_decay=False)
                grad += share * ws.flat_grads
            if self.comm is not None:
                return self._summed_over_ranks(float(loss), to_numpy(grad))
            weights = net.flat_params[:net.n_weights]
            loss = loss + 0.5 * net.weight_decay * net.backend.sumsq(weights)
            grad[:net.n_weights] += net.weight_decay * weights
        return float(loss), to_numpy(grad)

    def _summed_over_ranks(self, loss, grad):
        """The ranks' data parts summed (on the host, over MPI), then the L2 term once."""
        net = self.net
        host_comm = getattr(self.comm, "mpi", self.comm)       # NCCL's side channel sums host arrays
        packed = np.concatenate([[loss], grad])
        host_comm.allreduce_sum(packed, None)
        loss, grad = float(packed[0]), packed[1:]
        weights = to_numpy(net.flat_params[:net.n_weights]).astype(np.float64)
        loss += 0.5 * net.weight_decay * float(weights @ weights)
        grad[:net.n_weights] += net.weight_decay * weights
        return loss, grad


# ---- conversions between these estimators and scikit-learn's own -------------------------------------
def _placeholder_rows(fitted):
    """(X, y): a few rows from which a fit gives an estimator with the outputs of ``fitted``
    (either library's, read through public attributes): one row per class (an identity matrix
    of labels for multilabel y), or two rows of a regressor's ``n_outputs_`` targets; X in the
    dtype of ``fitted``'s coefficients."""
    coefs = [np.asarray(c) for c in fitted.coefs_]
    dtype = np.float32 if all(c.dtype == np.float32 for c in coefs) else np.float64
    if is_classifier(fitted):
        if fitted.out_activation_ == "logistic" and fitted.n_outputs_ > 1:      # multilabel
            y = np.eye(fitted.n_outputs_, dtype=np.int64)
        else:
            y = np.asarray(fitted.classes_)
    else:
        y = np.ones(2) if fitted.n_outputs_ == 1 else np.ones((2, fitted.n_outputs_))
    return np.zeros((len(y), coefs[0].shape[0]), dtype=dtype), y


def _converted(source, target):
    """``target`` (an unfitted estimator of the other library, with ``source``'s parameters)
    fitted as a copy of the fitted ``source``.

    A one-iteration fit on placeholder rows gives ``target`` the fitted state its library keeps
    privately (label binarizer, output activation, optimizer, counters) through its public
    API; its coefficients and the fit's record are then replaced by ``source``'s."""
    X, y = _placeholder_rows(source)
    kept = {name: target.get_params()[name] for name in _PLACEHOLDER_FIT}
    target.set_params(**_PLACEHOLDER_FIT)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # the placeholder fit's ConvergenceWarning, batch_size clipping
            target.fit(X, y)
    finally:
        target.set_params(**kept)
    if target.out_activation_ != source.out_activation_ or target.n_layers_ != source.n_layers_:
        raise ValueError(f"the converted estimator has the output {target.out_activation_!r} and "
                         f"{target.n_layers_} layers, the original {source.out_activation_!r} and "
                         f"{source.n_layers_}")
    target.coefs_ = [np.array(c, copy=True) for c in source.coefs_]
    target.intercepts_ = [np.array(b, copy=True) for b in source.intercepts_]
    for name in _FIT_RECORD:
        if hasattr(source, name):
            setattr(target, name, copy.deepcopy(getattr(source, name)))
    return target


class _BaseMLP(BaseEstimator):
    """Shared constructor, fit and prediction of the two estimators (``_PARAMETERS_DOC``)."""

    def __init__(self, hidden_layer_sizes: int | Sequence[int] = (100,), activation: str = "relu", *,
                 solver: str = "adam", alpha: float = 1e-4, batch_size: int | str = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 1e-3, power_t: float = 0.5,
                 max_iter: int = 200, shuffle: bool = True, random_state: int | np.random.RandomState | None = None,
                 tol: float = 1e-4, verbose: bool | int = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False, validation_fraction: float = 0.1,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int | float = 10,
                 max_fun: int = 15000, lr_schedule: str | Schedule | None = None, weight_decay: float = 0.01,
                 clip_norm: float | None = None, dtype: DTypeLike | None = None, backend: str | None = None,
                 communicator: Any = None) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        self.dtype = dtype
        self.backend = backend
        self.communicator = communicator

    # ---- hyper-parameters, checked at fit as scikit-learn asks ------------------------------
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = (sizes,)
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"hidden_layer_sizes must be an int or a tuple of ints, got {sizes!r}")
        sizes = tuple(sizes)
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must hold positive integers, got {sizes!r}")
        return [int(s) for s in sizes]

    def _activation_name(self):
        if not isinstance(self.activation, str) or self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {self.activation!r}")
        return _ACTIVATIONS[self.activation]

    def _check_params(self):
        for name, options in (("solver", _SOLVERS), ("learning_rate", _LEARNING_RATES)):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}, got {getattr(self, name)!r}")
        for name in ("max_iter", "max_fun"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_real("alpha", self.alpha, low=0.0)
        check_real("tol", self.tol, low=0.0)
        check_real("power_t", self.power_t, low=0.0)
        stall = self.n_iter_no_change
        if not (stall == np.inf or (isinstance(stall, numbers.Integral) and not isinstance(stall, bool)
                                    and stall >= 1)):
            raise ValueError(f"n_iter_no_change must be a positive integer or np.inf, got {stall!r}")
        for name in ("shuffle", "warm_start", "early_stopping", "nesterovs_momentum"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise TypeError(f"verbose must be a bool or an int, got {self.verbose!r}")
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {fraction!r}")
        if self.clip_norm is not None:
            check_real("clip_norm", self.clip_norm, low=0.0, low_open=True)
        if self.communicator is not None and not isinstance(self.communicator, Communicator):
            raise TypeError(f"communicator must be a gpunet.distributed.Communicator, got "
                            f"{type(self.communicator).__name__}")

    def _batch(self, n):
        if isinstance(self.batch_size, str) and self.batch_size == "auto":
            return min(200, n)
        if not isinstance(self.batch_size, numbers.Integral) or isinstance(self.batch_size, bool) \
                or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        return min(int(self.batch_size), n)

    def _new_optimizer(self):
        """A fresh gpunet optimizer with scikit-learn's learning-rate rule around it."""
        lr = self.learning_rate_init
        if self.solver == "sgd":
            optimizer = SGD(lr=lr, momentum=self.momentum, nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        elif self.solver == "rmsprop":
            optimizer = RMSprop(lr=lr, momentum=self.momentum, eps=self.epsilon)
        elif self.solver == "adamw":
            optimizer = AdamW(lr=lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon, weight_decay=self.weight_decay)
        else:
            optimizer = Adam(lr=lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        rule = self.learning_rate if self.solver == "sgd" else "constant"
        return _LearningRate(optimizer, rule, lr, self.power_t)

    def _schedule(self):
        if self.lr_schedule is None or isinstance(self.lr_schedule, Schedule):
            schedule = self.lr_schedule
        elif self.lr_schedule in _SCHEDULES:
            schedule = CosineDecay() if self.lr_schedule == "cosine" else \
                LinearWarmup(max(1, self.max_iter // 20), then=CosineDecay())
        else:
            raise ValueError(f"lr_schedule must be None, one of {', '.join(_SCHEDULES)} or a "
                             f"gpunet.schedules.Schedule, got {self.lr_schedule!r}")
        if schedule is not None and self.learning_rate != "constant":
            raise ValueError(f"lr_schedule replaces learning_rate={self.learning_rate!r}: use one of them")
        return schedule

    def _model_dtype(self, X):
        if self.dtype is not None:
            return check_float_dtype(self.dtype)
        return np.dtype(np.float32) if X.dtype == np.float32 else np.dtype(np.float64)

    # ---- the network and its parameters as NumPy arrays ---------------------------------------
    def _output(self):
        raise NotImplementedError

    def _new_network(self, layer_units, dtype):
        """A gpunet MLP initialised as scikit-learn initialises: weights and biases uniform in
        +-sqrt(factor / (fan_in + fan_out)), factor 2 for the logistic activation, else 6."""
        factor = 2.0 if self._activation_name() == "sigmoid" else 6.0
        coefs, intercepts = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):   # scikit-learn's draws, in its order
            bound = np.sqrt(factor / (fan_in + fan_out))
            coefs.append(self._random_state.uniform(-bound, bound, (fan_in, fan_out)))
            intercepts.append(self._random_state.uniform(-bound, bound, fan_out))
        output, loss = _OUTPUTS[self.out_activation_]
        net = MLP(layer_units, activation=self._activation_name(), output=output, loss=loss, dtype=dtype,
                  seed=int(self._random_state.randint(0, 2 ** 31 - 1)), backend=self.backend)
        net.set_flat_params(np.concatenate([a.ravel() for a in coefs + intercepts]).astype(dtype))
        return net

    def _pull_parameters(self):
        """``coefs_`` and ``intercepts_`` from the network (host copies)."""
        self.coefs_ = [to_numpy(w).copy() for w in self.net_.weights]
        self.intercepts_ = [to_numpy(b).copy() for b in self.net_.biases]
        self._pushed = [a.copy() for a in self.coefs_ + self.intercepts_]

    def _push_parameters(self):
        """Into the network, the ``coefs_``/``intercepts_`` a user assigned since the last pull
        (building the network from them when there is none: scikit-learn's worked example)."""
        current = list(self.coefs_) + list(self.intercepts_)
        pushed = getattr(self, "_pushed", None)
        if getattr(self, "net_", None) is not None and pushed is not None and len(current) == len(pushed) \
                and all(np.shape(a) == b.shape and np.array_equal(a, b) for a, b in zip(current, pushed)):
            return
        coefs = [np.asarray(c) for c in self.coefs_]
        intercepts = [np.asarray(b).reshape(-1) for b in self.intercepts_]
        units = [coefs[0].shape[0]] + [c.shape[1] for c in coefs]
        if len(intercepts) != len(coefs) or [b.shape[0] for b in intercepts] != units[1:] \
                or any(c.shape != (a, b) for c, a, b in zip(coefs, units[:-1], units[1:])):
            raise ValueError("coefs_ and intercepts_ do not describe one network: shapes "
                             f"{[c.shape for c in coefs]} and {[b.shape for b in intercepts]}")
        net = getattr(self, "net_", None)
        if net is None or list(net.sizes) != units:
            dtype = np.result_type(*coefs, *intercepts, np.float32)
            output, loss = _OUTPUTS[getattr(self, "out_activation_", self._output())]
            net = MLP(units, activation=self._activation_name(), output=output, loss=loss, dtype=dtype,
                      backend=self.backend)
        net.set_flat_params(np.concatenate([a.ravel() for a in coefs + intercepts]).astype(net.dtype))
        self.net_ = net
        self._pull_parameters()

    # ---- training -----------------------------------------------------------------------------
    def _fit(self, X, y, sample_weight=None, incremental=False):
        self._check_params()
        hidden = self._hidden_sizes()
        schedule = self._schedule()
        if incremental and self.solver == "lbfgs":
            raise AttributeError("partial_fit is only available for stochastic optimizers. lbfgs is not stochastic.")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, targets, commit = self._validate_input(X, y, incremental, reset=first_pass)
        sample_weight = check_sample_weight(sample_weight, X.shape[0])
        if targets.ndim == 1:
            targets = targets.reshape(-1, 1)
        layer_units = [X.shape[1], *hidden, targets.shape[1]]
        if not first_pass:
            self._push_parameters()
            self._check_same_network(layer_units)
        commit()
        self.n_outputs_ = targets.shape[1]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(layer_units, self._model_dtype(X))
        batch = self._batch(X.shape[0]) if self.solver != "lbfgs" else X.shape[0]
        # scikit-learn's penalty alpha / (2 * the batch's total weight): the weight of an average
        # batch here, so that a weight of k acts as k copies of a sample
        mean_weight = 1.0 if sample_weight is None else float(sample_weight.mean())
        self.net_.weight_decay = float(self.alpha) / (batch * mean_weight)
        if self.communicator is not None:
            self._check_ranks_agree(X, targets, sample_weight)
        try:
            if self.solver == "lbfgs":
                self._fit_lbfgs(X, targets, sample_weight)
            else:
                self._fit_stochastic(X, targets, sample_weight, incremental, batch, schedule)
        finally:
            self._pull_parameters()
        if not all(np.isfinite(a).all() for a in self.coefs_ + self.intercepts_):
            raise ValueError(_DIVERGED)
        return self

    def _check_ranks_agree(self, X, targets, sample_weight):
        """A data-parallel fit's ranks must hold the same parameters, data and network."""
        comm = self.communicator
        params = {k: v for k, v in self.get_params().items() if k != "communicator"}
        dense = X.toarray() if scipy.sparse.issparse(X) else np.asarray(X)
        comm.check_same({
            "the estimator's parameters": repr(sorted(params.items())),
            "the training data (rows, sampled values)": (
                X.shape, fingerprint(dense), fingerprint(np.asarray(targets)),
                None if sample_weight is None else fingerprint(np.asarray(sample_weight))),
            "the network's parameters": params_hash(self.net_.flat_params, self.net_.backend)})

    def _check_same_network(self, layer_units):
        """Continuing (warm start, partial_fit) needs the network the hyper-parameters and the
        data describe now: the same layer widths, hidden activation and (when set) dtype."""
        net = self.net_
        if list(net.sizes[:-1]) == layer_units[:-1] and net.sizes[-1] != layer_units[-1]:
            raise ValueError(f"cannot continue training: y has {layer_units[-1]} outputs, the fitted network "
                             f"{net.sizes[-1]}")
        if list(net.sizes) != layer_units:
            raise ValueError(f"cannot continue training: the fitted network has layer widths {list(net.sizes)}, "
                             f"but hidden_layer_sizes and the data now give {layer_units}")
        fitted = sorted({a.name for a in net.hidden_activations})
        if fitted and fitted != [self._activation_name()]:
            raise ValueError(f"cannot continue training: the fitted network's hidden activation is "
                             f"{', '.join(fitted)}, not {self.activation!r}")
        if self.dtype is not None and np.dtype(net.dtype) != check_float_dtype(self.dtype):
            raise ValueError(f"cannot continue training: the fitted network is {np.dtype(net.dtype)}, "
                             f"dtype is now {self.dtype!r}")

    def _initialize(self, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output()
        self.net_ = self._new_network(layer_units, dtype)
        self._epochs_done = 0
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
            else:
                self.validation_scores_, self.best_validation_score_, self.best_loss_ = None, None, np.inf

    def _split(self, X, targets, sample_weight):
        """The held-out part for early stopping, split as scikit-learn splits it."""
        stratify = targets if is_classifier(self) and self.n_outputs_ == 1 else None
        parts = [X, targets] + ([] if sample_weight is None else [sample_weight])
        split = train_test_split(*parts, random_state=self._random_state, test_size=self.validation_fraction,
                                 stratify=stratify)
        X_train, X_val, t_train, t_val = split[:4]
        w_train = None if sample_weight is None else split[4]
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        return X_train, t_train, w_train, X_val, t_val

    def _fit_stochastic(self, X, targets, sample_weight, incremental, batch, schedule):
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        X_val = t_val = None
        if early_stopping:
            X, targets, sample_weight, X_val, t_val = self._split(X, targets, sample_weight)
            self._best_params = self.net_.flat_params.copy()
        net, optimizer = self.net_, self._optimizer
        rows = _Rows(net, X, self._net_targets(targets), sample_weight)
        mean_weight = 1.0 if sample_weight is None else float(np.mean(sample_weight))
        batch = min(batch, rows.n)
        n_batches = -(-rows.n // batch)
        comm = self.communicator
        step = TrainingStep(net, optimizer.optimizer, self.clip_norm, communicator=comm)
        self.n_iter_ = 0
        with net.training():
            for _ in range(self.max_iter):
                if schedule is not None:
                    done = getattr(self, "_epochs_done", 0)
                    optimizer.learning_rate = schedule.lr(float(self.learning_rate_init),
                                                          min(done, self.max_iter - 1), self.max_iter)
                order = self._random_state.permutation(rows.n) if self.shuffle else np.arange(rows.n)
                step.begin_epoch(self.n_iter_)
                diverged = False
                try:
                    if comm is None:
                        for x, t, row_scale, batch_weight in rows.batches(order, batch):
                            step(x, t, row_scale, batch_weight)
                    else:                  # this rank's shard of every minibatch, one gradient sum a step
                        shards, shares = rows.rank_batches(order, batch, comm, rows.host_weights)
                        for (x, t, row_scale, batch_weight), share in zip(shards, shares):
                            step(x, t, row_scale, batch_weight, share=share)
                    loss_sum, _ = step.end_epoch()
                    self.loss_ = self._reported_loss(loss_sum / rows.weight_total, n_batches, rows.n,
                                                     mean_weight)
                except TrainingDiverged as exc:
                    if not early_stopping:
                        raise ValueError(_DIVERGED) from exc
                    # as scikit-learn: the non-finite epoch is recorded, the best weights are kept
                    self.loss_, diverged = float("nan"), True
                self.n_iter_ += 1
                self._epochs_done = getattr(self, "_epochs_done", 0) + 1
                self.t_ += rows.n
                self.loss_curve_.append(self.loss_)
                if self.verbose and (comm is None or comm.is_main):
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._update_no_improvement_count(early_stopping, X_val, t_val, diverged)
                if diverged:
                    break
                optimizer.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score did not improve" if early_stopping else "Training loss did not improve"
                    message = (f"{what} more than tol={self.tol:f} for {self.n_iter_no_change} consecutive "
                               "epochs.")
                    if optimizer.trigger_stopping(message, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                                  "optimization hasn't converged yet.", ConvergenceWarning)
            if early_stopping:
                with net.writing_parameters():
                    net.flat_params[...] = self._best_params

    def _reported_loss(self, data_loss, n_batches, n, mean_weight):
        """scikit-learn's per-epoch loss: the mean data loss (squared error averaged over the
        outputs, as scikit-learn's is) plus the L2 penalty ``alpha / (2 * batch weight)`` each
        minibatch added, here at the epoch's last weights."""
        net = self.net_
        if net.loss_fn.name == "mse":
            data_loss /= self.n_outputs_
        if not self.alpha:
            return float(data_loss)
        squares = float(net.backend.sumsq(net.flat_params[:net.n_weights]))
        return float(data_loss + 0.5 * float(self.alpha) * squares * n_batches / (n * mean_weight))

    def _update_no_improvement_count(self, early_stopping, X_val, t_val, diverged=False):
        if early_stopping:
            score = float("nan") if diverged else self._score_outputs(self._outputs(X_val), t_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params[...] = self.net_.flat_params
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _fit_lbfgs(self, X, targets, sample_weight):
        net = self.net_
        net.weight_decay = float(self.alpha) / (X.shape[0] if sample_weight is None else float(sample_weight.sum()))
        objective = _Objective(net, X, self._net_targets(targets), sample_weight, self.communicator)
        start = to_numpy(net.flat_params).astype(np.float64)
        with net.training():
            result = scipy.optimize.minimize(objective, start, method="L-BFGS-B", jac=True,
                                             options={"maxfun": self.max_fun, "maxiter": self.max_iter,
                                                      "gtol": self.tol})
        if result.status != 0:
            message = result.message.decode() if isinstance(result.message, bytes) else result.message
            warnings.warn(f"lbfgs failed to converge after {result.nit} iteration(s) (status={result.status}):\n"
                          f"{message}.\n\nIncrease the number of iterations to improve the convergence "
                          f"(max_iter={self.max_iter}).", ConvergenceWarning, stacklevel=3)
        self.n_iter_ = min(result.nit, self.max_iter)
        self.loss_ = float(result.fun)
        if self.verbose and (self.communicator is None or self.communicator.is_main):
            print(f"L-BFGS-B: {result.nit} iterations, {result.nfev} evaluations, loss = {self.loss_:.8f}")
        net.set_flat_params(np.asarray(result.x).astype(net.dtype))

    def _loss_grad_lbfgs(self, packed, X, y, sample_weight=None, *buffers):
        """L-BFGS's objective at the flat parameters ``packed`` (scikit-learn's layout,
        coefficients then intercepts, which is gpunet's): the mean loss plus
        ``alpha / (2 N) * sum ||W||^2``, and its gradient, as float64 (``y`` binarised as the
        estimator binarises it; scikit-learn's own tests call this)."""
        self.net_.weight_decay = float(self.alpha) / (X.shape[0] if sample_weight is None else
                                                      float(np.sum(sample_weight)))
        return _Objective(self.net_, X, self._net_targets(y), sample_weight)(packed)

    # ---- prediction ---------------------------------------------------------------------------
    def _outputs(self, X):
        """The network's activated outputs (N, n_outputs) on the host, in the model's dtype;
        sparse X densified a chunk at a time. Non-finite rows come back as they are."""
        net = self.net_
        if not scipy.sparse.issparse(X):
            return to_numpy(net.forward(X))
        X = X.tocsr()
        return np.concatenate([to_numpy(net.forward(X[start:start + _CHUNK].toarray()))
                               for start in range(0, X.shape[0], _CHUNK)])

    def _forward(self, X):
        """Validated X -> outputs; rows whose arithmetic overflowed are refused by name, as
        ``gpunet.MLP.predict`` refuses them (not a NaN probability or an arbitrary label)."""
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False, dtype=(np.float64, np.float32))
        self._push_parameters()
        out = self._outputs(X)
        out = out.astype(np.result_type(X.dtype, out.dtype), copy=False)   # float64 X: float64 out, as scikit-learn
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
            raise ValueError(f"the network's outputs are not finite for {bad.size} row(s) of X (rows {shown}): "
                             f"their arithmetic overflows {self.net_.dtype.name}. Scale the features, or use "
                             "dtype='float64'.")
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # ---- conversions to and from scikit-learn's own estimators ----------------------------------------
    def _to_sklearn(self, sklearn_class):
        """A fitted ``sklearn_class`` estimator with this estimator's network (``to_sklearn``)."""
        check_is_fitted(self, "coefs_")
        activation = self._activation_name()
        if activation not in _GPUNET_TO_SKLEARN_ACTIVATION:
            raise ValueError(f"scikit-learn's MLPs have no {activation!r} hidden activation (they have "
                             f"{', '.join(_SKLEARN_TO_GPUNET_ACTIVATION)})")
        shared = set(sklearn_class().get_params())
        params = {name: value for name, value in copy.deepcopy(self.get_params(deep=False)).items()
                  if name in shared}
        params["activation"] = _GPUNET_TO_SKLEARN_ACTIVATION[activation]
        params["hidden_layer_sizes"] = tuple(np.shape(c)[1] for c in self.coefs_[:-1])
        if params["solver"] not in _SKLEARN_SOLVERS:       # "adamw", "rmsprop": only a later fit sees it
            params["solver"] = "adam"
        return _converted(self, sklearn_class(**params))

    @classmethod
    def _from_sklearn(cls, estimator, sklearn_class, params):
        """A fitted estimator of this class with the network of the fitted scikit-learn
        ``estimator`` (``from_sklearn``); ``params`` are gpunet's own parameters."""
        if not isinstance(estimator, sklearn_class):
            raise TypeError(f"expected a fitted sklearn.neural_network.{sklearn_class.__name__}, "
                            f"got {type(estimator).__name__}")
        check_is_fitted(estimator, "coefs_")
        theirs = copy.deepcopy(estimator.get_params(deep=False))
        if theirs["activation"] not in _SKLEARN_TO_GPUNET_ACTIVATION:
            raise ValueError(f"the hidden activation {theirs['activation']!r} has no gpunet twin (gpunet "
                             f"converts {', '.join(_SKLEARN_TO_GPUNET_ACTIVATION)})")
        if getattr(estimator, "out_activation_", None) not in _OUTPUTS:
            raise ValueError(f"the output activation {getattr(estimator, 'out_activation_', None)!r} has no "
                             f"gpunet twin (gpunet converts {', '.join(_OUTPUTS)})")
        shared = set(cls().get_params())
        merged = {name: value for name, value in theirs.items() if name in shared}
        merged["hidden_layer_sizes"] = tuple(np.shape(c)[1] for c in estimator.coefs_[:-1])
        ours = _converted(estimator, cls(**{**merged, **params}))
        # the network takes the new coefficients now (prediction would push them anyway)
        ours.net_.set_flat_params(np.concatenate([np.ravel(a) for a in [*ours.coefs_, *ours.intercepts_]]))
        return ours


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer perceptron classifier trained by gpunet, a drop-in for scikit-learn's.

    A softmax output for three or more classes, one logistic unit for two, independent
    logistic units for multilabel y.

    Labels may be any values scikit-learn accepts (ints, strings...); ``classes_`` holds them
    sorted, and ``predict_proba`` columns follow that order.
    """

    def _output(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        """(X, binarised y, a function that commits the classes): nothing is changed until the
        whole fit has been checked, so a refused call leaves a fitted model as it was."""
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            binarizer = LabelBinarizer().fit(y)

            def commit():
                self._label_binarizer, self.classes_ = binarizer, binarizer.classes_
            return X, binarizer.transform(y).astype(bool), commit
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the previous "
                                     f"call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool), lambda: None

    def _net_targets(self, binarized):
        """What the gpunet loss takes: class indices for a softmax, 0/1 floats otherwise."""
        binarized = np.asarray(binarized)
        if self.out_activation_ == "softmax":
            return binarized.argmax(axis=1) if binarized.ndim == 2 else binarized.astype(np.int64)
        return binarized.astype(np.float64).reshape(binarized.shape[0], -1)

    def _score_outputs(self, outputs, binarized):
        if not np.isfinite(outputs).all():
            return float("nan")
        return float(accuracy_score(self._label_binarizer.inverse_transform(binarized.astype(np.int64)),
                                    self._labels_from(outputs)))

    def _labels_from(self, outputs):
        if self.n_outputs_ == 1:
            outputs = outputs.ravel()
        return self._label_binarizer.inverse_transform(outputs)

    def fit(self, X: ArrayLike | scipy.sparse.spmatrix, y: ArrayLike,
            sample_weight: ArrayLike | None = None) -> MLPClassifier:
        """Train on X and y (from scratch, or with ``warm_start`` from the fitted network).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training features.
        y : array-like of shape (n_samples,) or (n_samples, n_classes)
            Labels, or a multilabel indicator matrix.
        sample_weight : array-like of shape (n_samples,), optional
            Weighs each sample's loss.

        Returns
        -------
        MLPClassifier
            self, fitted.

        Raises
        ------
        ValueError
            For a hyper-parameter out of range, data scikit-learn refuses, or a fit whose
            parameters became non-finite.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(lambda est: est.solver != "lbfgs")
    def partial_fit(self, X: ArrayLike | scipy.sparse.spmatrix, y: ArrayLike, sample_weight: ArrayLike | None = None,
                    classes: ArrayLike | None = None) -> MLPClassifier:
        """One epoch over X and y, continuing from the earlier calls (the optimizer's state too).

        Not with ``solver="lbfgs"`` or ``early_stopping``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training features.
        y : array-like of shape (n_samples,) or (n_samples, n_classes)
            Labels, or a multilabel indicator matrix.
        sample_weight : array-like of shape (n_samples,), optional
            Weighs each sample's loss.
        classes : array-like of shape (n_classes,), optional
            Every label the calls will see: required on the first call, and the same on later ones.

        Returns
        -------
        MLPClassifier
            self, trained one epoch further.

        Raises
        ------
        ValueError
            When ``classes`` is missing on the first call or differs from the first call's,
            and as ``fit`` raises.
        """
        first = getattr(self, "classes_", None) is None
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if classes is not None:
            if not first and not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                                 f"was: {self.classes_!r}")
            if first:
                self.classes_ = unique_labels(classes)
                self._label_binarizer = LabelBinarizer()
                self._label_binarizer.fit(y if type_of_target(y).startswith("multilabel") else classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X: ArrayLike | scipy.sparse.spmatrix) -> np.ndarray:
        """Predicted labels, from ``classes_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Features.

        Returns
        -------
        numpy.ndarray of shape (n_samples,) or (n_samples, n_classes)
            Labels, or an indicator matrix for multilabel y.

        Raises
        ------
        ValueError
            For rows whose outputs overflow the model's dtype (named), or X scikit-learn refuses.
        """
        return self._labels_from(self._forward(X))

    def predict_proba(self, X: ArrayLike | scipy.sparse.spmatrix) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Features.

        Returns
        -------
        numpy.ndarray of shape (n_samples, n_classes)
            Probabilities.

        Raises
        ------
        ValueError
            For rows whose outputs overflow the model's dtype (named), or X scikit-learn refuses.
        """
        out = self._forward(X)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return np.vstack([1 - out, out]).T if out.ndim == 1 else out

    def predict_log_proba(self, X: ArrayLike | scipy.sparse.spmatrix) -> np.ndarray:
        """The logarithm of ``predict_proba``'s probabilities (-inf for a probability of 0).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Features.

        Returns
        -------
        numpy.ndarray of shape (n_samples, n_classes)
            Log-probabilities.

        Raises
        ------
        ValueError
            As ``predict_proba`` raises.
        """
        probabilities = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(probabilities, out=probabilities)

    def to_sklearn(self) -> neural_network.MLPClassifier:
        """This fitted classifier as scikit-learn's own ``MLPClassifier``, predicting the same.

        The network (``coefs_``, ``intercepts_``), the classes, the fit's record (``n_iter_``,
        ``loss_curve_``, ...) and the parameters scikit-learn has are carried over (a solver it
        lacks, "adamw" or "rmsprop", becomes "adam": only a later fit sees it). scikit-learn's
        own fitted state (its label binarizer) comes from a one-iteration fit on one row per
        class, whose coefficients are then replaced; a later ``partial_fit`` starts from that
        fit's optimizer state, a warm-started ``fit`` from a fresh one. Coefficients keep their
        dtype: scikit-learn computes a float32 model's predictions in the dtype of X (float64
        for float64 X), so they agree with this estimator's to float32 rounding; a float64
        model's agree to float64 rounding.

        Returns
        -------
        sklearn.neural_network.MLPClassifier
            A fitted estimator whose ``predict`` and ``predict_proba`` give this one's.

        Raises
        ------
        ValueError
            For the hidden activation "leaky_relu", which scikit-learn does not have.
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        """
        return self._to_sklearn(neural_network.MLPClassifier)

    @classmethod
    def from_sklearn(cls, estimator: neural_network.MLPClassifier, **params: object) -> MLPClassifier:
        """A fitted gpunet ``MLPClassifier`` computing the network of a fitted scikit-learn one.

        The reverse of ``to_sklearn``: scikit-learn's parameters, network, classes and fit
        record are carried over, and the model's dtype is that of the coefficients.

        Parameters
        ----------
        estimator : sklearn.neural_network.MLPClassifier
            A fitted estimator with a hidden activation gpunet has ("identity", "logistic",
            "tanh", "relu").
        **params : object
            gpunet's own parameters for the new estimator, such as ``backend="cupy"``.

        Returns
        -------
        MLPClassifier
            A fitted estimator whose ``predict`` and ``predict_proba`` give ``estimator``'s.

        Raises
        ------
        TypeError
            When ``estimator`` is not a scikit-learn ``MLPClassifier``.
        ValueError
            For an activation gpunet does not have.
        sklearn.exceptions.NotFittedError
            When ``estimator`` is not fitted.
        """
        return cls._from_sklearn(estimator, neural_network.MLPClassifier, params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


MLPClassifier.__doc__ += _PARAMETERS_DOC.replace(_REGRESSOR_LOSS_DOC, "")


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer perceptron regressor trained by gpunet, a drop-in for scikit-learn's.

    An identity output with the squared error, or with ``loss="poisson"`` an exp output with
    half the Poisson deviance.

    y may be (n_samples,) or (n_samples, n_outputs); ``predict`` returns (n_samples,) when
    there is one output, in the model's dtype. Targets are used as given: standardise them
    (e.g. ``TransformedTargetRegressor``) when their scale is far from 1.
    """

    def __init__(self, hidden_layer_sizes: int | Sequence[int] = (100,), activation: str = "relu", *,
                 solver: str = "adam", alpha: float = 1e-4, batch_size: int | str = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 1e-3, power_t: float = 0.5,
                 max_iter: int = 200, loss: str = "squared_error", shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool | int = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True,
                 early_stopping: bool = False, validation_fraction: float = 0.1, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int | float = 10, max_fun: int = 15000,
                 lr_schedule: str | Schedule | None = None, weight_decay: float = 0.01, clip_norm: float | None = None,
                 dtype: DTypeLike | None = None, backend: str | None = None, communicator: Any = None) -> None:
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose,
                         warm_start=warm_start, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
                         early_stopping=early_stopping, validation_fraction=validation_fraction, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
                         lr_schedule=lr_schedule, weight_decay=weight_decay, clip_norm=clip_norm, dtype=dtype,
                         backend=backend, communicator=communicator)
        self.loss = loss

    def _output(self):
        if self.loss not in ("squared_error", "poisson"):
            raise ValueError(f"loss must be 'squared_error' or 'poisson', got {self.loss!r}")
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        self._output()
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y, lambda: None

    def _net_targets(self, targets):
        targets = np.asarray(targets, dtype=np.float64)
        return targets.reshape(targets.shape[0], -1)

    def _score_outputs(self, outputs, targets):
        if not np.isfinite(outputs).all():
            return float("nan")
        return float(r2_score(targets, outputs.ravel() if outputs.shape[1] == 1 else outputs))

    def fit(self, X: ArrayLike | scipy.sparse.spmatrix, y: ArrayLike,
            sample_weight: ArrayLike | None = None) -> MLPRegressor:
        """Train on X and y (from scratch, or with ``warm_start`` from the fitted network).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training features.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        sample_weight : array-like of shape (n_samples,), optional
            Weighs each sample's loss.

        Returns
        -------
        MLPRegressor
            self, fitted.

        Raises
        ------
        ValueError
            For a hyper-parameter out of range, data scikit-learn refuses, or a fit whose
            parameters became non-finite.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(lambda est: est.solver != "lbfgs")
    def partial_fit(self, X: ArrayLike | scipy.sparse.spmatrix, y: ArrayLike,
                    sample_weight: ArrayLike | None = None) -> MLPRegressor:
        """One epoch over X and y, continuing from the earlier calls (the optimizer's state too).

        Not with ``solver="lbfgs"`` or ``early_stopping``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training features.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        sample_weight : array-like of shape (n_samples,), optional
            Weighs each sample's loss.

        Returns
        -------
        MLPRegressor
            self, trained one epoch further.

        Raises
        ------
        ValueError
            As ``fit`` raises.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X: ArrayLike | scipy.sparse.spmatrix) -> np.ndarray:
        """Predictions of the fitted network, in the model's dtype.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Features.

        Returns
        -------
        numpy.ndarray of shape (n_samples,) or (n_samples, n_outputs)
            (n_samples,) with one output.

        Raises
        ------
        ValueError
            For rows whose outputs overflow the model's dtype (named), or X scikit-learn refuses.
        """
        out = self._forward(X)
        return out.ravel() if out.shape[1] == 1 else out

    def to_sklearn(self) -> neural_network.MLPRegressor:
        """This fitted regressor as scikit-learn's own ``MLPRegressor``, predicting the same.

        The network (``coefs_``, ``intercepts_``), the fit's record (``n_iter_``,
        ``loss_curve_``, ...) and the parameters scikit-learn has are carried over (``loss``
        included; a solver it lacks, "adamw" or "rmsprop", becomes "adam"). scikit-learn's own
        fitted state comes from a one-iteration fit on two rows, whose coefficients are then
        replaced. Coefficients keep their dtype: a float32 model's predictions agree with this
        estimator's to float32 rounding, a float64 model's to float64 rounding.

        Returns
        -------
        sklearn.neural_network.MLPRegressor
            A fitted estimator whose ``predict`` gives this one's.

        Raises
        ------
        ValueError
            For the hidden activation "leaky_relu", which scikit-learn does not have.
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        """
        return self._to_sklearn(neural_network.MLPRegressor)

    @classmethod
    def from_sklearn(cls, estimator: neural_network.MLPRegressor, **params: object) -> MLPRegressor:
        """A fitted gpunet ``MLPRegressor`` computing the network of a fitted scikit-learn one.

        The reverse of ``to_sklearn``: scikit-learn's parameters (``loss`` included), network
        and fit record are carried over, and the model's dtype is that of the coefficients.

        Parameters
        ----------
        estimator : sklearn.neural_network.MLPRegressor
            A fitted estimator with a hidden activation gpunet has ("identity", "logistic",
            "tanh", "relu").
        **params : object
            gpunet's own parameters for the new estimator, such as ``backend="cupy"``.

        Returns
        -------
        MLPRegressor
            A fitted estimator whose ``predict`` gives ``estimator``'s.

        Raises
        ------
        TypeError
            When ``estimator`` is not a scikit-learn ``MLPRegressor``.
        ValueError
            For an activation gpunet does not have.
        sklearn.exceptions.NotFittedError
            When ``estimator`` is not fitted.
        """
        return cls._from_sklearn(estimator, neural_network.MLPRegressor, params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


MLPRegressor.__doc__ += _PARAMETERS_DOC
