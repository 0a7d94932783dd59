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
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .imageio import VIDEO_FORMATS

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


def check_encoder(codec: str, pix_fmt: str | None = None) -> None:
    """VideoError naming the option unless PyAV's FFmpeg has a video encoder `codec` that takes `pix_fmt`."""
    av = _require_av()
    try:
        encoder = av.codec.Codec(codec, "w")
    except av.codec.codec.UnknownCodecError:
        raise VideoError(f"--codec {codec}: no such encoder in PyAV's FFmpeg; use e.g. libx264, libx265, ffv1 or "
                         "libvpx-vp9") from None
    if encoder.type != "video":
        raise VideoError(f"--codec {codec}: an {encoder.type} encoder; give a video encoder (e.g. libx264)")
    formats = [f.name for f in encoder.video_formats or ()]
    if pix_fmt is not None and formats and pix_fmt not in formats:
        raise VideoError(f"--pix-fmt {pix_fmt}: {codec} does not encode it; it takes {', '.join(formats)}")


Item = tuple[str, Any]  # ("frame", (pts, time_base, array)) or ("packet", a copied stream's packet)
QUEUE = 4  # items between two stages: at most 2·QUEUE + 3 frames are decoded and not yet encoded
_END = ("end", None)


@dataclass
class Stats:
    """What a run did: frames encoded, wall time, and each stage's busy seconds."""

    frames: int = 0
    start: float = field(default_factory=time.perf_counter)
    busy: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "engine": 0.0, "encode": 0.0})
    in_flight: int = 0  # frames decoded and not yet encoded
    max_in_flight: int = 0

    def report(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.start
        return {"frames": self.frames, "seconds": round(wall, 3), "fps": round(self.frames / wall, 3) if wall else None,
                "busy": {k: round(v / wall, 3) if wall else None for k, v in self.busy.items()},
                "max_frames_in_flight": self.max_in_flight}


def run_pipeline(source: Iterator[Item], middle: Callable[[Item], Item], sink: Callable[[Item], None],
                 stats: Stats) -> None:
    """source (a decoder thread) → middle (this thread) → sink (an encoder thread), in order, through bounded
    queues; each stage's busy time is added to `stats`. An error in any stage stops the others and is raised here."""
    lock = threading.Lock()
    stop = threading.Event()
    decoded: queue.Queue[Item] = queue.Queue(QUEUE)
    upscaled: queue.Queue[Item] = queue.Queue(QUEUE)
    errors: list[BaseException] = []

    def put(q: queue.Queue[Item], item: Item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(q: queue.Queue[Item]) -> Item | None:
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def count(delta: int) -> None:
        with lock:
            stats.in_flight += delta
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)

    def decoder() -> None:
        try:
            while True:
                t = time.perf_counter()
                item = next(source, _END)
                stats.busy["decode"] += time.perf_counter() - t
                if item[0] == "frame":
                    count(1)
                if not put(decoded, item) or item is _END:
                    return
        except BaseException as e:  # handed to the caller
            errors.append(e)
            stop.set()

    def encoder() -> None:
        try:
            while (item := get(upscaled)) is not None and item is not _END:
                t = time.perf_counter()
                sink(item)
                stats.busy["encode"] += time.perf_counter() - t
                if item[0] == "frame":
                    count(-1)
        except BaseException as e:
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=decoder, name="video-decode", daemon=True),
               threading.Thread(target=encoder, name="video-encode", daemon=True)]
    for th in threads:
        th.start()
    try:
        while (item := get(decoded)) is not None:
            if item is _END:
                put(upscaled, item)
                break
            t = time.perf_counter()
            out = middle(item)
            stats.busy["engine"] += time.perf_counter() - t
            if not put(upscaled, out):
                break
        for th in threads:  # the encoder drains the queue; an error in either stage sets `stop`
            while th.is_alive() and not stop.is_set():
                th.join(timeout=0.1)
    finally:  # also on an error or Ctrl-C here: the other stages stop
        stop.set()
        for th in threads:
            th.join()
    if errors:
        raise errors[0]


def upscale_video(net: Any, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, codec: str | None = None,
                  crf: int | None = None, pix_fmt: str | None = None, outscale: float | None = None,
                  alpha: float | None = None, tile: int | None = None, tile_overlap: int | None = None,
                  batch: int | None = None, threads: int = 0, progress: Callable[[int], None] | None = None
                  ) -> dict[str, Any]:
    """Upscale every frame of `src`'s first video stream into `dst` (format from its suffix: .mp4, .mkv, .mov,
    .webm, .avi), copying the audio and subtitle streams and the metadata.

    Args:
        net: what `engine.infer` takes (a network, checkpoint path, engine or `Backend`); made a backend once.
        codec: the video encoder (libx264, libx265, ffv1, libvpx-vp9, …; default: libx264, libvpx-vp9 for .webm);
            `crf` its quality setting when given.
        pix_fmt: the encoded pixel format (default per codec and source depth: `DEFAULT_PIX_FMT`).
        outscale, alpha, tile, tile_overlap, batch, threads: as `engine.infer`.
        progress: called with the number of frames done after each frame.

    Decoding, the engine and encoding overlap: a decoder thread and an encoder thread around the engine in this
    thread, joined by queues of `QUEUE` items, so memory stays bounded whatever the video's length (`run_pipeline`).

    Returns: `Stats.report()`: frames, seconds, frames/s, and the share of the wall time each stage was busy.
    Raises VideoError naming the file for a file without video,
    an unreadable or corrupt file, or a file with no frame; the output is then left as it was.
    """
    av = _require_av()
    from .inference import DEFAULT_TILE_OVERLAP, as_backend, infer, output_size

    src, dst = Path(src), Path(dst)
    fmt = VIDEO_FORMATS.get(dst.suffix.lower())  # the temporary file's own suffix cannot tell FFmpeg
    if fmt is None:
        raise VideoError(f"{dst}: the output's suffix must be one of {', '.join(VIDEO_FORMATS)}")
    info = probe(src)
    codec = codec or DEFAULT_CODEC.get(fmt, "libx264")
    check_encoder(codec, pix_fmt)
    backend = as_backend(net)
    out_h, out_w = output_size(info.height, info.width, backend.scale, outscale)
    high = info.bits > 8
    frame_format = "rgb48le" if high else "rgb24"
    overlap = DEFAULT_TILE_OVERLAP if tile_overlap is None else tile_overlap
    stats = Stats()

    def write(tmp: str) -> None:
        with av.open(str(src)) as inp, av.open(tmp, mode="w", format=fmt) as out:
            out.metadata.update(inp.metadata)
            vin = next(s for s in inp.streams if s.type == "video")
            copies = {s.index: out.add_stream_from_template(s) for s in inp.streams
                      if s.type in ("audio", "subtitle")}
            vout = out.add_stream(codec, rate=info.rate or Fraction(25))  # before the first mux writes the header
            vout.width, vout.height = out_w, out_h
            vout.pix_fmt = pix_fmt or DEFAULT_PIX_FMT.get(codec, ("yuv420p", "yuv420p10le"))[high]
            vout.time_base = vout.codec_context.time_base = info.time_base
            if crf is not None:
                vout.options = {"crf": str(crf)}

            def decode() -> Iterator[Item]:  # the decoder thread: frames as arrays, copied streams' packets
                for packet in inp.demux(vin, *[s for s in inp.streams if s.index in copies]):
                    if packet.stream.index in copies:
                        if packet.dts is not None:  # not the demuxer's end-of-stream marker
                            yield "packet", packet
                        continue
                    for frame in packet.decode():
                        yield "frame", (frame.pts, frame.time_base, frame.to_ndarray(format=frame_format))

            def upscale(item: Item) -> Item:  # this thread: the engine
                kind, payload = item
                if kind != "frame":
                    return item
                pts, time_base, image = payload
                up = infer(backend, image, tile=tile, batch=batch, outscale=outscale, alpha=alpha,
                           tile_overlap=overlap, threads=threads)
                return kind, (pts, time_base, np.ascontiguousarray(up))

            def encode(item: Item) -> None:  # the encoder thread: encodes frames and muxes everything in order
                kind, payload = item
                if kind == "packet":
                    payload.stream = copies[payload.stream.index]
                    out.mux(payload)
                    return
                pts, time_base, up = payload
                frame = av.VideoFrame.from_ndarray(up, format=frame_format)
                frame.pts, frame.time_base = pts, time_base
                out.mux(vout.encode(frame))
                stats.frames += 1
                if progress is not None:
                    progress(stats.frames)

            run_pipeline(decode(), upscale, encode, stats)
            if stats.frames == 0:
                raise VideoError(f"{src}: the video stream has no frame")
            out.mux(vout.encode())

    try:
        atomic_write(dst, write)
    except av.error.FFmpegError as e:
        raise VideoError(f"{src} → {dst}: {e}") from e
    return stats.report()
