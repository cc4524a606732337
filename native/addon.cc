// wcfs native addon — module entry.
//
// Owns: module registration and the error helper every part shares.
// Parts: flock.cc (BSD flock for the FileStorage .lock), pidfd.cc (process handles for
// signalling clients), fuse.cc (libfuse3 low-level layer), mincore.cc (page-cache probes), client*.cc (the client: mmaps, watch link, pinner),
// test_hooks.cc (entry points for the tests only).
#include "addon.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace wcfs {

static const char* errnoName(int err) {
  switch (err) {
    case EAGAIN: return "EAGAIN";
    case EBADF: return "EBADF";
    case EINTR: return "EINTR";
    case EINVAL: return "EINVAL";
    case ENOLCK: return "ENOLCK";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EIO: return "EIO";
    case ENOTCONN: return "ENOTCONN";
    case ESRCH: return "ESRCH";
    default: return "EUNKNOWN";
  }
}

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  std::string msg = std::string(errnoName(err)) + ": " + std::strerror(err) + ", " + syscall;
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, errnoName(err)));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  throw e;
}

static Napi::Value Version(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), "wcfs-native 0.1.0");
}

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("version", Napi::Function::New(env, Version));
  InitFlock(env, exports);
  InitFileMap(env, exports);
  InitPidfd(env, exports);
  InitFuse(env, exports);
  InitMincore(env, exports);
  InitClient(env, exports);
  InitTestHooks(env, exports);
  return exports;
}

}  // namespace wcfs

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  return wcfs::Init(env, exports);
}

NODE_API_MODULE(wcfs_native, InitModule)
