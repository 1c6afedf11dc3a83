// pyserve._http_server: the native HTTP frontend as a Python extension, optional (built where
// Boost and RapidJSON are found), so that pyserve._core imports without it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <map>

#include "http_server.h"

namespace py = pybind11;

namespace {

class PyHttpServer {
 public:
  PyHttpServer(std::shared_ptr<pyserve::ModelTable> table, const std::string& host, int port,
               int shell_port, int threads, size_t max_body_bytes,
               std::shared_ptr<pyserve::SharedMemoryRegistry> shared_memory,
               std::shared_ptr<pyserve::ModelTable> predictions_table, size_t max_response_bytes,
               std::vector<std::pair<std::string, std::string>> response_headers,
               py::object on_timeout, int backlog, bool reuse_port,
               std::map<std::string, std::pair<std::string, std::string>> restricted,
               std::string header_forward_pattern, py::object tls) {
    pyserve::httpfront::HttpOptions options;
    if (predictions_table) {
      pyserve::httpfront::PredictionsOptions p;
      p.table = std::move(predictions_table);
      p.max_response_bytes = max_response_bytes;
      p.response_headers = std::move(response_headers);
      if (!on_timeout.is_none()) {
        // Held and released under the GIL: the server's threads only call it.
        auto callback = std::shared_ptr<py::object>(new py::object(std::move(on_timeout)), [](py::object* o) {
          py::gil_scoped_acquire gil;
          delete o;
        });
        p.on_timeout = [callback](const std::string& key) {
          py::gil_scoped_acquire gil;
          try {
            (*callback)(key);
          } catch (py::error_already_set& e) {
            e.discard_as_unraisable("pyserve: the response-timeout callback");
          }
        };
      }
      predictions_ = std::make_shared<pyserve::httpfront::Predictions>(std::move(p));
      options.predictions = predictions_;
    }
    options.host = host;
    options.port = port;
    options.shell_port = shell_port;
    options.threads = threads;
    options.backlog = backlog;
    options.reuse_port = reuse_port;
    options.restricted = std::move(restricted);
    options.header_forward_pattern = std::move(header_forward_pattern);
    options.max_body_bytes = max_body_bytes;
    if (!tls.is_none()) {  // {"certificate_chain", "private_key", "client_ca": PEM, "security_level"}
      const auto d = tls.cast<py::dict>();
      options.tls.certificate_chain = d["certificate_chain"].cast<std::string>();
      options.tls.private_key = d["private_key"].cast<std::string>();
      if (d.contains("client_ca")) options.tls.client_ca = d["client_ca"].cast<std::string>();
      if (d.contains("security_level") && !d["security_level"].is_none()) {
        options.tls.security_level = d["security_level"].cast<int>();
      }
    }
    options.shared_memory = std::move(shared_memory);
    pyserve::Status status;
    {
      py::gil_scoped_release nogil;
      status = pyserve::httpfront::HttpServer::Create(std::move(table), options, &server_);
    }
    if (!status.ok()) throw std::runtime_error(status.message());
  }

  ~PyHttpServer() {
    if (!stopped_) Stop();
  }

  int port() const { return server_->port(); }

  pyserve::httpfront::Predictions& predictions() {
    if (!predictions_) throw std::runtime_error("this server does not serve TorchServe's predictions");
    return *predictions_;
  }

  void Stop() {
    py::gil_scoped_release nogil;
    server_->Stop();
    stopped_ = true;
  }

 private:
  std::shared_ptr<pyserve::httpfront::Predictions> predictions_;
  std::unique_ptr<pyserve::httpfront::HttpServer> server_;
  bool stopped_ = false;
};

}  // namespace

PYBIND11_MODULE(_http_server, m) {
  m.doc() = "pyserve's native HTTP frontend (private; see pyserve.frontends.http_native)";
  py::module_::import("pyserve._core");  // ModelTable, SharedMemoryRegistry
  py::class_<PyHttpServer>(m, "Server")
      .def(py::init<std::shared_ptr<pyserve::ModelTable>, const std::string&, int, int, int, size_t,
                    std::shared_ptr<pyserve::SharedMemoryRegistry>, std::shared_ptr<pyserve::ModelTable>, size_t,
                    std::vector<std::pair<std::string, std::string>>, py::object, int, bool,
                    std::map<std::string, std::pair<std::string, std::string>>, std::string, py::object>(),
           py::arg("table"), py::arg("host"), py::arg("port"), py::arg("shell_port"),
           py::arg("threads") = 8, py::arg("max_body_bytes") = size_t(64) << 20,
           py::arg("shared_memory") = nullptr, py::arg("predictions_table") = nullptr,
           py::arg("max_response_bytes") = size_t(6553500),
           py::arg("response_headers") = std::vector<std::pair<std::string, std::string>>(),
           py::arg("on_timeout") = py::none(), py::arg("backlog") = INT_MAX,
           py::arg("reuse_port") = false,
           py::arg("restricted") = std::map<std::string, std::pair<std::string, std::string>>(),
           py::arg("header_forward_pattern") = "", py::arg("tls") = py::none())
      .def_property_readonly("port", &PyHttpServer::port)
      // TorchServe's inference API (a server made with a predictions_table):
      .def("set_inference_key", [](PyHttpServer& s, const std::string& key, int64_t expires) {
        s.predictions().SetKey(key, expires);
      }, py::arg("key"), py::arg("expires_unix_s") = 0)
      .def("set_response_timeout", [](PyHttpServer& s, const std::string& key, int seconds) {
        s.predictions().SetResponseTimeout(key, seconds);
      })
      .def("set_healthy", [](PyHttpServer& s, bool healthy) { s.predictions().SetHealthy(healthy); })
      .def("push", [](PyHttpServer& s, uint64_t token, py::bytes frame) {
        std::string data = frame;
        py::gil_scoped_release nogil;
        return s.predictions().Push(token, std::move(data));
      })
      .def("started", [](PyHttpServer& s, const std::vector<uint64_t>& tokens) {
        s.predictions().Started(tokens);
      })
      .def("prediction_counters", [](PyHttpServer& s) {
        py::list out;
        for (const auto& c : s.predictions().Counters()) {
          out.append(py::make_tuple(c.key, c.requests, c.latency_us, c.queue_us));
        }
        return out;
      })
      .def("status_classes", [](PyHttpServer& s) {
        const auto classes = s.predictions().StatusClasses();
        return py::make_tuple(classes[0], classes[1], classes[2]);
      })
      .def("stop", &PyHttpServer::Stop);
}
