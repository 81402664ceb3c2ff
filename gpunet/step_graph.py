"""A fit step as one CUDA graph: captured once per batch shape, replayed for every step.

A small network's step is bound by the host: each of its dozen launches costs the host a
few microseconds, more than the GPU spends on it. Replayed as a CUDA graph the whole step
is one launch. A replay cannot take new arguments, so what changes between steps is read
from device memory: the batch's place in the epoch's order (the gather kernel indexes a
fixed order buffer by the step counter), and the optimizer's per-step scalars (the learning
rate under a schedule, Adam's bias corrections: ``gpunet.optim.StepTable``, written once per
epoch). The graph's last launch advances the counter. The GEMMs are gpunet's own kernel
(kernels/gemm.cu): CuPy refuses cuBLAS while a stream is captured.

Per epoch the host copies the order and the table rows once, then launches the graph once a
step (the write lock of the parameters held around each launch, as for an eager update).
The first step of each batch shape runs eagerly (it compiles kernels and makes buffers),
the next is captured, every later one replayed. The arithmetic is the eager step's, kernel
for kernel: a graphed fit ends with the parameters bit for bit of an eager fit that uses
the same GEMM kernel (``backend.kernel_gemms``).

When: ``GPUNET_CUDA_GRAPHS=1`` forces graphs wherever they can run, ``0`` never; by default
they run where they win, steps of at most ``GRAPH_MAX_STEP_FLOPS``. The estimate behind it
(to be replaced by the GPU benchmark's figure): a replay saves the host ~5 us a launch, ~55
us a step, while gpunet's GEMM runs at perhaps a third of cuBLAS's rate (~15 of ~50 TFLOP/s
in float32 on an H100), costing ~4.7e-14 s per FLOP more: even at 1.2 GFLOP a step. They
run only where every part of the step can be captured: the CuPy backend, an optimizer with
step tables (SGD, Adam, AdamW, RMSprop), no sample weights.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from .optim import StepTable

__all__ = ["StepGraph", "GRAPHS_ENV", "GRAPH_MAX_STEP_FLOPS", "graphs_wanted"]

log = logging.getLogger("gpunet")

GRAPHS_ENV = "GPUNET_CUDA_GRAPHS"
GRAPH_MAX_STEP_FLOPS = 1.0e9


def _step_flops(sizes, rows) -> int:
    """The GEMMs of one step: 2 forward, 4 backward FLOPs per weight and example."""
    return 6 * rows * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def graphs_wanted(net, optimizer, plan) -> bool:
    """Whether ``fit`` runs its steps as graph replays (see the module docstring)."""
    choice = os.environ.get(GRAPHS_ENV, "").strip()
    if choice not in ("", "0", "1"):
        raise ValueError(f"{GRAPHS_ENV} must be 0 or 1, got {choice!r}")
    if choice == "0":
        return False
    able = (getattr(net.backend, "can_capture_graphs", False) and getattr(optimizer, "supports_step_tables", False)
            and plan.feed is None and plan.weights is None and plan.n > 0)
    if choice == "1" or not able:
        return able
    return _step_flops(net.sizes, plan.batch_size) <= GRAPH_MAX_STEP_FLOPS


class StepGraph:
    """Runs the epochs of one ``fit`` for its ``TrainingStep`` as graph replays."""

    def __init__(self, step, plan):
        self.step, self.plan = step, plan
        be, net = step.net.backend, step.net
        self.order = be.zeros(plan.n, np.int64)          # the epoch's order, at a fixed address
        self.table = StepTable(be, plan.steps_per_epoch, net.dtype)
        self.batches = {}                                  # rows -> (x, targets) buffers
        self.graphs = {}                                   # rows -> captured graph
        self.failed = False                                # a capture was refused: eager steps

    def run_epoch(self, order, lrs):
        """One epoch in ``order`` (host indices) with the learning rates ``lrs`` of its steps
        (None: the optimizer's own)."""
        step, plan, be = self.step, self.plan, self.step.net.backend
        optimizer, net = step.optimizer, step.net
        be.copy_to_device(self.order, np.asarray(order, dtype=np.int64))
        self.table.load(optimizer.table_rows(lrs, net.weight_decay))
        with be.kernel_gemms():
            for index in range(len(lrs)):
                rows = min(plan.batch_size, plan.n - index * plan.batch_size)
                step.steps += 1
                with step.updating():
                    self._run(rows)
        optimizer.advance(len(lrs))

    def _run(self, rows):
        """Step ``rows`` by its graph: eagerly the first time, captured the second, then
        replayed. Should a capture fail, the fit goes on with the same steps run eagerly."""
        graph = self.graphs.get(rows)
        if graph is None:
            if rows not in self.batches or self.failed:
                self._device_step(rows)                # compiles, makes buffers and state
                return
            try:
                graph = self.step.net.backend.capture(lambda: self._device_step(rows))
            except Exception as exc:   # noqa: BLE001 - any refusal of the capture: run eagerly
                log.warning("gpunet: the fit step could not be captured as a CUDA graph (%s: %s); "
                            "it runs eagerly", type(exc).__name__, exc)
                self.failed = True
                self._device_step(rows)
                return
            self.graphs[rows] = graph
            log.debug("gpunet: captured the fit step for batches of %d rows as a CUDA graph", rows)
        graph.launch()

    def _device_step(self, rows):
        """The step's device work, every launch reading what changes from device memory."""
        step, plan = self.step, self.plan
        be = step.net.backend
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = (be.empty((rows, *plan.x.shape[1:]), plan.x.dtype),
                                          be.empty((rows, *plan.targets.shape[1:]), plan.targets.dtype))
        be.gather_rows(self.order, (plan.x, plan.targets), batch, step=self.table.step,
                       step_stride=plan.batch_size)
        step.device_step(batch[0], batch[1], self.table)
        be.advance_step(self.table.step)
