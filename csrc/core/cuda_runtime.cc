#include "cuda_runtime.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

namespace pyserve {

namespace {
constexpr unsigned kHostAllocPortable = 1;   // cudaHostAllocPortable
constexpr unsigned kStreamNonBlocking = 1;   // cudaStreamNonBlocking
constexpr int kHostToDevice = 1;             // cudaMemcpyHostToDevice
constexpr int kDeviceToHost = 2;             // cudaMemcpyDeviceToHost
constexpr int kCopyDefault = 4;              // cudaMemcpyDefault (direction from the pointers)
constexpr unsigned kIpcLazyPeerAccess = 1;   // cudaIpcMemLazyEnablePeerAccess
const char* const kLibraryNames[] = {"libcudart.so", "libcudart.so.13", "libcudart.so.12",
                                     "libcudart.so.11.0"};

std::mutex& PathsMutex() {
  static std::mutex mutex;
  return mutex;
}
std::vector<std::string>& SearchPaths() {
  static std::vector<std::string> paths;
  return paths;
}
}  // namespace

void CudaRuntime::SetSearchPaths(std::vector<std::string> paths) {
  std::lock_guard<std::mutex> lock(PathsMutex());
  SearchPaths() = std::move(paths);
}

const CudaRuntime* CudaRuntime::Get() {
  static CudaRuntime* runtime = [] {
    auto* candidate = new CudaRuntime();
    if (candidate->Load()) return candidate;
    delete candidate;
    return static_cast<CudaRuntime*>(nullptr);
  }();
  return runtime;
}

bool CudaRuntime::Load() {
  std::vector<std::string> candidates;
  {
    std::lock_guard<std::mutex> lock(PathsMutex());
    for (const auto& dir : SearchPaths()) {
      for (const char* name : kLibraryNames) candidates.push_back(dir + "/" + name);
    }
  }
  if (const char* home = std::getenv("CUDA_HOME")) {
    for (const char* name : kLibraryNames) candidates.push_back(std::string(home) + "/lib64/" + name);
  }
  for (const char* name : kLibraryNames) candidates.push_back(name);  // the loader's own search

  for (const auto& path : candidates) {
    handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle_ != nullptr) {
      library_ = path;
      break;
    }
  }
  if (handle_ == nullptr) return false;

  auto bind = [this](auto& fn, const char* symbol) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(handle_, symbol));
    return fn != nullptr;
  };
  bool ok = bind(get_device_count_, "cudaGetDeviceCount") && bind(set_device_, "cudaSetDevice") &&
            bind(get_device_, "cudaGetDevice") &&
            bind(host_alloc_, "cudaHostAlloc") && bind(free_host_, "cudaFreeHost") &&
            bind(malloc_, "cudaMalloc") && bind(free_, "cudaFree") &&
            bind(stream_create_, "cudaStreamCreateWithFlags") &&
            bind(stream_destroy_, "cudaStreamDestroy") &&
            bind(memcpy_async_, "cudaMemcpyAsync") &&
            bind(stream_synchronize_, "cudaStreamSynchronize") && bind(memcpy_, "cudaMemcpy") &&
            bind(mem_get_info_, "cudaMemGetInfo") &&
            bind(ipc_open_, "cudaIpcOpenMemHandle") && bind(ipc_close_, "cudaIpcCloseMemHandle");
  int count = 0;
  if (!ok || get_device_count_(&count) != 0 || count <= 0) {
    dlclose(handle_);
    handle_ = nullptr;
    return false;
  }
  device_count_ = count;
  if (void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {  // the runtime loaded it
    address_range_ =
        reinterpret_cast<decltype(address_range_)>(dlsym(driver, "cuMemGetAddressRange_v2"));
  }
  return true;
}

void* CudaRuntime::HostAlloc(size_t bytes) const {
  void* ptr = nullptr;
  return host_alloc_(&ptr, bytes, kHostAllocPortable) == 0 ? ptr : nullptr;
}

void CudaRuntime::FreeHost(void* ptr) const { free_host_(ptr); }

bool CudaRuntime::SetDevice(int device) const { return set_device_(device) == 0; }

// Runs `work` with `device` current, then gives the thread its own device back: freeing a
// buffer of one GPU must not move whichever thread drops it onto that GPU.
template <typename Work>
bool CudaRuntime::OnDevice(int device, Work work) const {
  int previous = device;
  if (get_device_(&previous) != 0 || set_device_(device) != 0) return false;
  bool ok = work();
  if (previous != device) set_device_(previous);
  return ok;
}

void* CudaRuntime::DeviceAlloc(int device, size_t bytes) const {
  void* ptr = nullptr;
  return OnDevice(device, [&] { return malloc_(&ptr, bytes) == 0; }) ? ptr : nullptr;
}

void CudaRuntime::DeviceFree(int device, void* ptr) const {
  OnDevice(device, [&] { return free_(ptr) == 0; });
}

CudaStream CudaRuntime::CreateStream(int device) const {
  CudaStream stream = nullptr;
  return OnDevice(device, [&] { return stream_create_(&stream, kStreamNonBlocking) == 0; })
             ? stream
             : nullptr;
}

void CudaRuntime::DestroyStream(int device, CudaStream stream) const {
  OnDevice(device, [&] { return stream_destroy_(stream) == 0; });
}

bool CudaRuntime::MemoryInfo(int device, size_t* free, size_t* total) const {
  return OnDevice(device, [&] { return mem_get_info_(free, total) == 0; });
}

bool CudaRuntime::CopyToDeviceAsync(void* dst, const void* src, size_t bytes,
                                    CudaStream stream) const {
  return memcpy_async_(dst, src, bytes, kHostToDevice, stream) == 0;
}

bool CudaRuntime::CopyToHostAsync(void* dst, const void* src, size_t bytes,
                                  CudaStream stream) const {
  return memcpy_async_(dst, src, bytes, kDeviceToHost, stream) == 0;
}

bool CudaRuntime::Synchronize(CudaStream stream) const { return stream_synchronize_(stream) == 0; }

bool CudaRuntime::Copy(void* dst, const void* src, size_t bytes) const {
  return memcpy_(dst, src, bytes, kCopyDefault) == 0;
}

bool CudaRuntime::IpcOpen(int device, const char* handle, void** ptr) const {
  IpcHandle ipc;
  std::memcpy(ipc.reserved, handle, kIpcHandleBytes);
  return OnDevice(device, [&] { return ipc_open_(ptr, ipc, kIpcLazyPeerAccess) == 0; });
}

void CudaRuntime::IpcClose(int device, void* ptr) const {
  OnDevice(device, [&] { return ipc_close_(ptr) == 0; });
}

bool CudaRuntime::AllocationSize(const void* ptr, size_t* bytes) const {
  uintptr_t base = 0;
  return address_range_ != nullptr &&
         address_range_(&base, bytes, reinterpret_cast<uintptr_t>(ptr)) == 0;
}

}  // namespace pyserve
