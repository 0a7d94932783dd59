// A small pool of reusable buffers over injected allocate / free functions (plain C++, no CUDA): the output
// buffers of NativePlan.upscale_dlpack (cudaMalloc / cudaFree, whose free stalls the whole device) and, for the
// tests, host memory (engine._C.HostBufferPool).
//
// A PooledBuffer holds a shared_ptr to its pool, so the pool lives until its owner and every buffer it handed out
// are gone: a buffer released after its owner dropped the pool still goes back to it, and is freed with it.
// A released buffer joins the free list; acquire(bytes) takes a free buffer of exactly `bytes` before allocating.
// At most max_free buffers stay free: releasing one more frees the one released longest ago. acquire and release
// may run on any threads (one mutex; allocate and free run outside it).
//
// Ordering is the caller's business: the pool knows nothing of streams. A buffer is reused as soon as it is
// released, so whatever reads it must be complete, or ordered before the next user's writes, by then.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>

namespace engine {

class BufferPool;

// One buffer of a BufferPool; returns to it when destroyed or released. Move-only.
class PooledBuffer {
 public:
  PooledBuffer() = default;
  PooledBuffer(std::shared_ptr<BufferPool> pool, void* ptr, uint64_t bytes)
      : pool_(std::move(pool)), ptr_(ptr), bytes_(bytes) {}
  ~PooledBuffer() { release(); }
  PooledBuffer(PooledBuffer&& other) noexcept
      : pool_(std::move(other.pool_)), ptr_(std::exchange(other.ptr_, nullptr)),
        bytes_(std::exchange(other.bytes_, 0)) {}
  PooledBuffer& operator=(PooledBuffer&& other) noexcept {
    if (this != &other) {
      release();
      pool_ = std::move(other.pool_);
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;

  void* get() const { return ptr_; }
  uint64_t bytes() const { return bytes_; }
  explicit operator bool() const { return ptr_ != nullptr; }
  // Gives the buffer back to its pool (then drops the pool, which may free it); a no-op once released.
  inline void release() noexcept;

 private:
  std::shared_ptr<BufferPool> pool_;
  void* ptr_ = nullptr;
  uint64_t bytes_ = 0;
};

struct BufferPoolStats {
  int64_t allocations = 0;  // buffers allocated by acquire
  int64_t reuses = 0;       // acquires served from the free list
  int64_t frees = 0;        // buffers freed while the pool lives (beyond max_free, or to retry an allocation)
  int64_t free_buffers = 0;  // on the free list now
};

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // A new buffer of `bytes` (> 0), never null; throws when it cannot.
  using Allocate = std::function<void*(uint64_t bytes)>;
  // Frees a buffer from Allocate; must not throw.
  using Free = std::function<void(void* ptr)>;

  static std::shared_ptr<BufferPool> create(Allocate allocate, Free free, size_t max_free) {
    return std::shared_ptr<BufferPool>(new BufferPool(std::move(allocate), std::move(free), max_free));
  }

  ~BufferPool() {
    for (const Entry& e : free_list_) free_(e.ptr);
  }
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of exactly `bytes`: the most recently released free one of that size, else a new one. When the
  // allocation fails, the free buffers are freed and it is tried once more. Throws std::invalid_argument for
  // bytes == 0, and what Allocate throws.
  PooledBuffer acquire(uint64_t bytes) {
    if (bytes == 0) throw std::invalid_argument("a pooled buffer needs a positive size in bytes, got 0");
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = free_list_.rbegin(); it != free_list_.rend(); ++it) {
        if (it->bytes == bytes) {
          void* ptr = it->ptr;
          free_list_.erase(std::next(it).base());
          ++stats_.reuses;
          return PooledBuffer(shared_from_this(), ptr, bytes);
        }
      }
    }
    void* ptr = nullptr;
    try {
      ptr = allocate_(bytes);
    } catch (...) {
      if (trim() == 0) throw;
      ptr = allocate_(bytes);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.allocations;
    return PooledBuffer(shared_from_this(), ptr, bytes);
  }

  // Frees every free buffer; returns how many.
  size_t trim() noexcept {
    std::deque<Entry> gone;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      gone.swap(free_list_);
      stats_.frees += static_cast<int64_t>(gone.size());
    }
    for (const Entry& e : gone) free_(e.ptr);
    return gone.size();
  }

  BufferPoolStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    BufferPoolStats s = stats_;
    s.free_buffers = static_cast<int64_t>(free_list_.size());
    return s;
  }

  size_t max_free() const { return max_free_; }

 private:
  friend class PooledBuffer;
  struct Entry {
    void* ptr;
    uint64_t bytes;
  };

  BufferPool(Allocate allocate, Free free, size_t max_free)
      : allocate_(std::move(allocate)), free_(std::move(free)), max_free_(max_free) {}

  void give_back(void* ptr, uint64_t bytes) noexcept {
    void* gone = nullptr;  // the list held at most max_free before: at most one goes
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_list_.push_back({ptr, bytes});
      if (free_list_.size() > max_free_) {
        gone = free_list_.front().ptr;
        free_list_.pop_front();
        ++stats_.frees;
      }
    }
    if (gone != nullptr) free_(gone);
  }

  const Allocate allocate_;
  const Free free_;
  const size_t max_free_;
  mutable std::mutex mutex_;
  std::deque<Entry> free_list_;  // oldest release first
  BufferPoolStats stats_;
};

inline void PooledBuffer::release() noexcept {
  if (ptr_ != nullptr) pool_->give_back(ptr_, bytes_);
  ptr_ = nullptr;
  bytes_ = 0;
  pool_.reset();  // the last holder of the pool frees it and its free buffers
}

}  // namespace engine
