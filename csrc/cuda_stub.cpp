// engine::cuda for builds without CUDA: no devices, and the twins raise.
#ifndef ENGINE_WITH_CUDA

#include <stdexcept>

#include "cuda_pixels.h"
#include "cuda_tiles.h"
#include "plan_runtime.h"

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

// Native plans: the constructor throws, so no PlanRuntime exists and the other members are never called.
struct PlanRuntime::Impl {};

PlanRuntime::PlanRuntime(const std::string&, int, bool) { built_without_cuda(); }
PlanRuntime::~PlanRuntime() = default;
int PlanRuntime::device() const { built_without_cuda(); }
int PlanRuntime::arch() const { built_without_cuda(); }
const std::string& PlanRuntime::device_name() const { built_without_cuda(); }
const std::string& PlanRuntime::meta() const { built_without_cuda(); }
const std::vector<PlanShape>& PlanRuntime::shapes() const { built_without_cuda(); }
uint64_t PlanRuntime::arena_bytes() const { built_without_cuda(); }
uint64_t PlanRuntime::weights_bytes() const { built_without_cuda(); }
bool PlanRuntime::has_alpha() const { built_without_cuda(); }
bool PlanRuntime::cuda_graph() const { built_without_cuda(); }
PlanStats PlanRuntime::stats() const { built_without_cuda(); }
void PlanRuntime::forward(size_t) { built_without_cuda(); }
double PlanRuntime::set_alpha(float) { built_without_cuda(); }
void PlanRuntime::run(const float*, float*, size_t) { built_without_cuda(); }
void PlanRuntime::run_device(uintptr_t, uintptr_t, size_t, uintptr_t) { built_without_cuda(); }
int64_t PlanRuntime::scale() const { built_without_cuda(); }
void PlanRuntime::check_upscale(int64_t, int64_t, int64_t, int64_t) const { built_without_cuda(); }
void PlanRuntime::upscale_host(const float*, int64_t, int64_t, int64_t, int64_t, float*) { built_without_cuda(); }
PooledBuffer PlanRuntime::upscale_device(uintptr_t, int64_t, int64_t, int64_t, int64_t, uintptr_t) {
  built_without_cuda();
}

}  // namespace engine::cuda

#endif  // ENGINE_WITH_CUDA
