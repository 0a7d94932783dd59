"""Video through engine.video: clips generated with PyAV (small frames, an audio track), upscaled with the shipped
default model on the CPU, and checked for frame count, timestamps (a variable frame rate too), audio passthrough,
metadata, pixels equal to `engine.infer` on the decoded frames (lossless ffv1), 10-bit sources, and bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

import engine  # noqa: E402
import engine.video as video  # noqa: E402
from engine.inference import as_backend  # noqa: E402
from engine.video import VideoError, probe, run_pipeline, upscale_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "weights" / "tiny_x4.safetensors"
TB = Fraction(1, 1000)


def make_clip(path: Path, *, frames: int = 12, size: tuple[int, int] = (24, 16), gaps: list[int] | None = None,
              codec: str = "ffv1", pix_fmt: str = "yuv420p", audio: bool = True, video: bool = True,
              video_start: int = 0) -> list[int]:
    """Write a clip (frame i at pts video_start + Σ gaps[:i] ms) with a mono PCM track from 0 ms (a reader meets
    an audio packet first when the video starts later); returns the frames' pts."""
    rng = np.random.default_rng(0)
    w, h = size
    gaps = gaps or [41] * frames
    pts = [video_start + int(sum(gaps[:i])) for i in range(frames)]
    with av.open(str(path), "w") as c:
        c.metadata["title"] = "test clip"
        v = None
        if video:
            v = c.add_stream(codec, rate=24)
            v.width, v.height, v.pix_fmt = w, h, pix_fmt
            v.time_base = v.codec_context.time_base = TB
        a = c.add_stream("pcm_s16le", rate=8000) if audio else None
        if a is not None:
            a.layout = "mono"

        def write_audio() -> None:
            samples = (np.sin(np.arange(4000) / 5) * 10000).astype(np.int16)[None, :]
            af = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            af.sample_rate, af.pts = 8000, 0
            for p in [*a.encode(af), *a.encode()]:
                c.mux(p)

        for t in pts if v is not None else []:
            img = np.clip(np.linspace(0, 255, w)[None, :, None] + rng.integers(0, 60, (h, w, 3)), 0, 255)
            high = "10" in pix_fmt
            f = av.VideoFrame.from_ndarray((img * 257).astype(np.uint16) if high else img.astype(np.uint8),
                                           format="rgb48le" if high else "rgb24")
            f.pts, f.time_base = t, TB
            for p in v.encode(f):
                c.mux(p)
        if v is not None:
            for p in v.encode():
                c.mux(p)
        if a is not None:
            write_audio()
    return pts


def decoded(path: Path, fmt: str = "rgb24") -> list[tuple[int, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(f.pts, f.to_ndarray(format=fmt)) for f in c.decode(c.streams.video[0])]


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.dts is not None]


def test_a_clip_keeps_its_frames_timestamps_audio_and_metadata_and_the_pixels_are_infer_s(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip.mkv", tmp_path / "out" / "clip_out.mkv"
    pts = make_clip(src, gaps=[30, 50, 70] * 4)  # a variable frame rate
    stats = upscale_video(MODEL, src, dst, codec="ffv1")
    assert stats["frames"] == 12
    got, want = decoded(dst), decoded(src)
    assert [t for t, _ in got] == [t for t, _ in want] == pts
    backend = as_backend(MODEL)
    for (_, out), (_, frame) in zip(got, want, strict=True):
        assert out.shape == (64, 96, 3)
        assert np.array_equal(out, engine.infer(backend, frame))  # ffv1 is lossless: the same pixels
    assert audio_packets(dst) == audio_packets(src) and len(audio_packets(src)) >= 1
    info = probe(dst)
    assert (info.width, info.height, info.audio) == (96, 64, 1)
    with av.open(str(dst)) as c:
        assert c.metadata.get("title") == "test clip"
    assert list(dst.parent.iterdir()) == [dst]  # no temporary left beside it


def test_ten_bit_sources_go_through_in_16_bits(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip10.mkv", tmp_path / "clip10_out.mkv"
    make_clip(src, frames=3, pix_fmt="yuv444p10le", audio=False)
    assert probe(src).bits == 10
    upscale_video(MODEL, src, dst, codec="ffv1")
    assert probe(dst).bits == 16
    backend = as_backend(MODEL)
    for (_, out), (_, frame) in zip(decoded(dst, "rgb48le"), decoded(src, "rgb48le"), strict=True):
        assert out.dtype == np.uint16 and np.array_equal(out, engine.infer(backend, frame))


def test_mp4_with_x264_keeps_the_count_and_timestamps(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip.mkv", tmp_path / "clip_out.mp4"
    make_clip(src, frames=6)
    upscale_video(MODEL, src, dst, codec="libx264", crf=18, outscale=2)
    got, want = decoded(dst), decoded(src)
    assert len(got) == 6 and got[0][1].shape == (32, 48, 3)
    # mp4 stores its own time base: the same instants
    with av.open(str(dst)) as c:
        tb = c.streams.video[0].time_base
    assert [Fraction(t) * tb for t, _ in got] == [Fraction(t) * TB for t, _ in want]


def test_bad_input_names_the_file_and_leaves_no_output(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(VideoError, match="notes.mp4: cannot be read as a video"):
        upscale_video(MODEL, text, tmp_path / "a.mkv")
    sound = tmp_path / "sound.mkv"
    make_clip(sound, video=False)
    with pytest.raises(VideoError, match=r"sound.mkv: no video stream \(streams: audio\)"):
        upscale_video(MODEL, sound, tmp_path / "b.mkv")
    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=2, audio=False)
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(clip.read_bytes()[:200])
    with pytest.raises(VideoError, match="truncated.mkv"):
        upscale_video(MODEL, truncated, tmp_path / "c.mkv")
    with pytest.raises(VideoError, match="suffix must be one of"):
        upscale_video(MODEL, clip, tmp_path / "d.gif")
    with pytest.raises(VideoError, match="--codec nonsense: no such encoder"):
        upscale_video(MODEL, clip, tmp_path / "e.mkv", codec="nonsense")
    with pytest.raises(VideoError, match="--codec aac: an audio encoder"):
        upscale_video(MODEL, clip, tmp_path / "f.mkv", codec="aac")
    with pytest.raises(VideoError, match="--pix-fmt rgb24: libx264 does not encode it; it takes yuv420p"):
        upscale_video(MODEL, clip, tmp_path / "g.mkv", codec="libx264", pix_fmt="rgb24")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "notes.mp4", "sound.mkv", "truncated.mkv"]


def test_the_upscale_command_takes_videos_beside_images_and_names_a_bad_one(tmp_path: Path) -> None:
    """`python -m engine.upscale -i FOLDER`: a folder with an image, a good clip and a broken clip: the image and the
    clip are written (the clip with every frame and its audio), the broken clip is named, exit status 1; a rerun
    with --skip-existing keeps the finished clip."""
    import cv2

    from engine.upscale import EXIT_FAILED, EXIT_OK, main

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "photo.png"), np.full((8, 10, 3), 120, np.uint8))
    pts = make_clip(src / "clip.mkv", frames=5)
    (src / "broken.mp4").write_bytes(b"\x00" * 300)
    out = tmp_path / "out"
    rc = main(["-i", str(src), "-o", str(out), "-n", str(MODEL), "--codec", "ffv1"])
    assert rc == EXIT_FAILED
    assert sorted(p.name for p in out.iterdir()) == ["clip_out.mkv", "photo_out.png"]
    assert [t for t, _ in decoded(out / "clip_out.mkv")] == pts
    assert audio_packets(out / "clip_out.mkv") == audio_packets(src / "clip.mkv")
    # a bad --codec stops the run before any work (exit 2), naming the option
    assert main(["-i", str(src), "-o", str(tmp_path / "none"), "-n", str(MODEL), "--codec", "nonsense"]) == 2
    assert not (tmp_path / "none").exists()
    before = (out / "clip_out.mkv").stat().st_mtime_ns
    (src / "broken.mp4").unlink()
    assert main(["-i", str(src), "-o", str(out), "-n", str(MODEL), "--skip-existing"]) == EXIT_OK
    assert (out / "clip_out.mkv").stat().st_mtime_ns == before


def test_audio_before_the_first_frame_and_a_bounded_overlapped_pipeline(tmp_path: Path) -> None:
    """A clip whose audio comes first in the file (the output's video stream must exist before anything is muxed),
    40 frames: every frame arrives, the report gives frames/s and each stage's busy share, and the decoder never
    runs more than the queues allow ahead of the encoder."""
    src, dst = tmp_path / "clip.mkv", tmp_path / "clip_out.mkv"
    pts = make_clip(src, frames=40, video_start=200)
    with av.open(str(src)) as c:
        first = next(p for p in c.demux() if p.dts is not None)
        assert first.stream.type == "audio"
    stats = upscale_video(MODEL, src, dst, codec="ffv1")
    assert stats["frames"] == 40 and [t for t, _ in decoded(dst)] == pts
    assert audio_packets(dst) == audio_packets(src)
    assert stats["fps"] > 0 and set(stats["busy"]) == {"decode", "engine", "encode"}
    assert all(0 <= share <= 1 for share in stats["busy"].values())
    assert 1 <= stats["max_frames_in_flight"] <= 2 * video.QUEUE + 3


def test_the_pipeline_keeps_order_and_stops_on_any_stage_s_error() -> None:
    import threading

    items = [("packet" if i % 3 == 0 else "frame", i) for i in range(60)]
    got: list[tuple[str, int]] = []
    run_pipeline(iter(items), lambda it: (it[0], it[1] * 10) if it[0] == "frame" else it, got.append,
                 video.Stats())
    assert got == [(k, v * 10 if k == "frame" else v) for k, v in items]

    def boom_at(n: int):
        def f(item):
            if item[1] == n:
                raise RuntimeError(f"stage failed at {n}")
            return item
        return f

    before = threading.active_count()
    for stage in ("source", "middle", "sink"):
        def source(stage: str = stage):
            for it in items:
                if stage == "source" and it[1] == 7:
                    raise RuntimeError("stage failed at 7")
                yield it
        middle = boom_at(7) if stage == "middle" else (lambda it: it)
        sink = boom_at(7) if stage == "sink" else (lambda it: None)
        with pytest.raises(RuntimeError, match="stage failed at 7"):
            run_pipeline(source(), middle, sink, video.Stats())
        assert threading.active_count() == before  # the other stages stopped
