// The CUDA driver API calls of the plan runtime, in one place: loading a cubin (cuModuleLoadData), finding its
// kernel (cuModuleGetFunction), raising its shared-memory limit (cuFuncSetAttribute) and launching it
// (cuLaunchKernel). engine._C links no libcuda: the entry points come from the CUDA runtime on first use
// (cuda_driver.cu). Every failing CUresult becomes a std::runtime_error naming the call (RuntimeError in Python).
// CUDA-only (included by .cu files).
#pragma once

#include <cuda.h>

#include <string>

#include "cuda_handles.h"

namespace engine::cuda {

// Loads the driver entry points now (they load on first use; a failure is retried on the next call). Throws
// when the driver lacks one ("update the NVIDIA driver").
void require_driver_api();

struct UnloadModule {
  void operator()(CUmodule m) const noexcept;  // cuModuleUnload
};
using Module = Handle<CUmodule, UnloadModule>;

// `what` ends the call's name in error messages, e.g. "(kernel 3, conv_k)".

// cuModuleLoadData of a cubin image into *module (unloading the module it held).
void load_module(Module* module, const void* image, const std::string& what);

// cuModuleGetFunction: the kernel `name` of `module`.
CUfunction get_function(const Module& module, const std::string& name, const std::string& what);

// cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES): lets `function` use `bytes` of dynamic
// shared memory per block (needed above 48 KiB).
void set_max_dynamic_shared_bytes(CUfunction function, int bytes, const std::string& what);

// cuLaunchKernel of `function` on grid (x, y, z) with `block` threads per block (1-D) and `shared_bytes` of
// dynamic shared memory, asynchronous on `stream`; params: one pointer per kernel parameter, or nullptr.
// The error message names kernel_name.
void launch_kernel(CUfunction function, const unsigned grid[3], unsigned block, unsigned shared_bytes,
                   CUstream stream, void** params, const char* kernel_name);

}  // namespace engine::cuda
