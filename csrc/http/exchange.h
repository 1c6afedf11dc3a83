// One HTTP request and the way back to its client, without the HTTP library: what the routes
// (native inference, TorchServe's predictions) see of the server. The connection's event loop
// owns the socket; the answer may come from any thread (the core's), and is posted to it.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pyserve::httpfront {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;  // "POST", as sent
  std::string target;  // path and query, as sent
  std::string path;    // the target without its query
  Headers headers;     // as sent, in order
  std::string body;    // as sent (Content-Encoding is the shell's to undo)

  // The first value of the header (case-insensitive), or "".
  std::string_view Header(std::string_view name) const;
  bool Has(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string reason;  // "" = the standard phrase
  std::string content_type;
  Headers headers;  // besides Content-Type and the framing headers, which the server writes
  std::string body;

  void Set(std::string name, std::string value) { headers.emplace_back(std::move(name), std::move(value)); }
  bool Has(std::string_view name) const;
};

// The answer to one request, written by its connection's loop. Every method may be called
// from any thread, in the order Answer, or Head then Chunk... then End; calls after the
// client has gone are dropped.
//
// Streams (chunked encoding) are Head, Chunk..., End. Server-sent events are such a stream:
// Head with content type "text/event-stream" (and "Cache-Control: no-cache"), each event a
// Chunk(SseEvent(...)), End when done; OnGone tells the producer that the client has gone
// (it closed the connection, stopped reading past the write timeout, or the server stops),
// after which it should stop producing. Streamed bodies are never compressed.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual void Answer(HttpResponse response) = 0;
  // A streamed answer: status and headers now, the body in chunks (chunked encoding).
  virtual void Head(HttpResponse head) = 0;
  virtual void Chunk(std::string data) = 0;
  virtual void End() = 0;
  // `gone` runs on the loop, once, if the client closes the connection before the answer is
  // written; set it before the request can be answered.
  virtual void OnGone(std::function<void()> gone) = 0;
  // `fire` runs on the loop at `when` unless the exchange ends first; a later call replaces it.
  virtual void Timer(std::chrono::steady_clock::time_point when, std::function<void()> fire) = 0;
  // Runs `task` on the connection's loop (work that belongs there rather than on the caller's
  // thread: encoding a large answer on the core's).
  virtual void Run(std::function<void()> task) = 0;
  // Writes the answer from the calling thread, which saves waking the loop for it, where the
  // connection allows (plain TCP, keep-alive, nothing pipelined behind the request, not on the
  // loop's own thread). False: `response` is as it was, for Answer.
  virtual bool AnswerHere(HttpResponse& response) { (void)response; return false; }
};

bool EqualsIgnoringCase(std::string_view a, std::string_view b);

// One server-sent event as a Chunk carries it: a line "event: <event>" unless `event` is
// empty, then each line of `data` (split at \n, \r\n or \r) as a "data: " line, then the
// blank line that ends the event.
std::string SseEvent(std::string_view data, std::string_view event = {});

}  // namespace pyserve::httpfront
