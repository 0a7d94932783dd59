// RAII owners of CUDA runtime objects (streams, events, graphs, device and pinned host memory) for the plan
// runtime, their allocation with errors that name the buffer and its size, and a guard that makes a device
// current. CUDA-only (included by .cu files).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include "cuda_check.h"

namespace engine::cuda {

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

using Stream = Handle<cudaStream_t, DestroyStream>;
using Event = Handle<cudaEvent_t, DestroyEvent>;
using Graph = Handle<cudaGraph_t, DestroyGraph>;
using GraphExec = Handle<cudaGraphExec_t, DestroyGraphExec>;
using DevicePtr = Handle<void*, FreeDevice>;
using HostPtr = Handle<void*, FreeHost>;

inline std::string bytes_str(uint64_t bytes) { return std::to_string(bytes) + " bytes"; }

inline void device_alloc(DevicePtr* p, uint64_t bytes, const char* what) {
  p->reset();
  if (bytes == 0) return;
  check(cudaMalloc(p->out(), bytes), ("cudaMalloc(" + std::string(what) + ", " + bytes_str(bytes) + ")").c_str());
}

inline void host_alloc(HostPtr* p, uint64_t bytes, const char* what) {
  p->reset();
  if (bytes == 0) return;
  check(cudaHostAlloc(p->out(), bytes, cudaHostAllocDefault),
        ("cudaHostAlloc(" + std::string(what) + ", " + bytes_str(bytes) + ")").c_str());
}

inline void create_stream(Stream* s) { ENGINE_CUDA_CHECK(cudaStreamCreateWithFlags(s->out(), cudaStreamNonBlocking)); }
inline void create_event(Event* e) { ENGINE_CUDA_CHECK(cudaEventCreateWithFlags(e->out(), cudaEventDisableTiming)); }

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

}  // namespace engine::cuda
