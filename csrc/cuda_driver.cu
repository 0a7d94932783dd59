// The driver API shim of the plan runtime (cuda_driver.h): the driver's entry points come from the static
// runtime's cudaGetDriverEntryPointByVersion, as Triton's launcher does, so engine._C links no libcuda and still
// imports on machines without a driver. <cuda.h> is included for the driver's types only.
#include <cuda.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_check.h"
#include "cuda_driver.h"

namespace engine::cuda {
namespace {

using ModuleLoadDataFn = CUresult(CUDAAPI*)(CUmodule*, const void*);
using ModuleGetFunctionFn = CUresult(CUDAAPI*)(CUfunction*, CUmodule, const char*);
using ModuleUnloadFn = CUresult(CUDAAPI*)(CUmodule);
using LaunchKernelFn = CUresult(CUDAAPI*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                          unsigned, CUstream, void**, void**);
using FuncSetAttributeFn = CUresult(CUDAAPI*)(CUfunction, CUfunction_attribute, int);
using GetErrorNameFn = CUresult(CUDAAPI*)(CUresult, const char**);

struct Driver {
  ModuleLoadDataFn module_load_data = nullptr;
  ModuleGetFunctionFn module_get_function = nullptr;
  ModuleUnloadFn module_unload = nullptr;
  LaunchKernelFn launch_kernel = nullptr;
  FuncSetAttributeFn func_set_attribute = nullptr;
  GetErrorNameFn get_error_name = nullptr;
};

// The oldest driver ABI these entry points are asked for (their signatures are unchanged since).
constexpr unsigned kDriverAbi = 12000;

template <typename Fn>
void entry_point(const char* symbol, Fn* fn) {
  void* address = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
  const cudaError_t status = cudaGetDriverEntryPointByVersion(symbol, &address, kDriverAbi, cudaEnableDefault, &found);
  const char* how = "cudaGetDriverEntryPointByVersion";
#else
  const cudaError_t status = cudaGetDriverEntryPoint(symbol, &address, cudaEnableDefault, &found);
  const char* how = "cudaGetDriverEntryPoint";
#endif
  check(status, (std::string(how) + "(\"" + symbol + "\")").c_str());
  if (address == nullptr || found != cudaDriverEntryPointSuccess) {
    throw std::runtime_error(std::string(how) + "(\"" + symbol + "\") found no driver function (status " +
                             std::to_string(static_cast<int>(found)) + "); update the NVIDIA driver");
  }
  *fn = reinterpret_cast<Fn>(address);
}

Driver load_driver() {
  Driver d;
  entry_point("cuGetErrorName", &d.get_error_name);
  entry_point("cuModuleLoadData", &d.module_load_data);
  entry_point("cuModuleGetFunction", &d.module_get_function);
  entry_point("cuModuleUnload", &d.module_unload);
  entry_point("cuLaunchKernel", &d.launch_kernel);
  entry_point("cuFuncSetAttribute", &d.func_set_attribute);
  return d;
}

// Loaded on first use (after the runtime is initialized); a failure is retried on the next call.
const Driver& driver() {
  static const Driver d = load_driver();
  return d;
}

void check_cu(CUresult status, const std::string& call) {
  if (status == CUDA_SUCCESS) return;
  const char* name = nullptr;
  if (driver().get_error_name(status, &name) != CUDA_SUCCESS || name == nullptr) name = "unknown CUresult";
  throw std::runtime_error(call + " failed: " + name + " (" + std::to_string(static_cast<int>(status)) + ")");
}

}  // namespace

void require_driver_api() { (void)driver(); }

void UnloadModule::operator()(CUmodule m) const noexcept { (void)driver().module_unload(m); }

void load_module(Module* module, const void* image, const std::string& what) {
  check_cu(driver().module_load_data(module->out(), image), "cuModuleLoadData" + what);
}

CUfunction get_function(const Module& module, const std::string& name, const std::string& what) {
  CUfunction function = nullptr;
  check_cu(driver().module_get_function(&function, module.get(), name.c_str()), "cuModuleGetFunction" + what);
  return function;
}

void set_max_dynamic_shared_bytes(CUfunction function, int bytes, const std::string& what) {
  check_cu(driver().func_set_attribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes),
           "cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)" + what);
}

void launch_kernel(CUfunction function, const unsigned grid[3], unsigned block, unsigned shared_bytes,
                   CUstream stream, void** params, const char* kernel_name) {
  const CUresult status = driver().launch_kernel(function, grid[0], grid[1], grid[2], block, 1, 1, shared_bytes,
                                                 stream, params, nullptr);
  if (status != CUDA_SUCCESS) check_cu(status, std::string("cuLaunchKernel(") + kernel_name + ")");
}

}  // namespace engine::cuda
