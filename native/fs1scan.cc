// wcfs native — the FileStorage index-rebuild scanner: walks txn and data-record headers of
// Data.fs bytes that JS read, checks them, and returns the (oid → newest position) updates.
//
// Why native (notes.md §2.4): rebuilding the index of a file of small records decodes one
// 42-byte header per ~250 bytes; in JS that (bigints, per-record checks, an index set each)
// bounded the rebuild at 0.2 × the raw read speed.
//
// Owns nothing but a per-thread dedup table (reused across calls, holds no JS values). Pure: no
// I/O, no error texts. JS (src/zodb/fs1/nativescan.ts) owns the reads, the resumable state
// and every decision: this only says how far the bytes are good, and where to look next.
//
//   fs1Scan(buf: Uint8Array, bufPos: number, size: number, st: Float64Array(ST_N),
//           tids: BigUint64Array(2 | 4), out: Float64Array(3 * cap)) → number of updates
//
// buf holds file bytes [bufPos, bufPos + buf.length); size = the file size the scan is bound
// by (as the JS scanner's SeqReader). State st (in/out) and tids (in/out), see ST_* below:
// the walk resumes at st[ST_POS], either a txn header (not in a txn) or a data record header
// of the txn at st[ST_TPOS]. Each call walks as far as buf allows and returns:
//   out[3i, 3i+1, 3i+2] = (oid >> 16, oid & 0xffff, pos) for i < return value: the newest
//     record of each oid met in this call (one entry per oid: later records replace earlier
//     ones), including records of a txn not yet complete (then st[ST_DIRTY] = 1);
//   st[ST_REASON] = MORE (the next header at st[ST_POS] is not in buf: read there and call
//     again), STOP (the txn at st[ST_TOP] needs the JS scanner: anything it would reject or
//     report — a bad header or record, status 'c', a txn past `size` — or that is not
//     checkable here; st[ST_DIRTY] says whether records of that txn were already returned),
//     END (st[ST_TOP] == size: nothing follows).
//   With 4 tids (in): tids[2] = maxTid — a txn with a bigger tid is not walked (STOP before
//     it: a pack switch indexes the packed file only up to the head it serves); (in/out)
//     tids[3] = tid of the last complete txn with status 'p' (the pack boundary), unchanged
//     when none was walked in this call.
//   st[ST_TOP] = end of the last complete txn, tids[0] = its tid (prev tid of the order check),
//     st[ST_HAVEPREV] = 0 while the order check has no previous tid (JS: headTid 0n ⇒ -1n),
//     st[ST_PTXN] = whether the txn being walked (st[ST_INTXN]) has status 'p';
//     st[ST_TXNS] += number of txns completed; st[ST_HDRS] = number of txn and data record
//     headers decoded in this call (how dense buf was: the caller sizes its next read by it).
//
// Invariants:
//   - A txn counts as complete only after every check the JS scanTxn applies on this path has
//     passed (format.ts: decodeTxnHeader, checkTxnOrder, checkTxnTrailer, decodeDataHeader,
//     checkDataInTxn, checkBackpointer; scan.ts: header room in the txn). The checks are
//     listed once, in Walk::walk below, in the JS order except the trailer's (checked after
//     the records: which check fails first does not matter, the JS scanner re-reads the txn
//     from its header); nothing is accepted that JS rejects. Lengths are bounded (≤ 2⁴⁸)
//     before any sum of them, so no position arithmetic wraps.
//   - Records are returned only from txns whose header passed (status ≠ 'c', end ≤ size), so
//     a txn stopped at before its records is never dirty.
//   - Every read of buf is bounds-checked against buf.length; the capacity of out is checked
//     (cap ≥ buf.length / 50 + 1 always suffices: a data record is ≥ 50 bytes).
#include "addon.h"
#include "fs1format.h"

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

namespace wcfs {
namespace {

using namespace fs1;  // the format: fs1format.h

enum State {
  ST_POS,
  ST_INTXN,
  ST_TPOS,
  ST_TLEN,
  ST_DIRTY,
  ST_TOP,
  ST_TXNS,
  ST_REASON,
  ST_HAVEPREV,
  ST_HDRS,
  ST_PTXN,
  ST_N
};
enum Reason { MORE = 0, STOP = 1, END = 2 };

// oid → index in out, for the current call: open addressing, generation-stamped so a call
// never clears it. One table per thread (the JS thread and workers each have theirs), reached
// through a plain pointer during the walk (a thread_local in a shared object costs a
// __tls_get_addr call per access).
struct Slot {
  uint64_t oid;
  uint32_t gen, idx;
};
struct Dedup {
  std::vector<Slot> slots;
  uint32_t gen = 0;
};
thread_local Dedup dedupTable;

struct DedupView {
  Slot* slots;
  uint64_t mask;
  uint32_t gen;

  // → index of oid, or UINT32_MAX after recording it at `next`
  uint32_t find(uint64_t oid, uint32_t next) {
    for (uint64_t h = (oid * 0x9E3779B97F4A7C15ull) >> 20;; h++) {
      Slot& s = slots[h & mask];
      if (s.gen != gen) {
        s = Slot{oid, gen, next};
        return UINT32_MAX;
      }
      if (s.oid == oid) return s.idx;
    }
  }
};

DedupView dedupFor(size_t cap) {
  Dedup& d = dedupTable;
  size_t want = 16;
  while (want < cap * 2) want <<= 1;
  if (d.slots.size() < want || ++d.gen == 0) {
    d.slots.assign(std::max(want, d.slots.size()), Slot{0, 0, 0});
    d.gen = 1;
  }
  return DedupView{d.slots.data(), d.slots.size() - 1, d.gen};
}

// One call's walk. The state is kept in locals (st and out are both double*: written through
// them inside the loop, every state read would be reloaded) and stored back on return.
struct Walk {
  const uint8_t* b;
  uint64_t bpos, bend, size;
  double* out;
  size_t cap;
  DedupView dd;
  size_t n = 0;

  // state (ST_*)
  uint64_t pos = 0, tpos = 0, tlen = 0, top = 0, txns = 0, hdrs = 0, tid = 0, prevTid = 0;
  bool inTxn = false, dirty = false, havePrev = false;
  // tids[2], tids[3] (see the header); ST_PTXN: the txn being walked has status 'p'
  uint64_t maxTid = UINT64_MAX, lastPacked = 0;
  bool packedTxn = false;

  bool has(uint64_t p, uint64_t len) const { return p >= bpos && p + len <= bend; }
  const uint8_t* at(uint64_t p) const { return b + (p - bpos); }

  void emit(uint64_t oid, uint64_t p) {
    uint32_t s = dd.find(oid, uint32_t(n));
    if (s == UINT32_MAX) {
      s = uint32_t(n++);
      out[3 * s] = double(oid >> 16);
      out[3 * s + 1] = double(oid & 0xffff);
    }
    out[3 * s + 2] = double(p);
  }

  // Walks from pos; on MORE, pos is where the next header starts.
  Reason run() {
    // the state in locals for the loop: as members, every store into the dedup table or out
    // (which may alias them, for all the compiler knows) would force a reload
    uint64_t pos = this->pos, tpos = this->tpos, tlen = this->tlen, top = this->top, txns = this->txns, hdrs = 0;
    uint64_t tid = this->tid, prevTid = this->prevTid;
    bool inTxn = this->inTxn, dirty = this->dirty, havePrev = this->havePrev;
    const Reason r = walk(pos, tpos, tlen, top, txns, hdrs, tid, prevTid, inTxn, dirty, havePrev);
    this->pos = pos, this->tpos = tpos, this->tlen = tlen, this->top = top, this->txns = txns, this->hdrs = hdrs;
    this->tid = tid, this->prevTid = prevTid;
    this->inTxn = inTxn, this->dirty = dirty, this->havePrev = havePrev;
    return r;
  }

  Reason walk(uint64_t& pos, uint64_t& tpos, uint64_t& tlen, uint64_t& top, uint64_t& txns, uint64_t& hdrs,
              uint64_t& tid, uint64_t& prevTid, bool& inTxn, bool& dirty, bool& havePrev) {
    for (;;) {
      if (!inTxn) {
        // ---- txn header at pos (scanTxn, decodeTxnHeader, checkTxnOrder) ----
        if (pos >= size) return END;
        if (pos + kTxnHeader > size) return STOP;  // JS: partial
        if (!has(pos, kTxnHeader)) return MORE;
        const uint8_t* h = at(pos);
        const uint64_t ttid = be64(h), tl = be64(h + 8);
        const uint8_t status = h[16];
        const uint64_t meta = be16(h + 17) + be16(h + 19) + be16(h + 21);
        if (status != ' ' && status != 'p' && status != 'c' && status != 'u') return STOP;
        if (tl > kMaxPos || tl < kTxnHeader + meta) return STOP;
        if (havePrev && ttid <= prevTid) return STOP;
        if (status == 'c') return STOP;               // JS: inprogress
        if (pos + tl + kTrailer > size) return STOP;  // JS: partial
        if (ttid > maxTid) return STOP;               // past the walk's bound: the caller's
        hdrs++;
        packedTxn = status == 'p';
        inTxn = true;
        tpos = pos;
        tlen = tl;
        tid = ttid;
        dirty = false;
        pos += kTxnHeader + meta;
        continue;
      }
      const uint64_t dataEnd = tpos + tlen;
      if (pos < dataEnd) {
        // ---- data record at pos (scanTxn loop, decodeDataHeader, checkDataInTxn, checkBackpointer) ----
        if (dataEnd - pos < kDataHeader) return STOP;
        const uint64_t need = dataEnd - pos >= kDataHeader + kBackpointer ? kDataHeader + kBackpointer : kDataHeader;
        if (!has(pos, need)) return MORE;
        const uint8_t* d = at(pos);
        const uint64_t oid = be64(d), dtid = be64(d + 8), prev = be64(d + 16), tloc = be64(d + 24), plen = be64(d + 34);
        if (be16(d + 32) != 0 || prev >= pos || tloc >= pos || plen > kMaxPos) return STOP;
        const uint64_t reclen = kDataHeader + (plen > 0 ? plen : kBackpointer);
        if (dtid != tid || tloc != tpos || pos + reclen > dataEnd) return STOP;
        if (plen == 0) {
          const uint64_t bp = be64(d + kDataHeader);
          if (bp >= pos || (bp != 0 && bp < kFileHeader + kTxnHeader)) return STOP;
        }
        if (n >= cap) return MORE;  // cannot happen (see cap), but never overrun out
        emit(oid, pos);
        hdrs++;
        dirty = true;
        pos += reclen;
        continue;
      }
      // ---- trailer at dataEnd (checkTxnTrailer): the txn is complete ----
      if (!has(dataEnd, kTrailer)) return MORE;
      if (be64(at(dataEnd)) != tlen) return STOP;
      pos = top = dataEnd + kTrailer;
      inTxn = dirty = false;
      txns++;
      havePrev = tid != 0;  // JS: prevTid = headTid === 0n ? -1n : headTid
      prevTid = tid;
      if (packedTxn) lastPacked = tid;
    }
  }
};

Napi::Value Fs1Scan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static const char* usage =
      "fs1Scan(buf: Uint8Array, bufPos: number, size: number, st: Float64Array, tids: BigUint64Array, out: "
      "Float64Array)";
  if (info.Length() != 6 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber() ||
      !info[3].IsTypedArray() || !info[4].IsTypedArray() || !info[5].IsTypedArray())
    throw Napi::TypeError::New(env, usage);
  auto buf = info[0].As<Napi::TypedArray>();
  auto st = info[3].As<Napi::TypedArray>();
  auto tids = info[4].As<Napi::TypedArray>();
  auto out = info[5].As<Napi::TypedArray>();
  if (buf.TypedArrayType() != napi_uint8_array || st.TypedArrayType() != napi_float64_array ||
      st.ElementLength() < ST_N || tids.TypedArrayType() != napi_biguint64_array || tids.ElementLength() < 2 ||
      out.TypedArrayType() != napi_float64_array)
    throw Napi::TypeError::New(env, usage);
  const double bufPos = info[1].As<Napi::Number>().DoubleValue(), size = info[2].As<Napi::Number>().DoubleValue();
  if (!(bufPos >= 0 && bufPos <= double(kMaxPos)) || !(size >= 0 && size <= double(kMaxPos)))
    throw Napi::RangeError::New(env, usage);
  auto* b = static_cast<const uint8_t*>(buf.ArrayBuffer().Data()) + buf.ByteOffset();
  const size_t blen = buf.ByteLength();
  const size_t cap = out.ElementLength() / 3;
  if (cap < blen / (kDataHeader + kBackpointer) + 1) throw Napi::RangeError::New(env, "fs1Scan: out too small for buf");
  auto* stp = reinterpret_cast<double*>(static_cast<uint8_t*>(st.ArrayBuffer().Data()) + st.ByteOffset());
  auto* tp = reinterpret_cast<uint64_t*>(static_cast<uint8_t*>(tids.ArrayBuffer().Data()) + tids.ByteOffset());
  auto* op = reinterpret_cast<double*>(static_cast<uint8_t*>(out.ArrayBuffer().Data()) + out.ByteOffset());

  Walk w{b, uint64_t(bufPos), uint64_t(bufPos) + blen, uint64_t(size), op, cap, dedupFor(cap)};
  w.pos = uint64_t(stp[ST_POS]);
  w.inTxn = stp[ST_INTXN] != 0;
  w.tpos = uint64_t(stp[ST_TPOS]);
  w.tlen = uint64_t(stp[ST_TLEN]);
  w.dirty = stp[ST_DIRTY] != 0;
  w.top = uint64_t(stp[ST_TOP]);
  w.havePrev = stp[ST_HAVEPREV] != 0;
  w.packedTxn = stp[ST_PTXN] != 0;
  w.prevTid = tp[0];
  w.tid = tp[1];
  const bool bounded = tids.ElementLength() >= 4;
  if (bounded) w.maxTid = tp[2], w.lastPacked = tp[3];
  const Reason r = w.run();
  stp[ST_POS] = double(w.pos);
  stp[ST_INTXN] = w.inTxn ? 1 : 0;
  stp[ST_TPOS] = double(w.tpos);
  stp[ST_TLEN] = double(w.tlen);
  stp[ST_DIRTY] = w.dirty ? 1 : 0;
  stp[ST_TOP] = double(w.top);
  stp[ST_TXNS] += double(w.txns);
  stp[ST_REASON] = double(r);
  stp[ST_HAVEPREV] = w.havePrev ? 1 : 0;
  stp[ST_HDRS] = double(w.hdrs);
  stp[ST_PTXN] = w.packedTxn ? 1 : 0;
  tp[0] = w.prevTid;
  tp[1] = w.tid;
  if (bounded) tp[3] = w.lastPacked;
  return Napi::Number::New(env, double(w.n));
}

}  // namespace

void InitFs1Scan(Napi::Env env, Napi::Object exports) { exports.Set("fs1Scan", Napi::Function::New(env, Fs1Scan)); }

}  // namespace wcfs
