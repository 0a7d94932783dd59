// The one place where CUDA status codes become errors (std::runtime_error -> RuntimeError in Python), shared by
// every .cu file of engine._C, and the grid size of the grid-stride kernels.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace engine::cuda {

inline void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorName(status) + ": " +
                             cudaGetErrorString(status));
  }
}
#define ENGINE_CUDA_CHECK(call) ::engine::cuda::check((call), #call)

// Statuses of cudaGetDeviceCount that mean "no usable GPU here" rather than a failure.
inline bool means_no_device(cudaError_t status) {
  return status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver || status == cudaErrorStubLibrary;
}

// Throws a clear error when no GPU can run `what` (e.g. "the CUDA pixel functions").
inline void require_device(const char* what) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (means_no_device(status) || (status == cudaSuccess && count == 0)) {
    (void)cudaGetLastError();  // clear the status so later runtime calls don't report it
    const std::string reason = status == cudaSuccess ? "0 devices" : cudaGetErrorString(status);
    throw std::runtime_error("no CUDA device is available (cudaGetDeviceCount: " + reason + "); " + what +
                             " need an NVIDIA GPU and a driver for CUDA " + std::to_string(CUDART_VERSION / 1000) +
                             "." + std::to_string(CUDART_VERSION % 1000 / 10) + " or newer");
  }
  ENGINE_CUDA_CHECK(status);
}

constexpr int kBlock = 256;

// Blocks for a grid-stride loop over n items (n > 0).
inline unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kBlock - 1) / kBlock, int64_t{1} << 20));
}

}  // namespace engine::cuda
