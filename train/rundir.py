"""The run directory (`--out`): which folders are runs of ours, the checks before a run starts or resumes, the
folder made ready for a run (config.json, the clean-up of our own stale temporaries), and the message of a write
that fails during a run. What a training state holds is train/state.py.

A run of ours is a folder whose config.json carries `RUN_FORMAT` (config.json files of older versions, written
before the tag, are recognised by their fields). train.run starts a run only in a new or empty folder, or in a
run of ours that stopped before its first checkpoint, and never writes into anything else: a user's folder is
refused before anything in it is touched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.atomic import TEMP_PATTERN, atomic_write, remove_stale_temps

from .config import RUN_FORMAT, TrainConfig, TrainError

# The names train.run writes directly in a run folder, and the folders it writes into (atomic_write leaves its
# temporaries beside their targets, so these are the only places where a killed run leaves any).
FILES = ("config.json", "train.log", "train.csv", "val.csv")
FOLDERS = ("models", "state", "samples", "tb")
TEMP_FOLDERS = (".", "models", "state", "samples")

STATE_NAME = re.compile(r"(\d{8})\.state")
_LEGACY_KEYS = frozenset({"preset", "stage", "model", "scale", "iters"})


def read_config(out: Path) -> dict[str, Any] | None:
    """The configuration fields of `out`/config.json if a run of ours wrote it; None otherwise (no such file,
    not JSON, or somebody else's)."""
    try:
        d = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    if d.get("format") == RUN_FORMAT:
        return {k: v for k, v in d.items() if k != "format"}
    names = {f.name for f in fields(TrainConfig)}
    if "format" not in d and _LEGACY_KEYS <= set(d) <= names:  # written before the tag
        return d
    return None


def state_files(out: Path) -> list[tuple[int, Path]]:
    """The training states of a run directory (complete files: each is written under a temporary name and
    renamed), oldest first."""
    folder = out / "state"
    found = [(int(m.group(1)), p) for p in folder.glob("*.state") if (m := STATE_NAME.fullmatch(p.name))]
    return sorted(found)


@dataclass(frozen=True)
class Plan:
    """What a run does with its folder: "new" (new or empty folder), "restart" (a run of ours without a
    training state: it stopped before its first checkpoint) or "resume"."""

    mode: str


def check_out(out: Path, *, resume: bool) -> Plan:
    """Decide whether a run may start (or resume) in `out`, without changing anything.

    Raises:
        TrainError: `out` is a file, cannot be read, is a non-empty folder that is not a run of ours, holds a run
            that a fresh start would overwrite, or (resume) holds no run or no training state.
    """
    flag = "--resume: " if resume else ""
    if not out.exists() and not out.is_symlink():
        if resume:
            raise TrainError(f"--resume: {out} does not exist; pass the folder of an earlier run as --out")
        return Plan("new")
    if not out.is_dir():
        raise TrainError(f"{flag}--out {out} is not a folder (a file or a broken link); choose a new or empty folder "
                         "for --out")
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise TrainError(f"{flag}cannot read the --out folder {out}: {e.strerror or e}") from None
    if not entries:
        if resume:
            raise TrainError(f"--resume: {out} is empty, not a run; start a run there without --resume")
        return Plan("new")
    if read_config(out) is None and state_files(out) and (out / "models").is_dir():
        raise TrainError(f"{flag}{out} holds training states, but its config.json is missing or damaged: nothing was "
                         "changed. Restore config.json (a run resumes from it), or start a new run in another folder "
                         "with --pretrained on one of its models/net_g_*.pth")
    if read_config(out) is None:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise TrainError(f"{flag}{out} is not a training run (it has no config.json written by train.run) and is "
                         f"not empty ({shown}): nothing was changed. Choose a new or empty folder for --out"
                         + ("" if resume else ", or pass --resume with the folder of an earlier run"))
    for name in FILES + FOLDERS:
        path = out / name
        if path.is_symlink():
            raise TrainError(f"{flag}{path} is a symbolic link: a run folder's own files and folders must not be "
                             "links (the run would write where the link points); replace it with the file or folder")
        if name in FOLDERS and path.exists() and not path.is_dir():
            raise TrainError(f"{flag}{path} is a file, but train.run keeps a folder there; is {out} a run?")
    states = state_files(out)
    if resume:
        if not states:
            raise TrainError(f"--resume: {out} holds no training state (state/*.state): the run stopped before its "
                             "first checkpoint; start it again without --resume")
        return Plan("resume")
    if states:
        raise TrainError(f"{out} already holds a run (state/{states[-1][1].name}); pass --resume to continue it, "
                         "or choose another --out")
    kept = sorted(p.name for p in (out / "models").glob("*") if not TEMP_PATTERN.fullmatch(p.name))
    if kept:
        raise TrainError(f"{out} holds the models of a run ({', '.join(kept[:3])}) but no training state to "
                         "resume from; choose another --out (or move the models away first)")
    return Plan("restart")


def remove_stale(out: Path) -> list[Path]:
    """Remove our temporaries left by killed processes, only in the folders a run writes into."""
    return [p for folder in TEMP_FOLDERS for p in remove_stale_temps(out / folder)]


def prepare(out: Path, mode: str, config_json: str) -> list[Path]:
    """Make `out` the run's folder for a `check_out` plan `mode`: create it, remove our stale temporaries (not in a
    new folder) and write config.json. Returns the temporaries removed.

    Raises:
        TrainError: the folder cannot be written (a folder this call created is removed again), or another run
            took it at the same moment.
    """
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        removed = remove_stale(out) if mode != "new" else []
        # a new run takes config.json exclusively: of two runs started at once in one folder, one is refused
        atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(config_json, encoding="utf-8"),
                     overwrite=mode != "new")
    except FileExistsError:
        raise TrainError(f"another run started in {out} at the same moment; choose another --out") from None
    except OSError as e:
        if created:
            with suppress(OSError):
                out.rmdir()
        raise TrainError(f"cannot write the run folder {out}: {e.strerror or e}; choose a folder you can "
                         "write to for --out") from None
    return removed


@contextmanager
def writing(out: Path, what: str, it: int) -> Iterator[None]:
    """A failed write (a full disk, a folder gone) stops the run with a message; the last state is intact
    (every file is written under a temporary name, which is removed on failure, and renamed)."""
    try:
        yield
    except OSError as e:
        states = state_files(out)
        then = (f"continue with --resume, which starts from {states[-1][1]}" if states else
                "start the run again (it has no checkpoint yet)")
        raise TrainError(f"writing {what} of iteration {it} in {out} failed: {e.strerror or e}. The run "
                         f"stopped; free space (or fix the folder), then {then}") from None
