"""engine.imageio: round trips, header sizes, decompression-bomb guard, errors, atomic writes, paths."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine import imageio
from engine.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    image_size,
    list_inputs,
    output_extension,
    read_image,
    write_image,
)

H, W = 13, 17


def _image(channels: int | None, dtype, seed: int = 0) -> np.ndarray:
    """A smooth-ish random image (JPEG-friendly) of shape (H, W) or (H, W, channels)."""
    rng = np.random.default_rng(seed)
    shape = (H, W) if channels is None else (H, W, channels)
    base = rng.random(shape)
    if dtype == np.float32:
        return base.astype(np.float32)
    top = np.iinfo(dtype).max
    return (base * top).round().astype(dtype)


def _smooth(channels: int | None) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    g = (x * 8 + y * 4).astype(np.uint8)
    if channels is None:
        return g
    planes = [g, 255 - g, (g // 2 + 60).astype(np.uint8), np.full_like(g, 200)]
    return np.stack(planes[:channels], axis=-1)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# --------------------------------------------------------------------------------------------- round trips

EXACT = [
    (ext, ch, dt)
    for ext, depths in [
        (".png", (np.uint8, np.uint16)),
        (".tif", (np.uint8, np.uint16, np.float32)),
        (".tiff", (np.uint8, np.uint16, np.float32)),
        (".bmp", (np.uint8,)),
    ]
    for ch in (None, 3, 4)
    for dt in depths
]


@pytest.mark.parametrize(("ext", "channels", "dtype"), EXACT)
def test_round_trip_exact(tmp_path, ext, channels, dtype):
    image = _image(channels, dtype)
    path = tmp_path / f"img{ext}"
    write_image(path, image)
    back = read_image(path)
    assert back.dtype == image.dtype and back.shape == image.shape
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("channels", [None, 3, 4])
def test_round_trip_webp_lossless(tmp_path, channels):
    image = _image(channels, np.uint8)
    path = tmp_path / "img.webp"
    write_image(path, image, quality=101)
    back = read_image(path)
    if channels is None:  # WebP has no gray mode: stored and read back as RGB with equal channels
        assert back.shape == (H, W, 3)
        for c in range(3):
            np.testing.assert_array_equal(back[..., c], image)
    else:
        np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("channels", [None, 3, 4])
def test_round_trip_webp_lossy(tmp_path, channels):
    image = _smooth(channels)
    path = tmp_path / "img.webp"
    write_image(path, image, quality=95)
    back = read_image(path)
    assert back.dtype == np.uint8
    assert back.shape == (image.shape if channels else (H, W, 3))
    ref = image if channels else np.repeat(image[..., None], 3, axis=-1)
    assert np.abs(back.astype(int) - ref.astype(int)).mean() < 6


@pytest.mark.parametrize("ext", [".jpg", ".jpeg"])
@pytest.mark.parametrize("channels", [None, 3])
def test_round_trip_jpeg(tmp_path, ext, channels):
    image = _smooth(channels)
    path = tmp_path / f"img{ext}"
    write_image(path, image, quality=95)
    back = read_image(path)
    assert back.dtype == np.uint8 and back.shape == image.shape
    assert np.abs(back.astype(int) - image.astype(int)).mean() < 4


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif", ".bmp"])
def test_channel_order_red(tmp_path, ext):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    path = tmp_path / f"red{ext}"
    write_image(path, red)
    back = read_image(path)
    assert back[4, 4, 0] > 240 and back[4, 4, 1] < 15 and back[4, 4, 2] < 15
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr[4, 4, 2] > 240 and bgr[4, 4, 0] < 15


def test_rgba_order(tmp_path):
    image = np.zeros((4, 4, 4), np.uint8)
    image[..., 0] = 255
    image[..., 3] = 128
    path = tmp_path / "a.png"
    write_image(path, image)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert tuple(raw[0, 0]) == (0, 0, 255, 128)
    assert tuple(read_image(path)[0, 0]) == (255, 0, 0, 128)


def test_non_ascii_path_and_parent_folders(tmp_path):
    path = tmp_path / "dossier été" / "sub" / "画像.png"
    image = _image(3, np.uint8)
    write_image(path, image)
    np.testing.assert_array_equal(read_image(path), image)
    assert image_size(path) == (H, W)


def test_gray_alpha_png_reads_as_rgba(tmp_path):
    raw = b"".join(b"\x00" + bytes([10 * y, 200] * W) for y in range(H))
    png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 4, 0, 0, 0))
           + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    path = tmp_path / "ga.png"
    path.write_bytes(png)
    image = read_image(path)
    assert image.shape == (H, W, 4) and image.dtype == np.uint8
    assert tuple(image[3, 5]) == (30, 30, 30, 200)


def test_jpeg_exif_orientation_applied(tmp_path):
    image = np.zeros((8, 16, 3), np.uint8)
    image[:, :8] = 255
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    tiff = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x112, 3, 1, 6, 0)
            + struct.pack("<I", 0))
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg[:2] + app1 + jpeg[2:])
    assert image_size(path) == (8, 16)  # stored size
    assert read_image(path).shape == (16, 8, 3)  # upright (rotated 90°)


# --------------------------------------------------------------------------------------------- image_size

SIZE_CASES = [
    (".png", 3, []),
    (".png", None, []),
    (".jpg", 3, []),
    (".jpg", None, []),
    (".jpg", 3, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 90]),
    (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 101]),
    (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 90]),
    (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 101]),
    (".bmp", 3, []),
    (".bmp", None, []),
    (".tif", 3, []),
    (".tif", None, []),
]


@pytest.mark.parametrize(("ext", "channels", "params"), SIZE_CASES)
def test_image_size_matches_decoded(tmp_path, ext, channels, params):
    image = _smooth(channels)
    path = tmp_path / f"x{ext}"
    ok, buf = cv2.imencode(ext, image, params)
    assert ok
    path.write_bytes(buf.tobytes())
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image_size(path) == decoded.shape[:2] == (H, W)


def test_image_size_covers_all_webp_chunks(tmp_path):
    kinds = set()
    for channels, quality in [(3, 90), (3, 101), (4, 90)]:  # lossy with alpha: VP8X + ALPH + VP8
        buf = cv2.imencode(".webp", _smooth(channels), [cv2.IMWRITE_WEBP_QUALITY, quality])[1].tobytes()
        kinds.add(buf[12:16])
    assert kinds == {b"VP8 ", b"VP8L", b"VP8X"}


def test_image_size_big_tiff_dimensions(tmp_path):
    # widths above 65535 need LONG tags; cv2 may write SHORT or LONG, so just check an odd, wide size
    image = np.zeros((3, 70001), np.uint8)
    path = tmp_path / "wide.tif"
    path.write_bytes(cv2.imencode(".tif", image)[1].tobytes())
    assert image_size(path) == (3, 70001)


def _tiff_gray(order: str, image: np.ndarray, width_type: int) -> bytes:
    """A minimal uncompressed 8-bit gray TIFF in byte order `order` ('<' II, '>' MM)."""
    h, w = image.shape
    entries = [
        (256, width_type, 1, w),
        (257, 4, 1, h),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0),  # strip offset, patched below
        (277, 3, 1, 1),
        (278, 4, 1, h),
        (279, 4, 1, h * w),
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    out = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", ifd_offset)
    out += struct.pack(order + "H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = data_offset
        if typ == 3:
            out += struct.pack(order + "HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack(order + "HHII", tag, typ, count, value)
    out += struct.pack(order + "I", 0)
    return out + image.tobytes()


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("width_type", [3, 4])
def test_image_size_tiff_byte_orders(tmp_path, order, width_type):
    image = _smooth(None)
    path = tmp_path / "hand.tif"
    path.write_bytes(_tiff_gray(order, image, width_type))
    assert image_size(path) == (H, W)
    np.testing.assert_array_equal(read_image(path), image)


def test_image_size_bmp_top_down(tmp_path):
    image = _smooth(3)[:, :8]  # 8 px * 3 bytes = 24 bytes per row: no row padding
    data = bytearray(cv2.imencode(".bmp", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
    offset = struct.unpack("<I", data[10:14])[0]
    width, height = struct.unpack("<ii", data[18:26])
    rows = [bytes(data[offset + r * 24 : offset + (r + 1) * 24]) for r in range(height)]
    data[22:26] = struct.pack("<i", -height)
    data[offset:] = b"".join(reversed(rows))
    path = tmp_path / "topdown.bmp"
    path.write_bytes(bytes(data))
    assert image_size(path) == (H, 8)
    np.testing.assert_array_equal(read_image(path), image)


@pytest.mark.parametrize("content", [b"", b"hello", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\0\0\0\0WEBPVP8L",
                                     b"BM", b"II*\x00\xff\xff\xff\x00", b"MM\x00*\x00\x00\x00\x08\x00"])
def test_image_size_unknown_or_truncated_is_none(tmp_path, content):
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    assert image_size(path) is None


def test_image_size_missing_file_is_none(tmp_path):
    assert image_size(tmp_path / "nope.png") is None


# --------------------------------------------------------------------------------------------- max pixels

def _big_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + b"garbage" * 100


def _big_jpeg() -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 60000, 50000, 3) + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"garbage" * 100


@pytest.mark.parametrize(("name", "content", "size"), [
    ("bomb.png", _big_png(), (100000, 100000)),
    ("bomb.jpg", _big_jpeg(), (60000, 50000)),
])
def test_max_pixels_refused_before_decoding(tmp_path, monkeypatch, name, content, size):
    path = tmp_path / name
    path.write_bytes(content)
    assert image_size(path) == size

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a refused image")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(ImageError) as e:
        read_image(path)
    msg = str(e.value)
    assert str(path) in msg and "--max-pixels 134.2 MP" in msg and "cannot be decoded" not in msg
    h, w = size
    assert f"{w}×{h} = {h * w / 1e6:.1f} MP" in msg


def test_max_pixels_small_limit_and_none(tmp_path):
    path = tmp_path / "a.png"
    write_image(path, _image(3, np.uint8))
    with pytest.raises(ImageError, match="more than --max-pixels"):
        read_image(path, max_pixels=H * W - 1)
    assert read_image(path, max_pixels=H * W).shape == (H, W, 3)
    assert read_image(path, max_pixels=None).shape == (H, W, 3)
    assert DEFAULT_MAX_PIXELS == 16384 * 16384 // 2


def test_max_pixels_checked_after_decoding_too(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    write_image(path, _image(3, np.uint8))
    monkeypatch.setattr(imageio, "image_size", lambda p: (1, 1))  # a header that lies
    with pytest.raises(ImageError, match="more than --max-pixels"):
        read_image(path, max_pixels=10)


def _no_decoding(*args, **kwargs):
    raise AssertionError("decoded a file whose size was not checked first")


@pytest.mark.parametrize("content, found", [
    (b"GIF89a" + struct.pack("<HH", 65535, 65535) + bytes(100), "its content is GIF"),  # a GIF named .png
    (b"P6\n60000 60000\n255\n" + bytes(100), "its content is PNM"),
    (b"II+\x00" + bytes(100), "its content is BigTIFF"),
    (b"\x00\x01\x02\x03" * 30, "not an image format this tool reads"),
])
def test_formats_the_header_parser_cannot_size_are_refused_before_decoding(tmp_path, monkeypatch, content, found):
    """A 650 KB GIF named .png decoded to 7 GiB before --max-pixels could refuse it: what cannot be sized from its
    header is never decoded."""
    path = tmp_path / "bomb.png"
    path.write_bytes(content)
    monkeypatch.setattr(cv2, "imdecode", _no_decoding)
    with pytest.raises(ImageError, match=found):
        read_image(path)


def test_a_header_that_cannot_be_sized_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "cut.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(8) + b"XXXX")  # PNG signature, no IHDR
    monkeypatch.setattr(cv2, "imdecode", _no_decoding)
    with pytest.raises(ImageError, match="header does not give its size"):
        read_image(path)


def test_a_file_larger_than_max_pixels_allows_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "padded.png"
    write_image(path, _image(3, np.uint8))
    with open(path, "ab") as f:
        f.write(bytes(2 * 2**20))  # 2 MiB of trailing bytes behind a 13×17 PNG
    monkeypatch.setattr(cv2, "imdecode", _no_decoding)
    with pytest.raises(ImageError, match="MiB is more than any PNG"):
        read_image(path, max_pixels=1000)


def test_float64_tiff_reads_as_float32(tmp_path):
    """OpenCV's colour conversion has no float64: a float64 TIFF stopped a folder run with a raw cv2.error."""
    path = tmp_path / "f64.tif"
    image = np.random.default_rng(0).random((9, 11, 3))
    ok, buf = cv2.imencode(".tif", image[..., ::-1].copy())
    assert ok
    path.write_bytes(buf.tobytes())
    got = read_image(path)
    assert got.dtype == np.float32 and got.shape == (9, 11, 3)
    np.testing.assert_allclose(got, image, rtol=1e-6)


# --------------------------------------------------------------------------------------------- read errors


def test_read_missing(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_read_folder(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(tmp_path / "dir.png")


def test_read_unsupported_extension(tmp_path):
    path = tmp_path / "anim.gif"
    path.write_bytes(b"GIF89a")
    with pytest.raises(ImageError, match=r"unsupported extension.*\.png.*\.bmp"):
        read_image(path)


@pytest.mark.parametrize("content, message", [(b"", "the file is empty"),
                                              (b"this is not an image" * 10, "not an image format this tool reads")])
def test_read_corrupt(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        read_image(path)


def test_read_truncated(tmp_path):
    path = tmp_path / "cut.png"
    ok, buf = cv2.imencode(".png", _image(3, np.uint8))
    path.write_bytes(buf.tobytes()[:60])
    with pytest.raises(ImageError, match="cannot be decoded"):
        read_image(path)


def test_read_truncated_png(tmp_path):
    full = tmp_path / "full.png"
    write_image(full, _image(3, np.uint8))
    data = full.read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot be decoded"):
        read_image(path)


def test_read_uppercase_extension(tmp_path):
    path = tmp_path / "UP.PNG"
    write_image(path, _image(None, np.uint8))
    assert read_image(path).shape == (H, W)


# --------------------------------------------------------------------------------------------- write errors


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp", ".bmp"])
def test_write_16bit_refused(tmp_path, ext):
    with pytest.raises(ImageError, match="16-bit.*PNG or TIFF"):
        write_image(tmp_path / f"a{ext}", _image(3, np.uint16))
    assert not list(tmp_path.iterdir())


def test_write_rgba_jpeg_refused(tmp_path):
    with pytest.raises(ImageError, match="JPEG has no alpha"):
        write_image(tmp_path / "a.jpg", _image(4, np.uint8))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp"])
def test_write_float_refused_outside_tiff(tmp_path, ext):
    with pytest.raises(ImageError, match="float32.*TIFF"):
        write_image(tmp_path / f"a{ext}", _image(3, np.float32))


@pytest.mark.parametrize("image", [
    np.zeros((4, 4, 2), np.uint8),
    np.zeros((4, 4, 5), np.uint8),
    np.zeros((4,), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
    np.zeros((4, 4, 3), np.float64),
    np.zeros((4, 4, 3), np.int16),
])
def test_write_bad_arrays(tmp_path, image):
    with pytest.raises(ImageError, match="a.png"):
        write_image(tmp_path / "a.png", image)


def test_write_bad_extension_and_quality(tmp_path):
    with pytest.raises(ImageError, match="unsupported extension"):
        write_image(tmp_path / "a.gif", _image(3, np.uint8))
    with pytest.raises(ValueError, match="quality"):
        write_image(tmp_path / "a.jpg", _image(3, np.uint8), quality=0)
    with pytest.raises(ValueError, match="quality"):
        write_image(tmp_path / "a.jpg", _image(3, np.uint8), quality=102)


def test_write_jpeg_quality_matters(tmp_path):
    image = _image(3, np.uint8)  # noisy: size depends strongly on quality
    write_image(tmp_path / "lo.jpg", image, quality=10)
    write_image(tmp_path / "hi.jpg", image, quality=101)
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size


def test_write_non_contiguous(tmp_path):
    image = _image(3, np.uint8)
    view = image[:, ::-1]
    write_image(tmp_path / "v.png", view)
    np.testing.assert_array_equal(read_image(tmp_path / "v.png"), view)
    write_image(tmp_path / "g.png", image[..., 1])
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), image[..., 1])


# --------------------------------------------------------------------------------------------- atomic writes


def _encode_raises(*args, **kwargs):
    raise cv2.error("boom")


@pytest.mark.parametrize("imencode", [_encode_raises, lambda *a, **k: (False, None)], ids=["raises", "returns-false"])
def test_write_atomic_when_encode_fails(tmp_path, monkeypatch, imencode):
    path = tmp_path / "out.png"
    path.write_bytes(b"old bytes")
    monkeypatch.setattr(cv2, "imencode", imencode)
    with pytest.raises(ImageError, match="cannot be encoded"):
        write_image(path, _image(3, np.uint8))
    assert path.read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_write_atomic_when_writing_fails_halfway(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"old bytes")

    def half_write(tmp, data):
        Path(tmp).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio, "_write_bytes", half_write)
    with pytest.raises(OSError, match="No space"):
        write_image(path, _image(3, np.uint8))
    assert path.read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_write_replaces_existing(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"old bytes")
    image = _image(3, np.uint8)
    write_image(path, image)
    np.testing.assert_array_equal(read_image(path), image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


# --------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("input_path", "requested", "expected"), [
    ("a.png", "auto", ".png"),
    ("a.JPEG", "auto", ".jpg"),
    ("a.jpg", "auto", ".jpg"),
    ("dir/a.tiff", "auto", ".tif"),
    ("a.webp", "auto", ".webp"),
    ("a.bmp", "auto", ".bmp"),
    ("a.gif", "auto", ".png"),
    ("a", "auto", ".png"),
    ("a.png", "jpg", ".jpg"),
    ("a.png", ".jpg", ".jpg"),
    ("a.png", "JPEG", ".jpg"),
    ("a.jpg", "png", ".png"),
    ("a.jpg", "webp", ".webp"),
    ("a.jpg", ".tif", ".tif"),
    ("a.jpg", "tiff", ".tif"),
])
def test_output_extension(input_path, requested, expected):
    assert output_extension(input_path, requested) == expected


@pytest.mark.parametrize("requested", ["gif", "", "exr", "bmpx"])
def test_output_extension_unknown(requested):
    with pytest.raises(ValueError, match="auto, png, jpg, webp or tif"):
        output_extension("a.png", requested)


def test_list_inputs_file(tmp_path):
    f = tmp_path / "x.gif"
    f.write_bytes(b"GIF89a")
    assert list_inputs(f) == [f]
    assert list_inputs(str(f)) == [f]


def test_list_inputs_folder(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp", "d.gif", "notes.txt", ".hidden.png", "e.tiff", "A.bmp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "deep.png").write_bytes(b"x")
    assert [p.name for p in list_inputs(tmp_path)] == ["A.bmp", "a.JPG", "b.png", "c.webp", "e.tiff"]


def test_list_inputs_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ImageError, match="no images"):
        list_inputs(tmp_path)


def test_list_inputs_missing(tmp_path):
    with pytest.raises(ImageError, match="no such file or folder"):
        list_inputs(tmp_path / "missing")
