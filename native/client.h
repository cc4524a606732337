// wcfs native — client side of the isolation protocol: shared declarations.
//
// Three files implement it (the overview of the whole client is in src/client/conn.ts):
//   client_mmap.cc   — the memory layer: build a Mapping over head/bigfile/<foid>, overlay
//                      one block (pin / unpin / zeros), grow ("unzero"), efault, unmap.
//   client_wlink.cc  — the watch link and the pinner: rx thread, tx thread, pinner thread,
//                      request/reply matching, poison, close.
//   client.cc        — the N-API binding (class ClientConn), test probes, after-fork.
//
// Everything here is one ConnCore per Conn (= one open of head/watch). It is shared by the
// JS thread and the three link threads, and lives as long as any of them or any Mapping
// needs it (std::shared_ptr).
//
// Threads (per ConnCore):
//   JS thread   — fileAdd/fileRemove/fileResize, mmap/unmap, request(), close() (starts the
//                 closer), TSFN callbacks. Never does FUSE IO here except mmap(2) of head
//                 files (no FUSE request) — opens and fstats are done by TS on libuv's pool.
//   rx thread   — blocking read(2) of head/watch; replies → TSFN; pins → pinQ (unbounded).
//                 Blocks on nothing but read(2) and short critical sections.
//   pinner      — pops pinQ, opens @rev files (FUSE, outside mu), remaps under mu, queues the
//                 reply. Never calls into V8/N-API and never waits for the JS thread.
//   tx thread   — writes queued frames (pin replies, JS requests, bye) in order.
//   closer      — (only during close) sends bye, waits for the threads with a deadline,
//                 interrupts them with kIntrSignal past it, closes the fd.
//
// Locks: mu, rxMu, qMu, txMu, emitMu, exitMu are all leaves — never two held at once — and
// none is held across IO that goes to the server (open, fstat, read, write, close of FUSE
// files) or while creating JS values. mu may be held across mmap(2)/munmap(2): those never
// wait for the server (a FUSE page fault drops mmap_lock while it waits — fuse.md §C), so
// no lock the pinner takes is ever held by anyone waiting for the server (hazard H4).
//
// Invariants (under mu):
//   I1 file f ∈ files ⇔ TS has it open (Opening/Opened/Closing); f->removed ⇔ f ∉ files.
//   I2 ∀ m ∈ f->mmaps, ¬m->efaulted: ∀ blk ∈ [m.blkStart, m.blkStop):
//        blk ∈ f->pinned ⇒ block shows @pinned[blk] (zeros if beyond that file's size)
//        blk ∉ f->pinned ⇒ block shows head if (blk+1)·bs ≤ f->headfsize, else zeros
//   I3 ∀ blk ∈ f->pinned: f->pinned[blk] ∈ f->revTab, and revTab[rev].nref = #{blk: pinned[blk]=rev}
//   I4 m->efaulted ⇒ all of m's pages are PROT_NONE (never remapped again)
//   I5 poisoned ⇒ every mapping of every file is efaulted, and stays so.
//   I6 a pin applies to f only if it was received after f was added (seq > f->seq0): a late
//      pin of an earlier watch of the same foid never touches a reopened file.
#pragma once

#include <napi.h>
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace wcfs {
namespace client {

constexpr uint64_t kTidHead = ~uint64_t(0);            // "@head" in a pin: unpin
constexpr uint64_t kMaxBlk = (uint64_t(1) << 53) - 1;  // largest blk in a pin (a JS safe integer)

// Signal used to interrupt a link thread blocked in read/write/open of a FUSE file
// (installed without SA_RESTART, handler does nothing). Only ever sent with pthread_kill.
int IntrSignal();
void InstallIntrHandler();
// Blocks every signal except IntrSignal() in the calling thread.
void LinkThreadSigmask();

void Logf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

struct ConnCore;
struct Mapping;

struct RevFile {
  int fd = -1;
  uint64_t size = 0;
  unsigned nref = 0;  // number of pinned blocks with this rev (I3)
};

// One FileH as seen by native code.
struct FileState {
  uint64_t id = 0;
  uint64_t foid = 0;
  int headfd = -1;
  uint64_t blksize = 0;
  uint64_t seq0 = 0;  // ConnCore::rxSeq when added: pins received up to it are for an older watch
  // ---- guarded by ConnCore::mu ----
  uint64_t headfsize = 0;               // only grows
  bool removed = false;                 // I1
  std::map<uint64_t, uint64_t> pinned;  // blk → rev
  std::map<uint64_t, RevFile> revTab;   // rev → @rev/bigfile/<foid>
  std::set<Mapping*> mmaps;             // live (not unmapped) mappings
};

struct Mapping {
  uint64_t id = 0;
  std::shared_ptr<ConnCore> conn;
  std::shared_ptr<FileState> file;
  uint64_t blkStart = 0;
  uint64_t blkLen = 0;
  char* mem = nullptr;
  size_t len = 0;
  // ---- guarded by conn->mu ----
  bool efaulted = false;
  bool unmapped = false;
};

// Events for the JS thread (through the TSFN).
struct Event {
  enum Kind { REPLY, LINKDOWN, DOWN, CLOSED, REQUEST } kind;
  uint64_t id = 0;  // REPLY/LINKDOWN: request stream id; REQUEST: the server's (even) stream id
  std::string text;
};

void CallJs(Napi::Env env, Napi::Function fn, ConnCore* core, Event* ev);
using Tsfn = Napi::TypedThreadSafeFunction<ConnCore, Event, CallJs>;

struct ConnCore : std::enable_shared_from_this<ConnCore> {
  int fd = -1;                      // head/watch, O_RDWR; closed by the closer after all threads ended
  std::atomic<bool> fdOpen{false};  // fd not closed yet (closer; the after-fork child)
  std::string mnt;                  // mountpoint (the pinner opens <mnt>/@<rev>/bigfile/<foid>)
  std::string name;                 // for messages: "wlink<fd>"
  bool debug = false;
  // Set before start(), then read-only. A link for an application (src/client/watchlink.ts):
  // server requests go to JS as REQUEST events and JS answers them (replyRequest) instead of
  // the pinner; no files or mappings. The link threads, framing and close are the same.
  bool appRequests = false;

  // ---- emitMu: the TSFN may be called (emitOff: released or environment gone) ----
  std::mutex emitMu;
  bool emitOff = false;

  // ---- JS thread only ----
  Tsfn tsfn;
  unsigned jsRefs = 0;  // outstanding requests + close: TSFN is ref'ed while > 0
  uint64_t lastFileId = 0;
  uint64_t lastMappingId = 0;

  // ---- mu: files, mappings, down state ----
  std::mutex mu;
  std::unordered_map<uint64_t, std::shared_ptr<FileState>> files;   // by file id
  std::unordered_map<uint64_t, FileState*> byFoid;                  // foid → file in `files`
  std::unordered_map<uint64_t, std::shared_ptr<Mapping>> mappings;  // live mappings by id
  std::string downErr;                                              // non-empty ⇒ conn is down (poisoned or closing)
  bool poisoned = false;                                            // I5
  bool closing = false;                                             // TS started close(): EOF is expected

  // ---- rxMu: request/reply matching ----
  std::mutex rxMu;
  uint64_t nextReqId = 1;              // odd ids, +2
  std::unordered_set<uint64_t> rxTab;  // odd ids awaiting a reply
  bool linkDown = false;               // rx ended: no new requests
  bool rxEOF = false;                  // rx ended by EOF (not by an error)
  std::vector<std::string> fatalv;     // stream-0 messages (diagnostics; the pinner's last words)

  // ---- qMu: rx → pinner ----
  std::mutex qMu;
  std::condition_variable qCv;
  struct PinReq {
    uint64_t stream;
    std::string msg;
    uint64_t seq;  // rxSeq of its line
  };
  std::atomic<uint64_t> rxSeq{0};         // lines received so far (rx thread increments)
  std::deque<PinReq> pinQ;                // unbounded (hazard H1)
  std::unordered_set<uint64_t> accepted;  // even ids received and not yet answered
  bool qClosed = false;
  bool pinBusy = false;    // a thread (pinner, or rx) is handling a pin: the pin token
  bool pinFailed = false;  // a pin failed: no more pins are handled, the pinner ends
  struct CloseThenReply {
    std::vector<int> fds;  // @rev fds a pin handled on rx released
    std::string frame;     // its reply, sent once they are closed
  };
  std::deque<CloseThenReply> closeQ;  // the pinner's

  // ---- txMu: everything written to the link, in order ----
  std::mutex txMu;
  std::condition_variable txCv;
  struct TxItem {
    std::string frame;
    uint64_t reqId = 0;  // odd id of a request (0: a reply or bye): a failed write fails it
  };
  std::deque<TxItem> txQ;
  bool txBusy = false;  // a thread is writing a frame (tx, or the pinner: sendReply)
  bool txStop = false;
  bool byeSent = false;

  // ---- threads (started in start(), joined by the closer) ----
  std::thread rxThread, pinThread, txThread;
  pthread_t rxTid{}, pinTid{}, txTid{};
  std::atomic<bool> stopping{false};  // closer: interrupted syscalls mean "exit"
  std::atomic<int> running{0};
  std::mutex exitMu;
  std::condition_variable exitCv;
  bool rxDone = false, pinDone = false, txDone = false;  // under exitMu
  std::atomic<bool> closeStarted{false};

  ~ConnCore();

  // client_wlink.cc
  void start();                                                       // JS thread, once
  uint64_t request(const std::string& msg, std::string* err);         // JS thread
  std::string replyRequest(uint64_t stream, const std::string& msg);  // JS thread, appRequests: "" or the error
  void startClose(unsigned timeoutMs);                                // JS thread: closer thread → CLOSED event
  void emit(Event* ev);                                               // any thread
  void poison(const std::string& why);                                // any thread but with mu NOT held
  bool efaultForPoison();  // poison without telling JS (the caller emits DOWN): true if first; mu NOT held
  std::vector<std::string> fatals();

  // client_mmap.cc — all with mu held (…Locked) unless noted
  int remapBlkLocked(Mapping* m, uint64_t blk);  // per I2 from f->pinned/headfsize; errno
  int efaultLocked(Mapping* m);
  int unmapLocked(Mapping* m);
  // fileRemove: drop the file from the tables, efault its mappings; returns fds to close.
  std::vector<int> fileRemoveLocked(FileState* f);
  // resync phase 1 for one file: new head size. Returns "" or the error text; *code = the
  // error's registry code (src/errors.ts: WCFS_ESERVERBUG, WCFS_EFILECLOSED) or nullptr.
  std::string resizeLocked(FileState* f, uint64_t newSize, const char** code);
  // Applies pin (rev = kTidHead: unpin) to f; revFile = the opened @rev file for rev (or
  // nullptr for head / when f->revTab already has it). Returns "" or error text. Fds that
  // became unused are appended to `toClose`.
  std::string pinLocked(FileState* f, uint64_t blk, uint64_t rev, RevFile* revFile, std::vector<int>* toClose);
  void efaultAllLocked();

 private:
  void rxMain();
  void pinMain();
  void txMain();
  void closeMain(unsigned timeoutMs);
  void threadExit(bool* flag);
  std::string handlePin(const PinReq& req, std::string* reply, bool onRx, bool* deferred,
                        std::vector<int>* closeLater);        // "" ⇒ keep going
  bool pinOne(const PinReq& req, bool onRx, bool* deferred);  // handle + reply; false after a failure
  bool pinnerFail(const std::string& err, bool killExpected);
  void enqueueTx(std::string frame, uint64_t reqId);
  void sendReply(std::string frame);  // pinner: a pin's reply (writes it itself when tx is idle)
  void writeFrame(const TxItem& it);  // the writer token's holder
};

// Zero-filled read-only memory at [addr, addr+len) (MAP_FIXED). errno or 0.
int MapZeros(void* addr, size_t len);
// PROT_NONE at [addr, addr+len) (MAP_FIXED), keeping the range reserved. errno or 0.
int MapNone(void* addr, size_t len);
// MAP_FIXED overlay of fd[off, off+len) at addr, read-only shared. errno or 0.
int MapFile(void* addr, size_t len, int fd, uint64_t off);

// After fork (client.cc): registry of live conns for the atfork child handler.
void RegisterForFork(ConnCore* c);
void UnregisterForFork(ConnCore* c);

std::string Hex16(uint64_t x);

// Watch-link codecs (client_wlink.cc), pure: "" on success, else the error text.
std::string ParseFrame(const std::string& line, uint64_t* stream, std::string* msg);
std::string ParsePin(const std::string& msg, uint64_t* foid, uint64_t* blk, uint64_t* rev);

}  // namespace client
}  // namespace wcfs
