"""The ``gpunet`` command: ``gpunet train`` and ``gpunet info``."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

__all__ = ["main"]


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _build_parser():
    parser = argparse.ArgumentParser(prog="gpunet", description="Train multilayer perceptrons by explicit backpropagation.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP on a bundled dataset and print its accuracy",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--dataset", default="digits", choices=["digits", "mnist1d", "spirals", "regression"])
    t.add_argument("--hidden", type=_positive_int, nargs="*", default=[256], metavar="WIDTH",
                   help="hidden layer widths")
    t.add_argument("--activation", default="relu", choices=["relu", "leaky_relu", "tanh", "sigmoid", "identity"])
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=_positive_int, default=32)
    t.add_argument("--full-batch", action="store_true", help="one step per epoch over all training data")
    t.add_argument("--lr", type=float, default=0.02, help="learning rate")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--nesterov", action="store_true")
    t.add_argument("--weight-decay", type=float, default=1e-3)
    t.add_argument("--clip-norm", type=float, default=None, help="clip the gradient's global norm")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--seed", type=_non_negative_int, default=0)
    t.add_argument("--backend", default=None, choices=["auto", "numpy", "cupy"],
                   help="array backend (default: GPUNET_BACKEND if set, else auto)")
    t.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    t.add_argument("--plot", metavar="PNG", help="write the learning curves (needs matplotlib)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    sub.add_parser("info", help="versions, the active backend and whether a GPU is usable")
    return parser


def _train(args):
    import gpunet as gn
    from gpunet.data import load_dataset

    # refuse an unwritable destination now rather than after a long training run
    for option, target in (("--save", args.save), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(target)) if target else None
        if folder and not os.path.isdir(folder):
            raise ValueError(f"{option} {target}: the folder {folder} does not exist")
    backend = gn.set_backend(args.backend) if args.backend else gn.get_backend()
    data = load_dataset(args.dataset, seed=args.seed)
    classify = data.y_train.ndim == 1
    sizes = [data.n_features, *args.hidden, data.n_classes]
    net = gn.MLP(sizes, activation=args.activation,
                 output="softmax" if classify else "identity",
                 loss="cross_entropy" if classify else "mse",
                 weight_decay=args.weight_decay, dtype=args.dtype, seed=args.seed)
    print(f"gpunet {gn.__version__} | backend {backend.name} | dataset {data.name}: "
          f"{len(data.X_train)} train / {len(data.X_test)} test, {data.n_features} features | {net}")
    start = time.perf_counter()
    history = net.fit(data.X_train, data.y_train, epochs=args.epochs,
                      batch_size=None if args.full_batch else args.batch_size,
                      lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                      clip_norm=args.clip_norm, validation_data=(data.X_test, data.y_test),
                      progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    metric = "accuracy" if classify else "R^2"
    print(f"trained {args.epochs} epochs in {elapsed:.2f} s")
    print(f"train {metric}: {net.score(data.X_train, data.y_train):.4f}")
    print(f"test {metric}: {net.score(data.X_test, data.y_test):.4f}")
    if args.save:
        net.save(args.save)
        print(f"saved model to {args.save}")
    if args.plot:
        from gpunet.plot import plot_history
        plot_history(history, args.plot, title=f"{data.name}: {sizes} {args.activation}")
        print(f"saved learning curves to {args.plot}")
    return 0


def _info(args):
    import gpunet as gn
    from gpunet.backend import gpu_status

    print(f"gpunet   {gn.__version__}")
    print(f"python   {platform.python_version()} ({platform.machine()})")
    print(f"numpy    {np.__version__}")
    try:
        import cupy
        print(f"cupy     {cupy.__version__}")
    except Exception as exc:
        print(f"cupy     not available ({type(exc).__name__})")
    ok, why = gpu_status()
    print(f"gpu      {'usable' if ok else 'not usable'}: {why}")
    print(f"backend  {gn.get_backend().name} (GPUNET_BACKEND or set_backend() choose; 'auto' by default)")
    return 0


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        return _info(args)
    except (ValueError, TypeError, RuntimeError, ImportError, FloatingPointError, OSError) as exc:
        print(f"gpunet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
