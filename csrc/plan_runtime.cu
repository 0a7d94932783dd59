// The CUDA runtime of native plans (plan_runtime.h). The cubins are loaded and launched with the driver API,
// whose entry points come from the (static) runtime's cudaGetDriverEntryPointByVersion, as Triton's launcher
// does: engine._C links no libcuda, so it still imports on machines without a driver. <cuda.h> is included for
// the driver's types only.
//
// Streams: `compute` runs every kernel (the plan's launches, gathers, blending) and the arena's copies;
// `upload` and `download` carry the host <-> device copies of a host-source upscale, ordered with the compute
// stream through events. Every host staging buffer (pinned) is rewritten only after the copies that read or
// write it are known to be complete (an event or stream synchronization first). Every public method holds the
// runtime's mutex and makes the plan's device current for its duration.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cuda_check.h"
#include "cuda_tiles.h"
#include "plan.h"
#include "plan_runtime.h"
#include "tiles.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the plan runtime passes 4-byte kernel parameters in the low half of 8-byte slots: little-endian only"
#endif

namespace engine::cuda {
namespace {

// --- driver API, through the runtime's entry points ---------------------------------------------------------

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

// --- RAII handles -------------------------------------------------------------------------------------------

template <typename T, typename Destroy>
class Handle {
 public:
  Handle() = default;
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept : h_(std::exchange(other.h_, T{})) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      h_ = std::exchange(other.h_, T{});
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  T get() const { return h_; }
  explicit operator bool() const { return h_ != T{}; }
  // For a creating call: frees the current handle and returns where to put the new one.
  T* out() {
    reset();
    return &h_;
  }
  T release() { return std::exchange(h_, T{}); }
  void reset() noexcept {
    if (h_ != T{}) Destroy{}(h_);
    h_ = T{};
  }

 private:
  T h_{};
};

struct DestroyStream {
  void operator()(cudaStream_t s) const noexcept { (void)cudaStreamDestroy(s); }
};
struct DestroyEvent {
  void operator()(cudaEvent_t e) const noexcept { (void)cudaEventDestroy(e); }
};
struct DestroyGraph {
  void operator()(cudaGraph_t g) const noexcept { (void)cudaGraphDestroy(g); }
};
struct DestroyGraphExec {
  void operator()(cudaGraphExec_t g) const noexcept { (void)cudaGraphExecDestroy(g); }
};
struct FreeDevice {
  void operator()(void* p) const noexcept { (void)cudaFree(p); }
};
struct FreeHost {
  void operator()(void* p) const noexcept { (void)cudaFreeHost(p); }
};
struct UnloadModule {
  void operator()(CUmodule m) const noexcept { (void)driver().module_unload(m); }
};

using Stream = Handle<cudaStream_t, DestroyStream>;
using Event = Handle<cudaEvent_t, DestroyEvent>;
using Graph = Handle<cudaGraph_t, DestroyGraph>;
using GraphExec = Handle<cudaGraphExec_t, DestroyGraphExec>;
using Module = Handle<CUmodule, UnloadModule>;
using DevicePtr = Handle<void*, FreeDevice>;
using HostPtr = Handle<void*, FreeHost>;

std::string mib(uint64_t bytes) { return std::to_string(bytes) + " bytes"; }

void device_alloc(DevicePtr* p, uint64_t bytes, const char* what) {
  p->reset();
  if (bytes == 0) return;
  check(cudaMalloc(p->out(), bytes), ("cudaMalloc(" + std::string(what) + ", " + mib(bytes) + ")").c_str());
}

void host_alloc(HostPtr* p, uint64_t bytes, const char* what) {
  p->reset();
  if (bytes == 0) return;
  check(cudaHostAlloc(p->out(), bytes, cudaHostAllocDefault),
        ("cudaHostAlloc(" + std::string(what) + ", " + mib(bytes) + ")").c_str());
}

void create_stream(Stream* s) { ENGINE_CUDA_CHECK(cudaStreamCreateWithFlags(s->out(), cudaStreamNonBlocking)); }
void create_event(Event* e) { ENGINE_CUDA_CHECK(cudaEventCreateWithFlags(e->out(), cudaEventDisableTiming)); }

// Makes `device` current (its primary context, which the driver calls use) and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    ENGINE_CUDA_CHECK(cudaGetDevice(&previous_));
    ENGINE_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    if (previous_ >= 0) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

char* at(void* base, uint64_t offset) { return static_cast<char*>(base) + offset; }

// --- kernels ------------------------------------------------------------------------------------------------

// Gathers the tiles first .. first + valid - 1 (row-major over the ys x xs grid) of the planes src (channels,
// height, width) into dst (slots, channels, th, tw), reading outside the image at the nearest edge pixel
// (replicate padding); slots valid .. slots - 1 are zero-filled.
__global__ void gather_tiles_kernel(float* __restrict__ dst, const float* __restrict__ src,
                                    const int64_t* __restrict__ ys, const int64_t* __restrict__ xs, int64_t nx,
                                    int64_t first, int64_t valid, int64_t elements, int64_t channels,
                                    int64_t height, int64_t width, int64_t th, int64_t tw) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t plane = th * tw, tile = channels * plane;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < elements; i += stride) {
    const int64_t k = i / tile;
    if (k >= valid) {
      dst[i] = 0.0f;
      continue;
    }
    const int64_t r = i - k * tile;
    const int64_t c = r / plane, p = r - c * plane;
    const int64_t y = p / tw, x = p - y * tw;
    const int64_t t = first + k, row = t / nx, col = t - row * nx;
    const int64_t ty = ys[row] + y, tx = xs[col] + x;
    const int64_t sy = ty < height ? ty : height - 1, sx = tx < width ? tx : width - 1;
    dst[i] = src[(c * height + sy) * width + sx];
  }
}

// --- tiling of one upscale ----------------------------------------------------------------------------------

constexpr uint64_t kAlign = 256;
uint64_t align_up(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

struct Tiling {
  int64_t channels = 0, height = 0, width = 0;  // the source
  int64_t th = 0, tw = 0, n = 0, scale = 0, c_out = 0;
  int64_t canvas_h = 0, canvas_w = 0;  // the padded source: max(height, th) x max(width, tw)
  std::vector<int64_t> ys, xs;         // tile starts
  std::vector<float> wy, wx;           // (ny, th * scale), (nx, tw * scale)
  // Layout of the device tables: ys, xs (int64), wy, wx (float32), each 256-byte aligned.
  uint64_t ys_off = 0, xs_off = 0, wy_off = 0, wx_off = 0, table_bytes = 0;

  int64_t ny() const { return static_cast<int64_t>(ys.size()); }
  int64_t nx() const { return static_cast<int64_t>(xs.size()); }
  int64_t tiles() const { return ny() * nx(); }
  int64_t out_h() const { return height * scale; }
  int64_t out_w() const { return width * scale; }
  uint64_t out_bytes() const { return static_cast<uint64_t>(c_out * out_h() * out_w()) * 4; }
  uint64_t canvas_bytes() const {
    return static_cast<uint64_t>(c_out * canvas_h * scale * canvas_w * scale) * 4;
  }
  uint64_t source_bytes() const { return static_cast<uint64_t>(channels * height * width) * 4; }
};

std::string n2s(int64_t v) { return std::to_string(v); }

std::vector<int64_t> plan_axis(int64_t length, int64_t tile, int64_t overlap, const char* axis) {
  if (length > tile && 2 * overlap > tile) {
    throw std::invalid_argument("tile_overlap must be at most half the tile size, got overlap " + n2s(overlap) +
                                " with tile " + axis + " " + n2s(tile) + " (image " + axis + " " + n2s(length) +
                                " needs more than one tile)");
  }
  std::vector<int64_t> starts = engine::axis_tiles(length, tile, overlap);
  const std::string why = engine::check_axis_starts(length, starts, tile);
  if (!why.empty()) throw std::invalid_argument("tiles along the " + std::string(axis) + ": " + why);
  return starts;
}

int64_t scale_of(const PlanShape& s) {
  if (s.h_out % s.h != 0 || s.w_out % s.w != 0) return 0;
  const int64_t sy = s.h_out / s.h, sx = s.w_out / s.w;
  return sy == sx ? sy : 0;
}

Tiling plan_tiling(const PlanShape& shape, int64_t channels, int64_t height, int64_t width, int64_t overlap) {
  Tiling t;
  t.scale = scale_of(shape);
  if (t.scale < 1) {
    throw std::invalid_argument("the plan's shape 0 maps (" + n2s(shape.h) + ", " + n2s(shape.w) + ") to (" +
                                n2s(shape.h_out) + ", " + n2s(shape.w_out) +
                                "), not an integer upscale: upscale needs one");
  }
  if (channels != shape.c_in) {
    throw std::invalid_argument("planes must have " + n2s(shape.c_in) + " channels (the plan's c_in), got " +
                                n2s(channels));
  }
  if (height < 1 || width < 1) {
    throw std::invalid_argument("planes must be at least 1 x 1 pixels, got " + n2s(height) + " x " + n2s(width));
  }
  if (overlap < 0) throw std::invalid_argument("tile_overlap must be >= 0, got " + n2s(overlap));
  t.channels = channels;
  t.height = height;
  t.width = width;
  t.th = shape.h;
  t.tw = shape.w;
  t.n = shape.n;
  t.c_out = shape.c_out;
  t.canvas_h = std::max(height, t.th);
  t.canvas_w = std::max(width, t.tw);
  // At most 2^40 elements in the output canvas (and so in the source).
  constexpr int64_t kMost = int64_t{1} << 40;
  if (t.canvas_h > kMost / t.scale || t.canvas_w > kMost / t.scale ||
      t.canvas_h * t.scale > kMost / (t.canvas_w * t.scale) / t.c_out || height * width > kMost / channels) {
    throw std::invalid_argument("planes of " + n2s(height) + " x " + n2s(width) + " pixels are too large: the " +
                                n2s(t.c_out) + "-channel output at scale " + n2s(t.scale) +
                                " (or the input) would exceed 2**40 elements");
  }
  t.ys = plan_axis(t.canvas_h, t.th, overlap, "height");
  t.xs = plan_axis(t.canvas_w, t.tw, overlap, "width");
  t.wy.resize(static_cast<size_t>(t.ny() * t.th * t.scale));
  t.wx.resize(static_cast<size_t>(t.nx() * t.tw * t.scale));
  engine::axis_weights(t.canvas_h, t.ys, t.th, t.scale, t.wy.data());
  engine::axis_weights(t.canvas_w, t.xs, t.tw, t.scale, t.wx.data());
  t.ys_off = 0;
  t.xs_off = align_up(t.ys_off + t.ys.size() * sizeof(int64_t));
  t.wy_off = align_up(t.xs_off + t.xs.size() * sizeof(int64_t));
  t.wx_off = align_up(t.wy_off + t.wy.size() * sizeof(float));
  t.table_bytes = align_up(t.wx_off + t.wx.size() * sizeof(float));
  return t;
}

}  // namespace

// --- the runtime --------------------------------------------------------------------------------------------

struct PlanRuntime::Impl {
  // One precomputed launch: cuLaunchKernel's arguments, with the parameter values in `storage` (one 8-byte slot
  // per parameter; 4-byte values in the low half) and `params` pointing at the slots.
  struct Launch {
    CUfunction function = nullptr;
    const char* kernel_name = nullptr;
    unsigned grid[3] = {1, 1, 1};
    unsigned block = 32;
    unsigned shared_bytes = 0;
    std::vector<uint64_t> storage;
    std::vector<void*> params;
    std::vector<size_t> alpha_slots;  // the ALPHA parameters
  };

  int device = 0;
  bool graphs_on = true;
  uint64_t weights_size = 0;
  int arch = 0;
  std::string name;
  Plan plan;  // without the cubins and weights once they are on the device

  // Declaration order = reverse destruction order: graphs go first, modules last.
  std::vector<Module> modules;
  DevicePtr arena, weights;
  Stream compute, upload, download;
  Event caller_ready, compute_done, canvas_ready, run_input_free, tables_free;
  std::vector<Event> band_ready;
  std::vector<Launch> launches;
  std::vector<GraphExec> graphs;  // per shape

  HostPtr run_in, run_out;  // run(): the largest input and output, allocated on first use

  // upscale buffers, grown on demand
  DevicePtr source, canvas, tables;
  uint64_t source_cap = 0, canvas_cap = 0, tables_cap = 0;
  HostPtr source_pinned, out_pinned, tables_pinned;
  uint64_t source_pinned_cap = 0, out_pinned_cap = 0, tables_pinned_cap = 0;

  PlanStats stats;
  mutable std::mutex mutex;

  Impl(const std::string& path, int dev, bool cuda_graph) : device(dev), graphs_on(cuda_graph) {
    require_device("native plans (engine._C.NativePlan)");
    int count = 0;
    ENGINE_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (device < 0 || device >= count) {
      throw std::invalid_argument("device must be in 0.." + n2s(count - 1) + " (" + n2s(count) +
                                  " visible CUDA devices), got " + n2s(device));
    }
    DeviceGuard guard(device);
    try {
      load(path);
    } catch (...) {
      release();  // with the device still current
      throw;
    }
  }

  void load(const std::string& path) {
    ENGINE_CUDA_CHECK(cudaFree(nullptr));  // initialize the primary context, current for the driver calls
    cudaDeviceProp prop{};
    ENGINE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    arch = prop.major * 10 + prop.minor;
    name = prop.name;
    plan = read_plan(path, static_cast<uint32_t>(arch), name);
    int shared_optin = 0;
    ENGINE_CUDA_CHECK(cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));

    const Driver& drv = driver();
    std::vector<CUfunction> functions(plan.kernels.size());
    modules.resize(plan.kernels.size());
    for (size_t k = 0; k < plan.kernels.size(); ++k) {
      const PlanKernel& kernel = plan.kernels[k];
      const std::string what = "(kernel " + n2s(static_cast<int64_t>(k)) + ", " + kernel.name + ")";
      if (kernel.shared_bytes > static_cast<uint32_t>(shared_optin)) {
        throw PlanError(path + ": kernel " + n2s(static_cast<int64_t>(k)) + " (" + kernel.name + ") needs " +
                        n2s(kernel.shared_bytes) + " bytes of shared memory per block, this GPU (" + name +
                        ") allows " + n2s(shared_optin) +
                        ": rebuild the plan on this GPU (python -m engine.build --backend native ...)");
      }
      if (kernel.cubin.empty()) {
        throw PlanError(path + ": kernel " + n2s(static_cast<int64_t>(k)) + " (" + kernel.name +
                        ") has no cubin (a format-only plan, built without compiling its kernels): rebuild the plan "
                        "with python -m engine.build --backend native ...");
      }
      check_cu(drv.module_load_data(modules[k].out(), kernel.cubin.data()), "cuModuleLoadData" + what);
      check_cu(drv.module_get_function(&functions[k], modules[k].get(), kernel.name.c_str()),
               "cuModuleGetFunction" + what);
      if (kernel.shared_bytes > 48 * 1024) {
        check_cu(drv.func_set_attribute(functions[k], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                        static_cast<int>(kernel.shared_bytes)),
                 "cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)" + what);
      }
    }

    device_alloc(&arena, plan.max_arena_bytes(), "arena");
    weights_size = plan.weights.size();
    device_alloc(&weights, weights_size, "weights");
    create_stream(&compute);
    create_stream(&upload);
    create_stream(&download);
    for (Event* e : {&caller_ready, &compute_done, &canvas_ready, &run_input_free, &tables_free}) create_event(e);
    ENGINE_CUDA_CHECK(cudaMemsetAsync(arena.get(), 0, plan.max_arena_bytes(), compute.get()));
    if (!plan.weights.empty()) {
      ENGINE_CUDA_CHECK(cudaMemcpyAsync(weights.get(), plan.weights.data(), plan.weights.size(),
                                        cudaMemcpyHostToDevice, compute.get()));
    }

    const auto arena_base = reinterpret_cast<uint64_t>(arena.get());
    const auto weights_base = reinterpret_cast<uint64_t>(weights.get());
    launches.resize(plan.launches.size());
    for (size_t l = 0; l < plan.launches.size(); ++l) {
      const PlanLaunch& src = plan.launches[l];
      const PlanKernel& kernel = plan.kernels[src.kernel];
      Launch& dst = launches[l];
      dst.function = functions[src.kernel];
      dst.kernel_name = kernel.name.c_str();  // plan.kernels is not modified again
      for (int d = 0; d < 3; ++d) dst.grid[d] = src.grid[d];
      dst.block = 32 * kernel.num_warps;
      dst.shared_bytes = kernel.shared_bytes;
      dst.storage.assign(src.args.size(), 0);
      dst.params.resize(src.args.size());
      for (size_t a = 0; a < src.args.size(); ++a) {
        const PlanArg& arg = src.args[a];
        switch (arg.kind) {
          case ArgKind::arena: dst.storage[a] = arena_base + arg.value; break;
          case ArgKind::weights: dst.storage[a] = weights_base + arg.value; break;
          case ArgKind::null: dst.storage[a] = 0; break;
          case ArgKind::i32:
          case ArgKind::f32: dst.storage[a] = arg.value & 0xffffffffu; break;
          case ArgKind::alpha: dst.alpha_slots.push_back(a); break;
        }
        dst.params[a] = &dst.storage[a];
      }
    }
    graphs.resize(plan.shapes.size());
    ENGINE_CUDA_CHECK(cudaStreamSynchronize(compute.get()));  // the weights are up: the host copy can go
    for (PlanKernel& kernel : plan.kernels) std::vector<uint8_t>().swap(kernel.cubin);
    std::vector<uint8_t>().swap(plan.weights);
  }

  ~Impl() {
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    (void)cudaSetDevice(device);
    release();
    if (previous >= 0) (void)cudaSetDevice(previous);
  }

  // Frees everything, on the current device, after the queued work; never throws.
  void release() noexcept {
    for (const Stream* s : {&compute, &upload, &download}) {
      if (*s) (void)cudaStreamSynchronize(s->get());
    }
    graphs.clear();
    launches.clear();
    band_ready.clear();
    for (Event* e : {&caller_ready, &compute_done, &canvas_ready, &run_input_free, &tables_free}) e->reset();
    for (Stream* s : {&compute, &upload, &download}) s->reset();
    for (DevicePtr* p : {&arena, &weights, &source, &canvas, &tables}) p->reset();
    for (HostPtr* p : {&run_in, &run_out, &source_pinned, &out_pinned, &tables_pinned}) p->reset();
    modules.clear();
    (void)cudaGetLastError();
  }

  const PlanShape& shape_at(size_t s) const {
    if (s >= plan.shapes.size()) {
      throw std::invalid_argument("shape index must be in 0.." + n2s(static_cast<int64_t>(plan.shapes.size()) - 1) +
                                  ", got " + n2s(static_cast<int64_t>(s)));
    }
    return plan.shapes[s];
  }

  void launch(const Launch& l) {
    check_cu(driver().launch_kernel(l.function, l.grid[0], l.grid[1], l.grid[2], l.block, 1, 1, l.shared_bytes,
                                    compute.get(), l.params.empty() ? nullptr : const_cast<void**>(l.params.data()),
                                    nullptr),
             std::string("cuLaunchKernel(") + l.kernel_name + ")");
  }

  void enqueue(const PlanShape& s) {
    for (uint64_t l = s.launch_first; l < s.launch_first + s.launch_count; ++l) launch(launches[l]);
  }

  // Records shape s's launches on the compute stream into a graph (nothing runs) and instantiates it.
  void capture(size_t s) {
    ENGINE_CUDA_CHECK(cudaStreamBeginCapture(compute.get(), cudaStreamCaptureModeThreadLocal));
    try {
      enqueue(plan.shapes[s]);
    } catch (...) {
      cudaGraph_t broken = nullptr;
      (void)cudaStreamEndCapture(compute.get(), &broken);  // ends the capture: the stream is usable again
      if (broken != nullptr) (void)cudaGraphDestroy(broken);
      (void)cudaGetLastError();
      throw;
    }
    Graph graph;
    ENGINE_CUDA_CHECK(cudaStreamEndCapture(compute.get(), graph.out()));
    ENGINE_CUDA_CHECK(cudaGraphInstantiate(graphs[s].out(), graph.get(), 0));
    ++stats.graph_captures;
  }

  void forward(size_t s) {
    const PlanShape& shape = shape_at(s);
    if (!graphs_on || shape.launch_count == 0) return enqueue(shape);
    if (!graphs[s]) capture(s);
    ENGINE_CUDA_CHECK(cudaGraphLaunch(graphs[s].get(), compute.get()));
    ++stats.graph_replays;
  }

  // Grows a device buffer to at least `bytes` (contents lost). Waits for every stream first: the old buffer
  // may still be in use.
  void grow(DevicePtr* p, uint64_t* cap, uint64_t bytes, const char* what) {
    if (bytes <= *cap && *p) return;
    sync_all();
    *cap = 0;
    device_alloc(p, std::max<uint64_t>(bytes, 1), what);
    *cap = std::max<uint64_t>(bytes, 1);
  }

  void grow(HostPtr* p, uint64_t* cap, uint64_t bytes, const char* what) {
    if (bytes <= *cap && *p) return;
    sync_all();
    *cap = 0;
    host_alloc(p, std::max<uint64_t>(bytes, 1), what);
    *cap = std::max<uint64_t>(bytes, 1);
  }

  void sync_all() {
    for (const Stream* s : {&compute, &upload, &download}) ENGINE_CUDA_CHECK(cudaStreamSynchronize(s->get()));
  }

  // caller stream -> compute stream
  void after_caller(uintptr_t stream) {
    ENGINE_CUDA_CHECK(cudaEventRecord(caller_ready.get(), reinterpret_cast<cudaStream_t>(stream)));
    ENGINE_CUDA_CHECK(cudaStreamWaitEvent(compute.get(), caller_ready.get(), 0));
  }

  // compute stream -> caller stream
  void before_caller(uintptr_t stream) {
    ENGINE_CUDA_CHECK(cudaEventRecord(compute_done.get(), compute.get()));
    ENGINE_CUDA_CHECK(cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream), compute_done.get(), 0));
  }

  double set_alpha(float alpha) {
    const auto t0 = std::chrono::steady_clock::now();
    uint32_t bits = 0;
    std::memcpy(&bits, &alpha, sizeof bits);
    for (uint64_t l = plan.alpha_first; l < plan.alpha_first + plan.alpha_count; ++l) {
      Launch& launch_l = launches[l];
      for (size_t slot : launch_l.alpha_slots) launch_l.storage[slot] = bits;
      launch(launch_l);  // cuLaunchKernel copies the parameter values now
    }
    ENGINE_CUDA_CHECK(cudaStreamSynchronize(compute.get()));
    return seconds_since(t0);
  }

  void run(const float* host_in, float* host_out, size_t s) {
    const PlanShape& shape = shape_at(s);
    if (!run_in) {
      uint64_t in_most = 0, out_most = 0;
      for (const PlanShape& p : plan.shapes) {
        in_most = std::max(in_most, p.input_bytes());
        out_most = std::max(out_most, p.output_bytes());
      }
      host_alloc(&run_out, out_most, "run output staging");
      host_alloc(&run_in, in_most, "run input staging");
    }
    // The previous upload from run_in (even one of a call that failed) has finished before it is rewritten.
    ENGINE_CUDA_CHECK(cudaEventSynchronize(run_input_free.get()));
    std::memcpy(run_in.get(), host_in, shape.input_bytes());
    ENGINE_CUDA_CHECK(cudaMemcpyAsync(at(arena.get(), shape.input_off), run_in.get(), shape.input_bytes(),
                                      cudaMemcpyHostToDevice, compute.get()));
    ENGINE_CUDA_CHECK(cudaEventRecord(run_input_free.get(), compute.get()));
    forward(s);
    ENGINE_CUDA_CHECK(cudaMemcpyAsync(run_out.get(), at(arena.get(), shape.output_off), shape.output_bytes(),
                                      cudaMemcpyDeviceToHost, compute.get()));
    ENGINE_CUDA_CHECK(cudaStreamSynchronize(compute.get()));
    std::memcpy(host_out, run_out.get(), shape.output_bytes());
  }

  void run_device(uintptr_t in, uintptr_t out, size_t s, uintptr_t stream) {
    const PlanShape& shape = shape_at(s);
    after_caller(stream);
    ENGINE_CUDA_CHECK(cudaMemcpyAsync(at(arena.get(), shape.input_off), reinterpret_cast<const void*>(in),
                                      shape.input_bytes(), cudaMemcpyDeviceToDevice, compute.get()));
    forward(s);
    ENGINE_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(out), at(arena.get(), shape.output_off),
                                      shape.output_bytes(), cudaMemcpyDeviceToDevice, compute.get()));
    before_caller(stream);
  }

  // Uploads ys, xs, wy, wx to `tables` through pinned memory, on the compute stream.
  void upload_tables(const Tiling& t) {
    grow(&tables, &tables_cap, t.table_bytes, "upscale tables");
    grow(&tables_pinned, &tables_pinned_cap, t.table_bytes, "upscale tables staging");
    // The previous call's copy out of tables_pinned has finished before it is rewritten.
    ENGINE_CUDA_CHECK(cudaEventSynchronize(tables_free.get()));
    char* h = static_cast<char*>(tables_pinned.get());
    std::memcpy(h + t.ys_off, t.ys.data(), t.ys.size() * sizeof(int64_t));
    std::memcpy(h + t.xs_off, t.xs.data(), t.xs.size() * sizeof(int64_t));
    std::memcpy(h + t.wy_off, t.wy.data(), t.wy.size() * sizeof(float));
    std::memcpy(h + t.wx_off, t.wx.data(), t.wx.size() * sizeof(float));
    ENGINE_CUDA_CHECK(
        cudaMemcpyAsync(tables.get(), h, t.table_bytes, cudaMemcpyHostToDevice, compute.get()));
    ENGINE_CUDA_CHECK(cudaEventRecord(tables_free.get(), compute.get()));
  }

  // The tiles of one upscale, in batches of shape 0's n, on the compute stream: gather from `src` (device
  // planes), forward(0), blend into `canv` (zeroed by the caller). before(last_row) runs before a batch whose
  // tiles reach tile row last_row is enqueued; after(done) once a batch is enqueued, with the number of tiles
  // enqueued so far.
  template <typename Before, typename After>
  void tile_loop(const Tiling& t, const float* src, float* canv, Before before, After after, int64_t* batches) {
    const PlanShape& shape = plan.shapes[0];
    const auto* base = static_cast<const char*>(tables.get());
    const auto* ys = reinterpret_cast<const int64_t*>(base + t.ys_off);
    const auto* xs = reinterpret_cast<const int64_t*>(base + t.xs_off);
    const auto wy = reinterpret_cast<uintptr_t>(base + t.wy_off);
    const auto wx = reinterpret_cast<uintptr_t>(base + t.wx_off);
    auto* input = reinterpret_cast<float*>(at(arena.get(), shape.input_off));
    const auto output = reinterpret_cast<uintptr_t>(at(arena.get(), shape.output_off));
    const int64_t out_th = t.th * t.scale, out_tw = t.tw * t.scale;
    const int64_t out_tile_bytes = t.c_out * out_th * out_tw * 4;
    const int64_t dst_h = t.canvas_h * t.scale, dst_w = t.canvas_w * t.scale;
    const int64_t elements = t.n * t.channels * t.th * t.tw;
    const int64_t nx = t.nx(), tiles = t.tiles();
    for (int64_t first = 0; first < tiles; first += t.n) {
      const int64_t valid = std::min(t.n, tiles - first);
      before((first + valid - 1) / nx);
      gather_tiles_kernel<<<grid_for(elements), kBlock, 0, compute.get()>>>(
          input, src, ys, xs, nx, first, valid, elements, t.channels, t.height, t.width, t.th, t.tw);
      ENGINE_CUDA_CHECK(cudaGetLastError());
      forward(0);
      for (int64_t k = 0; k < valid; ++k) {
        const int64_t tile = first + k, row = tile / nx, col = tile - row * nx;
        const uint64_t src_tile = output + static_cast<uint64_t>(k * out_tile_bytes);
        const uint64_t wy_row = wy + static_cast<uint64_t>(row * out_th) * 4;
        const uint64_t wx_row = wx + static_cast<uint64_t>(col * out_tw) * 4;
        engine::cuda::accumulate(reinterpret_cast<uintptr_t>(canv), src_tile, wy_row, wx_row, t.c_out, dst_h, dst_w,
                                 out_th, out_tw, t.ys[row] * t.scale, t.xs[col] * t.scale,
                                 reinterpret_cast<uintptr_t>(compute.get()));
      }
      ++*batches;
      after(first + valid);
    }
  }

  void record_upscale(const Tiling& t, int64_t batches, int64_t replays_before,
                      std::chrono::steady_clock::time_point t0) {
    stats.last_upscale.tiles = t.tiles();
    stats.last_upscale.batches = batches;
    stats.last_upscale.graph_replays = stats.graph_replays - replays_before;
    stats.last_upscale.seconds = seconds_since(t0);
  }

  void upscale_host(const Tiling& t, const float* planes, float* out) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t replays_before = stats.graph_replays;
    // Nothing queued earlier (a call that failed included) still reads or writes the buffers used below.
    sync_all();
    grow(&source, &source_cap, t.source_bytes(), "upscale source");
    grow(&canvas, &canvas_cap, t.canvas_bytes(), "upscale canvas");
    grow(&source_pinned, &source_pinned_cap, t.source_bytes(), "upscale source staging");
    grow(&out_pinned, &out_pinned_cap, t.out_bytes(), "upscale output staging");
    upload_tables(t);
    while (static_cast<int64_t>(band_ready.size()) < t.ny()) {
      band_ready.emplace_back();
      create_event(&band_ready.back());
    }
    ENGINE_CUDA_CHECK(cudaMemsetAsync(canvas.get(), 0, t.canvas_bytes(), compute.get()));

    const int64_t H = t.height, W = t.width, s = t.scale, nx = t.nx(), ny = t.ny(), tiles = t.tiles();
    const int64_t out_h = t.out_h(), out_w = t.out_w(), canvas_h = t.canvas_h * s, canvas_w = t.canvas_w * s;
    auto* pinned_src = static_cast<float*>(source_pinned.get());
    auto* dev_src = static_cast<float*>(source.get());
    auto* canv = static_cast<float*>(canvas.get());
    auto* pinned_out = static_cast<float*>(out_pinned.get());

    // Band i: the source rows that tile row i needs beyond those of bands 0 .. i - 1. Each region of the pinned
    // source buffer is written once per call (host memcpy, then its upload), so no upload can still read it.
    const auto band_end = [&](int64_t i) { return std::min(t.ys[i] + t.th, H); };
    int64_t staged = 0, waited = 0;
    const auto stage_through = [&](int64_t row) {  // host -> pinned -> device (upload stream), bands ..row
      for (; staged <= row; ++staged) {
        const int64_t r0 = staged == 0 ? 0 : band_end(staged - 1), r1 = band_end(staged);
        if (r1 > r0) {
          const uint64_t bytes = static_cast<uint64_t>((r1 - r0) * W) * 4;
          for (int64_t c = 0; c < t.channels; ++c) {
            const int64_t off = (c * H + r0) * W;
            std::memcpy(pinned_src + off, planes + off, bytes);
            ENGINE_CUDA_CHECK(
                cudaMemcpyAsync(dev_src + off, pinned_src + off, bytes, cudaMemcpyHostToDevice, upload.get()));
          }
        }
        ENGINE_CUDA_CHECK(cudaEventRecord(band_ready[staged].get(), upload.get()));
      }
    };
    // Before a batch reaching tile row last_row: its bands are uploaded, and the compute stream waits for them.
    const auto before = [&](int64_t last_row) {
      stage_through(last_row);
      for (; waited <= last_row; ++waited) {
        ENGINE_CUDA_CHECK(cudaStreamWaitEvent(compute.get(), band_ready[waited].get(), 0));
      }
    };
    // After a batch, with `done` tiles blended: download the output rows that no later tile touches (those
    // above the next incomplete tile row), then stage the next batch's bands while this one computes.
    int64_t rows_downloaded = 0;
    const auto after = [&](int64_t done) {
      const int64_t rows_done = done / nx;  // complete tile rows
      const int64_t final_rows = rows_done == 0 ? 0 : std::min(rows_done < ny ? t.ys[rows_done] * s : out_h, out_h);
      if (final_rows > rows_downloaded) {
        ENGINE_CUDA_CHECK(cudaEventRecord(canvas_ready.get(), compute.get()));
        ENGINE_CUDA_CHECK(cudaStreamWaitEvent(download.get(), canvas_ready.get(), 0));
        for (int64_t c = 0; c < t.c_out; ++c) {
          ENGINE_CUDA_CHECK(cudaMemcpy2DAsync(
              pinned_out + (c * out_h + rows_downloaded) * out_w, static_cast<size_t>(out_w) * 4,
              canv + (c * canvas_h + rows_downloaded) * canvas_w, static_cast<size_t>(canvas_w) * 4,
              static_cast<size_t>(out_w) * 4, static_cast<size_t>(final_rows - rows_downloaded),
              cudaMemcpyDeviceToHost, download.get()));
        }
        rows_downloaded = final_rows;
      }
      if (done < tiles) stage_through((std::min(done + t.n, tiles) - 1) / nx);
    };
    int64_t batches = 0;
    tile_loop(t, dev_src, canv, before, after, &batches);
    // The last batch completed the last tile row, so every output row is queued for download.
    sync_all();
    std::memcpy(out, pinned_out, t.out_bytes());
    record_upscale(t, batches, replays_before, t0);
  }

  uintptr_t upscale_device(const Tiling& t, uintptr_t planes, uintptr_t stream) {
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t replays_before = stats.graph_replays;
    DevicePtr out;
    device_alloc(&out, t.out_bytes(), "upscale output");
    // The padded canvas is the output itself when no padding is needed.
    const bool direct = t.canvas_h == t.height && t.canvas_w == t.width;
    if (!direct) grow(&canvas, &canvas_cap, t.canvas_bytes(), "upscale canvas");
    float* canv = static_cast<float*>(direct ? out.get() : canvas.get());
    try {
      upload_tables(t);
      after_caller(stream);
      ENGINE_CUDA_CHECK(cudaMemsetAsync(canv, 0, t.canvas_bytes(), compute.get()));
      int64_t batches = 0;
      tile_loop(t, reinterpret_cast<const float*>(planes), canv, [](int64_t) {}, [](int64_t) {}, &batches);
      if (!direct) {
        const int64_t s = t.scale, out_h = t.out_h(), out_w = t.out_w();
        const int64_t canvas_h = t.canvas_h * s, canvas_w = t.canvas_w * s;
        auto* dst = static_cast<float*>(out.get());
        for (int64_t c = 0; c < t.c_out; ++c) {
          ENGINE_CUDA_CHECK(cudaMemcpy2DAsync(dst + c * out_h * out_w, static_cast<size_t>(out_w) * 4,
                                              canv + c * canvas_h * canvas_w, static_cast<size_t>(canvas_w) * 4,
                                              static_cast<size_t>(out_w) * 4, static_cast<size_t>(out_h),
                                              cudaMemcpyDeviceToDevice, compute.get()));
        }
      }
      before_caller(stream);
      record_upscale(t, batches, replays_before, t0);
    } catch (...) {
      (void)cudaStreamSynchronize(compute.get());  // nothing queued may still write `out` when it is freed
      (void)cudaGetLastError();
      throw;
    }
    return reinterpret_cast<uintptr_t>(out.release());
  }
};

PlanRuntime::PlanRuntime(const std::string& path, int device, bool cuda_graph)
    : impl_(std::make_unique<Impl>(path, device, cuda_graph)) {}

PlanRuntime::~PlanRuntime() = default;

int PlanRuntime::device() const { return impl_->device; }
int PlanRuntime::arch() const { return impl_->arch; }
const std::string& PlanRuntime::device_name() const { return impl_->name; }
const std::string& PlanRuntime::meta() const { return impl_->plan.meta; }
const std::vector<PlanShape>& PlanRuntime::shapes() const { return impl_->plan.shapes; }
uint64_t PlanRuntime::arena_bytes() const { return impl_->plan.max_arena_bytes(); }
uint64_t PlanRuntime::weights_bytes() const { return impl_->weights_size; }
bool PlanRuntime::has_alpha() const { return impl_->plan.has_alpha; }
bool PlanRuntime::cuda_graph() const { return impl_->graphs_on; }
int64_t PlanRuntime::scale() const { return scale_of(impl_->plan.shapes[0]); }

PlanStats PlanRuntime::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->stats;
}

void PlanRuntime::forward(size_t shape) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  DeviceGuard guard(impl_->device);
  impl_->forward(shape);
}

double PlanRuntime::set_alpha(float alpha) {
  if (!impl_->plan.has_alpha) {
    throw std::invalid_argument(impl_->plan.path +
                                " has no alpha program (it was built without a GAN endpoint): set_alpha needs a "
                                "plan built with both endpoints (python -m engine.build --backend native ...)");
  }
  if (!(alpha >= 0.0f && alpha <= 1.0f)) {
    throw std::invalid_argument("alpha must be in [0, 1], got " + std::to_string(alpha));
  }
  std::lock_guard<std::mutex> lock(impl_->mutex);
  DeviceGuard guard(impl_->device);
  return impl_->set_alpha(alpha);
}

void PlanRuntime::run(const float* host_in, float* host_out, size_t shape) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  DeviceGuard guard(impl_->device);
  impl_->run(host_in, host_out, shape);
}

void PlanRuntime::run_device(uintptr_t in, uintptr_t out, size_t shape, uintptr_t stream) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  DeviceGuard guard(impl_->device);
  impl_->run_device(in, out, shape, stream);
}

void PlanRuntime::check_upscale(int64_t channels, int64_t height, int64_t width, int64_t tile_overlap) const {
  (void)plan_tiling(impl_->plan.shapes[0], channels, height, width, tile_overlap);
}

void PlanRuntime::upscale_host(const float* planes, int64_t channels, int64_t height, int64_t width,
                               int64_t tile_overlap, float* out) {
  const Tiling t = plan_tiling(impl_->plan.shapes[0], channels, height, width, tile_overlap);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  DeviceGuard guard(impl_->device);
  impl_->upscale_host(t, planes, out);
}

uintptr_t PlanRuntime::upscale_device(uintptr_t planes, int64_t channels, int64_t height, int64_t width,
                                      int64_t tile_overlap, uintptr_t stream) {
  const Tiling t = plan_tiling(impl_->plan.shapes[0], channels, height, width, tile_overlap);
  if (planes == 0) throw std::invalid_argument("planes must be a device pointer, got 0");
  std::lock_guard<std::mutex> lock(impl_->mutex);
  DeviceGuard guard(impl_->device);
  return impl_->upscale_device(t, planes, stream);
}

void free_device_buffer(int device, uintptr_t ptr) noexcept {
  if (ptr == 0) return;
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  (void)cudaSetDevice(device);
  (void)cudaFree(reinterpret_cast<void*>(ptr));  // waits for the device's queued work
  if (previous >= 0 && previous != device) (void)cudaSetDevice(previous);
  (void)cudaGetLastError();
}

}  // namespace engine::cuda
