"""Helpers shared by the tests (imported as `from util import ...`; no test module imports another)."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import engine.models as M


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail with TimeoutError instead of hanging (a loader once blocked forever on a FIFO or /proc/self/pagemap).
    Main thread only (SIGALRM)."""
    def expired(*_: Any) -> None:
        raise TimeoutError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights and batch-norm statistics, so that every tensor matters in a comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith(".weight") and t.dim() == 4:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 / fan_in) ** 0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


def small_rrdb(seed: int = 0, **overrides: Any) -> M.SRNet:
    """A small random RRDBNet (1 block, 8 features, growth 4), seeded, in eval mode; `overrides` replace
    hyper-parameters (e.g. scale=2)."""
    torch.manual_seed(seed)
    return M.create("rrdb6", num_block=1, num_feat=8, num_grow_ch=4, **overrides).eval()


def has_gpu() -> bool:
    """Whether this machine has an NVIDIA device node (a GPU the driver exposes)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def no_gpu_message() -> str:
    """The pattern of the RuntimeError a CUDA function of engine._C raises on a machine without a GPU."""
    from engine._ext import load_C

    if load_C().built_with_cuda():
        return r"no CUDA device is available \(cudaGetDeviceCount: "
    return re.escape("engine._C was built without CUDA; rebuild with nvcc on PATH (ENGINE_CUDA=1 pip install -e .)")
