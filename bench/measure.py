"""How bench/run.py measures and what it records beside each figure: device synchronisation, timing, memory
peaks, PSNR against the reference, the device's peak TFLOP/s (datasheet or a measured GEMM), and the conditions of
a run (CPU, GPU, driver, library versions, commit)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

import engine
from engine.machine import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# Measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Memory:
    """Peak memory of building and first running a backend, in bytes.

    CUDA: the torch allocator's peak above its level before the build, plus device memory taken outside the
    allocator meanwhile (TensorRT, engine._C). CPU: the process's resident peak (Linux VmHWM, reset through
    /proc/self/clear_refs) above its resident size before the build; None where that is not available. Memory the
    allocator already holds and reuses is not counted on the CPU, so a figure there is a lower bound."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Memory:
        self.peak: int | None = None
        gc.collect()  # garbage freed inside would lower the resident size below the baseline and hide the peak
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._reserved0 = torch.cuda.memory_reserved(self.device)
            free, total = torch.cuda.mem_get_info(self.device)
            self._used0 = total - free
        else:
            self._rss0 = _proc_status("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self._rss0 = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            torch_peak = torch.cuda.max_memory_reserved(self.device) - self._reserved0
            free, total = torch.cuda.mem_get_info(self.device)
            outside = (total - free - self._used0) - (torch.cuda.memory_reserved(self.device) - self._reserved0)
            self.peak = torch_peak + max(0, outside)
        elif self._rss0 is not None and (hwm := _proc_status("VmHWM")) is not None:
            self.peak = max(0, hwm - self._rss0)


def _proc_status(key: str) -> int | None:
    """A memory figure of /proc/self/status in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def psnr(out: np.ndarray, ref: np.ndarray, peak: float) -> tuple[float | None, float]:
    """(PSNR in dB, None when identical; the largest absolute difference), in the output's own units."""
    diff = out.astype(np.float64) - ref.astype(np.float64)
    mse = float(np.mean(diff**2))
    largest = float(np.abs(diff).max())
    return (None if mse == 0 else 10 * math.log10(peak**2 / mse)), largest


def host(out: Any) -> np.ndarray:
    return out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {"median": float(np.median(ms)), "p20": float(np.percentile(ms, 20)), "p80": float(np.percentile(ms, 80))}


# ---------------------------------------------------------------------------------------------------------------
# Peaks and conditions

# Dense tensor-core (fp16, bf16, int8) and CUDA-core fp32 peaks from NVIDIA's datasheets, TFLOP/s (int8: TOPS).
DATASHEET = {
    "H100 PCIe": {"fp16": 756.0, "bf16": 756.0, "int8": 1513.0, "fp32": 51.0},
    "H100": {"fp16": 989.0, "bf16": 989.0, "int8": 1979.0, "fp32": 67.0},  # SXM
    "H200": {"fp16": 989.0, "bf16": 989.0, "int8": 1979.0, "fp32": 67.0},
}


def datasheet(gpu_name: str) -> dict[str, float] | None:
    """The datasheet peaks of a GPU by its name (the first entry of DATASHEET its name contains), or None."""
    return next((v for k, v in DATASHEET.items() if k in gpu_name), None)


def measured_gemm_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """The best of ten n×n×n matmuls, TFLOP/s: the peak this device reaches in practice where no datasheet is
    known (the CPU)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    best = min(timed(lambda: a @ b, device)[0] for _ in range(10))
    return 2 * n**3 / best / 1e12


def device_peaks(device: torch.device, dtypes: set[str]) -> dict[str, dict[str, Any]]:
    """Per dtype: {"tflops", "source"}."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        sheet = datasheet(name)
        if sheet is not None:
            return {d: {"tflops": sheet[d], "source": "datasheet (dense)"} for d in dtypes if d in sheet}
    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.type == "cpu" and not cpu_has_bf16():  # emulated: minutes per matmul, and no row runs in bf16
        del torch_dtypes["bf16"]
    if device.type == "cuda":
        torch_dtypes["fp16"] = torch.float16
    n = 8192 if device.type == "cuda" else 2048
    with torch.backends.cuda.matmul.flags(allow_tf32=False) if device.type == "cuda" else contextlib.nullcontext():
        return {d: {"tflops": round(measured_gemm_tflops(device, torch_dtypes[d], n), 4),
                    "source": f"measured: best {n}×{n}×{n} {d} torch matmul on this device, {torch.get_num_threads()} "
                              f"threads" if device.type == "cpu" else f"measured: best {n}³ {d} torch matmul"}
                for d in sorted(dtypes) if d in torch_dtypes}


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "esrgan-engine": engine.__version__,
                                  "torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__}
    for module in ("onnx", "onnxruntime", "triton", "tensorrt"):
        try:
            out[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            out[module] = None
    out["cuda"] = torch.version.cuda
    return out


def commit() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def conditions(args: argparse.Namespace) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": None, "gpu_arch": None, "gpu_memory_gib": None, "driver": None, "tf32": False,
        "versions": versions(), "commit": commit(), "platform": platform.platform(),
        "command": " ".join(["python bench/run.py", *args.argv]), "quick": args.quick, "repeat": args.repeat,
        "warmup": args.warmup,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cond.update(gpu=props.name, gpu_arch=f"sm_{props.major}{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), driver=gpu_driver())
    cond["device"] = cond["gpu"] or f"{cond['cpu']} ({cond['cpu_cores']} cores)"
    return cond


def device_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
