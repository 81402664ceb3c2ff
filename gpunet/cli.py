"""The ``gpunet`` command: ``gpunet train`` and ``gpunet info``."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from gpunet.activations import HIDDEN_ACTIVATIONS

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
    t.add_argument("--activation", default="relu", choices=HIDDEN_ACTIVATIONS)
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

    from gpunet.bench import add_arguments as add_bench_arguments
    add_bench_arguments(sub.add_parser("bench", help="run the benchmark suite (a source checkout's benchmarks/) "
                                       "and write JSON, a markdown table and a plot"))

    from gpunet.recipes import add_recipe_arguments
    add_recipe_arguments(sub.add_parser("recipe", help="reproduce a reference result (digits, mnist1d, "
                                        "regression) and print it beside the reference"))
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

    from gpunet.cuda import sources
    if not ok:
        # no device to run on, but a compiler may still vouch for the sources
        print("kernels  not checked on a GPU (none is usable, see above)")
        nvrtc = sources.nvrtc_version()
        if nvrtc is None and sources.nvcc_path() is None:
            print("compile  skipped: neither NVRTC (through CuPy) nor nvcc is available")
            return 0
        start = time.perf_counter()
        results = sources.compile_sources("auto", archs=("sm_90",))
        failed = [(topic, err) for topic, _, _, err in results if err]
        tool = results[0][1] if results else "-"
        tool += f" {nvrtc[0]}.{nvrtc[1]}" if tool == "nvrtc" and nvrtc else ""
        print(f"compile  {len(results) - len(failed)}/{len(results)} sources compiled for sm_90 with {tool} "
              f"in {time.perf_counter() - start:.1f} s (compiled only, not run)")
        for topic, err in failed:
            print(f"         FAILED kernels/{topic}.cu:\n{err}")
        return 1 if failed else 0

    import cupy
    from gpunet.diagnostics import parity_check
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    major, minor = dev.compute_capability[:-1], dev.compute_capability[-1]
    runtime, driver = cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()
    print(f"device   {name} (compute capability {major}.{minor}, {props['multiProcessorCount']} SMs, "
          f"{props['totalGlobalMem'] / 2**30:.1f} GiB)")
    print(f"cuda     runtime {runtime // 1000}.{runtime % 1000 // 10}, driver {driver // 1000}.{driver % 1000 // 10}"
          + (f", nvrtc {'.'.join(map(str, sources.nvrtc_version()))}" if sources.nvrtc_version() else ""))
    start = time.perf_counter()
    loaded = sources.load_all()
    print(f"kernels  {sum(map(len, loaded.values()))} kernels from {len(loaded)} sources in {sources.kernel_dir()} "
          f"compiled and loaded in {time.perf_counter() - start:.2f} s")
    rows = parity_check()
    for row in rows:
        print(f"parity   {'ok  ' if row['ok'] else 'FAIL'} {row['op']:<44} {row['dtype']:<8} "
              f"max err {row['max_error']:.2e} (tol {row['tolerance']:.0e})")
    failed = [row for row in rows if not row["ok"]]
    print(f"parity   {len(rows) - len(failed)}/{len(rows)} checks against the NumPy reference passed")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "bench":
            from gpunet.bench import run as run_bench
            return run_bench(args)
        if args.command == "recipe":
            from gpunet.recipes import run_from_args
            return run_from_args(args)
        return _info(args)
    except (ValueError, TypeError, RuntimeError, ImportError, FloatingPointError, OSError) as exc:
        print(f"gpunet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
