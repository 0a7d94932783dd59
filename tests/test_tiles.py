"""Tests of the tile scheduling and overlap blending in engine._C (csrc/tiles*.{h,cpp,cu}): axis_tiles,
axis_weights, accumulate, blend_tiles and the CUDA twin accumulate_cuda."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from util import has_gpu, no_gpu_message

from engine._ext import load_C

C = load_C()


# --- numpy references -------------------------------------------------------------------------------------


def ref_blend_regions(starts: list[int], size: int, scale: int) -> list[tuple[int, int]]:
    """Blend region [a, b) (output pixels) of each pair of consecutive tiles: their overlap, clipped to the part
    no third tile covers (the clipping only matters where three tiles overlap)."""
    s = [p * scale for p in starts]
    e = [p + size * scale for p in s]
    n = len(starts)
    regions = []
    for i in range(n - 1):
        a = max(s[i + 1], e[i - 1]) if i > 0 else s[i + 1]
        b = min(e[i], s[i + 2]) if i + 2 < n else e[i]
        regions.append((a, b))
    return regions


def ref_axis_weights(length: int, starts: list[int], tile: int, scale: int) -> np.ndarray:
    """The definition, written out: 1 where one tile covers a pixel; across a blend region [a, b) of tiles i and
    i + 1 (q = o // 4), tile i keeps [a, a + q), tile i + 1 takes [b - q, b), and in between tile i + 1 gets the
    raised cosine r (double, rounded to float32) and tile i gets 1.0f - r."""
    size = min(tile, length) * scale
    weights = np.ones((len(starts), size), np.float32)
    for i, (a, b) in enumerate(ref_blend_regions(starts, min(tile, length), scale)):
        left, right = starts[i] * scale, starts[i + 1] * scale  # origins of tiles i and i + 1
        o = b - a
        q = o // 4
        m = o - 2 * q
        share = np.zeros(o, np.float32)  # tile i + 1's share across [a, b)
        share[o - q :] = 1
        if m:
            t = (np.arange(m, dtype=np.float64) + 0.5) / m
            share[q : q + m] = (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)
        weights[i, a - left : b - left] = np.float32(1) - share
        weights[i, b - left :] = 0  # beyond the region the pixels belong to later tiles
        weights[i + 1, a - right : b - right] = share
        weights[i + 1, : a - right] = 0
    return weights


def ref_accumulate(dst, src, y0, x0, wy, wx):
    th, tw = src.shape[1:]
    dst[:, y0 : y0 + th, x0 : x0 + tw] += (wy[:, None] * wx[None, :]) * src


def coverage_sum(length: int, starts: list[int], weights: np.ndarray, scale: int) -> np.ndarray:
    total = np.zeros(length * scale, np.float32)
    for start, w in zip(starts, weights, strict=True):
        total[start * scale : start * scale + w.size] += w
    return total


# --- axis_tiles -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "starts"),
    [
        (100, 40, 8, [0, 30, 60]),  # n = ceil(92 / 32) = 3
        (100, 100, 8, [0]),
        (99, 100, 50, [0]),
        (1, 1, 0, [0]),
        (10, 5, 0, [0, 5]),
        (11, 5, 0, [0, 3, 6]),  # n = ceil(11 / 5) = 3, starts round(0, 3, 6)
        (71, 40, 10, [0, 16, 31]),  # round(15.5) = 16: halves go up
        (5, 2, 1, [0, 1, 2, 3]),
    ],
)
def test_axis_tiles_examples(length, tile, overlap, starts):
    assert C.axis_tiles(length, tile, overlap) == starts


@pytest.mark.parametrize("tile", [1, 2, 3, 5, 8, 13, 40])
def test_axis_tiles_properties(tile):
    for length in range(1, 130):
        for overlap in range(0, tile // 2 + 1):
            starts = C.axis_tiles(length, tile, overlap)
            size = min(tile, length)
            if length <= tile:
                assert starts == [0]
                continue
            n = math.ceil((length - overlap) / (tile - overlap))
            assert len(starts) == n
            assert starts[0] == 0 and starts[-1] == length - tile
            assert all(0 <= s <= length - tile for s in starts)
            for i in range(1, n):
                assert starts[i] == (2 * i * (length - tile) + (n - 1)) // (2 * (n - 1))
                assert starts[i - 1] + size - starts[i] >= overlap  # consecutive overlap
                assert starts[i] > starts[i - 1]
            covered = np.zeros(length, bool)
            for s in starts:
                covered[s : s + size] = True
            assert covered.all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 8, 2), "length must be >= 1, got 0"),
        ((10, 0, 0), "tile must be >= 1, got 0"),
        ((10, 4, -1), "overlap must be >= 0, got -1"),
        ((100, 40, 21), "tile_overlap must be at most half the tile size"),
        ((100, 5, 3), "tile_overlap must be at most half the tile size"),
    ],
)
def test_axis_tiles_errors(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        C.axis_tiles(*args)


def test_axis_tiles_allows_any_overlap_for_a_single_tile():
    assert C.axis_tiles(30, 40, 35) == [0]


# --- axis_weights -----------------------------------------------------------------------------------------

WEIGHT_CASES = [
    (1, 1, 0, 1),
    (5, 8, 2, 2),  # a single tile smaller than `tile`
    (40, 40, 8, 4),  # a single tile of exactly `tile`
    (100, 40, 8, 1),
    (100, 40, 8, 4),
    (101, 33, 7, 3),
    (37, 7, 3, 2),
    (50, 10, 0, 1),  # overlap 0: tiles abut
    (64, 16, 8, 2),  # overlap = tile / 2
    (97, 24, 12, 4),
    (61, 40, 20, 1),  # three tiles overlap (uneven spacing)
    (71, 40, 10, 2),  # three tiles overlap
    (1000, 128, 16, 4),
    (513, 256, 32, 2),
]


@pytest.mark.parametrize(("length", "tile", "overlap", "scale"), WEIGHT_CASES)
def test_axis_weights_definition(length, tile, overlap, scale):
    starts = C.axis_tiles(length, tile, overlap)
    size = min(tile, length)
    w = C.axis_weights(length, starts, tile, scale)
    assert w.dtype == np.float32 and w.shape == (len(starts), size * scale) and w.flags.c_contiguous
    np.testing.assert_array_equal(w, ref_axis_weights(length, starts, tile, scale))
    # partition of unity, exactly in float32
    assert np.array_equal(coverage_sum(length, starts, w, scale), np.ones(length * scale, np.float32))
    assert w[0, 0] == 1 and w[-1, -1] == 1  # no ramp at the image borders
    assert np.all((w >= 0) & (w <= 1))
    for row in w:  # each tile's weight rises, stays, falls: monotone ramps
        k = int(np.argmax(row))
        assert np.all(np.diff(row[: k + 1]) >= 0) and np.all(np.diff(row[k:]) <= 0)
    for i, (a, b) in enumerate(ref_blend_regions(starts, size, scale)):
        q = (b - a) // 4
        s_i, s_next = starts[i] * scale, starts[i + 1] * scale
        assert np.all(w[i + 1, a - s_next : a + q - s_next] == 0)  # next to tile i + 1's left edge
        assert np.all(w[i, b - q - s_i : b - s_i] == 0)  # next to tile i's right edge
        assert np.all(w[i, a - s_i : a + q - s_i] == 1)


def test_axis_weights_example_by_hand():
    # length 100, tile 40, overlap 8: starts 0, 30, 60; overlap [30, 40): o = 10, q = 2, ramp [32, 38), m = 6.
    w = C.axis_weights(100, [0, 30, 60], 40, 1)
    np.testing.assert_array_equal(w[1, 0:2], [0, 0])
    np.testing.assert_array_equal(w[1, 8:10], [1, 1])
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(6) + 0.5) / 6)).astype(np.float32)
    np.testing.assert_array_equal(w[1, 2:8], ramp)
    np.testing.assert_array_equal(w[0, 32:38], np.float32(1) - ramp)
    np.testing.assert_array_equal(w[0, :30], np.ones(30, np.float32))
    np.testing.assert_array_equal(w[1, 10:30], np.ones(20, np.float32))


def test_axis_weights_sum_to_one_for_every_small_plan():
    for length in range(1, 70):
        for tile in (1, 2, 3, 5, 8, 13, 20):
            for overlap in range(0, tile // 2 + 1):
                starts = C.axis_tiles(length, tile, overlap)
                for scale in (1, 3):
                    w = C.axis_weights(length, starts, tile, scale)
                    assert np.array_equal(coverage_sum(length, starts, w, scale), np.ones(length * scale, np.float32))
                    np.testing.assert_array_equal(w, ref_axis_weights(length, starts, tile, scale))


def test_axis_weights_accepts_numpy_starts():
    starts = np.array(C.axis_tiles(100, 40, 8), np.int64)
    np.testing.assert_array_equal(C.axis_weights(100, starts, 40, 2), C.axis_weights(100, list(starts), 40, 2))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, [0], 4, 1), "length must be >= 1, got 0"),
        ((10, [0], 0, 1), "tile must be >= 1, got 0"),
        ((10, [0, 6], 4, 0), "scale must be >= 1, got 0"),
        ((10, [], 4, 1), "starts must not be empty"),
        ((10, [1, 6], 4, 1), "starts[0] must be 0, got 1"),
        ((10, [0, 5], 4, 1), "the last start must be length - min(tile, length) = 6, got starts[1] = 5"),
        ((10, [0, 3, 3, 6], 4, 1), "starts must be strictly increasing"),
        ((10, [0, 6], 4, 1), "leave a gap"),
        ((10, [0, 1, 2, 3, 6], 4, 1), "more than three tiles of size 4 overlap"),
    ],
)
def test_axis_weights_errors(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        C.axis_weights(*args)


# --- accumulate / blend_tiles -----------------------------------------------------------------------------


def random_tile(rng, channels, th, tw):
    src = rng.uniform(-1, 2, (channels, th, tw)).astype(np.float32)
    wy = rng.uniform(0, 1, th).astype(np.float32)
    wx = rng.uniform(0, 1, tw).astype(np.float32)
    return src, wy, wx


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize(
    ("y0", "x0", "th", "tw"),
    [(0, 0, 17, 23), (14, 9, 17, 23), (0, 9, 31, 1), (30, 31, 1, 1), (3, 4, 0, 5), (0, 0, 31, 32)],
)
def test_accumulate_matches_numpy(channels, y0, x0, th, tw):
    rng = np.random.default_rng(10)
    dst = rng.uniform(0, 1, (channels, 31, 32)).astype(np.float32)
    src, wy, wx = random_tile(rng, channels, th, tw)
    expected = dst.copy()
    ref_accumulate(expected, src, y0, x0, wy, wx)
    assert C.accumulate(dst, src, y0, x0, wy, wx) is None
    assert np.array_equal(dst, expected)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_accumulate_threads_agree(channels):
    rng = np.random.default_rng(11)
    base = rng.uniform(0, 1, (channels, 301, 257)).astype(np.float32)
    src, wy, wx = random_tile(rng, channels, 211, 205)  # >= 4 threads' worth of work for 4 channels
    expected = base.copy()
    ref_accumulate(expected, src, 90, 52, wy, wx)
    for threads in (1, 4, 0):
        dst = base.copy()
        C.accumulate(dst, src, 90, 52, wy, wx, threads=threads)
        assert np.array_equal(dst, expected), threads


def test_accumulate_copies_non_contiguous_inputs():
    rng = np.random.default_rng(12)
    dst = np.zeros((3, 20, 20), np.float32)
    src = rng.uniform(0, 1, (3, 20, 30)).astype(np.float32)[:, ::2, ::3]
    wy = rng.uniform(0, 1, 20).astype(np.float32)[::2]
    wx = rng.uniform(0, 1, 30).astype(np.float32)[::3]
    expected = dst.copy()
    ref_accumulate(expected, src, 5, 3, wy, wx)
    C.accumulate(dst, src, 5, 3, wy, wx)
    assert np.array_equal(dst, expected)


def overlapping_batch(rng, n, channels, th, tw, height, width):
    tiles = rng.uniform(-1, 2, (n, channels, th, tw)).astype(np.float32)
    ys = [int(v) for v in rng.integers(0, height - th + 1, n)]
    xs = [int(v) for v in rng.integers(0, width - tw + 1, n)]
    ys[0], xs[-1] = height - th, width - tw  # touch the bottom and right edges
    ys[1], xs[1] = 0, 0
    wys = rng.uniform(0, 1, (n, th)).astype(np.float32)
    wxs = rng.uniform(0, 1, (n, tw)).astype(np.float32)
    return tiles, ys, xs, wys, wxs


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("threads", [1, 4, 0])
def test_blend_tiles_equals_accumulate_in_order(channels, threads):
    rng = np.random.default_rng(13)
    height, width, th, tw = 260, 243, 129, 97  # tiles of the batch overlap each other
    base = rng.uniform(0, 1, (channels, height, width)).astype(np.float32)
    tiles, ys, xs, wys, wxs = overlapping_batch(rng, 9, channels, th, tw, height, width)
    expected = base.copy()
    sequential = base.copy()
    for k in range(len(tiles)):
        ref_accumulate(expected, tiles[k], ys[k], xs[k], wys[k], wxs[k])
        C.accumulate(sequential, tiles[k], ys[k], xs[k], wys[k], wxs[k], threads=1)
    assert np.array_equal(sequential, expected)
    for wy_arg, wx_arg in ((wys, wxs), (list(wys), list(wxs))):  # a 2-D array or a list of vectors
        dst = base.copy()
        C.blend_tiles(dst, tiles, ys, xs, wy_arg, wx_arg, threads=threads)
        assert np.array_equal(dst, expected)


def test_blend_tiles_empty_batch_and_numpy_positions():
    dst = np.ones((3, 8, 8), np.float32)
    C.blend_tiles(dst, np.zeros((0, 3, 4, 4), np.float32), [], [], np.zeros((0, 4), np.float32), [])
    assert np.array_equal(dst, np.ones((3, 8, 8), np.float32))
    tiles = np.ones((2, 3, 4, 4), np.float32)
    w = np.full((2, 4), 0.5, np.float32)
    C.blend_tiles(dst, tiles, np.array([0, 4]), np.array([4, 0]), w, w)
    assert dst[0, 0, 4] == 1.25 and dst[0, 4, 0] == 1.25 and dst[0, 0, 0] == 1


def reconstruct(image_lr: np.ndarray, tile: int, overlap: int, scale: int, batch: int) -> np.ndarray:
    """Tiles the low-resolution image, 'upscales' each tile by nearest neighbour and blends them back."""
    channels, height, width = image_lr.shape
    ys, xs = C.axis_tiles(height, tile, overlap), C.axis_tiles(width, tile, overlap)
    wy, wx = C.axis_weights(height, ys, tile, scale), C.axis_weights(width, xs, tile, scale)
    th, tw = min(tile, height), min(tile, width)
    out = np.zeros((channels, height * scale, width * scale), np.float32)
    grid = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    for first in range(0, len(grid), batch):
        chunk = grid[first : first + batch]
        lr = np.stack([image_lr[:, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for i, j in chunk])
        up = np.ascontiguousarray(lr.repeat(scale, axis=2).repeat(scale, axis=3))
        C.blend_tiles(out, up, [ys[i] * scale for i, _ in chunk], [xs[j] * scale for _, j in chunk],
                      [wy[i] for i, _ in chunk], [wx[j] for _, j in chunk], threads=2)  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "scale", "batch"),
    [
        ((97, 131), 32, 8, 1, 1),
        ((97, 131), 32, 16, 1, 5),
        ((61, 71), 40, 10, 3, 4),  # three tiles overlap along x
        ((50, 23), 16, 0, 3, 3),
        ((20, 20), 32, 8, 2, 1),  # a single tile
    ],
)
def test_tiles_reconstruct_the_image(size, tile, overlap, scale, batch):
    rng = np.random.default_rng(14)
    image = rng.uniform(0, 1, (3, *size)).astype(np.float32)
    out = reconstruct(image, tile, overlap, scale, batch)
    expected = image.repeat(scale, axis=1).repeat(scale, axis=2)
    assert np.max(np.abs(out - expected)) <= 1e-6


def test_reconstruction_of_a_constant_is_exact_where_two_tiles_meet():
    image = np.ones((1, 1, 100), np.float32)
    out = reconstruct(image, 40, 8, 2, 2)  # one row of tiles: wy = 1, so every pixel is (1 - r) + r
    assert np.array_equal(out, np.ones_like(out))


# --- errors -----------------------------------------------------------------------------------------------


def test_accumulate_errors():
    dst = np.zeros((3, 10, 10), np.float32)
    src, wy, wx = np.zeros((3, 4, 5), np.float32), np.ones(4, np.float32), np.ones(5, np.float32)
    dst4 = np.zeros((4, 10, 10), np.float32)
    cases = [
        (TypeError, "dst must have dtype float32, got float64", (dst.astype(np.float64), src, 0, 0, wy, wx)),
        (TypeError, "src must have dtype float32, got float16", (dst, src.astype(np.float16), 0, 0, wy, wx)),
        (TypeError, "wy must have dtype float32, got float64", (dst, src, 0, 0, wy.astype(np.float64), wx)),
        (TypeError, "wx must be a numpy.ndarray, got list", (dst, src, 0, 0, wy, [1.0] * 5)),
        (ValueError, "dst must be a C-contiguous", (np.zeros((3, 10, 20), np.float32)[:, :, ::2], src, 0, 0, wy, wx)),
        (ValueError, "dst must have shape (C, H, W), got (10, 10)", (dst[0], src, 0, 0, wy, wx)),
        (ValueError, "src must have shape (C, th, tw), got (4, 5)", (dst, src[0], 0, 0, wy, wx)),
        (ValueError, "wy must have shape (th,) = (4,) like src, got (5,)", (dst, src, 0, 0, wx, wx)),
        (ValueError, "channel mismatch: src has 3 channels, dst has 4", (dst4, src, 0, 0, wy, wx)),
        (ValueError, "tile out of bounds: rows [7, 11) and columns [0, 5)", (dst, src, 7, 0, wy, wx)),
        (ValueError, "tile out of bounds: rows [0, 4) and columns [6, 11)", (dst, src, 0, 6, wy, wx)),
        (ValueError, "tile out of bounds: rows [-1, 3)", (dst, src, -1, 0, wy, wx)),
    ]  # fmt: skip
    for error, message, args in cases:
        with pytest.raises(error, match=re.escape(message)):
            C.accumulate(*args)
    read_only = dst.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="dst must be writeable"):
        C.accumulate(read_only, src, 0, 0, wy, wx)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        C.accumulate(dst, src, 0, 0, wy, wx, threads=-2)
    with pytest.raises(TypeError):
        C.accumulate(dst, src, 0, 0, wy, wx, 2)  # threads is keyword-only
    assert not dst.any()  # nothing was written by the failed calls


def test_blend_tiles_errors():
    dst = np.zeros((3, 10, 10), np.float32)
    tiles, w = np.zeros((2, 3, 4, 4), np.float32), np.ones((2, 4), np.float32)
    yx, w3, w5 = [0, 0], np.ones((3, 4), np.float32), np.ones(5, np.float32)
    cases = [
        (TypeError, "tiles must have dtype float32, got float64", (dst, tiles.astype(np.float64), yx, yx, w, w)),
        (ValueError, "tiles must have shape (N, C, th, tw), got (3, 4, 4)", (dst, tiles[0], [0, 0], [0, 0], w, w)),
        (ValueError, "ys and xs must have N = 2 entries (one per tile), got 1 and 2", (dst, tiles, [0], [0, 0], w, w)),
        (ValueError, "wys must have shape (N, 4) = (2, 4), got (3, 4)", (dst, tiles, yx, yx, w3, w)),
        (ValueError, "wxs must have N = 2 entries (one per tile), got 1", (dst, tiles, [0, 0], [0, 0], w, [w[0]])),
        (ValueError, "wxs[1] must have shape (4,), got (5,)", (dst, tiles, yx, yx, w, [w[0], w5])),
        (TypeError, "wys[0] must have dtype float32, got float64", (dst, tiles, [0, 0], [0, 0], [np.ones(4)] * 2, w)),
        (ValueError, "channel mismatch: tiles has 3 channels, dst has 1", (dst[:1], tiles, [0, 0], [0, 0], w, w)),
        (ValueError, "tile 1 out of bounds: rows [7, 11)", (dst, tiles, [0, 7], [0, 0], w, w)),
        (ValueError, "dst must be a C-contiguous", (np.asfortranarray(dst), tiles, [0, 0], [0, 0], w, w)),
    ]  # fmt: skip
    for error, message, args in cases:
        with pytest.raises(error, match=re.escape(message)):
            C.blend_tiles(*args)
    assert not dst.any()


# --- CUDA twin --------------------------------------------------------------------------------------------


def test_accumulate_cuda_validates_arguments_first():
    with pytest.raises(ValueError, match="channels must be >= 1, got 0"):
        C.accumulate_cuda(1, 2, 3, 4, 0, 10, 10, 4, 4, 0, 0)
    with pytest.raises(ValueError, match=re.escape("tile out of bounds: rows [8, 12)")):
        C.accumulate_cuda(1, 2, 3, 4, 3, 10, 10, 4, 4, 8, 0)
    with pytest.raises(ValueError, match="must be device pointers"):
        C.accumulate_cuda(1, 0, 3, 4, 3, 10, 10, 4, 4, 0, 0)


@pytest.mark.skipif(has_gpu(), reason="this machine has an NVIDIA device")
def test_accumulate_cuda_without_a_gpu_raises_clearly():
    message = no_gpu_message()
    with pytest.raises(RuntimeError, match=message):
        C.accumulate_cuda(1 << 20, 2 << 20, 3 << 20, 4 << 20, 3, 10, 10, 4, 4, 0, 0)
    with pytest.raises(RuntimeError, match=message):
        C.accumulate_cuda(1 << 20, 2 << 20, 3 << 20, 4 << 20, 3, 10, 10, 4, 4, 0, 0, stream=0)


@pytest.mark.gpu
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_accumulate_cuda_matches_the_host(channels):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    if not C.built_with_cuda():
        pytest.skip("engine._C was built without CUDA")
    rng = np.random.default_rng(15)
    height, width = 203, 187
    base = rng.uniform(0, 1, (channels, height, width)).astype(np.float32)
    tiles, ys, xs, wys, wxs = overlapping_batch(rng, 6, channels, 97, 81, height, width)
    expected = base.copy()
    C.blend_tiles(expected, tiles, ys, xs, wys, wxs)
    dst = torch.from_numpy(base).cuda()
    tiles_gpu, wys_gpu, wxs_gpu = (torch.from_numpy(a).cuda() for a in (tiles, wys, wxs))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for k in range(len(tiles)):
            C.accumulate_cuda(dst.data_ptr(), tiles_gpu[k].data_ptr(), wys_gpu[k].data_ptr(), wxs_gpu[k].data_ptr(),
                              channels, height, width, 97, 81, ys[k], xs[k], stream.cuda_stream)  # fmt: skip
    stream.synchronize()
    assert np.array_equal(dst.cpu().numpy(), expected)
