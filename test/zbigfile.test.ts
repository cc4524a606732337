// ZBigFile data model over real FileStorage files:
//  1. wendelin.core's own zblk.fs test databases (py2 pickle 1/2/3, py3 pickle 3);
//  2. the zodb-history FileStorage written by real ZODB: every block of every file at every
//     revision against manifest.json, with the shipped .index and without it;
//  4. write round trip: random histories written by our writer, read back at every revision.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { copyFileSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { StorageLoader, WriteTxn } from '../src/zodb/db.js';
import { hex16, parseHex16, type Tid } from '../src/zodb/ids.js';
import { Tuple, type PyValue } from '../src/zodb/pickle/index.js';
import { openStorage } from '../src/zodb/open.js';
import type { IStorage, IWritableStorage } from '../src/zodb/storage.js';
import { ZBigFileView, createZBigFile, ensureRoot, setBlock, trimZeros } from '../src/zodb/zbigfile.js';
import { fixturesDir, historyManifestPath, historyPath, zblkKinds, zblkPath } from './helpers/paths.js';
import { makeTmpDir } from './helpers/tmp.js';

const sha1 = (b: Uint8Array) => createHash('sha1').update(b).digest('hex');
const zeros = new Uint8Array(4 << 20);
const isZero = (b: Uint8Array) => b.length <= zeros.length && Buffer.compare(b, zeros.subarray(0, b.length)) === 0;

// ---- 1. wendelin.core zblk.fs ----

const expected = JSON.parse(readFileSync(path.join(fixturesDir, 'wendelin-zblk', 'expected.json'), 'utf8'));

describe('wendelin-zblk fixtures', () => {
  for (const kind of zblkKinds) {
    it(`${kind}: ZBigFile, ZBlk0, ZBlk1 as expected.json says`, async () => {
      const s = await openStorage(zblkPath(kind), { readOnly: true });
      try {
        const loader = new StorageLoader(s);
        const head = s.head();
        const f = await ZBigFileView.open(loader, BigInt(expected.zf_oid), head);
        expect(f.blksize).toBe(expected.zf_blksize);
        expect((await f.size()).size).toBe(expected.zf_size);
        for (const [blk, want] of Object.entries(expected.blocks_sha1_full)) {
          const b = await f.loadBlock(Number(blk));
          expect(b.data.length).toBe(expected.zf_blksize);
          expect(sha1(b.data), `blk ${blk}`).toBe(want);
        }
        const b1 = await f.loadBlock(1);
        expect(b1.zblk).toEqual({ oid: BigInt(expected.z0_oid), kind: 'ZBlk0', serial: parseHex16(expected.z0_rev) });
        const z0 = trimZeros(b1.data);
        expect(z0.length).toBe(expected.z0_len);
        expect(sha1(z0)).toBe(expected.z0_sha1);
        const b3 = await f.loadBlock(3);
        expect(b3.zblk).toEqual({ oid: BigInt(expected.z1_oid), kind: 'ZBlk1', serial: parseHex16(expected.z1_rev) });
        const z1 = trimZeros(b3.data);
        expect(z1.length).toBe(expected.z1_len_trimmed);
        expect(sha1(z1)).toBe(expected.z1_sha1_trimmed);
        expect(b3.revMax).toBe(parseHex16(expected.z1_rev));
        // holes: zeros, path = [blktab, embedded bucket]
        const b0 = await f.loadBlock(0);
        expect(b0.zblk).toBe(null);
        expect(isZero(b0.data)).toBe(true);
        expect(b0.path.map((n) => n.oid)).toEqual([f.blktab, null]);
        // past EOF: a hole as well (size is the caller's business)
        expect(isZero((await f.loadBlock(100)).data)).toBe(true);
        // an allocator (a server's buffer pool) is asked only for blocks that need memory of
        // their own, and its dirty buffers come back exactly as fresh ones would
        let asked = 0;
        const dirty = () => (asked++, new Uint8Array(f.blksize).fill(0xee));
        expect((await f.loadBlock(0, dirty)).data).toBe(b0.data); // the shared zero block
        expect(asked).toBe(0);
        for (const blk of Object.keys(expected.blocks_sha1_full)) {
          const b = await f.loadBlock(Number(blk), dirty);
          expect(sha1(b.data), `blk ${blk} (allocator)`).toBe(expected.blocks_sha1_full[blk]);
        }
        expect(asked).toBeGreaterThan(0);
      } finally {
        await s.close();
      }
    });
  }
});

// ---- 2. zodb-history: every block at every revision ----

interface Manifest {
  files: Record<string, { blksize: number; created: string }>;
  txns: Array<{ tid: string; sizes: Record<string, number>; changed: Record<string, Record<string, string | null>> }>;
  final: Record<string, Record<string, string>>;
}
const manifest: Manifest = JSON.parse(readFileSync(historyManifestPath, 'utf8'));

async function checkHistory(s: IStorage): Promise<number> {
  const loader = new StorageLoader(s);
  const state = new Map<string, Map<number, string | null>>(); // foid → blk → sha1 (null = zeros)
  let checked = 0;
  for (const txn of manifest.txns) {
    const at = parseHex16(txn.tid);
    for (const [foid, blocks] of Object.entries(txn.changed)) {
      const m = state.get(foid) ?? new Map();
      state.set(foid, m);
      for (const [blk, h] of Object.entries(blocks)) m.set(Number(blk), h);
    }
    for (const [foid, size] of Object.entries(txn.sizes)) {
      const f = await ZBigFileView.open(loader, parseHex16(foid), at);
      expect(f.blksize).toBe(manifest.files[foid]!.blksize);
      expect((await f.size()).size, `${foid} size @${txn.tid}`).toBe(size);
      const m = state.get(foid) ?? new Map();
      for (let blk = 0; blk < size / f.blksize; blk++) {
        const { data } = await f.loadBlock(blk);
        const want = m.get(blk) ?? null;
        if (want === null) expect(isZero(data), `${foid} #${blk} @${txn.tid} zeros`).toBe(true);
        else expect(sha1(data), `${foid} #${blk} @${txn.tid}`).toBe(want);
        checked++;
      }
    }
  }
  // and the final state as listed
  const head = s.head();
  expect(hex16(head)).toBe(manifest.txns[manifest.txns.length - 1]!.tid);
  for (const [foid, blocks] of Object.entries(manifest.final)) {
    const f = await ZBigFileView.open(loader, parseHex16(foid), head);
    for (const [blk, h] of Object.entries(blocks)) expect(sha1((await f.loadBlock(Number(blk))).data)).toBe(h);
  }
  return checked;
}

describe('zodb-history fixture: every block of every file at every revision', () => {
  let tmp: ReturnType<typeof makeTmpDir>;
  beforeAll(() => {
    tmp = makeTmpDir();
  });
  afterAll(() => tmp.cleanup());

  it('with the shipped .index', async () => {
    const s = await openStorage(historyPath, { readOnly: true });
    try {
      expect(await checkHistory(s)).toBeGreaterThan(1000);
    } finally {
      await s.close();
    }
  });
  it('without .index (rebuilt by scanning)', async () => {
    const p = path.join(tmp.dir, 'data.fs');
    copyFileSync(historyPath, p);
    const s = await openStorage(p, { readOnly: true });
    try {
      expect(await checkHistory(s)).toBeGreaterThan(1000);
    } finally {
      await s.close();
    }
  });
});

// ---- 4. write round trip ----

type Op = { t: 'set'; blk: number; fill: number; len: number; zeroChunk: boolean; fmt: 'ZBlk0' | 'ZBlk1' | undefined } | { t: 'punch'; blk: number };

const BLKSIZE = 16384; // 4 ZBlk1 chunks per block

function blockBytes(op: Extract<Op, { t: 'set' }>): Uint8Array {
  const b = new Uint8Array(op.len);
  for (let i = 0; i < op.len; i++) b[i] = (op.fill + i * 13) & 0xff || 1;
  if (op.zeroChunk && op.len > 8192) b.fill(0, 4096, 8192); // an all-zero chunk in the middle
  return b;
}

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      t: fc.constant('set' as const),
      blk: fc.integer({ min: 0, max: 12 }),
      fill: fc.integer({ min: 0, max: 255 }),
      len: fc.oneof(fc.constant(BLKSIZE), fc.integer({ min: 0, max: BLKSIZE })),
      zeroChunk: fc.boolean(),
      fmt: fc.constantFrom('ZBlk0' as const, 'ZBlk1' as const, undefined),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('punch' as const), blk: fc.integer({ min: 0, max: 12 }) }) },
);

describe('ZBigFile writer round trip', () => {
  it('random histories read back identically at every revision (property)', async () => {
    const tmp = makeTmpDir();
    let run = 0;
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(fc.array(opArb, { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 6 }), async (txns) => {
          const p = path.join(tmp.dir, `rt${run++}.fs`);
          const s = (await openStorage(p, { create: true })) as IWritableStorage;
          try {
            await ensureRoot(s);
            let txn = new WriteTxn(s);
            const foid = createZBigFile(txn, BLKSIZE);
            await txn.commit();
            const model = new Map<number, Uint8Array>();
            const history: Array<{ tid: Tid; blocks: Map<number, Uint8Array> }> = [];
            for (const ops of txns) {
              txn = new WriteTxn(s);
              for (const op of ops) {
                if (op.t === 'set') {
                  const data = blockBytes(op);
                  await setBlock(txn, foid, op.blk, data, op.fmt ? { format: op.fmt } : {});
                  const full = new Uint8Array(BLKSIZE);
                  full.set(data);
                  model.set(op.blk, full);
                } else {
                  await setBlock(txn, foid, op.blk, null);
                  model.delete(op.blk);
                }
              }
              const tid = await txn.commit();
              history.push({ tid, blocks: new Map(model) });
            }
            const loader = new StorageLoader(s);
            for (const { tid, blocks } of history) {
              const f = await ZBigFileView.open(loader, foid, tid);
              const maxBlk = Math.max(-1, ...blocks.keys());
              expect((await f.size()).size).toBe((maxBlk + 1) * BLKSIZE);
              for (let blk = 0; blk <= maxBlk + 1; blk++) {
                const got = (await f.loadBlock(blk)).data;
                const want = blocks.get(blk) ?? new Uint8Array(BLKSIZE);
                expect(Buffer.compare(got, want), `blk ${blk} @${hex16(tid)}`).toBe(0);
              }
            }
          } finally {
            await s.close();
          }
        }),
        { numRuns: 40 },
      );
    } finally {
      tmp.cleanup();
    }
  });

  it('a ZBlk1 is stored whenever one of its chunks changes (writer invariant)', async () => {
    const tmp = makeTmpDir();
    try {
      const s = (await openStorage(path.join(tmp.dir, 'inv.fs'), { create: true })) as IWritableStorage;
      try {
        await ensureRoot(s);
        let txn = new WriteTxn(s);
        const foid = createZBigFile(txn, BLKSIZE);
        const data = new Uint8Array(BLKSIZE).fill(7);
        await setBlock(txn, foid, 0, data, { format: 'ZBlk1' });
        await txn.commit();
        const f = await ZBigFileView.open(new StorageLoader(s), foid, s.head());
        const zblk = (await f.loadBlock(0)).zblk!;
        expect(zblk.kind).toBe('ZBlk1');
        // change one byte in chunk 2 only
        txn = new WriteTxn(s);
        data[2 * 4096 + 5] = 9;
        await setBlock(txn, foid, 0, data);
        expect(txn.changed()).toContain(zblk.oid);
        expect(txn.changed()).toHaveLength(2); // the ZBlk1 and the one ZData
        const tid = await txn.commit();
        // the same data again: nothing changes
        txn = new WriteTxn(s);
        await setBlock(txn, foid, 0, data);
        expect(txn.changed()).toEqual([]);
        txn.abort();
        const f2 = await ZBigFileView.open(new StorageLoader(s), foid, tid);
        expect((await f2.loadBlock(0)).zblk!.serial).toBe(tid);
      } finally {
        await s.close();
      }
    } finally {
      tmp.cleanup();
    }
  });
});

describe('ZBigFile writer: data ownership', () => {
  it("setBlock copies the data: reusing the caller's Buffer before commit changes nothing", async () => {
    const tmp = makeTmpDir();
    try {
      const s = (await openStorage(path.join(tmp.dir, 'own.fs'), { create: true })) as IWritableStorage;
      try {
        await ensureRoot(s);
        const txn = new WriteTxn(s);
        const foid = createZBigFile(txn, BLKSIZE);
        const buf = Buffer.alloc(BLKSIZE, 1);
        await setBlock(txn, foid, 0, buf, { format: 'ZBlk0' });
        await setBlock(txn, foid, 1, buf, { format: 'ZBlk1' });
        buf.fill(2); // the caller reuses its buffer
        const tid = await txn.commit();
        const f = await ZBigFileView.open(new StorageLoader(s), foid, tid);
        for (const blk of [0, 1])
          expect(
            (await f.loadBlock(blk)).data.every((x) => x === 1),
            `#${blk}`,
          ).toBe(true);
      } finally {
        await s.close();
      }
    } finally {
      tmp.cleanup();
    }
  });
});

describe('ZData fast path', () => {
  it('agrees with the pickle decoder: our records and every ZData of the fixtures', async () => {
    const { encodeRecord, decodeRecord, asBytes } = await import('../src/zodb/pickle/index.js');
    const { zdataFast, ZDATA_CLASS } = await import('../src/zodb/zbigfile.js');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 5000 }), (b) => {
        const got = zdataFast(encodeRecord(ZDATA_CLASS, b));
        expect(got && Buffer.compare(got, b)).toBe(0);
      }),
      { numRuns: 200 },
    );
    let fast = 0;
    for (const p of [...zblkKinds.map(zblkPath), historyPath]) {
      const s = await openStorage(p, { readOnly: true });
      try {
        for await (const t of s.iterate()) {
          for (const r of t.records) {
            if (r.data === null) continue;
            const rec = decodeRecord(r.data);
            const f = zdataFast(r.data);
            if (!rec.klass.is('wendelin.bigfile.file_zodb', 'ZData')) {
              expect(f).toBeUndefined();
              continue;
            }
            if (f !== undefined) {
              fast++;
              expect(Buffer.compare(f, asBytes(rec.state)!)).toBe(0);
            }
          }
        }
      } finally {
        await s.close();
      }
    }
    expect(fast).toBeGreaterThan(100); // the layout real ZODB/py3 writes is the common one
  });

  it('takes every ZData record of every wendelin.core fixture (py2 pickle 1/2/3, py3 pickle 3)', async () => {
    // was: only py3's layout (BINBYTES); py2 writes BINSTRING, protocol 1 without PROTO
    const { decodeRecord, asBytes } = await import('../src/zodb/pickle/index.js');
    const { zdataFast } = await import('../src/zodb/zbigfile.js');
    for (const kind of zblkKinds) {
      const s = await openStorage(zblkPath(kind), { readOnly: true });
      try {
        let zdata = 0;
        for await (const t of s.iterate()) {
          for (const r of t.records) {
            if (r.data === null) continue;
            const rec = decodeRecord(r.data);
            if (!rec.klass.is('wendelin.bigfile.file_zodb', 'ZData')) continue;
            zdata++;
            const f = zdataFast(r.data);
            expect(f, `${kind}: ZData record not taken by the fast path`).toBeDefined();
            expect(Buffer.compare(f!, asBytes(rec.state)!)).toBe(0);
          }
        }
        expect(zdata, kind).toBeGreaterThanOrEqual(64);
      } finally {
        await s.close();
      }
    }
  });
});

describe('holes and reused buffers', () => {
  const BLK = 64 * 1024;
  const pat = (seed: number, n = BLK) => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) % 251 || 1;
    return b;
  };
  const withFile = async (run: (v: ZBigFileView) => Promise<void>) => {
    const tmp = makeTmpDir();
    const s = await openStorage(path.join(tmp.dir, 'data.fs'), { create: true });
    try {
      await ensureRoot(s as IWritableStorage);
      let txn = new WriteTxn(s as IWritableStorage);
      const foid = createZBigFile(txn, BLK);
      await txn.commit();
      txn = new WriteTxn(s as IWritableStorage);
      await setBlock(txn, foid, 0, pat(1), { format: 'ZBlk0' });
      // ZBlk1 with gaps: chunks 0 and 3 only, chunk 3 trimmed short
      const z1 = new Uint8Array(BLK);
      z1.set(pat(2, 4096), 0);
      z1.set(pat(3, 1000), 3 * 4096);
      await setBlock(txn, foid, 2, z1, { format: 'ZBlk1' });
      await setBlock(txn, foid, 4, new Uint8Array(0), { format: 'ZBlk0' }); // an all-zero ZBlk0
      await txn.commit();
      await run(await ZBigFileView.open(new StorageLoader(s), foid, s.head()));
    } finally {
      await s.close();
      tmp.cleanup();
    }
  };

  it('a hole is the one shared zero block: no allocation per hole, and never written', async () => {
    await withFile(async (v) => {
      const h1 = (await v.loadBlock(1)).data;
      const h3 = (await v.loadBlock(3)).data;
      const z4 = (await v.loadBlock(4)).data;
      expect(h1.length).toBe(BLK);
      expect(isZero(h1)).toBe(true);
      expect(h3).toBe(h1); // was: a fresh zero-filled blksize buffer each time
      expect(z4).toBe(h1);
      // a hole read after real blocks were read still reads zeros
      expect(isZero((await v.loadBlock(0)).data)).toBe(false);
      expect(isZero((await v.loadBlock(2)).data)).toBe(false);
      expect(isZero((await v.loadBlock(1)).data)).toBe(true);
    });
  });

  it('with `out`: the caller gets its own buffer back, fully rewritten (holes, gaps, trimmed tails)', async () => {
    await withFile(async (v) => {
      const out = new Uint8Array(BLK).fill(0xee);
      const shared = (await v.loadBlock(1)).data;
      const h = await v.loadBlock(1, out);
      expect(h.data).toBe(out); // never the shared block
      expect(h.data).not.toBe(shared);
      expect(isZero(out)).toBe(true);
      out.fill(0xee);
      const b2 = await v.loadBlock(2, out); // ZBlk1 into a dirty buffer: gaps must read zero
      const want = new Uint8Array(BLK);
      want.set(pat(2, 4096), 0);
      want.set(pat(3, 1000), 3 * 4096);
      expect(b2.data).toBe(out);
      expect(Buffer.compare(out, want)).toBe(0);
      expect(Buffer.compare((await v.loadBlock(2)).data, want)).toBe(0); // fresh: the same
      out.fill(0xee);
      expect(isZero((await v.loadBlock(4, out)).data)).toBe(true);
      expect(isZero(shared)).toBe(true); // writing every `out` never reached the shared block
    });
  });

  it('the shared zero block is not writable: a write faults (child process), not corrupts', async () => {
    const { spawnSync } = await import('node:child_process');
    const { pathToFileURL } = await import('node:url');
    const mod = pathToFileURL(path.resolve('dist/zodb/zbigfile.js')).href;
    const code = `const { zeroBlock } = await import(${JSON.stringify(mod)}); const z = zeroBlock(65536); console.log('read', z[100]); z[100] = 1; console.log('wrote', z[100]);`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stdout).toContain('read 0');
    expect(r.stdout).not.toContain('wrote');
    expect(r.signal).toBe('SIGSEGV');
  });
});

describe('ZBigFile state with extra trailing fields', () => {
  // One public copy of wendelin.core pickles (blksize, blktab, zblk_fmt): such a file reads as
  // (blksize, blktab), with one warning naming the file; a state shorter than 2 stays refused.
  const withState = async (items: (st: Tuple) => PyValue, run: (s: IWritableStorage, foid: bigint, tid: Tid) => Promise<void>) => {
    const tmp = makeTmpDir();
    try {
      const s = (await openStorage(path.join(tmp.dir, 'extra.fs'), { create: true })) as IWritableStorage;
      try {
        await ensureRoot(s);
        let txn = new WriteTxn(s);
        const foid = createZBigFile(txn, BLKSIZE);
        await setBlock(txn, foid, 0, new Uint8Array(BLKSIZE).fill(5), { format: 'ZBlk0' });
        await setBlock(txn, foid, 2, new Uint8Array(100).fill(6), { format: 'ZBlk1' });
        await txn.commit();
        txn = new WriteTxn(s);
        const zf = await txn.loadObject(foid);
        txn.store(foid, zf.klass, items(zf.state as Tuple));
        await run(s, foid, await txn.commit());
      } finally {
        await s.close();
      }
    } finally {
      tmp.cleanup();
    }
  };

  it("(blksize, blktab, 'ZBlk1') reads as (blksize, blktab), with one warning naming the oid", async () => {
    await withState(
      (st) => new Tuple([...st.items, 'ZBlk1']),
      async (s, foid, tid) => {
        const f = await ZBigFileView.open(new StorageLoader(s), foid, tid);
        expect(f.blksize).toBe(BLKSIZE);
        expect((await f.size()).size).toBe(3 * BLKSIZE);
        expect((await f.loadBlock(0)).data.every((x) => x === 5)).toBe(true);
        expect((await f.loadBlock(1)).data.every((x) => x === 0)).toBe(true);
        const b2 = (await f.loadBlock(2)).data;
        expect(b2.subarray(0, 100).every((x) => x === 6) && b2.subarray(100).every((x) => x === 0)).toBe(true);
        expect(f.warnings).toHaveLength(1);
        expect(f.warnings[0]).toContain(hex16(foid));
        expect(f.warnings[0]).toContain("'ZBlk1'");
        expect(f.withAt(tid).warnings).toEqual(f.warnings);
        // the writer works on such a file too, and keeps its state as it is
        const txn = new WriteTxn(s);
        await setBlock(txn, foid, 1, new Uint8Array(10).fill(7));
        expect(txn.changed()).not.toContain(foid);
        const tid2 = await txn.commit();
        const f2 = await ZBigFileView.open(new StorageLoader(s), foid, tid2);
        expect((await f2.loadBlock(1)).data.subarray(0, 11)).toEqual(new Uint8Array([7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0]));
        expect(f2.warnings).toEqual(f.warnings);
      },
    );
  });

  it('several extra fields: still one warning, listing them', async () => {
    await withState(
      (st) => new Tuple([...st.items, 'ZBlk0', 3n, null]),
      async (s, foid, tid) => {
        const f = await ZBigFileView.open(new StorageLoader(s), foid, tid);
        expect(f.warnings).toHaveLength(1);
        expect(f.warnings[0]).toContain("3 extra trailing field(s) after (blksize, blktab): 'ZBlk0', 3, None");
      },
    );
  });

  it('(blksize, blktab): no warning', async () => {
    await withState(
      (st) => st,
      async (s, foid, tid) => expect((await ZBigFileView.open(new StorageLoader(s), foid, tid)).warnings).toEqual([]),
    );
  });

  it('(blksize,) and a bad blktab behind extras stay refused', async () => {
    await withState(
      (st) => new Tuple([st.items[0]!]),
      async (s, foid, tid) => {
        await expect(ZBigFileView.open(new StorageLoader(s), foid, tid)).rejects.toThrow(/want \(blksize, blktab\)/);
      },
    );
    await withState(
      (st) => new Tuple([st.items[0]!, 'ZBlk1', st.items[1]!]),
      async (s, foid, tid) => {
        await expect(ZBigFileView.open(new StorageLoader(s), foid, tid)).rejects.toThrow(/blktab is/);
      },
    );
  });
});
