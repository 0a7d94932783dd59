"""Test session set-up: Triton kernels run under the interpreter on machines without a CUDA device.

TRITON_INTERPRET must be set before triton is imported (its `@triton.jit` decides then), so it is set here, when
pytest loads this file, before any test module imports `kernels`. On a GPU machine the kernels run for real.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
