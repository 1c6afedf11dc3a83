#include "relay.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
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
};

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
  // A kept connection the shell has closed meanwhile fails the first try: one more, afresh.
  for (int attempt = 0; attempt < 2; ++attempt) {
    beast::error_code ec;
    const bool fresh = !shell.socket;
    if (fresh) {
      shell.socket.emplace(shell.io);
      shell.socket->connect(tcp::endpoint(net::ip::address_v4::loopback(), static_cast<unsigned short>(options_.shell_port)), ec);
      if (!ec) shell.socket->set_option(tcp::no_delay(true), ec);
    }
    if (!ec) http::write(*shell.socket, out, ec);
    http::response_parser<http::string_body> parser;
    parser.body_limit(boost::none);  // the shell's answers are its own to bound
    const bool head = out.method() == http::verb::head;
    parser.skip(head);  // a HEAD's answer declares a length it does not send
    if (!ec) http::read(*shell.socket, shell.buffer, parser, ec);
    if (ec) {
      shell.socket.reset();
      shell.buffer.clear();
      if (fresh) break;
      continue;
    }
    auto& answer = parser.get();
    if (!answer.keep_alive()) {
      shell.socket.reset();
      shell.buffer.clear();
    }
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
  HttpResponse unreachable;
  unreachable.status = 503;
  unreachable.content_type = "application/json; charset=utf-8";
  unreachable.body = ErrorBody("the server's control plane is not reachable");
  return unreachable;
}

}  // namespace pyserve::httpfront
