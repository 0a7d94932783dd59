"""Super-resolution for the ESRGAN family: reference networks, checkpoint loading and fast engines.

Submodules are imported on use (`engine.models`, `engine.metrics`, ...), so `import engine` stays cheap and
never needs the compiled extension `engine._C` or a GPU.
"""

__version__ = "0.1.0"
