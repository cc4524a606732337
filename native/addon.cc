// wcfs native addon — module entry.
//
// Owns: module registration, the error helper every part shares (ThrowErrno; the errno
// names come from TS, see setErrnoNames), and mallocTrim (the process heap's free memory
// back to the OS).
// Parts: flock.cc (BSD flock for the FileStorage .lock), pidfd.cc (process handles for
// signalling clients), fuse.cc (libfuse3 low-level layer), mincore.cc (page-cache probes),
// fs1scan.cc (FileStorage index-rebuild scanner), client*.cc (the client: mmaps, watch link,
// pinner), test_hooks.cc (entry points for the tests only).
#include "addon.h"

#include <malloc.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace wcfs {

// errno → name, installed once by src/native.ts from os.constants.errno (the registry,
// src/errors.ts): the names are TS's, so every errno Node knows has one. Shared by all
// threads and worker environments of the process, hence the mutex.
static std::mutex errnoMu;
static std::vector<std::string> errnoNames;

static std::string errnoName(int err) {
  {
    std::lock_guard<std::mutex> lk(errnoMu);
    if (err >= 0 && size_t(err) < errnoNames.size() && !errnoNames[size_t(err)].empty()) return errnoNames[size_t(err)];
  }
  return "E" + std::to_string(err);
}

// setErrnoNames(names: string[]): names[n] = name of errno n ('' = none). First call wins.
static Napi::Value SetErrnoNames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "setErrnoNames(names: string[])");
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<std::string> v(a.Length());
  for (uint32_t i = 0; i < a.Length(); i++) v[i] = a.Get(i).ToString().Utf8Value();
  std::lock_guard<std::mutex> lk(errnoMu);
  if (errnoNames.empty()) errnoNames = std::move(v);
  return env.Undefined();
}

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  const std::string name = errnoName(err);
  std::string msg = name + ": " + std::strerror(err) + ", " + syscall;
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, name));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  throw e;
}

static Napi::Value Version(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), "wcfs-native 0.1.0");
}

// malloc_trim(0): glibc keeps memory freed in the middle of its heaps resident (only the top
// of the main heap is given back on free); this returns every whole free page of every arena
// to the OS (madvise DONTNEED). Blocks' transient buffers (loads, READ replies, uploads) are
// malloc'ed and freed by the tens of MiB, so after the kernel dropped them the process kept
// their memory (bench-tracking: ~60 MiB of 16k 4 KiB blocks read). Returns whether any was.
static Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("version", Napi::Function::New(env, Version));
  exports.Set("setErrnoNames", Napi::Function::New(env, SetErrnoNames));
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim));
  InitFlock(env, exports);
  InitFileMap(env, exports);
  InitPidfd(env, exports);
  InitFuse(env, exports);
  InitMincore(env, exports);
  InitFs1Scan(env, exports);
  InitFs1Views(env, exports);
  InitZData(env, exports);
  InitClient(env, exports);
  InitTestHooks(env, exports);
  return exports;
}

}  // namespace wcfs

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return wcfs::Init(env, exports); }

NODE_API_MODULE(wcfs_native, InitModule)
