// CUDA twin of accumulate_cpu (tiles_cpu.cpp): one thread per tile element (grid-stride), same math via
// tiles.h.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_check.h"
#include "cuda_tiles.h"
#include "tiles.h"

namespace engine::cuda {
namespace {

__global__ void accumulate_kernel(float* __restrict__ dst, const float* __restrict__ src,
                                  const float* __restrict__ wy, const float* __restrict__ wx, int64_t elements,
                                  int64_t dst_h, int64_t dst_w, int64_t tile_h, int64_t tile_w, int64_t y0,
                                  int64_t x0) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tile_plane = tile_h * tile_w;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < elements; i += stride) {
    const int64_t c = i / tile_plane, r = i - c * tile_plane;
    const int64_t y = r / tile_w, x = r - y * tile_w;
    float& d = dst[(c * dst_h + y0 + y) * dst_w + x0 + x];
    d = blend_step(d, src[i], wy[y], wx[x]);
  }
}

}  // namespace

void accumulate(uintptr_t dst, uintptr_t src, uintptr_t wy, uintptr_t wx, int64_t channels, int64_t dst_h,
                int64_t dst_w, int64_t tile_h, int64_t tile_w, int64_t y0, int64_t x0, uintptr_t stream) {
  require_device("the CUDA tile functions");
  const int64_t elements = channels * tile_h * tile_w;
  if (elements == 0) return;
  accumulate_kernel<<<grid_for(elements), kBlock, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<float*>(dst), reinterpret_cast<const float*>(src), reinterpret_cast<const float*>(wy),
      reinterpret_cast<const float*>(wx), elements, dst_h, dst_w, tile_h, tile_w, y0, x0);
  ENGINE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace engine::cuda
