"""Weights that would give silently wrong images are refused (issue 15.10): integer, bool or complex tensors where
floating-point weights belong, NaN and Inf (also float64 values that overflow float32); half, bfloat16 and float64
weights load, converted to float32."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from util import randomize_

import engine.models as M

KEY = "body.0.rdb1.conv2.weight"  # 2 × 6 × 3 × 3 = 108 values


def _net() -> M.SRNet:
    return randomize_(M.build("rrdbnet", dict(num_feat=4, num_block=1, num_grow_ch=2)))


def _error(path: Path) -> str:
    with pytest.raises(M.CheckpointError) as e:
        M.load(path)
    assert str(e.value).startswith(f"{path}: ")
    return str(e.value)


@pytest.mark.parametrize("dtype, writer", [
    *((dtype, writer) for dtype in (torch.int64, torch.int32, torch.uint8, torch.bool) for writer in ("torch", "st")),
    (torch.complex64, "torch"),  # safetensors stores no complex tensors
])
def test_weights_that_are_not_floating_point_are_refused(tmp_path: Path, dtype: torch.dtype, writer: str) -> None:
    sd = _net().state_dict()
    sd[KEY] = sd[KEY].to(dtype)
    path = tmp_path / f"net.{'pth' if writer == 'torch' else 'safetensors'}"
    if writer == "torch":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    name = str(dtype).removeprefix("torch.")
    assert f"tensor {KEY!r} holds {name} values where a network's weights are floating-point numbers" in _error(path)


def _with(value: float, count: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    sd = {k: v.to(dtype) for k, v in _net().state_dict().items()}
    sd[KEY].view(-1)[5:5 + count] = value
    return sd


@pytest.mark.parametrize("writer", ["torch", "ours", "in memory"])
def test_nan_weights_are_refused_naming_the_tensor(tmp_path: Path, writer: str) -> None:
    sd = _with(float("nan"), 12)
    expected = (f"tensor {KEY!r} holds NaN (12 of 108 values); the checkpoint is damaged or diverged in training; "
                "use an earlier one")
    if writer == "in memory":
        with pytest.raises(M.CheckpointError, match="^" + re.escape(f"<state dict>: {expected}") + "$"):
            M.load(sd)
        return
    path = tmp_path / "net.safetensors"
    if writer == "torch":
        torch.save(sd, path)
    else:
        net = _net()
        net.load_state_dict(sd)
        M.save(net, path)
    assert _error(path) == f"{path}: {expected}"


def test_inf_and_float64_overflow_are_refused(tmp_path: Path) -> None:
    torch.save(_with(float("-inf"), 2), tmp_path / "inf.pth")
    assert f"tensor {KEY!r} holds Inf (2 of 108 values)" in _error(tmp_path / "inf.pth")
    torch.save(_with(1e300, 1, torch.float64), tmp_path / "f64.pth")
    message = _error(tmp_path / "f64.pth")
    assert f"tensor {KEY!r} holds Inf (1 of 108 values), float64 values beyond float32's range" in message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_bfloat16_and_float64_weights_load_as_float32(tmp_path: Path, dtype: torch.dtype) -> None:
    net = _net()
    sd = {k: v.to(dtype) for k, v in net.state_dict().items()}
    torch.save(sd, tmp_path / "net.pth")
    model, _ = M.load(tmp_path / "net.pth")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key].float()), key


def test_batch_norm_step_counters_stay_integers(tmp_path: Path) -> None:
    """BatchNorm's num_batches_tracked is the one integer tensor a network has."""
    net = randomize_(M.build("srresnet", dict(num_feat=4, num_block=1, scale=2)))
    torch.save(net.state_dict(), tmp_path / "srgan.pth")
    model, _ = M.load(tmp_path / "srgan.pth")
    assert model.state_dict()["bn_body.num_batches_tracked"].dtype == torch.int64
