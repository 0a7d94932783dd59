"""`python bench/encoder_gil.py`: libx264 through PyAV, alone and beside a busy Python thread (and 3 encoders in
threads): 60 frames of 1920×1080 yuv420p (a smooth random picture panning), encoded to MP4 in memory. Why
engine.video encodes in a process of its own: run on the H200's machine on 2026-11-30, its output is
bench/results/gpu_check/20261130-H200-video/encoder_gil.txt."""

import io
import threading
import time

import av
import cv2
import numpy as np

W, H, N = 1920, 1080, 60
base = cv2.resize(np.random.default_rng(0).integers(0, 255, (H // 8, W // 8, 3), dtype=np.uint8), (W, H))
yuv = [cv2.cvtColor(np.roll(base, i * 4, axis=1), cv2.COLOR_RGB2YUV_I420) for i in range(N)]


def encode(preset: str | None = None) -> tuple[float, float, int]:
    """(frames/s, seconds inside encode+mux calls, the encoder's thread count)."""
    c = av.open(io.BytesIO(), "w", format="mp4")
    s = c.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    if preset:
        s.options = {"preset": preset}
    start, inside = time.perf_counter(), 0.0
    for i, y in enumerate(yuv):
        frame = av.VideoFrame.from_ndarray(y, format="yuv420p")
        frame.pts = i
        t = time.perf_counter()
        c.mux(s.encode(frame))
        inside += time.perf_counter() - t
    c.mux(s.encode())
    c.close()
    return N / (time.perf_counter() - start), inside, s.codec_context.thread_count


for preset in (None, "fast", "veryfast"):
    fps, inside, threads = encode(preset)
    print(preset, f"fps {fps:.1f}, in encode {inside:.2f} s, threads {threads}", flush=True)

count, stop = [0], [False]


def spinner() -> None:
    while not stop[0]:
        count[0] += 1


th = threading.Thread(target=spinner)
th.start()
start = time.perf_counter()
fps = encode()[0]
elapsed = time.perf_counter() - start
stop[0] = True
th.join()
print(f"with a spinning python thread: fps {fps:.1f}, spins/s {count[0] / elapsed:.0f}", flush=True)
count, stop = [0], [False]
th = threading.Thread(target=spinner)
th.start()
time.sleep(1)
stop[0] = True
th.join()
print(f"spins/s alone {count[0]:.0f}")
start = time.perf_counter()
threads = [threading.Thread(target=encode) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"3 encoders in parallel: aggregate fps {3 * N / (time.perf_counter() - start):.1f}")
