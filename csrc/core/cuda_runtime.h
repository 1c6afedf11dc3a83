// CudaRuntime: the few CUDA runtime calls pyserve needs, reached through dlopen so that the
// same build runs on machines with and without CUDA. Absent CUDA (no libcudart, no driver, no
// device) is an answer from Get(), never an import or link error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pyserve {

using CudaStream = void*;

class CudaRuntime {
 public:
  // Extra folders to search for libcudart before the system's, e.g. the NVIDIA pip wheels'
  // nvidia/cuda_runtime/lib. Only effective before the first Get().
  static void SetSearchPaths(std::vector<std::string> paths);
  // The loaded runtime, or nullptr when CUDA is unusable here.
  static const CudaRuntime* Get();

  int device_count() const { return device_count_; }
  const std::string& library() const { return library_; }

  bool SetDevice(int device) const;  // for the calling thread
  // These four leave the calling thread's current device as they found it.
  void* HostAlloc(size_t bytes) const;  // pinned, portable; nullptr on failure
  void FreeHost(void* ptr) const;
  void* DeviceAlloc(int device, size_t bytes) const;
  void DeviceFree(int device, void* ptr) const;
  CudaStream CreateStream(int device) const;
  void DestroyStream(int device, CudaStream stream) const;
  bool CopyToDeviceAsync(void* dst, const void* src, size_t bytes, CudaStream stream) const;
  bool CopyToHostAsync(void* dst, const void* src, size_t bytes, CudaStream stream) const;
  bool Synchronize(CudaStream stream) const;
  bool Copy(void* dst, const void* src, size_t bytes) const;  // synchronous, either direction
  // The device's free and total memory, bytes (cudaMemGetInfo).
  bool MemoryInfo(int device, size_t* free, size_t* total) const;

  // CUDA IPC (the cuda_shared_memory extension): a cudaIpcMemHandle_t's bytes, opened on
  // `device` and closed there.
  static constexpr size_t kIpcHandleBytes = 64;
  bool IpcOpen(int device, const char* handle, void** ptr) const;
  void IpcClose(int device, void* ptr) const;
  // The size of the allocation `ptr` points into (through the driver's cuMemGetAddressRange);
  // false when the driver library cannot tell.
  bool AllocationSize(const void* ptr, size_t* bytes) const;

 private:
  CudaRuntime() = default;
  bool Load();
  template <typename Work>
  bool OnDevice(int device, Work work) const;

  using Err = int;
  Err (*get_device_count_)(int*) = nullptr;
  Err (*set_device_)(int) = nullptr;
  Err (*get_device_)(int*) = nullptr;
  Err (*host_alloc_)(void**, size_t, unsigned) = nullptr;
  Err (*free_host_)(void*) = nullptr;
  Err (*malloc_)(void**, size_t) = nullptr;
  Err (*free_)(void*) = nullptr;
  Err (*stream_create_)(CudaStream*, unsigned) = nullptr;
  Err (*stream_destroy_)(CudaStream) = nullptr;
  Err (*memcpy_async_)(void*, const void*, size_t, int, CudaStream) = nullptr;
  Err (*stream_synchronize_)(CudaStream) = nullptr;
  Err (*memcpy_)(void*, const void*, size_t, int) = nullptr;
  Err (*mem_get_info_)(size_t*, size_t*) = nullptr;
  struct IpcHandle {
    char reserved[kIpcHandleBytes];
  };
  Err (*ipc_open_)(void**, IpcHandle, unsigned) = nullptr;
  Err (*ipc_close_)(void*) = nullptr;
  Err (*address_range_)(uintptr_t*, size_t*, uintptr_t) = nullptr;  // libcuda, optional
  void* handle_ = nullptr;
  int device_count_ = 0;
  std::string library_;
};

}  // namespace pyserve
