"""engine.atomic: atomic and exclusive writes, the umask read without changing it, our stale temporaries."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine import atomic


def _write(data: bytes):
    return lambda tmp: Path(tmp).write_bytes(data)


def test_umask_is_read_without_setting_it(monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0o027)
    try:
        def forbidden(mask: int) -> int:
            raise AssertionError("os.umask called: another thread creating a file meanwhile gets the wrong mode")

        monkeypatch.setattr(os, "umask", forbidden)
        assert atomic.umask() == 0o027
        assert atomic.file_mode() == 0o640 and atomic.dir_mode() == 0o750
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_written_file_gets_the_usual_mode(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        atomic.atomic_write(tmp_path / "a.bin", _write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o664


def test_failed_write_leaves_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic.atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_exclusive_write_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic.atomic_write(target, _write(b"first"), overwrite=False)
    with pytest.raises(FileExistsError):
        atomic.atomic_write(target, _write(b"second"), overwrite=False)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_exclusive_write_race_has_one_winner(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    barrier = threading.Barrier(8)
    results: list[str] = []

    def racer(i: int) -> None:
        def write(tmp: str) -> None:
            Path(tmp).write_bytes(str(i).encode())
            barrier.wait()

        try:
            atomic.atomic_write(target, write, overwrite=False)
            results.append(f"won {i}")
        except FileExistsError:
            results.append("lost")

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1 and results.count("lost") == 7
    assert target.read_bytes().decode() == winners[0].split()[1]
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_only_our_stale_temporaries_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    ours_dead = tmp_path / f".photo_out.png.{dead}-0123456789ab.tmp"
    ours_live = tmp_path / f".other.png.{os.getpid()}-0123456789ab.tmp"
    not_ours = [tmp_path / ".photo_out.png.abc.tmp", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    sub = tmp_path / "sub"
    sub.mkdir()
    below = sub / f".x.png.{dead}-0123456789ab.tmp"
    for p in [ours_dead, ours_live, *not_ours, below]:
        p.write_bytes(b"x")
    assert atomic.remove_stale_temps(tmp_path, names={"other.png"}) == []
    assert atomic.remove_stale_temps(tmp_path) == [ours_dead]
    assert all(p.exists() for p in [ours_live, *not_ours, below])


def test_same_file_sees_links_and_other_spellings(tmp_path: Path) -> None:
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(a)
    (tmp_path / "other.png").write_bytes(b"x")
    assert atomic.same_file(a, tmp_path / "." / "a.png")
    assert atomic.same_file(a, tmp_path / "hard.png") and atomic.same_file(tmp_path / "soft.png", a)
    assert not atomic.same_file(a, tmp_path / "other.png")
    assert not atomic.same_file(a, tmp_path / "missing.png")
