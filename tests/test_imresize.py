"""MATLAB-compatible bicubic imresize: against a naive float64 transcription of MATLAB's algorithm, and
against properties of MATLAB's kernel that hold exactly (constants, ramps, block means, hand-derived values).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch

from train.degradations import imresize

# --- naive reference: MATLAB's imresize.m (contributions, cubic, symmetric mirroring), loop by loop ------------


def ref_cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def ref_mirror(j: int, n: int) -> int:
    """1-based index j -> 0-based index of aux = [1:n, n:-1:1] at mod(j - 1, 2n) + 1."""
    k = (j - 1) % (2 * n)
    return k if k < n else 2 * n - 1 - k


def ref_resize_axis(a: np.ndarray, axis: int, scale: float, antialiasing: bool) -> np.ndarray:
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    out_len = math.ceil(n * scale)
    stretch = scale < 1 and antialiasing
    width = 4 / scale if stretch else 4
    taps = math.ceil(width) + 2
    out = np.zeros((out_len,) + a.shape[1:])
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        weights, sources = [], []
        for j in range(left, left + taps):
            weights.append(scale * ref_cubic(scale * (u - j)) if stretch else ref_cubic(u - j))
            sources.append(ref_mirror(j, n))
        total = sum(weights)
        for w, s in zip(weights, sources, strict=True):
            out[x - 1] += (w / total) * a[s]
    return np.moveaxis(out, 0, axis)


def ref_imresize(img: np.ndarray, scale_h: float, scale_w: float, antialiasing: bool = True) -> np.ndarray:
    """float64 MATLAB imresize of an (H, W) image: the dimension of the smaller scale first."""
    if scale_h <= scale_w:
        return ref_resize_axis(ref_resize_axis(img, 0, scale_h, antialiasing), 1, scale_w, antialiasing)
    return ref_resize_axis(ref_resize_axis(img, 1, scale_w, antialiasing), 0, scale_h, antialiasing)


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


SCALES = [1 / 2, 1 / 3, 1 / 4, 2, 3, 4, 0.37, 1.7]


# --- against the reference -------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", [(29, 35), (16, 24)])
@pytest.mark.parametrize("antialiasing", [True, False])
def test_matches_reference(scale, shape, antialiasing):
    img = random_image(shape)
    expected = ref_imresize(img, scale, scale, antialiasing)
    out64 = imresize(torch.from_numpy(img), scale, antialiasing=antialiasing, clamp=False)
    assert out64.dtype == torch.float64
    assert out64.shape == (math.ceil(shape[0] * scale), math.ceil(shape[1] * scale))
    np.testing.assert_allclose(out64.numpy(), expected, rtol=0, atol=1e-12)

    img32 = img.astype(np.float32)
    expected32 = ref_imresize(img32.astype(np.float64), scale, scale, antialiasing)
    out32 = imresize(torch.from_numpy(img32), scale, antialiasing=antialiasing, clamp=False)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), expected32, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale_h, scale_w", [(0.5, 3), (3, 0.5), (1 / 3, 0.37), (1.7, 1 / 4), (2, 1)])
def test_anisotropic_matches_reference(scale_h, scale_w):
    img = random_image((23, 31), seed=1)
    out = imresize(torch.from_numpy(img), (scale_h, scale_w), clamp=False).numpy()
    assert out.shape == (math.ceil(23 * scale_h), math.ceil(31 * scale_w))
    np.testing.assert_allclose(out, ref_imresize(img, scale_h, scale_w), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale_h, scale_w", [(0.37, 1.7), (1.7, 0.37), (0.5, 0.5)])
def test_pass_order(scale_h, scale_w):
    """Without intermediate rounding the two passes commute up to float rounding, so the order shows only in
    the last bits: in float32 the result equals, bit for bit, the smaller-scale pass followed by the other
    (height first for equal scales), and differs from the reverse order."""
    x = torch.from_numpy(random_image((40, 44), seed=2).astype(np.float32))

    def h_then_w(t):
        return imresize(imresize(t, (scale_h, 1), clamp=False), (1, scale_w), clamp=False)

    def w_then_h(t):
        return imresize(imresize(t, (1, scale_w), clamp=False), (scale_h, 1), clamp=False)

    out = imresize(x, (scale_h, scale_w), clamp=False)
    matlab_order, other_order = (h_then_w, w_then_h) if scale_h <= scale_w else (w_then_h, h_then_w)
    assert torch.equal(out, matlab_order(x))
    assert not torch.equal(out, other_order(x))


def test_batch_equals_per_image():
    x = torch.from_numpy(random_image((2, 3, 21, 26), seed=3))
    for scale in (0.37, 1 / 4, 3, (1.7, 0.5)):
        out = imresize(x, scale, clamp=False)
        for n in range(2):
            torch.testing.assert_close(out[n], imresize(x[n], scale, clamp=False), rtol=0, atol=1e-14)
            for c in range(3):
                torch.testing.assert_close(out[n, c], imresize(x[n, c], scale, clamp=False), rtol=0, atol=1e-14)


def test_numpy_hwc_equals_torch():
    img = skimage.data.astronaut()[100:164, 200:270].astype(np.float32) / 255  # (64, 70, 3)
    for scale in (1 / 4, 3, (0.37, 1.7)):
        out = imresize(img, scale)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        expected = imresize(torch.from_numpy(img).permute(2, 0, 1), scale).permute(1, 2, 0).numpy()
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
        gray = imresize(img[..., 1], scale)
        np.testing.assert_allclose(gray, expected[..., 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types(dtype):
    x = torch.from_numpy(random_image((3, 20, 22), seed=4)).to(dtype)
    out = imresize(x, 0.37)
    assert out.dtype == dtype
    expected = imresize(x.float(), 0.37)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=torch.finfo(dtype).eps)


# --- known behaviour of MATLAB's bicubic -------------------------------------------------------------------

def test_hand_derived_values():
    """[1..8] by 1/2, derived by hand from imresize.m. Without antialiasing: centres u = 1.5, 3.5, 5.5, 7.5,
    weights cubic(±0.5) = 0.5625 and cubic(±1.5) = -0.0625; the first and last outputs read the mirrored
    pixels 1 and 8 (= aux(16), aux(9)). With antialiasing: weights 0.5·cubic(d/2) at d = ±0.5 .. ±3.5,
    i.e. 0.43359375, 0.11328125, -0.03515625, -0.01171875, and more mirrored taps."""
    x = torch.arange(1, 9, dtype=torch.float64)[None]
    no_aa = imresize(x, (1, 0.5), antialiasing=False, clamp=False)
    assert no_aa.tolist() == [[1.4375, 3.5, 5.5, 7.5625]]
    aa = imresize(x, (1, 0.5), clamp=False)
    assert aa.tolist() == [[1.44921875, 3.48828125, 5.51171875, 7.55078125]]


@pytest.mark.parametrize("scale", [1 / 4, 0.37, 3, 1.7, (0.5, 2)])
def test_constant_stays_constant(scale):
    x = torch.full((2, 19, 23), 0.7, dtype=torch.float64)
    out = imresize(x, scale, clamp=False)
    assert (out - 0.7).abs().max().item() <= 4e-16


@pytest.mark.parametrize("k", [2, 3, 4])
def test_ramp_downscale_gives_block_means(k):
    """The antialiased kernel is symmetric about the block centre u = k·x - (k-1)/2, so on a linear ramp
    each interior output is its k×k block mean."""
    n = 12 * k
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ramp = 0.01 * i + 0.003 * j
    out = imresize(torch.from_numpy(ramp), 1 / k, clamp=False).numpy()
    block_means = ramp.reshape(n // k, k, n // k, k).mean(axis=(1, 3))
    x = np.arange(1, n // k + 1)
    u = k * x - (k - 1) / 2
    interior = (u - 2 * k >= 1) & (u + 2 * k <= n)  # the kernel (half-width 2k) stays inside the image
    assert interior.sum() >= 6
    inner = np.ix_(interior, interior)
    np.testing.assert_allclose(out[inner], block_means[inner], rtol=0, atol=1e-13)
    assert np.abs(out - block_means).max() > 1e-4  # the borders read mirrored pixels


@pytest.mark.parametrize("scale", [2, 3, 4, 1.7])
def test_upscale_reproduces_quadratics(scale):
    """Keys' cubic (a = -1/2) reproduces polynomials up to degree 2: in the interior the output is the
    polynomial evaluated at the source centre u = x/scale + (1 - 1/scale)/2 (1-based)."""
    n = 20
    t = np.arange(1, n + 1, dtype=np.float64)
    img = 0.02 * t[:, None] + 0.001 * t[None, :] ** 2  # linear in height, quadratic in width
    out = imresize(torch.from_numpy(img), scale, clamp=False).numpy()
    u = np.arange(1, math.ceil(n * scale) + 1) / scale + 0.5 * (1 - 1 / scale)
    interior = (u - 2 >= 1) & (u + 2 <= n)
    expected = 0.02 * u[:, None] + 0.001 * u[None, :] ** 2
    inner = np.ix_(interior, interior)
    np.testing.assert_allclose(out[inner], expected[inner], rtol=0, atol=1e-13)


@pytest.mark.parametrize("size, scale, expected", [(7, 1 / 4, 2), (8, 1 / 4, 2), (9, 1 / 4, 3), (7, 1 / 3, 3),
                                                    (10, 0.37, 4), (5, 1.7, 9), (3, 4, 12), (1, 1 / 4, 1)])
def test_output_size_is_ceil(size, scale, expected):
    assert imresize(torch.zeros(size, size), scale).shape == (expected, expected)


def test_round_trip_on_photo():
    """camera (512×512) up ×s then down ×1/s (antialiased, clamped). Measured: 38.85 dB for ×2, 39.12 dB for
    ×3, 39.07 dB for ×4: the antialiased down pass is a low-pass, so the round trip blurs fine texture."""
    img = torch.from_numpy(skimage.data.camera().astype(np.float64) / 255)
    for scale, bound in ((2, 38.6), (3, 38.9), (4, 38.8)):
        back = imresize(imresize(img, scale), 1 / scale)
        assert back.shape == img.shape
        mse = ((back - img) ** 2).mean().item()
        assert 10 * math.log10(1 / mse) > bound


def test_clamp():
    edge = torch.zeros(8, 16, dtype=torch.float64)
    edge[:, 8:] = 1
    for scale in (3, 1 / 3):
        raw = imresize(edge, scale, clamp=False)
        assert raw.min() < -1e-3 and raw.max() > 1 + 1e-3  # cubic overshoot at the edge
        clamped = imresize(edge, scale)
        assert clamped.min() >= 0 and clamped.max() <= 1
        assert torch.equal(clamped, raw.clamp(0, 1))


# --- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("img", [torch.zeros(4, 4, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.int64),
                                 np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.int32)])
def test_non_float_rejected(img):
    with pytest.raises(ValueError, match="img.*float"):
        imresize(img, 0.5)


@pytest.mark.parametrize("scale", [0, -0.5, (0.5, 0), (-1, 2), float("nan"), float("inf"), (1, 2, 3), "2"])
def test_bad_scale_rejected(scale):
    with pytest.raises(ValueError, match="scale"):
        imresize(torch.zeros(4, 4), scale)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="img is empty"):
        imresize(torch.zeros(3, 0, 5), 2)
    with pytest.raises(ValueError, match=r"img must have shape \(\.\.\., H, W\)"):
        imresize(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r"\(H, W, C\) or \(H, W\)"):
        imresize(np.zeros((1, 3, 4, 4)), 2)
    with pytest.raises(TypeError, match="list"):
        imresize([[0.0, 1.0]], 2)  # type: ignore[type-var]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = torch.from_numpy(random_image((2, 3, 33, 47), seed=5)).float()
    for scale in (1 / 4, 0.37, 3):
        out = imresize(x.cuda(), scale, clamp=False)
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), imresize(x, scale, clamp=False), rtol=0, atol=1e-6)
