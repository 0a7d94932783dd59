"""The benchmark suite's one helper, `measure`: time a call with pytest-benchmark (or, under --benchmark-disable, run
it once) and record what it computes in `benchmark.extra_info`, so a saved run says what its numbers mean.

tests/conftest.py (one directory up) already set TRITON_INTERPRET=1 when this machine has no CUDA device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture
def measure(benchmark: Any) -> Callable[..., Any]:
    """`measure(fn, group=..., flops=..., **info)` → fn's result.

    Benchmarks enabled: one untimed warm-up call (Triton compilation, buffer allocation, ORT's first run), then
    pytest-benchmark's rounds; `extra_info` gets `info`, `flops` and `tflops` (flops / the median seconds).
    Disabled (`--benchmark-disable`, the CI smoke test): `fn` runs exactly once and `tflops` is not recorded.
    Either way the caller checks the returned result against its reference.
    """

    def run(fn: Callable[[], Any], *, group: str, flops: float, **info: Any) -> Any:
        benchmark.group = group
        benchmark.extra_info.update(info, flops=flops)
        if not benchmark.disabled:
            fn()
        result = benchmark(fn)
        if not benchmark.disabled:
            median = benchmark.stats.stats.median
            benchmark.extra_info.update(median_s=median, tflops=flops / median / 1e12)
        return result

    return run
