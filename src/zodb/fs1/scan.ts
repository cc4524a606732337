// Reading Data.fs: positional reads, a windowed reader for forward scans (SeqReader), the
// one-transaction scanner every forward walk uses (open/rebuild, catch-up, follower, iterate,
// watch replay, checkFile), the backward step over the trailer, the read-ahead window of
// load() (RecordReader), and checkFile (fsck).
//
// Notes:
//   - All reads are synchronous pread()s on a long-lived fd: a scan step is then atomic with
//     respect to the rest of the JS thread (nothing can publish a txn halfway through one),
//     and on a warm page cache a pread costs ~1 µs, less than a promise round trip.
//   - A SeqReader caps reads at the size taken from fstat() by its creator, and its window is
//     private to one scan: bytes beyond the committed end can change in place (status 'c' →
//     ' ', or truncate + rewrite after an abort), so no window outlives the scan that read it.
//   - scanTxn distinguishes "not there yet" (partial: header or body beyond the size; or
//     inprogress: status 'c') from corruption (CorruptError): only the follower decides how
//     long "not there yet" may last (zodb.md §2.8).

import fs from 'node:fs';
import { CorruptError } from '../errors.js';
import type { Oid, Tid } from '../ids.js';
import {
  BACKPOINTER_SIZE,
  DATA_HEADER_SIZE,
  FILE_HEADER_SIZE,
  TRAILER_SIZE,
  TXN_HEADER_SIZE,
  checkBackpointer,
  checkDataInTxn,
  checkLinked,
  checkTxnOrder,
  checkTxnTrailer,
  decodeDataHeader,
  decodeMagic,
  decodeTxnHeader,
  dataRecordLen,
  txnDataEnd,
  txnDataStart,
  txnEnd,
  u64num,
  type DataHeader,
  type Magic,
  type TxnHeader,
} from './format.js';

/** pread until `len` bytes or EOF; returns the number of bytes read. */
export function preadFull(fd: number, buf: Uint8Array, off: number, len: number, pos: number): number {
  let got = 0;
  while (got < len) {
    const n = fs.readSync(fd, buf, off + got, len - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/** `n` bytes at `pos` in a fresh buffer; CorruptError when the file ends before that. */
export function readFresh(fd: number, pos: number, n: number, file: string, what: string): Uint8Array {
  // allocUnsafeSlow: an ArrayBuffer of its own (no pool sharing, no zero-fill); returned as a
  // plain Uint8Array so callers get one type whatever the size.
  const ab = Buffer.allocUnsafeSlow(n);
  const b = new Uint8Array(ab.buffer, ab.byteOffset, n);
  const got = preadFull(fd, b, 0, n, pos);
  if (got < n) throw new CorruptError(file, pos, `${what}: unexpected end of file (${got} of ${n} bytes)`);
  return b;
}

/**
 * Forward reader over [0, size) with a private window. view() results are valid until the
 * next view() call.
 *
 * The window adapts to the access pattern (issue 11, index rebuild): a window of which the
 * caller used less than an eighth is followed by a small one (SPARSE bytes), one used more by
 * one twice as big (from `chunk` up to 1 MiB: fewer syscalls for dense records). Scanning records of 64 KiB or 2 MiB touches one header per record: with a
 * fixed chunk each header cost a 64 KiB copy; now a 4 KiB one. A view of a few bytes outside
 * the window (a txn trailer) is read into a scratch buffer and leaves the window alone.
 */
const SPARSE = 4096;
const DENSE_MAX = 1 << 20;
const PEEK_MAX = 64;

export class SeqReader {
  private buf: Uint8Array;
  private bufPos = 0;
  private bufLen = 0;
  /** Highest offset in the window a view reached (how much of it was used). */
  private used = 0;
  /** Size of the next dense window. */
  private win: number;
  private readonly scratch = new Uint8Array(PEEK_MAX);

  constructor(
    readonly fd: number,
    readonly size: number,
    private readonly chunk = 1 << 16,
  ) {
    this.buf = new Uint8Array(0);
    this.win = chunk;
  }

  /** n bytes at pos, or null when [pos, pos+n) is not inside the file (as of `size`). */
  view(pos: number, n: number): Uint8Array | null {
    if (pos + n > this.size) return null;
    if (pos >= this.bufPos && pos + n <= this.bufPos + this.bufLen) {
      const o = pos - this.bufPos;
      if (o + n > this.used) this.used = o + n;
      return this.buf.subarray(o, o + n);
    }
    const sparse = this.bufLen > 0 && this.used * 8 < this.bufLen;
    // dense: the window doubles up to DENSE_MAX (fewer syscalls); sparse: SPARSE bytes
    this.win = sparse ? this.chunk : this.bufLen === 0 ? this.chunk : Math.min(this.win * 2, Math.max(DENSE_MAX, this.chunk));
    const want = Math.min(Math.max(n, sparse ? Math.min(SPARSE, this.chunk) : this.win), this.size - pos);
    if (this.buf.length < want) this.buf = new Uint8Array(Math.max(want, this.chunk));
    const got = preadFull(this.fd, this.buf, 0, want, pos);
    this.bufPos = pos;
    this.bufLen = got;
    this.used = n;
    if (got < n) return null; // the file shrank below `size` since it was measured
    return this.buf.subarray(0, n);
  }

  /** Like view, for a few bytes (≤ 64): outside the window they are read apart, keeping it. */
  peek(pos: number, n: number): Uint8Array | null {
    if (pos + n > this.size) return null;
    if ((pos >= this.bufPos && pos + n <= this.bufPos + this.bufLen) || n > PEEK_MAX) return this.view(pos, n);
    const got = preadFull(this.fd, this.scratch, 0, n, pos);
    return got < n ? null : this.scratch.subarray(0, n);
  }
}

/** A data record as the scanner saw it: header + backpointer (-1 when the record has data). */
export interface ScanRec extends DataHeader {
  backpointer: number;
}

export type ScanStep =
  /** Nothing at pos: the file (as of the reader's size) ends exactly there. */
  | { kind: 'eof' }
  /** Something is at pos but not all of it: a write in progress, or trailing garbage. */
  | { kind: 'partial'; detail: string }
  /** A txn with status 'c': a commit between vote and finish (or a writer died there). */
  | { kind: 'inprogress'; txn: TxnHeader }
  /** A complete committed txn, checked; recs empty unless asked for. */
  | { kind: 'txn'; txn: TxnHeader; recs: ScanRec[] };

/**
 * Scan the txn at `pos`. `prevTid` is the previous txn's tid (-1n for the first txn) for the
 * ordering check. With `records` every data record header is read and checked (zodb.md §2.4).
 */
export function scanTxn(r: SeqReader, pos: number, prevTid: Tid, file: string, records = true): ScanStep {
  if (pos >= r.size) return { kind: 'eof' };
  const hb = r.view(pos, TXN_HEADER_SIZE);
  if (hb === null) return { kind: 'partial', detail: `incomplete txn header (${r.size - pos} of ${TXN_HEADER_SIZE} bytes)` };
  const t = decodeTxnHeader(hb, 0, pos, file);
  checkTxnOrder(t, prevTid, file);
  if (t.status === 'c') return { kind: 'inprogress', txn: t };
  const end = txnEnd(t);
  if (end > r.size) return { kind: 'partial', detail: `incomplete txn (ends @${end}, file has ${r.size} bytes)` };
  const tb = r.peek(txnDataEnd(t), TRAILER_SIZE);
  if (tb === null) return { kind: 'partial', detail: `txn @${t.pos}: trailer unreadable (file shrank)` };
  checkTxnTrailer(t, u64num(tb, 0), file);
  const recs: ScanRec[] = [];
  if (records) {
    const dataEnd = txnDataEnd(t);
    let dpos = txnDataStart(t);
    while (dpos < dataEnd) {
      if (dataEnd - dpos < DATA_HEADER_SIZE) {
        throw new CorruptError(file, dpos, `txn @${t.pos}: ${dataEnd - dpos} bytes left in the txn, too few for a data record header`);
      }
      const d = decodeDataHeader(r.view(dpos, DATA_HEADER_SIZE)!, 0, dpos, file) as ScanRec;
      checkDataInTxn(d, t, file);
      d.backpointer = -1;
      if (d.plen === 0) {
        d.backpointer = u64num(r.view(dpos + DATA_HEADER_SIZE, BACKPOINTER_SIZE)!, 0);
        checkBackpointer(d, d.backpointer, file);
      }
      recs.push(d);
      dpos += dataRecordLen(d);
    }
  }
  return { kind: 'txn', txn: t, recs };
}

/**
 * The txn that ends at `pos` (walking backwards via its trailer). The trailer and the header
 * must agree.
 */
export function readTxnBefore(fd: number, pos: number, file: string): TxnHeader {
  // pos may come from an untrusted .index: the smallest txn ends @4+23+8
  if (!(pos >= FILE_HEADER_SIZE + TXN_HEADER_SIZE + TRAILER_SIZE)) {
    throw new CorruptError(file, pos, `no txn can end @${pos} (the first ends @${FILE_HEADER_SIZE + TXN_HEADER_SIZE + TRAILER_SIZE} or later)`);
  }
  const tb = readFresh(fd, pos - TRAILER_SIZE, TRAILER_SIZE, file, 'txn trailer');
  const tlen = u64num(tb, 0);
  const tpos = pos - TRAILER_SIZE - tlen;
  if (tlen < TXN_HEADER_SIZE || tpos < FILE_HEADER_SIZE) {
    throw new CorruptError(file, pos - TRAILER_SIZE, `txn trailer: invalid length ${tlen} (txn would start @${tpos})`);
  }
  const t = decodeTxnHeader(readFresh(fd, tpos, TXN_HEADER_SIZE, file, 'txn header'), 0, tpos, file);
  checkTxnTrailer(t, tlen, file);
  return t;
}

// Header-only reads are parsed at once, so one scratch buffer serves them all (one JS thread).
const hdrScratch = new Uint8Array(DATA_HEADER_SIZE + BACKPOINTER_SIZE);

/** The 42-byte data record header at `pos`, plus its backpointer when plen is 0. */
export function readDataHeader(fd: number, pos: number, file: string): ScanRec {
  // One pread for header + backpointer: a committed record is always followed by ≥ 9 bytes
  // (its backpointer or data, then at least the txn trailer).
  const got = preadFull(fd, hdrScratch, 0, hdrScratch.length, pos);
  if (got < DATA_HEADER_SIZE) throw new CorruptError(file, pos, `data record header: unexpected end of file (${got} bytes)`);
  return decodeRecordAt(hdrScratch, 0, got, pos, file);
}

/** Decode a data record header (+ backpointer) from `got` bytes read at `pos` into b[off…]. */
export function decodeRecordAt(b: Uint8Array, off: number, got: number, pos: number, file: string): ScanRec {
  const d = decodeDataHeader(b, off, pos, file) as ScanRec;
  d.backpointer = -1;
  if (d.plen === 0) {
    if (Math.min(got, b.length - off) < DATA_HEADER_SIZE + BACKPOINTER_SIZE) throw new CorruptError(file, pos, 'backpointer: unexpected end of file');
    d.backpointer = u64num(b, off + DATA_HEADER_SIZE);
    checkBackpointer(d, d.backpointer, file);
  }
  return d;
}

/**
 * Reads of load() and iterate(): a read-ahead window over the committed part of the file,
 * carved from slabs by a bump allocator.
 *
 * Why: a pread costs ~1 µs on a warm page cache (measured: 96% of a load is the read syscall),
 * and allocating a fresh ArrayBuffer per read another ~2 µs. ZBlk1 blocks are ~512 records of
 * 4 KiB written in one txn, loaded in file order, so a window that grows while reads are
 * sequential (8 KiB → 256 KiB) serves most of them with no syscall, and random reads still
 * cost one 8 KiB pread.
 *
 * Safety:
 *   - reads never extend past `limit` (the caller's committed end, topPos): bytes there are
 *     immutable for this inode (the follower declares truncation/replacement fatal), while
 *     bytes past it can change in place (status 'c' → ' ', abort + rewrite);
 *   - take() views are never overwritten: a slab region is reused only beyond the last byte
 *     handed out, and a new window never overlaps one still referenced. A live view keeps its
 *     whole slab (≤ SLAB bytes) alive — callers that cache many small records should copy.
 *   - peek() views are for parsing at once (valid until the next call).
 */
export class RecordReader {
  private static readonly SLAB = 512 * 1024;
  private static readonly MIN = 8 * 1024;
  private static readonly MAX = 256 * 1024;

  private slab: Uint8Array = new Uint8Array(0);
  /** slab[0, keep) may be referenced by views handed out; free space starts at `keep` (≥ taken). */
  private keep = 0;
  // the window: file [wPos, wPos + wLen) is at buf[wOff, wOff + wLen)
  private buf: Uint8Array = new Uint8Array(0);
  private wOff = 0;
  private wPos = 0;
  private wLen = 0;
  /** buf[wOff, taken) has been handed out by take(). */
  private taken = 0;
  private ahead = RecordReader.MIN;

  constructor(
    private readonly fd: number,
    private readonly file: string,
  ) {}

  /** [pos, pos+n) for parsing now; valid until the next call. */
  peek(pos: number, n: number, limit: number): Uint8Array {
    if (!(pos >= this.wPos && pos + n <= this.wPos + this.wLen)) this.fill(pos, n, limit);
    const o = this.wOff + (pos - this.wPos);
    return this.buf.subarray(o, o + n);
  }

  /**
   * [pos, pos+n) as a view that stays valid (never overwritten) and is handed out once: bytes
   * already taken from this window are read again into fresh space, so two loads of the same
   * record never share memory.
   */
  take(pos: number, n: number, limit: number): Uint8Array {
    let o = this.wOff + (pos - this.wPos);
    if (!(pos >= this.wPos && pos + n <= this.wPos + this.wLen) || o < this.taken) {
      this.fill(pos, n, limit);
      o = this.wOff;
    }
    this.taken = o + n;
    if (this.buf === this.slab && this.taken > this.keep) this.keep = (this.taken + 7) & ~7;
    return this.buf.subarray(o, o + n);
  }

  private fill(pos: number, n: number, limit: number): void {
    if (pos + n > limit) {
      throw new CorruptError(this.file, pos, `record of ${n} bytes runs past the committed end @${limit}`);
    }
    // sequential: the read starts inside or just after the current window → read further ahead
    const seq = pos >= this.wPos && pos <= this.wPos + this.wLen + RecordReader.MIN;
    this.ahead = seq ? Math.min(this.ahead * 2, RecordReader.MAX) : RecordReader.MIN;
    const size = Math.min(Math.max(n, this.ahead), limit - pos);
    let buf: Uint8Array, off: number;
    if (size > RecordReader.SLAB / 2) {
      const ab = Buffer.allocUnsafeSlow(size); // big record: a buffer of its own
      buf = new Uint8Array(ab.buffer, ab.byteOffset, size);
      off = 0;
    } else {
      if (this.slab.length - this.keep < size) {
        const ab = Buffer.allocUnsafeSlow(RecordReader.SLAB);
        this.slab = new Uint8Array(ab.buffer, ab.byteOffset, RecordReader.SLAB);
        this.keep = 0;
      }
      buf = this.slab;
      off = this.keep;
    }
    const got = preadFull(this.fd, buf, off, size, pos);
    if (got < n) throw new CorruptError(this.file, pos, `unexpected end of file (${got} of ${n} bytes)`);
    this.buf = buf;
    this.wOff = off;
    this.wPos = pos;
    this.wLen = got;
    this.taken = off;
  }
}

// ---- full check (fsck) ----

export interface CheckReport {
  magic: Magic;
  txns: number;
  records: number;
  /** End of the last complete committed txn. */
  topPos: number;
  /** What follows topPos: nothing, a commit in progress, or an incomplete txn. */
  tail: 'eof' | 'inprogress' | 'partial';
  tids: Tid[];
  /** oid → position of its newest record (what the index must hold). */
  index: Map<Oid, number>;
}

/**
 * Check every transaction and data record of a Data.fs with all zodb.md §2.4 rules, including the
 * ones that need a second read (prev and backpointer targets: same oid, older tid). Throws
 * CorruptError at the first violation. A status-'c' or incomplete tail is reported, not
 * thrown: it is what a live writer leaves while committing.
 */
export function checkFile(path: string): CheckReport {
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const magic = decodeMagic(readFresh(fd, 0, Math.min(FILE_HEADER_SIZE, size), path, 'magic'), path);
    const r = new SeqReader(fd, size);
    const index = new Map<Oid, number>();
    const tids: Tid[] = [];
    let pos = FILE_HEADER_SIZE;
    let prevTid = -1n;
    let records = 0;
    for (;;) {
      const step = scanTxn(r, pos, prevTid, path);
      if (step.kind !== 'txn') {
        return { magic, txns: tids.length, records, topPos: pos, tail: step.kind, tids, index };
      }
      for (const d of step.recs) {
        if (d.prev !== 0) checkLinked(d, readDataHeader(fd, d.prev, path), 'prev', path);
        if (d.backpointer > 0) checkLinked(d, readDataHeader(fd, d.backpointer, path), 'backpointer', path);
        index.set(d.oid, d.pos);
        records++;
      }
      tids.push(step.txn.tid);
      prevTid = step.txn.tid;
      pos = txnEnd(step.txn);
    }
  } finally {
    fs.closeSync(fd);
  }
}
