// Row-parallel loops on std::thread for the host pixel conversions.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace engine {

// Below this many elements per thread, starting the thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 15;

// Threads to use: `requested` (0 = hardware concurrency), capped so that every thread gets at least one row
// and kMinElementsPerThread elements; small images run on the calling thread alone.
inline int resolve_threads(int requested, int64_t rows, int64_t elements) {
  int64_t n = requested > 0 ? requested : std::max(1u, std::thread::hardware_concurrency());
  n = std::min({n, rows, elements / kMinElementsPerThread});
  return static_cast<int>(std::max<int64_t>(n, 1));
}

// Calls body(row_begin, row_end) on `threads` contiguous, disjoint row ranges covering [0, rows), one range
// per thread; the calling thread takes the last range. `body` must not throw.
template <typename Body>
void parallel_rows(int64_t rows, int threads, const Body& body) {
  if (threads <= 1) {
    body(int64_t{0}, rows);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(threads - 1);
  try {
    for (int t = 0; t < threads - 1; ++t) {
      workers.emplace_back(body, rows * t / threads, rows * (t + 1) / threads);
    }
  } catch (...) {  // thread creation failed: finish the started ranges, then report
    for (auto& w : workers) w.join();
    throw;
  }
  body(rows * (threads - 1) / threads, rows);
  for (auto& w : workers) w.join();
}

}  // namespace engine
