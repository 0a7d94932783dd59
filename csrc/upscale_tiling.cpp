// The tiling of one upscale (upscale_tiling.h).
#include "upscale_tiling.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "plan.h"
#include "tiles.h"

namespace engine::cuda {
namespace {

constexpr uint64_t kAlign = 256;
uint64_t align_up(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

std::string n2s(int64_t v) { return std::to_string(v); }

std::vector<int64_t> plan_axis(int64_t length, int64_t tile, int64_t overlap, const char* axis) {
  if (length > tile && 2 * overlap > tile) {
    throw std::invalid_argument("tile_overlap must be at most half the tile size, got overlap " + n2s(overlap) +
                                " with tile " + axis + " " + n2s(tile) + " (image " + axis + " " + n2s(length) +
                                " needs more than one tile)");
  }
  std::vector<int64_t> starts = engine::axis_tiles(length, tile, overlap);
  const std::string why = engine::check_axis_starts(length, starts, tile);
  if (!why.empty()) throw std::invalid_argument("tiles along the " + std::string(axis) + ": " + why);
  return starts;
}

}  // namespace

int64_t scale_of(const PlanShape& s) {
  if (s.h_out % s.h != 0 || s.w_out % s.w != 0) return 0;
  const int64_t sy = s.h_out / s.h, sx = s.w_out / s.w;
  return sy == sx ? sy : 0;
}

Tiling plan_tiling(const PlanShape& shape, int64_t channels, int64_t height, int64_t width, int64_t overlap) {
  Tiling t;
  t.scale = scale_of(shape);
  if (t.scale < 1) {
    throw std::invalid_argument("the plan's shape 0 maps (" + n2s(shape.h) + ", " + n2s(shape.w) + ") to (" +
                                n2s(shape.h_out) + ", " + n2s(shape.w_out) +
                                "), not an integer upscale: upscale needs one");
  }
  if (channels != shape.c_in) {
    throw std::invalid_argument("planes must have " + n2s(shape.c_in) + " channels (the plan's c_in), got " +
                                n2s(channels));
  }
  if (height < 1 || width < 1) {
    throw std::invalid_argument("planes must be at least 1 x 1 pixels, got " + n2s(height) + " x " + n2s(width));
  }
  if (overlap < 0) throw std::invalid_argument("tile_overlap must be >= 0, got " + n2s(overlap));
  t.channels = channels;
  t.height = height;
  t.width = width;
  t.th = shape.h;
  t.tw = shape.w;
  t.n = shape.n;
  t.c_out = shape.c_out;
  t.canvas_h = std::max(height, t.th);
  t.canvas_w = std::max(width, t.tw);
  // At most 2^40 elements in the output canvas (and so in the source).
  constexpr int64_t kMost = int64_t{1} << 40;
  if (t.canvas_h > kMost / t.scale || t.canvas_w > kMost / t.scale ||
      t.canvas_h * t.scale > kMost / (t.canvas_w * t.scale) / t.c_out || height * width > kMost / channels) {
    throw std::invalid_argument("planes of " + n2s(height) + " x " + n2s(width) + " pixels are too large: the " +
                                n2s(t.c_out) + "-channel output at scale " + n2s(t.scale) +
                                " (or the input) would exceed 2**40 elements");
  }
  t.ys = plan_axis(t.canvas_h, t.th, overlap, "height");
  t.xs = plan_axis(t.canvas_w, t.tw, overlap, "width");
  t.wy.resize(static_cast<size_t>(t.ny() * t.th * t.scale));
  t.wx.resize(static_cast<size_t>(t.nx() * t.tw * t.scale));
  engine::axis_weights(t.canvas_h, t.ys, t.th, t.scale, t.wy.data());
  engine::axis_weights(t.canvas_w, t.xs, t.tw, t.scale, t.wx.data());
  t.ys_off = 0;
  t.xs_off = align_up(t.ys_off + t.ys.size() * sizeof(int64_t));
  t.wy_off = align_up(t.xs_off + t.xs.size() * sizeof(int64_t));
  t.wx_off = align_up(t.wy_off + t.wy.size() * sizeof(float));
  t.table_bytes = align_up(t.wx_off + t.wx.size() * sizeof(float));
  return t;
}

}  // namespace engine::cuda
