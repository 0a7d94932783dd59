"""Per-layer block choices of the conv kernel: one table keyed by (dtype, op, cin, cout, res).

    blocks_for("fp16", "conv3x3", cin=192, cout=64, res=1)   # → Blocks(block_m=128, block_n=64, block_k=64, ...)

`op` is "conv3x3" (any k: "conv9x9", ...) or "upconv2x" (nearest ×2 + 3×3 conv as four 2×2 phase convs); `res` is
the resolution of the conv's input grid relative to the network's input: 1 on the trunk, 2 and 4 after the
upsamplers (a network's conv_hr and conv_last run at its scale).

A row of `BLOCK_TABLE` is a measured choice: the fastest configuration of a GPU sweep of that layer (conditions
and figures in docs/kernels.md, "Block table"). Layers without a row take `default_blocks`, which follows the same
rules: BLOCK_N = Cout up to 64 (a 64-channel conv is one N block, so its input is read once), 128-pixel M blocks,
and as many pipeline stages as shared memory holds comfortably. Every row and default compiles for sm_90 without
spills (`python -m kernels.compile`, checked by tests).

`tap_reuse` selects the conv kernel's second K-loop order: the M block is a `block_m / block_w × block_w` pixel
tile of one image and the loop runs over channel blocks outside and the taps inside, its input loads cached in L1
(`.ca`), so the 9 shifted reads of one channel block hit the same lines. It is chosen per layer here once a GPU
timing says it wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Blocks:
    """A conv launch's tile sizes and options. `block_w` is the pixel tile's width when `tap_reuse` is on (and must
    divide `block_m`); it is ignored otherwise."""

    block_m: int = 128
    block_n: int = 32
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3
    tap_reuse: bool = False
    block_w: int = 16

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k", "block_w"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if self.block_n < 16 or self.block_k < 16:
            raise ValueError(f"block_n and block_k must be ≥ 16 (tensor-core dot), got {self.block_n}, "
                             f"{self.block_k}")
        if self.tap_reuse and self.block_m % self.block_w:
            raise ValueError(f"block_w {self.block_w} must divide block_m {self.block_m}")
        if self.num_warps not in (1, 2, 4, 8, 16) or not 1 <= self.num_stages <= 6:
            raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16 and num_stages 1…6, got {self.num_warps}, "
                             f"{self.num_stages}")

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


Key = tuple[str, str, int, int, int]  # dtype, op, cin, cout, res

# Measured rows (docs/kernels.md, "Block table"): the fastest correct blocks of the H200 sweep of 2026-11-30 (commit
# d9b159c, `bench/gpu_check.py`), per conv of an RRDBNet ×4 with nf 64 and gc 32 at 960×540 fp16. bf16 shares fp16's
# rows (the same tensor-core tiles on 2-byte operands; not swept apart).
_MEASURED: dict[tuple[str, int, int, int], Blocks] = {
    ("conv3x3", 3, 64, 1): Blocks(block_m=128, block_n=64, block_k=16, num_warps=4, num_stages=2, tap_reuse=True,
                                  block_w=16),
    ("conv3x3", 64, 32, 1): Blocks(block_m=128, block_n=32, block_k=32, num_warps=4, num_stages=4, tap_reuse=True,
                                   block_w=8),
    ("conv3x3", 96, 32, 1): Blocks(block_m=256, block_n=32, block_k=32, num_warps=4, num_stages=4, tap_reuse=True,
                                   block_w=8),
    ("conv3x3", 128, 32, 1): Blocks(block_m=256, block_n=32, block_k=32, num_warps=4, num_stages=4, tap_reuse=True,
                                    block_w=8),
    ("conv3x3", 160, 32, 1): Blocks(block_m=256, block_n=32, block_k=32, num_warps=4, num_stages=3, tap_reuse=True,
                                    block_w=8),
    ("conv3x3", 192, 64, 1): Blocks(block_m=128, block_n=64, block_k=64, num_warps=8, num_stages=3, tap_reuse=True,
                                    block_w=8),
    ("conv3x3", 64, 64, 1): Blocks(block_m=128, block_n=64, block_k=64, num_warps=4, num_stages=3, tap_reuse=True,
                                   block_w=16),
    ("upconv2x", 64, 64, 1): Blocks(block_m=128, block_n=64, block_k=32, num_warps=4, num_stages=3, tap_reuse=True,
                                    block_w=8),
    ("upconv2x", 64, 64, 2): Blocks(block_m=128, block_n=64, block_k=32, num_warps=4, num_stages=3, tap_reuse=True,
                                    block_w=8),
    ("conv3x3", 64, 64, 4): Blocks(block_m=128, block_n=64, block_k=64, num_warps=4, num_stages=2, tap_reuse=True,
                                   block_w=8),
    ("conv3x3", 64, 3, 4): Blocks(block_m=256, block_n=16, block_k=32, num_warps=4, num_stages=2, tap_reuse=True,
                                  block_w=16),
}
BLOCK_TABLE: dict[Key, Blocks] = {(dt, *key): blocks for dt in ("fp16", "bf16") for key, blocks in _MEASURED.items()}


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def default_blocks(dtype: str, op: str, cin: int, cout: int) -> Blocks:
    """The rule-based choice for a layer without a table row (see the module docstring)."""
    block_n = min(64, max(16, _pow2_at_least(cout)))
    if dtype == "fp32":  # exact fp32 products (no TF32, no tensor cores): 4-byte operands, smaller K and N blocks
        return Blocks(block_m=64, block_n=min(block_n, 32), block_k=16, num_warps=8, num_stages=2)
    if dtype == "int8":  # int8 dots take K ≥ 32; 64 moves as many bytes per step as fp16's 32
        return Blocks(block_m=128, block_n=block_n, block_k=64 if cin % 64 == 0 else 32,
                      num_warps=4 if block_n < 64 else 8, num_stages=3)
    if cin < 32:  # conv_first: 3·r² input channels, masked
        return Blocks(block_m=128, block_n=block_n, block_k=16, num_warps=4, num_stages=3)
    block_k = 64 if cin % 64 == 0 and block_n == 64 else 32
    return Blocks(block_m=128, block_n=block_n, block_k=block_k, num_warps=8 if block_n == 64 else 4,
                  num_stages=3 if block_k == 64 else 4)


def blocks_for(dtype: str, op: str, *, cin: int, cout: int, res: int = 1, **override: Any) -> Blocks:
    """The blocks of layer (dtype, op, cin, cout, res): its table row, else `default_blocks`; `override` replaces
    fields (for sweeps and tests)."""
    chosen = BLOCK_TABLE.get((dtype, op, cin, cout, res)) or default_blocks(dtype, op, cin, cout)
    return replace(chosen, **override) if override else chosen
