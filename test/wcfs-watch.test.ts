// The isolation protocol at the wire: raw head/watch links (each in a child process) against
// a real server, with exact pin sets — no missing pins, no extra ones — for hand-written
// scenarios (upstream's watch_* tests) and for random histories checked against a model.
//
// Model (wcfs-server.md §2.5-§2.7): rev(blk, at) = the last commit ≤ at that wrote blk, or the
// server's tail when none is after the tail. A watch at `at` must be pinned, for every block
// ever read via head/ that changed in (at, head], to rev(blk, at); a read of blk at head pins
// every watch with at < rev(blk, head) to rev(blk, at), unless already so pinned.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dateToTid, hex16, type Tid } from '../src/zodb/ids.js';
import { sleep } from './helpers/mount.js';
import { stopAllServers } from './helpers/wcfs.js';
import { TDB, rng, stats } from './helpers/tdb.js';
import { ENV_SEED } from './helpers/fuzz.js';

const tdbs: TDB[] = [];
async function newTDB(): Promise<TDB> {
  const t = new TDB();
  tdbs.push(t);
  await t.open();
  return t;
}
afterEach(async () => {
  for (const t of tdbs.splice(0)) await t.close();
}, 30_000);
afterAll(stopAllServers, 30_000);

describe('watch setup and reads (upstream scenarios)', () => {
  it('watch_setup: pins and unpins along a history, no pin twice', async () => {
    const t = await newTDB();
    const f = await t.newFile('f');
    const at0 = await t.commit([[f, { 0: 1, 1: 1, 2: 1 }]]);
    await t.serve();
    await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
    const at1 = await t.commit([[f, { 2: 2 }]]);
    for (const blk of [0, 1, 2]) await t.read(f, blk);
    const at2 = await t.commit([[f, { 1: 3, 3: 3 }]]);
    await t.read(f, 3);
    const at3 = await t.commit([[f, { 0: 4, 2: 4 }]]);
    const l = await t.link();
    // explicit expectations, then the model agrees
    await l.watch(
      f,
      at0,
      new Map<number, Tid | null>([
        [0, at0],
        [1, at0],
        [2, at0],
        [3, at0],
      ]),
    );
    await l.watch(f, at1, new Map<number, Tid | null>([[2, at1]])); // moved: only what differs
    await l.watch(
      f,
      at2,
      new Map<number, Tid | null>([
        [1, null],
        [3, null],
      ]),
    ); // 1, 3 unchanged after at2
    await l.watch(f, at2, new Map()); // re-watch the same at: nothing
    await t.watch(l, f, at3); // everything back to head
    expect(l.pinned.get(f)?.size ?? 0).toBe(0);
    expect(await stats(t)).toMatchObject({ Watch: 1, WatchLink: 1, PinnedBlk: 0 });
    await l.stopWatch(f);
    expect(await stats(t)).toMatchObject({ Watch: 0 });
  }, 30_000);

  it('watch_vs_access: reads pin every watch that needs it, exactly once', async () => {
    const t = await newTDB();
    const f = await t.newFile('f');
    await t.commit([[f, { 0: 1, 2: 1 }]]);
    await t.serve();
    await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
    const at1 = await t.commit([[f, { 1: 2 }]]);
    const la = await t.link();
    const lb = await t.link();
    await t.watch(la, f, at1);
    await t.watch(lb, f, t.tail);
    await t.commit([[f, { 0: 3, 1: 3, 5: 3 }]]); // 5: beyond the old size → pins to tail
    for (const blk of [0, 1, 2, 3, 4, 5, 0, 1]) await t.read(f, blk);
    expect(la.pinned.get(f)).toEqual(
      new Map([
        [0, t.tail],
        [1, at1],
        [5, t.tail],
      ]),
    );
    // no_pin_twice: drop head's cache of blk 0 (a commit elsewhere), read again: no pin
    await t.commit([[f, { 2: 4 }]]);
    await t.read(f, 0);
    await t.read(f, 2);
  }, 30_000);

  it('watch_2files: one link, two files, per-file pins', async () => {
    const t = await newTDB();
    const f = await t.newFile('f');
    const g = await t.newFile('g');
    await t.commit([
      [f, { 0: 1 }],
      [g, { 0: 1, 1: 1 }],
    ]);
    await t.serve();
    for (const x of [f, g]) await stat(t.srv.at(`head/bigfile/${hex16(x)}`));
    for (const [x, b] of [
      [f, 0],
      [g, 0],
      [g, 1],
    ] as const)
      await t.read(x, b);
    const at1 = await t.commit([
      [f, { 0: 2 }],
      [g, { 1: 2 }],
    ]);
    const l = await t.link();
    await t.watch(l, f, t.tail);
    await t.watch(l, g, t.tail);
    expect(l.pinned.get(f)).toEqual(new Map([[0, t.tail]]));
    expect(l.pinned.get(g)).toEqual(new Map([[1, t.tail]]));
    await t.watch(l, f, at1); // only f's pins move
    expect(l.pinned.get(g)).toEqual(new Map([[1, t.tail]]));
  }, 30_000);

  it('watch_setup_ahead: ok only once head reaches at', async () => {
    const t = await newTDB();
    const f = await t.newFile('f');
    await t.commit([[f, { 0: 1 }]]);
    await t.serve();
    await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
    const l = await t.link();
    const ahead = dateToTid(new Date(Date.now() + 700)); // no commit there yet
    l.send(`1 watch ${hex16(f)} @${hex16(ahead)}\n`);
    await sleep(300);
    expect(l.lines).toEqual([]); // waits for head ≥ at
    await sleep(700);
    const at1 = await t.commit([[f, { 1: 2 }]]);
    expect(at1 > ahead).toBe(true);
    expect(await l.next()).toBe('1 ok');
  }, 30_000);

  it('watch_robust: errors keep the link; bad frames end it', async () => {
    const t = await newTDB();
    const f = await t.newFile('f');
    const never = await t.newFile('never');
    await t.commit([[f, { 0: 1 }]]);
    await t.serve();
    await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
    const l = await t.link();
    expect(await l.request(`watch ${hex16(never)} @${hex16(t.head())}`)).toBe(
      `error setup watch f<${hex16(never)}> @${hex16(t.head())}: file not yet known to wcfs or is not a ZBigFile`,
    );
    expect(await l.request('bla bla')).toBe('error bad watch: not a watch request: "bla bla"');
    expect(await l.request(`watch ${hex16(f)} @${hex16(t.tail - 1n)}`)).toMatch(
      new RegExp(`^error setup watch f<${hex16(f)}> @${hex16(t.tail - 1n)}: too far away back from head/at \\(@${hex16(t.head())}\\); `),
    );
    await t.watch(l, f, t.head());
    expect(await l.request(`watch ${hex16(f)} @${hex16(t.tail - 1n)}`)).toMatch(/too far away back/);
    const at1 = await t.commit([[f, { 1: 2 }]]);
    await t.watch(l, f, at1);
    expect(await l.request(`watch ${hex16(f)} @${hex16(t.tail)}`)).toBe(
      `error setup watch f<${hex16(f)}> @${hex16(t.tail)}: going back in history is forbidden`,
    );
    l.send('zzz hello\n');
    expect(await l.untilEOF()).toEqual(['0 error: invalid frame: "zzz hello\\n" (invalid stream)']);
  }, 30_000);

  it('watch_before_create: a file created after at has an epoch in between', async () => {
    const t = await newTDB();
    const f = await t.newFile('f');
    await t.commit([[f, { 0: 1 }]]);
    await t.serve();
    const at1 = t.head();
    const g = await t.newFile('g');
    await t.commit([[g, { 0: 1 }]]);
    await stat(t.srv.at(`head/bigfile/${hex16(g)}`));
    await t.read(g, 0);
    const l = await t.link();
    const reply = await l.request(`watch ${hex16(g)} @${hex16(at1)}`);
    expect(reply).toBe(
      `error setup watch f<${hex16(g)}> @${hex16(at1)}: file epoch detected @${hex16(t.revs[t.revs.length - 2]!)} in between (at,head=@${hex16(t.head())}]`,
    );
    expect(await stats(t)).toMatchObject({ Watch: 0 }); // rolled back
  }, 30_000);

  it('bye with a setup pin unanswered: the request fails, nobody is killed, commits go on', async () => {
    const t = await newTDB();
    const f = await t.newFile('f');
    await t.commit([[f, { 0: 1 }]]);
    await t.serve();
    await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
    await t.read(f, 0);
    await t.commit([[f, { 0: 2 }]]);
    const l = await t.link();
    l.send(`1 watch ${hex16(f)} @${hex16(t.tail)}\n`);
    expect(await l.next()).toMatch(/^2 pin /);
    l.send('3 bye\n');
    expect(await l.untilEOF()).toEqual([]);
    await sleep(200);
    expect(l.proc.exitCode).toBe(null); // alive
    await t.commit([[f, { 1: 3 }]]);
    expect(await stats(t)).toMatchObject({ WatchLink: 0, Watch: 0, pinkill: 0 });
  }, 30_000);

  it('stats: PinRttP50/P99 are the round trips of pins acked within --stats-window', async () => {
    const t = await newTDB();
    t.serveArgs = ['--stats-window', '2'];
    const f = await t.newFile('f');
    await t.commit([[f, { 0: 1, 1: 1 }]]);
    await t.serve();
    await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
    await t.read(f, 0);
    await t.read(f, 1);
    await t.commit([[f, { 0: 2, 1: 2 }]]);
    expect(await stats(t)).toMatchObject({ PinRttP50: 0, PinRttP99: 0 }); // no pin yet
    // >>> watch @tail: two pins; the client holds the first ack back for 300 ms
    const l = await t.link();
    l.send(`1 watch ${hex16(f)} @${hex16(t.tail)}\n`);
    const pins = [await l.next(), await l.next()];
    expect(pins.map((p) => p.replace(/^\d+ /, '')).sort()).toEqual([0, 1].map((b) => `pin ${hex16(f)} #${b} @${hex16(t.tail)}`));
    const [s1, s2] = pins.map((p) => /^(\d+) /.exec(p)![1]);
    l.send(`${s1} ack\n`);
    await sleep(300);
    l.send(`${s2} ack\n`);
    expect(await l.next()).toBe('1 ok');
    const s = await stats(t);
    expect(s.PinRttP99, 'p99: the held-back ack').toBeGreaterThanOrEqual(300_000);
    expect(s.PinRttP50, 'p50: the prompt ack (nearest rank of 2)').toBeLessThan(300_000);
    expect(s.PinRttP50).toBeGreaterThan(0);
    // >>> past the window: nothing to show
    await sleep(2200);
    expect(await stats(t)).toMatchObject({ PinRttP50: 0, PinRttP99: 0, pin: 2 });
  }, 30_000);
});

// ---- random histories against the model ----

describe('random histories: exact pins (model)', () => {
  const seeds = ENV_SEED !== undefined ? [ENV_SEED] : [1, 2, 3];
  for (const seed of seeds) {
    it(`seed ${seed}`, async () => {
      const r = rng(seed);
      const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)]!;
      const t = await newTDB();
      const files = [await t.newFile('f'), await t.newFile('g')];
      const randomCommit = () => {
        const ch: Array<[bigint, Record<number, number | null>]> = [];
        for (const foid of files) {
          if (r() < 0.3) continue;
          const blocks: Record<number, number | null> = {};
          for (let i = 0, n = 1 + Math.floor(r() * 3); i < n; i++) blocks[Math.floor(r() * 8)] = r() < 0.15 ? null : 1 + Math.floor(r() * 254);
          ch.push([foid, blocks]);
        }
        return t.commit(ch.length ? ch : [[files[0]!, { 0: 1 + Math.floor(r() * 254) }]]);
      };
      for (let i = 0; i < 3; i++) await randomCommit();
      await t.serve();
      for (const foid of files) await stat(t.srv.at(`head/bigfile/${hex16(foid)}`));
      const links = [await t.link(), await t.link()];
      try {
        for (let step = 0; step < 60; step++) {
          const x = r();
          if (x < 0.25) await randomCommit();
          else if (x < 0.65) {
            const foid = pick(files);
            const n = t.nblk(foid);
            if (n > 0) await t.read(foid, Math.floor(r() * n));
          } else if (x < 0.95) {
            const l = pick(links);
            const foid = pick(files);
            const cur = l.at.get(foid) ?? t.tail;
            const cands = t.revs.filter((v) => v >= cur && v >= t.tail);
            await t.watch(l, foid, cands.length ? pick(cands) : t.head());
          } else {
            const l = pick(links);
            const foid = pick(files);
            if (l.at.has(foid)) await l.stopWatch(foid);
          }
        }
      } catch (e) {
        (e as Error).message = `seed ${seed} (rerun: WCFS_SEED=${seed}): ${(e as Error).message}`;
        if (process.env.WCFS_DEBUG_DUMP) writeFileSync(process.env.WCFS_DEBUG_DUMP, t.srv.stderr());
        throw e;
      }
      const s = await stats(t);
      expect(s.pin, 'the history exercised pins').toBeGreaterThan(5);
      let pinned = 0;
      for (const l of links) for (const m of l.pinned.values()) pinned += m.size;
      expect(s.PinnedBlk).toBe(pinned);
      expect(s.pinkill).toBe(0);
    }, 120_000);
  }
});
