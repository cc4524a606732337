// Identifiers of ZODB: oids and tids as bigint, their 16-hex text form, and the TimeStamp
// encoding that maps a tid to wall time (zodb.md §1.2).
//
// Invariants:
//   0 ≤ oid, tid < 2⁶⁴;  text form = exactly 16 lowercase hex digits.
//   tid = a·2³² + b,  a = minutes since 1900-01-01 in a calendar of 31-day months,
//                     b = ⌊seconds · 2³² / 60⌋   (monotone in time, not linear).

import { BadArgumentError } from './errors.js';

export type Oid = bigint;
export type Tid = bigint;

/** No tid (ZODB z64). */
export const Z64: Tid = 0n;
/** ZODB's maxtid: "latest" for loadBefore-style calls. */
export const MAX_TID: Tid = 0x7fffffffffffffffn;
const U64_MAX = 0xffffffffffffffffn;

/** 16 lowercase hex digits: the only text form of oids and tids we emit. */
export function hex16(x: bigint): string {
  if (x < 0n || x > U64_MAX) throw new BadArgumentError(`hex16: ${x} out of uint64 range`);
  return x.toString(16).padStart(16, '0');
}

/** Strict parse of the text form: exactly 16 hex digits, lowercase (as in `@<rev>` names). */
export function parseHex16(s: string, what = 'id'): bigint {
  if (!/^[0-9a-f]{16}$/.test(s)) {
    throw new BadArgumentError(`invalid ${what} ${JSON.stringify(s)}: want 16 lowercase hex digits`);
  }
  return BigInt('0x' + s);
}

/**
 * Lenient parse for command lines: 1..16 hex digits, optional 0x prefix, any case.
 * Leading zeros may be omitted (`wcfs zodb cat db.fs 2 0`).
 */
export function parseHexArg(s: string, what = 'id'): bigint {
  const m = /^(?:0x)?([0-9a-fA-F]{1,16})$/.exec(s.trim());
  if (!m) throw new BadArgumentError(`invalid ${what} ${JSON.stringify(s)}: want up to 16 hex digits`);
  return BigInt('0x' + m[1]);
}

/** Big-endian 8 bytes → bigint. */
export function u64be(b: Uint8Array, off = 0): bigint {
  const dv = new DataView(b.buffer, b.byteOffset + off, 8);
  return dv.getBigUint64(0, false);
}

/** bigint → big-endian 8 bytes. */
export function p64(x: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, x), false);
  return b;
}

// ---- TimeStamp ↔ wall time ----

const TWO32 = 4294967296;

/** Fields of a TimeStamp, in UTC. `second` carries the fraction. */
export interface TimeStampFields {
  year: number;
  month: number; // 1..12
  day: number; // 1..31 (31-day months: Feb 30 is representable)
  hour: number;
  minute: number;
  second: number; // [0, 60)
}

export function tidToFields(tid: Tid): TimeStampFields {
  const a = Number(tid >> 32n);
  const b = Number(tid & 0xffffffffn);
  return {
    year: Math.floor(a / 535680) + 1900,
    month: (Math.floor(a / 44640) % 12) + 1,
    day: (Math.floor(a / 1440) % 31) + 1,
    hour: Math.floor(a / 60) % 24,
    minute: a % 60,
    second: (b * 60) / TWO32,
  };
}

export function fieldsToTid(f: TimeStampFields): Tid {
  const a = ((((f.year - 1900) * 12 + (f.month - 1)) * 31 + (f.day - 1)) * 24 + f.hour) * 60 + f.minute;
  const b = Math.floor((f.second * TWO32) / 60);
  return (BigInt(a) << 32n) | BigInt(Math.min(b, TWO32 - 1));
}

/**
 * The seconds of a tid, rounded to microseconds as ZODB prints them: str(TimeStamp) formats
 * the exact binary value b·60/2³² with "%09.6f" — correctly rounded, ties to even. 60.000000
 * is possible (b near 2³²) and, as in ZODB, does not carry into the minute.
 */
export function tidMicroseconds(tid: Tid): number {
  const num = (tid & 0xffffffffn) * 60_000_000n; // b·60·10⁶; seconds·10⁶ = num / 2³²
  let q = num >> 32n;
  const r = num & 0xffffffffn;
  const half = 0x80000000n;
  if (r > half || (r === half && (q & 1n) === 1n)) q++;
  return Number(q);
}

/** Wall time of a tid in microseconds since the Unix epoch (TimeStamp's µs rounding). */
export function tidToEpochMicros(tid: Tid): number {
  const f = tidToFields(tid);
  return Date.UTC(f.year, f.month - 1, f.day, f.hour, f.minute) * 1000 + tidMicroseconds(tid);
}

/** The TimeStamp of a wall time in µs since the Unix epoch (inverse of tidToEpochMicros up to the rounding). */
export function epochMicrosToTid(us: number): Tid {
  const ms = Math.floor(us / 1000);
  return dateToTid(new Date(ms), (us - ms * 1000) / 1000);
}

/** Wall time of a tid (millisecond precision: the µs-rounded time, sub-ms part dropped). */
export function tidToDate(tid: Tid): Date {
  return new Date(Math.floor(tidToEpochMicros(tid) / 1000));
}

/** Wall time of a tid as a timespec (µs precision, as tidToEpochMicros). */
export function tidToTimespec(tid: Tid): { sec: number; nsec: number } {
  const us = tidToEpochMicros(tid);
  const sec = Math.floor(us / 1e6);
  return { sec, nsec: (us - sec * 1e6) * 1000 };
}

/** TimeStamp of a wall time; `subMs` in [0,1) adds sub-millisecond precision. */
export function dateToTid(d: Date, subMs = 0): Tid {
  return fieldsToTid({
    year: d.getUTCFullYear(),
    month: d.getUTCMonth() + 1,
    day: d.getUTCDate(),
    hour: d.getUTCHours(),
    minute: d.getUTCMinutes(),
    second: d.getUTCSeconds() + (d.getUTCMilliseconds() + subMs) / 1000,
  });
}

/** Text of a tid exactly as str(persistent.TimeStamp): `YYYY-MM-DD HH:MM:SS.ffffff` (UTC). */
export function tidToString(tid: Tid): string {
  const f = tidToFields(tid);
  const p2 = (n: number) => String(n).padStart(2, '0');
  const us = tidMicroseconds(tid);
  const sec = Math.floor(us / 1e6);
  return `${String(f.year).padStart(4, '0')}-${p2(f.month)}-${p2(f.day)} ${p2(f.hour)}:${p2(f.minute)}:${p2(sec)}.` + String(us % 1e6).padStart(6, '0');
}

/**
 * A new tid for a commit after `last` (BaseStorage.tpc_begin + TimeStamp.laterThan):
 * now as a TimeStamp, or last+1 when the clock is not ahead of `last`.
 */
export function newTid(last: Tid, now: Date = new Date()): Tid {
  const hr = Number(process.hrtime.bigint() % 1000000n) / 1e6; // sub-ms jitter from a monotonic clock
  const t = dateToTid(now, hr);
  return t > last ? t : last + 1n;
}
