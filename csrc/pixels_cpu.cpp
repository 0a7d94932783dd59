#include "pixels_cpu.h"

#include "parallel.h"

namespace engine {
namespace {

template <typename T>
void to_planar_typed(const T* src, float* dst, int64_t height, int64_t width, int channels, bool reverse,
                     int threads) {
  const int64_t plane = height * width;
  parallel_rows(height, resolve_threads(threads, height, plane * channels), [=](int64_t y0, int64_t y1) {
    for (int c = 0; c < channels; ++c) {
      const T* s = src + y0 * width * channels + source_channel(c, channels, reverse);
      float* d = dst + c * plane + y0 * width;
      for (int64_t i = 0, n = (y1 - y0) * width; i < n; ++i) d[i] = to_unit(s[i * channels]);
    }
  });
}

template <typename T>
void from_planar_typed(const float* src, T* dst, int64_t height, int64_t width, int channels, bool reverse,
                       int threads) {
  const int64_t plane = height * width;
  parallel_rows(height, resolve_threads(threads, height, plane * channels), [=](int64_t y0, int64_t y1) {
    for (int c = 0; c < channels; ++c) {
      const float* s = src + source_channel(c, channels, reverse) * plane + y0 * width;
      T* d = dst + y0 * width * channels + c;
      for (int64_t i = 0, n = (y1 - y0) * width; i < n; ++i) d[i * channels] = from_unit<T>(s[i]);
    }
  });
}

}  // namespace

void to_planar_cpu(const void* src, PixelType src_type, float* dst, int64_t height, int64_t width,
                   int channels, bool reverse_channels, int threads) {
  switch (src_type) {
    case PixelType::u8:
      return to_planar_typed(static_cast<const uint8_t*>(src), dst, height, width, channels,
                             reverse_channels, threads);
    case PixelType::u16:
      return to_planar_typed(static_cast<const uint16_t*>(src), dst, height, width, channels,
                             reverse_channels, threads);
    case PixelType::f32:
      return to_planar_typed(static_cast<const float*>(src), dst, height, width, channels,
                             reverse_channels, threads);
  }
}

void from_planar_cpu(const float* src, void* dst, PixelType dst_type, int64_t height, int64_t width,
                     int channels, bool reverse_channels, int threads) {
  switch (dst_type) {
    case PixelType::u8:
      return from_planar_typed(src, static_cast<uint8_t*>(dst), height, width, channels, reverse_channels,
                               threads);
    case PixelType::u16:
      return from_planar_typed(src, static_cast<uint16_t*>(dst), height, width, channels,
                               reverse_channels, threads);
    case PixelType::f32:
      return from_planar_typed(src, static_cast<float*>(dst), height, width, channels, reverse_channels,
                               threads);
  }
}

}  // namespace engine
