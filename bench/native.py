"""The native plan's C++ runtime on a GPU, side by side with the Triton backend it froze (GPU only).

    python bench/native.py [--model rrdb23] [--tile 256] [--batch 1] [--iters 20] [--json bench/results/native.json]

Measures, in one run, on one random-weight network (fp16, with a GAN endpoint so alpha can be set):
  * forward of one tile batch: the native runtime's CUDA-graph replay (`NativePlan.run_device`) and the Triton
    backend's (`TritonBackend.run`, its own torch CUDA graph), GPU time by CUDA events, median of --iters;
  * host-side overhead per call: the wall time of the call itself, without waiting for the GPU;
  * `set_alpha`: the native blend kernel (synchronized) and the Triton plan's;
  * a whole 1920×1080 frame through `engine.infer` (tiling, conversion and blending in engine._C for native);
  * the largest difference between the two backends' outputs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import engine  # noqa: E402
import engine.models as M  # noqa: E402
from engine.backends.fused import TritonBackend  # noqa: E402


def gpu_ms(fn, iters: int) -> tuple[float, float]:
    """(median GPU ms by CUDA events, median host ms of the call itself) over `iters` calls after 3 warm-ups."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    gpu, host = [], []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t0) * 1e3)
        end.record()
        torch.cuda.synchronize()
        gpu.append(start.elapsed_time(end))
    return statistics.median(gpu), statistics.median(host)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rrdb23")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", help="write the results here as JSON")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("error: bench/native.py needs a CUDA GPU", file=sys.stderr)
        return 2
    major, minor = torch.cuda.get_device_capability()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        net = M.create(args.model).eval()
        torch.manual_seed(1)
        gan = M.create(args.model).eval()
        M.save(net, f"{tmp}/a.safetensors")
        M.save(gan, f"{tmp}/b.safetensors")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "engine.build", "--backend", "native", "--weights",
                        f"{tmp}/a.safetensors", "--gan-weights", f"{tmp}/b.safetensors", "--fp16", "--tile",
                        str(args.tile), "--batch", str(args.batch), "--arch", f"{major}{minor}", "--no-verify", "-o",
                        f"{tmp}/e"], check=True)
        build_s = time.perf_counter() - t0
        native = engine.load(f"{tmp}/e")
        tri = TritonBackend(net, dtype="fp16", gan_net=gan)
        x = torch.rand(args.batch, 3, args.tile, args.tile, device="cuda")
        y = torch.empty(args.batch, 3, args.tile * net.scale, args.tile * net.scale, device="cuda")
        rt = native.backend.runtime
        stream = torch.cuda.current_stream().cuda_stream
        native_gpu, native_host = gpu_ms(lambda: rt.run_device(x.data_ptr(), y.data_ptr(), 0, stream), args.iters)
        triton_gpu, triton_host = gpu_ms(lambda: tri.run(x), args.iters)
        diff = float((native.run(x) - tri.run(x)).abs().max())
        alpha_native = statistics.median(native.set_alpha(a) for a in (0.2, 0.5, 0.8)) * 1e3
        alpha_triton = statistics.median(tri.set_alpha(a) for a in (0.2, 0.5, 0.8)) * 1e3
        frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        timings = {}
        for name, backend in (("native", native), ("triton", tri)):
            engine.infer(backend, frame[:256, :256])
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            engine.infer(backend, frame, tile=args.tile)
            torch.cuda.synchronize()
            timings[name] = time.perf_counter() - t0
        result = {
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "model": args.model,
            "tile": args.tile, "batch": args.batch, "dtype": "fp16", "plan_build_s": build_s,
            "forward_gpu_ms": {"native": native_gpu, "triton": triton_gpu},
            "host_ms_per_call": {"native": native_host, "triton": triton_host},
            "set_alpha_ms": {"native": alpha_native, "triton": alpha_triton},
            "frame_1080p_s": timings, "max_abs_diff_native_vs_triton": diff, "stats": rt.stats(),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
