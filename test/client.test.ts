// The client library against a real server (upstream wcfs/client/client_test.py,
// wcfs-server.md §5.4 items 25-28): `wcfs serve` runs in a child process; this process is
// the client — its JS thread reads mappings directly (page faults), so a pin needed by our
// own read must be handled by the native pinner without the JS thread (that is what
// assertBlk's first-byte read checks, as upstream's read "with the GIL held").
// Commits are made by our writer, in this process.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { WCFS, type Conn } from '../src/client/index.js';
import { native } from '../src/native.js';
import { ClientTDB, assertBlk, assertBlkFaults, assertRangeFaults, blkData, pinnedText, readMustFault, PAGE, SIGSEGV } from './helpers/client.js';
import { stopAllServers } from './helpers/wcfs.js';
import { seedOr } from './helpers/fuzz.js';
import { sleep } from '../src/util/async.js';
import { rng } from '../src/util/rng.js';

const T = { timeout: 60_000 };

let tdbs: ClientTDB[] = [];
let conns: Conn[] = [];
let wcs: WCFS[] = [];
afterEach(async () => {
  for (const c of conns) await c.close().catch(() => {});
  for (const w of wcs) await w.close().catch(() => {});
  for (const t of tdbs) await t.close().catch(() => {});
  conns = [];
  wcs = [];
  tdbs = [];
}, 60_000);
afterAll(stopAllServers, 30_000);

async function tdb(nfile = 1): Promise<{ t: ClientTDB; foids: bigint[]; wc: WCFS }> {
  const t = new ClientTDB();
  tdbs.push(t);
  const foids = await t.create(nfile);
  await t.serve();
  const wc = await WCFS.join(t.zurl, { mountpoint: t.srv.mnt, autostart: false });
  wcs.push(wc);
  return { t, foids, wc };
}

async function connect(wc: WCFS, at: bigint): Promise<Conn> {
  const c = await wc.connect(at);
  conns.push(c);
  return c;
}

describe('client', () => {
  it('read_mustfault: the fault probe tells readable from faulting memory', T, async () => {
    // plain memory reads fine in the child, guarded or not
    const b = new Uint8Array(3 * PAGE).fill(7);
    const r = native().clientProbe(b, [0, PAGE, 2 * PAGE + 5], 'raw');
    expect(r.status).toBe('exit:0');
    expect([...r.values]).toEqual([7, 7, 7]);
    expect(native().clientProbe(b, [PAGE], 'crash').status).toBe('exit:0');
    expect(() => readMustFault(b, 0)).toThrow(/must fault/);

    // a mapping: readable (zeros past EOF); efaulted once its FileH closes
    const { t, foids, wc } = await tdb();
    const [f] = foids as [bigint];
    const conn = await connect(wc, t.head());
    const fh = await conn.open(f);
    const m = fh.mmap(0, 2);
    const ok = native().clientProbe(m.bytes, [0, PAGE, fh.blksize], 'raw');
    expect([...ok.values]).toEqual([0, 0, 0]);
    await fh.close();
    readMustFault(m.bytes, 0);
    assertRangeFaults(m.bytes, 0, m.bytes.length);
  });

  it('join: one WCFS per mountpoint, counted; connect waits for head/at ≥ at', T, async () => {
    const { t, foids, wc } = await tdb();
    const wc2 = await WCFS.join(t.zurl, { mountpoint: t.srv.mnt, autostart: false });
    expect(wc2).toBe(wc);
    await wc2.close();
    expect(await wc.head()).toBe(t.head());
    // connect(at) with at in the future returns once the server got there
    const future = t.head() + 1n;
    let connected = false;
    const cp = connect(wc, future).then((c) => ((connected = true), c));
    await sleep(100);
    expect(connected).toBe(false);
    const at1 = await t.commit(foids[0]!, { 0: 'x' });
    expect(at1 > future).toBe(true);
    const c = await cp;
    expect(c.at).toBe(future);
    await expect(WCFS.join(`${t.dir}/other.fs`, { mountpoint: `${t.dir}/nomnt`, autostart: false })).rejects.toThrow(/server not running/);
  });

  it('test_wcfs_client: isolation, pins, growth, resync, two opens, going back', T, async () => {
    const { t, foids, wc } = await tdb();
    const [zf] = foids as [bigint];
    const at0 = t.at0;
    const at1 = await t.commit(zf, { 2: 'c1', 3: 'd1' });
    const at2 = await t.commit(zf, { 2: 'c2' });

    const wconn = await connect(wc, at1);
    expect(wconn.at).toBe(at1);
    const fh = await wconn.open(zf);
    expect(fh.blksize).toBe(t.bs);

    // a mapping with one block past EOF
    const m1 = fh.mmap(2, 3);
    expect(m1.blkStart).toBe(2);
    expect(m1.blkStop).toBe(5);
    expect(m1.bytes.length).toBe(3 * t.bs);
    expect(fh.pinned().size).toBe(0);

    // >>> reads as of at1; #2 changed at2 → our own fault makes the server pin it @at1
    assertBlk(m1, 2, 'c1', { 2: at1 });
    assertBlk(m1, 3, 'd1', { 2: at1 });
    assertBlk(m1, 4, '', { 2: at1 });

    // >>> commit growing the file: data stays as of at1, #3 gets pinned on access; #4 stays
    //     zero and unpinned (not head-backed: past our size)
    const at3 = await t.commit(zf, { 3: 'd3', 4: 'e3' });
    assertBlk(m1, 2, 'c1', { 2: at1 });
    assertBlk(m1, 3, 'd1', { 2: at1, 3: at1 });
    assertBlk(m1, 4, '', { 2: at1, 3: at1 });

    // >>> resync at1 → at2: #2 unpins to head; #4 is head-backed now, and reading it pins it
    //     @at0 (it did not exist as of at2 → zeros)
    await wconn.resync(at2);
    expect(wconn.at).toBe(at2);
    assertBlk(m1, 2, 'c2', { 3: at1 });
    assertBlk(m1, 3, 'd1', { 3: at1 });
    assertBlk(m1, 4, '', { 3: at1, 4: at0 });

    // >>> resync at2 → at3: everything unpins, #4 reads data
    await wconn.resync(at3);
    assertBlk(m1, 2, 'c2', {});
    assertBlk(m1, 3, 'd3', {});
    assertBlk(m1, 4, 'e3', {});

    // >>> mmap entirely past the size
    const m2 = fh.mmap(5, 2);
    assertBlk(m2, 5, '', {});
    assertBlk(m2, 6, '', {});

    // >>> the same file opened twice: one FileH; closing one open keeps everything working
    const fh2 = await wconn.open(zf);
    expect(fh2).toBe(fh);
    assertBlk(m1, 2, 'c2', {});
    await fh2.close();
    assertBlk(m1, 2, 'c2', {});
    assertBlk(m1, 3, 'd3', {});
    assertBlk(m2, 5, '', {});
    const m3 = fh.mmap(2, 1);
    assertBlk(m3, 2, 'c2', {});
    m3.unmap();
    expect(m3.bytes.length).toBe(0);

    // >>> going back in history is refused by the server, and takes the conn down
    await expect(wconn.resync(at2)).rejects.toThrow(/going back in history is forbidden/);
    await expect(wconn.open(zf)).rejects.toThrow(/connection closed/);
    assertBlkFaults(m1, 2);
    m1.unmap();
    m2.unmap();
  });

  it('test_wcfs_client_down_efault: closing a FileH / the Conn efaults its mappings', T, async () => {
    const { t, foids, wc } = await tdb(2);
    const [zf1, zf2] = foids as [bigint, bigint];
    const at1 = await t.commit(zf1, { 1: 'b1', 3: 'd1' });
    await t.commit(zf2, { 1: 'B2', 3: 'D2' });
    const at2 = t.head();
    const wconn = await connect(wc, at2);
    const fh1 = await wconn.open(zf1);
    const fh2 = await wconn.open(zf2);
    const m11 = fh1.mmap(1, 4); // overlapping ranges, partly past EOF (size = 4 blocks)
    const m12 = fh1.mmap(3, 3);
    const m21 = fh2.mmap(0, 4);
    const m22 = fh2.mmap(2, 3);
    const data1: Record<number, string> = { 1: 'b1', 3: 'd1' };
    const data2: Record<number, string> = { 1: 'B2', 3: 'D2' };
    const check = (m: typeof m11, data: Record<number, string>) => {
      for (let blk = m.blkStart; blk < m.blkStop; blk++) assertBlk(m, blk, data[blk] ?? '', {});
    };
    const faults = (m: typeof m11) => {
      for (let blk = m.blkStart; blk < m.blkStop; blk++) assertBlkFaults(m, blk);
    };
    check(m11, data1);
    check(m12, data1);
    check(m21, data2);
    check(m22, data2);

    // >>> close fh1: its mappings fault, fh2's keep working
    await fh1.close();
    faults(m11);
    faults(m12);
    check(m21, data2);
    check(m22, data2);

    // >>> reopen f1: a new FileH, working mappings; the old ones still fault
    const fh1b = await wconn.open(zf1);
    expect(fh1b).not.toBe(fh1);
    const m11b = fh1b.mmap(1, 4);
    check(m11b, data1);
    faults(m11);
    faults(m12);

    // >>> close the conn: everything faults
    await wconn.close();
    for (const m of [m11, m12, m21, m22, m11b]) faults(m);

    // >>> afterwards: open/resync → connection closed; mmap → file already closed
    await expect(wconn.open(zf1)).rejects.toThrow(/connection closed/);
    await expect(wconn.resync(at2)).rejects.toThrow(/connection closed/);
    expect(() => fh2.mmap(0, 1)).toThrow(/file already closed/); // not explicitly closed
    expect(() => fh1.mmap(0, 1)).toThrow(/file already closed/); // explicitly closed
    await fh2.close(); // no-op
    void at1;
  });

  it('test_wcfs_client_afterfork: a forked child sees every mapping fault and no watch link', T, async () => {
    const { t, foids, wc } = await tdb();
    const [zf] = foids as [bigint];
    const at1 = await t.commit(zf, { 1: 'b1', 3: 'd1' });
    const wconn = await connect(wc, at1);
    const fh = await wconn.open(zf);
    const m = fh.mmap(0, 4);
    assertBlk(m, 0, '', {});
    assertBlk(m, 1, 'b1', {});
    assertBlk(m, 2, '', {});
    assertBlk(m, 3, 'd1', {});

    // >>> fork (native fork(): atfork handlers run): the child's copy of every block faults
    //     and its copy of the watch link fd is closed (so it cannot talk on our link)
    const offs = [0, 1, 2, 3].flatMap((b) => [b * t.bs, b * t.bs + t.bs - 1]);
    const r = native().clientProbe(m.bytes, offs, 'fork', [wconn.fd]);
    expect(r.status).toBe('exit:0');
    expect([...r.values]).toEqual(offs.map(() => -SIGSEGV));
    expect([...r.fds]).toEqual([-9]); // EBADF
    // while without atfork handlers the same memory reads fine: it is the handler
    const raw = native().clientProbe(m.bytes, [t.bs], 'raw', [wconn.fd]);
    expect([...raw.values]).toEqual(['b'.charCodeAt(0)]);
    expect([...raw.fds]).toEqual([0]);

    // >>> the parent goes on: a commit pins #1 @at1 on access, resync unpins it
    const at2 = await t.commit(zf, { 1: 'b2' });
    assertBlk(m, 0, '', {});
    assertBlk(m, 1, 'b1', { 1: at1 });
    assertBlk(m, 2, '', { 1: at1 });
    assertBlk(m, 3, 'd1', { 1: at1 });
    await wconn.resync(at2);
    assertBlk(m, 1, 'b2', {});
    assertBlk(m, 3, 'd1', {});
  });

  it('deadlock check: JS-thread faults whose pins go to our own pinner complete', T, async () => {
    const { t, foids, wc } = await tdb();
    const [zf] = foids as [bigint];
    const N = 16;
    const blocks = (txt: string) => Object.fromEntries(Array.from({ length: N }, (_, i) => [i, `${txt}${i}`]));
    const at1 = await t.commit(zf, blocks('a'));
    const wconn = await connect(wc, at1);
    const fh = await wconn.open(zf);
    const m = fh.mmap(0, N);
    const m2 = fh.mmap(N / 2, N / 2); // a second mapping of the same blocks gets the pins too
    await t.commit(zf, blocks('b'));
    // every block changed after at1: each first touch is a FUSE read the server holds until
    // our pinner acked `pin #i @at1` — while this (the JS) thread sits in the page fault
    const t0 = Date.now();
    for (let i = 0; i < N; i++) {
      const want = blkData(`a${i}`, t.bs);
      expect(Buffer.compare(m.bytes.subarray(i * t.bs, (i + 1) * t.bs), want), `#${i}`).toBe(0);
    }
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect([...fh.pinned().keys()].sort((a, b) => a - b)).toEqual(Array.from({ length: N }, (_, i) => i));
    for (let i = N / 2; i < N; i++) expect(m2.bytes[(i - N / 2) * t.bs + 1]).toBe(`a${i}`.charCodeAt(1));
    // the pins happened without the event loop: no JS ran between the reads above
  });

  it('pins caused by other processes are handled while the JS thread is blocked', T, async () => {
    const { t, foids, wc } = await tdb();
    const [zf] = foids as [bigint];
    const at1 = await t.commit(zf, { 0: 'x0', 1: 'x1', 2: 'x2' });
    const wconn = await connect(wc, at1);
    const fh = await wconn.open(zf);
    const m = fh.mmap(0, 3);
    await t.commit(zf, { 0: 'y0', 2: 'y2' });
    // another process reads all of head: the server holds its reads until we acked the pins
    const head = t.srv.at(`head/bigfile/${zf.toString(16).padStart(16, '0')}`);
    const done = `${t.dir}/child-done`;
    const child = spawn(
      process.execPath,
      ['-e', `const fs = require('fs'); fs.readFileSync(${JSON.stringify(head)}); fs.writeFileSync(${JSON.stringify(done)}, 'ok')`],
      {
        stdio: ['ignore', 'inherit', 'inherit'],
      },
    );
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    // meanwhile the JS thread never returns to the event loop (no N-API callback can run):
    // it sleeps and polls for the child's marker synchronously
    const sleeper = new Int32Array(new SharedArrayBuffer(4));
    let seen = false;
    for (const t0 = Date.now(); !seen && Date.now() - t0 < 20_000;) {
      Atomics.wait(sleeper, 0, 0, 20);
      seen = existsSync(done);
    }
    expect(seen, 'the child finished reading while the JS thread was blocked').toBe(true);
    expect(await exited).toBe(0);
    expect(pinnedText(fh)).toEqual(pinnedText({ 0: at1, 2: at1 }));
    assertBlk(m, 0, 'x0', { 0: at1, 2: at1 });
    assertBlk(m, 1, 'x1', { 0: at1, 2: at1 });
    assertBlk(m, 2, 'x2', { 0: at1, 2: at1 });
  });

  it('two conns at different revisions of one file, each isolated', T, async () => {
    const { t, foids, wc } = await tdb();
    const [zf] = foids as [bigint];
    const at1 = await t.commit(zf, { 0: 'a1', 1: 'b1' });
    const at2 = await t.commit(zf, { 0: 'a2' });
    const c1 = await connect(wc, at1);
    const c2 = await connect(wc, at2);
    const f1 = await c1.open(zf);
    const f2 = await c2.open(zf);
    const m1 = f1.mmap(0, 3);
    const m2 = f2.mmap(0, 3);
    assertBlk(m2, 0, 'a2', {});
    assertBlk(m1, 0, 'a1', { 0: at1 });
    const at3 = await t.commit(zf, { 0: 'a3', 1: 'b3', 2: 'c3' });
    assertBlk(m1, 1, 'b1', { 0: at1, 1: at1 });
    assertBlk(m2, 1, 'b1', { 1: at1 }); // unchanged in (at1, at2]: pinned to its own revision
    assertBlk(m2, 0, 'a2', { 0: at2, 1: at1 });
    assertBlk(m1, 2, '', { 0: at1, 1: at1 }); // past the size as of connect
    await c1.resync(at3);
    assertBlk(m1, 0, 'a3', {});
    assertBlk(m1, 2, 'c3', {}); // this read pins #2 in c2: it did not exist as of at2
    assertBlk(m2, 0, 'a2', { 0: at2, 1: at1, 2: t.at0 });
    assertBlk(m2, 2, '', { 0: at2, 1: at1, 2: t.at0 });
  });

  it('a head file that shrinks (last block punched) fails resync as a server bug, like upstream', T, async () => {
    const { t, foids, wc } = await tdb();
    const [zf] = foids as [bigint];
    const at1 = await t.commit(zf, { 0: 'a', 1: 'b' });
    const wconn = await connect(wc, at1);
    const fh = await wconn.open(zf);
    const m = fh.mmap(0, 2);
    assertBlk(m, 0, 'a', {});
    const at2 = await t.commit(zf, { 1: null });
    // the protocol cannot say "block 1 is gone at head but exists as of your at" for blocks
    // never read: sizes must only grow (wcfs-client.md §5.2)
    await expect(wconn.resync(at2)).rejects.toThrow(/wcfs bug: head\/file size not ↑/);
    await expect(wconn.open(zf)).rejects.toThrow(/connection closed/);
    assertBlkFaults(m, 0);
  });

  it('random histories: every read through a mapping equals the data as of conn.at', { timeout: 120_000 }, async () => {
    const seed = seedOr(Date.now() % 100000);
    console.log(`client random: WCFS_SEED=${seed}`);
    const r = rng(seed);
    const rnd = (n: number) => Math.floor(r() * n);
    const { t, foids, wc } = await tdb();
    const [zf] = foids as [bigint];
    const NB = 8;
    const writes: Array<{ tid: bigint; blocks: Record<number, string | null> }> = [];
    let lastBlk = -1;
    const dataAt = (blk: number, at: bigint): string => {
      let v = '';
      for (const w of writes) if (w.tid <= at && blk in w.blocks) v = w.blocks[blk] ?? '';
      return v;
    };
    const commit = async () => {
      // holes may be punched, but never at the end: a file that shrinks cannot be isolated
      // (see the 'shrinking' test)
      const blocks: Record<number, string | null> = {};
      for (let k = 1 + rnd(3); k > 0; k--) {
        const blk = rnd(NB);
        blocks[blk] = rnd(5) === 0 && blk < lastBlk ? null : `r${writes.length}b${blk}`;
      }
      for (const [b, v] of Object.entries(blocks)) if (v !== null) lastBlk = Math.max(lastBlk, Number(b));
      const tid = await t.commit(zf, blocks);
      writes.push({ tid, blocks });
    };
    await commit();
    const views = await Promise.all(
      [0, 1].map(async () => {
        const c = await connect(wc, t.head());
        const fh = await c.open(zf);
        return { c, fh, ms: [fh.mmap(0, NB + 2)] };
      }),
    );
    const steps = Number(process.env.WCFS_STEPS ?? 120);
    for (let step = 0; step < steps; step++) {
      const v = views[rnd(views.length)]!;
      switch (rnd(6)) {
        case 0:
          await commit();
          break;
        case 1: {
          // resync forward to a random revision ≥ at
          const cands = writes.map((w) => w.tid).filter((tid) => tid >= v.c.at);
          await v.c.resync(cands[rnd(cands.length)]!);
          break;
        }
        case 2: {
          const s = rnd(NB + 2);
          v.ms.push(v.fh.mmap(s, 1 + rnd(NB + 3 - s)));
          if (v.ms.length > 4) v.ms.shift()!.unmap();
          break;
        }
        default: {
          const m = v.ms[rnd(v.ms.length)]!;
          const blk = m.blkStart + rnd(m.blkLen);
          const got = m.bytes.subarray((blk - m.blkStart) * t.bs, (blk - m.blkStart + 1) * t.bs);
          const want = blkData(dataAt(blk, v.c.at), t.bs);
          if (Buffer.compare(got, want) !== 0) {
            expect.fail(
              `seed ${seed} step ${step}: #${blk} @${v.c.at.toString(16)}: got ${JSON.stringify(Buffer.from(got.subarray(0, 8)).toString('latin1'))}, want ${JSON.stringify(dataAt(blk, v.c.at))}`,
            );
          }
        }
      }
    }
  });
});
