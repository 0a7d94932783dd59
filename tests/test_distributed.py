"""`python -m engine.upscale --ray`: a folder of good and bad images and a short video through 2 CPU workers of a
local Ray cluster, against a single run of the same command (the same bytes in every output), with a worker killed
mid-run, with the driver killed and the run resumed, and through a cluster started with `ray start --head` on
127.0.0.1. Each Ray run takes tens of seconds on 2 cores (marked `ray`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("av")
ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_video import make_clip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind() -> object:
    """A driver killed with SIGKILL can leave its local cluster's processes: stopped after these tests."""
    yield None
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder with 6 photos, a broken one and a 48-frame clip with audio; and a single run's outputs of it."""
    src = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    for i in range(6):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        cv2.imwrite(str(src / f"photo{i}.png"), cv2.resize(small, (96, 72), interpolation=cv2.INTER_CUBIC))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    make_clip(src / "clip.mkv", frames=48, size=(64, 48))
    single = tmp_path_factory.mktemp("single")
    proc = run_cli(src, single)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the broken photo
    return src, single


def command(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine.upscale", "-i", str(src), "-o", str(out), "--codec", "ffv1",
            "--segment-frames", "6", *extra]


def run_cli(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(src, out, *extra), cwd=REPO, capture_output=True, text=True, timeout=600)


def same_outputs(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == ["clip_out.mkv"] + [f"photo{i}_out.png" for i in range(6)]
    assert sorted(p.name for p in b.iterdir()) == names  # no temporaries, no parts folder left
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def worker_pids() -> list[int]:
    """The Ray worker processes that hold our engines (their process title names the class)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"UpscaleWorker" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def start_and_wait_for(src: Path, out: Path, lines: int, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a Ray run; return once `lines` units have reported (the driver prints one line per unit)."""
    proc = subprocess.Popen(command(src, out, "--ray", *extra), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if sum(" [" in ln and ("written" in ln or "done" in ln) for ln in seen) >= lines:
            return proc, seen
    proc.kill()
    raise AssertionError("the run ended or stalled before its units reported: " + "".join(seen)[-3000:])


def test_a_ray_run_writes_what_a_single_run_writes(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """2 CPU workers: the same bytes in every output, the broken photo named, the summary's counts and a line per
    worker."""
    src, single = inputs
    out = tmp_path / "ray"
    proc = run_cli(src, out, "--ray", "--workers", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    same_outputs(single, out)
    assert "7 written to" in proc.stdout and "0 skipped, 1 failed" in proc.stdout
    assert f"failed: {src / 'broken.png'}:" in proc.stderr
    workers = [ln for ln in proc.stdout.splitlines() if ln.startswith("worker ")]
    assert len(workers) == 2 and all("frames/s busy" in ln for ln in workers)
    assert "15 unit(s) (7 image(s), 8 video segment(s)) over 2 worker(s)" in proc.stderr


def test_a_killed_worker_is_replaced_and_its_unit_retried(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    src, single = inputs
    out = tmp_path / "ray"
    proc, _ = start_and_wait_for(src, out, 2, "--workers", "2")
    pids = worker_pids()
    assert pids, "no worker process found"
    os.kill(pids[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    same_outputs(single, out)
    assert "7 written to" in stdout and "1 failed" in stdout


def test_a_killed_driver_resumes_with_skip_existing(inputs: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src, single = inputs
    out = tmp_path / "ray"
    proc, _ = start_and_wait_for(src, out, 4, "--workers", "2")
    proc.kill()  # SIGKILL: the driver, and with it its job's workers
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 60  # the job's workers go down with it
    while worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    done_before = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    # the resume through the Python API, in this process
    from engine.upscale import upscale_on_ray

    try:
        status = upscale_on_ray(src, out, workers=2, skip_existing=True, codec="ffv1", segment_frames=6)
    finally:
        ray.shutdown()
    assert status == 1  # the broken photo
    same_outputs(single, out)
    assert f"{len(done_before)} skipped" in capsys.readouterr().out


def test_the_ray_path_through_a_head_started_on_127_0_0_1(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    src, single = inputs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    # `ray start` turns token authentication on (Ray ≥ 2.5x); a client then needs RAY_AUTH_MODE=token (the token
    # itself is in ~/.ray, shared on this machine)
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token"}
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"], check=True,
                   capture_output=True, timeout=180, env=env)
    try:
        bare = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
        refused = subprocess.run(command(src, tmp_path / "refused", "--ray", f"127.0.0.1:{port}"), cwd=REPO,
                                 capture_output=True, text=True, timeout=300, env=bare)
        if refused.returncode != 1:  # a cluster without token authentication takes anyone
            assert refused.returncode == 2 and "needs RAY_AUTH_MODE=token" in refused.stderr, refused.stderr[-2000:]
        out = tmp_path / "ray"
        proc = subprocess.run(command(src, out, "--ray", f"127.0.0.1:{port}", "--workers", "2"), cwd=REPO,
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 1, proc.stderr[-3000:]
        same_outputs(single, out)
        assert f"Ray: 127.0.0.1:{port}" in proc.stderr
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_without_ray_the_flag_says_how_to_install_it(tmp_path: Path) -> None:
    """Ray hidden from the import system: one message with the install command, exit status 2, nothing written."""
    code = ("import sys; sys.modules['ray'] = None; from engine.upscale import main; "
            f"sys.exit(main(['-i', {str(REPO / 'examples')!r}, '-o', {str(tmp_path / 'out')!r}, '--ray']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert 'error: --ray needs Ray: pip install -e ".[distributed]"' in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_ray_flags_are_named_before_any_work(tmp_path: Path) -> None:
    from engine.upscale import EXIT_USAGE, main

    out = tmp_path / "out"
    for argv, message in ((["--ray", "not an address"], "error: --ray not an address: Invalid address format"),
                          (["--workers", "2"], "error: --workers and --gpus-per-worker go with --ray"),
                          (["--ray", "--workers", "0"], "error: --workers 0: give at least 1"),
                          (["--ray", "--gpus-per-worker", "0"], "error: --gpus-per-worker 0.0: give a share")):
        proc = subprocess.run([sys.executable, "-m", "engine.upscale", "-i", str(REPO / "examples"), "-o", str(out),
                               *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == EXIT_USAGE and message in proc.stderr, (argv, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())
    assert main(["-i", str(REPO / "examples"), "-o", str(out), "--segment-frames", "0"]) == EXIT_USAGE


def test_workers_are_one_per_gpu_or_share_the_cpus() -> None:
    """The pool's size and each actor's resources from the cluster's: one actor per GPU (two per GPU with
    --gpus-per-worker 0.5), CPU actors sharing the CPUs where there is no GPU or --device cpu."""
    import argparse

    from engine.distributed import resources

    class Cluster:
        def __init__(self, **total: float) -> None:
            self.total = total

        def cluster_resources(self) -> dict[str, float]:
            return self.total

    def args(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**{"workers": None, "gpus_per_worker": None, "device": "auto", **kw})

    assert resources(Cluster(CPU=64, GPU=8), args()) == (8, {"num_gpus": 1.0, "num_cpus": 1}, 0)
    assert resources(Cluster(CPU=64, GPU=8), args(gpus_per_worker=0.5)) == (16, {"num_gpus": 0.5, "num_cpus": 1}, 0)
    assert resources(Cluster(CPU=64, GPU=8), args(workers=3)) == (3, {"num_gpus": 1.0, "num_cpus": 1}, 0)
    assert resources(Cluster(CPU=64, GPU=8), args(device="cpu", workers=4)) == (4, {"num_cpus": 16}, 16)
    assert resources(Cluster(CPU=16), args()) == (8, {"num_cpus": 2}, 2)
    assert resources(Cluster(CPU=2), args(workers=2)) == (2, {"num_cpus": 1}, 1)


def test_an_input_that_kills_its_worker_every_time_fails_alone(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """A 'poisoned' video segment: whichever worker encodes segment 0 of poison.mkv is killed (SIGKILL, found by the
    pid in the segment's temporary name, which lives while the segment is encoded) every time. Ray restarts the
    worker and retries the unit twice; then that video is reported failed, alone, with its other segment finished
    for a later run, and the photos are written as a single run writes them."""
    import shutil
    import threading

    from engine.atomic import TEMP_PATTERN
    from engine.video import parts_folder

    src, single = inputs
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        shutil.copy(src / f"photo{i}.png", folder)
    make_clip(folder / "poison.mkv", frames=12, size=(96, 72), audio=False)
    out = tmp_path / "ray"
    parts = parts_folder(out / "poison_out.mkv")
    killed: set[int] = set()
    proc = subprocess.Popen(command(folder, out, "--ray", "--workers", "2", "--batch", "1"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def watch() -> None:
        while proc.poll() is None:
            for p in parts.glob(".seg-000000.mkv.*.tmp") if parts.is_dir() else ():
                m = TEMP_PATTERN.fullmatch(p.name)
                pid = int(m["pid"]) if m else 0
                if pid and pid not in killed:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
                    except ProcessLookupError:
                        pass
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate(timeout=900)
    watcher.join(timeout=10)
    assert proc.returncode == 1, stderr[-3000:]
    assert len(killed) == 3  # the first try and two retries, each in a fresh worker
    assert "2 written to" in stdout and "1 failed" in stdout
    assert (f"failed: {folder / 'poison.mkv'}: segment 0: its worker process died on each of 3 tries"
            in stderr), stderr[-3000:]
    for i in range(2):
        assert (out / f"photo{i}_out.png").read_bytes() == (single / f"photo{i}_out.png").read_bytes()
    assert not (out / "poison_out.mkv").exists()
    assert (parts / "seg-000001.mkv").is_file()  # the other segment is kept for a later run
