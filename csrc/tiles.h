// Tile scheduling and overlap blending for tiled inference. The per-element blend step is shared by the host
// (tiles_cpu.cpp) and CUDA (tiles_cuda.cu) code, so both give bit-identical results.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pixel_math.h"  // ENGINE_HD

namespace engine {

// dst + (wy * wx) * src in float32, rounded after every operation in this order, with no fused multiply-add
// (separate statements on the host, where GCC in ISO C++ mode and Clang contract only within one expression;
// explicit round-to-nearest intrinsics on the device, which nvcc never contracts).
ENGINE_HD float blend_step(float dst, float src, float wy, float wx) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(dst, __fmul_rn(__fmul_rn(wy, wx), src));
#else
  const float w = wy * wx;
  const float term = w * src;
  return dst + term;
#endif
}

// --- host-only: planning -----------------------------------------------------------------------------------

// Tile starts along one axis of `length` pixels (see axis_tiles in bind_tiles.cpp). Arguments must be valid
// (length, tile >= 1, 0 <= overlap, 2 * overlap <= tile when length > tile).
std::vector<int64_t> axis_tiles(int64_t length, int64_t tile, int64_t overlap);

// Empty when `starts` can be blended (first 0, last length - size, strictly increasing, no gaps, at most three
// tiles over any pixel), otherwise why not. size = min(tile, length).
std::string check_axis_starts(int64_t length, const std::vector<int64_t>& starts, int64_t tile);

// Blend weights (n_tiles, size * scale), row-major, of valid starts (check_axis_starts gave "").
void axis_weights(int64_t length, const std::vector<int64_t>& starts, int64_t tile, int64_t scale, float* out);

// --- host-only: blending ----------------------------------------------------------------------------------

// dst (C, H, W) C-contiguous; src (C, th, tw) C-contiguous; wy (th,), wx (tw,). The tile lies inside dst.
// dst[:, y0 + y, x0 + x] = blend_step(dst[...], src[:, y, x], wy[y], wx[x]); rows in parallel.
void accumulate_cpu(float* dst, int64_t channels, int64_t height, int64_t width, const float* src,
                    int64_t tile_h, int64_t tile_w, int64_t y0, int64_t x0, const float* wy, const float* wx,
                    int threads);

// One tile of a batch for blend_tiles_cpu.
struct TileRef {
  const float* src;  // (C, th, tw) C-contiguous
  const float* wy;   // (th,)
  const float* wx;   // (tw,)
  int64_t y0, x0;
};

// accumulate_cpu for tiles[0], tiles[1], ... in order (tiles may overlap each other), bit-identical to those
// calls: dst rows are partitioned among the threads, and each thread adds every tile's rows in its part.
void blend_tiles_cpu(float* dst, int64_t channels, int64_t height, int64_t width, const std::vector<TileRef>& tiles,
                     int64_t tile_h, int64_t tile_w, int threads);

}  // namespace engine
