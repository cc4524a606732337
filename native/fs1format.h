// wcfs native — the FileStorage (Data.fs) format as the native readers need it: header sizes,
// the position bound, big-endian field reads. One place for fs1scan.cc and fs1views.cc; the
// format itself is described in ../shared/spec/zodb.md §2 and src/zodb/fs1/format.ts.
#pragma once
#include <cstdint>
#include <cstring>

namespace wcfs {
namespace fs1 {

constexpr uint64_t kTxnHeader = 23, kDataHeader = 42, kTrailer = 8, kBackpointer = 8, kFileHeader = 4;
// positions and lengths are ≤ 2⁴⁸ - 1 (format.ts MAX_POS): bounded before any sum of them
constexpr uint64_t kMaxPos = (uint64_t(1) << 48) - 1;

inline uint64_t be64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}
inline uint32_t be16(const uint8_t* p) { return (uint32_t(p[0]) << 8) | p[1]; }

}  // namespace fs1
}  // namespace wcfs
