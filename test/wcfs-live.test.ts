// Live database: our writer commits to the database wcfs serves. head/at advances; changed
// blocks read new data and leave head's page cache; unchanged blocks stay cached (mincore on
// an mmap), also across a size change; the old data lands in @<BlkRevAt(blk, old head)>'s
// cache (here @<old head>: the history tail; wcfs-dropin.test.ts has the general case).
// A change of the ZBigFile object itself switches the filesystem to EIO mode.
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { findMount } from '../src/fuse/mountinfo.js';
import { PREFETCH_DEPTH } from '../src/server/reads.js';
import { WriteTxn } from '../src/zodb/db.js';
import { hex16, tidToDate } from '../src/zodb/ids.js';
import { openStorage } from '../src/zodb/open.js';
import { PersistentRef, Tuple } from '../src/zodb/pickle/index.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { ZBIGFILE_CLASS, createZBigFile, ensureRoot, setBlock } from '../src/zodb/zbigfile.js';
import { randomFillSync } from 'node:crypto';
import path from 'node:path';
import { cacheResidency } from '../src/fuse/pagecache.js';
import { historyPath } from './helpers/paths.js';
import { expectResidency } from './helpers/residency.js';
import { sleep } from './helpers/mount.js';
import { copyInto, startServer, stopAllServers, tmpDir, type TestServer } from './helpers/wcfs.js';
import { liveDb } from './helpers/testdb.js';
import { TWatchLink } from './helpers/wlink.js';

afterAll(stopAllServers, 30_000);

const FOID = 0x4n; // the 64 KiB-block file of the fixture
const BS = 65536;
const PAGE = 4096;

/** Residency per page as '0'/'1' (see helpers/residency.ts for the reclaim caveat). */
async function pages(p: string, nblk: number): Promise<string> {
  return [...(await cacheResidency(p, 0, nblk * BS))].map((x) => String(x & 1)).join('');
}
/** Expected residency: per block, cached (1) or not (0). */
const blocks = (bits: number[]) => bits.map((b) => String(b).repeat(BS / PAGE)).join('');
/** Fraction of resident pages per block: 1 = fully cached. */
async function cached(p: string, nblk: number): Promise<number[]> {
  const r = await pages(p, nblk);
  const out: number[] = [];
  for (let b = 0; b < nblk; b++) out.push([...r.slice((b * BS) / PAGE, ((b + 1) * BS) / PAGE)].filter((c) => c === '1').length / (BS / PAGE));
  return out;
}

async function readAll(p: string): Promise<Buffer> {
  return readFile(p);
}

async function commit(s: IWritableStorage, blocks: Record<number, number | null>): Promise<string> {
  const txn = new WriteTxn(s);
  for (const [blk, fill] of Object.entries(blocks)) {
    await setBlock(txn, FOID, Number(blk), fill === null ? null : new Uint8Array(BS).fill(fill));
  }
  return hex16(await txn.commit({ description: 'wcfs-live test' }));
}

async function until<T>(f: () => Promise<T>, ok: (v: T) => boolean, ms = 3000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (ok(v) || Date.now() - t0 > ms) return v;
    await sleep(20);
  }
}

describe('live commits', () => {
  let srv: TestServer;
  let db: IWritableStorage;

  it('head/at advances; changed blocks drop out of the cache, unchanged stay; old data in @<old head>', async () => {
    const dir = tmpDir();
    const live = await liveDb(copyInto(dir, historyPath)); // WCFS_TEST_DB: the file, or a runzeo over it
    srv = await startServer(live.zurl, { dir });
    db = (await openStorage(live.zurl)) as IWritableStorage;
    const head0 = await srv.head();
    expect(head0).toBe(hex16(db.head()));

    const F = srv.at(`head/bigfile/${hex16(FOID)}`);
    const size0 = (await stat(F)).size;
    const nblk = size0 / BS;
    expect(nblk).toBeGreaterThan(8);
    const data0 = await readAll(F);
    // every block of head is in the page cache after the read (and its upload)
    await until(
      () => cached(F, nblk),
      (c) => c.every((x) => x === 1),
    );
    expectResidency(await pages(F, nblk), blocks(Array(nblk).fill(1)), 'head after read');

    // @<head0> is where block 3's old data belongs (BlkRevAt(3, head0) = the history tail,
    // head0): commit processing stores it there (it would look the file up itself; here open)
    const oldF = srv.at(`@${head0}/bigfile/${hex16(FOID)}`);
    const oldFh = await open(oldF, 'r');
    expectResidency(await pages(oldF, nblk), blocks(Array(nblk).fill(0)), '@head0 before');

    // >>> commit δ(blk 3)
    const t1 = await commit(db, { 3: 0xab });
    await srv.waitHead(t1);
    expectResidency(await pages(F, nblk), blocks([...Array(nblk).keys()].map((i) => (i === 3 ? 0 : 1))), 'head after δ(blk 3)');
    // the old block went to @head0's cache, and reads the old data
    expect((await cached(oldF, nblk))[3]).toBe(1);
    const oldBlk = Buffer.alloc(BS);
    await oldFh.read(oldBlk, 0, BS, 3 * BS);
    expect(Buffer.compare(oldBlk, data0.subarray(3 * BS, 4 * BS))).toBe(0);
    // head reads the new data
    const d1 = await readAll(F);
    expect(d1.subarray(3 * BS, 4 * BS).every((x) => x === 0xab)).toBe(true);
    expect(Buffer.compare(d1.subarray(0, 3 * BS), data0.subarray(0, 3 * BS))).toBe(0);
    // mtime follows the commit
    expect(Math.abs((await stat(F)).mtimeMs - tidToDate(BigInt('0x' + t1)).getTime())).toBeLessThan(1);
    await oldFh.close();

    // >>> commit growing the file by 2 blocks: the cache of unchanged blocks survives
    await until(
      () => cached(F, nblk),
      (c) => c.every((x) => x === 1),
    );
    const t2 = await commit(db, { [nblk + 1]: 0x5a });
    await srv.waitHead(t2);
    expect((await stat(F)).size).toBe((nblk + 2) * BS);
    expectResidency(await pages(F, nblk), blocks(Array(nblk).fill(1)), 'head after growth');
    const d2 = await readAll(F);
    expect(d2.length).toBe((nblk + 2) * BS);
    expect(d2.subarray(nblk * BS, (nblk + 1) * BS).every((x) => x === 0)).toBe(true);
    expect(d2.subarray((nblk + 1) * BS).every((x) => x === 0x5a)).toBe(true);

    // >>> punch the last block: the file shrinks back, nothing else changes
    const t3 = await commit(db, { [nblk + 1]: null });
    await srv.waitHead(t3);
    expect((await stat(F)).size).toBe(nblk * BS);
    // an @rev view never changes
    expect((await stat(srv.at(`@${t2}/bigfile/${hex16(FOID)}`))).size).toBe((nblk + 2) * BS);
    expect((await readFile(srv.at('.wcfs/stats'))).toString()).toMatch(/^BigFile\t: 1\nRevHead\t: 2\n/);
    await db.close();
    await srv.stop();
    await live.close();
  }, 60_000);

  it('a read of one page brings the whole block into the page cache (upload of the rest)', async () => {
    const dir = tmpDir();
    const s = await startServer(copyInto(dir, historyPath), { dir });
    const m = findMount(s.mnt)!;
    writeFileSync(`/sys/class/bdi/0:${m.minor}/read_ahead_kb`, '0'); // the kernel asks for that page only
    const F = s.at(`head/bigfile/${hex16(FOID)}`);
    const nblk = (await stat(F)).size / BS;
    const fh = await open(F, 'r');
    await fh.read(Buffer.alloc(PAGE), 0, PAGE, 5 * BS + 3 * PAGE);
    await fh.close();
    const want = blocks([...Array(nblk).keys()].map((i) => (i === 5 ? 1 : 0)));
    await until(
      () => pages(F, nblk),
      (p) => p.slice(5 * (BS / PAGE), 6 * (BS / PAGE)) === '1'.repeat(BS / PAGE),
    );
    expectResidency(await pages(F, nblk), want, 'one page read');
    await s.stop();
  }, 30_000);

  it('prefetch: a sequential READ (past half of a block, or in the block after the last one read or prefetched) loads the next PREFETCH_DEPTH ones (unwatched head files, @rev files); not otherwise, not when watched', async () => {
    const dir = tmpDir();
    const live = await liveDb(copyInto(dir, historyPath));
    const s = await startServer(live.zurl, { dir });
    const m = findMount(s.mnt)!;
    writeFileSync(`/sys/class/bdi/0:${m.minor}/read_ahead_kb`, '0'); // exactly the pages read
    const F = s.at(`head/bigfile/${hex16(FOID)}`);
    const nblk = (await stat(F)).size / BS;
    const readPage = async (off: number) => {
      const fh = await open(F, 'r');
      await fh.read(Buffer.alloc(PAGE), 0, PAGE, off);
      await fh.close();
    };
    const prefetches = async () => Number(/Prefetch\t: (\d+)/.exec((await readFile(s.at('.wcfs/stats'))).toString())![1]);
    const D = PREFETCH_DEPTH;
    const ones = (c: Uint8Array | number[], from: number, to: number) => [...c].slice(from, to).map((x) => (x === 1 ? 1 : 0));
    // >>> a page in the first half of block 2: block 2 is uploaded whole (2c), block 3 stays out
    await readPage(2 * BS + PAGE);
    // >>> the last page of block 5: blocks 6 … 5+D come into the page cache without being read
    await readPage(6 * BS - PAGE);
    const want = [...Array(nblk).keys()].map((b) => (b === 2 || (b >= 5 && b <= 5 + D) ? 1 : 0));
    const got = await until(
      () => cached(F, nblk),
      (c) => c[2] === 1 && ones(c, 5, 6 + D).every((x) => x === 1),
    );
    expect(ones(got, 0, 8 + D)).toEqual(want.slice(0, 8 + D));
    expect(await prefetches()).toBe(D);
    // >>> the first page of block 6+D, right after the last prefetched one (the READs of those
    //     were page-cache hits, they never reach the server): sequential, so D more come in
    const b = 6 + D;
    await readPage(b * BS);
    const got2 = await until(
      () => cached(F, nblk),
      (c) => ones(c, b, b + D + 1).every((x) => x === 1), // (block b is uploaded a moment after its READ)
    );
    expect(ones(got2, b - 1, b + D + 2)).toEqual([1, ...Array(D + 1).fill(1), 0]);
    expect(await prefetches()).toBe(2 * D);
    // >>> a watcher on the file: no prefetch (it could pin the watcher early)
    const w = await TWatchLink.open(s.at('head/watch'));
    await w.watch(FOID, BigInt('0x' + (await s.head())), new Map()); // at head: no pins
    const c = b + 2 * D + 4;
    await readPage((c + 1) * BS - PAGE);
    await sleep(200);
    expect((await cached(F, nblk))[c + 1]).toBe(0);
    expect(await prefetches()).toBe(2 * D);
    // >>> an @rev file (immutable, never watched): prefetched too
    const R = s.at(`@${await s.head()}/bigfile/${hex16(FOID)}`);
    const fr = await open(R, 'r');
    await fr.read(Buffer.alloc(PAGE), 0, PAGE, 3 * BS - PAGE);
    await fr.close();
    const rc = await until(
      () => cached(R, nblk),
      (x) => ones(x, 2, 3 + D).every((y) => y === 1),
    );
    expect(ones(rc, 2, 4 + D)).toEqual([...Array(D + 1).fill(1), 0]);
    expect(await prefetches()).toBe(3 * D);
    await w.close();
    await s.stop();
    await live.close();
  }, 30_000);

  it('a changed ZBigFile object (blksize) is fatal: EIO mode, ENOTCONN', async () => {
    const dir = tmpDir();
    const live = await liveDb(copyInto(dir, historyPath));
    const s = await startServer(live.zurl, { dir });
    const w = (await openStorage(live.zurl)) as IWritableStorage;
    const F = s.at(`head/bigfile/${hex16(FOID)}`);
    await readFile(F); // the file is now tracked
    const txn = new WriteTxn(w);
    const zf = await txn.loadObject(FOID);
    const [, blktab] = (zf.state as Tuple).items as [bigint, PersistentRef];
    txn.store(FOID, ZBIGFILE_CLASS, new Tuple([2n * BigInt(BS), blktab]));
    await txn.commit();
    await w.close();
    const code = await Promise.race([s.exited, sleep(10_000).then(() => 'timeout')]);
    expect(code).toBe(1);
    expect(s.stderr()).toMatch(/zwatcher failed/);
    expect(s.stderr()).toMatch(/switching filesystem to EIO mode/);
    for (const p of ['.wcfs/zurl', 'head/at', `head/bigfile/${hex16(FOID)}`, 'anything']) {
      const e = await readFile(s.at(p)).then(
        () => undefined,
        (err) => err as NodeJS.ErrnoException,
      );
      expect(['ENOTCONN', 'ECONNABORTED'], p).toContain(e?.code);
    }
    await s.stop();
    await live.close();
  }, 30_000);
});

describe('live commits, 2 MiB blocks', () => {
  it('the old data of a block the kernel had cached reaches @<rev> whole: RETRIEVEd in max_write pieces, stored piece by piece', async () => {
    const BIG = 2 << 20;
    const dir = tmpDir();
    const dbPath = path.join(dir, 'big.fs');
    await (await openStorage(dbPath, { create: true })).close();
    const live = await liveDb(dbPath); // WCFS_TEST_DB: the file, or a runzeo over it
    const s = (await openStorage(live.zurl)) as IWritableStorage;
    try {
      await ensureRoot(s);
      let txn = new WriteTxn(s);
      const foid = createZBigFile(txn, BIG);
      const old = randomFillSync(Buffer.alloc(BIG));
      await setBlock(txn, foid, 0, old, { format: 'ZBlk0' });
      const t1 = hex16(await txn.commit());
      const srv = await startServer(live.zurl, { dir });
      const F = srv.at(`head/bigfile/${hex16(foid)}`);
      const whole = (r: string) => r === '1'.repeat(BIG / PAGE);
      const res = async (p: string) => [...(await cacheResidency(p, 0, BIG))].map((x) => String(x & 1)).join('');
      // >>> the block is read and its upload done: the server keeps no copy of it (BlockLoads
      // dropped it), so the commit must RETRIEVE it from the kernel — in 1 MiB pieces
      expect(Buffer.compare(await readFile(F), old)).toBe(0);
      expect(whole(await until(() => res(F), whole))).toBe(true);
      await sleep(200);
      // >>> commit: block 0 rewritten
      txn = new WriteTxn(s);
      const now = randomFillSync(Buffer.alloc(BIG));
      await setBlock(txn, foid, 0, now, { format: 'ZBlk0' });
      const t2 = hex16(await txn.commit());
      await srv.waitHead(t2);
      // >>> @t1 (BlkRevAt(0, t1)) has the whole old block in its cache, each piece in its place
      const R = srv.at(`@${t1}/bigfile/${hex16(foid)}`);
      expectResidency(await res(R), '1'.repeat(BIG / PAGE), '@t1 after the commit');
      expect(Buffer.compare(await readFile(R), old)).toBe(0);
      expect(Buffer.compare(await readFile(F), now)).toBe(0);
    } finally {
      await s.close();
      await live.close();
    }
  });
});
