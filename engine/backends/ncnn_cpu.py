"""The ncnn backend: a network run by Tencent's ncnn on the CPU, the runtime realesrgan-ncnn-vulkan and Upscayl run.

    backend = NcnnBackend.from_network(net, threads=2)     # our network written as .param/.bin, loaded by ncnn
    out = engine.infer(backend, image)

It runs what `engine.models.ncnn.save_ncnn` writes (RRDBNet and SRVGGNetCompact), in float32, or with ncnn's own
fp16 storage and arithmetic options for "fp16" (where the CPU has them; elsewhere ncnn computes in float32). It is
`engine.upscale`'s CPU default for those networks where ncnn is installed (`cpu_rank`), and the CPU peer users would
pick, beside our other backends in `bench/run.py`. Alpha writes the blended weights to a new .bin and loads it into
a fresh ncnn.Net: ncnn has no refit.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import models
from ..machine import check_threads, usable_cpus
from .registry import BackendInfo, BenchRow, register

WRITABLE = ("rrdbnet", "srvgg")  # the architectures save_ncnn writes


def _ncnn() -> Any:
    try:
        import ncnn
    except ImportError as e:
        raise RuntimeError(f"the ncnn backend needs the ncnn package: pip install ncnn ({e})") from e
    return ncnn


class NcnnBackend:
    """A `Backend` over an ncnn model of `net` on the CPU (`threads`: 0 = one per usable CPU)."""

    def __init__(self, net: models.SRNet, *, gan_net: models.SRNet | None = None, precision: str = "fp32",
                 threads: int = 0) -> None:
        from ..models.ncnn import save_ncnn

        if net.arch not in WRITABLE:
            raise ValueError(f"the ncnn backend runs {', '.join(WRITABLE)}, not {net.arch}")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"the ncnn backend runs fp32 or fp16, not {precision}")
        if gan_net is not None:
            models.registry.require_same_network(net, gan_net)
        self._ncnn = _ncnn()
        self._save = save_ncnn
        self.net = net.eval()
        self.scale, self.in_channels, self.out_channels = net.scale, net.in_channels, net.out_channels
        self.multiple, self.device = net.input_multiple, torch.device("cpu")
        self.precision, self.threads = precision, check_threads(threads) or usable_cpus()
        self._gan = gan_net.eval() if gan_net is not None else None
        self.alpha: float | None = 0.0 if gan_net is not None else None
        self._folder = tempfile.TemporaryDirectory(prefix="esrgan-ncnn-")
        self._bpp: float | None = None
        self._session = self._load(self.net)

    def _load(self, net: models.SRNet) -> Any:
        param = Path(self._folder.name) / "model.param"
        self._save(net, param, fp16=self.precision == "fp16")
        session = self._ncnn.Net()
        half = self.precision == "fp16"
        for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic"):
            setattr(session.opt, option, half)
        session.opt.use_bf16_storage = False
        session.opt.use_vulkan_compute = False
        session.opt.num_threads = self.threads
        if session.load_param(str(param)) != 0 or session.load_model(str(param.with_suffix(".bin"))) != 0:
            raise RuntimeError(f"ncnn could not load the model written to {param}")
        return session

    def set_alpha(self, alpha: float) -> float:
        """Write θ = (1 − alpha)·θ_psnr + alpha·θ_gan and load it; returns the seconds it took."""
        if self._gan is None:
            raise ValueError("alpha needs the GAN weights of this network (gan_net=)")
        start = time.perf_counter()
        self._session = self._load(models.interpolated(self.net, self._gan, alpha))
        self.alpha = float(alpha)
        return time.perf_counter() - start

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 (N, C, h, w) in [0, 1] → float32 (N, C, h·scale, w·scale), one ncnn extraction per image."""
        outs = []
        for image in batch.detach().cpu().float().numpy():
            pixels = np.ascontiguousarray(image)  # ncnn.Mat reads this buffer without holding it: keep it alive
            ex = self._session.create_extractor()
            ex.input("data", self._ncnn.Mat(pixels))
            code, out = ex.extract("output")
            if code != 0:
                raise RuntimeError(f"ncnn failed to run the model (code {code})")
            outs.append(torch.from_numpy(np.array(out, dtype=np.float32)))
        return torch.stack(outs)

    def bytes_per_pixel(self) -> float:
        """The memory one input pixel takes while ncnn runs it (the automatic tile budgets with it): measured once,
        as the growth of this process's peak resident memory over a PROBE_SIDE² probe (Linux; its fixed costs make
        it an overestimate for larger tiles), and never less than what PyTorch takes for the same network (memory
        the process had already freed can hide part of the growth). Where the peak cannot be read, UNMEASURED_FACTOR
        × PyTorch's (ncnn takes more: docs/onnxruntime.md#the-cpu-default)."""
        if self._bpp is None:
            from .torch_eager import TorchBackend

            floor = TorchBackend(self.net).bytes_per_pixel()
            side = -(-PROBE_SIDE // self.multiple) * self.multiple
            probe = torch.rand(1, self.in_channels, side, side, generator=torch.Generator().manual_seed(0))
            grown = peak_rss_growth(lambda: self.run(probe))
            self._bpp = UNMEASURED_FACTOR * floor if grown is None else max(grown / (side * side), floor)
        return self._bpp


PROBE_SIDE = 96  # input pixels of the memory probe's side
UNMEASURED_FACTOR = 4.0  # ncnn's memory per pixel over PyTorch's where it cannot be measured (docs/onnxruntime.md)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def peak_rss_growth(fn: Any) -> int | None:
    """Bytes by which this process's peak resident memory rose above its resident memory while `fn()` ran, or
    None where that cannot be read (not Linux, or /proc/self/clear_refs not writable). Resets the peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        base = _status_bytes("VmRSS")
    except OSError:
        return None
    fn()
    try:
        return max(0, _status_bytes("VmHWM") - base)
    except OSError:
        return None


def from_network(net: models.SRNet, *, gan_net: models.SRNet | None = None, precision: str = "fp32",
                 device: str | torch.device = "cpu", threads: int = 0, calibration: Any = None) -> NcnnBackend:
    """The registry's constructor (`calibration` is not used: no INT8 here)."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"the ncnn backend runs on the CPU here, not {device}")
    return NcnnBackend(net, gan_net=gan_net, precision=precision, threads=threads)


def _unavailable() -> str | None:
    try:
        _ncnn()
    except RuntimeError as e:
        return str(e)
    return None


def _network(net: models.SRNet, precision: str) -> str | None:
    return None if net.arch in WRITABLE else f"ncnn models here are {', '.join(WRITABLE)}, not {net.arch}"


def _cpu_rank(net: models.SRNet) -> int | None:
    """engine.upscale's CPU default for the networks it writes, ahead of ONNX Runtime, which runs them slower
    (bench/cpu_peers.py, docs/onnxruntime.md#the-cpu-default)."""
    return 0 if net.arch in WRITABLE else None


def _cpu_workloads_only(device: torch.device) -> str | None:
    return "the ncnn backend runs on the CPU; this workload runs on the GPU" if device.type != "cpu" else None


register(BackendInfo(
    name="ncnn", label="ncnn (CPU)", precisions=("fp32", "fp16"), devices=("cpu",), unavailable=_unavailable,
    network=_network, from_network=from_network, cpu_rank=_cpu_rank,
    bench=(BenchRow("ncnn-fp32", "ncnn fp32 (CPU)", "fp32", unavailable=_cpu_workloads_only),),
))
