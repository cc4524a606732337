// ZEO5 message codec (zodb.md §4.3-4.4): a frame's payload ↔ the 4-tuple
// (msgid, flags, method, args), in both encodings a server may choose: 'pickle' (Z5: one
// pickle, protocol 3, zodbpickle "fast" mode) and 'msgpack' (M5). Pure, no I/O.
//
// Owns: the neutral value model ZValue (what decoding returns and encoding takes), the
// pickler ZEO's peers write, the msgpack mapping, and the id helpers (8-byte BE ↔ bigint).
//
// ZValue mapping (the same for both encodings):
//   int        → number when a safe integer (|v| ≤ 2^53−1), else bigint; both encode as ints
//   float      → ZFloat (when encoding, a number that is not a safe integer is a float too)
//   bool, None → boolean, null
//   bytes      → Uint8Array        text → string
//   tuple      → ZTuple            list → ZValue[]      dict → ZDict (entries in order)
//
// Invariants:
//   - encode(pickle) writes exactly what ZEO's Python peers write (CPython's C pickler,
//     protocol 3, no memo): BININT1/BININT2/BININT/LONG1/LONG4, BINUNICODE, SHORT_BINBYTES/
//     BINBYTES, EMPTY_TUPLE/TUPLE1-3/MARK…TUPLE, EMPTY_LIST + APPEND (one item) or
//     MARK…APPENDS per 1000, EMPTY_DICT + SETITEM (one item) or MARK…SETITEMS per 1000;
//     checked byte for byte against every client frame of the recorded sessions;
//   - encode(msgpack) = Python's packb(use_bin_type=True): minimal ints, str8 for text,
//     bin for bytes, arrays for tuples and lists;
//   - decode never executes anything: a pickle holding a class reference, a persistent id
//     or an object is a protocol violation (ZEO's own unpickler allows none we need);
//   - every malformed payload is a ZeoProtoError (WCFS_EZEOPROTO), never a bare exception;
//     a value that cannot be encoded (an int beyond 64 bits for msgpack, an id out of range)
//     is a BadArgumentError (WCFS_EBADARG);
//   - decoded bytes may be views of the payload: do not reuse the payload buffer while they
//     are alive.
//
// Lossy corners (none occur in ZEO5's methods; documented, not hidden):
//   - msgpack has no tuple/list distinction: every array decodes to a ZTuple (as ZEO does);
//   - msgpack map keys must be text (our decoder library gives objects: integer-like text
//     keys would be reordered); a non-text key is refused both ways (ZeoProtoError);
//   - msgpack floats with a safe integral value decode as ints (the library returns numbers).

import { decode as mpDecode, encode as mpEncode } from '@msgpack/msgpack';
import { BadArgumentError } from '../../errors.js';
import { p64, u64be } from '../ids.js';
import { Unpickler } from '../pickle/decode.js';
import { ByteSink, writeBytes, writeFloat, writeInt, writeText } from '../pickle/encode.js';
import { OP } from '../pickle/opcodes.js';
import { ByteStr, PyDict, Tuple, pyTypeName, type PyValue } from '../pickle/types.js';
import { ZeoProtoError } from './errors.js';
import type { ZeoEncoding } from './frame.js';

export class ZTuple {
  constructor(readonly items: ZValue[]) {}
}

/** A dict: entries in order (keys compare by value only when the caller looks them up). */
export class ZDict {
  constructor(readonly entries: Array<[ZValue, ZValue]> = []) {}
  /** Value of the first text key `k`, or undefined. */
  get(k: string): ZValue | undefined {
    for (const [kk, v] of this.entries) if (kk === k) return v;
    return undefined;
  }
}

/** A Python float (kept apart from ints so that 1.0 re-encodes as a float). */
export class ZFloat {
  constructor(readonly value: number) {}
}

export type ZValue = null | boolean | number | bigint | string | Uint8Array | ZFloat | ZTuple | ZValue[] | ZDict;

/**
 * One message. Calls: msgid > 0 chosen by the caller (Python uses (oid, tid) tuples for
 * loadBefore), flags false, args a ZTuple. Async calls: msgid 0, flags true. Replies:
 * method ".reply", flags 0 (result in args) or 2 (args = (exception class name, args or dict)).
 * flags is kept as sent (Python clients send bools, servers ints) so frames re-encode exactly.
 */
export interface ZeoMessage {
  msgid: ZValue;
  flags: boolean | number;
  method: string;
  args: ZValue;
}

/** Reply flag: the args are an exception (class name, args). */
export const FLAG_EXCEPTION = 2;
export const REPLY = '.reply';

// ---- ids ----

/** bigint → the 8-byte big-endian form ZEO carries oids and tids in. */
export function idBytes(id: bigint): Uint8Array {
  if (id < 0n || id > 0xffffffffffffffffn) throw new BadArgumentError(`zeo: id ${id} out of 64-bit range`);
  return p64(id);
}

/** 8-byte big-endian → bigint; anything else (wrong type, wrong length) is a ZeoProtoError. */
export function bytesId(v: ZValue | undefined, what = 'id'): bigint {
  if (!(v instanceof Uint8Array) || v.length !== 8) throw new ZeoProtoError(`${what}: want 8 bytes, got ${describe(v)}`);
  return u64be(v);
}

// ---- messages ----

export function encodeMessage(enc: ZeoEncoding, m: ZeoMessage): Uint8Array {
  const t = new ZTuple([m.msgid, m.flags, m.method, m.args]);
  return enc === 'pickle' ? encodeZeoPickle(t) : encodeZeoMsgpack(t);
}

export function decodeMessage(enc: ZeoEncoding, payload: Uint8Array): ZeoMessage {
  const v = enc === 'pickle' ? decodeZeoPickle(payload) : decodeZeoMsgpack(payload);
  if (!(v instanceof ZTuple) || v.items.length !== 4) throw new ZeoProtoError(`message: want a 4-tuple (msgid, flags, method, args), got ${describe(v)}`);
  const [msgid, flags, method, args] = v.items as [ZValue, ZValue, ZValue, ZValue];
  if (typeof flags !== 'boolean' && !(typeof flags === 'number' && Number.isInteger(flags)))
    throw new ZeoProtoError(`message: flags must be a bool or an int, got ${describe(flags)}`);
  if (typeof method !== 'string') throw new ZeoProtoError(`message: method must be text, got ${describe(method)}`);
  return { msgid, flags, method, args };
}

/** Short description of a value's type, for error messages. */
export function describe(v: ZValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'None';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'number' || typeof v === 'bigint') return 'int';
  if (typeof v === 'string') return 'str';
  if (v instanceof Uint8Array) return `bytes[${v.length}]`;
  if (v instanceof ZFloat) return 'float';
  if (v instanceof ZTuple) return `tuple[${v.items.length}]`;
  if (Array.isArray(v)) return `list[${v.length}]`;
  return 'dict';
}

// ---- pickle ----

/** Normalize a decoded int: number when safe, else bigint. */
function normInt(v: bigint): number | bigint {
  return v >= -0x1fffffffffffffn && v <= 0x1fffffffffffffn ? Number(v) : v;
}

function fromPy(v: PyValue): ZValue {
  if (v === null || typeof v === 'boolean' || typeof v === 'string' || v instanceof Uint8Array) return v;
  if (typeof v === 'bigint') return normInt(v);
  if (typeof v === 'number') return new ZFloat(v);
  if (v instanceof ByteStr) return v.bytes; // a py2 peer's str
  if (v instanceof Tuple) return new ZTuple(v.items.map(fromPy));
  if (Array.isArray(v)) return v.map(fromPy);
  if (v instanceof PyDict) return new ZDict(v.entries.map(([k, x]) => [fromPy(k), fromPy(x)]));
  throw new ZeoProtoError(`pickle: ${pyTypeName(v)} is not allowed in a ZEO message`);
}

/** One pickle → ZValue; the payload must be exactly one pickle. */
export function decodeZeoPickle(payload: Uint8Array): ZValue {
  let v: PyValue;
  const u = new Unpickler(payload, 0, {
    persistentLoad: () => {
      throw new ZeoProtoError('pickle: persistent id in a ZEO message');
    },
  });
  try {
    v = u.load();
  } catch (e) {
    if (e instanceof ZeoProtoError) throw e;
    throw new ZeoProtoError(`undecodable pickle: ${(e as Error).message}`, { cause: e });
  }
  if (!u.atEnd) throw new ZeoProtoError(`pickle: ${payload.length - u.pos} bytes after STOP`);
  return fromPy(v);
}

const BATCH = 1000; // CPython pickle's BATCHSIZE

/** ZValue → one protocol-3 pickle, as CPython's pickler writes it without a memo. */
export function encodeZeoPickle(v: ZValue): Uint8Array {
  const o = new ByteSink();
  o.u8(OP.PROTO);
  o.u8(3);
  savePickle(o, v);
  o.u8(OP.STOP);
  return o.result();
}

function savePickle(o: ByteSink, v: ZValue): void {
  if (v === null) return o.u8(OP.NONE);
  if (v === true) return o.u8(OP.NEWTRUE);
  if (v === false) return o.u8(OP.NEWFALSE);
  if (typeof v === 'bigint') return writeInt(o, v);
  if (typeof v === 'number') return Number.isSafeInteger(v) ? writeInt(o, BigInt(v)) : writeFloat(o, v);
  if (v instanceof ZFloat) return writeFloat(o, v.value);
  if (typeof v === 'string') return writeText(o, v);
  if (v instanceof Uint8Array) return writeBytes(o, v);
  if (v instanceof ZTuple) {
    const it = v.items;
    if (it.length === 0) return o.u8(OP.EMPTY_TUPLE);
    if (it.length <= 3) {
      for (const x of it) savePickle(o, x);
      return o.u8(it.length === 1 ? OP.TUPLE1 : it.length === 2 ? OP.TUPLE2 : OP.TUPLE3);
    }
    o.u8(OP.MARK);
    for (const x of it) savePickle(o, x);
    return o.u8(OP.TUPLE);
  }
  if (Array.isArray(v)) {
    o.u8(OP.EMPTY_LIST);
    if (v.length === 1) {
      savePickle(o, v[0]!);
      return o.u8(OP.APPEND);
    }
    for (let i = 0; i < v.length; i += BATCH) {
      o.u8(OP.MARK);
      for (const x of v.slice(i, i + BATCH)) savePickle(o, x);
      o.u8(OP.APPENDS);
    }
    return;
  }
  const e = v.entries;
  o.u8(OP.EMPTY_DICT);
  if (e.length === 1) {
    savePickle(o, e[0]![0]);
    savePickle(o, e[0]![1]);
    return o.u8(OP.SETITEM);
  }
  for (let i = 0; i < e.length; i += BATCH) {
    o.u8(OP.MARK);
    for (const [k, x] of e.slice(i, i + BATCH)) {
      savePickle(o, k);
      savePickle(o, x);
    }
    o.u8(OP.SETITEMS);
  }
}

// ---- msgpack ----

function fromMp(v: unknown): ZValue {
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return v;
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : new ZFloat(v); // int64s come as bigints
  if (typeof v === 'bigint') return normInt(v);
  if (v instanceof Uint8Array) return v;
  if (Array.isArray(v)) return new ZTuple(v.map(fromMp));
  if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    return new ZDict(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, fromMp(x)]));
  }
  throw new ZeoProtoError(`msgpack: unsupported value ${typeof v}${v === undefined ? '' : ` ${Object.prototype.toString.call(v)}`}`);
}

/** Map keys must be text: the library would turn an int key into text, silently. */
function textKey(k: unknown): string {
  if (typeof k !== 'string') throw new ZeoProtoError(`msgpack: dict key must be text, got ${typeof k}`);
  return k;
}

/** One msgpack object → ZValue; the payload must hold exactly one object. */
export function decodeZeoMsgpack(payload: Uint8Array): ZValue {
  let v: unknown;
  try {
    v = mpDecode(payload, { useBigInt64: true, mapKeyConverter: textKey });
  } catch (e) {
    throw new ZeoProtoError(`undecodable msgpack: ${(e as Error).message}`, { cause: e });
  }
  return fromMp(v);
}

/** ZValue → what @msgpack/msgpack encodes as Python's packb would. */
function toMp(v: ZValue): unknown {
  if (v === null || typeof v === 'boolean' || typeof v === 'string' || v instanceof Uint8Array) return v;
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) return v; // a float
    // with useBigInt64 the library writes numbers beyond 32 bits as floats: make them int64s
    return v >= -0x80000000 && v < 0x100000000 ? v : BigInt(v);
  }
  if (typeof v === 'bigint') {
    if (v < -(2n ** 63n) || v >= 2n ** 64n) throw new BadArgumentError(`zeo: int ${v} does not fit msgpack's 64 bits`);
    return v >= -0x80000000n && v < 0x100000000n ? Number(v) : v;
  }
  if (v instanceof ZFloat) return v.value;
  if (v instanceof ZTuple) return v.items.map(toMp);
  if (Array.isArray(v)) return v.map(toMp);
  return Object.fromEntries(
    v.entries.map(([k, x]) => {
      if (typeof k !== 'string') throw new ZeoProtoError(`msgpack: dict key must be text, got ${describe(k)}`);
      return [k, toMp(x)];
    }),
  );
}

export function encodeZeoMsgpack(v: ZValue): Uint8Array {
  return mpEncode(toMp(v), { useBigInt64: true });
}
