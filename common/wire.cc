#include "common/wire.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace gnc {
namespace {

// Protobuf wire types.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLength = 2;
constexpr int kFixed32 = 5;

// Reader: protobuf wire primitives over a sequence of slices.
class Reader {
 public:
  Reader(const std::vector<grpc::Slice>& slices, size_t begin, size_t end)
      : slices_(slices), pos_(begin), end_(end) {
    // Find the slice holding `begin`.
    size_t at = 0;
    for (index_ = 0; index_ < slices_.size(); ++index_) {
      if (at + slices_[index_].size() > begin || index_ + 1 == slices_.size()) break;
      at += slices_[index_].size();
    }
    offset_ = begin - at;
  }

  size_t pos() const { return pos_; }
  bool done() const { return pos_ >= end_; }

  bool Byte(uint8_t* b) {
    if (pos_ >= end_) return false;
    while (offset_ >= slices_[index_].size()) {
      ++index_;
      offset_ = 0;
    }
    *b = slices_[index_].begin()[offset_++];
    ++pos_;
    return true;
  }

  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!Byte(&b)) return false;
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }

  bool Fixed(int bytes, uint64_t* v) {
    *v = 0;
    for (int i = 0; i < bytes; ++i) {
      uint8_t b;
      if (!Byte(&b)) return false;
      *v |= static_cast<uint64_t>(b) << (8 * i);
    }
    return true;
  }

  // Take: the next n bytes as spans into the slices.
  bool Take(size_t n, Payload* out) {
    if (n > end_ - pos_) return false;
    out->pieces.clear();
    out->size = n;
    while (n > 0) {
      while (offset_ >= slices_[index_].size()) {
        ++index_;
        offset_ = 0;
      }
      const size_t here = std::min(n, slices_[index_].size() - offset_);
      out->pieces.emplace_back(slices_[index_].begin() + offset_, here);
      offset_ += here;
      pos_ += here;
      n -= here;
    }
    return true;
  }

  bool Skip(size_t n) {
    Payload ignored;
    return Take(n, &ignored);
  }

  // SkipField: a field of wire type `type` that the caller does not know.
  bool SkipField(int type) {
    uint64_t v;
    switch (type) {
      case kVarint:
        return Varint(&v);
      case kFixed64:
        return Skip(8);
      case kLength:
        return Varint(&v) && Skip(v);
      case kFixed32:
        return Skip(4);
      default:
        return false;
    }
  }

 private:
  const std::vector<grpc::Slice>& slices_;
  size_t index_ = 0;   // slice of the current position
  size_t offset_ = 0;  // within that slice
  size_t pos_;
  size_t end_;
};

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed ", what, " message"));
}

// ForEachField: calls fn(field, type, reader) for every field of the message in
// [begin, end); fn reads the field's value. Fields that appear twice are simply seen
// twice: a caller that assigns each field merges messages as protobuf does.
template <typename Fn>
bool ForEachField(const std::vector<grpc::Slice>& slices, size_t begin, size_t end, Fn fn) {
  Reader r(slices, begin, end);
  while (!r.done()) {
    uint64_t tag;
    if (!r.Varint(&tag)) return false;
    const int field = static_cast<int>(tag >> 3), type = static_cast<int>(tag & 7);
    if (!fn(field, type, r)) return false;
  }
  return r.pos() == end;
}

// SubMessage: the [begin, end) of a length-delimited field; the reader moves past it.
bool SubMessage(Reader& r, size_t* begin, size_t* end) {
  uint64_t len;
  if (!r.Varint(&len)) return false;
  *begin = r.pos();
  *end = *begin + len;
  return r.Skip(len);
}

bool ParseChunk(const std::vector<grpc::Slice>& s, size_t begin, size_t end, ChunkView* c) {
  return ForEachField(s, begin, end, [&](int field, int type, Reader& r) {
    uint64_t v;
    if (field == 1 && type == kVarint) {
      if (!r.Varint(&v)) return false;
      c->offset = static_cast<int64_t>(v);
    } else if (field == 2 && type == kVarint) {
      if (!r.Varint(&v)) return false;
      c->dtype = static_cast<v1::DType>(v);
    } else if (field == 3 && type == kLength) {
      if (!r.Varint(&v)) return false;
      return r.Take(v, &c->data);
    } else if (field == 4 && type == kVarint) {
      if (!r.Varint(&v)) return false;
      c->last = v != 0;
    } else {
      return r.SkipField(type);
    }
    return true;
  });
}

// ParsePoint: EvalPoint (chunk field 2) and PullResponse (chunk field 2) share the
// layout: step 1, chunk 2, job_id 3 (fixed64), generation 4.
bool ParsePoint(const std::vector<grpc::Slice>& s, size_t begin, size_t end, PointView* p) {
  return ForEachField(s, begin, end, [&](int field, int type, Reader& r) {
    uint64_t v;
    size_t b, e;
    if (field == 1 && type == kVarint) {
      if (!r.Varint(&v)) return false;
      p->step = static_cast<int64_t>(v);
    } else if (field == 2 && type == kLength) {
      return SubMessage(r, &b, &e) && ParseChunk(s, b, e, &p->chunk);
    } else if (field == 3 && type == kFixed64) {
      if (!r.Fixed(8, &v)) return false;
      p->job_id = v;
    } else if (field == 4 && type == kVarint) {
      if (!r.Varint(&v)) return false;
      p->generation = static_cast<int64_t>(v);
    } else {
      return r.SkipField(type);
    }
    return true;
  });
}

size_t Dump(const grpc::ByteBuffer& msg, std::vector<grpc::Slice>* slices) {
  slices->clear();
  if (!msg.Dump(slices).ok()) return 0;
  size_t total = 0;
  for (const grpc::Slice& s : *slices) total += s.size();
  return total;
}

// Writer: a header being built, ending with the tag and length of the payload.
class Writer {
 public:
  void Varint(uint64_t v) {
    while (v >= 0x80) {
      buf_[n_++] = static_cast<uint8_t>(v | 0x80);
      v >>= 7;
    }
    buf_[n_++] = static_cast<uint8_t>(v);
  }
  void Tag(int field, int type) { Varint(static_cast<uint64_t>(field) << 3 | type); }
  void VarintField(int field, uint64_t v) {
    Tag(field, kVarint);
    Varint(v);
  }
  void Fixed64Field(int field, uint64_t v) {
    Tag(field, kFixed64);
    for (int i = 0; i < 8; ++i) buf_[n_++] = static_cast<uint8_t>(v >> (8 * i));
  }
  void Append(const Writer& other) {
    std::memcpy(buf_ + n_, other.buf_, other.n_);
    n_ += other.n_;
  }
  size_t size() const { return n_; }
  const uint8_t* data() const { return buf_; }

 private:
  uint8_t buf_[128];
  size_t n_ = 0;
};

// VarintSize: bytes of v as a varint.
size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// ChunkHeader: the Chunk's fields up to the data field's tag and length.
Writer ChunkHeader(int64_t offset, v1::DType dtype, bool last, size_t payload) {
  Writer w;
  w.VarintField(1, static_cast<uint64_t>(offset));
  w.VarintField(2, static_cast<uint64_t>(dtype));
  w.VarintField(4, last ? 1 : 0);
  w.Tag(3, kLength);
  w.Varint(payload);
  return w;
}

// Message: `outer` (the fields before the chunk), then the chunk as field
// `chunk_field`, all inside field `top_field` when it is non-zero.
void ReleaseOwner(void* owner) { delete static_cast<std::shared_ptr<const void>*>(owner); }

// PayloadSlice: the payload as a slice without a copy, holding `owner` while gRPC
// holds the slice.
grpc::Slice PayloadSlice(std::span<const uint8_t> payload, std::shared_ptr<const void> owner) {
  void* bytes = const_cast<uint8_t*>(payload.data());  // gRPC only reads it
  if (owner == nullptr) return grpc::Slice(bytes, payload.size(), grpc::Slice::STATIC_SLICE);
  return grpc::Slice(bytes, payload.size(), &ReleaseOwner,
                     new std::shared_ptr<const void>(std::move(owner)));
}

grpc::ByteBuffer Message(int top_field, const Writer& outer, int chunk_field,
                         const Writer& chunk, std::span<const uint8_t> payload,
                         std::shared_ptr<const void> owner) {
  const size_t chunk_len = chunk.size() + payload.size();
  Writer mid;
  mid.Append(outer);
  mid.Tag(chunk_field, kLength);
  mid.Varint(chunk_len);
  Writer head;
  if (top_field != 0) {
    head.Tag(top_field, kLength);
    head.Varint(mid.size() + chunk_len);
  }
  head.Append(mid);
  head.Append(chunk);
  grpc::Slice slices[2] = {grpc::Slice(head.data(), head.size()),
                           PayloadSlice(payload, std::move(owner))};
  return grpc::ByteBuffer(slices, payload.empty() ? 1 : 2);
}

}  // namespace

absl::Status ParseTrainRequest(const grpc::ByteBuffer& msg, std::vector<grpc::Slice>* slices,
                               TrainRequestView* out) {
  const size_t total = Dump(msg, slices);
  *out = TrainRequestView();
  const bool ok = ForEachField(*slices, 0, total, [&](int field, int type, Reader& r) {
    size_t b, e;
    // A oneof member that follows the other starts from defaults, as in protobuf; one
    // that follows itself merges into it.
    if (field == 1 && type == kLength) {
      if (out->kind != TrainRequestView::Kind::kHello) *out = TrainRequestView();
      out->kind = TrainRequestView::Kind::kHello;
      return SubMessage(r, &b, &e) &&
             ForEachField(*slices, b, e, [&](int f, int t, Reader& rr) {
               uint64_t v;
               if (f == 1 && t == kVarint) {
                 if (!rr.Varint(&v)) return false;
                 out->rank = static_cast<int32_t>(v);
               } else if (f == 2 && t == kVarint) {
                 if (!rr.Varint(&v)) return false;
                 out->wire_dtype = static_cast<v1::DType>(v);
               } else {
                 return rr.SkipField(t);
               }
               return true;
             });
    }
    if (field == 2 && type == kLength) {
      if (out->kind != TrainRequestView::Kind::kGradient) *out = TrainRequestView();
      out->kind = TrainRequestView::Kind::kGradient;
      return SubMessage(r, &b, &e) &&
             ForEachField(*slices, b, e, [&](int f, int t, Reader& rr) {
               uint64_t v;
               size_t cb, ce;
               if (f == 3 && t == kLength) {
                 return SubMessage(rr, &cb, &ce) && ParseChunk(*slices, cb, ce, &out->chunk);
               }
               if (t != kVarint || (f != 1 && f != 2 && f != 4)) return rr.SkipField(t);
               if (!rr.Varint(&v)) return false;
               (f == 1 ? out->step : f == 2 ? out->num_samples : out->generation) =
                   static_cast<int64_t>(v);
               return true;
             });
    }
    return r.SkipField(type);
  });
  return ok ? absl::OkStatus() : Malformed("TrainRequest");
}

absl::Status ParseTrainResponse(const grpc::ByteBuffer& msg, std::vector<grpc::Slice>* slices,
                                TrainResponseView* out) {
  const size_t total = Dump(msg, slices);
  *out = TrainResponseView();
  const bool ok = ForEachField(*slices, 0, total, [&](int field, int type, Reader& r) {
    size_t b, e;
    if (field == 1 && type == kLength) {  // oneof: as in ParseTrainRequest
      if (out->kind != TrainResponseView::Kind::kEvalPoint) *out = TrainResponseView();
      out->kind = TrainResponseView::Kind::kEvalPoint;
      return SubMessage(r, &b, &e) && ParsePoint(*slices, b, e, &out->point);
    }
    if (field == 2 && type == kLength) {
      if (out->kind != TrainResponseView::Kind::kAck) *out = TrainResponseView();
      out->kind = TrainResponseView::Kind::kAck;
      return SubMessage(r, &b, &e) &&
             ForEachField(*slices, b, e, [&](int f, int t, Reader& rr) {
               uint64_t v;
               if (f == 1 && t == kVarint) {
                 if (!rr.Varint(&v)) return false;
                 out->ack_step = static_cast<int64_t>(v);
               } else if (f == 2 && t == kVarint) {
                 if (!rr.Varint(&v)) return false;
                 out->ack_code = static_cast<int32_t>(v);
               } else if (f == 3 && t == kLength) {
                 Payload text;
                 if (!rr.Varint(&v) || !rr.Take(v, &text)) return false;
                 out->ack_message.clear();
                 for (auto piece : text.pieces) out->ack_message.append(piece.begin(), piece.end());
               } else {
                 return rr.SkipField(t);
               }
               return true;
             });
    }
    return r.SkipField(type);
  });
  return ok ? absl::OkStatus() : Malformed("TrainResponse");
}

absl::Status ParsePullResponse(const grpc::ByteBuffer& msg, std::vector<grpc::Slice>* slices,
                               PointView* out) {
  const size_t total = Dump(msg, slices);
  *out = PointView();
  return ParsePoint(*slices, 0, total, out) ? absl::OkStatus() : Malformed("PullResponse");
}

grpc::ByteBuffer EncodeHello(int32_t rank, v1::DType wire_dtype) {
  Writer hello;
  hello.VarintField(1, static_cast<uint64_t>(static_cast<int64_t>(rank)));
  hello.VarintField(2, static_cast<uint64_t>(wire_dtype));
  Writer msg;
  msg.Tag(1, kLength);
  msg.Varint(hello.size());
  msg.Append(hello);
  grpc::Slice slice(msg.data(), msg.size());
  return grpc::ByteBuffer(&slice, 1);
}

grpc::ByteBuffer EncodeGradientChunk(int64_t step, int64_t num_samples, int64_t generation,
                                     int64_t offset, v1::DType dtype, bool last,
                                     std::span<const uint8_t> payload,
    std::shared_ptr<const void> owner) {
  Writer outer;
  outer.VarintField(1, static_cast<uint64_t>(step));
  outer.VarintField(2, static_cast<uint64_t>(num_samples));
  outer.VarintField(4, static_cast<uint64_t>(generation));
  return Message(2, outer, 3, ChunkHeader(offset, dtype, last, payload.size()), payload,
                 std::move(owner));
}

grpc::ByteBuffer EncodeEvalPointChunk(int64_t step, uint64_t job_id, int64_t generation,
                                      int64_t offset, v1::DType dtype, bool last,
                                      std::span<const uint8_t> payload,
    std::shared_ptr<const void> owner) {
  Writer outer;
  outer.VarintField(1, static_cast<uint64_t>(step));
  outer.Fixed64Field(3, job_id);
  outer.VarintField(4, static_cast<uint64_t>(generation));
  return Message(1, outer, 2, ChunkHeader(offset, dtype, last, payload.size()), payload,
                 std::move(owner));
}

grpc::ByteBuffer EncodePullChunk(int64_t step, uint64_t job_id, int64_t generation,
                                 int64_t offset, v1::DType dtype, bool last,
                                 std::span<const uint8_t> payload,
    std::shared_ptr<const void> owner) {
  Writer outer;
  outer.VarintField(1, static_cast<uint64_t>(step));
  outer.Fixed64Field(3, job_id);
  outer.VarintField(4, static_cast<uint64_t>(generation));
  return Message(0, outer, 2, ChunkHeader(offset, dtype, last, payload.size()), payload,
                 std::move(owner));
}

grpc::ByteBuffer EncodeAck(int64_t step, int32_t code, const std::string& message) {
  v1::TrainResponse resp;  // small and rare: the generated code is fine here
  v1::TrainResponse::Ack* ack = resp.mutable_ack();
  ack->set_step(step);
  ack->set_code(code);
  ack->set_message(message);
  const std::string bytes = resp.SerializeAsString();
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

absl::StatusOr<int64_t> PayloadElements(size_t size, v1::DType dtype) {
  size_t element;
  switch (dtype) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::FLOAT32:
      element = 4;
      break;
    case v1::BFLOAT16:
      element = 2;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unsupported dtype ", dtype));
  }
  if (size % element != 0) {
    return absl::InvalidArgumentError(absl::StrCat("chunk payload of ", size,
                                                   " bytes is not a whole number of ", element,
                                                   "-byte elements"));
  }
  return static_cast<int64_t>(size / element);
}

absl::StatusOr<WireDType> ToWireDType(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::FLOAT32:
      return WireDType::kFloat32;
    case v1::BFLOAT16:
      return WireDType::kBfloat16;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unsupported dtype ", dtype));
  }
}

v1::DType ToProtoDType(WireDType dtype) {
  return dtype == WireDType::kBfloat16 ? v1::BFLOAT16 : v1::FLOAT32;
}

}  // namespace gnc
