"""`python bench/ray_scaling.py`: the same folder through `python -m engine.upscale` as a single run and on a local
Ray cluster with 1 and 2 workers, each in its own process, alternating, so the Ray path's cost and its scaling are
numbers on this machine.

The folder: 24 photos (crops of the shipped example photo, 160×120) and a 96-frame 160×90 H.264 clip (a pan
across the photo, by bench/run.py's generator), upscaled with the shipped default model (ncnn on the CPU), the
clip to ffv1 in segments of 24 frames. Each run's wall time is the command's, start-up included (Ray's start and
each worker building its engine are part of what a user waits for); per-frame overhead = (Ray with 1 worker − the
single run) ÷ frames. Writes bench/results/extra/<device>/ray-scaling-<date>.json (beside, not among, bench/run.py's
runs, which bench/report.py reads).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.measure import conditions, device_slug  # noqa: E402
from bench.run import EXAMPLE, Workload, make_clip  # noqa: E402
from engine.atomic import atomic_write  # noqa: E402

PHOTOS, PHOTO_SIZE, CLIP_FRAMES, CLIP_SIZE, SEGMENT = 24, (160, 120), 96, (160, 90), 24


def make_inputs(folder: Path) -> int:
    """The folder's files; returns the frames they hold (a photo is one)."""
    photo = cv2.imread(str(EXAMPLE), cv2.IMREAD_COLOR)
    h, w = photo.shape[:2]
    for i in range(PHOTOS):
        y, x = (i * 37) % (h - PHOTO_SIZE[1]), (i * 53) % (w - PHOTO_SIZE[0])
        cv2.imwrite(str(folder / f"photo{i:02d}.png"), photo[y:y + PHOTO_SIZE[1], x:x + PHOTO_SIZE[0]])
    rgb = cv2.cvtColor(photo, cv2.COLOR_BGR2RGB)
    make_clip(Workload("clip", "", "default", CLIP_SIZE[0], CLIP_SIZE[1], device="cpu", video=CLIP_FRAMES), rgb,
              folder / "clip.mp4")
    return PHOTOS + CLIP_FRAMES


def run(folder: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "engine.upscale", "-i", str(folder), "-o", str(out), "--codec", "ffv1",
           "--segment-frames", str(SEGMENT), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=2, help="rounds of the three runs (default: 2)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "extra"),
                   help="results folder (default: bench/results/extra)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.quick, args.warmup = False, 0
    cond = conditions(args)
    cond["command"] = " ".join(["python bench/ray_scaling.py", *args.argv])
    cond["created"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    variants = {"single run": [], "Ray, 1 worker": ["--ray", "--workers", "1"],
                "Ray, 2 workers": ["--ray", "--workers", "2"]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    env_note = os.environ.get("RAY_ADDRESS")
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        frames = make_inputs(folder)
        for r in range(args.repeat):
            for name, extra in variants.items():
                seconds = run(folder, Path(tmp) / f"out-{r}-{len(times[name])}-{name.replace(' ', '_')}", extra)
                times[name].append(seconds)
                print(f"{name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    single = med["single run"]
    rows = [{"variant": k, "times_s": v, "median_s": med[k], "frames_per_s": frames / med[k],
             "vs_single": single / med[k]} for k, v in times.items()]
    doc = {"conditions": cond, "frames": frames, "photos": PHOTOS, "clip_frames": CLIP_FRAMES,
           "ray_address": env_note, "rows": rows,
           "ray_overhead_per_frame_ms": (med["Ray, 1 worker"] - single) / frames * 1e3,
           "two_vs_one_worker": med["Ray, 1 worker"] / med["Ray, 2 workers"]}
    lines = ["| run | median s (each) | frames/s | vs single run |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['median_s']:.1f} ({', '.join(f'{t:.1f}' for t in r['times_s'])}) | "
                     f"{r['frames_per_s']:.2f} | {r['vs_single']:.2f}× |")
    print("\n".join(lines))
    print(f"Ray's overhead per frame (1 worker − single run, ÷ {frames} frames): "
          f"{doc['ray_overhead_per_frame_ms']:.0f} ms; 2 workers vs 1: {doc['two_vs_one_worker']:.2f}×")
    out = Path(args.out) / device_slug(cond["device"])
    stem = cond["created"].replace(":", "").replace("-", "").replace("T", "-").rstrip("Z")
    path = out / f"ray-scaling-{stem}.json"
    atomic_write(path, lambda t: Path(t).write_text(json.dumps(doc, indent=1) + "\n"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
