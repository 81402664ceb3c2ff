"""scikit-learn estimators around ``gpunet.MLP``: ``MLPClassifier`` and ``MLPRegressor``.

They follow scikit-learn's conventions (hyper-parameters in the constructor and untouched by
it, ``fit`` returns self, fitted attributes end in ``_``, input validated by
``sklearn.utils.validation.validate_data``), so they work in ``Pipeline``, ``GridSearchCV``
and ``cross_val_score`` and pass ``sklearn.utils.estimator_checks.check_estimator``.
Parameter names mirror ``sklearn.neural_network.MLPClassifier`` where the meaning is the
same, so swapping one for the other is a one-line change.

Needs scikit-learn (``pip install 'gpunet[data]'``); ``import gpunet`` never imports it.
"""
from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .activations import ACTIVATIONS, HIDDEN_ACTIVATIONS
from .backend import to_numpy
from .mlp import MLP
from .optim import make_optimizer
from .schedules import CosineDecay, EarlyStopping, LinearWarmup, Schedule
from .validation import check_real, check_sample_weight

__all__ = ["MLPClassifier", "MLPRegressor"]

# gpunet's hidden activations, and their aliases (scikit-learn's "logistic" is the sigmoid)
_ACTIVATIONS = {**{name: name for name in HIDDEN_ACTIVATIONS},
                **{alias: name for name in HIDDEN_ACTIVATIONS for alias in ACTIVATIONS[name].aliases}}
_SOLVERS = ("adam", "adamw", "sgd", "rmsprop")
_SCHEDULES = ("constant", "cosine", "warmup_cosine")

_PARAMETERS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : int or tuple of ints, default (100,)
        Widths of the hidden layers; ``()`` gives a linear model (softmax regression).
    activation : {"relu", "tanh", "logistic", "identity", "leaky_relu"}, default "relu"
        Hidden activation ("sigmoid" is accepted for "logistic").
    solver : {"adam", "adamw", "sgd", "rmsprop"}, default "adam"
        The optimizer (``gpunet.optim``).
    alpha : float, default 1e-4
        L2 penalty, scaled as scikit-learn does: ``(alpha / (2 * batch)) * sum ||W||^2`` added
        to the mean loss of a batch (gpunet's ``weight_decay = alpha / batch``; with sample
        weights, ``batch`` times their mean). Biases are not penalised.
    batch_size : int or "auto", default "auto"
        Minibatch size; "auto" is ``min(200, n_samples)``.
    learning_rate_init : float, default 1e-3
        The optimizer's learning rate.
    lr_schedule : {"constant", "cosine", "warmup_cosine"} or a ``gpunet.schedules.Schedule``,
        default "constant". "cosine" decays to 0 over ``max_iter`` epochs, "warmup_cosine"
        warms up over the first 5% of them first.
    max_iter : int, default 200
        Maximum number of epochs.
    shuffle : bool, default True
        Re-draw minibatches every epoch.
    random_state : int, RandomState or None
        Seeds initialisation, shuffling and the validation split.
    tol, n_iter_no_change : default 1e-4, 10
        Stop when the training loss (or, with ``early_stopping``, the validation score) has
        not improved by ``tol`` for ``n_iter_no_change`` epochs in a row.
    momentum, nesterovs_momentum : default 0.9, True
        SGD momentum (momentum also applies to "rmsprop").
    beta_1, beta_2, epsilon : default 0.9, 0.999, 1e-8
        Adam's moment decay rates and epsilon (epsilon also for RMSprop).
    weight_decay : float, default 0.01
        AdamW's decoupled weight decay (``solver="adamw"`` only).
    clip_norm : float or None
        Rescale a batch gradient whose global L2 norm exceeds it.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data (stratified for classifiers),
        stop when its score stalls and keep the parameters of the best epoch.
    validation_fraction : float, default 0.1
    dtype : {"float64", "float32"}, default "float64"
        Arithmetic precision (float32 is the fast choice on a GPU).
    backend : {None, "auto", "numpy", "cupy"}, default None
        Array backend for the model; None uses gpunet's active backend.
    verbose : bool, default False
        Show a progress bar (needs tqdm).
    warm_start : bool, default False
        ``fit`` continues from the fitted network (same layer sizes, activation and dtype;
        for a classifier the same classes) with a fresh optimizer, instead of starting over.
        ``n_iter_`` and ``loss_curve_`` then run on from the earlier calls.

    ``partial_fit(X, y)`` (``partial_fit(X, y, classes)`` for the classifier, whose first call
    must name every class) trains one epoch over the given batch of data and keeps the
    optimizer's state between calls, for data that arrives in pieces or does not fit in
    memory. Without early stopping; with ``lr_schedule``, call k trains at the schedule's
    rate for epoch k of ``max_iter`` (the last rate after that).

    Fitted attributes: ``net_`` (the ``gpunet.MLP``), ``n_features_in_``, ``n_iter_``
    (epochs run), ``loss_`` and ``loss_curve_`` (training loss per epoch, without the L2
    term), ``history_`` (gpunet's per-epoch records), ``coefs_``/``intercepts_`` (NumPy
    copies of the weights and biases), and with early stopping ``validation_scores_`` and
    ``best_validation_score_``.
"""


class _BaseMLP(BaseEstimator):
    """Shared constructor and fit of the two estimators (parameters: ``_PARAMETERS_DOC``); the
    fitted ``net_`` pickles itself (architecture, parameters, shuffling state)."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=1e-4,
                 batch_size="auto", learning_rate_init=1e-3, lr_schedule="constant", max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, n_iter_no_change=10, momentum=0.9,
                 nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, epsilon=1e-8, weight_decay=0.01,
                 clip_norm=None, early_stopping=False, validation_fraction=0.1, dtype="float64",
                 backend=None, verbose=False, warm_start=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.lr_schedule = lr_schedule
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.dtype = dtype
        self.backend = backend
        self.verbose = verbose
        self.warm_start = warm_start

    # ---- hyper-parameters -> gpunet objects (checked at fit, as scikit-learn asks) ---------
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
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {self.activation!r}")
        return _ACTIVATIONS[self.activation]

    def _seed(self):
        """An int seed for gpunet from ``random_state`` (an int is used as is)."""
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            if self.random_state < 0:
                raise ValueError(f"random_state must be non-negative, got {self.random_state}")
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(0, 2 ** 31 - 1))

    def _batch(self, n):
        if isinstance(self.batch_size, str) and self.batch_size == "auto":
            return min(200, n)
        if not isinstance(self.batch_size, numbers.Integral) or isinstance(self.batch_size, bool) \
                or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
        return min(int(self.batch_size), n)

    def _optimizer(self):
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(_SOLVERS)}, got {self.solver!r}")
        if self.solver == "sgd":
            return make_optimizer("sgd", lr=self.learning_rate_init, momentum=self.momentum,
                                  nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
        if self.solver == "rmsprop":
            return make_optimizer("rmsprop", lr=self.learning_rate_init, momentum=self.momentum,
                                  eps=self.epsilon)
        options = {"betas": (self.beta_1, self.beta_2), "eps": self.epsilon}
        if self.solver == "adamw":
            options["weight_decay"] = self.weight_decay
        return make_optimizer(self.solver, lr=self.learning_rate_init, **options)

    def _schedule(self, epochs):
        if isinstance(self.lr_schedule, Schedule) or self.lr_schedule is None:
            return self.lr_schedule
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(_SCHEDULES)} or a "
                             f"gpunet.schedules.Schedule, got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine":
            return CosineDecay()
        if self.lr_schedule == "warmup_cosine":
            return LinearWarmup(max(1, epochs // 20), then=CosineDecay())
        return None

    # ---- training ---------------------------------------------------------------------------
    def _continues(self, incremental):
        """Whether this fit trains the existing ``net_`` on (warm start, partial_fit)."""
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise TypeError(f"warm_start must be True or False, got {self.warm_start!r}")
        return getattr(self, "net_", None) is not None and (incremental or bool(self.warm_start))

    def _fit_network(self, X, targets, n_outputs, *, classifier, stratify=None, incremental=False,
                     sample_weight=None):
        """Build (or, continuing, reuse) and train ``net_`` on X (N, d) and targets: int
        labels (N,) or floats (N, K). ``incremental``: one epoch, the optimizer kept."""
        sample_weight = check_sample_weight(sample_weight, X.shape[0])
        hidden = self._hidden_sizes()
        act = self._activation_name()
        seed = self._seed()
        epochs = self.max_iter
        if not isinstance(epochs, numbers.Integral) or isinstance(epochs, bool) or epochs < 1:
            raise ValueError(f"max_iter must be a positive integer, got {epochs!r}")
        optimizer = self._optimizer()
        schedule = self._schedule(epochs)
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            raise TypeError(f"early_stopping must be True or False, got {self.early_stopping!r}")
        continuing = self._continues(incremental)
        widths = [X.shape[1], *hidden, n_outputs]
        if continuing:
            self._check_same_network(widths, act)
        early_stopping = bool(self.early_stopping) and not incremental
        if incremental:
            epochs = 1
            # the optimizer's state (momentum, Adam's moments) carries over between calls
            kept = getattr(self, "_partial_fit_optimizer", None)
            optimizer = kept if continuing and kept is not None else optimizer
            self._partial_fit_optimizer = optimizer
            if schedule is not None:   # call k trains at the schedule's rate for epoch k of max_iter
                done = self.n_iter_ if continuing else 0
                optimizer.lr = schedule.lr(float(self.learning_rate_init), min(done, self.max_iter - 1), self.max_iter)
                schedule = None
        else:
            self._partial_fit_optimizer = None

        validation = None
        if early_stopping:
            X, targets, sample_weight, validation = self._split_validation(X, targets, sample_weight, seed,
                                                                           stratify)
        batch = self._batch(X.shape[0])
        monitor = ("val_accuracy" if classifier else "val_r2") if early_stopping else "loss"
        stopper = None if incremental else EarlyStopping(
            monitor=monitor, patience=self.n_iter_no_change, min_delta=self.tol,
            mode="max" if early_stopping else "min", restore_best_weights=early_stopping)
        # scikit-learn's penalty alpha / (2 * the batch's total weight): the weight of an
        # average batch here, so that a weight of k acts as k copies of a sample
        batch_weight = batch if sample_weight is None else batch * float(sample_weight.mean())
        if continuing:
            net = self.net_
            net.weight_decay = check_real("alpha", self.alpha, low=0.0) / batch_weight
        else:
            net = MLP(widths, activation=act, output="softmax" if classifier else "identity",
                      loss="cross_entropy" if classifier else "mse",
                      weight_decay=float(self.alpha) / batch_weight, dtype=self.dtype, seed=seed,
                      backend=self.backend)
        history = net.fit(X, targets, epochs=epochs, batch_size=batch, optimizer=optimizer,
                          schedule=schedule, clip_norm=self.clip_norm, shuffle=self.shuffle,
                          validation_data=validation, early_stopping=stopper,
                          progress=bool(self.verbose), sample_weight=sample_weight)
        self.net_ = net
        self.history_ = dict(history)
        self.n_iter_ = (self.n_iter_ if continuing else 0) + history.epochs
        self.loss_curve_ = (self.loss_curve_ if continuing else []) + list(history["loss"])
        self.loss_ = self.loss_curve_[-1]
        if early_stopping:
            self.validation_scores_ = list(history[monitor])
            self.best_validation_score_ = history.best_value
        return self

    def _check_same_network(self, widths, activation):
        """Continuing needs the network the hyper-parameters and data describe now."""
        net = self.net_
        if list(net.sizes) != widths:
            raise ValueError(f"cannot continue training: the fitted network has layer widths {list(net.sizes)}, "
                             f"but hidden_layer_sizes and the data now give {widths}")
        fitted = sorted({a.name for a in net.hidden_activations})
        if fitted and fitted != [activation]:
            raise ValueError(f"cannot continue training: the fitted network's hidden activation is "
                             f"{', '.join(fitted)}, not {activation!r}")
        if np.dtype(net.dtype) != np.dtype(self.dtype):
            raise ValueError(f"cannot continue training: the fitted network is {np.dtype(net.dtype)}, "
                             f"dtype is now {self.dtype!r}")

    def _split_validation(self, X, targets, sample_weight, seed, stratify):
        """(X, targets, sample_weight) to train on, and (X, targets) held out (unweighted)."""
        from sklearn.model_selection import train_test_split
        fraction = self.validation_fraction
        if not isinstance(fraction, numbers.Real) or not 0.0 < fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {fraction!r}")
        n_val = int(np.ceil(fraction * X.shape[0]))
        if n_val < 1 or X.shape[0] - n_val < 1:
            raise ValueError(f"early_stopping needs at least 2 samples to split off a validation set, "
                             f"got {X.shape[0]}")
        if stratify is not None:
            counts = np.bincount(stratify)
            # stratifying needs two members per class and a validation set that can hold them all
            if counts.min() < 2 or n_val < len(counts) or X.shape[0] - n_val < len(counts):
                stratify = None
        weights = np.ones(X.shape[0]) if sample_weight is None else sample_weight
        X_tr, X_val, t_tr, t_val, w_tr, _ = train_test_split(X, targets, weights, test_size=n_val,
                                                             random_state=seed, stratify=stratify)
        if sample_weight is not None and not w_tr.any():
            raise ValueError("early_stopping left only zero-weight samples to train on")
        return X_tr, t_tr, None if sample_weight is None else w_tr, (X_val, t_val)

    # ---- fitted parameters as NumPy arrays ---------------------------------------------------
    @property
    def coefs_(self):
        """Weight matrices ``W_l`` (n_{l-1}, n_l) as NumPy copies."""
        check_is_fitted(self, "net_")
        return [to_numpy(w).copy() for w in self.net_.weights]

    @property
    def intercepts_(self):
        """Bias vectors ``b_l`` (n_l,) as NumPy copies."""
        check_is_fitted(self, "net_")
        return [to_numpy(b).copy() for b in self.net_.biases]

    def _validated_X(self, X):
        check_is_fitted(self, "net_")
        return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer perceptron classifier (softmax output, cross-entropy loss) trained by gpunet.

    Labels may be any values scikit-learn accepts (ints, strings...); ``classes_`` holds them
    sorted, and ``predict_proba`` columns follow that order.
    """

    def fit(self, X, y, sample_weight=None):
        """Train on X (n_samples, n_features) and labels y (n_samples,), each sample's loss
        weighted by ``sample_weight`` (n_samples,) when given. Returns self."""
        continuing = self._continues(incremental=False)
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), reset=not continuing)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(f"MLPClassifier needs at least 2 classes, but y holds one class "
                             f"(label {encoder.classes_[0]!r})")
        if continuing and not np.array_equal(encoder.classes_, self.classes_):
            raise ValueError(f"warm_start needs the classes of the earlier fit, {self.classes_.tolist()}; "
                             f"y holds {encoder.classes_.tolist()}")
        codes = encoder.transform(y).astype(np.int64)
        self._fit_network(X, codes, len(encoder.classes_), classifier=True, stratify=codes,
                          sample_weight=sample_weight)
        self.classes_ = encoder.classes_    # only once trained: a refused fit leaves the model whole
        return self

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over X (n_samples, n_features) and labels y, continuing from the earlier
        calls. ``classes``: every label the calls will see; required on the first call."""
        first = getattr(self, "net_", None) is None
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if classes is not None:
            classes = np.unique(np.asarray(classes))
            if len(classes) < 2:
                raise ValueError(f"partial_fit needs at least 2 classes, got {classes.tolist()}")
            if not first and not np.array_equal(classes, self.classes_):
                raise ValueError(f"classes={classes.tolist()} differs from the classes of the earlier calls, "
                                 f"{self.classes_.tolist()}")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), reset=first)
        check_classification_targets(y)
        known = classes if first else self.classes_
        unseen = np.setdiff1d(y, known)
        if unseen.size:
            raise ValueError(f"y holds labels {unseen.tolist()} that are not among the classes {known.tolist()}")
        codes = np.searchsorted(known, y).astype(np.int64)
        self._fit_network(X, codes, len(known), classifier=True, incremental=True, sample_weight=sample_weight)
        self.classes_ = known
        return self

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), columns in the order of ``classes_``."""
        X = self._validated_X(X)
        return self.net_.predict_proba(X).astype(np.float64)

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Predicted labels (n_samples,), values from ``classes_``."""
        X = self._validated_X(X)
        return self.classes_[self.net_.predict(X)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = False
        return tags


MLPClassifier.__doc__ += _PARAMETERS_DOC


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer perceptron regressor (identity output, squared-error loss) trained by gpunet.

    y may be (n_samples,) or (n_samples, n_outputs); ``predict`` returns the same shape.
    Targets are used as given: standardise them (e.g. ``TransformedTargetRegressor``) when
    their scale is far from 1.
    """

    def fit(self, X, y, sample_weight=None):
        """Train on X (n_samples, n_features) and y (n_samples,) or (n_samples, n_outputs),
        each sample's loss weighted by ``sample_weight`` (n_samples,) when given."""
        return self._fit_regressor(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over X and y, continuing from the earlier calls (the optimizer's state too)."""
        return self._fit_regressor(X, y, sample_weight, incremental=True)

    def _fit_regressor(self, X, y, sample_weight, *, incremental):
        continuing = self._continues(incremental)
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), multi_output=True, y_numeric=True,
                             reset=not continuing)
        targets = np.asarray(y, dtype=np.float64)
        y_is_1d = targets.ndim == 1
        targets = targets.reshape(targets.shape[0], -1)
        if continuing and targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} outputs; the fitted network has {self.n_outputs_}")
        self._fit_network(X, targets, targets.shape[1], classifier=False, incremental=incremental,
                          sample_weight=sample_weight)
        self._y_is_1d, self.n_outputs_ = y_is_1d, targets.shape[1]
        return self

    def predict(self, X):
        """Predictions (n_samples,) or (n_samples, n_outputs), as y was in ``fit`` (float64,
        as scikit-learn expects, whatever the model's dtype)."""
        X = self._validated_X(X)
        out = self.net_.predict(X).astype(np.float64)
        return out[:, 0] if self._y_is_1d else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


MLPRegressor.__doc__ += _PARAMETERS_DOC
