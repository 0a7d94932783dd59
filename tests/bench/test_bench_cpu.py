"""Benchmarks of the CPU forward of the shipped default model (weights/tiny_x4.safetensors, ×4) on a 64×64 input,
fp32, one group ("forward default model cpu") so the two engines sit side by side:

    test_forward_torch_eager   engine.backends.torch_eager.TorchBackend (PyTorch eager, inference mode, torch's threads)
    test_forward_onnxruntime   engine.backends.ort.from_network (ONNX Runtime, CPU provider, default options)

Each output is checked against the network in float64 (1e-4, as tests/test_onnx.py checks the shipped model).
extra_info: shapes, dtype, threads, flops (2 per multiply-add of `engine.models.flops.macs_per_pixel`) and, when
timed, tflops at the median. CI runs them once each with `--benchmark-disable`; to time and compare:

    python -m pytest tests/bench --benchmark-enable --benchmark-autosave
    pytest-benchmark compare 0001 0002 --group-by=group
    python -m pytest tests/bench --benchmark-enable --benchmark-compare=0001 --benchmark-compare-fail=median:10%
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("pytest_benchmark")

import engine.models as M  # noqa: E402
from engine.backends.ort import from_network  # noqa: E402
from engine.backends.torch_eager import TorchBackend  # noqa: E402
from engine.models.flops import macs_per_pixel  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "tiny_x4.safetensors"
SIDE = 64
GROUP = "forward default model cpu"


@pytest.fixture(scope="module")
def shipped() -> tuple[M.SRNet, torch.Tensor, torch.Tensor]:
    """The default model, a 64×64 input and the float64 reference output."""
    net = M.load(WEIGHTS)[0].eval()
    x = torch.rand(1, net.in_channels, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = copy.deepcopy(net).double()(x.double())
    return net, x, ref


def _info(net: M.SRNet, x: torch.Tensor, threads: int | str) -> dict[str, Any]:
    n, _, h, w = x.shape
    return dict(flops=2 * macs_per_pixel(net) * n * h * w, input=list(x.shape),
                output=[n, net.out_channels, h * net.scale, w * net.scale], dtype="fp32", threads=threads,
                model=WEIGHTS.name)


def test_forward_torch_eager(measure: Callable[..., Any], shipped: tuple) -> None:
    net, x, ref = shipped
    backend = TorchBackend(copy.deepcopy(net))
    out = measure(lambda: backend.run(x), group=GROUP, **_info(net, x, torch.get_num_threads()))
    assert out.shape == ref.shape and (out.double() - ref).abs().max() < 1e-4


def test_forward_onnxruntime(measure: Callable[..., Any], shipped: tuple) -> None:
    net, x, ref = shipped
    backend = from_network(copy.deepcopy(net))
    out = measure(lambda: backend.run(x), group=GROUP, **_info(net, x, backend.threads or "onnxruntime default"))
    assert out.shape == ref.shape and (out.double() - ref).abs().max() < 1e-4
