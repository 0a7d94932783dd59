"""The alpha weights of a refittable TensorRT engine: both endpoint weight sets packed on the device, and the live
weights θ(α) rewritten in place at fixed addresses (what the Refitter is pointed at once)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..trt_lib import RefitWeightsError, names

ALIGN_BYTES = 256  # each packed weight starts on this boundary (cudaMalloc's alignment; TensorRT asks 256)


def pack_offsets(counts: Sequence[int], itemsize: int, align_bytes: int = ALIGN_BYTES) -> tuple[list[int], int]:
    """Element offsets that pack arrays of `counts` elements back to back, each start aligned to `align_bytes`;
    and the total length in elements."""
    if align_bytes % itemsize:
        raise ValueError(f"alignment {align_bytes} is not a multiple of the item size {itemsize}")
    step = align_bytes // itemsize
    offsets, end = [], 0
    for count in counts:
        offsets.append(end)
        end += -(-count // step) * step
    return offsets, end


@dataclass
class _Pack:
    """Weights of one dtype in flat device buffers: both endpoints and the live blend (views per name)."""

    psnr: torch.Tensor  # (total,)
    gan: torch.Tensor | None  # (total,); None when the dtype is not blended (integers: both endpoints equal)
    live: torch.Tensor  # (total,) what the engine is refitted from
    views: dict[str, tuple[int, int]]  # name → (offset, count) in elements


class BlendedWeights:
    """Both endpoint weight sets of one network on a device, and the live weights θ(α) = (1 − α)·θ_psnr + α·θ_gan.

    Weights of one dtype are packed into flat buffers (each weight starting on a 256-byte boundary), so a blend
    is one `torch.lerp` per dtype and a live weight's address never changes. Integer weights are not blended:
    both endpoints must hold the same values.
    """

    def __init__(self, psnr: Mapping[str, np.ndarray], gan: Mapping[str, np.ndarray],
                 device: str | torch.device) -> None:
        if list(psnr) != list(gan):
            extra = sorted(set(psnr) ^ set(gan))
            raise RefitWeightsError(f"the two endpoint weight sets name different weights: {names(extra)}"
                                    if extra else "the two endpoint weight sets list their weights in different "
                                    "orders")
        self.device = torch.device(device)
        self.alpha: float | None = None
        groups: dict[np.dtype, list[str]] = {}
        for name, a in psnr.items():
            b = gan[name]
            if a.dtype != b.dtype or a.size != b.size:
                raise RefitWeightsError(f"{name}: {a.dtype} {a.size} elements in weights_psnr, {b.dtype} {b.size} "
                                        f"in weights_gan: both must come from the same graph")
            if a.dtype.kind in "fc" and not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise RefitWeightsError(f"{name} holds non-finite values (inf or NaN): check the checkpoint")
            if a.dtype.kind not in "fc" and not np.array_equal(a, b):
                raise RefitWeightsError(f"{name} is {a.dtype} (not blendable) and differs between the endpoints")
            groups.setdefault(a.dtype, []).append(name)
        self.packs = [self._pack(names, psnr, gan) for names in groups.values()]
        self._where = {name: pack for pack in self.packs for name in pack.views}

    def _pack(self, names: list[str], psnr: Mapping[str, np.ndarray], gan: Mapping[str, np.ndarray]) -> _Pack:
        dtype = psnr[names[0]].dtype
        offsets, total = pack_offsets([psnr[n].size for n in names], dtype.itemsize)
        flat_a, flat_b = np.zeros(total, dtype), np.zeros(total, dtype)
        for name, off in zip(names, offsets, strict=True):
            flat_a[off:off + psnr[name].size] = psnr[name].reshape(-1)
            flat_b[off:off + gan[name].size] = gan[name].reshape(-1)
        a = torch.from_numpy(flat_a).to(self.device)
        blend = dtype.kind in "fc"
        views = {name: (off, int(psnr[name].size)) for name, off in zip(names, offsets, strict=True)}
        return _Pack(psnr=a, gan=torch.from_numpy(flat_b).to(self.device) if blend else None, live=a.clone(),
                     views=views)

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def live(self, name: str) -> torch.Tensor:
        """The live weight `name` as a flat view (count,) of its pack: a fixed address on the device."""
        off, count = self._where[name].views[name]
        return self._where[name].live[off:off + count]

    def set_alpha(self, alpha: float) -> None:
        """Rewrite every live weight in place with θ(α), on the current CUDA stream (one kernel per dtype)."""
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        for pack in self.packs:
            if pack.gan is not None:
                torch.lerp(pack.psnr, pack.gan, alpha, out=pack.live)
        self.alpha = alpha

    def nbytes(self) -> int:
        """Device bytes held by the endpoints and the live buffers."""
        return sum(t.numel() * t.element_size() for p in self.packs for t in (p.psnr, p.gan, p.live) if t is not None)
