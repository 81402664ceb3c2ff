"""The fused CUDA kernels of ``kernels/*.cu``, split by job:

- ``gpunet.cuda.sources``: finding the sources, the text compiled for each topic (the shared
  prelude, the activations generated from ``gpunet.activations``, then the topic), compiling
  and loading it through ``cupy.RawModule`` on first use, and compiling it offline (NVRTC or
  nvcc, no GPU needed) for ``gpunet info`` and the tests;
- ``gpunet.cuda.layout``: launch layouts (block and grid sizes, the row kernels' variants),
  functions of the shapes only;
- ``gpunet.cuda.launch``: one thin launcher per kernel, which checks its arguments, casts
  scalars to the kernel's C types, picks the float or double instance and launches.

Nothing here is imported by ``import gpunet``; ``CupyBackend`` imports the launchers.
"""
