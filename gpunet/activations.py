"""Activation functions and their derivatives, written once for any array module ``xp``.

Each activation maps a pre-activation ``z`` to ``f(z)`` element-wise (softmax row-wise).
For every element-wise activation the derivative is computed from the saved *output*
``a = f(z)`` (seed 003: sigma' = sigma (1 - sigma), tanh' = 1 - tanh^2), so the
backward pass never needs the pre-activation.

These methods are the reference math. ``NumpyBackend`` calls them; ``CupyBackend``
replaces them with fused kernels identified by ``kind`` and ``kernel_params``.
"""
from __future__ import annotations

import math

from .backend import shift_by_row_max

__all__ = [
    "Activation", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Identity", "Softmax",
    "HIDDEN_ACTIVATIONS", "OUTPUT_ACTIVATIONS", "get_activation",
]


def _finite_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class Activation:
    """Base class. ``name`` is the registry name; ``kind`` an integer id shared with the CUDA kernels."""

    name = "activation"
    kind = -1
    elementwise = True

    def forward(self, xp, z, out=None):
        """``f(z)``; ``z`` and ``out`` have shape (N, n). ``out`` may be ``z`` (in place)."""
        raise NotImplementedError

    def derivative_from_output(self, xp, a):
        """``f'(z)`` expressed through ``a = f(z)``, shape of ``a``."""
        raise NotImplementedError

    def backward(self, xp, grad, a, out=None):
        """Chain rule through the activation: ``grad * f'(z)``, computed from ``a``."""
        return xp.multiply(grad, self.derivative_from_output(xp, a), out=out)

    @property
    def kernel_params(self) -> tuple[float, float]:
        """The two scalar parameters the CUDA kernels take (meaning depends on ``kind``)."""
        return (0.0, 0.0)

    def config(self) -> dict:
        """A JSON-able description that ``get_activation`` turns back into this object."""
        return {"name": self.name}

    def __eq__(self, other):
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self):
        return hash(tuple(sorted(self.config().items())))

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"


class Identity(Activation):
    name, kind = "identity", 0

    def forward(self, xp, z, out=None):
        if out is None:
            return z.copy()
        if out is not z:
            out[...] = z
        return out

    def derivative_from_output(self, xp, a):
        return xp.ones_like(a)

    def backward(self, xp, grad, a, out=None):
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
    the output: ``f' = beta * a * (1 - a / c)``.
    """

    name, kind = "sigmoid", 1

    def __init__(self, c: float = 1.0, beta: float = 1.0):
        self.c = _finite_float("sigmoid c", c)
        self.beta = _finite_float("sigmoid beta", beta)
        if self.c <= 0:
            raise ValueError(f"sigmoid c must be > 0, got {self.c}")
        if self.beta <= 0:
            raise ValueError(f"sigmoid beta must be > 0, got {self.beta}")

    def forward(self, xp, z, out=None):
        bound = (80.0 if z.dtype.itemsize <= 4 else 700.0) / self.beta
        t = xp.clip(z, -bound, bound, out=out)
        t *= -self.beta
        xp.exp(t, out=t)
        t += 1.0
        xp.reciprocal(t, out=t)
        if self.c != 1.0:
            t *= self.c
        return t

    def derivative_from_output(self, xp, a):
        if self.c == 1.0:
            d = a * (1.0 - a)
        else:
            d = a * (1.0 - a / self.c)
        if self.beta != 1.0:
            d *= self.beta
        return d

    @property
    def kernel_params(self):
        return (self.c, self.beta)

    def config(self):
        return {"name": self.name, "c": self.c, "beta": self.beta}


class Tanh(Activation):
    name, kind = "tanh", 2

    def forward(self, xp, z, out=None):
        return xp.tanh(z, out=out)

    def derivative_from_output(self, xp, a):
        return 1.0 - a * a


class ReLU(Activation):
    name, kind = "relu", 3

    def forward(self, xp, z, out=None):
        return xp.maximum(z, 0, out=out)

    def derivative_from_output(self, xp, a):
        return (a > 0).astype(a.dtype)

    def backward(self, xp, grad, a, out=None):
        # where f(z) > 0 the slope is 1, elsewhere 0 (including z == 0, as PyTorch does)
        return xp.multiply(grad, a > 0, out=out)


class LeakyReLU(Activation):
    """``z`` for z >= 0, ``slope * z`` below. A slope in [0, 1) keeps the sign of z in the
    output, which is what lets the derivative be read off the output."""

    name, kind = "leaky_relu", 4

    def __init__(self, slope: float = 0.01):
        self.slope = _finite_float("leaky_relu slope", slope)
        if not 0.0 <= self.slope < 1.0:
            raise ValueError(f"leaky_relu slope must be in [0, 1), got {self.slope}")

    def forward(self, xp, z, out=None):
        # max(z, slope*z) is z above zero and slope*z below, because 0 <= slope < 1
        return xp.maximum(z, z * self.slope, out=out)

    def derivative_from_output(self, xp, a):
        return xp.where(a > 0, 1.0, self.slope).astype(a.dtype, copy=False)

    @property
    def kernel_params(self):
        return (self.slope, 0.0)

    def config(self):
        return {"name": self.name, "slope": self.slope}


class Softmax(Activation):
    """Row-wise ``exp(z_k) / sum_j exp(z_j)``, shifted by the row maximum so exp never overflows.

    Its Jacobian is ``diag(a) - a a^T`` (seed 003), so the backward pass is
    ``a * (grad - sum(grad * a, axis=1))``.
    """

    name, kind = "softmax", 5
    elementwise = False

    def forward(self, xp, z, out=None):
        shifted = shift_by_row_max(z)
        e = xp.exp(shifted, out=shifted)
        return xp.divide(e, e.sum(axis=1, keepdims=True), out=out)

    def derivative_from_output(self, xp, a):
        raise ValueError("softmax has a full Jacobian, not an element-wise derivative; use backward()")

    def backward(self, xp, grad, a, out=None):
        inner = (grad * a).sum(axis=1, keepdims=True)
        return xp.multiply(a, grad - inner, out=out)


_REGISTRY = {cls.name: cls for cls in (Sigmoid, Tanh, ReLU, LeakyReLU, Identity, Softmax)}
HIDDEN_ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "identity")
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", "tanh", "identity")


def get_activation(spec, allowed=None, what="activation") -> Activation:
    """Turn a name, a config dict or an ``Activation`` into an ``Activation``.

    ``allowed`` restricts the names (e.g. softmax is an output activation only).
    """
    if isinstance(spec, Activation):
        act = spec
    elif isinstance(spec, str):
        if spec not in _REGISTRY:
            raise ValueError(f"unknown {what} {spec!r}; choose from {', '.join(allowed or _REGISTRY)}")
        act = _REGISTRY[spec]()
    elif isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str) or name not in _REGISTRY:
            raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(allowed or _REGISTRY)}")
        try:
            act = _REGISTRY[name](**params)
        except TypeError as exc:
            raise ValueError(f"bad parameters for {what} {name!r}: {exc}") from None
    else:
        raise TypeError(f"{what} must be a name or an Activation, got {type(spec).__name__}")
    if allowed is not None and act.name not in allowed:
        raise ValueError(f"{act.name!r} cannot be used as {what}; choose from {', '.join(allowed)}")
    return act
