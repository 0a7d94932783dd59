// engine._C bindings of native plans: PlanError, read_plan (plan.cpp, host only) and the NativePlan class
// (plan_runtime.h: plan_runtime.cu and plan_upscale.cu, or cuda_stub.cpp without CUDA), including DLPack in
// and out of upscale_dlpack, and HostBufferPool (its output pool, buffer_pool.h, over host memory). Arguments are
// checked here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "bind_args.h"
#include "bindings.h"
#include "buffer_pool.h"
#include "dlpack.h"
#include "plan.h"
#include "plan_runtime.h"

namespace engine::bind {
namespace {

using engine::cuda::PlanRuntime;

// A file path: str or os.PathLike of str.
std::string path_arg(const py::handle& obj, const char* name) {
  py::object path;
  try {
    path = py::module_::import("os").attr("fspath")(obj);
  } catch (const py::error_already_set&) {
    path = py::none();
  }
  if (!py::isinstance<py::str>(path)) {
    throw py::type_error(std::string(name) + " must be a str or os.PathLike, got " + type_name(obj));
  }
  return path.cast<std::string>();
}

py::dict shape_dict(const engine::PlanShape& s) {
  py::dict d;
  d["n"] = s.n;
  d["c_in"] = s.c_in;
  d["h"] = s.h;
  d["w"] = s.w;
  d["c_out"] = s.c_out;
  d["h_out"] = s.h_out;
  d["w_out"] = s.w_out;
  d["arena_bytes"] = s.arena_bytes;
  d["input_off"] = s.input_off;
  d["output_off"] = s.output_off;
  d["launch_first"] = s.launch_first;
  d["launch_count"] = s.launch_count;
  return d;
}

py::list shapes_list(const std::vector<engine::PlanShape>& shapes) {
  py::list out;
  for (const engine::PlanShape& s : shapes) out.append(shape_dict(s));
  return out;
}

py::object arg_value(const engine::PlanArg& arg) {
  const auto low = static_cast<uint32_t>(arg.value & 0xffffffffu);
  switch (arg.kind) {
    case engine::ArgKind::arena:
    case engine::ArgKind::weights: return py::int_(arg.value);
    case engine::ArgKind::null: return py::int_(0);
    case engine::ArgKind::i32: return py::int_(static_cast<int32_t>(low));
    case engine::ArgKind::f32: {
      float f;
      std::memcpy(&f, &low, sizeof f);
      return py::float_(static_cast<double>(f));
    }
    case engine::ArgKind::alpha: break;
  }
  return py::float_(0.0);
}

py::bytes to_bytes(const std::vector<uint8_t>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

py::dict read_plan(const py::handle& path_obj, const py::object& arch, bool cubins) {
  const std::string path = path_arg(path_obj, "path");
  uint32_t expected = 0;
  if (!arch.is_none()) {
    if (!py::isinstance<py::int_>(arch) || py::isinstance<py::bool_>(arch)) {
      throw py::type_error("arch must be an int (e.g. 90 for sm_90) or None, got " + type_name(arch));
    }
    const auto a = arch.cast<int64_t>();
    if (a < 1 || a > 10000) throw py::value_error("arch must be an SM architecture like 90 (sm_90), got " + num(a));
    expected = static_cast<uint32_t>(a);
  }
  engine::Plan plan;
  {
    py::gil_scoped_release release;
    plan = engine::read_plan(path, expected);
  }
  py::dict d;
  d["path"] = plan.path;
  d["version"] = plan.version;
  d["arch"] = plan.arch;
  d["file_bytes"] = plan.file_bytes;
  d["meta"] = py::str(plan.meta);
  py::list kernels;
  for (const engine::PlanKernel& k : plan.kernels) {
    py::dict kd;
    kd["name"] = k.name;
    kd["num_warps"] = k.num_warps;
    kd["shared_bytes"] = k.shared_bytes;
    kd["params"] = py::cast(k.param_sizes);
    kd["cubin_bytes"] = k.cubin.size();
    if (cubins) kd["cubin"] = to_bytes(k.cubin);
    kernels.append(kd);
  }
  d["kernels"] = kernels;
  d["shapes"] = shapes_list(plan.shapes);
  py::list launches;
  for (const engine::PlanLaunch& l : plan.launches) {
    py::dict ld;
    ld["kernel"] = l.kernel;
    ld["grid"] = py::make_tuple(l.grid[0], l.grid[1], l.grid[2]);
    py::list args;
    for (const engine::PlanArg& a : l.args) args.append(py::make_tuple(static_cast<uint32_t>(a.kind), arg_value(a)));
    ld["args"] = args;
    launches.append(ld);
  }
  d["launches"] = launches;
  d["alpha"] = plan.has_alpha ? py::object(py::make_tuple(plan.alpha_first, plan.alpha_count)) : py::object(py::none());
  d["weights"] = to_bytes(plan.weights);
  return d;
}

std::string shape_tuple(int64_t a, int64_t b, int64_t c, int64_t d) {
  return "(" + num(a) + ", " + num(b) + ", " + num(c) + ", " + num(d) + ")";
}

std::string built_shapes(const PlanRuntime& rt) {
  std::string s;
  for (const engine::PlanShape& p : rt.shapes()) s += (s.empty() ? "" : ", ") + shape_tuple(p.n, p.c_in, p.h, p.w);
  return s;
}

size_t shape_index(const PlanRuntime& rt, int64_t shape) {
  const auto count = static_cast<int64_t>(rt.shapes().size());
  if (shape < 0 || shape >= count) {
    throw py::value_error("shape must be an index in 0.." + num(count - 1) + " of the built shapes " +
                          built_shapes(rt) + ", got " + num(shape));
  }
  return static_cast<size_t>(shape);
}

py::array plan_run(PlanRuntime& rt, const py::handle& x_obj) {
  py::array x = float32_array(x_obj, "x", 4, "(n, c_in, h, w)");
  const auto& shapes = rt.shapes();
  size_t index = shapes.size();
  for (size_t i = 0; i < shapes.size(); ++i) {
    const engine::PlanShape& p = shapes[i];
    if (x.shape(0) == p.n && x.shape(1) == p.c_in && x.shape(2) == p.h && x.shape(3) == p.w) {
      index = i;
      break;
    }
  }
  if (index == shapes.size()) {
    throw py::value_error("x has shape " + shape_str(x) + ", the plan was built for " + built_shapes(rt) +
                          ": pass one of these shapes, or rebuild the plan with this one");
  }
  const engine::PlanShape& p = shapes[index];
  py::array_t<float> y({p.n, p.c_out, p.h_out, p.w_out});
  const auto* in = static_cast<const float*>(x.data());
  float* out = y.mutable_data();
  {
    py::gil_scoped_release release;
    rt.run(in, out, index);
  }
  return y;
}

void plan_run_device(PlanRuntime& rt, uintptr_t x_ptr, uintptr_t y_ptr, int64_t shape, uintptr_t stream) {
  const size_t index = shape_index(rt, shape);
  if (x_ptr == 0 || y_ptr == 0) {
    throw py::value_error("x_ptr and y_ptr must be device pointers (tensor.data_ptr()), got 0");
  }
  py::gil_scoped_release release;
  rt.run_device(x_ptr, y_ptr, index, stream);
}

int64_t upscale_scale(const PlanRuntime& rt) {
  const int64_t s = rt.scale();
  if (s < 1) {
    const engine::PlanShape& p = rt.shapes()[0];
    throw py::value_error("the plan's shape 0 maps " + num(p.h) + " x " + num(p.w) + " to " + num(p.h_out) +
                          " x " + num(p.w_out) + ", not an integer upscale: upscale needs one");
  }
  return s;
}

py::array plan_upscale(PlanRuntime& rt, const py::handle& planes_obj, int64_t tile_overlap) {
  py::array planes = float32_array(planes_obj, "planes", 3, "(C, H, W)");
  const int64_t c = planes.shape(0), h = planes.shape(1), w = planes.shape(2);
  const int64_t s = upscale_scale(rt);
  rt.check_upscale(c, h, w, tile_overlap);  // std::invalid_argument -> ValueError
  const int64_t c_out = rt.shapes()[0].c_out;
  py::array_t<float> out({c_out, h * s, w * s});
  const auto* in = static_cast<const float*>(planes.data());
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    rt.upscale_host(in, c, h, w, tile_overlap, o);
  }
  return out;
}

// The output of upscale_dlpack: a DLManagedTensor over a buffer of the plan's output pool, which its deleter gives
// back (PooledBuffer holds the pool, so this works after the NativePlan is gone).
struct OutputTensor {
  DLManagedTensor managed{};
  int64_t shape[3] = {0, 0, 0};
  int64_t strides[3] = {0, 0, 0};
  engine::PooledBuffer buffer;
};

void output_tensor_deleter(DLManagedTensor* self) { delete static_cast<OutputTensor*>(self->manager_ctx); }

// An unconsumed "dltensor" capsule frees its tensor; a consumer renames it "used_dltensor" and owns it.
void dltensor_capsule_destructor(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, "dltensor")) return;
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
  if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
}

// Holds a consumed DLManagedTensor and calls its producer's deleter when done (with the GIL held).
struct ConsumedTensor {
  DLManagedTensor* managed = nullptr;
  ~ConsumedTensor() {
    if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
  }
};

std::string dims_str(const DLTensor& t) {
  std::string s = "(";
  for (int32_t i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + num(t.shape[i]);
  return s + (t.ndim == 1 ? ",)" : ")");
}

py::object plan_upscale_dlpack(PlanRuntime& rt, const py::object& image, int64_t tile_overlap, uintptr_t stream) {
  if (!py::hasattr(image, "__dlpack__")) {
    throw py::type_error("image must support DLPack (__dlpack__), e.g. a torch CUDA tensor, got " + type_name(image));
  }
  const int64_t s = upscale_scale(rt);
  if (py::hasattr(image, "__dlpack_device__")) {  // refuse before the producer exports anything
    const py::tuple dev = image.attr("__dlpack_device__")();
    const auto type = dev[0].cast<int64_t>(), id = dev[1].cast<int64_t>();
    if (type != kDLCUDA) {
      throw py::type_error("image must be a CUDA tensor (DLPack device type kDLCUDA = 2), got device type " +
                           num(type));
    }
    if (id != rt.device()) {
      throw py::value_error("image is on CUDA device " + num(id) + ", the plan on device " + num(rt.device()));
    }
  }
  py::object capsule = image.attr("__dlpack__")(py::arg("stream") = stream == 0 ? py::object(py::none())
                                                                                 : py::object(py::int_(stream)));
  if (!PyCapsule_IsValid(capsule.ptr(), "dltensor")) {
    throw py::type_error("image.__dlpack__() must return a \"dltensor\" PyCapsule, got " + type_name(capsule));
  }
  ConsumedTensor consumed;
  consumed.managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (consumed.managed == nullptr) throw py::error_already_set();
  if (PyCapsule_SetName(capsule.ptr(), "used_dltensor") != 0) {
    consumed.managed = nullptr;  // still the capsule's
    throw py::error_already_set();
  }
  const DLTensor& t = consumed.managed->dl_tensor;
  if (t.device.device_type != kDLCUDA) {
    throw py::type_error("image must be a CUDA tensor (DLPack device type kDLCUDA = 2), got device type " +
                         num(t.device.device_type));
  }
  if (t.device.device_id != rt.device()) {
    throw py::value_error("image is on CUDA device " + num(t.device.device_id) + ", the plan on device " +
                          num(rt.device()));
  }
  if (t.dtype.code != kDLFloat || t.dtype.bits != 32 || t.dtype.lanes != 1) {
    throw py::type_error("image must have dtype float32, got DLPack dtype (code " + num(t.dtype.code) + ", bits " +
                         num(t.dtype.bits) + ", lanes " + num(t.dtype.lanes) + ")");
  }
  if (t.ndim != 3) throw py::value_error("image must have shape (C, H, W), got " + dims_str(t));
  const int64_t c = t.shape[0], h = t.shape[1], w = t.shape[2];
  if (t.strides != nullptr) {
    const int64_t want[3] = {h * w, w, 1};
    for (int i = 0; i < 3; ++i) {
      if (t.shape[i] > 1 && t.strides[i] != want[i]) {
        throw py::value_error("image must be C-contiguous (use .contiguous()), got shape " + dims_str(t) +
                              " with strides (" + num(t.strides[0]) + ", " + num(t.strides[1]) + ", " +
                              num(t.strides[2]) + ")");
      }
    }
  }
  rt.check_upscale(c, h, w, tile_overlap);
  const uintptr_t src = reinterpret_cast<uintptr_t>(t.data) + t.byte_offset;
  if (src == 0 || src % 4 != 0) {
    throw py::value_error("image's data must be a 4-byte aligned device pointer, got " +
                          num(static_cast<int64_t>(src)));
  }
  auto owner = std::make_unique<OutputTensor>();
  owner->shape[0] = rt.shapes()[0].c_out;
  owner->shape[1] = h * s;
  owner->shape[2] = w * s;
  owner->strides[0] = owner->shape[1] * owner->shape[2];
  owner->strides[1] = owner->shape[2];
  owner->strides[2] = 1;
  {
    py::gil_scoped_release release;
    owner->buffer = rt.upscale_device(src, c, h, w, tile_overlap, stream);
  }
  DLManagedTensor& m = owner->managed;
  m.dl_tensor.data = owner->buffer.get();
  m.dl_tensor.device = {kDLCUDA, rt.device()};
  m.dl_tensor.ndim = 3;
  m.dl_tensor.dtype = {kDLFloat, 32, 1};
  m.dl_tensor.shape = owner->shape;
  m.dl_tensor.strides = owner->strides;
  m.dl_tensor.byte_offset = 0;
  m.manager_ctx = owner.get();
  m.deleter = output_tensor_deleter;
  PyObject* result = PyCapsule_New(&m, "dltensor", dltensor_capsule_destructor);
  if (result == nullptr) throw py::error_already_set();  // owner gives the buffer back
  owner.release();  // the capsule (or its consumer) owns it now
  return py::reinterpret_steal<py::object>(result);
}

py::dict plan_stats(const PlanRuntime& rt) {
  const engine::cuda::PlanStats st = rt.stats();
  py::dict last;
  last["tiles"] = st.last_upscale.tiles;
  last["batches"] = st.last_upscale.batches;
  last["graph_replays"] = st.last_upscale.graph_replays;
  last["seconds"] = st.last_upscale.seconds;
  py::dict d;
  d["graph_captures"] = st.graph_captures;
  d["graph_replays"] = st.graph_replays;
  d["output_allocations"] = st.output_allocations;
  d["output_reuses"] = st.output_reuses;
  d["last_upscale"] = last;
  return d;
}

// HostBufferPool: the pool of upscale_dlpack's outputs over host memory, so that it is tested on any machine.
std::atomic<int64_t> host_buffers_live{0};  // over every HostBufferPool of the process

std::shared_ptr<engine::BufferPool> host_buffer_pool(int64_t max_free, int64_t max_live) {
  if (max_free < 0) throw py::value_error("max_free must be >= 0, got " + num(max_free));
  if (max_live < -1) throw py::value_error("max_live must be -1 (no limit) or >= 0, got " + num(max_live));
  auto live = std::make_shared<std::atomic<int64_t>>(0);  // this pool's buffers not yet freed
  return engine::BufferPool::create(
      [live, max_live](uint64_t bytes) {
        if (max_live >= 0 && *live >= max_live) throw std::bad_alloc();
        void* p = std::malloc(bytes);
        if (p == nullptr) throw std::bad_alloc();
        ++*live;
        ++host_buffers_live;
        return p;
      },
      [live](void* p) {
        std::free(p);
        --*live;
        --host_buffers_live;
      },
      static_cast<size_t>(max_free));
}

py::dict pool_stats(const engine::BufferPool& pool) {
  const engine::BufferPoolStats st = pool.stats();
  py::dict d;
  d["allocations"] = st.allocations;
  d["reuses"] = st.reuses;
  d["frees"] = st.frees;
  d["free_buffers"] = st.free_buffers;
  return d;
}

void bind_buffer_pool(py::module_& m) {
  py::class_<engine::PooledBuffer>(m, "PooledBuffer", "A buffer of a HostBufferPool; goes back to it on release.")
      .def_property_readonly(
          "ptr", [](const engine::PooledBuffer& b) { return reinterpret_cast<uintptr_t>(b.get()); },
          "Its address (int), 0 once released.")
      .def_property_readonly("bytes", &engine::PooledBuffer::bytes, "Its size in bytes, 0 once released.")
      .def("release", &engine::PooledBuffer::release, py::call_guard<py::gil_scoped_release>(),
           "Gives it back to its pool (also done when it is garbage-collected); a no-op the second time.");

  py::class_<engine::BufferPool, std::shared_ptr<engine::BufferPool>>(m, "HostBufferPool",
                                                                      R"doc(The pool that keeps NativePlan.upscale_dlpack's
output buffers for reuse, over host memory (malloc / free), for tests on machines without a GPU.

HostBufferPool(max_free=2, max_live=-1): keeps at most max_free released buffers (releasing one more frees the
one released longest ago). max_live >= 0 makes an allocation fail (MemoryError) while that many of this pool's
buffers are allocated and not freed, like a full device. A buffer keeps its pool alive: released after the
pool object is gone, it is freed with the pool.)doc")
      .def(py::init(&host_buffer_pool), py::arg("max_free") = 2, py::arg("max_live") = -1)
      .def("acquire", &engine::BufferPool::acquire, py::arg("bytes"), py::call_guard<py::gil_scoped_release>(),
           R"doc(A PooledBuffer of exactly `bytes` (> 0): the most recently released free one of that size, else a
new one; when allocating fails, the free buffers are freed and it is tried once more. ValueError for 0,
MemoryError when no memory is left. The GIL is released (acquire and release, for the thread tests).)doc")
      .def("trim", &engine::BufferPool::trim, "Frees every free buffer; returns how many.")
      .def("stats", &pool_stats,
           "Counters: dict allocations, reuses (acquires served by a free buffer), frees (beyond max_free or to "
           "retry an allocation), free_buffers (held now).")
      .def_property_readonly("max_free", &engine::BufferPool::max_free, "Free buffers kept at most.")
      .def_static(
          "live_buffers", [] { return host_buffers_live.load(); },
          "Host buffers of every HostBufferPool of this process allocated and not yet freed.");
}

}  // namespace

void bind_plan(py::module_& m) {
  py::register_exception<engine::PlanError>(m, "PlanError", PyExc_ValueError);
  bind_buffer_pool(m);

  m.def("read_plan", &read_plan, py::arg("path"), py::arg("arch") = py::none(), py::arg("cubins") = false,
        R"doc(Reads and validates a native engine plan (format version 1, see kernels/plan.py) on the host, no GPU.

path: str or os.PathLike. arch: None, or the SM architecture the plan must be built for (e.g. 90); a plan
for another one is refused. cubins: include each kernel's cubin bytes. Returns a dict:
  path, version, arch, file_bytes, meta (str: the META JSON, unparsed)
  kernels: list of dicts name, num_warps, shared_bytes, params (list of parameter sizes, 4 or 8),
    cubin_bytes, and cubin (bytes) only with cubins=True
  shapes: list of dicts n, c_in, h, w, c_out, h_out, w_out, arena_bytes, input_off, output_off,
    launch_first, launch_count
  launches: list of dicts kernel (int), grid ((x, y, z)), args (list of (kind, value): kind 1 ARENA and
    2 WEIGHTS with the byte offset, 3 NULL with 0, 4 I32 with a signed int, 5 F32 with a float, 6 ALPHA
    with 0.0)
  alpha: (launch_first, launch_count) of the alpha program, or None
  weights: bytes, the weights buffer's initial contents
Every CRC-32, size, offset, alignment, index, range and argument kind is checked. Raises PlanError (a
ValueError) naming the file, the problem and the fix: missing, truncated, not a plan, another format version
or architecture, corrupted (CRC), inconsistent. The GIL is released while reading.)doc");

  py::class_<PlanRuntime>(m, "NativePlan", R"doc(A native engine plan loaded on one CUDA device: its Triton cubins
(driver API), one arena, the weights buffer, a compute stream and two copy streams, and a CUDA graph per built
shape.

NativePlan(path, device=0, cuda_graph=True): reads the plan for the device's architecture (PlanError for
another one, or an unusable file), loads every kernel, uploads the weights. cuda_graph: capture each shape's
launches once and replay the graph. Raises RuntimeError without CUDA ("built without CUDA"), without a
device, or on CUDA errors; ValueError for a device index out of range.
Calls are serialized (one at a time per plan) and release the GIL.)doc")
      .def(py::init([](const py::handle& path, int device, bool cuda_graph) {
             const std::string p = path_arg(path, "path");
             py::gil_scoped_release release;
             return std::make_unique<PlanRuntime>(p, device, cuda_graph);
           }),
           py::arg("path"), py::arg("device") = 0, py::arg("cuda_graph") = true)
      .def_property_readonly("device", &PlanRuntime::device, "The CUDA device index.")
      .def_property_readonly("arch", &PlanRuntime::arch, "SM architecture of the device and plan, e.g. 90.")
      .def_property_readonly("device_name", &PlanRuntime::device_name, "The device's name.")
      .def_property_readonly("meta", &PlanRuntime::meta, "The plan's META JSON (str).")
      .def_property_readonly(
          "shapes", [](const PlanRuntime& rt) { return shapes_list(rt.shapes()); },
          "The built shapes: list of dicts as in read_plan.")
      .def_property_readonly("arena_bytes", &PlanRuntime::arena_bytes,
                             "Bytes of the arena allocated: the largest over the shapes.")
      .def_property_readonly("weights_bytes", &PlanRuntime::weights_bytes, "Bytes of the weights buffer.")
      .def_property_readonly("has_alpha", &PlanRuntime::has_alpha, "True when the plan has an alpha program.")
      .def(
          "set_alpha",
          [](PlanRuntime& rt, float alpha) {
            py::gil_scoped_release release;
            return rt.set_alpha(alpha);
          },
          py::arg("alpha"),
          R"doc(Runs the alpha program: rewrites the live weights in place for alpha in [0, 1] (0 = the PSNR
endpoint, 1 = the GAN endpoint), waits for it and returns its wall-clock seconds. Pointers and captured graphs
stay valid. Raises ValueError without an alpha program or for alpha outside [0, 1].)doc")
      .def("run", &plan_run, py::arg("x"),
           R"doc(Runs the forward of a built shape on host data: x float32 (n, c_in, h, w) (a copy is made when not
C-contiguous) -> float32 (n, c_out, h_out, w_out). Blocking. Raises TypeError (not a float32 ndarray) or
ValueError (shape not built; the message lists the built shapes).)doc")
      .def("run_device", &plan_run_device, py::arg("x_ptr"), py::arg("y_ptr"), py::arg("shape") = 0,
           py::arg("stream") = 0,
           R"doc(Runs the forward of built shape index `shape` between device float32 NCHW buffers on the plan's
device (x_ptr: (n, c_in, h, w), y_ptr: (n, c_out, h_out, w_out), C-contiguous, as from tensor.data_ptr()),
ordered after and before the work on `stream` (a cudaStream_t as int, 0 = the legacy default stream).
Asynchronous. Raises ValueError (shape index, null pointers).)doc")
      .def("upscale", &plan_upscale, py::arg("planes"), py::arg("tile_overlap") = 32,
           R"doc(Tiled upscale of one image on the device with shape 0 (n, c_in, th, tw; scale s = h_out / h):
planes float32 (C = c_in, H, W) -> float32 (c_out, H * s, W * s). The image is padded to at least th x tw by
repeating its edge pixels, cut into tiles (axis_tiles with tile_overlap), run n tiles at a time and blended
with axis_weights (accumulate, in row-major tile order). The upload of later rows and the download of finished
output rows overlap the compute. Blocking. Raises TypeError / ValueError (dtype, shape, channels,
tile_overlap more than half a tile).)doc")
      .def("upscale_dlpack", &plan_upscale_dlpack, py::arg("image"), py::arg("tile_overlap") = 32,
           py::arg("stream") = 0,
           R"doc(upscale for an image already on the device: `image` is any DLPack producer (__dlpack__, e.g. a
torch CUDA tensor) of float32 (C, H, W), C-contiguous, on the plan's device. Returns a "dltensor" PyCapsule
owning a float32 (c_out, H * s, W * s) device tensor (torch.from_dlpack(capsule)). `stream`: the
caller's cudaStream_t as int (torch: current_stream().cuda_stream), 0 = the legacy default stream; the
input is read after the work queued there, and the output is ready for work queued there after the call.
Output buffers are pooled, not freed: when the tensor is dropped its buffer goes back to the plan (at most 2
are kept free; the pool outlives the plan while a tensor holds it), and a later call of the same output size
writes it, on its own `stream`, after the work queued there. Work that reads an output on another stream must
be complete, or that stream synchronized with `stream`, before the tensor is dropped (as torch's
Tensor.record_stream would ensure for its caching allocator). stats() counts output_allocations and
output_reuses.
Raises TypeError (no DLPack, not CUDA, not float32) or ValueError (device, shape, layout, tile_overlap).)doc")
      .def("stats", &plan_stats,
           R"doc(Counters: dict graph_captures, graph_replays (graph launches so far), output_allocations (output
buffers upscale_dlpack allocated), output_reuses (its calls served by a buffer given back earlier),
last_upscale (dict tiles, batches, graph_replays, seconds: of the last upscale / upscale_dlpack; seconds is
the call's wall-clock time, which for upscale_dlpack ends once the work is queued).)doc");
}

}  // namespace engine::bind
