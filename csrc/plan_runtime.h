// The CUDA runtime of native plans (plan.h): loads a plan's cubins through the driver API (without linking
// libcuda), holds its arena and weights on one GPU, runs its shapes (with CUDA graphs), its alpha program, and
// whole tiled upscales. Implemented in plan_runtime.cu and plan_upscale.cu when engine._C is built with CUDA
// (ENGINE_WITH_CUDA), otherwise by cuda_stub.cpp, whose constructor throws. Plain C++: no CUDA headers, so
// bind_plan.cpp can include it. Errors: engine::PlanError (an unusable plan, or one for another GPU),
// std::invalid_argument (arguments), std::runtime_error (no device, CUDA errors, naming the call).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "buffer_pool.h"
#include "plan.h"

namespace engine::cuda {

struct UpscaleStats {
  int64_t tiles = 0, batches = 0, graph_replays = 0;
  double seconds = 0.0;  // host wall-clock time of the call (for the device variant: until its work is enqueued)
};

struct PlanStats {
  int64_t graph_captures = 0, graph_replays = 0;
  // upscale_device's output buffers: cudaMallocs, and calls served by a buffer released earlier
  int64_t output_allocations = 0, output_reuses = 0;
  UpscaleStats last_upscale;
};

class PlanRuntime {
 public:
  // Reads the plan for `device`'s architecture and loads it there. cuda_graph: capture each shape's launches
  // once and replay the graph.
  PlanRuntime(const std::string& path, int device, bool cuda_graph = true);
  ~PlanRuntime();
  PlanRuntime(const PlanRuntime&) = delete;
  PlanRuntime& operator=(const PlanRuntime&) = delete;

  int device() const;
  int arch() const;                      // of the device: major * 10 + minor
  const std::string& device_name() const;
  const std::string& meta() const;
  const std::vector<PlanShape>& shapes() const;
  uint64_t arena_bytes() const;          // the arena allocated: the largest over the shapes
  uint64_t weights_bytes() const;
  bool has_alpha() const;
  bool cuda_graph() const;
  PlanStats stats() const;

  // Enqueues shape `shape`'s launches on the compute stream (graph replay when CUDA graphs are on).
  void forward(size_t shape);

  // Runs the alpha program with ALPHA = alpha (0 <= alpha <= 1), waits for it; returns its wall-clock seconds.
  double set_alpha(float alpha);

  // Host float32 NCHW input (shape's n, c_in, h, w) -> host float32 output (n, c_out, h_out, w_out). Blocking.
  void run(const float* host_in, float* host_out, size_t shape);

  // The same between device float32 pointers on this plan's device, ordered after and before the work on
  // `stream` (a cudaStream_t, 0 = the legacy default stream). Asynchronous.
  void run_device(uintptr_t in, uintptr_t out, size_t shape, uintptr_t stream);

  // Scale s of shape 0 (h_out / h == w_out / w), or 0 when shape 0 is not an integer upscale.
  int64_t scale() const;

  // Throws std::invalid_argument unless planes (channels, height, width) can be upscaled with tile_overlap.
  void check_upscale(int64_t channels, int64_t height, int64_t width, int64_t tile_overlap) const;

  // Tiled upscale with shape 0 of float32 planes (channels = c_in, height, width) in host memory into host
  // `out`, float32 (c_out, height * s, width * s). Blocking.
  void upscale_host(const float* planes, int64_t channels, int64_t height, int64_t width, int64_t tile_overlap,
                    float* out);

  // The same from device planes into a device buffer of float32 (c_out, height * s, width * s) from the plan's
  // output pool (buffer_pool.h): a free one of that size released earlier, else a new one (cudaMalloc). The
  // buffer keeps the pool alive and returns to it when released, on any thread, even after this runtime is
  // gone. Ordered after and before the work on `stream`: a reused buffer is written once the work queued on
  // `stream` before this call is done, so a consumer that read the previous output on another stream must
  // synchronize with it before releasing it.
  PooledBuffer upscale_device(uintptr_t planes, int64_t channels, int64_t height, int64_t width,
                              int64_t tile_overlap, uintptr_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace engine::cuda
