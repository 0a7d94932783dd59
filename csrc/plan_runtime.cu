// The CUDA runtime of native plans (plan_runtime.h, state in plan_runtime_impl.h): loads a plan's cubins
// through the driver API shim (cuda_driver.h), fills its arena and weights, precomputes every launch, runs a
// shape's launches (captured once into a CUDA graph and replayed), the alpha program and run / run_device.
// Tiled upscales are in plan_upscale.cu.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "cuda_driver.h"
#include "cuda_handles.h"
#include "plan.h"
#include "plan_runtime.h"
#include "plan_runtime_impl.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the plan runtime passes 4-byte kernel parameters in the low half of 8-byte slots: little-endian only"
#endif

namespace engine::cuda {
namespace {

std::string n2s(int64_t v) { return std::to_string(v); }

// cudaFree of an output buffer on `device`, from any thread; never throws. It waits for the device's work.
void free_output(int device, void* ptr) noexcept {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  (void)cudaSetDevice(device);
  (void)cudaFree(ptr);
  if (previous >= 0 && previous != device) (void)cudaSetDevice(previous);
  (void)cudaGetLastError();
}

// The output pool of a runtime on `device`. Its buffers are allocated by upscale_device, with the device current.
std::shared_ptr<BufferPool> output_pool(int device) {
  return BufferPool::create(
      [](uint64_t bytes) {
        void* p = nullptr;
        check(cudaMalloc(&p, bytes), ("cudaMalloc(upscale output, " + bytes_str(bytes) + ")").c_str());
        return p;
      },
      [device](void* ptr) { free_output(device, ptr); }, kFreeOutputBuffers);
}

}  // namespace

PlanRuntime::Impl::Impl(const std::string& path, int dev, bool cuda_graph) : device(dev), graphs_on(cuda_graph) {
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

void PlanRuntime::Impl::load(const std::string& path) {
  ENGINE_CUDA_CHECK(cudaFree(nullptr));  // initialize the primary context, current for the driver calls
  cudaDeviceProp prop{};
  ENGINE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  arch = prop.major * 10 + prop.minor;
  name = prop.name;
  plan = read_plan(path, static_cast<uint32_t>(arch), name);
  int shared_optin = 0;
  ENGINE_CUDA_CHECK(cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));

  require_driver_api();
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
    load_module(&modules[k], kernel.cubin.data(), what);
    functions[k] = get_function(modules[k], kernel.name, what);
    if (kernel.shared_bytes > 48 * 1024) {
      set_max_dynamic_shared_bytes(functions[k], static_cast<int>(kernel.shared_bytes), what);
    }
  }

  outputs = output_pool(device);
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

PlanRuntime::Impl::~Impl() {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  (void)cudaSetDevice(device);
  release();
  if (previous >= 0) (void)cudaSetDevice(previous);
}

void PlanRuntime::Impl::release() noexcept {
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
  outputs.reset();  // its free buffers go now, or with the last output still held
  modules.clear();
  (void)cudaGetLastError();
}

const PlanShape& PlanRuntime::Impl::shape_at(size_t s) const {
  if (s >= plan.shapes.size()) {
    throw std::invalid_argument("shape index must be in 0.." + n2s(static_cast<int64_t>(plan.shapes.size()) - 1) +
                                ", got " + n2s(static_cast<int64_t>(s)));
  }
  return plan.shapes[s];
}

void PlanRuntime::Impl::launch(const Launch& l) {
  launch_kernel(l.function, l.grid, l.block, l.shared_bytes, compute.get(),
                l.params.empty() ? nullptr : const_cast<void**>(l.params.data()), l.kernel_name);
}

void PlanRuntime::Impl::enqueue(const PlanShape& s) {
  for (uint64_t l = s.launch_first; l < s.launch_first + s.launch_count; ++l) launch(launches[l]);
}

void PlanRuntime::Impl::capture(size_t s) {
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

void PlanRuntime::Impl::forward(size_t s) {
  const PlanShape& shape = shape_at(s);
  if (!graphs_on || shape.launch_count == 0) return enqueue(shape);
  if (!graphs[s]) capture(s);
  ENGINE_CUDA_CHECK(cudaGraphLaunch(graphs[s].get(), compute.get()));
  ++stats.graph_replays;
}

void PlanRuntime::Impl::sync_all() {
  for (const Stream* s : {&compute, &upload, &download}) ENGINE_CUDA_CHECK(cudaStreamSynchronize(s->get()));
}

void PlanRuntime::Impl::after_caller(uintptr_t stream) {
  ENGINE_CUDA_CHECK(cudaEventRecord(caller_ready.get(), reinterpret_cast<cudaStream_t>(stream)));
  ENGINE_CUDA_CHECK(cudaStreamWaitEvent(compute.get(), caller_ready.get(), 0));
}

void PlanRuntime::Impl::before_caller(uintptr_t stream) {
  ENGINE_CUDA_CHECK(cudaEventRecord(compute_done.get(), compute.get()));
  ENGINE_CUDA_CHECK(cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream), compute_done.get(), 0));
}

double PlanRuntime::Impl::set_alpha(float alpha) {
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

void PlanRuntime::Impl::run(const float* host_in, float* host_out, size_t s) {
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

void PlanRuntime::Impl::run_device(uintptr_t in, uintptr_t out, size_t s, uintptr_t stream) {
  const PlanShape& shape = shape_at(s);
  after_caller(stream);
  ENGINE_CUDA_CHECK(cudaMemcpyAsync(at(arena.get(), shape.input_off), reinterpret_cast<const void*>(in),
                                    shape.input_bytes(), cudaMemcpyDeviceToDevice, compute.get()));
  forward(s);
  ENGINE_CUDA_CHECK(cudaMemcpyAsync(reinterpret_cast<void*>(out), at(arena.get(), shape.output_off),
                                    shape.output_bytes(), cudaMemcpyDeviceToDevice, compute.get()));
  before_caller(stream);
}

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

PlanStats PlanRuntime::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  PlanStats st = impl_->stats;
  const BufferPoolStats out = impl_->outputs->stats();
  st.output_allocations = out.allocations;
  st.output_reuses = out.reuses;
  return st;
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

}  // namespace engine::cuda
