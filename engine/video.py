"""Video files through any backend: frames decoded with PyAV, each upscaled by `engine.infer`, encoded, with the
frame timestamps, the audio and subtitle streams (copied, not re-encoded) and the container metadata kept.

    stats = upscale_video(backend, "clip.mp4", "out/clip_out.mkv", codec="ffv1")   # {"frames": …, "seconds": …}

PyAV (`pip install av`, the `video` extra) bundles FFmpeg's libraries: no system ffmpeg is needed. 8-bit sources
are upscaled as RGB24, deeper ones (10-bit and up) as RGB48. Each output frame keeps its input frame's timestamp in
the input stream's time base, so a variable frame rate stays as it was and the frame count never changes. The
output is written to a temporary file beside `dst` and renamed into place when complete (`engine.atomic`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .imageio import VIDEO_FORMATS

# container format by output suffix (the temporary file's own suffix cannot tell FFmpeg)
FORMATS = VIDEO_FORMATS
# the encoder a container gets unless one is named, and the pixel format an encoder gets unless one is named:
# (8-bit source, deeper source)
DEFAULT_CODEC = {"webm": "libvpx-vp9", "avi": "mpeg4"}
DEFAULT_PIX_FMT = {"libx264": ("yuv420p", "yuv420p10le"), "libx265": ("yuv420p", "yuv420p10le"),
                   "ffv1": ("bgr0", "gbrp16le"), "libvpx-vp9": ("yuv420p", "yuv420p10le")}


class VideoError(ValueError):
    """A video cannot be read or written; the message names the file and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` reads from a file's first video stream."""

    width: int
    height: int
    frames: int  # as the container states it (0: not stated)
    rate: Fraction | None  # average frame rate, when known
    time_base: Fraction
    pix_fmt: str
    bits: int  # bits per component of the decoded format
    audio: int  # audio streams
    subtitles: int  # subtitle streams


def _require_av() -> Any:
    try:
        import av
    except ImportError as e:
        raise VideoError("video files need PyAV: pip install 'esrgan-engine[video]' (or pip install av)") from e
    return av


def _bits(stream: Any) -> int:
    fmt = stream.codec_context.format
    return max((c.bits for c in fmt.components), default=8) if fmt is not None else 8


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """The first video stream of `path`; VideoError naming the file when it has none or cannot be read."""
    av = _require_av()
    try:
        with av.open(str(path)) as container:
            video = next((s for s in container.streams if s.type == "video"), None)
            if video is None:
                raise VideoError(f"{path}: no video stream (streams: "
                                 f"{', '.join(s.type for s in container.streams) or 'none'})")
            return VideoInfo(width=video.codec_context.width, height=video.codec_context.height,
                             frames=int(video.frames or 0), rate=video.average_rate, time_base=video.time_base,
                             pix_fmt=video.codec_context.pix_fmt or "?", bits=_bits(video),
                             audio=sum(s.type == "audio" for s in container.streams),
                             subtitles=sum(s.type == "subtitle" for s in container.streams))
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot be read as a video ({e})") from e


def upscale_video(net: Any, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, codec: str | None = None,
                  crf: int | None = None, pix_fmt: str | None = None, outscale: float | None = None,
                  alpha: float | None = None, tile: int | None = None, tile_overlap: int | None = None,
                  batch: int | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Upscale every frame of `src`'s first video stream into `dst` (format from its suffix: .mp4, .mkv, .mov,
    .webm, .avi), copying the audio and subtitle streams and the metadata.

    Args:
        net: what `engine.infer` takes (a network, checkpoint path, engine or `Backend`); made a backend once.
        codec: the video encoder (libx264, libx265, ffv1, libvpx-vp9, …; default: libx264, libvpx-vp9 for .webm);
            `crf` its quality setting when given.
        pix_fmt: the encoded pixel format (default per codec and source depth: `DEFAULT_PIX_FMT`).
        outscale, alpha, tile, tile_overlap, batch: as `engine.infer`.
        progress: called with the number of frames done after each frame.

    Returns: {"frames", "seconds", "fps"} of the run. Raises VideoError naming the file for a file without video,
    an unreadable or corrupt file, or a file with no frame; the output is then left as it was.
    """
    av = _require_av()
    from .inference import DEFAULT_TILE_OVERLAP, as_backend, infer

    src, dst = Path(src), Path(dst)
    fmt = FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise VideoError(f"{dst}: the output's suffix must be one of {', '.join(FORMATS)}")
    info = probe(src)
    codec = codec or DEFAULT_CODEC.get(fmt, "libx264")
    backend = as_backend(net)
    high = info.bits > 8
    frame_format = "rgb48le" if high else "rgb24"
    start, done = time.perf_counter(), 0

    def upscale(frame: Any) -> np.ndarray:
        image = frame.to_ndarray(format=frame_format)
        return np.ascontiguousarray(infer(backend, image, tile=tile, batch=batch, outscale=outscale, alpha=alpha,
                                          tile_overlap=DEFAULT_TILE_OVERLAP if tile_overlap is None else tile_overlap))

    def write(tmp: str) -> None:
        nonlocal done
        with av.open(str(src)) as inp, av.open(tmp, mode="w", format=fmt) as out:
            out.metadata.update(inp.metadata)
            vin = next(s for s in inp.streams if s.type == "video")
            copies = {s.index: out.add_stream_from_template(s) for s in inp.streams
                      if s.type in ("audio", "subtitle")}
            vout = None
            for packet in inp.demux(vin, *[s for s in inp.streams if s.index in copies]):
                if packet.stream.index in copies:
                    if packet.dts is not None:  # not the demuxer's end-of-stream marker
                        packet.stream = copies[packet.stream.index]
                        out.mux(packet)
                    continue
                for frame in packet.decode():
                    up = upscale(frame)
                    if vout is None:  # the first frame decides the output size
                        vout = out.add_stream(codec, rate=info.rate or Fraction(25))
                        vout.width, vout.height = up.shape[1], up.shape[0]
                        vout.pix_fmt = pix_fmt or DEFAULT_PIX_FMT.get(codec, ("yuv420p", "yuv420p10le"))[high]
                        vout.time_base = info.time_base
                        vout.codec_context.time_base = info.time_base
                        if crf is not None:
                            vout.options = {"crf": str(crf)}
                    out_frame = av.VideoFrame.from_ndarray(up, format=frame_format)
                    out_frame.pts, out_frame.time_base = frame.pts, frame.time_base
                    for p in vout.encode(out_frame):
                        out.mux(p)
                    done += 1
                    if progress is not None:
                        progress(done)
            if vout is None:
                raise VideoError(f"{src}: the video stream has no frame")
            for p in vout.encode():
                out.mux(p)

    try:
        atomic_write(dst, write)
    except av.error.FFmpegError as e:
        raise VideoError(f"{src} → {dst}: {e}") from e
    seconds = time.perf_counter() - start
    return {"frames": done, "seconds": round(seconds, 3), "fps": round(done / seconds, 3) if seconds else None}
