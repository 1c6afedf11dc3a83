#include "relay.h"

#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <optional>

#include "http_server.h"
#include "infer_json.h"
#include "routes.h"

namespace pyserve::httpfront {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

bool HopByHop(std::string_view header) {
  static const char* const kHop[] = {"connection", "keep-alive", "transfer-encoding", "content-length",
                                     "host", "te", "upgrade", "expect"};
  for (const char* h : kHop) {
    if (EqualsIgnoringCase(header, h)) return true;
  }
  return false;
}

// One keep-alive connection to the shell per pool thread, opened when first needed and again
// after the shell closes it.
struct ShellConnection {
  net::io_context io;
  std::optional<tcp::socket> socket;
  beast::flat_buffer buffer;

  void Reset() {
    socket.reset();
    buffer.clear();
  }

  // Whether the kept connection is still open: the shell closes idle ones (its keep-alive
  // timeout), which shows as an end of stream waiting to be read.
  bool Open() {
    if (!socket) return false;
    char c;
    const ssize_t n = ::recv(socket->native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  // Runs the operations started on `io` until they complete or `timeout` passes, then closes
  // the connection (which ends them); false when the timeout passed.
  bool RunFor(std::chrono::seconds timeout) {
    io.restart();
    io.run_for(timeout);
    if (io.stopped()) return true;
    Reset();
    io.restart();
    io.run();
    return false;
  }
};

// Requests whose repetition changes nothing: only these are sent again after a kept
// connection fails, since the shell may have acted on the first (a POST that loaded a model).
bool Idempotent(http::verb method) {
  return method == http::verb::get || method == http::verb::head || method == http::verb::options;
}

HttpResponse ErrorAnswer(int status, const std::string& message) {
  HttpResponse answer;
  answer.status = status;
  answer.content_type = "application/json; charset=utf-8";
  answer.body = ErrorBody(message);
  return answer;
}

}  // namespace

void Relay::Send(HttpRequest request, const std::shared_ptr<Session>& session, uint64_t serial) {
  pool_.Enqueue([this, request = std::move(request), exchange = MakeExchange(session, serial)]() mutable {
    exchange->Answer(Call(request));
  });
}

HttpResponse Relay::Call(HttpRequest& request) {
  thread_local ShellConnection shell;
  http::request<http::string_body> out{http::string_to_verb(request.method), request.target, 11};
  if (out.method() == http::verb::unknown) out.method_string(request.method);
  for (const auto& [name, value] : request.headers) {
    if (!HopByHop(name)) out.insert(name, value);
  }
  out.set(http::field::host, "127.0.0.1:" + std::to_string(options_.shell_port));
  out.keep_alive(true);
  out.body() = std::move(request.body);  // compressed bodies included: the shell inflates them within its limit
  out.prepare_payload();
  // A kept connection the shell closed is found before it is used; one that fails anyway is
  // tried again, afresh, when the request did not reach the shell whole or may be repeated.
  if (!shell.Open()) shell.Reset();
  for (int attempt = 0; attempt < 2; ++attempt) {
    beast::error_code ec;
    const bool fresh = !shell.socket;
    if (fresh) {
      shell.socket.emplace(shell.io);
      shell.socket->connect(tcp::endpoint(net::ip::address_v4::loopback(), static_cast<unsigned short>(options_.shell_port)), ec);
      if (!ec) shell.socket->set_option(tcp::no_delay(true), ec);
    }
    if (!ec) http::write(*shell.socket, out, ec);
    const bool sent = !ec;
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);  // the shell's answers are its own to bound
    const bool head = out.method() == http::verb::head;
    parser.skip(head);  // a HEAD's answer declares a length it does not send
    if (!ec) {
      // Read with a deadline: a shell that never answers must not hold a thread for ever.
      http::async_read(*shell.socket, shell.buffer, parser, [&ec](beast::error_code e, size_t) { ec = e; });
      if (!shell.RunFor(std::chrono::seconds(options_.relay_timeout_s))) {
        return ErrorAnswer(504, "the server's control plane did not answer within " +
                                    std::to_string(options_.relay_timeout_s) + " s");
      }
    }
    if (ec) {
      shell.Reset();
      if (fresh || (sent && !Idempotent(out.method()))) break;
      continue;
    }
    auto& answer = parser.get();
    if (!answer.keep_alive()) shell.Reset();
    HttpResponse response;
    response.status = static_cast<int>(answer.result_int());
    response.reason = std::string(answer.reason());
    for (const auto& field : answer) {
      if (field.name() == http::field::content_type) {
        response.content_type = std::string(field.value());
      } else if (const auto name = field.name_string();
                 !HopByHop(std::string_view(name.data(), name.size())) ||
                 (head && field.name() == http::field::content_length)) {
        response.Set(std::string(field.name_string()), std::string(field.value()));
      }
    }
    response.body = std::move(answer.body());
    return response;
  }
  return ErrorAnswer(503, "the server's control plane is not reachable");
}

}  // namespace pyserve::httpfront
