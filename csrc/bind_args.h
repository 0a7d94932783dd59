// Argument checks and conversions shared by the bind_*.cpp files. Messages name the argument and say what it
// must be; TypeError / ValueError in Python.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace engine::bind {

namespace py = pybind11;

// Decimal text of v, for messages.
std::string num(int64_t v);

// The name of obj's type, e.g. "list".
std::string type_name(const py::handle& obj);

// A shape as Python writes it: "(3, 4)", "(5,)".
std::string shape_str(const py::array& a);

// A dtype as numpy writes it: "float64".
std::string dtype_str(const py::array& a);

// obj as a numpy.ndarray; TypeError naming `name` when it is not one.
py::array require_ndarray(const py::handle& obj, const char* name);

// C-contiguous and aligned: `a` itself when it already is, otherwise a copy.
py::array c_contiguous(const py::array& a);

// ValueError unless threads >= 0 (0 = all cores).
void check_threads(int threads);

// A float32 ndarray with `ndim` dimensions (`layout` names them for messages); C-contiguous, copied when not.
py::array float32_array(const py::handle& obj, const std::string& name, py::ssize_t ndim, const std::string& layout);

}  // namespace engine::bind
