// Forgetting (issue 7 item 5): @<rev>/ views live only while something refers to them. The
// server asks the kernel to drop idle views (INVAL_ENTRY, every --gc-interval), the kernel
// FORGETs their inodes, and the view leaves the server's tables (.wcfs/stats RevHead,
// RevFile). A view with an open file stays, and keeps serving; a forgotten one is rebuilt by
// the next lookup. Head blocks the kernel dropped from its page cache leave ΔFtail
// (TrackedBlk; server step 5, every --untrack-interval); cached ones stay cached and tracked,
// and a block read again is tracked again — with the pins its watchers need.
import { afterAll, describe, expect, it } from 'vitest';
import { open, readFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { hex16, type Tid } from '../src/zodb/ids.js';
import { spawnSync } from 'node:child_process';
import { cacheResidency } from '../src/fuse/index.js';
import { sleep } from './helpers/mount.js';
import { python } from './helpers/python.js';
import { BS, stats, TDB } from './helpers/tdb.js';
import { stopAllServers } from './helpers/wcfs.js';

afterAll(stopAllServers, 30_000);

const GC_S = 0.3;

/** Wait until stats[key] satisfies ok, or fail with the last value (bounded). */
async function untilStat(t: TDB, key: string, ok: (v: number) => boolean, ms = 20_000): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const v = (await stats(t))[key]!;
    if (ok(v)) return v;
    if (Date.now() - t0 > ms) throw new Error(`.wcfs/stats ${key} stays ${v}`);
    await sleep(50);
  }
}

async function readBlk(fh: FileHandle, blk: number): Promise<Buffer> {
  const b = Buffer.alloc(BS);
  const { bytesRead } = await fh.read(b, 0, BS, blk * BS);
  return b.subarray(0, bytesRead);
}

/** The kernel drops [off, off+len) of path from its page cache (posix_fadvise DONTNEED). */
function dropCache(path: string, off: number, len: number): void {
  const prog = 'import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nos.posix_fadvise(fd, int(sys.argv[2]), int(sys.argv[3]), os.POSIX_FADV_DONTNEED)';
  const p = spawnSync(python(), ['-c', prog, path, String(off), String(len)], { encoding: 'utf8', timeout: 30_000 });
  if (p.status !== 0) throw new Error(`fadvise ${path}: ${p.stderr || p.error?.message}`);
}

/** A database with one file (`before` committed first), served with short sweep intervals. */
async function served(before?: Record<number, number>, gcS = GC_S): Promise<{ t: TDB; foid: bigint }> {
  const t = new TDB();
  t.serveArgs = ['--gc-interval', String(gcS), '--untrack-interval', String(GC_S)];
  try {
    await t.open();
    const foid = await t.newFile('gc');
    if (before !== undefined) await t.commit([[foid, before]]);
    await t.serve();
    return { t, foid };
  } catch (e) {
    await t.close();
    throw e;
  }
}

describe('@rev views are forgotten when unused', () => {
  it('idle views go, open ones stay and serve, a later lookup rebuilds', async () => {
    const { t, foid } = await served();
    try {
      const revs: Tid[] = [];
      for (let i = 1; i <= 5; i++) revs.push(await t.commit([[foid, { 0: i, 1: 100 + i }]]));
      const file = (rev: Tid) => t.srv.at(`@${hex16(rev)}/bigfile/${hex16(foid)}`);

      // >>> open a file in each of 5 views: all 5 are there
      const fhs = await Promise.all(revs.map((r) => open(file(r), 'r')));
      const opened = new Set(fhs);
      try {
        for (let i = 0; i < 5; i++) expect((await readBlk(fhs[i]!, 0))[0]).toBe(i + 1);
        let st = await stats(t);
        expect(st.RevHead).toBe(5);
        expect(st.RevFile).toBe(5);

        // >>> close 3: their views go, the 2 with an open file stay
        for (const i of [0, 2, 4]) {
          await fhs[i]!.close();
          opened.delete(fhs[i]!);
        }
        await untilStat(t, 'RevHead', (v) => v === 2);
        await sleep(5 * GC_S * 1000); // several sweeps more
        st = await stats(t);
        expect(st.RevHead).toBe(2);
        expect(st.RevFile).toBe(2);
        // <<< the open files still serve their revision
        expect((await readBlk(fhs[1]!, 1))[0]).toBe(102);
        expect((await readBlk(fhs[3]!, 0))[0]).toBe(4);

        // >>> a forgotten view is rebuilt by the next lookup, with its data
        const again = await readFile(file(revs[0]!));
        expect(again.length).toBe(2 * BS);
        expect([again[0], again[BS]]).toEqual([1, 101]);
        expect((await stats(t)).RevHead).toBeGreaterThanOrEqual(3);
      } finally {
        for (const fh of opened) await fh.close();
      }
      // <<< all closed: every view goes
      await untilStat(t, 'RevHead', (v) => v === 0);
      expect((await stats(t)).RevFile).toBe(0);
      expect(t.srv.stderr()).not.toMatch(/BUG|zwatcher failed/);
    } finally {
      await t.close();
    }
  }, 90_000);

  it('a stream of commits, each looked up at @<head>/, leaves no view behind', async () => {
    const { t, foid } = await served();
    try {
      let maxViews = 0;
      for (let i = 1; i <= 60; i++) {
        const rev = await t.commit([[foid, { [i % 4]: i }]]);
        const b = await readFile(t.srv.at(`@${hex16(rev)}/bigfile/${hex16(foid)}`));
        expect(b[(i % 4) * BS]).toBe(i);
        maxViews = Math.max(maxViews, (await stats(t)).RevHead!);
      }
      expect(maxViews).toBeGreaterThan(0);
      await untilStat(t, 'RevHead', (v) => v === 0);
      const st = await stats(t);
      expect(st.RevFile).toBe(0);
      expect(st.TrackedBlk).toBe(0); // nothing was read via head/
      expect(st.History).toBeGreaterThan(0); // history within the retention window is kept
    } finally {
      await t.close();
    }
  }, 90_000);
});

describe('head blocks no longer cached are untracked (server step 5)', () => {
  it('dropped blocks leave ΔFtail, cached ones stay; commits and reads after that keep isolation exact', async () => {
    // the view sweep far away: untracking runs on its own interval (it ran only at view sweeps)
    const { t, foid } = await served({ 0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8 }, 3600);
    try {
      const f = hex16(foid);
      const headPath = t.srv.at(`head/bigfile/${f}`);
      const residentBlocks = async () => {
        const pages = await cacheResidency(headPath, 0, 8 * BS);
        const out: number[] = [];
        for (let b = 0; b < 8; b++) if (pages.subarray((b * BS) / 4096, ((b + 1) * BS) / 4096).some((x) => x !== 0)) out.push(b);
        return out;
      };
      // >>> a watcher at head; every block read via head (tracked)
      const l = await t.link();
      const at1 = await t.commit([[foid, { 8: 9 }]]);
      await (await open(headPath, 'r')).close(); // looked up: the watch knows the file
      await t.watch(l, foid, at1);
      for (let b = 0; b < 8; b++) await t.read(foid, b);
      expect((await stats(t)).TrackedBlk).toBe(8);

      // >>> the kernel drops #4..#7: they leave ΔFtail; #0..#3 stay cached and tracked
      dropCache(headPath, 4 * BS, 4 * BS);
      await untilStat(t, 'TrackedBlk', (v) => v <= 4);
      expect((await stats(t)).Untracked).toBeGreaterThanOrEqual(4);
      await sleep(5 * GC_S * 1000); // several sweeps more
      const resident = await residentBlocks();
      expect(resident.filter((b) => b < 4).length, `the sweeps must not evict cached blocks (resident: ${resident})`).toBeGreaterThanOrEqual(3);
      // I1 seen from outside: every block still cached is tracked
      expect((await stats(t)).TrackedBlk).toBeGreaterThanOrEqual(resident.length);

      // >>> commit δ(#0, #5): the cached #0 is invalidated; #5 is loaded afresh when read; the
      // watcher at at1 is pinned for both when they are read (TDB checks data and exact pins)
      const at2 = await t.commit([[foid, { 0: 10, 5: 60 }]]);
      for (const b of [0, 5, 4]) await t.read(foid, b);
      expect(l.pinned.get(foid)).toEqual(
        new Map([
          [0, t.tail],
          [5, t.tail],
        ]),
      );
      // <<< the watcher moves to at2: both pins go back to head (exact unpins)
      await t.watch(l, foid, at2);
      expect(t.srv.stderr()).not.toMatch(/BUG|warning/);
    } finally {
      await t.close();
    }
  }, 90_000);
});
