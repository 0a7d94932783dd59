// CUDA twins of pixels_cpu.cpp: one thread per pixel (grid-stride), same math via pixel_math.h.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_check.h"
#include "cuda_pixels.h"
#include "pixel_math.h"

#ifndef __CUDA_ARCH_LIST__
#error "nvcc >= 11.5 is required (__CUDA_ARCH_LIST__)"
#endif

namespace engine::cuda {
namespace {

template <typename T>
__global__ void to_planar_kernel(const T* __restrict__ src, float* __restrict__ dst, int64_t pixels,
                                 int channels, bool reverse) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels; p += stride) {
    for (int c = 0; c < channels; ++c) {
      dst[c * pixels + p] = to_unit(src[p * channels + source_channel(c, channels, reverse)]);
    }
  }
}

template <typename T>
__global__ void from_planar_kernel(const float* __restrict__ src, T* __restrict__ dst, int64_t pixels,
                                   int channels, bool reverse) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pixels; p += stride) {
    for (int c = 0; c < channels; ++c) {
      dst[p * channels + c] = from_unit<T>(src[source_channel(c, channels, reverse) * pixels + p]);
    }
  }
}

template <typename T>
void launch_to_planar(uintptr_t src, uintptr_t dst, int64_t pixels, int channels, bool reverse,
                      cudaStream_t stream) {
  to_planar_kernel<T><<<grid_for(pixels), kBlock, 0, stream>>>(
      reinterpret_cast<const T*>(src), reinterpret_cast<float*>(dst), pixels, channels, reverse);
  ENGINE_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void launch_from_planar(uintptr_t src, uintptr_t dst, int64_t pixels, int channels, bool reverse,
                        cudaStream_t stream) {
  from_planar_kernel<T><<<grid_for(pixels), kBlock, 0, stream>>>(
      reinterpret_cast<const float*>(src), reinterpret_cast<T*>(dst), pixels, channels, reverse);
  ENGINE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

std::vector<int> compiled_archs() {
  // __CUDA_ARCH_LIST__ is nvcc's list of the virtual architectures of this compilation, e.g. 800,900.
  std::vector<int> archs = {__CUDA_ARCH_LIST__};
  for (int& a : archs) a /= 10;
  return archs;
}

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (means_no_device(status)) {
    (void)cudaGetLastError();
    return 0;
  }
  ENGINE_CUDA_CHECK(status);
  return count;
}

void to_planar(uintptr_t src, PixelType src_type, uintptr_t dst, int64_t height, int64_t width, int channels,
               bool reverse_channels, uintptr_t stream) {
  require_device("the CUDA pixel functions");
  const int64_t pixels = height * width;
  if (pixels == 0) return;
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (src_type) {
    case PixelType::u8:
      return launch_to_planar<uint8_t>(src, dst, pixels, channels, reverse_channels, s);
    case PixelType::u16:
      return launch_to_planar<uint16_t>(src, dst, pixels, channels, reverse_channels, s);
    case PixelType::f32:
      return launch_to_planar<float>(src, dst, pixels, channels, reverse_channels, s);
  }
}

void from_planar(uintptr_t src, uintptr_t dst, PixelType dst_type, int64_t height, int64_t width,
                 int channels, bool reverse_channels, uintptr_t stream) {
  require_device("the CUDA pixel functions");
  const int64_t pixels = height * width;
  if (pixels == 0) return;
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (dst_type) {
    case PixelType::u8:
      return launch_from_planar<uint8_t>(src, dst, pixels, channels, reverse_channels, s);
    case PixelType::u16:
      return launch_from_planar<uint16_t>(src, dst, pixels, channels, reverse_channels, s);
    case PixelType::f32:
      return launch_from_planar<float>(src, dst, pixels, channels, reverse_channels, s);
  }
}

}  // namespace engine::cuda
