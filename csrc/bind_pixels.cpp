// engine._C bindings of the pixel layout conversions: to_planar, from_planar (pixels_cpu.cpp) and their CUDA
// twins (pixels_cuda.cu, or cuda_stub.cpp without CUDA). Arguments are checked here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bind_args.h"
#include "bindings.h"
#include "cuda_pixels.h"
#include "pixel_math.h"
#include "pixels_cpu.h"

namespace engine::bind {
namespace {

constexpr const char* kDtypeChoices = "uint8, uint16 or float32";

// Native-byte-order uint8, uint16 or float32 (PyArray_EquivTypes, so '>u2' does not pass as uint16).
bool pixel_type_of(const py::array& a, PixelType* type) {
  if (py::isinstance<py::array_t<uint8_t>>(a)) *type = PixelType::u8;
  else if (py::isinstance<py::array_t<uint16_t>>(a)) *type = PixelType::u16;
  else if (py::isinstance<py::array_t<float>>(a)) *type = PixelType::f32;
  else return false;
  return true;
}

// A dtype argument: "uint8" / "uint16" / "float32", or anything numpy.dtype() accepts for them (native byte
// order only).
PixelType parse_dtype(const py::object& obj, const char* name) {
  std::string got = py::repr(obj).cast<std::string>();
  if (!obj.is_none()) {  // numpy.dtype(None) would be float64
    try {
      const py::dtype dt = py::dtype::from_args(obj);
      if (dt.equal(py::dtype::of<uint8_t>())) return PixelType::u8;
      if (dt.equal(py::dtype::of<uint16_t>())) return PixelType::u16;
      if (dt.equal(py::dtype::of<float>())) return PixelType::f32;
      got = py::str(dt).cast<std::string>();
    } catch (const py::error_already_set&) {  // not a dtype at all: report it as given
    }
  }
  throw py::value_error(std::string(name) + " must be " + kDtypeChoices + ", got " + got);
}

py::array make_array(PixelType type, const std::vector<py::ssize_t>& shape) {
  switch (type) {
    case PixelType::u8: return py::array_t<uint8_t>(shape);
    case PixelType::u16: return py::array_t<uint16_t>(shape);
    case PixelType::f32: break;
  }
  return py::array_t<float>(shape);
}

py::array to_planar(const py::handle& src_obj, bool reverse_channels, int threads) {
  py::array src = require_ndarray(src_obj, "src");
  if (!(src.ndim() == 2 || (src.ndim() == 3 && src.shape(2) >= 1 && src.shape(2) <= 4))) {
    throw py::value_error("src must have shape (H, W) or (H, W, C) with C in 1..4, got " + shape_str(src));
  }
  PixelType type;
  if (!pixel_type_of(src, &type)) {
    throw py::type_error(std::string("src must have dtype ") + kDtypeChoices + ", got " + dtype_str(src));
  }
  check_threads(threads);
  src = c_contiguous(src);
  const int64_t h = src.shape(0), w = src.shape(1);
  const int c = src.ndim() == 3 ? static_cast<int>(src.shape(2)) : 1;
  py::array_t<float> dst({static_cast<py::ssize_t>(c), h, w});
  const void* s = src.data();
  float* d = dst.mutable_data();
  {
    py::gil_scoped_release release;
    engine::to_planar_cpu(s, type, d, h, w, c, reverse_channels, threads);
  }
  return dst;
}

py::array from_planar(const py::handle& src_obj, const py::object& dtype, bool reverse_channels, int threads) {
  py::array src = require_ndarray(src_obj, "src");
  if (!(src.ndim() == 3 && src.shape(0) >= 1 && src.shape(0) <= 4)) {
    throw py::value_error("src must have shape (C, H, W) with C in 1..4, got " + shape_str(src));
  }
  if (!py::isinstance<py::array_t<float>>(src)) {
    throw py::type_error("src must have dtype float32, got " + dtype_str(src));
  }
  const PixelType type = parse_dtype(dtype, "dtype");
  check_threads(threads);
  src = c_contiguous(src);
  const int c = static_cast<int>(src.shape(0));
  const int64_t h = src.shape(1), w = src.shape(2);
  py::array dst = make_array(type, {h, w, static_cast<py::ssize_t>(c)});
  const auto* s = static_cast<const float*>(src.data());
  void* d = dst.mutable_data();
  {
    py::gil_scoped_release release;
    engine::from_planar_cpu(s, d, type, h, w, c, reverse_channels, threads);
  }
  return dst;
}

void check_cuda_args(uintptr_t src_ptr, uintptr_t dst_ptr, int64_t height, int64_t width, int channels) {
  if (height < 0 || width < 0) {
    throw py::value_error("height and width must be >= 0, got " + std::to_string(height) + " and " +
                          std::to_string(width));
  }
  if (channels < 1 || channels > 4) {
    throw py::value_error("channels must be in 1..4, got " + std::to_string(channels));
  }
  if (height * width > 0 && (src_ptr == 0 || dst_ptr == 0)) {
    throw py::value_error("src_ptr and dst_ptr must be device pointers (tensor.data_ptr()), got 0");
  }
}

void to_planar_cuda(uintptr_t src_ptr, uintptr_t dst_ptr, int64_t height, int64_t width, int channels,
                    const py::object& src_dtype, bool reverse_channels, uintptr_t stream) {
  const PixelType type = parse_dtype(src_dtype, "src_dtype");
  check_cuda_args(src_ptr, dst_ptr, height, width, channels);
  py::gil_scoped_release release;
  engine::cuda::to_planar(src_ptr, type, dst_ptr, height, width, channels, reverse_channels, stream);
}

void from_planar_cuda(uintptr_t src_ptr, uintptr_t dst_ptr, int64_t height, int64_t width, int channels,
                      const py::object& dst_dtype, bool reverse_channels, uintptr_t stream) {
  const PixelType type = parse_dtype(dst_dtype, "dst_dtype");
  check_cuda_args(src_ptr, dst_ptr, height, width, channels);
  py::gil_scoped_release release;
  engine::cuda::from_planar(src_ptr, dst_ptr, type, height, width, channels, reverse_channels, stream);
}

}  // namespace

void bind_pixels(py::module_& m) {
  m.def("to_planar", &to_planar, py::arg("src"), py::kw_only(), py::arg("reverse_channels") = false,
        py::arg("threads") = 0,
        R"doc(Interleaved image -> planar float32.

src: (H, W) or (H, W, C), C in 1..4, dtype uint8 (scaled by 1/255), uint16 (by 1/65535) or float32
(copied); non-contiguous input is copied first. Returns float32 (C, H, W), C = 1 for (H, W).
reverse_channels: BGR <-> RGB (3 channels), BGRA <-> RGBA (4); no effect for 1 or 2 channels.
threads: worker threads, 0 = hardware concurrency; small images use one. The GIL is released.
Raises TypeError (not an ndarray, wrong dtype) or ValueError (shape, threads < 0).)doc");

  m.def("from_planar", &from_planar, py::arg("src"), py::arg("dtype"), py::kw_only(),
        py::arg("reverse_channels") = false, py::arg("threads") = 0,
        R"doc(Planar float32 -> interleaved image.

src: float32 (C, H, W), C in 1..4. dtype: "uint8", "uint16" or "float32" (or a numpy dtype).
Returns (H, W, C) of dtype. Integer outputs: clamp to [0, 1] (NaN -> 0), scale by 255 or 65535, round half
to even (numpy.rint). float32 output is copied unchanged.
Raises TypeError (not an ndarray, src not float32) or ValueError (shape, dtype, threads < 0).)doc");

  m.def("to_planar_cuda", &to_planar_cuda, py::arg("src_ptr"), py::arg("dst_ptr"), py::arg("height"),
        py::arg("width"), py::arg("channels"), py::arg("src_dtype"), py::arg("reverse_channels"),
        py::arg("stream") = 0,
        R"doc(CUDA twin of to_planar on device memory of the current device, asynchronous on `stream`.

src_ptr: (H, W, C) of src_dtype ("uint8", "uint16", "float32"); dst_ptr: float32 (C, H, W); both
C-contiguous, as from tensor.data_ptr(). stream: a cudaStream_t as int (torch: current_stream().cuda_stream),
0 = the legacy default stream. Raises RuntimeError without CUDA, without a device, or on CUDA errors.)doc");

  m.def("from_planar_cuda", &from_planar_cuda, py::arg("src_ptr"), py::arg("dst_ptr"), py::arg("height"),
        py::arg("width"), py::arg("channels"), py::arg("dst_dtype"), py::arg("reverse_channels"),
        py::arg("stream") = 0,
        R"doc(CUDA twin of from_planar on device memory of the current device, asynchronous on `stream`.

src_ptr: float32 (C, H, W); dst_ptr: (H, W, C) of dst_dtype ("uint8", "uint16", "float32"); same rounding
as from_planar. Raises RuntimeError without CUDA, without a device, or on CUDA errors.)doc");
}

}  // namespace engine::bind
