// What routes write through an Exchange besides bytes: server-sent events, and the header
// lookups of requests and answers.
#include "exchange.h"

#include <gtest/gtest.h>

namespace pyserve::httpfront {
namespace {

TEST(SseEvent, OneDataLinePerLineOfData) {
  EXPECT_EQ(SseEvent(R"({"text_output": "a"})"), "data: {\"text_output\": \"a\"}\n\n");
  EXPECT_EQ(SseEvent("one\ntwo\r\nthree\rfour"), "data: one\ndata: two\ndata: three\ndata: four\n\n");
  EXPECT_EQ(SseEvent("trailing\n"), "data: trailing\ndata: \n\n");
  EXPECT_EQ(SseEvent(""), "data: \n\n");
}

TEST(SseEvent, NamedEvent) {
  EXPECT_EQ(SseEvent("{}", "error"), "event: error\ndata: {}\n\n");
}

TEST(Headers, LookedUpIgnoringCase) {
  HttpRequest request;
  request.headers = {{"Content-Type", "text/plain"}, {"X-One", "1"}, {"x-one", "2"}};
  EXPECT_EQ(request.Header("content-type"), "text/plain");
  EXPECT_EQ(request.Header("X-ONE"), "1");  // the first
  EXPECT_EQ(request.Header("missing"), "");
  EXPECT_FALSE(request.Has("missing"));
  HttpResponse response;
  response.Set("Cache-Control", "no-cache");
  EXPECT_TRUE(response.Has("cache-control"));
}

}  // namespace
}  // namespace pyserve::httpfront
