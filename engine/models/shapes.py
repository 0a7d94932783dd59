"""Reading hyper-parameters from tensor shapes: the helpers every architecture's `detect` uses.

A detection reads a state dict in our key names (BasicSR's): it counts repeated layers by their indices and takes
channel counts from conv weights, and raises `FormatError` when the tensors do not form a network of its kind.
"""

from __future__ import annotations

import math
import re

import torch

StateDict = dict[str, torch.Tensor]


class FormatError(ValueError):
    """A layout was recognised by its keys, but its tensors do not form a network of that layout."""


def indices(sd: StateDict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (a regex with one group, matching whole keys) over the keys."""
    return sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k))})


def count(sd: StateDict, pattern: str, start: int = 0) -> int:
    """Number of consecutive indices start, start+1, … matched by `pattern`; gaps are a FormatError."""
    found = indices(sd, pattern)
    if found != list(range(start, start + len(found))):
        raise FormatError(f"layer indices of {pattern!r} are not consecutive from {start}: {found}")
    return len(found)


def conv_channels(sd: StateDict, key: str) -> tuple[int, int]:
    """(output, input) channels of the conv weight `key`: a 4-D tensor with no empty dimension. A missing key is a
    KeyError (the caller names the layout)."""
    shape = tuple(sd[key].shape)
    if len(shape) != 4 or 0 in shape:
        raise FormatError(f"tensor {key!r} has shape {list(shape)}; a conv weight is 4-D (out, in, kh, kw) and "
                          "not empty")
    return shape[0], shape[1]


def shuffle_factor(conv_out: int, num_feat: int, what: str) -> int:
    """The pixel-shuffle factor s (2 or 3) of a conv that gives `conv_out` = num_feat·s² channels."""
    factor = math.isqrt(conv_out // num_feat)
    if factor * factor * num_feat != conv_out or factor not in (2, 3):
        raise FormatError(f"{what} gives {conv_out} channels for num_feat={num_feat}: not a ×2 or ×3 "
                          f"pixel-shuffle stage (expected {4 * num_feat} or {9 * num_feat})")
    return factor


def upsample_scale(sd: StateDict, num_feat: int, arch: str) -> int:
    """Scale of an `upsample` Sequential of (conv, PixelShuffle) pairs, convs at upsample.0, upsample.2, …"""
    convs = indices(sd, r"upsample\.(\d+)\.weight")
    if convs != list(range(0, 2 * len(convs), 2)):
        raise FormatError(f"{arch} upsampler convs at unexpected positions {convs} (expected 0, 2, …)")
    return math.prod(shuffle_factor(conv_channels(sd, f"upsample.{i}.weight")[0], num_feat, f"upsample.{i}")
                     for i in convs)
