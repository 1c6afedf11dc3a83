// Triton's shared-memory extensions: regions a client registers by name (a POSIX shared memory
// object mapped here, or a CUDA IPC handle opened here), which request inputs are read from
// and requested outputs are written into instead of travelling on the wire.
//
// Lifetimes: the registry holds each region by shared_ptr, and so does every request that
// resolved a block of it. Unregistering only drops the registry's reference; the mapping (or
// IPC handle) goes when the last request using it is done.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"

namespace pyserve {

enum class SharedMemoryKind : uint8_t { kSystem, kCuda };

// One registered region, mapped for as long as the object lives.
class SharedMemoryRegion {
 public:
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;
  ~SharedMemoryRegion();

  std::string name;
  SharedMemoryKind kind = SharedMemoryKind::kSystem;
  std::string key;       // system: the shm_open name
  uint64_t offset = 0;   // system: where the registered range starts in the object
  uint64_t byte_size = 0;
  int device_id = 0;     // CUDA: the device the handle was opened on
  uint8_t* base = nullptr;  // the registered range: a host address, or a device pointer

 private:
  friend class SharedMemoryRegistry;
  SharedMemoryRegion() = default;
  void* mapping_ = nullptr;  // what munmap takes (page-aligned; `base` may be past it)
  size_t mapping_size_ = 0;
};

// `byte_size` bytes at `data`, in host memory (device < 0) or on a CUDA device; `keep` holds
// the memory alive (the region, or a host copy of a device block).
struct SharedMemoryBlock {
  std::shared_ptr<const void> keep;
  uint8_t* data = nullptr;
  size_t byte_size = 0;
  int device = -1;
};

class SharedMemoryRegistry {
 public:
  SharedMemoryRegistry() = default;
  SharedMemoryRegistry(const SharedMemoryRegistry&) = delete;
  SharedMemoryRegistry& operator=(const SharedMemoryRegistry&) = delete;

  // Maps `byte_size` bytes at `offset` of the POSIX shared memory object `key`.
  Status RegisterSystem(const std::string& name, const std::string& key, uint64_t offset,
                        uint64_t byte_size);
  // Opens a cudaIpcMemHandle_t (64 bytes) on `device_id`.
  Status RegisterCuda(const std::string& name, std::string_view raw_handle, int64_t device_id,
                      uint64_t byte_size);
  // Forgets `name` (every region of `kind` when empty); unknown names are not an error.
  Status Unregister(const std::string& name, SharedMemoryKind kind);
  // The regions of `kind` (the one named, when `name` is not empty).
  Status List(const std::string& name, SharedMemoryKind kind,
              std::vector<std::shared_ptr<const SharedMemoryRegion>>* regions) const;
  // `byte_size` bytes at `offset` of region `name`, with Triton's range checks and texts.
  Status Find(const std::string& name, uint64_t offset, uint64_t byte_size,
              SharedMemoryBlock* block) const;

 private:
  Status Add(std::unique_ptr<SharedMemoryRegion> region);  // mutex_ held

  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const SharedMemoryRegion>> regions_;
};

// A block's bytes readable on the host: `block` itself when it is host memory, else a copy of
// it in a pooled host buffer (which `host->keep` holds).
Status ReadOnHost(const SharedMemoryBlock& block, SharedMemoryBlock* host);
// Copies `byte_size` bytes of host memory into `target` (host or device).
Status WriteBlock(const SharedMemoryBlock& target, const uint8_t* data, size_t byte_size);

}  // namespace pyserve
