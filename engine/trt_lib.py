"""TensorRT for both halves, the builder (`export/tensorrt.py`) and the runtime (`engine/backends/trt.py`):
finding a usable TensorRT, routing its log, and matching refit weight arrays to an engine's refittable weights.

TensorRT is imported lazily: importing this module works without it; `require_tensorrt` raises
`TensorRTUnavailable`, which says what to install.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .machine import Unavailable

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger("engine.trt")

INSTALL_HINT = ("TensorRT is not installed: `pip install tensorrt` (TensorRT 10.1 or newer, NVIDIA GPU and driver "
                "needed), or build with --backend onnxruntime")
# The oldest TensorRT (major, minor) the builder and runtime work with: 10.x for strongly typed networks, tensor-name
# APIs and refit from device memory; 10.1 for IExecutionContext.set_device_memory(ptr, size) and
# ICudaEngine.device_memory_size_v2, which the runtime's shared scratch memory uses. TensorRT 11 is accepted.
MIN_VERSION = (10, 1)
# Initializers equal at every alpha by construction: export.onnx constants, export.quantize scales and zero points
FIXED_PREFIXES = ("const/", "qdq/")

# TensorRT DataType names → numpy dtypes (numpy has no bfloat16: such weights cannot be given as arrays)
NUMPY_DTYPES: dict[str, np.dtype] = {
    "FLOAT": np.dtype(np.float32), "HALF": np.dtype(np.float16), "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64), "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8),
}


class TensorRTUnavailable(Unavailable):
    """TensorRT cannot be imported (not installed, only type stubs, too old); the message says what to install."""


class RefitWeightsError(ValueError):
    """The weight arrays given for a refit do not fit the engine's refittable weights; the message lists each."""


# ---------------------------------------------------------------------------------------------------------
# Finding TensorRT


def require_tensorrt(need: str = "Runtime") -> str:
    """Import TensorRT or raise `TensorRTUnavailable`; returns its version string.

    `need` is the attribute that must exist ("Runtime" to run plans, "Builder" to build them). The check is not
    just "the import succeeds": with the `tensorrt-stubs` package in site-packages, `import tensorrt` succeeds
    as an empty namespace package.
    """
    try:
        import tensorrt
    except Exception as e:  # ImportError; OSError or RuntimeError when libnvinfer or the driver is missing
        raise TensorRTUnavailable(f"{INSTALL_HINT} (`import tensorrt` failed: {e})") from e
    if not hasattr(tensorrt, need):
        where = ", ".join(getattr(tensorrt, "__path__", [])) or getattr(tensorrt, "__file__", "?")
        raise TensorRTUnavailable(f"{INSTALL_HINT} (`import tensorrt` found a package without TensorRT's "
                                  f"{need} at {where}: type stubs only? `pip uninstall tensorrt-stubs`)")
    version = str(getattr(tensorrt, "__version__", "?"))
    check_version(version)
    return version


def check_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as "10.13.3.9.post1" → (10, 13); raises
    `TensorRTUnavailable` saying what to do when it is older than `MIN_VERSION` or has no leading major.minor."""
    match = re.match(r"(\d+)\.(\d+)", version.strip())
    need = ".".join(map(str, MIN_VERSION))
    if match is None:
        raise TensorRTUnavailable(f"cannot tell the installed TensorRT's version (its __version__ is {version!r}): "
                                  f"this project needs TensorRT {need} or newer (`pip install -U tensorrt`), or use "
                                  f"--backend onnxruntime")
    found = (int(match.group(1)), int(match.group(2)))
    if found < MIN_VERSION:
        raise TensorRTUnavailable(f"TensorRT {version} is installed; this project needs TensorRT {need} or newer "
                                  f"(`pip install -U tensorrt`), or use --backend onnxruntime")
    return found


def tensorrt_available(need: str = "Runtime") -> bool:
    """Whether `require_tensorrt(need)` would succeed."""
    try:
        require_tensorrt(need)
    except TensorRTUnavailable:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Logging


class TrtLog:
    """Where TensorRT's log messages go: Python logging (`engine.trt`), and the last errors kept for exceptions."""

    LEVELS = {"INTERNAL_ERROR": logging.CRITICAL, "ERROR": logging.ERROR, "WARNING": logging.WARNING,
              "INFO": logging.DEBUG, "VERBOSE": logging.DEBUG}  # TensorRT's INFO is build chatter

    def __init__(self, keep: int = 20) -> None:
        self.errors: deque[str] = deque(maxlen=keep)

    def record(self, severity: str, message: str) -> None:
        level = self.LEVELS.get(severity, logging.WARNING)
        if level >= logging.ERROR:
            self.errors.append(message)
        if log.isEnabledFor(level):
            log.log(level, "TensorRT: %s", message)

    def last_errors(self) -> str:
        """The recent error messages joined, or a note that TensorRT logged none."""
        return "; ".join(self.errors) if self.errors else "TensorRT logged no error"


def trt_logger(sink: TrtLog) -> trt.ILogger:
    """A `trt.ILogger` that forwards every message to `sink` (never raises into TensorRT)."""
    import tensorrt as trt

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            try:
                sink.record(severity.name, msg)
            except Exception:  # a callback from C++ must not raise
                pass

    return _Logger()


# ---------------------------------------------------------------------------------------------------------
# Refit weights: matching arrays to the engine's refittable weights (pure, testable without TensorRT)


def numpy_dtype(trt_dtype_name: str) -> np.dtype:
    """The numpy dtype of a TensorRT DataType name ("HALF" → float16)."""
    if trt_dtype_name not in NUMPY_DTYPES:
        raise RefitWeightsError(f"TensorRT weights of type {trt_dtype_name} cannot be given as numpy arrays; "
                                f"export the ONNX graph with fp16 or fp32 weights")
    return NUMPY_DTYPES[trt_dtype_name]


def match_refit_weights(prototypes: Mapping[str, tuple[int, np.dtype | str]], arrays: Mapping[str, np.ndarray],
                        *, what: str = "weights", fixed_prefixes: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Map every refittable weight of an engine to its array, checking element count and dtype.

    Args:
        prototypes: refittable weight name → (element count, dtype) as the engine holds it (TensorRT's
            `Refitter.get_weights_prototype`); names come from the ONNX initializers (state-dict keys, `const/…`).
        arrays: name → array (any shape; only the element count must match), e.g. from
            `export.tensorrt.refit_arrays(model, state_dict)`. Arrays for names that are not refittable are ignored.
        what: how the error messages call `arrays` (e.g. "weights_gan").
        fixed_prefixes: refittable names with these prefixes may lack an array (graph constants, equal at every
            alpha, which the engine keeps unless a refit combines them with a weight that changes; TensorRT then
            lists them in `get_missing_weights`).

    Returns:
        name → flat contiguous array (count,) of the prototype's dtype, for every refittable name that has one,
        in the order of `prototypes`.

    Raises:
        RefitWeightsError naming every refittable weight without an array, with a wrong element count or dtype.
    """
    missing, wrong_count, wrong_dtype = [], [], []
    out: dict[str, np.ndarray] = {}
    for name, (count, dtype) in prototypes.items():
        dtype = np.dtype(dtype)
        if name not in arrays:
            if not name.startswith(tuple(fixed_prefixes)):
                missing.append(name)
            continue
        array = np.asarray(arrays[name])
        if array.size != count:
            wrong_count.append(f"{name} has {array.size} elements {tuple(array.shape)}, the engine {count}")
        elif array.dtype != dtype:
            wrong_dtype.append(f"{name} is {array.dtype}, the engine's weight is {dtype}")
        else:
            out[name] = np.ascontiguousarray(array.reshape(-1))
    problems = []
    if missing:
        problems.append(f"{len(missing)} refittable weights have no array: {names(missing)}")
    if wrong_count:
        problems.append(f"wrong element count: {names(wrong_count)}")
    if wrong_dtype:
        problems.append(f"wrong dtype: {names(wrong_dtype)}")
    if problems:
        raise RefitWeightsError(f"{what} do not fit the engine ({'; '.join(problems)}). Pass the arrays of "
                                f"export.tensorrt.refit_arrays(model, state_dict) for the ONNX graph the plan was "
                                f"built from (same network, same precision)")
    return out


def names(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")
