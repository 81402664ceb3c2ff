"""The ``gpunet`` command: ``train`` (on a bundled dataset or a data file), ``predict`` and
``evaluate`` (a saved model on a data file), ``info``, ``bench`` and ``recipe``.

Data files are read by ``gpunet.tables``; docs/cli.md describes the commands."""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time

import numpy as np

from gpunet import __version__
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


def _test_fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


MAX_AUTO_CLASSES = 50          # --task auto: whole-number targets with at most this many values are classes
CONFUSION_MAX_CLASSES = 20     # gpunet evaluate prints a confusion matrix up to this many classes
PREDICTION_FORMATS = (".csv", ".npy", ".parquet")
FILE_OPTION_DEFAULTS = {"target": None, "test_size": 0.2, "task": "auto", "no_standardize": False,
                        "drop_missing": False}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends each option's help with its default, as ``(default: 40)`` (a list's items spaced).

    Left as they are: on/off flags (off unless given), options whose default is None (not
    given: their help says what happens then) and helps that state their default in words."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        if isinstance(action.default, (list, tuple)):
            return f"{text} (default: {' '.join(map(str, action.default))})"
        return f"{text} (default: %(default)s)"


def _add_backend_argument(parser):
    parser.add_argument("--backend", default=None, choices=["auto", "numpy", "cupy"],
                        help="array backend (default: GPUNET_BACKEND if set, else auto)")


def _add_drop_missing_argument(parser):
    parser.add_argument("--drop-missing", action="store_true",
                        help="drop the rows with a missing value (and say how many) instead of refusing the file")


def _build_parser():
    parser = argparse.ArgumentParser(prog="gpunet", description="Train multilayer perceptrons by explicit backpropagation.")
    parser.add_argument("--version", action="version", version=f"gpunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP on a bundled dataset or a data file and print its scores",
                       formatter_class=_HelpFormatter)
    source = t.add_mutually_exclusive_group()
    source.add_argument("--dataset", default="digits", choices=["digits", "mnist1d", "spirals", "regression"],
                        help="a bundled dataset")
    source.add_argument("--data", metavar="FILE",
                        help="a data file to train on instead: .csv, .tsv, .txt, .npy, .npz or .parquet "
                             "(see docs/cli.md)")
    files = t.add_argument_group("training on a data file (--data)")
    files.add_argument("--target", metavar="COLUMN",
                       help="the column to predict (needed with --data): its name, or its index in a file without "
                            "a header (-1 is the last); in an .npz archive also an array's name, such as y")
    files.add_argument("--test-size", type=_test_fraction, default=FILE_OPTION_DEFAULTS["test_size"],
                       help="share of the rows held out to test on (stratified for a classifier); 0 for none")
    files.add_argument("--task", default=FILE_OPTION_DEFAULTS["task"], choices=["auto", "classify", "regress"],
                       help="auto classifies a text or boolean target, or one of whole numbers with at most "
                            f"{MAX_AUTO_CLASSES} distinct values, and regresses any other")
    files.add_argument("--no-standardize", action="store_true",
                       help="feed the features as they are; by default the model learns each feature's mean and "
                            "scale from the training rows, applies them to every input and keeps them in its file")
    _add_drop_missing_argument(files)
    t.add_argument("--hidden", type=_positive_int, nargs="*", default=[256], metavar="WIDTH",
                   help="hidden layer widths")
    t.add_argument("--activation", default="relu", choices=HIDDEN_ACTIVATIONS, help="hidden layers' activation")
    t.add_argument("--epochs", type=int, default=40, help="passes over the training data")
    t.add_argument("--batch-size", type=_positive_int, default=32, help="examples per optimizer step")
    t.add_argument("--full-batch", action="store_true", help="one step per epoch over all training data")
    t.add_argument("--lr", type=float, default=0.02, help="learning rate")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum; 0 for none")
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    t.add_argument("--weight-decay", type=float, default=1e-3, help="L2 penalty lambda on the weights")
    t.add_argument("--clip-norm", type=float, default=None,
                   help="rescale the gradient when its global L2 norm exceeds this (by default no clipping)")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="arithmetic precision")
    t.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seeds the initialisation, the shuffles and the test split")
    _add_backend_argument(t)
    t.add_argument("--distributed", choices=["auto", "mpi", "nccl"], default=None,
                   help="train data-parallel on the ranks mpiexec started (each takes a shard of every batch; "
                        "rank 0 prints and saves): mpi, nccl between GPUs, or auto (default: one process)")
    t.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    t.add_argument("--plot", metavar="PNG", help="write the learning curves (needs matplotlib)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="predict with a saved model on a data file; CSV on stdout, or -o OUT",
                       formatter_class=_HelpFormatter)
    p.add_argument("model", help="a model file written by gpunet train --save (or MLP.save)")
    p.add_argument("file", help="a data file: .csv, .tsv, .txt, .npy, .npz or .parquet; a column holding the "
                                "model's target is ignored")
    p.add_argument("--proba", action="store_true",
                   help="write a classifier's probabilities, one column per class named proba_<label>, "
                        "instead of the labels")
    p.add_argument("-o", "--output", metavar="OUT",
                   help=f"write to OUT, in the format of its extension ({', '.join(PREDICTION_FORMATS)}) "
                        "(default: CSV on stdout)")
    _add_drop_missing_argument(p)
    _add_backend_argument(p)

    e = sub.add_parser("evaluate", help="score a saved model on a labelled data file: loss, accuracy and a "
                                        "confusion matrix, or R^2, MSE and MAE", formatter_class=_HelpFormatter)
    e.add_argument("model", help="a model file written by gpunet train --save (or MLP.save)")
    e.add_argument("file", help="a data file: .csv, .tsv, .txt, .npy, .npz or .parquet")
    e.add_argument("--target", metavar="COLUMN",
                   help="the column holding the true values (default: the one the model was trained on)")
    _add_drop_missing_argument(e)
    _add_backend_argument(e)

    sub.add_parser("info", help="versions, the active backend and whether a GPU is usable",
                   formatter_class=_HelpFormatter)

    from gpunet.bench import add_arguments as add_bench_arguments
    add_bench_arguments(sub.add_parser("bench", help="run the benchmark suite (a source checkout's benchmarks/) "
                                       "and write JSON, a markdown table and a plot", formatter_class=_HelpFormatter))

    from gpunet.recipes import add_recipe_arguments
    add_recipe_arguments(sub.add_parser("recipe", help="reproduce a reference result (digits, mnist1d, "
                                        "regression) and print it beside the reference",
                                        formatter_class=_HelpFormatter))
    return parser


def _train(args):
    import gpunet as gn

    # refuse an unwritable destination now rather than after a long training run
    for option, target in (("--save", args.save), ("--plot", args.plot)):
        _check_folder(option, target)
    backend = gn.set_backend(args.backend) if args.backend else gn.get_backend()
    if args.data is None:
        given = [f"--{name.replace('_', '-')}" for name, default in FILE_OPTION_DEFAULTS.items()
                 if getattr(args, name) != default]
        if given:
            raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to a data file only "
                             "(--data FILE)")
        net, split, summary = _dataset_setup(args)
    else:
        net, split, summary = _file_setup(args)
    X_train, y_train, X_test, y_test = split
    comm = None
    if args.distributed:
        from gpunet import distributed
        comm = distributed.init(args.distributed, backend=backend)
        summary += f" | rank {comm.rank} of {comm.size} ({comm.name})"
    say = print if comm is None or comm.is_main else (lambda *a, **k: None)     # rank 0 alone reports
    say(f"gpunet {gn.__version__} | backend {backend.name} | {summary} | {net}")
    start = time.perf_counter()
    history = net.fit(X_train, y_train, epochs=args.epochs,
                      batch_size=None if args.full_batch else args.batch_size,
                      lr=args.lr, momentum=args.momentum, nesterov=args.nesterov, clip_norm=args.clip_norm,
                      validation_data=(X_test, y_test) if len(X_test) else None,
                      progress=not args.no_progress, communicator=comm)
    elapsed = time.perf_counter() - start
    metric = "accuracy" if net.is_classifier else "R^2"
    say(f"trained {args.epochs} epochs in {elapsed:.2f} s")
    say(f"train {metric}: {net.score(X_train, y_train):.4f}")
    if len(X_test):
        say(f"test {metric}: {net.score(X_test, y_test):.4f}")
    if comm is not None and not comm.is_main:
        return 0
    if args.save:
        net.save(args.save)
        print(f"saved model to {args.save}")
    if args.plot:
        from gpunet.plot import plot_history
        name = os.path.basename(args.data) if args.data else args.dataset
        plot_history(history, args.plot, title=f"{name}: {net.sizes} {args.activation}")
        print(f"saved learning curves to {args.plot}")
    return 0


def _check_folder(option, path):
    """Refuse an output path that cannot be written, before any work is done: empty, a
    folder, in a folder that does not exist or that this user cannot write to."""
    if path is None:
        return
    if not path.strip():
        raise ValueError(f"{option} needs a file name, got an empty one")
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: that is a folder; name a file in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path}: not writable by this user")


def _dataset_setup(args):
    """(model, split, summary) for a bundled dataset (already standardised by its loader)."""
    import gpunet as gn
    from gpunet.data import load_dataset

    data = load_dataset(args.dataset, seed=args.seed)
    classify = data.y_train.ndim == 1
    net = gn.MLP([data.n_features, *args.hidden, data.n_classes], activation=args.activation,
                 output="softmax" if classify else "identity",
                 loss="cross_entropy" if classify else "mse",
                 weight_decay=args.weight_decay, dtype=args.dtype, seed=args.seed)
    summary = (f"dataset {data.name}: {len(data.X_train)} train / {len(data.X_test)} test, "
               f"{data.n_features} features")
    return net, (data.X_train, data.y_train, data.X_test, data.y_test), summary


def _file_setup(args):
    """(model, split, summary) for ``--data FILE --target COLUMN``: the task, the classes, the
    split, and a model that keeps the feature names, the labels and the input scaling."""
    import gpunet as gn
    from gpunet.tables import read_table

    if args.target is None:
        raise ValueError("--data needs --target COLUMN: the column to predict (its name, or its index in a file "
                         "without a header, such as -1 for the last)")
    table = read_table(args.data, args.target, drop_missing=args.drop_missing)
    _report_dropped(table, sys.stdout)
    task, why = _task_of(table.y, args.task)
    target = _target_label(table)
    if task == "classify":
        y = _class_values(table.y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"the target {target} of {table.source} has a single class ({classes[0].item()!r}): "
                             "there is nothing to tell apart")
        split = _class_split(table.X, y, classes, args)
        head = dict(output="softmax", loss="cross_entropy", classes=classes)
        n_outputs, what = len(classes), f"classify, {len(classes)} classes"
    else:
        if table.y.dtype.kind not in "iuf":
            raise ValueError(f"the target {target} of {table.source} holds {_kind_of(table.y)} (such as "
                             f"{table.y[0].item()!r}), which cannot be regressed; use --task classify")
        split = _regression_split(table.X, table.y.astype(np.float64), args)
        head = dict(output="identity", loss="mse")
        n_outputs, what = 1, "regress"
    net = gn.MLP([table.X.shape[1], *args.hidden, n_outputs],
                 activation=args.activation, weight_decay=args.weight_decay, dtype=args.dtype, seed=args.seed,
                 feature_names=table.feature_names if table.named_columns else None,
                 standardize=not args.no_standardize,
                 metadata={"target": table.target, "task": task, "data": os.path.basename(args.data)}, **head)
    summary = (f"data {table.source}: {len(split[0])} train / {len(split[2])} test, {table.X.shape[1]} features, "
               f"target {target} ({what}{', ' + why if why else ''})"
               + ("" if args.no_standardize else ", standardised"))
    return net, split, summary


def _task_of(y, requested):
    """(task, why) for ``--task``: "auto" classifies text, booleans and whole numbers with at
    most ``MAX_AUTO_CLASSES`` values, and regresses the rest."""
    if requested != "auto":
        return requested, ""
    if y.dtype.kind not in "iuf":
        return "classify", f"auto: {_kind_of(y)}"
    if _whole_numbers(y):
        distinct = len(np.unique(y))
        if distinct <= MAX_AUTO_CLASSES:
            return "classify", f"auto: {distinct} distinct whole numbers"
        return "regress", f"auto: {distinct} distinct values, over {MAX_AUTO_CLASSES}"
    return "regress", "auto: fractional values"


def _kind_of(y) -> str:
    return "booleans" if y.dtype.kind == "b" else "text labels" if y.dtype.kind in "UO" else "numbers"


def _whole_numbers(y) -> bool:
    return y.dtype.kind in "iu" or bool(np.all(y == np.round(y)) and np.all(np.abs(y) < 2.0 ** 53))


def _class_values(y):
    """Class labels as the file holds them; whole numbers stored as floats become integers, so
    that predictions read 3 rather than 3.0."""
    return y.astype(np.int64) if y.dtype.kind == "f" and _whole_numbers(y) else y


def _class_split(X, y, classes, args):
    """A stratified split; a class left with no training row is refused."""
    if args.test_size == 0:
        return X, y, X[:0], y[:0]
    from gpunet.data import train_test_split

    codes = np.searchsorted(classes, y)          # the split stratifies integer labels
    X_train, codes_train, X_test, codes_test = train_test_split(X, codes, test_size=args.test_size, seed=args.seed)
    counts = np.bincount(codes, minlength=len(classes))
    untrained = [f"{classes[k].item()!r} ({counts[k]} row{'s' if counts[k] != 1 else ''})"
                 for k in np.flatnonzero(np.bincount(codes_train, minlength=len(classes)) == 0)]
    if untrained:
        raise ValueError(f"--test-size {args.test_size:g} leaves no training row for the class(es) "
                         f"{', '.join(untrained)}; lower --test-size or add rows of those classes")
    return X_train, classes[codes_train], X_test, classes[codes_test]


def _regression_split(X, y, args):
    if args.test_size == 0:
        return X, y, X[:0], y[:0]
    from gpunet.data import train_test_split

    split = train_test_split(X, y, test_size=args.test_size, seed=args.seed, stratify=False)
    if len(split[0]) == 0:
        raise ValueError(f"--test-size {args.test_size:g} leaves no training row of {len(X)}")
    return split


def _target_label(table) -> str:
    return f"column {table.target!r}" if isinstance(table.target, str) else f"column {table.target}"


def _report_dropped(table, stream):
    if table.dropped_rows:
        shown = ", ".join(map(str, table.dropped_rows[:10])) + (", ..." if len(table.dropped_rows) > 10 else "")
        print(f"dropped {len(table.dropped_rows)} row(s) of {table.source} with missing values (rows {shown}); "
              f"{len(table.X)} left", file=stream)


# ---- a saved model on a data file: predict, evaluate ---------------------------------------------
def _load_model(args):
    import gpunet as gn

    if args.backend:
        gn.set_backend(args.backend)
    return gn.MLP.load(args.model)


def _model_table(net, path, target, drop_missing):
    """The file's features (and ``target``) for this model. Without a target, a column holding
    the model's own target is ignored: by name, or by index when the file has exactly one
    column more than the model's features."""
    from gpunet.tables import read_data_file

    data = read_data_file(path)
    recorded = net.metadata.get("target")
    ignore = []
    if target is None and recorded is not None:
        if isinstance(recorded, str) or len(data.names) == net.sizes[0] + 1:
            ignore = [recorded]
    return data.table(target, ignore=ignore, drop_missing=drop_missing)


def _model_inputs(net, table):
    """The table's features in the model's column order: by name when both have names (a
    missing or an extra column is named), else by position (the count must match)."""
    if net.feature_names is not None and table.named_columns:
        return table.select(net.feature_names).X
    if table.X.shape[1] != net.sizes[0]:
        trained = f" ({', '.join(net.feature_names)})" if net.feature_names else ""
        raise ValueError(f"{table.source} has {table.X.shape[1]} feature column(s) but the model takes "
                         f"{net.sizes[0]}{trained}")
    return table.X


def _predict(args):
    if args.output:
        _check_folder("-o", args.output)
        if os.path.splitext(args.output)[1].lower() not in PREDICTION_FORMATS:
            raise ValueError(f"-o {args.output}: write predictions to {', '.join(PREDICTION_FORMATS)}")
    net = _load_model(args)
    if args.proba and not net.is_classifier:
        raise ValueError(f"--proba is for classifiers; {args.model} is a regressor (loss {net.loss_fn.name})")
    table = _model_table(net, args.file, None, args.drop_missing)
    _report_dropped(table, sys.stderr)
    X = _model_inputs(net, table)
    if args.proba:
        probabilities = net.predict_proba(X)
        labels = net.classes if net.classes is not None else range(probabilities.shape[1])
        columns = {f"proba_{label}": probabilities[:, k] for k, label in enumerate(labels)}
    else:
        recorded = net.metadata.get("target")
        name = recorded if isinstance(recorded, str) else "prediction"
        predictions = net.predict(X)
        if predictions.ndim == 1 or predictions.shape[1] == 1:
            columns = {name: predictions.reshape(len(predictions))}
        else:
            columns = {f"{name}_{k}": predictions[:, k] for k in range(predictions.shape[1])}
    _write_columns(columns, args.output)
    if args.output:
        print(f"wrote {len(X)} row(s) of {'probabilities' if args.proba else 'predictions'} to {args.output}",
              file=sys.stderr)
    return 0


def _write_columns(columns, path):
    """Equal-length columns as CSV (stdout without a path), .npy (one array: 1-D for one
    column, else 2-D) or Parquet, by the path's extension."""
    suffix = os.path.splitext(path)[1].lower() if path else ".csv"
    if suffix == ".npy":
        values = list(columns.values())
        np.save(path, values[0] if len(values) == 1 else np.column_stack(values))
    elif suffix == ".parquet":
        from gpunet.tables import parquet_pandas
        parquet_pandas().DataFrame(columns).to_parquet(path, index=False)
    elif path is None:
        _write_csv(columns, sys.stdout)    # a reader that leaves early: main ends quietly
    else:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            _write_csv(columns, handle)


def _write_csv(columns, stream):
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    # astype(str) writes each number in the shortest form that reads back to it, in its own dtype
    writer.writerows(zip(*(np.asarray(values).astype(str) for values in columns.values())))


def _evaluate(args):
    from gpunet.metrics import r2_score

    net = _load_model(args)
    target = args.target if args.target is not None else net.metadata.get("target")
    if target is None:
        raise ValueError(f"--target COLUMN is needed: {args.model} does not record the column it was trained "
                         "to predict")
    table = _model_table(net, args.file, target, args.drop_missing)
    _report_dropped(table, sys.stdout)
    X = _model_inputs(net, table)
    # names a label the model does not know, or a target of the wrong kind, with the file and column
    targets = net.validate_targets(table.y, len(X), name=f"{table.source} {_target_label(table)}")
    loss = float(net.evaluate_loss(net.features(X), net.device_targets(targets), include_decay=False))
    print(f"model {args.model}: {net}")
    print(f"data {table.source}: {len(X)} rows, target {_target_label(table)}")
    # the objective fit minimised, without the L2 term (mse's is half the squared error)
    print(f"loss ({net.loss_fn.name}{', 1/2 squared error' if not net.is_classifier else ''}): {loss:.4f}")
    if net.is_classifier:
        print(f"accuracy: {net.score(X, table.y):.4f}")
        if net.loss_fn.label_rule == "argmax" and net.sizes[-1] <= CONFUSION_MAX_CLASSES:
            predicted = net.validate_targets(net.predict(X), len(X))
            labels = net.classes if net.classes is not None else np.arange(net.sizes[-1])
            _print_confusion(targets, predicted, [str(label) for label in labels])
        return 0
    predictions = net.predict(X)
    truth = targets.reshape(predictions.shape)
    errors = predictions - truth
    print(f"R^2: {r2_score(truth, predictions):.4f}")
    print(f"MSE: {float(np.mean(errors ** 2)):.6g}")
    print(f"MAE: {float(np.mean(np.abs(errors))):.6g}")
    if predictions.shape[1] > 1:
        for k in range(predictions.shape[1]):
            print(f"output {k}: R^2 {r2_score(truth[:, k], predictions[:, k]):.4f}, "
                  f"MSE {float(np.mean(errors[:, k] ** 2)):.6g}, MAE {float(np.mean(np.abs(errors[:, k]))):.6g}")
    return 0


def _print_confusion(truth, predicted, labels):
    """The confusion matrix (rows: true class, columns: predicted class) and each class's
    support, precision and recall."""
    k = len(labels)
    matrix = np.bincount(truth * k + predicted, minlength=k * k).reshape(k, k)
    width = max(8, *(len(label) for label in labels))
    print("confusion matrix (rows: true label, columns: predicted label):")
    print(" " * width + "".join(f" {label:>{width}}" for label in labels))
    for label, row in zip(labels, matrix):
        print(f"{label:<{width}}" + "".join(f" {count:>{width}d}" for count in row))
    print(f"{'label':<{width}} {'support':>9} {'precision':>9} {'recall':>9}")
    for j, label in enumerate(labels):
        predicted_j, support = matrix[:, j].sum(), matrix[j].sum()
        precision = f"{matrix[j, j] / predicted_j:.4f}" if predicted_j else "-"
        recall = f"{matrix[j, j] / support:.4f}" if support else "-"
        print(f"{label:<{width}} {support:>9d} {precision:>9} {recall:>9}")


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


def _run(args) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "bench":
        from gpunet.bench import run as run_bench
        return run_bench(args)
    if args.command == "recipe":
        from gpunet.recipes import run_from_args
        return run_from_args(args)
    return _info(args)


def main(argv=None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        status = _run(args)
        sys.stdout.flush()                 # a closed pipe shows here, not at the interpreter's exit
        return status
    except BrokenPipeError:                # the reader (head, say) has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:       # Ctrl-C: one line, the shell's status for SIGINT
        done = getattr(exc, "history", None)
        epochs = f" after {len(done['loss'])} complete epoch(s)" if done is not None else ""
        print(f"gpunet {args.command}: interrupted{epochs}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, ImportError, FloatingPointError, OSError) as exc:
        print(f"gpunet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
