"""Implicit-GEMM convolutions on NHWC buffers with the ESRGAN-family epilogues fused in.

    conv3x3(x, w, bias, y, cin=nf + 2·gc, cout=gc, y_channel=nf + 2·gc, act="lrelu")        # an RDB conv
    conv3x3(x, w, bias, y, cin=nf, cout=4·nf, shuffle=2, act="prelu", slope=s)              # SRGAN upsampler
    conv2d(x, w, bias, y, cin=3, cout=nf, ksize=9, act="prelu", slope=s)                     # SRGAN conv_first
    conv3x3(x, w, bias, y, cin=nf, cout=3·s², shuffle=s, res1=img, res1_lowres=True)        # SRVGG's last conv
    upconv2x(x, w_phases, bias, y, cin=nf, cout=nf, act="lrelu")                             # nearest ×2 + conv

The GEMM: M = N·H·W output pixels, N = output channels, K = taps × input channels. A program computes a
BLOCK_M × BLOCK_N tile in one flat loop over (tap, channel block) steps: each loads BLOCK_M shifted input pixels
(masked to zero outside the image: the zero padding) times BLOCK_K channels and accumulates `tl.dot` with the packed
weights in fp32 (int32 for int8). The N blocks and upconv phases of one pixel block are consecutive programs, so
they share its input through L2. Offsets are 64-bit when a buffer spans 2³¹ elements (`element_extent`), else
32-bit. Tile sizes come from `kernels.blocks` per layer; its `tap_reuse` alternative makes the pixel block a 2-D
tile and runs the taps innermost with L1-cached loads.

Concat-free RDBs: `x` may be wider than the conv reads (it reads the channel prefix `[0, cin)` through explicit
strides) and `y` wider than it writes (it writes the channel slice `[y_channel, y_channel + cout)`). Each RDB keeps
one buffer of nf + 4·gc channels; conv_k reads its prefix and writes its own slice.

Epilogue, in order: int8 dequantization (the int32 sums × one scale per output channel); + bias; batch norm from
its raw parameters (`bn`); activation (`lrelu` with `slope`, `relu`, or `prelu` with one slope per output channel
after the shuffle); `out = res1 + res1_scale·out` if `res1` (the RDB's `x + 0.2·conv5`, the trunk's long skip);
`out = res2 + res2_scale·out` if `res2` (the RRDB's outer `x + 0.2·y`, on its third RDB), int8 residuals
dequantized by their scale; requantization if `y` is int8. Residuals are read at the output's own pixels and
channels, so `res1`/`res2` may alias `y` (each element is read by the program that writes it, before it writes
it). With `shuffle = r`, output channel c·r² + i·r + j of pixel (h, w) is stored at pixel (h·r + i, w·r + j),
channel c: PixelShuffle done by the store.

Low-resolution residual (`res1_lowres`, SRVGGNetCompact's `+ nearest×s(x)`): `res1` is read at the conv's own input
grid pixel (h, w) and the stored channel c instead of at the stored pixel, so output pixel (h·r + i, w·r + j),
channel c gets res1(h, w, c): the nearest ×r upsampled input, added without ever being made. `res1` is then
(N, H, W, ≥cout/r²) and must not alias `y` (other programs write the pixels it reads).

`upconv2x`: nearest ×2 followed by a 3×3 conv equals, for each output phase (py, px) ∈ {0, 1}², a 2×2 conv on the
low-resolution grid whose taps are sums of the 3×3 taps (`fold_upconv_weight`), stored at (2h + py, 2w + px). No
upsampled tensor is ever made: 4/9 of the MACs of the naive form and a quarter of its input reads.

Weights are packed once: `pack_conv_weight` (cout, cin, k, k) → (k²·cin, cout), row (ky·k + kx)·cin + ci;
`fold_upconv_weight` (cout, cin, 3, 3) → (4 phases · 4·cin, cout).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import triton
import triton.language as tl

from .blocks import blocks_for
from .launch import launch

ACTS = {"none": 0, "lrelu": 1, "relu": 2, "prelu": 3}


@triton.jit
def _epilogue(acc, offs_n, mask_m, mask_n, img, oh, ow,
              b_ptr, s_ptr, bn_ptr, q_ptr, y_ptr, r1_ptr, r2_ptr,
              COUT,
              stride_yn, stride_yh, stride_yw, stride_r1n, stride_r1h, stride_r1w, stride_r2n, stride_r2h, stride_r2w,
              slope, r1_scale, r2_scale, bn_eps, r1_dq, r2_dq, out_inv,
              ACT: tl.constexpr, HAS_R1: tl.constexpr, R1_LOWRES: tl.constexpr, HAS_R2: tl.constexpr,
              HAS_BN: tl.constexpr, SHUFFLE: tl.constexpr, PHASE_Y, PHASE_X, UPSAMPLE: tl.constexpr,
              X_INT8: tl.constexpr, OUT_INT8: tl.constexpr):
    """dequantization (INT8), bias, batch norm, activation, residuals, requantization (INT8 output), then the store
    (shuffled, phase-interleaved or plain)."""
    if X_INT8:  # int32 sums of int8 products: one scale per output channel (weight scale · input slice scales)
        wscale = tl.load(q_ptr + offs_n, mask=mask_n, other=0.0)
        acc = acc.to(tl.float32) * wscale[None, :]
    out = acc + tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_BN:  # inference batch norm from its raw parameters (gamma, beta, mean, var), so alpha blends them
        gamma = tl.load(bn_ptr + offs_n, mask=mask_n, other=1.0).to(tl.float32)
        beta = tl.load(bn_ptr + COUT + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        mean = tl.load(bn_ptr + 2 * COUT + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        var = tl.load(bn_ptr + 3 * COUT + offs_n, mask=mask_n, other=1.0).to(tl.float32)
        scale = gamma / tl.sqrt(var + bn_eps)
        out = (out - mean[None, :]) * scale[None, :] + beta[None, :]
    # where the tile goes: pixel (py, px) and channel c of the output buffer
    if SHUFFLE > 1:
        c = offs_n // (SHUFFLE * SHUFFLE)
        sub = offs_n % (SHUFFLE * SHUFFLE)
        py = oh[:, None] * SHUFFLE + (sub // SHUFFLE)[None, :]
        px = ow[:, None] * SHUFFLE + (sub % SHUFFLE)[None, :]
        c2 = c[None, :]
    elif UPSAMPLE:
        py = (oh * 2 + PHASE_Y)[:, None]
        px = (ow * 2 + PHASE_X)[:, None]
        c2 = offs_n[None, :]
        c = offs_n
    else:
        py = oh[:, None]
        px = ow[:, None]
        c2 = offs_n[None, :]
        c = offs_n
    if ACT == 1:
        out = tl.where(out >= 0, out, out * slope)
    elif ACT == 2:
        out = tl.maximum(out, 0.0)
    elif ACT == 3:
        a = tl.load(s_ptr + c, mask=mask_n, other=0.0).to(tl.float32)
        out = tl.where(out >= 0, out, out * a[None, :])
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_R1:
        if R1_LOWRES:  # at the input-grid pixel (oh, ow), stored channel c: nearest ×SHUFFLE of res1
            r1_off = (img * stride_r1n + oh * stride_r1h + ow * stride_r1w)[:, None] + c[None, :]
        else:
            r1_off = img[:, None] * stride_r1n + py * stride_r1h + px * stride_r1w + c2
        r1 = tl.load(r1_ptr + r1_off, mask=mask, other=0.0)
        out = r1.to(tl.float32) * r1_dq + r1_scale * out
    if HAS_R2:
        r2 = tl.load(r2_ptr + (img[:, None] * stride_r2n + py * stride_r2h + px * stride_r2w + c2), mask=mask,
                     other=0.0)
        out = r2.to(tl.float32) * r2_dq + r2_scale * out
    if OUT_INT8:  # symmetric requantization: round half away from zero, clamp to ±127
        q = out * out_inv
        q = tl.where(q >= 0, tl.floor(q + 0.5), -tl.floor(-q + 0.5))
        out = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(y_ptr + (img[:, None] * stride_yn + py * stride_yh + px * stride_yw + c2),
             out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv_kernel(
    # pointers
    x_ptr, w_ptr, b_ptr, s_ptr, bn_ptr, q_ptr, y_ptr, r1_ptr, r2_ptr,
    # sizes
    H, W, M, CIN, COUT,
    # strides (elements) of the NHWC buffers; the channel stride is 1
    stride_xn, stride_xh, stride_xw,
    stride_yn, stride_yh, stride_yw,
    stride_r1n, stride_r1h, stride_r1w,
    stride_r2n, stride_r2h, stride_r2w,
    # epilogue scalars
    slope, r1_scale, r2_scale, bn_eps, r1_dq, r2_dq, out_inv,
    # meta-parameters
    ACT: tl.constexpr, HAS_R1: tl.constexpr, R1_LOWRES: tl.constexpr, HAS_R2: tl.constexpr, HAS_BN: tl.constexpr,
    SHUFFLE: tl.constexpr, UPSAMPLE: tl.constexpr, KSIZE: tl.constexpr, TAPS: tl.constexpr, EVEN_K: tl.constexpr,
    IEEE: tl.constexpr,
    X_INT8: tl.constexpr, OUT_INT8: tl.constexpr, OFF64: tl.constexpr, TAP_REUSE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # Program order: the N blocks (and upconv phases) of one pixel block are consecutive programs, so they run at
    # the same time and the block's input comes from DRAM once, then from L2.
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(COUT, BLOCK_N)
    pid_n = pid % n_blocks
    pid_mp = pid // n_blocks
    if UPSAMPLE:  # output phase py·2 + px
        phase = pid_mp % 4
        pid_m = pid_mp // 4
    else:
        phase = 0
        pid_m = pid_mp
    phase_y = phase // 2
    phase_x = phase % 2
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels (before the shuffle)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < COUT
    if TAP_REUSE:  # a (BLOCK_M / BLOCK_W) × BLOCK_W pixel tile of one image
        tiles_w = tl.cdiv(W, BLOCK_W)
        tiles = tl.cdiv(H, BLOCK_M // BLOCK_W) * tiles_w
        i = tl.arange(0, BLOCK_M)
        t = pid_m % tiles
        oh = (t // tiles_w) * (BLOCK_M // BLOCK_W) + i // BLOCK_W
        ow = (t % tiles_w) * BLOCK_W + i % BLOCK_W
        img = i * 0 + pid_m // tiles
        mask_m = (oh < H) & (ow < W)
    else:  # BLOCK_M consecutive pixels of the flattened (n, h, w) grid
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        img = offs_m // (H * W)
        rem = offs_m % (H * W)
        oh = rem // W
        ow = rem % W
    if OFF64:  # a buffer spans 2³¹ elements or more: element offsets in 64 bits
        img = img.to(tl.int64)
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
    x_img = img * stride_xn

    if X_INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) steps, so the software pipeline keeps loads in flight across taps.
    # TAP_REUSE runs the taps innermost: the 9 shifted loads of one channel block follow each other (L1 hits).
    k_blocks = tl.cdiv(CIN, BLOCK_K)
    for step in range(0, TAPS * k_blocks):
        if TAP_REUSE:
            tap = step % TAPS
            k0 = (step // TAPS) * BLOCK_K
        else:
            tap = step // k_blocks
            k0 = (step % k_blocks) * BLOCK_K
        if UPSAMPLE:  # phase py reads low-resolution rows h + py - 1 and h + py (likewise columns)
            ih = oh + (tap // 2 + phase_y - 1)
            iw = ow + (tap % 2 + phase_x - 1)
            w_row0 = (phase * 4 + tap) * CIN
        else:
            ih = oh + (tap // KSIZE - KSIZE // 2)
            iw = ow + (tap % KSIZE - KSIZE // 2)
            w_row0 = tap * CIN
        inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_off = x_img + ih * stride_xh + iw * stride_xw
        if EVEN_K:  # channel strides are multiples of 8: 16-byte vector loads along the channels
            x_off = tl.multiple_of(x_off, 8)
        ks = k0 + offs_k
        if EVEN_K:  # CIN is a multiple of BLOCK_K: no channel mask
            a_mask = inside[:, None]
            b_mask = mask_n[None, :]
        else:
            a_mask = inside[:, None] & (ks[None, :] < CIN)
            b_mask = (ks[:, None] < CIN) & mask_n[None, :]
        a_ptrs = x_ptr + (x_off[:, None] + ks[None, :])
        if TAP_REUSE:
            a = tl.load(a_ptrs, mask=a_mask, other=0.0, cache_modifier=".ca")
        else:
            a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        b = tl.load(w_ptr + ((w_row0 + ks)[:, None] * COUT + offs_n[None, :]), mask=b_mask, other=0.0)
        if X_INT8:  # int8 × int8 → int32 (out_dtype spelled out: older Triton needs it, docs/kernels.md)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        elif IEEE:  # fp32 operands: exact products, not TF32
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)

    _epilogue(acc, offs_n, mask_m, mask_n, img, oh, ow, b_ptr, s_ptr, bn_ptr, q_ptr, y_ptr, r1_ptr, r2_ptr,
              COUT, stride_yn, stride_yh, stride_yw, stride_r1n, stride_r1h, stride_r1w, stride_r2n,
              stride_r2h, stride_r2w, slope, r1_scale, r2_scale, bn_eps, r1_dq, r2_dq, out_inv, ACT, HAS_R1,
              R1_LOWRES, HAS_R2, HAS_BN, SHUFFLE, phase_y, phase_x, UPSAMPLE, X_INT8, OUT_INT8)


# ---------------------------------------------------------------------------------------------------------
# weight packing


def pack_conv_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(cout, cin, k, k) → contiguous (k²·cin, cout), row (ky·k + kx)·cin + ci: the GEMM's K × N operand."""
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"weight must have shape (cout, cin, k, k) with odd k, got {tuple(weight.shape)}")
    cout, cin, k = weight.shape[:3]
    return weight.permute(2, 3, 1, 0).reshape(k * k * cin, cout).to(dtype or weight.dtype).contiguous()


def conv_params(name: str, conv: torch.nn.Conv2d, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`{name}.weight` packed (from float64, then cast to `dtype`) and `{name}.bias` of a conv with a bias."""
    if conv.bias is None:
        raise ValueError(f"{name}: the fused programs run convs with a bias")
    return {f"{name}.weight": pack_conv_weight(conv.weight.detach().double(), dtype),
            f"{name}.bias": conv.bias.detach().to(dtype)}


# For output phase p ∈ {0, 1} along one axis, the 2 low-resolution taps t ∈ {0, 1} (offset t + p − 1) sum these
# 3×3 taps: phase 0 reads row h − 1 with tap 0 and row h with taps 1 + 2; phase 1 reads row h with taps 0 + 1 and
# row h + 1 with tap 2.
_FOLD = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],   # phase 0: (taps × 3×3-row)
                      [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # phase 1


def fold_upconv_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Nearest ×2 + 3×3 conv → four 2×2 phase convs: (cout, cin, 3, 3) → contiguous (4·4·cin, cout), row
    ((py·2 + px)·4 + ty·2 + tx)·cin + ci. Summed in float64, then cast."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"weight must have shape (cout, cin, 3, 3), got {tuple(weight.shape)}")
    cout, cin = weight.shape[:2]
    fold = _FOLD.to(weight.device, torch.float64)
    # phases[py, px, ty, tx, co, ci] = Σ_ky Σ_kx fold[py, ty, ky] · fold[px, tx, kx] · weight[co, ci, ky, kx]
    phases = torch.einsum("ayk,bxl,oikl->abyxio", fold, fold, weight.double())
    return phases.reshape(16 * cin, cout).to(dtype or weight.dtype).contiguous()


# ---------------------------------------------------------------------------------------------------------
# host wrappers

_RECORDERS: list[list[dict[str, Any]]] = []


@contextmanager
def record_launches() -> Iterator[list[dict[str, Any]]]:
    """Record every conv launch made inside the block: sizes and compulsory bytes (each input channel and residual
    read once per pixel, each output written once; halo re-reads and weights not counted)."""
    launches: list[dict[str, Any]] = []
    _RECORDERS.append(launches)
    try:
        yield launches
    finally:
        _RECORDERS.remove(launches)


def _check_nhwc(name: str, t: torch.Tensor, batch: int, h: int, w: int, channels: int) -> None:
    if t.ndim != 4 or tuple(t.shape[:3]) != (batch, h, w) or t.shape[3] < channels or t.stride(3) != 1:
        raise ValueError(f"{name} must be an NHWC buffer of shape ({batch}, {h}, {w}, ≥{channels}) with unit channel "
                         f"stride, got shape {tuple(t.shape)} strides {t.stride()}")


def _launch(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor, y: torch.Tensor, *, cin: int, cout: int,
            y_channel: int, act: str, slope: float | torch.Tensor, res1: torch.Tensor | None, res1_scale: float,
            res1_lowres: bool, res2: torch.Tensor | None, res2_scale: float, bn: torch.Tensor | None, bn_eps: float,
            ksize: int, shuffle: int, upsample: bool, res: int, blocks: dict[str, Any],
            wscale: torch.Tensor | None = None, res1_dq: float = 1.0, res2_dq: float = 1.0,
            out_scale: float | None = None) -> torch.Tensor:
    n, h, w = x.shape[:3]
    up = shuffle if shuffle > 1 else (2 if upsample else 1)
    cout_stored = cout // (shuffle * shuffle) if shuffle > 1 else cout
    taps = 16 if upsample else ksize * ksize
    # check inputs
    _check_nhwc("x", x, n, h, w, cin)
    _check_nhwc("y", y, n, h * up, w * up, y_channel + cout_stored)
    if shuffle > 1 and cout % (shuffle * shuffle):
        raise ValueError(f"cout {cout} must be a multiple of shuffle² = {shuffle * shuffle}")
    if tuple(w_packed.shape) != (taps * cin, cout) or not w_packed.is_contiguous():
        raise ValueError(f"w_packed must be contiguous ({taps}·cin, cout) = ({taps * cin}, {cout}), got "
                         f"{tuple(w_packed.shape)}: pack it with "
                         f"{'fold_upconv_weight' if upsample else 'pack_conv_weight'}")
    if w_packed.dtype != x.dtype:
        raise ValueError(f"w_packed is {w_packed.dtype} and x is {x.dtype}: pack the weights in the input's dtype")
    if tuple(bias.shape) != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
    if bn is not None and (tuple(bn.shape) != (4, cout) or not bn.is_contiguous()):
        raise ValueError(f"bn must be contiguous (4, {cout}): gamma, beta, running mean, running var")
    if act not in ACTS:
        raise ValueError(f"act must be one of {', '.join(ACTS)}, got {act!r}")
    x_int8, out_int8 = x.dtype == torch.int8, y.dtype == torch.int8
    if x_int8 and (wscale is None or tuple(wscale.shape) != (cout,) or wscale.dtype != torch.float32):
        raise ValueError(f"an int8 input needs wscale: float32 ({cout},), the per-output-channel scale of the int8 "
                         f"weights (with the input slices' scales folded in)")
    if out_int8 and not (out_scale and out_scale > 0):
        raise ValueError("an int8 output buffer needs out_scale > 0, the scale its values are stored with")
    slopes = bias  # unused unless act == "prelu"
    if act == "prelu":
        if not isinstance(slope, torch.Tensor) or tuple(slope.shape) != (cout_stored,):
            raise ValueError(f"prelu needs one slope per output channel: a tensor of shape ({cout_stored},)")
        slopes = slope
    if res1_lowres and (res1 is None or upsample):
        raise ValueError("res1_lowres reads res1 at the input grid's pixels: it needs res1, and no upsample")
    for name, r in (("res1", res1), ("res2", res2)):
        if r is not None:
            r_up = 1 if name == "res1" and res1_lowres else up
            _check_nhwc(name, r, n, h * r_up, w * r_up, cout_stored)
    # allocate: the output is the caller's buffer, seen from its channel slice
    out = y[..., y_channel:]
    r1 = res1 if res1 is not None else out
    r2 = res2 if res2 is not None else out
    m = n * h * w
    if m >= 2**31:
        raise ValueError(f"x has {m} pixels (N·H·W); a launch takes fewer than 2³¹: split the batch or the tile")
    op = "upconv2x" if upsample else f"conv{ksize}x{ksize}"
    b = blocks_for(DTYPE_NAMES[x.dtype], op, cin=cin, cout=cout, res=res, **blocks)
    # launch: one program per (pixel block, upconv phase, N block), N fastest (see conv_kernel)
    if b.tap_reuse:
        m_blocks = n * triton.cdiv(h, b.block_m // b.block_w) * triton.cdiv(w, b.block_w)
    else:
        m_blocks = triton.cdiv(m, b.block_m)
    grid = (m_blocks * (4 if upsample else 1) * triton.cdiv(cout, b.block_n),)
    args = [
        x, w_packed, bias, slopes, bn if bn is not None else bias, wscale if wscale is not None else bias, out, r1, r2,
        h, w, m, cin, cout,
        x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        r1.stride(0), r1.stride(1), r1.stride(2),
        r2.stride(0), r2.stride(1), r2.stride(2),
        float(slope) if act == "lrelu" else 0.0, float(res1_scale), float(res2_scale), float(bn_eps),
        float(res1_dq), float(res2_dq), 1.0 / out_scale if out_int8 and out_scale else 1.0,
    ]
    constexprs = dict(
        ACT=ACTS[act], HAS_R1=res1 is not None, R1_LOWRES=res1_lowres, HAS_R2=res2 is not None,
        HAS_BN=bn is not None, SHUFFLE=shuffle, UPSAMPLE=upsample, KSIZE=ksize, TAPS=4 if upsample else taps,
        EVEN_K=even_k(cin, b.block_k, x.stride()[:3]), IEEE=x.dtype == torch.float32, X_INT8=x_int8, OUT_INT8=out_int8,
        OFF64=needs_int64(x, out, r1, r2), TAP_REUSE=b.tap_reuse,
        BLOCK_M=b.block_m, BLOCK_N=b.block_n, BLOCK_K=b.block_k, BLOCK_W=b.block_w if b.tap_reuse else 1,
    )
    launch(conv_kernel, grid, args, constexprs, num_warps=b.num_warps, num_stages=b.num_stages)
    if _RECORDERS:
        e, stored = x.element_size(), m * up * up * cout_stored
        r1_read = 0 if res1 is None else (m * cout_stored if res1_lowres else stored)
        entry = {"cin": cin, "cout": cout, "pixels": m, "upsample": upsample, "shuffle": shuffle,
                 "flops": 2 * m * taps * cin * cout,
                 "bytes_read": (m * cin + r1_read + stored * (res2 is not None)) * e,
                 "bytes_written": stored * e}
        for launches in _RECORDERS:
            launches.append(entry)
    return y


DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "int8"}


def element_extent(t: torch.Tensor) -> int:
    """One past the largest element offset the kernels address from `t`'s first element: 1 + Σ (size − 1)·stride.
    At 2³¹ or more, 32-bit offsets wrap."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether a kernel indexing any of `tensors` must compute element offsets in int64 (the kernels' `OFF64`):
    some tensor spans 2³¹ elements or more, strides counted (`element_extent`)."""
    return any(element_extent(t) >= 2**31 for t in tensors)


def even_k(cin: int, block_k: int, x_strides: tuple[int, ...] | list[int]) -> bool:
    """The conv kernel's EVEN_K: channel blocks need no mask (`block_k` divides `cin`) and the input's pixel
    strides are multiples of 8 elements (16-byte vector loads)."""
    return cin % block_k == 0 and all(s % 8 == 0 for s in x_strides)


def conv2d(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor, y: torch.Tensor, *, cin: int, cout: int,
           ksize: int = 3, y_channel: int = 0, act: str = "none", slope: float | torch.Tensor = 0.2,
           res1: torch.Tensor | None = None, res1_scale: float = 1.0, res1_lowres: bool = False,
           res2: torch.Tensor | None = None, res2_scale: float = 1.0, bn: torch.Tensor | None = None,
           bn_eps: float = 1e-5, shuffle: int = 1, wscale: torch.Tensor | None = None, res1_dq: float = 1.0,
           res2_dq: float = 1.0, out_scale: float | None = None, res: int = 1, **blocks: Any) -> torch.Tensor:
    """y[..., y_channel:y_channel + cout/shuffle²] = epilogue(conv_k×k(x[..., :cin], w) + bias), "same" zero
    padding, stride 1; returns `y`.

    x: (N, H, W, ≥cin) NHWC, fp16/bf16/fp32; w_packed: (k²·cin, cout) from `pack_conv_weight` in x's dtype;
    bias: (cout,); y: (N, H·s, W·s, ≥y_channel + cout/s²) with s = `shuffle`; res1/res2: NHWC views read at
    channels [0, cout/s²) (slice a wider buffer to offset them; they may alias y's slice). `res1_lowres=True`:
    res1 is (N, H, W, ≥cout/s²) on the input's grid instead, and the epilogue adds its nearest ×s upsampling
    (`nearest×s(res1) + res1_scale·out`; it must not alias y). `slope`: the LeakyReLU slope (float) or, for
    act="prelu", one slope per stored channel. `bn`: (4, cout) gamma, beta, running mean,
    running var of an inference batch norm applied before the activation.

    Blocks: `res` (the resolution of x's grid relative to the network's input: 1 on the trunk, 2 and 4 after
    the upsamplers) with the dtype, kernel size, cin and cout selects the tile sizes from `kernels.blocks`;
    `blocks` keywords (block_m, block_n, block_k, num_warps, num_stages, tap_reuse, block_w) override them.

    INT8: with int8 `x` and `w_packed`, the int32 sums are scaled by `wscale` (float32, one per output channel);
    int8 residuals are dequantized by `res1_dq`/`res2_dq`; an int8 `y` stores round(out / out_scale) clamped to ±127.
    """
    if ksize % 2 == 0:
        raise ValueError(f"ksize must be odd ('same' padding), got {ksize}")
    return _launch(x, w_packed, bias, y, cin=cin, cout=cout, y_channel=y_channel, act=act, slope=slope, res1=res1,
                   res1_scale=res1_scale, res1_lowres=res1_lowres, res2=res2, res2_scale=res2_scale, bn=bn,
                   bn_eps=bn_eps, ksize=ksize, shuffle=shuffle, upsample=False, wscale=wscale, res1_dq=res1_dq,
                   res2_dq=res2_dq, out_scale=out_scale, res=res, blocks=blocks)


def conv3x3(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor, y: torch.Tensor, **kwargs: Any
            ) -> torch.Tensor:
    """`conv2d` with a 3×3 kernel (see there)."""
    return conv2d(x, w_packed, bias, y, ksize=3, **kwargs)


def upconv2x(x: torch.Tensor, w_phases: torch.Tensor, bias: torch.Tensor, y: torch.Tensor, *, cin: int, cout: int,
             y_channel: int = 0, act: str = "none", slope: float | torch.Tensor = 0.2, res: int = 1, **blocks: Any
             ) -> torch.Tensor:
    """y (N, 2H, 2W, ≥y_channel + cout) = epilogue(conv3x3(nearest×2(x[..., :cin]))) without the ×2 tensor;
    `w_phases` from `fold_upconv_weight`."""
    return _launch(x, w_phases, bias, y, cin=cin, cout=cout, y_channel=y_channel, act=act, slope=slope, res1=None,
                   res1_scale=1.0, res1_lowres=False, res2=None, res2_scale=1.0, bn=None, bn_eps=0.0, ksize=3,
                   shuffle=1, upsample=True, res=res, blocks=blocks, wscale=None)
