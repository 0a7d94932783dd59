"""The run folder (--out): a user's folder is refused untouched, only our own stale temporaries are removed and only
where a run writes, a run killed before its first checkpoint restarts, resume passes over an unreadable newest
state (and says so), and a full disk or an unwritable folder stops the run with a message, the last state intact."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from train.config import TrainError, preset
from train.run import main as run_main
from train.trainer import Trainer

SMALL = {"num_block": 1, "num_feat": 8, "num_grow_ch": 4}
DEAD_PID = 4_999_999  # above Linux's largest pid (2^22): no process has it




@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for i in range(3):
        img = cv2.GaussianBlur(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), (5, 5), 1.5)
        cv2.imwrite(str(folder / f"img{i}.png"), img)
    return folder


def _cfg(data: Path, **overrides: object):
    base = dict(data=str(data), gt_size=16, batch_size=2, num_workers=0, iters=2, log_every=1, val_every=1000,
                save_every=1000, model_args=SMALL)
    return preset("tiny", **{**base, **overrides})


def _cli(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--data", str(data), "--gt-size", "16", "--batch-size", "2", "--workers", "0",
            "--iters", "2", "--set", f"model_args={json.dumps(SMALL)}", "--out", str(out), *extra]


def _snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path below `folder` (hidden ones too) with its bytes (None for folders), and its mode."""
    return {p.relative_to(folder).as_posix(): (None if p.is_dir() else p.read_bytes(), p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


def _users_folder(root: Path) -> Path:
    user = root / "mine"
    (user / "photos").mkdir(parents=True)
    cv2.imwrite(str(user / "photos" / "cat.png"), np.full((8, 8, 3), 90, np.uint8))
    (user / "notes.txt").write_text("do not lose me\n")
    (user / "config.json").write_text(json.dumps({"lr": 0.1, "iters": 5}))  # their own, not a run of ours
    (user / "train.csv").write_text("a,b\n1,2\n")
    (user / "models").mkdir()
    (user / "models" / "net_g_5.pth").write_bytes(b"their weights")
    (user / "photos" / ".x.tmp").write_bytes(b"their temp")
    (user / f".notes.txt.{DEAD_PID}-0123456789ab.tmp").write_bytes(b"looks like ours, in their folder")
    return user


@pytest.mark.parametrize("resume", [False, True])
def test_a_users_folder_is_refused_and_left_untouched(tmp_path: Path, data: Path, resume: bool,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    user = _users_folder(tmp_path)
    before = _snapshot(user)
    assert run_main(_cli(data, user, *(["--resume"] if resume else []))) == 2
    err = capsys.readouterr().err
    assert str(user) in err and "not a training run" in err and "new or empty folder" in err, err
    assert _snapshot(user) == before
    with pytest.raises(TrainError, match="not a training run"):
        Trainer(_cfg(data), user, resume=resume)
    assert _snapshot(user) == before


def test_out_that_is_a_file_and_resume_of_nothing(tmp_path: Path, data: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "run.txt"
    file.write_text("mine")
    assert run_main(_cli(data, file)) == 2
    assert "is not a folder" in capsys.readouterr().err and file.read_text() == "mine"
    for folder, match in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "is empty")):
        if match == "is empty":
            folder.mkdir()
        assert run_main(["--resume", "--out", str(folder)]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "missing").exists() and list((tmp_path / "empty").iterdir()) == []


def test_only_our_stale_temporaries_are_removed_only_where_a_run_writes(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    Trainer(_cfg(data, iters=2, save_every=1), out).run()
    ours = [out / f".train.csv.{DEAD_PID}-00000000000a.tmp",
            out / "models" / f".net_g_2.pth.{DEAD_PID}-00000000000b.tmp",
            out / "state" / f".00000003.state.{DEAD_PID}-00000000000c.tmp"]
    kept = [out / "notes" / f".draft.txt.{DEAD_PID}-00000000000d.tmp",  # a folder of the user's inside the run
            out / ".x.tmp", out / "models" / ".mine.tmp",  # not our names
            out / f".val.csv.{os.getpid()}-00000000000e.tmp"]  # a live process's work in progress
    for p in ours + kept:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    Trainer(_cfg(data, iters=3, save_every=1), out, resume=True).run()
    assert [p for p in ours if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "run"
    Trainer(_cfg(data), out)  # config.json, train.csv, train.log written; killed before any checkpoint
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="holds no training state.*without --resume"):
        Trainer(_cfg(data), out, resume=True)
    Trainer(_cfg(data, iters=2), out).run()
    assert [int(r.split(",")[0]) for r in (out / "train.csv").read_text().splitlines()[1:]] == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"
    # a run's models without a state (the states deleted to save space): a fresh start would overwrite them
    for p in (out / "state").iterdir():
        p.unlink()
    models_before = _snapshot(out / "models")
    with pytest.raises(TrainError, match="holds the models of a run"):
        Trainer(_cfg(data), out)
    assert _snapshot(out / "models") == models_before


def test_links_in_a_run_folder_are_refused(tmp_path: Path, data: Path) -> None:
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    Trainer(_cfg(data, iters=1), out).run()
    elsewhere.write_text("precious\n")
    (out / "train.log").unlink()
    (out / "train.log").symlink_to(elsewhere)  # the run would append its log to whatever the link names
    with pytest.raises(TrainError, match="symbolic link"):
        Trainer(_cfg(data, iters=2), out, resume=True)
    assert elsewhere.read_text() == "precious\n"


def _weights(run: Path, tag: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "models" / f"net_g_{tag}.pth", weights_only=True)["params_ema"]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_resume_passes_over_an_unreadable_newest_state(tmp_path: Path, data: Path, damage: str) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(_cfg(data, iters=4, save_every=2), tmp_path / "straight").run()
        out = tmp_path / "run"
        Trainer(_cfg(data, iters=4, save_every=2), out).run()
        newest = out / "state" / "00000004.state"
        newest.write_bytes(newest.read_bytes()[:1000] if damage == "truncated" else b"")
        Trainer(_cfg(data, iters=4, save_every=2), out, resume=True).run()
    finally:
        torch.set_num_threads(threads)
    log = (out / "train.log").read_text()
    assert f"training state {newest} cannot be read (" in log
    assert f"; resuming from {out / 'state' / '00000002.state'} (iteration 2) instead" in log
    assert "resumed at iteration 2" in log
    a, b = _weights(tmp_path / "straight", "4"), _weights(out, "4")
    assert all(torch.equal(t, b[k]) for k, t in a.items())
    assert [int(r.split(",")[0]) for r in (out / "train.csv").read_text().splitlines()[1:]] == [1, 2, 3, 4]


def test_resume_with_no_readable_state_is_an_error(tmp_path: Path, data: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    Trainer(_cfg(data, iters=2, save_every=2), out).run()
    (out / "state" / "00000002.state").write_bytes(b"")
    assert run_main(["--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no training state" in err and "00000002.state" in err and "Traceback" not in err


def test_a_full_disk_while_saving_stops_the_run_and_keeps_the_last_state(tmp_path: Path, data: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    Trainer(_cfg(data, iters=2, save_every=2), out).run()
    state_2 = (out / "state" / "00000002.state").read_bytes()
    save = torch.save

    def full_disk(obj: object, f: str) -> None:
        if "00000004.state" in str(f):
            Path(f).write_bytes(b"half a state")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        save(obj, f)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainError, match=r"iteration 4.*No space left on device.*--resume.*00000002.state"):
        Trainer(_cfg(data, iters=6, save_every=2), out, resume=True).run()
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "state").iterdir()) == ["00000002.state"]
    assert (out / "state" / "00000002.state").read_bytes() == state_2
    assert [p for p in out.rglob("*.tmp")] == []


def test_an_unwritable_out_is_an_error_before_any_training_work(tmp_path: Path, data: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import train.rundir as rundir

    def refuse(path: Path, write: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(rundir, "atomic_write", refuse)
    monkeypatch.setattr(Trainer, "step", never)
    with pytest.raises(TrainError, match=r"cannot write .*run.*Permission denied"):
        Trainer(_cfg(data), tmp_path / "run").run()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_an_error(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert run_main(_cli(data, out)) == 2
    finally:
        out.chmod(0o755)
    assert "cannot write" in capsys.readouterr().err and list(out.iterdir()) == []


def test_a_run_with_a_damaged_or_edited_config_json(tmp_path: Path, data: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    Trainer(_cfg(data, iters=2, save_every=2), out).run()
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "save_every": 0}))
    assert run_main(["--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'config.json'}: save_every must be an integer ≥ 1, got 0" in err and "restore it" in err, err
    (out / "config.json").write_text(json.dumps(saved)[:50])
    before = _snapshot(out)
    for argv in (["--resume", "--out", str(out)], _cli(data, out)):
        assert run_main(argv) == 2
        err = capsys.readouterr().err
        assert "holds training states, but its config.json is missing or damaged" in err, err
    assert _snapshot(out) == before


def test_a_validation_image_gone_during_the_run_is_skipped(tmp_path: Path, data: Path) -> None:
    val = tmp_path / "val"
    val.mkdir()
    for i in range(2):
        cv2.imwrite(str(val / f"v{i}.png"), np.full((24, 24, 3), 60 * i, np.uint8))
    trainer = Trainer(_cfg(data, val=str(val)), tmp_path / "run")
    (val / "v0.png").unlink()
    psnr_y, _ = trainer.validate(1)
    rows = (tmp_path / "run" / "val.csv").read_text().splitlines()
    assert rows[1].startswith("1,") and rows[1].endswith(",1") and np.isfinite(psnr_y)
    assert "validation image v0.png skipped" in (tmp_path / "run" / "train.log").read_text()
