#include "response_cache.h"

#include <algorithm>
#include <cstring>

namespace pyserve {

namespace {

void Append(std::string& key, const void* data, size_t size) {
  key.append(static_cast<const char*>(data), size);
}

template <typename T>
void AppendValue(std::string& key, T value) {
  Append(key, &value, sizeof(value));
}

void AppendText(std::string& key, std::string_view text) {
  AppendValue<uint64_t>(key, text.size());
  Append(key, text.data(), text.size());
}

}  // namespace

std::string ResponseCache::Key(std::string_view model, int64_t version,
                               const InferRequest& request, uint64_t load) {
  // Length-prefixed fields, so that no two different requests make the same key.
  std::vector<const TensorView*> inputs;
  inputs.reserve(request.inputs.size());
  size_t size = 64 + model.size();
  for (const TensorView& input : request.inputs) {
    inputs.push_back(&input);
    size += 32 + input.name.size() + 8 * input.shape.size() + input.byte_size;
  }
  for (const RequestedOutput& output : request.outputs) size += 16 + output.name.size();
  std::sort(inputs.begin(), inputs.end(),
            [](const TensorView* a, const TensorView* b) { return a->name < b->name; });

  std::string key;
  key.reserve(size);
  AppendText(key, model);
  AppendValue<int64_t>(key, version);
  AppendValue<uint64_t>(key, load);
  AppendValue<uint64_t>(key, inputs.size());
  for (const TensorView* input : inputs) {
    AppendText(key, input->name);
    AppendValue<uint8_t>(key, static_cast<uint8_t>(input->dtype));
    AppendValue<uint64_t>(key, input->shape.size());
    Append(key, input->shape.data(), input->shape.size() * sizeof(int64_t));
    AppendValue<uint64_t>(key, input->byte_size);
    Append(key, input->data, input->byte_size);
  }
  AppendValue<uint64_t>(key, request.outputs.size());
  for (const RequestedOutput& output : request.outputs) {
    AppendText(key, output.name);
    AppendValue<uint32_t>(key, output.classification);
  }
  return key;
}

bool ResponseCache::Lookup(const std::string& key, std::vector<OutputTensor>* outputs) {
  const uint64_t start = SteadyNowNs();
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = index_.find(key);
  const bool hit = found != index_.end();
  if (hit) {
    lru_.splice(lru_.begin(), lru_, found->second);
    *outputs = found->second->outputs;
  }
  ++(hit ? hits_ : misses_);
  lookup_ns_ += SteadyNowNs() - start;
  return hit;
}

ResponseCache::Inserted ResponseCache::Insert(const std::string& key,
                                              const std::vector<OutputTensor>& outputs) {
  const uint64_t start = SteadyNowNs();
  size_t data_bytes = 0;
  for (const OutputTensor& output : outputs) data_bytes += output.byte_size;
  const size_t bytes = key.size() + data_bytes;
  if (bytes > capacity_) return Inserted::kTooLarge;

  // The copy is made outside the lock: lookups of other keys go on meanwhile.
  std::shared_ptr<uint8_t[]> memory(new uint8_t[std::max<size_t>(data_bytes, 1)]);
  Entry entry{key, {}, bytes};
  entry.outputs.reserve(outputs.size());
  size_t offset = 0;
  for (const OutputTensor& output : outputs) {
    OutputTensor copy = output;
    if (output.byte_size > 0) std::memcpy(memory.get() + offset, output.data, output.byte_size);
    copy.data = memory.get() + offset;
    copy.memory = memory;
    offset += output.byte_size;
    entry.outputs.push_back(std::move(copy));
  }

  std::lock_guard<std::mutex> lock(mutex_);
  if (index_.count(key) != 0) return Inserted::kAlreadyStored;
  while (used_ + bytes > capacity_) {
    Entry& oldest = lru_.back();
    used_ -= oldest.bytes;
    index_.erase(oldest.key);
    lru_.pop_back();
    ++evictions_;
  }
  lru_.push_front(std::move(entry));
  index_.emplace(lru_.front().key, lru_.begin());
  used_ += bytes;
  insertion_ns_ += SteadyNowNs() - start;
  return Inserted::kStored;
}

ResponseCache::Usage ResponseCache::usage() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return Usage{capacity_, used_, lru_.size(), hits_, misses_, evictions_, lookup_ns_,
               insertion_ns_};
}

ModelCache::ModelCache(std::shared_ptr<ResponseCache> cache, std::string model, int64_t version)
    : cache_(std::move(cache)), model_(std::move(model)), version_(version) {
  static std::atomic<uint64_t> loads{0};
  load_ = loads.fetch_add(1) + 1;
}

bool ModelCache::Lookup(InferRequest& request, InferResponse* response) {
  for (const RequestedOutput& output : request.outputs) {
    if (output.shared_memory) return false;
  }
  const uint64_t start = SteadyNowNs();
  std::string key = ResponseCache::Key(model_, version_, request, load_);
  std::vector<OutputTensor> outputs;
  const bool hit = cache_->Lookup(key, &outputs);
  const uint64_t took = SteadyNowNs() - start;
  request.cache_lookup_ns = took;
  if (hit) {
    hits_.fetch_add(1, std::memory_order_relaxed);
    hit_ns_.fetch_add(took, std::memory_order_relaxed);
    *response = InferResponse{Status::OK(), std::move(outputs)};
    return true;
  }
  request.cache_key = std::move(key);
  return false;
}

uint64_t ModelCache::Store(InferRequest& request, const InferResponse& response) {
  if (request.cache_key.empty() || !response.status.ok()) return 0;
  const uint64_t start = SteadyNowNs();
  const auto inserted = cache_->Insert(request.cache_key, response.outputs);
  const uint64_t took = SteadyNowNs() - start;
  uint64_t miss_ns = 0;
  if (inserted != ResponseCache::Inserted::kAlreadyStored) {
    miss_ns = request.cache_lookup_ns + took;
    misses_.fetch_add(1, std::memory_order_relaxed);
    miss_ns_.fetch_add(miss_ns, std::memory_order_relaxed);
  }
  request.cache_key.clear();
  request.cache_key.shrink_to_fit();
  return miss_ns;
}

ModelCache::Counts ModelCache::counts() const {
  return Counts{hits_.load(), hit_ns_.load(), misses_.load(), miss_ns_.load(),
                hit_request_ns_.load()};
}

}  // namespace pyserve
