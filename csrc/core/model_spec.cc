#include "model_spec.h"

namespace pyserve {

namespace {
const TensorSpec* Find(const std::vector<TensorSpec>& specs, const std::string& name) {
  for (const TensorSpec& spec : specs) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}
}  // namespace

const TensorSpec* ModelSpec::FindInput(const std::string& input) const { return Find(inputs, input); }
const TensorSpec* ModelSpec::FindOutput(const std::string& output) const {
  return Find(outputs, output);
}

bool ModelSpec::IsStateOutput(const std::string& output) const {
  return Find(state_outputs, output) != nullptr;
}

std::vector<int64_t> Reshaped(const std::vector<int64_t>& shape,
                              const std::vector<int64_t>& source,
                              const std::vector<int64_t>& target, bool batching) {
  const size_t skip = batching && !shape.empty() ? 1 : 0;
  std::vector<int64_t> variable;
  for (size_t i = 0; i < source.size() && i + skip < shape.size(); ++i) {
    if (source[i] == -1) variable.push_back(shape[i + skip]);
  }
  std::vector<int64_t> out(shape.begin(), shape.begin() + skip);
  size_t next = 0;
  for (int64_t dim : target) {
    out.push_back(dim == -1 && next < variable.size() ? variable[next++] : dim);
  }
  return out;
}

}  // namespace pyserve
