"""Build TensorRT plans from our ONNX graphs: the build half (`engine/backends/trt.py` runs the plans).

    min_shape, opt_shape, max_shape = profile_shapes(tile=256, batch=4, channels=3, multiple=1)
    info = build_engine("engines/rrdb23/model.onnx", "engines/rrdb23/model.plan", min_shape=min_shape,
                        opt_shape=opt_shape, max_shape=max_shape, timing_cache="engines/timing.cache")

Precision lives in the graph, never in builder flags: the network is created STRONGLY_TYPED, so an fp16 ONNX
graph (`export.onnx.export_onnx(net, precision="fp16")`) gives an fp16 engine and an INT8 graph carries explicit
QuantizeLinear/DequantizeLinear pairs. That is the only way TensorRT 11 builds reduced precision (it removed the
FP16/INT8/BF16/FP8 builder flags, the precision-constraint flags and the calibrators), and it works the same on
TensorRT 10. Engines are built with REFIT (not REFIT_IDENTICAL, which only allows the build weights back), so
alpha is a refit of the weights named by the ONNX initializers (state-dict keys). Refittable engines have known
caveats (docs/tensorrt.md): compare a refit=True build with a refit=False build of the same graph before trusting a
new TensorRT version.

TensorRT is imported lazily: `import export.tensorrt` works without it, and `build_engine` then raises
`engine.trt_lib.TensorRTUnavailable` saying what to install.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from engine.atomic import atomic_write
from engine.trt_lib import (
    TensorRTUnavailable,
    TrtLog,
    match_refit_weights,
    require_tensorrt,
    tensorrt_available,
    trt_logger,
)

if TYPE_CHECKING:
    import onnx
    import tensorrt as trt

__all__ = ["BuildProgress", "TensorRTBuildError", "TensorRTUnavailable", "build_engine", "check_profile",
           "match_refit_weights", "profile_shapes", "refit_arrays", "require_tensorrt", "tensorrt_available"]

log = logging.getLogger("export.tensorrt")

INPUT = "input"  # the input tensor of export.onnx graphs
Shape = tuple[int, int, int, int]  # (N, C, H, W)
MAX_OPTIMIZATION_LEVEL = 5


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse the ONNX graph or build the plan; the message carries TensorRT's own errors."""


# ---------------------------------------------------------------------------------------------------------
# Optimization profile


def profile_shapes(tile: int, batch: int, channels: int, multiple: int = 1) -> tuple[Shape, Shape, Shape]:
    """The (min, opt, max) input shapes (N, C, H, W) of a plan that runs `engine.infer` with this tile and batch.

    - max = (batch, C, tile, tile): `infer` never sends more tiles per call nor larger tiles.
    - opt = max: nearly all the work is full batches of full tiles, and TensorRT tunes its kernels for opt.
    - min = (1, C, multiple, multiple): the last batch of an image can hold a single tile, and an image smaller
      than the tile is one tile of its own (padded) size, as small as the network's input multiple.

    `multiple` is the side multiple of the network's input (pixel-unshuffle networks: 2 or 4; others 1).
    """
    if tile <= 0 or batch <= 0 or channels <= 0 or multiple <= 0:
        raise ValueError(f"tile, batch, channels and multiple must be positive, got tile={tile}, batch={batch}, "
                         f"channels={channels}, multiple={multiple}")
    if tile % multiple:
        raise ValueError(f"tile {tile} must be a multiple of {multiple} (the network's pixel-unshuffle factor)")
    largest: Shape = (batch, channels, tile, tile)
    return (1, channels, multiple, multiple), largest, largest


def check_profile(min_shape: Sequence[int], opt_shape: Sequence[int], max_shape: Sequence[int]) -> None:
    """Raise ValueError unless min ≤ opt ≤ max element-wise, all (N, C, H, W) positive, with one channel count."""
    shapes = {"min_shape": tuple(min_shape), "opt_shape": tuple(opt_shape), "max_shape": tuple(max_shape)}
    for name, shape in shapes.items():
        if len(shape) != 4 or any(int(d) <= 0 for d in shape):
            raise ValueError(f"{name} must be 4 positive sizes (N, C, H, W), got {shape}")
    lo, opt, hi = shapes.values()
    if not (lo[1] == opt[1] == hi[1]):
        raise ValueError(f"the channel count must be the same in min, opt and max, got {lo}, {opt}, {hi}")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise ValueError(f"the profile must satisfy min ≤ opt ≤ max in every dimension, got {lo}, {opt}, {hi}")


# ---------------------------------------------------------------------------------------------------------
# Progress


class BuildProgress:
    """Nested tqdm bars for TensorRT's build phases (what `trt.IProgressMonitor` reports; thread-safe).

    A phase's bar sits one line below its parent's; bars of nested phases disappear when the phase finishes.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bars: dict[str, tqdm] = {}
        self._depth: dict[str, int] = {}
        self._lock = threading.Lock()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = self._depth[parent_phase] + 1 if parent_phase in self._depth else 0
            old = self._bars.pop(phase_name, None)
            if old is not None:
                old.close()
            self._depth[phase_name] = depth
            self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=depth == 0,
                                          disable=not self.enabled, dynamic_ncols=True, unit="step")

    def step_complete(self, phase_name: str, step: int) -> bool:
        """Record that step `step` (0-based) of the phase is done; True lets the build go on."""
        with self._lock:
            bar = self._bars.get(phase_name)
            if bar is not None and step + 1 > bar.n:
                bar.update(step + 1 - bar.n)
        return True

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            bar = self._bars.pop(phase_name, None)
            self._depth.pop(phase_name, None)
            if bar is not None:
                bar.close()

    def close(self) -> None:
        """Close every bar still open (a build that failed halfway)."""
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            self._depth.clear()


def _progress_monitor(progress: BuildProgress) -> trt.IProgressMonitor:
    """A `trt.IProgressMonitor` that forwards to `progress`; a callback never raises into TensorRT."""
    import tensorrt as trt

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                progress.phase_start(phase_name, parent_phase, num_steps)
            except Exception as e:
                log.debug("progress bar: %s", e)

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                return progress.step_complete(phase_name, step)
            except Exception as e:
                log.debug("progress bar: %s", e)
                return True

        def phase_finish(self, phase_name: str) -> None:
            try:
                progress.phase_finish(phase_name)
            except Exception as e:
                log.debug("progress bar: %s", e)

    return _Monitor()


# ---------------------------------------------------------------------------------------------------------
# Building


def build_engine(onnx_path: str | os.PathLike[str], plan_path: str | os.PathLike[str], *, min_shape: Sequence[int],
                 opt_shape: Sequence[int], max_shape: Sequence[int],
                 timing_cache: str | os.PathLike[str] | None = None, refit: bool = True, progress: bool = True,
                 builder_optimization_level: int | None = None) -> dict[str, Any]:
    """Parse an ONNX graph (fp16, fp32 or Q/DQ INT8) into a strongly typed network and write its TensorRT plan.

    Args:
        onnx_path: a graph of `export.onnx` (input `input` (N, C, H, W) with dynamic N, H, W).
        plan_path: where the serialized plan goes (written atomically).
        min_shape, opt_shape, max_shape: the optimization profile of `input`, (N, C, H, W) each; see
            `profile_shapes`. Inputs outside [min, max] are errors at run time.
        timing_cache: a file of kernel timings, read if present and written back (atomically) after the build;
            rebuilds with it skip most kernel timing. A cache from another GPU or TensorRT is replaced.
        refit: build with BuilderFlag.REFIT, so alpha can be refitted (`engine.backends.trt.TensorRTBackend.set_alpha`).
        progress: show the build phases as nested tqdm bars.
        builder_optimization_level: 0–5 (TensorRT's default 3); higher searches longer for faster kernels.

    Returns:
        What the engine manifest records: `tensorrt_version`, `build_seconds`, `device_name`, `gpu_arch` (the
        compute capability, "sm_90"), `profile`, `input_dtype`/`output_dtype`, `refittable`, `plan_bytes`, ...

    Raises:
        TensorRTUnavailable without TensorRT; FileNotFoundError without the ONNX file; ValueError for a bad
        profile or level; TensorRTBuildError when TensorRT cannot parse or build (with its messages).
    """
    require_tensorrt("Builder")
    import tensorrt as trt

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX graph at {onnx_path}: export it first (export.onnx.export_onnx + save)")
    check_profile(min_shape, opt_shape, max_shape)
    min_shape, opt_shape, max_shape = ([int(d) for d in s] for s in (min_shape, opt_shape, max_shape))
    if builder_optimization_level is not None and not 0 <= builder_optimization_level <= MAX_OPTIMIZATION_LEVEL:
        raise ValueError(f"builder_optimization_level must be 0 to {MAX_OPTIMIZATION_LEVEL}, got "
                         f"{builder_optimization_level}")

    sink = TrtLog()
    logger = trt_logger(sink)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"TensorRT could not parse {onnx_path.name}: "
                                 f"{'; '.join(errors) or sink.last_errors()}")
    io = _check_network_input(network, onnx_path.name, min_shape)

    config = builder.create_builder_config()
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if builder_optimization_level is not None:
        config.builder_optimization_level = builder_optimization_level
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, trt.Dims(min_shape), trt.Dims(opt_shape), trt.Dims(max_shape))
    if config.add_optimization_profile(profile) < 0:
        raise TensorRTBuildError(f"TensorRT rejected the profile {tuple(min_shape)}…{tuple(max_shape)} for "
                                 f"{onnx_path.name}: {sink.last_errors()}")
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        _load_timing_cache(config, cache_path)
    bars = BuildProgress(enabled=progress)
    monitor = _progress_monitor(bars) if progress else None  # referenced here until the build returns
    if monitor is not None:
        config.progress_monitor = monitor

    start = time.perf_counter()
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        bars.close()
    seconds = time.perf_counter() - start
    if plan is None:
        raise TensorRTBuildError(f"TensorRT could not build {onnx_path.name}: {sink.last_errors()}")
    data = memoryview(plan)
    atomic_write(plan_path, lambda tmp: Path(tmp).write_bytes(data))
    if cache_path is not None:
        cache = config.get_timing_cache().serialize()
        atomic_write(cache_path, lambda tmp: Path(tmp).write_bytes(memoryview(cache)))
    log.info("built %s in %.1f s (%d bytes)", plan_path, seconds, data.nbytes)
    return {
        "tensorrt_version": trt.__version__,
        "build_seconds": round(seconds, 3),
        **_device_info(),
        "onnx": onnx_path.name,
        "plan_bytes": data.nbytes,
        "refittable": refit,
        "strongly_typed": True,
        "builder_optimization_level": config.builder_optimization_level,
        "profile": {"input": INPUT, "min": list(min_shape), "opt": list(opt_shape), "max": list(max_shape)},
        **io,
        "timing_cache": str(cache_path) if cache_path is not None else None,
    }


def _parser_error(error: Any) -> str:
    """One ONNX parser error as text: node index, name and operator, and the description."""
    where = f"node {error.node()}"
    name, op = error.node_name(), error.node_operator()
    if name or op:
        where += f" ({name or '?'}, {op or '?'})"
    return f"{where}: {error.desc()}"


def _check_network_input(network: trt.INetworkDefinition, onnx_name: str, min_shape: Sequence[int]) -> dict[str, str]:
    """Check the parsed network's input against the profile; return the I/O dtypes for the manifest."""
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if INPUT not in inputs or len(inputs) != 1:
        raise TensorRTBuildError(f"{onnx_name} has inputs {sorted(inputs)}; a super-resolution graph has one, "
                                 f"named {INPUT!r} (export it with export.onnx)")
    tensor = inputs[INPUT]
    shape = [int(tensor.shape[i]) for i in range(len(tensor.shape))]
    if len(shape) != 4 or shape[1] not in (-1, int(min_shape[1])):
        raise TensorRTBuildError(f"{onnx_name}: input shape {shape} does not take (N, {int(min_shape[1])}, H, W) "
                                 f"as the profile asks")
    output = network.get_output(0)
    return {"input_dtype": tensor.dtype.name, "output_dtype": output.dtype.name}


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Attach the timing cache in `path` (a new one if the file is absent, unreadable, or from elsewhere)."""
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception as e:  # a truncated or foreign file
            log.debug("timing cache %s: %s", path, e)
        else:
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return
        log.warning("timing cache %s does not fit this GPU or TensorRT version: starting a new one", path)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _device_info() -> dict[str, Any]:
    """The build GPU's name and compute capability as `gpu_arch` ("sm_90"), as torch sees the current device."""
    if not torch.cuda.is_available():
        return {"device_name": None, "gpu_arch": None}
    major, minor = torch.cuda.get_device_capability()
    return {"device_name": torch.cuda.get_device_name(), "gpu_arch": f"sm_{major}{minor}"}


# ---------------------------------------------------------------------------------------------------------
# Refit arrays


def refit_arrays(model: onnx.ModelProto, state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Everything a TensorRT refit of the plan built from `model` may ask for, by initializer name.

    Network weights come from `state` (a state dict of the same network), shaped and typed like their
    initializers (`export.onnx.initializer_arrays`). Initializers that are the same at every alpha come from the
    graph itself: constants (`const/…`) and the scales and zero points of QuantizeLinear/DequantizeLinear (INT8
    graphs keep them fixed for all alphas). TensorRT names refittable weights by these initializer names.

    Raises:
        export.onnx.ExportError if a network weight of the graph is missing from `state`.
    """
    from onnx import numpy_helper

    from export.onnx import initializer_arrays

    qdq = {node.input[i] for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
           for i in (1, 2) if i < len(node.input)}
    fixed = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
             if t.name.startswith("const/") or t.name in qdq}
    weights = initializer_arrays(model, {**state, **{n: torch.from_numpy(a.copy()) for n, a in fixed.items()}})
    arrays = {name: np.ascontiguousarray(a) for name, a in fixed.items() if name.startswith("const/")}
    arrays.update(weights)
    return arrays
