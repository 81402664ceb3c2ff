"""Activation functions: each declared once, here, with everything every layer needs.

Each activation maps a pre-activation ``z`` to ``f(z)`` element-wise (softmax row-wise).
For every element-wise activation the derivative is computed from the saved *output*
``a = f(z)`` (seed 003: sigma' = sigma (1 - sigma), tanh' = 1 - tanh^2), so the
backward pass never needs the pre-activation.

A class here is the single declaration of an activation:

- ``name`` (and ``aliases``), and where it may be used (``hidden``, ``output``): the CLI's
  choices and the scikit-learn estimators' names are read from this registry;
- ``forward`` and ``derivative_from_output``: the reference math for any array module
  ``xp``, which ``NumpyBackend`` runs and the GPU kernels must match;
- ``kernel_id``, ``kernel_params`` and ``cuda_forward``/``cuda_derivative``: the id the CUDA
  kernels switch on, the two scalars they take (p0, p1), and the bodies of the device
  functions ``f(z)`` and ``f'(a)`` (C++ over a type ``T``, with ``z`` or ``a`` and ``p0``,
  ``p1`` in scope). ``gpunet.cuda.sources`` writes them into every kernel source, with the
  list of ids the kernels' switches cover; a kernel handed any other id writes NaN.

Adding an activation is one class here (and its tests); see ``docs/extending.md``.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NoReturn

from .softmax import softmax_rows

__all__ = [
    "Activation", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Identity", "Softmax", "Exp",
    "ACTIVATIONS", "HIDDEN_ACTIVATIONS", "OUTPUT_ACTIVATIONS", "KERNEL_ACTIVATIONS", "get_activation",
    "kernel_id_of",
]


def _finite_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class Activation:
    """Base class of the activations; the class attributes are the registry entry.

    See the module docstring. Arrays are NumPy or CuPy arrays, ``xp`` their module.
    """

    name = "activation"
    aliases: tuple[str, ...] = ()
    hidden = False            # may be a hidden layer's activation
    output = False            # may be the output layer's activation
    elementwise = True
    kernel_id: int | None = None     # the CUDA kernels' id; None: the reference math only
    cuda_forward = ""
    cuda_derivative = ""

    def forward(self, xp: ModuleType, z: Any, out: Any = None) -> Any:
        """``f(z)``, element-wise (the softmax row-wise).

        Parameters
        ----------
        xp : module
            The array module of ``z``: ``numpy`` or ``cupy``.
        z : ndarray of shape (N, n)
            Pre-activations.
        out : ndarray of shape (N, n), optional
            Where to write the result; may be ``z`` itself (in place).

        Returns
        -------
        ndarray
            ``f(z)`` (in ``out`` when given).
        """
        raise NotImplementedError

    def derivative_from_output(self, xp: ModuleType, a: Any) -> Any:
        """``f'(z)`` expressed through the output ``a = f(z)``.

        Parameters
        ----------
        xp : module
            The array module of ``a``.
        a : ndarray
            The activation's output.

        Returns
        -------
        ndarray
            ``f'(z)``, shaped like ``a``.
        """
        raise NotImplementedError

    def backward(self, xp: ModuleType, grad: Any, a: Any, out: Any = None) -> Any:
        """Chain rule through the activation: ``grad * f'(z)``, computed from ``a``.

        Parameters
        ----------
        xp : module
            The array module of the arrays.
        grad : ndarray of shape (N, n)
            The gradient with respect to the output ``a``.
        a : ndarray of shape (N, n)
            The activation's output.
        out : ndarray of shape (N, n), optional
            Where to write the result; may be ``grad`` itself.

        Returns
        -------
        ndarray
            The gradient with respect to ``z`` (in ``out`` when given).
        """
        return xp.multiply(grad, self.derivative_from_output(xp, a), out=out)

    @property
    def kernel_params(self) -> tuple[float, float]:
        """The two scalar parameters the CUDA kernels take as p0, p1."""
        return (0.0, 0.0)

    def config(self) -> dict:
        """A JSON-able description that ``get_activation`` turns back into this object.

        Returns
        -------
        dict
            ``{"name": ...}`` and the activation's parameters.
        """
        return {"name": self.name}

    def __eq__(self, other):
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self):
        return hash(tuple(sorted(self.config().items())))

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


class Identity(Activation):
    """``f(z) = z``: a linear layer (a regressor's usual output)."""

    name, kernel_id = "identity", 0
    hidden = output = True
    cuda_forward = "return z;"
    cuda_derivative = "return T(1);"

    def forward(self, xp: ModuleType, z: Any, out: Any = None) -> Any:
        if out is None:
            return z.copy()
        if out is not z:
            out[...] = z
        return out

    def derivative_from_output(self, xp: ModuleType, a: Any) -> Any:
        return xp.ones_like(a)

    def backward(self, xp: ModuleType, grad: Any, a: Any, out: Any = None) -> Any:
        if out is None:
            return grad.copy()
        if out is not grad:
            out[...] = grad
        return out


class Sigmoid(Activation):
    """The scaled logistic ``c / (1 + exp(-beta z))`` (seed 003); c = beta = 1 is the usual sigmoid.

    Computed as ``c / (1 + exp(-beta z))`` with ``beta z`` first clipped to +-80 (float32)
    or +-700 (float64), where the logistic is already 1 to the last bit on one side and
    below 1e-34 on the other: exp never overflows, and the chain is five plain ufunc
    passes (no masked selects, which are several times slower in NumPy). Derivative from
    the output: ``f' = beta * a * (1 - a / c)``. The kernel's form, ``exp`` of ``-|beta z|``
    only, never overflows either (a NaN takes the ``e`` branch and stays NaN).

    Parameters
    ----------
    c : float, default 1.0
        The output's upper bound, > 0.
    beta : float, default 1.0
        The slope, > 0.

    Raises
    ------
    TypeError
        When ``c`` or ``beta`` is not a real number.
    ValueError
        When either is not finite or not positive.
    """

    name, kernel_id = "sigmoid", 1
    aliases = ("logistic",)
    hidden = output = True
    cuda_forward = """const T bz = z * p1;
        const T e = gn_exp(-gn_abs(bz));
        return ((bz >= T(0) ? T(1) : e) / (T(1) + e)) * p0;"""
    cuda_derivative = "return (a * (T(1) - a / p0)) * p1;"

    def __init__(self, c: float = 1.0, beta: float = 1.0) -> None:
        self.c = _finite_float("sigmoid c", c)
        self.beta = _finite_float("sigmoid beta", beta)
        if self.c <= 0:
            raise ValueError(f"sigmoid c must be > 0, got {self.c}")
        if self.beta <= 0:
            raise ValueError(f"sigmoid beta must be > 0, got {self.beta}")

    def forward(self, xp: ModuleType, z: Any, out: Any = None) -> Any:
        bound = (80.0 if z.dtype.itemsize <= 4 else 700.0) / self.beta
        t = xp.clip(z, -bound, bound, out=out)
        t *= -self.beta
        xp.exp(t, out=t)
        t += 1.0
        xp.reciprocal(t, out=t)
        if self.c != 1.0:
            t *= self.c
        return t

    def derivative_from_output(self, xp: ModuleType, a: Any) -> Any:
        if self.c == 1.0:
            d = a * (1.0 - a)
        else:
            d = a * (1.0 - a / self.c)
        if self.beta != 1.0:
            d *= self.beta
        return d

    @property
    def kernel_params(self) -> tuple[float, float]:
        """``(c, beta)``, the kernels' p0 and p1."""
        return (self.c, self.beta)

    def config(self) -> dict:
        return {"name": self.name, "c": self.c, "beta": self.beta}


class Tanh(Activation):
    """``tanh(z)``; derivative from the output ``1 - a^2``."""

    name, kernel_id = "tanh", 2
    hidden = output = True
    cuda_forward = "return gn_tanh(z);"
    cuda_derivative = "return T(1) - a * a;"

    def forward(self, xp: ModuleType, z: Any, out: Any = None) -> Any:
        return xp.tanh(z, out=out)

    def derivative_from_output(self, xp: ModuleType, a: Any) -> Any:
        return 1.0 - a * a


class ReLU(Activation):
    """``max(z, 0)``; slope 0 at z == 0, as PyTorch's."""

    name, kernel_id = "relu", 3
    hidden = True
    cuda_forward = "return z < T(0) ? T(0) : z;   // NaN passes through, as np.maximum does"
    cuda_derivative = "return a > T(0) ? T(1) : T(0);   // slope 0 at z == 0, as PyTorch"

    def forward(self, xp: ModuleType, z: Any, out: Any = None) -> Any:
        return xp.maximum(z, 0, out=out)

    def derivative_from_output(self, xp: ModuleType, a: Any) -> Any:
        return (a > 0).astype(a.dtype)

    def backward(self, xp: ModuleType, grad: Any, a: Any, out: Any = None) -> Any:
        # where f(z) > 0 the slope is 1, elsewhere 0 (including z == 0, as PyTorch does)
        return xp.multiply(grad, a > 0, out=out)


class LeakyReLU(Activation):
    """``z`` for z >= 0, ``slope * z`` below.

    A slope in [0, 1) keeps the sign of z in the output, which is what lets the derivative
    be read off the output.

    Parameters
    ----------
    slope : float, default 0.01
        The slope below zero, in [0, 1).

    Raises
    ------
    TypeError
        When ``slope`` is not a real number.
    ValueError
        When it is not finite or not in [0, 1).
    """

    name, kernel_id = "leaky_relu", 4
    hidden = True
    cuda_forward = "return z < T(0) ? z * p0 : z;"
    cuda_derivative = "return a > T(0) ? T(1) : p0;"

    def __init__(self, slope: float = 0.01) -> None:
        self.slope = _finite_float("leaky_relu slope", slope)
        if not 0.0 <= self.slope < 1.0:
            raise ValueError(f"leaky_relu slope must be in [0, 1), got {self.slope}")

    def forward(self, xp: ModuleType, z: Any, out: Any = None) -> Any:
        # max(z, slope*z) is z above zero and slope*z below, because 0 <= slope < 1
        return xp.maximum(z, z * self.slope, out=out)

    def derivative_from_output(self, xp: ModuleType, a: Any) -> Any:
        return xp.where(a > 0, 1.0, self.slope).astype(a.dtype, copy=False)

    @property
    def kernel_params(self) -> tuple[float, float]:
        """``(slope, 0)``, the kernels' p0 and p1."""
        return (self.slope, 0.0)

    def config(self) -> dict:
        return {"name": self.name, "slope": self.slope}


class Exp(Activation):
    """``exp(z)``, an output activation: the mean of a Poisson regressor.

    With the Poisson loss its gradient at z is ``exp(z) - y``. Derivative from the output:
    ``f' = a``.
    """

    name, kernel_id = "exp", 5
    output = True
    cuda_forward = "return gn_exp(z);"
    cuda_derivative = "return a;"

    def forward(self, xp: ModuleType, z: Any, out: Any = None) -> Any:
        return xp.exp(z, out=out)

    def derivative_from_output(self, xp: ModuleType, a: Any) -> Any:
        return a.copy()

    def backward(self, xp: ModuleType, grad: Any, a: Any, out: Any = None) -> Any:
        return xp.multiply(grad, a, out=out)


class Softmax(Activation):
    """Row-wise ``exp(z_k) / sum_j exp(z_j)``, shifted by the row maximum so exp never overflows.

    Its Jacobian is ``diag(a) - a a^T`` (seed 003), so the backward pass is
    ``a * (grad - sum(grad * a, axis=1))``. Its kernels are the row kernels of
    ``kernels/softmax_xent.cu`` (with the cross-entropy folded in), not the element-wise ones.
    """

    name = "softmax"
    output = True
    elementwise = False

    def forward(self, xp: ModuleType, z: Any, out: Any = None) -> Any:
        return softmax_rows(xp, z, out=out)

    def derivative_from_output(self, xp: ModuleType, a: Any) -> NoReturn:
        """Not defined: the softmax's Jacobian is not element-wise (use ``backward``).

        Parameters
        ----------
        xp : module
            The array module of ``a``.
        a : ndarray
            The activation's output.

        Raises
        ------
        ValueError
            Always.
        """
        raise ValueError("softmax has a full Jacobian, not an element-wise derivative; use backward()")

    def backward(self, xp: ModuleType, grad: Any, a: Any, out: Any = None) -> Any:
        inner = (grad * a).sum(axis=1, keepdims=True)
        return xp.multiply(a, grad - inner, out=out)


ACTIVATIONS: dict[str, type[Activation]] = {
    cls.name: cls for cls in (Softmax, Sigmoid, Tanh, ReLU, LeakyReLU, Identity, Exp)}
_ALIASES = {alias: cls.name for cls in ACTIVATIONS.values() for alias in cls.aliases}
HIDDEN_ACTIVATIONS = tuple(name for name, cls in ACTIVATIONS.items() if cls.hidden)
OUTPUT_ACTIVATIONS = tuple(name for name, cls in ACTIVATIONS.items() if cls.output)
# the element-wise activations the CUDA kernels implement, by id
KERNEL_ACTIVATIONS: dict[int, type[Activation]] = dict(sorted(
    (cls.kernel_id, cls) for cls in ACTIVATIONS.values() if cls.kernel_id is not None))


def kernel_id_of(act) -> int | None:
    """The CUDA kernels' id for ``act``, or None when only the reference math covers it.
    Exact registered classes only: a subclass may change the math behind an inherited id."""
    cls = KERNEL_ACTIVATIONS.get(getattr(act, "kernel_id", None))
    return cls.kernel_id if cls is not None and type(act) is cls else None


def get_activation(spec, allowed=None, what="activation") -> Activation:
    """Turn a name (or alias), a config dict or an ``Activation`` into an ``Activation``.

    ``allowed`` restricts the names (e.g. softmax is an output activation only).
    """
    choices = ", ".join(allowed or ACTIVATIONS)
    if isinstance(spec, Activation):
        act = spec
    elif isinstance(spec, str):
        name = _ALIASES.get(spec, spec)
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown {what} {spec!r}; choose from {choices}")
        act = ACTIVATIONS[name]()
    elif isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str) or name not in ACTIVATIONS:
            raise ValueError(f"unknown {what} {name!r}; choose from {choices}")
        try:
            act = ACTIVATIONS[name](**params)
        except TypeError as exc:
            raise ValueError(f"bad parameters for {what} {name!r}: {exc}") from None
    else:
        raise TypeError(f"{what} must be a name or an Activation, got {type(spec).__name__}")
    if allowed is not None and act.name not in allowed:
        raise ValueError(f"{act.name!r} cannot be used as {what}; choose from {', '.join(allowed)}")
    return act
