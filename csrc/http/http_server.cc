// The server's connections, on Boost.Beast: N event loops (one io_context and thread each)
// take accepted connections in turn; a connection reads one request at a time (bounded head,
// body read as it arrives), routes it, and writes the answer handed to its loop with one post.
// Timeouts are deadlines a connection moves with a store, which its loop's sweep (4 a second)
// enforces: no timer is set or cancelled per request. A small inference answer is written by
// the core's thread itself (AnswerHere): the loop lends it the socket while the request is in
// the core, and learns of the answer when it next wakes for the connection (the client's next
// request, or its leaving), which saves a wake-up per request. With TLS, a connection's first
// step is the handshake (within the idle timeout); everything else is the same on the TLS
// stream (whose answers the loop writes).
// Beast's code lives in this file and relay.cc only: it compiles slowly.
#include "http_server.h"

#include <sys/socket.h>

#include <atomic>
#include <openssl/ssl.h>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "elastic_pool.h"
#include "exchange.h"
#include "relay.h"
#include "routes.h"

namespace pyserve::httpfront {

namespace net = boost::asio;
namespace ssl = net::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using error_code = beast::error_code;
using Clock = std::chrono::steady_clock;
using TlsStream = beast::ssl_stream<tcp::socket&>;  // over the session's socket, which it keeps

namespace {

// A request body that grows as its bytes arrive (string_body reserves the declared
// Content-Length up front, which a client need not send); the parser's body_limit bounds it.
struct GrowBody {
  using value_type = std::string;
  static std::uint64_t size(const value_type& v) { return v.size(); }
  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(http::header<isRequest, Fields>&, value_type& body) : body_(body) {}
    void init(const boost::optional<std::uint64_t>&, error_code& ec) { ec = {}; }
    template <class Buffers>
    std::size_t put(const Buffers& buffers, error_code& ec) {
      std::size_t n = 0;
      for (auto it = net::buffer_sequence_begin(buffers); it != net::buffer_sequence_end(buffers); ++it) {
        net::const_buffer b = *it;
        body_.append(static_cast<const char*>(b.data()), b.size());
        n += b.size();
      }
      ec = {};
      return n;
    }
    void finish(error_code& ec) { ec = {}; }

   private:
    value_type& body_;
  };
};

// Error bodies are JSON (Triton's `{"error": ...}` or TorchServe's), never compressed.
const char kErrorType[] = "application/json; charset=utf-8";

HttpRequest ToRequest(http::request<GrowBody>& req) {
  HttpRequest out;
  out.method = std::string(req.method_string());
  out.target = std::string(req.target());
  out.path = out.target.substr(0, out.target.find('?'));
  for (const auto& field : req) out.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
  out.body = std::move(req.body());
  return out;
}

}  // namespace

class Session;

// One event loop: its io_context (on one thread) and the connections it serves.
struct Loop {
  net::io_context context{1};
  std::vector<std::weak_ptr<Session>> sessions;  // touched on the loop's thread only
  net::steady_timer sweep{context};
};

// What the connections share: the routes, the relay, the count of requests in progress and,
// for HTTPS, the TLS context.
struct ServerContext {
  const HttpOptions& options;
  Routes& routes;
  Relay& relay;
  std::atomic<int>& in_progress;
  ssl::context* tls = nullptr;
};

// The TLS context of `tls` (PEM), its security level set before the key is checked against it.
Status MakeTlsContext(const TlsOptions& tls, std::optional<ssl::context>* out) {
  auto& context = out->emplace(ssl::context::tls_server);
  context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3);
  if (tls.security_level >= 0) SSL_CTX_set_security_level(context.native_handle(), tls.security_level);
  error_code ec;
  context.use_certificate_chain(net::buffer(tls.certificate_chain), ec);
  if (ec) return Status(StatusCode::kInvalidArg, "HTTPS: the server certificate cannot be used: " + ec.message());
  context.use_private_key(net::buffer(tls.private_key), ssl::context::pem, ec);
  if (ec) return Status(StatusCode::kInvalidArg, "HTTPS: the server key cannot be used: " + ec.message());
  if (!tls.client_ca.empty()) {
    context.add_certificate_authority(net::buffer(tls.client_ca), ec);
    if (ec) return Status(StatusCode::kInvalidArg, "HTTPS: the root certificate cannot be used: " + ec.message());
    context.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return Status::OK();
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, ServerContext& context) : socket_(std::move(socket)), context_(context) {
    if (context.tls) tls_.emplace(socket_, *context.tls);
  }

  // On the connection's loop.
  void Start(Loop& loop) {
    loop.sessions.push_back(weak_from_this());
    error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);  // small answers must not wait out delayed ACKs
    if (!tls_) return ReadHead();
    // A client that does not complete it (plain HTTP included) is closed.
    Deadline(context_.options.idle_timeout_s);
    tls_->async_handshake(ssl::stream_base::server, [self = shared_from_this()](error_code ec) {
      if (ec) return self->Close();
      self->ReadHead();
    });
  }

  // The loop's sweep: a connection past its deadline is closed (its pending reads and writes
  // end with operation_aborted).
  void Sweep(Clock::time_point now) {
    if (now >= deadline_.load()) Close();
  }

  // The calls below run on the connection's loop; `serial` names the request they answer, so
  // that a late call for an earlier request is dropped.
  void Answer(uint64_t serial, HttpResponse response) {
    if (!Current(serial)) return;
    TakeBack();
    auto res = std::make_shared<http::response<http::string_body>>();
    Fill(*res, response);
    res->body() = std::move(response.body);
    if (!response.Has("Content-Length")) res->prepare_payload();  // else a HEAD's, relayed
    Finish();
    Enqueue([res](Session& s, auto done) {
      s.Io([&](auto& stream) { http::async_write(stream, *res, [res, done](error_code ec, size_t) { done(ec); }); });
    }, !keep_alive_);
  }

  void Head(uint64_t serial, HttpResponse head) {
    if (!Current(serial)) return;
    TakeBack();
    auto res = std::make_shared<http::response<http::empty_body>>();
    Fill(*res, head);
    res->chunked(true);
    auto serializer = std::make_shared<http::response_serializer<http::empty_body>>(*res);
    Enqueue([res, serializer](Session& s, auto done) {
      s.Io([&](auto& stream) {
        http::async_write_header(stream, *serializer, [res, serializer, done](error_code ec, size_t) { done(ec); });
      });
    });
  }

  void Chunk(uint64_t serial, std::string data) {
    if (!Current(serial) || data.empty()) return;  // an empty chunk would end the body
    auto bytes = std::make_shared<std::string>();
    char size[24];
    bytes->append(size, std::snprintf(size, sizeof(size), "%zx\r\n", data.size()));
    bytes->append(data).append("\r\n");
    Enqueue(WriteBytes(std::move(bytes)));
  }

  void End(uint64_t serial) {
    if (!Current(serial)) return;
    Finish();
    Enqueue(WriteBytes(std::make_shared<std::string>("0\r\n\r\n")), !keep_alive_);
  }

  void OnGone(uint64_t serial, std::function<void()> gone) {
    if (Current(serial)) on_gone_ = std::move(gone);
  }

  // Off the loop: writes the answer to request `serial` on the socket the loop lent for it,
  // if it still is (false: answer through the loop). What the socket does not take at once is
  // written by the loop.
  bool AnswerHere(uint64_t serial, HttpResponse& response) {
    const net::any_io_executor executor = socket_.get_executor();
    const auto* loop = executor.target<net::io_context::executor_type>();
    if (loop != nullptr && loop->running_in_this_thread()) return false;  // Answer runs here anyway
    std::lock_guard<std::mutex> lock(lent_mutex_);
    if (!lent_ || lent_serial_ != serial) return false;
    lent_ = false;
    http::response<http::string_body> res;
    Fill(res, response);
    res.body() = std::move(response.body);
    res.prepare_payload();
    std::string bytes = Serialized(res);
    size_t sent = 0;
    int error = 0;
    while (sent < bytes.size()) {
      const ssize_t n = ::send(socket_.native_handle(), bytes.data() + sent, bytes.size() - sent,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        sent += static_cast<size_t>(n);
      } else if (errno != EINTR) {
        error = errno;
        break;
      }
    }
    if (sent == bytes.size()) {
      answered_here_ = true;
      --context_.in_progress;
      Deadline(context_.options.idle_timeout_s);  // as if the loop read on
      return true;
    }
    bytes.erase(0, sent);
    net::post(socket_.get_executor(), [self = shared_from_this(), serial, rest = std::move(bytes), error]() mutable {
      self->AnswerRest(serial, std::move(rest), error);
    });
    return true;
  }

  void Timer(uint64_t serial, Clock::time_point when, std::function<void()> fire) {
    if (!Current(serial)) return;
    if (!timer_) timer_.emplace(socket_.get_executor());
    timer_->expires_at(when);
    timer_->async_wait([self = shared_from_this(), serial, fire = std::move(fire)](error_code ec) {
      if (!ec && self->Current(serial)) fire();
    });
  }

  net::any_io_executor executor() { return socket_.get_executor(); }

 private:
  using Done = std::function<void(error_code)>;
  struct Out {
    std::function<void(Session&, Done)> start;
    bool then_close = false;  // the last part of an answer the client asked to end with
  };

  bool Current(uint64_t serial) const { return serial == serial_ && awaiting_ && !closed_; }

  // The rest of an answer AnswerHere began (or the error that stopped it).
  void AnswerRest(uint64_t serial, std::string rest, int error) {
    if (!Current(serial)) return;
    Finish();
    if (error != EAGAIN && error != EWOULDBLOCK && error != 0) return Close();
    Enqueue(WriteBytes(std::make_shared<std::string>(std::move(rest))));
  }

  // The socket is the loop's again (it answers or closes, or reads on); true when AnswerHere
  // answered the request on it.
  bool TakeBack() {
    std::lock_guard<std::mutex> lock(lent_mutex_);
    lent_ = false;
    return std::exchange(answered_here_, false);
  }

  static std::string Serialized(http::response<http::string_body>& message) {
    std::string out;
    http::response_serializer<http::string_body> serializer{message};
    error_code ec;
    do {
      serializer.next(ec, [&](error_code& ec, const auto& buffers) {
        ec = {};
        size_t n = 0;
        for (const auto buffer : beast::buffers_range_ref(buffers)) {
          out.append(static_cast<const char*>(buffer.data()), buffer.size());
          n += buffer.size();
        }
        serializer.consume(n);
      });
    } while (!ec && !serializer.is_done());
    return out;
  }

  // Runs `op` on the stream requests and answers travel on: the TLS stream or the socket.
  template <class Op>
  void Io(Op&& op) {
    if (tls_) {
      op(*tls_);
    } else {
      op(socket_);
    }
  }

  static std::function<void(Session&, Done)> WriteBytes(std::shared_ptr<std::string> bytes) {
    return [bytes = std::move(bytes)](Session& s, Done done) {
      s.Io([&](auto& stream) { net::async_write(stream, net::buffer(*bytes), [bytes, done](error_code ec, size_t) { done(ec); }); });
    };
  }

  void Deadline(int seconds) { deadline_ = Clock::now() + std::chrono::seconds(seconds); }
  void NoDeadline() { deadline_ = Clock::time_point::max(); }

  void ReadHead() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(context_.options.max_header_bytes));
    parser_->body_limit(context_.options.max_body_bytes);
    Deadline(context_.options.idle_timeout_s);
    Io([&](auto& stream) {
      http::async_read_header(stream, buffer_, *parser_, [self = shared_from_this()](error_code ec, size_t) { self->OnHead(ec); });
    });
  }

  void OnHead(error_code ec) {
    if (ec == http::error::header_limit) return Refuse(431, "request header fields too large");
    if (ec == http::error::body_limit) return RefuseBody();  // its Content-Length
    if (ec) {
      // A stream that ends or stalls between requests is closed quietly; garbage is a 400.
      if (closed_ || ec == http::error::end_of_stream || ec == net::error::eof || ec == ssl::error::stream_truncated ||
          ec == net::error::connection_reset || ec == net::error::operation_aborted || buffer_.size() == 0) {
        return Close();
      }
      return Refuse(400, "malformed HTTP request");
    }
    const auto& req = parser_->get();
    if (static_cast<size_t>(std::distance(req.begin(), req.end())) > context_.options.max_header_count) {
      return Refuse(431, "too many request header fields");
    }
    if (parser_->is_done()) return Route();
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      // The client waits for this before it sends the body (curl, for bodies over 1 KiB).
      static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
      return Io([&](auto& stream) {
        net::async_write(stream, net::buffer(kContinue, sizeof(kContinue) - 1), [self = shared_from_this()](error_code ec, size_t) {
          if (ec) return self->Close();
          self->ReadBody();
        });
      });
    }
    ReadBody();
  }

  // The body, as it arrives: each read may wait body_timeout_s (a slow upload goes on as
  // long as bytes keep coming; the size limit bounds it).
  void ReadBody() {
    Deadline(context_.options.body_timeout_s);
    Io([&](auto& stream) {
      http::async_read_some(stream, buffer_, *parser_, [self = shared_from_this()](error_code ec, size_t) {
        if (ec == http::error::body_limit) return self->RefuseBody();
        if (ec) return self->Close();
        if (self->parser_->is_done()) return self->Route();
        self->ReadBody();
      });
    });
  }

  void Route() {
    reading_ = false;
    keep_alive_ = parser_->get().keep_alive();
    NoDeadline();  // the core's own timeouts bound the wait
    ++serial_;
    awaiting_ = true;
    ++context_.in_progress;
    Watch();
    // Its answer may be written by the core's thread (AnswerHere), unless the loop must read on
    // at once when it is written: a request pipelined after it is in the buffer already.
    if (!tls_ && keep_alive_ && buffer_.size() == 0) {
      std::lock_guard<std::mutex> lock(lent_mutex_);
      lent_ = true;
      lent_serial_ = serial_;
    }
    HttpRequest request = ToRequest(parser_->get());
    parser_.reset();
    auto self = shared_from_this();
    if (!context_.routes.Serve(request, self, serial_)) context_.relay.Send(std::move(request), self, serial_);
  }

  // The client's going, learned on the loop: the socket turns readable with nothing to read.
  // (Bytes instead are a pipelined request, read after this answer: the watch ends. Over TLS
  // the peek is on the socket, below the TLS stream: a client that sends close_notify before
  // closing ends the watch the same way.)
  // It is also how the loop learns of an answer AnswerHere wrote: it reads on from there.
  void Watch() {
    socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this(), serial = serial_](error_code ec) {
      if (ec || !self->Current(serial)) return;
      char c;
      const ssize_t n = ::recv(self->socket_.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
      const bool gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
      if (n < 0 && !gone) return self->Watch();
      if (gone) return self->Close();  // which tells the request (OnGone), if still waiting
      if (!self->TakeBack()) return;  // the next request waits for this answer
      self->Finish(/*counted=*/false);
      self->reading_ = true;
      self->ReadHead();
    });
  }

  // The answer is complete (queued, or written by AnswerHere, which counted it out of those in
  // progress itself): nothing more for this request.
  void Finish(bool counted = true) {
    awaiting_ = false;
    on_gone_ = nullptr;
    if (timer_) timer_->cancel();
    if (counted) --context_.in_progress;
  }

  void Refuse(int status, const std::string& message) {
    ++serial_;
    awaiting_ = true;
    ++context_.in_progress;
    keep_alive_ = false;  // the rest of the request is not read: the connection ends here
    linger_ = true;
    HttpResponse response;
    response.status = status;
    response.content_type = kErrorType;
    response.body = context_.routes.ErrorText(status, message);
    Answer(serial_, std::move(response));
  }

  void RefuseBody() {
    const size_t limit = context_.options.max_body_bytes;
    Refuse(413, "request body is larger than the server's limit of " + std::to_string(limit) +
                    (context_.options.predictions ? " bytes (max_request_size)" : " bytes (--http-max-input-size)"));
  }

  template <class Response>
  void Fill(Response& res, const HttpResponse& response) {
    res.version(11);
    res.result(static_cast<unsigned>(response.status));
    if (!response.reason.empty()) res.reason(response.reason);
    if (!response.content_type.empty()) res.set(http::field::content_type, response.content_type);
    for (const auto& [name, value] : response.headers) res.insert(name, value);
    res.keep_alive(keep_alive_);
  }

  void Enqueue(std::function<void(Session&, Done)> start, bool then_close = false) {
    out_.push_back({std::move(start), then_close});
    if (!writing_) WriteNext();
  }

  void WriteNext() {
    if (closed_) return;
    if (out_.empty()) {
      writing_ = false;
      if (!awaiting_ && !reading_) {
        reading_ = true;
        ReadHead();
      } else {
        NoDeadline();
      }
      return;
    }
    writing_ = true;
    Deadline(context_.options.write_timeout_s);
    out_.front().start(*this, [self = shared_from_this()](error_code ec) {
      const bool then_close = self->out_.front().then_close;
      self->out_.pop_front();
      if (!ec && then_close && self->linger_) return self->Linger(Clock::now() + std::chrono::seconds(30));
      if (ec || then_close) return self->Close();
      self->WriteNext();
    });
  }

  // After refusing a request part-read: no more writes, and what the client still sends is
  // read and dropped (for a while), so that it can finish sending and read the answer
  // instead of meeting a reset.
  void Linger(Clock::time_point until) {
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    if (Clock::now() >= until) return Close();
    Deadline(context_.options.idle_timeout_s);
    if (!scratch_) scratch_ = std::make_unique<char[]>(kScratchBytes);
    socket_.async_read_some(net::buffer(scratch_.get(), kScratchBytes), [self = shared_from_this(), until](error_code ec, size_t) {
      if (ec) return self->Close();
      self->Linger(until);
    });
  }

  // A request still waiting for (the rest of) its answer learns it through its OnGone, however
  // the connection ends: the client closed it, a write failed or timed out, the server stops.
  void Close() {
    if (closed_) return;
    closed_ = true;
    if (TakeBack()) Finish(/*counted=*/false);  // the socket is closed below: not lent now
    std::function<void()> gone = std::move(on_gone_);
    if (awaiting_) Finish();
    out_.clear();
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    if (gone) gone();
  }

  tcp::socket socket_;
  std::optional<TlsStream> tls_;  // HTTPS: over socket_
  std::atomic<Clock::time_point> deadline_{Clock::time_point::max()};  // see Sweep; AnswerHere sets it too
  // The socket lent to the core's thread for one request's answer (AnswerHere).
  std::mutex lent_mutex_;
  bool lent_ = false;
  uint64_t lent_serial_ = 0;
  bool answered_here_ = false;  // AnswerHere wrote it: the loop finishes the request when it wakes
  ServerContext& context_;
  beast::flat_buffer buffer_;  // grows as needed; the parser's limits bound it
  std::optional<http::request_parser<GrowBody>> parser_;
  std::deque<Out> out_;
  std::optional<net::steady_timer> timer_;
  std::function<void()> on_gone_;
  static constexpr size_t kScratchBytes = 16 << 10;
  std::unique_ptr<char[]> scratch_;  // where a refused request's rest is dropped
  uint64_t serial_ = 0;
  bool writing_ = false, keep_alive_ = true, awaiting_ = false, closed_ = false;
  bool linger_ = false;  // a refused request: its rest is read and dropped before closing
  bool reading_ = true;  // a request's head or body is being read
};

// An Exchange on a session: each call runs on the session's loop, at once when made there (a
// route answering as it serves, an answer encoded on the loop), else posted to it.
class SessionExchange : public Exchange {
 public:
  SessionExchange(std::shared_ptr<Session> session, uint64_t serial) : session_(std::move(session)), serial_(serial) {}
  void Answer(HttpResponse response) override {
    Post([response = std::move(response)](Session& s, uint64_t serial) mutable { s.Answer(serial, std::move(response)); });
  }
  void Head(HttpResponse head) override {
    Post([head = std::move(head)](Session& s, uint64_t serial) mutable { s.Head(serial, std::move(head)); });
  }
  void Chunk(std::string data) override {
    Post([data = std::move(data)](Session& s, uint64_t serial) mutable { s.Chunk(serial, std::move(data)); });
  }
  void End() override {
    Post([](Session& s, uint64_t serial) { s.End(serial); });
  }
  void OnGone(std::function<void()> gone) override {
    Post([gone = std::move(gone)](Session& s, uint64_t serial) mutable { s.OnGone(serial, std::move(gone)); });
  }
  void Timer(Clock::time_point when, std::function<void()> fire) override {
    Post([when, fire = std::move(fire)](Session& s, uint64_t serial) mutable { s.Timer(serial, when, std::move(fire)); });
  }
  void Run(std::function<void()> task) override { net::post(session_->executor(), std::move(task)); }
  bool AnswerHere(HttpResponse& response) override { return session_->AnswerHere(serial_, response); }

 private:
  template <class Task>
  void Post(Task task) {
    net::dispatch(session_->executor(), [session = session_, serial = serial_, task = std::move(task)]() mutable {
      task(*session, serial);
    });
  }
  std::shared_ptr<Session> session_;
  uint64_t serial_;
};

std::shared_ptr<Exchange> MakeExchange(const std::shared_ptr<Session>& session, uint64_t serial) {
  return std::make_shared<SessionExchange>(session, serial);
}

class HttpServer::Impl {
 public:
  Impl(std::shared_ptr<ModelTable> table, const HttpOptions& options)
      : options_(options),
        routes_(std::move(table), options_),
        relay_(options_, pool_),
        context_{options_, routes_, relay_, in_progress_},
        loops_(MakeLoops(options.threads)),
        acceptor_(loops_[0]->context),
        retry_(loops_[0]->context) {
    if (options_.predictions) {
      options_.predictions->SetOffload([this](std::function<void()> task) { pool_.Enqueue(std::move(task)); });
    }
  }

  Status Start() {
    if (!options_.tls.certificate_chain.empty()) {
      Status status = MakeTlsContext(options_.tls, &tls_);
      if (!status.ok()) return status;
      context_.tls = &*tls_;
    }
    error_code ec;
    const auto address = net::ip::make_address(options_.host, ec);
    if (!ec) {
      const tcp::endpoint endpoint(address, static_cast<unsigned short>(options_.port));
      acceptor_.open(endpoint.protocol(), ec);
      if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
      if (!ec && options_.reuse_port) {
        acceptor_.set_option(net::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true), ec);
      }
      if (!ec) acceptor_.bind(endpoint, ec);
      if (!ec) acceptor_.listen(options_.backlog, ec);
    }
    if (ec) {
      return Status(StatusCode::kUnavailable, "could not bind the HTTP frontend to " + options_.host + ":" +
                                                  std::to_string(options_.port) + ": " + ec.message());
    }
    port_ = acceptor_.local_endpoint().port();
    for (auto& loop : loops_) guards_.emplace_back(net::make_work_guard(loop->context));
    Accept();
    for (auto& loop : loops_) {
      Sweep(*loop);
      threads_.emplace_back([&loop = *loop] {
        NameThread("ps-http");
        loop.context.run();
      });
    }
    return Status::OK();
  }

  void Stop() {
    if (threads_.empty()) return;
    net::post(acceptor_.get_executor(), [this] {
      error_code ignored;
      acceptor_.close(ignored);
      retry_.cancel();
    });
    // Requests in progress get their answers (bounded: a core that never answers is a bug).
    const auto until = Clock::now() + std::chrono::seconds(60);
    while (in_progress_.load() > 0 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // their last writes
    for (auto& loop : loops_) loop->context.stop();
    for (auto& thread : threads_) thread.join();
    threads_.clear();
    pool_.Shutdown();
  }

  int port() const { return port_; }

 private:
  static std::vector<std::unique_ptr<Loop>> MakeLoops(int threads) {
    std::vector<std::unique_ptr<Loop>> loops;
    for (int i = 0; i < std::max(1, threads); ++i) loops.push_back(std::make_unique<Loop>());
    return loops;
  }

  // Every 250 ms: connections past their deadline are closed; those gone are forgotten.
  static void Sweep(Loop& loop) {
    loop.sweep.expires_after(std::chrono::milliseconds(250));
    loop.sweep.async_wait([&loop](error_code ec) {
      if (ec) return;
      const auto now = Clock::now();
      auto& sessions = loop.sessions;
      for (size_t i = 0; i < sessions.size();) {
        if (auto session = sessions[i].lock()) {
          session->Sweep(now);
          ++i;
        } else {
          sessions[i] = std::move(sessions.back());
          sessions.pop_back();
        }
      }
      Sweep(loop);
    });
  }

  void Accept() {
    Loop& loop = *loops_[next_loop_++ % loops_.size()];
    acceptor_.async_accept(loop.context, [this, &loop](error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
      if (ec == net::error::no_descriptors || ec.value() == ENFILE || ec == net::error::no_buffer_space ||
          ec == net::error::no_memory) {
        // Out of descriptors: back off rather than spin on the connection still pending.
        retry_.expires_after(std::chrono::milliseconds(100));
        retry_.async_wait([this](error_code ec) {
          if (!ec) Accept();
        });
        return;
      }
      if (!ec) {
        net::post(loop.context, [&loop, session = std::make_shared<Session>(std::move(socket), context_)] {
          session->Start(loop);
        });
      }
      Accept();
    });
  }

  HttpOptions options_;
  std::optional<ssl::context> tls_;
  ElasticPool pool_{1024, std::chrono::seconds(30)};
  Routes routes_;
  Relay relay_;
  std::atomic<int> in_progress_{0};
  ServerContext context_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> guards_;
  tcp::acceptor acceptor_;
  net::steady_timer retry_;
  std::vector<std::thread> threads_;
  size_t next_loop_ = 0;
  int port_ = 0;
};

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() { impl_->Stop(); }

Status HttpServer::Create(std::shared_ptr<ModelTable> table, const HttpOptions& options,
                          std::unique_ptr<HttpServer>* server) {
  auto impl = std::make_shared<Impl>(std::move(table), options);
  Status status = impl->Start();
  if (!status.ok()) return status;
  server->reset(new HttpServer(std::move(impl)));
  return Status::OK();
}

int HttpServer::port() const { return impl_->port(); }
void HttpServer::Stop() { impl_->Stop(); }

}  // namespace pyserve::httpfront
