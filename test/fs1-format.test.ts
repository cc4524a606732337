// fs1 record codecs (format.ts): a table of exact byte layouts, and a seeded property test
// that whatever encodeTxn writes, the scanner reads back with every check passing.

import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import {
  DATA_HEADER_SIZE,
  TXN_HEADER_SIZE,
  decodeDataHeader,
  decodeMagic,
  decodeTxnHeader,
  encodeDataHeader,
  encodeMagic,
  encodeTxn,
  encodeTxnHeader,
} from '../src/zodb/fs1/format.js';
import { checkFile } from '../src/zodb/fs1/scan.js';
import { CorruptError } from '../src/zodb/errors.js';
import { FsBuilder, TmpDirs, bytes } from './helpers/fs1util.js';
import { seedOr } from './helpers/fuzz.js';

const tmp = new TmpDirs();
afterAll(() => tmp.cleanup());
const seed = seedOr(Date.now() % 1e9);
console.log(`fs1-format: fast-check seed ${seed} (set WCFS_SEED to replay)`);

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('layouts', () => {
  it('magic', () => {
    expect(decodeMagic(bytes('FS21'), 'f')).toBe('FS21');
    expect(decodeMagic(bytes('FS30xyz'), 'f')).toBe('FS30');
    expect(hex(encodeMagic())).toBe(hex(bytes('FS30')));
    expect(() => decodeMagic(bytes('FS3'), 'f')).toThrow(CorruptError);
  });

  it('txn header: 23 bytes, big-endian, as in zodb.md §2.3', () => {
    const b = new Uint8Array(TXN_HEADER_SIZE);
    encodeTxnHeader({ tid: 0x040d2988fe329been, tlen: 0x9a, status: ' ', ulen: 0, dlen: 0x19, elen: 0 }, b, 0);
    // the first txn header of the zodb-history fixture, byte for byte
    expect(hex(b)).toBe('040d2988fe329bee000000000000009a2000000019' + '0000');
    expect(decodeTxnHeader(b, 0, 4, 'f')).toEqual({ pos: 4, tid: 0x040d2988fe329been, tlen: 0x9a, status: ' ', ulen: 0, dlen: 0x19, elen: 0 });
  });

  it('data header: 42 bytes', () => {
    const b = new Uint8Array(DATA_HEADER_SIZE);
    encodeDataHeader({ oid: 1n, tid: 2n, prev: 3, tloc: 4, plen: 0x10203 }, b, 0);
    expect(hex(b)).toBe('0000000000000001' + '0000000000000002' + '0000000000000003' + '0000000000000004' + '0000' + '0000000000010203');
    expect(decodeDataHeader(b, 0, 100, 'f')).toEqual({ pos: 100, oid: 1n, tid: 2n, prev: 3, tloc: 4, plen: 0x10203 });
  });

  it('header checks name the offset', () => {
    const b = new Uint8Array(TXN_HEADER_SIZE);
    encodeTxnHeader({ tid: 1n, tlen: 10, status: ' ', ulen: 0, dlen: 0, elen: 0 }, b, 0);
    expect(() => decodeTxnHeader(b, 0, 1234, 'f')).toThrow(/f: @1234: .*invalid length 10/);
    const d = new Uint8Array(DATA_HEADER_SIZE);
    encodeDataHeader({ oid: 1n, tid: 2n, prev: 500, tloc: 4, plen: 1 }, d, 0);
    expect(() => decodeDataHeader(d, 0, 400, 'f')).toThrow(/f: @400: .*prev 500 not before/);
  });
});

describe('encodeTxn → scan (property)', () => {
  it('any sequence of txns reads back with every check passing', () => {
    const data = fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.constant<'deleted'>('deleted'));
    const txn = fc.record({
      recs: fc.uniqueArray(fc.tuple(fc.bigInt({ min: 0n, max: 20n }), data), { selector: (r) => r[0], maxLength: 6 }),
      status: fc.constantFrom<' ' | 'p' | 'u'>(' ', 'p', 'u'),
      user: fc.string({ maxLength: 20 }),
      desc: fc.string({ maxLength: 40 }),
      gap: fc.bigInt({ min: 1n, max: 1n << 40n }),
    });
    const dir = tmp.make();
    let n = 0;
    fc.assert(
      fc.property(fc.array(txn, { minLength: 1, maxLength: 8 }), (txns) => {
        const b = new FsBuilder();
        let tid = 0x0300000000000000n;
        const want = new Map<bigint, number>();
        const tids: bigint[] = [];
        for (const t of txns) {
          tid += t.gap;
          tids.push(tid);
          const { dpos } = b.txn(
            tid,
            t.recs.map(([oid, d]) => ({ oid, data: d })),
            { status: t.status, user: t.user, desc: t.desc },
          );
          t.recs.forEach(([oid], i) => want.set(oid, dpos[i]!));
        }
        const f = b.write(path.join(dir, `p${n++}.fs`));
        const rep = checkFile(f);
        fs.rmSync(f);
        expect(rep.tail).toBe('eof');
        expect(rep.tids).toEqual(tids);
        expect(rep.index).toEqual(want);
      }),
      { seed, numRuns: 200 },
    );
  });

  it('encodeTxn rejects empty data and oversize metadata', () => {
    expect(() => encodeTxn(4, 1n, ' ', new Uint8Array(0), new Uint8Array(0), new Uint8Array(0), [{ oid: 1n, prev: 0, data: new Uint8Array(0) }])).toThrow(
      RangeError,
    );
    expect(() => encodeTxn(4, 1n, ' ', new Uint8Array(70000), new Uint8Array(0), new Uint8Array(0), [])).toThrow(RangeError);
  });
});
