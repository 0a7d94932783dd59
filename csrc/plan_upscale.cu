// Tiled upscales of one image by a native plan (PlanRuntime::upscale_host / upscale_device, state in
// plan_runtime_impl.h): the tiling (upscale_tiling.h) goes to the device as tables; each batch of shape 0's n
// tiles is gathered from the image (edge pixels repeated), run by the plan and blended into the canvas
// (tiles_cuda.cu). From host memory, source rows are uploaded in bands as the tile rows need them and finished
// output rows are downloaded while later tiles compute.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "cuda_handles.h"
#include "cuda_tiles.h"
#include "plan.h"
#include "plan_runtime.h"
#include "plan_runtime_impl.h"
#include "upscale_tiling.h"

namespace engine::cuda {
namespace {

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

}  // namespace

void PlanRuntime::Impl::grow(DevicePtr* p, uint64_t* cap, uint64_t bytes, const char* what) {
  if (bytes <= *cap && *p) return;
  sync_all();
  *cap = 0;
  device_alloc(p, std::max<uint64_t>(bytes, 1), what);
  *cap = std::max<uint64_t>(bytes, 1);
}

void PlanRuntime::Impl::grow(HostPtr* p, uint64_t* cap, uint64_t bytes, const char* what) {
  if (bytes <= *cap && *p) return;
  sync_all();
  *cap = 0;
  host_alloc(p, std::max<uint64_t>(bytes, 1), what);
  *cap = std::max<uint64_t>(bytes, 1);
}

void PlanRuntime::Impl::upload_tables(const Tiling& t) {
  grow(&tables, &tables_cap, t.table_bytes, "upscale tables");
  grow(&tables_pinned, &tables_pinned_cap, t.table_bytes, "upscale tables staging");
  // The previous call's copy out of tables_pinned has finished before it is rewritten.
  ENGINE_CUDA_CHECK(cudaEventSynchronize(tables_free.get()));
  char* h = static_cast<char*>(tables_pinned.get());
  std::memcpy(h + t.ys_off, t.ys.data(), t.ys.size() * sizeof(int64_t));
  std::memcpy(h + t.xs_off, t.xs.data(), t.xs.size() * sizeof(int64_t));
  std::memcpy(h + t.wy_off, t.wy.data(), t.wy.size() * sizeof(float));
  std::memcpy(h + t.wx_off, t.wx.data(), t.wx.size() * sizeof(float));
  ENGINE_CUDA_CHECK(cudaMemcpyAsync(tables.get(), h, t.table_bytes, cudaMemcpyHostToDevice, compute.get()));
  ENGINE_CUDA_CHECK(cudaEventRecord(tables_free.get(), compute.get()));
}

template <typename Before, typename After>
void PlanRuntime::Impl::tile_loop(const Tiling& t, const float* src, float* canv, Before before, After after,
                                  int64_t* batches) {
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

void PlanRuntime::Impl::record_upscale(const Tiling& t, int64_t batches, int64_t replays_before,
                                       std::chrono::steady_clock::time_point t0) {
  stats.last_upscale.tiles = t.tiles();
  stats.last_upscale.batches = batches;
  stats.last_upscale.graph_replays = stats.graph_replays - replays_before;
  stats.last_upscale.seconds = seconds_since(t0);
}

void PlanRuntime::Impl::upscale_host(const Tiling& t, const float* planes, float* out) {
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

PooledBuffer PlanRuntime::Impl::upscale_device(const Tiling& t, uintptr_t planes, uintptr_t stream) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t replays_before = stats.graph_replays;
  // A reused buffer is written only on the compute stream after after_caller: after the caller's queued work.
  PooledBuffer out = outputs->acquire(t.out_bytes());
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
    (void)cudaStreamSynchronize(compute.get());  // nothing queued may still write `out` when it is reused
    (void)cudaGetLastError();
    throw;
  }
  return out;
}

int64_t PlanRuntime::scale() const { return scale_of(impl_->plan.shapes[0]); }

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

PooledBuffer PlanRuntime::upscale_device(uintptr_t planes, int64_t channels, int64_t height, int64_t width,
                                         int64_t tile_overlap, uintptr_t stream) {
  const Tiling t = plan_tiling(impl_->plan.shapes[0], channels, height, width, tile_overlap);
  if (planes == 0) throw std::invalid_argument("planes must be a device pointer, got 0");
  std::lock_guard<std::mutex> lock(impl_->mutex);
  DeviceGuard guard(impl_->device);
  return impl_->upscale_device(t, planes, stream);
}

}  // namespace engine::cuda
