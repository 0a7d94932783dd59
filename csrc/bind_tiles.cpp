// engine._C bindings of tile scheduling and overlap blending: axis_tiles, axis_weights, accumulate,
// blend_tiles (tiles.h, tiles_cpu.cpp) and accumulate_cuda (tiles_cuda.cu, or cuda_stub.cpp without CUDA).
// Arguments are checked here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "bind_args.h"
#include "bindings.h"
#include "cuda_tiles.h"
#include "tiles.h"

namespace engine::bind {
namespace {

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

void bind_tiles(py::module_& m) {
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

}  // namespace engine::bind
