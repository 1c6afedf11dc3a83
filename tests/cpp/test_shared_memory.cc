#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "shared_memory.h"
#include "status_matchers.h"

using pyserve::SharedMemoryBlock;
using pyserve::SharedMemoryKind;
using pyserve::SharedMemoryRegistry;
using pyserve::StatusCode;

namespace {

// A POSIX shared memory object, unlinked at the end.
class Object {
 public:
  Object() : key("/pyserve_test_" + std::to_string(getpid())) {}
  ~Object() {
    if (created_) shm_unlink(key.c_str());
  }

  // Creates it with `size` bytes filled with 0, 1, 2, ... (call with ASSERT_NO_FATAL_FAILURE).
  void Create(size_t size) {
    const int fd = shm_open(key.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    ASSERT_NE(fd, -1) << "shm_open(" << key << "): " << std::strerror(errno);
    created_ = true;
    const int truncated = ftruncate(fd, static_cast<off_t>(size));
    const int error = errno;
    void* p = truncated == 0 ? mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                             : MAP_FAILED;
    close(fd);
    ASSERT_EQ(truncated, 0) << "ftruncate: " << std::strerror(error);
    ASSERT_NE(p, MAP_FAILED) << "mmap: " << std::strerror(errno);
    for (size_t i = 0; i < size; ++i) static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(i);
    munmap(p, size);
  }

  const std::string key;

 private:
  bool created_ = false;
};

}  // namespace

TEST(SharedMemoryRegistry, RegisterFindAndRefusals) {
  Object object;
  ASSERT_NO_FATAL_FAILURE(object.Create(10000));
  SharedMemoryRegistry registry;
  // An offset that is not page-aligned still maps the right bytes.
  ASSERT_OK(registry.RegisterSystem("r", object.key, 5000, 4000));
  SharedMemoryBlock block;
  ASSERT_OK(registry.Find("r", 10, 100, &block));
  EXPECT_EQ(block.device, -1);
  ASSERT_EQ(block.byte_size, 100u);
  EXPECT_EQ(block.data[0], static_cast<uint8_t>(5010));

  auto dup = registry.RegisterSystem("r", object.key, 0, 10);
  EXPECT_EQ(dup.code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(dup.message(), "shared memory region 'r' already in manager");
  auto range = registry.RegisterSystem("big", object.key, 9000, 2000);
  EXPECT_EQ(range.code(), StatusCode::kInvalidArg);
  EXPECT_EQ(range.message(), "failed to register shared memory region 'big': invalid args");
  auto missing = registry.RegisterSystem("m", "/pyserve_no_such_object", 0, 10);
  EXPECT_EQ(missing.code(), StatusCode::kInternal);

  EXPECT_EQ(registry.Find("nope", 0, 1, &block).message(),
            "Unable to find shared memory region: 'nope'");
  EXPECT_EQ(registry.Find("r", 4000, 1, &block).message(),
            "Invalid offset for shared memory region: 'r'");
  EXPECT_EQ(registry.Find("r", 3990, 11, &block).message(),
            "Invalid offset + byte size for shared memory region: 'r'");
  std::vector<std::shared_ptr<const pyserve::SharedMemoryRegion>> regions;
  EXPECT_EQ(registry.List("r", SharedMemoryKind::kCuda, &regions).code(), StatusCode::kNotFound);
  EXPECT_OK(registry.List("", SharedMemoryKind::kSystem, &regions));
  EXPECT_EQ(regions.size(), 1u);
}

TEST(SharedMemoryRegistry, UnregisterKeepsBlocksInUseMapped) {
  Object object;
  ASSERT_NO_FATAL_FAILURE(object.Create(4096));
  SharedMemoryRegistry registry;
  ASSERT_OK(registry.RegisterSystem("r", object.key, 0, 4096));
  SharedMemoryBlock held;
  ASSERT_OK(registry.Find("r", 0, 4096, &held));
  ASSERT_OK(registry.Unregister("", SharedMemoryKind::kSystem));
  SharedMemoryBlock again;
  EXPECT_EQ(registry.Find("r", 0, 1, &again).code(), StatusCode::kNotFound);
  // The request's block still reads (and writes) the mapping: no fault.
  EXPECT_EQ(held.data[4095], static_cast<uint8_t>(4095));
  held.data[0] = 42;
  EXPECT_OK(pyserve::WriteBlock(held, held.data + 1, 1));
  EXPECT_EQ(held.data[0], 1);
  EXPECT_OK(registry.Unregister("unknown", SharedMemoryKind::kSystem));
}
