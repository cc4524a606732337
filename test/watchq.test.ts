// WatchQueue (src/zodb/watchq.ts): replay, then live events; ready() > 0 exactly when next()
// resolves without waiting (the server's commit loop batches on it). A table of cases and a
// seeded random sequence of push / ready / next against a model; then the bound (Q1): a
// consumer that lags leaves events in the "storage" (here an array, as FileStorage's file is:
// fs1-follow.test.ts runs it on a real one, zeo-storage.test.ts on ZEO's ring), cases and a
// seeded random run against a model; then a catch-up replay fetched asynchronously in batches
// (FetchedReplay: ZEO's path past its ring), cases and a seeded random run.
import { describe, expect, it } from 'vitest';
import type { CommitEvent } from '../src/zodb/storage.js';
import { FetchedReplay, WatchQueue, type Spill } from '../src/zodb/watchq.js';
import { rng } from '../src/util/rng.js';
import { seedOr } from './helpers/fuzz.js';

const ev = (tid: number): CommitEvent => ({ tid: BigInt(tid), oids: [BigInt(tid)] });
/** For the cases that stay far below the default bounds: a spill would be a bug here. */
const noSpill: Spill = () => {
  throw new Error('unexpected spill');
};

/** next() if it resolves within this turn of the event loop, else 'waits'. */
async function nextNow(w: WatchQueue): Promise<number | 'waits' | 'done'> {
  const p = w.next();
  const r = await Promise.race([p, new Promise<'waits'>((res) => setImmediate(() => res('waits')))]);
  if (r === 'waits') {
    w.close(); // release the pending next()
    return 'waits';
  }
  return r.done ? 'done' : Number(r.value.tid);
}

describe('WatchQueue: ready() promises only what next() has', () => {
  it('a replay that ran out is not ready (it was: the commit loop then waited for the next commit)', async () => {
    const w = new WatchQueue(0n, [ev(1), ev(2)].values(), () => {}, noSpill);
    expect(w.ready()).toBe(1);
    expect(await w.next()).toEqual({ value: ev(1), done: false });
    expect(w.ready()).toBe(1);
    expect(await w.next()).toEqual({ value: ev(2), done: false });
    expect(w.ready()).toBe(0);
    w.push(ev(3));
    expect(w.ready()).toBe(1);
    expect(await nextNow(w)).toBe(3);
  });
  it('an empty replay is not ready; live events after it are', async () => {
    const w = new WatchQueue(5n, [].values(), () => {}, noSpill);
    expect(w.ready()).toBe(0);
    w.push(ev(4)); // ≤ from: dropped
    expect(w.ready()).toBe(0);
    w.push(ev(6));
    expect(w.ready()).toBe(1);
    expect(await nextNow(w)).toBe(6);
  });
  it('replay then live, in order; a replay error is thrown after what came before it', async () => {
    function* rep() {
      yield ev(1);
      throw new Error('read failed');
    }
    const w = new WatchQueue(0n, rep(), () => {}, noSpill);
    expect(await nextNow(w)).toBe(1);
    expect(w.ready()).toBe(1);
    await expect(w.next()).rejects.toThrow('read failed');
    expect(w.ready()).toBe(0);
  });

  it(`seeded random push/ready/next against a model (seed ${seedOr(7)})`, async () => {
    const R = rng(seedOr(7));
    for (let round = 0; round < 200; round++) {
      const nrep = Math.floor(R() * 4);
      const rep = Array.from({ length: nrep }, (_, i) => ev(i + 1));
      const w = new WatchQueue(0n, rep.values(), () => {}, noSpill);
      const model: number[] = rep.map((e) => Number(e.tid));
      let tid = nrep;
      for (let step = 0; step < 12; step++) {
        const r = R();
        if (r < 0.35) {
          w.push(ev(++tid));
          model.push(tid);
        } else if (r < 0.7) {
          expect(w.ready() > 0).toBe(model.length > 0);
        } else if (model.length > 0) {
          expect(await w.next()).toEqual({ value: ev(model.shift()!), done: false });
        }
      }
      expect(w.ready() > 0).toBe(model.length > 0);
      w.close();
    }
  });
});

/** A driver's history: every event published, in order; spill replays (after, last now]. */
class History {
  readonly events: CommitEvent[] = [];
  spills = 0;
  failNext: Error | null = null;
  publish(w: WatchQueue, e: CommitEvent): void {
    this.events.push(e);
    w.push(e);
  }
  readonly spill: Spill = (after) => {
    this.spills++;
    return () => {
      if (this.failNext !== null) throw this.failNext;
      const end = this.events.length; // the head as of the start of the replay
      return this.events
        .slice(0, end)
        .filter((e) => e.tid > after)
        [Symbol.iterator]();
    };
  };
}

const evn = (tid: number, n: number): CommitEvent => ({ tid: BigInt(tid), oids: Array.from({ length: n }, (_, i) => BigInt(i)) });

describe('WatchQueue: bounded (Q1)', () => {
  it('a lagging consumer: at most maxEvents queued, the rest replayed from the storage once drained; live events after', async () => {
    const h = new History();
    const w = new WatchQueue(0n, null, () => {}, h.spill, { maxEvents: 3, maxOids: 100 });
    for (let t = 1; t <= 10; t++) h.publish(w, ev(t));
    expect(w.spilling).toBe(true);
    expect(w.ready()).toBe(3); // what is queued, not more
    const got: number[] = [];
    for (let i = 0; i < 3; i++) got.push(Number((await w.next()).value!.tid));
    expect(w.spilling).toBe(true);
    h.publish(w, ev(11)); // still spilled: the replay will read it
    expect(w.ready()).toBe(1); // drained: the catch-up replay starts
    expect(w.spilling).toBe(false);
    h.publish(w, ev(12)); // after the replay started: queued behind it
    for (let i = 0; i < 9; i++) got.push(Number((await w.next()).value!.tid));
    expect(got).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    expect(await nextNow(w)).toBe('waits');
    expect(h.spills).toBe(1);
  });
  it('maxOids bounds big commits; one event bigger than the bound is still queued alone', async () => {
    const h = new History();
    const w = new WatchQueue(0n, null, () => {}, h.spill, { maxEvents: 100, maxOids: 10 });
    h.publish(w, evn(1, 25)); // alone: queued
    expect(w.spilling).toBe(false);
    h.publish(w, evn(2, 1));
    expect(w.spilling).toBe(true);
    expect((await w.next()).value!.oids.length).toBe(25);
    expect((await w.next()).value!.tid).toBe(2n);
  });
  it('the catch-up replay failing (the storage was packed meanwhile) ends the watch with its error, after what was queued', async () => {
    const h = new History();
    const w = new WatchQueue(0n, null, () => {}, h.spill, { maxEvents: 2, maxOids: 100 });
    for (let t = 1; t <= 5; t++) h.publish(w, ev(t));
    h.failNext = new Error('storage packed meanwhile');
    expect(await nextNow(w)).toBe(1);
    expect(await nextNow(w)).toBe(2);
    expect(w.ready()).toBe(1); // next() throws at once
    await expect(w.next()).rejects.toThrow('storage packed meanwhile');
    expect(w.ready()).toBe(0);
  });
  it(`seeded random publish/ready/next with small bounds: every event exactly once, in order (seed ${seedOr(11)})`, async () => {
    const R = rng(seedOr(11));
    for (let round = 0; round < 300; round++) {
      const h = new History();
      const limits = { maxEvents: 1 + Math.floor(R() * 4), maxOids: 2 + Math.floor(R() * 8) };
      const w = new WatchQueue(0n, null, () => {}, h.spill, limits);
      let tid = 0;
      let delivered = 0;
      for (let step = 0; step < 40; step++) {
        const r = R();
        if (r < 0.5) h.publish(w, evn(++tid, 1 + Math.floor(R() * 3)));
        else if (r < 0.7) expect(w.ready() > 0, `ready, ${delivered} of ${tid} delivered`).toBe(delivered < tid);
        else if (delivered < tid) expect(Number((await w.next()).value!.tid)).toBe(++delivered);
        expect(w.ready()).toBeLessThanOrEqual(limits.maxEvents + 1); // the queue, and a replayed event read ahead
      }
      while (delivered < tid) expect(Number((await w.next()).value!.tid)).toBe(++delivered);
      expect(await nextNow(w)).toBe('waits');
    }
  });
});

/** Batches handed out by hand: each next() waits until the test gives, ends or fails it. */
class Batches implements AsyncIterator<CommitEvent[]> {
  private readonly waiting: Array<{ res: (r: IteratorResult<CommitEvent[]>) => void; rej: (e: unknown) => void }> = [];
  returned = false;
  get pulls(): number {
    return this.waiting.length;
  }
  next(): Promise<IteratorResult<CommitEvent[]>> {
    return new Promise((res, rej) => this.waiting.push({ res, rej }));
  }
  async give(evs: CommitEvent[]): Promise<void> {
    this.waiting.shift()!.res({ value: evs, done: false });
    await tick();
  }
  async end(): Promise<void> {
    this.waiting.shift()!.res({ value: undefined, done: true });
    await tick();
  }
  async fail(e: Error): Promise<void> {
    this.waiting.shift()!.rej(e);
    await tick();
  }
  return(): Promise<IteratorResult<CommitEvent[]>> {
    this.returned = true;
    return Promise.resolve({ value: undefined, done: true });
  }
}
const tick = () => new Promise<void>((res) => setImmediate(res));
const tids = (evs: Array<CommitEvent | undefined>) => evs.map((e) => Number(e!.tid));

describe('WatchQueue: a catch-up replay fetched in batches (FetchedReplay)', () => {
  /** A watch that lagged: 1, 2 queued (bound 2), 3…6 left to a fetched replay. */
  async function lagged(): Promise<{ w: WatchQueue; b: Batches }> {
    const b = new Batches();
    const w = new WatchQueue(
      0n,
      null,
      () => {},
      () => () => new FetchedReplay(b),
      { maxEvents: 2, maxOids: 100 },
    );
    for (let t = 1; t <= 6; t++) w.push(ev(t));
    expect(tids([(await w.next()).value, (await w.next()).value])).toEqual([1, 2]);
    return { w, b };
  }

  it('events in order, then what was pushed meanwhile; ready() counts only what arrived', async () => {
    const { w, b } = await lagged();
    expect(w.ready()).toBe(0); // the fetch starts; nothing arrived yet
    expect(b.pulls).toBe(1); // one pull in flight, not more
    w.push(ev(7)); // live, after the replay started: queued behind it
    const p = w.next(); // waits for the fetch
    await b.give([ev(3), ev(4)]);
    expect(Number((await p).value!.tid)).toBe(3);
    expect(w.ready()).toBe(1);
    expect(Number((await w.next()).value!.tid)).toBe(4);
    expect(w.ready()).toBe(0); // the next batch is on its way: not the queue's turn yet
    expect(await nextNow(w)).toBe('waits');
  });

  it('a live event pushed while next() waits for the fetch does not jump the replay', async () => {
    const { w, b } = await lagged();
    const p = w.next(); // waits for 3
    w.push(ev(7));
    await b.give([ev(3)]);
    expect(Number((await p).value!.tid)).toBe(3);
  });

  it('…the replay ends cleanly: the queue follows; no pull after the end', async () => {
    const { w, b } = await lagged();
    w.ready();
    w.push(ev(7));
    await b.give([ev(3), ev(4), ev(5), ev(6)]);
    expect(w.ready()).toBe(4);
    expect(b.pulls).toBe(0); // read ahead up to the bound: the fetch waits
    const got = [];
    for (let i = 0; i < 4; i++) got.push((await w.next()).value);
    expect(b.pulls).toBe(1);
    await b.end();
    expect(w.ready()).toBe(1);
    got.push((await w.next()).value);
    expect(tids(got)).toEqual([3, 4, 5, 6, 7]);
    expect(b.pulls).toBe(0);
  });

  it('a fetch that fails: what it delivered, then its error — never the events queued behind it', async () => {
    const { w, b } = await lagged();
    w.ready();
    w.push(ev(7));
    await b.give([ev(3)]);
    await b.fail(new Error('packed meanwhile'));
    expect(w.ready()).toBe(1);
    expect(Number((await w.next()).value!.tid)).toBe(3);
    expect(w.ready()).toBe(1); // next() throws at once
    await expect(w.next()).rejects.toThrow('packed meanwhile');
    expect(await w.next()).toEqual({ value: undefined, done: true });
  });

  it('a waiting next() gets the fetch error', async () => {
    const { w, b } = await lagged();
    const p = expect(w.next()).rejects.toThrow('gap'); // waiting (a handler attached before it fails)
    await b.fail(new Error('gap'));
    await p;
  });

  it('fail() from the storage during a fetch: the read-ahead goes out, the fetch is ended, the queue dropped', async () => {
    const { w, b } = await lagged();
    w.ready();
    w.push(ev(7));
    await b.give([ev(3)]);
    w.fail(new Error('storage fatal'));
    expect(b.returned).toBe(true);
    expect(Number((await w.next()).value!.tid)).toBe(3);
    await expect(w.next()).rejects.toThrow('storage fatal');
  });

  it('close() during a fetch ends it (return()) and releases a waiting next()', async () => {
    const { w, b } = await lagged();
    const p = w.next();
    w.close();
    expect(b.returned).toBe(true);
    expect(await p).toEqual({ value: undefined, done: true });
  });

  it('a watch that starts with a fetched replay (ZEO: watch from before its ring)', async () => {
    const b = new Batches();
    const w = new WatchQueue(2n, new FetchedReplay(b), () => {}, noSpill);
    w.push(ev(5));
    await b.give([ev(3), ev(4)]);
    await b.end();
    expect(tids([(await w.next()).value, (await w.next()).value, (await w.next()).value])).toEqual([3, 4, 5]);
  });

  it(`seeded random publish/ready/next with fetched catch-up replays: every event exactly once, in order (seed ${seedOr(12)})`, async () => {
    const R = rng(seedOr(12));
    for (let round = 0; round < 200; round++) {
      const h = new History();
      const limits = { maxEvents: 1 + Math.floor(R() * 4), maxOids: 2 + Math.floor(R() * 8) };
      // the replay as a server would give it: batches of random size, each after a turn or two
      const spill: Spill = (after) => () => {
        const evs = h.events.filter((e) => e.tid > after); // the head as of the start
        return new FetchedReplay(
          (async function* () {
            for (let i = 0; i < evs.length;) {
              for (let k = Math.floor(R() * 3); k > 0; k--) await tick();
              const n = 1 + Math.floor(R() * 5);
              yield evs.slice(i, i + n);
              i += n;
            }
          })(),
        );
      };
      const w = new WatchQueue(0n, null, () => {}, spill, limits);
      let tid = 0;
      let delivered = 0;
      for (let step = 0; step < 40; step++) {
        const r = R();
        if (r < 0.5) h.publish(w, evn(++tid, 1 + Math.floor(R() * 3)));
        else if (r < 0.6) await tick();
        else if (r < 0.7) {
          if (w.ready() > 0) expect(delivered).toBeLessThan(tid); // ready promises only what exists
        } else if (delivered < tid) expect(Number((await w.next()).value!.tid)).toBe(++delivered);
        expect(w.ready()).toBeLessThanOrEqual(limits.maxEvents + 5); // the queue or the read-ahead (+ one batch)
      }
      while (delivered < tid) expect(Number((await w.next()).value!.tid)).toBe(++delivered);
      expect(await nextNow(w)).toBe('waits');
    }
  });
});
