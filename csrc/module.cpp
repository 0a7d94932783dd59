// engine._C: the module. The bindings of each area live in bind_*.cpp (bindings.h); here only what belongs to
// the module as a whole: its docstring and how it was built.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "cuda_pixels.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "Compiled core of engine: pixel layout conversions and tile blending on the host (threads) and on CUDA "
      "devices; native engine plans (read_plan, NativePlan: Triton cubins, one arena, CUDA graphs).";

  m.def(
      "built_with_cuda",
      [] {
#ifdef ENGINE_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when the CUDA sources were compiled in.");
  m.def("cuda_archs", &engine::cuda::compiled_archs,
        "SM architectures compiled in, e.g. [80, 90] (SASS for each, PTX for the highest); [] without CUDA.");
  m.def(
      "cuda_device_count",
      [] {
        py::gil_scoped_release release;
        return engine::cuda::device_count();
      },
      "Visible CUDA devices; 0 without CUDA, without a driver or without a device.");

  engine::bind::bind_pixels(m);
  engine::bind::bind_tiles(m);
  engine::bind::bind_plan(m);
}
