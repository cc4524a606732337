// Pickle codec: golden vectors written by CPython's pickle (protocols 0-5), ZODB records of
// the wendelin.core fixtures, round-trip properties and fuzzing (bad input → PickleError).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import {
  ByteStr,
  Global,
  PersistentRef,
  PyDict,
  PyObject,
  Tuple,
  decodePickle,
  decodeRecord,
  encodePickle,
  encodeRecord,
  type PyValue,
} from '../src/zodb/pickle/index.js';
import { PickleError } from '../src/zodb/errors.js';
import { zblkKinds, zblkPath } from './helpers/paths.js';

const hex = (s: string) => Uint8Array.from(Buffer.from(s, 'hex'));
const b = (s: string) => Uint8Array.from(Buffer.from(s, 'latin1'));

// Produced by CPython 3 `pickle.dumps(value, protocol=N)` (see the test names for value).
const golden = {
  p0: '286c70300a49310a61492d350a614c313039393531313632373737364c0a615668e96c6c6f0a70310a61635f636f646563730a656e636f64650a70320a285662790a70330a566c6174696e310a70340a7470350a5270360a612849310a49320a7470370a61286470380a56610a70390a4e73614930310a614930300a6146312e350a612e',
  p1: '5d7100284b014afbffffff4c313039393531313632373737364c0a580600000068c3a96c6c6f7101284b014b027471027d710358010000006171044e734930310a473ff80000000000004c2d313138303539313632303731373431313330333432344c0a652e',
  p2: '80025d7100284b014afbffffff8a06000000000001580600000068c3a96c6c6f71014b014b024b03877102284b014b024b034b047471037d710458010000006171054e738889473ff80000000000008a090000000000000000c0652e',
  p4: '8004952b000000000000005d94288c0573686f727494430a62626262626262626262944b0185948f94284b014b0290284b039194652e',
  p5: '80059515000000000000005d94289602000000000000006162948c017894652e',
};

describe('pickle decoder: CPython golden vectors', () => {
  it('protocol 0: [1, -5, 2**40, "héllo", b"by", (1,2), {"a": None}, True, False, 1.5]', () => {
    const v = decodePickle(hex(golden.p0)) as PyValue[];
    expect(v.slice(0, 4)).toEqual([1n, -5n, 2n ** 40n, 'héllo']);
    // protocol 0 has no bytes: CPython writes _codecs.encode('by', 'latin1') — kept as a call
    expect(v[4]).toBeInstanceOf(PyObject);
    expect((v[4] as PyObject).callable).toEqual(new Global('_codecs', 'encode'));
    expect(v[5]).toEqual(new Tuple([1n, 2n]));
    expect((v[6] as PyDict).get('a')).toBe(null);
    expect(v.slice(7)).toEqual([true, false, 1.5]);
  });
  it('protocol 1', () => {
    const v = decodePickle(hex(golden.p1)) as PyValue[];
    expect(v).toEqual([1n, -5n, 2n ** 40n, 'héllo', new Tuple([1n, 2n]), expect.any(PyDict), true, 1.5, -(2n ** 70n)]);
  });
  it('protocol 2', () => {
    const v = decodePickle(hex(golden.p2)) as PyValue[];
    expect(v).toEqual([1n, -5n, 2n ** 40n, 'héllo', new Tuple([1n, 2n, 3n]), new Tuple([1n, 2n, 3n, 4n]), expect.any(PyDict), true, false, 1.5, -(2n ** 70n)]);
  });
  it('protocol 4 (frames, memoize, short unicode, sets)', () => {
    const v = decodePickle(hex(golden.p4)) as PyValue[];
    expect(v[0]).toBe('short');
    expect(v[1]).toEqual(b('bbbbbbbbbb'));
    expect(v[2]).toEqual(new Tuple([1n]));
    expect((v[3] as PyObject).callable).toEqual(new Global('builtins', 'set'));
    expect((v[3] as PyObject).args).toEqual(new Tuple([[1n, 2n]]));
    expect((v[4] as PyObject).callable).toEqual(new Global('builtins', 'frozenset'));
  });
  it('protocol 5 (bytearray8)', () => {
    expect(decodePickle(hex(golden.p5))).toEqual([b('ab'), 'x']);
  });
  it('py2 str opcodes decode to ByteStr; STRING escapes', () => {
    // protocol 0: S'a\x00\n'  ;  protocol 1: U\x02hi
    expect(decodePickle(b("S'a\\x00\\n'\n."))).toEqual(new ByteStr(b('a\x00\n')));
    expect(decodePickle(b('U\x02hi.'))).toEqual(new ByteStr(b('hi')));
  });
});

describe('ZODB records of wendelin.core fixtures (all 4 pickle kinds)', () => {
  for (const kind of zblkKinds) {
    it(`${kind}: every record decodes; classes and shapes as expected`, () => {
      const f = readFileSync(zblkPath(kind));
      const classes = new Map<bigint, string>();
      const states = new Map<bigint, PyValue>();
      let pos = 4;
      while (pos < f.length) {
        const tlen = Number(f.readBigUInt64BE(pos + 8));
        const hdr = 23 + f.readUInt16BE(pos + 17) + f.readUInt16BE(pos + 19) + f.readUInt16BE(pos + 21);
        for (let d = pos + hdr; d < pos + tlen;) {
          const oid = f.readBigUInt64BE(d);
          const plen = Number(f.readBigUInt64BE(d + 34));
          const r = decodeRecord(f.subarray(d + 42, d + 42 + plen));
          classes.set(oid, r.klass.toString());
          states.set(oid, r.state);
          d += 42 + plen;
        }
        pos += tlen + 8;
      }
      expect(classes.get(0n)).toBe('persistent.mapping.PersistentMapping');
      expect(classes.get(1n)).toBe('wendelin.bigfile.file_zodb.ZBigFile');
      expect(classes.get(2n)).toMatch(/wendelin\.bigfile\.file_zodb\.ZBlk0?$/);
      expect(classes.get(3n)).toBe('wendelin.bigfile.file_zodb.ZBlk1');
      expect(classes.get(5n)).toBe('BTrees.IOBTree.IOBucket');
      // root: {'data': {'zbigf': ref 1, ...}}
      const root = (states.get(0n) as PyDict).get('data') as PyDict;
      expect((root.get('zbigf') as PersistentRef).oid).toBe(1n);
      // ZBigFile: (blksize, ref LOBTree)
      const zf = (states.get(1n) as Tuple).items;
      expect(zf[0]).toBe(2097152n);
      expect((zf[1] as PersistentRef).klass?.toString()).toBe('BTrees.LOBTree.LOBTree');
      // bucket 5 links to bucket 6 — its class ref uses a memo slot from the class pickle
      const bucket5 = (states.get(5n) as Tuple).items;
      expect((bucket5[1] as PersistentRef).oid).toBe(6n);
      expect((bucket5[1] as PersistentRef).klass?.toString()).toBe('BTrees.IOBTree.IOBucket');
    });
  }
});

// ---- round trip ----

const oidBytes = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
const globalArb = fc
  .record({ m: fc.constantFrom('BTrees.LOBTree', 'wendelin.bigfile.file_zodb', 'a.b'), n: fc.constantFrom('LOBucket', 'ZBlk0', 'X') })
  .map(({ m, n }) => new Global(m, n));
const { value: pyArb } = fc.letrec<{ value: PyValue }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.constant(null),
    fc.boolean(),
    fc.bigInt({ min: -(2n ** 80n), max: 2n ** 80n }),
    fc.bigInt({ min: -300n, max: 70000n }),
    fc.double({ noNaN: true }),
    fc.string(),
    fc.uint8Array({ maxLength: 300 }),
    fc.uint8Array({ maxLength: 20 }).map((x) => new ByteStr(x)),
    globalArb,
    fc.tuple(oidBytes, fc.option(globalArb)).map(([o, g]) => new PersistentRef(o, g ?? null)),
    fc.array(tie('value'), { maxLength: 5 }).map((xs) => new Tuple(xs)),
    fc.array(tie('value'), { maxLength: 5 }),
    fc.array(fc.tuple(fc.string({ maxLength: 4 }), tie('value')), { maxLength: 4 }).map((kv) => {
      const d = new PyDict();
      for (const [k, v] of kv) d.set(k, v);
      return d;
    }),
  ),
}));

describe('pickle encoder', () => {
  it('decode(encode(v)) == v for random values (protocol 3)', () => {
    fc.assert(
      fc.property(pyArb, (v) => {
        expect(decodePickle(encodePickle(v, 3))).toEqual(v);
      }),
      { numRuns: 500 },
    );
  });
  it('protocol 2 writes bytes as py2 str', () => {
    expect(decodePickle(encodePickle(b('xyz'), 2))).toEqual(new ByteStr(b('xyz')));
  });
  it('record round trip shares one memo (class GLOBAL re-used from the state pickle)', () => {
    const k = new Global('BTrees.LOBTree', 'LOBucket');
    const rec = encodeRecord(
      k,
      new Tuple([new Tuple([1n, new PersistentRef(7n, new Global('wendelin.bigfile.file_zodb', 'ZBlk1'))]), new PersistentRef(9n, k)]),
    );
    const r = decodeRecord(rec);
    expect(r.klass).toEqual(k);
    expect(((r.state as Tuple).items[1] as PersistentRef).klass).toEqual(k);
  });
  it('integer opcode boundaries', () => {
    for (const x of [
      0n,
      255n,
      256n,
      65535n,
      65536n,
      2n ** 31n - 1n,
      2n ** 31n,
      -(2n ** 31n),
      -(2n ** 31n) - 1n,
      2n ** 63n - 1n,
      -(2n ** 63n),
      2n ** 64n + 5n,
      -1n,
      127n,
      128n,
      -128n,
      -129n,
    ]) {
      expect(decodePickle(encodePickle(x))).toBe(x);
    }
  });
});

describe('pickle decoder: bad input', () => {
  it('truncations of valid pickles → PickleError with an offset', () => {
    const full = encodeRecord(new Global('m', 'n'), new Tuple([b('x'.repeat(300)), 5n, 'text', [1n], new PyDict()]));
    for (let n = 0; n < full.length - 1; n++) {
      let err: unknown;
      try {
        decodeRecord(full.subarray(0, n));
      } catch (e) {
        err = e;
      }
      expect(err, `cut at ${n}`).toBeInstanceOf(PickleError);
      expect((err as PickleError).offset).toBeGreaterThanOrEqual(0);
    }
  });
  it('random bytes and mutations never throw anything but PickleError', () => {
    const seedPickle = encodePickle(new Tuple([1n, 'a', b('bb'), [null, true], new PyDict()]));
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 64 }),
          fc.array(fc.tuple(fc.nat(seedPickle.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }).map((muts) => {
            const x = seedPickle.slice();
            for (const [i, v] of muts) x[i] = v;
            return x;
          }),
        ),
        (bytes) => {
          try {
            decodePickle(bytes);
          } catch (e) {
            expect(e).toBeInstanceOf(PickleError);
          }
        },
      ),
      { numRuns: 3000 },
    );
  });
  it('memo get of an unset slot is reported', () => {
    expect(() => decodePickle(hex('800368052e'))).toThrow(/memo key 5/);
  });
});
