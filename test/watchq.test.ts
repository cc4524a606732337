// WatchQueue (src/zodb/watchq.ts): replay, then live events; ready() > 0 exactly when next()
// resolves without waiting (the server's commit loop batches on it). A table of cases and a
// seeded random sequence of push / ready / next against a model.
import { describe, expect, it } from 'vitest';
import type { CommitEvent } from '../src/zodb/storage.js';
import { WatchQueue } from '../src/zodb/watchq.js';
import { rng } from '../src/util/rng.js';
import { seedOr } from './helpers/fuzz.js';

const ev = (tid: number): CommitEvent => ({ tid: BigInt(tid), oids: [BigInt(tid)] });

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
    const w = new WatchQueue(0n, [ev(1), ev(2)].values(), () => {});
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
    const w = new WatchQueue(5n, [].values(), () => {});
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
    const w = new WatchQueue(0n, rep(), () => {});
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
      const w = new WatchQueue(0n, rep.values(), () => {});
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
