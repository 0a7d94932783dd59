"""`python -m train.run` with bad input: every option and `--set` value is checked before any work, data folders
that cannot train say so, and a bad file among good ones is skipped with one warning naming it. Each mistake is
one message naming the flag, key or file and exit code 2, never a traceback, and nothing is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from train.run import main as run_main

REPO = Path(__file__).resolve().parents[1]
SMALL = {"num_block": 1, "num_feat": 8, "num_grow_ch": 4}




def _image(path: Path, size: tuple[int, int] = (40, 40), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.GaussianBlur(img, (5, 5), 1.5))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for i in range(3):
        _image(folder / f"img{i}.png", seed=i)
    return folder


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--data", str(data), "--gt-size", "16", "--batch-size", "2", "--workers", "0",
            "--iters", "2", "--set", f"model_args={json.dumps(SMALL)}", "--out", str(out), *extra]


def _refused(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expecting exit code 2, one message and no run folder; returns the message."""
    code = run_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return err


@pytest.mark.parametrize("flag, value, expected", [
    ("--iters", "0", "≥ 1"), ("--batch-size", "0", "≥ 1"), ("--gt-size", "0", "≥ 1"),
    ("--gt-size", "18", "multiple of scale 4"), ("--scale", "0", "≥ 1"), ("--val-every", "0", "≥ 1"),
    ("--save-every", "0", "≥ 1"), ("--log-every", "-3", "≥ 1"), ("--workers", "-1", "≥ 0"),
    ("--seed", "-1", "[0, 2^32)"), ("--lr", "0", "> 0"), ("--lr", "nan", "finite"),
    ("--batch-size", "100000000", "at most 4096"), ("--gt-size", "4000000", "at most 4096"),
    ("--workers", "10000", "at most 256"),
])
def test_every_numeric_option_is_checked_up_front(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str],
                                                  flag: str, value: str, expected: str) -> None:
    err = _refused(_args(data, tmp_path / "run", flag, value), tmp_path / "run", capsys)
    assert flag in err and expected in err and value in err, err


@pytest.mark.parametrize("setting, expected", [
    ("learnin_rate=1", "learnin_rate is not a configuration field"),
    ("save_evry=5", "did you mean save_every"),
    ("ema_decay=abc", "ema_decay must be a finite number, got 'abc'"),
    ("ema_decay=1.5", "ema_decay must be in [0, 1)"),
    ("keep_states=0", "keep_states must be an integer ≥ 1"),
    ("milestones=[-1]", "milestones must be an integer ≥ 0"),
    ("periods=[10,10]", "periods and restart_weights must be two lists of one length"),
    ("betas=[0.9]", "betas must be a list of 2 float values"),
    ("model_args=3", "model_args must be a JSON object"),
    ('model_args={"num_blocks": 2}', "num_blocks"),
    ("model=rrdb99", "rrdb99"),
    ("scheduler=linear", "scheduler must be one of constant, multistep, cosine_restart"),
    ("use_flip=2", "use_flip must be true or false"),
    ("oops", "--set expects KEY=VALUE"),
    ("=3", "--set expects KEY=VALUE"),
])
def test_every_set_value_is_checked_up_front(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str],
                                             setting: str, expected: str) -> None:
    err = _refused(_args(data, tmp_path / "run", "--set", setting), tmp_path / "run", capsys)
    assert expected in err, err


@pytest.mark.parametrize("setting, expected", [
    ("discriminator=patchgan", "discriminator patchgan"),
    ('discriminator_args={"bogus": 1}', "bogus"),
    ("gt_size=96", "the crop size (gt_size) must equal 128"),  # vgg128 takes 128×128 crops only
    ('perceptual_layers={"conv9_9": 1.0}', "conv9_9"),
])
def test_gan_settings_are_checked_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  setting: str, expected: str) -> None:
    for i in range(2):
        _image(tmp_path / "data" / f"{i}.png", size=(128, 128), seed=i)
    argv = ["--preset", "esrgan-gan", "--data", str(tmp_path / "data"), "--perceptual-random-init",
            "--set", "model=rrdb6",
            "--set", f"model_args={json.dumps(SMALL)}", "--set", "discriminator_args={\"num_feat\": 8}", "--workers",
            "0", "--iters", "1", "--batch-size", "1", "--out", str(tmp_path / "run"), "--set", setting]
    err = _refused(argv, tmp_path / "run", capsys)
    assert expected in err, err


def test_data_folders_that_cannot_train(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (tmp_path / "junk" / "b.jpg").write_bytes(b"")
    _image(tmp_path / "small" / "s.png", size=(12, 40))
    (tmp_path / "file.png").write_bytes(b"")
    for folder, expected in ((tmp_path / "empty", "no images in"), (tmp_path / "junk", "cannot be decoded"),
                             (tmp_path / "small", "smaller than gt_size 16"), (tmp_path / "missing", "does not exist"),
                             (tmp_path / "file.png", "is not a directory")):
        err = _refused(_args(folder, out), out, capsys)
        assert "--data" in err and str(folder) in err and expected in err, err


def test_paired_lr_folders_that_do_not_match(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _image(tmp_path / "lr_other" / "unrelated.png", size=(10, 10))
    err = _refused(_args(data, out, "--data-lr", str(tmp_path / "lr_other")), out, capsys)
    assert "--data-lr" in err and "no LR partner" in err and "img0.png" in err, err
    for i in range(3):  # ×2 LR images for a ×4 run: every pair has the wrong size
        _image(tmp_path / "lr_x2" / f"img{i}.png", size=(20, 20))
    err = _refused(_args(data, out, "--data-lr", str(tmp_path / "lr_x2")), out, capsys)
    assert "20×20" in err and "expected 10×10" in err, err


def test_a_bad_file_among_good_ones_is_skipped_with_one_warning(tmp_path: Path, data: Path) -> None:
    mixed = tmp_path / "mixed"
    for i in range(4):
        _image(mixed / f"good{i}.png", seed=i)
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    _image(mixed / "tiny.png", size=(8, 8))
    assert run_main(_args(mixed, tmp_path / "run", "--workers", "2", "--iters", "6", "--batch-size", "4")) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("broken.png") == 1 and log.count("tiny.png") == 1, log
    assert "broken.png in" in log and "cannot be decoded" in log and "tiny.png" in log


def test_bad_validation_data(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "v.png").write_bytes(b"junk")
    out = tmp_path / "run"
    err = _refused(_args(data, out, "--val", str(tmp_path / "val")), out, capsys)
    assert "--val" in err and "v.png" in err and "cannot be decoded" in err, err


def test_resume_cannot_change_the_networks(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert run_main(_args(data, out)) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for extra in (["--scale", "2"], ["--set", 'model_args={"num_block": 2, "num_feat": 8, "num_grow_ch": 4}']):
        assert run_main(["--resume", "--out", str(out), "--iters", "4", *extra]) == 2
        err = capsys.readouterr().err
        assert "cannot change when a run resumes" in err and "--pretrained" in err and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # config.json too


def test_ctrl_c_says_how_to_resume(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.run", *_args(data, out, "--iters", "100000", "--save-every", "2")]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not list((out / "state").glob("*.state")):
            assert time.time() < deadline and proc.poll() is None, "the run never wrote a state"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and f"--resume --out {out} continues from {out / 'state'}" in err, err[-3000:]


def test_out_inside_the_data_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(2):
        _image(tmp_path / "data" / f"{i}.png", seed=i)
    out = tmp_path / "data" / "runs" / "first"
    err = _refused(_args(tmp_path / "data", out), out, capsys)
    assert "is inside --data" in err and "samples/" in err, err
    err = _refused(_args(tmp_path / "data", tmp_path / "run", "--val", str(tmp_path)), tmp_path / "run", capsys)
    assert "is inside --val" in err, err
