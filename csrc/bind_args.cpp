// Argument checks and conversions shared by the bind_*.cpp files (bind_args.h).
#include "bind_args.h"

#include <cstdint>
#include <string>

namespace engine::bind {

std::string num(int64_t v) { return std::to_string(v); }

std::string type_name(const py::handle& obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

py::array require_ndarray(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " + type_name(obj));
  }
  return py::reinterpret_borrow<py::array>(obj);
}

py::array c_contiguous(const py::array& a) {
  py::array out = py::array::ensure(a, py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_);
  if (!out) throw py::error_already_set();
  return out;
}

void check_threads(int threads) {
  if (threads < 0) throw py::value_error("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
}

py::array float32_array(const py::handle& obj, const std::string& name, py::ssize_t ndim, const std::string& layout) {
  py::array a = require_ndarray(obj, name.c_str());
  if (!py::isinstance<py::array_t<float>>(a)) {
    throw py::type_error(name + " must have dtype float32, got " + dtype_str(a));
  }
  if (a.ndim() != ndim) throw py::value_error(name + " must have shape " + layout + ", got " + shape_str(a));
  return c_contiguous(a);
}

}  // namespace engine::bind
