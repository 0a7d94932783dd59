"""What this machine offers a run: its usable CPUs, a thread count checked against them, bf16 in hardware."""

from __future__ import annotations

import logging
import operator
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("engine")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(threads: Any) -> int:
    """`threads` as an intra-op thread count (ONNX Runtime's, engine._C's host loops): an integer ≥ 0 (0: one per
    physical core); more than this process's CPUs is clamped to them, with one warning (every thread beyond a core
    only adds memory, and enough of them end in an out-of-memory kill)."""
    try:
        if isinstance(threads, bool):
            raise TypeError
        threads = operator.index(threads)
    except TypeError:
        raise ValueError(f"threads must be an integer ≥ 0 (0: one per core), got {threads!r}") from None
    if threads < 0:
        raise ValueError(f"threads must be ≥ 0 (0: one per core), got {threads}")
    cpus = usable_cpus()
    if threads > cpus:
        log.warning("threads=%d is more than the %d CPUs this process may use: using %d", threads, cpus, cpus)
        return cpus
    return threads


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (x86: avx512_bf16 or amx_bf16; Arm: bf16). Without it PyTorch
    emulates bf16 matmuls and convolutions, tens of times slower than fp32. True where the flags cannot be read."""
    try:
        with open(cpuinfo) as f:
            found = re.search(r"^(?:flags|Features)\s*:(.*)$", f.read(), re.MULTILINE)
    except OSError:
        return True
    return found is None or bool(set(found.group(1).split()) & {"avx512_bf16", "amx_bf16", "bf16"})


class Unavailable(RuntimeError):
    """A library or device a run needs is missing on this machine; the message says what to install or use."""


def local_arch() -> int | None:
    """This machine's GPU architecture as an SM number (90 for H100/H200), or None without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def available_memory() -> int | None:
    """Bytes this process can still take: MemAvailable, or what its cgroup's limit leaves, the smaller; None if
    neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None
