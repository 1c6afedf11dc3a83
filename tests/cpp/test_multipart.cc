// The multipart/form-data splitter behind TorchServe's native predictions: the parts it takes,
// and the bodies it leaves to the shell's parser.
#include "multipart.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace pyserve::httpfront {
namespace {

std::string Content(const std::string& body, const FormPart& part) { return body.substr(part.offset, part.size); }

TEST(Multipart, BoundaryFromContentType) {
  EXPECT_EQ(FormDataBoundary("multipart/form-data; boundary=abc123"), "abc123");
  EXPECT_EQ(FormDataBoundary("Multipart/Form-Data;boundary=\"a b\""), "a b");
  EXPECT_EQ(FormDataBoundary("multipart/mixed; boundary=abc"), "");
  EXPECT_EQ(FormDataBoundary("multipart/form-data"), "");
  EXPECT_EQ(FormDataBoundary("application/json"), "");
}

TEST(Multipart, SplitsPartsAsTheHandlerSeesThem) {
  const std::string body =
      "preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"data\"; filename=\"k.jpg\"\r\n"
      "Content-Type: image/jpeg\r\n\r\njpeg\r\nbytes\r\n--XyZ\r\n"
      "Content-Disposition: form-data; name=\"text\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
      "--XyZ\r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n\r\n--XyZ--\r\n";
  std::vector<FormPart> parts;
  ASSERT_TRUE(SplitFormData(body, "XyZ", &parts));
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].name, "data");
  EXPECT_EQ(parts[0].content_type, "image/jpeg");
  EXPECT_EQ(Content(body, parts[0]), "jpeg\r\nbytes");
  EXPECT_EQ(parts[1].name, "text");
  EXPECT_EQ(parts[1].content_type, "");  // no filename: TorchServe's worker ignores its type
  EXPECT_EQ(Content(body, parts[1]), "hello");
  EXPECT_EQ(parts[2].name, "empty");
  EXPECT_EQ(Content(body, parts[2]), "");
}

TEST(Multipart, LeavesUnusualBodiesToTheShell) {
  const std::vector<std::string> refused = {
      "",                                                                      // no parts
      "--b--\r\n",                                                             // no parts
      "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",  // no closing
      "--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--",               // no name
      "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--",       // unquoted
      "--b\r\nContent-Disposition: form-data; name=\"a\"; filename*=UTF-8''x\r\n\r\nx\r\n--b--",
      "--b\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--b--",
      "--b\r\nContent-Disposition: form-data; name=\"a\\\"b\"\r\n\r\nx\r\n--b--",  // escaped
      "--b\r\nContent-Disposition: form-data; name=\"a\"\r\n"
      "Content-Transfer-Encoding: base64\r\n\r\neA==\r\n--b--",
  };
  for (const std::string& body : refused) {
    std::vector<FormPart> parts;
    EXPECT_FALSE(SplitFormData(body, "b", &parts)) << body;
  }
}

}  // namespace
}  // namespace pyserve::httpfront
