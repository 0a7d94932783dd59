"""`python bench/video_ceiling.py`: how fast engine.video's pipeline (decode, hand-over, encoder process) can go
around an engine that costs the CPU nothing, as a GPU engine's host thread mostly waits, and whether an engine
slower than that ceiling stays the only busy stage.

The clip is bench/run.py's `video-1080p` one (480×270 H.264 panning across the example photo, with audio), with 288
frames (`--frames`) so that libx264's final flush weighs less, or `--clip`. Every frame's ×4 output is computed
before any timing: bicubic by default (smooth: libx264 encodes it a little faster than a real model's output), or
with `--content MODEL` (a model name or checkpoint, run once by `engine.infer_frames`, on CUDA when there is one).
Per libx264 preset (`--presets`) it then times:
- `encoder alone`: those outputs encoded by `engine.video`'s segment writer in this process, as fast as it takes
  them (bench/segment_flush.py's loop), converted to yuv420p as the pipeline does;
- `engine free`: `engine.video.upscale_video` of the clip with the engine replaced by a stand-in that returns the
  frame's precomputed output at once (a copy, as a device-to-host transfer lands): the pipeline's own ceiling;
- `engine at F`: the same with a stand-in that takes 1 / (F × ceiling) seconds per frame in `time.sleep` (no CPU, the
  GIL released, as a thread waiting on a GPU), for each F of `--paces`. The engine is the only busy stage when its
  busy share while running (busy over the wall time less setup and the encoder's last flush) is near 1 and the end
  to end rate is near the stand-in's own.

Everything else is the real pipeline: PyAV's decoder thread, the engine thread, the encoder process fed through its
shared-memory ring (`--slots`, 0: through its pipe), segments of 48 frames flushed in the background, the final
join. Runs alternate presets and paces over `--repeats` rounds. Prints a table and writes JSON to `--out` (default:
bench/results/extra/<machine>/video_ceiling.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engine  # noqa: E402
import engine.inference  # noqa: E402
import engine.models  # noqa: E402
from bench.measure import commit, cpu_name, device_slug, versions  # noqa: E402
from bench.segment_flush import run as encode_alone  # noqa: E402
from engine import video  # noqa: E402
from engine.atomic import atomic_write  # noqa: E402

SCALE = 4
SEGMENT = 48


def decoded(clip: Path) -> list[np.ndarray]:
    with av.open(str(clip)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def outputs(frames: list[np.ndarray], content: str) -> list[np.ndarray]:
    """Each frame's ×4 output (RGB uint8): bicubic, or the model `content` through engine.infer_frames."""
    if content == "cubic":
        h, w = frames[0].shape[:2]
        return [cv2.resize(f, (w * SCALE, h * SCALE), interpolation=cv2.INTER_CUBIC) for f in frames]
    try:
        net, _ = engine.models.load(content)
    except Exception as e:  # noqa: BLE001 - named, with the loader's reason
        raise SystemExit(f"--content {content}: {e}") from None
    if net.scale != SCALE:
        raise SystemExit(f"--content {content}: a ×{net.scale} model; this bench takes ×{SCALE}")
    cuda = torch.cuda.is_available()
    backend = engine.inference.as_backend(net, device="cuda" if cuda else "cpu", dtype="fp16" if cuda else "fp32")
    return [np.ascontiguousarray(u) for u in engine.infer_frames(backend, frames)]


class StandIn:
    """engine.inference.infer_frames replaced for the duration of a run: each frame's precomputed output (a copy),
    after `pace` seconds per frame spent in time.sleep."""

    def __init__(self, ups: list[np.ndarray], pace: float) -> None:
        self.ups, self.pace, self.next = ups, pace, 0

    def __call__(self, backend: Any, frames: list[np.ndarray], **_: Any) -> list[np.ndarray]:
        start = time.perf_counter()
        out = [self.ups[self.next + i].copy() for i in range(len(frames))]
        self.next += len(frames)
        left = self.pace * len(frames) - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)
        return out


def pipeline(planner: Any, clip: Path, ups: list[np.ndarray], pace: float, preset: str, tmp: Path) -> dict[str, Any]:
    """upscale_video of `clip` with the stand-in engine (`planner`, a ×4 backend, only plans): its report, and the
    engine's busy share while it ran."""
    real = engine.inference.infer_frames
    stand_in = StandIn(ups, pace)
    engine.inference.infer_frames = stand_in  # type: ignore[assignment]  # upscale_video imports it per call
    try:
        out = tmp / "out.mp4"
        out.unlink(missing_ok=True)
        r = video.upscale_video(planner, clip, out, codec="libx264", preset=preset, segment_frames=SEGMENT)
    finally:
        engine.inference.infer_frames = real  # type: ignore[assignment]
    if stand_in.next != len(ups):
        raise SystemExit(f"the stand-in ran {stand_in.next} frames of {len(ups)}")
    w = r["engine_waits"]
    running = 1 - w["setup"] - w["finish"]
    r["engine_busy_running"] = round(r["busy"]["engine"] / running, 3) if running > 0 else None
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, help="a video to use instead of the generated 480×270 clip")
    p.add_argument("--frames", type=int, default=288, help="frames of the generated clip (default 288)")
    p.add_argument("--content", default="cubic", help="the outputs encoded: cubic (default) or a ×4 model")
    p.add_argument("--presets", default="medium,veryfast", help="libx264 presets, comma-separated")
    p.add_argument("--paces", default="0.5,0.8,0.95",
                   help="engine rates to try, as fractions of the pipeline's ceiling (comma-separated)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--slots", type=int, default=video.RING_SLOTS,
                   help=f"frames in the shared-memory ring to the encoder process; 0: through its pipe "
                        f"(default {video.RING_SLOTS}, this machine's)")
    p.add_argument("--out", type=Path,
                   help="the JSON written (default bench/results/extra/<machine>/video_ceiling.json)")
    args = p.parse_args()
    presets = [s for s in args.presets.split(",") if s]
    try:
        paces = [float(s) for s in args.paces.split(",") if s]
    except ValueError:
        p.error(f"--paces {args.paces}: give fractions of the ceiling, e.g. 0.5,0.8")
    if any(not 0 < f for f in paces):
        p.error(f"--paces {args.paces}: each fraction must be above 0")
    if not 0 <= args.slots <= 255:
        p.error(f"--slots {args.slots}: 0 (the pipe) to 255")
    if args.frames < 1:
        p.error(f"--frames {args.frames}: at least 1")
    if args.clip is not None:
        try:
            video.probe(args.clip)  # a file with a video stream
        except video.VideoError as e:
            p.error(f"--clip: {e}")
    for preset in presets:
        try:
            video.check_encoder("libx264", None, {"preset": preset})
        except video.VideoError as e:
            p.error(f"--presets: {e}")
    video.RING_SLOTS = args.slots
    with tempfile.TemporaryDirectory(prefix="video-ceiling-") as tmpdir:
        tmp = Path(tmpdir)
        clip = args.clip
        if clip is None:  # bench/run.py's own clip, made as its video-1080p workload makes it
            from bench.run import WORKLOADS, inputs, make_clip

            w = dataclasses.replace(next(x for x in WORKLOADS if x.name == "video-1080p"), video=args.frames)
            clip = tmp / "clip.mp4"
            frames = make_clip(w, inputs(w)[0][0], clip)  # its frames as decoded
        else:
            frames = decoded(clip)
        t = time.perf_counter()
        ups = outputs(frames, args.content)
        content_s = time.perf_counter() - t
        h, w_ = ups[0].shape[:2]
        doc: dict[str, Any] = {
            "what": "engine.video's pipeline around a stand-in engine (bench/video_ceiling.py)",
            "clip": str(args.clip) if args.clip else f"bench/run.py video-1080p (generated, {args.frames} frames)",
            "frames": len(frames), "input": list(frames[0].shape[:2]), "output": [h, w_], "content": args.content,
            "content_seconds": round(content_s, 1), "segment_frames": SEGMENT, "codec": "libx264",
            "ring_slots": args.slots,
            "conditions": {"cpu": cpu_name(), "cpus": os.cpu_count(),
                           "pyav": av.__version__, "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
                           **versions(), "commit": commit()},
            "presets": {}}
        print(f"{len(frames)} frames {frames[0].shape[1]}×{frames[0].shape[0]} → {w_}×{h}, outputs: {args.content} "
              f"({content_s:.1f} s), libx264 via PyAV {av.__version__}, {os.cpu_count()} CPUs, "
              f"{f'a ring of {args.slots} frames' if args.slots else 'the pipe'} to the encoder", flush=True)
        # the planning needs a ×4 backend: the shipped default model, loaded once here and never run
        planner = engine.inference.as_backend(str(REPO / "weights" / "tiny_x4.safetensors"))
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in presets}
        for _ in range(args.repeats):
            for preset in presets:
                fps, _median, _ends = encode_alone(ups, SEGMENT, True, {"preset": preset})
                runs[preset].setdefault("encoder alone", []).append({"fps": round(fps, 3)})
                free = pipeline(planner, clip, ups, 0.0, preset, tmp)
                runs[preset].setdefault("engine free", []).append(free)
                print(f"{preset}: encoder alone {fps:.1f} frames/s, pipeline with the engine free {free['fps']:.1f}"
                      f" (busy {free['busy']})", flush=True)
                for f in paces:
                    rate = f * free["fps"]
                    r = pipeline(planner, clip, ups, 1 / rate, preset, tmp)
                    r["engine_alone_fps"] = round(rate, 3)
                    runs[preset].setdefault(f"engine at {f:g}", []).append(r)
                    print(f"  engine at {f:g}× that ({rate:.1f} frames/s alone): {r['fps']:.1f} end to end, busy "
                          f"{r['busy']}, engine busy while running {r['engine_busy_running']}, waits "
                          f"{r['engine_waits']}", flush=True)
        print(f"\n| preset | run | frames/s (median of {args.repeats}) | engine busy while running | busy: decode / "
              "engine / encode | engine waits: frames / encoder / setup / finish |\n|---|---|---|---|---|---|")
        for preset, by in runs.items():
            doc["presets"][preset] = {}
            for name, rs in by.items():
                med = statistics.median(r["fps"] for r in rs)
                doc["presets"][preset][name] = {"fps_median": round(med, 3), "runs": rs}
                last = rs[-1]
                if "busy" not in last:
                    print(f"| {preset} | {name} | {med:.1f} | | | |")
                    continue
                b, wt = last["busy"], last["engine_waits"]
                alone = f" (alone {last['engine_alone_fps']:.1f})" if "engine_alone_fps" in last else ""
                print(f"| {preset} | {name} | {med:.1f}{alone} | {last['engine_busy_running']:.0%} | "
                      f"{b['decode']:.0%} / {b['engine']:.0%} / {b['encode']:.0%} | {wt['for_frames']:.0%} / "
                      f"{wt['for_encoder']:.0%} / {wt['setup']:.0%} / {wt['finish']:.0%} |")
    # bench/results/<device>/ holds bench/run.py's runs alone (bench/report.py reads them all); other benches: extra/
    out = args.out or REPO / "bench" / "results" / "extra" / device_slug(f"{cpu_name()} ({os.cpu_count()} cores)") / \
        "video_ceiling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1) + "\n"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
