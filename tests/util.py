"""Helpers shared by the tests (imported as `from util import ...`; no test module imports another)."""

from __future__ import annotations

import copy
import re
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from published_layouts import LAYOUTS

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


# Outputs of a round trip, compared in float64 (images in [0, 1]). The loaded network holds the very weights of the
# built one and runs the same code, so at most float64 rounding may differ; the published implementations order
# their sums differently and add and remove the mean as a float32 bias range·mean where ours subtracts the float32
# mean, a difference of ~1e-8 of the range that the network's gain carries to the output.
ROUND_TRIP_ATOL, ROUND_TRIP_RTOL = 1e-12, 0.0
PUBLISHED_ATOL, PUBLISHED_RTOL = 1e-6, 1e-6


def assert_round_trip(arch: str, hparam_sets: list[dict[str, Any]]) -> dict[str, int]:
    """For each hyper-parameter set: build `arch` with random weights (seeded), save it in every layout that
    holds it (our safetensors by engine.models.save; tests/published_layouts.LAYOUTS[arch] as .pth by torch.save),
    load each file back with engine.models.load, and check the architecture, the format and wrapper reported, the
    output (float64, on a (2, C, 4m, 5m) input, m the input multiple, of the shape the scale gives) and that the
    hyper-parameters detected equal the built network's. Raises AssertionError naming the arch, the set and the
    layout. Returns how many sets each layout checked (a layout that cannot hold a set's hyper-parameters exactly
    skips it)."""
    checked: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, hparams in enumerate(hparam_sets):
            net = M.build(arch, hparams)
            randomize_(net, seed=i)
            m, g = net.input_multiple, torch.Generator().manual_seed(100 + i)
            x = torch.rand(2, net.in_channels, 4 * m, 5 * m, generator=g, dtype=torch.float64)
            expected = _out64(net, x)
            what = f"{arch} {hparams}"
            if expected.shape != (2, net.out_channels, 4 * m * net.scale, 5 * m * net.scale):
                raise AssertionError(f"{what}: output shape {list(expected.shape)} for input {list(x.shape)}")
            path = Path(tmp) / f"{i}.safetensors"
            M.save(net, path)
            _check_loaded(f"{what} as our safetensors", path, net, x, expected, "safetensors", None)
            checked["safetensors"] = checked.get("safetensors", 0) + 1
            for layout in LAYOUTS.get(arch, []):
                written = layout.write(net)
                if written is None:
                    continue
                where = f"{what} in the {layout.name} layout"
                if written.published is not None:
                    _check_close(f"{where}: the published implementation holding the weights",
                                 _out64(written.published, x), expected, PUBLISHED_ATOL, PUBLISHED_RTOL)
                path = Path(tmp) / f"{i}.{layout.name}.pth"
                torch.save(written.checkpoint, path)
                _check_loaded(where, path, net, x, expected, layout.format, layout.wrapper)
                checked[layout.name] = checked.get(layout.name, 0) + 1
    return checked


def _out64(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(net).double().eval()(x)


def _check_close(what: str, got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: output shape {list(got.shape)}, expected {list(expected.shape)}")
    if not torch.allclose(got, expected, atol=atol, rtol=rtol):
        error = float((got - expected).abs().max())
        raise AssertionError(f"{what}: the output differs by up to {error:.3g} (atol {atol}, rtol {rtol})")


def _check_loaded(what: str, path: Path, net: M.SRNet, x: torch.Tensor, expected: torch.Tensor, fmt: str,
                  wrapper: str | None) -> None:
    try:
        model, info = M.load(path)
    except M.CheckpointError as e:
        raise AssertionError(f"{what}: does not load: {e}") from None
    if (info.arch, info.format, info.wrapper) != (net.arch, fmt, wrapper):
        raise AssertionError(f"{what}: loads as arch {info.arch}, format {info.format}, wrapper {info.wrapper}; "
                             f"expected {net.arch}, {fmt}, {wrapper}")
    _check_close(what, _out64(model, x), expected, ROUND_TRIP_ATOL, ROUND_TRIP_RTOL)
    if info.hparams != net.hparams:
        raise AssertionError(f"{what}: hparams detected {info.hparams}, built {net.hparams}")
