"""Tests of the compiled extension engine._C (setup.py, csrc/), its import guard and engine.pixels.

The build check follows setup.py's rule: CUDA is compiled in unless ENGINE_CUDA=0, iff nvcc is found. Run the
tests in the environment the extension was built in (e.g. `ENGINE_CUDA=0 python -m pytest ...` after an
`ENGINE_CUDA=0 pip install -e .`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from util import has_gpu, no_gpu_message

from engine import pixels
from engine._ext import load_C

C = load_C()
ROOT = Path(__file__).resolve().parents[1]
DTYPES = (np.uint8, np.uint16, np.float32)
MAX_VALUE = {np.uint8: 255, np.uint16: 65535}


def find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def expected_archs() -> list[int]:
    spec = os.environ.get("ENGINE_CUDA_ARCHS", "90").replace(",", ";").replace(".", "")
    return sorted({int(s) for s in spec.split(";") if s.strip()})


def channel_order(channels: int, reverse: bool) -> list[int]:
    order = list(range(channels))
    if reverse and channels >= 3:
        order[:3] = [2, 1, 0]
    return order


def ref_to_planar(image: np.ndarray, reverse: bool = False) -> np.ndarray:
    hwc = image if image.ndim == 3 else image[:, :, None]
    hwc = hwc[:, :, channel_order(hwc.shape[2], reverse)].astype(np.float32)
    if image.dtype.type in MAX_VALUE:
        hwc = hwc / np.float32(MAX_VALUE[image.dtype.type])
    return np.ascontiguousarray(np.transpose(hwc, (2, 0, 1)))


def ref_from_planar(planes: np.ndarray, dtype: type, reverse: bool = False) -> np.ndarray:
    hwc = np.transpose(planes, (1, 2, 0))[:, :, channel_order(planes.shape[0], reverse)]
    if dtype is np.float32:
        return np.ascontiguousarray(hwc)
    unit = np.clip(np.where(np.isnan(hwc), np.float32(0), hwc), 0, 1)
    return np.rint(unit * np.float32(MAX_VALUE[dtype])).astype(dtype)


def random_image(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if dtype is np.float32:
        return rng.uniform(-0.25, 1.25, shape).astype(np.float32)
    return rng.integers(0, MAX_VALUE[dtype] + 1, shape, dtype=dtype)


def image_shape(size: tuple[int, int], channels: int | None) -> tuple[int, ...]:
    return size if channels is None else (*size, channels)


# --- build ------------------------------------------------------------------------------------------------


def test_build_matches_environment():
    expect_cuda = os.environ.get("ENGINE_CUDA", "auto").strip() != "0" and find_nvcc() is not None
    assert C.built_with_cuda() is expect_cuda
    if expect_cuda:
        assert C.cuda_archs() == expected_archs()
        if "ENGINE_CUDA_ARCHS" not in os.environ:
            assert 90 in C.cuda_archs()
    else:
        assert C.cuda_archs() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_module_does_not_load_libcudart():
    maps = subprocess.run(
        [sys.executable, "-c", "import engine._C; print(open('/proc/self/maps').read())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert "_C." in maps
    assert "libcudart" not in maps


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "csrc").glob("*.cu")))
def test_cuda_source_compiles_for_sm90(source, tmp_path):
    cmd = [
        find_nvcc(), "-c", str(ROOT / "csrc" / source), "-o", str(tmp_path / "out.o"), "-std=c++17",
        "-Xcompiler", "-fPIC", "-gencode=arch=compute_90,code=sm_90",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.o").stat().st_size > 0


def test_load_C_is_cached_and_explains_a_missing_build(monkeypatch):
    assert load_C() is load_C() is sys.modules["engine._C"]
    load_C.cache_clear()
    monkeypatch.delattr(sys.modules["engine"], "_C")
    monkeypatch.setitem(sys.modules, "engine._C", None)  # makes `from engine import _C` raise ImportError
    try:
        with pytest.raises(ImportError, match=r"engine\._C is not built: run `pip install -e \.`") as info:
            load_C()
        assert isinstance(info.value.__cause__, ImportError)
    finally:
        load_C.cache_clear()


# --- host conversions: numerics --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [(1, 1), (7, 13), (257, 129)])
@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_to_planar_matches_numpy(dtype, size, channels, reverse):
    rng = np.random.default_rng(1)
    image = random_image(rng, image_shape(size, channels), dtype)
    planes = C.to_planar(image, reverse_channels=reverse)
    assert planes.dtype == np.float32 and planes.flags.c_contiguous
    np.testing.assert_array_equal(planes, ref_to_planar(image, reverse))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [(1, 1), (7, 13), (257, 129)])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_from_planar_matches_numpy(dtype, size, channels, reverse):
    rng = np.random.default_rng(2)
    planes = rng.uniform(-0.25, 1.25, (channels, *size)).astype(np.float32)
    image = C.from_planar(planes, np.dtype(dtype).name, reverse_channels=reverse)
    assert image.dtype == dtype and image.shape == (*size, channels) and image.flags.c_contiguous
    np.testing.assert_array_equal(image, ref_from_planar(planes, dtype, reverse))


def test_reverse_channels_swaps_color_and_keeps_alpha():
    bgra = np.array([[[10, 20, 30, 40]]], dtype=np.uint8)
    expected = np.array([30, 20, 10, 40], np.float32) / np.float32(255)
    np.testing.assert_array_equal(C.to_planar(bgra, reverse_channels=True)[:, 0, 0], expected)
    planes = np.array([0.0, 1.0, 0.5], dtype=np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(C.from_planar(planes, "uint8", reverse_channels=True)[0, 0], [128, 255, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_counts_give_identical_results(dtype):
    rng = np.random.default_rng(3)
    image = random_image(rng, (601, 503, 3), dtype)  # large enough to be split across threads
    planes = [C.to_planar(image, reverse_channels=True, threads=t) for t in (1, 4, 0)]
    for p in planes[1:]:
        np.testing.assert_array_equal(p, planes[0])
    images = [C.from_planar(planes[0], np.dtype(dtype).name, reverse_channels=True, threads=t) for t in (1, 4, 0)]
    for im in images[1:]:
        np.testing.assert_array_equal(im, images[0])
    np.testing.assert_array_equal(images[0], image)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [None, 3])
def test_integer_round_trip_is_exact(dtype, channels):
    every_value = np.arange(MAX_VALUE[dtype] + 1, dtype=dtype)
    side = int(np.sqrt(every_value.size))
    gray = every_value.reshape(side, side)
    image = gray if channels is None else np.stack([gray, gray[::-1], gray.T], axis=-1)
    back = C.from_planar(C.to_planar(image, threads=2), dtype, threads=2)
    np.testing.assert_array_equal(back.reshape(image.shape), image)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_out_of_range_and_nan_are_clamped(dtype):
    top = MAX_VALUE[dtype]
    values = np.array([-1.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1.0, 1.5, 1e30, -1e-30], np.float32)
    expected = np.array([0, 0, 0, 0, top, 0, top, top, top, 0], dtype)
    out = C.from_planar(values.reshape(1, 1, -1), dtype)
    np.testing.assert_array_equal(out.ravel(), expected)


def test_float32_output_is_copied_unchanged():
    values = np.array([-1.0, np.nan, np.inf, 1.5, 0.25], np.float32).reshape(1, 1, -1)
    np.testing.assert_array_equal(C.from_planar(values, "float32").ravel(), values.ravel())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_exact_halves_round_to_even_like_numpy_rint(dtype):
    top = MAX_VALUE[dtype]
    k = np.arange(top, dtype=np.float64)
    x = ((k + 0.5) / top).astype(np.float32)
    scaled = x * np.float32(top)
    assert np.all(scaled == k + 0.5)  # every x * top is an exact tie
    out = C.from_planar(x.reshape(1, 1, -1), dtype).ravel()
    np.testing.assert_array_equal(out, np.rint(scaled).astype(dtype))
    np.testing.assert_array_equal(out, (k + (k % 2 == 1)).astype(dtype))  # ties go to the even neighbour


def test_non_contiguous_input_is_copied():
    rng = np.random.default_rng(4)
    image = random_image(rng, (9, 14, 4), np.uint8)[:, ::2, :3]
    np.testing.assert_array_equal(C.to_planar(image), ref_to_planar(image))
    planes = rng.uniform(0, 1, (3, 14, 9)).astype(np.float32).transpose(0, 2, 1)
    np.testing.assert_array_equal(C.from_planar(planes, "uint8"), ref_from_planar(planes, np.uint8))


def test_empty_image():
    assert C.to_planar(np.zeros((0, 5, 3), np.uint8)).shape == (3, 0, 5)
    assert C.from_planar(np.zeros((3, 0, 5), np.float32), "uint16").shape == (0, 5, 3)


@pytest.mark.parametrize("dtype", ["uint8", np.uint8, np.dtype("uint8"), "u1"])
def test_dtype_argument_forms(dtype):
    assert C.from_planar(np.ones((1, 2, 2), np.float32), dtype).dtype == np.uint8


# --- host conversions: errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "error", "message"),
    [
        (np.zeros((2, 3, 4, 5), np.uint8), ValueError, "got (2, 3, 4, 5)"),
        (np.zeros((2, 3, 5), np.uint8), ValueError, "got (2, 3, 5)"),
        (np.zeros(6, np.uint8), ValueError, "got (6,)"),
        (np.zeros((2, 3), np.int32), TypeError, "src must have dtype uint8, uint16 or float32, got int32"),
        (np.zeros((2, 3), ">u2"), TypeError, "src must have dtype uint8, uint16 or float32, got >u2"),
        ([[1, 2]], TypeError, "src must be a numpy.ndarray, got list"),
    ],
)
def test_to_planar_rejects_bad_input(src, error, message):
    with pytest.raises(error) as info:
        C.to_planar(src)
    assert message in str(info.value)
    if error is ValueError:
        assert str(info.value).startswith("src must have shape (H, W) or (H, W, C) with C in 1..4, got ")


CHW_SHAPE = "src must have shape (C, H, W) with C in 1..4, got "
DTYPE_CHOICE = "dtype must be uint8, uint16 or float32, got "


@pytest.mark.parametrize(
    ("src", "dtype", "error", "message"),
    [
        (np.zeros((5, 2, 2), np.float32), "uint8", ValueError, CHW_SHAPE + "(5, 2, 2)"),
        (np.zeros((2, 2), np.float32), "uint8", ValueError, CHW_SHAPE + "(2, 2)"),
        (np.zeros((3, 2, 2), np.float64), "uint8", TypeError, "src must have dtype float32, got float64"),
        (np.zeros((3, 2, 2), np.float32), "int32", ValueError, DTYPE_CHOICE + "int32"),
        (np.zeros((3, 2, 2), np.float32), np.int32, ValueError, DTYPE_CHOICE + "int32"),
        (np.zeros((3, 2, 2), np.float32), "rgb", ValueError, DTYPE_CHOICE + "'rgb'"),
        (np.zeros((3, 2, 2), np.float32), None, ValueError, DTYPE_CHOICE + "None"),
    ],
)
def test_from_planar_rejects_bad_input(src, dtype, error, message):
    with pytest.raises(error) as info:
        C.from_planar(src, dtype)
    assert str(info.value) == message


def test_negative_threads_are_rejected():
    with pytest.raises(ValueError, match="threads must be >= 0"):
        C.to_planar(np.zeros((2, 2), np.uint8), threads=-1)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        C.from_planar(np.zeros((1, 2, 2), np.float32), "uint8", threads=-1)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        C.to_planar(np.zeros((2, 2), np.uint8), True)


# --- CUDA twins -------------------------------------------------------------------------------------------


@pytest.mark.skipif(has_gpu(), reason="this machine has an NVIDIA device")
def test_cuda_twins_without_a_gpu_raise_clearly():
    assert C.cuda_device_count() == 0
    message = no_gpu_message()
    with pytest.raises(RuntimeError, match=message):
        C.to_planar_cuda(1 << 20, 2 << 20, 4, 5, 3, "uint8", False)
    with pytest.raises(RuntimeError, match=message):
        C.from_planar_cuda(1 << 20, 2 << 20, 4, 5, 3, "uint16", True, 0)


def test_cuda_twins_validate_arguments_first():
    with pytest.raises(ValueError, match="src_dtype must be uint8, uint16 or float32, got int32"):
        C.to_planar_cuda(1, 2, 4, 5, 3, "int32", False)
    with pytest.raises(ValueError, match="dst_dtype must be uint8, uint16 or float32, got float64"):
        C.from_planar_cuda(1, 2, 4, 5, 3, "float64", False)
    with pytest.raises(ValueError, match="channels must be in 1..4, got 5"):
        C.to_planar_cuda(1, 2, 4, 5, 5, "uint8", False)
    with pytest.raises(ValueError, match="height and width must be >= 0"):
        C.from_planar_cuda(1, 2, -4, 5, 3, "uint8", False)
    with pytest.raises(ValueError, match="must be device pointers"):
        C.to_planar_cuda(0, 2, 4, 5, 3, "uint8", False)


# --- engine.pixels ----------------------------------------------------------------------------------------


def test_pixels_wraps_the_host_functions():
    rng = np.random.default_rng(5)
    image = random_image(rng, (20, 30, 3), np.uint16)[:, ::3]  # non-contiguous
    planes = pixels.to_planar(image, reverse_channels=True, threads=2)
    np.testing.assert_array_equal(planes, ref_to_planar(image, reverse=True))
    back = pixels.from_planar(planes, np.uint16, reverse_channels=True, threads=2)
    np.testing.assert_array_equal(back, image)


def test_pixels_rejects_cpu_tensors_and_accepts_torch_dtypes():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="must be a numpy array or a CUDA tensor"):
        pixels.to_planar(torch.zeros(2, 2, dtype=torch.uint8))
    planes = np.full((1, 2, 2), 0.5, np.float32)
    np.testing.assert_array_equal(pixels.from_planar(planes, torch.uint8), np.full((2, 2, 1), 128, np.uint8))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("channels", [None, 1, 3, 4])
@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_twins_match_the_host(dtype, channels, reverse):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    if not C.built_with_cuda():
        pytest.skip("engine._C was built without CUDA")
    rng = np.random.default_rng(6)
    image = random_image(rng, image_shape((257, 129), channels), getattr(np, dtype))
    planes = pixels.to_planar(image, reverse_channels=reverse)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        planes_gpu = pixels.to_planar(torch.from_numpy(image).cuda(), reverse_channels=reverse)
        torch.cuda.current_stream().synchronize()
    assert planes_gpu.dtype == torch.float32 and planes_gpu.is_cuda
    np.testing.assert_array_equal(planes_gpu.cpu().numpy(), planes)

    planes = rng.uniform(-0.25, 1.25, planes.shape).astype(np.float32)
    planes.reshape(-1)[::97] = np.nan
    image = pixels.from_planar(planes, dtype, reverse_channels=reverse)
    image_gpu = pixels.from_planar(torch.from_numpy(planes).cuda(), dtype, reverse_channels=reverse)
    torch.cuda.synchronize()
    assert str(image_gpu.dtype) == f"torch.{dtype}" and image_gpu.shape == image.shape
    np.testing.assert_array_equal(image_gpu.cpu().numpy(), image)
