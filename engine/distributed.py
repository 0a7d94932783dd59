"""`python -m engine.upscale -i SRC -o DST --ray [auto|ADDRESS]`: the same run on a Ray cluster.

The driver plans the run as a single run does (which inputs are skipped, which fail before any work, which outputs
may be replaced) and cuts it into units: one per image, and one per remaining segment of each video (the segments
a single run writes, `engine.video.plan_video`, so an interrupted video resumes from the same parts folder). Ray
Data streams the units through a pool of actors (`map_batches` with one unit per batch), each holding one engine
built the way a single run builds it (`engine.upscale.make_backend`: a checkpoint, a named model or a built engine,
`--alpha`), one actor per GPU (`--gpus-per-worker` for fractions) or CPU actors where the cluster has no GPU. A
worker writes each output itself, atomically and by the same functions as a single run (`upscale_file`,
`encode_segment`), so the files are the same bytes; the driver joins a video once all its segments are in.

Failures: an exception in a unit is that unit's failure, reported by name, and the others go on; a worker process
that dies is restarted by Ray and its unit retried (`MAX_TASK_RETRIES`), and a unit whose worker dies every time is
reported failed alone. An output that a dead attempt had already written is found complete by the retry. A killed
driver leaves whole files and finished segments: the same command with `--skip-existing` resumes.

Needs Ray (`pip install -e ".[distributed]"`). Shared storage: every worker reads the inputs and writes the outputs
at the driver's paths (a shared filesystem on a real cluster; docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_TASK_RETRIES = 2  # a unit whose worker process dies is tried this many more times, then reported failed


class RayMissing(ImportError):
    pass


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayMissing("--ray needs Ray: pip install -e \".[distributed]\" (or pip install 'ray[data]')") from e
    return ray


def connect(ray: Any, address: str, num_cpus: int | None = None) -> str:
    """Join the cluster at `address`, or with "auto" the one this machine belongs to (RAY_ADDRESS, `ray start`),
    else start a local one. Returns what it joined."""
    if ray.is_initialized():
        return "the running Ray session"
    quiet = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if address != "auto":
        try:
            ray.init(address=address, **quiet)
        except ValueError as e:  # not an address at all
            raise ValueError(f"--ray {address}: {e}; give the head's HOST:PORT (e.g. 10.0.0.1:6379) or auto") from None
        except ConnectionError as e:
            hint = ("; a cluster started with token authentication (the default of `ray start` in recent Ray) needs "
                    "RAY_AUTH_MODE=token in this environment, and its token (`ray get-auth-token`)"
                    if os.environ.get("RAY_AUTH_MODE") != "token" else "")
            raise ConnectionError(f"--ray {address}: cannot join that Ray cluster ({e}){hint}") from None
        return address
    try:
        ray.init(address="auto", **quiet)
        return "the cluster this machine belongs to"
    except ConnectionError:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return "a local Ray instance"


@dataclass(frozen=True)
class Ops:
    """What this module takes from `engine.upscale`, handed over by it (this module sits beside it and must not
    import it): module-level functions, so that a worker process unpickles them by name."""

    make_backend: Callable[[argparse.Namespace], Any]
    upscale_file: Callable[..., None]
    decide: Callable[..., tuple[str, str | None, bool]]
    resume_key: Callable[[argparse.Namespace, Any], str]
    reason: Callable[[Path, BaseException], str]
    resolve_model: Callable[[str | None], Path]
    video_options: Callable[[argparse.Namespace], dict[str, str]]
    usage_error: type[Exception]
    exit_codes: dict[str, int]  # ok, failed, usage, interrupted


@dataclass
class Shape:
    """What the driver needs of the model without building an engine: its scale and input multiple."""

    scale: int
    multiple: int


def model_shape(args: argparse.Namespace, ops: Ops) -> Shape:
    from . import models
    from .manifest import read_manifest

    source = ops.resolve_model(args.model)
    if source.is_dir():
        m = read_manifest(source)
        return Shape(int(m["scale"]), int(m["multiple"]))
    net, _ = models.load(source)
    return Shape(net.scale, net.input_multiple)


# ---------------------------------------------------------------------------------------------------------
# the workers


class UpscaleWorker:
    """A Ray Data actor: one engine, built once; each call upscales one unit and reports it."""

    def __init__(self, args: argparse.Namespace, jobs: dict[str, Any], threads: int, ops: Ops) -> None:
        if not args.threads:
            args.threads = threads  # the CPUs Ray gave this actor, not all of the machine's
        self.args, self.jobs, self.ops = args, jobs, ops
        self.backend = ops.make_backend(args)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"result": np.array([json.dumps(self.run(json.loads(str(u)))) for u in batch["unit"]])}

    def run(self, unit: dict[str, Any]) -> dict[str, Any]:
        from .inference import backend_batch
        from .video import encode_segment

        args = self.args
        start = time.perf_counter()
        out: dict[str, Any] = {"id": unit["id"], "worker": self.name, "frames": 0}
        src = Path(unit["src"])
        try:
            if unit["kind"] == "image":
                dst = Path(unit["dst"])
                if dst.exists() and not unit["replace"]:
                    out["status"] = "written"  # by an earlier attempt at this unit (the driver checked it was not)
                    out["note"] = "written by an earlier attempt"
                else:
                    batch = backend_batch(self.backend, args.batch)
                    self.ops.upscale_file(self.backend, src, dst, args, batch, unit["replace"])
                    out["status"] = "written"
                out["frames"] = 1
            else:
                job = self.jobs[unit["video"]]
                out["frames"] = encode_segment(self.backend, job, unit["k"], unit["times"], tile=args.tile,
                                               tile_overlap=args.tile_overlap, batch=args.batch,
                                               outscale=args.outscale, threads=args.threads)
                out["status"] = "segment"
        except Exception as e:  # this unit fails alone, by name
            out["status"], out["reason"] = "failed", self.ops.reason(src, e)
        out["seconds"] = time.perf_counter() - start
        return out


# ---------------------------------------------------------------------------------------------------------
# the driver


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    frames: int = 0
    per_worker: dict[str, list[float]] = field(default_factory=dict)  # worker → [units, frames, busy seconds]

    def add(self, row: dict[str, Any]) -> None:
        w = self.per_worker.setdefault(row["worker"], [0, 0, 0.0])
        w[0] += 1
        w[1] += row["frames"]
        w[2] += row["seconds"]
        if row["status"] != "failed":
            self.frames += row["frames"]


def resources(ray: Any, args: argparse.Namespace) -> tuple[int, dict[str, Any], int]:
    """(actors, each actor's Ray resources, each CPU actor's threads): one actor per GPU of the cluster (or
    `--workers`), else `--workers` CPU actors (default: one per 2 CPUs) sharing the CPUs."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), max(1, int(total.get("CPU", 1)))
    if gpus and args.device != "cpu":
        per = args.gpus_per_worker or 1.0
        n = args.workers or max(1, int(gpus / per))
        return n, {"num_gpus": per, "num_cpus": 1}, 0
    n = args.workers or max(1, cpus // 2)
    per_cpu = max(1, cpus // n)
    return n, {"num_cpus": per_cpu}, per_cpu


def stream_units(ray: Any, units: list[dict[str, Any]], args: argparse.Namespace, jobs: dict[str, Any], threads: int,
                 ops: Ops, actors: int, remote: dict[str, Any], done_ids: set[int], summary: Summary,
                 names: dict[int, Path], video_failed: dict[str, str]) -> None:
    """Stream `units` through the actor pool, recording each result as it arrives."""
    if not units:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = -1  # a unit whose worker died on every try is reported by the caller, not fatal
    ctx.enable_progress_bars = False  # this run prints a line per unit instead
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # a block per unit (a retry redoes one unit), up to 10,000 blocks for very long runs
    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=min(len(units), 10_000))
    # one unit at a time per actor: a worker that dies takes only its own unit's retries with it, never those of
    # units queued behind it (a poisoned input fails alone)
    pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1)
    results = ds.map_batches(UpscaleWorker, fn_constructor_args=(args, jobs, threads, ops), batch_size=1,
                             compute=pool, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES, **remote)
    for row in results.iter_rows():
        r = json.loads(row["result"])
        done_ids.add(r["id"])
        summary.add(r)
        src = names[r["id"]]
        if r["status"] == "failed":
            if str(src) in jobs:
                video_failed.setdefault(str(src), r["reason"])
            else:
                summary.failed.append((src, r["reason"]))
        elif r["status"] == "written":
            summary.written += 1
        what = f"segment {units[r['id']]['k']} done" if r["status"] == "segment" else r["status"]
        print(f"{src.name}: {what}" + (f" ({r['reason']})" if r.get("reason") else "")
              + f" [{r['worker']}, {r['seconds']:.1f} s]", file=sys.stderr, flush=True)


def run_ray(args: argparse.Namespace, pairs: list[tuple[Path, Path]], ops: Ops) -> int:
    """The run on Ray; exit status as a single run's (0, 1 some failed, 2 could not start, 130 interrupted)."""
    from .imageio import is_video
    from .video import VideoError, frame_times, plan_video

    codes = ops.exit_codes
    UsageError = ops.usage_error  # noqa: N806 - the class engine.upscale raises for bad arguments
    try:
        ray = require_ray()
        shape = model_shape(args, ops)
        if args.tile and args.tile % shape.multiple:
            raise UsageError(f"-t/--tile {args.tile}: this ×{shape.scale} network needs tiles whose side is a "
                             f"multiple of {shape.multiple}")
        joined = connect(ray, args.ray)
    except (RayMissing, UsageError, ValueError, OSError, ConnectionError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return codes["usage"]

    start = time.perf_counter()
    summary = Summary()
    units: list[dict[str, Any]] = []
    jobs: dict[str, Any] = {}
    segments_of: dict[str, tuple[int, int]] = {}  # video → (segments in all, segments still to encode)
    names: dict[int, Path] = {}
    key = None if args.overwrite else ops.resume_key(args, shape)
    for src, dst in pairs:
        verdict, reason, replace = ops.decide(src, dst, args, shape.scale)
        if verdict == "skip":
            summary.skipped += 1
            continue
        if verdict == "fail":
            summary.failed.append((src, reason or "?"))
            continue
        if not is_video(src):
            units.append({"id": len(names), "kind": "image", "src": str(src), "dst": str(dst), "replace": replace})
            names[len(names)] = src
            continue
        try:
            job = plan_video(shape, src, dst, codec=args.codec, codec_options=ops.video_options(args),
                             pix_fmt=args.pix_fmt,
                             outscale=args.outscale, tile=args.tile, tile_overlap=args.tile_overlap,
                             batch=args.batch, segment_frames=args.segment_frames, resume_key=key,
                             max_pixels=args.max_pixels)
            times = frame_times(src)
            if not times:
                raise VideoError(f"{src}: the video stream has no frame")
        except (VideoError, ValueError, OSError) as e:
            summary.failed.append((src, ops.reason(src, e)))
            continue
        jobs[str(src)] = job
        n = math.ceil(len(times) / args.segment_frames)
        segments_of[str(src)] = (n, n - job.done)
        for k in range(job.done, n):
            units.append({"id": len(names), "kind": "segment", "src": str(src), "video": str(src), "k": k,
                          "times": times[k * args.segment_frames:(k + 1) * args.segment_frames]})
            names[len(names)] = src

    actors, remote, threads = resources(ray, args)
    print(f"Ray: {joined}; {len(units)} unit(s) ({sum(u['kind'] == 'image' for u in units)} image(s), "
          f"{sum(u['kind'] == 'segment' for u in units)} video segment(s)) over {actors} worker(s) {remote}",
          file=sys.stderr)
    done_ids: set[int] = set()
    interrupted = False
    video_failed: dict[str, str] = {}
    stopped: str | None = None  # why the Ray run ended early (no worker could start, say)
    try:
        try:
            stream_units(ray, units, args, jobs, threads, ops, actors, remote, done_ids, summary, names,
                         video_failed)
        except Exception as e:  # noqa: BLE001 - e.g. no worker could build its engine: every unit left is named
            stopped = f"the Ray run stopped: {type(e).__name__}: {str(e)[:500]}"
        for u in units:  # a unit with no result: its worker died on every try, or the run stopped
            if u["id"] not in done_ids:
                why = stopped or f"its worker process died on each of {1 + MAX_TASK_RETRIES} tries"
                if u["kind"] == "segment":
                    video_failed.setdefault(u["video"], f"segment {u['k']}: {why}")
                else:
                    summary.failed.append((Path(u["src"]), why))
        for name, job in jobs.items():
            if name in video_failed:
                summary.failed.append((job.src, video_failed[name]))
                continue
            try:
                from .video import join_video

                join_video(job, segments_of[name][0])
                summary.written += 1
            except (VideoError, OSError) as e:
                summary.failed.append((job.src, str(e)))
    except KeyboardInterrupt:
        interrupted = True

    elapsed = time.perf_counter() - start
    print(f"{summary.written} written to {args.output}, {summary.skipped} skipped, {len(summary.failed)} failed, in "
          f"{elapsed:.1f} s, {summary.frames / elapsed:.2f} frames/s" + (" (interrupted)" if interrupted else ""))
    for worker, (n, frames, busy) in sorted(summary.per_worker.items()):
        print(f"worker {worker}: {n} unit(s), {frames} frame(s), {frames / busy if busy else 0:.2f} frames/s busy")
    for path, reason in summary.failed:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if interrupted:
        return codes["interrupted"]
    return codes["failed"] if summary.failed else codes["ok"]

