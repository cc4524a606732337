// wcfs native — page-cache probes: which pages of a file are in the OS page cache, and
// reading a file through a shared mapping (the way wcfs clients access head/bigfile/*).
//
// Both may touch a FUSE mount served by this very process (open → LOOKUP/OPEN, mmap of a
// FUSE file may need GETATTR, faults → READ), which JS must answer: so they never run on the
// JS thread (self-deadlock, fuse.md "self-access"). Each call runs on its own short-lived
// native thread (not libuv's pool, which a few stuck calls could fill) and settles a Promise
// through a per-call TSFN.
//
// Results are primitives (style.md "native thin"): a Uint8Array/Buffer on success, a
// negative errno number on failure; src/fuse/pagecache.ts turns the number into an Error.
//
//   cacheResidency(path, offset, length) → Promise<Uint8Array | number>
//     one byte per page of [floor(offset/page)*page, offset+length): 1 resident, 0 not.
//     open + mmap(MAP_SHARED, PROT_READ) + mincore + munmap: pages are NOT faulted in.
//     length 0: stat only — the kernel looks the path up (and knows its inode), nothing more.
//   mmapRead(path, offset, length) → Promise<Buffer | number>
//     copies [offset, offset+length) out of a shared read-only mapping: the page faults go
//     through the FUSE readpage path. Clamped to the file size (a fault past EOF is SIGBUS);
//     a file shrinking concurrently, or a FUSE error on fault, still raises SIGBUS.
#include "addon.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace wcfs {
namespace {

struct ProbeJob {
  enum Kind { RESIDENCY, MMAP_READ } kind;
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
  int err = 0;                       // errno on failure
  std::vector<uint8_t> out;          // result bytes
  Napi::Promise::Deferred deferred;  // JS thread only

  ProbeJob(Napi::Env env, Kind kind) : kind(kind), deferred(Napi::Promise::Deferred::New(env)) {}

  // Worker thread.
  void run() {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    if (kind == RESIDENCY && length == 0) {
      // nothing to look at: only make the kernel look the path up (LOOKUPs; no OPEN/RELEASE)
      struct stat st;
      if (::stat(path.c_str(), &st) != 0) err = errno;
      return;
    }
    int fd;
    do fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      err = errno;
      return;
    }
    err = kind == RESIDENCY ? residency(fd) : mmapRead(fd);
    ::close(fd);
  }

  int residency(int fd) {
    const uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
    const uint64_t aoff = offset / page * page;
    const uint64_t npages = (offset + length - aoff + page - 1) / page;
    if (length == 0 || npages == 0) return 0;
    size_t maplen = size_t(npages * page);
    // A mapping past EOF is fine as long as nothing touches it; mincore doesn't.
    void* p = mmap(nullptr, maplen, PROT_READ, MAP_SHARED, fd, off_t(aoff));
    if (p == MAP_FAILED) return errno;
    std::vector<unsigned char> vec(npages);
    int rc = mincore(p, maplen, vec.data());
    int e = errno;
    munmap(p, maplen);
    if (rc != 0) return e;
    out.resize(npages);
    for (size_t i = 0; i < npages; i++) out[i] = vec[i] & 1;
    return 0;
  }

  int mmapRead(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return errno;
    uint64_t size = uint64_t(st.st_size);
    if (offset >= size || length == 0) return 0;
    uint64_t n = std::min<uint64_t>(length, size - offset);
    const uint64_t page = uint64_t(sysconf(_SC_PAGESIZE));
    const uint64_t aoff = offset / page * page;
    size_t maplen = size_t(offset + n - aoff);
    void* p = mmap(nullptr, maplen, PROT_READ, MAP_SHARED, fd, off_t(aoff));
    if (p == MAP_FAILED) return errno;
    out.resize(n);
    std::memcpy(out.data(), static_cast<const char*>(p) + (offset - aoff), n);
    munmap(p, maplen);
    return 0;
  }

  // JS thread.
  void settle(Napi::Env env) {
    if (err != 0) {
      deferred.Resolve(Napi::Number::New(env, -err));
    } else if (kind == RESIDENCY) {
      auto arr = Napi::Uint8Array::New(env, out.size());
      if (!out.empty()) std::memcpy(arr.Data(), out.data(), out.size());
      deferred.Resolve(arr);
    } else {
      deferred.Resolve(Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size()));
    }
  }
};

void Settle(Napi::Env env, Napi::Function, void*, ProbeJob* job) {
  if (env == nullptr) return;  // environment gone: leak (holds a JS deferred)
  std::unique_ptr<ProbeJob> owned(job);
  owned->settle(env);
}
using ProbeTsfn = Napi::TypedThreadSafeFunction<void, ProbeJob, Settle>;

Napi::Value Start(const Napi::CallbackInfo& info, ProbeJob::Kind kind, const char* usage) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber())
    throw Napi::TypeError::New(env, usage);
  double off = info[1].As<Napi::Number>().DoubleValue();
  double len = info[2].As<Napi::Number>().DoubleValue();
  if (!(off >= 0) || !(len >= 0)) throw Napi::RangeError::New(env, usage);
  auto* job = new ProbeJob(env, kind);
  job->path = info[0].As<Napi::String>().Utf8Value();
  job->offset = uint64_t(off);
  job->length = uint64_t(len);
  Napi::Promise promise = job->deferred.Promise();
  // One TSFN per call: it keeps Node alive until the probe settles, then is released.
  ProbeTsfn tsfn = ProbeTsfn::New(env, "wcfs-probe", 0, 1, nullptr);
  std::thread([tsfn, job]() mutable {
    job->run();
    if (tsfn.NonBlockingCall(job) != napi_ok) {
      // environment shutting down: leak the job (its deferred belongs to a dead env)
    }
    tsfn.Release();
  }).detach();
  return promise;
}

Napi::Value CacheResidency(const Napi::CallbackInfo& info) {
  return Start(info, ProbeJob::RESIDENCY, "cacheResidency(path: string, offset: number, length: number)");
}

Napi::Value MmapRead(const Napi::CallbackInfo& info) {
  return Start(info, ProbeJob::MMAP_READ, "mmapRead(path: string, offset: number, length: number)");
}

}  // namespace

void InitMincore(Napi::Env env, Napi::Object exports) {
  exports.Set("cacheResidency", Napi::Function::New(env, CacheResidency));
  exports.Set("mmapRead", Napi::Function::New(env, MmapRead));
}

}  // namespace wcfs
