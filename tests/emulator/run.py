"""Run a gpunet command on the host kernel emulator, as ``python -m`` would run it:

    python tests/emulator/run.py -m gpunet.cli train --backend cupy --dataset spirals

The stand-in for ``cupy`` goes in before gpunet is imported and the launches go to the
kernels built for the host (see plugin.py), so ``--backend cupy`` runs the real kernels
here. ``.ci/gpu`` uses it when ``GPUNET_EMULATOR=1``. Slow (every CUDA thread is a fiber):
for checking that a command works end to end, not for timing.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # tests/, for ``emulator``
from emulator import plugin  # noqa: E402  (installs the cupy stand-in)


def main(argv) -> None:
    if len(argv) < 2 or argv[0] != "-m":
        raise SystemExit("usage: python tests/emulator/run.py -m MODULE [ARGS...]")
    plugin.activate(small_grids=False)
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
