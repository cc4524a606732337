// ZBlk1 assembly in native code (notes.md §8 "ZBlk1"): the batched FileStorage record lookup
// (native/fs1views.cc, FileStorage.loadTransientMany) and the ZData gather (native/zdata.cc),
// each against the JS path it shortcuts.
//
//   fs1DataViews: a range exactly where loadTransient's common case applies — table of header
//     fields, seeded random headers against the JS header checks (format.ts), and on real
//     files (fixtures, backpointers, deletions, every revision) never a range where
//     loadTransient gives other bytes or an error.
//   zdataGather: takes a chunk exactly when zdataFast does and readZBlk1's checks pass — table,
//     seeded random chunk lists against a JS model built on zdataFast; the layouts themselves
//     are fuzzed against zdataFast in test/pickle-fuzz.test.ts.
//   readZBlk1: a chunk native code refuses goes through the decoder, and the batch resumes
//     after it.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../src/native.js';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { DATA_HEADER_SIZE, decodeDataHeader } from '../src/zodb/fs1/format.js';
import { StorageLoader, WriteTxn } from '../src/zodb/db.js';
import { openStorage } from '../src/zodb/open.js';
import { ZBigFileView, ZDATA_CLASS, createZBigFile, ensureRoot, setBlock, zdataFast } from '../src/zodb/zbigfile.js';
import { encodeRecord } from '../src/zodb/pickle/index.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { hex16, type Oid, type Tid } from '../src/zodb/ids.js';
import { rng } from '../src/util/rng.js';
import { FsBuilder, TmpDirs, allFixtures, collect, eqBytes } from './helpers/fs1util.js';
import { seedOr } from './helpers/fuzz.js';

const tmp = new TmpDirs();
afterAll(() => tmp.cleanup());

/** Integers in [0, n) from the project's PRNG. */
function randInt(seed: number): { int(n: number): number } {
  const f = rng(seed);
  return { int: (n) => Math.floor(f() * n) };
}

// ---- fs1DataViews ----

/** A data record header at pos: the fields as numbers/bigints, big-endian as in Data.fs. */
interface Hdr {
  oid: bigint;
  tid: bigint;
  prev: bigint;
  tloc: bigint;
  vlen: number;
  plen: bigint;
}
function putHdr(b: Uint8Array, pos: number, h: Hdr): void {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  v.setBigUint64(pos, h.oid);
  v.setBigUint64(pos + 8, h.tid);
  v.setBigUint64(pos + 16, h.prev);
  v.setBigUint64(pos + 24, h.tloc);
  v.setUint16(pos + 32, h.vlen);
  v.setBigUint64(pos + 34, h.plen);
}

/** fs1DataViews for one record: [start, end] or undefined (-1). */
function views1(map: Uint8Array, limit: number, at: Tid, oid: Oid, pos: number): [number, number] | undefined {
  const ranges = new Float64Array([pos, 12345]);
  const done = native().fs1DataViews(map, limit, at, BigUint64Array.of(oid), 1, ranges);
  expect(done).toBe(ranges[0] === -1 ? 0 : 1);
  if (ranges[0] === -1) {
    expect(ranges[1]).toBe(-1);
    return undefined;
  }
  return [ranges[0]!, ranges[1]!];
}

describe('fs1DataViews: table', () => {
  const POS = 1000;
  const good: Hdr = { oid: 7n, tid: 0x0300n, prev: 500n, tloc: 900n, vlen: 0, plen: 100n };
  const dpos = POS + DATA_HEADER_SIZE;
  const cases: Array<[string, Partial<Hdr> | null, { at?: bigint; limit?: number; pos?: number; oid?: bigint }, boolean]> = [
    ['the common case', null, {}, true],
    ['tid = at', null, { at: 0x0300n }, true],
    ['record ends exactly at limit', null, { limit: dpos + 100 }, true],
    ['prev 0 (first record of the oid)', { prev: 0n }, {}, true],
    ['another oid at the position', { oid: 8n }, {}, false],
    ['tid > at (older revision: prev walk)', null, { at: 0x02ffn }, false],
    ['version length ≠ 0', { vlen: 1 }, {}, false],
    ['plen 0 (backpointer)', { plen: 0n }, {}, false],
    ['plen > 2⁴⁸', { plen: 2n ** 48n }, {}, false],
    ['plen 2⁶⁴-1 (no wrap)', { plen: 2n ** 64n - 1n }, {}, false],
    ['prev = pos', { prev: BigInt(POS) }, {}, false],
    ['tloc = pos', { tloc: BigInt(POS) }, {}, false],
    ['tloc 2⁶⁴-1', { tloc: 2n ** 64n - 1n }, {}, false],
    ['data past limit by one byte', null, { limit: dpos + 99 }, false],
    ['header past limit', null, { limit: POS + 41 }, false],
    ['no position (unknown oid)', null, { pos: -1 }, false],
    ['position past the map', null, { pos: 5000 }, false],
    ['position NaN', null, { pos: NaN }, false],
  ];
  it.each(cases)('%s', (_name, edit, o, ok) => {
    const map = new Uint8Array(4096);
    putHdr(map, POS, { ...good, ...edit });
    const got = views1(map, o.limit ?? 4096, o.at ?? 0x0400n, o.oid ?? 7n, o.pos ?? POS);
    expect(got).toEqual(ok ? [dpos, dpos + 100] : undefined);
  });

  it('refuses bad arguments (limit past the map, n past the arrays)', () => {
    const map = new Uint8Array(100);
    expect(() => native().fs1DataViews(map, 101, 1n, new BigUint64Array(1), 1, new Float64Array(2))).toThrow(RangeError);
    expect(() => native().fs1DataViews(map, 100, 1n, new BigUint64Array(1), 2, new Float64Array(4))).toThrow(RangeError);
    expect(() => native().fs1DataViews(map, 100, 1n, new BigUint64Array(2), 2, new Float64Array(3))).toThrow(RangeError);
    expect(() => native().fs1DataViews(map, 100, -1n, new BigUint64Array(1), 1, new Float64Array(2))).toThrow(RangeError);
  });
});

describe('fs1DataViews: seeded random headers against the JS header checks', () => {
  it('a range exactly when decodeDataHeader passes and the record is of the oid, ≤ at, with data inside limit', () => {
    const seed = seedOr(20261207);
    const r = randInt(seed);
    const u64 = (): bigint => (BigInt(r.int(0x100000000)) << 32n) | BigInt(r.int(0x100000000));
    const near = (x: number): bigint => BigInt(Math.max(0, x + r.int(7) - 3));
    let taken = 0;
    for (let k = 0; k < 3000; k++) {
      const map = new Uint8Array(2048);
      const pos = 8 + r.int(1900);
      const h: Hdr = {
        oid: r.int(4) === 0 ? u64() : BigInt(r.int(2)),
        tid: r.int(4) === 0 ? u64() : BigInt(100 + r.int(10)),
        prev: r.int(4) === 0 ? u64() : near(r.int(pos + 4)),
        tloc: r.int(4) === 0 ? u64() : near(r.int(pos + 4)),
        vlen: r.int(5) === 0 ? r.int(3) : 0,
        plen: r.int(4) === 0 ? u64() : BigInt(r.int(300)),
      };
      putHdr(map, pos, h);
      const limit = r.int(3) === 0 ? r.int(2049) : 2048;
      const at = BigInt(100 + r.int(20));
      const oid = BigInt(r.int(2));
      const got = views1(map, limit, at, oid, pos);
      let want: [number, number] | undefined;
      try {
        if (pos + DATA_HEADER_SIZE <= limit) {
          const d = decodeDataHeader(map, pos, pos, 'rand');
          const dp = pos + DATA_HEADER_SIZE;
          if (d.oid === oid && d.tid <= at && d.plen > 0 && dp + d.plen <= limit) want = [dp, dp + d.plen];
        }
      } catch {
        want = undefined; // a header the JS checks refuse: the general path reports it
      }
      expect(got, `seed ${seed} case ${k}: ${JSON.stringify({ pos, limit, at: `${at}`, oid: `${oid}` })}`).toEqual(want);
      if (want) taken++;
    }
    expect(taken).toBeGreaterThan(100);
  });
});

/** Every oid of s at `at` through loadTransientMany, each checked against loadTransient. */
function checkMany(s: FileStorage, oids: Oid[], at: Tid): number {
  const arr = BigUint64Array.from(oids);
  const ranges = new Float64Array(2 * oids.length);
  const m = s.loadTransientMany(arr, oids.length, at, ranges);
  expect(m).toBeDefined();
  let taken = 0;
  oids.forEach((oid, i) => {
    if (ranges[2 * i] === -1) return;
    taken++;
    const view = m!.subarray(ranges[2 * i]!, ranges[2 * i + 1]!);
    const t = s.loadTransient(oid, at); // throws if a range was given where the load fails
    expect(eqBytes(view, t.data), `oid ${hex16(oid)} @${hex16(at)}`).toBe(true);
  });
  return taken;
}

describe('FileStorage.loadTransientMany: never a range where loadTransient differs', () => {
  it.each(allFixtures)('fixture %s, every oid at every revision', async (_name, file) => {
    const s = await FileStorage.open(file, { readOnly: true, warn: () => {} });
    try {
      const txns = await collect(s.iterate());
      const oids = [...new Set(txns.flatMap((t) => t.records.map((rec) => rec.oid)))];
      oids.push(s.lastOid() + 1000n); // unknown
      let taken = 0;
      const ats = txns.map((t) => t.tid);
      for (const at of ats.length > 60 ? ats.filter((_, i) => i % Math.ceil(ats.length / 60) === 0) : ats) taken += checkMany(s, oids, at);
      taken += checkMany(s, oids, s.head());
      expect(taken).toBeGreaterThan(oids.length / 2);
    } finally {
      await s.close();
    }
  });

  it('backpointers, deletions, unknown oids: -1, and the general path decides', async () => {
    const T = (n: number) => 0x03f0000000000000n + BigInt(n) * 0x1000n;
    const b = new FsBuilder();
    const t1 = b.txn(T(1), [
      { oid: 0n, data: 'root' },
      { oid: 1n, data: 'A' },
      { oid: 2n, data: 'x' },
      { oid: 3n, data: 'kept' },
    ]);
    b.txn(T(2), [{ oid: 1n, data: { bp: t1.dpos[1]! } }]);
    b.txn(T(3), [{ oid: 2n, data: 'deleted' }]);
    const f = b.write(path.join(tmp.make(), 'bp.fs'));
    const s = await FileStorage.open(f, { readOnly: true, warn: () => {} });
    try {
      const ranges = new Float64Array(10);
      const m = s.loadTransientMany(BigUint64Array.of(0n, 1n, 2n, 3n, 99n), 5, s.head(), ranges);
      expect(m).toBeDefined();
      // root, oid 3: their own data; oid 1 (backpointer), oid 2 (deleted), oid 99: the general path
      expect(Array.from(ranges).map((x) => x === -1)).toEqual([false, false, true, true, true, true, false, false, true, true]);
      expect(Buffer.from(m!.subarray(ranges[6]!, ranges[7]!)).toString()).toBe('kept');
      // as of T(1), oid 1's start record is still the newer backpointer (prev walk): -1
      checkMany(s, [0n, 1n, 2n, 3n], T(1));
      checkMany(s, [0n, 1n, 3n], T(2));
    } finally {
      await s.close();
    }
  });
});

// ---- zdataGather ----

/** One chunk of a gather: its record (undefined: no range) and where it lands. */
interface Chunk {
  rec?: Uint8Array;
  off: number;
}

/** The JS model: readZBlk1's loop with zdataFast, stopping where the native gather must stop. */
function modelGather(chunks: Chunk[], from: number, out: Uint8Array, stop0: number): { i: number; stop: number } {
  let stop = stop0;
  for (let i = from; i < chunks.length; i++) {
    const c = chunks[i]!;
    const b = c.rec === undefined ? undefined : zdataFast(c.rec);
    if (b === undefined || c.off < stop || c.off + b.length > out.length) return { i, stop };
    out.fill(0, stop, c.off);
    out.set(b, c.off);
    stop = c.off + b.length;
  }
  return { i: chunks.length, stop };
}

function nativeGather(chunks: Chunk[], from: number, out: Uint8Array, stop0: number, junk = 0): { i: number; stop: number } {
  // the records back to back in one source with junk between, as in a Data.fs map
  const parts: Uint8Array[] = [];
  const ranges = new Float64Array(2 * chunks.length);
  let p = 0;
  chunks.forEach((c, k) => {
    parts.push(new Uint8Array(junk).fill(0x2e)); // STOP bytes: a read past a record would see them
    p += junk;
    if (c.rec === undefined) {
      ranges[2 * k] = ranges[2 * k + 1] = -1;
      return;
    }
    parts.push(c.rec);
    ranges[2 * k] = p;
    ranges[2 * k + 1] = p + c.rec.length;
    p += c.rec.length;
  });
  parts.push(new Uint8Array(junk).fill(0x2e));
  const src = Buffer.concat(parts);
  const st = Float64Array.of(stop0);
  const offs = Float64Array.from(chunks.map((c) => c.off));
  const i = native().zdataGather(src, ranges, offs, from, chunks.length, out, st);
  return { i, stop: st[0]! };
}

const zrec = (data: Uint8Array) => encodeRecord(ZDATA_CLASS, data);
const pat = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff || 1);

describe('zdataGather: table', () => {
  const BS = 64;
  const cases: Array<[string, Chunk[], number, number]> = [
    // name, chunks, want i, want stop
    ['no chunks', [], 0, 0],
    [
      'two chunks with a gap',
      [
        { rec: zrec(pat(8, 1)), off: 0 },
        { rec: zrec(pat(8, 2)), off: 16 },
      ],
      2,
      24,
    ],
    ['a chunk ending exactly at blksize', [{ rec: zrec(pat(16, 3)), off: 48 }], 1, 64],
    ['an empty chunk', [{ rec: zrec(new Uint8Array(0)), off: 8 }], 1, 8],
    ['no range: stops there', [{ rec: zrec(pat(8, 1)), off: 0 }, { off: 16 }, { rec: zrec(pat(8, 2)), off: 32 }], 1, 8],
    [
      'overlap with the previous chunk: stops',
      [
        { rec: zrec(pat(8, 1)), off: 0 },
        { rec: zrec(pat(8, 2)), off: 7 },
      ],
      1,
      8,
    ],
    ['past blksize by one byte: stops', [{ rec: zrec(pat(17, 3)), off: 48 }], 0, 0],
    ['offset past blksize: stops', [{ rec: zrec(new Uint8Array(0)), off: 65 }], 0, 0],
    [
      'a layout zdataFast does not take (protocol 0 text): stops',
      [{ rec: Buffer.from('cwendelin.bigfile.file_zodb\nZData\n.S"a"\n.', 'latin1'), off: 0 }],
      0,
      0,
    ],
    ['a record cut short: stops', [{ rec: zrec(pat(8, 1)).subarray(0, 20), off: 0 }], 0, 0],
  ];
  it.each(cases)('%s', (_name, chunks, wi, wstop) => {
    const a = new Uint8Array(BS).fill(0xee);
    const b = new Uint8Array(BS).fill(0xee);
    expect(nativeGather(chunks, 0, a, 0, 5)).toEqual({ i: wi, stop: wstop });
    expect(modelGather(chunks, 0, b, 0)).toEqual({ i: wi, stop: wstop });
    expect(Buffer.compare(a, b)).toBe(0); // gaps zeroed, the tail past stop untouched
  });

  it('resumes from `from` with the stop it is given', () => {
    const chunks: Chunk[] = [{ rec: zrec(pat(8, 1)), off: 0 }, { off: 8 }, { rec: zrec(pat(8, 2)), off: 20 }];
    const out = new Uint8Array(32).fill(0xee);
    expect(nativeGather(chunks, 2, out, 12)).toEqual({ i: 3, stop: 28 });
    expect(Array.from(out.subarray(0, 12))).toEqual(new Array(12).fill(0xee)); // before stop: not its business
    expect(Array.from(out.subarray(12, 20))).toEqual(new Array(8).fill(0)); // the gap
    expect(nativeGather(chunks, 2, out, 21)).toEqual({ i: 2, stop: 21 }); // overlap with the given stop
  });

  it('refuses bad arguments', () => {
    const out = new Uint8Array(8);
    const g = (from: number, n: number, stop: number, ranges = new Float64Array(2), offs = new Float64Array(1)) =>
      native().zdataGather(new Uint8Array(8), ranges, offs, from, n, out, Float64Array.of(stop));
    expect(() => g(0, 2, 0)).toThrow(RangeError);
    expect(() => g(2, 1, 0)).toThrow(RangeError);
    expect(() => g(0, 1, 9)).toThrow(RangeError);
    expect(() => g(0, 1, 0, new Float64Array(1))).toThrow(RangeError);
  });
});

describe('zdataGather: seeded random chunk lists against the JS model', () => {
  it('the same stop index, stop and block bytes', () => {
    const seed = seedOr(20261208);
    const r = randInt(seed);
    let full = 0;
    for (let k = 0; k < 1500; k++) {
      const bs = 16 + r.int(200);
      const chunks: Chunk[] = [];
      let off = 0;
      for (let n = r.int(12); n > 0; n--) {
        off += r.int(10) === 0 ? -r.int(8) : r.int(12); // now and then an overlap
        const len = r.int(40);
        const roll = r.int(30);
        let rec: Uint8Array | undefined = zrec(pat(len, k + n));
        if (roll === 0) rec = undefined;
        else if (roll === 1) rec = rec.subarray(0, r.int(rec.length));
        else if (roll === 2) rec = Uint8Array.from(rec, (x, i) => (i === r.int(rec!.length) ? r.int(256) : x));
        chunks.push({ rec, off: Math.max(0, off) });
        off = Math.max(0, off) + len;
      }
      const from = r.int(chunks.length + 1);
      const stop0 = r.int(Math.min(bs, chunks[from]?.off ?? bs) + 1);
      const a = new Uint8Array(bs).fill(0xee);
      const b = new Uint8Array(bs).fill(0xee);
      const got = nativeGather(chunks, from, a, stop0, r.int(3));
      const want = modelGather(chunks, from, b, stop0);
      expect(got, `seed ${seed} case ${k}`).toEqual(want);
      expect(Buffer.compare(a, b), `seed ${seed} case ${k}`).toBe(0);
      if (want.i === chunks.length && chunks.length > 3) full++;
    }
    expect(full).toBeGreaterThan(100);
  });
});

// ---- readZBlk1: fallback and resume ----

describe('ZBlk1 assembly: chunks native code refuses', () => {
  it('go through the decoder one by one, and the batch resumes after each', async () => {
    const BLK = 64 * 1024;
    const dir = tmp.make();
    const f = path.join(dir, 'odd.fs');
    const want = new Uint8Array(BLK);
    for (let i = 0; i < BLK; i++) want[i] = (i * 13 + 5) & 0xff || 1;
    let foid: Oid;
    {
      const s = (await openStorage(f, { create: true })) as IWritableStorage;
      await ensureRoot(s);
      const txn = new WriteTxn(s);
      foid = createZBigFile(txn, BLK);
      await setBlock(txn, foid, 0, want, { format: 'ZBlk1' }); // 16 chunks of 4 KiB
      await txn.commit();
      await s.close();
    }
    // Rewrite 3 of the 16 ZData class pickles in place, same length, in a form the decoder
    // takes and zdataFast does not: BINPUT k → NONE POP.
    const img = fs.readFileSync(f);
    // a record's class pickle: PROTO 3 first (the chunktab's refs name the class too, inside)
    const cls = Buffer.from('\x80\x03cwendelin.bigfile.file_zodb\nZData\nq', 'latin1');
    const at: number[] = [];
    for (let p = img.indexOf(cls); p >= 0; p = img.indexOf(cls, p + 1)) at.push(p + cls.length - 1);
    expect(at.length).toBe(16);
    for (const k of [0, 7, 15]) {
      img[at[k]!] = 0x4e; // NONE
      img[at[k]! + 1] = 0x30; // POP
    }
    fs.writeFileSync(f, img);
    fs.rmSync(f + '.index', { force: true });

    const s = await FileStorage.open(f, { readOnly: true, warn: () => {} });
    try {
      const loader = new StorageLoader(s);
      let one = 0; // chunks taken one by one (the transient load of a record)
      const lr = loader.loadRecordTransient!;
      (loader as { loadRecordTransient?: typeof lr }).loadRecordTransient = (oid, t) => (one++, lr(oid, t));
      const v = await ZBigFileView.open(loader, foid, s.head());
      const out = new Uint8Array(BLK).fill(0xee);
      expect(Buffer.compare((await v.loadBlock(0, out)).data, want)).toBe(0);
      one = 0; // the B-tree nodes are in the node cache now: what is left is chunks
      out.fill(0xee);
      const got = await v.loadBlock(0, out);
      expect(Buffer.compare(got.data, want)).toBe(0);
      expect(one).toBe(3); // the other 13 chunks: native, in the runs between the odd three
    } finally {
      await s.close();
    }
  });
});
