"""Loading the checkpoints users have and saving ours.

`load()` reads `.pth`/`.pt` files with `torch.load(weights_only=True)` (never executing pickled code) and
safetensors files, unwraps BasicSR's `params_ema`/`params`, recognises the layout (see `formats.py`), reads
every hyper-parameter from tensor shapes and returns a ready network. `save()` writes safetensors with the
architecture and hyper-parameters in the metadata, so reloading needs nothing else.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_write
from .base import SRNet
from .formats import ACCEPTED, FormatError, StateDict, detect
from .registry import build, variant_name

FORMAT_TAG = "esrgan-engine"
FORMAT_VERSION = "1"
WRAPPERS = ("params_ema", "params", "state_dict")  # BasicSR's EMA weights first, as Real-ESRGAN does


class CheckpointError(ValueError):
    """A checkpoint could not be read or recognised. The message names the file, what was found and the
    formats that are accepted."""


@dataclass(frozen=True)
class ModelInfo:
    """What `load()` found. `hparams` are the constructor's keyword arguments of `arch`."""

    arch: str
    hparams: dict[str, Any]
    scale: int
    in_channels: int
    out_channels: int
    format: str  # "esrgan-2018", "esrgan-2019", "basicsr", "edsr-official", "rcan-official", "srresnet", "cascade",
    #              "safetensors"
    name: str | None = None  # the registered variant with exactly these hyper-parameters, if any
    path: str | None = None
    wrapper: str | None = None  # "params_ema", "params" or "state_dict" when the tensors were wrapped
    metadata: dict[str, str] = field(default_factory=dict)  # our safetensors' own metadata (e.g. alpha)


def _accepted() -> str:
    return "Accepted formats: " + "; ".join(ACCEPTED) + "."


def _fail(where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}. {_accepted()}")


def _is_safetensors(head: bytes, size: int) -> bool:
    """safetensors = 8-byte little-endian header length, then a JSON header starting with '{'."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _describe_bytes(head: bytes) -> str:
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return f"a text file (it begins with {head[:40].decode('ascii', 'replace')!r})"
    return f"an unrecognised binary file (it begins with {head[:8]!r})"


def _read_file(path: Path) -> tuple[Any, dict[str, str]]:
    """The object stored in `path` and, for safetensors, its metadata."""
    where = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(where, "the file is empty")
    with open(path, "rb") as f:
        head = f.read(64)

    if _is_safetensors(head, size) or path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as st:
                return {k: st.get_tensor(k) for k in st.keys()}, dict(st.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise _fail(where, f"a damaged or truncated safetensors file ({e})") from None

    is_zip = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only load failed" in str(e):
            raise _fail(where, "it holds pickled Python objects besides tensors (for example a whole pickled "
                        "model); loading it would execute code, so it is refused. Re-save it as a state dict: "
                        "torch.save(model.state_dict(), path)") from None
        found = _describe_bytes(head) if not is_zip else "a damaged PyTorch zip archive"
        raise _fail(where, f"not a PyTorch checkpoint: {found}") from None
    except Exception as e:  # the weights-only unpickler fails on garbage with many exception types
        if is_zip or head[:2] in (b"PK", b"\x80\x02"):  # zip archive, or a legacy pickle's protocol header
            found = f"a truncated or damaged PyTorch checkpoint ({str(e).splitlines()[0][:160]})"
        else:
            found = f"not a PyTorch checkpoint: {_describe_bytes(head)}"
        raise _fail(where, found) from None


def _state_dict(obj: Any, where: str) -> tuple[StateDict, str | None]:
    """The tensors of a checkpoint object, unwrapping BasicSR's wrappers, and which wrapper was used."""
    if not isinstance(obj, Mapping):
        raise _fail(where, f"it holds a {type(obj).__name__}, not a dict of tensors")
    wrapper = None
    for name in WRAPPERS:
        if isinstance(obj.get(name), Mapping):
            obj, wrapper = obj[name], name
            break
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise _fail(where, f"a dict without tensors (keys: {keys})")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, wrapper


def _instantiate(arch: str, hparams: dict[str, Any], sd: StateDict, where: str) -> SRNet:
    try:
        model = build(arch, hparams)
    except (ValueError, TypeError, KeyError) as e:
        raise _fail(where, f"hyper-parameters read from the tensors do not make a valid {arch} ({e})") from None
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        raise _fail(where, f"the tensors do not fit a {arch} with {hparams}: {lines[0] if lines else e}") from None
    return model.eval()


def load(source: str | os.PathLike[str] | Mapping[str, Any], *, device: str | torch.device = "cpu"
         ) -> tuple[SRNet, ModelInfo]:
    """Load a generator from a checkpoint file or an in-memory state dict.

    Accepts ESRGAN 2018/2019, BasicSR/Real-ESRGAN (bare or in `params`/`params_ema`, preferring
    `params_ema`), SRResNet/MSRResNet/EDSR/RCAN layouts (BasicSR's and the authors'), and our safetensors.
    Returns the network in eval mode on `device` (float32) and a `ModelInfo`. Raises `CheckpointError` naming
    the file when it is empty, damaged, not a checkpoint, refused as unsafe, or holds an unknown network.
    """
    metadata: dict[str, str] = {}
    if isinstance(source, Mapping):
        where, path, obj = "<state dict>", None, source
    else:
        path = Path(source)
        where = str(path)
        obj, metadata = _read_file(path)
    sd, wrapper = _state_dict(obj, where)

    if metadata.get("engine.format") == FORMAT_TAG:
        try:
            arch, hparams = metadata["engine.arch"], json.loads(metadata["engine.hparams"])
        except (KeyError, json.JSONDecodeError) as e:
            raise _fail(where, f"damaged engine metadata ({e})") from None
        fmt = "safetensors"
    else:
        try:
            found = detect(sd)
        except FormatError as e:
            raise _fail(where, str(e)) from None
        if found is None:
            keys = ", ".join(repr(k) for k in list(sd)[:6])
            raise _fail(where, f"no known network among its {len(sd)} tensors (first keys: {keys})")
        arch, hparams, sd, fmt = found.arch, found.hparams, found.state_dict, found.format
        if path is not None and path.suffix == ".safetensors":
            fmt = f"{fmt} (safetensors)"

    model = _instantiate(arch, hparams, sd, where).to(device)
    info = ModelInfo(
        arch=arch, hparams=model.hparams, scale=model.scale, in_channels=model.in_channels,
        out_channels=model.out_channels, format=fmt, name=variant_name(arch, model.hparams),
        path=None if path is None else str(path), wrapper=wrapper,
        metadata={k: v for k, v in metadata.items() if not k.startswith("engine.")},
    )
    return model, info


def save(model: SRNet, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None) -> None:
    """Write `model`'s weights as safetensors with its architecture and hyper-parameters in the metadata.

    The file is written to a temporary name beside `path` and renamed over it, so an existing file is never
    left half-written. `metadata` adds string entries (e.g. the alpha of an interpolated network).
    """
    for attr in ("arch", "hparams", "scale"):
        if not hasattr(model, attr):
            raise TypeError(f"save() needs one of this package's networks (with .{attr}); got {type(model).__name__}")
    path = Path(path)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta |= {
        "engine.format": FORMAT_TAG,
        "engine.format_version": FORMAT_VERSION,
        "engine.arch": model.arch,
        "engine.hparams": json.dumps(model.hparams),
        "engine.scale": str(model.scale),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
