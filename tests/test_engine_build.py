"""python -m engine.build as a user meets it (issue 15): what it may replace (--overwrite, only its own engines),
concurrent builds into one folder, its own stale temporary folders, failures while writing (full disk, no
permission, Ctrl-C) that leave nothing behind, the verification that fails above a tolerance or on NaN, and options
that cannot work, refused before any work."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from util import small_rrdb

import engine.models as M
from engine.build import main as build_main
from engine.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("w")
    M.save(small_rrdb(0), d / "a.safetensors")
    return d / "a.safetensors"


def _build(weights: Path, out: Path, *flags: str) -> int:
    return build_main(["--weights", str(weights), "--tile", "16", "-o", str(out), *flags])


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# what -o may replace (issue 15.2)


def test_a_folder_holding_a_manifest_and_other_files_is_never_deleted(weights: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "manifest.json").write_text('{"trip": "Lisbon"}')
    (photos / "beach.jpg").write_bytes(b"\xff\xd8 a photo")
    before = _tree(photos)
    for flags in ((), ("--overwrite",)):
        assert _build(weights, photos, *flags) == 2
        err = capsys.readouterr().err
        assert str(photos) in err and "not an engine folder" in err and "nothing was changed" in err
        assert _tree(photos) == before


@pytest.mark.parametrize("extra", ["notes.txt", "sub/"])
def test_an_engine_folder_with_anything_else_inside_is_not_replaced(weights: Path, tmp_path: Path, extra: str,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e"
    assert _build(weights, out, "--no-verify") == 0
    if extra.endswith("/"):
        (out / extra).mkdir()
        (out / extra / "kept.txt").write_text("mine")
    else:
        (out / extra).write_text("mine")
    before = _tree(out)
    assert _build(weights, out, "--no-verify", "--overwrite") == 2
    assert "which no engine has" in capsys.readouterr().err and _tree(out) == before


def test_an_engine_is_replaced_only_with_overwrite(weights: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e"
    assert _build(weights, out, "--no-verify") == 0
    first = read_manifest(out)["files"]["model.onnx"]["sha256"]
    assert _build(weights, out, "--no-verify", "--fp16") == 2
    assert "holds an engine already: pass --overwrite" in capsys.readouterr().err
    assert read_manifest(out)["precision"] == "fp32"
    assert _build(weights, out, "--no-verify", "--fp16", "--overwrite") == 0
    assert read_manifest(out)["precision"] == "fp16" and read_manifest(out)["files"]["model.onnx"]["sha256"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # nothing left beside it


def test_an_empty_folder_is_used_and_odd_targets_are_refused(weights: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert _build(weights, tmp_path / "empty", "--no-verify") == 0
    assert read_manifest(tmp_path / "empty")["backend"] == "onnxruntime"
    (tmp_path / "file").write_text("x")
    assert _build(weights, tmp_path / "file", "--no-verify", "--overwrite") == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    assert _build(weights, tmp_path / "link", "--no-verify", "--overwrite") == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert _build(weights, tmp_path / "file" / "below", "--no-verify") == 2
    assert "cannot create the folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"


# ---------------------------------------------------------------------------------------------------------
# two builds into one folder (issue 15.2, 15.12)


def test_a_second_build_into_the_same_folder_fails_at_once_with_a_message(weights: Path, tmp_path: Path) -> None:
    """A build holds `.NAME.lock` beside its target for its whole length: the second one says so and leaves."""
    out = tmp_path / "e"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom engine.engines import build_lock\n"
         "with build_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "engine.build", "--weights", str(weights), "--tile", "16", "-o",
                               str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "is being written by another python -m engine.build" in proc.stderr
        assert time.perf_counter() - start < 60 and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock file is stale, and the next build takes it
    assert _build(weights, out, "--no-verify") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_two_builds_racing_for_one_folder_give_one_engine_and_one_message(weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    cmd = [sys.executable, "-m", "engine.build", "--weights", str(weights), "--tile", "16", "--no-verify", "-o",
           str(out)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert all("Traceback" not in err for _, err in results), results
    assert sorted(code for code, _ in results) in ([0, 0], [0, 2])  # one after the other, or one refused
    for code, err in results:
        if code == 2:
            assert "being written by another" in err or "holds an engine already" in err
    assert set(read_manifest(out)["files"]) == {"model.onnx"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


# ---------------------------------------------------------------------------------------------------------
# stale temporary folders of killed builds (issue 15.2)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_our_own_stale_build_folders_are_removed(weights: Path, tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getppid()
    ours = tmp_path / f".e.{dead}-0123456789ab.tmp"  # a killed build's folder: engine files only
    ours.mkdir()
    (ours / "model.onnx").write_bytes(b"half")
    (ours / f".model.plan.{dead}-abcdefabcdef.tmp").write_bytes(b"half")
    running = tmp_path / f".e.{live}-0123456789ab.tmp"  # a build still running
    running.mkdir()
    (running / "model.onnx").write_bytes(b"half")
    foreign = tmp_path / f".e.{dead}-fedcba987654.tmp"  # the name fits, the contents are not an engine's
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    other = tmp_path / f".f.{dead}-0123456789ab.tmp"  # a build of another target
    other.mkdir()
    (other / "model.onnx").write_bytes(b"half")
    assert _build(weights, tmp_path / "e", "--no-verify") == 0
    assert not ours.exists()
    assert running.exists() and foreign.exists() and (foreign / "thesis.tex").read_text() == "mine" and other.exists()


# ---------------------------------------------------------------------------------------------------------
# failures while writing leave -o as it was (issue 15.2, 15.12)


def test_a_full_disk_leaves_the_old_engine_and_no_temporary(weights: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e"
    assert _build(weights, out, "--no-verify") == 0
    before = _tree(out)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("export.onnx.save", full)
    assert _build(weights, out, "--no-verify", "--overwrite", "--fp16") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "nothing was changed" in err and "Traceback" not in err
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_ctrl_c_during_a_build_leaves_the_old_engine_and_no_temporary(weights: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e"
    assert _build(weights, out, "--no-verify") == 0
    before = _tree(out)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("export.onnx.save", interrupted)
    assert _build(weights, out, "--no-verify", "--overwrite") == 130
    assert "interrupted: -o holds what it held before" in capsys.readouterr().err
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_sigint_to_a_running_build_leaves_nothing_behind(weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "e"
    proc = subprocess.Popen([sys.executable, "-m", "engine.build", "--model", "rrdb23", "--random-weights", "--tile",
                             "64", "-o", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # a shell's background job ignores SIGINT, and children inherit that: restore it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().startswith("backend: ")  # then rrdb23 is made, exported, written, verified
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted: -o holds what it held before" in err
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_written_gives_a_message(weights: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """As root a read-only folder is writable, so the refusal is simulated where the folder is made."""
    real_mkdir = os.mkdir

    def denied(path: object, *args: object, **kwargs: object) -> None:
        if Path(str(path)).parent == tmp_path / "ro":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        real_mkdir(path, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "mkdir", denied)
    assert _build(weights, tmp_path / "ro" / "e", "--no-verify") == 2
    err = capsys.readouterr().err
    assert "Permission denied" in err and "choose a place you can write to" in err
    assert list((tmp_path / "ro").iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# verification with a tolerance (issue 15.11, 15.10)


def test_verification_prints_the_difference_and_the_limit(weights: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert _build(weights, tmp_path / "e") == 0
    out = capsys.readouterr().out
    assert "verified: max abs difference from PyTorch fp32 on a 16×16 probe" in out
    assert "(limit 1.0e-04 for fp32)" in out


@pytest.mark.parametrize("damage,words", [
    (lambda y: y + 0.01, "max abs difference"),
    (lambda y: y * float("nan"), "holds NaN or Inf"),
    (lambda y: y[..., :-1], "has shape"),
])
def test_an_engine_that_computes_something_else_fails_and_is_not_written(
        weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        damage, words: str) -> None:
    from engine.backends.ort import OrtBackend

    out = tmp_path / "e"
    assert _build(weights, out, "--no-verify", "--fp16") == 0
    before = _tree(out)
    run = OrtBackend.run
    monkeypatch.setattr(OrtBackend, "run", lambda self, batch: damage(run(self, batch)))
    assert _build(weights, out, "--overwrite", "--fp32") == 1
    err = capsys.readouterr().err
    assert "verification failed" in err or "is broken" in err
    assert words in err and "not written" in err
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_a_network_whose_output_is_not_finite_fails_verification(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    net = small_rrdb(0)
    with torch.no_grad():
        net.conv_last.bias.fill_(float("inf"))
    try:
        M.save(net, tmp_path / "inf.safetensors")
    except ValueError:
        pytest.skip("engine.models refuses to save non-finite weights")
    code = _build(tmp_path / "inf.safetensors", tmp_path / "e")
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err and not (tmp_path / "e").exists()
    assert "not finite" in err or "NaN" in err or "inf" in err.lower()


def test_verify_refuses_a_reference_network_whose_output_is_not_finite(weights: Path, tmp_path: Path) -> None:
    from engine.build import VerificationError, verify

    assert _build(weights, tmp_path / "e", "--no-verify") == 0
    net = small_rrdb(0)
    with torch.no_grad():
        net.conv_last.bias.fill_(float("nan"))
    with pytest.raises(VerificationError, match="the network's own output is not finite"):
        verify(tmp_path / "e", net)
    assert verify(tmp_path / "e", small_rrdb(0)) < 1e-5


# ---------------------------------------------------------------------------------------------------------
# options that cannot work, refused before any work (issue 15.12)


@pytest.mark.parametrize("flags,words", [
    (["--backend", "triton"], "--backend triton: the fused kernels run rrdbnet, srresnet, srvgg, not edsr"),
    (["--backend", "native"], "--backend native: the fused kernels run rrdbnet, srresnet, srvgg, not edsr"),
    (["--backend", "native", "--arch", "5"], "--arch 5 is not a GPU architecture"),
    (["--backend", "native", "--arch", "-90"], "--arch -90 is not a GPU architecture"),
    (["--arch", "90"], "--arch is for --backend native"),
    (["--tile", "0"], "--tile and --batch must be positive"),
    (["--tile", "-16"], "--tile and --batch must be positive"),
    (["--batch", "0"], "--tile and --batch must be positive"),
    (["--batch", "-2"], "--tile and --batch must be positive"),
    (["--tile", "100000"], "more than an engine takes"),
    (["--int8", "--calib", ".", "--calib-images", "0"], "--calib-images must be at least 1"),
    (["--int8", "--calib", ".", "--calib-method", "magic"], "--calib-method must be one of"),
    (["--timing-cache", "t.cache"], "--timing-cache is for --backend tensorrt"),
    (["--bf16"], "--bf16 is for --backend triton or native"),
])
def test_options_that_cannot_work_are_refused_before_any_work(tmp_path: Path, flags: list[str], words: str,
                                                              capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    M.save(M.create("edsr", num_block=1, num_feat=16).eval(), tmp_path / "edsr.safetensors")
    start = time.perf_counter()
    code = build_main(["--weights", str(tmp_path / "edsr.safetensors"), "-o", str(tmp_path / "e"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err, err
    assert not (tmp_path / "e").exists() and time.perf_counter() - start < 10


def test_the_help_states_every_default() -> None:
    from engine.build import parser

    for action in parser()._actions:
        if action.help and action.dest != "help":
            assert "default" in action.help, action.dest
    assert "--overwrite" in parser().format_help()


def test_the_lock_file_goes_with_the_build(weights: Path, tmp_path: Path) -> None:
    assert _build(weights, tmp_path / "e", "--no-verify") == 0
    assert not (tmp_path / ".e.lock").exists()
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["format_version"] == 1
