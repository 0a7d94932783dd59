"""The one import guard for the compiled extension `engine._C` (built by setup.py from csrc/).

Everything in the package gets the extension through `load_C()`, never by importing `engine._C` itself, so a
missing build fails with instructions instead of a bare ModuleNotFoundError.
"""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def load_C() -> ModuleType:
    """Return the `engine._C` module; raise ImportError with build instructions when it is not built."""
    try:
        from engine import _C  # type: ignore[attr-defined]  # compiled; absent from the source tree
    except ImportError as error:
        raise ImportError(
            "engine._C is not built: run `pip install -e .` in the repository root "
            "(add ENGINE_CUDA=1 to require the CUDA kernels; see setup.py)"
        ) from error
    return _C
