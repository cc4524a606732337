// flock(2) for FileStorage's Data.fs.lock.
//
// Node has no flock, and ZODB/py (zc.lockfile) uses BSD flock specifically: fcntl record
// locks are independent of flock on Linux, so only flock excludes a Python writer.
// Always non-blocking (LOCK_NB is forced on for LOCK_EX/LOCK_SH), so it is safe to call on
// the JS thread.
#include "addon.h"

#include <sys/file.h>
#include <cerrno>

namespace wcfs {

// flock(fd: number, op: "ex" | "sh" | "un") -> undefined; throws with .code on failure
// (EAGAIN when another process holds the lock).
static Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, "flock(fd: number, op: 'ex'|'sh'|'un')");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  std::string op = info[1].As<Napi::String>().Utf8Value();
  int how;
  if (op == "ex")
    how = LOCK_EX | LOCK_NB;
  else if (op == "sh")
    how = LOCK_SH | LOCK_NB;
  else if (op == "un")
    how = LOCK_UN;
  else
    throw Napi::TypeError::New(env, "flock: op must be 'ex', 'sh' or 'un'");
  int rc;
  do {
    rc = ::flock(fd, how);
  } while (rc == -1 && errno == EINTR);
  if (rc == -1) ThrowErrno(env, errno, "flock");
  return env.Undefined();
}

void InitFlock(Napi::Env env, Napi::Object exports) { exports.Set("flock", Napi::Function::New(env, Flock)); }

}  // namespace wcfs
