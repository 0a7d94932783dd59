// Per-pixel conversion math shared by the host (pixels_cpu.cpp) and CUDA (pixels_cuda.cu) code, so both give
// bit-identical results.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ENGINE_HD __host__ __device__ __forceinline__
#else
#define ENGINE_HD inline
#endif

namespace engine {

enum class PixelType { u8, u16, f32 };

// The interleaved channel that feeds planar channel c (the mapping is its own inverse, so it also gives the
// planar channel that feeds interleaved channel c). Reversal swaps colour channels only: BGR <-> RGB for 3
// channels, BGRA <-> RGBA for 4; gray (1) and gray + alpha (2) are unchanged.
ENGINE_HD int source_channel(int c, int channels, bool reverse) {
  return (reverse && channels >= 3 && c < 3) ? 2 - c : c;
}

// Integer pixels map to [0, 1] by division by the type's maximum; float32 passes through.
ENGINE_HD float to_unit(uint8_t v) { return static_cast<float>(v) / 255.0f; }
ENGINE_HD float to_unit(uint16_t v) { return static_cast<float>(v) / 65535.0f; }
ENGINE_HD float to_unit(float v) { return v; }

// Clamps to [0, 1] (NaN -> 0), scales to [0, max_value] and rounds half to even (numpy's rint).
ENGINE_HD float quantize(float x, float max_value) {
  x = x > 0.0f ? x : 0.0f;  // the comparison is false for NaN
  x = x < 1.0f ? x : 1.0f;
#if defined(__CUDA_ARCH__)
  return rintf(x * max_value);
#else
  return std::nearbyint(x * max_value);
#endif
}

template <typename T>
ENGINE_HD T from_unit(float x);
template <>
ENGINE_HD uint8_t from_unit<uint8_t>(float x) { return static_cast<uint8_t>(quantize(x, 255.0f)); }
template <>
ENGINE_HD uint16_t from_unit<uint16_t>(float x) { return static_cast<uint16_t>(quantize(x, 65535.0f)); }
template <>
ENGINE_HD float from_unit<float>(float x) { return x; }

}  // namespace engine
