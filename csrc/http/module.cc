// pyserve._http_server: the native HTTP frontend as a Python extension, optional (built where
// cpp-httplib and RapidJSON are found), so that pyserve._core imports without it.
#include <pybind11/pybind11.h>

#include "http_server.h"

namespace py = pybind11;

namespace {

class PyHttpServer {
 public:
  PyHttpServer(std::shared_ptr<pyserve::ModelTable> table, const std::string& host, int port,
               int shell_port, int threads, size_t max_body_bytes,
               std::shared_ptr<pyserve::SharedMemoryRegistry> shared_memory) {
    pyserve::httpfront::HttpOptions options;
    options.host = host;
    options.port = port;
    options.shell_port = shell_port;
    options.threads = threads;
    options.max_body_bytes = max_body_bytes;
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

  void Stop() {
    py::gil_scoped_release nogil;
    server_->Stop();
    stopped_ = true;
  }

 private:
  std::unique_ptr<pyserve::httpfront::HttpServer> server_;
  bool stopped_ = false;
};

}  // namespace

PYBIND11_MODULE(_http_server, m) {
  m.doc() = "pyserve's native HTTP frontend (private; see pyserve.frontends.http_native)";
  py::module_::import("pyserve._core");  // ModelTable, SharedMemoryRegistry
  py::class_<PyHttpServer>(m, "Server")
      .def(py::init<std::shared_ptr<pyserve::ModelTable>, const std::string&, int, int, int, size_t,
                    std::shared_ptr<pyserve::SharedMemoryRegistry>>(),
           py::arg("table"), py::arg("host"), py::arg("port"), py::arg("shell_port"),
           py::arg("threads") = 64, py::arg("max_body_bytes") = size_t(64) << 20,
           py::arg("shared_memory") = nullptr)
      .def_property_readonly("port", &PyHttpServer::port)
      .def("stop", &PyHttpServer::Stop);
}
