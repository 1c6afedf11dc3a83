#include "host_policy.h"

#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace pyserve {

namespace {

constexpr int kMpolDefault = 0;
constexpr int kMpolBind = 2;

// set_mempolicy(2) without libnuma: one word of node mask covers 64 nodes.
long SetMempolicy(int mode, const unsigned long* mask, unsigned long max_node) {
  return syscall(SYS_set_mempolicy, mode, mask, max_node);
}

}  // namespace

Status ApplyHostPolicy(const HostPolicy& policy) {
  if (!policy.cpus.empty()) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int cpu : policy.cpus) {
      if (cpu < 0 || cpu >= CPU_SETSIZE) {
        return Status(StatusCode::kInvalidArg, "cpu-cores: no CPU " + std::to_string(cpu));
      }
      CPU_SET(cpu, &set);
    }
    if (int error = pthread_setaffinity_np(pthread_self(), sizeof(set), &set); error != 0) {
      return Status(StatusCode::kInternal,
                    std::string("Unable to set NUMA thread affinity: ") + std::strerror(error));
    }
  }
  if (policy.numa_node >= 0) {
    if (policy.numa_node >= 64) {
      return Status(StatusCode::kInvalidArg,
                    "numa-node: no node " + std::to_string(policy.numa_node));
    }
    const unsigned long mask = 1UL << policy.numa_node;
    if (SetMempolicy(kMpolBind, &mask, 64) != 0) {
      return Status(StatusCode::kInternal,
                    std::string("Unable to set NUMA memory policy: ") + std::strerror(errno));
    }
  }
  return Status::OK();
}

Status ResetNumaMemoryPolicy() {
  if (SetMempolicy(kMpolDefault, nullptr, 0) != 0) {
    return Status(StatusCode::kInternal,
                  std::string("Unable to reset NUMA memory policy: ") + std::strerror(errno));
  }
  return Status::OK();
}

}  // namespace pyserve
