"""The conv kernel's block choices and loop orders, 64-bit offsets, and the specialization it is compiled with.

Every block choice must compute the same conv: the flat K loop with several N blocks (the program order puts them
side by side), the tap-reuse loop over 2-D pixel tiles (tiles cut by the image's border), upconv phases, the pixel
shuffle and the low-resolution residual, each against PyTorch in float64 (under TRITON_INTERPRET=1 on the CPU).
Tolerances as in test_kernels.py: fp32 accumulates exactly-rounded products, 1e-5 of the output's magnitude.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kernels.blocks import BLOCK_TABLE, Blocks, blocks_for, default_blocks
from kernels.conv import conv2d, conv3x3, element_extent, fold_upconv_weight, pack_conv_weight, upconv2x
from kernels.launch import record

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# small blocks keep the interpreter quick; each exercises a different mapping of programs to pixels and channels
VARIANTS = {
    "flat, 3 N blocks": dict(block_m=32, block_n=16, block_k=16, num_stages=2),
    "flat, BLOCK_N ≥ Cout": dict(block_m=16, block_n=64, block_k=16),
    "tap reuse 4×8": dict(tap_reuse=True, block_m=32, block_w=8, block_n=16, block_k=16),
    "tap reuse 1×16": dict(tap_reuse=True, block_m=16, block_w=16, block_n=32, block_k=16),
}


def _rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float().to(DEVICE)


def _nchw64(t: torch.Tensor) -> torch.Tensor:
    return t.double().permute(0, 3, 1, 2).cpu()


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    err = float((got - ref).abs().max())
    assert err <= 1e-5 * max(1.0, float(ref.abs().max())), err


@pytest.mark.parametrize("blocks", list(VARIANTS.values()), ids=list(VARIANTS))
def test_every_block_choice_computes_the_same_rdb_conv(blocks: dict) -> None:
    n, h, w, cin, cout = 2, 5, 7, 32, 40  # tiles cut by the border; 40 channels: a partial last N block
    x = _rand(n, h, w, cin + 8)
    wt, b = _rand(cout, cin, 3, 3, seed=1, scale=0.1), _rand(cout, seed=2)
    res = _rand(n, h, w, cout, seed=3)
    y = torch.full((n, h, w, cout + 5), 7.0, device=DEVICE)
    conv3x3(x, pack_conv_weight(wt), b, y, cin=cin, cout=cout, y_channel=2, act="lrelu", slope=0.2, res1=res,
            res1_scale=0.2, **blocks)
    conv = F.leaky_relu(F.conv2d(_nchw64(x[..., :cin]), wt.double().cpu(), b.double().cpu(), padding=1), 0.2)
    _close(_nchw64(y[..., 2:2 + cout]), _nchw64(res) + 0.2 * conv)
    assert (y[..., :2] == 7).all() and (y[..., 2 + cout:] == 7).all()


@pytest.mark.parametrize("blocks", list(VARIANTS.values()), ids=list(VARIANTS))
def test_every_block_choice_computes_the_same_upconv(blocks: dict) -> None:
    n, h, w, cin, cout = 2, 3, 5, 16, 24
    x = _rand(n, h, w, cin)
    wt, b = _rand(cout, cin, 3, 3, seed=1, scale=0.1), _rand(cout, seed=2)
    y = torch.zeros(n, 2 * h, 2 * w, cout, device=DEVICE)
    upconv2x(x, fold_upconv_weight(wt.double(), torch.float32), b, y, cin=cin, cout=cout, act="lrelu", slope=0.2,
             **blocks)
    up = F.interpolate(_nchw64(x), scale_factor=2, mode="nearest")
    _close(_nchw64(y), F.leaky_relu(F.conv2d(up, wt.double().cpu(), b.double().cpu(), padding=1), 0.2))


@pytest.mark.parametrize("blocks", [VARIANTS["flat, 3 N blocks"], VARIANTS["tap reuse 4×8"]],
                         ids=["flat", "tap reuse"])
def test_every_block_choice_computes_the_same_shuffled_conv_with_a_low_res_residual(blocks: dict) -> None:
    """SRVGG's last conv: pixel shuffle ×2 in the store, + nearest ×2 of the input in the epilogue."""
    n, h, w, cin, c, r = 1, 6, 5, 16, 3, 2
    x = _rand(n, h, w, cin)
    wt, b = _rand(c * r * r, cin, 3, 3, seed=1, scale=0.1), _rand(c * r * r, seed=2)
    low = _rand(n, h, w, c, seed=3)
    y = torch.zeros(n, h * r, w * r, c, device=DEVICE)
    conv3x3(x, pack_conv_weight(wt), b, y, cin=cin, cout=c * r * r, shuffle=r, res1=low, res1_lowres=True, **blocks)
    ref = F.pixel_shuffle(F.conv2d(_nchw64(x), wt.double().cpu(), b.double().cpu(), padding=1), r)
    _close(_nchw64(y), ref + F.interpolate(_nchw64(low), scale_factor=r, mode="nearest"))


def test_tap_reuse_with_a_9x9_kernel_and_masked_channels() -> None:
    n, h, w, cin, cout = 1, 6, 9, 3, 16
    x = _rand(n, h, w, cin)
    wt, b = _rand(cout, cin, 9, 9, seed=1, scale=0.1), _rand(cout, seed=2)
    y = torch.zeros(n, h, w, cout, device=DEVICE)
    conv2d(x, pack_conv_weight(wt), b, y, cin=cin, cout=cout, ksize=9, **VARIANTS["tap reuse 4×8"])
    _close(_nchw64(y), F.conv2d(_nchw64(x), wt.double().cpu(), b.double().cpu(), padding=4))


# ---------------------------------------------------------------------------------------------------------
# the block table


def test_the_table_and_the_rules() -> None:
    for key, row in BLOCK_TABLE.items():
        assert blocks_for(key[0], key[1], cin=key[2], cout=key[3], res=key[4]) is row
    # a 64-channel conv is one N block (its input read once), narrower outputs get the narrowest block that holds
    # them, and fp32 multiplies exactly with a smaller K block
    assert blocks_for("fp16", "conv3x3", cin=64, cout=64, res=4).block_n == 64
    assert blocks_for("fp16", "upconv2x", cin=64, cout=64, res=1).block_n == 64
    assert default_blocks("fp16", "conv3x3", 64, 3).block_n == 16
    assert default_blocks("fp16", "conv3x3", 64, 256).block_n == 64
    assert default_blocks("fp32", "conv3x3", 64, 32).block_k == 16
    assert default_blocks("int8", "conv3x3", 96, 32).block_k == 32  # a K block that divides Cin: no masks
    assert blocks_for("fp16", "conv3x3", cin=64, cout=32, block_m=32).block_m == 32  # overrides
    with pytest.raises(ValueError, match="power of two"):
        Blocks(block_m=96)
    with pytest.raises(ValueError, match="block_w 32 must divide block_m 16"):
        Blocks(block_m=16, tap_reuse=True, block_w=32)


def test_the_programs_launch_what_the_table_says() -> None:
    """The fused RRDBNet's convs take their blocks from the table: conv5 (192 → 64) is one N block of 64."""
    from engine import models
    from kernels.rrdbnet import FusedRRDBNet

    net = models.create("rrdb6", num_block=1).eval()
    plan = FusedRRDBNet(net, dtype=torch.float16, device="cpu")
    with record() as launches:
        plan.forward(1, 16, 16)
    convs = [la for la in launches if la.kernel.__name__ == "conv_kernel"]
    by_cin = {(dict(zip(la.arg_names(), la.args, strict=True))["CIN"], la.constexprs["BLOCK_N"]) for la in convs}
    assert (192, 64) in by_cin and (64, 32) in by_cin
    conv5 = next(la for la in convs if dict(zip(la.arg_names(), la.args, strict=True))["CIN"] == 192)
    row = BLOCK_TABLE["fp16", "conv3x3", 192, 64, 1]
    assert (conv5.constexprs["BLOCK_M"], conv5.constexprs["BLOCK_K"], conv5.num_warps, conv5.num_stages) == (
        row.block_m, row.block_k, row.num_warps, row.num_stages)
    assert conv5.grid == (-(-16 * 16 // row.block_m), 1, 1)  # one program per pixel block: N is one block
    assert not any(la.constexprs["OFF64"] for la in convs)  # small buffers keep 32-bit offsets


# ---------------------------------------------------------------------------------------------------------
# 64-bit offsets

_OVERFLOW = textwrap.dedent("""
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, torch.nn.functional as F
    sys.path.insert(0, {repo!r})
    import kernels.conv as C
    n, h, w, cin, cout = 2, 3, 4, 16, 16
    stride_n = 2**31 - 64  # image 1 starts just below element 2^31: its pixels lie past it
    # lazily committed memory: only the pages the views touch are ever backed
    xs, ys = torch.empty(2**31 + 4096), torch.empty(2**31 + 4096)
    x = xs.as_strided((n, h, w, cin), (stride_n, w * cin, cin, 1))
    y = ys.as_strided((n, h, w, cout), (stride_n, w * cout, cout, 1))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, h, w, cin, generator=g)
    x.copy_(x0)
    wt, b = torch.randn(cout, cin, 3, 3, generator=g) * 0.1, torch.randn(cout, generator=g)
    assert C.element_extent(y) >= 2**31
    C.conv3x3(x, C.pack_conv_weight(wt), b, y, cin=cin, cout=cout, act="lrelu", {blocks})
    ref = F.leaky_relu(F.conv2d(x0.permute(0, 3, 1, 2).double(), wt.double(), b.double(), padding=1), 0.2)
    print((y.permute(0, 3, 1, 2).double() - ref).abs().max().item())
""")


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's view of a 2^31-element buffer (CPU only)")
@pytest.mark.parametrize("blocks", ["block_m=16, block_n=16, block_k=16", "tap_reuse=True, block_m=16, block_w=4, "
                                    "block_n=16, block_k=16"], ids=["flat", "tap reuse"])
def test_buffers_past_2_31_elements_are_addressed_in_64_bits(blocks: str) -> None:
    """A conv whose input and output views reach past element 2³¹ (8 GiB of float32, never touched but for the
    views' pages) reads and writes the right elements. With 32-bit offsets the second image's offsets wrap to
    negative numbers and the interpreter writes outside the buffer (a crash), hence the subprocess."""
    proc = subprocess.run([sys.executable, "-c", _OVERFLOW.format(repo=str(REPO), blocks=blocks)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-5


def test_element_extent_counts_strides_not_sizes() -> None:
    base = torch.empty(1000)
    assert element_extent(base[:10]) == 10
    assert element_extent(base.as_strided((2, 3, 4), (100, 10, 1))) == 1 + 100 + 20 + 3
    assert element_extent(torch.empty(3, 0)) == 0


# ---------------------------------------------------------------------------------------------------------
# compiled as the JIT compiles it


def test_specialization_is_the_jits() -> None:
    """`kernels.compile.specialize` (used by kernels.compile and native plans) gives every argument of every launch
    of a real forward the type and divisibility that Triton's own JIT specialization gives it."""
    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    from kernels.compile import program_launches, specialize

    checked = 0
    for _, launch in program_launches("fp16", 1, 24, 40):
        for value in launch.args:
            if isinstance(value, int) and not isinstance(value, bool):
                assert value != 1, "the JIT turns an int equal to 1 into a constant; the plans cannot"
            jit = native(CUDABackend, value, False, True, True)
            ours = specialize(value)
            assert (ours[0], "D" if ours[1] else "") == (jit[0], jit[1] or ""), (value, ours, jit)
            checked += 1
    assert checked > 500


def test_a_plan_for_a_big_tile_batch_compiles_64_bit_offsets_where_a_buffer_needs_them() -> None:
    """A plan for 2 tiles of 2048² (×4: two 8192² × 16-channel buffers of 2³¹ elements) records the 64-bit variant
    for the convs that touch a ×4 buffer and keeps 32-bit offsets elsewhere. Nothing runs: the arena is lazily
    committed memory."""
    from engine import models
    from kernels.plan import build_plan
    from kernels.rrdbnet import FusedRRDBNet

    net = models.create("rrdb6", num_block=1, num_feat=16, num_grow_ch=8).eval()
    plan = build_plan(FusedRRDBNet(net, dtype=torch.float16, device="cpu"), [(2, 3, 2048, 2048)], compile=False)
    off64 = {}
    for launch in plan.launches:
        spec = plan.meta["kernels"][launch["kernel"]]
        if spec["function"].endswith("conv_kernel"):
            args = dict(zip([name for name, _ in spec["signature"]], launch["args"], strict=False))
            off64.setdefault(spec["constexprs"]["OFF64"], set()).add(args["H"][1])
    # by the H of the conv's input grid: the trunk and upconv1 (2048), upconv2 (4096, writing a ×4 buffer), conv_hr
    # and conv_last (8192)
    assert off64 == {False: {2048}, True: {4096, 8192}}


@pytest.mark.slow
def test_the_compile_sweep_reports_what_each_block_choice_becomes() -> None:
    """`kernels.compile.sweep` compiles block choices of a layer for sm_90 (no GPU) and says which fit: here the
    table's choice for the RDB convs, which fits, and the same with an absurd K block whose operands need more
    shared memory than a Hopper SM has."""
    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, {repo!r})
        from kernels.compile import sweep
        cands = [dict(block_m=128, block_n=32, block_k=32, num_warps=4, num_stages=4),
                 dict(block_m=256, block_n=32, block_k=1024, num_warps=4, num_stages=4)]
        print(json.dumps(sweep("fp16", layers=["conv3x3 64→32 lrelu"], candidates=lambda cout: cands)))
    """).format(repo=str(REPO))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**env, "TRITON_DEFAULT_FP_FUSION": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["layer"] for r in rows] == ["conv3x3 64→32 lrelu"] * 2
    fits, too_big = rows
    assert fits["fits"] and fits["spill_bytes"] == 0 and fits["wgmma"] and fits["cp_async"]
    assert not too_big["fits"] and ("error" in too_big or too_big["shared_bytes"] > 227 * 1024)
    proc = subprocess.run([sys.executable, "-m", "kernels.compile", "--sweep", "--layer", "conv3x3 7→7"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**env, "TRITON_DEFAULT_FP_FUSION": "1"})
    assert proc.returncode == 2 and "--layer 'conv3x3 7→7' is not a conv of rrdbnet ×4" in proc.stderr
    assert "conv3x3 64→32 lrelu" in proc.stderr and "Traceback" not in proc.stderr
