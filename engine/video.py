"""Video files through any backend: frames decoded with PyAV, upscaled in batches (`engine.infer_frames`), encoded,
with the frame timestamps, the audio and subtitle streams (copied, not re-encoded) and the container metadata kept.

    stats = upscale_video(backend, "clip.mp4", "out/clip_out.mkv", codec="ffv1")   # {"frames": …, "seconds": …}

PyAV (`pip install av`, the `video` extra) bundles FFmpeg's libraries: no system ffmpeg is needed. 8-bit sources
are upscaled as RGB24, deeper ones (10-bit and up) as RGB48. Each output frame keeps its input frame's timestamp in
the input stream's time base, so a variable frame rate stays as it was and the frame count never changes.

Resumable: the video is encoded in segments of `segment_frames` frames, each a complete file in the folder
`.NAME.parts` beside the output, renamed into place when its last frame is encoded; at the end the segments' packets
and the source's audio and subtitle packets are joined into the output without re-encoding (a temporary file
renamed into place, `engine.atomic`), and the folder is removed. A run that is interrupted (Ctrl-C, SIGKILL, a
crash) leaves its finished segments; a later run given the same `resume_key` (the model) and settings keeps them,
decodes past their frames without upscaling them, and encodes the rest.
"""

from __future__ import annotations

import functools
import heapq
import io
import itertools
import json
import os
import queue
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .atomic import atomic_write, file_mode, remove_stale_temps, temp_path
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


def encoder_options(crf: int | None = None, preset: str | None = None,
                    options: Mapping[str, str] | None = None) -> dict[str, str]:
    """The encoder's private options (FFmpeg's AVOptions: `preset`, `tune`, `crf`, `x264-params`, …): `options`
    (`--codec-opt KEY=VALUE`) with `crf` and `preset` added; ValueError naming both flags when they give one twice."""
    merged = {str(k): str(v) for k, v in (options or {}).items()}
    for key, value in (("crf", crf), ("preset", preset)):
        if value is not None:
            if key in merged:
                raise ValueError(f"--{key} {value} and --codec-opt {key}={merged[key]}: give {key} once")
            merged[key] = str(value)
    return merged


def check_encoder(codec: str, pix_fmt: str | None = None, options: Mapping[str, str] | None = None, *,
                  trial_pix_fmt: str | None = None) -> None:
    """VideoError naming the option unless PyAV's FFmpeg has a video encoder `codec` that takes `pix_fmt` (the one
    given) and opens with `options` (each one used: FFmpeg ignores an option an encoder lacks, so a misspelt one is
    named here) at `trial_pix_fmt` (the one it will encode; default `pix_fmt`, else the encoder's default)."""
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
    if options:
        pix = trial_pix_fmt or pix_fmt or DEFAULT_PIX_FMT.get(codec, ("yuv420p",))[0]
        why = _refused_options(codec, pix if not formats or pix in formats else formats[0], tuple(options.items()))
        if why is not None:
            raise VideoError(why)


@functools.lru_cache(maxsize=16)
def _refused_options(codec: str, pix_fmt: str, options: tuple[tuple[str, str], ...]) -> str | None:
    """Why `codec` does not take `options` at `pix_fmt`, or None: an encoder opened once on a small frame with them
    (what it leaves unused, it does not have). Cached: the command checks before any work and again per video, and
    an encoder's open is not free (libx265 prints its banner each time)."""
    av = _require_av()
    trial = av.CodecContext.create(codec, "w")
    trial.width = trial.height = 256
    trial.pix_fmt = pix_fmt
    trial.time_base, trial.framerate = Fraction(1, 25), Fraction(25)
    trial.options = dict(options)
    given = ", ".join(f"{k}={v}" for k, v in options)
    try:
        trial.open()
    except av.error.FFmpegError as e:
        return (f"--codec-opt/--preset/--crf ({given}): {codec} refuses them ({e}); see its options with "
                f"`ffmpeg -h encoder={codec}`")
    unused = sorted(trial.options)
    if unused:
        return (f"--codec-opt/--preset ({given}): {codec} has no option {', '.join(unused)}; see its options with "
                f"`ffmpeg -h encoder={codec}`")
    return None


Item = tuple[str, Any]  # ("frame", (pts, time_base, array)); any other kind passes through the engine alone
QUEUE = 4  # items between two stages besides a group: at most 2·(QUEUE + group) + group + 2 frames are decoded
#           and not yet encoded
SEGMENT_FRAMES = 240  # frames per resumable segment: what an interrupted run can lose
_END = ("end", None)


@dataclass
class Stats:
    """What a run did: frames upscaled, frames kept from an earlier run, wall time, and each stage's busy seconds."""

    frames: int = 0
    resumed: int = 0  # frames of finished segments of an earlier run, not upscaled again
    start: float = field(default_factory=time.perf_counter)
    busy: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "engine": 0.0, "encode": 0.0})
    # the engine's idle time: waiting for decoded frames (the decoder is slower) or for room in the encoder's queue
    # (the encoder is slower); before the pipeline starts (`setup`: the video probed, the encoder process started)
    # and after the engine's last frame (`finish`: the encoder's last frames and flush, the join)
    engine_waits: dict[str, float] = field(default_factory=lambda: {"for_frames": 0.0, "for_encoder": 0.0,
                                                                    "setup": 0.0, "finish": 0.0})
    engine_done: float | None = None  # when the engine handed on its last frame
    in_flight: int = 0  # frames decoded and not yet encoded
    max_in_flight: int = 0

    def report(self) -> dict[str, Any]:
        now = time.perf_counter()
        wall = now - self.start
        if self.engine_done is not None:
            self.engine_waits["finish"] = now - self.engine_done
        return {"frames": self.frames, "resumed_frames": self.resumed, "seconds": round(wall, 3),
                "fps": round(self.frames / wall, 3) if wall else None,
                "busy": {k: round(v / wall, 3) if wall else None for k, v in self.busy.items()},
                "engine_waits": {k: round(v / wall, 3) if wall else None for k, v in self.engine_waits.items()},
                "max_frames_in_flight": self.max_in_flight}


def run_pipeline(source: Iterator[Item], middle: Callable[[list[Item]], list[Item]], sink: Callable[[Item], None],
                 stats: Stats, *, group: int = 1) -> None:
    """source (a decoder thread) → middle (this thread) → sink (an encoder thread), in order, through bounded
    queues. `middle` takes up to `group` consecutive frames at a time (fewer at the end, or before a non-frame item,
    which it gets alone) and returns as many items. Each stage's busy time is added to `stats`. An error in any
    stage stops the others and is raised here."""
    lock = threading.Lock()
    stop = threading.Event()
    decoded: queue.Queue[Item] = queue.Queue(QUEUE + group)  # a whole group ready while the engine runs one
    upscaled: queue.Queue[Item] = queue.Queue(QUEUE + group)
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

    def process(items: list[Item]) -> bool:
        t = time.perf_counter()
        outs = middle(items)
        t2 = time.perf_counter()
        stats.busy["engine"] += t2 - t
        ok = all(put(upscaled, out) for out in outs)
        stats.engine_waits["for_encoder"] += time.perf_counter() - t2
        return ok

    threads = [threading.Thread(target=decoder, name="video-decode", daemon=True),
               threading.Thread(target=encoder, name="video-encode", daemon=True)]
    for th in threads:
        th.start()
    try:
        frames: list[Item] = []
        while True:
            t = time.perf_counter()
            item = get(decoded)
            stats.engine_waits["for_frames"] += time.perf_counter() - t
            if item is None:
                break
            if item[0] == "frame":
                frames.append(item)
                if len(frames) < group:
                    continue
            if frames and not process(frames):
                break
            frames = []
            if item is _END:
                stats.engine_done = time.perf_counter()
                put(upscaled, item)
                break
            if item[0] != "frame" and not process([item]):
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


# ---------------------------------------------------------------------------------------------------------
# Segments


def parts_folder(dst: str | os.PathLike[str]) -> Path:
    """The folder of `dst`'s finished segments while it is being written: `.NAME.parts` beside it."""
    dst = Path(dst)
    return dst.with_name(f".{dst.name}.parts")


_SEGMENT = re.compile(r"seg-(\d{6})\.(\w+)")
_MANIFEST = "manifest.json"


def _segment_name(k: int, suffix: str) -> str:
    return f"seg-{k:06d}{suffix}"


def _clear_parts(parts: Path) -> None:
    """Remove the segments, manifest and stale temporaries of `parts` (nothing else), and the folder if that
    empties it."""
    remove_stale_temps(parts)
    for p in parts.iterdir() if parts.is_dir() else ():
        if (p.name == _MANIFEST or _SEGMENT.fullmatch(p.name)) and p.is_file() and not p.is_symlink():
            p.unlink()
    try:
        parts.rmdir()
    except OSError:
        pass  # not there, or it holds files that are not ours: left as they are


def _finished_segments(parts: Path, manifest: dict[str, Any], suffix: str) -> int:
    """How many consecutive segments from the first an earlier run with this same manifest finished; 0 (and the
    folder cleared) when the manifest differs or is missing."""
    try:
        earlier = json.loads((parts / _MANIFEST).read_text())
    except (OSError, ValueError):
        earlier = None
    if earlier != manifest:
        _clear_parts(parts)
        return 0
    remove_stale_temps(parts)
    k = 0
    while (parts / _segment_name(k, suffix)).is_file():
        k += 1
    return k


class _SegmentWriter:
    """Encodes frames into segment files of `frames_per_segment` frames: each written to a temporary name in
    `parts` and renamed when its encoder is flushed, so a finished segment is a whole file.

    With `background`, a full segment is flushed (the encoder's delayed frames, then the file's close and rename) by
    a thread while the next segment takes frames: the flush takes as long as encoding the frames the encoder holds
    back (its lookahead and frame threads; tens of frames for libx264), and would otherwise stop the intake, and so
    the engine upstream, at every segment's end. One flush runs at a time, so segments finish in order; a flush's
    error is raised by the next `write` or `finish`."""

    def __init__(self, av: Any, parts: Path, fmt: str, suffix: str, first: int, frames_per_segment: int,
                 make_stream: Callable[[Any], Any], *, background: bool = False) -> None:
        self.av, self.parts, self.fmt, self.suffix = av, parts, fmt, suffix
        self.k, self.per, self.make_stream, self.background = first, frames_per_segment, make_stream, background
        self.container: Any = None
        self.stream: Any = None
        self.tmp: Path | None = None
        self.count = 0
        self.flushing: threading.Thread | None = None
        self.flush_error: BaseException | None = None

    @classmethod
    def from_settings(cls, av: Any, cfg: dict[str, Any], first: int, frames_per_segment: int, *,
                      background: bool = False) -> _SegmentWriter:
        """A writer of segments `first`, `first` + 1, … with the encoder's settings (`VideoJob.encoder`)."""
        return cls(av, Path(cfg["parts"]), cfg["format"], cfg["suffix"], first, frames_per_segment,
                   lambda container: _add_stream(container, cfg), background=background)

    def write(self, frame: Any) -> None:
        if self.flush_error is not None:
            self._wait()
        if self.container is None:
            self.tmp = temp_path(self.parts / _segment_name(self.k, self.suffix))
            self.container = self.av.open(str(self.tmp), mode="w", format=self.fmt)
            self.stream = self.make_stream(self.container)
        self.container.mux(self.stream.encode(frame))
        self.count += 1
        if self.count == self.per:
            self._close(self.background)

    def finish(self) -> None:
        """Flush and close the open segment and rename it into place (nothing when none is open), after any flush
        under way."""
        self._close(background=False)
        self._wait()

    def _close(self, background: bool) -> None:
        if self.container is None:
            return
        assert self.tmp is not None  # set with the container
        segment = (self.container, self.stream, self.tmp, self.k)
        self.container, self.stream, self.tmp, self.k, self.count = None, None, None, self.k + 1, 0
        self._wait()  # the segment before: in order
        if not background:
            self._flush(*segment)
            return

        def flush() -> None:
            try:
                self._flush(*segment)
            except BaseException as e:  # raised by the next write or finish
                self.flush_error = e

        self.flushing = threading.Thread(target=flush, name="video-segment-flush", daemon=True)
        self.flushing.start()

    def _flush(self, container: Any, stream: Any, tmp: Path, k: int) -> None:
        try:
            container.mux(stream.encode())
            container.close()
            os.chmod(tmp, file_mode())
            os.replace(tmp, self.parts / _segment_name(k, self.suffix))
        except BaseException:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - an encoder in an error state; the file is deleted anyway
                pass
            tmp.unlink(missing_ok=True)
            raise

    def _wait(self) -> None:
        """Wait for the flush under way, if any; raise its error."""
        if self.flushing is not None:
            self.flushing.join()
            self.flushing = None
        if self.flush_error is not None:
            e, self.flush_error = self.flush_error, None
            raise e

    def abandon(self) -> None:
        """Close and delete an unfinished segment (after an error); a full segment being flushed is finished."""
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # noqa: BLE001 - an encoder in an error state; the file is deleted anyway
                pass
            self.container = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - abandoning after an error already; its file is deleted
            pass


def _with_decode_times(packets: Iterator[Any]) -> Iterator[Any]:
    """The non-empty packets of one stream, each with a decode timestamp. Matroska stores presentation times only,
    and its demuxer leaves the first packets of a reordering encoder without one: those get one tick each before
    the first known decode time (or, at the end, before the smallest presentation time of those waiting), which
    keeps the decode times increasing and each at or before its presentation time."""
    pending: list[Any] = []

    def settle(before: int) -> Iterator[Any]:
        for j, p in enumerate(pending):
            p.dts = before - (len(pending) - j)
        yield from pending
        pending.clear()

    for packet in packets:
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        if packet.dts is None:
            pending.append(packet)
            continue
        yield from settle(packet.dts)
        yield packet
    if pending:
        yield from settle(min(p.pts for p in pending))


def _check_copies(av: Any, src: Path, dst: Path, fmt: str) -> None:
    """VideoError, before any work, when an audio or subtitle stream of `src` cannot be copied into `dst`'s format
    (PCM audio into WebM, say): the header is written to memory with those streams."""
    with av.open(str(src)) as inp:
        copied = [s for s in inp.streams if s.type in ("audio", "subtitle")]
        for s in copied:
            try:
                with av.open(io.BytesIO(), mode="w", format=fmt) as out:
                    out.add_stream_from_template(s)
                    out.start_encoding()
            except (av.error.FFmpegError, ValueError) as e:
                name = s.codec_context.name if s.codec_context is not None else "?"
                raise VideoError(f"{src}: its {s.type} stream {s.index} ({name}) cannot be copied into a "
                                 f"{dst.suffix} file ({e}); write .mkv, which holds every codec") from None


def _join(av: Any, segments: list[Path], src: Path, tmp: str, fmt: str) -> None:
    """Write `tmp` (format `fmt`): the segments' video packets, as encoded, and `src`'s audio and subtitle packets
    and metadata, interleaved by time. A packet's decode timestamp that would not follow the previous segment's
    last one (an encoder that reorders frames starts a segment's decode times before its first frame) is moved to
    one tick after it; presentation timestamps are never changed."""
    with av.open(str(src)) as inp, av.open(tmp, mode="w", format=fmt, options={"fflags": "+bitexact"}) as out:
        out.metadata.update(inp.metadata)
        copied = [s for s in inp.streams if s.type in ("audio", "subtitle")]
        copies = {s.index: out.add_stream_from_template(s) for s in copied}
        with av.open(str(segments[0])) as first:
            template = first.streams.video[0]
            vout = out.add_stream_from_template(template)
            vout.time_base = template.time_base
            extradata = template.codec_context.extradata

        def video() -> Iterator[tuple[float, int, Any]]:
            last = None
            for i, seg in enumerate(segments):
                with av.open(str(seg)) as c:
                    stream = c.streams.video[0]
                    if stream.codec_context.extradata != extradata:
                        raise VideoError(f"{seg}: its encoder's headers differ from the first segment's; the "
                                         "segments cannot be joined without re-encoding (delete the folder "
                                         f"{seg.parent} and run again)")
                    for packet in _with_decode_times(c.demux(stream)):
                        if last is not None and packet.dts <= last:
                            packet.dts = last + 1
                        last = packet.dts
                        yield float(packet.dts * packet.time_base), i, packet

        def others() -> Iterator[tuple[float, int, Any]]:
            if not copied:
                return
            for packet in inp.demux(*copied):
                if packet.size:
                    yield float(packet.dts * packet.time_base), -1, packet

        for _, _, packet in heapq.merge(video(), others(), key=lambda x: (x[0], x[1])):
            packet.stream = copies[packet.stream.index] if packet.stream.type != "video" else vout
            out.mux(packet)


# ---------------------------------------------------------------------------------------------------------
# The encoder process

# a frame on the encoder's stdin: this header (kind, pts, time base numerator and denominator, ring slot), then the
# frame's bytes when its slot is -1 (no ring)
_HEADER = struct.Struct("<qqqqq")
_FRAME, _END_OF_FRAMES = 0, 1
# frames the parent can hand over through shared memory (a memfd ring, Linux) ahead of the encoder; 0: the pipe only
RING_SLOTS = 3 if hasattr(os, "memfd_create") else 0


def _ring_views(buffer: Any, shape: tuple[int, ...], dtype: np.dtype[Any], slots: int) -> list[np.ndarray]:
    count = int(np.prod(shape))
    return [np.frombuffer(buffer, dtype, count, k * count * dtype.itemsize).reshape(shape) for k in range(slots)]


def _encoder_main() -> int:
    """`python -m engine.video --encoder`, the encoder process: its settings as one JSON line on stdin, then frames
    (`_HEADER`, then the frame's bytes or, with a ring, the frame in its slot) until an end record, each encoded
    into segments (`_SegmentWriter`); then one JSON line on stdout: {"done": segments written so far, "busy":
    seconds} or {"error": message}. End of input before the end record (the parent stopped or was killed) abandons
    the open segment. Encoding runs here, apart from the parent's Python threads: PyAV's encoder needs the GIL often,
    and a busy engine thread in the same process halves libx264's frame rate (docs/upscaling.md).

    The ring (settings "ring": {"fd", "slots", "ack"}, from `_Encoder`): a shared memory file of `slots` frames,
    inherited as descriptor `fd`. A frame in slot k is converted straight from it into the encoder's frame, and k is
    then written as one byte to the pipe `ack`, which gives the slot back to the parent: no copy through a pipe."""
    import mmap
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides: an end record, or end of input
    av = _require_av()
    inp, out = sys.stdin.buffer, sys.stdout
    cfg = json.loads(inp.readline())
    shape, dtype = tuple(cfg["shape"]), np.dtype(cfg["dtype"])
    writer = _SegmentWriter.from_settings(av, cfg, cfg["first"], cfg["per"], background=True)
    image = np.empty(shape, dtype)
    buf = memoryview(image.data).cast("B")
    ring = cfg.get("ring")
    slots: list[np.ndarray] = []
    if ring:
        shared = mmap.mmap(ring["fd"], ring["slots"] * image.nbytes)
        os.close(ring["fd"])  # the mapping keeps the memory
        slots = _ring_views(shared, shape, dtype, ring["slots"])
    busy = 0.0
    try:
        while True:
            head = inp.read(_HEADER.size)
            if len(head) < _HEADER.size:
                writer.abandon()  # the parent is gone, or stopped the run
                return 1
            kind, pts, num, den, slot = _HEADER.unpack(head)
            if kind == _END_OF_FRAMES:
                t = time.perf_counter()
                writer.finish()
                busy += time.perf_counter() - t
                out.write(json.dumps({"done": writer.k, "busy": busy}) + "\n")
                out.flush()
                return 0
            if slot < 0:
                got = 0
                while got < len(buf):
                    n = inp.readinto(buf[got:])  # type: ignore[union-attr]  # sys.stdin.buffer: a BufferedReader
                    if not n:
                        writer.abandon()
                        return 1
                    got += n
            t = time.perf_counter()
            frame = _video_frame(av, image if slot < 0 else slots[slot], cfg)  # a copy: the slot is free again
            if slot >= 0:
                os.write(ring["ack"], bytes((slot,)))
            frame.pts, frame.time_base = pts, Fraction(num, den)
            writer.write(frame)
            busy += time.perf_counter() - t
    except BaseException as e:  # reported to the parent, which names the file
        writer.abandon()
        out.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        out.flush()
        return 1


class _Encoder:
    """The parent's handle on the encoder process: `send` hands it a frame (blocking while it is busy: the pipe, or
    the ring's slots, are the queue), `finish` ends it and returns the number of segments written, `abort` stops it
    (its open segment is deleted).

    With `slots` (default `RING_SLOTS`: 3 on Linux, else 0) frames go through a ring of that many frames in shared
    memory, an anonymous memory file (memfd, not /dev/shm, whose size a container may cap) that only the two
    processes hold: one copy into a free slot, instead of two through the pipe (into the kernel and out, the second
    in the encoder process's own thread, before it can convert the frame). bench/video_ceiling.py measures both."""

    def __init__(self, cfg: dict[str, Any], slots: int | None = None) -> None:
        import mmap
        import subprocess
        import sys

        slots = RING_SLOTS if slots is None else slots
        if not 0 <= slots <= 255:  # a slot is given back as one byte
            raise ValueError(f"slots {slots}: 0 (the pipe) to 255")
        here = str(Path(__file__).resolve().parents[1])  # the folder holding this engine package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
        shape, dtype = tuple(cfg["shape"]), np.dtype(cfg["dtype"])
        self.slots: list[np.ndarray] = []
        self.free: list[int] = []
        self.ack = -1
        self.shared: mmap.mmap | None = None
        keep: tuple[int, ...] = ()
        if slots:
            size = slots * int(np.prod(shape)) * dtype.itemsize
            fd = os.memfd_create("engine-video-frames")
            ack_w = -1
            try:
                os.ftruncate(fd, size)
                self.shared = mmap.mmap(fd, size)
                self.ack, ack_w = os.pipe()
            except BaseException:
                os.close(fd)
                self._close_ring()
                raise
            self.slots, self.free = _ring_views(self.shared, shape, dtype, slots), list(range(slots))
            cfg = {**cfg, "ring": {"fd": fd, "slots": slots, "ack": ack_w}}
            keep = (fd, ack_w)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "engine.video", "--encoder"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env, pass_fds=keep)
        except BaseException:
            self._close_ring()
            raise
        finally:
            for fd in keep:  # the child's copies now; its end of `ack` closing is how a crash shows
                os.close(fd)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.stdin.write(json.dumps(cfg).encode() + b"\n")
        self.stdin.flush()

    def _close_ring(self) -> None:
        self.slots, self.free = [], []
        if self.ack >= 0:
            os.close(self.ack)
            self.ack = -1
        if self.shared is not None:
            try:
                self.shared.close()
            except BufferError:  # a view of a slot still alive somewhere: the memory goes with it
                pass
            self.shared = None

    def _report(self) -> dict[str, Any]:
        """The encoder's last line, once it has exited ({} when it said nothing readable)."""
        line = self.stdout.readline()
        self.proc.wait()
        self._close_ring()
        try:
            msg = json.loads(line) if line.strip() else {}
        except ValueError:
            msg = {}
        return msg if isinstance(msg, dict) else {}

    def _failure(self, msg: dict[str, Any]) -> VideoError:
        return VideoError(f"the encoder process stopped (exit status {self.proc.returncode}): "
                          f"{msg.get('error', 'no message')}")

    def send(self, pts: int, time_base: Fraction, image: np.ndarray) -> None:
        try:
            head = (_FRAME, pts, time_base.numerator, time_base.denominator)
            if not self.slots:
                self.stdin.write(_HEADER.pack(*head, -1))
                self.stdin.write(memoryview(np.ascontiguousarray(image).data).cast("B"))
                return
            while not self.free:  # every slot is with the encoder: wait for it to give one back
                freed = os.read(self.ack, len(self.slots))
                if not freed:  # the encoder process is gone
                    raise BrokenPipeError
                self.free.extend(freed)
            slot = self.free.pop()
            np.copyto(self.slots[slot], image)
            self.stdin.write(_HEADER.pack(*head, slot))
            self.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._failure(self._report()) from None

    def finish(self) -> tuple[int, float]:
        """(segments written, seconds the encoder was busy)."""
        try:
            self.stdin.write(_HEADER.pack(_END_OF_FRAMES, 0, 0, 1, -1))
            self.stdin.close()
        except (BrokenPipeError, OSError):
            raise self._failure(self._report()) from None
        msg = self._report()
        if "done" not in msg:
            raise self._failure(msg)
        return int(msg["done"]), float(msg["busy"])

    def abort(self) -> None:
        try:
            self.stdin.close()  # end of input: the encoder deletes its open segment and exits
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a stuck encoder is killed
            self.proc.kill()
            self.proc.wait()
        self._close_ring()


@dataclass
class VideoJob:
    """One video's upscale, planned (`plan_video`): where its segments go, what the encoder is given, and how many
    segments an earlier run finished. A single run (`upscale_video`) encodes the rest in one pipeline; a cluster
    run (`engine.distributed`) hands each remaining segment to a worker (`encode_segment`); both end with
    `join_video`."""

    src: Path
    dst: Path
    fmt: str
    info: VideoInfo
    parts: Path
    suffix: str
    segment_frames: int
    done: int  # segments finished by an earlier run, kept
    frame_format: str  # rgb24 or rgb48le: what frames are decoded to and upscaled in
    encoder: dict[str, Any]  # the encoder's settings (`_encoder_main`, `_SegmentWriter`)


def plan_video(backend: Any, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, codec: str | None = None,
               crf: int | None = None, preset: str | None = None, codec_options: Mapping[str, str] | None = None,
               pix_fmt: str | None = None, outscale: float | None = None,
               alpha: float | None = None, tile: int | None = None, tile_overlap: int = 32,
               batch: int | None = None, segment_frames: int = SEGMENT_FRAMES, resume_key: str | None = None,
               max_pixels: int | None = None) -> VideoJob:
    """Check `src` and the settings, and prepare the parts folder: keep the finished segments of an earlier run
    with the same manifest (source, `resume_key`, settings) when `resume_key` is given, else start it empty."""
    av = _require_av()
    from .inference import output_size

    src, dst = Path(src), Path(dst)
    fmt = VIDEO_FORMATS.get(dst.suffix.lower())  # the temporary file's own suffix cannot tell FFmpeg
    if fmt is None:
        raise VideoError(f"{dst}: the output's suffix must be one of {', '.join(VIDEO_FORMATS)}")
    if segment_frames < 1:
        raise ValueError(f"segment_frames must be at least 1, got {segment_frames}")
    info = probe(src)
    if max_pixels is not None and info.width * info.height > max_pixels:
        raise VideoError(f"{src}: its {info.width}×{info.height} frames have more than --max-pixels {max_pixels} "
                         "pixels; raise --max-pixels if this video is meant")
    codec = codec or DEFAULT_CODEC.get(fmt, "libx264")
    options = encoder_options(crf, preset, codec_options)
    out_h, out_w = output_size(info.height, info.width, backend.scale, outscale)
    high = info.bits > 8
    given_pix_fmt, pix_fmt = pix_fmt, pix_fmt or DEFAULT_PIX_FMT.get(codec, ("yuv420p", "yuv420p10le"))[high]
    check_encoder(codec, given_pix_fmt, options, trial_pix_fmt=pix_fmt)
    parts = parts_folder(dst)
    # segments in the output's own format, so that the join copies packets into the muxer that made them; AVI
    # keeps no start time per file, so its segments are Matroska
    seg_fmt, suffix = ("matroska", ".mkv") if fmt == "avi" else (fmt, dst.suffix.lower())
    _check_copies(av, src, dst, fmt)
    stat = src.stat()
    manifest = {"source": str(src.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "resume_key": resume_key, "codec": codec, "options": options, "pix_fmt": pix_fmt, "outscale": outscale,
                "alpha": alpha, "tile": tile, "tile_overlap": tile_overlap, "batch": batch,
                "segment_frames": segment_frames, "output": [out_w, out_h], "format": fmt}
    done = _finished_segments(parts, manifest, suffix) if resume_key is not None else 0
    if done == 0:
        _clear_parts(parts)
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write(parts / _MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    frame_format = "rgb48le" if high else "rgb24"
    encoder = {
        "shape": [out_h, out_w, 3], "dtype": "uint16" if high else "uint8", "frame_format": frame_format,
        "pix_fmt": pix_fmt, "i420": pix_fmt == "yuv420p" and not high and out_w % 2 == 0 and out_h % 2 == 0,
        "codec": codec, "options": options, "rate": str(info.rate or Fraction(25)),
        "time_base": [info.time_base.numerator, info.time_base.denominator], "parts": str(parts), "format": seg_fmt,
        "suffix": suffix, "first": done, "per": segment_frames}
    return VideoJob(src, dst, fmt, info, parts, suffix, segment_frames, done, frame_format, encoder)


def join_video(job: VideoJob, segments: int) -> None:
    """Join the job's first `segments` segments with the source's other streams into `job.dst` (a temporary file
    renamed into place), then remove the parts folder."""
    av = _require_av()
    paths = [job.parts / _segment_name(k, job.suffix) for k in range(segments)]
    try:
        atomic_write(job.dst, lambda tmp: _join(av, paths, job.src, tmp, job.fmt))
    except av.error.FFmpegError as e:
        raise VideoError(f"{job.src} → {job.dst}: {e}") from e
    _clear_parts(job.parts)


def frame_times(src: str | os.PathLike[str]) -> list[int]:
    """The presentation times of `src`'s video frames in order, from its packets (nothing decoded); decoded when
    a packet has none."""
    av = _require_av()
    with av.open(str(src)) as c:
        vin = c.streams.video[0]
        pts = [p.pts for p in c.demux(vin) if p.size]
        if any(t is None for t in pts):
            c.seek(0)
            pts = [f.pts for f in c.decode(c.streams.video[0])]
    return sorted(pts)


def encode_segment(backend: Any, job: VideoJob, k: int, times: list[int], *, tile: int | None = None,
                   tile_overlap: int = 32, batch: int | None = None, outscale: float | None = None,
                   alpha: float | None = None, threads: int = 0) -> int:
    """Upscale and encode segment `k` of `job` (the frames at presentation times `times`) into its file in the
    parts folder, as a single run writes it: the same frames, encoder and settings, so the same packets. The source
    is read from the keyframe before the first frame (from the start when that seek lands past it). Returns the
    number of frames."""
    av = _require_av()
    from .inference import backend_batch, infer_frames

    cfg = job.encoder
    wanted, first = set(times), times[0]

    def frames(seek: bool) -> Iterator[Any]:
        with av.open(str(job.src)) as inp:
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"
            if seek and first > 0:
                inp.seek(first, stream=vin, backward=True, any_frame=False)
            started = False
            for frame in inp.decode(vin):
                if not started:
                    if frame.pts is not None and frame.pts > first:
                        raise LookupError("the seek passed the segment's first frame")
                    started = True
                if frame.pts in wanted:
                    yield frame
                if frame.pts is not None and frame.pts >= times[-1]:
                    return

    writer = _SegmentWriter.from_settings(av, cfg, k, len(times) + 1)  # finished by hand: one segment
    group = backend_batch(backend, batch)
    count = 0
    try:
        source = _grouped(frames(seek=True), group, job.frame_format)
        try:  # the seek is judged by the first frame decoded, before anything is encoded
            head = next(source, None)
        except LookupError:
            source = _grouped(frames(seek=False), group, job.frame_format)
            head = next(source, None)
        for chunk in itertools.chain([head] if head is not None else [], source):  # a group in memory at a time
            ups = infer_frames(backend, [image for _, _, image in chunk], tile=tile, tile_overlap=tile_overlap,
                               batch=batch, outscale=outscale, alpha=alpha, threads=threads)
            for (pts, time_base, _), up in zip(chunk, ups, strict=True):
                frame = _video_frame(av, np.ascontiguousarray(up), cfg)
                frame.pts, frame.time_base = pts, time_base
                writer.write(frame)
                count += 1
        if count != len(times):
            raise VideoError(f"{job.src}: segment {k} should hold {len(times)} frames, decoding gave {count}")
        writer.finish()
    except BaseException:
        writer.abandon()
        raise
    return count


def _grouped(frames: Iterator[Any], group: int, frame_format: str) -> Iterator[list[tuple[int, Fraction, Any]]]:
    chunk: list[tuple[int, Fraction, Any]] = []
    for frame in frames:
        chunk.append((frame.pts, frame.time_base, frame.to_ndarray(format=frame_format)))
        if len(chunk) == group:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _add_stream(container: Any, cfg: dict[str, Any]) -> Any:
    """The encoded video stream of a segment file, from the encoder's settings (`VideoJob.encoder`)."""
    vout = container.add_stream(cfg["codec"], rate=Fraction(cfg["rate"]))
    vout.width, vout.height, vout.pix_fmt = cfg["shape"][1], cfg["shape"][0], cfg["pix_fmt"]
    vout.time_base = vout.codec_context.time_base = Fraction(*cfg["time_base"])
    if cfg["options"]:
        vout.options = dict(cfg["options"])
    return vout


def _video_frame(av: Any, image: np.ndarray, cfg: dict[str, Any]) -> Any:
    """An upscaled RGB frame as the encoder takes it: YUV 4:2:0 by OpenCV where the encoder wants yuv420p (BT.601,
    video range, as swscale's, a fifth of its time), else RGB for FFmpeg to convert."""
    if cfg["i420"]:
        return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    return av.VideoFrame.from_ndarray(image, format=cfg["frame_format"])


def upscale_video(net: Any, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, codec: str | None = None,
                  crf: int | None = None, preset: str | None = None, codec_options: Mapping[str, str] | None = None,
                  pix_fmt: str | None = None, outscale: float | None = None,
                  alpha: float | None = None, tile: int | None = None, tile_overlap: int | None = None,
                  batch: int | None = None, threads: int = 0, progress: Callable[[int], None] | None = None,
                  segment_frames: int = SEGMENT_FRAMES, resume_key: str | None = None,
                  max_pixels: int | None = None) -> dict[str, Any]:
    """Upscale every frame of `src`'s first video stream into `dst` (format from its suffix: .mp4, .mkv, .mov,
    .webm, .avi), copying the audio and subtitle streams and the metadata.

    Args:
        net: what `engine.infer` takes (a network, checkpoint path, engine or `Backend`); made a backend once.
        codec: the video encoder (libx264, libx265, ffv1, libvpx-vp9, …; default: libx264, libvpx-vp9 for .webm);
            `crf` its quality setting, `preset` its speed preset (libx264/libx265: ultrafast … veryslow), and
            `codec_options` any of its other options (FFmpeg's names: {"tune": "animation"}), when given.
        pix_fmt: the encoded pixel format (default per codec and source depth: `DEFAULT_PIX_FMT`).
        outscale, alpha, tile, tile_overlap, threads: as `engine.infer`; batch: frames per network call where a
            frame is one tile, else tiles per call (`engine.infer_frames`).
        progress: called with the number of frames done (kept from an earlier run included) as they are encoded.
        segment_frames: frames per resumable segment.
        resume_key: what decides the pixels besides the arguments here (the model and its files): with it, the
            finished segments of an earlier run of the same source, key and settings are kept; without it, any
            earlier segments are discarded.
        max_pixels: VideoError for frames with more pixels.

    Decoding, the engine and encoding overlap: a decoder thread and a thread feeding the encoder process
    (`_encoder_main`, which encodes apart from this process's GIL) around the engine in this thread, joined by
    bounded queues, so memory stays bounded whatever the video's length (`run_pipeline`).

    Returns: `Stats.report()`: frames upscaled, frames kept from an earlier run, seconds, frames/s, and the share of
    the wall time each stage was busy.
    Raises VideoError naming the file for a file without video, an unreadable or corrupt file, or a file with no
    frame; `dst` is then left as it was.
    """
    av = _require_av()
    from .inference import DEFAULT_TILE_OVERLAP, as_backend, backend_batch, infer_frames

    stats = Stats()
    backend = as_backend(net)
    overlap = DEFAULT_TILE_OVERLAP if tile_overlap is None else tile_overlap
    job = plan_video(backend, src, dst, codec=codec, crf=crf, preset=preset, codec_options=codec_options,
                     pix_fmt=pix_fmt, outscale=outscale, alpha=alpha,
                     tile=tile, tile_overlap=overlap, batch=batch, segment_frames=segment_frames,
                     resume_key=resume_key, max_pixels=max_pixels)
    skip = job.done * segment_frames
    stats.resumed = skip
    seen = 0  # frames decoded, kept ones included

    def decode() -> Iterator[Item]:  # the decoder thread: frames past the finished segments, as arrays
        nonlocal seen
        with av.open(str(job.src)) as inp:
            vin = next(s for s in inp.streams if s.type == "video")
            vin.thread_type = "AUTO"
            for frame in inp.decode(vin):
                seen += 1
                if seen <= skip:
                    continue
                yield "frame", (frame.pts, frame.time_base, frame.to_ndarray(format=job.frame_format))

    def upscale(items: list[Item]) -> list[Item]:  # this thread: the engine, several frames per call
        ups = infer_frames(backend, [payload[2] for _, payload in items], tile=tile, tile_overlap=overlap,
                           batch=batch, outscale=outscale, alpha=alpha, threads=threads)
        return [("frame", (payload[0], payload[1], np.ascontiguousarray(up)))
                for (_, payload), up in zip(items, ups, strict=True)]

    encoder = _Encoder(job.encoder)

    def encode(item: Item) -> None:  # the encoder thread: hands frames to the encoder process
        pts, time_base, up = item[1]
        encoder.send(pts, time_base, up)
        stats.frames += 1
        if progress is not None:
            progress(skip + stats.frames)

    group = backend_batch(backend, batch)
    stats.engine_waits["setup"] = time.perf_counter() - stats.start
    try:
        try:
            run_pipeline(decode(), upscale, encode, stats, group=group)
            segment_count, stats.busy["encode"] = encoder.finish()
        except BaseException:
            encoder.abort()
            if resume_key is None:  # nothing could resume from them
                _clear_parts(job.parts)
            raise
    except av.error.FFmpegError as e:
        raise VideoError(f"{job.src} → {job.dst}: {e}") from e
    if seen == 0:
        _clear_parts(job.parts)
        raise VideoError(f"{job.src}: the video stream has no frame")
    if seen < skip:
        raise VideoError(f"{job.src}: {seen} frames, fewer than the {skip} of the finished segments in {job.parts}; "
                         "delete that folder and run again")
    join_video(job, segment_count)
    return stats.report()


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--encoder"]:
        raise SystemExit("engine.video is a module (engine.video.upscale_video); `python -m engine.upscale` upscales "
                         "videos")
    sys.exit(_encoder_main())
