"""`python bench/segment_flush.py`: how long engine.video's encoder stops taking frames at a segment's end, with the
segment flushed in line (as before) and in a background thread (as the encoder process does now).

libx264 encodes 144 frames of 960×544 (a smooth random picture panning, yuv420p via OpenCV as engine.video does) into
segments of 48 frames with `engine.video._SegmentWriter`, as fast as it takes them. For each way it prints the frame
rate, the median time one frame takes to hand over, and the hand-over times of the frames that end a segment (the
flush, when it is done in line). Both ways run alternately, `--repeats` times. The figures are in docs/upscaling.md
and bench/results/<machine>/segment_flush.txt.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine import video  # noqa: E402


def run(frames: list[np.ndarray], per: int, background: bool,
        options: dict[str, str] | None = None) -> tuple[float, float, list[float]]:
    """(frames/s, median hand-over ms, hand-over ms of each segment's last frame): libx264 with `options` (its
    private options, e.g. {"preset": "veryfast"}) encoding `frames` alone, as fast as it takes them."""
    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"shape": [h, w, 3], "dtype": "uint8", "frame_format": "rgb24", "pix_fmt": "yuv420p", "i420": True,
               "codec": "libx264", "options": dict(options or {}), "rate": "24", "time_base": [1, 24], "parts": tmp,
               "format": "mp4", "suffix": ".mp4", "first": 0, "per": per}
        writer = video._SegmentWriter.from_settings(av, cfg, 0, per, background=background)
        times = []
        start = time.perf_counter()
        for i, image in enumerate(frames):
            t = time.perf_counter()
            frame = video._video_frame(av, image, cfg)
            frame.pts, frame.time_base = i, Fraction(1, 24)
            writer.write(frame)
            times.append(time.perf_counter() - t)
        writer.finish()
        total = time.perf_counter() - start
    ends = [times[k] * 1e3 for k in range(per - 1, len(frames) - 1, per)]  # the last segment is flushed by finish
    return len(frames) / total, float(np.median(times)) * 1e3, ends


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="960x544", help="frame size WxH (default 960x544)")
    p.add_argument("--frames", type=int, default=144)
    p.add_argument("--segment-frames", type=int, default=48)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    base = cv2.resize(np.random.default_rng(0).integers(0, 255, (h // 8, w // 4, 3), dtype=np.uint8), (w * 2, h))
    frames = [np.ascontiguousarray(base[:, i * 4 % w:i * 4 % w + w]) for i in range(args.frames)]
    print(f"libx264 (PyAV {av.__version__}, FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}),"
          f" {args.frames} frames of {w}×{h} in segments of {args.segment_frames}, {os.cpu_count()} CPUs")
    for _ in range(args.repeats):
        for background in (False, True):
            fps, median, ends = run(frames, args.segment_frames, background)
            how = "background" if background else "in line   "
            print(f"flush {how}: {fps:6.1f} frames/s, hand-over median {median:.1f} ms, at segment ends "
                  f"{', '.join(f'{e:.0f}' for e in ends)} ms", flush=True)


if __name__ == "__main__":
    main()
