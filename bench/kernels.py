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
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine import models  # noqa: E402
from engine.atomic import atomic_write  # noqa: E402


def peak_tflops(name: str, dtype: str) -> float | None:
    """Dense tensor-core peak of this GPU for `dtype` from NVIDIA's datasheets (bench/run.py's table), TFLOP/s."""
    from run import datasheet  # bench/run.py: this script's folder is on sys.path

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
