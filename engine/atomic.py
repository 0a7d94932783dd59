"""Atomic file writes: a file a user has is never left half-written, even if the process is killed.

Every temporary file is named `.{name}.{pid}-{random}.tmp` beside its target, so that a later run can tell our
own stale temporaries (left by a killed process) from anything else, and from a live process's work in progress:
`stale_temps(folder)` lists only ours whose process is gone.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

TEMP_PATTERN = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{12}\.tmp")
_lock = threading.Lock()
_umask: int | None = None


def umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux ≥ 4.7: /proc/self/status);
    elsewhere read once by setting and restoring it under a lock."""
    global _umask
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _lock:
        if _umask is None:
            _umask = os.umask(0o022)
            os.umask(_umask)
        return _umask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 minus the umask."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode a plain `mkdir` gives a new folder: 0o777 minus the umask."""
    return 0o777 & ~umask()


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: the same resolved path, or (both existing) the same inode, so that a link
    or another spelling of an input is still recognised as that input."""
    try:
        return Path(a).resolve() == Path(b).resolve() or (os.path.exists(a) and os.path.exists(b)
                                                          and os.path.samefile(a, b))
    except (OSError, ValueError):
        return False


def temp_path(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside `path` that `stale_temps` recognises as ours."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (ours always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_temps(folder: str | os.PathLike[str], names: set[str] | None = None) -> Iterator[Path]:
    """Our temporary files in `folder` (not below it) whose writing process no longer runs: left by a process
    killed between writing and renaming. `names`: only temporaries of these target names."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return
    for p in entries:
        m = TEMP_PATTERN.fullmatch(p.name)
        if m is None or (names is not None and m["name"] not in names) or pid_alive(int(m["pid"])):
            continue
        if p.is_file() and not p.is_symlink():
            yield p


def remove_stale_temps(folder: str | os.PathLike[str], names: set[str] | None = None) -> list[Path]:
    """Delete `stale_temps(folder, names)`; returns what was removed."""
    removed = []
    for p in stale_temps(folder, names):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object], *, overwrite: bool = True) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then move it to `path`.

    The file gets the mode a plain `open(path, "w")` would give (0o666 minus the umask). On any error the
    temporary file is removed and `path` is left as it was. With `overwrite=False` the file is created only if
    `path` does not exist at that moment (a hard link, which fails atomically when the name is taken: two processes
    racing for one name never both succeed); otherwise `FileExistsError` is raised and nothing is changed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        write(str(tmp))
        os.chmod(tmp, file_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except OSError as e:
                if e.errno == errno.EEXIST:
                    raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # a file system without hard links: exclusive creation of the name, then the rename over it
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
