"""Compile, for a GPU architecture and without a GPU, exactly the kernel variants the fused programs launch, and report
what each became.

    python -m kernels.compile                      # fp16, the programs' launches at a 960×540 input: a table
    python -m kernels.compile --dtype bf16 --size 1920x1080 --json

What runs is what the programs launch (`kernels.launch.record` of a real forward: rrdbnet ×4 and ×2, srvgg,
srresnet, and the INT8 rrdbnet), specialized as Triton's JIT specializes it (`specialize`: every pointer that is
16-byte aligned and every integer that is a multiple of 16 is compiled as such, which lets Triton emit 16-byte
`cp.async` copies and fewer address registers). Native plans compile with the same function (`kernels.plan`). Each
distinct variant is compiled with `triton.compile(..., target=GPUTarget("cuda", arch, 32))`, and the report gives
per variant: registers, spill (stack) bytes, shared memory, the number of `cp.async` and `wgmma` instructions in its
PTX, and the layers that launch it. Run it without TRITON_INTERPRET (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from .launch import Launch

TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "i8",
                torch.uint8: "u8", torch.int32: "i32"}


def specialize(value: Any) -> tuple[str, bool]:
    """(Triton type, divisible by 16) of one non-constexpr kernel argument, as Triton's JIT specializes it: a tensor
    is `*<dtype>`, divisible when its data pointer is 16-byte aligned; an int is i32 (i64 from 2³¹ on), divisible
    when a multiple of 16; a float is fp32. (The JIT also turns an int equal to 1 into a constant; the programs
    pass none, which the tests check.)"""
    if isinstance(value, torch.Tensor):
        if value.dtype not in TRITON_TYPES:
            raise TypeError(f"no Triton pointer type for {value.dtype}")
        return "*" + TRITON_TYPES[value.dtype], value.data_ptr() % 16 == 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"kernel argument {value!r} is not a tensor, int or float")
    if isinstance(value, int):
        return ("i32" if -2**31 <= value < 2**31 else "i64"), value % 16 == 0
    return "fp32", False


def compile_variant(fn: Any, signature: dict[str, str], constexprs: dict[str, Any], divisible: Sequence[str], *,
                    num_warps: int, num_stages: int, arch: int = 90) -> Any:
    """`triton.compile` of `fn` for sm_<arch> (no GPU needed): `signature` gives each non-constexpr argument's type,
    `divisible` the arguments compiled as multiples of 16 (pointers: 16-byte aligned)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    full = {name: signature.get(name, "constexpr") for name in fn.arg_names}
    attrs = {(fn.arg_names.index(name),): backend.parse_attr("D") for name in divisible}
    return triton.compile(ASTSource(fn=fn, signature=full, constexprs=constexprs, attrs=attrs), target=target,
                          options={"num_warps": num_warps, "num_stages": num_stages})


def compile_launch(launch: Launch, *, arch: int = 90) -> Any:
    """`compile_variant` of a recorded launch, its arguments specialized as the JIT specializes them."""
    names, spec = launch.arg_names(), [specialize(v) for v in launch.args]
    return compile_variant(launch.kernel, {nm: t for nm, (t, _) in zip(names, spec, strict=True)}, launch.constexprs,
                           [nm for nm, (_, d) in zip(names, spec, strict=True) if d], num_warps=launch.num_warps,
                           num_stages=launch.num_stages, arch=arch)


def resources(compiled: Any) -> dict[str, int]:
    """What a compiled kernel uses: registers, spill (stack) and local bytes from its cubin (`cuobjdump`, shipped
    with Triton), shared bytes, and its PTX's count of `cp.async` copies and `wgmma` instructions."""
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        report = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", report)
    if found is None:
        raise RuntimeError(f"no resource usage in cuobjdump's report: {report}")
    regs, stack, _static_shared, local = (int(v) for v in found.groups())
    ptx = compiled.asm["ptx"]
    return {"registers": regs, "spill_bytes": stack, "local_bytes": local,
            "shared_bytes": int(compiled.metadata.shared), "cp_async": len(re.findall(r"\bcp\.async\.c[ag]\.", ptx)),
            "wgmma": len(re.findall(r"\bwgmma\.mma_async\.", ptx))}


# ---------------------------------------------------------------------------------------------------------
# what the programs launch


def _networks(dtype: torch.dtype) -> list[tuple[str, Any]]:
    """(label, fused program with GAN weights) for every program, random weights (variants depend on shapes only)."""
    from engine.models import rrdbnet, srresnet, srvgg

    from .rrdbnet import FusedRRDBNet
    from .srresnet import FusedSRResNet
    from .srvgg import FusedSRVGG

    torch.manual_seed(0)
    x4 = rrdbnet.RRDBNet(num_block=1, scale=4).eval()
    x2 = rrdbnet.RRDBNet(num_block=1, scale=2).eval()
    vgg = srvgg.SRVGGNetCompact(num_conv=2, scale=4, act_type="prelu").eval()
    srgan = srresnet.SRResNet(num_block=1, scale=4).eval()
    out = [("rrdbnet ×4", FusedRRDBNet(x4, dtype=dtype, device="cpu", gan_net=x4)),
           ("rrdbnet ×2", FusedRRDBNet(x2, dtype=dtype, device="cpu", gan_net=x2)),
           ("srvgg ×4", FusedSRVGG(vgg, dtype=dtype, device="cpu", gan_net=vgg)),
           ("srresnet ×4", FusedSRResNet(srgan, dtype=dtype, device="cpu", gan_net=srgan))]
    if dtype == torch.float16:
        from .rrdbnet_int8 import FusedRRDBNetInt8, range_keys

        out.append(("rrdbnet ×4 int8", FusedRRDBNetInt8(x4, {k: 4.0 for k in range_keys(1)}, gan_net=x4,
                                                         device="cpu")))
    return out


def program_launches(dtype: str, n: int, h: int, w: int) -> list[tuple[str, Launch]]:
    """(program, launch) for every launch of every program's forward on an (n, 3, h, w) input (h and w rounded down
    to the program's input multiple) and of its set_alpha; nothing runs (the buffers stay untouched)."""
    from .launch import record

    launches: list[tuple[str, Launch]] = []
    for label, plan in _networks({"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]):
        hh, ww = h - h % plan.multiple, w - w % plan.multiple
        with record() as got:
            plan.forward(n, hh, ww)
            plan.set_alpha(0.5)
        launches += [(label, launch) for launch in got]
    return launches


def describe(launch: Launch) -> str:
    """A conv launch in a few words ("conv3x3 192→64 +res1 +res2": op, Cin→Cout, epilogue); other kernels by name."""
    c = launch.constexprs
    if launch.kernel.__name__ != "conv_kernel":
        return launch.kernel.__name__
    args = dict(zip(launch.arg_names(), launch.args, strict=True))
    op = "upconv2x" if c["UPSAMPLE"] else f"conv{c['KSIZE']}x{c['KSIZE']}"
    parts = [f"{op} {args['CIN']}→{args['COUT']}"]
    parts += [name for name, on in (("int8", c["X_INT8"]), ("bn", c["HAS_BN"])) if on]
    act = {1: "lrelu", 2: "relu", 3: "prelu"}.get(c["ACT"])
    parts += [act] if act else []
    parts += [f"shuffle×{c['SHUFFLE']}"] if c["SHUFFLE"] > 1 else []
    parts += ["+res1 (low-res)" if c["R1_LOWRES"] else "+res1"] if c["HAS_R1"] else []
    parts += ["+res2"] if c["HAS_R2"] else []
    parts += ["→int8"] if c["OUT_INT8"] else []
    parts += ["off64"] if c["OFF64"] else []
    return " ".join(parts)


def blocks_label(launch: Launch) -> str:
    """A launch's tile sizes and options ("128×64×64, 8 warps, 3 stages")."""
    c = launch.constexprs
    if "BLOCK_M" not in c:
        return f"{launch.num_warps} warps, {launch.num_stages} stages"
    reuse = f", tap reuse {c['BLOCK_M'] // c['BLOCK_W']}×{c['BLOCK_W']}" if c.get("TAP_REUSE") else ""
    return f"{c['BLOCK_M']}×{c['BLOCK_N']}×{c['BLOCK_K']}, {launch.num_warps} warps, {launch.num_stages} stages{reuse}"


def variant_key(launch: Launch) -> tuple[Any, ...]:
    """What makes two launches one compiled kernel: function, constexprs, argument types and divisibility,
    warps and stages."""
    spec = tuple(specialize(v) for v in launch.args)
    return (launch.kernel.__name__, tuple(sorted(launch.constexprs.items())), spec, launch.num_warps,
            launch.num_stages)


def tap_reuse_alternative(launch: Launch, block_w: int = 16) -> Launch | None:
    """The same conv launch with the tap-reuse K loop (`kernels.blocks`), or None for other kernels."""
    c = launch.constexprs
    if launch.kernel.__name__ != "conv_kernel" or c["TAP_REUSE"] or c["BLOCK_M"] % block_w:
        return None
    return replace(launch, constexprs=dict(c, TAP_REUSE=True, BLOCK_W=block_w))


def report(dtype: str = "fp16", *, n: int = 1, h: int = 540, w: int = 960, arch: int = 90,
           alternatives: bool = True) -> list[dict[str, Any]]:
    """One row per distinct compiled variant of the programs' launches at input (n, 3, h, w) ("launched": True),
    and with `alternatives`, one per tap-reuse alternative of each conv variant ("launched": False)."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    todo = [(program, launch, True) for program, launch in program_launches(dtype, n, h, w)]
    if alternatives:
        todo += [(program, alt, False) for program, launch, _ in list(todo)
                 if (alt := tap_reuse_alternative(launch)) is not None]
    for program, launch, launched in todo:
        key = variant_key(launch)
        what = f"{program}: {describe(launch)}"
        if key in seen:
            if what not in seen[key]["layers"]:
                seen[key]["layers"].append(what)
            seen[key]["launches"] += launched
            continue
        compiled = compile_launch(launch, arch=arch)
        seen[key] = {"kernel": launch.kernel.__name__, "dtype": dtype, "blocks": blocks_label(launch),
                     "launched": launched, "layers": [what], "launches": int(launched), **resources(compiled)}
    return list(seen.values())


SHARED_LIMIT = 227 * 1024  # bytes of shared memory a block may use on sm_90 (H100, H200)


def sweep_candidates(cout: int) -> list[dict[str, Any]]:
    """The block choices a sweep tries for a conv with `cout` output channels: every combination of BLOCK_M 64, 128,
    256; BLOCK_N from 16 up to Cout (at most 64); BLOCK_K 32, 64; 4 or 8 warps; 2–4 stages; the flat loop or tap
    reuse (16 pixels wide)."""
    widest = min(64, max(16, 1 << max(0, (cout - 1).bit_length())))
    block_ns = [b for b in (16, 32, 64) if b <= widest]
    return [dict(block_m=bm, block_n=bn, block_k=bk, num_warps=nw, num_stages=ns, tap_reuse=tr, block_w=16)
            for bm in (64, 128, 256) for bn in block_ns for bk in (32, 64) for nw in (4, 8) for ns in (2, 3, 4)
            for tr in (False, True)]


def sweep(dtype: str = "fp16", *, arch: int = 90, layers: Sequence[str] | None = None,
          candidates: Callable[[int], list[dict[str, Any]]] = sweep_candidates) -> list[dict[str, Any]]:
    """Compile every `sweep_candidates` block choice of each distinct conv layer of rrdbnet ×4 (at 960×540) and
    report what it becomes: the compile-side half of filling `kernels.blocks.BLOCK_TABLE` (a choice that spills or
    needs more than `SHARED_LIMIT` shared bytes is not worth a GPU's time). `layers` keeps only the layers so
    described (`describe`, e.g. "conv3x3 64→32 lrelu"; ValueError listing them for another); `candidates(cout)`
    lists the block choices to try."""
    import time

    from .blocks import Blocks
    from .conv import even_k

    convs: dict[str, Launch] = {}
    for program, launch in program_launches(dtype, 1, 540, 960):
        if program == "rrdbnet ×4" and launch.kernel.__name__ == "conv_kernel":
            convs.setdefault(describe(launch), launch)
    unknown = [what for what in layers or () if what not in convs]
    if unknown:
        raise ValueError(f"--layer {unknown[0]!r} is not a conv of rrdbnet ×4; its convs are: {'; '.join(convs)}")
    chosen = {what: launch for what, launch in convs.items() if layers is None or what in layers}
    rows = []
    for what, launch in chosen.items():
        args = dict(zip(launch.arg_names(), launch.args, strict=True))
        strides = (args["stride_xn"], args["stride_xh"], args["stride_xw"])
        for cand in candidates(args["COUT"]):
            b = Blocks(**cand)
            c = dict(launch.constexprs, BLOCK_M=b.block_m, BLOCK_N=b.block_n, BLOCK_K=b.block_k, TAP_REUSE=b.tap_reuse,
                     BLOCK_W=b.block_w if b.tap_reuse else 1, EVEN_K=even_k(args["CIN"], b.block_k, strides))
            trial = replace(launch, constexprs=c, num_warps=b.num_warps, num_stages=b.num_stages)
            start = time.perf_counter()
            try:
                used: dict[str, Any] = resources(compile_launch(trial, arch=arch))
            except Exception as e:  # e.g. out of shared memory or registers at compile time
                used = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            seconds = round(time.perf_counter() - start, 2)
            fits = "error" not in used and not used["spill_bytes"] and used["shared_bytes"] <= SHARED_LIMIT
            rows.append({"layer": what, "dtype": dtype, "blocks": cand, "fits": fits, "compile_s": seconds, **used})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON rows (default: a table)")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"),
                   help="the programs' dtype (default: fp16; fp16 includes the INT8 program)")
    p.add_argument("--size", default="960x540", help="input WIDTHxHEIGHT whose launches are compiled (default: "
                   "960x540)")
    p.add_argument("--batch", type=int, default=1, help="input batch (default: 1)")
    p.add_argument("--arch", type=int, default=90, help="SM architecture (default: 90)")
    p.add_argument("--sweep", action="store_true",
                   help="instead: compile every candidate block choice of each rrdbnet ×4 conv (minutes; JSON rows)")
    p.add_argument("--layer", action="append", help="with --sweep: only this layer, as the report describes it "
                   "(e.g. 'conv3x3 64→32 lrelu'; repeatable; default: every conv)")
    p.add_argument("--launched-only", action="store_true",
                   help="skip the tap-reuse alternatives of each conv (default: compile them too)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    size = re.fullmatch(r"(\d+)x(\d+)", args.size)
    if size is None or args.batch < 1:
        print(f"error: --size must be WIDTHxHEIGHT and --batch ≥ 1, got {args.size!r}, {args.batch}", file=sys.stderr)
        return 2
    if args.sweep:
        try:
            rows = sweep(args.dtype, arch=args.arch, layers=args.layer)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(rows))
        return 0
    rows = report(args.dtype, n=args.batch, h=int(size.group(2)), w=int(size.group(1)), arch=args.arch,
                  alternatives=not args.launched_only)
    if args.json:
        print(json.dumps(rows))
        return 0
    print("| kernel | blocks | registers | spill bytes | shared bytes | cp.async | wgmma | layers |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        layers = "; ".join(r["layers"]) + ("" if r["launched"] else " (alternative, not launched)")
        print(f"| {r['kernel']} | {r['blocks']} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | "
              f"{r['cp_async']} | {r['wgmma']} | {layers} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
