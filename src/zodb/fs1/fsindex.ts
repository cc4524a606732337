// FsIndex: the in-memory oid → position map of a FileStorage, and the codec of its `.index`
// file (zodb.md §2.5). Pure apart from the caller's I/O: verification against Data.fs lives in
// filestorage.ts, which owns the file.
//
// In-memory layout — the on-disk idea (48-bit oid prefix → bucket of 16-bit suffixes) kept:
//
//   buckets: Map<prefix = oid >> 16 (a number, ≤ 2⁴⁸), Bucket>
//   Bucket = Map<suffix, pos>            while sparse (≤ SPARSE_MAX entries)
//          | Float64Array(65536)         once dense: pos at [suffix], 0 = absent
//
// Why: ZODB storages hand out oids sequentially, so real indexes are dense runs of oids. A
// dense bucket costs 8 bytes/oid and a lookup is a Map hit on a handful of keys plus an array
// read. Measured on Node 20 with 2M sequential oids: Map<bigint,number> 54 B/entry and
// ~590 ns/lookup, Map<number,number> 29 B/entry and ~170 ns, dense buckets 8 B/entry and
// ~30 ns. Sparse buckets switch to dense at SPARSE_MAX entries, where both cost about the same
// memory (~32 B/entry), so the worst case stays near Map<number,number>.
//
// Invariants:
//   every stored pos > 0 (positions are ≥ 4: the magic comes first), so 0 can mean "absent";
//   count = number of oids;  maxOid = largest oid ever set (-1n when empty).
//
// `.index` file = pickle(pos) pickle((prefix6, bucket)…) pickle(None), separate pickles each
// with its own PROTO/STOP; bucket = n 2-byte suffixes (sorted) then n 6-byte positions.
// Py3 writes bytes (SHORT_BINBYTES/BINBYTES), py2 str opcodes — both accepted. A pre-3.10
// index (one pickled dict) is reported as IndexFormatError so the caller rebuilds.

import { encodePickle, Tuple, Unpickler, asBytes, type PyValue, pyTypeName } from '../pickle/index.js';
import { WcfsError } from '../../errors.js';
import type { Oid } from '../ids.js';

const SUFFIXES = 65536;

// splitOid's result, in module variables: get/set are hot and a returned pair would allocate.
let splitPrefix = 0;
let splitSuffix = 0;

/** oid → its 48-bit prefix and 16-bit suffix (number arithmetic while the oid fits 2^53). */
function splitOid(oid: Oid): void {
  if (oid <= 0x1fffffffffffffn && oid >= 0n) {
    const n = Number(oid);
    splitSuffix = n % SUFFIXES;
    splitPrefix = (n - splitSuffix) / SUFFIXES;
  } else {
    splitPrefix = Number(BigInt.asUintN(64, oid) >> 16n);
    splitSuffix = Number(oid & 0xffffn);
  }
}
const SPARSE_MAX = 16384;

type Bucket = Map<number, number> | Float64Array;

export class FsIndex {
  private readonly buckets = new Map<number, Bucket>();
  private count = 0;
  // largest oid as (prefix, suffix); -1 when empty
  private maxPrefix = -1;
  private maxSuffix = -1;

  get size(): number {
    return this.count;
  }

  /** Largest oid in the index, -1n when empty. */
  get maxOid(): Oid {
    return this.maxPrefix < 0 ? -1n : (BigInt(this.maxPrefix) << 16n) | BigInt(this.maxSuffix);
  }

  get(oid: Oid): number | undefined {
    splitOid(oid);
    const prefix = splitPrefix;
    const suffix = splitSuffix;
    const b = this.buckets.get(prefix);
    if (b === undefined) return undefined;
    if (b instanceof Float64Array) {
      const p = b[suffix]!;
      return p === 0 ? undefined : p;
    }
    return b.get(suffix);
  }

  set(oid: Oid, pos: number): void {
    if (!(pos > 0)) throw new RangeError(`FsIndex.set: invalid position ${pos}`);
    if (oid < 0n || oid > 0xffffffffffffffffn) throw new RangeError(`FsIndex.set: oid ${oid} out of range`);
    splitOid(oid);
    this.setParts(splitPrefix, splitSuffix, pos);
  }

  /** set() with the oid already split into its 48-bit prefix and 16-bit suffix. */
  setParts(prefix: number, suffix: number, pos: number): void {
    if (prefix > this.maxPrefix || (prefix === this.maxPrefix && suffix > this.maxSuffix)) {
      this.maxPrefix = prefix;
      this.maxSuffix = suffix;
    }
    let b = this.buckets.get(prefix);
    if (b === undefined) {
      b = new Map();
      this.buckets.set(prefix, b);
    }
    if (b instanceof Float64Array) {
      if (b[suffix] === 0) this.count++;
      b[suffix] = pos;
      return;
    }
    const had = b.size;
    b.set(suffix, pos);
    if (b.size !== had) {
      this.count++;
      if (b.size > SPARSE_MAX) this.buckets.set(prefix, toDense(b));
    }
  }

  /** Every (oid, pos) in oid order. */
  *entries(): IterableIterator<[Oid, number]> {
    for (const [prefix, suffixes, positions] of this.sortedBuckets()) {
      const base = BigInt(prefix) << 16n;
      for (let i = 0; i < suffixes.length; i++) yield [base | BigInt(suffixes[i]!), positions[i]!];
    }
  }

  /** Buckets in prefix order as (prefix, sorted suffixes, positions) — the on-disk shape. */
  *sortedBuckets(): IterableIterator<[number, Uint16Array, Float64Array]> {
    const prefixes = Float64Array.from(this.buckets.keys()).sort();
    for (const prefix of prefixes) {
      const b = this.buckets.get(prefix)!;
      let suffixes: Uint16Array, positions: Float64Array;
      if (b instanceof Float64Array) {
        let n = 0;
        for (let s = 0; s < SUFFIXES; s++) if (b[s] !== 0) n++;
        suffixes = new Uint16Array(n);
        positions = new Float64Array(n);
        for (let s = 0, i = 0; s < SUFFIXES; s++) {
          if (b[s] !== 0) {
            suffixes[i] = s;
            positions[i++] = b[s]!;
          }
        }
      } else {
        suffixes = Uint16Array.from(b.keys()).sort();
        positions = new Float64Array(suffixes.length);
        for (let i = 0; i < suffixes.length; i++) positions[i] = b.get(suffixes[i]!)!;
      }
      if (suffixes.length > 0) yield [prefix, suffixes, positions];
    }
  }

  /** Same oid → pos content? (tests, verification) */
  equals(other: FsIndex): boolean {
    if (this.count !== other.count) return false;
    for (const [oid, pos] of this.entries()) if (other.get(oid) !== pos) return false;
    return true;
  }
}

function toDense(m: Map<number, number>): Float64Array {
  const a = new Float64Array(SUFFIXES);
  for (const [s, p] of m) a[s] = p;
  return a;
}

// ---- .index file codec ----

/** The .index file is not in the format we understand (or is garbage); the caller rebuilds. */
export class IndexFormatError extends WcfsError {
  constructor(
    readonly file: string,
    detail: string,
  ) {
    super('WCFS_EINDEX', `${file}: ${detail}`);
  }
}

export interface IndexFile {
  /** File position the index covers: end of the last transaction included. */
  pos: number;
  index: FsIndex;
}

/**
 * Decode a `.index` file. Every position must lie in [4, pos). Throws IndexFormatError on
 * anything unexpected, including a pickle error and the pre-3.10 dict format.
 */
export function decodeIndexFile(buf: Uint8Array, file: string): IndexFile {
  let at = 0;
  const next = (): PyValue => {
    if (at >= buf.length) throw new IndexFormatError(file, `@${at}: unexpected end of file (no None terminator)`);
    // Each entry was written by a separate pickle.dump: a fresh memo per pickle.
    const u = new Unpickler(buf, at, {
      persistentLoad: () => {
        throw new Error('persistent id in .index');
      },
    });
    try {
      const v = u.load();
      at = u.pos;
      return v;
    } catch (e) {
      throw new IndexFormatError(file, `@${at}: ${(e as Error).message}`);
    }
  };

  const first = next();
  if (typeof first !== 'bigint') {
    throw new IndexFormatError(file, `not a ZODB ≥ 3.10 index: first pickle is ${pyTypeName(first)}, want the int position`);
  }
  if (first < 4n || first > BigInt(2 ** 48)) throw new IndexFormatError(file, `invalid position ${first}`);
  const pos = Number(first);

  const index = new FsIndex();
  let lastPrefix = -1;
  for (;;) {
    const entryAt = at;
    const v = next();
    if (v === null) break;
    const items = v instanceof Tuple ? v.items : undefined;
    const prefixB = items?.length === 2 ? asBytes(items[0]!) : undefined;
    const data = items?.length === 2 ? asBytes(items[1]!) : undefined;
    if (prefixB === undefined || data === undefined || prefixB.length !== 6) {
      throw new IndexFormatError(file, `@${entryAt}: want (6-byte prefix, bucket bytes), got ${pyTypeName(v)}`);
    }
    if (data.length % 8 !== 0 || data.length === 0) {
      throw new IndexFormatError(file, `@${entryAt}: bucket length ${data.length} not a positive multiple of 8`);
    }
    const prefixN = u48(prefixB, 0);
    if (prefixN <= lastPrefix) throw new IndexFormatError(file, `@${entryAt}: prefixes not in increasing order`);
    lastPrefix = prefixN;
    const n = data.length / 8;
    let lastSuffix = -1;
    for (let i = 0; i < n; i++) {
      const s = (data[2 * i]! << 8) | data[2 * i + 1]!;
      const o = 2 * n + 6 * i;
      const p = u48(data, o);
      if (s <= lastSuffix) throw new IndexFormatError(file, `@${entryAt}: oid suffixes not in increasing order`);
      lastSuffix = s;
      if (p < 4 || p >= pos) throw new IndexFormatError(file, `@${entryAt}: position ${p} outside [4, ${pos})`);
      index.setParts(prefixN, s, p);
    }
  }
  if (at !== buf.length) throw new IndexFormatError(file, `@${at}: ${buf.length - at} trailing bytes after the None terminator`);
  return { pos, index };
}

/** Encode a `.index` file the way ZODB/py3 writes it (protocol 3 pickles, bytes buckets). */
export function encodeIndexFile(index: FsIndex, pos: number): Uint8Array {
  const parts: Uint8Array[] = [];
  parts.push(encodePickle(BigInt(pos), 3));
  for (const [prefix, suffixes, positions] of index.sortedBuckets()) {
    const pb = new Uint8Array(6);
    putU48(pb, 0, prefix);
    const n = suffixes.length;
    const data = new Uint8Array(8 * n);
    for (let i = 0; i < n; i++) {
      data[2 * i] = suffixes[i]! >>> 8;
      data[2 * i + 1] = suffixes[i]! & 0xff;
      putU48(data, 2 * n + 6 * i, positions[i]!);
    }
    parts.push(encodePickle(new Tuple([pb, data]), 3));
  }
  parts.push(encodePickle(null, 3));
  return Buffer.concat(parts);
}

function u48(b: Uint8Array, o: number): number {
  return (b[o]! * 256 + b[o + 1]!) * 4294967296 + (((b[o + 2]! << 24) | (b[o + 3]! << 16) | (b[o + 4]! << 8) | b[o + 5]!) >>> 0);
}

function putU48(b: Uint8Array, o: number, v: number): void {
  const hi = Math.floor(v / 2 ** 32);
  const lo = v >>> 0;
  b[o] = (hi >>> 8) & 0xff;
  b[o + 1] = hi & 0xff;
  b[o + 2] = (lo >>> 24) & 0xff;
  b[o + 3] = (lo >>> 16) & 0xff;
  b[o + 4] = (lo >>> 8) & 0xff;
  b[o + 5] = lo & 0xff;
}
