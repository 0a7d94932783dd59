// CUDA twins of the host pixel conversions. Implemented in pixels_cuda.cu when engine._C is built with CUDA
// (ENGINE_WITH_CUDA), otherwise by cuda_stub.cpp. Plain C++: no CUDA headers, so bind_pixels.cpp can include it.
// Errors are thrown as std::runtime_error (RuntimeError in Python).
#pragma once

#include <cstdint>
#include <vector>

#include "pixel_math.h"

namespace engine::cuda {

// SM architectures the device code was compiled for (e.g. {80, 90}); empty without CUDA.
std::vector<int> compiled_archs();

// Visible CUDA devices; 0 without CUDA, without a driver or without a device (never throws for those).
int device_count();

// Device pointers on the current device; `stream` is a cudaStream_t (0 = the legacy default stream).
// src: (H, W, C) of `src_type`; dst: float32 (C, H, W). Asynchronous on `stream`.
void to_planar(uintptr_t src, PixelType src_type, uintptr_t dst, int64_t height, int64_t width, int channels,
               bool reverse_channels, uintptr_t stream);

// src: float32 (C, H, W); dst: (H, W, C) of `dst_type`. Asynchronous on `stream`.
void from_planar(uintptr_t src, uintptr_t dst, PixelType dst_type, int64_t height, int64_t width,
                 int channels, bool reverse_channels, uintptr_t stream);

}  // namespace engine::cuda
