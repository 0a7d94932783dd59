"""`python bench/kernels.py [--model rrdb23] [--size 960x540] [--dtype fp16]`: the fused Triton kernels against cuDNN
and torch.compile on one GPU, side by side in one run.

For every conv shape of the network (the RDB convs, conv5, an upconv, conv_hr) and for the whole forward it times,
with CUDA events after warm-up (median of `--repeat` runs):
- ours: the Triton kernel (`kernels.conv`), the whole forward as `kernels.rrdbnet.FusedRRDBNet` replayed from a CUDA
  graph;
- cuDNN: PyTorch eager, channels_last, the same dtype (`F.conv2d` + the same epilogue ops, or the reference network);
- torch.compile (mode "max-autotune-no-cudagraphs") of the same.
It prints the time, effective TFLOP/s (the FLOPs the reference computes: an upconv counts as a 3×3 conv on the ×2
tensor) and the fraction of the device's dense FP16 peak, and writes bench/results/kernels-<device>.json.
Needs a CUDA GPU; refuses clearly without one.

`rrdb_layers`, `Case`, `neighbours` and `blocks_row` (each distinct conv of an RRDBNet in the fused forward's buffer
layout, its launch with any blocks and its PyTorch reference; the block choices next to one; a BLOCK_TABLE line) also
serve bench/gpu_check.py, on a GPU or under the Triton interpreter.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.measure import datasheet, sync  # noqa: E402
from engine import models  # noqa: E402
from engine.atomic import atomic_write  # noqa: E402
from kernels.blocks import Blocks  # noqa: E402
from kernels.conv import DTYPE_NAMES, conv3x3, fold_upconv_weight, pack_conv_weight, upconv2x  # noqa: E402


def peak_tflops(name: str, dtype: str) -> float | None:
    """Dense tensor-core peak of this GPU for `dtype` from NVIDIA's datasheets (bench/measure.py's table), TFLOP/s."""
    return (datasheet(name) or {}).get(dtype)


def time_ms(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def conv_cases(nf: int, gc: int, h: int, w: int) -> list[dict]:
    """(name, cin, cout, h, w, upsample) of the network's distinct conv shapes."""
    cases = [dict(name=f"rdb conv{j + 1} ({nf + j * gc}→{gc}, lrelu)", cin=nf + j * gc, cout=gc, h=h, w=w, up=False,
                  act=True) for j in range(4)]
    cases.append(dict(name=f"rdb conv5 ({nf + 4 * gc}→{nf}, + x)", cin=nf + 4 * gc, cout=nf, h=h, w=w, up=False,
                      act=False))
    cases.append(dict(name=f"upconv1 ({nf}→{nf}, nearest ×2)", cin=nf, cout=nf, h=h, w=w, up=True, act=True))
    cases.append(dict(name=f"conv_hr ({nf}→{nf}) at ×4", cin=nf, cout=nf, h=4 * h, w=4 * w, up=False, act=True))
    return cases


def bench_conv(case: dict, dtype: torch.dtype, repeat: int) -> dict:
    from kernels.conv import conv3x3, fold_upconv_weight, pack_conv_weight, upconv2x

    dev = "cuda"
    cin, cout, h, w, up = case["cin"], case["cout"], case["h"], case["w"], case["up"]
    x = torch.randn(1, h, w, cin, device=dev, dtype=dtype)
    weight = torch.randn(cout, cin, 3, 3, device=dev, dtype=dtype) * 0.05
    bias = torch.randn(cout, device=dev, dtype=dtype)
    s = 2 if up else 1
    y = torch.empty(1, h * s, w * s, cout, device=dev, dtype=dtype)
    if up:
        packed = fold_upconv_weight(weight.float(), dtype)

        def ours() -> object:
            return upconv2x(x, packed, bias, y, cin=cin, cout=cout, act="lrelu")
    else:
        packed = pack_conv_weight(weight)

        def ours() -> object:
            return conv3x3(x, packed, bias, y, cin=cin, cout=cout, act="lrelu" if case["act"] else "none")

    x_cl = x.permute(0, 3, 1, 2)  # an NCHW view of NHWC memory: channels_last

    def eager() -> torch.Tensor:
        inp = F.interpolate(x_cl, scale_factor=2, mode="nearest") if up else x_cl
        out = F.conv2d(inp, weight, bias, padding=1)
        return F.leaky_relu(out, 0.2) if case["act"] else out

    compiled = torch.compile(eager, mode="max-autotune-no-cudagraphs")
    flops = 2 * (h * s) * (w * s) * 9 * cin * cout
    row = {"case": case["name"], "shape": [1, h, w, cin], "flops": flops}
    for label, fn in (("triton", ours), ("cudnn eager channels_last", eager), ("torch.compile", compiled)):
        ms = time_ms(fn, repeat)
        row[label] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
    ref = eager().permute(0, 2, 3, 1).float()
    row["max_abs_diff"] = float((y.float() - ref).abs().max())
    return row


def bench_network(name: str, h: int, w: int, dtype: torch.dtype, repeat: int) -> dict:
    from kernels.rrdbnet import FusedRRDBNet

    torch.manual_seed(0)
    net = models.create(name).eval().cuda()
    x = torch.rand(1, 3, h, w, device="cuda")
    plan = FusedRRDBNet(net, dtype=dtype, device="cuda")
    plan(x)
    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    with torch.cuda.graph(graph):
        static_out = plan(static_x)
    ref_net = models.create(name).eval().cuda().to(dtype).to(memory_format=torch.channels_last)
    ref_net.load_state_dict(net.state_dict())
    x_ref = x.to(dtype).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(ref_net, mode="max-autotune-no-cudagraphs")
    scale = net.scale
    flops = sum(2 * m.in_channels * m.out_channels * 9 * h * w * (4 ** k) for k, m in _conv_levels(net))
    with torch.inference_mode():
        rows = {}
        for label, fn in (("triton (CUDA graph)", graph.replay), ("cudnn eager channels_last", lambda: ref_net(x_ref)),
                          ("torch.compile", lambda: compiled(x_ref))):
            ms = time_ms(fn, repeat)
            rows[label] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1)}
        ref32 = net.float()(x)
        err = (static_out - ref32).float().pow(2).mean()
    psnr = float(10 * torch.log10(1.0 / err))
    return {"model": name, "input": [1, 3, h, w], "output": [1, 3, h * scale, w * scale], "flops": flops,
            **rows, "psnr_vs_fp32_reference_db": round(psnr, 2)}


def _conv_levels(net: torch.nn.Module) -> list[tuple[int, torch.nn.Conv2d]]:
    """(upsampling level, conv) for every conv of an RRDBNet: level k runs at 4^k × the input's pixels."""
    out = []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            if name.startswith("conv_up"):
                level = int(name[len("conv_up"):])
            elif name in ("conv_hr", "conv_last"):
                level = getattr(net, "num_upsample", 2)
            else:
                level = 0
            out.append((level, m))
    return out


# ---------------------------------------------------------------------------------------------------------------
# every distinct conv of an RRDBNet as the fused forward launches it, with its PyTorch reference (bench/gpu_check.py)


@dataclass(frozen=True)
class Layer:
    """One distinct conv of an RRDBNet as `kernels.rrdbnet.FusedRRDBNet` launches it: it reads channels [0, cin) of
    an NHWC buffer of `x_channels` and writes [y_channel, y_channel + cout) of one of `y_channels` (`in_place`: the
    same buffer, the RDB convs 1–4); `res1` adds a residual in the epilogue, `res1 + res1_scale·conv`, read from
    the input buffer's prefix ("input", an RDB's x) or another buffer ("skip", the long skip). `res`: its input
    grid relative to the network input; `count`: its launches per forward."""

    name: str
    op: str
    cin: int
    cout: int
    res: int
    act: str
    count: int
    x_channels: int
    y_channels: int
    y_channel: int = 0
    in_place: bool = False
    res1: str | None = None
    res1_scale: float = 1.0

    def key(self, dtype: torch.dtype) -> tuple[str, str, int, int, int]:
        """Its key in kernels.blocks.BLOCK_TABLE."""
        return DTYPE_NAMES[dtype], self.op, self.cin, self.cout, self.res


def rrdb_layers(num_block: int = 23, nf: int = 64, gc: int = 32, in_ch: int = 3, out_ch: int = 3,
                num_upsample: int = 2) -> list[Layer]:
    """The distinct convs of an RRDBNet without pixel-unshuffle (×2^num_upsample), in forward order, each with its
    launches per forward (`kernels.rrdbnet.FusedRRDBNet._forward`)."""
    rdb, top = nf + 4 * gc, 2**num_upsample
    layers = [Layer("conv_first", "conv3x3", in_ch, nf, 1, "none", 1, in_ch, rdb)]
    layers += [Layer(f"rdb.conv{j + 1}", "conv3x3", nf + j * gc, gc, 1, "lrelu", 3 * num_block, rdb, rdb,
                     y_channel=nf + j * gc, in_place=True) for j in range(4)]
    layers += [Layer("rdb.conv5", "conv3x3", rdb, nf, 1, "none", 3 * num_block, rdb, rdb, res1="input",
                     res1_scale=0.2),
               Layer("conv_body", "conv3x3", nf, nf, 1, "none", 1, rdb, nf, res1="skip")]
    layers += [Layer(f"conv_up{k + 1}", "upconv2x", nf, nf, 2**k, "lrelu", 1, nf, nf) for k in range(num_upsample)]
    return layers + [Layer("conv_hr", "conv3x3", nf, nf, top, "lrelu", 1, nf, nf),
                     Layer("conv_last", "conv3x3", nf, out_ch, top, "none", 1, nf, out_ch)]


def tolerance(ref: torch.Tensor) -> float:
    """4 fp16 ulps of the reference's largest magnitude: both sides accumulate in fp32 and round once to fp16 (cuDNN's
    eager epilogue rounds after each op); a wrong tap, channel or pixel is off by the output's own size."""
    return 2.0**-8 * max(1.0, float(ref.abs().max()))


class Case:
    """A layer's buffers at input grid h × w (its own grid is res times that), packed weights, our launch with any
    blocks, and the PyTorch eager reference: cuDNN in the plan's dtype, channels_last, on a GPU (also what is
    timed); float64 from the same rounded values on the CPU."""

    def __init__(self, layer: Layer, h: int, w: int, dtype: torch.dtype, device: torch.device, seed: int) -> None:
        self.layer, up = layer, 2 if layer.op == "upconv2x" else 1
        hh, ww = h * layer.res, w * layer.res
        g = torch.Generator(device).manual_seed(seed)  # on the device: a 4K layer's buffers are 10⁹ numbers

        def rand(*shape: int, scale: float = 1.0, dt: torch.dtype = dtype) -> torch.Tensor:
            return (scale * torch.randn(*shape, generator=g, device=device, dtype=torch.float32)).to(dt)

        self.x = rand(1, hh, ww, layer.x_channels)
        weight = rand(layer.cout, layer.cin, 3, 3, scale=(9 * layer.cin) ** -0.5)  # outputs of order 1
        self.bias = rand(layer.cout, scale=0.1)
        self.y = self.x if layer.in_place else torch.zeros(1, hh * up, ww * up, layer.y_channels, dtype=dtype,
                                                           device=device)
        self.r1 = {None: None, "input": self.x[..., :layer.cout], "skip": rand(1, hh, ww, layer.cout)}[layer.res1]
        pack = fold_upconv_weight if up == 2 else pack_conv_weight
        self.packed = pack(weight.double(), dtype)
        self.out = self.y[..., layer.y_channel:layer.y_channel + layer.cout]
        self.flops = 2 * hh * up * ww * up * 9 * layer.cin * layer.cout  # an upconv counts as the naive 3×3 conv
        ref_dtype = dtype if device.type == "cuda" else torch.float64
        nchw = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.xe = self.x[..., :layer.cin].permute(0, 3, 1, 2).to(ref_dtype).contiguous(memory_format=nchw)
        self.we = weight.to(ref_dtype).contiguous(memory_format=nchw)
        self.be = self.bias.to(ref_dtype)
        self.r1e = None if self.r1 is None else self.r1.permute(0, 3, 1, 2).to(ref_dtype).contiguous(
            memory_format=nchw)
        with torch.no_grad():
            self.ref = self.eager().permute(0, 2, 3, 1).float()

    def conv_only(self) -> torch.Tensor:
        x = F.interpolate(self.xe, scale_factor=2, mode="nearest") if self.layer.op == "upconv2x" else self.xe
        return F.conv2d(x, self.we, self.be, padding=1)

    def eager(self) -> torch.Tensor:
        """The PyTorch eager ops of the layer (RRDBNet's forward): conv, activation, residual."""
        out = self.conv_only()
        if self.layer.act == "lrelu":
            out = F.leaky_relu(out, 0.2)
        return out if self.r1e is None else self.r1e + self.layer.res1_scale * out

    def ours(self, blocks: Blocks) -> None:
        L = self.layer
        if L.op == "upconv2x":
            upconv2x(self.x, self.packed, self.bias, self.y, cin=L.cin, cout=L.cout, y_channel=L.y_channel, act=L.act,
                     slope=0.2, res=L.res, **blocks.as_kwargs())
        else:
            conv3x3(self.x, self.packed, self.bias, self.y, cin=L.cin, cout=L.cout, y_channel=L.y_channel, act=L.act,
                    slope=0.2, res1=self.r1, res1_scale=L.res1_scale, res=L.res, **blocks.as_kwargs())

    def check(self, blocks: Blocks) -> dict[str, Any]:
        """Run ours once into an output slice filled with NaN (the first call compiles: `compile_s`, with the
        synchronization) and compare with the reference."""
        self.out.fill_(float("nan"))
        start = time.perf_counter()
        self.ours(blocks)
        sync(self.x.device)
        diff = float((self.out.float() - self.ref).abs().max())
        tol = tolerance(self.ref)
        return {"compile_s": round(time.perf_counter() - start, 3), "max_diff": diff, "tol": tol,
                "ok": bool(diff <= tol)}  # NaN (an unwritten output) is not ok


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def neighbours(b: Blocks, layer: Layer) -> list[Blocks]:
    """The block choices one field away from `b`, the loop order first (flat, or tap reuse with block_w 8 or 16: the
    choice the first GPU timing is to decide), then BLOCK_N 16/32/64 up to Cout, BLOCK_M 64/128/256, BLOCK_K 32/64
    where it divides Cin (a partial K block masks part of its MACs and loses the 16-byte loads; 16 below 32
    channels), 2–4 stages, 4/8 warps."""
    loop = (b.tap_reuse, b.block_w if b.tap_reuse else 16)
    out = [replace(b, tap_reuse=t, block_w=w) for t, w in ((False, 16), (True, 8), (True, 16)) if (t, w) != loop]
    space = {"block_n": [n for n in (16, 32, 64) if n <= max(16, _pow2_at_least(layer.cout))],
             "block_m": (64, 128, 256), "block_k": [k for k in (32, 64) if layer.cin % k == 0] or [16],
             "num_stages": (2, 3, 4), "num_warps": (4, 8)}
    out += [replace(b, **{f: v}) for f, values in space.items() for v in values if v != getattr(b, f)]
    return out


def blocks_row(key: tuple, b: Blocks) -> str:
    """A line of kernels/blocks.py's BLOCK_TABLE."""
    fields = ", ".join(f"{k}={v!r}" for k, v in b.as_kwargs().items() if b.tap_reuse or k not in ("tap_reuse",
                                                                                                  "block_w"))
    return f"{key!r}: Blocks({fields}),"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rrdb23", help="registered RRDBNet variant (default: rrdb23)")
    p.add_argument("--size", default="960x540", help="input W×H (default: 960x540, → 4K at ×4)")
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help="default: fp16")
    p.add_argument("--repeat", type=int, default=20, help="timed runs, median kept (default: 20)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench/kernels.py times GPU kernels; this machine has no CUDA device", file=sys.stderr)
        return 2
    w, h = (int(v) for v in args.size.lower().split("x"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    device = torch.cuda.get_device_name()
    peak = peak_tflops(device, args.dtype)
    conv_rows = [bench_conv(c, dtype, args.repeat) for c in conv_cases(64, 32, h, w)]
    network = bench_network(args.model, h, w, dtype, max(3, args.repeat // 4))
    for row in conv_rows + [network]:
        print(row.get("case") or f"{row['model']} {row['input']}")
        for label in [k for k in row if isinstance(row[k], dict)]:
            r = row[label]
            share = f", {100 * r['tflops'] / peak:.1f}% of peak" if peak else ""
            print(f"  {label}: {r['ms']} ms, {r['tflops']} TFLOP/s{share}")
    import triton

    result = {"device": device, "peak_tflops": peak, "dtype": args.dtype, "convs": conv_rows, "network": network,
              "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                           "python": platform.python_version()}}
    out = REPO / "bench" / "results" / f"kernels-{device.replace(' ', '_')}.json"
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
