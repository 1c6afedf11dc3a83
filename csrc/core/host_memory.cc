#include "host_memory.h"

#include <algorithm>
#include <cstdlib>

#include "cuda_runtime.h"

namespace pyserve {

namespace {
size_t SizeClass(size_t bytes) {
  size_t cls = 0;
  while ((size_t{1} << cls) < bytes) ++cls;
  return cls;
}
}  // namespace

HostMemoryPool::HostMemoryPool(size_t max_cached_bytes, bool try_pinned)
    : pinned_(try_pinned && CudaRuntime::Get() != nullptr), max_cached_bytes_(max_cached_bytes) {}

HostMemoryPool::~HostMemoryPool() { Reset(); }

void HostMemoryPool::SetMaxCachedBytes(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    max_cached_bytes_ = bytes;
    if (usage_.cached_bytes <= bytes) return;
  }
  Reset();  // over the new bound: give the idle buffers back
}

HostMemoryPool& HostMemoryPool::Global() {
  static HostMemoryPool* pool = new HostMemoryPool(size_t{256} << 20);
  return *pool;
}

void* HostMemoryPool::Allocate(size_t bytes) {
  if (pinned_) {
    if (void* ptr = CudaRuntime::Get()->HostAlloc(bytes)) return ptr;
  }
  return std::aligned_alloc(64, bytes);
}

void HostMemoryPool::Free(void* ptr) {
  if (pinned_) {
    CudaRuntime::Get()->FreeHost(ptr);
  } else {
    std::free(ptr);
  }
}

std::shared_ptr<uint8_t> HostMemoryPool::Acquire(size_t bytes) {
  const size_t cls = std::max(SizeClass(bytes), kMinClass);
  if (cls >= kClasses) return nullptr;
  const size_t size = size_t{1} << cls;
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!free_[cls].empty()) {
      ptr = free_[cls].back();
      free_[cls].pop_back();
      usage_.cached_bytes -= size;
    } else {
      ++usage_.allocations;
    }
    usage_.in_use_bytes += size;
  }
  if (ptr == nullptr) ptr = Allocate(size);
  if (ptr == nullptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    usage_.in_use_bytes -= size;
    return nullptr;
  }
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(ptr),
                                  [this, cls](uint8_t* p) { Release(p, cls); });
}

void HostMemoryPool::Release(void* ptr, size_t cls) {
  const size_t size = size_t{1} << cls;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    usage_.in_use_bytes -= size;
    if (usage_.cached_bytes + size <= max_cached_bytes_) {
      free_[cls].push_back(ptr);
      usage_.cached_bytes += size;
      return;
    }
  }
  Free(ptr);
}

HostMemoryPool::Usage HostMemoryPool::usage() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return usage_;
}

void HostMemoryPool::Reset() {
  std::vector<void*> idle;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& list : free_) {
      idle.insert(idle.end(), list.begin(), list.end());
      list.clear();
    }
    usage_.cached_bytes = 0;
  }
  for (void* ptr : idle) Free(ptr);
}

}  // namespace pyserve
