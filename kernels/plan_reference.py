"""The reference executor of native plans (`kernels.plan`): a plan's launch list, offsets and packed weights run as
the file holds them, with this package's Triton kernels (under TRITON_INTERPRET=1 on the CPU). It is what the C++
runtime of engine._C does, in Python: the plan's meaning, tested without a GPU.

    ReferenceExecutor("engines/rrdb23-fp16-native/model.plan").run(x)
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import numpy as np
import torch

from engine import models
from engine._ext import load_C

from .fused import FLOAT_DTYPES, fused_archs, fused_network
from .plan import (
    ARG_ALPHA,
    ARG_ARENA,
    ARG_F32,
    ARG_I32,
    ARG_NULL,
    ARG_WEIGHTS,
    TORCH_TYPES,
    Plan,
    build_plan,
    kernel_table,
    read_plan,
)

MAX_SHAPE_PIXELS = 1 << 24  # n·h·w of one built shape; engine.build builds at most 2048² pixels per batch
MAX_HPARAM = 4096  # any integer hyper-parameter of a plan's network (rrdb23: 23 blocks, 64 features)


def _plan_error(path: str | os.PathLike[str], what: str) -> ValueError:
    error: type[ValueError] = load_C().PlanError
    return error(f"{path}: {what}: rebuild it with python -m engine.build --backend native")


def _plan_meta(path: str | os.PathLike[str], plan: dict[str, Any]) -> dict[str, Any]:
    """The plan's META section, checked for the shape the reference executor relies on."""
    try:
        meta = json.loads(plan["meta"])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _plan_error(path, f"its META section is not JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("kernels"), list) or \
            not all(isinstance(k, dict) for k in meta["kernels"]):
        raise _plan_error(path, "its META section is not an object with a list of kernels")
    return meta


def _expected_plan(path: str | os.PathLike[str], plan: dict[str, Any], meta: dict[str, Any]) -> Plan:
    """What this package records for the network, precision and shapes the plan names (format only: no cubins,
    random weights, INT8 ranges of 1): the kernels, constexprs, signatures, grids, integer arguments and offsets a
    sound plan must have."""
    from .rrdbnet_int8 import range_keys

    model, precision = meta.get("model"), meta.get("precision")
    if not (isinstance(model, dict) and model.get("arch") in fused_archs()
            and isinstance(model.get("hparams"), dict)):
        raise _plan_error(path, f"its META names no network of the fused kernels ({', '.join(fused_archs())}) "
                                f"(model.arch and model.hparams)")
    if precision not in (*FLOAT_DTYPES, "int8"):
        raise _plan_error(path, f"its META names precision {precision!r:.40}, not fp16, bf16, fp32 or int8")
    small = all(isinstance(v, (str, float, type(None))) or (isinstance(v, int) and 0 <= v <= MAX_HPARAM)
                for v in model["hparams"].values())
    if not small:  # a network is made from them (first on the meta device): nothing huge, nothing nested
        raise _plan_error(path, f"its META model hyper-parameters are not plain numbers up to {MAX_HPARAM}")
    for s in plan["shapes"]:
        if s["n"] * s["h"] * s["w"] > MAX_SHAPE_PIXELS:
            raise _plan_error(path, f"its shape {(s['n'], s['c_in'], s['h'], s['w'])} has more than "
                                    f"{MAX_SHAPE_PIXELS:,} pixels")
    try:
        with torch.device("meta"):  # the size first, before any memory is taken
            size = sum(p.numel() for p in models.registry.build(model["arch"], model["hparams"]).parameters())
        if size > len(plan["weights"]):
            raise ValueError(f"its hyper-parameters make {size:,} weights, more than its weights section holds")
        net = models.registry.build(model["arch"], model["hparams"]).eval()
        gan = models.registry.build(model["arch"], model["hparams"]).eval() if plan["alpha"] is not None else None
        ranges = {k: 1.0 for k in range_keys(net.hparams["num_block"])} if precision == "int8" else None
        fused = fused_network(net, precision, gan_net=gan, int8_ranges=ranges, device="cpu")
        shapes = [(s["n"], s["c_in"], s["h"], s["w"]) for s in plan["shapes"]]
        return build_plan(fused, shapes, arch=plan["arch"], compile=False)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise _plan_error(path, f"its META model {model['arch']} {json.dumps(model['hparams'])[:200]} cannot be "
                                f"recorded ({e})") from None


def _check_plan(path: str | os.PathLike[str], plan: dict[str, Any], meta: dict[str, Any]) -> None:
    """Refuse a plan whose kernels or launches are not exactly what this package records for the network it names:
    only the weights' bytes and the float arguments are taken from the file as they are."""
    table = kernel_table()
    for i, spec in enumerate(meta["kernels"]):
        if spec.get("function") not in table:
            raise _plan_error(path, f"kernel {i} is {str(spec.get('function'))[:80]!r}, which is not one of "
                                    f"esrgan-engine's kernels ({', '.join(table)})")
    want = _expected_plan(path, plan, meta)
    want_kernels = json.loads(json.dumps(want.meta["kernels"]))
    if len(meta["kernels"]) != len(want_kernels) or len(plan["kernels"]) != len(want_kernels):
        raise _plan_error(path, f"it has {len(plan['kernels'])} kernels, the network it names records "
                                f"{len(want_kernels)}")
    for i, (got, expected) in enumerate(zip(meta["kernels"], want_kernels, strict=True)):
        for key in expected.keys() | got.keys():
            if got.get(key) != expected.get(key):
                raise _plan_error(path, f"kernel {i} ({expected['function']}): its {key} "
                                        f"{json.dumps(got.get(key))[:80]} is not the recorded "
                                        f"{json.dumps(expected.get(key))[:80]}")
    if [dict(s) for s in plan["shapes"]] != want.shapes or plan["alpha"] != want.alpha or \
            len(plan["weights"]) != len(want.weights):
        raise _plan_error(path, "its shapes, alpha program or weights size are not what the network it names records")
    if len(plan["launches"]) != len(want.launches):
        raise _plan_error(path, f"it has {len(plan['launches'])} launches, the network it names records "
                                f"{len(want.launches)}")
    for i, (got, expected) in enumerate(zip(plan["launches"], want.launches, strict=True)):
        n = len(want_kernels[expected["kernel"]]["signature"])  # the Python arguments; then Triton's scratch
        same = (got["kernel"] == expected["kernel"] and tuple(got["grid"]) == tuple(expected["grid"])
                and len(got["args"]) >= n and all(kind == ARG_NULL for kind, _ in got["args"][n:])
                and all(kind == want_kind and (kind in (ARG_F32, ARG_ALPHA) or value == want_value)
                        for (kind, value), (want_kind, want_value)
                        in zip(got["args"][:n], expected["args"][:n], strict=True)))
        if not same:
            raise _plan_error(path, f"launch {i} ({want_kernels[expected['kernel']]['function']}) differs from what "
                                    f"the network it names records (kernel, grid, offsets or integer arguments)")


class ReferenceExecutor:
    """Runs a plan's launch list, offsets and packed weights as they are in the file, with the Triton kernels the
    plan names (under TRITON_INTERPRET=1 on the CPU): what the C++ runtime does, in Python, to test the plan's
    meaning without a GPU. Buffers are one CPU arena (the largest shape's) and the weights buffer, as uint8.

    The kernels come from `kernel_table()`, never from a name in the file; and the plan must launch exactly what
    this package records for the network it names (kernels, constexprs, signatures, grids, integer arguments,
    offsets), so a crafted plan can neither run other code nor point a kernel outside its buffers. Only the
    weights' bytes and the float arguments are the file's own. `engine._C.PlanError` (a ValueError) says what does
    not match."""

    def __init__(self, path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> None:
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            regular = True  # read_plan says what is wrong
        if not regular:
            raise _plan_error(path, "it is not a regular file")
        self.plan = read_plan(path)
        self.meta = _plan_meta(path, self.plan)
        _check_plan(path, self.plan, self.meta)
        self.device = torch.device(device)
        table = kernel_table()
        self.functions = [table[k["function"]] for k in self.meta["kernels"]]
        self.weights = torch.frombuffer(bytearray(self.plan["weights"]), dtype=torch.uint8).to(self.device)
        self.arena = torch.zeros(max(s["arena_bytes"] for s in self.plan["shapes"]), dtype=torch.uint8,
                                 device=self.device)
        self.alpha: float | None = 0.0 if self.plan["alpha"] is not None else None

    @staticmethod
    def _view(buffer: torch.Tensor, offset: int, dtype: torch.dtype) -> torch.Tensor:
        count = (buffer.numel() - offset) // dtype.itemsize
        return buffer[offset:offset + count * dtype.itemsize].view(dtype)

    def _run(self, first: int, count: int, alpha: float = 0.0) -> None:
        from .launch import launch

        for index in range(first, first + count):
            rec = self.plan["launches"][index]
            spec = self.meta["kernels"][rec["kernel"]]
            args: list[Any] = []
            for (name, sig), (kind, value) in zip(spec["signature"], rec["args"], strict=False):
                if kind in (ARG_ARENA, ARG_WEIGHTS):
                    buffer = self.arena if kind == ARG_ARENA else self.weights
                    args.append(self._view(buffer, value, TORCH_TYPES[sig[1:]]))
                elif kind == ARG_ALPHA:
                    args.append(float(alpha))
                elif kind in (ARG_I32, ARG_F32):
                    args.append(value)
                else:
                    raise ValueError(f"launch {index}: argument {name} has kind {kind}, not a Python argument")
            launch(self.functions[rec["kernel"]], rec["grid"], args, spec["constexprs"], num_warps=spec["num_warps"],
                   num_stages=spec["num_stages"])

    def set_alpha(self, alpha: float) -> None:
        if self.plan["alpha"] is None:
            raise ValueError("this plan was built without GAN weights: no alpha")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        first, count = self.plan["alpha"]
        self._run(first, count, alpha)
        self.alpha = float(alpha)

    def run(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 (n, c_in, h, w) of a built shape → float32 (n, c_out, h_out, w_out)."""
        x = torch.as_tensor(x, dtype=torch.float32)
        for s in self.plan["shapes"]:
            if tuple(x.shape) == (s["n"], s["c_in"], s["h"], s["w"]):
                break
        else:
            built = [(s["n"], s["c_in"], s["h"], s["w"]) for s in self.plan["shapes"]]
            raise ValueError(f"x has shape {tuple(x.shape)}; the plan was built for {built}")
        self._view(self.arena, s["input_off"], torch.float32)[:x.numel()].copy_(x.reshape(-1))
        self._run(s["launch_first"], s["launch_count"])
        count = s["n"] * s["c_out"] * s["h_out"] * s["w_out"]
        out = self._view(self.arena, s["output_off"], torch.float32)[:count]
        return out.reshape(s["n"], s["c_out"], s["h_out"], s["w_out"]).clone()
