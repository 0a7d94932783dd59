"""Video through engine.video: clips generated with PyAV (small frames, an audio track), upscaled with the shipped
default model on the CPU, and checked for frame count, timestamps (a variable frame rate too), audio passthrough,
metadata, pixels equal to `engine.infer` on the decoded frames (lossless ffv1), 10-bit sources, and bad input."""

from __future__ import annotations

import os
import time
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


def audio_samples(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[0])], axis=1)


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.dts is not None]


@pytest.mark.parametrize("slots", [3, 1, 0], ids=["ring", "ring-of-one", "pipe"])
def test_a_clip_keeps_its_frames_timestamps_audio_and_metadata_and_the_pixels_are_infer_s(
        tmp_path: Path, slots: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames go to the encoder process through the shared-memory ring (Linux) or its pipe: the same pixels."""
    if slots and not hasattr(os, "memfd_create"):
        pytest.skip("the ring needs memfd_create (Linux)")
    monkeypatch.setattr(video, "RING_SLOTS", slots)
    src, dst = tmp_path / "clip.mkv", tmp_path / "out" / "clip_out.mkv"
    pts = make_clip(src, gaps=[30, 50, 70] * 4)  # a variable frame rate
    stats = upscale_video(MODEL, src, dst, codec="ffv1", batch=1)  # PyTorch on the CPU: batches may move a bit
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


@pytest.mark.parametrize("slots", [2, 0], ids=["ring", "pipe"])
def test_an_encoder_process_that_dies_is_an_error_not_a_hang(tmp_path: Path, slots: int) -> None:
    """The encoder process killed while frames are being handed over: the next frames raise VideoError (the ring's
    slots are never given back, the pipe has no reader), and nothing waits forever."""
    if slots and not hasattr(os, "memfd_create"):
        pytest.skip("the ring needs memfd_create (Linux)")
    src = tmp_path / "clip.mkv"
    make_clip(src, frames=3, audio=False)
    job = video.plan_video(as_backend(MODEL), src, tmp_path / "clip_out.mkv", codec="ffv1")
    with pytest.raises(ValueError, match="slots 256: 0 .the pipe. to 255"):  # a slot is given back as one byte
        video._Encoder(job.encoder, slots=256)
    encoder = video._Encoder(job.encoder, slots=slots)
    frame = np.zeros(job.encoder["shape"], np.dtype(job.encoder["dtype"]))
    encoder.send(0, TB, frame)
    encoder.proc.kill()
    encoder.proc.wait()
    start = time.monotonic()
    with pytest.raises(VideoError, match="the encoder process stopped"):
        for pts in range(1, 100):  # the pipe's buffer may take a few frames' bytes before it refuses
            encoder.send(pts, TB, frame)
    assert time.monotonic() - start < 30
    assert encoder.slots == [] and encoder.ack == -1  # the ring is released


def test_ten_bit_sources_go_through_in_16_bits(tmp_path: Path) -> None:
    src, dst = tmp_path / "clip10.mkv", tmp_path / "clip10_out.mkv"
    make_clip(src, frames=3, pix_fmt="yuv444p10le", audio=False)
    assert probe(src).bits == 10
    upscale_video(MODEL, src, dst, codec="ffv1", batch=1)
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


def test_h264_frames_are_the_engine_s_up_to_4_2_0_colour(tmp_path: Path) -> None:
    """yuv420p output (converted by OpenCV in the encoder thread): with x264 lossless (crf 0), the decoded frames are
    engine.infer's output up to the 4:2:0 round trip, as close as FFmpeg's own conversion (swscale) gets."""
    src, dst = tmp_path / "clip.mkv", tmp_path / "clip_out.mp4"
    make_clip(src, frames=3, audio=False)
    upscale_video(MODEL, src, dst, codec="libx264", crf=0, batch=1)
    backend = as_backend(MODEL)
    for (_, out), (_, frame) in zip(decoded(dst), decoded(src), strict=True):
        want = engine.infer(backend, frame)
        sws = av.VideoFrame.from_ndarray(want, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24")
        ours, theirs = (np.abs(x.astype(int) - want.astype(int)).mean() for x in (out, sws))
        assert ours <= theirs + 0.5, (ours, theirs)


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
    with pytest.raises(VideoError, match=r"sound.mkv: its audio stream \d \(pcm_s16le\) cannot be copied into a .webm "
                                         r"file .*; write .mkv"):
        make_clip(sound, audio=True)
        upscale_video(MODEL, sound, tmp_path / "h.webm")
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
    40 frames: every frame arrives, the report gives frames/s and each stage's busy share, the engine's busy and idle
    shares account for the whole run, and the decoder never runs more than the queues allow ahead of the encoder."""
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
    assert 1 <= stats["max_frames_in_flight"] <= 2 * (video.QUEUE + 4) + 4 + 2  # batch 4
    assert all(0 <= share <= 1 for share in stats["engine_waits"].values())
    accounted = stats["busy"]["engine"] + sum(stats["engine_waits"].values())  # the engine's time, all of it
    assert 0.9 <= accounted <= 1.001


def test_the_pipeline_keeps_order_groups_frames_and_stops_on_any_stage_s_error() -> None:
    import threading

    items = [("packet" if i % 7 == 0 else "frame", i) for i in range(60)]
    got: list[tuple[str, int]] = []
    groups: list[list[int]] = []

    def times_ten(batch: list[tuple[str, int]]) -> list[tuple[str, int]]:
        groups.append([v for _, v in batch])
        return [(k, v * 10 if k == "frame" else v) for k, v in batch]

    run_pipeline(iter(items), times_ten, got.append, video.Stats(), group=3)
    assert got == [(k, v * 10 if k == "frame" else v) for k, v in items]
    # up to 3 consecutive frames per call; a packet alone, and it closes the group before it
    assert groups[:4] == [[0], [1, 2, 3], [4, 5, 6], [7]] and all(len(g) <= 3 for g in groups)
    assert [v for g in groups for v in g] == list(range(60))

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
        middle = (lambda batch: [boom_at(7)(it) for it in batch]) if stage == "middle" else (lambda batch: batch)
        sink = boom_at(7) if stage == "sink" else (lambda it: None)
        with pytest.raises(RuntimeError, match="stage failed at 7"):
            run_pipeline(source(), middle, sink, video.Stats(), group=2)
        assert threading.active_count() == before  # the other stages stopped


# ---------------------------------------------------------------------------------------------------------
# frames in batches


def test_frames_in_batches_are_infer_s_pixels() -> None:
    """engine.infer_frames: several frames per network call on a backend whose output does not depend on the batch
    (ONNX Runtime), the same pixels as engine.infer on each; a frame larger than its tile, other shapes and
    outscale go through infer's own path, with the same result."""
    from engine.backends.ort import from_network
    from engine.inference import infer_frames

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (18, 30, 3), dtype=np.uint8) for _ in range(5)]  # 18: padded to the multiple
    backend = from_network(engine.models.load(MODEL)[0])
    calls: list[int] = []
    run = backend.run
    backend.run = lambda x: (calls.append(x.shape[0]), run(x))[1]  # type: ignore[method-assign]
    ups = infer_frames(backend, frames, batch=3)
    assert calls == [3, 2]
    for up, f in zip(ups, frames, strict=True):
        assert up.shape == (72, 120, 3) and np.array_equal(up, engine.infer(backend, f))
    for kwargs in ({"tile": 64, "tile_overlap": 8}, {"outscale": 2.5}):
        ups = infer_frames(backend, frames[:2], batch=2, **kwargs)
        assert all(np.array_equal(u, engine.infer(backend, f, **kwargs)) for u, f in zip(ups, frames, strict=False))
    mixed = [frames[0], frames[1][:10]]
    assert [u.shape for u in infer_frames(backend, mixed)] == [(72, 120, 3), (40, 120, 3)]
    sixteen = [(f.astype(np.uint16) * 257) for f in frames[:2]]
    for u, f in zip(infer_frames(backend, sixteen), sixteen, strict=True):
        assert u.dtype == np.uint16 and np.array_equal(u, engine.infer(backend, f))


# ---------------------------------------------------------------------------------------------------------
# segments, resume, joins


def test_an_interrupted_run_resumes_after_its_finished_segments(tmp_path: Path) -> None:
    """A run stopped after frame 9 of 14 (segments of 4) keeps segments 0 and 1 beside the output and nothing
    under the output's name; the next run with the same key upscales only frames 8…13, and the joined file has every
    frame once, at its timestamp, with the audio; a different key or setting starts over."""
    src, dst = tmp_path / "clip.mkv", tmp_path / "clip_out.mkv"
    pts = make_clip(src, frames=14, gaps=[30, 50] * 7)
    parts = video.parts_folder(dst)

    def stop_after(n: int):
        def progress(done: int) -> None:
            if done == n:
                raise KeyboardInterrupt
        return progress

    with pytest.raises(KeyboardInterrupt):
        upscale_video(MODEL, src, dst, codec="ffv1", segment_frames=4, resume_key="model A", batch=1,
                      progress=stop_after(9))
    assert not dst.exists()
    assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", "seg-000000.mkv", "seg-000001.mkv"]
    stats = upscale_video(MODEL, src, dst, codec="ffv1", segment_frames=4, resume_key="model A", batch=1)
    assert (stats["resumed_frames"], stats["frames"]) == (8, 6)
    got, want = decoded(dst), decoded(src)
    assert [t for t, _ in got] == pts
    backend = as_backend(MODEL)
    assert all(np.array_equal(o, engine.infer(backend, f)) for (_, o), (_, f) in zip(got, want, strict=True))
    assert audio_packets(dst) == audio_packets(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "clip_out.mkv"]  # the parts are gone

    # another key, or another setting, does not reuse segments
    for key, options in (("model B", None), ("model A", {"context": "1"})):
        dst.unlink()
        with pytest.raises(KeyboardInterrupt):
            upscale_video(MODEL, src, dst, codec="ffv1", segment_frames=4, resume_key="model A", batch=1,
                          progress=stop_after(5))
        stats = upscale_video(MODEL, src, dst, codec="ffv1", segment_frames=4, resume_key=key, batch=1,
                              codec_options=options)
        assert (stats["resumed_frames"], stats["frames"]) == (0, 14)
    # without a key nothing is kept, not even after a failure
    dst.unlink()
    with pytest.raises(KeyboardInterrupt):
        upscale_video(MODEL, src, dst, codec="ffv1", segment_frames=4, progress=stop_after(5))
    assert not parts.exists() and not dst.exists()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_x264_segments_join_without_reencoding_at_the_source_s_instants(tmp_path: Path, suffix: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """x264 reorders frames (B-frames): each segment's decode times start before its first frame (and Matroska
    keeps none). The joined file decodes to every frame at its instant (a variable frame rate), with the audio, and
    its video packets are the segments' packets, byte for byte."""
    src, dst = tmp_path / "clip.mkv", tmp_path / f"clip_out{suffix}"
    make_clip(src, frames=17, gaps=[40, 40, 80] * 6, audio=True)
    segment_packets: list[bytes] = []
    join = video._join

    def recording_join(av_, segments, *args):
        assert len(segments) == 4  # 17 frames in segments of 5
        for seg in segments:
            with av.open(str(seg)) as c:
                segment_packets.extend(bytes(p) for p in c.demux(c.streams.video[0]) if p.size)
        return join(av_, segments, *args)

    monkeypatch.setattr(video, "_join", recording_join)
    upscale_video(MODEL, src, dst, codec="libx264", crf=20, segment_frames=5)
    with av.open(str(dst)) as c:
        tb = c.streams.video[0].time_base
        assert c.streams.video[0].codec_context.has_b_frames
        joined = [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]
    assert joined == segment_packets and len(joined) == 17
    got, want = decoded(dst), decoded(src)
    assert [Fraction(t) * tb for t, _ in got] == [Fraction(t) * TB for t, _ in want]
    assert np.array_equal(audio_samples(dst), audio_samples(src))  # MP4 packs PCM in its own chunks


def test_a_video_without_frames_or_too_large_is_refused_by_name(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mkv"
    make_clip(empty, frames=0, gaps=[], audio=True)
    with pytest.raises(VideoError, match="empty.mkv: the video stream has no frame"):
        upscale_video(MODEL, empty, tmp_path / "a.mkv")
    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=2, audio=False)
    with pytest.raises(VideoError, match=r"clip.mkv: its 24×16 frames have more than --max-pixels 100 pixels"):
        upscale_video(MODEL, clip, tmp_path / "b.mkv", max_pixels=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "empty.mkv"]


def test_a_clip_that_would_not_fit_in_memory_is_named_with_its_frames_in_flight_and_the_encoder_s_ring(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.upscale as cli

    clip = tmp_path / "clip.mkv"
    make_clip(clip, frames=2, audio=False)  # 24×16 → 96×64
    monkeypatch.setattr(cli, "available_memory", lambda: 2**16)
    assert cli.main(["-i", str(clip), "-o", str(tmp_path / "out"), "-n", str(MODEL), "--batch", "1"]) == 1
    err = capsys.readouterr().err
    queued = (2 * (video.QUEUE + 1) + 1 + 2) * 24 * 16 * 3 * (1 + 16)
    assert "clip.mkv" in err and f"frames in flight {cli._gib(queued)}" in err
    assert f"the encoder's ring {cli._gib(video.RING_SLOTS * 96 * 64 * 3)}" in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_the_command_resumes_after_ctrl_c_and_after_sigkill(tmp_path: Path) -> None:
    """`python -m engine.upscale` on a 60-frame clip in segments of 3: Ctrl-C (SIGINT) after two segments exits 130
    with the finished segments kept and no temporary; a resumed run killed with SIGKILL later leaves more; the third
    run (--skip-existing) upscales only the rest. The output has every frame once, at its timestamp, with the pixels
    of engine.infer on the decoded frames, the same backend and one frame per call."""
    import signal
    import subprocess
    import sys
    import time

    from engine.upscale import main, make_backend, parser

    src, out = tmp_path / "clip.mkv", tmp_path / "out"
    pts = make_clip(src, frames=60, size=(96, 64))
    args = ["-i", str(src), "-o", str(out), "-n", str(MODEL), "--codec", "ffv1", "--segment-frames", "3",
            "--batch", "1"]
    parts = video.parts_folder(out / "clip_out.mkv")

    def segments() -> list[str]:
        return sorted(p.name for p in parts.glob("seg-*")) if parts.is_dir() else []

    def run_until(n: int, sig: int) -> int:
        """Start the command, send `sig` once `n` segments exist; its exit status."""
        proc = subprocess.Popen([sys.executable, "-m", "engine.upscale", *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while len(segments()) < n and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]  # still running: interrupted mid-way
        proc.send_signal(sig)
        return proc.wait(timeout=60)

    assert run_until(2, signal.SIGINT) == 130
    first = segments()
    assert len(first) >= 2 and not (out / "clip_out.mkv").exists()
    assert [p.name for p in parts.iterdir() if p.name.endswith(".tmp")] == []  # the open segment was removed
    assert run_until(len(first) + 2, signal.SIGKILL) == -signal.SIGKILL
    deadline = time.monotonic() + 30  # the orphaned encoder process finishes or drops its open segment, and exits
    while any(p.name.endswith(".tmp") for p in parts.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = segments()
    assert second[:len(first)] == first and len(second) >= len(first) + 2 and not (out / "clip_out.mkv").exists()

    import contextlib
    import io
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main([*args, "--skip-existing"]) == 0
    kept = 3 * len(second)
    assert f"clip.mkv: {60 - kept} frames ({kept} kept from an earlier run)" in log.getvalue()
    assert sorted(p.name for p in out.iterdir()) == ["clip_out.mkv"]  # no parts, no temporaries
    got, want = decoded(out / "clip_out.mkv"), decoded(src)
    assert [t for t, _ in got] == pts
    backend = make_backend(parser().parse_args(args))
    for (_, o), (_, f) in zip(got, want, strict=True):
        assert np.array_equal(o, engine.infer(backend, f, batch=1))
    assert audio_packets(out / "clip_out.mkv") == audio_packets(src)


def test_subtitles_are_copied_with_their_times(tmp_path: Path) -> None:
    """A SubRip stream in the source comes out as the same packets at the same times (the join copies it as it
    copies audio)."""
    src, dst = tmp_path / "clip.mkv", tmp_path / "clip_out.mkv"
    header = (b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize\n"
              b"Style: Default,Arial,16\n\n[Events]\nFormat: Layer, Start, End, Style, Text\n")
    with av.open(str(src), "w") as c:
        v = c.add_stream("ffv1", rate=24)
        v.width, v.height, v.pix_fmt = 24, 16, "yuv420p"
        v.time_base = v.codec_context.time_base = TB
        s = c.add_stream("subrip")
        s.codec_context.subtitle_header = header
        for i in range(6):
            f = av.VideoFrame.from_ndarray(np.full((16, 24, 3), 40 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = i * 41, TB
            for p in v.encode(f):
                c.mux(p)
            if i in (1, 4):
                p = av.Packet(f"line {i}".encode())
                p.stream, p.pts, p.dts, p.duration, p.time_base = s, i * 41, i * 41, 60, TB
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    upscale_video(MODEL, src, dst, codec="ffv1", segment_frames=4)

    def subtitles(path: Path) -> list[tuple[bytes, Fraction]]:
        with av.open(str(path)) as c:
            return [(bytes(p), p.pts * p.time_base) for p in c.demux(c.streams.subtitles[0]) if p.size]

    assert subtitles(dst) == subtitles(src) == [(b"line 1", Fraction(41, 1000)), (b"line 4", Fraction(164, 1000))]
    assert probe(dst).subtitles == 1 and len(decoded(dst)) == 6


def test_segments_encoded_apart_and_out_of_order_join_to_a_single_run_s_bytes(tmp_path: Path) -> None:
    """What a Ray run does with a video (engine.distributed): plan it, encode each segment apart (here last first),
    each decoding from the keyframe before its first frame of an H.264 source with B-frames and a keyframe every 8
    frames, and join: the same file, byte for byte, as a single run."""
    import math

    from engine.video import encode_segment, frame_times, join_video, plan_video

    src = tmp_path / "clip.mp4"
    with av.open(str(src), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt, v.options = 64, 48, "yuv420p", {"g": "8", "bf": "2"}
        rng = np.random.default_rng(0)
        for i in range(30):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            f.pts = i
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
    backend = as_backend(MODEL)
    single = tmp_path / "single.mkv"
    upscale_video(backend, src, single, codec="ffv1", segment_frames=7, batch=1)
    apart = tmp_path / "apart.mkv"
    job = plan_video(backend, src, apart, codec="ffv1", segment_frames=7, batch=1)
    times = frame_times(src)
    assert len(times) == 30 and job.done == 0
    segments = math.ceil(len(times) / 7)
    for k in reversed(range(segments)):
        assert encode_segment(backend, job, k, times[k * 7:(k + 1) * 7], batch=1) == len(times[k * 7:(k + 1) * 7])
    join_video(job, segments)
    assert apart.read_bytes() == single.read_bytes()
    assert not video.parts_folder(apart).exists()


def video_packets(path: Path) -> list[tuple[int, bytes]]:
    with av.open(str(path)) as c:
        return [(p.pts, bytes(p)) for p in c.demux(c.streams.video[0]) if p.size]


def _writer_cfg(parts: Path, codec: str = "ffv1") -> dict:
    return {"shape": [16, 24, 3], "dtype": "uint8", "frame_format": "rgb24", "pix_fmt": "bgr0", "i420": False,
            "codec": codec, "options": {}, "rate": "24", "time_base": [1, 1000], "parts": str(parts),
            "format": "matroska", "suffix": ".mkv", "first": 0, "per": 3}


def _write_frames(writer: video._SegmentWriter, cfg: dict, n: int, start: int = 0) -> None:
    """Frames start … start + n - 1 of a fixed random sequence."""
    images = np.random.default_rng(1).integers(0, 255, (start + n, 16, 24, 3), dtype=np.uint8)
    for i in range(start, start + n):
        frame = video._video_frame(av, images[i], cfg)
        frame.pts, frame.time_base = 41 * i, TB
        writer.write(frame)


def test_segments_flushed_in_the_background_hold_the_same_packets_and_a_flush_error_is_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder process flushes a full segment in a thread while the next takes frames: the segments hold the
    packets a writer flushing in line writes; a failed flush (here its rename) is raised by the next write or by
    finish and leaves no temporary; abandoning the open segment keeps the one being flushed."""
    events: list[tuple[str, int]] = []
    real_flush = video._SegmentWriter._flush

    def slow_flush(self: video._SegmentWriter, container: object, stream: object, tmp: Path, k: int) -> None:
        events.append(("start", k))
        time.sleep(0.1)  # a flush that takes a while, as libx264's does: the next segment's frames arrive meanwhile
        real_flush(self, container, stream, tmp, k)
        events.append(("end", k))

    monkeypatch.setattr(video._SegmentWriter, "_flush", slow_flush)
    files = {}
    for background in (False, True):
        events.clear()
        parts = tmp_path / f"bg{background}"
        parts.mkdir()
        cfg = _writer_cfg(parts)
        writer = video._SegmentWriter.from_settings(av, cfg, 0, 3, background=background)
        _write_frames(writer, cfg, 4)  # segment 0 full, segment 1 begun
        assert (("end", 0) in events) != background  # flushed in line, or still flushing beside segment 1
        _write_frames(writer, cfg, 4, start=4)
        writer.finish()
        assert writer.k == 3
        files[background] = {p.name: video_packets(p) for p in sorted(parts.iterdir())}
    assert list(files[True]) == ["seg-000000.mkv", "seg-000001.mkv", "seg-000002.mkv"]
    assert files[True] == files[False]
    assert [len(decoded(tmp_path / "bgTrue" / name)) for name in files[True]] == [3, 3, 2]
    assert events == [(e, k) for k in range(3) for e in ("start", "end")]  # one flush at a time, in order

    real_replace = video.os.replace

    def failing_replace(src: str, dst: str) -> None:
        if Path(dst).name == "seg-000001.mkv":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(video.os, "replace", failing_replace)
    for frames, end in ((7, "write"), (6, "finish")):  # segment 1 fails in the background: seen by the next call
        parts = tmp_path / f"fail{frames}"
        parts.mkdir()
        cfg = _writer_cfg(parts)
        writer = video._SegmentWriter.from_settings(av, cfg, 0, 3, background=True)
        with pytest.raises(OSError, match="No space left"):
            _write_frames(writer, cfg, frames)
            if writer.flushing is not None:
                writer.flushing.join()
            _write_frames(writer, cfg, 1) if end == "write" else writer.finish()
        writer.abandon()
        assert sorted(p.name for p in parts.iterdir()) == ["seg-000000.mkv"]  # no temporary left

    monkeypatch.setattr(video.os, "replace", real_replace)
    monkeypatch.setattr(video._SegmentWriter, "_flush", slow_flush)
    parts = tmp_path / "abandoned"
    parts.mkdir()
    cfg = _writer_cfg(parts)
    writer = video._SegmentWriter.from_settings(av, cfg, 0, 3, background=True)
    _write_frames(writer, cfg, 4)  # segment 0 full and flushing, segment 1 open
    writer.abandon()
    assert sorted(p.name for p in parts.iterdir()) == ["seg-000000.mkv"]
    assert len(decoded(parts / "seg-000000.mkv")) == 3


def x264_settings(path: Path) -> str:
    """The settings libx264 writes into its stream (the SEI "options: …" text of the first packet)."""
    with av.open(str(path)) as c:
        data = bytes(next(p for p in c.demux(c.streams.video[0]) if p.size))
    return data[data.index(b"options: "):].split(b"\x00")[0].decode("ascii", "replace")


def test_the_encoder_s_preset_and_options_reach_it_and_a_wrong_one_is_named_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--preset and --codec-opt KEY=VALUE reach libx264 (its stream says which settings it ran with: veryfast
    searches 1 reference frame where medium searches 3; tune=animation deblocks at 1:1); a misspelt option, one
    the encoder lacks, a value it refuses or an option given twice stops the run before any work, named."""
    from engine.upscale import EXIT_OK, EXIT_USAGE, main

    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "clip.mkv", frames=3, size=(32, 16), audio=False)
    base = ["-i", str(src), "-n", str(MODEL), "--codec", "libx264"]
    assert main([*base, "-o", str(tmp_path / "default")]) == EXIT_OK
    assert main([*base, "-o", str(tmp_path / "fast"), "--preset", "veryfast", "--codec-opt", "tune=animation",
                 "--crf", "20"]) == EXIT_OK
    default, fast = (x264_settings(tmp_path / d / "clip_out.mkv") for d in ("default", "fast"))
    assert " ref=3 " in default and "deblock=1:0:0" in default and "crf=23.0" in default
    assert " ref=" in fast and " ref=3 " not in fast and "deblock=1:1:1" in fast and "crf=20.0" in fast
    assert decoded(tmp_path / "fast" / "clip_out.mkv")[0][1].shape == (64, 128, 3)
    capsys.readouterr()
    for extra, named in ((["--codec-opt", "presett=fast"], "libx264 has no option presett"),
                         (["--preset", "warp"], "libx264 refuses them"),
                         (["--codec", "ffv1", "--preset", "fast"], "ffv1 has no option preset"),
                         (["--codec-opt", "tune"], "--codec-opt tune: give KEY=VALUE"),
                         (["--crf", "18", "--codec-opt", "crf=20"], "give crf once"),
                         (["--codec-opt", "tune=film", "--codec-opt", "tune=grain"], "tune is given twice")):
        assert main([*base, "-o", str(tmp_path / "none"), *extra]) == EXIT_USAGE, extra
        assert named in capsys.readouterr().err, extra
        assert not (tmp_path / "none").exists()


def test_upscale_on_ray_passes_a_list_as_a_repeated_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """`engine.upscale.upscale_on_ray(codec_opt=[…])` gives --codec-opt once per item, as the command line does
    (the Ray run itself is tested in tests/test_distributed.py)."""
    import engine.upscale as up

    seen = []
    monkeypatch.setattr(up, "run", lambda args: seen.append(args) or 0)
    assert up.upscale_on_ray("in", "out", codec_opt=["tune=animation", "x264-params=keyint=48"], preset="fast",
                             skip_existing=True, workers=None) == 0
    args = seen[0]
    assert args.codec_opt == ["tune=animation", "x264-params=keyint=48"] and args.preset == "fast"
    assert args.skip_existing and args.workers is None and args.ray == "auto"
    assert up.video_options(args) == {"tune": "animation", "x264-params": "keyint=48", "preset": "fast"}
