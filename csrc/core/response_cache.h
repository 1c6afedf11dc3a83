// The response cache (Triton's `local` cache, `--cache-config local,size=N`): one per server,
// shared by the models whose config says `response_cache { enable: true }`. A response is
// stored under its request's key and served to later requests with the same key without
// running the model; least recently used entries make room for new ones within the size.
//
// ModelCache is what a model (or an ensemble, at its top level) calls: Lookup before
// scheduling a request, Store when its response is delivered. It keeps the model's hit and
// miss counts and durations (Triton's cache_hit / cache_miss statistics).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "request.h"
#include "response.h"

namespace pyserve {

class ResponseCache {
 public:
  explicit ResponseCache(size_t capacity_bytes) : capacity_(capacity_bytes) {}

  // A request's key: the model's name and version, each input (in name order) with its
  // datatype, shape and bytes, and the outputs it asked for (a response holds only those).
  // Request parameters are not part of it, as in Triton. Lookups compare keys in full.
  // `load` tells loads of one version apart: a reloaded version (new code, same number) never
  // answers with its predecessor's responses, which age out of the cache.
  static std::string Key(std::string_view model, int64_t version, const InferRequest& request,
                         uint64_t load = 0);

  // On a hit, the stored outputs (sharing the entry's memory, so they stay valid if the entry
  // is evicted), and the entry becomes the most recently used.
  bool Lookup(const std::string& key, std::vector<OutputTensor>* outputs);
  // Copies the outputs into an entry; evicts the least recently used entries until it fits.
  enum class Inserted { kStored, kTooLarge, kAlreadyStored };
  Inserted Insert(const std::string& key, const std::vector<OutputTensor>& outputs);

  // Triton's nv_cache_* gauges: the whole cache's figures, over every model.
  struct Usage {
    size_t capacity = 0, used = 0, entries = 0;
    uint64_t hits = 0, misses = 0, evictions = 0;
    uint64_t lookup_ns = 0, insertion_ns = 0;
  };
  Usage usage() const;

 private:
  struct Entry {
    std::string key;
    std::vector<OutputTensor> outputs;  // views of `memory`
    size_t bytes = 0;                   // key and output bytes: what the capacity bounds
  };
  const size_t capacity_;
  mutable std::mutex mutex_;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<std::string_view, std::list<Entry>::iterator> index_;  // views Entry::key
  size_t used_ = 0;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, lookup_ns_ = 0, insertion_ns_ = 0;
};

// One model version's use of the server's cache.
class ModelCache {
 public:
  ModelCache(std::shared_ptr<ResponseCache> cache, std::string model, int64_t version);

  // Before the request is scheduled. A hit fills `response` (the caller answers the request
  // with it); a miss leaves the key in request.cache_key for Store. Either way the lookup's
  // duration is left in request.cache_lookup_ns. Requests that write outputs into client
  // shared memory are not cached (nothing to answer from).
  bool Lookup(InferRequest& request, InferResponse* response);
  // When a response is delivered: stores it if its request missed and it succeeded. As in
  // Triton, a miss is counted then, unless another request stored the key meanwhile.
  // Returns the miss's duration (lookup and insertion), 0 when none was counted.
  uint64_t Store(InferRequest& request, const InferResponse& response);
  // A hit answered: its whole duration, from Lookup to delivery (Triton's request duration).
  void Answered(uint64_t request_ns) { hit_request_ns_.fetch_add(request_ns, std::memory_order_relaxed); }

  struct Counts {
    uint64_t hits = 0, hit_ns = 0;         // lookups that hit, and their duration
    uint64_t misses = 0, miss_ns = 0;      // lookups that missed: lookup and insertion
    uint64_t hit_request_ns = 0;           // hits' request durations
  };
  Counts counts() const;

 private:
  std::shared_ptr<ResponseCache> cache_;
  std::string model_;
  int64_t version_;
  uint64_t load_;  // this load's number, unique in the process
  std::atomic<uint64_t> hits_{0}, hit_ns_{0}, misses_{0}, miss_ns_{0}, hit_request_ns_{0};
};

}  // namespace pyserve
