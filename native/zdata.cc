// wcfs native — ZBlk1 assembly: copies many ZData records' chunk bytes into one block, parsing
// each record in the layouts ZODB writes without the pickle machine (notes.md §8 "ZBlk1").
//
// Owns nothing. Pure: no I/O, no allocation, no error texts. JS (zbigfile.ts readZBlk1) owns
// every decision: this stops at the first chunk it cannot take, and JS takes that one through
// the general path (the decoder), which reports any error, then calls again after it.
//
//   zdataGather(src: Uint8Array, ranges: Float64Array(2n), offs: Float64Array(n), from: number,
//               n: number, out: Uint8Array, stop: Float64Array(1)) → i
//
// Chunk k's record is src[ranges[2k], ranges[2k+1]) (-1: none here) and lands at out[offs[k]].
// Chunks from..i-1 are copied, i is the first one not taken (n: all). stop (in/out) = the end
// of the last chunk copied (chunks come in key order and must not overlap).
//
// Invariants:
//   - A chunk is taken exactly when zbigfile.ts zdataFast recognises its record and it passes
//     readZBlk1's checks (off ≥ stop, off + len ≤ out.length); the layouts, one per line:
//       class  [PROTO ≤5] GLOBAL "wendelin.bigfile.file_zodb\nZData\n" [memo] STOP
//       state  [PROTO ≤5] (SHORT_BINBYTES|SHORT_BINSTRING n1 | BINBYTES|BINSTRING n4 < 2³¹) bytes [memo] STOP
//       memo = BINPUT k | LONG_BINPUT k | MEMOIZE; nothing may follow the last STOP.
//     test/zdata-native.test.ts checks the two agree on fuzzed records.
//   - out holds old bytes, so the gap before each chunk is zeroed here (the tail after the last
//     chunk is the caller's); every write is inside out, every read inside the record.
#include "addon.h"

#include <cstdint>
#include <cstring>

namespace wcfs {
namespace {

constexpr uint8_t OP_PROTO = 0x80, OP_STOP = 0x2e, OP_BINPUT = 0x71, OP_LONG_BINPUT = 0x72, OP_MEMOIZE = 0x94;
constexpr char kGlobal[] = "cwendelin.bigfile.file_zodb\nZData\n";
constexpr size_t kGlobalLen = sizeof kGlobal - 1;

// position after an optional memo store at p, or SIZE_MAX when it runs past n
inline size_t skipMemo(const uint8_t* r, size_t p, size_t n) {
  if (p >= n) return p;
  const size_t q = r[p] == OP_BINPUT ? p + 2 : r[p] == OP_LONG_BINPUT ? p + 5 : r[p] == OP_MEMOIZE ? p + 1 : p;
  return q <= n ? q : SIZE_MAX;
}

// The chunk bytes of a ZData record r[0, n): true with [*start, *start + *len), false when the
// layout is not one of the above.
bool zdata(const uint8_t* r, size_t n, size_t* start, size_t* len) {
  size_t p = 0;
  if (n > 0 && r[0] == OP_PROTO) {
    if (n < 2 || r[1] > 5) return false;
    p = 2;
  }
  if (p + kGlobalLen > n || std::memcmp(r + p, kGlobal, kGlobalLen) != 0) return false;
  p = skipMemo(r, p + kGlobalLen, n);
  if (p >= n || r[p] != OP_STOP) return false;
  p++;
  if (p < n && r[p] == OP_PROTO) {
    if (p + 2 > n || r[p + 1] > 5) return false;
    p += 2;
  }
  if (p >= n) return false;
  const uint8_t op = r[p];
  size_t l;
  if (op == 0x43 || op == 0x55) {  // SHORT_BINBYTES, SHORT_BINSTRING
    if (p + 2 > n) return false;
    l = r[p + 1];
    p += 2;
  } else if (op == 0x42 || op == 0x54) {  // BINBYTES, BINSTRING: 4-byte LE, < 2³¹
    if (p + 5 > n) return false;
    l = size_t(r[p + 1]) | size_t(r[p + 2]) << 8 | size_t(r[p + 3]) << 16 | size_t(r[p + 4]) << 24;
    if (l >= 0x80000000u) return false;
    p += 5;
  } else {
    return false;
  }
  const size_t end = p + l;
  if (end >= n) return false;
  const size_t q = skipMemo(r, end, n);
  if (q == SIZE_MAX || q + 1 != n || r[q] != OP_STOP) return false;
  *start = p;
  *len = l;
  return true;
}

template <typename T>
T* data(const Napi::TypedArray& a) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset());
}

Napi::Value ZDataGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static const char* usage =
      "zdataGather(src: Uint8Array, ranges: Float64Array, offs: Float64Array, from: number, n: number, out: "
      "Uint8Array, stop: Float64Array)";
  if (info.Length() != 7 || !info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsNumber() || !info[4].IsNumber() || !info[5].IsTypedArray() || !info[6].IsTypedArray())
    throw Napi::TypeError::New(env, usage);
  auto src = info[0].As<Napi::TypedArray>(), ranges = info[1].As<Napi::TypedArray>(),
       offs = info[2].As<Napi::TypedArray>(), out = info[5].As<Napi::TypedArray>(),
       stopA = info[6].As<Napi::TypedArray>();
  if (src.TypedArrayType() != napi_uint8_array || ranges.TypedArrayType() != napi_float64_array ||
      offs.TypedArrayType() != napi_float64_array || out.TypedArrayType() != napi_uint8_array ||
      stopA.TypedArrayType() != napi_float64_array || stopA.ElementLength() < 1)
    throw Napi::TypeError::New(env, usage);
  const double fromD = info[3].As<Napi::Number>().DoubleValue(), nD = info[4].As<Napi::Number>().DoubleValue();
  const size_t olen = out.ByteLength(), slen = src.ByteLength();
  double* stopP = data<double>(stopA);
  if (!(nD >= 0 && nD <= double(offs.ElementLength()) && nD * 2 <= double(ranges.ElementLength())) ||
      !(fromD >= 0 && fromD <= nD) || !(stopP[0] >= 0 && stopP[0] <= double(olen)))
    throw Napi::RangeError::New(env, usage);
  const uint8_t* s = data<const uint8_t>(src);
  const double* rp = data<const double>(ranges);
  const double* offp = data<const double>(offs);
  uint8_t* o = data<uint8_t>(out);
  const size_t n = size_t(nD);
  size_t stop = size_t(stopP[0]), i = size_t(fromD);
  for (; i < n; i++) {
    const double a = rp[2 * i], b = rp[2 * i + 1], offD = offp[i];
    if (!(a >= 0 && a <= b && b <= double(slen))) break;
    size_t p, l;
    if (!zdata(s + size_t(a), size_t(b) - size_t(a), &p, &l)) break;
    if (!(offD >= double(stop) && offD <= double(olen))) break;
    const size_t off = size_t(offD);
    if (l > olen - off) break;
    if (off > stop) std::memset(o + stop, 0, off - stop);
    std::memcpy(o + off, s + size_t(a) + p, l);
    stop = off + l;
  }
  stopP[0] = double(stop);
  return Napi::Number::New(env, double(i));
}

}  // namespace

void InitZData(Napi::Env env, Napi::Object exports) {
  exports.Set("zdataGather", Napi::Function::New(env, ZDataGather));
}

}  // namespace wcfs
