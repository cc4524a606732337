// Pickle encoder: PyValue → bytes, protocol 2 or 3, the subset ZODB/py3 writes for records
// (zodb.md §3.7). Pure, no I/O.
//
// Owns: opcode choice per value and memoization of GLOBALs (the only values we memoize: a
// bucket's 60 references to the same class then cost a BINGET each, as with ZODB/py).
//
// Invariants:
//   - output is readable by Python's pickle.loads / zodbpickle and by our decoder;
//   - protocol 3 writes py3 bytes as BINBYTES; protocol 2 has no bytes type, so bytes are
//     written as py2 str (what ZODB/py2 did) — ByteStr is always written as py2 str;
//   - one Pickler = one memo across dump() calls, so a record's class and state pickles
//     share a memo exactly as ZODB's do (decoders that share the memo and ones that do not
//     both read it correctly: the state pickle only BINGETs slots it BINPUT itself).

import { OP } from './opcodes.js';
import { ByteStr, Global, PersistentRef, PyDict, PyObject, Tuple, type PyValue } from './types.js';

/** A growable byte buffer with the little/big-endian writes pickles need (also the ZEO codec's). */
export class ByteSink {
  private buf = new Uint8Array(256);
  private dv = new DataView(this.buf.buffer);
  len = 0;

  private grow(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const nb = new Uint8Array(cap);
    nb.set(this.buf.subarray(0, this.len));
    this.buf = nb;
    this.dv = new DataView(nb.buffer);
  }
  u8(v: number): void {
    this.grow(1);
    this.buf[this.len++] = v;
  }
  u16le(v: number): void {
    this.grow(2);
    this.dv.setUint16(this.len, v, true);
    this.len += 2;
  }
  i32le(v: number): void {
    this.grow(4);
    this.dv.setInt32(this.len, v, true);
    this.len += 4;
  }
  u32le(v: number): void {
    this.grow(4);
    this.dv.setUint32(this.len, v, true);
    this.len += 4;
  }
  f64be(v: number): void {
    this.grow(8);
    this.dv.setFloat64(this.len, v, false);
    this.len += 8;
  }
  bytes(b: Uint8Array): void {
    this.grow(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  text(s: string): void {
    this.bytes(Buffer.from(s, 'latin1'));
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

const utf8 = new TextEncoder();

// ---- atoms: the opcodes CPython's pickler writes for them (protocol ≥ 2; bytes: ≥ 3) ----
// Shared by the record Pickler below and ZEO's message pickler (src/zodb/zeo/codec.ts).

/** BININT1 / BININT2 / BININT, else LONG1 / LONG4. */
export function writeInt(o: ByteSink, v: bigint): void {
  if (v >= 0n && v <= 0xffn) {
    o.u8(OP.BININT1);
    o.u8(Number(v));
  } else if (v >= 0n && v <= 0xffffn) {
    o.u8(OP.BININT2);
    o.u16le(Number(v));
  } else if (v >= -0x80000000n && v <= 0x7fffffffn) {
    o.u8(OP.BININT);
    o.i32le(Number(v));
  } else {
    const b = encodeLong(v);
    if (b.length < 256) {
      o.u8(OP.LONG1);
      o.u8(b.length);
    } else {
      o.u8(OP.LONG4);
      o.i32le(b.length);
    }
    o.bytes(b);
  }
}

/** BINFLOAT. */
export function writeFloat(o: ByteSink, f: number): void {
  o.u8(OP.BINFLOAT);
  o.f64be(f);
}

/** BINUNICODE (UTF-8). */
export function writeText(o: ByteSink, s: string): void {
  const b = utf8.encode(s);
  o.u8(OP.BINUNICODE);
  o.u32le(b.length);
  o.bytes(b);
}

/** SHORT_BINBYTES / BINBYTES (protocol 3). */
export function writeBytes(o: ByteSink, b: Uint8Array): void {
  if (b.length < 256) {
    o.u8(OP.SHORT_BINBYTES);
    o.u8(b.length);
  } else {
    o.u8(OP.BINBYTES);
    o.u32le(b.length);
  }
  o.bytes(b);
}

export class Pickler {
  private readonly out = new ByteSink();
  private readonly memo = new Map<string, number>();

  constructor(readonly protocol: 2 | 3 = 3) {}

  /** Append one complete pickle (PROTO … STOP) of `v`. */
  dump(v: PyValue): this {
    this.out.u8(OP.PROTO);
    this.out.u8(this.protocol);
    this.save(v);
    this.out.u8(OP.STOP);
    return this;
  }

  result(): Uint8Array {
    return this.out.result();
  }

  private save(v: PyValue): void {
    const o = this.out;
    if (v === null) return o.u8(OP.NONE);
    if (v === true) return o.u8(OP.NEWTRUE);
    if (v === false) return o.u8(OP.NEWFALSE);
    if (typeof v === 'bigint') return writeInt(o, v);
    if (typeof v === 'number') return writeFloat(o, v);
    if (typeof v === 'string') return writeText(o, v);
    if (v instanceof Uint8Array) return this.protocol >= 3 ? writeBytes(o, v) : this.saveStr(v);
    if (v instanceof ByteStr) return this.saveStr(v.bytes);
    if (v instanceof Tuple) return this.saveTuple(v.items);
    if (Array.isArray(v)) {
      o.u8(OP.EMPTY_LIST);
      if (v.length === 0) return;
      o.u8(OP.MARK);
      for (const it of v) this.save(it);
      return o.u8(OP.APPENDS);
    }
    if (v instanceof PyDict) {
      o.u8(OP.EMPTY_DICT);
      if (v.size === 0) return;
      o.u8(OP.MARK);
      for (const [k, val] of v.entries) {
        this.save(k);
        this.save(val);
      }
      return o.u8(OP.SETITEMS);
    }
    if (v instanceof Global) return this.saveGlobal(v);
    if (v instanceof PersistentRef) return this.saveRef(v);
    if (v instanceof PyObject) {
      this.save(v.callable);
      this.save(v.args);
      o.u8(v.kind === 'newobj' ? OP.NEWOBJ : OP.REDUCE);
      if (v.state !== undefined) {
        this.save(v.state);
        o.u8(OP.BUILD);
      }
      return;
    }
    throw new TypeError(`pickle: cannot encode ${typeof v}`);
  }

  private saveStr(b: Uint8Array): void {
    const o = this.out;
    if (b.length < 256) {
      o.u8(OP.SHORT_BINSTRING);
      o.u8(b.length);
    } else {
      o.u8(OP.BINSTRING);
      o.i32le(b.length);
    }
    o.bytes(b);
  }

  private saveTuple(items: PyValue[]): void {
    const o = this.out;
    if (items.length === 0) return o.u8(OP.EMPTY_TUPLE);
    if (items.length <= 3) {
      for (const it of items) this.save(it);
      return o.u8(items.length === 1 ? OP.TUPLE1 : items.length === 2 ? OP.TUPLE2 : OP.TUPLE3);
    }
    o.u8(OP.MARK);
    for (const it of items) this.save(it);
    o.u8(OP.TUPLE);
  }

  private saveGlobal(g: Global): void {
    const o = this.out;
    const key = `${g.module}\n${g.name}`;
    const slot = this.memo.get(key);
    if (slot !== undefined) {
      if (slot < 256) {
        o.u8(OP.BINGET);
        o.u8(slot);
      } else {
        o.u8(OP.LONG_BINGET);
        o.u32le(slot);
      }
      return;
    }
    o.u8(OP.GLOBAL);
    o.text(`${g.module}\n${g.name}\n`);
    const n = this.memo.size;
    this.memo.set(key, n);
    if (n < 256) {
      o.u8(OP.BINPUT);
      o.u8(n);
    } else {
      o.u8(OP.LONG_BINPUT);
      o.u32le(n);
    }
  }

  /** ZODB reference: (oid, class) + BINPERSID, or bare oid when the class is unknown. */
  private saveRef(r: PersistentRef): void {
    if (r.kind !== 'strong') throw new TypeError('pickle: only strong persistent references can be encoded');
    const oid = new Uint8Array(8);
    new DataView(oid.buffer).setBigUint64(0, r.oid, false);
    if (r.klass === null) this.save(oid);
    else this.saveTuple([oid, r.klass]);
    this.out.u8(OP.BINPERSID);
  }
}

/**
 * bigint → minimal two's-complement little-endian bytes (LONG1/LONG4 payload). Linear in the
 * size: n = the fewest bytes with −2^(8n−1) ≤ v < 2^(8n−1), then one hex conversion.
 */
export function encodeLong(v: bigint): Uint8Array {
  if (v === 0n) return new Uint8Array(0);
  const mag = v < 0n ? -v - 1n : v; // both signs: need mag < 2^(8n−1)
  const hex = mag.toString(16);
  const bits = mag === 0n ? 0 : (hex.length - 1) * 4 + (32 - Math.clz32(parseInt(hex[0]!, 16)));
  const n = Math.ceil((bits + 1) / 8);
  const u = v < 0n ? v + (1n << BigInt(8 * n)) : v;
  return Uint8Array.from(Buffer.from(u.toString(16).padStart(2 * n, '0'), 'hex').reverse());
}

/** One pickle of `v`. */
export function encodePickle(v: PyValue, protocol: 2 | 3 = 3): Uint8Array {
  return new Pickler(protocol).dump(v).result();
}
