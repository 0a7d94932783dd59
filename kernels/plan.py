"""Native engine plans: what `python -m engine.build --backend native` writes and `engine._C` runs.

    plan = build_plan(net, dtype="fp16", shapes=[(4, 3, 256, 256)], arch=90, gan_net=gan)   # no GPU needed
    write_plan("model.plan", plan)
    plan_reference.ReferenceExecutor("model.plan").run(x)   # its meaning, interpreted by Triton on the CPU
    engine._C.NativePlan("model.plan")        # the C++ runtime: cubins, one arena, CUDA graphs

A plan is the fused forward of `kernels/` (FusedRRDBNet, FusedRRDBNetInt8, FusedSRResNet, FusedSRVGG) frozen:
every Triton kernel variant it launches, compiled for one GPU architecture with
`triton.compile(..., GPUTarget("cuda", arch, 32))` (this runs without a GPU), and the ordered list of launches of
each built input shape with every argument
resolved to a number or to a byte offset into one of two device buffers:

    arena    per-shape scratch: the NHWC activations, the float32 NCHW input and output of the tile batch; its size
             is per built shape and the runtime allocates the largest once
    weights  persistent: the live packed weights (at the build's alpha), both alpha endpoints, scales; uploaded
             once from the plan; `set_alpha` rewrites the live part in place with the blend kernel (the alpha
             program), so no pointer changes and captured CUDA graphs stay valid

File format, version 1 (PLAN_VERSION). All integers little-endian. header | section table | sections, each section
at a 256-byte-aligned file offset.

    header, 64 bytes
        0   magic          8 bytes   b"ESRGPLAN"
        8   version        u32       1
        12  header_bytes   u32       64
        16  arch           u32       SM architecture of the cubins, e.g. 90 (sm_90a cubins run only on sm_90)
        20  section_count  u32
        24  file_bytes     u64       the whole file: a shorter file is truncated
        32  table_crc      u32       CRC-32 (zlib, IEEE) of the section table
        36  header_crc     u32       CRC-32 of header bytes [0, 36)
        40  reserved       24 zero bytes
    section table at offset 64: section_count entries of 24 bytes
        tag u8[4] (ASCII) | crc32 u32 (CRC-32 of the section's bytes) | offset u64 | bytes u64
    sections (each tag once; ALPH may be absent)
        META  UTF-8 JSON object: the manifest metadata (model, hyper-parameters, precision, scale, channels,
              multiple, alpha, versions) and `kernels`: per kernel its Triton function ("kernels.conv.conv_kernel",
              a key of `kernel_table()`), signature and constexprs (what the reference executor needs; it checks
              them against its own recording of the named network). The C++ runtime passes it through.
        STRS  bytes: the kernels' cubin entry names, referenced by (offset, length)
        CUBN  bytes: the cubins, each at a 256-byte-aligned offset within
        KERN  records of 8 × u64: name_off, name_len (in STRS), cubin_off, cubin_bytes (in CUBN), num_warps,
              shared_bytes (dynamic shared memory per block), param_first, param_count (in PARM)
        PARM  u64 per kernel parameter: its size in bytes, 4 or 8, in the cubin's parameter order (Triton appends
              two scratch pointers to the Python arguments)
        SHAP  records of 16 × u64, one per built shape: n, c_in, h, w (the input tile batch, before any pixel
              unshuffle), c_out, h_out, w_out, arena_bytes, input_off, output_off (arena byte offsets of the float32
              NCHW input (n, c_in, h, w) and output (n, c_out, h_out, w_out)), launch_first, launch_count (in LNCH),
              then 4 zeros
        LNCH  records of 8 × u64: kernel, grid_x, grid_y, grid_z, arg_first, arg_count (in ARGS), 0, 0; the
              forward launches of every shape and the alpha program's launches; block = 32·num_warps threads
        ALPH  one record of 2 × u64: launch_first, launch_count: the alpha program (`set_alpha`)
        ARGS  records of 2 × u64: kind, value; one per kernel parameter
              1 ARENA    pointer: arena base + value
              2 WEIGHTS  pointer: weights base + value
              3 NULL     pointer 0 (Triton's scratch parameters; the plan needs no scratch)
              4 I32      int32 in value's low 32 bits
              5 F32      float32 bits in value's low 32 bits
              6 ALPHA    float32: the alpha given to set_alpha (alpha program only)
        WGHT  bytes: the weights buffer's initial contents; its size is the weights buffer's size

Every pointer argument's offset lies inside its buffer, every offset and buffer base is 16-byte aligned where the
kernel was compiled assuming it (Triton's divisibility-16 specialization), and the runtime's buffers are
256-byte aligned. `engine._C.read_plan` validates all of this in host code (no GPU needed).

A plan holds machine code: the C++ runtime runs its cubins on the GPU as they are. Load only plans you built or
trust as you would a program. The reference executor runs none of a plan's code: its kernels come from
`kernel_table()` and every launch must be the one this package records for the plan's network.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine._ext import load_C
from engine.atomic import atomic_write

from .compile import TRITON_TYPES, compile_variant, specialize

PLAN_VERSION = 1
MAGIC = b"ESRGPLAN"
HEADER_BYTES = 64
SECTION_ALIGN = 256
ARG_ARENA, ARG_WEIGHTS, ARG_NULL, ARG_I32, ARG_F32, ARG_ALPHA = 1, 2, 3, 4, 5, 6

PLAN_FILE = "model.plan"
DEFAULT_ARCH = 90
TORCH_TYPES = {v: k for k, v in TRITON_TYPES.items()}
_SECTIONS = ("META", "STRS", "CUBN", "KERN", "PARM", "SHAP", "LNCH", "ALPH", "ARGS", "WGHT")


class PlanBuildError(ValueError):
    """A plan cannot be built; the message says why and what to do."""


def _align(n: int, a: int = SECTION_ALIGN) -> int:
    return -(-n // a) * a


def kernel_name(fn: Any) -> str:
    """The name a plan records for a Triton kernel: `module.function`."""
    return f"{fn.fn.__module__}.{fn.__name__}"


def kernel_table() -> dict[str, Any]:
    """Every Triton kernel a plan may launch, by the name the plan records: a fixed table of this package's code.
    A plan's names only select from it; nothing named in a file is ever imported."""
    from .conv import conv_kernel
    from .packing import lerp_kernel, nchw_to_nhwc_kernel, nhwc_to_nchw_kernel
    from .rrdbnet_int8 import lerp_pair_kernel

    return {kernel_name(k): k for k in (conv_kernel, lerp_kernel, nchw_to_nhwc_kernel, nhwc_to_nchw_kernel,
                                        lerp_pair_kernel)}


# ---------------------------------------------------------------------------------------------------------
# recording: launches → kernels, launch records and arguments


@dataclass
class Plan:
    """A plan in memory, as `write_plan` writes it and `read_plan` (engine._C) reads it back."""

    arch: int
    meta: dict[str, Any]
    kernels: list[dict[str, Any]]  # name, cubin, num_warps, shared_bytes, params (sizes)
    shapes: list[dict[str, int]]
    launches: list[dict[str, Any]]  # kernel, grid, args [(kind, value)]
    alpha: tuple[int, int] | None
    weights: bytes


@dataclass
class _Recorder:
    """Turns recorded launches into kernel variants and argument records."""

    arch: int
    compile: bool = True
    variants: dict[tuple[Any, ...], int] = field(default_factory=dict)
    kernels: list[dict[str, Any]] = field(default_factory=list)
    kernel_meta: list[dict[str, Any]] = field(default_factory=list)
    storages: dict[int, tuple[int, torch.UntypedStorage]] = field(default_factory=dict)  # data_ptr → (offset, s)
    weights_bytes: int = 0
    launches: list[dict[str, Any]] = field(default_factory=list)
    arenas: set[int] = field(default_factory=set)  # storages of the shapes' arenas

    def weights_offset(self, t: torch.Tensor) -> int:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.storages:
            self.storages[key] = (self.weights_bytes, storage)
            self.weights_bytes = _align(self.weights_bytes + storage.nbytes())
        return self.storages[key][0] + (t.data_ptr() - key)

    def weights(self) -> bytes:
        blob = bytearray(self.weights_bytes)
        for offset, storage in self.storages.values():
            data = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,)).cpu().numpy().tobytes()
            blob[offset:offset + len(data)] = data
        return bytes(blob)

    def add(self, launch: Any, arena: torch.Tensor | None, alpha_program: bool) -> None:
        names = launch.arg_names()
        signature: dict[str, str] = {}
        records: list[tuple[int, Any]] = []
        divisible: list[int] = []
        for index, (name, value) in enumerate(zip(names, launch.args, strict=True)):
            try:
                kind_name, aligned = specialize(value)  # as Triton's JIT specializes it
            except TypeError:
                raise PlanBuildError(f"{launch.kernel.__name__}: argument {name} = {value!r} is not a tensor of a "
                                     "supported dtype, an int or a float") from None
            signature[name] = kind_name
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage().data_ptr()
                if arena is not None and storage == arena.untyped_storage().data_ptr():
                    kind, offset = ARG_ARENA, value.data_ptr() - arena.data_ptr()
                elif storage in self.arenas:
                    raise PlanBuildError(f"{launch.kernel.__name__}: argument {name} lies in another shape's arena")
                else:
                    kind, offset = ARG_WEIGHTS, self.weights_offset(value)
                records.append((kind, offset))
                aligned = offset % 16 == 0  # the device buffers are 256-byte aligned: the offset decides
            elif isinstance(value, int):
                if kind_name != "i32":
                    raise PlanBuildError(f"{launch.kernel.__name__}: argument {name} = {value} does not fit int32: "
                                         "build the plan for a smaller tile or batch")
                records.append((ARG_I32, value))
            else:
                records.append((ARG_ALPHA, 0.0) if alpha_program and name == "alpha" else (ARG_F32, float(value)))
            if aligned:
                divisible.append(index)
        fn = launch.kernel
        if kernel_table().get(kernel_name(fn)) is not fn:
            raise PlanBuildError(f"{kernel_name(fn)} is not in kernels.plan.kernel_table(): add it there, or the "
                                 f"reference executor cannot run the plan")
        key = (kernel_name(fn), tuple(sorted(launch.constexprs.items())), tuple(signature.items()),
               tuple(divisible), launch.num_warps, launch.num_stages)
        if key not in self.variants:
            self.variants[key] = len(self.kernels)
            self.kernel_meta.append({"function": key[0], "signature": list(signature.items()),  # in argument order
                                     "constexprs": {k: _jsonable(v) for k, v in launch.constexprs.items()},
                                     "divisible": divisible, "num_warps": launch.num_warps,
                                     "num_stages": launch.num_stages})
            self.kernels.append(self._compile(fn, signature, launch.constexprs, divisible, launch.num_warps,
                                              launch.num_stages, len(records)))
        k = self.variants[key]
        extra = len(self.kernels[k]["params"]) - len(records)
        records += [(ARG_NULL, 0)] * extra
        self.launches.append({"kernel": k, "grid": launch.grid, "args": records})

    def _compile(self, fn: Any, signature: dict[str, str], constexprs: dict[str, Any], divisible: list[int],
                 num_warps: int, num_stages: int, nargs: int) -> dict[str, Any]:
        """Compile one variant for sm_<arch> (no GPU needed) and read its entry name and parameters."""
        if not self.compile:  # for tests of the format only: parameters as the Python arguments plus two scratch
            params = [8 if signature[n].startswith("*") else 4 for n in signature] + [8, 8]
            return {"name": fn.__name__, "cubin": b"", "num_warps": num_warps, "shared_bytes": 0, "params": params}
        names = list(signature)
        compiled = compile_variant(fn, signature, constexprs, [names[i] for i in divisible], num_warps=num_warps,
                                   num_stages=num_stages, arch=self.arch)
        md = compiled.metadata
        for what in ("global_scratch_size", "profile_scratch_size"):
            if getattr(md, what, 0):
                raise PlanBuildError(f"{fn.__name__} needs {what} = {getattr(md, what)}: plans support no scratch")
        if getattr(md, "num_ctas", 1) != 1 or getattr(md, "launch_cooperative_grid", False) or \
                getattr(md, "launch_pdl", False):
            raise PlanBuildError(f"{fn.__name__}: clusters, cooperative and PDL launches are not supported by plans")
        params = ptx_params(compiled.asm["ptx"], md.name)
        if len(params) < nargs:
            raise PlanBuildError(f"{fn.__name__}: the cubin takes {len(params)} parameters, the launch {nargs}")
        return {"name": md.name, "cubin": bytes(compiled.asm["cubin"]), "num_warps": md.num_warps,
                "shared_bytes": int(md.shared), "params": params}


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


def ptx_params(ptx: str, name: str) -> list[int]:
    """The parameter sizes (bytes) of the PTX entry `name`, in order."""
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise PlanBuildError(f"no .entry {name} in the PTX")
    sizes = []
    for decl in re.findall(r"\.param\s+\.(\w+)", m.group(1)):
        bits = re.search(r"(\d+)$", decl)
        if bits is None or int(bits.group(1)) not in (32, 64):
            raise PlanBuildError(f"{name}: unsupported PTX parameter type .{decl}")
        sizes.append(int(bits.group(1)) // 8)
    return sizes


def build_plan(fused: Any, shapes: Sequence[tuple[int, int, int, int]], *, arch: int = DEFAULT_ARCH,
               meta: dict[str, Any] | None = None, compile: bool = True) -> Plan:
    """Record `fused`'s forward for each input shape (n, c_in, h, w) and its set_alpha (when it has GAN weights),
    compile every kernel variant for sm_<arch> and return the plan. Nothing runs: `fused` may live on the CPU.
    `compile=False` leaves the cubins empty (tests of the format only; such a plan cannot run on a GPU)."""
    from .launch import record

    if os.environ.get("TRITON_INTERPRET") == "1" and compile:
        raise PlanBuildError("unset TRITON_INTERPRET to build a plan: interpreted kernels cannot be compiled")
    if not shapes:
        raise PlanBuildError("a plan needs at least one input shape")
    rec = _Recorder(arch, compile=compile)
    shape_records = []
    for n, c, h, w in shapes:
        if c != fused.in_channels:
            raise PlanBuildError(f"shape {(n, c, h, w)}: the network reads {fused.in_channels} channels")
        try:
            fused.check_shape(n, h, w)
        except ValueError as e:
            raise PlanBuildError(str(e)) from None
        arena, buf = fused.arena(n, h, w)
        rec.arenas.add(arena.untyped_storage().data_ptr())
        with record() as launches:
            fused.forward(n, h, w)
        first = len(rec.launches)
        for launch in launches:
            rec.add(launch, arena, alpha_program=False)
        out = buf["output"][0]
        shape_records.append({
            "n": n, "c_in": c, "h": h, "w": w, "c_out": out.shape[1], "h_out": out.shape[2], "w_out": out.shape[3],
            "arena_bytes": arena.numel(), "input_off": buf["input"][0].data_ptr() - arena.data_ptr(),
            "output_off": out.data_ptr() - arena.data_ptr(), "launch_first": first,
            "launch_count": len(rec.launches) - first})
    alpha = None
    if fused.alpha is not None:
        before = fused.alpha
        with record() as launches:
            fused.set_alpha(0.5)
        fused.alpha = before
        first = len(rec.launches)
        for launch in launches:
            rec.add(launch, None, alpha_program=True)
        alpha = (first, len(rec.launches) - first)
    import triton

    full_meta = {**(meta or {}), "arch": arch, "triton": triton.__version__, "has_alpha": alpha is not None,
                 "scale": fused.scale, "in_channels": fused.in_channels, "out_channels": fused.out_channels,
                 "multiple": fused.multiple, "kernels": rec.kernel_meta}
    return Plan(arch, full_meta, rec.kernels, shape_records, rec.launches, alpha, rec.weights())


# ---------------------------------------------------------------------------------------------------------
# the file


def _u64s(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}Q", *values)


def _arg_value(kind: int, value: Any) -> int:
    if kind == ARG_I32:
        return int(value) & 0xFFFFFFFF
    if kind == ARG_F32:
        return struct.unpack("<I", struct.pack("<f", float(value)))[0]
    if kind == ARG_ALPHA:
        return 0
    return int(value)


def plan_bytes(plan: Plan) -> bytes:
    """The plan file's bytes (format in the module docstring)."""
    strs, cubins = bytearray(), bytearray()
    kern, parm = bytearray(), bytearray()
    for k in plan.kernels:
        name = k["name"].encode()
        cubin_off = len(cubins)
        cubins += k["cubin"] + bytes(_align(len(k["cubin"])) - len(k["cubin"]))
        kern += _u64s(len(strs), len(name), cubin_off, len(k["cubin"]), k["num_warps"], k["shared_bytes"],
                      len(parm) // 8, len(k["params"]))
        strs += name
        parm += _u64s(*k["params"])
    shap = b"".join(_u64s(s["n"], s["c_in"], s["h"], s["w"], s["c_out"], s["h_out"], s["w_out"], s["arena_bytes"],
                          s["input_off"], s["output_off"], s["launch_first"], s["launch_count"], 0, 0, 0, 0)
                    for s in plan.shapes)
    lnch, args = bytearray(), bytearray()
    for launch in plan.launches:
        gx, gy, gz = launch["grid"]
        lnch += _u64s(launch["kernel"], gx, gy, gz, len(args) // 16, len(launch["args"]), 0, 0)
        for kind, value in launch["args"]:
            args += _u64s(kind, _arg_value(kind, value))
    sections = {"META": json.dumps(plan.meta, sort_keys=True).encode(), "STRS": bytes(strs), "CUBN": bytes(cubins),
                "KERN": bytes(kern), "PARM": bytes(parm), "SHAP": shap, "LNCH": bytes(lnch), "ARGS": bytes(args),
                "WGHT": plan.weights}
    if plan.alpha is not None:
        sections["ALPH"] = _u64s(*plan.alpha)
    order = [tag for tag in _SECTIONS if tag in sections]
    table_end = HEADER_BYTES + 24 * len(order)
    offset, table, body = _align(table_end), bytearray(), bytearray()
    for tag in order:
        data = sections[tag]
        table += tag.encode() + struct.pack("<IQQ", zlib.crc32(data), offset, len(data))
        padded = data + bytes(_align(len(data)) - len(data))
        body += padded
        offset += len(padded)
    file_bytes = _align(table_end) + len(body)
    head = MAGIC + struct.pack("<IIIIQI", PLAN_VERSION, HEADER_BYTES, plan.arch, len(order), file_bytes,
                               zlib.crc32(bytes(table)))
    head += struct.pack("<I", zlib.crc32(head[:36])) + bytes(24)
    return head + bytes(table) + bytes(_align(table_end) - table_end) + bytes(body)


def write_plan(path: str | os.PathLike[str], plan: Plan) -> None:
    """Write the plan file atomically (a temporary file renamed into place)."""
    data = plan_bytes(plan)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_plan(path: str | os.PathLike[str], *, arch: int | None = None, cubins: bool = False) -> dict[str, Any]:
    """The plan as `engine._C` parses and validates it (host code, no GPU): a dict of its tables; `engine._C.PlanError`
    (a ValueError) names the file and the problem. With `arch`, a plan for another architecture is refused."""
    return load_C().read_plan(str(path), arch, cubins)
