"""Engine directories: what `python -m engine.build` writes and `engine.load` runs.

    engines/rrdb23-fp16-tensorrt/
        manifest.json           format version, model, scale, precision, backend, tile/profile, alpha and both
                                endpoint checksums, library versions, GPU arch (plans), size and sha256 of every file
        model.onnx              the graph (fp32, fp16 or Q/DQ INT8) with the weights at the build's alpha
        model.plan              TensorRT: the serialized engine; native: our own plan (`engine.plan`: cubins,
                                launch list, both endpoints' packed weights), run by engine._C
        model.safetensors, gan.safetensors
                                Triton only (instead of the ONNX graph): the network and its GAN endpoint, packed
                                for the fused kernels when the engine is loaded
        weights_psnr.safetensors, weights_gan.safetensors
                                with --gan-weights: both endpoints, per graph initializer (its shape and type),
                                what `Engine.set_alpha` blends

`load(dir)` checks the manifest before anything else (format version, every field's type and range, files present,
sizes and checksums, the GPU architecture and TensorRT version a plan was built for) and says precisely what does
not match. Nothing read from a manifest picks a path: an engine's files are the plain names above, inside its
folder, regular files (no links, devices or pipes), each checked for its size before it is read.

`write_engine` builds the folder beside its target under a temporary name and renames it into place, holding a lock
(`build_lock`) so that two builds into one folder never mix; it replaces only a folder that is one of our engines
(a manifest and its files, nothing else), and only when asked to (`overwrite`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
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

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt", "triton", "native")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
WEIGHTS_ENDPOINTS = ("weights_psnr.safetensors", "weights_gan.safetensors")
# The files each backend writes: (required, optional). Nothing else is ever read from an engine folder.
BACKEND_FILES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "onnxruntime": (frozenset({"model.onnx"}), frozenset(WEIGHTS_ENDPOINTS)),
    "tensorrt": (frozenset({"model.onnx", "model.plan"}), frozenset(WEIGHTS_ENDPOINTS)),
    "triton": (frozenset({"model.safetensors"}), frozenset({"gan.safetensors"})),
    "native": (frozenset({"model.plan"}), frozenset()),
}
ENGINE_FILES = frozenset().union(*(a | b for a, b in BACKEND_FILES.values()))
MAX_MANIFEST_BYTES = 1 << 20  # an rrdb23 INT8 Triton manifest (346 slice ranges) is about 20 kB
# Bounds of the manifest's numbers: far beyond any engine we build, and small enough that nothing derived from them
# (buffers, loops) can exhaust a machine.
MAX_SCALE, MAX_CHANNELS, MAX_TILE, MAX_BATCH = 16, 64, 8192, 1024
REQUIRED = ("format_version", "model", "scale", "in_channels", "out_channels", "multiple", "precision", "backend",
            "tile", "batch", "files")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GPU_ARCH = re.compile(r"sm_\d{2,3}a?")


class EngineError(ValueError):
    """An engine directory cannot be used; the message names the directory, what is wrong and what to do."""


REBUILD = "rebuild the engine with python -m engine.build"


# ---------------------------------------------------------------------------------------------------------
# reading files of a folder that may have been crafted


def _open_regular(path: Path, what: str) -> int:
    """A read-only descriptor of `path`, which must be a regular file itself (not a link, pipe, device or folder).
    Opened without following links and without blocking (a pipe cannot stall the caller)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise EngineError(f"{path.parent}: {path.name} is missing ({what}): {REBUILD}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise EngineError(f"{path.parent}: {path.name} is a symbolic link; an engine's files are plain files "
                              f"inside its folder: {REBUILD}") from None
        raise EngineError(f"{path.parent}: {path.name} cannot be read ({e.strerror}): check its permissions, or "
                          f"{REBUILD}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise EngineError(f"{path.parent}: {path.name} is not a regular file (a folder, pipe or device); an engine's "
                          f"files are plain files inside its folder: {REBUILD}")
    return fd


def _read_small(path: Path, limit: int, what: str) -> bytes:
    fd = _open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise EngineError(f"{path} has {size:,} bytes, more than any {what} ({limit:,}): {REBUILD}")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    while block := os.read(fd, 1 << 20):
        h.update(block)
    return h.hexdigest()


def sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from . import __version__

    versions = {"esrgan-engine": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__}
    try:
        import tensorrt

        if hasattr(tensorrt, "Builder"):
            versions["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return versions


# ---------------------------------------------------------------------------------------------------------
# the manifest


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def manifest_problems(manifest: Any) -> list[str]:
    """What is wrong with a parsed manifest (its fields' presence, types and ranges); empty when it is sound."""
    if not isinstance(manifest, dict):
        return ["it is not a JSON object"]
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        return [f"it lacks {', '.join(missing)}"]
    m = manifest
    problems = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            problems.append(text)

    need(_is_int(m["format_version"], FORMAT_VERSION, FORMAT_VERSION), f"format_version must be the integer "
         f"{FORMAT_VERSION}, got {m['format_version']!r:.20}")
    if not (isinstance(m["backend"], str) and m["backend"] in BACKENDS):  # the checks below depend on it
        return [*problems, f"backend {m['backend']!r:.40} is not one of {', '.join(BACKENDS)}"]
    need(m["precision"] in PRECISIONS, f"precision {m['precision']!r:.20} is not one of {', '.join(PRECISIONS)}")
    need(m["precision"] != "bf16" or m["backend"] in ("triton", "native"), "bf16 engines are triton or native")
    model = m["model"]
    need(isinstance(model, dict) and isinstance(model.get("arch"), str) and isinstance(model.get("hparams"), dict)
         and isinstance(model.get("name"), (str, type(None))),
         "model must be an object with arch (text), hparams (an object) and name (text or null)")
    need(_is_int(m["scale"], 1, MAX_SCALE), f"scale must be an integer in [1, {MAX_SCALE}], got {m['scale']!r}")
    for key in ("in_channels", "out_channels"):
        need(_is_int(m[key], 1, MAX_CHANNELS), f"{key} must be an integer in [1, {MAX_CHANNELS}], got {m[key]!r}")
    need(_is_int(m["multiple"], 1, MAX_SCALE), f"multiple must be an integer in [1, {MAX_SCALE}], got "
         f"{m['multiple']!r}")
    need(_is_int(m["tile"], 1, MAX_TILE) and (not _is_int(m["multiple"], 1, MAX_SCALE) or m["tile"] % m["multiple"]
                                              == 0),
         f"tile must be an integer in [1, {MAX_TILE}] and a multiple of `multiple`, got {m['tile']!r}")
    need(_is_int(m["batch"], 1, MAX_BATCH), f"batch must be an integer in [1, {MAX_BATCH}], got {m['batch']!r}")
    files = m["files"]
    if not isinstance(files, dict):
        problems.append(f"files must be an object (file name → size and sha256), got {type(files).__name__}")
    else:
        required, optional = BACKEND_FILES[m["backend"]]
        for name, entry in files.items():
            if name not in required | optional:
                # the name is only quoted, never opened: nothing reveals what exists outside the folder
                problems.append(f"files lists {name!r}, which is not one of the files of {m['backend']} engines "
                                f"({', '.join(sorted(required | optional))})")
            elif not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                      and _SHA256.fullmatch(entry["sha256"]) and _is_int(entry.get("bytes"), 0, 1 << 50)):
                problems.append(f"files[{name!r}] must hold sha256 (64 hex digits) and bytes (an integer)")
        lacking = sorted(required - set(files))
        if lacking:
            problems.append(f"files lacks {', '.join(lacking)}")
        ends = [n for n in WEIGHTS_ENDPOINTS if n in files]
        need(len(ends) in (0, 2), "files lists one of weights_psnr.safetensors and weights_gan.safetensors "
             "without the other")
    alpha = m.get("alpha", {"value": 0.0})
    if not (isinstance(alpha, dict) and (alpha.get("value") is None or (_is_number(alpha.get("value"))
                                                                         and 0.0 <= alpha["value"] <= 1.0))):
        problems.append(f"alpha must be an object whose value is a number in [0, 1], got {alpha!r:.80}")
    elif isinstance(files, dict):
        has_gan = "gan" in alpha
        gan_file = {"onnxruntime": "weights_gan.safetensors", "tensorrt": "weights_gan.safetensors",
                    "triton": "gan.safetensors"}.get(m["backend"])
        if gan_file is not None:
            need(has_gan == (gan_file in files), f"alpha {'names' if has_gan else 'lacks'} a GAN endpoint but "
                 f"files {'lacks' if has_gan else 'lists'} {gan_file}")
    if "bytes_per_pixel" in m:
        need(_is_number(m["bytes_per_pixel"]) and m["bytes_per_pixel"] >= 0,
             f"bytes_per_pixel must be a number ≥ 0, got {m['bytes_per_pixel']!r}")
    if m["backend"] in ("tensorrt", "native"):
        need(isinstance(m.get("gpu_arch"), str) and bool(_GPU_ARCH.fullmatch(m["gpu_arch"])),
             f"gpu_arch must be like 'sm_90', got {m.get('gpu_arch')!r}")
    if "versions" in m:
        need(isinstance(m["versions"], dict) and all(isinstance(v, str) for v in m["versions"].values()),
             "versions must be an object of version strings")
    if m["precision"] == "int8" and m["backend"] == "triton":
        ranges = m.get("int8", {}).get("slice_ranges") if isinstance(m.get("int8"), dict) else None
        need(isinstance(ranges, dict) and all(_is_number(v) and v >= 0 for v in ranges.values()),
             "int8.slice_ranges must be an object of numbers ≥ 0 (the calibrated activation ranges)")
    return problems


def read_manifest(directory: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """The validated manifest of an engine directory (format version, fields, files: sizes and checksums)."""
    d = Path(directory)
    path = d / MANIFEST
    if not d.is_dir():
        raise EngineError(f"{d}: no such engine directory; build one with python -m engine.build")
    if not os.path.lexists(path):
        raise EngineError(f"{d} has no {MANIFEST}: not an engine directory (build one with python -m engine.build)")
    data = _read_small(path, MAX_MANIFEST_BYTES, "engine manifest")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise EngineError(f"{path} is not valid JSON ({e}): {REBUILD}") from None
    if isinstance(manifest, dict) and _is_int(manifest.get("format_version"), 0, 1 << 31) and \
            manifest["format_version"] != FORMAT_VERSION:
        raise EngineError(f"{path}: engine format version {manifest['format_version']!r:.20}, this esrgan-engine "
                          f"reads version {FORMAT_VERSION}: rebuild the engine with this version's "
                          f"python -m engine.build")
    problems = manifest_problems(manifest)
    if problems:
        raise EngineError(f"{path} is not a sound engine manifest: {'; '.join(problems)}. {REBUILD[0].upper()}"
                          f"{REBUILD[1:]}")
    if verify:
        for name, entry in manifest["files"].items():
            verify_file(d, name, entry)
    return manifest


def verify_file(d: Path, name: str, entry: Mapping[str, Any]) -> None:
    """Check one file of engine folder `d` (a name that `manifest_problems` accepted): a regular file of the
    manifest's size (checked before reading it) and checksum."""
    fd = _open_regular(d / name, f"listed in {MANIFEST}")
    try:
        size = os.fstat(fd).st_size
        if size != entry["bytes"]:
            raise EngineError(f"{d}: {name} has {size:,} bytes, {MANIFEST} says {entry['bytes']:,}: the file changed "
                              f"after the build; {REBUILD}")
        digest = _sha256_fd(fd)
    finally:
        os.close(fd)
    if digest != entry["sha256"]:
        raise EngineError(f"{d}: {name} does not match its checksum in {MANIFEST} (sha256 {digest[:12]}… "
                          f"≠ {entry['sha256'][:12]}…): the file changed after the build; {REBUILD}")


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
        manifest = json.loads(_read_small(folder / MANIFEST, MAX_MANIFEST_BYTES, "engine manifest").decode("utf-8"))
    except (EngineError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return f"its {MANIFEST} is not an engine manifest"
    if not isinstance(manifest, dict) or not _is_int(manifest.get("format_version"), 1, FORMAT_VERSION) or \
            any(k not in manifest for k in REQUIRED) or not isinstance(manifest["files"], dict):
        return f"its {MANIFEST} is not an engine manifest"
    listed = set(manifest["files"])
    if not listed <= ENGINE_FILES:
        return f"its {MANIFEST} lists files an engine does not have ({', '.join(sorted(listed - ENGINE_FILES))})"
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
    ours = ENGINE_FILES | {MANIFEST}
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
    unknown = set(write_files) - ENGINE_FILES
    if unknown:
        raise ValueError(f"engine files must be among {sorted(ENGINE_FILES)}, got {sorted(unknown)}")
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


def _check_plan_target(d: Path, manifest: dict[str, Any]) -> None:
    """A TensorRT plan runs only on the GPU architecture and TensorRT version it was built with."""
    want_arch = manifest.get("gpu_arch")
    if not torch.cuda.is_available():
        raise EngineError(f"{d} is a TensorRT engine for {want_arch}; this machine has no CUDA device: build an "
                          f"ONNX Runtime engine (--backend onnxruntime) or run it on the GPU it was built for")
    major, minor = torch.cuda.get_device_capability()
    have_arch = f"sm_{major}{minor}"
    if want_arch != have_arch:
        raise EngineError(f"{d} was built for {want_arch}, this GPU ({torch.cuda.get_device_name()}) is "
                          f"{have_arch}: rebuild the engine on this GPU")
    want_trt, have_trt = manifest.get("versions", {}).get("tensorrt"), library_versions().get("tensorrt")
    if have_trt is not None and want_trt != have_trt:
        raise EngineError(f"{d} was built with TensorRT {want_trt}, this machine has {have_trt}: rebuild the engine")


def _native_backend(d: Path, manifest: dict[str, Any], alpha: float | None, device: torch.device) -> Any:
    """The C++ runtime over model.plan; without a GPU, an error that says what can run the plan instead."""
    from ._ext import load_C
    from .native import NativeBackend

    C = load_C()
    if not C.built_with_cuda() or C.cuda_device_count() == 0:
        why = "engine._C was built without CUDA" if not C.built_with_cuda() else "this machine has no CUDA device"
        raise EngineError(f"{d} is a native plan for {manifest.get('gpu_arch')}; {why}. Run it on that GPU, or "
                          f"interpret it on the CPU with engine.plan.ReferenceExecutor('{d / 'model.plan'}') "
                          f"(slow; TRITON_INTERPRET=1), or build --backend onnxruntime for the CPU")
    return NativeBackend(d / "model.plan", device=device.index or 0, alpha=alpha)


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _device(d: Path, backend: str, device: str | torch.device | None) -> torch.device:
    """The device an engine of `backend` runs on: `device` when that can work, else a ValueError that says why."""
    natural = {"onnxruntime": "cpu", "tensorrt": "cuda", "native": "cuda",
               "triton": "cuda" if torch.cuda.is_available() else "cpu"}[backend]
    if device is None:
        device = natural
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device: give 'cpu', 'cuda' or 'cuda:N'") from None
    if backend == "onnxruntime" and dev.type != "cpu":
        raise ValueError(f"device={device!r}: {d} is an ONNX Runtime engine, which runs on the CPU here; leave "
                         f"device unset, or build a GPU engine (--backend tensorrt, native or triton)")
    if backend in ("tensorrt", "native") and dev.type != "cuda":
        raise ValueError(f"device={device!r}: {d} is a {backend} engine, which runs on a CUDA GPU; leave device "
                         f"unset, or build --backend onnxruntime for the CPU")
    if backend == "triton" and dev.type not in ("cuda", "cpu"):
        raise ValueError(f"device={device!r}: a triton engine runs on 'cuda' (or 'cpu' under TRITON_INTERPRET=1)")
    if backend == "triton" and dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise EngineError(f"{d} is a triton engine: its kernels run on a CUDA GPU, and " + (
            "device='cpu' was asked for" if torch.cuda.is_available() else "this machine has none") +
            " (TRITON_INTERPRET=1 before anything imports triton runs them, slowly, on the CPU); or build "
            "--backend onnxruntime for the CPU")
    if dev.type == "cuda" and torch.cuda.is_available() and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    return dev


class Engine:
    """A loaded engine: a `Backend` for `engine.infer` (scale, channels, tile and batch from the manifest) whose
    `set_alpha(α)` refits the weights in place (ONNX Runtime: initializer rebinding; TensorRT: the Refitter)."""

    def __init__(self, directory: Path, manifest: dict[str, Any], backend: Any) -> None:
        self.directory, self.manifest, self.backend = directory, manifest, backend
        self.scale, self.in_channels, self.out_channels = manifest["scale"], manifest["in_channels"], \
            manifest["out_channels"]
        self.multiple, self.tile, self.batch = manifest["multiple"], manifest["tile"], manifest["batch"]
        self.device = backend.device
        self.last_refit_seconds: float | None = None
        if callable(getattr(backend, "upscale_planes", None)):  # a native plan tiles whole images in engine._C
            self.upscale_planes = backend.upscale_planes

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
        seconds = float(self.backend.set_alpha(alpha))
        self.last_refit_seconds = seconds
        return seconds

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Engine({str(self.directory)!r}, {m['model'].get('name') or m['model']['arch']}, ×{self.scale}, "
                f"{m['precision']}, {m['backend']})")


@contextmanager
def _reading(d: Path, name: str) -> Iterator[None]:
    """Turn a failure to parse file `name` of engine folder `d` into one EngineError naming both. The file passed its
    checksum, so it is what the build wrote, or it was crafted together with the manifest."""
    try:
        yield
    except (EngineError, MemoryError):
        raise
    except Exception as e:
        from .trt import TensorRTUnavailable

        if isinstance(e, TensorRTUnavailable):
            raise
        raise EngineError(f"{d}: {name} cannot be loaded ({type(e).__name__}: {e}): {REBUILD}") from e


def _check_self_contained(d: Path) -> None:
    """model.onnx must hold all its tensors: a graph may name files for its tensors' data, which ONNX Runtime would
    read (it refuses paths outside the folder, but its message tells what exists there)."""
    import onnx

    from export.onnx import external_tensors

    with _reading(d, "model.onnx"):
        outside = external_tensors(onnx.load(str(d / "model.onnx"), load_external_data=False))
    if outside:
        raise EngineError(f"{d}: model.onnx keeps {len(outside)} tensors ({', '.join(outside[:3])}) in other files; "
                          f"an engine's graph holds all of its own: {REBUILD}")


def _backend(d: Path, manifest: dict[str, Any], threads: int, device: torch.device) -> Any:
    files = manifest["files"]
    alpha = manifest.get("alpha", {}).get("value")
    common = dict(scale=manifest["scale"], in_channels=manifest["in_channels"],
                  out_channels=manifest["out_channels"], multiple=manifest["multiple"])
    endpoints: dict[str, Any] = {}
    if "weights_gan.safetensors" in files:
        with _reading(d, "weights_psnr.safetensors"):
            psnr = _read_weights(d / "weights_psnr.safetensors")
        with _reading(d, "weights_gan.safetensors"):
            gan_arrays = _read_weights(d / "weights_gan.safetensors")
        endpoints = dict(weights_psnr=psnr, weights_gan=gan_arrays)
    kind = manifest["backend"]
    if kind == "triton":
        from . import models
        from .fused import TritonBackend

        with _reading(d, "model.safetensors"):
            net, _ = models.load(d / "model.safetensors")
        gan = None
        if "gan.safetensors" in files:
            with _reading(d, "gan.safetensors"):
                gan = models.load(d / "gan.safetensors")[0]
                models.registry.require_same_network(net, gan)
        try:
            backend: Any = TritonBackend(net, device=device, dtype=manifest["precision"], gan_net=gan,
                                         int8_ranges=manifest.get("int8", {}).get("slice_ranges"))
        except ValueError as e:  # the manifest's precision or INT8 ranges do not fit the network
            raise EngineError(f"{d}: {e}: {REBUILD}") from e
        if gan is not None and alpha:
            backend.set_alpha(alpha)
        return backend
    if kind == "native":
        with _reading(d, "model.plan"):
            return _native_backend(d, manifest, alpha, device)
    if kind == "onnxruntime":
        from .ort import OrtBackend

        _check_self_contained(d)
        with _reading(d, "model.onnx" + (" and its endpoint weights" if endpoints else "")):
            return OrtBackend(d / "model.onnx", threads=threads,
                              bytes_per_pixel=float(manifest.get("bytes_per_pixel", 0.0)), alpha=alpha, **common,
                              **endpoints)
    _check_plan_target(d, manifest)
    from .trt import TensorRTBackend

    with _reading(d, "model.plan" + (" and its endpoint weights" if endpoints else "")):
        return TensorRTBackend(d / "model.plan", device=device, alpha=alpha, **common, **endpoints)


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

    `threads`: ONNX Runtime's intra-op threads (0: one per core; more than this process's CPUs is clamped to them
    with a warning). `device`: where the engine runs (default: its backend's device, CPU for ONNX Runtime, the first
    GPU otherwise); a device its backend cannot use is refused before anything is loaded."""
    from .ort import check_threads

    d = Path(directory)
    threads = check_threads(threads)
    manifest = read_manifest(d)
    dev = _device(d, manifest["backend"], device)
    backend = _backend(d, manifest, threads, dev)
    _check_backend(d, manifest, backend)
    return Engine(d, manifest, backend)
