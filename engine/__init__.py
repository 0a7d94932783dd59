"""Super-resolution for the ESRGAN family: reference networks, checkpoint loading and fast engines.

    import engine
    out = engine.infer(net_or_checkpoint, image)     # any size; tiled and blended
    outs = engine.infer_frames(net, frames)          # video frames of one size, several per network call
    eng = engine.load("engines/rrdb23-fp16-tensorrt")  # an engine directory of python -m engine.build
    eng.set_alpha(0.8); out = engine.infer(eng, image)

Submodules are imported on use (`engine.models`, `engine.metrics`, ...), so `import engine` stays cheap and
never needs the compiled extension `engine._C` or a GPU.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {"infer": "inference", "infer_frames": "inference", "load": "engines", "Engine": "engines",
         "Backend": "backends.registry", "TorchBackend": "backends.torch_eager", "OrtBackend": "backends.ort"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
