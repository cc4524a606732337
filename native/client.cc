// wcfs native client — N-API binding (class ClientConn), after-fork handling. The test-only
// entry points (clientProbe, clientSocketpair, clientParseLine) are in test_hooks.cc.
// See client.h for the threads and invariants, src/client/conn.ts for the whole design.
//
// ClientConn (JS thread only; every method is synchronous and quick — no FUSE IO):
//   new ClientConn(watchFd, mountpoint, onEvent, debug, maxBufferLength, appRequests)  owns
//        watchFd and starts rx/pinner/tx. onEvent(kind, id, text) runs on the JS thread:
//          'reply'    id, reply text            'linkdown' id, why (request failed)
//          'down'     0, why (poisoned)         'closed'   0, error text or ''
//          'request'  id, server request text (appRequests only: answer with replyRequest)
//   replyRequest(id, msg)                      appRequests: answer server request id; throws
//                                              when none awaits a reply on id
//   keepAlive(on)                              hold Node's event loop open (an application
//                                              waiting for server requests) or not
//   request(msg) → id                          throws {code:'WCFS_ELINKDOWN'}
//   fileAdd(foid: bigint, headFd, blksize, size) → fileId   (takes ownership of headFd)
//                                              throws {code:'WCFS_EBUSY'} if foid is open
//   fileRemove(fileId) → fds[]                 efaults the file's mappings; caller closes fds
//   fileResize(fileId, size)                  throws {code:'WCFS_ESERVERBUG'|'WCFS_EFILECLOSED'|
//                                              'WCFS_ECONNCLOSED'} or a plain Error (unzero)
//   filePinned(fileId) → [blk, rev: bigint][]  (test hook)
//   mmap(fileId, blkStart, blkLen) → [mappingId, ArrayBuffer]
//        throws {code:'WCFS_EFILECLOSED'|'WCFS_ECONNCLOSED'} or an errno error
//   unmap(mappingId, ArrayBuffer)              detaches the buffer, then munmap; if it cannot
//                                              be detached: efault, munmap at finalization
//   markDown(reason)                           conn is going down: EOF is expected from now
//   down() → string | null
//   close(timeoutMs)                           bye, stop threads, close fd → 'closed' event
//   fatals() → string[]                        stream-0 messages seen
//
// Mapping memory is handed to JS as an external ArrayBuffer (zero copy). Its finalizer (JS
// thread) munmaps if unmap() was not called. After fileRemove/poison the range stays
// reserved as PROT_NONE, so stale views fault instead of reading stale or foreign data.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "addon.h"
#include "client.h"

namespace wcfs {
namespace client {

// ---- after fork ----
//
// A child created by fork() (without exec) must neither talk on the parent's watch links
// nor read through mappings the parent's pinner keeps correct (it would see head data):
// the child handler closes every link fd and efaults every mapping, touching nothing but
// syscalls and data that no other thread was changing at fork time (try_lock; a mutex held
// at fork stays held in the child, and then that conn is skipped with a warning).
// In Node, fork() without exec happens only in native code; child_process.* exec at once,
// and O_CLOEXEC + exec drop fds and mappings anyway (notes.md "Client library", hazard H7).

static std::mutex gForkMu;
static std::set<ConnCore*>* gConns = new std::set<ConnCore*>();  // never freed (atfork)

static void ChildSay(const char* s) {
  ssize_t r = write(2, s, strlen(s));
  (void)r;
}

static void AtforkChild() {
  if (!gForkMu.try_lock()) {
    ChildSay("wcfs: client: after fork: registry busy at fork time; mappings not efaulted\n");
    return;
  }
  for (ConnCore* c : *gConns) {
    if (!c->mu.try_lock()) {
      ChildSay("wcfs: client: after fork: conn busy at fork time; mappings not efaulted\n");
    } else {
      for (auto& [id, m] : c->mappings) {
        if (!m->unmapped) MapNone(m->mem, m->len);
      }
      c->mu.unlock();
    }
    if (c->fdOpen) {
      c->fdOpen = false;
      ::close(c->fd);
    }
  }
  gForkMu.unlock();
}

void RegisterForFork(ConnCore* c) {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, AtforkChild); });
  std::lock_guard<std::mutex> lk(gForkMu);
  gConns->insert(c);
}

void UnregisterForFork(ConnCore* c) {
  std::lock_guard<std::mutex> lk(gForkMu);
  gConns->erase(c);
}

// ---- events → JS ----

void CallJs(Napi::Env env, Napi::Function fn, ConnCore* core, Event* ev) {
  std::unique_ptr<Event> owned(ev);
  if (env == nullptr) return;
  const char* kind = "reply";
  switch (ev->kind) {
    case Event::REPLY:
      kind = "reply";
      break;
    case Event::LINKDOWN:
      kind = "linkdown";
      break;
    case Event::DOWN:
      kind = "down";
      break;
    case Event::CLOSED:
      kind = "closed";
      break;
    case Event::REQUEST:
      kind = "request";
      break;
  }
  if (ev->kind != Event::DOWN && ev->kind != Event::REQUEST && core->jsRefs > 0 && --core->jsRefs == 0)
    core->tsfn.Unref(env);
  if (ev->kind == Event::CLOSED) {
    // no thread emits after CLOSED (all joined, or leaked and muted here)
    {
      std::lock_guard<std::mutex> lk(core->emitMu);
      core->emitOff = true;
    }
    core->tsfn.Release();
  }
  fn.Call({Napi::String::New(env, kind), Napi::Number::New(env, double(ev->id)), Napi::String::New(env, ev->text)});
}

static void TsfnFinalize(Napi::Env, std::shared_ptr<ConnCore>* keep, ConnCore*) {
  {
    std::lock_guard<std::mutex> lk((*keep)->emitMu);
    (*keep)->emitOff = true;  // released or environment gone: never call the TSFN again
  }
  delete keep;
}

[[noreturn]] static void ThrowCode(Napi::Env env, const char* code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

static uint64_t ToU64(Napi::Env env, const Napi::Value& v, const char* what) {
  if (v.IsBigInt()) {
    bool lossless;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(env, std::string(what) + ": out of range");
    return x;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d > 9007199254740991.0 || d != double(uint64_t(d)))
      throw Napi::RangeError::New(env, std::string(what) + ": want a non-negative integer");
    return uint64_t(d);
  }
  throw Napi::TypeError::New(env, std::string(what) + ": want a number or bigint");
}

struct MappingHint {
  std::shared_ptr<Mapping> m;
};

static void FinalizeMapping(napi_env, void*, void* hint) {
  auto* h = static_cast<MappingHint*>(hint);
  std::shared_ptr<Mapping> m = std::move(h->m);
  delete h;
  std::lock_guard<std::mutex> lk(m->conn->mu);
  m->conn->unmapLocked(m.get());
}

class ClientConn : public Napi::ObjectWrap<ClientConn> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ClientConn",
                       {
                           InstanceMethod("request", &ClientConn::Request),
                           InstanceMethod("fileAdd", &ClientConn::FileAdd),
                           InstanceMethod("fileRemove", &ClientConn::FileRemove),
                           InstanceMethod("fileResize", &ClientConn::FileResize),
                           InstanceMethod("filePinned", &ClientConn::FilePinned),
                           InstanceMethod("mmap", &ClientConn::Mmap),
                           InstanceMethod("unmap", &ClientConn::Unmap),
                           InstanceMethod("markDown", &ClientConn::MarkDown),
                           InstanceMethod("down", &ClientConn::Down),
                           InstanceMethod("close", &ClientConn::Close),
                           InstanceMethod("fatals", &ClientConn::Fatals),
                           InstanceMethod("replyRequest", &ClientConn::ReplyRequest),
                           InstanceMethod("keepAlive", &ClientConn::KeepAlive),
                       });
  }

  explicit ClientConn(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ClientConn>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsString() || !info[2].IsFunction())
      throw Napi::TypeError::New(env, "new ClientConn(watchFd, mountpoint, onEvent, debug?)");
    auto c = std::make_shared<ConnCore>();
    c->fd = info[0].As<Napi::Number>().Int32Value();
    c->fdOpen = true;
    c->mnt = info[1].As<Napi::String>().Utf8Value();
    c->name = "wlink" + std::to_string(c->fd);
    c->debug = info.Length() > 3 && info[3].ToBoolean().Value();
    // Node's limit for an external buffer: past it napi_create_external_arraybuffer fails
    // (and frees through the finalizer, which node-addon-api frees again): refuse earlier
    if (info.Length() > 4 && info[4].IsNumber()) maxLen_ = uint64_t(info[4].As<Napi::Number>().DoubleValue());
    c->appRequests = info.Length() > 5 && info[5].ToBoolean().Value();
    c->tsfn = Tsfn::New(env, info[2].As<Napi::Function>(), "wcfs-client", 0, 1, c.get(), TsfnFinalize,
                        new std::shared_ptr<ConnCore>(c));
    c->tsfn.Unref(env);  // an idle conn does not keep Node alive; requests ref it
    core_ = c;
    RegisterForFork(c.get());
    c->start();
  }

 private:
  std::shared_ptr<ConnCore> core_;
  bool held_ = false;                    // keepAlive(true): one of jsRefs
  uint64_t maxLen_ = uint64_t(1) << 32;  // Node 20: buffer.constants.MAX_LENGTH

  void jsRef(Napi::Env env) {
    if (core_->jsRefs++ == 0) core_->tsfn.Ref(env);
  }

  // caller holds mu
  std::shared_ptr<FileState> file(uint64_t id) {
    auto it = core_->files.find(id);
    return it == core_->files.end() ? nullptr : it->second;
  }

  Napi::Value Request(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string msg = info[0].ToString().Utf8Value();
    if (msg.find('\n') != std::string::npos) throw Napi::Error::New(env, "request: message contains LF");
    std::string err;
    uint64_t id = core_->request(msg, &err);
    if (id == 0) ThrowCode(env, "WCFS_ELINKDOWN", err);
    jsRef(env);
    return Napi::Number::New(env, double(id));
  }

  Napi::Value FileAdd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t foid = ToU64(env, info[0], "foid");
    int fd = int(ToU64(env, info[1], "headFd"));
    uint64_t bs = ToU64(env, info[2], "blksize");
    uint64_t size = ToU64(env, info[3], "size");
    if (bs == 0 || bs % uint64_t(sysconf(_SC_PAGESIZE)) != 0)
      throw Napi::RangeError::New(env, "blksize must be a multiple of the page size");
    auto f = std::make_shared<FileState>();
    f->foid = foid;
    f->headfd = fd;
    f->blksize = bs;
    f->headfsize = size;
    f->seq0 = core_->rxSeq.load();
    bool busy;
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      busy = core_->byFoid.count(foid) > 0;
      if (!busy) {
        f->id = ++core_->lastFileId;
        core_->files[f->id] = f;
        core_->byFoid[foid] = f.get();
      }
    }
    if (busy) ThrowCode(env, "WCFS_EBUSY", "f" + Hex16(foid) + ": already open on this conn");
    return Napi::Number::New(env, double(f->id));
  }

  Napi::Value FileRemove(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<int> fds;
    uint64_t id = ToU64(env, info[0], "fileId");
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      auto f = file(id);
      if (f) fds = core_->fileRemoveLocked(f.get());
    }
    Napi::Array a = Napi::Array::New(env, fds.size());
    for (size_t i = 0; i < fds.size(); i++) a.Set(uint32_t(i), Napi::Number::New(env, fds[i]));
    return a;
  }

  Napi::Value FileResize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t size = ToU64(env, info[1], "size");
    uint64_t id = ToU64(env, info[0], "fileId");
    std::string err;
    const char* code = nullptr;
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      auto it = core_->files.find(id);
      if (it == core_->files.end()) {
        err = "file closed";
        code = "WCFS_EFILECLOSED";
      } else if (core_->poisoned) {
        err = core_->downErr;
        code = "WCFS_ECONNCLOSED";
      } else {
        err = core_->resizeLocked(it->second.get(), size, &code);
      }
    }
    // no JS allocation under mu (style: never)
    if (code != nullptr) ThrowCode(env, code, err);
    if (!err.empty()) throw Napi::Error::New(env, err);
    return env.Undefined();
  }

  Napi::Value FilePinned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<std::pair<uint64_t, uint64_t>> v;
    uint64_t id = ToU64(env, info[0], "fileId");
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      auto f = file(id);
      if (f) v.assign(f->pinned.begin(), f->pinned.end());
    }
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); i++) {
      Napi::Array e = Napi::Array::New(env, 2);
      e.Set(0u, Napi::Number::New(env, double(v[i].first)));
      e.Set(1u, Napi::BigInt::New(env, v[i].second));
      a.Set(uint32_t(i), e);
    }
    return a;
  }

  Napi::Value Mmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t id = ToU64(env, info[0], "fileId");
    uint64_t blkStart = ToU64(env, info[1], "blkStart");
    uint64_t blkLen = ToU64(env, info[2], "blkLen");
    std::shared_ptr<Mapping> m;
    const char* code = nullptr;  // error: code + msg, or errno + syscall
    std::string msg;
    int err = 0;
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      m = mmapLocked(id, blkStart, blkLen, &code, &msg, &err);
    }
    if (code != nullptr) ThrowCode(env, code, msg);
    if (err != 0) ThrowErrno(env, err, "mmap");
    // Raw N-API: on failure Node may already have run the finalizer (it does for a too
    // large length), which node-addon-api's wrapper would then free a second time.
    napi_value ab;
    auto* hint = new MappingHint{m};
    napi_status st = napi_create_external_arraybuffer(env, m->mem, m->len, FinalizeMapping, hint, &ab);
    if (st != napi_ok) {
      std::lock_guard<std::mutex> lk(core_->mu);
      if (!m->unmapped) {  // the finalizer did not run (it unmaps and frees the hint)
        delete hint;
        core_->unmapLocked(m.get());
      }
    }
    NAPI_THROW_IF_FAILED(env, st, Napi::Value());
    Napi::Array r = Napi::Array::New(env, 2);
    r.Set(0u, Napi::Number::New(env, double(m->id)));
    r.Set(1u, Napi::Value(env, ab));
    return r;
  }

  // Builds a Mapping (client_mmap.cc overview, steps 1-3). mu held.
  std::shared_ptr<Mapping> mmapLocked(uint64_t id, uint64_t blkStart, uint64_t blkLen, const char** code,
                                      std::string* msg, int* errOut) {
    auto f = file(id);
    if (!f || f->removed) {
      *code = "WCFS_EFILECLOSED";
      *msg = "file already closed";
      return nullptr;
    }
    if (!core_->downErr.empty()) {
      *code = "WCFS_ECONNCLOSED";
      *msg = core_->downErr;
      return nullptr;
    }
    const uint64_t bs = f->blksize;
    if (blkLen == 0 || blkStart > (uint64_t(1) << 52) / bs || blkLen > (uint64_t(1) << 52) / bs - blkStart) {
      *code = "ERR_OUT_OF_RANGE";
      *msg = "mmap: block range out of bounds";
      return nullptr;
    }
    const uint64_t start = blkStart * bs, len = blkLen * bs;
    if (len > maxLen_) {
      *code = "ERR_OUT_OF_RANGE";
      *msg = "mmap: " + std::to_string(len) + " bytes: larger than the largest ArrayBuffer (" +
             std::to_string(maxLen_) + ")";
      return nullptr;
    }
    // reserve the VA first, then build the layers in it
    void* mem = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
      *errOut = errno;
      return nullptr;
    }
    auto m = std::make_shared<Mapping>();
    m->conn = core_;
    m->file = f;
    m->blkStart = blkStart;
    m->blkLen = blkLen;
    m->mem = static_cast<char*>(mem);
    m->len = size_t(len);
    int err = MapFile(mem, len, f->headfd, start);  // 1) head
    if (err == 0 && start + len > f->headfsize) {   // 2) zeros past EOF
      uint64_t z = std::max(f->headfsize, start);
      err = MapZeros(m->mem + (z - start), size_t(start + len - z));
    }
    for (auto p = f->pinned.lower_bound(blkStart); err == 0 && p != f->pinned.end() && p->first < blkStart + blkLen;
         ++p)
      err = core_->remapBlkLocked(m.get(), p->first);  // 3) pins
    if (err != 0) {
      munmap(mem, len);
      *errOut = err;
      return nullptr;
    }
    m->id = ++core_->lastMappingId;
    f->mmaps.insert(m.get());
    core_->mappings[m->id] = m;
    return m;
  }

  Napi::Value Unmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t id = ToU64(env, info[0], "mappingId");
    bool detached = false;
    if (info.Length() > 1 && info[1].IsArrayBuffer()) {
      Napi::ArrayBuffer ab = info[1].As<Napi::ArrayBuffer>();
      if (ab.IsDetached()) {
        detached = true;
      } else {
        napi_status st = napi_detach_arraybuffer(env, ab);
        detached = st == napi_ok;
        if (!detached) {
          const napi_extended_error_info* ei;
          napi_get_last_error_info(env, &ei);  // clears the pending status
        }
      }
    }
    int err = 0;
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      auto it = core_->mappings.find(id);
      if (it != core_->mappings.end()) {
        std::shared_ptr<Mapping> m = it->second;
        err = detached ? core_->unmapLocked(m.get()) : core_->efaultLocked(m.get());
      }
    }
    if (err != 0) ThrowErrno(env, err, detached ? "munmap" : "mmap");
    return Napi::Boolean::New(env, detached);
  }

  Napi::Value MarkDown(const Napi::CallbackInfo& info) {
    std::string why = info[0].ToString().Utf8Value();
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      core_->closing = true;
      if (core_->downErr.empty()) core_->downErr = why;
    }
    return info.Env().Undefined();
  }

  Napi::Value Down(const Napi::CallbackInfo& info) {
    std::string d;
    {
      std::lock_guard<std::mutex> lk(core_->mu);
      d = core_->downErr;
    }
    if (d.empty()) return info.Env().Null();
    return Napi::String::New(info.Env(), d);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    unsigned ms = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 10000;
    if (core_->closeStarted) return Napi::Boolean::New(env, false);
    jsRef(env);
    core_->startClose(ms);
    return Napi::Boolean::New(env, true);
  }

  Napi::Value ReplyRequest(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint64_t id = ToU64(env, info[0], "id");
    std::string msg = info[1].ToString().Utf8Value();
    if (msg.find('\n') != std::string::npos) throw Napi::Error::New(env, "replyRequest: message contains LF");
    if (!core_->appRequests) throw Napi::Error::New(env, "replyRequest: not an application's link");
    std::string err = core_->replyRequest(id, msg);
    if (!err.empty()) ThrowCode(env, "WCFS_EBADARG", err);
    return env.Undefined();
  }

  Napi::Value KeepAlive(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool on = info.Length() > 0 && info[0].ToBoolean().Value();
    bool off;
    {
      std::lock_guard<std::mutex> lk(core_->emitMu);
      off = core_->emitOff;  // the TSFN is released: nothing to hold
    }
    if (on && !held_ && !off) {
      held_ = true;
      jsRef(env);
    } else if (!on && held_) {
      held_ = false;
      if (core_->jsRefs > 0 && --core_->jsRefs == 0 && !off) core_->tsfn.Unref(env);
    }
    return env.Undefined();
  }

  Napi::Value Fatals(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto v = core_->fatals();
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); i++) a.Set(uint32_t(i), Napi::String::New(env, v[i]));
    return a;
  }
};

}  // namespace client

void InitClient(Napi::Env env, Napi::Object exports) { exports.Set("ClientConn", client::ClientConn::Define(env)); }

}  // namespace wcfs
