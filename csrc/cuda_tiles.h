// CUDA twin of the host tile blending. Implemented in tiles_cuda.cu when engine._C is built with CUDA
// (ENGINE_WITH_CUDA), otherwise by cuda_stub.cpp. Plain C++: no CUDA headers, so bind_tiles.cpp can include it.
// Errors are thrown as std::runtime_error (RuntimeError in Python).
#pragma once

#include <cstdint>

namespace engine::cuda {

// Device pointers on the current device, float32, C-contiguous: dst (C, dst_h, dst_w), src (C, tile_h, tile_w),
// wy (tile_h,), wx (tile_w,). dst[:, y0 + y, x0 + x] += (wy[y] * wx[x]) * src[:, y, x], bit-identical to
// accumulate_cpu. The tile lies inside dst (checked by the caller). Asynchronous on `stream` (a cudaStream_t,
// 0 = the legacy default stream).
void accumulate(uintptr_t dst, uintptr_t src, uintptr_t wy, uintptr_t wx, int64_t channels, int64_t dst_h,
                int64_t dst_w, int64_t tile_h, int64_t tile_w, int64_t y0, int64_t x0, uintptr_t stream);

}  // namespace engine::cuda
