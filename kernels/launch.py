"""The one place where the fused plans launch Triton kernels, so that a whole forward can be recorded instead of run.

    launch(conv_kernel, grid, args, constexprs, num_warps=4, num_stages=2)   # runs it (GPU, or the interpreter)

    with record() as launches:          # nothing runs: each launch is appended, arguments as given
        plan.forward_buffers(n, h, w)

`kernels.plan` records a plan's forward and its `set_alpha` this way and turns the tensors among the arguments into
byte offsets of the plan's arena and weights buffers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Launch:
    """One kernel launch: the JIT function, its grid, the non-constexpr arguments in `kernel.arg_names` order, the
    constexprs and the launch options."""

    kernel: Any
    grid: tuple[int, int, int]
    args: list[Any]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int

    def arg_names(self) -> list[str]:
        return [name for name in self.kernel.arg_names if name not in self.constexprs]


_RECORDERS: list[list[Launch]] = []


@contextmanager
def record() -> Iterator[list[Launch]]:
    """Within the block, `launch` appends to the yielded list and runs nothing."""
    launches: list[Launch] = []
    _RECORDERS.append(launches)
    try:
        yield launches
    finally:
        _RECORDERS.remove(launches)


def launch(kernel: Any, grid: Sequence[int], args: Sequence[Any], constexprs: dict[str, Any], *, num_warps: int,
           num_stages: int) -> None:
    """Run `kernel[grid](*args, **constexprs)`, or record it when a `record()` block is open."""
    g = tuple(int(v) for v in grid) + (1,) * (3 - len(grid))
    if _RECORDERS:
        names = [name for name in kernel.arg_names if name not in constexprs]
        if len(names) != len(args):
            raise TypeError(f"{kernel.__name__} takes {len(names)} non-constexpr arguments, got {len(args)}")
        _RECORDERS[-1].append(Launch(kernel, (g[0], g[1], g[2]), list(args), dict(constexprs), num_warps,
                                     num_stages))
        return
    kernel[g](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
