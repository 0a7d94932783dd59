"""Loading the checkpoints users have and saving ours.

`load()` reads PyTorch checkpoints with `torch.load(weights_only=True)` (never executing pickled code) and
safetensors files, whatever their extension: the file's first bytes decide. It unwraps BasicSR's
`params_ema`/`params`, recognises the layout (see `formats.py`), reads every hyper-parameter from tensor shapes and
returns a ready network. Nothing read from a file is trusted unchecked: only regular files are opened, weights must be
finite floating-point numbers, and a network is built only once the shapes of its tensors, computed on the meta
device without allocating, equal the file's; so a file cannot make the loader build more than it holds.
`save()` writes safetensors with the architecture and hyper-parameters in the metadata; on loading, the metadata
decides only what shapes cannot tell (EDSR's res_scale, the mean shift, …) and must agree with the tensors.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_write
from .base import SRNet
from .formats import ACCEPTED, MAX_CASCADE_DEPTH, detect, detect_arch
from .ncnn import MAGIC as NCNN_MAGIC
from .ncnn import NcnnError, read_ncnn
from .registry import ARCHS, VARIANTS, build, cascade_stages, check_hparams, variant_name
from .shapes import FormatError, StateDict, count

FORMAT_TAG = "esrgan-engine"
FORMAT_VERSION = "1"
WRAPPERS = ("params_ema", "params", "state_dict")  # BasicSR's EMA weights first, as Real-ESRGAN does
MAX_WRAPPING = 3  # {"params_ema": {"state_dict": {...}}} and so on, so deep
COUNTS = ("num_block", "num_group")  # the repeated modules that make a network big; the keys always tell them
HEAD_BYTES = 4096  # what is read to tell the kind of a file
MAX_NCNN_PARAM_BYTES = 16 << 20  # an ncnn .param is text, one line per layer: a real x4 RRDBNet's is ~120 kB
TORCH_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's pre-1.6 format pickles this number first

_NOT_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "a gzip-compressed file"),
          (b"7z\xbc\xaf", "a 7-Zip archive"), (b"Rar!", "a RAR archive"), (b"\x89HDF", "an HDF5 file"),
          (b"\x93NUMPY", "a NumPy array file"))


class CheckpointError(ValueError):
    """A checkpoint could not be read, recognised or trusted. The message names the file, what was found and
    what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What `load()` found. `hparams` are the constructor's keyword arguments of `arch`."""

    arch: str
    hparams: dict[str, Any]
    scale: int
    in_channels: int
    out_channels: int
    format: str  # "esrgan-2018", "esrgan-2019", "basicsr", "edsr-official", "rcan-official", "srresnet", "cascade",
    #              "safetensors", "ncnn"
    name: str | None = None  # the registered variant with exactly these hyper-parameters, if any
    path: str | None = None
    wrapper: str | None = None  # "params_ema", "params" or "state_dict" when the tensors were wrapped
    metadata: dict[str, str] = field(default_factory=dict)  # our safetensors' own metadata (e.g. alpha); for ncnn
    # "ncnn.weights" ("fp16", "fp32" or both: how the .bin stored the conv weights) and, when the graph resizes the
    # network's output (realesr-animevideov3-x2/x3), "ncnn.output_resize" saying how


def _fail(where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}")


def _unrecognised(where: str, what: str) -> CheckpointError:
    """For a file that is no checkpoint we know: the message lists the formats that are."""
    return CheckpointError(f"{where}: {what}. Accepted formats: " + "; ".join(ACCEPTED) + ".")


def _short(value: Any, limit: int = 200) -> str:
    text = str(value).splitlines()[0] if str(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# Files: what kind each is, told by its first bytes.


def _read_head(path: Path, where: str, nbytes: int = HEAD_BYTES) -> tuple[bytes, int]:
    """The first `nbytes` of the regular file `path` and its size. Anything else is refused before reading (a
    FIFO would block): opened without blocking, checked with fstat."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: no such checkpoint file") from None
    except (OSError, ValueError) as e:  # a symbolic-link loop, no permission, a NUL byte in the path
        raise _fail(where, f"cannot be opened ({getattr(e, 'strerror', None) or e})") from None
    try:
        mode, size = (st := os.fstat(fd)).st_mode, st.st_size
        if not stat.S_ISREG(mode):
            kind = next((name for is_kind, name in _NOT_FILES if is_kind(mode)), "not a regular file")
            raise _fail(where, f"{kind}, not a checkpoint file")
        chunks: list[bytes] = []
        while (got := sum(map(len, chunks))) < nbytes and (chunk := os.read(fd, min(nbytes - got, 1 << 30))):
            chunks.append(chunk)
        return b"".join(chunks), size
    except OSError as e:
        raise _fail(where, f"cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def _text(head: bytes) -> str | None:
    """`head` decoded when it is UTF-8 text (a character cut at the end allowed), else None."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3 or e.reason != "unexpected end of data":
            return None
        text = head[: e.start].decode("utf-8")
    text = text.removeprefix("\ufeff")
    return text if text and all(c.isprintable() or c in "\t\n\r\f" for c in text) else None


def _kind(head: bytes, suffix: str, size: int) -> str:
    """"text", "zip" (torch.save), "legacy" (torch.save before PyTorch 1.6), "pickle" (any other pickle),
    "safetensors" or "other"."""
    # safetensors first: its 8-byte little-endian header length can begin with any byte (0x80 0x05 looks like a
    # pickle's protocol header), but a length that fits the file followed by the JSON header's "{" is unambiguous
    if head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if _text(head) is not None:
        return "text"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # a pickle's protocol header
        return "legacy" if TORCH_LEGACY_MAGIC in head[2:24] else "pickle"
    # safetensors: an 8-byte little-endian header length, then the JSON header; its keys survive damage to both
    if head[8:9] == b"{" or b'"data_offsets"' in head or suffix == ".safetensors":
        return "safetensors"
    return "other"


def _describe(head: bytes) -> str:
    """What a file that is no checkpoint is, from its first bytes."""
    text = _text(head)
    if text is not None:
        if text.startswith("version https://git-lfs"):
            return ("a Git LFS pointer, not the weights it stands for: fetch them with `git lfs pull`, or download "
                    "the file itself")
        if text.lstrip().startswith("<"):
            return (f"a text file, a web page (it begins with {text.lstrip()[:40]!r}): the download saved a page "
                    "instead of the file; download the file itself")
        return f"a text file (it begins with {text[:40]!r})"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f"{name}, not a checkpoint"
    return f"an unrecognised binary file (it begins with {head[:8]!r})"


def _is_ncnn(path: Path, where: str) -> bool:
    """Whether `path` is an ncnn .param: by its suffix or its first line, the magic number."""
    return path.suffix.lower() == ".param" or _read_head(path, where, 16)[0].split(b"\n")[0].strip() == str(
        NCNN_MAGIC).encode()


def _read_ncnn(path: Path, bin_path: str | os.PathLike[str] | None, where: str
               ) -> tuple[str, dict[str, Any], StateDict, dict[str, str]]:
    """An ncnn model (`path`, a .param, and `bin_path`, by default the .bin beside it) as our architecture,
    hyper-parameters, state dict and metadata."""
    text, size = _read_head(path, where, MAX_NCNN_PARAM_BYTES + 1)
    if size > MAX_NCNN_PARAM_BYTES:
        raise _fail(where, f"{size:,} bytes, more than an ncnn .param of any network we read ({MAX_NCNN_PARAM_BYTES:,}"
                    "); it is no such file")
    try:
        param = text.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(where, "not an ncnn .param: that is text, this file is binary (a binary .param.bin is not "
                    "supported: use the text .param)") from None
    weights = Path(bin_path) if bin_path is not None else path.with_suffix(".bin")

    def read_bin(most: int) -> bytes:
        if not weights.exists() and not weights.is_symlink():
            raise _fail(where, f"its weights {weights} do not exist: put the .bin beside the .param under the same "
                        "name, or pass bin_path=")
        data, bin_size = _read_head(weights, str(weights), most + 1)
        if bin_size > most:
            raise _fail(str(weights), f"holds {bin_size:,} bytes, more than the {most:,} that the layers of {where} "
                        "can read; the .bin belongs to another .param")
        return data

    try:
        found = read_ncnn(param, read_bin, where, str(weights))
    except NcnnError as e:
        raise CheckpointError(str(e)) from None
    return found.arch, found.hparams, found.state_dict, found.metadata


def _read_file(path: Path) -> tuple[Any, dict[str, str], int]:
    """The object stored in `path`, for safetensors its metadata, and the file's size."""
    where = str(path)
    head, size = _read_head(path, where)
    if size == 0:
        raise _fail(where, "the file is empty; download or copy it again")
    kind = _kind(head, path.suffix, size)
    if kind == "safetensors":
        return *_read_safetensors(path, where), size
    if kind in ("zip", "legacy"):
        return _read_torch(path, where, kind, head[1]), {}, size
    if kind == "pickle":  # never unpickled: torch.load could not read it, and plain unpickling runs code
        raise _unrecognised(where, "a Python pickle that torch.save did not write, so no PyTorch checkpoint; it is "
                            "not unpickled, which could execute code")
    if path.suffix == ".bin" and path.with_suffix(".param").is_file():
        raise _fail(where, f"the weights of an ncnn model, without its graph: load {path.with_suffix('.param')} "
                    "(the .bin beside it is read with it)")
    raise _unrecognised(where, f"not a checkpoint: {_describe(head)}")


def _read_safetensors(path: Path, where: str) -> tuple[StateDict, dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as st:
            return {k: st.get_tensor(k) for k in st.keys()}, dict(st.metadata() or {})
    except Exception as e:  # noqa: BLE001 - the parser of untrusted bytes fails in many ways, all of them this one
        raise _fail(where, f"a damaged or truncated safetensors file ({_short(e)}); download or copy it "
                    "again") from None


def _check_zip(path: Path, where: str) -> None:
    """torch.load reads a zip archive by its directory and never checks its records' CRC-32: the archive must be
    intact, hold a data.pkl, store its records uncompressed as torch.save does (a compressed record unpacks to
    whatever size it declares: a zip bomb), and every record must match its CRC (a flipped bit in the weights
    would otherwise load)."""
    try:
        with zipfile.ZipFile(path) as z:
            records = z.infolist()
            if not any(r.filename.endswith("data.pkl") for r in records):
                names = ", ".join(repr(r.filename) for r in records[:4])
                raise _unrecognised(where, f"a zip archive without a PyTorch checkpoint inside (it holds "
                                    f"{names or 'nothing'})")
            compressed = next((r.filename for r in records if r.compress_type != zipfile.ZIP_STORED), None)
            if compressed is not None:
                raise _fail(where, f"a PyTorch checkpoint whose records are compressed (e.g. {compressed!r}); "
                            "torch.save never compresses them and a compressed record can unpack to any size, so it "
                            "is refused: extract the records and zip them again uncompressed (zip -0), or re-save "
                            "with torch.save")
            damaged = z.testzip()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - as for safetensors
        raise _fail(where, f"a truncated or damaged zip archive, as PyTorch checkpoints are ({_short(e)}); download "
                    "or copy it again") from None
    if damaged is not None:
        raise _fail(where, f"a damaged PyTorch checkpoint: its record {damaged!r} does not match its CRC-32, so its "
                    "bytes changed after torch.save wrote them; download or copy it again")


def _read_torch(path: Path, where: str, kind: str, protocol: int) -> Any:
    """torch.load of a zip archive or of the legacy format (`protocol`: the pickle protocol it begins with)."""
    if kind == "zip":
        _check_zip(path, where)
    try:
        with open(path, "rb") as f:  # a file, not its name: torch.load reads any name ending in .safetensors as one
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler fails on damage with many exception types
        refused = isinstance(e, pickle.UnpicklingError) and re.search(
            r"nsupported (?:global: )?GLOBAL ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)\s", str(e))
        if refused:
            raise _fail(where, f"it holds pickled Python objects ({refused.group(1)}; for example a whole pickled "
                        "model), not only tensors; rebuilding them would execute code, so it is refused. Re-save "
                        "it as a state dict where it was made: torch.save(model.state_dict(), path)") from None
        if kind == "legacy" and protocol > 3:  # torch.save(..., pickle_protocol=4) writes what it cannot read
            raise _fail(where, f"a PyTorch checkpoint in the legacy format written with pickle protocol {protocol}, "
                        "which torch.load(weights_only=True) cannot read; re-save it where it was made with "
                        "torch.save(model.state_dict(), path)") from None
        found = "zip archive" if kind == "zip" else "legacy format"
        raise _fail(where, f"a truncated or damaged PyTorch checkpoint ({found}: {_short(e, 160)}); download or "
                    "copy it again") from None


# ---------------------------------------------------------------------------------------------------------
# Tensors: a dict of finite floating-point weights, no more values than the file holds.


def _state_dict(obj: Any, where: str) -> tuple[StateDict, str | None]:
    """The tensors of a checkpoint object, unwrapping BasicSR's wrappers, and the outermost wrapper used."""
    if not isinstance(obj, Mapping):
        raise _unrecognised(where, f"it holds a {type(obj).__name__}, not a dict of tensors")
    wrapper = None
    for _ in range(MAX_WRAPPING):
        name = next((n for n in WRAPPERS if isinstance(obj.get(n), Mapping)), None)
        if name is None:
            break
        obj, wrapper = obj[name], wrapper or name
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise _unrecognised(where, f"a dict without tensors (keys: {keys})" if keys else "an empty dict")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, wrapper


def _check_size(sd: StateDict, where: str, size: int) -> None:
    """Refuse tensors that declare more values than a file of `size` bytes holds (a view repeating one stored value
    9·10⁹ times, one storage behind thousands of keys): touching them would exhaust memory."""
    declared = sum(t.numel() for t in sd.values())
    if declared > size:
        raise _fail(where, f"its tensors declare {declared:,} values but the file holds only {size:,} bytes; it is "
                    "damaged or crafted")


def _as_float32(sd: StateDict, where: str) -> StateDict:
    """`sd` with every weight as float32 (half, bfloat16, float64 and float8 are converted); dense tensors with
    values only, and floating-point ones except BatchNorm's integer step counter."""
    out: StateDict = {}
    for key, t in sd.items():
        if t.layout != torch.strided:
            raise _fail(where, f"tensor {key!r} is a {str(t.layout).removeprefix('torch.')} tensor; a network's "
                        "weights are dense")
        if t.is_meta:
            raise _fail(where, f"tensor {key!r} holds no values (it was saved from the meta device)")
        counter = key.endswith("num_batches_tracked") and not (t.is_floating_point() or t.is_complex()
                                                                or t.dtype == torch.bool)
        if not (counter or t.is_floating_point()):
            raise _fail(where, f"tensor {key!r} holds {str(t.dtype).removeprefix('torch.')} values where a network's "
                        "weights are floating-point numbers; the file is damaged or holds something else")
        out[key] = t if counter else t.float()
    return out


def _check_finite(weights: StateDict, original: StateDict, where: str) -> None:
    """Refuse NaN and Inf in the float32 `weights` (also float64 values of `original` that overflow float32),
    naming the first tensor that holds them: they give black or white images."""
    floats = [w.reshape(-1).cpu() for w in weights.values() if w.is_floating_point()]
    if not floats or bool(torch.isfinite(torch.cat(floats)).all()):  # two large ops, not two per tensor
        return
    key, w = next((k, w) for k, w in weights.items() if w.is_floating_point() and not bool(torch.isfinite(w).all()))
    counts = ((int(w.isnan().sum()), "NaN"), (int(w.isinf().sum()), "Inf"))
    what = " and ".join(f"{name} ({n:,} of {w.numel():,} values)" for n, name in counts if n)
    if original[key].dtype != torch.float32 and bool(torch.isfinite(original[key]).all()):
        what += f", {str(original[key].dtype).removeprefix('torch.')} values beyond float32's range"
    raise _fail(where, f"tensor {key!r} holds {what}; the checkpoint is damaged or diverged in training; use an "
                "earlier one")


# ---------------------------------------------------------------------------------------------------------
# Hyper-parameters: from the shapes, the metadata only for what shapes cannot tell.


def _from_shapes(sd: StateDict, where: str) -> tuple[str, dict[str, Any], StateDict, str]:
    """A foreign layout: the architecture, its hyper-parameters read from the shapes, the tensors under our key
    names, and the layout's name."""
    try:
        found = detect(sd)
    except FormatError as e:
        raise _unrecognised(where, str(e)) from None
    if found is None:
        keys = ", ".join(repr(k) for k in list(sd)[:6])
        raise _unrecognised(where, f"no known network among its {len(sd)} tensors (first keys: {keys})")
    return found.arch, found.hparams, found.state_dict, found.format


def _from_metadata(sd: StateDict, metadata: dict[str, str], where: str) -> tuple[str, dict[str, Any], StateDict]:
    """Our safetensors: the architecture and hyper-parameters its metadata names, once they agree with what the
    tensors' shapes say (the network is still checked against every shape before it is built)."""
    arch, text = metadata.get("engine.arch"), metadata.get("engine.hparams")
    if arch is None or text is None:
        raise _fail(where, "its engine metadata lacks engine.arch or engine.hparams; the file is damaged: save it "
                    "again")
    try:
        claimed = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _fail(where, f"its engine.hparams metadata is not valid JSON ({_short(e, 120)}); the file is damaged: "
                    "save it again") from None
    try:
        hparams, sd = _merge(arch, claimed, sd)
    except FormatError as e:
        raise _fail(where, f"its tensors do not form the network its metadata names ({arch!r}): {e}") from None
    except ValueError as e:
        raise _fail(where, f"its engine.hparams metadata does not describe its tensors: {e}; the file is damaged or "
                    "was edited: save it again") from None
    return arch, hparams, sd


def _merge(arch: str, claimed: Any, sd: StateDict, depth: int = 0) -> tuple[dict[str, Any], StateDict]:
    """The hyper-parameters of the network our metadata names (`arch`, `claimed`), and its tensors in our key names.
    The shapes of `sd` give what they can: through the layout its keys are recognised as, else through the
    architecture the metadata names (so an architecture registered at run time loads back too); `claimed` gives the
    rest once its kinds and the counts of repeated modules are checked. FormatError when the tensors form no such
    network, ValueError when the metadata contradicts them. Cascades recurse as deep as the tensors' own stages."""
    if arch == "cascade" and any(k.startswith("stages.") for k in sd):
        return _merge_cascade(claimed, sd, depth)
    found = detect(sd)
    if found is None and arch in ARCHS and arch != "cascade":
        found = detect_arch(sd, arch)
    if found is None:
        raise FormatError("no known network has these tensors, and it is no registered architecture")
    if arch != found.arch:
        raise ValueError(f"it names a {_short(repr(arch), 60)} network, the tensors are a {found.arch}")
    check_hparams(arch, claimed)
    for name in COUNTS:
        if name in claimed and claimed[name] != found.hparams.get(name):
            raise ValueError(f"{name}={claimed[name]}, but the tensors hold {found.hparams.get(name)}")
    return {**found.hparams, **claimed}, found.state_dict


def _merge_cascade(claimed: Any, sd: StateDict, depth: int) -> tuple[dict[str, Any], StateDict]:
    """`_merge` of a cascade: each stage's tensors (`stages.{i}.…`) against the stage the metadata lists."""
    if depth >= MAX_CASCADE_DEPTH:
        raise FormatError(f"cascades nested more than {MAX_CASCADE_DEPTH} deep (keys like {next(iter(sd))!r})")
    stages = cascade_stages(claimed)
    held = count(sd, r"stages\.(\d+)\..+")
    if len(stages) != held:
        raise ValueError(f"it lists {len(stages)} cascade stages, the tensors hold {held}")
    stray = [k for k in sd if not re.match(r"stages\.\d+\.", k)]
    if stray:
        raise FormatError(f"cascade checkpoint has tensors outside its stages, e.g. {stray[0]!r}")
    merged: list[dict[str, Any]] = []
    ours: StateDict = {}
    for i, stage in enumerate(stages):
        if isinstance(stage, str):
            if stage not in VARIANTS:
                raise ValueError(f"cascade stage {stage!r} is no registered model")
            stage = {"arch": VARIANTS[stage][0], "hparams": VARIANTS[stage][1]}
        prefix = f"stages.{i}."
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        hparams, sub = _merge(stage["arch"], stage["hparams"], sub, depth + 1)
        merged.append({"arch": stage["arch"], "hparams": hparams})
        ours |= {prefix + k: v for k, v in sub.items()}
    return {"stages": merged}, ours


def _mismatch(expected: StateDict, sd: StateDict) -> str | None:
    """How the tensors `sd` differ from those a network has (`expected`), or None."""
    missing = [k for k in expected if k not in sd]
    if missing:
        return f"tensor {missing[0]!r} is missing" + (f" ({len(missing)} are)" if len(missing) > 1 else "")
    extra = [k for k in sd if k not in expected]
    if extra:
        return f"tensor {extra[0]!r} has no place in it" + (f" ({len(extra)} have none)" if len(extra) > 1 else "")
    return next((f"tensor {k!r} has shape {list(sd[k].shape)}, the network's is {list(t.shape)}"
                 for k, t in expected.items() if sd[k].shape != t.shape), None)


def _instantiate(arch: str, hparams: dict[str, Any], sd: StateDict, where: str) -> SRNet:
    """The network `arch(hparams)` holding `sd`; built for real only after a build on the meta device (no memory)
    shows that its tensors are exactly the file's, names and shapes."""
    try:
        with torch.device("meta"):
            expected = build(arch, hparams).state_dict()
    except (ValueError, RuntimeError) as e:
        raise _fail(where, f"the hyper-parameters {_short(hparams)} do not make a valid {arch} ({e})") from None
    problem = _mismatch(expected, sd)
    if problem is not None:
        raise _fail(where, f"the tensors do not fit a {arch} with {_short(hparams)}: {problem}")
    model = build(arch, hparams)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load(source: str | os.PathLike[str] | Mapping[str, Any], *, device: str | torch.device = "cpu",
         bin_path: str | os.PathLike[str] | None = None) -> tuple[SRNet, ModelInfo]:
    """Load a generator from a checkpoint file or an in-memory state dict.

    Accepts ESRGAN 2018/2019, BasicSR/Real-ESRGAN (bare or in `params`/`params_ema`, preferring
    `params_ema`), SRResNet/MSRResNet/EDSR/RCAN layouts (BasicSR's and the authors'), our safetensors, and ncnn
    models of RRDBNet and SRVGGNetCompact: `source` is the .param (told by its suffix or its magic first line), the
    weights are `bin_path`, by default the .bin beside it with the same stem (see engine.models.ncnn).
    Returns the network in eval mode on `device` (float32) and a `ModelInfo`. Raises `FileNotFoundError` when
    `source` does not exist and `CheckpointError`, naming the file, for every other bad file: not a regular file,
    empty, damaged, not a checkpoint, refused as unsafe, an unknown network, metadata that contradicts the tensors,
    or weights that are not finite floating-point numbers.
    """
    metadata: dict[str, str] = {}
    size = None
    if isinstance(source, Mapping):
        if bin_path is not None:
            raise ValueError("bin_path names the weights of an ncnn .param file; a state dict has its weights")
        where, path, obj = "<state dict>", None, source
    else:
        path = Path(source)
        where = str(path)
        if bin_path is not None or _is_ncnn(path, where):
            return _load_ncnn(path, bin_path, where, device)
        obj, metadata, size = _read_file(path)
    sd, wrapper = _state_dict(obj, where)
    if size is not None:
        _check_size(sd, where, size)
    sd, original = _as_float32(sd, where), sd
    _check_finite(sd, original, where)

    if metadata.get("engine.format") == FORMAT_TAG:
        arch, hparams, sd = _from_metadata(sd, metadata, where)
        fmt = "safetensors"
    else:
        arch, hparams, sd, fmt = _from_shapes(sd, where)
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


def _load_ncnn(path: Path, bin_path: str | os.PathLike[str] | None, where: str, device: str | torch.device
               ) -> tuple[SRNet, ModelInfo]:
    arch, hparams, sd, metadata = _read_ncnn(path, bin_path, where)
    _check_finite(sd, sd, where)
    model = _instantiate(arch, hparams, sd, where).to(device)
    info = ModelInfo(arch=arch, hparams=model.hparams, scale=model.scale, in_channels=model.in_channels,
                     out_channels=model.out_channels, format="ncnn", name=variant_name(arch, model.hparams),
                     path=str(path), metadata=metadata)
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
