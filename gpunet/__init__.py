"""gpunet: multilayer perceptrons trained by explicit backpropagation, on NumPy or CuPy.

    import gpunet as gn
    net = gn.MLP([64, 128, 10], activation="relu", output="softmax", loss="cross_entropy", seed=0)
    net.fit(X, y, epochs=20, batch_size=32, lr=0.05, momentum=0.9)
    net.score(X_test, y_test)
"""
from .activations import Exp, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .backend import get_backend, set_backend, to_numpy, use_backend
from .gradcheck import gradcheck
from .mlp import MLP
from .optim import SGD, Adam, AdamW, RMSprop
from .train import History, TrainingDiverged, TrainingInterrupted
from . import callbacks, data, scaling  # noqa: E402  (gn.callbacks.ModelCheckpoint, gn.data.BatchStream, ...)

__version__ = "0.1.0"

__all__ = [
    "MLP", "set_backend", "get_backend", "use_backend", "to_numpy", "gradcheck",
    "SGD", "Adam", "AdamW", "RMSprop", "History", "TrainingDiverged", "TrainingInterrupted",
    "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Identity", "Softmax", "Exp", "__version__",
]
