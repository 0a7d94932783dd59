"""`python bench/gpu_check.py`: the fused kernels on one GPU in one call of at most 8 minutes: the device's ceilings,
every conv of rrdb23 against cuDNN, a block sweep that fills `kernels.blocks.BLOCK_TABLE`, the whole forward, the GPU
tests, `engine.infer`, `bench/run.py`'s 4K workload and a >2³¹-element buffer.

On the device machine, from the repository root (the `run` tool with timeout_s=540, so a rerun still fits):

    export PYTHONUNBUFFERED=1; set -o pipefail
    timeout 470 python3 bench/gpu_check.py --out $OUT --budget 440 2>&1 | tee $OUT/log.txt

Phases, in priority order. Each starts only while enough of `--budget` is left, keeps to its own share of it, and a
failure is recorded with its traceback while the next phase runs:
  0 env       versions, the device, clocks (nvidia-smi); starts building engine._C in the background
              (`python3 -m pip install -e . --no-deps --no-build-isolation`; log in build.log)
  1 ceilings  HBM copy, reads of an L2-resident and of an HBM buffer, an 8192³ fp16 GEMM, cuBLAS at
              M = 960·540 with K = 9·Cin and N = 32 or 64 (each RDB conv as a plain GEMM)
  2 convs     each distinct conv of rrdb23 (`rrdb_layers`) at 960×540 fp16 in the forward's buffer layout: ours with
              the table's blocks, ours with the tap-reuse loop order flipped, and cuDNN (PyTorch eager channels_last
              with the same epilogue ops, also alone): ms, TFLOP/s, max |diff| against cuDNN
  3 sweep     per conv, hill climbing over block choices from the table's (`neighbours`: tap reuse off or on with
              block_w 8/16, BLOCK_N 16/32/64 up to Cout, BLOCK_M 64/128/256, BLOCK_K 32/64 dividing Cin, 2–4 stages,
              4/8 warps), the heaviest layers first, each choice checked against cuDNN, compile time apart, until its
              budget (what the later phases leave) runs out; `suggested_table`: per layer key the fastest correct
              blocks
  4 forward   the whole rrdb23 960×540 fp16: the fused plan replayed from a CUDA graph, PyTorch eager fp16
              channels_last and NCHW; PSNR of each against fp32 (TF32 off); peak memory; then the fused plan again
              with the suggested table (BLOCK_TABLE patched for the run)
  5 tests     once the build is done: pytest -v of tests/test_kernels.py and tests/test_kernels_blocks.py (not slow,
              8 workers) and tests/test_plan.py -m gpu
  6 infer     engine.infer(TritonBackend fp16, a 960×540 uint8 frame): the user's path, median ms, PSNR in 8 bits;
              its output (converted to uint8 on the device) against the float output converted on the host
  7 bench     bench/run.py --workloads 4k with torch-fp16, torch-channels-last, triton-fp16 and native-fp16
  8 video     bench/video_ceiling.py (the pipeline around a stand-in engine that costs no CPU: its ceiling per
              libx264 preset, and whether an engine at 0.8× that stays the only busy stage) on bench/run.py's
              generated clip, and with --clip and --clip-model on that clip with that model's outputs (its JSON
              goes into gpu_check.json); bench/run.py --workloads video-1080p (a generated H.264 clip end to end
              beside the engine alone, with each stage's busy share and the engine's idle share) with triton-fp16
              and native-fp16; then, with --clip FILE, `python -m engine.upscale -i FILE` as a user runs it, with
              -n --clip-model (libx264's default preset, then --preset veryfast) and with a random rrdb23
              checkpoint (--backend triton --fp16). Needs PyAV: carry its wheel (the device has none;
              docs/kernels.md)
  9 overflow  convs whose buffers span more than 2³¹ elements, in a subprocess (a fault may poison the CUDA
              context, so it runs last), against PyTorch

Files in --out (the device returns at most 8): gpu_check.json (every result, rewritten as soon as one exists, so a
timeout still leaves data), build.log, pytest.txt, bench_4k.json and bench_video.json (bench/run.py's own JSON),
bench.txt (the bench and video logs), overflow.txt, and log.txt from tee.

Reading gpu_check.json: `phases` says per phase "ok", "failed" (with `error` and `trace`) or "skipped" (with
`reason`). `convs[i].variants` has our kernel per variant (its `blocks`, `ms`, `tflops`, `max_diff`, `ok`),
`convs[i].cudnn` the eager reference; `ms_per_forward` multiplies by the launches per forward. `sweep.rows` is every
block choice tried; `sweep.suggested_table` maps each layer key `(dtype, op, cin, cout, res)` to its fastest correct
blocks, with `row`, a line to paste into kernels/blocks.py's BLOCK_TABLE, and the table's own ms beside. `forward`
rows: median ms, TFLOP/s of the FLOPs our kernels compute, PSNR (dB, None when identical) against fp32, peak
memory; the "suggested blocks" row lists the table keys the forward looked up. `tests`, `infer`, `bench`, `video`
and `overflow` summarize their logs.

`--smoke` (CI, no GPU): sets TRITON_INTERPRET=1 before triton is imported and runs on tiny shapes (a 4×6 input grid,
rrdb23 cut to one RRDB): each conv variant and every sweep candidate against a float64 reference, the forward's and
`engine.infer`'s PSNR against fp32. Timings are the interpreter's wall clock (meaningless for speed); the phases
that need a GPU (ceilings, tests, bench, overflow) and the parts that do (the build, graphs, cuDNN, peak memory)
are recorded as skipped with the reason.
"""

from __future__ import annotations

import os
import sys
import time

STARTED = time.time()  # the budget counts from here: importing torch and triton takes seconds of it
if __name__ == "__main__" and "--smoke" in sys.argv[1:]:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: @triton.jit decides then

import argparse  # noqa: E402
import ast  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before bench/ (this script's folder, which holds a kernels.py of its own)

from bench.kernels import Case, Layer, blocks_row, neighbours, rrdb_layers, time_ms, tolerance  # noqa: E402
from bench.measure import commit, psnr, sync, versions  # noqa: E402
from engine.atomic import atomic_write  # noqa: E402
from kernels import blocks as kblocks  # noqa: E402
from kernels.blocks import Blocks, blocks_for  # noqa: E402
from kernels.conv import DTYPE_NAMES, conv3x3, pack_conv_weight  # noqa: E402

PHASES = ("env", "ceilings", "convs", "sweep", "forward", "tests", "infer", "bench", "video", "overflow")
NEED = {"env": 0, "ceilings": 10, "convs": 30, "sweep": 20, "forward": 30, "tests": 30, "infer": 10, "bench": 30,
        "video": 40, "overflow": 10}  # seconds of the budget a phase needs left to start
KEEP = {"forward": 40, "tests": 90, "infer": 10, "bench": 50, "video": 60,
        "overflow": 15}  # kept back for it by the phases before
GPU_ONLY = {"ceilings": "GPU only: bandwidths and GEMM rates",
            "tests": "GPU only: CI runs these tests on the CPU itself",
            "bench": "GPU only: bench/run.py's 4k workload needs CUDA",
            "video": "GPU only: the CPU's video pipeline is tested by tests/test_video.py and bench/run.py --quick",
            "overflow": "GPU only: tests/test_kernels_blocks.py checks the interpreter past 2^31 elements"}
BUILD_CMD = [sys.executable, "-m", "pip", "install", "-e", ".", "--no-deps", "--no-build-isolation"]
BENCH_BACKENDS = ("torch-fp16", "torch-channels-last", "triton-fp16", "native-fp16")


@triton.jit
def read_kernel(x_ptr, out_ptr, n_blocks, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    """Each program sums ITERS blocks of BLOCK elements strided over the buffer, loaded through L2 only (.cg)."""
    pid = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ITERS):
        blk = (pid + i * tl.num_programs(0)) % n_blocks
        acc += tl.load(x_ptr + blk * BLOCK + tl.arange(0, BLOCK), cache_modifier=".cg").to(tl.float32)
    tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)


# ---------------------------------------------------------------------------------------------------------------
# the check


class Check:
    """The phases (`p_<name>`) over one results dict, saved to <out>/gpu_check.json after every result."""

    def __init__(self, args: argparse.Namespace, t0: float) -> None:
        self.args, self.smoke, self.t0 = args, args.smoke, t0
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device("cpu" if self.smoke else "cuda")
        self.dtype = torch.float16
        self.h, self.w = (4, 6) if self.smoke else (540, 960)
        self.layers = rrdb_layers(num_block=1 if self.smoke else 23)
        self.cases: dict[str, Case] = {}
        self.children: list[subprocess.Popen] = []
        self.build: subprocess.Popen | None = None
        self.net: Any = None
        self.ref32: torch.Tensor | None = None
        self.frame: np.ndarray | None = None
        self.R: dict[str, Any] = {"tool": "bench/gpu_check.py", "argv": sys.argv[1:], "smoke": self.smoke,
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": args.budget,
                                  "input_size": [self.w, self.h], "phases": {}}
        self.selected = [PHASES[int(p)] if p.strip().isdigit() else p.strip() for p in args.phases.split(",")
                         if p.strip()]
        if bad := [p for p in self.selected if p not in PHASES]:
            raise SystemExit(f"--phases: unknown {', '.join(bad)} (known: {', '.join(PHASES)}, or 0–9)")

    # bookkeeping ---------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        return self.args.budget - self.elapsed()

    def share(self, name: str) -> float:
        """Seconds phase `name` may take: what is left after keeping back the later phases' share."""
        later = PHASES[PHASES.index(name) + 1:]
        kept = sum(KEEP.get(p, 0) for p in later if p in self.selected and not (self.smoke and p in GPU_ONLY))
        return max(NEED[name], self.left() - kept)

    def save(self) -> None:
        self.R["elapsed_s"] = round(self.elapsed(), 1)
        text = json.dumps(self.R, indent=1, default=str)
        atomic_write(self.out / "gpu_check.json", lambda tmp: Path(tmp).write_text(text))

    def log(self, *parts: object) -> None:
        print(f"[{self.elapsed():6.1f}s]", *parts, flush=True)

    def phase(self, name: str) -> None:
        reason = None
        if name not in self.selected:
            reason = f"not selected (--phases {self.args.phases})"
        elif self.smoke and name in GPU_ONLY:
            reason = GPU_ONLY[name]
        elif self.left() < NEED[name]:
            reason = f"budget: {self.left():.0f} s left, it needs {NEED[name]}"
        if reason:
            self.R["phases"][name] = {"status": "skipped", "reason": reason}
            self.log(f"{name}: skipped ({reason})")
            self.save()
            return
        self.log(f"{name}: start")
        start = time.time()
        try:
            getattr(self, f"p_{name}")()
            self.R["phases"][name] = {"status": "ok", "seconds": round(time.time() - start, 1)}
        except Exception as e:  # recorded; the next phase runs
            self.R["phases"][name] = {"status": "failed", "seconds": round(time.time() - start, 1),
                                      "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-4000:]}
            self.log(f"{name}: FAILED {type(e).__name__}: {e}")
        self.save()

    def kernel_ms(self, fn: Callable[[], object]) -> float:
        """Median ms of one call on the GPU: triton's do_bench (L2 flushed before each call)."""
        return float(triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median"))

    def measure(self, case: Case, b: Blocks) -> dict[str, Any]:
        """Our conv with blocks `b`: correctness (`Case.check`), then ms and TFLOP/s (in smoke mode the one checked
        call's interpreter wall clock)."""
        r = case.check(b)
        ms = r["compile_s"] * 1e3 if self.smoke else self.kernel_ms(lambda: case.ours(b))
        r["ms"], r["tflops"] = round(ms, 4), round(case.flops / max(ms, 1e-6) / 1e9, 1)
        return r

    def case(self, layer: Layer) -> Case:
        if layer.name not in self.cases:
            self.cases[layer.name] = Case(layer, self.h, self.w, self.dtype, self.device, seed=len(self.cases))
        return self.cases[layer.name]

    def call(self, cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run `cmd` in its own process group (killed whole on a timeout or when this script is stopped), its output
        appended to `log`."""
        start = time.time()
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
                                 start_new_session=True)
            self.children.append(p)
            try:
                out, _ = p.communicate(timeout=max(1.0, timeout))
                rc: int | str = p.returncode
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                out, _ = p.communicate()
                rc = f"timeout after {timeout:.0f} s"
            finally:
                self.children.remove(p)
            f.write(out + "\n")
        lines = [ln for ln in out.splitlines() if ln.strip()]
        return {"rc": rc, "seconds": round(time.time() - start, 1), "tail": lines[-4:], "output": out}

    def stop(self, signum: int, _frame: object) -> None:
        """SIGTERM (the outer `timeout`): end the subprocesses, record where it stopped, exit."""
        for p in [*self.children, *([self.build] if self.build else [])]:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.R["stopped"] = f"signal {signum} after {self.elapsed():.0f} s"
        self.save()
        os._exit(128 + signum)

    # phases -------------------------------------------------------------------------------------------------
    def p_env(self) -> None:
        env: dict[str, Any] = {**versions(), "commit": commit(), "repo": str(REPO)}
        if not self.smoke:
            p = torch.cuda.get_device_properties(0)
            env.update(device=p.name, cc=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                       memory_gib=round(p.total_memory / 2**30, 1), l2_mib=round(p.L2_cache_size / 2**20, 1),
                       cudnn=torch.backends.cudnn.version())
            for key, cmd in (("nvidia_smi", ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                                             "clocks.mem,clocks.max.mem,power.limit,temperature.gpu",
                                             "--format=csv"]), ("nvcc", ["nvcc", "--version"])):
                try:
                    env[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()[-500:]
                except (OSError, subprocess.SubprocessError) as e:
                    env[key] = f"unavailable: {e}"
            log = open(self.out / "build.log", "w")  # noqa: SIM115 (the build outlives this function)
            self.build = subprocess.Popen(BUILD_CMD, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                          start_new_session=True)
            self.R["build"] = {"status": "started", "command": " ".join(BUILD_CMD[1:]), "at_s": round(self.elapsed())}
        else:
            self.R["build"] = {"status": "skipped", "reason": "smoke: engine._C is built by the test environment"}
        self.R["env"] = env
        self.log(json.dumps(env)[:600])

    def p_ceilings(self) -> None:
        c: dict[str, float] = {}
        self.R["ceilings"] = c
        dev, half = self.device, torch.float16
        x = torch.empty(2**30, dtype=half, device=dev)  # 2 GiB
        y = torch.empty_like(x)
        ms = self.kernel_ms(lambda: y.copy_(x))
        c["hbm_copy_TBps"] = round(2 * x.nbytes / ms / 1e9, 2)  # read + write
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        nprog, iters, block = 16 * sms, 64, 2048
        acc = torch.empty(nprog * block, dtype=torch.float32, device=dev)
        for label, numel in (("l2_read_TBps_16MiB", 8 * 2**20), ("hbm_read_TBps_2GiB", 2**30)):
            buf = x[:numel]
            ms = self.kernel_ms(lambda: read_kernel[(nprog,)](buf, acc, numel // block, ITERS=iters,  # noqa: B023
                                                              BLOCK=block, num_warps=4))
            c[label] = round(nprog * iters * block * 2 / ms / 1e9, 2)
        x = y = buf = None  # 4 GiB back
        a = torch.randn(8192, 8192, device=dev, dtype=half)
        c["gemm_8192_fp16_TFLOPs"] = round(2 * 8192**3 / self.kernel_ms(lambda: a @ a) / 1e9, 1)
        del a
        m = self.h * self.w
        for cin, n in ((64, 32), (96, 32), (128, 32), (160, 32), (192, 64), (64, 64)):
            a = torch.randn(m, 9 * cin, device=dev, dtype=half)
            b = torch.randn(9 * cin, n, device=dev, dtype=half)
            ms = self.kernel_ms(lambda: a @ b)  # noqa: B023
            c[f"cublas_M{m}_K{9 * cin}_N{n}_TFLOPs"] = round(2 * m * 9 * cin * n / ms / 1e9, 1)
            self.save()
        self.log(json.dumps(c))

    def p_convs(self) -> None:
        torch.backends.cudnn.benchmark = True
        rows: list[dict[str, Any]] = []
        self.R["convs"] = rows
        stop = time.time() + self.share("convs")
        for layer in self.layers:
            if time.time() > stop:
                rows.append({"layer": layer.name, "skipped": "the phase's share of the budget ran out"})
                continue
            case = self.case(layer)
            table = blocks_for(DTYPE_NAMES[self.dtype], layer.op, cin=layer.cin, cout=layer.cout, res=layer.res)
            row: dict[str, Any] = {"layer": layer.name, "key": list(layer.key(self.dtype)), "count": layer.count,
                                   "input": list(case.x.shape), "gflop": round(case.flops / 1e9, 2), "variants": {}}
            alternative = "flat" if table.tap_reuse else "tap_reuse"
            for label, b in (("table", table), (alternative, replace(table, tap_reuse=not table.tap_reuse))):
                row["variants"][label] = {"blocks": b.as_kwargs(), **self.measure(case, b)}
            if not self.smoke:
                with torch.no_grad():
                    ms = self.kernel_ms(case.eager)
                    row["cudnn"] = {"ms": round(ms, 4), "tflops": round(case.flops / ms / 1e9, 1),
                                    "conv_only_ms": round(self.kernel_ms(case.conv_only), 4)}
                row["ms_per_forward"] = {k: round(v["ms"] * layer.count, 2) for k, v in row["variants"].items()}
                row["ms_per_forward"]["cudnn"] = round(row["cudnn"]["ms"] * layer.count, 2)
            else:
                row["timing"] = "interpreter wall clock; cuDNN skipped (smoke: no GPU, float64 reference)"
            rows.append(row)
            self.log(json.dumps(row))
            self.save()

    def p_sweep(self) -> None:
        """Hill climbing per layer: each round tries the untried neighbours of the layer's fastest correct blocks,
        layers in order of their share of the forward."""
        dt = DTYPE_NAMES[self.dtype]
        budget = self.args.sweep_seconds if self.args.sweep_seconds is not None else self.share("sweep")
        stop = time.time() + budget
        rows: list[dict[str, Any]] = []
        suggested: dict[str, dict[str, Any]] = {}
        self.R["sweep"] = {"budget_s": round(budget), "rows": rows, "suggested_table": suggested}
        # a layer's share: its measured time on a GPU; its FLOPs under the interpreter, whose wall clock says nothing
        measured = {} if self.smoke else {r["layer"]: r["variants"]["table"]["ms"] for r in self.R.get("convs", [])
                                          if "variants" in r}
        weight = {L.name: (measured.get(L.name) or self.case(L).flops / 1e9) * L.count for L in self.layers}
        order = sorted(self.layers, key=lambda L: -weight[L.name])
        self.R["sweep"]["order"] = [[L.name, weight[L.name]] for L in order]
        table = {L.name: blocks_for(dt, L.op, cin=L.cin, cout=L.cout, res=L.res) for L in order}
        best: dict[str, tuple[Blocks, float]] = {}
        tried: dict[str, set[Blocks]] = {L.name: set() for L in order}
        while time.time() < stop:
            todo = [(L, b) for L in order  # a layer whose table blocks fail still gets their neighbours tried
                    for b in [table[L.name], *neighbours(best.get(L.name, (table[L.name], 0.0))[0], L)]
                    if b not in tried[L.name]]
            if not todo:
                break
            for L, b in todo:
                if time.time() > stop or b in tried[L.name]:
                    continue
                tried[L.name].add(b)
                case = self.case(L)
                row: dict[str, Any] = {"layer": L.name, "blocks": b.as_kwargs()}
                try:
                    row.update(self.measure(case, b))
                except Exception as e:  # a choice that does not compile (shared memory, registers) is a result
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.append(row)
                if row.get("ok") and (L.name not in best or row["ms"] < best[L.name][1]):
                    best[L.name] = (b, row["ms"])
                    key = L.key(self.dtype)
                    table_ms = next((r["ms"] for r in rows if r["layer"] == L.name and r["blocks"] ==
                                     table[L.name].as_kwargs() and "ms" in r), None)
                    suggested[repr(key)] = {"layer": L.name, "blocks": b.as_kwargs(), "ms": row["ms"],
                                            "table_ms": table_ms, "differs": b != table[L.name],
                                            "row": blocks_row(key, b)}
                self.save()
            self.log(f"sweep: {len(rows)} tried, best {json.dumps({k: v[1] for k, v in best.items()})}")
        self.R["sweep"]["tried_per_layer"] = {k: len(v) for k, v in tried.items()}

    def network(self) -> Any:
        if self.net is None:
            import engine.models as M

            torch.manual_seed(0)
            self.net = M.create("rrdb23", **({"num_block": 1} if self.smoke else {})).eval()
        return self.net

    def input_frame(self) -> np.ndarray:
        """The shipped example photo at the input size, uint8 (h, w, 3) RGB."""
        if self.frame is None:
            import cv2

            img = cv2.cvtColor(cv2.imread(str(REPO / "examples" / "rocket.jpg")), cv2.COLOR_BGR2RGB)
            self.frame = np.ascontiguousarray(cv2.resize(img, (self.w, self.h), interpolation=cv2.INTER_AREA))
        return self.frame

    def quality(self, out: torch.Tensor) -> dict[str, Any]:
        db, largest = psnr(out.detach().float().clamp(0, 1).cpu().numpy(),
                           self.ref32.clamp(0, 1).cpu().numpy(), 1.0)  # type: ignore[union-attr]
        return {"psnr_db": None if db is None else round(db, 2), "max_abs_diff": round(largest, 6)}

    def fused(self, label: str, x: torch.Tensor) -> dict[str, Any]:
        from kernels.rrdbnet import FusedRRDBNet, fused_flops

        n, _, h, w = x.shape
        if not self.smoke:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        plan = FusedRRDBNet(self.network(), dtype=self.dtype, device=self.device)
        buf = plan.buffers(n, h, w)
        buf["input"][0].copy_(x)
        plan.forward(n, h, w)  # compiles every variant
        sync(self.device)
        row: dict[str, Any] = {"label": label, "first_call_s": round(time.perf_counter() - start, 2),
                               "launches": plan.launches()}
        if not self.smoke:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                plan.forward(n, h, w)
            ms = time_ms(graph.replay, repeat=5)
            row.update(ms=round(ms, 2), tflops=round(fused_flops(plan, n, h // plan.multiple, w // plan.multiple)
                                                     / ms / 1e9, 1),
                       peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
        row.update(self.quality(buf["output"][0]))
        return row

    def p_forward(self) -> None:
        rows: list[dict[str, Any]] = []
        self.R["forward"] = rows
        self.cases.clear()  # the conv buffers: several GiB at 960×540
        net = self.network().to(self.device)
        x = torch.from_numpy(self.input_frame()).permute(2, 0, 1)[None].float().div(255).to(self.device)
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference; nothing timed here runs fp32 matmuls
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            y = net(x)
            lo, scale = float(y.min()), 1.0 / max(float(y.max() - y.min()), 1e-6)
            net.conv_last.weight.mul_(scale)
            net.conv_last.bias.mul_(scale).sub_(lo * scale)
            self.ref32 = net(x)
        self.R["forward_network"] = {
            "weights": "rrdb23 with random weights (seed 0), conv_last scaled so that its fp32 output spans [0, 1] on "
                       "this input (unscaled it stays near 0 and mostly clamps to 0: a PSNR against peak 1 would "
                       "read high)", "conv_last_scale": scale, "conv_last_shift": -lo * scale}
        rows.append(self.fused("fused, table blocks" + ("" if self.smoke else ", CUDA graph"), x))
        self.log(json.dumps(rows[-1]))
        self.save()
        if not self.smoke:
            torch.backends.cudnn.benchmark = True
            for label, fmt in (("pytorch eager fp16 channels_last", torch.channels_last),
                               ("pytorch eager fp16 NCHW", torch.contiguous_format)):
                torch.cuda.reset_peak_memory_stats()
                m = copy.deepcopy(net).half().to(memory_format=fmt)
                xh = x.half().contiguous(memory_format=fmt)
                with torch.inference_mode():
                    ms = time_ms(lambda: m(xh), repeat=5)  # noqa: B023
                    peak = torch.cuda.max_memory_allocated() / 2**30
                    rows.append({"label": label, "ms": round(ms, 2), "peak_gib": round(peak, 2), **self.quality(m(xh))})
                del m
                self.log(json.dumps(rows[-1]))
                self.save()
        table = self.R.get("sweep", {}).get("suggested_table", {})
        suggested = {ast.literal_eval(k): Blocks(**v["blocks"]) for k, v in table.items() if v["differs"]}
        if not suggested:
            self.R["forward_suggested"] = "skipped: the sweep suggested no row that differs from the table"
            return
        looked_up: set[tuple] = set()

        class Recording(dict):
            def get(self, key: Any, default: Any = None) -> Any:
                looked_up.add(key)
                return super().get(key, default)

        original = kblocks.BLOCK_TABLE
        kblocks.BLOCK_TABLE = Recording({**original, **suggested})
        try:
            row = self.fused("fused, suggested blocks" + ("" if self.smoke else ", CUDA graph"), x)
        finally:
            kblocks.BLOCK_TABLE = original
        row["rows_applied"] = sorted(repr(k) for k in suggested if k in looked_up)
        row["rows_not_looked_up"] = sorted(repr(k) for k in suggested if k not in looked_up)
        rows.append(row)
        self.log(json.dumps(row))

    def wait_build(self, timeout: float) -> None:
        if self.build is None:
            return
        try:
            self.build.wait(timeout=max(1.0, timeout))
            self.R["build"].update(status="done", rc=self.build.returncode, at_s=round(self.elapsed()))
        except subprocess.TimeoutExpired:
            self.R["build"].update(status=f"still running after {self.elapsed():.0f} s")
        self.save()

    def p_tests(self) -> None:
        res: dict[str, Any] = {}
        self.R["tests"] = res
        stop = time.time() + self.share("tests")
        self.wait_build(min(120.0, stop - time.time() - 30))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        probe = subprocess.run([sys.executable, "-c", "import engine._C as C; print(C.built_with_cuda())"],
                               capture_output=True, text=True, cwd=REPO, env=env)
        res["engine_C_built_with_cuda"] = probe.stdout.strip() or probe.stderr.strip()[-300:]
        import importlib.util

        xdist = ["-n", "8"] if importlib.util.find_spec("xdist") else []
        base = [sys.executable, "-m", "pytest", "-v", "-rfE", "--tb=short", "-p", "no:cacheprovider"]
        for name, extra, keep in (("kernels", [*xdist, "-m", "not slow", "tests/test_kernels.py",
                                               "tests/test_kernels_blocks.py"], 25),
                                  ("plan_gpu", ["-m", "gpu", "tests/test_plan.py"], 0)):
            r = self.call(base + extra, self.out / "pytest.txt", timeout=stop - time.time() - keep, env=env)
            out = r.pop("output")
            r["counts"] = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                            out.splitlines()[-1] if out.strip() else "")}
            r["failed"] = [ln for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))][:40]
            res[name] = r
            self.log(f"tests {name}: {json.dumps(r)[:400]}")
            self.save()

    def p_infer(self) -> None:
        import engine
        from engine.backends.fused import TritonBackend

        if not self.smoke:  # engine._C with its CUDA pixel kernels
            self.wait_build(min(150.0, self.share("infer")))
        frame = self.input_frame()
        backend = TritonBackend(self.network(), device=self.device, dtype="fp16")
        start = time.perf_counter()
        out = engine.infer(backend, frame)
        first = time.perf_counter() - start
        times = [first * 1e3]  # smoke: the one interpreted call
        for _ in range(0 if self.smoke else 5):
            start = time.perf_counter()
            out = engine.infer(backend, frame)
            times.append((time.perf_counter() - start) * 1e3)
        times = times[1:] or times
        r: dict[str, Any] = {"first_s": round(first, 2), "median_ms": round(statistics.median(times), 1),
                             "times_ms": [round(t, 1) for t in times], "output": list(out.shape)}
        if self.ref32 is not None:  # the forward's fp32 output of the same frame, in 8 bits
            ref8 = (self.ref32[0].clamp(0, 1) * 255).round().permute(1, 2, 0).cpu().numpy()
            db, largest = psnr(out.astype(np.float64), ref8, 255.0)
            r.update(psnr_8bit_db=None if db is None else round(db, 2), max_abs_diff_levels=largest)
        if not self.smoke:  # the output converted to uint8 on the device, as the host would convert the floats
            from engine._ext import load_C
            from engine.inference import upscale_planes

            C = load_C()
            up = upscale_planes(backend, C.to_planar(np.ascontiguousarray(frame)))
            host8 = C.from_planar(np.ascontiguousarray(up.float().cpu().numpy()), "uint8")
            r["device_uint8_equals_host"] = bool(np.array_equal(host8, out))
            r["device_vs_host_max_levels"] = int(np.abs(host8.astype(np.int16) - out.astype(np.int16)).max())
        if self.smoke:
            r["timing"] = "interpreter wall clock"
        self.R["infer"] = r
        self.log(json.dumps(r))

    def p_bench(self) -> None:
        from bench.run import backend_specs

        known = {s.key for s in backend_specs()}
        backends = [b for b in BENCH_BACKENDS if b in known]
        with tempfile.TemporaryDirectory(prefix="gpu-check-bench-") as tmp:
            r = self.call([sys.executable, "bench/run.py", "--workloads", "4k", "--backends", ",".join(backends),
                           "--repeat", "5", "--warmup", "2", "--out", tmp, "--no-chart"], self.out / "bench.txt",
                          timeout=self.share("bench"))
            r.pop("output")
            found = sorted(Path(tmp).glob("*/*.json"))
            r["backends"] = backends
            if found:
                (self.out / "bench_4k.json").write_text(found[-1].read_text())
                doc = json.loads(found[-1].read_text())
                r["rows"] = [{"backend": row.get("backend"), "median_ms": (row.get("latency_ms") or {}).get("median"),
                              "psnr_db": row.get("psnr_db")} for w in doc["workloads"] for row in w["rows"]]
                r["unavailable"] = [w.get("unavailable") for w in doc["workloads"]]
        self.R["bench"] = r
        self.log(json.dumps(r)[:800])

    def p_video(self) -> None:
        """bench/run.py's video-1080p workload (a generated clip end to end beside the engine alone) with the
        Triton and native backends, then `python -m engine.upscale` on the clip given by --clip as a user runs it:
        with --clip-model (default preset, then veryfast), and with rrdb23 (random weights, which do not change
        its speed) through Triton in fp16."""
        from bench.run import backend_specs
        from engine import models

        try:
            import av  # noqa: F401
        except ImportError:
            raise RuntimeError("PyAV is missing on this machine: carry its wheel (docs/kernels.md)") from None
        known = {s.key for s in backend_specs()}
        backends = [b for b in ("triton-fp16", "native-fp16") if b in known]
        log = self.out / "bench.txt"
        r: dict[str, Any] = {"backends": backends}
        # the clip model with libx264's default preset and with veryfast (a fast model can outrun medium)
        runs = ([["-n", self.args.clip_model], ["-n", self.args.clip_model, "--preset", "veryfast"]]
                if self.args.clip_model else [[]])
        with tempfile.TemporaryDirectory(prefix="gpu-check-video-") as tmp:
            rrdb = Path(tmp) / "rrdb23-random.safetensors"
            torch.manual_seed(0)
            models.save(models.create("rrdb23"), rrdb)
            runs.append(["-n", str(rrdb), "--backend", "triton", "--fp16"])
            # the pipeline's own ceiling (the engine a stand-in that costs no CPU): the generated clip with bicubic
            # outputs, and the given clip with the clip model's real outputs
            r["ceiling"] = []
            ceilings = [[]] + ([["--clip", self.args.clip, "--content", self.args.clip_model]]
                               if self.args.clip and self.args.clip_model else [])
            for k, extra in enumerate(ceilings):
                found_json = Path(tmp) / f"ceiling{k}.json"
                c = self.call([sys.executable, "bench/video_ceiling.py", "--paces", "0.8", "--out", str(found_json),
                               *extra], log, timeout=max(30, min(150, self.share("video") / 4)))
                c.pop("output")
                if found_json.is_file():
                    doc = json.loads(found_json.read_text())
                    c["doc"] = doc
                    c["summary"] = {preset: {name: v["fps_median"] for name, v in by.items()}
                                    for preset, by in doc["presets"].items()}
                r["ceiling"].append({"args": extra, **c})
                self.log(f"video ceiling: {json.dumps({k: v for k, v in c.items() if k != 'doc'})[:800]}")
                self.save()
            b = self.call([sys.executable, "bench/run.py", "--workloads", "video-1080p", "--backends",
                           ",".join(backends), "--repeat", "2", "--warmup", "0", "--out", tmp, "--no-chart"], log,
                          timeout=max(60, self.share("video") - (40 * len(runs) if self.args.clip else 0)))
            b.pop("output")
            found = sorted(Path(tmp).glob("*/*.json"))
            if found:
                (self.out / "bench_video.json").write_text(found[-1].read_text())
                doc = json.loads(found[-1].read_text())
                b["rows"] = [{"backend": row["backend"], **row.get("video", {}), "psnr_db": row.get("psnr_db")}
                             for w in doc["workloads"] for row in w["rows"]]
                b["unavailable"] = [w.get("unavailable") for w in doc["workloads"]]
            r["bench"] = b
            self.log(f"video bench: {json.dumps(b)[:800]}")
            self.save()
            r["clips"] = []
            for k, extra in enumerate(runs if self.args.clip else []):
                cmd = [sys.executable, "-m", "engine.upscale", "-i", self.args.clip, "-o", str(Path(tmp) / str(k)),
                       *extra]
                c = self.call(cmd, log, timeout=max(NEED["video"], self.share("video") / (len(runs) - k)))
                out = c.pop("output")
                c["report"] = [ln for ln in out.splitlines() if "frames/s" in ln]
                r["clips"].append({"path": self.args.clip, "args": extra, **c})
                self.log(f"video clip: {json.dumps(r['clips'][-1])[:800]}")
                self.save()
        self.R["video"] = r

    def p_overflow(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        r = self.call([sys.executable, str(Path(__file__).resolve()), "--overflow-probe"], self.out / "overflow.txt",
                      timeout=max(NEED["overflow"], self.left()), env=env)
        out = r.pop("output")
        r["cases"] = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        r["all_ok"] = bool(r["cases"]) and r["rc"] == 0 and all(c["ok"] for c in r["cases"])
        self.R["overflow"] = r
        self.log(json.dumps(r)[:800])

    def summary(self) -> None:
        lines = ["", "==== summary ===="]
        lines += [f"{k}: {v['status']} {v.get('reason') or v.get('error') or ''}" for k, v in self.R["phases"].items()]
        if "ceilings" in self.R:
            lines.append(f"ceilings: {json.dumps(self.R['ceilings'])}")
        for r in self.R.get("convs", []):
            v = r.get("variants", {})
            lines.append(f"{r['layer']}: " + ", ".join(f"{k} {x.get('ms')} ms ok={x.get('ok')}" for k, x in v.items())
                         + (f", cudnn {r['cudnn']['ms']} ms" if "cudnn" in r else ""))
        for v in self.R.get("sweep", {}).get("suggested_table", {}).values():
            lines.append(f"suggested {v['row']}  # {v['ms']} ms, table {v['table_ms']} ms")
        for r in self.R.get("forward", []):
            lines.append(f"forward {r['label']}: {r.get('ms')} ms, PSNR {r.get('psnr_db')} dB")
        for k in ("tests", "infer", "bench", "video", "overflow"):
            if k in self.R:
                lines.append(f"{k}: {json.dumps(self.R[k])[:500]}")
        lines.append(f"elapsed {self.elapsed():.0f} s")
        print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# the overflow probe (its own process)


def overflow_probe() -> None:
    """Print one JSON line per case: convs whose buffers reach past element 2³¹, on the GPU, against PyTorch fp32.
    (1) strided views whose second image starts just below element 2³¹ (as tests/test_kernels_blocks.py on the
    CPU), with the table's blocks and with tap reuse; (2) conv_hr on one 8800×3840 image of 64 channels (2.16·10⁹
    elements), its last rows past 2³¹ and a control crop far below."""
    dev, half = torch.device("cuda"), torch.float16
    torch.backends.cudnn.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    n, h, w, cin, cout, stride_n = 2, 8, 16, 64, 32, 2**31 - 1024
    xs, ys = torch.zeros(2**31 + 8192, dtype=half, device=dev), torch.zeros(2**31 + 8192, dtype=half, device=dev)
    x = xs.as_strided((n, h, w, cin), (stride_n, w * cin, cin, 1))
    y = ys.as_strided((n, h, w, cout), (stride_n, w * cout, cout, 1))
    x.copy_(torch.randn(n, h, w, cin, generator=g).to(half))
    wt, b = (torch.randn(cout, cin, 3, 3, generator=g) / 24).to(half), torch.randn(cout, generator=g).to(half)
    ref = F.conv2d(x.permute(0, 3, 1, 2).float(), wt.float().to(dev), b.float().to(dev), padding=1)
    table = blocks_for("fp16", "conv3x3", cin=cin, cout=cout)
    for label, blocks in (("views past 2^31, table blocks", table),
                          ("views past 2^31, tap reuse flipped", replace(table, tap_reuse=not table.tap_reuse))):
        y.fill_(float("nan"))
        conv3x3(x, pack_conv_weight(wt.double(), half).to(dev), b.to(dev), y, cin=cin, cout=cout,
                **blocks.as_kwargs())
        torch.cuda.synchronize()
        diff = float((y.permute(0, 3, 1, 2).float() - ref).abs().max())
        print(json.dumps({"case": label, "max_diff": diff, "tol": tolerance(ref), "ok": diff <= tolerance(ref)}),
              flush=True)
    del xs, ys, x, y
    h, w, c = 8800, 3840, 64
    x = torch.randn(1, h, w, c, device=dev, dtype=half)
    y = torch.zeros_like(x)
    wt = (torch.randn(c, c, 3, 3, generator=g) / 24).to(half).to(dev)
    b = torch.zeros(c, device=dev, dtype=half)
    conv3x3(x, pack_conv_weight(wt.double(), half), b, y, cin=c, cout=c, act="lrelu", slope=0.2, res=4)
    torch.cuda.synchronize()
    for lo in (100, h - 20):  # rows lo..lo+19 from a crop with one row of context above and below
        crop = x[:, lo - 1:min(h, lo + 21)].permute(0, 3, 1, 2).float()
        ref = F.leaky_relu(F.conv2d(crop, wt.float(), b.float(), padding=1), 0.2)[:, :, 1:21]
        got = y[:, lo:lo + 20].permute(0, 3, 1, 2).float()
        diff = float((got - ref).abs().max())
        print(json.dumps({"case": f"8800x3840x64 image, rows {lo}..{lo + 19}", "past_2_31": lo * w * c >= 2**31,
                          "max_diff": diff, "tol": tolerance(ref), "ok": diff <= tolerance(ref)}), flush=True)


# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_out",
                   help="folder for gpu_check.json and the logs (default: $OUT, else gpu_out)")
    p.add_argument("--budget", type=float, default=440.0,
                   help="seconds for all phases; a phase starts only with enough left (default: 440, for 8 minutes)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated names or numbers 0–9 (default: all: {','.join(PHASES)})")
    p.add_argument("--sweep-seconds", type=float, default=None,
                   help="the sweep's budget (default: what the later phases leave; 10 with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="no GPU: TRITON_INTERPRET=1, tiny shapes, the GPU-only parts skipped (default: off)")
    p.add_argument("--clip", help="a video file for the video phase to upscale with python -m engine.upscale "
                   "(default: none, only bench/run.py's generated clip)")
    p.add_argument("--clip-model", help="the -n of that run: a checkpoint file (default: the shipped model)")
    p.add_argument("--overflow-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke and args.sweep_seconds is None:
        args.sweep_seconds = 10.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.overflow_probe:
        overflow_probe()
        return 0
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--smoke needs TRITON_INTERPRET=1 before triton is imported: run this file as a script")
    if not args.smoke and not torch.cuda.is_available():
        print("error: bench/gpu_check.py checks a CUDA GPU and this machine has none; --smoke runs its CPU parts",
              file=sys.stderr)
        return 2
    check = Check(args, STARTED)
    signal.signal(signal.SIGTERM, check.stop)
    for name in PHASES:
        check.phase(name)
    if check.build is not None and check.build.poll() is None:
        check.wait_build(0)
    check.save()
    check.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
