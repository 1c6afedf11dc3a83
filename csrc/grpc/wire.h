// The protobuf wire format, as far as the inference messages need it: reading fields of a
// message as views of its bytes (no copies, no generated code, no libprotobuf to clash with
// the protobuf other extensions in the process bring), and writing fields.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace pyserve::grpcfront::wire {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLength = 2, kFixed32 = 5 };
constexpr uint64_t kMaxField = (uint64_t{1} << 29) - 1;

// Reads one message's fields in order. After Next() returns true, field()/type() describe the
// field and varint()/fixed64()/bytes() its value (a fixed32 reads as varint()). A malformed
// message sets error().
class Reader {
 public:
  explicit Reader(std::string_view data) : p_(data.data()), end_(data.data() + data.size()) {}

  bool Next() {
    if (p_ == end_ || !error_.empty()) return false;
    uint64_t key = 0;
    if (!Varint(&key)) return Fail("truncated field key");
    // Field numbers are 1 to 2^29 - 1; protobuf refuses a key outside, as it refuses 0.
    if ((key >> 3) == 0 || (key >> 3) > kMaxField) return Fail("invalid field number");
    field_ = static_cast<uint32_t>(key >> 3);
    type_ = static_cast<uint32_t>(key & 7);
    switch (type_) {
      case kVarint:
        if (!Varint(&value_)) return Fail("truncated varint");
        return true;
      case kFixed64:
        if (end_ - p_ < 8) return Fail("truncated fixed64");
        std::memcpy(&value_, p_, 8);
        p_ += 8;
        return true;
      case kFixed32: {
        if (end_ - p_ < 4) return Fail("truncated fixed32");
        uint32_t v = 0;
        std::memcpy(&v, p_, 4);
        value_ = v;
        p_ += 4;
        return true;
      }
      case kLength: {
        uint64_t length = 0;
        if (!Varint(&length)) return Fail("truncated length");
        if (length > static_cast<uint64_t>(end_ - p_)) return Fail("field runs past the end");
        bytes_ = std::string_view(p_, static_cast<size_t>(length));
        p_ += length;
        return true;
      }
      default:
        return Fail("unsupported wire type " + std::to_string(type_));
    }
  }

  uint32_t field() const { return field_; }
  uint32_t type() const { return type_; }
  uint64_t varint() const { return value_; }
  uint64_t fixed64() const { return value_; }
  std::string_view bytes() const { return bytes_; }
  const std::string& error() const { return error_; }

  // A packed repeated scalar's next value from `packed` (advanced past it).
  static bool NextVarint(std::string_view* packed, uint64_t* value) {
    Reader r(*packed);
    if (!r.Varint(value)) return false;
    packed->remove_prefix(static_cast<size_t>(r.p_ - packed->data()));
    return true;
  }

 private:
  bool Varint(uint64_t* value) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64 && p_ < end_; shift += 7) {
      const uint8_t byte = static_cast<uint8_t>(*p_++);
      result |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (byte < 0x80) {
        *value = result;
        return true;
      }
    }
    return false;
  }
  bool Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }

  const char* p_;
  const char* end_;
  uint32_t field_ = 0, type_ = 0;
  uint64_t value_ = 0;
  std::string_view bytes_;
  std::string error_;
};

inline void PutVarint(std::string* out, uint64_t value) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// A length-delimited field (string, bytes, embedded message).
inline void PutBytes(std::string* out, uint32_t field, std::string_view data) {
  PutVarint(out, (static_cast<uint64_t>(field) << 3) | kLength);
  PutVarint(out, data.size());
  out->append(data.data(), data.size());
}

// proto3: an empty string is not written.
inline void PutString(std::string* out, uint32_t field, std::string_view data) {
  if (!data.empty()) PutBytes(out, field, data);
}

}  // namespace pyserve::grpcfront::wire
