#include "probes.h"

#include <algorithm>

#include "utf8.h"
#include "wire.h"

namespace pyserve::grpcfront {

namespace {

// ServerLiveResponse, ServerReadyResponse and ModelReadyResponse: `bool field 1`.
std::string Flag(bool value) { return value ? std::string("\x08\x01", 2) : std::string(); }

// grpc.health.v1.HealthCheckResponse: `status` SERVING (1) or NOT_SERVING (2).
std::string Serving(bool value) { return std::string("\x08", 1) + (value ? '\x01' : '\x02'); }

std::optional<std::string> ModelReady(std::string_view request, const ModelTable& table) {
  std::string_view name, version;
  wire::Reader r(request);
  while (r.Next()) {
    if (r.type() != wire::kLength) continue;
    if (r.field() == 1) name = r.bytes();
    if (r.field() == 2) version = r.bytes();
  }
  if (!r.error().empty() || !ValidUtf8(name) || !ValidUtf8(version)) return std::nullopt;
  // Find reads plain numbers as the shell does; the shell reads the rest ("+1", " 1").
  if (!std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return Flag(table.Find(name, version) != nullptr);
}

}  // namespace

std::optional<std::string> ProbeResponse(std::string_view method, std::string_view request,
                                         const ModelTable& table) {
  constexpr std::string_view kService = "/inference.GRPCInferenceService/";
  if (method == "/grpc.health.v1.Health/Check") return Serving(table.ServerReady());
  if (method.substr(0, kService.size()) != kService) return std::nullopt;
  const std::string_view rpc = method.substr(kService.size());
  if (rpc == "ServerLive") return Flag(true);
  if (rpc == "ServerReady") return Flag(table.ServerReady());
  if (rpc == "ModelReady") return ModelReady(request, table);
  return std::nullopt;
}

}  // namespace pyserve::grpcfront
