// pyserve._grpc_server: the native gRPC frontend as a Python extension, optional (built where
// gRPC C++ is found), so that pyserve._core imports without it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "grpc_server.h"
#include "python_thread.h"

namespace py = pybind11;

namespace pyserve::grpcfront {

namespace {

// A ModelInfer message the native frontend could not resolve, as a Python buffer that owns
// its bytes: it reaches the shell (which words the refusal) without a copy under the GIL.
struct RequestBytes {
  std::string data;
};

const char kModelInferMethod[] = "/inference.GRPCInferenceService/ModelInfer";

// RPCs for the shell go through one thread that takes the GIL, so that the completion-queue
// threads never wait for it.
class ShellQueue {
 public:
  explicit ShellQueue(py::object dispatch) : dispatch_(std::move(dispatch)) {
    thread_ = std::thread([this] {
      pyserve::NameThread("ps-grpc-shell");
      Run();
    });
  }
  ~ShellQueue() {
    if (thread_.joinable()) thread_.detach();  // not closed: the process is going away
  }

  // Answers what is queued, then stops the thread. Without the GIL.
  void Close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
    }
    ready_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void Push(const std::string& method, std::string request, Reply reply) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!closed_) {
        work_.push_back({method, std::move(request), std::move(reply)});
        ready_.notify_one();
        return;
      }
    }
    reply(14, "the server is shutting down", "");
  }

 private:
  struct Work {
    std::string method, request;
    Reply reply;
  };

  void Run() {
    for (;;) {
      Work work;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return closed_ || !work_.empty(); });
        if (work_.empty()) return;
        work = std::move(work_.front());
        work_.pop_front();
      }
      pyserve::PythonThreadGil gil;
      try {
        py::object request = work.method == kModelInferMethod
                                 ? py::cast(RequestBytes{std::move(work.request)})
                                 : py::object(py::bytes(work.request));  // small control RPCs
        dispatch_(work.method, request, py::cpp_function(
            [reply = work.reply](int code, const std::string& message, const py::bytes& body) {
              std::string data = body;
              py::gil_scoped_release nogil;
              reply(code, message, data);
            }));
      } catch (const std::exception& e) {  // error_already_set, or a C++ error in between
        const std::string text = e.what();
        py::gil_scoped_release nogil;
        work.reply(13, "pyserve: " + text, "");
      }
    }
  }

  py::object dispatch_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Work> work_;
  bool closed_ = false;
  std::thread thread_;
};

class PyGrpcServer {
 public:
  PyGrpcServer(std::shared_ptr<ModelTable> table, const std::string& address, py::object dispatch,
               int threads, int max_message_bytes, std::map<std::string, int> channel_args,
               std::string server_cert, std::string server_key, std::string root_cert,
               bool mutual, std::map<std::string, std::pair<std::string, std::string>> restricted,
               std::string header_forward_pattern,
               std::shared_ptr<SharedMemoryRegistry> shared_memory, int infer_compression_level)
      : shell_(std::make_shared<ShellQueue>(std::move(dispatch))) {
    GrpcOptions options;
    options.address = address;
    options.threads = threads;
    options.max_message_bytes = max_message_bytes;
    options.channel_args = std::move(channel_args);
    options.server_cert = std::move(server_cert);
    options.server_key = std::move(server_key);
    options.root_cert = std::move(root_cert);
    options.mutual = mutual;
    options.restricted = std::move(restricted);
    options.header_forward_pattern = std::move(header_forward_pattern);
    options.shared_memory = std::move(shared_memory);
    options.infer_compression_level = infer_compression_level;
    std::weak_ptr<ShellQueue> shell = shell_;
    Status status;
    {
      py::gil_scoped_release nogil;
      status = GrpcServer::Create(std::move(table), options,
                                  [shell](const std::string& method, std::string request, Reply reply) {
                                    if (auto queue = shell.lock()) {
                                      queue->Push(method, std::move(request), std::move(reply));
                                    } else {
                                      reply(14, "the server is shutting down", "");
                                    }
                                  },
                                  &server_);
      // Its thread waits on the queue's condition variable, which must not be destroyed
      // under it (the destructor only detaches: at exit the thread may hold the GIL).
      if (!status.ok()) shell_->Close();
    }
    if (!status.ok()) throw std::runtime_error(status.message());
  }

  ~PyGrpcServer() {
    if (!stopped_) Stop(0);
  }

  int port() const { return server_->port(); }

  void Stop(double grace_seconds) {
    py::gil_scoped_release nogil;
    server_->Stop(grace_seconds);
    shell_->Close();
    stopped_ = true;
  }

 private:
  std::shared_ptr<ShellQueue> shell_;
  std::unique_ptr<GrpcServer> server_;
  bool stopped_ = false;
};

}  // namespace

}  // namespace pyserve::grpcfront

PYBIND11_MODULE(_grpc_server, m) {
  using pyserve::grpcfront::PyGrpcServer;
  m.doc() = "pyserve's native gRPC frontend (private; see pyserve.frontends.grpc_native)";
  py::module_::import("pyserve._core");  // ModelTable, SharedMemoryRegistry
  using pyserve::grpcfront::RequestBytes;
  py::class_<RequestBytes>(m, "RequestBytes", py::buffer_protocol())
      .def_buffer([](RequestBytes& bytes) {
        return py::buffer_info(bytes.data.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(bytes.data.size())}, {1},
                               /*readonly=*/true);
      });
  py::class_<PyGrpcServer>(m, "Server")
      .def(py::init<std::shared_ptr<pyserve::ModelTable>, const std::string&, py::object, int, int,
                    std::map<std::string, int>, std::string, std::string, std::string, bool,
                    std::map<std::string, std::pair<std::string, std::string>>, std::string,
                    std::shared_ptr<pyserve::SharedMemoryRegistry>, int>(),
           py::arg("table"), py::arg("address"), py::arg("dispatch"), py::arg("threads") = 2,
           py::arg("max_message_bytes") = 0x7fffffff,
           py::arg("channel_args") = std::map<std::string, int>{},
           py::arg("server_cert") = "", py::arg("server_key") = "", py::arg("root_cert") = "",
           py::arg("mutual") = false,
           py::arg("restricted") = std::map<std::string, std::pair<std::string, std::string>>{},
           py::arg("header_forward_pattern") = "",
           py::arg("shared_memory") = nullptr, py::arg("infer_compression_level") = 0)
      .def_property_readonly("port", &PyGrpcServer::port)
      .def("stop", &PyGrpcServer::Stop, py::arg("grace_seconds") = 0.0);
}
