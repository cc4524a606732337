// mapFile: a read-only shared mmap of a file, as an external ArrayBuffer.
// mapZeros: a read-only private anonymous mapping — zeros that cost no memory (every page is
// the kernel's zero page) and that nobody can write (a write faults: SIGSEGV).
//
// For FileStorage: committed bytes of Data.fs never change in place, so a view into the
// mapping is as good as a private copy — without the copy (notes.md "Performance", cold reads). The
// mapping lives as long as any JS view of it (GC finalizer munmaps). Reading beyond the
// file's end raises SIGBUS: the caller only reads committed bytes (< its topPos ≤ size).
#include "addon.h"

#include <sys/mman.h>
#include <cerrno>

namespace wcfs {

static void FinalizeFileMap(napi_env, void* data, void* hint) { munmap(data, reinterpret_cast<size_t>(hint)); }

// mapFile(fd: number, length: number) -> ArrayBuffer (throws with .code on failure)
static Napi::Value MapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "mapFile(fd: number, length: number)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  double dlen = info[1].As<Napi::Number>().DoubleValue();
  if (!(dlen > 0) || dlen > double(1ull << 52)) throw Napi::RangeError::New(env, "mapFile: bad length");
  size_t len = size_t(dlen);
  void* p = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  napi_value ab;
  // On failure napi_create_external_arraybuffer runs the finalizer itself (it unmaps).
  napi_status st = napi_create_external_arraybuffer(env, p, len, FinalizeFileMap, reinterpret_cast<void*>(len), &ab);
  NAPI_THROW_IF_FAILED(env, st, Napi::Value());
  return Napi::Value(env, ab);
}

// mapZeros(length: number) -> ArrayBuffer of zeros, PROT_READ (throws with .code on failure)
static Napi::Value MapZeros(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "mapZeros(length: number)");
  double dlen = info[0].As<Napi::Number>().DoubleValue();
  if (!(dlen > 0) || dlen > double(1ull << 40)) throw Napi::RangeError::New(env, "mapZeros: bad length");
  size_t len = size_t(dlen);
  void* p = mmap(nullptr, len, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(env, p, len, FinalizeFileMap, reinterpret_cast<void*>(len), &ab);
  NAPI_THROW_IF_FAILED(env, st, Napi::Value());
  return Napi::Value(env, ab);
}

void InitFileMap(Napi::Env env, Napi::Object exports) {
  exports.Set("mapFile", Napi::Function::New(env, MapFile));
  exports.Set("mapZeros", Napi::Function::New(env, MapZeros));
}

}  // namespace wcfs
