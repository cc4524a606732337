// pidfds (pidfd_open(2), pidfd_send_signal(2)): a handle on one process that stays valid when
// its pid number is reused. The server signals faulty clients only through these, never by
// pid number (see notes.md "Protection against slow or faulty clients"). src/util/proc.ts
// (ProcessRef) owns the fds; this file is three syscalls.
#include "addon.h"

#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cerrno>
#include <csignal>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

namespace wcfs {

// pidfdOpen(pid) -> fd (O_CLOEXEC is implied by the kernel); throws with .code (ESRCH: no
// such process; EINVAL: pid is a thread, not a thread-group leader).
static Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "pidfdOpen(pid: number)");
  int pid = info[0].As<Napi::Number>().Int32Value();
  if (pid <= 0) ThrowErrno(env, EINVAL, "pidfd_open");
  long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) ThrowErrno(env, errno, "pidfd_open");
  return Napi::Number::New(env, static_cast<double>(fd));
}

// pidfdSendSignal(fd, signo) -> undefined; throws with .code (ESRCH: the process has exited).
static Napi::Value PidfdSendSignal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "pidfdSendSignal(fd: number, signo: number)");
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int sig = info[1].As<Napi::Number>().Int32Value();
  if (::syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0) < 0) ThrowErrno(env, errno, "pidfd_send_signal");
  return env.Undefined();
}

// pidfdExited(fd) -> bool: the process has terminated (zombie or reaped); a pidfd polls
// readable from then on. Never blocks.
static Napi::Value PidfdExited(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "pidfdExited(fd: number)");
  struct pollfd p = {info[0].As<Napi::Number>().Int32Value(), POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, 0);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(env, errno, "poll");
  if (p.revents & POLLNVAL) ThrowErrno(env, EBADF, "poll");
  return Napi::Boolean::New(env, rc > 0);
}

void InitPidfd(Napi::Env env, Napi::Object exports) {
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen));
  exports.Set("pidfdSendSignal", Napi::Function::New(env, PidfdSendSignal));
  exports.Set("pidfdExited", Napi::Function::New(env, PidfdExited));
}

}  // namespace wcfs
