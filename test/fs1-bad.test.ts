// Bad input: damaged files give typed errors (CorruptError with the file offset), never a crash
// or a hang. A seeded fuzz test flips bytes of a small file and checks the same promise.

import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { checkFile } from '../src/zodb/fs1/scan.js';
import { CorruptError, NoDataError, NoObjectError } from '../src/zodb/errors.js';
import { StorageNotFoundError } from '../src/zodb/fs1/errors.js';
import { FsBuilder, TmpDirs, collect } from './helpers/fs1util.js';
import { seedOr } from './helpers/fuzz.js';

const tmp = new TmpDirs();
afterAll(() => tmp.cleanup());
const dir = tmp.make('fs1bad');
let n = 0;
const write = (b: Uint8Array) => {
  const f = path.join(dir, `bad${n++}.fs`);
  fs.writeFileSync(f, b);
  return f;
};

const seed = seedOr(Date.now() % 1e9);
console.log(`fs1-bad: fast-check seed ${seed} (set WCFS_SEED to replay)`);

const T = (n: number) => 0x03f0000000000000n + BigInt(n) * 0x1000n;

/** 3 txns; returns the bytes and the positions of interest. */
function sample() {
  const b = new FsBuilder();
  b.txn(T(1), [
    { oid: 0n, data: 'root' },
    { oid: 1n, data: 'one' },
  ]);
  const t2 = b.txn(T(2), [
    { oid: 1n, data: 'one v2' },
    { oid: 2n, data: 'two' },
  ]);
  b.txn(T(3), [{ oid: 1n, data: 'one v3' }]);
  return { bytes: Buffer.from(b.build()), t2 };
}

/** Expect both checkFile and a read-only open to fail with CorruptError at `offset`. */
async function expectCorrupt(f: string, offset: number, re: RegExp): Promise<void> {
  let e: unknown;
  try {
    checkFile(f);
  } catch (x) {
    e = x;
  }
  expect(e).toBeInstanceOf(CorruptError);
  expect((e as CorruptError).offset).toBe(offset);
  expect((e as Error).message).toContain(`@${offset}`);
  expect((e as Error).message).toContain(f);
  expect((e as Error).message).toMatch(re);
  const e2 = await FileStorage.open(f, { readOnly: true, warn: () => {} }).then(
    async (s) => {
      await s.close();
      return undefined;
    },
    (x) => x,
  );
  expect(e2).toBeInstanceOf(CorruptError);
  expect((e2 as CorruptError).offset).toBe(offset);
}

describe('damaged files', () => {
  it('bad magic / too short / empty', async () => {
    const { bytes } = sample();
    const b = Buffer.from(bytes);
    b.write('FS99', 0, 'latin1');
    await expectCorrupt(write(b), 0, /bad magic/);
    await expectCorrupt(write(bytes.subarray(0, 2)), 0, /too short/);
    await expectCorrupt(write(new Uint8Array(0)), 0, /too short/);
    await expect(FileStorage.open(path.join(dir, 'missing.fs'), { readOnly: true })).rejects.toBeInstanceOf(StorageNotFoundError);
  });

  it('bad txn status byte', async () => {
    const { bytes, t2 } = sample();
    const b = Buffer.from(bytes);
    b[t2.tpos + 16] = 0x78; // 'x'
    await expectCorrupt(write(b), t2.tpos, /invalid status byte 0x78/);
  });

  it('txn trailer ≠ header length', async () => {
    const { bytes, t2 } = sample();
    const b = Buffer.from(bytes);
    const tlen = Number(b.readBigUInt64BE(t2.tpos + 8));
    b.writeBigUInt64BE(BigInt(tlen + 1), t2.tpos + tlen);
    await expectCorrupt(write(b), t2.tpos + tlen, /trailer length/);
  });

  it('tids not increasing', async () => {
    const { bytes, t2 } = sample();
    const b = Buffer.from(bytes);
    b.writeBigUInt64BE(T(1), t2.tpos);
    await expectCorrupt(write(b), t2.tpos, /not after/);
  });

  it('data record: wrong tloc, wrong tid, version length, overrun, bad backpointer, prev forward', async () => {
    const cases: Array<[string, (b: Buffer, d: number) => void, RegExp]> = [
      ['tloc', (b, d) => b.writeBigUInt64BE(4n, d + 24), /txn position 4/],
      ['tid', (b, d) => b.writeBigUInt64BE(T(7), d + 8), /tid .* ≠ txn tid/],
      ['vlen', (b, d) => b.writeUInt16BE(3, d + 32), /version length 3/],
      ['plen', (b, d) => b.writeBigUInt64BE(1000n, d + 34), /overruns/],
      ['prev', (b, d) => b.writeBigUInt64BE(BigInt(d + 100), d + 16), /prev .* not before/],
    ];
    for (const [what, damage, re] of cases) {
      const { bytes, t2 } = sample();
      const b = Buffer.from(bytes);
      damage(b, t2.dpos[0]!);
      await expectCorrupt(write(b), t2.dpos[0]!, re);
      void what;
    }
  });

  it('prev pointing to another oid: checkFile, and load of the old revision', async () => {
    const { bytes, t2 } = sample();
    const b = Buffer.from(bytes);
    // oid 2's record in t2 claims oid 1's record (same txn) as its prev
    b.writeBigUInt64BE(BigInt(t2.dpos[0]! - 0), t2.dpos[1]! + 16);
    const f = write(b);
    expect(() => checkFile(f)).toThrow(CorruptError);
    const s = await FileStorage.open(f, { readOnly: true, warn: () => {} });
    try {
      const e = await s.load(2n, T(1)).catch((x) => x);
      expect(e).toBeInstanceOf(CorruptError);
      expect(e.offset).toBe(t2.dpos[1]);
      expect(e.message).toMatch(/prev @\d+ is a record of oid 0000000000000001/);
    } finally {
      await s.close();
    }
  });

  it('corruption behind a valid index: open works, load/iterate report it', async () => {
    const { bytes, t2 } = sample();
    const f = write(bytes);
    const w = await FileStorage.open(f, { warn: () => {} });
    await w.close(); // writes .index
    const b = Buffer.from(bytes);
    b.writeUInt16BE(1, t2.dpos[1]! + 32); // oid 2's only record: version length 1
    fs.writeFileSync(f, b);
    const s = await FileStorage.open(f, { readOnly: true, verifyTxns: 1, warn: () => {} });
    try {
      expect(s.openInfo.indexLoaded).toBe(true);
      await expect(s.load(2n, T(9))).rejects.toMatchObject({ name: 'CorruptError', offset: t2.dpos[1] });
      await expect(collect(s.iterate())).rejects.toMatchObject({ name: 'CorruptError', offset: t2.dpos[1] });
      expect((await s.load(1n, T(9))).serial).toBe(T(3)); // the rest still works
    } finally {
      await s.close();
    }
  });

  it('fuzz: random byte damage never escapes as anything but a typed error, never hangs', async () => {
    const { bytes } = sample();
    const allowed = (e: unknown) => e instanceof CorruptError || e instanceof NoDataError || e instanceof NoObjectError;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat({ max: bytes.length - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.option(fc.nat({ max: bytes.length }), { nil: undefined }),
        async (flips, cut) => {
          const b = Buffer.from(bytes);
          for (const [i, v] of flips) b[i] = v;
          const f = write(cut === undefined ? b : b.subarray(0, cut));
          try {
            checkFile(f);
          } catch (e) {
            if (!allowed(e)) throw e;
          }
          let s: FileStorage | undefined;
          try {
            s = await FileStorage.open(f, { readOnly: true, warn: () => {} });
          } catch (e) {
            if (!allowed(e)) throw e;
          }
          if (s) {
            try {
              for (const oid of [0n, 1n, 2n, 3n]) {
                for (const at of [T(1), T(2), T(3)]) {
                  await s.load(oid, at).catch((e) => {
                    if (!allowed(e)) throw e;
                  });
                }
              }
              await collect(s.iterate()).catch((e) => {
                if (!allowed(e)) throw e;
              });
            } finally {
              await s.close();
            }
          }
          fs.rmSync(f);
        },
      ),
      { seed, numRuns: 300 },
    );
  });
});
