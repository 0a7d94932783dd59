// engine._C: Python bindings. Argument checking happens here; the conversions live in pixels_cpu.cpp and
// (for CUDA) pixels_cuda.cu / cuda_stub.cpp, native plans in plan.cpp (reader) and plan_runtime.cu (runtime).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda_pixels.h"
#include "cuda_tiles.h"
#include "dlpack.h"
#include "pixel_math.h"
#include "pixels_cpu.h"
#include "plan.h"
#include "plan_runtime.h"
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

// --- native plans -----------------------------------------------------------------------------------------

using engine::cuda::PlanRuntime;

std::string type_name(const py::handle& obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

// A file path: str or os.PathLike of str.
std::string path_arg(const py::handle& obj, const char* name) {
  py::object path;
  try {
    path = py::module_::import("os").attr("fspath")(obj);
  } catch (const py::error_already_set&) {
    path = py::none();
  }
  if (!py::isinstance<py::str>(path)) {
    throw py::type_error(std::string(name) + " must be a str or os.PathLike, got " + type_name(obj));
  }
  return path.cast<std::string>();
}

py::dict shape_dict(const engine::PlanShape& s) {
  py::dict d;
  d["n"] = s.n;
  d["c_in"] = s.c_in;
  d["h"] = s.h;
  d["w"] = s.w;
  d["c_out"] = s.c_out;
  d["h_out"] = s.h_out;
  d["w_out"] = s.w_out;
  d["arena_bytes"] = s.arena_bytes;
  d["input_off"] = s.input_off;
  d["output_off"] = s.output_off;
  d["launch_first"] = s.launch_first;
  d["launch_count"] = s.launch_count;
  return d;
}

py::list shapes_list(const std::vector<engine::PlanShape>& shapes) {
  py::list out;
  for (const engine::PlanShape& s : shapes) out.append(shape_dict(s));
  return out;
}

py::object arg_value(const engine::PlanArg& arg) {
  const auto low = static_cast<uint32_t>(arg.value & 0xffffffffu);
  switch (arg.kind) {
    case engine::ArgKind::arena:
    case engine::ArgKind::weights: return py::int_(arg.value);
    case engine::ArgKind::null: return py::int_(0);
    case engine::ArgKind::i32: return py::int_(static_cast<int32_t>(low));
    case engine::ArgKind::f32: {
      float f;
      std::memcpy(&f, &low, sizeof f);
      return py::float_(static_cast<double>(f));
    }
    case engine::ArgKind::alpha: break;
  }
  return py::float_(0.0);
}

py::bytes to_bytes(const std::vector<uint8_t>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

py::dict read_plan(const py::handle& path_obj, const py::object& arch, bool cubins) {
  const std::string path = path_arg(path_obj, "path");
  uint32_t expected = 0;
  if (!arch.is_none()) {
    if (!py::isinstance<py::int_>(arch) || py::isinstance<py::bool_>(arch)) {
      throw py::type_error("arch must be an int (e.g. 90 for sm_90) or None, got " + type_name(arch));
    }
    const auto a = arch.cast<int64_t>();
    if (a < 1 || a > 10000) throw py::value_error("arch must be an SM architecture like 90 (sm_90), got " + num(a));
    expected = static_cast<uint32_t>(a);
  }
  engine::Plan plan;
  {
    py::gil_scoped_release release;
    plan = engine::read_plan(path, expected);
  }
  py::dict d;
  d["path"] = plan.path;
  d["version"] = plan.version;
  d["arch"] = plan.arch;
  d["file_bytes"] = plan.file_bytes;
  d["meta"] = py::str(plan.meta);
  py::list kernels;
  for (const engine::PlanKernel& k : plan.kernels) {
    py::dict kd;
    kd["name"] = k.name;
    kd["num_warps"] = k.num_warps;
    kd["shared_bytes"] = k.shared_bytes;
    kd["params"] = py::cast(k.param_sizes);
    kd["cubin_bytes"] = k.cubin.size();
    if (cubins) kd["cubin"] = to_bytes(k.cubin);
    kernels.append(kd);
  }
  d["kernels"] = kernels;
  d["shapes"] = shapes_list(plan.shapes);
  py::list launches;
  for (const engine::PlanLaunch& l : plan.launches) {
    py::dict ld;
    ld["kernel"] = l.kernel;
    ld["grid"] = py::make_tuple(l.grid[0], l.grid[1], l.grid[2]);
    py::list args;
    for (const engine::PlanArg& a : l.args) args.append(py::make_tuple(static_cast<uint32_t>(a.kind), arg_value(a)));
    ld["args"] = args;
    launches.append(ld);
  }
  d["launches"] = launches;
  d["alpha"] = plan.has_alpha ? py::object(py::make_tuple(plan.alpha_first, plan.alpha_count)) : py::object(py::none());
  d["weights"] = to_bytes(plan.weights);
  return d;
}

std::string shape_tuple(int64_t a, int64_t b, int64_t c, int64_t d) {
  return "(" + num(a) + ", " + num(b) + ", " + num(c) + ", " + num(d) + ")";
}

std::string built_shapes(const PlanRuntime& rt) {
  std::string s;
  for (const engine::PlanShape& p : rt.shapes()) s += (s.empty() ? "" : ", ") + shape_tuple(p.n, p.c_in, p.h, p.w);
  return s;
}

size_t shape_index(const PlanRuntime& rt, int64_t shape) {
  const auto count = static_cast<int64_t>(rt.shapes().size());
  if (shape < 0 || shape >= count) {
    throw py::value_error("shape must be an index in 0.." + num(count - 1) + " of the built shapes " +
                          built_shapes(rt) + ", got " + num(shape));
  }
  return static_cast<size_t>(shape);
}

py::array plan_run(PlanRuntime& rt, const py::handle& x_obj) {
  py::array x = float32_array(x_obj, "x", 4, "(n, c_in, h, w)");
  const auto& shapes = rt.shapes();
  size_t index = shapes.size();
  for (size_t i = 0; i < shapes.size(); ++i) {
    const engine::PlanShape& p = shapes[i];
    if (x.shape(0) == p.n && x.shape(1) == p.c_in && x.shape(2) == p.h && x.shape(3) == p.w) {
      index = i;
      break;
    }
  }
  if (index == shapes.size()) {
    throw py::value_error("x has shape " + shape_str(x) + ", the plan was built for " + built_shapes(rt) +
                          ": pass one of these shapes, or rebuild the plan with this one");
  }
  const engine::PlanShape& p = shapes[index];
  py::array_t<float> y({p.n, p.c_out, p.h_out, p.w_out});
  const auto* in = static_cast<const float*>(x.data());
  float* out = y.mutable_data();
  {
    py::gil_scoped_release release;
    rt.run(in, out, index);
  }
  return y;
}

void plan_run_device(PlanRuntime& rt, uintptr_t x_ptr, uintptr_t y_ptr, int64_t shape, uintptr_t stream) {
  const size_t index = shape_index(rt, shape);
  if (x_ptr == 0 || y_ptr == 0) {
    throw py::value_error("x_ptr and y_ptr must be device pointers (tensor.data_ptr()), got 0");
  }
  py::gil_scoped_release release;
  rt.run_device(x_ptr, y_ptr, index, stream);
}

int64_t upscale_scale(const PlanRuntime& rt) {
  const int64_t s = rt.scale();
  if (s < 1) {
    const engine::PlanShape& p = rt.shapes()[0];
    throw py::value_error("the plan's shape 0 maps " + num(p.h) + " x " + num(p.w) + " to " + num(p.h_out) +
                          " x " + num(p.w_out) + ", not an integer upscale: upscale needs one");
  }
  return s;
}

py::array plan_upscale(PlanRuntime& rt, const py::handle& planes_obj, int64_t tile_overlap) {
  py::array planes = float32_array(planes_obj, "planes", 3, "(C, H, W)");
  const int64_t c = planes.shape(0), h = planes.shape(1), w = planes.shape(2);
  const int64_t s = upscale_scale(rt);
  rt.check_upscale(c, h, w, tile_overlap);  // std::invalid_argument -> ValueError
  const int64_t c_out = rt.shapes()[0].c_out;
  py::array_t<float> out({c_out, h * s, w * s});
  const auto* in = static_cast<const float*>(planes.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    rt.upscale_host(in, c, h, w, tile_overlap, o);
  }
  return out;
}

// The output of upscale_dlpack: a DLManagedTensor over a cudaMalloc'd buffer that its deleter frees.
struct OutputTensor {
  DLManagedTensor managed{};
  int64_t shape[3] = {0, 0, 0};
  int64_t strides[3] = {0, 0, 0};
  int device = 0;
};

void output_tensor_deleter(DLManagedTensor* self) {
  auto* owner = static_cast<OutputTensor*>(self->manager_ctx);
  engine::cuda::free_device_buffer(owner->device, reinterpret_cast<uintptr_t>(self->dl_tensor.data));
  delete owner;
}

// An unconsumed "dltensor" capsule frees its tensor; a consumer renames it "used_dltensor" and owns it.
void dltensor_capsule_destructor(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, "dltensor")) return;
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
  if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
}

// Holds a consumed DLManagedTensor and calls its producer's deleter when done (with the GIL held).
struct ConsumedTensor {
  DLManagedTensor* managed = nullptr;
  ~ConsumedTensor() {
    if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
  }
};

std::string dims_str(const DLTensor& t) {
  std::string s = "(";
  for (int32_t i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + num(t.shape[i]);
  return s + (t.ndim == 1 ? ",)" : ")");
}

py::object plan_upscale_dlpack(PlanRuntime& rt, const py::object& image, int64_t tile_overlap, uintptr_t stream) {
  if (!py::hasattr(image, "__dlpack__")) {
    throw py::type_error("image must support DLPack (__dlpack__), e.g. a torch CUDA tensor, got " + type_name(image));
  }
  const int64_t s = upscale_scale(rt);
  if (py::hasattr(image, "__dlpack_device__")) {  // refuse before the producer exports anything
    const py::tuple dev = image.attr("__dlpack_device__")();
    const auto type = dev[0].cast<int64_t>(), id = dev[1].cast<int64_t>();
    if (type != kDLCUDA) {
      throw py::type_error("image must be a CUDA tensor (DLPack device type kDLCUDA = 2), got device type " +
                           num(type));
    }
    if (id != rt.device()) {
      throw py::value_error("image is on CUDA device " + num(id) + ", the plan on device " + num(rt.device()));
    }
  }
  py::object capsule = image.attr("__dlpack__")(py::arg("stream") = stream == 0 ? py::object(py::none())
                                                                                 : py::object(py::int_(stream)));
  if (!PyCapsule_IsValid(capsule.ptr(), "dltensor")) {
    throw py::type_error("image.__dlpack__() must return a \"dltensor\" PyCapsule, got " + type_name(capsule));
  }
  ConsumedTensor consumed;
  consumed.managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (consumed.managed == nullptr) throw py::error_already_set();
  if (PyCapsule_SetName(capsule.ptr(), "used_dltensor") != 0) {
    consumed.managed = nullptr;  // still the capsule's
    throw py::error_already_set();
  }
  const DLTensor& t = consumed.managed->dl_tensor;
  if (t.device.device_type != kDLCUDA) {
    throw py::type_error("image must be a CUDA tensor (DLPack device type kDLCUDA = 2), got device type " +
                         num(t.device.device_type));
  }
  if (t.device.device_id != rt.device()) {
    throw py::value_error("image is on CUDA device " + num(t.device.device_id) + ", the plan on device " +
                          num(rt.device()));
  }
  if (t.dtype.code != kDLFloat || t.dtype.bits != 32 || t.dtype.lanes != 1) {
    throw py::type_error("image must have dtype float32, got DLPack dtype (code " + num(t.dtype.code) + ", bits " +
                         num(t.dtype.bits) + ", lanes " + num(t.dtype.lanes) + ")");
  }
  if (t.ndim != 3) throw py::value_error("image must have shape (C, H, W), got " + dims_str(t));
  const int64_t c = t.shape[0], h = t.shape[1], w = t.shape[2];
  if (t.strides != nullptr) {
    const int64_t want[3] = {h * w, w, 1};
    for (int i = 0; i < 3; ++i) {
      if (t.shape[i] > 1 && t.strides[i] != want[i]) {
        throw py::value_error("image must be C-contiguous (use .contiguous()), got shape " + dims_str(t) +
                              " with strides (" + num(t.strides[0]) + ", " + num(t.strides[1]) + ", " +
                              num(t.strides[2]) + ")");
      }
    }
  }
  rt.check_upscale(c, h, w, tile_overlap);
  const uintptr_t src = reinterpret_cast<uintptr_t>(t.data) + t.byte_offset;
  if (src == 0 || src % 4 != 0) {
    throw py::value_error("image's data must be a 4-byte aligned device pointer, got " +
                          num(static_cast<int64_t>(src)));
  }
  auto owner = std::make_unique<OutputTensor>();
  owner->device = rt.device();
  owner->shape[0] = rt.shapes()[0].c_out;
  owner->shape[1] = h * s;
  owner->shape[2] = w * s;
  owner->strides[0] = owner->shape[1] * owner->shape[2];
  owner->strides[1] = owner->shape[2];
  owner->strides[2] = 1;
  uintptr_t out = 0;
  {
    py::gil_scoped_release release;
    out = rt.upscale_device(src, c, h, w, tile_overlap, stream);
  }
  DLManagedTensor& m = owner->managed;
  m.dl_tensor.data = reinterpret_cast<void*>(out);
  m.dl_tensor.device = {kDLCUDA, rt.device()};
  m.dl_tensor.ndim = 3;
  m.dl_tensor.dtype = {kDLFloat, 32, 1};
  m.dl_tensor.shape = owner->shape;
  m.dl_tensor.strides = owner->strides;
  m.dl_tensor.byte_offset = 0;
  m.manager_ctx = owner.get();
  m.deleter = output_tensor_deleter;
  PyObject* result = PyCapsule_New(&m, "dltensor", dltensor_capsule_destructor);
  if (result == nullptr) {
    engine::cuda::free_device_buffer(owner->device, out);
    throw py::error_already_set();
  }
  owner.release();  // the capsule (or its consumer) owns it now
  return py::reinterpret_steal<py::object>(result);
}

py::dict plan_stats(const PlanRuntime& rt) {
  const engine::cuda::PlanStats st = rt.stats();
  py::dict last;
  last["tiles"] = st.last_upscale.tiles;
  last["batches"] = st.last_upscale.batches;
  last["graph_replays"] = st.last_upscale.graph_replays;
  last["seconds"] = st.last_upscale.seconds;
  py::dict d;
  d["graph_captures"] = st.graph_captures;
  d["graph_replays"] = st.graph_replays;
  d["last_upscale"] = last;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "Compiled core of engine: pixel layout conversions and tile blending on the host (threads) and on CUDA "
      "devices; native engine plans (read_plan, NativePlan: Triton cubins, one arena, CUDA graphs).";

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

  // --- native plans ---------------------------------------------------------------------------------------

  py::register_exception<engine::PlanError>(m, "PlanError", PyExc_ValueError);

  m.def("read_plan", &read_plan, py::arg("path"), py::arg("arch") = py::none(), py::arg("cubins") = false,
        R"doc(Reads and validates a native engine plan (format version 1, see engine/plan.py) on the host, no GPU.

path: str or os.PathLike. arch: None, or the SM architecture the plan must be built for (e.g. 90); a plan
for another one is refused. cubins: include each kernel's cubin bytes. Returns a dict:
  path, version, arch, file_bytes, meta (str: the META JSON, unparsed)
  kernels: list of dicts name, num_warps, shared_bytes, params (list of parameter sizes, 4 or 8),
    cubin_bytes, and cubin (bytes) only with cubins=True
  shapes: list of dicts n, c_in, h, w, c_out, h_out, w_out, arena_bytes, input_off, output_off,
    launch_first, launch_count
  launches: list of dicts kernel (int), grid ((x, y, z)), args (list of (kind, value): kind 1 ARENA and
    2 WEIGHTS with the byte offset, 3 NULL with 0, 4 I32 with a signed int, 5 F32 with a float, 6 ALPHA
    with 0.0)
  alpha: (launch_first, launch_count) of the alpha program, or None
  weights: bytes, the weights buffer's initial contents
Every CRC-32, size, offset, alignment, index, range and argument kind is checked. Raises PlanError (a
ValueError) naming the file, the problem and the fix: missing, truncated, not a plan, another format version
or architecture, corrupted (CRC), inconsistent. The GIL is released while reading.)doc");

  py::class_<PlanRuntime>(m, "NativePlan", R"doc(A native engine plan loaded on one CUDA device: its Triton cubins
(driver API), one arena, the weights buffer, a compute stream and two copy streams, and a CUDA graph per built
shape.

NativePlan(path, device=0, cuda_graph=True): reads the plan for the device's architecture (PlanError for
another one, or an unusable file), loads every kernel, uploads the weights. cuda_graph: capture each shape's
launches once and replay the graph. Raises RuntimeError without CUDA ("built without CUDA"), without a
device, or on CUDA errors; ValueError for a device index out of range.
Calls are serialized (one at a time per plan) and release the GIL.)doc")
      .def(py::init([](const py::handle& path, int device, bool cuda_graph) {
             const std::string p = path_arg(path, "path");
             py::gil_scoped_release release;
             return std::make_unique<PlanRuntime>(p, device, cuda_graph);
           }),
           py::arg("path"), py::arg("device") = 0, py::arg("cuda_graph") = true)
      .def_property_readonly("device", &PlanRuntime::device, "The CUDA device index.")
      .def_property_readonly("arch", &PlanRuntime::arch, "SM architecture of the device and plan, e.g. 90.")
      .def_property_readonly("device_name", &PlanRuntime::device_name, "The device's name.")
      .def_property_readonly("meta", &PlanRuntime::meta, "The plan's META JSON (str).")
      .def_property_readonly(
          "shapes", [](const PlanRuntime& rt) { return shapes_list(rt.shapes()); },
          "The built shapes: list of dicts as in read_plan.")
      .def_property_readonly("arena_bytes", &PlanRuntime::arena_bytes,
                             "Bytes of the arena allocated: the largest over the shapes.")
      .def_property_readonly("weights_bytes", &PlanRuntime::weights_bytes, "Bytes of the weights buffer.")
      .def_property_readonly("has_alpha", &PlanRuntime::has_alpha, "True when the plan has an alpha program.")
      .def(
          "set_alpha",
          [](PlanRuntime& rt, float alpha) {
            py::gil_scoped_release release;
            return rt.set_alpha(alpha);
          },
          py::arg("alpha"),
          R"doc(Runs the alpha program: rewrites the live weights in place for alpha in [0, 1] (0 = the PSNR
endpoint, 1 = the GAN endpoint), waits for it and returns its wall-clock seconds. Pointers and captured graphs
stay valid. Raises ValueError without an alpha program or for alpha outside [0, 1].)doc")
      .def("run", &plan_run, py::arg("x"),
           R"doc(Runs the forward of a built shape on host data: x float32 (n, c_in, h, w) (a copy is made when not
C-contiguous) -> float32 (n, c_out, h_out, w_out). Blocking. Raises TypeError (not a float32 ndarray) or
ValueError (shape not built; the message lists the built shapes).)doc")
      .def("run_device", &plan_run_device, py::arg("x_ptr"), py::arg("y_ptr"), py::arg("shape") = 0,
           py::arg("stream") = 0,
           R"doc(Runs the forward of built shape index `shape` between device float32 NCHW buffers on the plan's
device (x_ptr: (n, c_in, h, w), y_ptr: (n, c_out, h_out, w_out), C-contiguous, as from tensor.data_ptr()),
ordered after and before the work on `stream` (a cudaStream_t as int, 0 = the legacy default stream).
Asynchronous. Raises ValueError (shape index, null pointers).)doc")
      .def("upscale", &plan_upscale, py::arg("planes"), py::arg("tile_overlap") = 32,
           R"doc(Tiled upscale of one image on the device with shape 0 (n, c_in, th, tw; scale s = h_out / h):
planes float32 (C = c_in, H, W) -> float32 (c_out, H * s, W * s). The image is padded to at least th x tw by
repeating its edge pixels, cut into tiles (axis_tiles with tile_overlap), run n tiles at a time and blended
with axis_weights (accumulate, in row-major tile order). The upload of later rows and the download of finished
output rows overlap the compute. Blocking. Raises TypeError / ValueError (dtype, shape, channels,
tile_overlap more than half a tile).)doc")
      .def("upscale_dlpack", &plan_upscale_dlpack, py::arg("image"), py::arg("tile_overlap") = 32,
           py::arg("stream") = 0,
           R"doc(upscale for an image already on the device: `image` is any DLPack producer (__dlpack__, e.g. a
torch CUDA tensor) of float32 (C, H, W), C-contiguous, on the plan's device. Returns a "dltensor" PyCapsule
owning a new float32 (c_out, H * s, W * s) device tensor (torch.from_dlpack(capsule)). `stream`: the
caller's cudaStream_t as int (torch: current_stream().cuda_stream), 0 = the legacy default stream; the
input is read after the work queued there, and the output is ready for work queued there after the call.
Raises TypeError (no DLPack, not CUDA, not float32) or ValueError (device, shape, layout, tile_overlap).)doc")
      .def("stats", &plan_stats,
           R"doc(Counters: dict graph_captures, graph_replays (graph launches so far), last_upscale (dict tiles,
batches, graph_replays, seconds: of the last upscale / upscale_dlpack; seconds is the call's wall-clock time,
which for upscale_dlpack ends once the work is queued).)doc");
}
