// HostMemoryPool: reusable host buffers for batch assembly. Pinned (page-locked, so device
// copies run asynchronously at full speed) when the CUDA runtime is present, 64-byte aligned
// pageable memory otherwise. Buffers come in power-of-two size classes and go back to their
// class's free list when the last reference drops, so steady traffic allocates nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace pyserve {

class HostMemoryPool {
 public:
  // max_cached_bytes bounds the idle memory kept for reuse.
  explicit HostMemoryPool(size_t max_cached_bytes, bool try_pinned = true);
  ~HostMemoryPool();

  HostMemoryPool(const HostMemoryPool&) = delete;
  HostMemoryPool& operator=(const HostMemoryPool&) = delete;

  // A buffer of at least `bytes`; returns to the pool when the last copy is destroyed. The
  // pool must outlive its buffers. nullptr only when the system is out of memory.
  std::shared_ptr<uint8_t> Acquire(size_t bytes);

  bool pinned() const { return pinned_; }

  struct Usage {
    size_t cached_bytes = 0;  // idle, kept for reuse
    size_t in_use_bytes = 0;
    size_t allocations = 0;   // fresh allocations made so far (reuse does not count)
  };
  Usage usage() const;

  // Frees the idle buffers (before CUDA is torn down, or to give memory back).
  void Reset();
  // Bounds the idle memory kept for reuse from now on (Triton's --pinned-memory-pool-byte-size).
  void SetMaxCachedBytes(size_t bytes);

  // The process-wide pool the schedulers share (256 MiB kept idle at most, as Triton's pinned
  // pool); never destroyed, Reset() at exit.
  static HostMemoryPool& Global();

 private:
  static constexpr size_t kMinClass = 12;  // 4 KiB
  static constexpr size_t kClasses = 48;

  void* Allocate(size_t bytes);
  void Free(void* ptr);
  void Release(void* ptr, size_t size_class);

  const bool pinned_;
  size_t max_cached_bytes_;  // guarded by mutex_
  mutable std::mutex mutex_;
  std::vector<void*> free_[kClasses];
  Usage usage_;
};

}  // namespace pyserve
