"""Engine folders: `write_engine` makes what `python -m engine.build` writes, `load` runs it.

`write_engine` builds the folder beside its target under a temporary name and renames it into place, holding a lock
(`build_lock`) so that two builds into one folder never mix; it replaces only a folder that is one of our engines
(a manifest and its files, nothing else), and only when asked to (`overwrite`). `load(dir)` reads the manifest
(`engine.manifest`), then hands the folder to the backend the manifest names, through the backend registry.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import TEMP_PATTERN, dir_mode, file_mode, pid_alive, temp_path
from .backends.registry import REBUILD, Backend, EngineError, LoadRequest, backends, get, reading
from .machine import check_threads
from .manifest import (
    FORMAT_VERSION,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    REQUIRED,
    engine_files,
    is_int,
    read_manifest,
    read_small,
    sha256,
)

# ---------------------------------------------------------------------------------------------------------
# writing: the lock, the target check, stale temporaries, the rename into place


_held: dict[str, tuple[int, int, int]] = {}  # lock path → (thread id, depth, fd): held by this process
_held_guard = threading.Lock()


def _target(directory: str | os.PathLike[str]) -> Path:
    """`directory` as an absolute path with a name (`-o .` is the current folder by its name; `-o /` is refused)."""
    target = Path(os.path.abspath(directory))
    if not target.name:
        raise EngineError(f"-o {directory} is not a folder an engine can be written to: give a new folder, e.g. "
                          f"engines/NAME")
    return target


def lock_path(target: str | os.PathLike[str]) -> Path:
    target = _target(target)
    return target.with_name(f".{target.name}.lock")


@contextmanager
def build_lock(target: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of engine folder `target` (`.NAME.lock` beside it, an advisory `flock`, released by
    the OS if the process dies) or raise EngineError at once if another build holds it. Re-entrant within a
    thread; another thread of this process is refused like another process."""
    lock = lock_path(target)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EngineError(f"cannot create the folder {lock.parent} for -o {target} ({e.strerror}): choose a place "
                          f"you can write to") from None
    key = os.path.abspath(lock)
    me = threading.get_ident()
    with _held_guard:
        if key in _held:
            owner, depth, fd = _held[key]
            if owner != me:
                raise EngineError(f"{target} is being written by another engine build in this process: wait for "
                                  f"it, or choose another -o")
            _held[key] = (owner, depth + 1, fd)
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                owner, depth, fd = _held[key]
                _held[key] = (owner, depth - 1, fd)
        return
    fd = _acquire(lock, target)
    with _held_guard:
        _held[key] = (me, 1, fd)
    try:
        yield
    finally:
        with _held_guard:
            del _held[key]
        try:
            os.unlink(lock)  # while still holding it: a waiting build then locks a fresh file (see _acquire)
        except FileNotFoundError:
            pass
        os.close(fd)


def _acquire(lock: Path, target: str | os.PathLike[str]) -> int:
    import fcntl

    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), file_mode())
        except OSError as e:
            raise EngineError(f"cannot create the lock file {lock} for -o {target} ({e.strerror}): choose a "
                              f"folder you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineError(f"{target} is being written by another python -m engine.build (it holds {lock}): wait "
                              f"for it to finish, or choose another -o") from None
        # the previous holder unlinks the file before releasing it: make sure we locked the file that is there now
        try:
            current = os.stat(lock, follow_symlinks=False).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)


def _engine_folder_problem(folder: Path) -> str | None:
    """Why `folder` (an existing, non-empty folder) is not one of our engines, or None when it is: a manifest of
    ours (format version, our keys, files of our names) and nothing inside but that manifest and its files."""
    entries = {p.name: p for p in folder.iterdir()}
    if MANIFEST not in entries:
        return f"it has no {MANIFEST}"
    try:
        manifest = json.loads(read_small(folder / MANIFEST, MAX_MANIFEST_BYTES, "engine manifest").decode("utf-8"))
    except (EngineError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return f"its {MANIFEST} is not an engine manifest"
    if not isinstance(manifest, dict) or not is_int(manifest.get("format_version"), 1, FORMAT_VERSION) or \
            any(k not in manifest for k in REQUIRED) or not isinstance(manifest["files"], dict):
        return f"its {MANIFEST} is not an engine manifest"
    listed = set(manifest["files"])
    known = engine_files()
    if not listed <= known:
        return f"its {MANIFEST} lists files an engine does not have ({', '.join(sorted(listed - known))})"
    others = sorted(set(entries) - listed - {MANIFEST})
    if others:
        return f"it holds {', '.join(others[:5])}{' …' if len(others) > 5 else ''}, which no engine has"
    for name in [MANIFEST, *listed & set(entries)]:
        if not stat.S_ISREG(os.lstat(entries[name]).st_mode):
            return f"{name} is not a regular file"
    return None


def check_target(target: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Raise EngineError unless an engine may be written at `target`: nothing there, an empty folder, or (with
    `overwrite`) one of our engines."""
    target = _target(target)
    if os.path.islink(target):
        raise EngineError(f"-o {target} is a symbolic link: give the folder itself, or another name (nothing was "
                          f"changed)")
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise EngineError(f"-o {target} exists and is not a folder: choose another -o (nothing was changed)")
    try:
        empty = not any(target.iterdir())
        why = None if empty else _engine_folder_problem(target)
    except OSError as e:
        raise EngineError(f"-o {target} cannot be read ({e.strerror}): choose another -o") from None
    if empty:
        return
    if why is not None:
        raise EngineError(f"-o {target} exists and is not an engine folder ({why}); python -m engine.build replaces "
                          f"only engines it wrote: choose another -o (nothing was changed)")
    if not overwrite:
        raise EngineError(f"-o {target} holds an engine already: pass --overwrite to replace it, or choose another "
                          f"-o (nothing was changed)")


def stale_builds(target: str | os.PathLike[str]) -> list[Path]:
    """Temporary folders of builds into `target` whose process is gone (killed before renaming them into place):
    named `.NAME.PID-HEX.tmp` beside the target, holding nothing but an engine's files (and our temporaries of
    them)."""
    target = _target(target)
    ours = engine_files() | {MANIFEST}
    found = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = TEMP_PATTERN.fullmatch(p.name)
        if m is None or m["name"] != target.name or pid_alive(int(m["pid"])):
            continue
        try:
            if p.is_symlink() or not p.is_dir():
                continue
            inside = list(p.iterdir())
            if all(not q.is_symlink() and q.is_file() and (q.name in ours or ((t := TEMP_PATTERN.fullmatch(q.name))
                                                                               and t["name"] in ours))
                   for q in inside):
                found.append(p)
        except OSError:
            continue
    return found


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM (delivered when the block ends), so that two renames are never split by them."""
    import signal

    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _replace(tmp: Path, target: Path) -> None:
    """Move the finished folder `tmp` to `target`; an engine there is moved aside first and removed after."""
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    aside = temp_path(target)
    with _signals_deferred():
        os.rename(target, aside)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(aside, target)
            raise
    shutil.rmtree(aside, ignore_errors=True)


def write_engine(directory: str | os.PathLike[str], manifest: dict[str, Any],
                 write_files: Mapping[str, Callable[[str], Any]], *, overwrite: bool = False,
                 check: Callable[[Path], Any] | None = None) -> Path:
    """Create the engine folder `directory`: every file is written into a temporary folder beside it
    (`write_files[name](path)` writes one), given the usual mode, sized and checksummed into the manifest;
    `check(tmp)` may then load and test the finished engine; only then is the folder renamed into place. An engine
    already there is replaced only with `overwrite`, and a folder that is not one of our engines never. On any
    error (or an interrupt) nothing at `directory` has changed and the temporary folder is gone."""
    target = _target(directory)
    known = engine_files()
    unknown = set(write_files) - known
    if unknown:
        raise ValueError(f"engine files must be among {sorted(known)}, got {sorted(unknown)}")
    with build_lock(target):
        check_target(target, overwrite=overwrite)
        for stale in stale_builds(target):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = temp_path(target)
        try:
            os.mkdir(tmp, 0o700)
        except OSError as e:
            raise EngineError(f"cannot write in {target.parent} ({e.strerror}): choose a place you can write to "
                              f"for -o") from None
        try:
            files = {}
            for name, write in write_files.items():
                write(str(tmp / name))
                os.chmod(tmp / name, file_mode())  # some writers (safetensors) create files 0o600
                files[name] = {"sha256": sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
            manifest = {"format_version": FORMAT_VERSION, **manifest, "files": files}
            with open(tmp / MANIFEST, "w") as f:
                f.write(json.dumps(manifest, indent=2) + "\n")
            os.chmod(tmp / MANIFEST, file_mode())
            os.chmod(tmp, dir_mode())  # the folder was made private while it was written
            if check is not None:
                check(tmp)
            check_target(target, overwrite=overwrite)  # it may have changed while we built
            _replace(tmp, target)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            where = f" ({e.filename})" if e.filename else ""
            raise EngineError(f"could not write the engine {target}: {e.strerror or e}{where}; nothing was changed at "
                              f"{target}") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# ---------------------------------------------------------------------------------------------------------
# loading


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _device(d: Path, backend: str, device: str | torch.device | None) -> torch.device:
    """The device an engine of `backend` runs on: `device` when that can work, else a ValueError that says why."""
    info = get(backend)
    if device is None:
        device = info.natural_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device: give 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in info.devices:
        where = " or ".join({"cpu": "the CPU", "cuda": "a CUDA GPU"}.get(k, k) for k in info.devices)
        others = [b.name for b in _engine_backends() if dev.type in b.devices]
        raise ValueError(f"device={device!r}: {d} is a {info.label} engine, which runs on {where}; leave device "
                         f"unset, or build one for {dev.type} (--backend {' or '.join(others) or '…'})")
    if dev.type == "cuda" and torch.cuda.is_available() and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    return dev


def _engine_backends() -> list[Any]:
    return [b for b in backends() if b.load is not None]


class Engine:
    """A loaded engine: a `Backend` for `engine.infer` (scale, channels, tile and batch from the manifest) whose
    `set_alpha(α)` refits the weights in place (ONNX Runtime: initializer rebinding; TensorRT: the Refitter)."""

    def __init__(self, directory: Path, manifest: dict[str, Any], backend: Backend) -> None:
        self.directory, self.manifest, self.backend = directory, manifest, backend
        self.scale, self.in_channels, self.out_channels = manifest["scale"], manifest["in_channels"], \
            manifest["out_channels"]
        self.multiple, self.tile, self.batch = manifest["multiple"], manifest["tile"], manifest["batch"]
        self.device = backend.device
        self.last_refit_seconds: float | None = None
        if callable(getattr(backend, "upscale_planes", None)):  # a native plan tiles whole images in engine._C
            self.upscale_planes = backend.upscale_planes  # type: ignore[attr-defined]

    @property
    def alpha(self) -> float | None:
        return getattr(self.backend, "alpha", None)

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        return self.backend.run(batch)

    def bytes_per_pixel(self) -> float:
        return self.backend.bytes_per_pixel()

    def set_alpha(self, alpha: float) -> float:
        """Blend the endpoint weights at `alpha` into the live engine, without a rebuild; returns seconds."""
        if "gan" not in self.manifest.get("alpha", {}):
            raise ValueError(f"{self.directory} was built without GAN weights: rebuild it with --gan-weights B to "
                             f"use alpha")
        seconds = float(self.backend.set_alpha(alpha))  # type: ignore[attr-defined]
        self.last_refit_seconds = seconds
        return seconds

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Engine({str(self.directory)!r}, {m['model'].get('name') or m['model']['arch']}, ×{self.scale}, "
                f"{m['precision']}, {m['backend']})")


def _endpoints(d: Path, files: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Both endpoints' weight arrays of an ONNX-based engine built with GAN weights, else nothing."""
    if "weights_gan.safetensors" not in files:
        return {}
    endpoints = {}
    for name in ("weights_psnr", "weights_gan"):
        with reading(d, f"{name}.safetensors"):
            endpoints[name] = _read_weights(d / f"{name}.safetensors")
    return endpoints


def _check_backend(d: Path, manifest: dict[str, Any], backend: Any) -> None:
    """The network inside the files must be the one the manifest describes."""
    have = {key: getattr(backend, key, None) for key in ("scale", "in_channels", "out_channels")}
    session = getattr(backend, "session", None)
    if session is not None:  # ONNX Runtime takes scale and channels from the manifest: ask the graph
        shape_in, shape_out = session.get_inputs()[0].shape, session.get_outputs()[0].shape
        have["in_channels"] = shape_in[1] if len(shape_in) == 4 else None
        have["out_channels"] = shape_out[1] if len(shape_out) == 4 else None
    wrong = [f"{key} {have[key]!r} (the manifest says {manifest[key]})" for key in have
             if have[key] is not None and have[key] != manifest[key]]
    if wrong:
        raise EngineError(f"{d}: the engine's files hold a network with {', '.join(wrong)}: {REBUILD}")


def load(directory: str | os.PathLike[str], *, threads: int = 0, device: str | torch.device | None = None) -> Engine:
    """Load an engine directory written by `python -m engine.build`, after validating its manifest.

    `threads`: host threads (ONNX Runtime's intra-op threads; 0: one per core; more than this process's CPUs is
    clamped to them with a warning). `device`: where the engine runs (default: its backend's device, CPU for ONNX
    Runtime, the first GPU otherwise); a device its backend cannot use is refused before anything is loaded."""
    d = Path(directory)
    threads = check_threads(threads)
    manifest = read_manifest(d)
    info = get(manifest["backend"])
    assert info.load is not None  # read_manifest accepts only backends that load
    dev = _device(d, info.name, device)
    backend = info.load(LoadRequest(folder=d, manifest=manifest, device=dev, threads=threads,
                                    endpoints=_endpoints(d, manifest["files"])))
    _check_backend(d, manifest, backend)
    return Engine(d, manifest, backend)
