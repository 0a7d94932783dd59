"""Network interpolation (ESRGAN §3.4): blend a PSNR-oriented network and its GAN fine-tune parameter by
parameter, θ(α) = (1 − α)·θ_a + α·θ_b."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import nn

StateLike = Mapping[str, torch.Tensor] | nn.Module
Net = TypeVar("Net", bound=nn.Module)


class InterpolationError(ValueError):
    """The two networks cannot be blended; the message names the first mismatch."""


def _tensors(x: StateLike) -> Mapping[str, torch.Tensor]:
    return x.state_dict() if isinstance(x, nn.Module) else x


def interpolate(a: StateLike, b: StateLike, alpha: float) -> dict[str, torch.Tensor]:
    """The blended state dict θ = (1 − alpha)·θ_a + alpha·θ_b, with a's keys, order, dtypes and devices.

    `a` and `b` are state dicts or networks with the same keys and shapes; `alpha` ∈ [0, 1] (0 gives a,
    1 gives b). Floating-point tensors are blended in float64 and cast back; integer tensors (BatchNorm's
    `num_batches_tracked`) are taken from the nearer endpoint.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise InterpolationError(f"alpha must be in [0, 1], got {alpha}")
    sa, sb = _tensors(a), _tensors(b)
    for key in sa:
        if key not in sb:
            raise InterpolationError(f"{key!r} is in the first network but not in the second")
        if sa[key].shape != sb[key].shape:
            raise InterpolationError(f"{key!r} has shape {tuple(sa[key].shape)} in the first network and "
                                     f"{tuple(sb[key].shape)} in the second")
    for key in sb:
        if key not in sa:
            raise InterpolationError(f"{key!r} is in the second network but not in the first")

    out: dict[str, torch.Tensor] = {}
    for key, ta in sa.items():
        tb = sb[key].to(ta.device)
        if ta.is_floating_point():
            blended = (1.0 - alpha) * ta.double() + alpha * tb.double()
            out[key] = blended.to(ta.dtype)
        else:
            out[key] = (ta if alpha < 0.5 else tb).clone()
    return out


def interpolated(a: Net, b: StateLike, alpha: float) -> Net:
    """A new network: a copy of `a` (same architecture, device and dtype) holding `interpolate(a, b, alpha)`."""
    out = copy.deepcopy(a)
    out.load_state_dict(interpolate(a, b, alpha))
    return out
