"""ONNX Runtime backend: the default engine on machines without a GPU.

    backend = OrtBackend(onnx_bytes_or_path, scale=4, in_channels=3, out_channels=3, threads=0)
    out = engine.infer(backend, image)

Session options are the fastest of `bench/ort_cpu.py` (measurements and conditions: docs/onnxruntime.md): all
graph optimizations (they include the CPU provider's NCHWc layout), intra-op spinning off (it leaves idle cores
free), sequential execution, the CPU memory arena without memory patterns (see `session_options`), and `threads`
intra-op threads (0: one per physical core, ONNX Runtime's default).

Network interpolation without a rebuild: with both endpoint weight sets, `set_alpha(α)` blends them and rebinds
the graph's weight initializers by name, in memory (no export, no file written), then restarts the session over
that graph: ONNX Runtime pre-packs convolution weights when a session starts, so new weights need a new session.
`SessionOptions.add_initializer` would avoid touching the graph, but with all optimizations on, ONNX Runtime ran
the graph's own weights instead of the overrides (docs/onnxruntime.md). tests/test_engines.py
checks that the result equals a fresh export of the interpolated network. `set_alpha` returns the seconds it took.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import models
from ..machine import check_threads
from .registry import REBUILD, BackendInfo, BenchRow, BuildRequest, Built, EngineError, LoadRequest, reading, register

log = logging.getLogger("engine")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("onnxruntime is not installed: pip install onnxruntime") from e
    return onnxruntime


def session_options(threads: int = 0, *, inter_threads: int = 1, optimization: str = "all",
                    spinning: bool = False) -> Any:
    """The tuned `SessionOptions` (see the module docstring); the keyword arguments are the measured choices."""
    threads = check_threads(threads)
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = inter_threads
    so.enable_cpu_mem_arena = True
    # Memory patterns pre-plan one block for every activation of a shape: a higher peak at the same speed; without
    # the arena too, less memory but slower (docs/onnxruntime.md).
    so.enable_mem_pattern = False
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    return so


class OrtBackend:
    """A `Backend` over an ONNX graph of `export.onnx` (fp32, fp16 or Q/DQ INT8) in ONNX Runtime on the CPU.

    `model` is a path or the serialized bytes. `weights_psnr`/`weights_gan` (arrays keyed by initializer name, as
    `export.onnx.initializer_arrays` gives them) enable `set_alpha`. `bytes_per_pixel` is the activation
    memory per input pixel that the automatic tile size budgets for.
    """

    def __init__(self, model: str | os.PathLike[str] | bytes, *, scale: int, in_channels: int, out_channels: int,
                 multiple: int = 1, threads: int = 0, bytes_per_pixel: float = 0.0,
                 weights_psnr: Mapping[str, np.ndarray] | None = None,
                 weights_gan: Mapping[str, np.ndarray] | None = None, alpha: float | None = None,
                 **options: Any) -> None:
        self._model = os.fspath(model) if not isinstance(model, bytes) else model
        self.scale, self.in_channels, self.out_channels, self.multiple = scale, in_channels, out_channels, multiple
        self.device = torch.device("cpu")
        self.threads = check_threads(threads)
        self._options = options
        self._bpp = bytes_per_pixel
        self._endpoints: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._graph: Any = None  # the parsed ONNX model, once set_alpha rebinds its weights
        if (weights_psnr is None) != (weights_gan is None):
            raise ValueError("alpha needs both endpoint weight sets (weights_psnr and weights_gan)")
        if weights_psnr is not None and weights_gan is not None:
            if set(weights_psnr) != set(weights_gan):
                raise ValueError(f"the endpoint weight sets name different tensors: "
                                 f"{sorted(set(weights_psnr) ^ set(weights_gan))[:5]}")
            self._endpoints = ({k: torch.from_numpy(np.asarray(v)) for k, v in weights_psnr.items()},
                               {k: torch.from_numpy(np.asarray(v)) for k, v in weights_gan.items()})
        self.alpha: float | None = alpha if self._endpoints is not None else None  # the graph's own weights' alpha
        self.session = self._session()
        self.input_type = self.session.get_inputs()[0].type

    def _session(self) -> Any:
        ort = _ort()
        so = session_options(self.threads, **self._options)
        model = self._model if self._graph is None else self._graph.SerializeToString()
        return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])

    def set_alpha(self, alpha: float) -> float:
        """Rebind the weights as (1 − alpha)·θ_psnr + alpha·θ_gan; returns the seconds it took."""
        if self._endpoints is None:
            raise ValueError("this engine has no GAN weights to blend: build it with --gan-weights to use alpha")
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        import onnx

        from export.onnx import set_initializers

        start = time.perf_counter()
        if self._graph is None:
            self._graph = onnx.load_from_string(self._model) if isinstance(self._model, bytes) else onnx.load(
                self._model)
        blended = models.interpolate(*self._endpoints, alpha)  # in float64, cast back to each initializer's type
        set_initializers(self._graph, {name: t.numpy() for name, t in blended.items()})
        self.alpha = alpha
        self.session = self._session()
        seconds = time.perf_counter() - start
        self.last_refit_seconds = seconds
        return seconds

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().cpu().float().numpy()
        if self.input_type == "tensor(float16)":
            x = x.astype(np.float16)
        out = self.session.run(None, {"input": np.ascontiguousarray(x)})[0]
        return torch.from_numpy(out.astype(np.float32, copy=False))

    def bytes_per_pixel(self) -> float:
        if self._bpp <= 0:
            raise ValueError("this ONNX Runtime backend was made without bytes_per_pixel: pass a tile size")
        return self._bpp


def from_network(net: Any, *, gan_net: Any = None, precision: str = "fp32", device: str | torch.device = "cpu",
                 threads: int = 0, calibration: list[np.ndarray] | None = None) -> OrtBackend:
    """An `OrtBackend` over the ONNX export of a reference network (and, with `gan_net`, both endpoints); INT8
    quantizes the graph with activation ranges calibrated on `calibration` (images)."""
    from export.onnx import export_onnx, initializer_arrays, require_refit_names

    from .torch_eager import TorchBackend

    if torch.device(device).type != "cpu":
        raise ValueError(f"the ONNX Runtime backend runs on the CPU here, not {device}")
    if precision == "int8":
        from export.quantize import quantize

        if not calibration:
            raise ValueError("an INT8 ONNX Runtime backend needs calibration images")
        model = quantize(net.eval(), calibration, gan_net=gan_net)
    else:
        model = export_onnx(net.eval(), precision=precision)
    endpoints: dict[str, Any] = {}
    if gan_net is not None:
        models.registry.require_same_network(net, gan_net)
        require_refit_names(model, net)
        endpoints = dict(weights_psnr=initializer_arrays(model, net.state_dict()),
                         weights_gan=initializer_arrays(model, gan_net.state_dict()))
    return OrtBackend(model.SerializeToString(), scale=net.scale, in_channels=net.in_channels,
                      out_channels=net.out_channels, multiple=net.input_multiple, threads=threads,
                      bytes_per_pixel=TorchBackend(net).bytes_per_pixel(), **endpoints)


# ---------------------------------------------------------------------------------------------------------
# engine folders: model.onnx (+ both endpoints' weights, for alpha)


def onnx_engine(req: BuildRequest, *, int8_compute: str,
                endpoint_arrays: Callable[[Any, Mapping[str, torch.Tensor]], dict[str, np.ndarray]]) -> Built:
    """The files every ONNX-based engine has: model.onnx (fp32, fp16 or Q/DQ INT8 whose float part is
    `int8_compute`) with the weights at the build's alpha, and with a GAN endpoint both endpoints' arrays
    (`endpoint_arrays(graph, state_dict)`), which `set_alpha` blends."""
    from safetensors.numpy import save_file

    from export.onnx import export_onnx, initializer_arrays, require_refit_names, save, set_initializers

    net, gan = req.net, req.gan
    built = Built(manifest={}, write={})
    if req.precision == "int8":
        from export.quantize import quantize

        method, images, entry = req.calibrate("INT8")
        graph = quantize(net, images, gan_net=gan, method=method, precision=int8_compute)
        built.manifest["int8"] = {**entry, "float_compute": int8_compute}
        built.probe = req.image_probe(images[0])
    else:
        graph = export_onnx(net, precision=req.precision)
    set_initializers(graph, initializer_arrays(graph, req.blended.state_dict()))
    built.write["model.onnx"] = lambda path: save(graph, path)
    if gan is not None:
        require_refit_names(graph, net)  # alpha blends the endpoints by initializer name
        psnr_arrays, gan_arrays = endpoint_arrays(graph, net.state_dict()), endpoint_arrays(graph, gan.state_dict())
        built.write["weights_psnr.safetensors"] = lambda path: save_file(psnr_arrays, path)
        built.write["weights_gan.safetensors"] = lambda path: save_file(gan_arrays, path)
    return built


def build(req: BuildRequest) -> Built:
    from export.onnx import initializer_arrays

    from .torch_eager import TorchBackend

    if req.precision == "fp16":
        print("note: ONNX Runtime's CPU provider casts most fp16 ops to fp32 and back: on the CPU an fp16 engine is "
              "slower than --fp32 and less exact (docs/onnxruntime.md)")
    built = onnx_engine(req, int8_compute="fp32", endpoint_arrays=initializer_arrays)
    built.manifest["bytes_per_pixel"] = TorchBackend(req.net).bytes_per_pixel()
    return built


def check_self_contained(folder: Path) -> None:
    """model.onnx must hold all its tensors: a graph may name files for its tensors' data, which ONNX Runtime would
    read (it refuses paths outside the folder, but its message tells what exists there)."""
    import onnx

    from export.onnx import external_tensors

    with reading(folder, "model.onnx"):
        outside = external_tensors(onnx.load(str(folder / "model.onnx"), load_external_data=False))
    if outside:
        raise EngineError(f"{folder}: model.onnx keeps {len(outside)} tensors ({', '.join(outside[:3])}) in other "
                          f"files; an engine's graph holds all of its own: {REBUILD}")


def load(req: LoadRequest) -> OrtBackend:
    check_self_contained(req.folder)
    m = req.manifest
    with reading(req.folder, "model.onnx" + (" and its endpoint weights" if req.endpoints else "")):
        return OrtBackend(req.folder / "model.onnx", scale=m["scale"], in_channels=m["in_channels"],
                          out_channels=m["out_channels"], multiple=m["multiple"], threads=req.threads,
                          bytes_per_pixel=float(m.get("bytes_per_pixel", 0.0)), alpha=req.alpha, **req.endpoints)


def _unavailable() -> str | None:
    try:
        _ort()
    except RuntimeError as e:
        return str(e)
    return None


def _not_on_gpu_workloads(device: torch.device) -> str | None:
    if device.type == "cuda":
        return ("our ONNX Runtime backend runs the CPU provider: on this GPU workload one call would take minutes "
                "(see the default-cpu workload for it)")
    return None


ENDPOINT_FILES = frozenset({"weights_psnr.safetensors", "weights_gan.safetensors"})

register(BackendInfo(
    name="onnxruntime", label="ONNX Runtime", precisions=("fp32", "fp16", "int8"), devices=("cpu",),
    unavailable=_unavailable, files=(frozenset({"model.onnx"}), ENDPOINT_FILES), gan_file="weights_gan.safetensors",
    build=build, load=load, from_network=from_network, auto=1, cpu_rank=lambda net: 1,
    bench=(BenchRow("onnxruntime-fp32", "ONNX Runtime fp32", "fp32", unavailable=_not_on_gpu_workloads),),
))
