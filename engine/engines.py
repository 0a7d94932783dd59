"""Engine directories: what `python -m engine.build` writes and `engine.load` runs.

    engines/rrdb23-fp16-tensorrt/
        manifest.json           format version, model, scale, precision, backend, tile/profile, alpha and both
                                endpoint checksums, library versions, GPU arch (plans), sha256 of every file
        model.onnx              the graph (fp32, fp16 or Q/DQ INT8) with the weights at the build's alpha
        model.plan              TensorRT: the serialized engine; native: our own plan (`engine.plan`: cubins,
                                launch list, both endpoints' packed weights), run by engine._C
        model.safetensors, gan.safetensors
                                Triton only (instead of the ONNX graph): the network and its GAN endpoint, packed
                                for the fused kernels when the engine is loaded
        weights_psnr.safetensors, weights_gan.safetensors
                                with --gan-weights: both endpoints, per graph initializer (its shape and type),
                                what `Engine.set_alpha` blends

`load(dir)` checks the manifest before anything else (format version, files present, checksums, the GPU
architecture and TensorRT version a plan was built for) and says precisely what does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import dir_mode

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKENDS = ("onnxruntime", "tensorrt", "triton", "native")
PRECISIONS = ("fp32", "fp16", "int8")


class EngineError(ValueError):
    """An engine directory cannot be used; the message names the directory, what is wrong and what to do."""


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


def write_engine(directory: str | os.PathLike[str], manifest: dict[str, Any],
                 write_files: Mapping[str, Any]) -> Path:
    """Create the engine directory atomically: every file is written into a temporary directory beside it
    (`write_files[name](path)` writes one), checksummed into the manifest, and the directory is renamed into
    place; an existing engine there is replaced only once the new one is complete."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not (target / MANIFEST).is_file():
        raise EngineError(f"{target} exists and is not an engine directory (no {MANIFEST}): choose another -o")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        files = {}
        for name, write in write_files.items():
            write(str(tmp / name))
            files[name] = {"sha256": sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest = {"format_version": FORMAT_VERSION, **manifest, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, dir_mode())  # mkdtemp makes it private (0o700)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


REQUIRED = ("format_version", "model", "scale", "in_channels", "out_channels", "multiple", "precision", "backend",
            "tile", "batch", "files")


def read_manifest(directory: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """The validated manifest of an engine directory (format version, required fields, files and checksums)."""
    d = Path(directory)
    path = d / MANIFEST
    if not d.is_dir():
        raise EngineError(f"{d}: no such engine directory; build one with python -m engine.build")
    if not path.is_file():
        raise EngineError(f"{d} has no {MANIFEST}: not an engine directory (build one with python -m engine.build)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineError(f"{path} is not valid JSON ({e}): rebuild the engine") from None
    if not isinstance(manifest, dict):
        raise EngineError(f"{path} is not a JSON object: rebuild the engine")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineError(f"{path}: engine format version {version!r}, this esrgan-engine reads version "
                          f"{FORMAT_VERSION}: rebuild the engine with this version's python -m engine.build")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise EngineError(f"{path} lacks {', '.join(missing)}: rebuild the engine")
    if manifest["backend"] not in BACKENDS:
        raise EngineError(f"{path}: unknown backend {manifest['backend']!r} (known: {', '.join(BACKENDS)})")
    if verify:
        for name, entry in manifest["files"].items():
            f = d / name
            if not f.is_file():
                raise EngineError(f"{d}: {name} is missing (listed in {MANIFEST}): rebuild the engine")
            digest = sha256(f)
            if digest != entry["sha256"]:
                raise EngineError(f"{d}: {name} does not match its checksum in {MANIFEST} (sha256 {digest[:12]}… "
                                  f"≠ {entry['sha256'][:12]}…): the file changed after the build; rebuild the engine")
    return manifest


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


def _native_backend(d: Path, manifest: dict[str, Any], alpha: float | None) -> Any:
    """The C++ runtime over model.plan; without a GPU, an error that says what can run the plan instead."""
    from ._ext import load_C
    from .native import NativeBackend

    C = load_C()
    if not C.built_with_cuda() or C.cuda_device_count() == 0:
        why = "engine._C was built without CUDA" if not C.built_with_cuda() else "this machine has no CUDA device"
        raise EngineError(f"{d} is a native plan for {manifest.get('gpu_arch')}; {why}. Run it on that GPU, or "
                          f"interpret it on the CPU with engine.plan.ReferenceExecutor('{d / 'model.plan'}') "
                          f"(slow; TRITON_INTERPRET=1), or build --backend onnxruntime for the CPU")
    return NativeBackend(d / "model.plan", alpha=alpha)


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


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


def load(directory: str | os.PathLike[str], *, threads: int = 0, device: str = "cuda") -> Engine:
    """Load an engine directory written by `python -m engine.build`, after validating its manifest."""
    d = Path(directory)
    manifest = read_manifest(d)
    files = manifest["files"]
    endpoints: dict[str, Any] = {}
    if "weights_gan.safetensors" in files:
        endpoints = dict(weights_psnr=_read_weights(d / "weights_psnr.safetensors"),
                         weights_gan=_read_weights(d / "weights_gan.safetensors"))
    alpha = manifest.get("alpha", {}).get("value")
    common = dict(scale=manifest["scale"], in_channels=manifest["in_channels"],
                  out_channels=manifest["out_channels"], multiple=manifest["multiple"])
    if manifest["backend"] == "triton":
        from . import models
        from .fused import TritonBackend

        net, _ = models.load(d / "model.safetensors")
        gan = models.load(d / "gan.safetensors")[0] if "gan.safetensors" in files else None
        backend: Any = TritonBackend(net, dtype=manifest["precision"], gan_net=gan,
                                     int8_ranges=manifest.get("int8", {}).get("slice_ranges"))
        if gan is not None and alpha:
            backend.set_alpha(alpha)
    elif manifest["backend"] == "native":
        backend = _native_backend(d, manifest, alpha)
    elif manifest["backend"] == "onnxruntime":
        from .ort import OrtBackend

        backend = OrtBackend(d / "model.onnx", threads=threads,
                                  bytes_per_pixel=float(manifest.get("bytes_per_pixel", 0.0)),
                                  alpha=alpha, **common, **endpoints)
    else:
        _check_plan_target(d, manifest)
        from .trt import TensorRTBackend

        backend = TensorRTBackend(d / "model.plan", device=device, alpha=alpha, **common, **endpoints)
    return Engine(d, manifest, backend)
