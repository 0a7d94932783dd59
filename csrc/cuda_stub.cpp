// engine::cuda for builds without CUDA: no devices, and the twins raise.
#ifndef ENGINE_WITH_CUDA

#include <stdexcept>

#include "cuda_pixels.h"
#include "cuda_tiles.h"

namespace engine::cuda {
namespace {

[[noreturn]] void built_without_cuda() {
  throw std::runtime_error(
      "engine._C was built without CUDA; rebuild with nvcc on PATH (ENGINE_CUDA=1 pip install -e .)");
}

}  // namespace

std::vector<int> compiled_archs() { return {}; }

int device_count() { return 0; }

void to_planar(uintptr_t, PixelType, uintptr_t, int64_t, int64_t, int, bool, uintptr_t) {
  built_without_cuda();
}

void from_planar(uintptr_t, uintptr_t, PixelType, int64_t, int64_t, int, bool, uintptr_t) {
  built_without_cuda();
}

void accumulate(uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                int64_t, uintptr_t) {
  built_without_cuda();
}

}  // namespace engine::cuda

#endif  // ENGINE_WITH_CUDA
