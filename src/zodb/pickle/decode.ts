// Pickle decoder: bytes → neutral PyValue (types.ts). Pure, no I/O.
//
// Owns: the pickle virtual machine (stack, mark stack, memo) for protocols 0-5, and ZODB's
// interpretation of persistent ids (zodb.md §3.2).
//
// Invariants:
//   - nothing from the pickle is ever executed: GLOBAL → Global, REDUCE/NEWOBJ/INST/OBJ →
//     PyObject, BUILD attaches state to a PyObject;
//   - every failure is a PickleError carrying the offset of the offending opcode;
//   - byte payloads (BINBYTES, BINSTRING, …) are zero-copy subarrays of the input: the caller
//     must not reuse the input buffer while decoded values are alive;
//   - one Unpickler = one memo: ZODB records are two pickles sharing a memo (zodb.md §3.1),
//     so load() may be called repeatedly and memo slots persist across calls.

import { PickleError } from '../errors.js';
import { OP, OPNAME } from './opcodes.js';
import { ByteStr, Global, PersistentRef, PyDict, PyObject, Tuple, asBytes, asText, type PyValue } from './types.js';

/** Marker objects on the stack (MARK). Never escapes the decoder. */
const MARK = Symbol('mark');
type Slot = PyValue | typeof MARK;

export interface UnpicklerOptions {
  /**
   * Resolve a persistent id to a value. Default: ZODB's reference forms → PersistentRef;
   * anything else is an error.
   */
  persistentLoad?: (pid: PyValue, offset: number) => PyValue;
}

const utf8 = new TextDecoder('utf-8');

export class Unpickler {
  /** Position of the next opcode to read. */
  pos: number;
  private readonly buf: Uint8Array;
  private readonly dv: DataView;
  private readonly memo = new Map<number, PyValue>();
  private readonly persistentLoad: (pid: PyValue, offset: number) => PyValue;

  constructor(buf: Uint8Array, start = 0, opts: UnpicklerOptions = {}) {
    this.buf = buf;
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = start;
    this.persistentLoad = opts.persistentLoad ?? zodbPersistentLoad;
  }

  /** True when every byte has been consumed. */
  get atEnd(): boolean {
    return this.pos >= this.buf.length;
  }

  /** Run the machine up to the next STOP and return the value it leaves. */
  load(): PyValue {
    const stack: Slot[] = [];
    const marks: number[] = [];
    const buf = this.buf;

    for (;;) {
      const opPos = this.pos;
      if (opPos >= buf.length) throw new PickleError(opPos, 'unexpected end of data (no STOP)');
      const op = buf[this.pos++]!;
      const fail = (detail: string): never => {
        throw new PickleError(opPos, `${OPNAME[op] ?? `opcode 0x${op.toString(16)}`}: ${detail}`);
      };
      const pop = (): PyValue => {
        const v = stack.pop();
        if (v === undefined) fail('stack underflow');
        if (v === MARK) fail('unexpected MARK on stack');
        return v as PyValue;
      };
      const top = (): PyValue => {
        const v = stack[stack.length - 1];
        if (v === undefined) fail('stack underflow');
        if (v === MARK) fail('unexpected MARK on stack');
        return v as PyValue;
      };
      const popMark = (): PyValue[] => {
        const m = marks.pop();
        if (m === undefined) fail('no MARK');
        const items: Slot[] = stack.splice(m!);
        if (items[0] !== MARK) fail('mark stack inconsistent');
        items.shift(); // the MARK itself
        for (const it of items) if (it === MARK) fail('nested MARK');
        return items as PyValue[];
      };
      const memoGet = (k: number): PyValue => {
        const v = this.memo.get(k);
        if (v === undefined) fail(`memo key ${k} has never been stored into`);
        return v as PyValue;
      };

      switch (op) {
        case OP.PROTO: {
          const v = this.u8(opPos);
          if (v > 5) fail(`unsupported protocol ${v}`);
          break;
        }
        case OP.FRAME:
          this.take(8, opPos); // framing is advisory: the frame's contents follow inline
          break;
        case OP.STOP:
          // Like Python: the value on top is the result; leftovers are tolerated.
          return pop();
        case OP.MARK:
          marks.push(stack.length);
          stack.push(MARK);
          break;
        case OP.POP:
          if (stack.length > 0 && stack[stack.length - 1] === MARK) {
            stack.pop();
            marks.pop();
          } else pop();
          break;
        case OP.POP_MARK:
          popMark();
          break;
        case OP.DUP:
          stack.push(top());
          break;

        // ---- ints ----
        case OP.INT: {
          const s = this.line(opPos);
          if (s === '01') stack.push(true);
          else if (s === '00') stack.push(false);
          else stack.push(parseIntText(s, opPos));
          break;
        }
        case OP.BININT:
          stack.push(BigInt(this.dv.getInt32(this.take(4, opPos), true)));
          break;
        case OP.BININT1:
          stack.push(BigInt(this.u8(opPos)));
          break;
        case OP.BININT2:
          stack.push(BigInt(this.dv.getUint16(this.take(2, opPos), true)));
          break;
        case OP.LONG: {
          let s = this.line(opPos);
          if (s.endsWith('L')) s = s.slice(0, -1);
          stack.push(parseIntText(s, opPos));
          break;
        }
        case OP.LONG1: {
          const n = this.u8(opPos);
          stack.push(decodeLong(buf, this.take(n, opPos), n));
          break;
        }
        case OP.LONG4: {
          const n = this.dv.getInt32(this.take(4, opPos), true);
          if (n < 0) fail('negative length');
          stack.push(decodeLong(buf, this.take(n, opPos), n));
          break;
        }

        // ---- atoms ----
        case OP.NONE:
          stack.push(null);
          break;
        case OP.NEWTRUE:
          stack.push(true);
          break;
        case OP.NEWFALSE:
          stack.push(false);
          break;
        case OP.FLOAT: {
          const s = this.line(opPos);
          const f = Number(s);
          if (s.trim() === '' || (Number.isNaN(f) && !/nan/i.test(s))) fail(`bad float ${JSON.stringify(s)}`);
          stack.push(f);
          break;
        }
        case OP.BINFLOAT:
          stack.push(this.dv.getFloat64(this.take(8, opPos), false));
          break;

        // ---- strings ----
        case OP.STRING:
          stack.push(new ByteStr(decodeStringRepr(this.line(opPos), opPos)));
          break;
        case OP.BINSTRING: {
          const n = this.dv.getInt32(this.take(4, opPos), true);
          if (n < 0) fail('negative length');
          stack.push(new ByteStr(this.bytes(n, opPos)));
          break;
        }
        case OP.SHORT_BINSTRING:
          stack.push(new ByteStr(this.bytes(this.u8(opPos), opPos)));
          break;
        case OP.BINBYTES:
          stack.push(this.bytes(this.dv.getUint32(this.take(4, opPos), true), opPos));
          break;
        case OP.SHORT_BINBYTES:
          stack.push(this.bytes(this.u8(opPos), opPos));
          break;
        case OP.BINBYTES8:
          stack.push(this.bytes(this.u64len(opPos), opPos));
          break;
        case OP.BYTEARRAY8:
          stack.push(this.bytes(this.u64len(opPos), opPos).slice());
          break;
        case OP.UNICODE:
          stack.push(decodeRawUnicodeEscape(this.lineBytes(opPos), opPos));
          break;
        case OP.BINUNICODE:
          stack.push(utf8.decode(this.bytes(this.dv.getUint32(this.take(4, opPos), true), opPos)));
          break;
        case OP.SHORT_BINUNICODE:
          stack.push(utf8.decode(this.bytes(this.u8(opPos), opPos)));
          break;
        case OP.BINUNICODE8:
          stack.push(utf8.decode(this.bytes(this.u64len(opPos), opPos)));
          break;

        // ---- containers ----
        case OP.EMPTY_TUPLE:
          stack.push(new Tuple([]));
          break;
        case OP.TUPLE:
          stack.push(new Tuple(popMark()));
          break;
        case OP.TUPLE1: {
          const a = pop();
          stack.push(new Tuple([a]));
          break;
        }
        case OP.TUPLE2: {
          const b = pop();
          const a = pop();
          stack.push(new Tuple([a, b]));
          break;
        }
        case OP.TUPLE3: {
          const c = pop();
          const b = pop();
          const a = pop();
          stack.push(new Tuple([a, b, c]));
          break;
        }
        case OP.EMPTY_LIST:
          stack.push([]);
          break;
        case OP.LIST:
          stack.push(popMark());
          break;
        case OP.APPEND: {
          const v = pop();
          const l = top();
          if (!Array.isArray(l)) fail('APPEND to non-list');
          (l as PyValue[]).push(v);
          break;
        }
        case OP.APPENDS: {
          const items = popMark();
          const l = top();
          if (!Array.isArray(l)) fail('APPENDS to non-list');
          for (const it of items) (l as PyValue[]).push(it);
          break;
        }
        case OP.EMPTY_DICT:
          stack.push(new PyDict());
          break;
        case OP.DICT: {
          const items = popMark();
          if (items.length % 2) fail('odd number of items');
          const d = new PyDict();
          for (let i = 0; i < items.length; i += 2) d.set(items[i]!, items[i + 1]!);
          stack.push(d);
          break;
        }
        case OP.SETITEM: {
          const v = pop();
          const k = pop();
          const d = top();
          if (!(d instanceof PyDict)) fail('SETITEM on non-dict');
          (d as PyDict).set(k, v);
          break;
        }
        case OP.SETITEMS: {
          const items = popMark();
          if (items.length % 2) fail('odd number of items');
          const d = top();
          if (!(d instanceof PyDict)) fail('SETITEMS on non-dict');
          for (let i = 0; i < items.length; i += 2) (d as PyDict).set(items[i]!, items[i + 1]!);
          break;
        }
        case OP.EMPTY_SET:
          stack.push(new PyObject('reduce', new Global('builtins', 'set'), new Tuple([[]])));
          break;
        case OP.ADDITEMS: {
          const items = popMark();
          const s = top();
          const l = s instanceof PyObject && s.args instanceof Tuple ? s.args.items[0] : undefined;
          if (!Array.isArray(l)) fail('ADDITEMS on non-set');
          for (const it of items) (l as PyValue[]).push(it);
          break;
        }
        case OP.FROZENSET:
          stack.push(new PyObject('reduce', new Global('builtins', 'frozenset'), new Tuple([popMark()])));
          break;

        // ---- memo ----
        case OP.PUT:
          this.memo.set(parseDecimal(this.line(opPos), opPos), top());
          break;
        case OP.BINPUT:
          this.memo.set(this.u8(opPos), top());
          break;
        case OP.LONG_BINPUT:
          this.memo.set(this.dv.getUint32(this.take(4, opPos), true), top());
          break;
        case OP.MEMOIZE:
          this.memo.set(this.memo.size, top());
          break;
        case OP.GET:
          stack.push(memoGet(parseDecimal(this.line(opPos), opPos)));
          break;
        case OP.BINGET:
          stack.push(memoGet(this.u8(opPos)));
          break;
        case OP.LONG_BINGET:
          stack.push(memoGet(this.dv.getUint32(this.take(4, opPos), true)));
          break;

        // ---- classes and objects (described, never executed) ----
        case OP.GLOBAL: {
          const module = this.line(opPos);
          const name = this.line(opPos);
          stack.push(internGlobal(module, name));
          break;
        }
        case OP.STACK_GLOBAL: {
          const name = asText(pop());
          const module = asText(pop());
          if (name === undefined || module === undefined) fail('module and name must be strings');
          stack.push(new Global(module!, name!));
          break;
        }
        case OP.REDUCE: {
          const args = pop();
          const callable = pop();
          stack.push(new PyObject('reduce', callable, args));
          break;
        }
        case OP.NEWOBJ: {
          const args = pop();
          const cls = pop();
          stack.push(new PyObject('newobj', cls, args));
          break;
        }
        case OP.NEWOBJ_EX: {
          const kwargs = pop();
          const args = pop();
          const cls = pop();
          stack.push(new PyObject('newobj', cls, new Tuple([args, kwargs])));
          break;
        }
        case OP.INST: {
          const module = this.line(opPos);
          const name = this.line(opPos);
          stack.push(new PyObject('inst', new Global(module, name), new Tuple(popMark())));
          break;
        }
        case OP.OBJ: {
          const items = popMark();
          if (items.length === 0) fail('OBJ without class');
          const cls = items.shift()!;
          stack.push(new PyObject('inst', cls, new Tuple(items)));
          break;
        }
        case OP.BUILD: {
          const state = pop();
          const obj = top();
          if (!(obj instanceof PyObject)) fail('BUILD on a non-object');
          (obj as PyObject).state = state;
          break;
        }
        case OP.EXT1:
        case OP.EXT2:
        case OP.EXT4:
          fail('extension registry codes are not supported');
          break;

        // ---- persistent references ----
        case OP.PERSID: {
          const pid = this.line(opPos);
          stack.push(this.persistentLoad(pid, opPos));
          break;
        }
        case OP.BINPERSID:
          stack.push(this.persistentLoad(pop(), opPos));
          break;

        case OP.NEXT_BUFFER:
        case OP.READONLY_BUFFER:
          fail('out-of-band buffers are not supported');
          break;
        default:
          fail('unknown opcode');
      }
    }
  }

  // ---- byte-level readers (all bounds-checked) ----

  private take(n: number, opPos: number): number {
    const at = this.pos;
    if (n < 0 || at + n > this.buf.length) {
      throw new PickleError(opPos, `${OPNAME[this.buf[opPos]!] ?? 'opcode'}: truncated (need ${n} bytes at ${at}, have ${this.buf.length - at})`);
    }
    this.pos = at + n;
    return at;
  }
  private u8(opPos: number): number {
    return this.buf[this.take(1, opPos)]!;
  }
  private u64len(opPos: number): number {
    const n = this.dv.getBigUint64(this.take(8, opPos), true);
    if (n > BigInt(this.buf.length)) throw new PickleError(opPos, `length ${n} exceeds data`);
    return Number(n);
  }
  private bytes(n: number, opPos: number): Uint8Array {
    const at = this.take(n, opPos);
    return this.buf.subarray(at, at + n);
  }
  private lineBytes(opPos: number): Uint8Array {
    const nl = this.buf.indexOf(0x0a, this.pos);
    if (nl < 0) throw new PickleError(opPos, 'unterminated line');
    const b = this.buf.subarray(this.pos, nl);
    this.pos = nl + 1;
    return b;
  }
  private line(opPos: number): string {
    const b = this.lineBytes(opPos);
    if (b.length > 64) return Buffer.from(b.buffer, b.byteOffset, b.length).toString('latin1');
    // short lines (GLOBAL module/name, ints): cheaper than a Buffer round trip
    let s = '';
    for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]!);
    return s;
  }
}

// Globals are immutable descriptors: share one per (module, name) — records repeat the same
// few classes millions of times.
const globals = new Map<string, Global>();
function internGlobal(module: string, name: string): Global {
  const k = module + '\n' + name;
  let g = globals.get(k);
  if (g === undefined) {
    if (globals.size > 10_000) globals.clear(); // bound it against hostile input
    globals.set(k, (g = new Global(module, name)));
  }
  return g;
}

/** Decode one pickle (the first, up to its STOP). */
export function decodePickle(buf: Uint8Array, opts?: UnpicklerOptions): PyValue {
  return new Unpickler(buf, 0, opts).load();
}

/** Decode every pickle concatenated in `buf` (each with its own memo, as separate dumps). */
export function decodePickles(buf: Uint8Array, opts?: UnpicklerOptions): PyValue[] {
  const out: PyValue[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const u = new Unpickler(buf, pos, opts);
    out.push(u.load());
    pos = u.pos;
  }
  return out;
}

// ---- ZODB persistent references (zodb.md §3.2) ----

function oidOf(v: PyValue | undefined, offset: number): bigint {
  const b = v === undefined ? undefined : asBytes(v);
  if (b === undefined || b.length !== 8) {
    throw new PickleError(offset, `persistent reference: oid must be 8 bytes, got ${describe(v)}`);
  }
  return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, false);
}

function classOf(v: PyValue | undefined): Global | null {
  if (v instanceof Global) return v;
  // Old persistent-class form: (module, name)
  if (v instanceof Tuple && v.items.length === 2) {
    const m = asText(v.items[0]!);
    const n = asText(v.items[1]!);
    if (m !== undefined && n !== undefined) return new Global(m, n);
  }
  return null;
}

function describe(v: PyValue | undefined): string {
  if (v === undefined) return 'nothing';
  if (v instanceof Uint8Array || v instanceof ByteStr) return `${asBytes(v)!.length} bytes`;
  return typeof v === 'object' && v !== null ? v.constructor.name : typeof v;
}

/** ZODB's persistent_load: the reference forms ZODB writes, as PersistentRef. */
export function zodbPersistentLoad(pid: PyValue, offset: number): PyValue {
  if (pid instanceof Tuple) {
    if (pid.items.length !== 2) throw new PickleError(offset, `persistent reference: tuple of ${pid.items.length}`);
    return new PersistentRef(oidOf(pid.items[0], offset), classOf(pid.items[1]));
  }
  if (pid instanceof Uint8Array || pid instanceof ByteStr) {
    return new PersistentRef(oidOf(pid, offset), null);
  }
  if (typeof pid === 'string') {
    // protocol 0 PERSID: the oid as text (latin-1 bytes)
    return new PersistentRef(oidOf(new ByteStr(Buffer.from(pid, 'latin1')), offset), null);
  }
  if (Array.isArray(pid)) {
    if (pid.length === 1) return new PersistentRef(oidOf(pid[0], offset), null, 'weak');
    const tag = pid.length === 2 ? asText(pid[0]!) : undefined;
    const args = pid[1] instanceof Tuple ? pid[1].items : undefined;
    if (tag !== undefined && args !== undefined) {
      if (tag === 'w' && (args.length === 1 || args.length === 2)) {
        return new PersistentRef(oidOf(args[0], offset), null, 'weak', args.length === 2 ? (asText(args[1]!) ?? null) : null);
      }
      if (tag === 'n' && args.length === 2) {
        return new PersistentRef(oidOf(args[1], offset), null, 'xdb', asText(args[0]!) ?? null);
      }
      if (tag === 'm' && args.length === 3) {
        return new PersistentRef(oidOf(args[1], offset), classOf(args[2]), 'xdb', asText(args[0]!) ?? null);
      }
    }
  }
  throw new PickleError(offset, `unsupported persistent reference form (${describe(pid)})`);
}

// ---- text helpers ----

function parseIntText(s: string, offset: number): bigint {
  if (!/^[+-]?\d+$/.test(s.trim())) throw new PickleError(offset, `bad integer ${JSON.stringify(s)}`);
  return BigInt(s.trim());
}

function parseDecimal(s: string, offset: number): number {
  if (!/^\d+$/.test(s)) throw new PickleError(offset, `bad memo key ${JSON.stringify(s)}`);
  return Number(s);
}

/**
 * Two's-complement little-endian → bigint (LONG1/LONG4). Linear in n: one hex string and one
 * BigInt parse (a shift-and-or per byte would be quadratic — minutes for a 4 MiB LONG4).
 */
export function decodeLong(buf: Uint8Array, at: number, n: number): bigint {
  if (n === 0) return 0n;
  const be = Buffer.from(buf.subarray(at, at + n)).reverse();
  let v = BigInt('0x' + be.toString('hex'));
  if (buf[at + n - 1]! & 0x80) v -= 1n << BigInt(8 * n);
  return v;
}

/** Protocol-0 STRING argument: a Python repr of a str, quotes included. */
function decodeStringRepr(s: string, offset: number): Uint8Array {
  const q = s[0];
  if (s.length < 2 || (q !== "'" && q !== '"') || s[s.length - 1] !== q) {
    throw new PickleError(offset, `STRING: not a quoted string: ${JSON.stringify(s.slice(0, 40))}`);
  }
  const body = s.slice(1, -1);
  const out: number[] = [];
  for (let i = 0; i < body.length; i++) {
    const c = body.charCodeAt(i);
    if (c !== 0x5c) {
      out.push(c & 0xff);
      continue;
    }
    const e = body[++i];
    switch (e) {
      case 'n':
        out.push(10);
        break;
      case 't':
        out.push(9);
        break;
      case 'r':
        out.push(13);
        break;
      case 'a':
        out.push(7);
        break;
      case 'b':
        out.push(8);
        break;
      case 'f':
        out.push(12);
        break;
      case 'v':
        out.push(11);
        break;
      case '\\':
        out.push(0x5c);
        break;
      case "'":
        out.push(0x27);
        break;
      case '"':
        out.push(0x22);
        break;
      case '\n':
        break;
      case 'x': {
        const h = body.slice(i + 1, i + 3);
        if (!/^[0-9a-fA-F]{2}$/.test(h)) throw new PickleError(offset, 'STRING: bad \\x escape');
        out.push(parseInt(h, 16));
        i += 2;
        break;
      }
      default: {
        const m = /^[0-7]{1,3}/.exec(body.slice(i));
        if (m) {
          out.push(parseInt(m[0], 8) & 0xff);
          i += m[0].length - 1;
        } else {
          out.push(0x5c);
          if (e !== undefined) out.push(e.charCodeAt(0) & 0xff);
        }
      }
    }
  }
  return Uint8Array.from(out);
}

/** Protocol-0 UNICODE argument: raw-unicode-escape (latin-1 bytes + \uXXXX / \UXXXXXXXX). */
function decodeRawUnicodeEscape(b: Uint8Array, offset: number): string {
  let out = '';
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c === 0x5c && i + 1 < b.length && (b[i + 1] === 0x75 || b[i + 1] === 0x55)) {
      const n = b[i + 1] === 0x75 ? 4 : 8;
      const hex = Buffer.from(b.subarray(i + 2, i + 2 + n)).toString('latin1');
      if (hex.length === n && /^[0-9a-fA-F]+$/.test(hex)) {
        const cp = parseInt(hex, 16);
        if (cp > 0x10ffff) throw new PickleError(offset, `UNICODE: \\U${hex} out of range`); // as Python
        out += String.fromCodePoint(cp);
        i += 1 + n;
        continue;
      }
    }
    out += String.fromCharCode(c);
  }
  return out;
}
