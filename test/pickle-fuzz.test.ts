// Pickle codec (src/zodb/pickle/), fuzzed: the decoder on opcode-aware random programs and on
// mutations of encoder output only ever returns a value or throws PickleError (offset inside
// the input), never reads outside its view, and takes time linear in the input on crafted
// worst cases (huge LONG4, dicts with many keys); encode → decode round-trips. The table holds
// every case a fuzz run found (marked "found:"), each failing before its fix.
//
// Seeds and reruns: see test/helpers/fuzz.ts (`npm run fuzz` for long runs).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  ByteStr,
  Global,
  OP,
  PersistentRef,
  PyDict,
  PyObject,
  Tuple,
  Unpickler,
  asBytes,
  decodePickle,
  decodePickles,
  decodeRecord,
  decodeRecordClass,
  encodeLong,
  encodePickle,
  encodeRecord,
  type PyValue,
} from '../src/zodb/pickle/index.js';
import { decodeLong } from '../src/zodb/pickle/decode.js';
import { PickleError } from '../src/zodb/errors.js';
import { zdataFast } from '../src/zodb/zbigfile.js';
import { native } from '../src/native.js';
import { fcParams } from './helpers/fuzz.js';

const bytes = (...parts: Array<number | string | Uint8Array>): Uint8Array =>
  Uint8Array.from(
    Buffer.concat(parts.map((p) => (typeof p === 'number' ? Buffer.from([p]) : typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p)))),
  );
const le32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};

/**
 * The native ZData parser (native/zdata.cc zdataGather, one chunk) on src[0, n): the chunk
 * bytes it copies, or undefined when it does not take the record. It must agree with zdataFast.
 */
function zdataNative(src: Uint8Array, n: number): Uint8Array | undefined {
  const out = new Uint8Array(n);
  const stop = new Float64Array(1);
  const i = native().zdataGather(src, Float64Array.of(0, n), new Float64Array(1), 0, 1, out, stop);
  return i === 1 ? out.subarray(0, stop[0]) : undefined;
}

/** Run every decoder entry point on `b`: a value, or PickleError with an offset inside b. */
function decodeAll(b: Uint8Array): Array<unknown> {
  const out: unknown[] = [];
  for (const f of [() => decodePickle(b), () => decodePickles(b), () => decodeRecord(b), () => decodeRecordClass(b)]) {
    try {
      out.push(f());
    } catch (e) {
      if (!(e instanceof PickleError)) throw new Error(`decoder threw ${String(e)}`, { cause: e });
      expect(e.offset).toBeGreaterThanOrEqual(0);
      expect(e.offset).toBeLessThanOrEqual(b.length);
      out.push(e.message);
    }
  }
  return out;
}

// ---- table ----

describe('pickle: table', () => {
  it('found: LONG4 of 4 MiB decodes in linear time (was a shift-and-or per byte: quadratic)', () => {
    const n = 4 << 20;
    const payload = new Uint8Array(n).fill(0x5a);
    const v = decodePickle(bytes(OP.LONG4, le32(n), payload, OP.STOP));
    expect(typeof v).toBe('bigint');
    expect(Buffer.from(encodeLong(v as bigint)).equals(payload)).toBe(true); // minimal: top byte 0x5a has no sign bit
  });

  it('found: encodeLong of a 4 MiB int is linear too', () => {
    const v = -(1n << BigInt(8 * (4 << 20) - 1)); // −2^(8n−1): the smallest n-byte value
    const b = encodeLong(v);
    expect(b.length).toBe(4 << 20);
    expect(b[b.length - 1]).toBe(0x80);
    expect(decodeLong(b, 0, b.length)).toBe(v);
  });

  it('found: SETITEMS with 200k keys is linear (PyDict.set scanned every entry: quadratic)', () => {
    const n = 200_000;
    const items = Buffer.alloc(7 * n);
    for (let i = 0; i < n; i++) {
      items[7 * i] = OP.BININT;
      items.writeInt32LE(i, 7 * i + 1);
      items[7 * i + 5] = OP.BININT1;
      items[7 * i + 6] = i & 0xff;
    }
    // and one repeated key: replaces in place
    const d = decodePickle(bytes(OP.EMPTY_DICT, OP.MARK, items, OP.BININT1, 7, OP.NONE, OP.SETITEMS, OP.STOP)) as PyDict;
    expect(d.size).toBe(n);
    expect(d.entries[7]).toEqual([7n, null]);
    expect(d.entries[n - 1]).toEqual([BigInt(n - 1), BigInt((n - 1) & 0xff)]);
  });

  it('found: UNICODE \\U escape past U+10FFFF → PickleError (was RangeError)', () => {
    expect(() => decodePickle(bytes('V\\UFFFFFFFF\n.'))).toThrow(PickleError);
    expect(() => decodePickle(bytes('V\\U00110000\n.'))).toThrow(/UNICODE: \\U00110000 out of range/);
    expect(decodePickle(bytes('V\\U0010FFFFa\\u00e9\n.'))).toBe('\u{10ffff}aé');
  });

  it('dict keys: equal keys replace in place, text == py2 str == bytes pairwise as before', () => {
    const d = new PyDict();
    d.set('ab', 1n);
    d.set(Uint8Array.from([0x61, 0x62]), 2n); // bytes ≠ text: a new entry
    d.set(new ByteStr(Uint8Array.from([0x61, 0x62])), 3n); // py2 str == text: replaces the first
    d.set(NaN, 4n);
    d.set(NaN, 5n); // NaN ≠ NaN
    d.set(0, 6n);
    d.set(-0, 7n); // 0 == -0
    d.set(1n, 8n);
    d.set(1, 9n); // int ≠ float here (keys keep their type)
    const g = new Global('m', 'n');
    d.set(g, 10n);
    d.set(g, 11n);
    d.set(new Global('m', 'n'), 12n); // other objects: by identity
    expect(d.entries.map(([, v]) => v)).toEqual([3n, 2n, 4n, 5n, 7n, 8n, 9n, 11n, 12n]);
    expect(d.entries[0]![0]).toBeInstanceOf(ByteStr);
  });

  it("two's-complement longs: exact bytes at the boundaries", () => {
    const cases: Array<[bigint, string]> = [
      [0n, ''],
      [1n, '01'],
      [127n, '7f'],
      [128n, '8000'],
      [255n, 'ff00'],
      [256n, '0001'],
      [-1n, 'ff'],
      [-128n, '80'],
      [-129n, '7fff'],
      [-256n, '00ff'],
      [-257n, 'fffe'],
      [2n ** 63n, '000000000000008000'],
      [-(2n ** 63n), '0000000000000080'],
    ];
    for (const [v, hex] of cases) {
      expect(Buffer.from(encodeLong(v)).toString('hex'), String(v)).toBe(hex);
      const b = Uint8Array.from(Buffer.from(hex, 'hex'));
      expect(decodeLong(b, 0, b.length)).toBe(v);
    }
    // non-minimal encodings decode too (Python writes minimal ones, reads any)
    expect(decodeLong(Uint8Array.from([0xff, 0xff, 0xff]), 0, 3)).toBe(-1n);
    expect(decodeLong(Uint8Array.from([9, 1, 2, 0, 0]), 1, 3)).toBe(0x201n);
  });

  it('crafted inputs: deep MARK nesting, long lines, many escapes, huge lengths', () => {
    const n = 100_000;
    expect(decodePickle(bytes(new Uint8Array(n).fill(OP.MARK), new Uint8Array(n).fill(OP.TUPLE), OP.STOP))).toBeInstanceOf(Tuple);
    expect(decodePickle(bytes('I', '1'.repeat(n), '\n.'))).toBe(BigInt('1'.repeat(n)));
    expect((decodePickle(bytes("S'", '\\101'.repeat(n), "'\n.")) as ByteStr).bytes.length).toBe(n);
    // lengths far past the data: refused before any allocation
    expect(() => decodePickle(bytes(OP.BINBYTES8, Buffer.from('ffffffffffffff7f', 'hex'), OP.STOP))).toThrow(/exceeds data/);
    expect(() => decodePickle(bytes(OP.BINUNICODE, le32(0xffffffff), OP.STOP))).toThrow(/truncated/);
    expect(() => decodePickle(bytes(OP.LONG4, le32(0x80000000), OP.STOP))).toThrow(/negative length/);
    expect(() => decodePickle(bytes(OP.BINSTRING, le32(0x7fffffff), OP.STOP))).toThrow(/truncated/);
  });
});

describe("zdataFast (the decoder's shortcut for ZData records): table", () => {
  const zclass = new Global('wendelin.bigfile.file_zodb', 'ZData');
  it('agrees with decodeRecord for SHORT_BINBYTES and BINBYTES', () => {
    for (const n of [0, 1, 255, 256, 4096]) {
      const data = new Uint8Array(n).fill(7);
      const rec = encodeRecord(zclass, data);
      expect(zdataFast(rec)).toEqual(data);
      expect(decodeRecord(rec).state).toEqual(data);
    }
  });
  it('found: a record cut inside the BINBYTES length → undefined (was a RangeError, or a read past the view)', () => {
    const rec = encodeRecord(zclass, new Uint8Array(300));
    const cls = Buffer.from(rec).indexOf('q\x00.', 0, 'latin1') + 3; // end of the class pickle
    expect(rec.subarray(cls, cls + 3)).toEqual(Uint8Array.from([0x80, 3, 0x42])); // PROTO 3, BINBYTES
    for (let cut = cls + 3; cut < cls + 7; cut++) {
      expect(zdataFast(rec.slice(0, cut)), `cut ${cut}`).toBeUndefined();
      expect(zdataFast(rec.subarray(0, cut)), `cut ${cut} (view)`).toBeUndefined();
    }
  });
});

// ---- generators ----

const ident = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_.]{0,12}$/);
const globalArb = fc.tuple(ident, ident).map(([m, n]) => new Global(m, n));
const bigIntArb = fc.oneof(
  fc.bigInt({ min: -300n, max: 70000n }),
  fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n }),
  fc.bigInt({ min: -(2n ** 2100n), max: 2n ** 2100n }), // LONG4 (≥ 256 bytes) too
  fc.integer({ min: 0, max: 2100 }).chain((k) => fc.constantFrom(2n ** BigInt(k), 2n ** BigInt(k) - 1n, -(2n ** BigInt(k)), -(2n ** BigInt(k)) - 1n)),
);
// No bytes keys next to text keys: pyKeyEquals is not transitive (text == py2 str == bytes,
// text ≠ bytes), so set(b''), set(''), set(py2 '') leaves two equal keys that a decode merges.
const keyArb: fc.Arbitrary<PyValue> = fc.oneof(
  fc.string({ maxLength: 4 }),
  fc.uint8Array({ maxLength: 3 }).map((x) => new ByteStr(x)),
  fc.bigInt({ min: -3n, max: 3n }),
  fc.constantFrom(null, true, false, 0, 1.5, NaN),
);
const { value: pyArb } = fc.letrec<{ value: PyValue }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: 5 },
    fc.constantFrom(null, true, false),
    bigIntArb,
    fc.double(),
    fc.string({ unit: 'binary', maxLength: 20 }),
    fc.uint8Array({ maxLength: 300 }),
    fc.uint8Array({ maxLength: 300 }).map((x) => new ByteStr(x)),
    globalArb,
    fc.tuple(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.option(globalArb)).map(([o, g]) => new PersistentRef(o, g)),
    fc.array(tie('value'), { maxLength: 5 }).map((xs) => new Tuple(xs)),
    fc.array(tie('value'), { maxLength: 5 }),
    fc.array(fc.tuple(keyArb, tie('value')), { maxLength: 6 }).map((kv) => {
      const d = new PyDict();
      for (const [k, v] of kv) d.set(k, v);
      return d;
    }),
    fc
      .tuple(fc.constantFrom('reduce' as const, 'newobj' as const), globalArb, tie('value'), fc.option(tie('value'), { nil: undefined }))
      .map(([kind, g, args, state]) => new PyObject(kind, g, new Tuple([args]), state)),
  ),
}));

/** What protocol 2 gives back: bytes were written as py2 str (dicts re-keyed accordingly). */
function asProtocol2(v: PyValue): PyValue {
  if (v instanceof Uint8Array) return new ByteStr(v);
  if (v instanceof Tuple) return new Tuple(v.items.map(asProtocol2));
  if (Array.isArray(v)) return v.map(asProtocol2);
  if (v instanceof PyDict) {
    const d = new PyDict();
    for (const [k, x] of v.entries) d.set(asProtocol2(k), asProtocol2(x));
    return d;
  }
  if (v instanceof PyObject)
    return new PyObject(v.kind, asProtocol2(v.callable), asProtocol2(v.args), v.state === undefined ? undefined : asProtocol2(v.state));
  return v;
}

/** One opcode with plausible (sometimes wrong) arguments. */
const opNames = Object.keys(OP) as Array<keyof typeof OP>;
const lineArg = fc
  .oneof(
    fc.stringMatching(/^[-+]?[0-9]{0,25}L?$/),
    fc.constantFrom(
      "'abc'",
      '"a\\x41\\101\\n"',
      "'unterminated",
      'a\\u00e9\\U0001F600',
      '\\UFFFFFFFF',
      '1.5',
      'nan',
      'inf',
      '0x10',
      '01',
      '00',
      'mod',
      'name',
      '',
    ),
    fc.string({ maxLength: 8 }),
  )
  .map((s) => s + '\n');
const instr: fc.Arbitrary<Uint8Array> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.constantFrom(...opNames), fc.nat(8), fc.uint8Array({ maxLength: 8 })).map(([name, _k, arg]) => bytes(OP[name], arg)) },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom(...opNames), lineArg, lineArg).map(([name, a, b]) => bytes(OP[name], a, b)) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(
        fc.constantFrom('BINBYTES', 'BINUNICODE', 'BINSTRING', 'LONG4', 'LONG_BINPUT', 'LONG_BINGET', 'BININT') as fc.Arbitrary<keyof typeof OP>,
        fc.oneof(fc.nat(12), fc.constantFrom(0x7fffffff, 0x80000000, 0xffffffff)),
        fc.uint8Array({ maxLength: 12 }),
      )
      .map(([name, n, data]) => bytes(OP[name], le32(n), data)),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(
        fc.constantFrom('BINBYTES8', 'BINUNICODE8', 'BYTEARRAY8', 'FRAME') as fc.Arbitrary<keyof typeof OP>,
        fc.oneof(fc.bigInt({ min: 0n, max: 64n }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
        fc.uint8Array({ maxLength: 12 }),
      )
      .map(([name, n, data]) => {
        const b = Buffer.alloc(8);
        b.writeBigUInt64LE(n);
        return bytes(OP[name], b, data);
      }),
  },
  { weight: 2, arbitrary: fc.constantFrom(OP.MARK, OP.EMPTY_LIST, OP.EMPTY_DICT, OP.EMPTY_TUPLE, OP.NONE, OP.DUP, OP.MEMOIZE).map((o) => bytes(o)) },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 4 }) },
);
const program = fc.tuple(fc.array(instr, { maxLength: 30 }), fc.boolean()).map(([xs, stop]) => bytes(...xs, ...(stop ? [OP.STOP] : [])));

/** Encoder output (a record, or one pickle) with a few byte-level edits. */
const mutated = fc
  .tuple(
    fc.oneof(
      pyArb.map((v) => encodePickle(v, 3)),
      pyArb.map((v) => encodePickle(v, 2)),
      fc.tuple(globalArb, pyArb).map(([g, v]) => encodeRecord(g, v)),
    ),
    fc.array(fc.tuple(fc.nat(), fc.constantFrom('set', 'ins', 'del', 'cut', 'len'), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
  )
  .map(([b0, edits]) => {
    let b = Buffer.from(b0);
    for (const [i, op, x] of edits) {
      const k = b.length === 0 ? 0 : i % b.length;
      if (op === 'set') b[k] = x;
      else if (op === 'ins') b = Buffer.concat([b.subarray(0, k), Buffer.from([x]), b.subarray(k)]);
      else if (op === 'del') b = Buffer.concat([b.subarray(0, k), b.subarray(k + 1)]);
      else if (op === 'cut') b = b.subarray(0, k);
      else if (b.length >= k + 4) b.writeUInt32LE([0xffffffff, 0x7fffffff, 0x80000000, x][x & 3]!, k); // a huge length somewhere
    }
    return Uint8Array.from(b);
  });

// ---- properties ----

describe('pickle: properties', () => {
  it('decode(encode(v)) == v (protocols 3 and 2), for records too', () => {
    fc.assert(
      fc.property(pyArb, globalArb, (v, g) => {
        expect(decodePickle(encodePickle(v, 3))).toEqual(v);
        expect(decodePickle(encodePickle(v, 2))).toEqual(asProtocol2(v));
        expect(decodeRecord(encodeRecord(g, v))).toEqual({ klass: g, newargs: null, state: v });
      }),
      fcParams(400),
    );
  });

  it('longs: encodeLong is minimal and decodeLong inverts it', () => {
    fc.assert(
      fc.property(bigIntArb, (v) => {
        const b = encodeLong(v);
        expect(decodeLong(b, 0, b.length)).toBe(v);
        if (b.length > 0) expect(decodeLong(b, 0, b.length - 1)).not.toBe(v); // one byte fewer can't hold it
        expect(decodePickle(encodePickle(v))).toBe(v);
      }),
      fcParams(1000),
    );
  });

  it('random opcode programs: a value or PickleError, nothing else', () => {
    fc.assert(
      fc.property(program, (b) => void decodeAll(b)),
      fcParams(2500),
    );
  });

  it('mutated encoder output: a value or PickleError, nothing else', () => {
    fc.assert(
      fc.property(mutated, (b) => void decodeAll(b)),
      fcParams(2000),
    );
  });

  it('zdataFast: undefined or exactly what decodeRecord gives, never reading outside the view', () => {
    const zrec = fc
      .oneof(fc.uint8Array({ maxLength: 400 }), fc.constant(new Uint8Array(0)))
      .map((d) => encodeRecord(new Global('wendelin.bigfile.file_zodb', 'ZData'), d));
    const muts = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.boolean()), { maxLength: 3 });
    fc.assert(
      fc.property(zrec, muts, fc.uint8Array({ maxLength: 8 }), (rec0, edits, post) => {
        let rec = Buffer.from(rec0);
        for (const [i, x, cut] of edits) {
          if (cut) rec = rec.subarray(0, i % (rec.length + 1));
          else if (rec.length > 0) rec[i % rec.length] = x;
        }
        const view = bytes(rec, post).subarray(0, rec.length);
        const fast = zdataFast(view);
        expect(zdataFast(Uint8Array.from(rec))).toEqual(fast);
        expect(zdataNative(view, rec.length)).toEqual(fast);
        if (fast === undefined) return;
        const r = decodeRecord(view);
        expect(r.klass).toEqual(new Global('wendelin.bigfile.file_zodb', 'ZData'));
        expect(r.state).toEqual(fast);
      }),
      fcParams(1000),
    );
  });

  it('zdataFast on every layout ZODB writes (py2 BINSTRING, protocol 1-3, memo forms): undefined or what decodeRecord gives', () => {
    // The layouts of wendelin.core's fixtures (py2 pickle 1/2/3: [PROTO] GLOBAL BINPUT STOP
    // [PROTO] BINSTRING … BINPUT STOP; py3: BINBYTES) and their neighbours, then mutated and cut.
    const le = (n: number, k: number) => Array.from({ length: k }, (_, i) => (n >>> (8 * i)) & 0xff);
    const proto = fc.constantFrom<number[]>([], [OP.PROTO, 1], [OP.PROTO, 2], [OP.PROTO, 3], [OP.PROTO, 4], [OP.PROTO, 6]);
    const memo = fc.oneof(
      fc.constant<number[]>([]),
      fc.integer({ min: 0, max: 255 }).map((k) => [OP.BINPUT, k]),
      fc.integer({ min: 0, max: 300 }).map((k) => [OP.LONG_BINPUT, ...le(k, 4)]),
      fc.constant([OP.MEMOIZE]),
    );
    const data = fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ minLength: 4000, maxLength: 4096 }));
    const op = fc.constantFrom(OP.SHORT_BINBYTES, OP.BINBYTES, OP.SHORT_BINSTRING, OP.BINSTRING);
    const rec = fc.tuple(proto, memo, proto, op, data, memo).map(([p1, m1, p2, o, d, m2]) => {
      const short = o === OP.SHORT_BINBYTES || o === OP.SHORT_BINSTRING;
      const len = short ? [d.length & 0xff] : le(d.length, 4);
      return bytes(
        Uint8Array.from(p1),
        'cwendelin.bigfile.file_zodb\nZData\n',
        Uint8Array.from(m1),
        OP.STOP,
        Uint8Array.from(p2),
        o,
        Uint8Array.from(len),
        d,
        Uint8Array.from(m2),
        OP.STOP,
      );
    });
    const muts = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.boolean()), { maxLength: 2 });
    let taken = 0;
    fc.assert(
      fc.property(rec, muts, fc.uint8Array({ maxLength: 8 }), (rec0, edits, post) => {
        let r = Buffer.from(rec0);
        for (const [i, x, cut] of edits) {
          if (cut) r = r.subarray(0, i % (r.length + 1));
          else if (r.length > 0) r[i % r.length] = x;
        }
        const view = bytes(r, post).subarray(0, r.length);
        const fast = zdataFast(view);
        expect(zdataFast(Uint8Array.from(r))).toEqual(fast);
        expect(zdataNative(view, r.length)).toEqual(fast);
        if (fast === undefined) return;
        taken++;
        const d = decodeRecord(view); // throws if zdataFast accepted what the decoder refuses
        expect(d.klass).toEqual(new Global('wendelin.bigfile.file_zodb', 'ZData'));
        const want = asBytes(d.state);
        expect(want).toBeDefined();
        expect(Buffer.compare(fast, want!)).toBe(0);
      }),
      fcParams(2000),
    );
    expect(taken).toBeGreaterThan(100);
  });

  it('never reads outside its view: decoding a view inside junk = decoding a copy', () => {
    fc.assert(
      fc.property(fc.oneof(program, mutated), fc.uint8Array({ maxLength: 16 }), fc.uint8Array({ minLength: 1, maxLength: 16 }), (b, pre, post) => {
        const big = bytes(pre, b, post);
        const view = big.subarray(pre.length, pre.length + b.length);
        expect(decodeAll(view)).toEqual(decodeAll(b.slice()));
        const u = new Unpickler(big, pre.length); // a start offset: positions stay absolute
        try {
          u.load();
        } catch (e) {
          expect(e).toBeInstanceOf(PickleError);
        }
      }),
      fcParams(1000),
    );
  });
});
