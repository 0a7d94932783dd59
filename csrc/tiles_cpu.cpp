// Host tile planning (axis_tiles, axis_weights) and overlap blending (accumulate_cpu, blend_tiles_cpu).
#include <algorithm>
#include <cmath>
#include <string>

#include "parallel.h"
#include "tiles.h"

namespace engine {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Handover from tile i to tile i + 1 across their blend region [a, b) (output pixels): tile i + 1's share at
// pixel x. 0 before the region and on its first quarter, 1 on its last quarter and after it, a raised cosine
// in between (rounded to float32 once).
struct Handover {
  int64_t a, b;

  float at(int64_t x) const {
    const int64_t q = (b - a) / 4;
    const int64_t lo = a + q, hi = b - q;  // the ramp [lo, hi); empty (lo == hi) only when a == b
    if (x < lo) return 0.0f;
    if (x >= hi) return 1.0f;
    const double t = (static_cast<double>(x - lo) + 0.5) / static_cast<double>(hi - lo);
    return static_cast<float>(0.5 - 0.5 * std::cos(kPi * t));
  }
};

}  // namespace

std::vector<int64_t> axis_tiles(int64_t length, int64_t tile, int64_t overlap) {
  if (length <= tile) return {0};
  const int64_t step = tile - overlap;                 // >= tile / 2 >= 1
  const int64_t n = (length - overlap + step - 1) / step;  // >= 2 since length > tile
  const int64_t span = length - tile, gaps = n - 1;
  std::vector<int64_t> starts(n);
  for (int64_t i = 0; i < n; ++i) starts[i] = (2 * i * span + gaps) / (2 * gaps);  // round(i * span / gaps)
  return starts;
}

std::string check_axis_starts(int64_t length, const std::vector<int64_t>& starts, int64_t tile) {
  const int64_t size = std::min(tile, length);
  const auto n = static_cast<int64_t>(starts.size());
  const auto at = [&](int64_t i) { return "starts[" + std::to_string(i) + "] = " + std::to_string(starts[i]); };
  if (n == 0) return "starts must not be empty";
  if (starts[0] != 0) return "starts[0] must be 0, got " + std::to_string(starts[0]);
  if (starts[n - 1] != length - size) {
    return "the last start must be length - min(tile, length) = " + std::to_string(length - size) + ", got " +
           at(n - 1);
  }
  for (int64_t i = 0; i + 1 < n; ++i) {
    if (starts[i + 1] <= starts[i]) return "starts must be strictly increasing, got " + at(i) + ", " + at(i + 1);
    if (starts[i + 1] > starts[i] + size) {
      return "tiles of size " + std::to_string(size) + " leave a gap: " + at(i) + ", " + at(i + 1);
    }
    if (i + 3 < n && starts[i + 3] < starts[i] + size) {
      return "more than three tiles of size " + std::to_string(size) + " overlap: " + at(i) + ", " + at(i + 3) +
             " (use a smaller tile_overlap)";
    }
  }
  return "";
}

void axis_weights(int64_t length, const std::vector<int64_t>& starts, int64_t tile, int64_t scale, float* out) {
  const int64_t size = std::min(tile, length) * scale;  // a tile's extent in output pixels
  const auto n = static_cast<int64_t>(starts.size());
  const auto S = [&](int64_t i) { return starts[i] * scale; };
  const auto E = [&](int64_t i) { return starts[i] * scale + size; };
  // Blend region of tiles i and i + 1: their overlap [S(i+1), E(i)), less any part a third tile also covers
  // (possible with uneven start spacing; that part then belongs to the middle tile i or i + 1 alone). The
  // regions are disjoint and ordered, so at any pixel at most one handover is strictly between 0 and 1 and
  // every product below has an exact 0 or 1 factor: tile i gets exactly 1.0f - (tile i+1's share).
  std::vector<Handover> pairs(std::max<int64_t>(n - 1, 0));
  for (int64_t i = 0; i + 1 < n; ++i) {
    pairs[i] = {i > 0 ? std::max(S(i + 1), E(i - 1)) : S(i + 1), i + 2 < n ? std::min(E(i), S(i + 2)) : E(i)};
  }
  for (int64_t i = 0; i < n; ++i) {
    float* row = out + i * size;
    for (int64_t x = S(i); x < E(i); ++x) {
      const float from_previous = i > 0 ? pairs[i - 1].at(x) : 1.0f;
      const float to_next = i + 1 < n ? pairs[i].at(x) : 0.0f;
      row[x - S(i)] = from_previous * (1.0f - to_next);
    }
  }
}

void accumulate_cpu(float* dst, int64_t channels, int64_t height, int64_t width, const float* src,
                    int64_t tile_h, int64_t tile_w, int64_t y0, int64_t x0, const float* wy, const float* wx,
                    int threads) {
  const int64_t plane = height * width, tile_plane = tile_h * tile_w;
  parallel_rows(tile_h, resolve_threads(threads, tile_h, channels * tile_plane), [=](int64_t r0, int64_t r1) {
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t y = r0; y < r1; ++y) {
        float* d = dst + c * plane + (y0 + y) * width + x0;
        const float* s = src + c * tile_plane + y * tile_w;
        const float w = wy[y];
        for (int64_t x = 0; x < tile_w; ++x) d[x] = blend_step(d[x], s[x], w, wx[x]);
      }
    }
  });
}

void blend_tiles_cpu(float* dst, int64_t channels, int64_t height, int64_t width, const std::vector<TileRef>& tiles,
                     int64_t tile_h, int64_t tile_w, int threads) {
  if (tiles.empty() || tile_h == 0 || tile_w == 0) return;
  int64_t top = height, bottom = 0;  // the dst rows any tile touches
  for (const TileRef& t : tiles) {
    top = std::min(top, t.y0);
    bottom = std::max(bottom, t.y0 + tile_h);
  }
  const int64_t rows = bottom - top, plane = height * width, tile_plane = tile_h * tile_w;
  const auto work = static_cast<int64_t>(tiles.size()) * channels * tile_plane;
  // Each thread owns the dst rows [top + r0, top + r1) and adds the tiles in order there: race-free, and every
  // element sees the same sequence of additions as with one accumulate_cpu call per tile.
  parallel_rows(rows, resolve_threads(threads, rows, work), [&, top](int64_t r0, int64_t r1) {
    for (const TileRef& t : tiles) {
      const int64_t first = std::max(top + r0, t.y0), last = std::min(top + r1, t.y0 + tile_h);
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t y = first; y < last; ++y) {
          float* d = dst + c * plane + y * width + t.x0;
          const float* s = t.src + c * tile_plane + (y - t.y0) * tile_w;
          const float w = t.wy[y - t.y0];
          for (int64_t x = 0; x < tile_w; ++x) d[x] = blend_step(d[x], s[x], w, t.wx[x]);
        }
      }
    }
  });
}

}  // namespace engine
