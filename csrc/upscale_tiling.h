// The tiling of one upscale by a native plan (plan_runtime.h): the tiles of shape 0 that cover an image, their
// blend weights (tiles.h), and the layout of the tables the device reads them from. Plain C++, no CUDA. Errors
// are std::invalid_argument (ValueError in Python), naming the argument.
#pragma once

#include <cstdint>
#include <vector>

#include "plan.h"

namespace engine::cuda {

struct Tiling {
  int64_t channels = 0, height = 0, width = 0;  // the source
  int64_t th = 0, tw = 0, n = 0, scale = 0, c_out = 0;
  int64_t canvas_h = 0, canvas_w = 0;  // the padded source: max(height, th) x max(width, tw)
  std::vector<int64_t> ys, xs;         // tile starts
  std::vector<float> wy, wx;           // (ny, th * scale), (nx, tw * scale)
  // Layout of the device tables: ys, xs (int64), wy, wx (float32), each 256-byte aligned.
  uint64_t ys_off = 0, xs_off = 0, wy_off = 0, wx_off = 0, table_bytes = 0;

  int64_t ny() const { return static_cast<int64_t>(ys.size()); }
  int64_t nx() const { return static_cast<int64_t>(xs.size()); }
  int64_t tiles() const { return ny() * nx(); }
  int64_t out_h() const { return height * scale; }
  int64_t out_w() const { return width * scale; }
  uint64_t out_bytes() const { return static_cast<uint64_t>(c_out * out_h() * out_w()) * 4; }
  uint64_t canvas_bytes() const {
    return static_cast<uint64_t>(c_out * canvas_h * scale * canvas_w * scale) * 4;
  }
  uint64_t source_bytes() const { return static_cast<uint64_t>(channels * height * width) * 4; }
};

// Scale s of `shape` (h_out / h == w_out / w), or 0 when `shape` is not an integer upscale.
int64_t scale_of(const PlanShape& shape);

// The tiling of float32 planes (channels, height, width) with the tiles of `shape` (shape 0 of a plan), padded
// to at least one tile and overlapping by at least `overlap`. Throws std::invalid_argument when `shape` is not
// an integer upscale, channels is not its c_in, the planes are empty or too large, or the overlap is negative or
// more than half a tile.
Tiling plan_tiling(const PlanShape& shape, int64_t channels, int64_t height, int64_t width, int64_t overlap);

}  // namespace engine::cuda
