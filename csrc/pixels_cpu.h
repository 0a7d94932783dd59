// Host conversions between interleaved images (H, W, C) and planar float32 tensors (C, H, W).
#pragma once

#include <cstdint>

#include "pixel_math.h"

namespace engine {

// src: C-contiguous (H, W, C) of `src_type`; dst: C-contiguous float32 (C, H, W).
// threads: 0 = hardware concurrency; small images run single-threaded.
void to_planar_cpu(const void* src, PixelType src_type, float* dst, int64_t height, int64_t width,
                   int channels, bool reverse_channels, int threads);

// src: C-contiguous float32 (C, H, W); dst: C-contiguous (H, W, C) of `dst_type`.
void from_planar_cpu(const float* src, void* dst, PixelType dst_type, int64_t height, int64_t width,
                     int channels, bool reverse_channels, int threads);

}  // namespace engine
