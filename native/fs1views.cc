// wcfs native — batched FileStorage data-record lookups: for many oids at once, the bytes each
// record holds, as ranges of the file's mmap (assembling a ZBlk1's 512 chunks, notes.md §8
// "ZBlk1").
//
// Owns nothing. Pure: no I/O, no allocation, no error texts. JS (FileStorage.loadTransientMany)
// owns the index lookups and every decision: this only says, per record, "its data is here" or
// "not the common case — ask the general load path", which then reports any error.
//
//   fs1DataViews(map: Uint8Array, limit: number, at: bigint, oids: BigUint64Array, n: number,
//                ranges: Float64Array(2n)) → number of records resolved here
//
// In: map = the file's bytes from position 0, limit = the committed end (≤ map.length), and
// ranges[2i] = the position of the record of oids[i] a load as of `at` starts from (-1: no such
// oid). Out: ranges[2i], ranges[2i+1] = the record's data [start, end) in map, or -1, -1.
//
// Invariant: a range is given exactly when FileStorage.loadMapped's fast case applies — the
// record at the position is of oids[i], has tid ≤ at, no version, data of its own (plen > 0,
// ≤ 2⁴⁸) inside [0, limit), and prev and tloc below it; everything else (an older revision
// through prev links, backpointers, a corrupt header) is -1 and the general path takes it.
// Every read is bounds-checked against limit and map.length.
#include "addon.h"
#include "fs1format.h"

#include <cstdint>
#include <cstring>

namespace wcfs {
namespace {

using namespace fs1;  // the format: fs1format.h

Napi::Value Fs1DataViews(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static const char* usage =
      "fs1DataViews(map: Uint8Array, limit: number, at: bigint, oids: BigUint64Array, n: number, ranges: "
      "Float64Array)";
  if (info.Length() != 6 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsBigInt() ||
      !info[3].IsTypedArray() || !info[4].IsNumber() || !info[5].IsTypedArray())
    throw Napi::TypeError::New(env, usage);
  auto map = info[0].As<Napi::TypedArray>();
  auto oids = info[3].As<Napi::TypedArray>();
  auto ranges = info[5].As<Napi::TypedArray>();
  if (map.TypedArrayType() != napi_uint8_array || oids.TypedArrayType() != napi_biguint64_array ||
      ranges.TypedArrayType() != napi_float64_array)
    throw Napi::TypeError::New(env, usage);
  bool lossless = false;
  const uint64_t at = info[2].As<Napi::BigInt>().Uint64Value(&lossless);
  const double limitD = info[1].As<Napi::Number>().DoubleValue(), nD = info[4].As<Napi::Number>().DoubleValue();
  if (!lossless || !(limitD >= 0 && limitD <= double(map.ByteLength())) ||
      !(nD >= 0 && nD <= double(oids.ElementLength())) || nD * 2 > double(ranges.ElementLength()))
    throw Napi::RangeError::New(env, usage);
  const uint64_t limit = uint64_t(limitD);
  const size_t n = size_t(nD);
  auto* m = static_cast<const uint8_t*>(map.ArrayBuffer().Data()) + map.ByteOffset();
  auto* op =
      reinterpret_cast<const uint64_t*>(static_cast<const uint8_t*>(oids.ArrayBuffer().Data()) + oids.ByteOffset());
  auto* rp = reinterpret_cast<double*>(static_cast<uint8_t*>(ranges.ArrayBuffer().Data()) + ranges.ByteOffset());

  size_t done = 0;
  for (size_t i = 0; i < n; i++) {
    const double posD = rp[2 * i];
    rp[2 * i] = rp[2 * i + 1] = -1;
    if (!(posD >= 0 && posD <= double(kMaxPos))) continue;
    const uint64_t pos = uint64_t(posD);
    if (pos + kDataHeader > limit) continue;
    const uint8_t* h = m + pos;
    if (be64(h) != op[i]) continue;
    const uint64_t tid = be64(h + 8), prev = be64(h + 16), tloc = be64(h + 24), plen = be64(h + 34);
    const uint32_t vlen = (uint32_t(h[32]) << 8) | h[33];
    const uint64_t dpos = pos + kDataHeader;
    if (tid > at || vlen != 0 || plen == 0 || plen > kMaxPos || prev >= pos || tloc >= pos || dpos + plen > limit)
      continue;
    rp[2 * i] = double(dpos);
    rp[2 * i + 1] = double(dpos + plen);
    done++;
  }
  return Napi::Number::New(env, double(done));
}

}  // namespace

void InitFs1Views(Napi::Env env, Napi::Object exports) {
  exports.Set("fs1DataViews", Napi::Function::New(env, Fs1DataViews));
}

}  // namespace wcfs
