"""Backends: the runtimes a network runs on (PyTorch, ONNX Runtime, TensorRT, our Triton kernels, native plans),
each declared once in the registry (`engine.backends.registry`). Import a backend's class from its module
(`engine.backends.torch_eager.TorchBackend`); this package re-exports the registry."""

from .registry import (
    Backend,
    BackendInfo,
    BenchRow,
    BuildRequest,
    Built,
    EngineError,
    LoadRequest,
    backends,
    get,
    names,
    register,
    unregister,
)

__all__ = ["Backend", "BackendInfo", "BenchRow", "BuildRequest", "Built", "EngineError", "LoadRequest", "backends",
           "get", "names", "register", "unregister"]
