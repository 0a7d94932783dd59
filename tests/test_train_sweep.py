"""`python -m train.sweep` with bad input: one message and exit code 2, never a traceback, and a file of the user's
is never replaced (an earlier sweep's files are)."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine.models as models
from train.sweep import main as sweep_main

SMALL = {"num_block": 1, "num_feat": 8, "num_grow_ch": 4}


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("nets")
    for name in ("psnr", "gan"):
        models.save(models.create("rrdb6", **SMALL), folder / f"{name}.safetensors")
    return str(folder / "psnr.safetensors"), str(folder / "gan.safetensors")


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert sweep_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_a_users_files_are_not_replaced(tmp_path: Path, nets: tuple[str, str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "sweep.csv").write_text("my,table\n")
    (out / "alpha_0.50.safetensors").write_bytes(b"my own file")
    for alphas in ("0,1", "0.5"):
        err = _refused([*nets, "--alphas", alphas, "-o", str(out)], capsys)
        assert "was not written by train.sweep" in err and "nothing was changed" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["alpha_0.50.safetensors", "sweep.csv"]
    assert (out / "sweep.csv").read_text() == "my,table\n"
    assert (out / "alpha_0.50.safetensors").read_bytes() == b"my own file"


def test_an_earlier_sweep_is_replaced(tmp_path: Path, nets: tuple[str, str]) -> None:
    out = tmp_path / "sweep"
    assert sweep_main([*nets, "--alphas", "0,0.5", "-o", str(out)]) == 0
    (out / "notes.txt").write_text("kept")
    assert sweep_main([*nets, "--alphas", "0.5,1", "-o", str(out)]) == 0
    assert (out / "sweep.csv").read_text().splitlines()[1:] == [
        f"0.5,{out / 'alpha_0.50.safetensors'}", f"1.0,{out / 'alpha_1.00.safetensors'}"]
    assert (out / "notes.txt").read_text() == "kept" and [p.name for p in out.glob(".*")] == []


def test_bad_arguments(tmp_path: Path, nets: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file.png").write_bytes(b"")
    out = tmp_path / "out"
    for extra, expected in ((["-o", str(tmp_path / "file.png")], "is a file, not a folder"),
                            (["--val", str(tmp_path / "file.png"), "-o", str(out)], "is not a directory"),
                            (["--device", "tpu", "-o", str(out)], "--device must be cpu or cuda"),
                            (["--alphas", "0.001,0.004", "-o", str(out)], "two checkpoints one name")):
        assert expected in _refused([*nets, *extra], capsys)
    assert not out.exists()
