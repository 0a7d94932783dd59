"""Test session set-up: Triton kernels run under the interpreter on machines without a CUDA device, and no test
leaves process-wide state behind for the tests after it.

TRITON_INTERPRET must be set before triton is imported (its `@triton.jit` decides then), so it is set here, when
pytest loads this file, before any test module imports `kernels`. On a GPU machine the kernels run for real.
"""

import logging
import os
import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _process_state() -> Iterator[None]:
    """A Trainer seeds the global RNGs and gives the 'train' logger its own handlers, and some tests set the
    thread count: all put back after each test, so no test depends on the ones before it
    (tests/test_train_isolation.py checks it)."""
    lg = logging.getLogger("train")
    handlers, propagate, level = list(lg.handlers), lg.propagate, lg.level
    threads, py_rng, np_rng = torch.get_num_threads(), random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)
    random.setstate(py_rng)
    np.random.set_state(np_rng)
    for h in list(lg.handlers):
        if h not in handlers:
            lg.removeHandler(h)
            h.close()
    lg.propagate, lg.level = propagate, level
