// fs1 record codecs: the on-disk layout of a FileStorage `Data.fs` (zodb.md §2.2–2.4) as pure
// functions over bytes. No I/O here: readers hand in the bytes they read and the file position
// those bytes came from, so every CorruptError names the real file offset.
//
// Layout (all integers big-endian):
//
//   file  = magic(4: "FS21" | "FS30") txn*
//   txn   @tpos = tid(8) tlen(8) status(1) ulen(2) dlen(2) elen(2)   — 23-byte header
//                 user(ulen) desc(dlen) ext(elen) data* tlen(8)       — trailer = copy of tlen
//   data  @dpos = oid(8) tid(8) prev(8) tloc(8) vlen(2)=0 plen(8)      — 42-byte header
//                 then data(plen)            when plen > 0
//                 or   backpointer(8)        when plen = 0 (0 ⇒ object deleted)
//
// Invariants checked here (zodb.md §2.4), each violation → CorruptError(file, offset, detail):
//   txn:  status ∈ {' ', 'p', 'c', 'u'};  23 + ulen + dlen + elen ≤ tlen;  trailer = tlen;
//         tid(txn) > tid(previous txn);  next txn @ tpos + tlen + 8.
//   data: vlen = 0;  tid = tid(txn);  tloc = tpos;  dpos + reclen ≤ tpos + tlen;
//         prev < dpos;  backpointer < dpos;  the records of a txn exactly fill its data area.
// Decoders never read outside b: a buffer too short for a header is a CorruptError too.
// Checks that need a second record (prev/backpointer point at the same oid with a smaller
// tid) are done by the readers that follow those links (filestorage.ts load, checkFile).
//
// Positions are JS numbers: fsIndex limits them to 48 bits (zodb.md §2.5), far below 2⁵³.

import { CorruptError } from '../errors.js';
import type { Oid, Tid } from '../ids.js';

export const FILE_HEADER_SIZE = 4;
export const TXN_HEADER_SIZE = 23;
export const DATA_HEADER_SIZE = 42;
export const TRAILER_SIZE = 8;
export const BACKPOINTER_SIZE = 8;
/** Largest position the .index format can express (6-byte positions). */
export const MAX_POS = 2 ** 48 - 1;
/** user/description/extension are each limited by their 2-byte length field. */
export const MAX_META_LEN = 0xffff;

export type Magic = 'FS21' | 'FS30';
/** ' ' committed, 'p' packed, 'c' commit in progress (tail only), 'u' legacy undone. */
export type TxnStatus = ' ' | 'p' | 'c' | 'u';

const STATUS_OK = new Set([0x20, 0x70, 0x63, 0x75]); // ' ' 'p' 'c' 'u'

// ---- integer helpers ----

export function u16(b: Uint8Array, o: number): number {
  return (b[o]! << 8) | b[o + 1]!;
}

export function u32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

/** u64 as a number — exact below 2⁵³; positions beyond MAX_POS are rejected by callers. */
export function u64num(b: Uint8Array, o: number): number {
  return u32(b, o) * 4294967296 + u32(b, o + 4);
}

export function u64big(b: Uint8Array, o: number): bigint {
  return (BigInt(u32(b, o)) << 32n) | BigInt(u32(b, o + 4));
}

export function put16(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 8) & 0xff;
  b[o + 1] = v & 0xff;
}

export function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/** A non-negative integer number < 2⁵³ as 8 bytes. */
export function put64num(b: Uint8Array, o: number, v: number): void {
  put32(b, o, Math.floor(v / 4294967296));
  put32(b, o + 4, v >>> 0);
}

export function put64big(b: Uint8Array, o: number, v: bigint): void {
  put32(b, o, Number((v >> 32n) & 0xffffffffn));
  put32(b, o + 4, Number(v & 0xffffffffn));
}

const h16 = (x: bigint) => x.toString(16).padStart(16, '0');

/** b[off, off+n) must exist: decoders never read past their input (short → CorruptError). */
function need(b: Uint8Array, off: number, n: number, pos: number, file: string, what: string): void {
  if (!(off >= 0 && off + n <= b.length)) {
    throw new CorruptError(file, pos, `${what}: ${Math.max(0, b.length - Math.max(off, 0))} of ${n} bytes`);
  }
}

// ---- 1) file header ----

export const MAGIC_FS21 = new Uint8Array([0x46, 0x53, 0x32, 0x31]);
export const MAGIC_FS30 = new Uint8Array([0x46, 0x53, 0x33, 0x30]);

export function decodeMagic(b: Uint8Array, file: string): Magic {
  if (b.length < FILE_HEADER_SIZE) {
    throw new CorruptError(file, 0, `file too short for the FileStorage magic (${b.length} bytes)`);
  }
  const m = String.fromCharCode(b[0]!, b[1]!, b[2]!, b[3]!);
  if (m !== 'FS21' && m !== 'FS30') {
    throw new CorruptError(file, 0, `bad magic ${JSON.stringify(m)}: not a FileStorage (want "FS21" or "FS30")`);
  }
  return m;
}

export function encodeMagic(m: Magic = 'FS30'): Uint8Array {
  return (m === 'FS21' ? MAGIC_FS21 : MAGIC_FS30).slice();
}

// ---- 2) transaction record ----

export interface TxnHeader {
  /** File position of the record. */
  pos: number;
  tid: Tid;
  /** Record length minus the 8-byte trailer: the trailer sits at pos + tlen. */
  tlen: number;
  status: TxnStatus;
  ulen: number;
  dlen: number;
  elen: number;
}

/** Position just after the txn (= next txn's position). */
export const txnEnd = (t: TxnHeader): number => t.pos + t.tlen + TRAILER_SIZE;
/** Position of the first data record. */
export const txnDataStart = (t: TxnHeader): number => t.pos + TXN_HEADER_SIZE + t.ulen + t.dlen + t.elen;
/** End of the data records (= position of the trailer). */
export const txnDataEnd = (t: TxnHeader): number => t.pos + t.tlen;

/** Decode a 23-byte txn header found at file position `pos` (bytes at b[off…]). */
export function decodeTxnHeader(b: Uint8Array, off: number, pos: number, file: string): TxnHeader {
  need(b, off, TXN_HEADER_SIZE, pos, file, 'txn header');
  const tid = u64big(b, off);
  const tlen = u64num(b, off + 8);
  const st = b[off + 16]!;
  const ulen = u16(b, off + 17);
  const dlen = u16(b, off + 19);
  const elen = u16(b, off + 21);
  if (!STATUS_OK.has(st)) {
    throw new CorruptError(file, pos, `txn ${h16(tid)}: invalid status byte 0x${st.toString(16).padStart(2, '0')}`);
  }
  if (tlen > MAX_POS || tlen < TXN_HEADER_SIZE + ulen + dlen + elen) {
    throw new CorruptError(
      file,
      pos,
      `txn ${h16(tid)}: invalid length ${tlen} (user ${ulen} + description ${dlen} + extension ${elen} + header ${TXN_HEADER_SIZE} must fit)`,
    );
  }
  return { pos, tid, tlen, status: String.fromCharCode(st) as TxnStatus, ulen, dlen, elen };
}

/** Tids strictly increase from one transaction to the next. */
export function checkTxnOrder(t: TxnHeader, prevTid: Tid, file: string): void {
  if (t.tid <= prevTid) {
    throw new CorruptError(file, t.pos, `txn ${h16(t.tid)}: tid not after the previous txn's ${h16(prevTid)}`);
  }
}

/** The trailer (8 bytes at pos + tlen) repeats tlen. */
export function checkTxnTrailer(t: TxnHeader, trailer: number, file: string): void {
  if (trailer !== t.tlen) {
    throw new CorruptError(file, txnDataEnd(t), `txn ${h16(t.tid)} @${t.pos}: trailer length ${trailer} ≠ header length ${t.tlen}`);
  }
}

export interface TxnHeaderInit {
  tid: Tid;
  tlen: number;
  status: TxnStatus;
  ulen: number;
  dlen: number;
  elen: number;
}

export function encodeTxnHeader(t: TxnHeaderInit, out: Uint8Array, off: number): void {
  put64big(out, off, t.tid);
  put64num(out, off + 8, t.tlen);
  out[off + 16] = t.status.charCodeAt(0);
  put16(out, off + 17, t.ulen);
  put16(out, off + 19, t.dlen);
  put16(out, off + 21, t.elen);
}

// ---- 3) data record ----

export interface DataHeader {
  /** File position of the record. */
  pos: number;
  oid: Oid;
  tid: Tid;
  /** Position of this oid's previous record, 0 if none. */
  prev: number;
  /** Position of the enclosing txn. */
  tloc: number;
  /** Data length; 0 ⇒ an 8-byte backpointer follows instead of data. */
  plen: number;
}

export const dataRecordLen = (d: DataHeader): number => DATA_HEADER_SIZE + (d.plen > 0 ? d.plen : BACKPOINTER_SIZE);

/** Decode a 42-byte data record header found at file position `pos`. Checks what needs no context. */
export function decodeDataHeader(b: Uint8Array, off: number, pos: number, file: string): DataHeader {
  need(b, off, DATA_HEADER_SIZE, pos, file, 'data record header');
  const oid = u64big(b, off);
  const tid = u64big(b, off + 8);
  const prev = u64num(b, off + 16);
  const tloc = u64num(b, off + 24);
  const vlen = u16(b, off + 32);
  const plen = u64num(b, off + 34);
  const what = () => `data record oid ${h16(oid)} tid ${h16(tid)}`;
  if (vlen !== 0) throw new CorruptError(file, pos, `${what()}: version length ${vlen} ≠ 0 (versions are not supported)`);
  if (prev >= pos) throw new CorruptError(file, pos, `${what()}: prev ${prev} not before the record`);
  if (tloc >= pos) throw new CorruptError(file, pos, `${what()}: txn position ${tloc} not before the record`);
  if (plen > MAX_POS) throw new CorruptError(file, pos, `${what()}: invalid data length ${plen}`);
  return { pos, oid, tid, prev, tloc, plen };
}

/** A data record belongs to the txn it was found in and does not overrun it. */
export function checkDataInTxn(d: DataHeader, t: TxnHeader, file: string): void {
  // the message is built only on failure: this runs for every record of an index rebuild
  const what = () => `data record oid ${h16(d.oid)} (txn ${h16(t.tid)} @${t.pos})`;
  if (d.tid !== t.tid) throw new CorruptError(file, d.pos, `${what()}: tid ${h16(d.tid)} ≠ txn tid`);
  if (d.tloc !== t.pos) throw new CorruptError(file, d.pos, `${what()}: txn position ${d.tloc} ≠ ${t.pos}`);
  if (d.pos + dataRecordLen(d) > txnDataEnd(t)) {
    throw new CorruptError(file, d.pos, `${what()}: data length ${d.plen} overruns the txn (ends @${txnDataEnd(t)})`);
  }
}

/** A backpointer points before its own record (0 = deleted is fine). */
export function checkBackpointer(d: DataHeader, bp: number, file: string): void {
  if (bp >= d.pos || (bp !== 0 && bp < FILE_HEADER_SIZE + TXN_HEADER_SIZE)) {
    throw new CorruptError(file, d.pos, `data record oid ${h16(d.oid)} tid ${h16(d.tid)}: invalid backpointer ${bp}`);
  }
}

/** A record reached through a prev link or a backpointer is of the same oid and older. */
export function checkLinked(from: DataHeader, to: DataHeader, link: 'prev' | 'backpointer', file: string): void {
  if (to.oid !== from.oid) {
    throw new CorruptError(file, from.pos, `data record oid ${h16(from.oid)}: ${link} @${to.pos} is a record of oid ${h16(to.oid)}`);
  }
  if (to.tid >= from.tid) {
    throw new CorruptError(file, from.pos, `data record oid ${h16(from.oid)} tid ${h16(from.tid)}: ${link} @${to.pos} has tid ${h16(to.tid)} (not older)`);
  }
}

export interface DataHeaderInit {
  oid: Oid;
  tid: Tid;
  prev: number;
  tloc: number;
  plen: number;
}

export function encodeDataHeader(d: DataHeaderInit, out: Uint8Array, off: number): void {
  put64big(out, off, d.oid);
  put64big(out, off + 8, d.tid);
  put64num(out, off + 16, d.prev);
  put64num(out, off + 24, d.tloc);
  put16(out, off + 32, 0);
  put64num(out, off + 34, d.plen);
}

// ---- 4) whole transactions (writer side) ----

export interface TxnDataInit {
  oid: Oid;
  prev: number;
  /** Record bytes, or null: plen 0 + backpointer (object deleted when the backpointer is 0). */
  data: Uint8Array | null;
  /** With data null: position of an older record of the same oid whose data is re-used. */
  backpointer?: number;
}

/**
 * Encode a complete transaction record to be written at `tpos`. Returns the bytes and the
 * position of every data record (in order).
 */
export function encodeTxn(
  tpos: number,
  tid: Tid,
  status: TxnStatus,
  user: Uint8Array,
  desc: Uint8Array,
  ext: Uint8Array,
  recs: readonly TxnDataInit[],
): { bytes: Uint8Array; dpos: number[] } {
  if (user.length > MAX_META_LEN || desc.length > MAX_META_LEN || ext.length > MAX_META_LEN) {
    throw new RangeError(`txn metadata too long (user ${user.length}, description ${desc.length}, extension ${ext.length}; max ${MAX_META_LEN} each)`);
  }
  let tlen = TXN_HEADER_SIZE + user.length + desc.length + ext.length;
  for (const r of recs) tlen += DATA_HEADER_SIZE + (r.data === null ? BACKPOINTER_SIZE : r.data.length);
  const out = new Uint8Array(tlen + TRAILER_SIZE);
  encodeTxnHeader({ tid, tlen, status, ulen: user.length, dlen: desc.length, elen: ext.length }, out, 0);
  let o = TXN_HEADER_SIZE;
  out.set(user, o);
  o += user.length;
  out.set(desc, o);
  o += desc.length;
  out.set(ext, o);
  o += ext.length;
  const dpos: number[] = [];
  for (const r of recs) {
    if (r.data !== null && r.data.length === 0) throw new RangeError(`oid ${h16(r.oid)}: empty data record (plen 0 means backpointer)`);
    dpos.push(tpos + o);
    encodeDataHeader({ oid: r.oid, tid, prev: r.prev, tloc: tpos, plen: r.data === null ? 0 : r.data.length }, out, o);
    o += DATA_HEADER_SIZE;
    if (r.data === null) {
      put64num(out, o, r.backpointer ?? 0);
      o += BACKPOINTER_SIZE;
    } else {
      out.set(r.data, o);
      o += r.data.length;
    }
  }
  put64num(out, o, tlen);
  return { bytes: out, dpos };
}
