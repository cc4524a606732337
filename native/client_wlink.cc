// wcfs native client — the watch link (head/watch) and the pinner.
//
// 1) rx thread: blocking read(2) on head/watch, split into lines (≤ 64 KiB), frames
//    "<stream> <msg>" (stream: canonical decimal u64):
//      stream 0    server control ("error: …"/"fatal: …") — logged, kept in fatalv
//      odd         reply to our request: rxTab[id] → REPLY event (JS resolves its Promise);
//                  a reply nobody waits for is a protocol error (link down)
//      even        server request (pin) → pinQ, unbounded: rx never waits for the pinner, so a
//                  reply queued behind many pins is always read (hazard H1); or handled by
//                  rx itself when the pinner is idle (2). On an application's link
//                  (appRequests) → REQUEST event instead: JS answers with replyRequest.
//    On exit (EOF, error, interrupt): linkDown, every waiting request fails ("link is down"),
//    pinQ is closed.
// 2) pinner thread: pops pinQ, handles one pin at a time (pinOne: handlePin, then "ack"/"nak",
//    written by itself when no other pin waits and tx is idle — sendReply — else queued).
//    A pin that arrives while pinQ is empty and the pinner idle is handled by rx itself (one
//    thread wake-up less per round trip). One pin at a time, in order, either way: the pin
//    token pinBusy (under qMu) is held by whichever thread handles one, and rx hands over
//    through pinQ whenever the token is taken or pins are queued. On rx a pin does nothing
//    that may block on FUSE: one that needs its @rev file opened goes to the pinner, and the
//    fds it releases are closed by the pinner, which then sends its reply (closeQ) — so rx
//    still never waits for anything but mu (never held across a server round trip) and a
//    reply is never kept unread (H1).
//    Needs nothing from the JS thread: the JS thread may be the one blocked in the page fault
//    that caused the pin. Pins for files not (or no longer) open are acked (H6). When pinQ
//    is closed and drained it ends; unless a close is in progress that is a failure.
//    A failure (bad pin, remap error, unexpected EOF) poisons the conn: all mappings are
//    efaulted at once, downErr = "connection closed", DOWN event (TS then closes the conn).
// 3) tx thread: writes queued frames in order (pin replies, JS requests, bye). A failed
//    write fails its request. Writes never happen on the JS thread. One writer at a time:
//    the txBusy token (under txMu) is held by tx or by the pinner for each frame; a frame
//    is written directly only when txQ is empty, so frames go out in the order queued.
// 4) close (closer thread, started by TS after it unwatched every file): queue "bye", wait
//    until the server closes the link (rx sees EOF), then until the pinner drained pinQ,
//    then stop tx; threads still blocked past the deadline are interrupted with
//    IntrSignal() (FUSE turns that into INTERRUPT; the server answers EINTR); threads still
//    stuck past the hard deadline are leaked with the fd (never close an fd another thread
//    may be blocked on). Ends with a CLOSED event.
#include "client.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace wcfs {
namespace client {

static constexpr size_t kMaxLine = 64 * 1024;

int IntrSignal() { return SIGRTMIN + 6; }

static void NoopHandler(int) {}

void InstallIntrHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = NoopHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: read/write/open return EINTR
    sigaction(IntrSignal(), &sa, nullptr);
  });
}

void LinkThreadSigmask() {
  sigset_t s;
  sigfillset(&s);
  sigdelset(&s, IntrSignal());
  pthread_sigmask(SIG_SETMASK, &s, nullptr);
}

void Logf(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::string line = std::string("wcfs: client: ") + buf + "\n";
  ssize_t r = write(2, line.data(), line.size());
  (void)r;
}

std::string Hex16(uint64_t x) {
  char b[17];
  snprintf(b, sizeof b, "%016" PRIx64, x);
  return b;
}

static bool ParseU64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 20) return false;
  if (s.size() > 1 && s[0] == '0') return false;  // canonical digits only
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    uint64_t d = uint64_t(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

static bool ParseHex16(const std::string& s, uint64_t* out) {
  if (s.size() != 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      return false;
    v = (v << 4) | uint64_t(d);
  }
  *out = v;
  return true;
}

// "<stream> <msg>" (the line without its LF) → fields; "" or the error text. The stream is
// canonical decimal u64 (no sign, no leading zeros): one spelling per stream id, as the
// TS parser (src/watchlink/wire.ts parseFrame) — test/wire-fuzz.test.ts checks they agree.
std::string ParseFrame(const std::string& line, uint64_t* stream, std::string* msg) {
  size_t sp = line.find(' ');
  if (sp == std::string::npos) return "invalid frame: no SP";
  if (!ParseU64(line.substr(0, sp), stream)) return "invalid frame: invalid stream ID";
  *msg = line.substr(sp + 1);
  return "";
}

// "pin <foid> #<blk> @<rev>|@head" → fields (rev = kTidHead for @head); "" or the error text.
// blk: canonical decimal ≤ 2⁵³−1 (a JS number, as TS parsePin); rev: 16 lowercase hex, and
// not ffffffffffffffff (InvalidTid, which would alias kTidHead = @head).
std::string ParsePin(const std::string& msg, uint64_t* foid, uint64_t* blk, uint64_t* rev) {
  std::vector<std::string> a;
  size_t i = 0;
  while (true) {
    size_t j = msg.find(' ', i);
    a.push_back(msg.substr(i, j == std::string::npos ? std::string::npos : j - i));
    if (j == std::string::npos) break;
    i = j + 1;
  }
  if (a.empty() || a[0] != "pin") return "not a pin request";
  if (a.size() != 4) return "expected 3 arguments, got " + std::to_string(a.size() - 1);
  if (!ParseHex16(a[1], foid)) return "invalid foid";
  if (a[2].size() < 2 || a[2][0] != '#' || !ParseU64(a[2].substr(1), blk) || *blk > kMaxBlk) return "invalid blk";
  if (a[3] == "@head")
    *rev = kTidHead;
  else if (a[3].size() != 17 || a[3][0] != '@' || !ParseHex16(a[3].substr(1), rev) || *rev == kTidHead)
    return "invalid at";
  return "";
}

ConnCore::~ConnCore() {
  // Only reached when every thread ended (they hold a reference) and every mapping is gone.
  UnregisterForFork(this);
}

void ConnCore::emit(Event* ev) {
  std::lock_guard<std::mutex> lk(emitMu);
  if (emitOff || tsfn.NonBlockingCall(ev) != napi_ok) delete ev;
}

void ConnCore::threadExit(bool* flag) {
  std::lock_guard<std::mutex> lk(exitMu);
  *flag = true;
  exitCv.notify_all();
}

void ConnCore::start() {
  InstallIntrHandler();
  auto self = shared_from_this();
  rxThread = std::thread([self] { self->rxMain(); });
  pinThread = std::thread([self] { self->pinMain(); });
  txThread = std::thread([self] { self->txMain(); });
  rxTid = rxThread.native_handle();
  pinTid = pinThread.native_handle();
  txTid = txThread.native_handle();
}

// ---- 1) rx ----

void ConnCore::rxMain() {
  LinkThreadSigmask();
  std::string buf, err;
  bool eof = false;
  char tmp[4096];
  auto handleLine = [&](const std::string& line) -> std::string {
    uint64_t stream;
    std::string msg;
    std::string ferr = ParseFrame(line, &stream, &msg);
    if (!ferr.empty()) return ferr;
    const uint64_t seq = ++rxSeq;
    if (debug) Logf("%s: < %" PRIu64 " %s", name.c_str(), stream, msg.c_str());
    if (stream == 0) {
      bool quiet;
      {
        std::lock_guard<std::mutex> lk(mu);
        quiet = closing;
      }
      if (!quiet) Logf("%s: rx fatal: %s", name.c_str(), msg.c_str());
      std::lock_guard<std::mutex> lk(rxMu);
      fatalv.push_back(msg);
      return "";  // the server closes the link next
    }
    if (stream % 2 == 1) {
      {
        std::lock_guard<std::mutex> lk(rxMu);
        if (rxTab.erase(stream) == 0) return "wcfs sent reply on unexpected stream " + std::to_string(stream);
      }
      emit(new Event{Event::REPLY, stream, msg});
      return "";
    }
    std::unique_lock<std::mutex> lk(qMu);
    if (!accepted.insert(stream).second) return "wcfs sent request on already used stream " + std::to_string(stream);
    if (appRequests) {
      lk.unlock();
      emit(new Event{Event::REQUEST, stream, std::move(msg)});
      return "";
    }
    if (pinQ.empty() && !pinBusy && !pinFailed) {
      // nothing queued and the pinner idle: handle it here (no wake-up of the pinner; a
      // pin never waits for anything rx would have to read: handlePin)
      pinBusy = true;
      lk.unlock();
      PinReq req{stream, std::move(msg), seq};
      bool deferred = false;
      pinOne(req, true, &deferred);
      lk.lock();
      pinBusy = false;
      if (deferred) pinQ.push_back(std::move(req));  // it needs an open: the pinner's
      if (!pinQ.empty() || qClosed) qCv.notify_one();
      return "";
    }
    pinQ.push_back(PinReq{stream, std::move(msg), seq});
    qCv.notify_one();
    return "";
  };
  for (;;) {
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n < 0) {
      if (errno == EINTR) {
        if (stopping) {
          err = "interrupted";
          break;
        }
        continue;
      }
      err = std::string("read: ") + strerror(errno);
      break;
    }
    if (n == 0) {
      eof = true;
      if (!buf.empty()) err = "unexpected EOF (partial line)";
      break;
    }
    buf.append(tmp, size_t(n));
    size_t start = 0, nl;
    while (err.empty() && (nl = buf.find('\n', start)) != std::string::npos) {
      err = handleLine(buf.substr(start, nl - start));
      start = nl + 1;
    }
    buf.erase(0, start);
    if (!err.empty()) break;
    if (buf.size() > kMaxLine) {
      err = "input line is too long";
      break;
    }
  }

  // link down: fail waiters, close pinQ
  std::vector<uint64_t> waiting;
  {
    std::lock_guard<std::mutex> lk(rxMu);
    linkDown = true;
    rxEOF = eof && err.empty();
    waiting.assign(rxTab.begin(), rxTab.end());
    rxTab.clear();
  }
  for (uint64_t id : waiting) emit(new Event{Event::LINKDOWN, id, "link is down"});
  {
    std::lock_guard<std::mutex> lk(qMu);
    qClosed = true;
    qCv.notify_all();
  }
  bool quiet;
  {
    std::lock_guard<std::mutex> lk(mu);
    quiet = closing;
  }
  if (!err.empty() && !quiet) Logf("%s: rx: %s", name.c_str(), err.c_str());
  threadExit(&rxDone);
}

// ---- 2) pinner ----

// killExpected: the server kills a client whose pinner fails, and says "fatal:" before it
// does; a link it closes after "error:" (e.g. "…packed away…; resync") is not followed by a kill.
// Returns whether this poisoned the conn; the caller then tells JS (emitPoisoned), after the
// nak is queued: JS reacts to the poison by closing files (unwatch), and the nak is the reply
// to the pin that failed — it goes out first.
bool ConnCore::pinnerFail(const std::string& err, bool killExpected) {
  Logf("%s: CRITICAL: pinner: %s", name.c_str(), err.c_str());
  if (killExpected) Logf("%s: CRITICAL: wcfs server will likely kill us soon.", name.c_str());
  return efaultForPoison();
}

// One pin, on whichever thread holds the pin token (pinBusy): handle, reply, and on failure
// poison (efault everything) before the nak goes out — the server kills us for it. Returns
// false after a failure: no pin is handled after that (pinFailed).
bool ConnCore::pinOne(const PinReq& req, bool onRx, bool* deferred) {
  std::string reply;
  std::vector<int> closeLater;
  const std::string err = handlePin(req, &reply, onRx, deferred, &closeLater);
  if (*deferred) return true;
  const bool poisonedNow = !err.empty() && pinnerFail(err, true);
  const bool pinnerReplies = !closeLater.empty();
  {
    std::lock_guard<std::mutex> lk(qMu);
    accepted.erase(req.stream);
    if (pinnerReplies) {
      // on rx: the pinner closes the released @rev fds, then replies (as it would have)
      closeQ.push_back(CloseThenReply{std::move(closeLater), std::to_string(req.stream) + " " + reply + "\n"});
      qCv.notify_one();
    }
  }
  if (!pinnerReplies) sendReply(std::to_string(req.stream) + " " + reply + "\n");
  if (poisonedNow) emit(new Event{Event::DOWN, 0, "pinner: " + err});
  if (err.empty()) return true;
  std::lock_guard<std::mutex> lk(qMu);
  pinFailed = true;
  qCv.notify_all();
  return false;
}

void ConnCore::pinMain() {
  LinkThreadSigmask();
  bool failed = false;
  for (;;) {
    PinReq req;
    {
      std::unique_lock<std::mutex> lk(qMu);
      qCv.wait(lk,
               [&] { return pinFailed || !closeQ.empty() || (!pinQ.empty() && !pinBusy) || (qClosed && !pinBusy); });
      if (!closeQ.empty()) {
        CloseThenReply c = std::move(closeQ.front());
        closeQ.pop_front();
        lk.unlock();
        for (int cfd : c.fds) ::close(cfd);  // for a pin rx handled: FLUSH/RELEASE to the server
        sendReply(std::move(c.frame));
        continue;
      }
      if (pinFailed) {
        failed = true;
        break;
      }
      if (pinQ.empty()) break;  // closed and drained
      req = std::move(pinQ.front());
      pinQ.pop_front();
      pinBusy = true;
    }
    bool deferred = false;
    const bool ok = pinOne(req, false, &deferred);
    {
      std::lock_guard<std::mutex> lk(qMu);
      pinBusy = false;
    }
    if (!ok) {
      failed = true;
      break;
    }
  }
  if (!failed) {
    bool eof, isClosing;
    std::string why;  // the server's last stream-0 line, if it said why it closes the link
    {
      std::lock_guard<std::mutex> lk(rxMu);
      eof = rxEOF;
      if (!fatalv.empty()) why = fatalv.back();
    }
    {
      std::lock_guard<std::mutex> lk(mu);
      isClosing = closing;
    }
    if (!isClosing && appRequests) {
      // an application's link: no pinner to fail, no mappings; the application is told
      const std::string e = !why.empty() ? "link closed by wcfs: " + why : eof ? "link closed by wcfs" : "link is down";
      if (efaultForPoison()) emit(new Event{Event::DOWN, 0, e});
    } else if (!isClosing) {
      const std::string e = !why.empty() ? "link closed by wcfs: " + why : eof ? "unexpected EOF" : "link is down";
      // "error:": the server closed the link and says why; no kill follows
      if (pinnerFail(e, why.empty() || why.rfind("fatal:", 0) == 0)) emit(new Event{Event::DOWN, 0, "pinner: " + e});
    }
  }
  threadExit(&pinDone);
}

void ConnCore::enqueueTx(std::string frame, uint64_t reqId) {
  if (debug) Logf("%s: > %.*s", name.c_str(), int(frame.size() - 1), frame.data());
  {
    std::lock_guard<std::mutex> lk(txMu);
    if (!txStop) {
      txQ.push_back(TxItem{std::move(frame), reqId});
      txCv.notify_one();
      return;
    }
  }
  if (reqId != 0) {
    bool had;
    {
      std::lock_guard<std::mutex> lk(rxMu);
      had = rxTab.erase(reqId) > 0;
    }
    if (had) emit(new Event{Event::LINKDOWN, reqId, "link is down"});
  }
}

// One pin: returns "" to keep going, or the pinner's failure; *reply = what to answer.
// onRx (rx handles it, 2): nothing that may block on FUSE — a pin that needs its @rev file
// opened is left alone (*deferred = true: the pinner takes it), and the fds it releases are
// returned in *closeLater instead of closed.
std::string ConnCore::handlePin(const PinReq& req, std::string* out, bool onRx, bool* deferred,
                                std::vector<int>* closeLater) {
  auto reply = [&](const std::string& r) { *out = r; };
  uint64_t foid, blk, rev;
  std::string perr = ParsePin(req.msg, &foid, &blk, &rev);
  if (!perr.empty()) {
    std::string e = "bad pin: '" + req.msg + "': " + perr;
    reply("nak: " + e);
    return e;
  }
  const std::string what =
      "pin f" + Hex16(foid) + " #" + std::to_string(blk) + " @" + (rev == kTidHead ? "head" : Hex16(rev));

  // a) look the file up; find out whether the @rev file must be opened (outside mu: FUSE IO)
  // A pin received before the file was (re)added belongs to an earlier watch of the same
  // foid (its FileH is gone): it must not touch the new one.
  auto current = [&](FileState* f) { return f != nullptr && req.seq > f->seq0; };
  uint64_t fileId = 0, blksize = 0;
  bool needOpen = false;
  {
    std::lock_guard<std::mutex> lk(mu);
    auto it = byFoid.find(foid);
    if (it != byFoid.end() && current(it->second)) {
      fileId = it->second->id;
      blksize = it->second->blksize;
      needOpen = rev != kTidHead && it->second->revTab.count(rev) == 0;
    }
  }
  if (onRx && needOpen) {
    *deferred = true;
    return "";
  }
  if (fileId == 0) {
    // not open (any more): nothing can need it — mappings of closed files are efaulted (H6)
    if (debug) Logf("%s: %s: file not watched: ack", name.c_str(), what.c_str());
    reply("ack");
    return "";
  }
  RevFile rf;
  if (needOpen) {
    std::string path = mnt + "/@" + Hex16(rev) + "/bigfile/" + Hex16(foid);
    int rfd;
    do rfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    while (rfd < 0 && errno == EINTR && !stopping);
    if (rfd < 0) {
      std::string e = what + ": open " + path + ": " + strerror(errno);
      reply("nak: " + e);
      return e;
    }
    struct stat st;
    int rc;
    do rc = fstat(rfd, &st);
    while (rc != 0 && errno == EINTR && !stopping);
    if (rc != 0 || uint64_t(st.st_blksize) != blksize) {
      std::string e = what + ": " + (rc != 0 ? std::string("stat: ") + strerror(errno) : "wcfs bug: blksize changed");
      ::close(rfd);
      reply("nak: " + e);
      return e;
    }
    rf.fd = rfd;
    rf.size = uint64_t(st.st_size);
  }

  // b) remap under mu
  std::vector<int> toClose;
  std::string e;
  {
    std::lock_guard<std::mutex> lk(mu);
    auto it = byFoid.find(foid);
    if (it == byFoid.end() || !current(it->second)) {
      // closed (or closed and reopened) while we opened the @rev file
      if (rf.fd >= 0) toClose.push_back(rf.fd);
    } else {
      e = pinLocked(it->second, blk, rev, needOpen ? &rf : nullptr, &toClose);
      if (needOpen && rf.fd >= 0) toClose.push_back(rf.fd);
    }
  }
  if (onRx)
    closeLater->swap(toClose);  // FLUSH/RELEASE may block: not on rx
  else
    for (int cfd : toClose) ::close(cfd);  // FLUSH/RELEASE to the server: outside mu
  if (!e.empty()) {
    e = what + ": " + e;
    reply("nak: " + e);
    return e;
  }
  reply("ack");
  return "";
}

void ConnCore::poison(const std::string& why) {
  if (efaultForPoison()) emit(new Event{Event::DOWN, 0, why});
}

bool ConnCore::efaultForPoison() {
  std::lock_guard<std::mutex> lk(mu);
  if (poisoned) return false;
  poisoned = true;
  if (downErr.empty()) downErr = "connection closed";
  efaultAllLocked();
  return true;
}

// ---- 3) tx ----

// Pinner: a pin's reply. When no other pin is waiting and nothing is queued or being written,
// the pinner writes it itself (one thread wake-up less per pin round trip); otherwise it goes
// through txQ, so the pinner can go on with the next pin. Order holds either way: a frame
// is written directly only when txQ is empty and the writer token (txBusy) is free.
void ConnCore::sendReply(std::string frame) {
  {
    std::lock_guard<std::mutex> lq(qMu);
    if (!pinQ.empty()) {
      enqueueTx(std::move(frame), 0);
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lk(txMu);
    if (txStop || txBusy || !txQ.empty()) {
      if (!txStop) {
        if (debug) Logf("%s: > %.*s", name.c_str(), int(frame.size() - 1), frame.data());
        txQ.push_back(TxItem{std::move(frame), 0});
        txCv.notify_one();
      }
      return;
    }
    txBusy = true;
  }
  if (debug) Logf("%s: > %.*s", name.c_str(), int(frame.size() - 1), frame.data());
  writeFrame(TxItem{std::move(frame), 0});
  {
    std::lock_guard<std::mutex> lk(txMu);
    txBusy = false;
    if (!txQ.empty()) txCv.notify_one();
  }
}

// One frame to the link (the caller holds the writer token); a failed write fails its request.
void ConnCore::writeFrame(const TxItem& it) {
  size_t off = 0;
  int werr = 0;
  while (off < it.frame.size()) {
    ssize_t n = write(fd, it.frame.data() + off, it.frame.size() - off);
    if (n < 0) {
      if (errno == EINTR && !stopping) continue;
      werr = errno;
      break;
    }
    off += size_t(n);
  }
  if (werr == 0) return;
  bool quiet;
  {
    std::lock_guard<std::mutex> lk(mu);
    quiet = closing;
  }
  if (!quiet) Logf("%s: tx: write: %s", name.c_str(), strerror(werr));
  if (it.reqId != 0) {
    bool had;
    {
      std::lock_guard<std::mutex> lk(rxMu);
      had = rxTab.erase(it.reqId) > 0;
    }
    if (had) emit(new Event{Event::LINKDOWN, it.reqId, std::string("link is down: write: ") + strerror(werr)});
  }
}

void ConnCore::txMain() {
  LinkThreadSigmask();
  for (;;) {
    TxItem it;
    {
      std::unique_lock<std::mutex> lk(txMu);
      txCv.wait(lk, [&] { return (!txQ.empty() && !txBusy) || (txStop && txQ.empty()); });
      if (txQ.empty()) break;
      it = std::move(txQ.front());
      txQ.pop_front();
      txBusy = true;
    }
    writeFrame(it);
    {
      std::lock_guard<std::mutex> lk(txMu);
      txBusy = false;
    }
  }
  threadExit(&txDone);
}

// JS thread: a request on a new odd stream; the reply comes as REPLY/LINKDOWN event.
uint64_t ConnCore::request(const std::string& msg, std::string* err) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> lk(rxMu);
    if (linkDown) {
      *err = "link is down";
      return 0;
    }
    id = nextReqId;
    nextReqId += 2;
    rxTab.insert(id);
  }
  enqueueTx(std::to_string(id) + " " + msg + "\n", id);
  return id;
}

// JS thread, appRequests: the reply to server request `stream` (accepted, not answered yet).
std::string ConnCore::replyRequest(uint64_t stream, const std::string& msg) {
  {
    std::lock_guard<std::mutex> lk(qMu);
    if (accepted.erase(stream) == 0) return "no server request awaits a reply on stream " + std::to_string(stream);
  }
  enqueueTx(std::to_string(stream) + " " + msg + "\n", 0);
  return "";
}

std::vector<std::string> ConnCore::fatals() {
  std::lock_guard<std::mutex> lk(rxMu);
  return fatalv;
}

// ---- 4) close ----

void ConnCore::startClose(unsigned timeoutMs) {
  if (closeStarted.exchange(true)) return;
  {
    std::lock_guard<std::mutex> lk(mu);
    closing = true;
    if (downErr.empty()) downErr = "connection closed";
  }
  auto self = shared_from_this();
  std::thread([self, timeoutMs] { self->closeMain(timeoutMs); }).detach();
}

void ConnCore::closeMain(unsigned timeoutMs) {
  LinkThreadSigmask();
  using clock = std::chrono::steady_clock;
  const auto soft = clock::now() + std::chrono::milliseconds(timeoutMs);
  const auto hard = soft + std::chrono::milliseconds(timeoutMs / 2 + 1000);
  std::string err;

  // a) bye (= "my tx is closed"); the server answers by closing the link
  bool down;
  {
    std::lock_guard<std::mutex> lk(rxMu);
    down = linkDown;
  }
  if (!down) {
    uint64_t id;
    {
      std::lock_guard<std::mutex> lk(rxMu);
      id = nextReqId;
      nextReqId += 2;
    }
    {
      std::lock_guard<std::mutex> lk(txMu);
      byeSent = true;
    }
    enqueueTx(std::to_string(id) + " bye\n", 0);
  }

  // wait for *flag; past `soft` interrupt `tid` every 50 ms; false if still running at `hard`
  auto waitThread = [&](bool* flag, pthread_t tid) -> bool {
    std::unique_lock<std::mutex> lk(exitMu);
    if (exitCv.wait_until(lk, soft, [&] { return *flag; })) return true;
    stopping = true;
    while (!*flag && clock::now() < hard) {
      pthread_kill(tid, IntrSignal());
      exitCv.wait_for(lk, std::chrono::milliseconds(50), [&] { return *flag; });
    }
    return *flag;
  };
  bool rxOK = waitThread(&rxDone, rxTid);
  if (!rxOK) {
    err = "watch link: rx thread stuck in read(2)";
    std::lock_guard<std::mutex> lk(qMu);
    qClosed = true;  // let the pinner finish anyway
    qCv.notify_all();
  }
  bool pinOK = waitThread(&pinDone, pinTid);
  if (!pinOK) err = "watch link: pinner stuck";
  {
    std::lock_guard<std::mutex> lk(txMu);
    txStop = true;
    txCv.notify_all();
  }
  bool txOK = waitThread(&txDone, txTid);
  if (!txOK) err = "watch link: tx thread stuck in write(2)";

  rxOK ? rxThread.join() : rxThread.detach();
  pinOK ? pinThread.join() : pinThread.detach();
  txOK ? txThread.join() : txThread.detach();
  if (rxOK && pinOK && txOK) {
    fdOpen = false;
    ::close(fd);  // RELEASE: the server drops the link if bye did not reach it
  } else {
    Logf("%s: close: %s; leaking the threads and fd %d", name.c_str(), err.c_str(), fd);
  }
  emit(new Event{Event::CLOSED, 0, err});
}

}  // namespace client
}  // namespace wcfs
