"""The backend registry: every runtime a network runs on declares itself here, once.

    register(BackendInfo(name="onnxruntime", label="ONNX Runtime", precisions=("fp32", "fp16", "int8"),
                         devices=("cpu",), unavailable=..., build=..., load=..., from_network=..., bench=(...)))

`engine.build` (its --backend choices and the engine folder it writes), `engine.load` (the backend a manifest
names, the files it may hold), `engine.upscale` (--backend for a checkpoint) and `bench/run.py` (its rows) read
this table and nothing else: adding a backend is one module that calls `register`, plus its name in `BUILTIN`
when it ships with the package.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..machine import Unavailable
from ..models import SRNet

# The backends of this package: name → the module that registers it, imported when the registry is first read; in
# the order they are listed (engine.build --help, bench rows). Backends registered from elsewhere follow them.
BUILTIN = {"torch": "engine.backends.torch_eager", "onnxruntime": "engine.backends.ort",
           "tensorrt": "engine.backends.trt", "triton": "engine.backends.fused", "native": "engine.backends.native",
           "ncnn": "engine.backends.ncnn_cpu"}


@runtime_checkable
class Backend(Protocol):
    """What `engine.infer` needs from a runtime: run a batch of tiles.

    `run` takes float32 (N, in_channels, h, w) in [0, 1] on `device`, with h and w multiples of `multiple`, and
    returns float32 (N, out_channels, h·scale, w·scale).
    """

    scale: int
    in_channels: int
    out_channels: int
    multiple: int
    device: torch.device

    def run(self, batch: torch.Tensor) -> torch.Tensor: ...

    def bytes_per_pixel(self) -> float: ...


class EngineError(ValueError):
    """An engine directory cannot be used; the message names the folder, what is wrong and what to do."""


REBUILD = "rebuild the engine with python -m engine.build"
PROBE_SIDE = 64  # side of the probe a new engine is verified on


@contextmanager
def reading(folder: Path, name: str) -> Iterator[None]:
    """Turn a failure to parse file `name` of engine folder `folder` into one EngineError naming both. The file
    passed its checksum, so it is what the build wrote, or it was crafted together with the manifest. A missing
    library or device (`Unavailable`) passes through: it says what to install."""
    try:
        yield
    except (EngineError, Unavailable, MemoryError):
        raise
    except Exception as e:
        raise EngineError(f"{folder}: {name} cannot be loaded ({type(e).__name__}: {e}): {REBUILD}") from e


@dataclass(frozen=True)
class BuildRequest:
    """What `engine.build` hands a backend's `build`: the network and every build option."""

    net: SRNet  # the PSNR endpoint, eval mode, float32, on the CPU
    gan: SRNet | None  # its GAN fine-tune (alpha 1), or None
    entries: Mapping[str, Any]  # the manifest's "model" and "alpha" entries (alpha["value"]: where it starts)
    precision: str
    tile: int  # input tile side the engine is built for
    batch: int  # tiles per call
    out: Path  # the engine folder (write_engine writes it atomically from `Built.write`)
    calibration: Callable[[], list[np.ndarray]] | None = None  # INT8: loads the calibration images
    calib_method: str | None = None  # INT8 activation range method (None: the default)
    calib_source: str = ""  # where the calibration images come from, for messages
    options: Mapping[str, Any] = field(default_factory=dict)  # the backend's own options (`BackendInfo.options`)

    @property
    def alpha(self) -> float:
        return float(self.entries["alpha"]["value"])

    def calibrate(self, what: str) -> tuple[str, list[np.ndarray], dict[str, Any]]:
        """INT8: (activation range method, the calibration images, the manifest's "int8" entry so far), once it has
        said what it calibrates (`what`: "INT8", "the INT8 trunk, one range per RDB slice")."""
        from export.quantize import DEFAULT_METHOD

        if self.calibration is None:
            raise ValueError("INT8 needs calibration images (--calib DIR)")
        method = self.calib_method or DEFAULT_METHOD
        images = self.calibration()
        print(f"calibrating {what} ({method}) on {len(images)} images of {self.calib_source}"
              + (" at alpha 0, 0.5 and 1" if self.gan is not None else ""))
        return method, images, {"method": method, "calibration_images": len(images), "alpha_safe": self.gan is not None}

    def image_probe(self, image: np.ndarray) -> torch.Tensor | None:
        """A central crop of a calibration image, (1, channels, side, side) float32 in [0, 1]: what INT8 ranges were
        calibrated for (pure noise lies outside them), or None when the image is smaller than the network's input
        multiple."""
        from export.quantize import image_planes

        multiple = self.net.input_multiple
        planes = image_planes(image, self.net.in_channels)
        _, h, w = planes.shape
        side = min(PROBE_SIDE, h, w, self.tile) // multiple * multiple
        if side < multiple:
            return None
        top, left = (h - side) // 2, (w - side) // 2
        return torch.from_numpy(np.ascontiguousarray(planes[None, :, top:top + side, left:left + side]))

    @property
    def blended(self) -> SRNet:
        """The network the engine starts as: `net` without GAN weights or at alpha 0, else the blend."""
        from ..models import interpolated

        return self.net if self.gan is None or self.alpha == 0.0 else interpolated(self.net, self.gan, self.alpha)


@dataclass
class Built:
    """A backend's part of a new engine folder."""

    manifest: dict[str, Any]  # the backend's own manifest fields (engine.build adds the common ones)
    write: dict[str, Callable[[str], None]]  # file name → writes that file at the path it is given
    probe: torch.Tensor | None = None  # (1, C, h, w) input to verify on (INT8: a crop of a calibration image)


@dataclass(frozen=True)
class LoadRequest:
    """What `engine.load` hands a backend's `load`, after the manifest and every file's checksum passed."""

    folder: Path
    manifest: dict[str, Any]
    device: torch.device
    threads: int  # host threads (0: one per core)
    endpoints: Mapping[str, Mapping[str, np.ndarray]]  # {"weights_psnr": …, "weights_gan": …} when built with both

    @property
    def alpha(self) -> float | None:
        return self.manifest.get("alpha", {}).get("value")


@dataclass(frozen=True)
class BenchRow:
    """One row of bench/run.py's table: the backend at one precision (and options)."""

    key: str  # "torch-fp16": the row's name in results
    label: str  # "PyTorch eager fp16"
    precision: str | None  # None: fp16 on a GPU, fp32 on the CPU
    options: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments of `from_network`
    unavailable: Callable[[torch.device], str | None] | None = None  # why this row cannot run on that device


def _any_network(net: SRNet, precision: str) -> str | None:
    return None


def _no_reason(*args: Any) -> str | None:
    return None


def _no_problems(manifest: Mapping[str, Any]) -> list[str]:
    return []


def gpu_arch_problems(manifest: Mapping[str, Any]) -> list[str]:
    """The manifest check of an engine built for one GPU architecture."""
    arch = manifest.get("gpu_arch")
    if isinstance(arch, str) and re.fullmatch(r"sm_\d{2,3}a?", arch):
        return []
    return [f"gpu_arch must be like 'sm_90', got {arch!r:.40}"]


@dataclass(frozen=True)
class BackendInfo:
    """A backend, declared once. Everything here is read lazily: importing a backend's module never imports its
    library (TensorRT, Triton, ONNX Runtime)."""

    name: str  # --backend NAME, the manifest's "backend"
    label: str  # "ONNX Runtime", for messages and tables
    precisions: tuple[str, ...]  # what it runs; the first is its default
    devices: tuple[str, ...]  # device types it runs on ("cpu", "cuda"), its natural one first
    unavailable: Callable[[], str | None]  # why it cannot run on this machine (library, GPU, build), or None
    network: Callable[[SRNet, str], str | None] = _any_network  # why it cannot run this network at this precision
    files: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())  # engine files: required, optional
    gan_file: str | None = None  # the file an engine built with a GAN endpoint has (None: alpha lives elsewhere)
    check_manifest: Callable[[Mapping[str, Any]], list[str]] = _no_problems  # problems of its own manifest fields
    cannot_build: Callable[[], str | None] = _no_reason  # why engine.build cannot build it here (library missing)
    build: Callable[[BuildRequest], Built] | None = None  # makes an engine folder's files (engine.build)
    load: Callable[[LoadRequest], Backend] | None = None  # runs an engine folder (engine.load)
    from_network: Callable[..., Backend] | None = None  # runs a network: (net, *, gan_net, precision, device,
    #                                                       threads, **options) (engine.upscale, bench/run.py)
    unverifiable: Callable[[Mapping[str, Any]], str | None] = _no_reason  # why a new engine cannot run here
    options: tuple[str, ...] = ()  # engine.build options only this backend takes ("arch", "timing_cache")
    auto: int | None = None  # engine.build --backend auto takes the available backend of lowest rank
    # engine.upscale --backend auto at fp32 on the CPU takes, of the available backends that run the network, the
    # one this ranks lowest for it (None: never); the ranks follow measurements (docs/onnxruntime.md#the-cpu-default)
    cpu_rank: Callable[[SRNet], int | None] | None = None
    one_shape: bool = False  # an engine holds one input shape (bench builds it square)
    tolerance: Mapping[str, float] = field(default_factory=dict)  # verification limits that differ, by precision
    bench: tuple[BenchRow, ...] = ()

    @property
    def needs_gpu(self) -> bool:
        return "cpu" not in self.devices

    def natural_device(self) -> str:
        """The device type it runs on by default here: its first one that this machine has."""
        for kind in self.devices:
            if kind == "cpu" or torch.cuda.is_available():
                return kind
        return self.devices[0]


_REGISTRY: dict[str, BackendInfo] = {}
_loaded = False


def register(info: BackendInfo) -> BackendInfo:
    """Add a backend to the registry; a name registers once. Returns `info`."""
    if info.name in _REGISTRY:
        raise ValueError(f"backend {info.name!r} is already registered")
    if not info.precisions or not info.devices:
        raise ValueError(f"backend {info.name!r} must declare its precisions and devices")
    _REGISTRY[info.name] = info
    return info


def unregister(name: str) -> None:
    """Remove a backend (tests that register a toy one)."""
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN.values():
            importlib.import_module(module)


def backends() -> list[BackendInfo]:
    """Every registered backend: the built-in ones in `BUILTIN`'s order, then the others in registration order."""
    _load_builtin()
    rank = {name: i for i, name in enumerate(BUILTIN)}
    return sorted(_REGISTRY.values(), key=lambda b: rank.get(b.name, len(BUILTIN)))


def names(where: Callable[[BackendInfo], Any] = lambda b: True) -> list[str]:
    """Names of the registered backends for which `where(backend)` is true."""
    return [b.name for b in backends() if where(b)]


def cpu_defaults(net: SRNet, precision: str = "fp32") -> list[BackendInfo]:
    """The backends `engine.upscale --backend auto` may run `net` with on the CPU, best first: those with a
    `cpu_rank` for it that are available here and run `net` at `precision`, by rank."""
    ranked = sorted((rank, i, b) for i, b in enumerate(backends())
                    if b.cpu_rank is not None and b.from_network is not None and (rank := b.cpu_rank(net)) is not None)
    return [b for _, _, b in ranked if precision in b.precisions and "cpu" in b.devices
            and b.unavailable() is None and b.network(net, precision) is None]


def get(name: str) -> BackendInfo:
    """The backend registered as `name`; ValueError listing the registered ones."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; registered: {', '.join(names())}")
    return _REGISTRY[name]
