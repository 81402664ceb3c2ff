"""Launch layouts of the kernels: block and grid sizes, and the row kernels' variants.

Every layout is a function of the shapes (and, for the shared-memory row kernel, the
device's shared-memory limit), so reductions sum in an order that does not depend on the
device. The grid caps are module constants the kernel emulator lowers (tests/emulator), so
that small tests wrap every grid-stride loop.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from typing import NamedTuple

__all__ = ["BLOCK", "COLUMN_SUMS_ONE_PASS_MAX", "MAX_GRID_1D", "MAX_GRID_ROWS", "MAX_REDUCTION_BLOCKS",
           "WARP_ROW_MAX_COLS", "RESIDENT_THREADS_PER_SM", "sm_count", "whole_waves", "max_dynamic_smem",
           "BLOCK_REGS_THREADS", "LONG_ROW_VARIANTS", "grid_1d", "reduction_grid", "column_sums_chunks",
           "RowLayout", "row_layout", "long_row_variant", "long_rows"]

BLOCK = 256                 # threads per block of the 1-D kernels (the reductions need exactly 256)
MAX_GRID_1D = 4096          # blocks of an element-wise kernel; its grid-stride loop covers the rest
MAX_GRID_ROWS = 4096        # blocks of a row kernel (softmax); likewise grid-strides over rows
MAX_REDUCTION_BLOCKS = 1024  # partial sums of sumsq / mse, summed by one block afterwards
WARP_ROW_MAX_COLS = 1024    # rows up to this width get one warp each, longer ones one block


RESIDENT_THREADS_PER_SM = 2048   # what an SM of sm_80/sm_90 holds at once


_sm_counts: dict = {}


def sm_count() -> int | None:
    """Streaming multiprocessors of the current device (None without a CUDA device)."""
    try:
        import cupy
        dev = cupy.cuda.runtime.getDevice()
        if dev not in _sm_counts:
            props = cupy.cuda.runtime.getDeviceProperties(dev)
            _sm_counts[dev] = int(props["multiProcessorCount"])
        return _sm_counts[dev]
    except Exception:   # no CuPy, no device: the caps stay the fixed ones
        return None


def whole_waves(cap: int, threads_per_block: int) -> int:
    """``cap`` cut down to whole waves of the device, so that a capped grid-stride grid leaves
    no near-empty last wave: a wave is every SM full of ``threads_per_block`` blocks. Caps
    smaller than one wave (the emulator's) and hosts without a device keep ``cap``. Only
    the kernels whose results do not depend on the grid use it (element-wise and row
    kernels); the reductions' grids are functions of the size alone."""
    sms = sm_count()
    if not sms:
        return cap
    wave = sms * max(1, RESIDENT_THREADS_PER_SM // threads_per_block)
    return cap if cap < wave else (cap // wave) * wave


def grid_1d(size: int, cap: int | None = None) -> int:
    """Blocks of BLOCK threads for ``size`` elements, at most ``cap`` (default MAX_GRID_1D
    cut to whole waves); the kernels' grid-stride loops do the rest."""
    limit = whole_waves(MAX_GRID_1D, BLOCK) if cap is None else cap
    return max(1, min(limit, -(-size // BLOCK)))


def reduction_grid(size: int) -> int:
    """Blocks of a two-pass reduction over ``size`` elements: a function of the size only, so
    the summation order, and the result, do not depend on the device."""
    return max(1, min(MAX_REDUCTION_BLOCKS, -(-size // (BLOCK * 8))))


COLUMN_SUMS_ONE_PASS_MAX = 1 << 16   # elements: up to here one launch beats a second pass


def column_sums_chunks(rows: int, cols: int) -> tuple[int, int]:
    """(row chunks, rows per chunk) of ``column_sums``: one chunk (a single launch) up to
    ``COLUMN_SUMS_ONE_PASS_MAX`` elements, where the second launch would cost more than the
    parallelism gains; beyond, enough blocks to fill a large GPU (about 512) when there are
    few 32-column tiles, and chunks of at least 64 rows. A function of the shape only
    (deterministic across devices)."""
    if rows * cols <= COLUMN_SUMS_ONE_PASS_MAX:
        return 1, max(rows, 1)
    tiles = -(-cols // 32)
    chunks = max(1, min(-(-512 // tiles), -(-rows // 64), 65535))
    rows_per_chunk = -(-rows // chunks) if rows else 1
    chunks = -(-rows // rows_per_chunk) if rows else 1
    return chunks, rows_per_chunk


class RowLayout(NamedTuple):
    """How a row kernel of softmax_xent.cu is launched (see ``row_layout``)."""
    kernel: str        # "warp" (a warp per row), "block" or "block_regs" (a block per row)
    block: int         # threads per block
    grid: int          # blocks (capped; the kernels grid-stride over rows)
    mode: int          # warp, block_regs: register slots per thread; block: 1 = row in shared memory
    shared_mem: int    # dynamic shared memory bytes per block


LONG_ROW_VARIANTS = ("shared", "registers")
BLOCK_REGS_THREADS = 1024               # GN_BLOCK_REGS_THREADS in softmax_xent.cu
_BLOCK_REGS_SLOTS = (2, 4, 8, 16, 32)   # the instances of the *_block_regs kernels
_WARP_SLOTS = (1, 4, 32)                # the instances of the *_warp kernels

# the variant chosen by an enclosing ``long_rows`` block, per thread and asyncio task
_long_rows_choice: contextvars.ContextVar = contextvars.ContextVar("gpunet_long_rows", default=None)


def long_row_variant() -> str:
    """How rows longer than WARP_ROW_MAX_COLS are kept between their two passes: "registers"
    (the default: the *_block_regs kernels, up to 32768 float32 / 16384 float64 columns, every
    load of a thread issued before the first is used) or "shared" (shared memory, else a
    second read; also what longer rows get). ``GPUNET_LONG_ROWS`` picks (or, inside it,
    ``long_rows``); the benchmark suite times both on the long-row cases. Registers are the
    default on the estimate that they keep 4x the bytes in flight per SM (~80-90% of copy
    bandwidth at 8192x32768 against ~45-55%); the first GPU benchmark confirms or reverses it."""
    chosen = _long_rows_choice.get()
    if chosen is not None:
        return chosen
    variant = os.environ.get("GPUNET_LONG_ROWS", "registers").strip().lower()
    if variant not in LONG_ROW_VARIANTS:
        raise ValueError(f"GPUNET_LONG_ROWS must be one of {', '.join(LONG_ROW_VARIANTS)}, got {variant!r}")
    return variant


@contextlib.contextmanager
def long_rows(variant: str):
    """Within the block (in this thread or task only), rows over WARP_ROW_MAX_COLS columns take
    ``variant`` ("shared" or "registers"), whatever ``GPUNET_LONG_ROWS`` says."""
    if variant not in LONG_ROW_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LONG_ROW_VARIANTS)}, got {variant!r}")
    token = _long_rows_choice.set(variant)
    try:
        yield
    finally:
        _long_rows_choice.reset(token)


_smem_optin: dict = {}


def max_dynamic_smem() -> int:
    """Bytes of dynamic shared memory a block may opt into on the current device (static
    shared memory of the row kernels, 512 bytes at most, kept aside)."""
    import cupy
    dev = cupy.cuda.runtime.getDevice()
    if dev not in _smem_optin:
        props = cupy.cuda.runtime.getDeviceProperties(dev)
        _smem_optin[dev] = int(props.get("sharedMemPerBlockOptin", props.get("sharedMemPerBlock", 49152))) - 1024
    return _smem_optin[dev]


def row_layout(rows: int, cols: int, itemsize: int, max_smem: int | None = None,
               variant: str | None = None) -> RowLayout:
    """Launch layout of the row kernels for logits (rows, cols) of ``itemsize`` bytes.

    Rows up to WARP_ROW_MAX_COLS wide: one warp each, 8 per block, the row kept in 1, 4 or 32
    registers per lane. Longer rows: one block each. Grids are capped at whole waves of the
    device. ``variant`` (``long_row_variant()`` by default) "registers": 1024 threads keeping
    the row in 2-32 registers each, where it fits;
    otherwise, and with "shared": 256/512/1024 threads as the row grows, the row kept in
    dynamic shared memory when it fits (``max_smem`` bytes, the device's opt-in limit by
    default), else read a second time (mostly from L2).
    """
    if cols <= WARP_ROW_MAX_COLS:
        slots = next(s for s in _WARP_SLOTS if 32 * s >= cols)
        rows_per_block = BLOCK // 32
        return RowLayout("warp", BLOCK, max(1, min(whole_waves(MAX_GRID_ROWS, BLOCK), -(-rows // rows_per_block))),
                         slots, 0)
    if (variant or long_row_variant()) == "registers":
        most = 32 if itemsize <= 4 else 16     # 32 doubles a thread would spill
        slots = next((s for s in _BLOCK_REGS_SLOTS if s <= most and s * BLOCK_REGS_THREADS >= cols), None)
        if slots is not None:
            return RowLayout("block_regs", BLOCK_REGS_THREADS,
                             max(1, min(whole_waves(MAX_GRID_ROWS, BLOCK_REGS_THREADS), rows)), slots, 0)
    block = 256 if cols <= 4096 else 512 if cols <= 16384 else 1024
    row_bytes = cols * itemsize
    if max_smem is None:
        max_smem = max_dynamic_smem()
    keep = row_bytes <= max_smem
    return RowLayout("block", block, max(1, min(whole_waves(MAX_GRID_ROWS, block), rows)), int(keep),
                     row_bytes if keep else 0)
