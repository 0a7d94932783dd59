"""Compile every kernel variant the engine launches for Hopper (sm_90) without a GPU, and report its resources.

    python -m kernels.compile            # a table: kernel, variant, registers, spill bytes, shared memory
    python -m kernels.compile --json

`triton.compile(..., target=GPUTarget("cuda", 90, 32))` runs the whole pipeline (TTIR → TTGIR → LLVM → PTX →
cubin) on a machine without a GPU; registers, stack (spills) and shared memory are read from the cubin with the
`cuobjdump` that Triton ships. Run it without TRITON_INTERPRET (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

SCALARS_FP32 = {"slope", "r1_scale", "r2_scale", "bn_eps", "r1_dq", "r2_dq", "out_inv", "alpha"}


def _signature(kernel: Any, dtype: str, constexprs: dict[str, Any], pointers: dict[str, str]) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = f"*{pointers.get(name, dtype)}"
        elif name in SCALARS_FP32:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def sm90_usage(kernel: Any, constexprs: dict[str, Any], *, dtype: str = "fp16", num_warps: int = 4,
               num_stages: int = 2, pointers: dict[str, str] | None = None) -> dict[str, int]:
    """Compile `kernel` for sm_90 and return registers, spill (stack) bytes, local bytes and shared bytes.
    Pointer arguments point to `dtype` unless `pointers` names another element type for them."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype, constexprs, pointers or {}),
                       constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
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
    return {"registers": regs, "spill_bytes": stack, "local_bytes": local,
            "shared_bytes": int(compiled.metadata.shared), "wgmma": int("wgmma" in compiled.asm["ptx"])}


def variants(dtype: str = "fp16") -> list[tuple[str, Any, dict[str, Any], dict[str, Any]]]:
    """(name, kernel, constexprs, options) for every variant the engine launches with operands of `dtype`."""
    import torch

    from .conv import blocks_for, conv_kernel
    from .packing import IO_BLOCK, lerp_kernel, nchw_to_nhwc_kernel, nhwc_to_nchw_kernel

    blocks = blocks_for({"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
    tiles = {"BLOCK_M": blocks["block_m"], "BLOCK_N": blocks["block_n"], "BLOCK_K": blocks["block_k"]}
    options = {"num_warps": blocks["num_warps"], "num_stages": blocks["num_stages"]}
    # fp32 operands are multiplied exactly (as conv3x3 launches them), not in TF32
    base = dict(ACT=0, HAS_R1=False, R1_LOWRES=False, HAS_R2=False, HAS_BN=False, SHUFFLE=1, UPSAMPLE=False,
                KSIZE=3, TAPS=9, EVEN_K=True, IEEE=dtype == "fp32", X_INT8=False, OUT_INT8=False, **tiles)
    conv = {
        "rdb conv1-4 (lrelu)": dict(base, ACT=1),
        "rdb conv5 (x + 0.2·y)": dict(base, HAS_R1=True),
        "rrdb last conv5 (two residuals)": dict(base, HAS_R1=True, HAS_R2=True),
        "conv_first (cin 3)": dict(base, EVEN_K=False),
        "upconv ×2 (4 phases, lrelu)": dict(base, ACT=1, UPSAMPLE=True, TAPS=4),
        "conv + pixel shuffle ×2 (prelu)": dict(base, ACT=3, SHUFFLE=2),
        "conv (relu)": dict(base, ACT=2),
        "srgan block conv1 (batch norm, prelu)": dict(base, HAS_BN=True, ACT=3),
        "srgan block conv2 (batch norm, + x)": dict(base, HAS_BN=True, HAS_R1=True),
        "srgan conv_first 9×9 (cin 3, prelu)": dict(base, KSIZE=9, TAPS=81, EVEN_K=False, ACT=3),
        "srvgg last conv (pixel shuffle ×4, + nearest ×4 input)": dict(base, SHUFFLE=4, HAS_R1=True, R1_LOWRES=True),
    }
    out: list[tuple[str, Any, dict[str, Any], dict[str, Any]]] = [
        (f"conv_kernel: {name}", conv_kernel, c, options) for name, c in conv.items()]
    if dtype != "fp32":  # the INT8 trunk (kernels/rrdbnet_int8.py): int8 activations and weights, fp32 scales
        i8 = {n: "i8" for n in ("x_ptr", "w_ptr", "y_ptr", "r1_ptr", "r2_ptr")} | {"q_ptr": "fp32"}
        int8 = dict(base, IEEE=False, X_INT8=True, OUT_INT8=True, EVEN_K=True)
        out += [
            ("conv_kernel: int8 rdb conv1-4 (lrelu, requantize)", conv_kernel, dict(int8, ACT=1),
             {**options, "pointers": i8}),
            ("conv_kernel: int8 rrdb last conv5 (two int8 residuals)", conv_kernel,
             dict(int8, HAS_R1=True, HAS_R2=True), {**options, "pointers": i8}),
            ("conv_kernel: int8 conv_body (fp16 out)", conv_kernel, dict(int8, HAS_R1=True, OUT_INT8=False),
             {**options, "pointers": {**i8, "y_ptr": dtype}}),
        ]
    io = {"num_warps": 4, "num_stages": 1}
    out += [  # the layout conversions around every forward (FusedPlan.forward): float32 NCHW in and out
        ("nchw_to_nhwc_kernel (input, unshuffle ×2)", nchw_to_nhwc_kernel, {"R": 2, "BLOCK": IO_BLOCK},
         {**io, "pointers": {"x_ptr": "fp32"}}),
        ("nhwc_to_nchw_kernel (output)", nhwc_to_nchw_kernel, {"BLOCK": IO_BLOCK},
         {**io, "pointers": {"y_ptr": "fp32"}}),
    ]
    out.append(("lerp_kernel (set_alpha)", lerp_kernel, {"QUANTIZE": False, "BLOCK": 1024},
                {"num_warps": 4, "num_stages": 1}))
    if dtype != "fp32":
        from .rrdbnet_int8 import lerp_pair_kernel

        pointers = {"aq_ptr": "fp32", "bq_ptr": "fp32", "q_ptr": "i8"}
        out.append(("lerp_pair_kernel (set_alpha, int8 plan)", lerp_pair_kernel, {"BLOCK": 1024},
                    {"num_warps": 4, "num_stages": 1, "pointers": pointers}))
    return out


def report(dtype: str = "fp16") -> list[dict[str, Any]]:
    rows = []
    for name, kernel, constexprs, options in variants(dtype):
        shown = {k: v for k, v in options.items() if k != "pointers"}
        rows.append({"kernel": name, "dtype": dtype, **shown, **sm90_usage(kernel, constexprs, dtype=dtype,
                                                                           **options)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kernels.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON rows (default: a table)")
    p.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32 (default: fp16)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: unset TRITON_INTERPRET: interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    rows = report(args.dtype)
    if args.json:
        print(json.dumps(rows))
        return 0
    print("| kernel | registers | spill bytes | shared bytes | wgmma |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | {r['wgmma']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
