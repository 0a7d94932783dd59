"""The fused programs: which program of Triton kernels runs an architecture, one row per program.

An architecture names its program in the architecture table (`engine.models.registry.Arch.fused`); this table says
what the program is (its classes, imported on use: they need Triton) and which precisions it runs. The Triton
backend, native plans, `engine.build` and `bench/run.py` all ask `unsupported(net, precision)` and
`fused_network(...)` here, never `isinstance`.

Adding an architecture to the fused path = its program module in kernels/ + one `Program` row + `fused="name"` in
its architecture's registration.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from engine import models

FLOAT_DTYPES: Mapping[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Program:
    """A fused program: `float_class` ("module:Class", constructed as Class(net, dtype=, device=, gan_net=)) runs
    fp16, bf16 and fp32; `int8_class` (Class(net, slice_ranges, gan_net=, device=)), when there is one, runs an
    INT8 trunk with calibrated activation ranges (`export.quantize.rdb_slice_ranges`)."""

    name: str
    float_class: str
    int8_class: str | None = None

    @property
    def precisions(self) -> tuple[str, ...]:
        return (*FLOAT_DTYPES, "int8") if self.int8_class else tuple(FLOAT_DTYPES)


PROGRAMS: dict[str, Program] = {}


def register_program(program: Program) -> Program:
    """Add `program` to the table; a name registers once."""
    if program.name in PROGRAMS:
        raise ValueError(f"fused program {program.name!r} is already registered")
    PROGRAMS[program.name] = program
    return program


register_program(Program("rrdbnet", "kernels.rrdbnet:FusedRRDBNet", "kernels.rrdbnet_int8:FusedRRDBNetInt8"))
register_program(Program("srresnet", "kernels.srresnet:FusedSRResNet"))
register_program(Program("srvgg", "kernels.srvgg:FusedSRVGG"))


def program_of(net: models.SRNet) -> Program | None:
    """The program that runs `net`'s architecture, or None when its architecture has none."""
    name = models.registry.arch_of(net).fused
    return PROGRAMS.get(name) if name else None


def fused_archs() -> list[str]:
    """The architectures a fused program runs (for messages)."""
    return [a.name for a in models.registry.ARCHS.values() if a.fused in PROGRAMS]


def unsupported(net: models.SRNet, precision: str) -> str | None:
    """Why no fused program runs `net` at `precision`, or None when one does."""
    program = program_of(net)
    if program is None:
        return f"the fused kernels run {', '.join(fused_archs())}, not {net.arch}"
    if precision not in program.precisions:
        return f"the fused {program.name} program runs {', '.join(program.precisions)}, not {precision}"
    return None


def _class(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def fused_network(net: models.SRNet, precision: str, *, gan_net: models.SRNet | None = None,
                  int8_ranges: Mapping[str, float] | None = None, device: str | torch.device = "cpu") -> Any:
    """The fused program of `net` at `precision`, its weights (and `gan_net`'s, for alpha) packed on `device` (the
    CPU is enough to record a plan). ValueError when no program runs it, or INT8 lacks its slice ranges."""
    why = unsupported(net, precision)
    if why is not None:
        raise ValueError(why)
    program = program_of(net)
    assert program is not None
    if gan_net is not None:
        models.registry.require_same_network(net, gan_net)
    gan = gan_net.eval() if gan_net is not None else None
    if precision == "int8":
        if int8_ranges is None:
            raise ValueError("int8 runs the network with its calibrated slice ranges "
                             "(export.quantize.rdb_slice_ranges): pass int8_ranges=")
        assert program.int8_class is not None
        return _class(program.int8_class)(net.eval(), dict(int8_ranges), gan_net=gan, device=device)
    return _class(program.float_class)(net.eval(), dtype=FLOAT_DTYPES[precision], device=device, gan_net=gan)
