// wcfs native — FUSE layer: a thin binding over libfuse3's low-level API.
//
// Owns: one libfuse session per mount (class FuseSession, exported to JS), the threads that
// serve it, the map from request ids to libfuse requests, and the notification workers.
// Everything a filesystem decides (names, attributes, data, errors, open flags) is decided in
// TypeScript (src/fuse/session.ts); this file moves requests and replies and nothing more.
// Background: the spec fuse.md (prototype measurements) and notes.md "FUSE layer".
//
// 1) mount: `new FuseSession(mountpoint, args, cfg, handlers)` runs fuse_session_new +
//    fuse_session_mount on the JS thread (as root: open(/dev/fuse) + mount(2), which does not
//    wait for the server: the kernel queues INIT) and starts the loop thread, which runs
//    fuse_session_loop_mt.
// 2) requests: each low-level handler (a libfuse worker thread) registers the request under
//    a new id (monotonic 64-bit counter), arms the interrupt callback and posts the request
//    to JS through the session's TSFN (NonBlockingCall) — then returns at once. No libfuse
//    thread ever waits for JS, so a READ may stay pending in JS for seconds (fuse.md B.6).
//    JS answers later with reply*(id, …) on the JS thread; fuse_reply_* is one writev on
//    /dev/fuse and safe from any thread. FORGET and FLUSH are answered here (see ll_forget).
// 3) interrupts: libfuse calls onInterrupt (under the request's lock) when the kernel sends
//    FUSE_INTERRUPT. Not yet delivered to JS ⇒ the request reaches JS with interrupted=true;
//    already delivered ⇒ an interrupt event is posted. JS typically replies EINTR.
// 4) notifications: notify*() queue a job for the notify threads, which call
//    fuse_lowlevel_notify_*. These may block in the kernel for as long as a READ of the same
//    pages is pending in JS (page locks), so they never run on the JS thread (fuse.md C:
//    doing so deadlocks) nor on libuv's pool. Each returns a Promise resolved on the JS thread
//    with the return code. RETRIEVE completes later, when the kernel's NOTIFY_REPLY arrives as
//    retrieve_reply on a libfuse worker, matched by cookie (= job id); the worker copies the
//    data into a fresh buffer, or into the caller's (JS memory: the env cleanup hook waits
//    for such copies under way, and no worker finds a job after it).
// 5) teardown: when the kernel ends the connection (umount, fusermount3 -u, fusectl abort)
//    the loop returns, the loop thread posts LoopEnd and JS runs Core::teardown: join notify
//    threads, free unanswered requests, close /dev/fuse, destroy the session, call exit(rc),
//    release the TSFN (Node can exit). If the JS environment goes away while mounted (process
//    exit), the cleanup hook detaches the threads and leaks the Core on purpose: the kernel
//    aborts the connection when the process' /dev/fuse fd closes.
//
// 6) READ fast path (BlockCache): JS registers blocks it has loaded — cacheBlock(nodeid, off,
//    data, served) — and ll_read answers a READ whose [off, off+size) lies wholly inside one
//    registered range right on the libfuse worker (fuse_reply_buf from the JS memory), without
//    a request id and without posting to JS; it then marks the pages the reply fully covered in
//    `served` (1 byte per 4 KiB page of the range). uncacheBlock(nodeid, off) removes the
//    entry and waits until no worker sends from it any more (a reply is one writev). JS decides
//    what may be registered (src/server/loads.ts L2): serving a registered range must be
//    exactly what JS would reply. Teardown and the env cleanup hook close the table (later
//    READs go to JS) and wait for in-flight fast replies, so no worker sends from freed memory.
//
// Threads:
//   JS thread      — constructor, reply*, notify* (enqueue only), TSFN callbacks, teardown,
//                    cacheBlock/uncacheBlock.
//   loop thread    — fuse_session_loop_mt; it spawns ≤ maxThreads libfuse workers, which run
//                    the ll_* handlers, onInterrupt and ll_retrieve_reply.
//   notify threads — NotifyJob::run (fuse_lowlevel_notify_*). Started on demand (a job finds
//                    no idle one) up to cfg.notifyThreads: a store parked on a page lock
//                    (wcfs-server.md §3.5.3) must not hold up unrelated invalidations.
//   All native threads block all signals, so signals go to Node's main thread.
//
// Invariants (Core):
//   id ∈ reqs ⇔ the request was not answered yet; whoever erases it (under mu) replies it.
//   state == OPEN ∨ state == CLOSING ⇒ the TSFN may be called (emit() checks under mu).
//   se is destroyed only after the loop thread and all notify threads were joined.
//   A RETRIEVE job is in retrieves ⇔ its promise is unresolved and its reply is expected.
// Invariants (BlockCache):
//   an entry's memory (data, served) is alive while the entry is in the table or its
//     inflight > 0: the JS references are dropped only on the JS thread, after the entry left
//     the table and inflight reached 0 (waited for under BlockCache::mu).
//   a worker touches an entry (send, mark served, inflight--) only between its inflight++
//     and inflight-- — both under BlockCache::mu, with the entry found in the open table.
//   closed ⇒ the table is empty or leaked with Core (env cleanup); nothing is served any more.
// Lock order: libfuse req->lock > Core::mu (onInterrupt runs under req->lock and takes mu);
//   so mu is never held while calling into libfuse for a request (fuse_reply_*,
//   fuse_req_interrupt_func). NonBlockingCall under mu is fine (never blocks, queue unbounded).
//   BlockCache::mu is a leaf: never held while calling libfuse or JS, nor while taking Core::mu
//   (ll_read takes it, releases it, and only then falls back to submit()).
//
// Fixed layouts shared with src/fuse/kernel.ts (Float64Array, one number per slot):
//   ATTR   [ino, mode, nlink, uid, gid, rdev, size, blocks, blksize,
//           atimeSec, atimeNsec, mtimeSec, mtimeNsec, ctimeSec, ctimeNsec]         (15)
//   STATFS [bsize, frsize, blocks, bfree, bavail, files, ffree, favail, namemax]  (9)
//   INIT   [protoMajor, protoMinor, capable, want, maxWrite, maxRead, maxReadahead,
//           maxBackground, congestionThreshold, timeGran, libfuseVersion]          (11)
//   FORGET [nodeid, nlookup, nodeid, nlookup, …]
// Return codes of reply*: 0, or -errno: -ESRCH unknown/already answered id, -ENOTCONN
//   session closed, -ENOENT the kernel dropped the request (it was interrupted), other
//   writev errors as is. Notify promises resolve with 0 / -errno; retrieve with a Buffer
//   (possibly short or empty: only the cached prefix) or -errno.
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "addon.h"

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace wcfs {
namespace {

// Kernel opcodes (include/uapi/linux/fuse.h); the same numbers are the op codes in JS.
enum Opcode : uint32_t {
  OP_LOOKUP = 1,
  OP_GETATTR = 3,
  OP_OPEN = 14,
  OP_READ = 15,
  OP_WRITE = 16,
  OP_STATFS = 17,
  OP_RELEASE = 18,
  OP_OPENDIR = 27,
  OP_READDIR = 28,
  OP_RELEASEDIR = 29,
};

constexpr size_t kAttrLen = 15;
constexpr size_t kStatfsLen = 9;

// libfuse's log lines go to stderr with a prefix; the last one per thread is kept so that a
// failed mount can throw with libfuse's reason ("fuse: bad mount point …").
thread_local std::string lastLibfuseLog;

void LogFunc(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  std::string line(buf);
  while (!line.empty() && line.back() == '\n') line.pop_back();
  if (level <= FUSE_LOG_ERR) lastLibfuseLog = line;
  fprintf(stderr, "wcfs: libfuse: %s\n", line.c_str());
}

void BlockAllSignals() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
}

class Core;

// An event crosses from a native thread to the JS thread through the TSFN. deliver() runs on
// the JS thread; the event is deleted after it (or leaked if the environment is gone).
struct Event {
  virtual ~Event() = default;
  virtual void deliver(Napi::Env env, Core* core) = 0;
};

void CallJs(Napi::Env env, Napi::Function, Core* core, Event* ev);
using Tsfn = Napi::TypedThreadSafeFunction<Core, Event, CallJs>;

struct Config {
  unsigned maxThreads = 4;
  unsigned maxBackground = 64;
  unsigned congestionThreshold = 0;  // 0: 3/4 of maxBackground
  unsigned notifyThreads = 8;        // at most; started on demand
  bool explicitInvalData = true;
  bool asyncRead = true;
};

// A request handed to JS. Fields follow the kernel's names; unused ones are 0.
struct ReqEvent : Event {
  uint32_t op;
  uint64_t id = 0;
  uint64_t nodeid;
  double fh = -1;  // -1: no file handle (GETATTR without fh)
  double offset = 0;
  double size = 0;
  double flags = 0;
  uint32_t pid, uid, gid;
  std::string name;      // LOOKUP
  char* data = nullptr;  // WRITE payload, malloc'ed copy; ownership moves to the JS Buffer
  size_t dataLen = 0;

  ReqEvent(uint32_t op, fuse_req_t req, fuse_ino_t nodeid) : op(op), nodeid(nodeid) {
    const fuse_ctx* c = fuse_req_ctx(req);
    pid = c->pid;
    uid = c->uid;
    gid = c->gid;
  }
  ~ReqEvent() override { free(data); }
  void deliver(Napi::Env env, Core* core) override;
};

struct InterruptEvent : Event {
  uint64_t id;
  explicit InterruptEvent(uint64_t id) : id(id) {}
  void deliver(Napi::Env env, Core* core) override;
};

struct ForgetEvent : Event {
  std::vector<double> pairs;
  void deliver(Napi::Env env, Core* core) override;
};

struct InitEvent : Event {
  double info[11];
  void deliver(Napi::Env env, Core* core) override;
};

struct DestroyEvent : Event {
  void deliver(Napi::Env env, Core* core) override;
};

struct LoopEndEvent : Event {
  int rc;
  explicit LoopEndEvent(int rc) : rc(rc) {}
  void deliver(Napi::Env env, Core* core) override;
};

// One fuse_lowlevel_notify_* call. Created on the JS thread (it holds the promise and, for
// STORE, a reference keeping the data alive), run on a notify thread, delivered (resolved)
// and deleted on the JS thread.
struct NotifyJob : Event {
  enum Kind { INVAL_INODE, INVAL_ENTRY, STORE, RETRIEVE } kind;
  uint64_t cookie = 0;  // RETRIEVE: key in Core::retrieves
  uint64_t ino = 0;
  int64_t off = 0;
  int64_t len = 0;
  std::string name;                   // INVAL_ENTRY
  const char* data = nullptr;         // STORE: points into `keep`'s buffer
  Napi::Reference<Napi::Value> keep;  // STORE, RETRIEVE into dest: the JS buffer, JS thread only
  Napi::Promise::Deferred deferred;   // JS thread only
  int rc = 0;
  char* out = nullptr;   // RETRIEVE result, malloc'ed; moves to the JS Buffer
  size_t outLen = 0;     // RETRIEVE: bytes in out, or copied into dest
  char* dest = nullptr;  // RETRIEVE into JS memory (kept alive by `keep`), destLen bytes
  size_t destLen = 0;

  NotifyJob(Napi::Env env, Kind kind) : kind(kind), deferred(Napi::Promise::Deferred::New(env)) {}
  ~NotifyJob() override { free(out); }
  void run(Core* core);  // notify thread
  void deliver(Napi::Env env, Core* core) override;
};

struct Pending {
  fuse_req_t req;
  bool delivered = false;    // JS has seen the request
  bool interrupted = false;  // the kernel sent FUSE_INTERRUPT for it
};

// ---- 6) READ fast path ----

struct CachedBlock {
  uint64_t off;      // file offset of data[0]
  const char* data;  // len bytes (JS memory, kept alive by keepData)
  size_t len;
  uint8_t* served;  // servedLen bytes, 1 per 4 KiB page of [off, off+len)
  size_t servedLen;
  unsigned inflight = 0;                              // workers sending from data right now; guarded by BlockCache::mu
  Napi::Reference<Napi::Value> keepData, keepServed;  // JS thread only (created, reset)
};

// Per-session table nodeid → (off → block). Leaf lock; see the top comment, 6).
class BlockCache {
 public:
  static constexpr size_t kPage = 4096;

  std::mutex mu;
  std::condition_variable cv;       // an inflight count dropped
  std::atomic<uint64_t> served{0};  // READs answered here (.wcfs/stats ReadFast); relaxed
  // ---- guarded by mu ----
  bool closed = false;
  std::unordered_map<uint64_t, std::map<uint64_t, std::unique_ptr<CachedBlock>>> files;
  // ---- end guarded by mu ----

  // JS thread. Inserts b, replacing every entry overlapping it. The replaced entries are
  // returned (to be destroyed by the caller on the JS thread) once no worker uses them.
  // false: closed (b is returned too).
  bool put(uint64_t nodeid, std::unique_ptr<CachedBlock> b, std::vector<std::unique_ptr<CachedBlock>>* out) {
    std::unique_lock<std::mutex> g(mu);
    if (closed) {
      out->push_back(std::move(b));
      return false;
    }
    auto& m = files[nodeid];
    uint64_t lo = b->off, hi = b->off + b->len;
    auto it = m.upper_bound(lo);
    if (it != m.begin()) {
      auto prev = std::prev(it);
      if (prev->second->off + prev->second->len > lo) it = prev;
    }
    while (it != m.end() && it->first < hi) {
      out->push_back(std::move(it->second));
      it = m.erase(it);
    }
    m.emplace(lo, std::move(b));
    waitIdle(g, *out);
    return true;
  }

  // JS thread. Removes the entry starting at off (if any) once no worker sends from it.
  std::unique_ptr<CachedBlock> drop(uint64_t nodeid, uint64_t off) {
    std::unique_lock<std::mutex> g(mu);
    auto f = files.find(nodeid);
    if (f == files.end()) return nullptr;
    auto it = f->second.find(off);
    if (it == f->second.end()) return nullptr;
    std::vector<std::unique_ptr<CachedBlock>> v;
    v.push_back(std::move(it->second));
    f->second.erase(it);
    if (f->second.empty()) files.erase(f);
    waitIdle(g, v);
    return std::move(v[0]);
  }

  // Closes the table and waits for in-flight fast replies. Returns the entries (teardown
  // destroys them on the JS thread; the env cleanup hook leaks them with the Core).
  std::vector<std::unique_ptr<CachedBlock>> close() {
    std::unique_lock<std::mutex> g(mu);
    closed = true;
    std::vector<std::unique_ptr<CachedBlock>> v;
    for (auto& kv : files)
      for (auto& e : kv.second) v.push_back(std::move(e.second));
    files.clear();
    waitIdle(g, v);
    return v;
  }

  // libfuse worker. Replies req from a registered range covering [off, off+size) → true, or
  // false (nothing sent: the caller forwards the request to JS).
  bool serve(fuse_req_t req, uint64_t nodeid, uint64_t off, size_t size) {
    CachedBlock* b = nullptr;
    {
      std::lock_guard<std::mutex> g(mu);
      if (closed || size == 0) return false;
      auto f = files.find(nodeid);
      if (f == files.end()) return false;
      auto it = f->second.upper_bound(off);
      if (it == f->second.begin()) return false;
      --it;
      CachedBlock* c = it->second.get();
      if (off < c->off || off + size > c->off + c->len) return false;
      b = c;
      b->inflight++;
    }
    size_t rel = size_t(off - b->off);
    int rc = fuse_reply_buf(req, b->data + rel, size);
    if (rc == 0) {
      // only whole pages count: a partial page may not be in the page cache as a whole
      size_t p0 = (rel + kPage - 1) / kPage, p1 = (rel + size) / kPage;
      for (size_t p = p0; p < p1 && p < b->servedLen; p++) b->served[p] = 1;
    }
    {
      std::lock_guard<std::mutex> g(mu);
      b->inflight--;
    }
    cv.notify_all();
    served.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

 private:
  void waitIdle(std::unique_lock<std::mutex>& g, const std::vector<std::unique_ptr<CachedBlock>>& v) {
    cv.wait(g, [&] {
      for (auto& b : v)
        if (b && b->inflight > 0) return false;
      return true;
    });
  }
};

// Core is all state shared between threads. It is owned by the FuseSession wrapper, except
// after an environment teardown while mounted, when it is leaked (threads still use it).
class Core {
 public:
  enum State { OPEN, CLOSING, CLOSED };

  Config cfg;
  std::string mountpoint;
  fuse_session* se = nullptr;  // JS thread creates/destroys; threads use it in between
  Tsfn tsfn;
  napi_env env = nullptr;
  Napi::FunctionReference onRequest, onInterrupt, onForget, onInit, onDestroy, onExit;  // JS thread
  Napi::ObjectReference self;  // JS thread; keeps the wrapper alive while mounted
  std::thread loopThread;
  std::vector<std::thread> notifyThreads;  // JS thread only
  std::thread::id jsThread;
  bool cleanupHookAdded = false;  // JS thread
  bool destroyed = false;         // JS thread: onDestroy was called
  BlockCache blocks;              // 6) READ fast path (own lock)

  std::mutex mu;
  // ---- guarded by mu ----
  State state = OPEN;
  uint64_t lastId = 0;
  std::unordered_map<uint64_t, Pending> reqs;
  std::unordered_map<uint64_t, NotifyJob*> retrieves;
  unsigned retrieveCopies = 0;  // workers copying a RETRIEVE reply into JS memory (dest) now
  std::deque<NotifyJob*> jobs;
  unsigned idleNotify = 0;      // notify threads waiting for a job
  unsigned startingNotify = 0;  // notify threads started but not yet waiting
  bool stopNotify = false;
  std::condition_variable jobsCv;
  std::condition_variable retrieveCv;  // retrieveCopies dropped
  // ---- end guarded by mu ----

  // Posts ev to JS; false (ev not consumed) once the session is CLOSED.
  bool emitLocked(Event* ev) {
    if (state == CLOSED) return false;
    return tsfn.NonBlockingCall(ev) == napi_ok;
  }
  bool emit(Event* ev) {
    std::lock_guard<std::mutex> g(mu);
    return emitLocked(ev);
  }

  // 2) Called by every ll_* handler that forwards to JS.
  void submit(fuse_req_t req, ReqEvent* ev) {
    uint64_t id = 0;
    {
      std::lock_guard<std::mutex> g(mu);
      if (state == OPEN) {
        id = ++lastId;
        reqs.emplace(id, Pending{req});
      }
    }
    if (id == 0) {  // only after an environment teardown (CLOSED while the loop runs)
      delete ev;
      fuse_reply_err(req, ENOTCONN);
      return;
    }
    ev->id = id;
    // The id, not a pointer, is the callback data: onInterrupt may run concurrently with the
    // reply (libfuse calls it under req->lock, which fuse_reply_* doesn't take), and then
    // finds nothing under the id instead of touching freed memory.
    fuse_req_interrupt_func(req, &Core::onInterruptCb, reinterpret_cast<void*>(static_cast<uintptr_t>(id)));
    if (!emit(ev)) {  // environment gone: answer here (take() would refuse: CLOSED)
      delete ev;
      fuse_req_t r = nullptr;
      {
        std::lock_guard<std::mutex> g(mu);
        auto it = reqs.find(id);
        if (it != reqs.end()) {
          r = it->second.req;
          reqs.erase(it);
        }
      }
      if (r) fuse_reply_err(r, EIO);
    }
  }

  // Removes id from reqs and returns its request (the caller now must reply), or nullptr
  // with *err = ESRCH (unknown / already answered) or ENOTCONN (closed).
  fuse_req_t take(uint64_t id, int* err) {
    std::lock_guard<std::mutex> g(mu);
    if (state != OPEN) {
      if (err) *err = ENOTCONN;
      return nullptr;
    }
    auto it = reqs.find(id);
    if (it == reqs.end()) {
      if (err) *err = ESRCH;
      return nullptr;
    }
    fuse_req_t r = it->second.req;
    reqs.erase(it);
    return r;
  }

  // 3) libfuse worker thread, under req->lock.
  static void onInterruptCb(fuse_req_t req, void* data) {
    Core* core = static_cast<Core*>(fuse_req_userdata(req));
    uint64_t id = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data));
    std::lock_guard<std::mutex> g(core->mu);
    auto it = core->reqs.find(id);
    if (it == core->reqs.end()) return;  // answered meanwhile
    it->second.interrupted = true;
    if (it->second.delivered) {
      auto* ev = new InterruptEvent(id);
      if (!core->emitLocked(ev)) delete ev;
    }
  }

  // 4) notify threads
  void notifyLoop() {
    BlockAllSignals();
    std::unique_lock<std::mutex> g(mu);
    startingNotify--;
    for (;;) {
      idleNotify++;
      jobsCv.wait(g, [this] { return stopNotify || !jobs.empty(); });
      idleNotify--;
      if (jobs.empty()) return;  // stopNotify and nothing left
      NotifyJob* job = jobs.front();
      jobs.pop_front();
      g.unlock();
      job->run(this);
      g.lock();
    }
  }

  // JS thread, under mu: a job was queued; start a thread if no idle one will take it.
  bool needNotifyThread() {
    if (jobs.size() <= idleNotify + startingNotify || notifyThreads.size() >= cfg.notifyThreads) return false;
    startingNotify++;
    return true;
  }

  // 1) loop thread
  void loopMain() {
    BlockAllSignals();
    fuse_loop_config* lc = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(lc, cfg.maxThreads);
    fuse_loop_cfg_set_clone_fd(lc, 0);
    int rc = fuse_session_loop_mt(se, lc);
    fuse_loop_cfg_destroy(lc);
    // All libfuse workers are joined by now: from here on nobody calls ll_* or onInterrupt.
    auto* ev = new LoopEndEvent(rc);
    if (!emit(ev)) delete ev;
  }

  // 5) JS thread, on LoopEnd.
  void teardown(Napi::Env env, int rc) {
    std::vector<fuse_req_t> unanswered;
    std::vector<NotifyJob*> dropped;
    {
      std::lock_guard<std::mutex> g(mu);
      if (state != OPEN) return;
    }
    // 6) the loop has ended (no workers any more); close the fast path anyway before
    // anything is freed. The entries (JS references) are destroyed here, on the JS thread.
    blocks.close();
    {
      std::lock_guard<std::mutex> g(mu);
      if (state != OPEN) return;
      state = CLOSING;  // replies and new notifications now fail with ENOTCONN
      for (auto& kv : reqs) unanswered.push_back(kv.second.req);
      reqs.clear();
      dropped.assign(jobs.begin(), jobs.end());
      jobs.clear();
      stopNotify = true;
    }
    jobsCv.notify_all();
    // The connection is gone (that is why the loop ended), so a notification still in the
    // kernel fails at once with ENODEV: joining is quick. Their completions are posted
    // through the TSFN (allowed while CLOSING) and delivered after this function.
    for (auto& t : notifyThreads) t.join();
    notifyThreads.clear();
    if (loopThread.joinable()) loopThread.join();
    {
      std::lock_guard<std::mutex> g(mu);
      for (auto& kv : retrieves) dropped.push_back(kv.second);
      retrieves.clear();
    }
    for (NotifyJob* job : dropped) {
      std::unique_ptr<NotifyJob> owned(job);
      owned->rc = -ENOTCONN;
      owned->deliver(env, this);  // only resolves a promise: doesn't throw
    }
    for (fuse_req_t r : unanswered) fuse_reply_none(r);  // frees; nothing is sent
    // Closes /dev/fuse; unmounts (lazily) only if the kernel still has the connection, i.e.
    // the loop failed on its own. After an abort the dead mount stays (ENOTCONN for clients)
    // until someone unmounts it — src/fuse/session.ts reports that as `mounted: true`.
    fuse_session_unmount(se);
    fuse_session_destroy(se);  // calls ll_destroy if the kernel never sent DESTROY
    se = nullptr;
    {
      std::lock_guard<std::mutex> g(mu);
      state = CLOSED;
    }
    if (cleanupHookAdded) {
      napi_remove_env_cleanup_hook(env, &Core::envCleanup, this);
      cleanupHookAdded = false;
    }
    tsfn.Release();  // finalizer (after the queue drains) drops `self`
    // JS callbacks last: an exception from them must not skip the steps above.
    if (!destroyed) {
      destroyed = true;
      onDestroy.Call({});
    }
    onExit.Call({Napi::Number::New(env, rc)});
  }

  // Environment teardown while still mounted (process or worker exit).
  static void envCleanup(void* arg) {
    Core* core = static_cast<Core*>(arg);
    {
      std::lock_guard<std::mutex> g(core->mu);
      core->state = CLOSED;  // no thread touches the TSFN any more
      core->stopNotify = true;
    }
    core->jobsCv.notify_all();
    // 4) nor may a RETRIEVE reply be copied into JS memory: the jobs leak (they hold JS
    // references), a worker that comes later finds none, and copies under way end first.
    {
      std::unique_lock<std::mutex> g(core->mu);
      core->retrieves.clear();
      core->retrieveCv.wait(g, [core] { return core->retrieveCopies == 0; });
    }
    // 6) detached workers keep running: no fast reply may send from JS memory that the
    // environment frees next. Later READs fall through to submit() (→ ENOTCONN). The
    // entries leak with the Core (their references die with the environment).
    for (auto& b : core->blocks.close()) b.release();
    if (core->loopThread.joinable()) core->loopThread.detach();
    for (auto& t : core->notifyThreads)
      if (t.joinable()) t.detach();
    core->cleanupHookAdded = false;
    core->leaked = true;  // threads may still run; the wrapper must not free us
  }
  bool leaked = false;
};

void CallJs(Napi::Env env, Napi::Function, Core* core, Event* ev) {
  if (env == nullptr) return;  // environment is gone: leak ev (it may hold JS references)
  std::unique_ptr<Event> owned(ev);
  owned->deliver(env, core);  // a JS exception propagates (node-addon-api rethrows it in JS)
}

// ---- 2) request delivery (JS thread) ----

void ReqEvent::deliver(Napi::Env env, Core* core) {
  bool interrupted;
  {
    std::lock_guard<std::mutex> g(core->mu);
    auto it = core->reqs.find(id);
    if (it == core->reqs.end()) return;  // closed meanwhile
    it->second.delivered = true;
    interrupted = it->second.interrupted;
  }
  Napi::Value arg = env.Undefined();
  if (op == OP_LOOKUP) {
    arg = Napi::String::New(env, name);
  } else if (op == OP_WRITE) {
    char* p = data;
    data = nullptr;
    arg = Napi::Buffer<char>::New(env, p, dataLen, [](Napi::Env, char* q) { free(q); });
  }
  core->onRequest.Call({
      Napi::Number::New(env, op),
      Napi::Number::New(env, static_cast<double>(id)),
      Napi::Number::New(env, static_cast<double>(nodeid)),
      Napi::Number::New(env, fh),
      Napi::Number::New(env, offset),
      Napi::Number::New(env, size),
      Napi::Number::New(env, flags),
      arg,
      Napi::Number::New(env, pid),
      Napi::Number::New(env, uid),
      Napi::Number::New(env, gid),
      Napi::Boolean::New(env, interrupted),
  });
}

void InterruptEvent::deliver(Napi::Env env, Core* core) {
  core->onInterrupt.Call({Napi::Number::New(env, static_cast<double>(id))});
}

void ForgetEvent::deliver(Napi::Env env, Core* core) {
  auto arr = Napi::Float64Array::New(env, pairs.size());
  std::memcpy(arr.Data(), pairs.data(), pairs.size() * sizeof(double));
  core->onForget.Call({arr});
}

void InitEvent::deliver(Napi::Env env, Core* core) {
  constexpr size_t n = sizeof info / sizeof info[0];
  auto arr = Napi::Float64Array::New(env, n);
  std::memcpy(arr.Data(), info, sizeof info);
  core->onInit.Call({arr});
}

void DestroyEvent::deliver(Napi::Env env, Core* core) {
  if (core->destroyed) return;
  core->destroyed = true;
  core->onDestroy.Call({});
}

void LoopEndEvent::deliver(Napi::Env env, Core* core) { core->teardown(env, rc); }

// ---- 4) notifications ----

void NotifyJob::run(Core* core) {
  fuse_session* se = core->se;
  switch (kind) {
    case INVAL_INODE:
      rc = fuse_lowlevel_notify_inval_inode(se, ino, off, len);
      break;
    case INVAL_ENTRY:
      rc = fuse_lowlevel_notify_inval_entry(se, ino, name.data(), name.size());
      break;
    case STORE: {
      fuse_bufvec bv = FUSE_BUFVEC_INIT(static_cast<size_t>(len));
      bv.buf[0].mem = const_cast<char*>(data);
      // flags 0 and no SPLICE_WRITE negotiated: libfuse writev()s straight from `data`.
      rc = fuse_lowlevel_notify_store(se, ino, off, &bv, static_cast<fuse_buf_copy_flags>(0));
      break;
    }
    case RETRIEVE: {
      {
        std::lock_guard<std::mutex> g(core->mu);
        core->retrieves.emplace(cookie, this);
      }
      int r = fuse_lowlevel_notify_retrieve(se, ino, static_cast<size_t>(len), off,
                                            reinterpret_cast<void*>(static_cast<uintptr_t>(cookie)));
      // r == 0: ll_retrieve_reply completes the job — maybe it already did and the job is
      // gone, so `this` must not be touched any more.
      if (r == 0) return;
      std::lock_guard<std::mutex> g(core->mu);
      if (core->retrieves.erase(cookie) == 0) return;  // teardown took it
      rc = r;
      break;
    }
  }
  if (!core->emit(this)) {
    // CLOSED only after environment teardown: leak (holds JS references).
  }
}

void NotifyJob::deliver(Napi::Env env, Core*) {
  keep.Reset();
  if (kind == RETRIEVE && rc == 0 && dest != nullptr) {
    deferred.Resolve(Napi::Number::New(env, double(outLen)));
    return;
  }
  if (kind == RETRIEVE && rc == 0) {
    char* p = out;
    out = nullptr;
    if (p == nullptr) {
      deferred.Resolve(Napi::Buffer<char>::New(env, 0));
    } else {
      deferred.Resolve(Napi::Buffer<char>::New(env, p, outLen, [](Napi::Env, char* q) { free(q); }));
    }
    return;
  }
  deferred.Resolve(Napi::Number::New(env, rc));
}

// ---- libfuse low-level handlers (libfuse worker threads) ----

Core* CoreOf(fuse_req_t req) { return static_cast<Core*>(fuse_req_userdata(req)); }

void ll_init(void* userdata, fuse_conn_info* conn) {
  Core* core = static_cast<Core*>(userdata);
  const Config& cfg = core->cfg;
  // AUTO_INVAL_DATA takes precedence over EXPLICIT and drops the whole cache on any mtime
  // change, so it is always cleared. Wanting an uncapable flag would make libfuse abort the
  // INIT; JS sees `want` and warns when EXPLICIT is missing (spec 3.10).
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  if (cfg.explicitInvalData && (conn->capable & FUSE_CAP_EXPLICIT_INVAL_DATA))
    conn->want |= FUSE_CAP_EXPLICIT_INVAL_DATA;
  if (cfg.asyncRead && (conn->capable & FUSE_CAP_ASYNC_READ))
    conn->want |= FUSE_CAP_ASYNC_READ;
  else
    conn->want &= ~FUSE_CAP_ASYNC_READ;
  // Async READs (readahead, async DIO) beyond max_background queue in the kernel (default 12).
  conn->max_background = cfg.maxBackground;
  conn->congestion_threshold = cfg.congestionThreshold ? cfg.congestionThreshold : cfg.maxBackground * 3 / 4;

  auto* ev = new InitEvent();
  double v[] = {double(conn->proto_major),   double(conn->proto_minor),    double(conn->capable),
                double(conn->want),          double(conn->max_write),      double(conn->max_read),
                double(conn->max_readahead), double(conn->max_background), double(conn->congestion_threshold),
                double(conn->time_gran),     double(fuse_version())};
  std::memcpy(ev->info, v, sizeof v);
  if (!core->emit(ev)) delete ev;
}

// Called on a worker for the kernel's DESTROY (fuseblk only), or on the JS thread from
// fuse_session_destroy in teardown — then teardown calls onDestroy itself.
void ll_destroy(void* userdata) {
  Core* core = static_cast<Core*>(userdata);
  if (std::this_thread::get_id() == core->jsThread) return;
  auto* ev = new DestroyEvent();
  if (!core->emit(ev)) delete ev;
}

void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto* ev = new ReqEvent(OP_LOOKUP, req, parent);
  ev->name = name;
  CoreOf(req)->submit(req, ev);
}

// FORGET has no reply; answering here costs JS nothing. JS still gets the counts (batched
// for FORGET_MULTI) so the TS side can keep lookup counts if it wants to.
void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Core* core = CoreOf(req);
  auto* ev = new ForgetEvent();
  ev->pairs = {double(ino), double(nlookup)};
  fuse_reply_none(req);
  if (!core->emit(ev)) delete ev;
}

void ll_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  Core* core = CoreOf(req);
  auto* ev = new ForgetEvent();
  ev->pairs.reserve(2 * count);
  for (size_t i = 0; i < count; i++) {
    ev->pairs.push_back(double(forgets[i].ino));
    ev->pairs.push_back(double(forgets[i].nlookup));
  }
  fuse_reply_none(req);
  if (!core->emit(ev)) delete ev;
}

void ll_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto* ev = new ReqEvent(OP_GETATTR, req, ino);
  if (fi) ev->fh = double(fi->fh);
  CoreOf(req)->submit(req, ev);
}

void ll_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto* ev = new ReqEvent(OP_OPEN, req, ino);
  ev->flags = fi->flags;
  CoreOf(req)->submit(req, ev);
}

void ll_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto* ev = new ReqEvent(OP_OPENDIR, req, ino);
  ev->flags = fi->flags;
  CoreOf(req)->submit(req, ev);
}

void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  // 6) fast path: a READ wholly inside a registered block is answered here.
  if (off >= 0 && CoreOf(req)->blocks.serve(req, ino, uint64_t(off), size)) return;
  auto* ev = new ReqEvent(OP_READ, req, ino);
  ev->fh = double(fi->fh);
  ev->offset = double(off);
  ev->size = double(size);
  ev->flags = fi->flags;
  CoreOf(req)->submit(req, ev);
}

void ll_write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  auto* ev = new ReqEvent(OP_WRITE, req, ino);
  ev->fh = double(fi->fh);
  ev->offset = double(off);
  ev->size = double(size);
  ev->flags = fi->flags;
  // libfuse reuses this worker's buffer for the next request: copy.
  ev->data = static_cast<char*>(malloc(size ? size : 1));
  if (!ev->data) {
    delete ev;
    fuse_reply_err(req, ENOMEM);
    return;
  }
  std::memcpy(ev->data, buf, size);
  ev->dataLen = size;
  CoreOf(req)->submit(req, ev);
}

void ll_flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
  fuse_reply_err(req, 0);  // nothing is buffered: every close() would cost a JS round trip
}

void ll_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto* ev = new ReqEvent(OP_RELEASE, req, ino);
  ev->fh = double(fi->fh);
  ev->flags = fi->flags;
  CoreOf(req)->submit(req, ev);
}

void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  auto* ev = new ReqEvent(OP_READDIR, req, ino);
  ev->fh = double(fi->fh);
  ev->offset = double(off);
  ev->size = double(size);
  CoreOf(req)->submit(req, ev);
}

void ll_releasedir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto* ev = new ReqEvent(OP_RELEASEDIR, req, ino);
  ev->fh = double(fi->fh);
  ev->flags = fi->flags;
  CoreOf(req)->submit(req, ev);
}

void ll_statfs(fuse_req_t req, fuse_ino_t ino) { CoreOf(req)->submit(req, new ReqEvent(OP_STATFS, req, ino)); }

// 4) The kernel's NOTIFY_REPLY to our RETRIEVE. The data lives in this worker's buffer
// (or a pipe): copy it out — into the job's dest (JS memory, counted in retrieveCopies so
// that envCleanup can wait for it) or a malloc'ed buffer — answer (no reply is sent for
// NOTIFY_REPLY), complete the job.
void ll_retrieve_reply(fuse_req_t req, void* cookie, fuse_ino_t, off_t, fuse_bufvec* bufv) {
  Core* core = CoreOf(req);
  uint64_t id = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(cookie));
  NotifyJob* job = nullptr;
  {
    std::lock_guard<std::mutex> g(core->mu);
    auto it = core->retrieves.find(id);
    if (it != core->retrieves.end()) {
      job = it->second;
      core->retrieves.erase(it);
      if (job->dest != nullptr) core->retrieveCopies++;
    }
  }
  if (!job) {  // teardown took it
    fuse_reply_none(req);
    return;
  }
  size_t n = fuse_buf_size(bufv);
  int rc = 0;
  char* to = job->dest;
  if (to != nullptr) {
    n = std::min(n, job->destLen);  // the kernel sends at most what was asked: ≤ destLen
  } else if (n > 0) {
    to = static_cast<char*>(malloc(n));
    if (!to) rc = -ENOMEM;
  }
  if (rc == 0 && n > 0) {
    fuse_bufvec dst = FUSE_BUFVEC_INIT(n);
    dst.buf[0].mem = to;
    ssize_t got = fuse_buf_copy(&dst, bufv, static_cast<fuse_buf_copy_flags>(0));
    if (got < 0) {
      rc = int(got);
      n = 0;
    } else {
      n = size_t(got);
    }
  }
  fuse_reply_none(req);
  if (job->dest != nullptr) {
    {
      std::lock_guard<std::mutex> g(core->mu);
      core->retrieveCopies--;
    }
    core->retrieveCv.notify_all();
  } else {
    job->out = rc == 0 ? to : nullptr;
    if (rc != 0) free(to);
  }
  job->rc = rc;
  job->outLen = rc == 0 ? n : 0;
  if (!core->emit(job)) {
    // environment gone: leak
  }
}

fuse_lowlevel_ops MakeOps() {
  // Ops left NULL are answered by libfuse with ENOSYS (the kernel then stops sending most
  // of them: no_poll, no_getxattr, …) — unsupported ops are handled in this one place.
  fuse_lowlevel_ops ops;
  std::memset(&ops, 0, sizeof ops);
  ops.init = ll_init;
  ops.destroy = ll_destroy;
  ops.lookup = ll_lookup;
  ops.forget = ll_forget;
  ops.forget_multi = ll_forget_multi;
  ops.getattr = ll_getattr;
  ops.open = ll_open;
  ops.read = ll_read;
  ops.write = ll_write;
  ops.flush = ll_flush;
  ops.release = ll_release;
  ops.opendir = ll_opendir;
  ops.readdir = ll_readdir;
  ops.releasedir = ll_releasedir;
  ops.statfs = ll_statfs;
  ops.retrieve_reply = ll_retrieve_reply;
  return ops;
}

// ---- JS API ----

void FillStat(const Napi::Float64Array& a, struct stat* st) {
  if (a.ElementLength() < kAttrLen) throw Napi::TypeError::New(a.Env(), "attr: Float64Array(15) expected");
  const double* v = a.Data();
  std::memset(st, 0, sizeof *st);
  st->st_ino = ino_t(v[0]);
  st->st_mode = mode_t(v[1]);
  st->st_nlink = nlink_t(v[2]);
  st->st_uid = uid_t(v[3]);
  st->st_gid = gid_t(v[4]);
  st->st_rdev = dev_t(v[5]);
  st->st_size = off_t(v[6]);
  st->st_blocks = blkcnt_t(v[7]);
  st->st_blksize = blksize_t(v[8]);
  st->st_atim.tv_sec = time_t(v[9]);
  st->st_atim.tv_nsec = long(v[10]);
  st->st_mtim.tv_sec = time_t(v[11]);
  st->st_mtim.tv_nsec = long(v[12]);
  st->st_ctim.tv_sec = time_t(v[13]);
  st->st_ctim.tv_nsec = long(v[14]);
}

uint64_t U64(const Napi::Value& v) { return uint64_t(v.As<Napi::Number>().DoubleValue()); }

// The bytes of a TypedArray (Buffer, Uint8Array, …) without creating JS objects.
std::pair<const char*, size_t> ViewBytes(const Napi::Value& v) {
  napi_typedarray_type type;
  size_t length, offset;
  void* data = nullptr;
  napi_value ab;
  napi_status st = napi_get_typedarray_info(v.Env(), v, &type, &length, &data, &ab, &offset);
  if (st != napi_ok) throw Napi::TypeError::New(v.Env(), "Uint8Array expected");
  size_t elem = 1;
  switch (type) {
    case napi_int16_array:
    case napi_uint16_array:
      elem = 2;
      break;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      elem = 4;
      break;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array:
      elem = 8;
      break;
    default:
      break;
  }
  return {static_cast<const char*>(data), length * elem};
}

class FuseSession : public Napi::ObjectWrap<FuseSession> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FuseSession",
                       {
                           InstanceMethod("replyErr", &FuseSession::ReplyErr),
                           InstanceMethod("replyNone", &FuseSession::ReplyNone),
                           InstanceMethod("replyEntry", &FuseSession::ReplyEntry),
                           InstanceMethod("replyAttr", &FuseSession::ReplyAttr),
                           InstanceMethod("replyOpen", &FuseSession::ReplyOpen),
                           InstanceMethod("replyData", &FuseSession::ReplyData),
                           InstanceMethod("replyWrite", &FuseSession::ReplyWrite),
                           InstanceMethod("replyReaddir", &FuseSession::ReplyReaddir),
                           InstanceMethod("replyStatfs", &FuseSession::ReplyStatfs),
                           InstanceMethod("notifyInvalInode", &FuseSession::NotifyInvalInode),
                           InstanceMethod("notifyInvalEntry", &FuseSession::NotifyInvalEntry),
                           InstanceMethod("notifyStore", &FuseSession::NotifyStore),
                           InstanceMethod("notifyRetrieve", &FuseSession::NotifyRetrieve),
                           InstanceMethod("pending", &FuseSession::PendingCount),
                           InstanceMethod("cacheBlock", &FuseSession::CacheBlock),
                           InstanceMethod("uncacheBlock", &FuseSession::UncacheBlock),
                           InstanceMethod("fastReads", &FuseSession::FastReads),
                           InstanceMethod("ref", &FuseSession::Ref),
                           InstanceMethod("unref", &FuseSession::Unref),
                       });
  }

  // new FuseSession(mountpoint, args: string[], cfg, handlers) — mounts and starts serving.
  explicit FuseSession(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FuseSession>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 4 || !info[0].IsString() || !info[1].IsArray() || !info[2].IsObject() || !info[3].IsObject())
      throw Napi::TypeError::New(env, "new FuseSession(mountpoint, args[], cfg, handlers)");
    core_ = new Core();
    Core* c = core_;
    c->jsThread = std::this_thread::get_id();
    c->env = env;
    c->mountpoint = info[0].As<Napi::String>().Utf8Value();

    Napi::Object cfg = info[2].As<Napi::Object>();
    auto num = [&](const char* k, unsigned def) {
      Napi::Value v = cfg.Get(k);
      return v.IsNumber() ? unsigned(v.As<Napi::Number>().Uint32Value()) : def;
    };
    auto flag = [&](const char* k, bool def) {
      Napi::Value v = cfg.Get(k);
      return v.IsBoolean() ? v.As<Napi::Boolean>().Value() : def;
    };
    c->cfg.maxThreads = std::max(1u, num("maxThreads", c->cfg.maxThreads));
    c->cfg.maxBackground = std::max(1u, num("maxBackground", c->cfg.maxBackground));
    c->cfg.congestionThreshold = num("congestionThreshold", 0);
    c->cfg.notifyThreads = std::max(1u, num("notifyThreads", c->cfg.notifyThreads));
    c->cfg.explicitInvalData = flag("explicitInvalData", true);
    c->cfg.asyncRead = flag("asyncRead", true);

    Napi::Object h = info[3].As<Napi::Object>();
    auto fn = [&](const char* k) {
      Napi::Value v = h.Get(k);
      if (!v.IsFunction()) throw Napi::TypeError::New(env, std::string("handlers.") + k + " must be a function");
      return Napi::Persistent(v.As<Napi::Function>());
    };
    c->onRequest = fn("request");
    c->onInterrupt = fn("interrupt");
    c->onForget = fn("forget");
    c->onInit = fn("init");
    c->onDestroy = fn("destroy");
    c->onExit = fn("exit");

    Napi::Array a = info[1].As<Napi::Array>();
    std::vector<std::string> args;
    for (uint32_t i = 0; i < a.Length(); i++) args.push_back(a.Get(i).ToString().Utf8Value());
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    fuse_args fargs = FUSE_ARGS_INIT(int(argv.size()), argv.data());

    lastLibfuseLog.clear();
    fuse_lowlevel_ops ops = MakeOps();
    c->se = fuse_session_new(&fargs, &ops, sizeof ops, c);
    fuse_opt_free_args(&fargs);
    if (!c->se) Fail(env, "fuse_session_new");
    if (fuse_session_mount(c->se, c->mountpoint.c_str()) != 0) {
      fuse_session_destroy(c->se);
      c->se = nullptr;
      Fail(env, "fuse_session_mount");
    }

    // From here the mount exists: threads start, and the TSFN keeps Node alive until exit.
    c->tsfn = Tsfn::New(
        env, "wcfs-fuse", 0, 1, c,
        [](Napi::Env, void*, Core* core) {
          core->self.Unref();  // the wrapper may be collected now
        },
        static_cast<void*>(nullptr));
    c->self = Napi::Persistent(info.This().As<Napi::Object>());
    napi_add_env_cleanup_hook(env, &Core::envCleanup, c);
    c->cleanupHookAdded = true;
    c->startingNotify = 1;
    c->notifyThreads.emplace_back([c] { c->notifyLoop(); });
    c->loopThread = std::thread([c] { c->loopMain(); });
  }

  ~FuseSession() override {
    Core* c = core_;
    if (!c || c->leaked) return;
    if (c->se != nullptr || c->loopThread.joinable()) {
      // Unreachable: `self` keeps us alive until teardown finished. Be safe anyway.
      c->leaked = true;
      return;
    }
    delete c;
  }

 private:
  Core* core_ = nullptr;

  [[noreturn]] void Fail(Napi::Env env, const char* what) {
    std::string msg = std::string(what) + " failed";
    if (!lastLibfuseLog.empty()) msg += ": " + lastLibfuseLog;
    delete core_;
    core_ = nullptr;
    Napi::Error e = Napi::Error::New(env, msg);
    e.Set("code", Napi::String::New(env, "WCFS_EMOUNT"));
    throw e;
  }

  Napi::Value Rc(Napi::Env env, int rc) { return Napi::Number::New(env, rc); }

  // Takes the request for a reply. nullptr ⇒ *rc holds the code to return to JS.
  fuse_req_t Take(const Napi::CallbackInfo& info, int* rc) {
    if (!core_) {
      *rc = -ENOTCONN;
      return nullptr;
    }
    int err = 0;
    fuse_req_t r = core_->take(U64(info[0]), &err);
    if (!r) *rc = -err;
    return r;
  }

  // replyErr(id, errno) — errno 0 is success for ops without reply data (release, …).
  Napi::Value ReplyErr(const Napi::CallbackInfo& info) {
    int rc = 0;
    int err = info[1].As<Napi::Number>().Int32Value();
    fuse_req_t r = Take(info, &rc);
    if (r) rc = fuse_reply_err(r, err);
    return Rc(info.Env(), rc);
  }

  Napi::Value ReplyNone(const Napi::CallbackInfo& info) {
    int rc = 0;
    fuse_req_t r = Take(info, &rc);
    if (r) fuse_reply_none(r);
    return Rc(info.Env(), rc);
  }

  // replyEntry(id, nodeid, generation, entryTimeout, attrTimeout, attr: ATTR)
  Napi::Value ReplyEntry(const Napi::CallbackInfo& info) {
    fuse_entry_param e;
    std::memset(&e, 0, sizeof e);
    e.ino = U64(info[1]);
    e.generation = U64(info[2]);
    e.entry_timeout = info[3].As<Napi::Number>().DoubleValue();
    e.attr_timeout = info[4].As<Napi::Number>().DoubleValue();
    FillStat(info[5].As<Napi::Float64Array>(), &e.attr);
    int rc = 0;
    fuse_req_t r = Take(info, &rc);
    if (r) rc = fuse_reply_entry(r, &e);
    return Rc(info.Env(), rc);
  }

  // replyAttr(id, attr: ATTR, attrTimeout)
  Napi::Value ReplyAttr(const Napi::CallbackInfo& info) {
    struct stat st;
    FillStat(info[1].As<Napi::Float64Array>(), &st);
    double timeout = info[2].As<Napi::Number>().DoubleValue();
    int rc = 0;
    fuse_req_t r = Take(info, &rc);
    if (r) rc = fuse_reply_attr(r, &st, timeout);
    return Rc(info.Env(), rc);
  }

  // replyOpen(id, fh, openFlags) — raw FOPEN_* bits. libfuse's fuse_file_info has no bit for
  // FOPEN_STREAM, so fuse_open_out is built here; fuse_reply_open sends exactly these 16
  // bytes too (fuse.md B "FOPEN flags"). Used for OPENDIR as well.
  Napi::Value ReplyOpen(const Napi::CallbackInfo& info) {
    struct {
      uint64_t fh;
      uint32_t open_flags;
      uint32_t padding;
    } out;
    static_assert(sizeof out == 16, "struct fuse_open_out is 16 bytes");
    out.fh = U64(info[1]);
    out.open_flags = info[2].As<Napi::Number>().Uint32Value();
    out.padding = 0;
    int rc = 0;
    fuse_req_t r = Take(info, &rc);
    if (r) rc = fuse_reply_buf(r, reinterpret_cast<const char*>(&out), sizeof out);
    return Rc(info.Env(), rc);
  }

  // replyData(id, data: Uint8Array) — written to /dev/fuse straight from the JS memory
  // (fuse_reply_buf writev()s synchronously): no copy.
  Napi::Value ReplyData(const Napi::CallbackInfo& info) {
    auto [p, n] = ViewBytes(info[1]);
    int rc = 0;
    fuse_req_t r = Take(info, &rc);
    if (r) rc = fuse_reply_buf(r, n ? p : nullptr, n);
    return Rc(info.Env(), rc);
  }

  Napi::Value ReplyWrite(const Napi::CallbackInfo& info) {
    size_t count = size_t(U64(info[1]));
    int rc = 0;
    fuse_req_t r = Take(info, &rc);
    if (r) rc = fuse_reply_write(r, count);
    return Rc(info.Env(), rc);
  }

  // replyReaddir(id, size, names: string[], inos: number[], modes: number[], offs: number[])
  //   → number of entries that fit into `size` bytes (≥ 0), or -errno. offs[i] is the
  //   offset the kernel passes back to continue after entry i.
  Napi::Value ReplyReaddir(const Napi::CallbackInfo& info) {
    size_t size = size_t(U64(info[1]));
    Napi::Array names = info[2].As<Napi::Array>();
    Napi::Array inos = info[3].As<Napi::Array>();
    Napi::Array modes = info[4].As<Napi::Array>();
    Napi::Array offs = info[5].As<Napi::Array>();
    std::vector<char> buf(size);
    size_t pos = 0;
    uint32_t n = 0;
    int rc = 0;
    // fuse_add_direntry only formats into buf (req is unused); take the request afterwards.
    for (; n < names.Length(); n++) {
      std::string name = names.Get(n).As<Napi::String>().Utf8Value();
      struct stat st;
      std::memset(&st, 0, sizeof st);
      st.st_ino = ino_t(U64(inos.Get(n)));
      st.st_mode = mode_t(modes.Get(n).As<Napi::Number>().Uint32Value());
      off_t off = off_t(offs.Get(n).As<Napi::Number>().DoubleValue());
      size_t need = fuse_add_direntry(nullptr, nullptr, 0, name.c_str(), &st, off);
      if (pos + need > size) break;
      fuse_add_direntry(nullptr, buf.data() + pos, size - pos, name.c_str(), &st, off);
      pos += need;
    }
    fuse_req_t r = Take(info, &rc);
    if (!r) return Rc(info.Env(), rc);
    rc = fuse_reply_buf(r, buf.data(), pos);
    return Rc(info.Env(), rc < 0 ? rc : int(n));
  }

  // replyStatfs(id, st: STATFS)
  Napi::Value ReplyStatfs(const Napi::CallbackInfo& info) {
    Napi::Float64Array a = info[1].As<Napi::Float64Array>();
    if (a.ElementLength() < kStatfsLen) throw Napi::TypeError::New(info.Env(), "statfs: Float64Array(9) expected");
    const double* v = a.Data();
    struct statvfs st;
    std::memset(&st, 0, sizeof st);
    st.f_bsize = (unsigned long)v[0];
    st.f_frsize = (unsigned long)v[1];
    st.f_blocks = fsblkcnt_t(v[2]);
    st.f_bfree = fsblkcnt_t(v[3]);
    st.f_bavail = fsblkcnt_t(v[4]);
    st.f_files = fsfilcnt_t(v[5]);
    st.f_ffree = fsfilcnt_t(v[6]);
    st.f_favail = fsfilcnt_t(v[7]);
    st.f_namemax = (unsigned long)v[8];
    int rc = 0;
    fuse_req_t r = Take(info, &rc);
    if (r) rc = fuse_reply_statfs(r, &st);
    return Rc(info.Env(), rc);
  }

  // Queues a job for the notify threads; resolves at once with -ENOTCONN when closed.
  Napi::Value Enqueue(Napi::Env env, NotifyJob* job) {
    Napi::Promise p = job->deferred.Promise();
    bool queued = false, grow = false;
    if (core_) {
      std::lock_guard<std::mutex> g(core_->mu);
      if (core_->state == Core::OPEN && !core_->stopNotify) {
        if (job->kind == NotifyJob::RETRIEVE) job->cookie = ++core_->lastId;
        core_->jobs.push_back(job);
        queued = true;
        grow = core_->needNotifyThread();
      }
    }
    if (queued) {
      core_->jobsCv.notify_one();
      if (grow) core_->notifyThreads.emplace_back([c = core_] { c->notifyLoop(); });
    } else {
      job->rc = -ENOTCONN;
      job->deliver(env, core_);
      delete job;
    }
    return p;
  }

  // notifyInvalInode(ino, off, len) — off < 0: attributes only; len <= 0: to the end.
  Napi::Value NotifyInvalInode(const Napi::CallbackInfo& info) {
    auto* job = new NotifyJob(info.Env(), NotifyJob::INVAL_INODE);
    job->ino = U64(info[0]);
    job->off = info[1].As<Napi::Number>().Int64Value();
    job->len = info[2].As<Napi::Number>().Int64Value();
    return Enqueue(info.Env(), job);
  }

  // notifyInvalEntry(parent, name)
  Napi::Value NotifyInvalEntry(const Napi::CallbackInfo& info) {
    auto* job = new NotifyJob(info.Env(), NotifyJob::INVAL_ENTRY);
    job->ino = U64(info[0]);
    job->name = info[1].As<Napi::String>().Utf8Value();
    return Enqueue(info.Env(), job);
  }

  // notifyStore(ino, off, data: Uint8Array) — zero-copy: `data` is referenced until the
  // promise settles and must not be modified meanwhile.
  Napi::Value NotifyStore(const Napi::CallbackInfo& info) {
    auto* job = new NotifyJob(info.Env(), NotifyJob::STORE);
    job->ino = U64(info[0]);
    job->off = info[1].As<Napi::Number>().Int64Value();
    auto [p, n] = ViewBytes(info[2]);
    job->data = p;
    job->len = int64_t(n);
    job->keep = Napi::Persistent(info[2]);
    return Enqueue(info.Env(), job);
  }

  // notifyRetrieve(ino, off, size[, dest: Uint8Array]) — one RETRIEVE; the kernel caps it
  // at max_write and stops at the first uncached page. Resolves with the bytes as a Buffer,
  // or — with dest (≥ size bytes, referenced until the promise settles and not to be touched
  // meanwhile) — copies them to dest[0..] and resolves with their count; -errno on failure.
  Napi::Value NotifyRetrieve(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t size = info[2].As<Napi::Number>().Int64Value();
    std::pair<const char*, size_t> d{nullptr, 0};
    if (info.Length() > 3 && !info[3].IsUndefined()) {
      if (!info[3].IsTypedArray()) throw Napi::TypeError::New(env, "notifyRetrieve: dest must be a Uint8Array");
      d = ViewBytes(info[3]);
      if (size < 0 || d.second < size_t(size))
        throw Napi::RangeError::New(env, "notifyRetrieve: dest is shorter than size");
    }
    auto* job = new NotifyJob(env, NotifyJob::RETRIEVE);
    job->ino = U64(info[0]);
    job->off = info[1].As<Napi::Number>().Int64Value();
    job->len = size;
    if (d.first != nullptr) {
      job->dest = const_cast<char*>(d.first);
      job->destLen = d.second;
      job->keep = Napi::Persistent(info[3]);
    }
    return Enqueue(env, job);
  }

  // pending() → requests not answered yet (diagnostics, tests).
  Napi::Value PendingCount(const Napi::CallbackInfo& info) {
    size_t n = 0;
    if (core_) {
      std::lock_guard<std::mutex> g(core_->mu);
      n = core_->reqs.size();
    }
    return Napi::Number::New(info.Env(), double(n));
  }

  // cacheBlock(nodeid, off, data: Uint8Array, served: Uint8Array) → true, or false when the
  // session is closed. From now on READs wholly inside [off, off+data.length) of nodeid are
  // answered natively from `data` (which must not change while registered), marking the
  // 4 KiB pages they fully cover in `served` (page i of the range = served[i]). Replaces
  // any registered range overlapping it.
  Napi::Value CacheBlock(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() != 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsTypedArray() ||
        !info[3].IsTypedArray())
      throw Napi::TypeError::New(env, "cacheBlock(nodeid, off, data: Uint8Array, served: Uint8Array)");
    double offd = info[1].As<Napi::Number>().DoubleValue();
    if (!(offd >= 0)) throw Napi::RangeError::New(env, "cacheBlock: off must be >= 0");
    auto [p, n] = ViewBytes(info[2]);
    auto [sp, sn] = ViewBytes(info[3]);
    if (sn < (n + BlockCache::kPage - 1) / BlockCache::kPage)
      throw Napi::RangeError::New(env, "cacheBlock: served must have one byte per 4 KiB page of data");
    if (!core_ || n == 0) return Napi::Boolean::New(env, false);
    auto b = std::make_unique<CachedBlock>();
    b->off = uint64_t(offd);
    b->data = p;
    b->len = n;
    b->served = reinterpret_cast<uint8_t*>(const_cast<char*>(sp));
    b->servedLen = sn;
    b->keepData = Napi::Persistent(info[2]);
    b->keepServed = Napi::Persistent(info[3]);
    std::vector<std::unique_ptr<CachedBlock>> replaced;
    bool ok = core_->blocks.put(U64(info[0]), std::move(b), &replaced);
    return Napi::Boolean::New(env, ok);  // `replaced` is destroyed here, on the JS thread
  }

  // fastReads() → READs the fast path answered so far.
  Napi::Value FastReads(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), core_ ? double(core_->blocks.served.load(std::memory_order_relaxed)) : 0);
  }

  // uncacheBlock(nodeid, off) → whether an entry starting at off was registered. On return
  // no libfuse worker sends from it any more.
  Napi::Value UncacheBlock(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsNumber())
      throw Napi::TypeError::New(env, "uncacheBlock(nodeid, off)");
    if (!core_) return Napi::Boolean::New(env, false);
    double offd = info[1].As<Napi::Number>().DoubleValue();
    if (!(offd >= 0)) return Napi::Boolean::New(env, false);
    auto b = core_->blocks.drop(U64(info[0]), uint64_t(offd));
    return Napi::Boolean::New(env, b != nullptr);
  }

  // ref()/unref(): whether the mounted session keeps Node's event loop alive (default: yes).
  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (core_ && core_->se) core_->tsfn.Ref(info.Env());
    return info.Env().Undefined();
  }
  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (core_ && core_->se) core_->tsfn.Unref(info.Env());
    return info.Env().Undefined();
  }
};

}  // namespace

void InitFuse(Napi::Env env, Napi::Object exports) {
  fuse_set_log_func(LogFunc);
  exports.Set("FuseSession", FuseSession::Define(env));
}

}  // namespace wcfs
