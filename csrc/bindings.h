// The bindings of engine._C, one function per area; module.cpp calls them in this order.
#pragma once

#include <pybind11/pybind11.h>

namespace engine::bind {

// bind_pixels.cpp: to_planar, from_planar, to_planar_cuda, from_planar_cuda.
void bind_pixels(pybind11::module_& m);

// bind_tiles.cpp: axis_tiles, axis_weights, accumulate, blend_tiles, accumulate_cuda.
void bind_tiles(pybind11::module_& m);

// bind_plan.cpp: PlanError, read_plan, NativePlan.
void bind_plan(pybind11::module_& m);

}  // namespace engine::bind
