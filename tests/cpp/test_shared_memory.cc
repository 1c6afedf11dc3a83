#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "check.h"
#include "shared_memory.h"

using pyserve::SharedMemoryBlock;
using pyserve::SharedMemoryKind;
using pyserve::SharedMemoryRegistry;
using pyserve::StatusCode;

namespace {

// A POSIX shared memory object of `size` bytes filled with 0, 1, 2, ...; unlinked at the end.
struct Object {
  explicit Object(size_t size) : key("/pyserve_test_" + std::to_string(getpid())) {
    const int fd = shm_open(key.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    CHECK(fd != -1);
    CHECK(ftruncate(fd, static_cast<off_t>(size)) == 0);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(p != MAP_FAILED);
    for (size_t i = 0; i < size; ++i) static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(i);
    munmap(p, size);
    close(fd);
  }
  ~Object() { shm_unlink(key.c_str()); }
  std::string key;
};

}  // namespace

static void RegisterFindAndRefusals() {
  Object object(10000);
  SharedMemoryRegistry registry;
  // An offset that is not page-aligned still maps the right bytes.
  CHECK(registry.RegisterSystem("r", object.key, 5000, 4000).ok());
  SharedMemoryBlock block;
  CHECK(registry.Find("r", 10, 100, &block).ok());
  CHECK(block.device == -1 && block.byte_size == 100);
  CHECK(block.data[0] == static_cast<uint8_t>(5010));

  auto dup = registry.RegisterSystem("r", object.key, 0, 10);
  CHECK(dup.code() == StatusCode::kAlreadyExists);
  CHECK(dup.message() == "shared memory region 'r' already in manager");
  auto range = registry.RegisterSystem("big", object.key, 9000, 2000);
  CHECK(range.code() == StatusCode::kInvalidArg);
  CHECK(range.message() == "failed to register shared memory region 'big': invalid args");
  auto missing = registry.RegisterSystem("m", "/pyserve_no_such_object", 0, 10);
  CHECK(missing.code() == StatusCode::kInternal);

  CHECK(registry.Find("nope", 0, 1, &block).message() ==
        "Unable to find shared memory region: 'nope'");
  CHECK(registry.Find("r", 4000, 1, &block).message() ==
        "Invalid offset for shared memory region: 'r'");
  CHECK(registry.Find("r", 3990, 11, &block).message() ==
        "Invalid offset + byte size for shared memory region: 'r'");
  std::vector<std::shared_ptr<const pyserve::SharedMemoryRegion>> regions;
  CHECK(registry.List("r", SharedMemoryKind::kCuda, &regions).code() == StatusCode::kNotFound);
  CHECK(registry.List("", SharedMemoryKind::kSystem, &regions).ok() && regions.size() == 1);
}

static void UnregisterKeepsBlocksInUseMapped() {
  Object object(4096);
  SharedMemoryRegistry registry;
  CHECK(registry.RegisterSystem("r", object.key, 0, 4096).ok());
  SharedMemoryBlock held;
  CHECK(registry.Find("r", 0, 4096, &held).ok());
  CHECK(registry.Unregister("", SharedMemoryKind::kSystem).ok());
  SharedMemoryBlock again;
  CHECK(registry.Find("r", 0, 1, &again).code() == StatusCode::kNotFound);
  // The request's block still reads (and writes) the mapping: no fault.
  CHECK(held.data[4095] == static_cast<uint8_t>(4095));
  held.data[0] = 42;
  CHECK(pyserve::WriteBlock(held, held.data + 1, 1).ok() && held.data[0] == 1);
  CHECK(registry.Unregister("unknown", SharedMemoryKind::kSystem).ok());
}

int main() {
  RUN(RegisterFindAndRefusals);
  RUN(UnregisterKeepsBlocksInUseMapped);
  return 0;
}
