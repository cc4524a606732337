// wcfs native addon — test hooks: entry points that only the tests (and the benchmarks'
// stand-ins) call, kept out of the production parts. Built into the same addon
// (binding.gyp), registered by InitTestHooks; typed in src/native.ts under "test hooks".
//
//   clientProbe(view, offsets[], mode, fds[])  reads of a mapping in a child process
//   clientSocketpair() → [fd, fd]              a stand-in for head/watch
//   clientParseLine(line)                      the client rx thread's parse of one line
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <setjmp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "addon.h"
#include "client.h"

namespace wcfs {
namespace client {

// ---- clientProbe ----
//
// clientProbe(view, offsets[], mode, fds[]) → {values: Int32Array, fds: Int32Array, status}
//   Reads view[off] for each offset in a child process, so a fault kills nobody but the child:
//   mode 'raw'   child by clone(SIGCHLD) — no atfork handlers: the address space as it is.
//                Each read is guarded (SIGSEGV/SIGBUS → value -signo); fds[i] → 0 if open
//                in the child, -errno if not.
//   mode 'fork'  same with fork(): atfork handlers run (the after-fork test).
//   mode 'crash' raw child reads view[offsets[0]] unguarded; status tells how it ended.
//   status: 'exit:<code>' | 'signal:<signo>'.
// Only the forking thread exists in the child; it uses nothing but syscalls and
// sigsetjmp/siglongjmp, and leaves with _exit.

static sigjmp_buf gProbeJmp;
static volatile sig_atomic_t gProbeSig = 0;

static void ProbeHandler(int sig) {
  gProbeSig = sig;
  siglongjmp(gProbeJmp, 1);
}

static Napi::Value ClientProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsArray() || !info[2].IsString())
    throw Napi::TypeError::New(env, "clientProbe(view: Uint8Array, offsets: number[], mode, fds?)");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  const volatile char* base = static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  size_t blen = ta.ByteLength();
  std::vector<size_t> offs;
  Napi::Array oa = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < oa.Length(); i++) {
    double d = oa.Get(i).As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || size_t(d) >= blen) throw Napi::RangeError::New(env, "clientProbe: offset out of the view");
    offs.push_back(size_t(d));
  }
  std::string mode = info[2].As<Napi::String>().Utf8Value();
  if (mode != "raw" && mode != "fork" && mode != "crash") throw Napi::TypeError::New(env, "clientProbe: bad mode");
  if (mode == "crash" && offs.empty()) throw Napi::RangeError::New(env, "clientProbe: crash needs an offset");
  std::vector<int> fds;
  if (info.Length() > 3 && info[3].IsArray()) {
    Napi::Array fa = info[3].As<Napi::Array>();
    for (uint32_t i = 0; i < fa.Length(); i++) fds.push_back(fa.Get(i).As<Napi::Number>().Int32Value());
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) ThrowErrno(env, errno, "pipe2");
  pid_t pid = mode == "fork" ? fork() : pid_t(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
  if (pid < 0) {
    int e = errno;
    close(p[0]);
    close(p[1]);
    ThrowErrno(env, e, "fork");
  }
  if (pid == 0) {
    // ---- child ----
    if (mode == "crash") {
      volatile char c = base[offs[0]];
      (void)c;
      _exit(0);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ProbeHandler;
    sa.sa_flags = SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    sigset_t un;
    sigemptyset(&un);
    sigaddset(&un, SIGSEGV);
    sigaddset(&un, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &un, nullptr);
    for (size_t off : offs) {
      int32_t v;
      gProbeSig = 0;
      if (sigsetjmp(gProbeJmp, 1) == 0) {
        v = int32_t(static_cast<unsigned char>(base[off]));
      } else {
        v = -int32_t(gProbeSig);
      }
      if (write(p[1], &v, sizeof v) != sizeof v) _exit(3);
    }
    for (int fd : fds) {
      int32_t v = fcntl(fd, F_GETFD) < 0 ? -errno : 0;
      if (write(p[1], &v, sizeof v) != sizeof v) _exit(3);
    }
    _exit(0);
  }
  // ---- parent ----
  close(p[1]);
  std::vector<int32_t> out;
  int32_t v;
  size_t got = 0;
  char* buf = reinterpret_cast<char*>(&v);
  for (;;) {
    ssize_t n = read(p[0], buf + got, sizeof v - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += size_t(n);
    if (got == sizeof v) {
      out.push_back(v);
      got = 0;
    }
  }
  close(p[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  std::string status =
      WIFSIGNALED(st) ? "signal:" + std::to_string(WTERMSIG(st)) : "exit:" + std::to_string(WEXITSTATUS(st));
  size_t nv = std::min(out.size(), offs.size());
  Napi::Int32Array values = Napi::Int32Array::New(env, nv);
  for (size_t i = 0; i < nv; i++) values[i] = out[i];
  size_t nf = out.size() > offs.size() ? out.size() - offs.size() : 0;
  Napi::Int32Array fdv = Napi::Int32Array::New(env, nf);
  for (size_t i = 0; i < nf; i++) fdv[i] = out[offs.size() + i];
  Napi::Object r = Napi::Object::New(env);
  r.Set("values", values);
  r.Set("fds", fdv);
  r.Set("status", Napi::String::New(env, status));
  return r;
}

// clientSocketpair() → [fd, fd]: a stand-in for head/watch in protocol tests (test hook).
static Napi::Value ClientSocketpair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) ThrowErrno(info.Env(), errno, "socketpair");
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return a;
}

// clientParseLine(line: Uint8Array) → the rx thread's reading of one server line (without
// its LF): {error} | {stream, msg, pin?, pinError?} (pin* only for even streams ≠ 0). Test
// hook: lets test/wire-fuzz.test.ts run the same cases against these and the TS parsers.
static Napi::Value ClientParseLine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray())
    throw Napi::TypeError::New(env, "clientParseLine(line: Uint8Array)");
  Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
  std::string line(static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), ta.ByteLength());
  Napi::Object r = Napi::Object::New(env);
  uint64_t stream;
  std::string msg;
  std::string err = ParseFrame(line, &stream, &msg);
  if (!err.empty()) {
    r.Set("error", Napi::String::New(env, err));
    return r;
  }
  r.Set("stream", Napi::BigInt::New(env, stream));
  r.Set("msg", Napi::Buffer<char>::Copy(env, msg.data(), msg.size()));
  if (stream != 0 && stream % 2 == 0) {
    uint64_t foid, blk, rev;
    std::string perr = ParsePin(msg, &foid, &blk, &rev);
    if (!perr.empty()) {
      r.Set("pinError", Napi::String::New(env, perr));
    } else {
      Napi::Object pin = Napi::Object::New(env);
      pin.Set("foid", Napi::BigInt::New(env, foid));
      pin.Set("blk", Napi::Number::New(env, double(blk)));
      pin.Set("rev", rev == kTidHead ? env.Null() : Napi::Value(Napi::BigInt::New(env, rev)));
      r.Set("pin", pin);
    }
  }
  return r;
}

}  // namespace client

void InitTestHooks(Napi::Env env, Napi::Object exports) {
  exports.Set("clientProbe", Napi::Function::New(env, client::ClientProbe));
  exports.Set("clientSocketpair", Napi::Function::New(env, client::ClientSocketpair));
  exports.Set("clientParseLine", Napi::Function::New(env, client::ClientParseLine));
}

}  // namespace wcfs
