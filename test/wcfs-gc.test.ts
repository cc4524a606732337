// Forgetting (issue 7 item 5): @<rev>/ views live only while something refers to them. The
// server asks the kernel to drop idle views (INVAL_ENTRY, every --gc-interval), the kernel
// FORGETs their inodes, and the view leaves the server's tables (.wcfs/stats RevHead,
// RevFile). A view with an open file stays, and keeps serving; a forgotten one is rebuilt by
// the next lookup.
import { afterAll, describe, expect, it } from 'vitest';
import { open, readFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { hex16, type Tid } from '../src/zodb/ids.js';
import { sleep } from './helpers/mount.js';
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

/** A database with one file, served with a short --gc-interval. */
async function served(): Promise<{ t: TDB; foid: bigint }> {
  const t = new TDB();
  t.serveArgs = ['--gc-interval', String(GC_S)];
  try {
    await t.open();
    const foid = await t.newFile('gc');
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
