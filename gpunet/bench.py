"""``gpunet bench``: run the benchmark suite and report it.

The suite lives in ``benchmarks/`` of a source checkout (it is not inside the wheel); this
module finds it, runs it with ``pytest.main`` and pytest-benchmark, saves pytest-benchmark's
JSON (``pytest-benchmark compare`` reads it), prints one markdown table per case and draws
a PNG. Every rate is divided by a ceiling measured in the same run (BENCHMARKING.md):
the large-matmul rate for compute-bound cases, the copy bandwidth for memory-bound ones.

From a checkout without installing: ``PYTHONPATH=$PWD python -m gpunet.bench --quick``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run", "main", "find_suite", "load_rows", "render_markdown", "render_plot"]

# the order and one-line meaning of the cases in the report
CASES = {
    "mlp_train_step": "whole training step: forward, loss, backward, SGD momentum update",
    "mlp_step_gemms": "the training step alternating with its own GEMMs replayed alone",
    "mlp_forward": "forward pass to the logits",
    "mlp_predict": "predict_proba (checks, thread-safe buffers, host copy) against the bare forward and softmax",
    "mlp_backward": "backward pass from delta_L to every gradient",
    "epoch_digits": "one epoch of fit() on digits (64-256-10, batch 32, SGD momentum)",
    "softmax_xent": "softmax + cross-entropy + gradient from integer labels",
    "bias_act_relu": "bias + ReLU after a GEMM",
    "bias_act_sigmoid": "bias + sigmoid after a GEMM",
    "act_backward_relu": "incoming gradient times ReLU'",
    "act_backward_tanh": "incoming gradient times tanh'",
    "mse_grad": "MSE loss and gradient through a sigmoid output",
    "sgd_update": "SGD momentum + weight decay over the flat parameter buffer",
    "sklearn_fit": "gpunet.sklearn against sklearn.neural_network: fit() with the same hyper-parameters",
    "fit_epoch": "an epoch of fit's steps (784-128-10, batch 128): on a GPU one CUDA graph a step",
    "fit_layouts": "an epoch of fit() on data as users hold it, against the same data C-ordered in the model's dtype",
    "fit_host_batches": "an epoch of fit() from a memory map or a BatchStream, batches streamed from the host, "
                        "against the same data on the device",
    "distributed": "data-parallel fit steps on 1, 2 and 3 MPI ranks (one global batch): the step and the "
                   "gradient all-reduce's share of it (the timed figure is the whole job)",
}
_IMPL_ORDER = ["gpunet", "fused", "fused-shared", "unfused", "torch-eager", "torch-compile"]
_TIER_ORDER = ["small", "medium", "large"]
_PEERS = ["torch-eager", "torch-compile"]


# ---- the command ------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true",
                        help="a short run: small and medium sizes, fewer rounds (minutes on a laptop)")
    parser.add_argument("--backend", default="all", choices=["numpy", "cupy", "all"],
                        help="gpunet backend(s) to time; the PyTorch peer runs on the same device")
    parser.add_argument("--size", action="append", choices=_TIER_ORDER, metavar="{small,medium,large}",
                        help="only this size tier (repeatable; default: all that fit the run)")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where the JSON, markdown and PNG go (default: benchmarks/results)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for NumPy's BLAS and for PyTorch (default: the libraries' own)")
    parser.add_argument("--suite", metavar="DIR", default=None,
                        help="the benchmarks/ directory (default: found next to the gpunet sources)")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", default=None,
                        help="pytest -k expression to pick cases, e.g. 'train_step or ceiling' (default: every case)")
    return parser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpunet bench", description=__doc__.split("\n\n")[0])
    return run(add_arguments(parser).parse_args(argv))


def find_suite(explicit=None):
    """The benchmarks/ directory: ``explicit``, $GPUNET_BENCHMARKS, next to the package
    (a source checkout), or in the working directory. None when there is none."""
    here = Path(__file__).resolve().parent.parent
    if explicit:
        candidates = [explicit]
    else:
        candidates = [os.environ.get("GPUNET_BENCHMARKS"), here / "benchmarks", Path.cwd() / "benchmarks"]
    for cand in candidates:
        if cand and (Path(cand) / "conftest.py").is_file() and (Path(cand) / "benchsupport.py").is_file():
            return Path(cand).resolve()
    return None


def run(args) -> int:
    suite = find_suite(args.suite)
    if suite is None:
        print("gpunet bench: the benchmark suite (benchmarks/) was not found. It ships with the source "
              "checkout, not with the installed package: run `gpunet bench` (or "
              "`PYTHONPATH=$PWD python -m gpunet.bench`) in a clone of the repository, or pass "
              "--suite PATH/TO/benchmarks.", file=sys.stderr)
        return 2
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError as exc:
        print(f"gpunet bench: needs pytest and pytest-benchmark ({exc}); pip install pytest pytest-benchmark",
              file=sys.stderr)
        return 2
    if args.backend == "cupy":
        from .backend import gpu_status
        ok, why = gpu_status()
        if not ok:
            print(f"gpunet bench: --backend cupy, but no GPU is usable: {why}", file=sys.stderr)
            return 2
    if args.threads is not None and args.threads < 1:
        print("gpunet bench: --threads must be a positive integer", file=sys.stderr)
        return 2

    out_dir = Path(args.out) if args.out else suite / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_json = out_dir / f".run-{os.getpid()}.json"
    # no reordering plugin: the second ceilings must close the run
    pytest_args = [str(suite), "-q", "-p", "no:cacheprovider", "-p", "no:randomly", f"--benchmark-json={raw_json}",
                   "--benchmark-sort=name", "--benchmark-columns=median,iqr,rounds",
                   "--benchmark-group-by=group", f"--gpunet-backend={args.backend}"]
    for tier in args.size or []:
        pytest_args.append(f"--gpunet-size={tier}")
    if args.quick:
        pytest_args += ["--gpunet-quick", "--benchmark-max-time=0.2", "--benchmark-min-rounds=3"]
    if args.threads:
        pytest_args.append(f"--gpunet-threads={args.threads}")
    if args.keyword:
        pytest_args += ["-k", args.keyword]

    print(f"gpunet bench: running {suite} ({'quick' if args.quick else 'full'} run)", flush=True)
    start = time.perf_counter()
    status = pytest.main(pytest_args)
    elapsed = time.perf_counter() - start
    data = None
    if raw_json.is_file():
        try:
            with open(raw_json) as fh:
                data = json.load(fh)
        except ValueError:   # pytest-benchmark leaves it empty when no benchmark ran
            pass
        raw_json.unlink()
    if not data or not data.get("benchmarks"):
        print(f"gpunet bench: no benchmark ran (pytest exit status {int(status)}); "
              "check the --backend/--size/-k filters", file=sys.stderr)
        return int(status) or 1
    data.setdefault("machine_info", {}).setdefault("gpunet", {})
    data["machine_info"]["gpunet"].update(
        bench_options={"quick": args.quick, "backend": args.backend, "size": args.size or "all",
                       "threads": args.threads, "keyword": args.keyword},
        bench_seconds=round(elapsed, 1))
    stem = result_stem(data["machine_info"], quick=args.quick)
    json_path = out_dir / f"{stem}.json"
    with open(json_path, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))   # compact: every round's time is in it
        fh.write("\n")

    rows = load_rows(data)
    markdown = render_markdown(rows, data["machine_info"], title=stem)
    md_path = out_dir / f"{stem}.md"
    png_path = out_dir / f"{stem}.png"
    plot_note = ""
    try:
        render_plot(rows, png_path, title=f"gpunet benchmarks: {stem}")
    except ImportError:
        plot_note = "(no plot: matplotlib is not installed)"
        png_path = None
    if png_path is not None:
        markdown += f"\n![speedups and the PyTorch peer]({png_path.name})\n"
    md_path.write_text(markdown)

    print()
    print(markdown)
    print(f"gpunet bench: {len(rows)} results in {elapsed:.0f} s")
    print(f"  JSON      {json_path}  (pytest-benchmark compare {json_path})")
    print(f"  markdown  {md_path}")
    print(f"  plot      {png_path if png_path else plot_note}")
    return 0 if int(status) == 0 else int(status)


def result_stem(machine_info, quick=False) -> str:
    """``<device>_<date>``: the GPU's name when one was used, else the CPU model and core count."""
    facts = machine_info.get("gpunet", {})
    if facts.get("gpu_usable") and facts.get("gpu"):
        device = facts["gpu"]
    else:
        device = f"{facts.get('cpu_model') or machine_info.get('processor') or 'cpu'} {facts.get('cpu_count', '')}cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"
    date = (facts.get("date") or time.strftime("%Y-%m-%d"))[:10]
    return f"{slug}_{date}" + ("_quick" if quick else "")


# ---- reading the JSON -------------------------------------------------------------------
def load_rows(data) -> list[dict]:
    """One dict per benchmark: its extra_info, the median/IQR/rounds, and the rate
    (GFLOP/s or GB/s), ceiling and floor derived from the run's own ceilings."""
    rows = []
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info") or {})
        stats = bench.get("stats") or {}
        if "case" not in info or not stats.get("median"):
            continue
        info.update(name=bench["name"], median=stats["median"], min=stats.get("min", stats["median"]),
                    iqr=stats.get("iqr", 0.0), rounds=stats.get("rounds", 0))
        rows.append(info)
    # A ceiling is the best the machine did: its fastest round (of the measurements at the
    # start and at the end of the run), not a median
    ceilings = {}
    for row in rows:
        if row["case"] != "ceiling":
            continue
        if row["impl"] == "matmul":
            key, rate = (row["device"], "compute", row["dtype"]), row["flops"] / row["min"]
        elif row["impl"] == "copy":
            key, rate = (row["device"], "memory"), row["bytes"] / row["min"]
        else:
            continue
        ceilings[key] = max(rate, ceilings.get(key, 0.0))
    for row in rows:
        if row["case"] == "ceiling":
            amount = row["flops"] if row["bound"] == "compute" else row["bytes"]
            row.update(rate=amount / row["median"], peak=amount / row["min"], ceiling=None, floor=None,
                       fraction=None)
            continue
        if row["bound"] == "compute":
            row["rate"] = row["flops"] / row["median"]
            ceiling = ceilings.get((row["device"], "compute", row["dtype"]))
            amount = row["flops"]
        else:
            row["rate"] = row["bytes"] / row["median"]
            ceiling = ceilings.get((row["device"], "memory"))
            amount = row["bytes"]
        row["ceiling"] = ceiling
        row["floor"] = amount / ceiling if ceiling else None
        row["fraction"] = row["rate"] / ceiling if ceiling else None
    return rows


def _key(row, **changes):
    r = {**row, **changes}
    return (r["case"], r["size"], r["shape"], r["device"], r["impl"], r.get("backend"))


def _ratios(rows):
    """Per row: fused speedup over unfused, CuPy over NumPy, gpunet time over each peer's."""
    by_key = {_key(r): r for r in rows}
    for row in rows:
        if row["impl"].startswith("fused"):    # "fused", or a kernel variant of it
            paired = (row.get("paired") or {}).get("unfused")
            other = by_key.get(_key(row, impl="unfused"))
            if paired:      # alternating rounds: fused/unfused per round, inverted
                row["fused_speedup"] = 1.0 / paired["ratio"]
                row["same_rounds_unfused"] = paired["median"]
            elif other:
                row["fused_speedup"] = other["median"] / row["median"]
        if row["backend"] == "cupy":
            other = by_key.get(_key(row, device="cpu", backend="numpy"))
            if other:
                row["gpu_speedup"] = other["median"] / row["median"]
        if row["impl"] == "gpunet":
            paired = row.get("paired") or {}
            if "gemms" in paired:   # step/GEMMs per alternating round: the rest is outside them
                row["outside_gemms"] = 1.0 - 1.0 / paired["gemms"]["ratio"]
                row["same_rounds_gemms"] = paired["gemms"]["median"]
            if "bare" in paired:    # the public call over the bare pass it wraps, per round
                row["over_bare"] = paired["bare"]["ratio"]
                row["same_rounds_bare"] = paired["bare"]["median"]
            if "c-order" in paired:   # the layout's fit over the C-ordered array's, per round
                row["over_c_order"] = paired["c-order"]["ratio"]
                row["same_rounds_c_order"] = paired["c-order"]["median"]
            if "in-device" in paired:   # batches from the host over the data held on the device, per round
                row["over_in_device"] = paired["in-device"]["ratio"]
                row["same_rounds_in_device"] = paired["in-device"]["median"]
            if "eager" in paired:   # the graphed epoch over its eager steps, per round
                row["over_eager"] = paired["eager"]["ratio"]
                row["same_rounds_eager"] = paired["eager"]["median"]
            if "scikit-learn" in paired:   # the estimators' fits in alternating rounds
                row["vs_scikit-learn"] = paired["scikit-learn"]["ratio"]
                row["same_rounds_scikit-learn"] = paired["scikit-learn"]["median"]
            for peer in _PEERS:
                if peer in paired:      # alternating rounds: the ratio the run measured directly
                    row[f"vs_{peer}"] = paired[peer]["ratio"]
                    row[f"same_rounds_{peer}"] = paired[peer]["median"]
                else:
                    other = by_key.get(_key(row, impl=peer, backend="torch"))
                    if other:
                        row[f"vs_{peer}"] = row["median"] / other["median"]
    return rows


# ---- formatting -------------------------------------------------------------------------
def fmt_time(seconds) -> str:
    if seconds is None:
        return ""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_rate(row, key="rate") -> str:
    unit = "GFLOP/s" if row["bound"] == "compute" else "GB/s"
    return f"{row[key] / 1e9:.3g} {unit}"


def _pct(x):
    return "" if x is None else f"{100 * x:.0f}%"


def _x(x):
    return "" if x is None else f"{x:.2f}"


def _ratio_cell(row, key):
    """The ratio, and the other side's median in the same alternating rounds when paired."""
    if key not in row:
        return ""
    other = {"fused_speedup": "same_rounds_unfused", "vs_torch-eager": "same_rounds_torch-eager",
             "vs_torch-compile": "same_rounds_torch-compile",
             "vs_scikit-learn": "same_rounds_scikit-learn"}.get(key)
    if other and other in row:
        return f"{row[key]:.2f} (vs {fmt_time(row[other])})"
    return _x(row[key])


def _backend_label(row):
    return f"torch {row['device']}" if row["backend"] == "torch" else row["backend"]


def _sort_key(row):
    return (_TIER_ORDER.index(row["size"]) if row["size"] in _TIER_ORDER else 9, row.get("work", 0),
            row["device"] != "cpu", _IMPL_ORDER.index(row["impl"]) if row["impl"] in _IMPL_ORDER else 9)


def _table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def render_markdown(rows, machine_info, title="") -> str:
    rows = _ratios(rows)
    facts = machine_info.get("gpunet", {})
    out = [f"## gpunet benchmarks: {title}", ""]
    out.append(_machine_line(machine_info))
    out.append("")
    out.append("Medians. Rates are FLOPs (the GEMMs an MLP performs) or the fewest bytes a case must "
               "move, per second; *of ceiling* divides by the ceilings below, measured in the same run, "
               "and *floor* is the time at the ceiling. The copy ceiling is main-memory bandwidth: "
               "an op whose arrays fit in cache can pass it (over 100%). gpunet/PyTorch is gpunet's time over the peer's "
               "(below 1: gpunet is faster). The peer's ratio and the fused speedup are medians of "
               "per-round ratios from rounds that alternate the two (A B A B), so they compare the "
               "same moments of a shared machine; in brackets, the other side's median in those "
               "rounds. The rows of the peer and of the unfused op are their own, separate runs, "
               "taken at other moments. *Outside GEMMs* (mlp_step_gemms) is the share of a training "
               "step not spent in its GEMMs: the step's own GEMMs (same operands and buffers) are "
               "replayed alone in rounds alternating with the step and nothing else. *public/bare* (mlp_predict) is "
               "``predict_proba``'s time over the bare forward pass and softmax it wraps, per alternating round: "
               "what its input checks and thread-safe buffers cost. *fused-shared* is the CUDA variant for rows over "
               "1024 columns that keeps each row in shared memory (GPUNET_LONG_ROWS=shared) beside the "
               "default, which keeps it in registers. On a GPU, *host time to queue* is how long the "
               "host takes to launch one call: near the median, launch overhead bounds the case.")
    out.append("")
    ceil_rows = sorted((r for r in rows if r["case"] == "ceiling"),
                       key=lambda r: (r["device"], r["impl"], r["dtype"], r.get("moment") != "start"))
    if ceil_rows:
        out.append("### ceilings")
        out.append("")
        out.append("Each is measured at the start and at the end of the run; the fastest round of either "
                   "is the ceiling.")
        out.append("")
        out.append(_table(["device", "measure", "size", "when", "median", "rate at the median", "fastest round"],
                          [[r["device"], f"{r['impl']} {r['dtype']}" if r["impl"] == "matmul" else "copy",
                            r["shape"], r.get("moment", ""), fmt_time(r["median"]), fmt_rate(r),
                            fmt_rate(r, "peak")] for r in ceil_rows]))
        out.append("")
    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    cases += sorted({r["case"] for r in rows} - set(CASES) - {"ceiling"})
    for case in cases:
        crow = sorted((r for r in rows if r["case"] == case), key=_sort_key)
        columns = [("size", lambda r: r["size"]), ("shape", lambda r: r["shape"]),
                   ("impl", lambda r: r["impl"]), ("backend", _backend_label),
                   ("median", lambda r: fmt_time(r["median"])), ("rounds", lambda r: str(r["rounds"])),
                   ("achieved", fmt_rate), ("of ceiling", lambda r: _pct(r["fraction"])),
                   ("floor", lambda r: fmt_time(r["floor"]))]
        if any("solver" in r for r in crow):
            columns[1:1] = [("dataset, solver", lambda r: f"{r.get('dataset', '')}, {r.get('solver', '')}")]
        if any("peer_score" in r for r in crow):
            columns.append(("score: gpunet / scikit-learn", lambda r: "" if "peer_score" not in r else
                            f"{r['score']:.4f} / {r['peer_score']:.4f} ({r.get('score_name', '')})"))
        if any(r.get("host_time") for r in crow):
            columns.append(("host time to queue", lambda r: fmt_time(r.get("host_time"))))
        if any("outside_gemms" in r for r in crow):
            columns.append(("outside GEMMs", lambda r: "" if "outside_gemms" not in r else
                            f"{_pct(r['outside_gemms'])} (GEMMs alone {fmt_time(r['same_rounds_gemms'])})"))
        if any("layout" in r for r in crow):
            columns[1:1] = [("layout", lambda r: r.get("layout", ""))]
        if any("over_c_order" in r for r in crow):
            columns.append(("layout/C order", lambda r: "" if "over_c_order" not in r else
                            f"{_x(r['over_c_order'])} (C order {fmt_time(r['same_rounds_c_order'])})"))
        if any("ranks" in r for r in crow):
            columns[1:1] = [("ranks", lambda r: str(r.get("ranks", "")))]
            columns.append(("step (median)", lambda r: fmt_time(r.get("step_time"))))
            columns.append(("all-reduce", lambda r: "" if "allreduce_share" not in r else
                            f"{fmt_time(r['allreduce_time'])} ({_pct(r['allreduce_share'])} of a step)"))
        if any("source" in r for r in crow):
            columns[1:1] = [("source", lambda r: r.get("source", ""))]
        if any("over_in_device" in r for r in crow):
            columns.append(("host/device", lambda r: "" if "over_in_device" not in r else
                            f"{_x(r['over_in_device'])} (on the device {fmt_time(r['same_rounds_in_device'])})"))
        if any("over_eager" in r for r in crow):
            columns.append(("graph/eager", lambda r: "" if "over_eager" not in r else
                            f"{_x(r['over_eager'])} (eager {fmt_time(r['same_rounds_eager'])})"))
        if any("over_bare" in r for r in crow):
            columns.append(("public/bare", lambda r: "" if "over_bare" not in r else
                            f"{_x(r['over_bare'])} (bare {fmt_time(r['same_rounds_bare'])})"))
        optional = [("fused speedup", "fused_speedup"), ("CuPy/NumPy speedup", "gpu_speedup"),
                    ("gpunet/PyTorch eager", "vs_torch-eager"), ("gpunet/torch.compile", "vs_torch-compile"),
                    ("gpunet/scikit-learn", "vs_scikit-learn")]
        for label, key in optional:
            if any(key in r for r in crow):
                columns.append((label, lambda r, key=key: _ratio_cell(r, key)))
        out.append(f"### {case}: {CASES.get(case, '')}".rstrip(": "))
        out.append("")
        out.append(_table([c for c, _ in columns], [[f(r) for _, f in columns] for r in crow]))
        out.append("")
    summary = _summary(rows)
    if summary:
        out.insert(4, summary + "\n")
    if facts.get("bench_seconds") is not None:
        out.append(f"Run took {facts['bench_seconds']:.0f} s.")
    return "\n".join(out).rstrip() + "\n"


def _machine_line(machine_info) -> str:
    f = machine_info.get("gpunet", {})
    parts = [f"CPU {f.get('cpu_model', '?')} ({f.get('cpu_count', '?')} cores)"]
    if f.get("gpu_usable"):
        parts.append(f"GPU {f.get('gpu')} ({f.get('gpu_memory_gib')} GiB, driver {f.get('cuda_driver')}, "
                     f"runtime {f.get('cuda_runtime')}, CuPy {f.get('cupy')})")
    else:
        parts.append("no GPU")
    blas = f.get("blas") or {}
    parts.append(f"Python {f.get('python')}, NumPy {f.get('numpy')} ({blas.get('name', '?')} {blas.get('version', '')})")
    pools = [p for p in f.get("threadpools") or [] if p.get("internal_api") in ("openblas", "mkl", "blis")]
    # NumPy's own BLAS (other libraries may load a second one)
    pools.sort(key=lambda p: "numpy" not in (p.get("filepath") or ""))
    if pools:
        parts.append(f"NumPy BLAS threads {pools[0].get('num_threads')}")
    if f.get("torch"):
        parts.append(f"PyTorch {f['torch']} ({f.get('torch_threads')} threads)")
    else:
        parts.append("no PyTorch")
    if f.get("loadavg"):
        load = f"load average (1, 5, 15 min) at start {' '.join(f'{x:.1f}' for x in f['loadavg'])}"
        if f.get("loadavg_at_end"):
            load += f", at end {' '.join(f'{x:.1f}' for x in f['loadavg_at_end'])}"
        parts.append(load)
    date = (f.get("date") or "")[:16].replace("T", " ")
    return f"{date}; " + "; ".join(parts) + "."


def _summary(rows) -> str:
    """The headline: train step against the matmul ceiling and against PyTorch."""
    lines = []
    outside = {(r["backend"], r["size"]): r["outside_gemms"] for r in rows
               if r["case"] == "mlp_step_gemms" and "outside_gemms" in r}
    for row in sorted((r for r in rows if r["case"] == "mlp_train_step" and r["impl"] == "gpunet"), key=_sort_key):
        bits = [f"{row['backend']} {row['size']} ({row['shape']}): {fmt_time(row['median'])}, "
                f"{fmt_rate(row)}"]
        if row["fraction"] is not None:
            bits.append(f"{_pct(row['fraction'])} of the matmul ceiling (floor {fmt_time(row['floor'])})")
        if (row["backend"], row["size"]) in outside:
            bits.append(f"{_pct(outside[row['backend'], row['size']])} of it outside the GEMMs")
        for peer in _PEERS:
            if f"vs_{peer}" in row:
                bits.append(f"{_x(row[f'vs_{peer}'])}x the time of PyTorch {peer.split('-')[1]}")
        if "gpu_speedup" in row:
            bits.append(f"{_x(row['gpu_speedup'])}x faster than NumPy")
        lines.append("- train step, " + "; ".join(bits))
    for backend in ("numpy", "cupy"):
        fits = [r for r in rows if r["case"] == "sklearn_fit" and r["backend"] == backend and "vs_scikit-learn" in r]
        if fits:
            ratios = sorted(r["vs_scikit-learn"] for r in fits)
            worst = min(fits, key=lambda r: r["score"] - r["peer_score"])
            lines.append(f"- gpunet.sklearn on {backend}: fit() takes {_x(ratios[0])}-{_x(ratios[-1])}x "
                         f"(median {_x(statistics.median(ratios))}x) the time of sklearn.neural_network over "
                         f"{len(fits)} dataset and solver pairs; the largest score shortfall is "
                         f"{worst['peer_score'] - worst['score']:+.4f} ({worst['dataset']}, {worst['solver']})")
    return "\n".join(lines)


# ---- the plot ---------------------------------------------------------------------------
def render_plot(rows, path, title=""):
    """Panels: fused over unfused speedup against size; CuPy over NumPy speedup against
    size (when the run had a GPU); gpunet against the PyTorch peer (train step and epoch)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ratios(rows)
    has_gpu = any("gpu_speedup" in r for r in rows)
    if has_gpu:
        fig, (ax_fused, ax_gpu, ax_peer) = plt.subplots(1, 3, figsize=(18, 5.5), constrained_layout=True)
    else:   # a CPU-only run has no CuPy/NumPy speedup to draw
        fig, (ax_fused, ax_peer) = plt.subplots(1, 2, figsize=(13, 5.5), constrained_layout=True)

    # 1: fused op over its unfused composition, per device, against the element count
    series = {}
    for r in rows:
        if "fused_speedup" in r:
            series.setdefault(f"{r['case']} ({r['backend']})", []).append((r["work"], r["fused_speedup"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax_fused.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax_fused.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax_fused.set_xscale("log")
    ax_fused.set_xlabel("elements (array size)")
    ax_fused.set_ylabel("speedup: unfused time / fused time")
    ax_fused.set_title("Fused op vs the unfused composition")
    if series:
        ax_fused.legend(fontsize=7)
    else:
        ax_fused.text(0.5, 0.5, "no fused-op results in this run", ha="center", transform=ax_fused.transAxes)

    # 2: CuPy over NumPy, per case, against the work (FLOPs for MLPs, elements for ops)
    if has_gpu:
        series = {}
        for r in rows:
            if "gpu_speedup" in r:
                series.setdefault(f"{r['case']} {r['impl']}", []).append((r["work"], r["gpu_speedup"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax_gpu.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax_gpu.set_xscale("log")
        ax_gpu.set_yscale("log")
        ax_gpu.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax_gpu.set_xlabel("work (FLOPs for MLP cases, elements for ops)")
        ax_gpu.set_ylabel("speedup: NumPy time / CuPy time")
        ax_gpu.set_title("CuPy over NumPy")
        ax_gpu.legend(fontsize=7)

    # 3: gpunet against the peer: achieved GFLOP/s per implementation, matmul ceiling dashed
    peer_rows = [r for r in rows if r["case"] in ("mlp_train_step", "epoch_digits")]
    groups = sorted({(r["case"], r["size"], r["shape"], r["device"]) for r in peer_rows},
                    key=lambda g: (g[0] != "mlp_train_step", g[3], _TIER_ORDER.index(g[1]) if g[1] in _TIER_ORDER else 9))
    impls = ["gpunet", *_PEERS]
    width = 0.8 / len(impls)
    colors = {"gpunet": "tab:blue", "torch-eager": "tab:orange", "torch-compile": "tab:green"}
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, g in enumerate(groups):
            in_group = [r for r in peer_rows if (r["case"], r["size"], r["shape"], r["device"]) == g]
            mine = next((r for r in in_group if r["impl"] == "gpunet"), None)
            own = next((r for r in in_group if r["impl"] == impl), None)
            rate = None
            if impl != "gpunet" and mine is not None and f"same_rounds_{impl}" in mine:
                rate = mine["flops"] / mine[f"same_rounds_{impl}"]   # the peer in gpunet's rounds
            elif own is not None:
                rate = own["rate"]
            if rate is not None:
                xs.append(j + (i - (len(impls) - 1) / 2) * width)
                ys.append(rate / 1e9)
        if xs:
            ax_peer.bar(xs, ys, width, label=impl if impl != "gpunet" else "gpunet (numpy / cupy)", color=colors[impl])
    for j, g in enumerate(groups):
        ceiling = next((r["ceiling"] for r in peer_rows
                        if (r["case"], r["size"], r["shape"], r["device"]) == g and r["ceiling"]), None)
        if ceiling:
            ax_peer.hlines(ceiling / 1e9, j - 0.45, j + 0.45, colors="black", linestyles="dashed", lw=1)
        gp = next((r for r in peer_rows if (r["case"], r["size"], r["shape"], r["device"]) == g
                   and r["impl"] == "gpunet" and "vs_torch-eager" in r), None)
        if gp:
            ax_peer.annotate(f"{gp['vs_torch-eager']:.2f}x eager time", (j, gp["rate"] / 1e9),
                             textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax_peer.set_xticks(range(len(groups)))
    ax_peer.set_xticklabels([f"{'step' if g[0] == 'mlp_train_step' else 'epoch'} {g[1]}\n{g[3]}" for g in groups],
                            fontsize=8)
    ax_peer.set_yscale("log")
    ax_peer.set_ylabel("achieved GFLOP/s (dashed: matmul ceiling)")
    ax_peer.set_xlabel("peers timed in rounds alternating with gpunet's")
    ax_peer.set_title("gpunet vs PyTorch: train step and digits epoch")
    if groups:
        ax_peer.legend(fontsize=7)
    else:
        ax_peer.text(0.5, 0.5, "no train-step results in this run", ha="center", transform=ax_peer.transAxes)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
