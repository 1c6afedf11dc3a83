#include "shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "cuda_runtime.h"
#include "host_memory.h"

namespace pyserve {

namespace {

Status InvalidArgs(const std::string& name) {
  return Status(StatusCode::kInvalidArg,
                "failed to register shared memory region '" + name + "': invalid args");
}

const char* KindName(SharedMemoryKind kind) {
  return kind == SharedMemoryKind::kCuda ? "CUDA" : "system";
}

}  // namespace

SharedMemoryRegion::~SharedMemoryRegion() {
  if (kind == SharedMemoryKind::kSystem) {
    if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
  } else if (base != nullptr) {
    if (const CudaRuntime* cuda = CudaRuntime::Get()) cuda->IpcClose(device_id, base);
  }
}

Status SharedMemoryRegistry::RegisterSystem(const std::string& name, const std::string& key,
                                            uint64_t offset, uint64_t byte_size) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (regions_.count(name) != 0) {
    return Status(StatusCode::kAlreadyExists,
                  "shared memory region '" + name + "' already in manager");
  }
  const int fd = shm_open(key.c_str(), O_RDWR, S_IRUSR | S_IWUSR);
  if (fd == -1) {
    return Status(StatusCode::kInternal, "Unable to open shared memory region: '" + key + "'");
  }
  struct stat info;
  if (fstat(fd, &info) == -1 || info.st_size < 0) {
    close(fd);
    return Status(StatusCode::kInternal, "Invalid shared memory region: '" + key + "'");
  }
  const uint64_t size = static_cast<uint64_t>(info.st_size);
  if (offset > size || byte_size > size - offset) {
    close(fd);
    return InvalidArgs(name);
  }
  // mmap wants a page-aligned offset: map from the page the range starts in.
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = offset - offset % page;
  const size_t length = static_cast<size_t>(offset - start + byte_size);
  void* mapping = length == 0 ? nullptr
                              : mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                                     static_cast<off_t>(start));
  const int mmap_errno = errno;
  close(fd);  // the mapping stays valid without the descriptor
  if (mapping == MAP_FAILED) {
    return Status(StatusCode::kInvalidArg, "failed to register shared memory region '" + name +
                                               "': unable to process address space" +
                                               std::strerror(mmap_errno));
  }
  std::unique_ptr<SharedMemoryRegion> region(new SharedMemoryRegion());
  region->name = name;
  region->kind = SharedMemoryKind::kSystem;
  region->key = key;
  region->offset = offset;
  region->byte_size = byte_size;
  region->mapping_ = mapping;
  region->mapping_size_ = length;
  region->base = mapping == nullptr ? nullptr : static_cast<uint8_t*>(mapping) + (offset - start);
  return Add(std::move(region));
}

Status SharedMemoryRegistry::RegisterCuda(const std::string& name, std::string_view raw_handle,
                                          int64_t device_id, uint64_t byte_size) {
  const CudaRuntime* cuda = CudaRuntime::Get();
  if (cuda == nullptr) {
    return Status(StatusCode::kInvalidArg, "failed to register CUDA shared memory region: '" +
                                               name + "', GPUs not supported");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (regions_.count(name) != 0) {
    return Status(StatusCode::kAlreadyExists,
                  "shared memory region '" + name + "' already in manager");
  }
  if (raw_handle.size() != CudaRuntime::kIpcHandleBytes || device_id < 0 ||
      device_id >= cuda->device_count()) {
    return Status(StatusCode::kInvalidArg,
                  "failed to register shared memory region: invalid args");
  }
  const int device = static_cast<int>(device_id);
  void* pointer = nullptr;
  if (!cuda->IpcOpen(device, raw_handle.data(), &pointer)) {
    return Status(StatusCode::kInvalidArg,
                  "failed to register shared memory region: invalid args");
  }
  std::unique_ptr<SharedMemoryRegion> region(new SharedMemoryRegion());
  region->name = name;
  region->kind = SharedMemoryKind::kCuda;
  region->byte_size = byte_size;
  region->device_id = device;
  region->base = static_cast<uint8_t*>(pointer);
  size_t allocated = 0;
  if (cuda->AllocationSize(region->base, &allocated) && byte_size > allocated) {
    return InvalidArgs(name);  // the region's destructor closes the handle
  }
  return Add(std::move(region));
}

Status SharedMemoryRegistry::Add(std::unique_ptr<SharedMemoryRegion> region) {
  const std::string name = region->name;
  regions_.emplace(name, std::shared_ptr<const SharedMemoryRegion>(std::move(region)));
  return Status::OK();
}

Status SharedMemoryRegistry::Unregister(const std::string& name, SharedMemoryKind kind) {
  std::vector<std::shared_ptr<const SharedMemoryRegion>> dropped;  // unmapped after unlock
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = regions_.begin(); it != regions_.end();) {
    if ((name.empty() || it->first == name) && it->second->kind == kind) {
      dropped.push_back(std::move(it->second));
      it = regions_.erase(it);
    } else {
      ++it;
    }
  }
  return Status::OK();
}

Status SharedMemoryRegistry::List(
    const std::string& name, SharedMemoryKind kind,
    std::vector<std::shared_ptr<const SharedMemoryRegion>>* regions) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (name.empty()) {
    for (const auto& [_, region] : regions_) {
      if (region->kind == kind) regions->push_back(region);
    }
    return Status::OK();
  }
  auto it = regions_.find(name);
  if (it == regions_.end()) {
    return Status(StatusCode::kNotFound, std::string("Unable to find ") +
                                             (kind == SharedMemoryKind::kCuda ? "cuda" : "system") +
                                             " shared memory region: '" + name + "'");
  }
  if (it->second->kind != kind) {
    return Status(StatusCode::kNotFound, "The region named '" + name + "' is registered as " +
                                             KindName(it->second->kind) + " shared memory, not " +
                                             KindName(kind) + " shared memory");
  }
  regions->push_back(it->second);
  return Status::OK();
}

Status SharedMemoryRegistry::Find(const std::string& name, uint64_t offset, uint64_t byte_size,
                                  SharedMemoryBlock* block) const {
  std::shared_ptr<const SharedMemoryRegion> region;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = regions_.find(name);
    if (it != regions_.end()) region = it->second;
  }
  if (!region) {
    return Status(StatusCode::kNotFound, "Unable to find shared memory region: '" + name + "'");
  }
  if (offset >= region->byte_size) {
    return Status(StatusCode::kInvalidArg,
                  "Invalid offset for shared memory region: '" + name + "'");
  }
  if (byte_size > region->byte_size - offset) {
    return Status(StatusCode::kInvalidArg,
                  "Invalid offset + byte size for shared memory region: '" + name + "'");
  }
  block->data = region->base + offset;
  block->byte_size = static_cast<size_t>(byte_size);
  block->device = region->kind == SharedMemoryKind::kCuda ? region->device_id : -1;
  block->keep = std::move(region);
  return Status::OK();
}

Status ReadOnHost(const SharedMemoryBlock& block, SharedMemoryBlock* host) {
  if (block.device < 0) {
    *host = block;
    return Status::OK();
  }
  std::shared_ptr<uint8_t> copy =
      HostMemoryPool::Global().Acquire(std::max<size_t>(block.byte_size, 1));
  const CudaRuntime* cuda = CudaRuntime::Get();
  if (!copy || cuda == nullptr || !cuda->Copy(copy.get(), block.data, block.byte_size)) {
    return Status(StatusCode::kInternal, "failed to copy an input from CUDA shared memory");
  }
  host->data = copy.get();
  host->byte_size = block.byte_size;
  host->device = -1;
  host->keep = std::move(copy);
  return Status::OK();
}

Status WriteBlock(const SharedMemoryBlock& target, const uint8_t* data, size_t byte_size) {
  if (byte_size == 0) return Status::OK();
  if (target.device < 0) {
    std::memcpy(target.data, data, byte_size);
    return Status::OK();
  }
  const CudaRuntime* cuda = CudaRuntime::Get();
  if (cuda == nullptr || !cuda->Copy(target.data, data, byte_size)) {
    return Status(StatusCode::kInternal, "failed to copy an output into CUDA shared memory");
  }
  return Status::OK();
}

}  // namespace pyserve
