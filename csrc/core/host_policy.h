// Triton's host policies (--host-policy=NAME,SETTING=VALUE, chosen per instance group): the
// CPU cores an instance's threads may run on and the NUMA node their memory comes from.
#pragma once

#include <vector>

#include "status.h"

namespace pyserve {

struct HostPolicy {
  std::vector<int> cpus;  // `cpu-cores`; empty = any
  int numa_node = -1;     // `numa-node`; -1 = the system's default memory policy

  bool Empty() const { return cpus.empty() && numa_node < 0; }
};

// Applies the policy to the calling thread (as Triton's SetNumaConfigOnThread).
Status ApplyHostPolicy(const HostPolicy& policy);
// Back to the system's default memory policy for the calling thread.
Status ResetNumaMemoryPolicy();

}  // namespace pyserve
