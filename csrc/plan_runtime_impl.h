// PlanRuntime::Impl, the state of a plan loaded on one GPU, shared by the two files that implement it:
// plan_runtime.cu (loading, launches, CUDA graphs, alpha, run) and plan_upscale.cu (tiled upscales).
// CUDA-only (included by .cu files).
//
// Streams: `compute` runs every kernel (the plan's launches, gathers, blending) and the arena's copies;
// `upload` and `download` carry the host <-> device copies of a host-source upscale, ordered with the compute
// stream through events. Every host staging buffer (pinned) is rewritten only after the copies that read or
// write it are known to be complete (an event or stream synchronization first). Every public method holds the
// runtime's mutex and makes the plan's device current for its duration.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "buffer_pool.h"
#include "cuda_driver.h"
#include "cuda_handles.h"
#include "plan.h"
#include "plan_runtime.h"
#include "upscale_tiling.h"

namespace engine::cuda {

// Output buffers of upscale_device kept free for reuse; releasing one more cudaFrees the oldest free one.
constexpr size_t kFreeOutputBuffers = 2;

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

  // upscale buffers (plan_upscale.cu), grown on demand
  DevicePtr source, canvas, tables;
  uint64_t source_cap = 0, canvas_cap = 0, tables_cap = 0;
  HostPtr source_pinned, out_pinned, tables_pinned;
  uint64_t source_pinned_cap = 0, out_pinned_cap = 0, tables_pinned_cap = 0;
  // upscale_device's outputs (cudaMalloc on this device / cudaFree), shared with the buffers handed out
  std::shared_ptr<BufferPool> outputs;

  PlanStats stats;
  mutable std::mutex mutex;

  // --- plan_runtime.cu

  Impl(const std::string& path, int dev, bool cuda_graph);
  ~Impl();
  void load(const std::string& path);
  // Frees everything, on the current device, after the queued work; never throws.
  void release() noexcept;
  const PlanShape& shape_at(size_t s) const;
  void launch(const Launch& l);
  void enqueue(const PlanShape& s);
  // Records shape s's launches on the compute stream into a graph (nothing runs) and instantiates it.
  void capture(size_t s);
  void forward(size_t s);
  void sync_all();
  // caller stream -> compute stream
  void after_caller(uintptr_t stream);
  // compute stream -> caller stream
  void before_caller(uintptr_t stream);
  double set_alpha(float alpha);
  void run(const float* host_in, float* host_out, size_t s);
  void run_device(uintptr_t in, uintptr_t out, size_t s, uintptr_t stream);

  // --- plan_upscale.cu

  // Grows a device buffer to at least `bytes` (contents lost). Waits for every stream first: the old buffer
  // may still be in use.
  void grow(DevicePtr* p, uint64_t* cap, uint64_t bytes, const char* what);
  void grow(HostPtr* p, uint64_t* cap, uint64_t bytes, const char* what);
  // Uploads ys, xs, wy, wx to `tables` through pinned memory, on the compute stream.
  void upload_tables(const Tiling& t);
  // The tiles of one upscale, in batches of shape 0's n, on the compute stream: gather from `src` (device
  // planes), forward(0), blend into `canv` (zeroed by the caller). before(last_row) runs before a batch whose
  // tiles reach tile row last_row is enqueued; after(done) once a batch is enqueued, with the number of tiles
  // enqueued so far.
  template <typename Before, typename After>
  void tile_loop(const Tiling& t, const float* src, float* canv, Before before, After after, int64_t* batches);
  void record_upscale(const Tiling& t, int64_t batches, int64_t replays_before,
                      std::chrono::steady_clock::time_point t0);
  void upscale_host(const Tiling& t, const float* planes, float* out);
  PooledBuffer upscale_device(const Tiling& t, uintptr_t planes, uintptr_t stream);
};

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline char* at(void* base, uint64_t offset) { return static_cast<char*>(base) + offset; }

}  // namespace engine::cuda
