#include <cstring>

#include "check.h"
#include "host_memory.h"

using pyserve::HostMemoryPool;

static void BuffersAreReusedBySizeClass() {
  HostMemoryPool pool(1 << 20, /*try_pinned=*/false);
  void* first;
  {
    auto a = pool.Acquire(5000);  // 8 KiB class
    CHECK(a != nullptr);
    CHECK(reinterpret_cast<uintptr_t>(a.get()) % 64 == 0);
    std::memset(a.get(), 1, 5000);
    first = a.get();
    CHECK(pool.usage().in_use_bytes == 8192);
  }
  CHECK(pool.usage().cached_bytes == 8192 && pool.usage().in_use_bytes == 0);
  auto b = pool.Acquire(8000);
  CHECK(b.get() == first);  // same class: reused, no new allocation
  CHECK(pool.usage().allocations == 1);
  auto c = pool.Acquire(100);  // smallest class (4 KiB), a new allocation
  CHECK(c.get() != first && pool.usage().allocations == 2);
}

static void CacheIsBoundedAndResets() {
  HostMemoryPool pool(8192, false);
  {
    auto a = pool.Acquire(8192);
    auto b = pool.Acquire(8192);
  }
  CHECK(pool.usage().cached_bytes == 8192);  // the second one was freed, not cached
  pool.Reset();
  CHECK(pool.usage().cached_bytes == 0);
}

int main() {
  RUN(BuffersAreReusedBySizeClass);
  RUN(CacheIsBoundedAndResets);
  return 0;
}
