"""Reading and writing images for the upscaler (OpenCV), in RGB order, with a guard against decompression bombs.

Images are numpy arrays: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA; dtype uint8 or uint16 (float32 for TIFF).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from engine.atomic import atomic_write

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "ImageError",
    "image_format",
    "image_size",
    "list_inputs",
    "output_extension",
    "read_image",
    "write_image",
]

SUPPORTED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
# video files (engine.video) by suffix, with the FFmpeg container format each is written in
VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".avi": "avi"}
DEFAULT_MAX_PIXELS = 16384 * 16384 // 2  # ~134 MP; bigger images are refused (decompression bombs)

_OUTPUT_CHOICES = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "tif": ".tif", "tiff": ".tif"}
_NORMALIZED = {".jpeg": ".jpg", ".tiff": ".tif"}
_JPEG_MAX_SEGMENTS = 4096  # markers walked before giving up on a JPEG header
_SIZED_FORMATS = ("PNG", "JPEG", "WebP", "BMP", "TIFF")  # what image_size reads from the header
# Largest uncompressed pixel in a file we decode (4 channels of float64); a bigger file hides something else
_MAX_BYTES_PER_PIXEL = 32

StrPath = str | os.PathLike[str]


class ImageError(ValueError):
    """An image cannot be read or written; the message names the file and the reason."""


# --------------------------------------------------------------------------------------------- header parsing


def image_format(head: bytes) -> str | None:
    """The format of a file from its first bytes (its content, whatever its name says): "PNG", "JPEG", "WebP",
    "BMP", "TIFF", or a few others by name ("GIF", ...); None when not recognised."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return name
    return None


_OTHER_FORMATS = [(b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
                  (b"\x76\x2f\x31\x01", "OpenEXR"), (b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"),
                  (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
                  (b"\x59\xa6\x6a\x95", "Sun raster"), (b"\x00\x00\x00\x1cftypavif", "AVIF"),
                  (b"\x00\x00\x00\x20ftypavif", "AVIF"), (b"\xff\x0a", "JPEG XL"),
                  (b"\x00\x00\x00\x0cJXL ", "JPEG XL")] + [(f"P{i}".encode(), "PNM") for i in range(1, 8)] + [
                  (b"PF", "PFM"), (b"Pf", "PFM")]


def image_size(path: StrPath) -> tuple[int, int] | None:
    """(height, width) of the image at `path`, from its header only (the pixels are not decoded).

    Understands PNG, JPEG, WebP (VP8, VP8L, VP8X), BMP and TIFF (first IFD), told apart by their content, not their
    name. Returns None when the format is another one or the header is not understood or cannot be read. For JPEG
    this is the stored size, before any EXIF rotation.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            kind = image_format(head)
            if kind == "PNG":
                size = _png_size(head)
            elif kind == "JPEG":
                size = _jpeg_size(f)
            elif kind == "WebP":
                size = _webp_size(head)
            elif kind == "BMP":
                size = _bmp_size(head)
            elif kind == "TIFF":
                size = _tiff_size(f, head)
            else:
                size = None
    except (OSError, struct.error, IndexError):
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    for _ in range(_JPEG_MAX_SEGMENTS):
        byte = f.read(1)
        while byte and byte != b"\xff":  # tolerate garbage between segments
            byte = f.read(1)
        while byte == b"\xff":  # fill bytes
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0xD9 or marker == 0xDA:  # end of image / start of scan before any SOF
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers, no length
            continue
        (length,) = struct.unpack(">H", f.read(2))
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOF0..SOF15 (not DHT, JPG, DAC)
            _precision, height, width = struct.unpack(">BHH", f.read(5))
            return height, width
        f.seek(length - 2, os.SEEK_CUR)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 ":  # lossy: frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", head[26:30])
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14 bits width-1, 14 bits height-1
        if head[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", head[21:25])
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags (4 bytes), canvas width-1 and height-1 (24 bits each)
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return height, width
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    (header_size,) = struct.unpack("<I", head[14:18])
    if header_size == 12:  # BITMAPCOREHEADER
        width, height = struct.unpack("<HH", head[18:22])
        return height, width
    if header_size >= 40:  # BITMAPINFOHEADER and later; negative height means top-down rows
        width, height = struct.unpack("<ii", head[18:26])
        return abs(height), abs(width)
    return None


def _tiff_size(f, head: bytes) -> tuple[int, int] | None:
    order = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", head[4:8])
    f.seek(ifd)
    (count,) = struct.unpack(order + "H", f.read(2))
    entries = f.read(12 * count)
    width = height = None
    for i in range(count):
        tag, typ, n = struct.unpack(order + "HHI", entries[12 * i : 12 * i + 8])
        if tag not in (256, 257) or n != 1:
            continue
        if typ == 3:  # SHORT, left-justified in the 4-byte value field
            (value,) = struct.unpack(order + "H", entries[12 * i + 8 : 12 * i + 10])
        elif typ == 4:  # LONG
            (value,) = struct.unpack(order + "I", entries[12 * i + 8 : 12 * i + 12])
        else:
            return None
        if tag == 256:
            width = value
        else:
            height = value
    if width is None or height is None:
        return None
    return height, width


# --------------------------------------------------------------------------------------------- reading


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP"


def _check_pixels(path: StrPath, height: int, width: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise ImageError(
            f"{path}: {width}×{height} = {_megapixels(height * width)} is more than --max-pixels "
            f"{_megapixels(max_pixels)}; raise --max-pixels if you trust this file"
        )


def read_image(path: StrPath, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA; dtype uint8, uint16 or float32, as stored
    (float64 TIFFs come back as float32).

    The size is read from the header before anything is decoded: a file whose content is not PNG, JPEG, WebP, BMP
    or TIFF, or whose header cannot be sized, is refused (decoding it could take any amount of memory), and so is
    an image with more than `max_pixels` pixels (None: no limit). Gray+alpha files come back as RGBA (OpenCV
    expands them). JPEGs are turned upright by their EXIF orientation. Non-ASCII paths work. Raises ImageError
    naming the file and the reason.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{path}: no such file")
    if not p.is_file():
        raise ImageError(f"{path}: not a regular file")
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ImageError(f"{path}: unsupported extension {p.suffix or '(none)'!r}; supported: "
                         + ", ".join(SUPPORTED_EXTENSIONS))
    try:
        with open(p, "rb") as f:
            head = f.read(64)
        file_bytes = p.stat().st_size
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise ImageError(f"{path}: the file is empty")
    kind = image_format(head)
    if kind not in _SIZED_FORMATS:
        found = f"its content is {kind}" if kind else "its content is not an image format this tool reads"
        raise ImageError(f"{path}: {found}, not PNG, JPEG, WebP, BMP or TIFF as the name says; convert it to one of "
                         "those (its size cannot be checked before decoding, so it is not decoded)")
    size = image_size(p)
    if size is None:
        raise ImageError(f"{path}: a {kind} file whose header does not give its size (damaged or truncated); it is "
                         "not decoded")
    _check_pixels(path, *size, max_pixels)
    if max_pixels is not None and file_bytes > max_pixels * _MAX_BYTES_PER_PIXEL + 2**20:
        raise ImageError(f"{path}: {file_bytes / 2**20:.0f} MiB is more than any {kind} of at most --max-pixels "
                         f"{_megapixels(max_pixels)} can hold; raise --max-pixels if you trust this file")

    # IMREAD_UNCHANGED keeps alpha and 16-bit depth but ignores EXIF orientation; JPEG has no alpha, so decode
    # it with ANYCOLOR | ANYDEPTH, which keeps gray as gray and applies the orientation.
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if kind == "JPEG" else cv2.IMREAD_UNCHANGED
    try:
        data = np.fromfile(p, np.uint8)
        image = cv2.imdecode(data, flags) if data.size else None
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e})") from None
    except cv2.error as e:
        raise ImageError(f"{path}: cannot be decoded ({_cv2_reason(e)})") from None
    if image is None:
        raise ImageError(f"{path}: cannot be decoded (corrupt, truncated or unsupported)")
    _check_pixels(path, image.shape[0], image.shape[1], max_pixels)

    if image.dtype == np.float64:  # OpenCV's colour conversions take 8-, 16-bit and float32 images
        image = image.astype(np.float32)
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageError(f"{path}: unsupported pixel type {image.dtype} (uint8, uint16 or float expected)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    raise ImageError(f"{path}: unsupported layout {image.shape} (gray, RGB or RGBA expected)")


def _cv2_reason(e: Exception) -> str:
    """OpenCV's error without its source location: the line after "error: (...)"."""
    text = str(e).strip()
    reason = text.rsplit(") ", 1)[-1] if "error: (" in text else text
    return reason.split(" in function ")[0].strip() or text


# --------------------------------------------------------------------------------------------- writing


def _write_bytes(tmp: str, data: bytes | np.ndarray) -> None:
    with open(tmp, "wb") as f:
        f.write(memoryview(data))  # type: ignore[arg-type]  # an ndarray is a buffer


def write_image(path: StrPath, image: np.ndarray, *, quality: int = 95, overwrite: bool = True,
                reuse: bool = False) -> None:
    """Write an image atomically (parent folders are created); the format comes from the extension.

    `image`: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA; uint8 or uint16 (PNG, TIFF), float32 (TIFF only).
    JPEG: 8-bit gray/RGB only, no alpha. WebP: 8-bit; gray is stored as RGB. BMP: 8-bit. `quality` (1..101)
    applies to JPEG and WebP; 101 means lossless WebP (and 100 for JPEG). PNG uses compression level 3.
    Lossless WebP keeps the colour under fully transparent pixels only with OpenCV >= 4.12 (PRESERVE_COLOR).
    Raises ImageError naming the file and the fix; an existing file at `path` is untouched on error.
    `overwrite=False`: the file is created only if `path` does not exist when it is moved into place (FileExistsError
    otherwise; two writers racing for one name never both succeed). `reuse=True` lets the colour conversion to
    OpenCV's BGR order happen in `image` itself, saving a copy of a large image the caller no longer needs.
    """
    ext = Path(path).suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ImageError(f"{path}: unsupported extension {Path(path).suffix or '(none)'!r}; supported: "
                         + ", ".join(SUPPORTED_EXTENSIONS))
    if not 1 <= quality <= 101:
        raise ValueError(f"quality must be 1..101 (101: lossless WebP), not {quality}")
    image = np.asarray(image)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))) or 0 in image.shape[:2]:
        raise ImageError(f"{path}: cannot write an image of shape {image.shape}; expected (H, W), (H, W, 3) RGB "
                         "or (H, W, 4) RGBA")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageError(f"{path}: cannot write pixel type {image.dtype}; convert to uint8 or uint16")
    alpha = image.ndim == 3 and image.shape[2] == 4
    tiff = ext in (".tif", ".tiff")
    name = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WebP", ".bmp": "BMP", ".png": "PNG"}.get(ext, "TIFF")
    if image.dtype == np.float32 and not tiff:
        raise ImageError(f"{path}: {name} cannot hold float32 pixels; write TIFF (.tif) or convert to uint8/uint16")
    if image.dtype == np.uint16 and ext in (".jpg", ".jpeg", ".webp", ".bmp"):
        raise ImageError(f"{path}: {name} cannot hold 16-bit pixels; write PNG or TIFF (--ext png or tif), "
                         "or convert to uint8")
    if alpha and ext in (".jpg", ".jpeg"):
        raise ImageError(f"{path}: JPEG has no alpha channel; write PNG or WebP (--ext png or webp), "
                         "or drop the alpha channel")

    if image.ndim == 3:
        code = cv2.COLOR_RGBA2BGRA if alpha else cv2.COLOR_RGB2BGR
        in_place = reuse and image.flags.c_contiguous and image.flags.writeable
        image = cv2.cvtColor(image, code, dst=image) if in_place else cv2.cvtColor(image, code)
    else:
        image = np.ascontiguousarray(image)
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, min(quality, 100)]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
        if quality > 100 and hasattr(cv2, "IMWRITE_WEBP_LOSSLESS_PRESERVE_COLOR"):
            # keep the colour of fully transparent pixels too (plain lossless zeroes it)
            params += [cv2.IMWRITE_WEBP_LOSSLESS_MODE, cv2.IMWRITE_WEBP_LOSSLESS_PRESERVE_COLOR]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    else:
        params = []
    try:
        ok, buf = cv2.imencode(ext, image, params)
    except cv2.error as e:
        raise ImageError(f"{path}: cannot be encoded as {name} ({e})") from e
    if not ok:
        raise ImageError(f"{path}: cannot be encoded as {name}")
    del image
    atomic_write(path, lambda tmp: _write_bytes(tmp, buf), overwrite=overwrite)


# --------------------------------------------------------------------------------------------- paths


def output_extension(input_path: StrPath, requested: str) -> str:
    """The output file extension (with dot, lower case) for `input_path`; a video keeps its own.

    `requested` "auto": the input's extension, normalized (".jpeg" → ".jpg", ".tiff" → ".tif"; ".png" when the
    input's extension is not a supported one). Otherwise "png", "jpg", "webp" or "tif", with or without a dot
    ("jpeg" and "tiff" are accepted too). Anything else raises ValueError listing the choices.
    """
    choice = requested.strip().lower().lstrip(".")
    if is_video(input_path):  # a video keeps its container
        return Path(input_path).suffix.lower()
    if choice == "auto":
        ext = Path(input_path).suffix.lower()
        if ext not in SUPPORTED_EXTENSIONS:
            return ".png"
        return _NORMALIZED.get(ext, ext)
    if choice in _OUTPUT_CHOICES:
        return _OUTPUT_CHOICES[choice]
    raise ValueError(f"unknown output extension {requested!r}; choose auto, png, jpg, webp or tif")


def is_video(path: StrPath) -> bool:
    """Whether `path` names a video file (by its suffix: `VIDEO_FORMATS`)."""
    return Path(path).suffix.lower() in VIDEO_FORMATS


def list_inputs(path: StrPath) -> list[Path]:
    """The images and videos to process: a file → [file] (whatever its extension; read_image reports unsupported
    ones); a folder → its entries with a supported image or video extension (not recursive; hidden names and
    folders skipped),
    sorted by name. Entries that are not regular files (a FIFO, a device, a dangling link) are listed too, so that
    reading them reports them by name rather than leaving them out silently.

    Raises ImageError for a missing path or a folder without images.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise ImageError(f"{path}: no such file or folder")
    if not p.is_dir():
        raise ImageError(f"{path}: not a regular file or folder")
    try:
        entries = list(p.iterdir())
    except OSError as e:
        raise ImageError(f"{path}: cannot be listed ({e.strerror or e})") from None
    files = sorted(
        (f for f in entries
         if (f.suffix.lower() in SUPPORTED_EXTENSIONS or is_video(f)) and not f.name.startswith(".")
         and not f.is_dir()),
        key=lambda f: f.name,
    )
    if not files:
        raise ImageError(f"{path}: no images or videos in this folder (looked for "
                         f"{', '.join((*SUPPORTED_EXTENSIONS, *VIDEO_FORMATS))})")
    return files
