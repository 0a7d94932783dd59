// engine._C: Python bindings. Argument checking happens here; the conversions live in pixels_cpu.cpp and
// (for CUDA) pixels_cuda.cu / cuda_stub.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cuda_pixels.h"
#include "cuda_tiles.h"
#include "pixel_math.h"
#include "pixels_cpu.h"
#include "tiles.h"

namespace py = pybind11;
using engine::PixelType;

namespace {

constexpr const char* kDtypeChoices = "uint8, uint16 or float32";

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

py::array require_ndarray(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(obj);
}

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

// C-contiguous and aligned: `a` itself when it already is, otherwise a copy.
py::array c_contiguous(const py::array& a) {
  py::array out = py::array::ensure(a, py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_);
  if (!out) throw py::error_already_set();
  return out;
}

void check_threads(int threads) {
  if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
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

// --- tiles ------------------------------------------------------------------------------------------------

std::string num(int64_t v) { return std::to_string(v); }

void check_at_least(int64_t value, int64_t least, const char* name) {
  if (value < least) throw py::value_error(std::string(name) + " must be >= " + num(least) + ", got " + num(value));
}

std::vector<int64_t> axis_tiles(int64_t length, int64_t tile, int64_t overlap) {
  check_at_least(length, 1, "length");
  check_at_least(tile, 1, "tile");
  check_at_least(overlap, 0, "overlap");
  if (length > tile && 2 * overlap > tile) {
    throw py::value_error("tile_overlap must be at most half the tile size, got overlap " + num(overlap) +
                          " with tile " + num(tile) + " (length " + num(length) + " needs more than one tile)");
  }
  return engine::axis_tiles(length, tile, overlap);
}

py::array axis_weights(int64_t length, const std::vector<int64_t>& starts, int64_t tile, int64_t scale) {
  check_at_least(length, 1, "length");
  check_at_least(tile, 1, "tile");
  check_at_least(scale, 1, "scale");
  if (length > (int64_t{1} << 40) / scale) {
    throw py::value_error("length * scale must be < 2**40, got " + num(length) + " * " + num(scale));
  }
  const std::string why = engine::check_axis_starts(length, starts, tile);
  if (!why.empty()) throw py::value_error(why);
  const int64_t size = std::min(tile, length) * scale;
  py::array_t<float> out({static_cast<py::ssize_t>(starts.size()), static_cast<py::ssize_t>(size)});
  engine::axis_weights(length, starts, tile, scale, out.mutable_data());
  return out;
}

// A float32 ndarray with `ndim` dimensions (`layout` names them for messages); C-contiguous, copied when not.
py::array float32_array(const py::handle& obj, const std::string& name, py::ssize_t ndim, const std::string& layout) {
  py::array a = require_ndarray(obj, name.c_str());
  if (!py::isinstance<py::array_t<float>>(a)) {
    throw py::type_error(name + " must have dtype float32, got " + dtype_str(a));
  }
  if (a.ndim() != ndim) throw py::value_error(name + " must have shape " + layout + ", got " + shape_str(a));
  return c_contiguous(a);
}

// The output canvas: float32 (C, H, W), C-contiguous, aligned and writeable, since it is updated in place.
py::array canvas_array(const py::handle& obj) {
  py::array a = require_ndarray(obj, "dst");
  if (!py::isinstance<py::array_t<float>>(a)) {
    throw py::type_error("dst must have dtype float32, got " + dtype_str(a));
  }
  if (a.ndim() != 3) throw py::value_error("dst must have shape (C, H, W), got " + shape_str(a));
  const int required = py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if ((a.flags() & required) != required) {
    throw py::value_error("dst must be a C-contiguous, aligned array (it is updated in place), got shape " +
                          shape_str(a) + "; use numpy.ascontiguousarray and pass that array");
  }
  if (!a.writeable()) throw py::value_error("dst must be writeable (it is updated in place)");
  return a;
}

void check_tile_fits(const py::array& dst, int64_t y0, int64_t x0, int64_t tile_h, int64_t tile_w,
                     const std::string& which) {
  if (y0 < 0 || x0 < 0 || y0 + tile_h > dst.shape(1) || x0 + tile_w > dst.shape(2)) {
    throw py::value_error(which + " out of bounds: rows [" + num(y0) + ", " + num(y0 + tile_h) + ") and columns [" +
                          num(x0) + ", " + num(x0 + tile_w) + ") must lie inside dst of shape " + shape_str(dst));
  }
}

void check_channels(const py::array& dst, int64_t channels, const std::string& src_name) {
  if (channels != dst.shape(0)) {
    throw py::value_error("channel mismatch: " + src_name + " has " + num(channels) + " channels, dst has " +
                          num(dst.shape(0)));
  }
}

void accumulate(const py::handle& dst_obj, const py::handle& src_obj, int64_t y0, int64_t x0,
                const py::handle& wy_obj, const py::handle& wx_obj, int threads) {
  py::array dst = canvas_array(dst_obj);
  py::array src = float32_array(src_obj, "src", 3, "(C, th, tw)");
  const int64_t channels = src.shape(0), tile_h = src.shape(1), tile_w = src.shape(2);
  py::array wy = float32_array(wy_obj, "wy", 1, "(th,)");
  py::array wx = float32_array(wx_obj, "wx", 1, "(tw,)");
  if (wy.shape(0) != tile_h) {
    throw py::value_error("wy must have shape (th,) = (" + num(tile_h) + ",) like src, got " + shape_str(wy));
  }
  if (wx.shape(0) != tile_w) {
    throw py::value_error("wx must have shape (tw,) = (" + num(tile_w) + ",) like src, got " + shape_str(wx));
  }
  check_channels(dst, channels, "src");
  check_tile_fits(dst, y0, x0, tile_h, tile_w, "tile");
  check_threads(threads);
  float* d = static_cast<float*>(dst.mutable_data());
  const auto* s = static_cast<const float*>(src.data());
  const auto* wyp = static_cast<const float*>(wy.data());
  const auto* wxp = static_cast<const float*>(wx.data());
  const int64_t height = dst.shape(1), width = dst.shape(2);
  py::gil_scoped_release release;
  engine::accumulate_cpu(d, channels, height, width, s, tile_h, tile_w, y0, x0, wyp, wxp, threads);
}

// Per-tile weight vectors: a float32 (N, length) array, or a sequence of N float32 (length,) arrays. Returns
// one pointer per tile; `keep` holds the arrays they point into.
std::vector<const float*> weight_rows(const py::handle& obj, const char* name, int64_t n, int64_t length,
                                      std::vector<py::array>* keep) {
  const std::string len = num(length), count = num(n);
  std::vector<const float*> rows;
  if (py::isinstance<py::array>(obj)) {
    py::array a = float32_array(obj, name, 2, "(N, " + len + ")");
    if (a.shape(0) != n || a.shape(1) != length) {
      throw py::value_error(std::string(name) + " must have shape (N, " + len + ") = (" + count + ", " + len +
                            "), got " + shape_str(a));
    }
    for (int64_t k = 0; k < n; ++k) rows.push_back(static_cast<const float*>(a.data()) + k * length);
    keep->push_back(a);
    return rows;
  }
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj)) {
    throw py::type_error(std::string(name) + " must be a float32 (N, " + len +
                         ") numpy.ndarray or a sequence of N float32 arrays");
  }
  py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
  if (static_cast<int64_t>(seq.size()) != n) {
    throw py::value_error(std::string(name) + " must have N = " + count + " entries (one per tile), got " +
                          num(static_cast<int64_t>(seq.size())));
  }
  for (int64_t k = 0; k < n; ++k) {
    const std::string item = std::string(name) + "[" + num(k) + "]";
    py::array a = float32_array(seq[k], item, 1, "(" + len + ",)");
    if (a.shape(0) != length) throw py::value_error(item + " must have shape (" + len + ",), got " + shape_str(a));
    rows.push_back(static_cast<const float*>(a.data()));
    keep->push_back(a);
  }
  return rows;
}

void blend_tiles(const py::handle& dst_obj, const py::handle& tiles_obj, const std::vector<int64_t>& ys,
                 const std::vector<int64_t>& xs, const py::handle& wys_obj, const py::handle& wxs_obj, int threads) {
  py::array dst = canvas_array(dst_obj);
  py::array tiles = float32_array(tiles_obj, "tiles", 4, "(N, C, th, tw)");
  const int64_t n = tiles.shape(0), channels = tiles.shape(1), tile_h = tiles.shape(2), tile_w = tiles.shape(3);
  if (static_cast<int64_t>(ys.size()) != n || static_cast<int64_t>(xs.size()) != n) {
    throw py::value_error("ys and xs must have N = " + num(n) + " entries (one per tile), got " +
                          num(static_cast<int64_t>(ys.size())) + " and " + num(static_cast<int64_t>(xs.size())));
  }
  std::vector<py::array> keep;
  const std::vector<const float*> wy = weight_rows(wys_obj, "wys", n, tile_h, &keep);
  const std::vector<const float*> wx = weight_rows(wxs_obj, "wxs", n, tile_w, &keep);
  check_channels(dst, channels, "tiles");
  check_threads(threads);
  std::vector<engine::TileRef> refs;
  refs.reserve(n);
  const auto* base = static_cast<const float*>(tiles.data());
  for (int64_t k = 0; k < n; ++k) {
    check_tile_fits(dst, ys[k], xs[k], tile_h, tile_w, "tile " + num(k));
    refs.push_back({base + k * channels * tile_h * tile_w, wy[k], wx[k], ys[k], xs[k]});
  }
  float* d = static_cast<float*>(dst.mutable_data());
  const int64_t height = dst.shape(1), width = dst.shape(2);
  py::gil_scoped_release release;
  engine::blend_tiles_cpu(d, channels, height, width, refs, tile_h, tile_w, threads);
}

void accumulate_cuda(uintptr_t dst_ptr, uintptr_t src_ptr, uintptr_t wy_ptr, uintptr_t wx_ptr, int64_t channels,
                     int64_t dst_h, int64_t dst_w, int64_t tile_h, int64_t tile_w, int64_t y0, int64_t x0,
                     uintptr_t stream) {
  check_at_least(channels, 1, "channels");
  check_at_least(dst_h, 0, "dst_h");
  check_at_least(dst_w, 0, "dst_w");
  check_at_least(tile_h, 0, "tile_h");
  check_at_least(tile_w, 0, "tile_w");
  if (y0 < 0 || x0 < 0 || y0 + tile_h > dst_h || x0 + tile_w > dst_w) {
    throw py::value_error("tile out of bounds: rows [" + num(y0) + ", " + num(y0 + tile_h) + ") and columns [" +
                          num(x0) + ", " + num(x0 + tile_w) + ") must lie inside dst of size " + num(dst_h) +
                          " x " + num(dst_w));
  }
  if (tile_h * tile_w > 0 && (dst_ptr == 0 || src_ptr == 0 || wy_ptr == 0 || wx_ptr == 0)) {
    throw py::value_error("dst_ptr, src_ptr, wy_ptr and wx_ptr must be device pointers (tensor.data_ptr()), got 0");
  }
  py::gil_scoped_release release;
  engine::cuda::accumulate(dst_ptr, src_ptr, wy_ptr, wx_ptr, channels, dst_h, dst_w, tile_h, tile_w, y0, x0,
                           stream);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled core of engine: pixel layout conversions on the host (threads) and on CUDA devices.";

  m.def(
      "built_with_cuda",
      [] {
#ifdef ENGINE_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when the CUDA sources were compiled in.");
  m.def("cuda_archs", &engine::cuda::compiled_archs,
        "SM architectures compiled in, e.g. [80, 90] (SASS for each, PTX for the highest); [] without CUDA.");
  m.def(
      "cuda_device_count",
      [] {
        py::gil_scoped_release release;
        return engine::cuda::device_count();
      },
      "Visible CUDA devices; 0 without CUDA, without a driver or without a device.");

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

  m.def("axis_tiles", &axis_tiles, py::arg("length"), py::arg("tile"), py::arg("overlap"),
        R"doc(Tile start positions along one axis of `length` low-resolution pixels.

[0] when length <= tile (one tile of size length). Otherwise n = ceil((length - overlap) / (tile - overlap))
tiles of size tile with starts round(i * (length - tile) / (n - 1)) (halves up): first 0, last length - tile,
consecutive tiles overlapping by at least `overlap`. Raises ValueError for length < 1, tile < 1, overlap < 0,
or 2 * overlap > tile when more than one tile is needed.)doc");

  m.def("axis_weights", &axis_weights, py::arg("length"), py::arg("starts"), py::arg("tile"), py::arg("scale"),
        R"doc(1-D blend weights of the tiles at `starts` (from axis_tiles), in output pixels: float32 (n, size * scale),
size = min(tile, length); row i covers output pixels [starts[i] * scale, (starts[i] + size) * scale).

The weights of all tiles sum to exactly 1.0 (float32) at every output pixel. A pixel only one tile covers
(image borders included) has weight 1. Across the overlap [a, b) of tiles i and i + 1 (width o, q = o // 4),
tile i keeps 1 on [a, a + q), tile i + 1 takes 1 on [b - q, b), and in between tile i + 1 ramps up as
0.5 - 0.5 cos(pi t), t = (x - a - q + 0.5) / (o - 2q), while tile i has 1.0f minus that. Where three tiles
overlap (uneven start spacing can do that, e.g. length 71, tile 40, overlap 10), each pairwise overlap is
first clipped to the part no third tile covers; that part belongs to the middle tile alone. Raises
ValueError for length, tile or scale < 1 and for starts that are not 0, ..., length - size, strictly
increasing, without gaps and with at most three tiles over any pixel.)doc");

  m.def("accumulate", &accumulate, py::arg("dst"), py::arg("src"), py::arg("y0"), py::arg("x0"), py::arg("wy"),
        py::arg("wx"), py::kw_only(), py::arg("threads") = 0,
        R"doc(Adds one weighted tile into the canvas, in place: dst[:, y0:y0+th, x0:x0+tw] += (wy[:, None] * wx) * src.

dst: float32 (C, H, W), C-contiguous and writeable. src: float32 (C, th, tw); wy: float32 (th,); wx:
float32 (tw,) (non-contiguous ones are copied). Per element in float32: (wy * wx) first, times src, then
added. threads: worker threads over rows, 0 = hardware concurrency. The GIL is released.
Raises TypeError (not an ndarray, not float32) or ValueError (shapes, channel mismatch, tile out of bounds,
dst not C-contiguous or read-only, threads < 0).)doc");

  m.def("blend_tiles", &blend_tiles, py::arg("dst"), py::arg("tiles"), py::arg("ys"), py::arg("xs"),
        py::arg("wys"), py::arg("wxs"), py::kw_only(), py::arg("threads") = 0,
        R"doc(accumulate for a batch of tiles, bit-identical to calling it for k = 0, 1, ... in order.

dst: float32 (C, H, W), C-contiguous and writeable. tiles: float32 (N, C, th, tw). ys, xs: N ints, the
top-left corner of tile k in dst. wys: float32 (N, th) or a sequence of N float32 (th,) arrays; wxs likewise
with tw. Tiles may overlap each other: dst rows are split among the threads, each adding every tile's rows
in its part in order. The GIL is released. Raises like accumulate.)doc");

  m.def("accumulate_cuda", &accumulate_cuda, py::arg("dst_ptr"), py::arg("src_ptr"), py::arg("wy_ptr"),
        py::arg("wx_ptr"), py::arg("channels"), py::arg("dst_h"), py::arg("dst_w"), py::arg("tile_h"),
        py::arg("tile_w"), py::arg("y0"), py::arg("x0"), py::arg("stream") = 0,
        R"doc(CUDA twin of accumulate on device memory of the current device, asynchronous on `stream`.

dst_ptr: float32 (channels, dst_h, dst_w); src_ptr: float32 (channels, tile_h, tile_w); wy_ptr: float32
(tile_h,); wx_ptr: float32 (tile_w,); all C-contiguous, as from tensor.data_ptr(). Bit-identical to accumulate
(no fused multiply-add). stream: a cudaStream_t as int, 0 = the legacy default stream; calls on one stream
run in order. Raises ValueError (arguments) or RuntimeError without CUDA, without a device, or on CUDA errors.)doc");
}
