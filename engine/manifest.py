"""Engine manifests: the `manifest.json` of an engine folder, read and checked before anything else.

    engines/rrdb23-fp16-tensorrt/
        manifest.json           format version, model, scale, precision, backend, tile/profile, alpha and both
                                endpoint checksums, library versions, GPU arch (plans), size and sha256 of every file
        model.onnx              the graph (fp32, fp16 or Q/DQ INT8) with the weights at the build's alpha
        model.plan              TensorRT: the serialized engine; native: our own plan (`kernels.plan`: cubins,
                                launch list, both endpoints' packed weights), run by engine._C
        model.safetensors, gan.safetensors
                                Triton only (instead of the ONNX graph): the network and its GAN endpoint, packed
                                for the fused kernels when the engine is loaded
        weights_psnr.safetensors, weights_gan.safetensors
                                with --gan-weights: both endpoints, per graph initializer (its shape and type),
                                what `Engine.set_alpha` blends

`read_manifest(dir)` checks the format version, every field's type and range, the files the backend registry
allows for the engine's backend (present, regular, their sizes and checksums), and says precisely what does not
match. Nothing read from a manifest picks a path: an engine's files are the plain names its backend declares,
inside its folder, regular files (no links, devices or pipes), each checked for its size before it is read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .backends.registry import REBUILD, EngineError, backends, get

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS_ENDPOINTS = ("weights_psnr.safetensors", "weights_gan.safetensors")
MAX_MANIFEST_BYTES = 1 << 20  # an rrdb23 INT8 Triton manifest (346 slice ranges) is about 20 kB
# Bounds of the manifest's numbers: far beyond any engine we build, and small enough that nothing derived from them
# (buffers, loops) can exhaust a machine.
MAX_SCALE, MAX_CHANNELS, MAX_TILE, MAX_BATCH = 16, 64, 8192, 1024
REQUIRED = ("format_version", "model", "scale", "in_channels", "out_channels", "multiple", "precision", "backend",
            "tile", "batch", "files")
_SHA256 = re.compile(r"[0-9a-f]{64}")




def engine_files() -> frozenset[str]:
    """Every file name an engine folder of any registered backend may hold (besides its manifest). Nothing else is
    ever read from an engine folder."""
    names: frozenset[str] = frozenset()
    for backend in backends():
        required, optional = backend.files
        names |= required | optional
    return names


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


def read_small(path: Path, limit: int, what: str) -> bytes:
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


def is_int(value: Any, lo: int, hi: int) -> bool:
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

    need(is_int(m["format_version"], FORMAT_VERSION, FORMAT_VERSION), f"format_version must be the integer "
         f"{FORMAT_VERSION}, got {m['format_version']!r:.20}")
    engines = [b.name for b in backends() if b.load is not None]
    if not (isinstance(m["backend"], str) and m["backend"] in engines):  # the checks below depend on it
        return [*problems, f"backend {m['backend']!r:.40} is not one of {', '.join(engines)}"]
    backend = get(m["backend"])
    need(m["precision"] in backend.precisions, f"precision {m['precision']!r:.20} is not one of "
         f"{', '.join(backend.precisions)} ({backend.label} engines)")
    model = m["model"]
    need(isinstance(model, dict) and isinstance(model.get("arch"), str) and isinstance(model.get("hparams"), dict)
         and isinstance(model.get("name"), (str, type(None))),
         "model must be an object with arch (text), hparams (an object) and name (text or null)")
    need(is_int(m["scale"], 1, MAX_SCALE), f"scale must be an integer in [1, {MAX_SCALE}], got {m['scale']!r}")
    for key in ("in_channels", "out_channels"):
        need(is_int(m[key], 1, MAX_CHANNELS), f"{key} must be an integer in [1, {MAX_CHANNELS}], got {m[key]!r}")
    need(is_int(m["multiple"], 1, MAX_SCALE), f"multiple must be an integer in [1, {MAX_SCALE}], got "
         f"{m['multiple']!r}")
    need(is_int(m["tile"], 1, MAX_TILE) and (not is_int(m["multiple"], 1, MAX_SCALE) or m["tile"] % m["multiple"]
                                              == 0),
         f"tile must be an integer in [1, {MAX_TILE}] and a multiple of `multiple`, got {m['tile']!r}")
    need(is_int(m["batch"], 1, MAX_BATCH), f"batch must be an integer in [1, {MAX_BATCH}], got {m['batch']!r}")
    files = m["files"]
    if not isinstance(files, dict):
        problems.append(f"files must be an object (file name → size and sha256), got {type(files).__name__}")
    else:
        required, optional = backend.files
        for name, entry in files.items():
            if name not in required | optional:
                # the name is only quoted, never opened: nothing reveals what exists outside the folder
                problems.append(f"files lists {name!r}, which is not one of the files of {m['backend']} engines "
                                f"({', '.join(sorted(required | optional))})")
            elif not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                      and _SHA256.fullmatch(entry["sha256"]) and is_int(entry.get("bytes"), 0, 1 << 50)):
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
        has_gan, gan_file = "gan" in alpha, backend.gan_file
        if gan_file is not None:
            need(has_gan == (gan_file in files), f"alpha {'names' if has_gan else 'lacks'} a GAN endpoint but "
                 f"files {'lacks' if has_gan else 'lists'} {gan_file}")
    if "bytes_per_pixel" in m:
        need(_is_number(m["bytes_per_pixel"]) and m["bytes_per_pixel"] >= 0,
             f"bytes_per_pixel must be a number ≥ 0, got {m['bytes_per_pixel']!r}")
    if "versions" in m:
        need(isinstance(m["versions"], dict) and all(isinstance(v, str) for v in m["versions"].values()),
             "versions must be an object of version strings")
    if m["precision"] in backend.precisions:
        problems += backend.check_manifest(m)
    return problems


def read_manifest(directory: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """The validated manifest of an engine directory (format version, fields, files: sizes and checksums)."""
    d = Path(directory)
    path = d / MANIFEST
    if not d.is_dir():
        raise EngineError(f"{d}: no such engine directory; build one with python -m engine.build")
    if not os.path.lexists(path):
        raise EngineError(f"{d} has no {MANIFEST}: not an engine directory (build one with python -m engine.build)")
    data = read_small(path, MAX_MANIFEST_BYTES, "engine manifest")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise EngineError(f"{path} is not valid JSON ({e}): {REBUILD}") from None
    if isinstance(manifest, dict) and is_int(manifest.get("format_version"), 0, 1 << 31) and \
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
