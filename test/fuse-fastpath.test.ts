// READ fast path (native/fuse.cc step 6, src/fuse/session.ts step 6): READs wholly inside a range
// registered with session.blockCache are answered on the libfuse worker and never reach the
// filesystem's handler; after drop() they do again. Then wcfs: a commit that changes a
// registered head block serves the new data afterwards (src/server/loads.ts L2-L3, commit.ts 3a).
// Clients are child processes (dd | sha256sum); this process only serves.
import { afterAll, afterEach, describe, expect, test } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { FOPEN_DIRECT_IO } from '../src/fuse/kernel.js';
import { WcfsServer } from '../src/server/server.js';
import { WriteTxn } from '../src/zodb/db.js';
import { hex16 } from '../src/zodb/ids.js';
import { openStorage } from '../src/zodb/open.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { setBlock } from '../src/zodb/zbigfile.js';
import { leftoverMounts, liveChildren, requireFuse, run, sleep, teardownAll, withMount, type TestMount } from './helpers/mount.js';
import { KiB, MiB, pattern, TestFs } from './helpers/fuse-testfs.js';
import { historyPath } from './helpers/paths.js';
import { copyInto, tmpDir } from './helpers/wcfs.js';

const T = 60_000;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

afterEach(teardownAll);
afterAll(() => {
  expect(leftoverMounts()).toEqual([]);
  expect(liveChildren()).toEqual([]);
});

/** sha256 of [off, off+len) read by a child in one read(2) (O_DIRECT with `direct`). */
async function readSha(p: string, off: number, len: number, direct = false): Promise<string> {
  const flags = `skip_bytes,count_bytes${direct ? ',direct' : ''}`;
  const r = await run('sh', ['-c', `dd if="$0" bs=${len} iflag=${flags} skip=${off} count=${len} status=none | sha256sum`, p], 20_000);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout.split(' ')[0]!;
}

describe('fuse: READ fast path', () => {
  test(
    'READs inside a registered range skip JS; crossing ones and dropped ranges reach it',
    async () => {
      const data = pattern(1 * MiB);
      const fs = new TestFs([{ name: 'f', ino: 2, data, openFlags: FOPEN_DIRECT_IO, blksize: 256 * KiB, mtime: { sec: 1_700_000_000, nsec: 0 } }]);
      let ended: TestMount | undefined;
      const m0 = () => ended!;
      await withMount(fs, {}, async (m) => {
        ended = m;
        const F = m.at('f');
        const base = 256 * KiB;
        const len = 256 * KiB;
        // registered memory differs from what the handler returns: proves who answered
        const reg = Buffer.alloc(len, 0xab);
        const served = new Uint8Array(len / 4096);
        expect(m.session.blockCache.put(2, base, reg, served)).toBe(true);

        // warm up (lookup, open): one READ through JS outside the range
        expect(await readSha(F, 0, 4096)).toBe(sha(data.subarray(0, 4096)));
        const n0 = fs.reads.length;

        // wholly inside: native, from the registered memory; whole pages marked
        expect(await readSha(F, base + 4096, 64 * KiB)).toBe(sha(reg.subarray(0, 64 * KiB)));
        expect(await readSha(F, base, len)).toBe(sha(reg));
        expect(fs.reads.length).toBe(n0);
        expect([...served].every((x) => x === 1)).toBe(true);
        served.fill(0);
        // unaligned: only the fully covered page 2 of [4 KiB+100, 12 KiB+100)
        expect(await readSha(F, base + 4096 + 100, 8192)).toBe(sha(reg.subarray(4096 + 100, 4096 + 100 + 8192)));
        expect([...served.subarray(0, 4)]).toEqual([0, 0, 1, 0]);
        expect(fs.reads.length).toBe(n0);
        expect(m.session.pending()).toBe(0);

        // crossing the start or the end of the range: JS
        expect(await readSha(F, base - 4096, 8192)).toBe(sha(data.subarray(base - 4096, base + 4096)));
        expect(await readSha(F, base + len - 4096, 8192)).toBe(sha(data.subarray(base + len - 4096, base + len + 4096)));
        expect(fs.reads.length).toBe(n0 + 2);
        // after drop: JS
        expect(m.session.blockCache.drop(2, base)).toBe(true);
        expect(m.session.blockCache.drop(2, base)).toBe(false);
        expect(await readSha(F, base + 4096, 64 * KiB)).toBe(sha(data.subarray(base + 4096, base + 4096 + 64 * KiB)));
        expect(fs.reads.length).toBe(n0 + 3);

        // put replaces overlapping ranges: [base, base+len) then [base+128K, ...) overlapping it
        expect(m.session.blockCache.put(2, base, reg, served)).toBe(true);
        const reg2 = Buffer.alloc(len, 0xcd);
        expect(m.session.blockCache.put(2, base + 128 * KiB, reg2, new Uint8Array(len / 4096))).toBe(true);
        expect(m.session.blockCache.drop(2, base)).toBe(false); // replaced
        expect(await readSha(F, base + 4096, 4096)).toBe(sha(data.subarray(base + 4096, base + 8192)));
        expect(await readSha(F, base + 128 * KiB, 4096)).toBe(sha(reg2.subarray(0, 4096)));
        expect(fs.reads.length).toBe(n0 + 4);
      });
      expect(m0().session.blockCache.put(2, 0, Buffer.alloc(4096), new Uint8Array(1))).toBe(false); // session ended
    },
    T,
  );

  test(
    'many concurrent fast READs while ranges are dropped and re-registered',
    async () => {
      const data = pattern(2 * MiB);
      const fs = new TestFs([{ name: 'f', ino: 2, data, openFlags: FOPEN_DIRECT_IO, blksize: 256 * KiB, mtime: { sec: 1_700_000_000, nsec: 0 } }]);
      await withMount(fs, { maxThreads: 4 }, async (m) => {
        const F = m.at('f');
        const served = new Uint8Array(512);
        let stop = false;
        const churn = (async () => {
          while (!stop) {
            m.session.blockCache.put(2, 0, data, served);
            await sleep(1);
            m.session.blockCache.drop(2, 0);
            await sleep(1);
          }
        })();
        // whoever answers, the data is the same
        const rs = await Promise.all(
          [0, 1, 2, 3].map(() => run('sh', ['-c', `for i in 1 2 3 4 5 6 7 8; do dd if="$0" bs=128K status=none; done | sha256sum`, F], 30_000)),
        );
        stop = true;
        await churn;
        const want = createHash('sha256');
        for (let i = 0; i < 8; i++) want.update(data);
        const w = want.digest('hex');
        for (const r of rs) {
          expect(r.code, r.stderr).toBe(0);
          expect(r.stdout.split(' ')[0]).toBe(w);
        }
      });
    },
    T,
  );
});

describe('wcfs: READ fast path and commits', () => {
  const FOID = 0x4n; // the 64 KiB-block file of the history fixture
  const BS = 65536;

  test(
    'a commit that changes a registered head block serves the new data afterwards',
    async () => {
      await requireFuse();
      const dir = tmpDir();
      const dbPath = copyInto(dir, historyPath);
      const mnt = path.join(dir, 'mnt');
      mkdirSync(mnt, { recursive: true });
      const srv = await WcfsServer.start({ zurl: dbPath, mountpoint: mnt, storagePollMs: 20, log: () => {} });
      const db = (await openStorage(dbPath)) as IWritableStorage;
      try {
        // keep loaded blocks registered: no upload (which would end the registration)
        const s = srv as unknown as { reads: { uploadHead: () => Promise<void> }; read: (...a: unknown[]) => Promise<Uint8Array> };
        s.reads.uploadHead = async () => {};
        let jsReads = 0;
        const read0 = s.read.bind(srv);
        s.read = (...a: unknown[]) => {
          jsReads++;
          return read0(...a);
        };
        const F = path.join(srv.session.mountpoint, 'head', 'bigfile', hex16(FOID));
        const off = 3 * BS;
        // O_DIRECT: every read(2) is a READ of exactly that range
        const h0 = await readSha(F, off, 4096, true);
        const n0 = jsReads;
        expect(n0).toBeGreaterThanOrEqual(1);
        expect(await readSha(F, off, 4096, true)).toBe(h0);
        const h1 = await readSha(F, off + 8192, 16384, true);
        expect(jsReads).toBe(n0); // served natively from the loaded block
        // .wcfs/stats counts where READs went: these two natively, the first one in JS (a load)
        const stat = (k: string) => Number(new RegExp(`^${k}\t: (\\d+)$`, 'm').exec(srv.statsText())![1]);
        expect(stat('ReadFast')).toBe(2);
        expect([stat('ReadJS'), stat('ReadLoad')]).toEqual([n0, 1]);

        // >>> commit δ(blk 3): the registered block is dropped before invalidation
        const txn = new WriteTxn(db);
        await setBlock(txn, FOID, 3, new Uint8Array(BS).fill(0xab));
        const t1 = await txn.commit({ description: 'fastpath test' });
        const t0 = Date.now();
        while (srv.head.publishedAt < t1) {
          if (Date.now() - t0 > 10_000) throw new Error('head did not advance');
          await sleep(10);
        }
        const ab = sha(new Uint8Array(4096).fill(0xab));
        expect(await readSha(F, off, 4096, true)).toBe(ab);
        expect(jsReads).toBe(n0 + 1);
        // buffered read too (page cache was invalidated)
        expect(await readSha(F, off, 4096)).toBe(ab);
        expect(await readSha(F, off + 8192, 16384, true)).toBe(sha(new Uint8Array(16384).fill(0xab)));
        expect(h1).not.toBe(sha(new Uint8Array(16384).fill(0xab)));
      } finally {
        await db.close();
        await srv.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    },
    T,
  );
});
