#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "host_memory.h"

using pyserve::HostMemoryPool;

TEST(HostMemoryPool, BuffersAreReusedBySizeClass) {
  HostMemoryPool pool(1 << 20, /*try_pinned=*/false);
  void* first;
  {
    auto a = pool.Acquire(5000);  // 8 KiB class
    ASSERT_NE(a.get(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.get()) % 64, 0u);
    std::memset(a.get(), 1, 5000);
    first = a.get();
    EXPECT_EQ(pool.usage().in_use_bytes, 8192u);
  }
  EXPECT_EQ(pool.usage().cached_bytes, 8192u);
  EXPECT_EQ(pool.usage().in_use_bytes, 0u);
  auto b = pool.Acquire(8000);
  EXPECT_EQ(static_cast<void*>(b.get()), first);  // same class: reused, no new allocation
  EXPECT_EQ(pool.usage().allocations, 1u);
  auto c = pool.Acquire(100);  // smallest class (4 KiB), a new allocation
  EXPECT_NE(static_cast<void*>(c.get()), first);
  EXPECT_EQ(pool.usage().allocations, 2u);
}

TEST(HostMemoryPool, CacheIsBoundedAndResets) {
  HostMemoryPool pool(8192, false);
  {
    auto a = pool.Acquire(8192);
    auto b = pool.Acquire(8192);
  }
  EXPECT_EQ(pool.usage().cached_bytes, 8192u);  // the second one was freed, not cached
  pool.Reset();
  EXPECT_EQ(pool.usage().cached_bytes, 0u);
}
