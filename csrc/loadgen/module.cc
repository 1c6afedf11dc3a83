// pyserve._loadgen: pyserve bench's native load generator, optional (built where gRPC C++ is
// found; HTTP where cpp-httplib is too). Python encodes the requests once and reads the
// timings per window; the requests themselves never take the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "load_generator.h"
#include "senders.h"

namespace py = pybind11;
using namespace pyserve::loadgen;

namespace {

class PyGenerator {
 public:
  PyGenerator(const std::string& kind, const std::string& host, int port, bool tls,
              double timeout_s, const py::list& payloads, size_t threads, double request_rate) {
    Target target{host, port, tls, timeout_s};
    SenderFactory factory;
    if (kind == "http") {
      std::vector<HttpRequest> requests;
      for (const auto& item : payloads) {
        auto [path, body, headers] =
            item.cast<std::tuple<std::string, py::bytes, std::vector<std::pair<std::string, std::string>>>>();
        requests.push_back({path, std::string(body), headers});
      }
      factory = HttpSenders(target, requests);
      if (!factory) throw std::runtime_error("built without cpp-httplib: no native HTTP load");
    } else if (kind == "grpc" || kind == "grpc-stream") {
      std::vector<std::string> messages;
      for (const auto& item : payloads) messages.emplace_back(item.cast<py::bytes>());
      factory = kind == "grpc" ? GrpcUnarySenders(target, messages)
                               : GrpcStreamSenders(target, messages);
    } else {
      throw std::invalid_argument("kind must be grpc, grpc-stream or http, not '" + kind + "'");
    }
    generator_ = std::make_unique<LoadGenerator>(std::move(factory), payloads.size(), threads,
                                                 request_rate);
  }

  void Start() {
    py::gil_scoped_release nogil;
    generator_->Start();
  }

  void Stop() {
    py::gil_scoped_release nogil;
    generator_->Stop();
  }

  // (end times, latencies, ok) of the requests finished since the last call
  py::tuple Take() {
    std::vector<Record> records;
    {
      py::gil_scoped_release nogil;
      records = generator_->Take();
    }
    py::array_t<double> ends(records.size()), latencies(records.size());
    py::array_t<bool> ok(records.size());
    auto e = ends.mutable_unchecked<1>();
    auto l = latencies.mutable_unchecked<1>();
    auto o = ok.mutable_unchecked<1>();
    for (size_t i = 0; i < records.size(); ++i) {
      e(i) = records[i].end;
      l(i) = records[i].latency;
      o(i) = records[i].ok;
    }
    return py::make_tuple(ends, latencies, ok);
  }

 private:
  std::unique_ptr<LoadGenerator> generator_;
};

}  // namespace

PYBIND11_MODULE(_loadgen, m) {
  m.doc() = "pyserve bench's native load generator (private; see pyserve.bench._load)";
  m.attr("HTTP") = HttpSupported();
  py::class_<PyGenerator>(m, "Generator")
      .def(py::init<const std::string&, const std::string&, int, bool, double, const py::list&,
                    size_t, double>(),
           py::arg("kind"), py::arg("host"), py::arg("port"), py::arg("tls"),
           py::arg("timeout_s"), py::arg("payloads"), py::arg("threads"),
           py::arg("request_rate") = 0.0)
      .def("start", &PyGenerator::Start)
      .def("stop", &PyGenerator::Stop)
      .def("take", &PyGenerator::Take);
}
