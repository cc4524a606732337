// RWMutex, UploadGate and Event (src/server/lock.ts) without a server: the writer preference
// commit processing relies on (a waiting writer holds new readers back; the readers it held
// back are all granted together after it), rlockNested, cancellation of a wait through an
// AbortSignal (rejects with the signal's reason and leaves the queues consistent), misuse
// errors. A table of scripts, and a seeded random test against a model of the same rules.
// UploadGate: its rules (U1-U3) one by one, and seeded random interleavings of uploads and
// pausing holders, checked against U1-U3 and for liveness.
//
// A script is a list of steps by named actors:
//   'R a'  a asks for the lock shared        'W a'  a asks for it exclusive
//   'N a'  a (a shared holder) takes another shared hold with rlockNested()
//   'U a'  a releases what it holds (runlock / unlock; one nested hold per U when nested)
//   'X a'  a's wait is aborted (its AbortController)
// After each step (and all the promise callbacks it set off) the holders are compared with
// the expected text: 'a:r b:r' (shared holders), 'a:w', or '' (nobody).
import { describe, expect, it } from 'vitest';
import { Event, RWMutex, UploadGate } from '../src/server/lock.js';
import { rng } from '../src/util/rng.js';
import { FUZZ_SEED, fcParams } from './helpers/fuzz.js';

/** Let every pending promise callback run. */
const flush = () => new Promise<void>((r) => setImmediate(r));

class Actors {
  readonly mu = new RWMutex();
  /** actor → held mode ('r' counts nested holds). */
  readonly holds = new Map<string, { mode: 'r' | 'w'; n: number }>();
  readonly waiting = new Map<string, { mode: 'r' | 'w'; ac: AbortController }>();
  /** actor → the reason its wait was rejected with. */
  readonly rejected = new Map<string, unknown>();

  ask(a: string, mode: 'r' | 'w'): void {
    if (this.holds.has(a) || this.waiting.has(a)) throw new Error(`script: ${a} already holds or waits`);
    const ac = new AbortController();
    this.waiting.set(a, { mode, ac });
    const p = mode === 'r' ? this.mu.rlock(ac.signal) : this.mu.lock(ac.signal);
    p.then(
      () => {
        this.waiting.delete(a);
        this.holds.set(a, { mode, n: 1 });
      },
      (e) => {
        this.waiting.delete(a);
        this.rejected.set(a, e);
      },
    );
  }

  nested(a: string): void {
    this.mu.rlockNested();
    this.holds.get(a)!.n++;
  }

  release(a: string): void {
    const h = this.holds.get(a);
    if (h === undefined) throw new Error(`script: ${a} holds nothing`);
    if (h.mode === 'w') this.mu.unlock();
    else this.mu.runlock();
    if (--h.n === 0) this.holds.delete(a);
  }

  abort(a: string): void {
    const w = this.waiting.get(a);
    if (w === undefined) throw new Error(`script: ${a} does not wait`);
    w.ac.abort(new Error(`abort ${a}`));
  }

  async step(s: string): Promise<void> {
    const [op, a] = s.split(' ') as [string, string];
    if (op === 'R') this.ask(a, 'r');
    else if (op === 'W') this.ask(a, 'w');
    else if (op === 'N') this.nested(a);
    else if (op === 'U') this.release(a);
    else if (op === 'X') this.abort(a);
    else throw new Error(`script: bad step ${s}`);
    await flush();
  }

  get holders(): string {
    return [...this.holds.entries()]
      .map(([a, h]) => `${a}:${h.mode}`)
      .sort()
      .join(' ');
  }
}

// [what, [step, holders after it]...]
const scripts: Array<[string, Array<[string, string]>]> = [
  [
    'readers share the lock',
    [
      ['R a', 'a:r'],
      ['R b', 'a:r b:r'],
      ['U a', 'b:r'],
      ['U b', ''],
    ],
  ],
  [
    'a writer excludes everybody',
    [
      ['W a', 'a:w'],
      ['R b', 'a:w'],
      ['W c', 'a:w'],
      ['U a', 'c:w'],
      ['U c', 'b:r'],
      ['U b', ''],
    ],
  ],
  [
    'a waiting writer holds new readers back (writer preference)',
    [
      ['R a', 'a:r'],
      ['W b', 'a:r'], // >>> b waits for reader a
      ['R c', 'a:r'], // >>> c queues behind waiting writer b, though only a reader holds the lock
      ['U a', 'b:w'],
      ['U b', 'c:r'],
    ],
  ],
  [
    'all readers held back by a writer are granted together after it',
    [
      ['W a', 'a:w'],
      ['R b', 'a:w'],
      ['R c', 'a:w'],
      ['R d', 'a:w'],
      ['U a', 'b:r c:r d:r'],
    ],
  ],
  [
    'waiting writers go first, one at a time in order, even before readers that came earlier',
    [
      ['W a', 'a:w'],
      ['W b', 'a:w'],
      ['R c', 'a:w'],
      ['W d', 'a:w'],
      ['U a', 'b:w'],
      ['U b', 'd:w'],
      ['U d', 'c:r'],
    ],
  ],
  [
    'rlockNested never waits, even with a writer waiting; the writer needs every hold released',
    [
      ['R a', 'a:r'],
      ['W b', 'a:r'],
      ['N a', 'a:r'],
      ['U a', 'a:r'],
      ['U a', 'b:w'],
    ],
  ],
  [
    'aborting the waiting writer releases the readers it held back',
    [
      ['R a', 'a:r'],
      ['W b', 'a:r'],
      ['R c', 'a:r'],
      ['X b', 'a:r c:r'],
      ['W d', 'a:r c:r'],
      ['U a', 'c:r'],
      ['U c', 'd:w'],
    ],
  ],
  [
    'aborting the first of two waiting writers: the second gets the lock',
    [
      ['R a', 'a:r'],
      ['W b', 'a:r'],
      ['W c', 'a:r'],
      ['X b', 'a:r'],
      ['U a', 'c:w'],
    ],
  ],
  [
    'an aborted reader is out of the queue: nothing is granted to it later',
    [
      ['W a', 'a:w'],
      ['R b', 'a:w'],
      ['R c', 'a:w'],
      ['X b', 'a:w'],
      ['U a', 'c:r'],
      ['U c', ''],
      ['W d', 'd:w'],
    ],
  ],
  [
    'an aborted writer behind a writer: readers still wait for the holder only',
    [
      ['W a', 'a:w'],
      ['W b', 'a:w'],
      ['R c', 'a:w'],
      ['X b', 'a:w'],
      ['U a', 'c:r'],
      ['R d', 'c:r d:r'],
    ],
  ],
];

describe('RWMutex: scripts', () => {
  it.each(scripts)('%s', async (_what, steps) => {
    const t = new Actors();
    for (const [i, [step, want]] of steps.entries()) {
      await t.step(step);
      expect(t.holders, `after step ${i} "${step}"`).toBe(want);
    }
    // aborted waits rejected with their signal's reason, the others were not rejected
    for (const [a, e] of t.rejected) expect((e as Error).message).toBe(`abort ${a}`);
    expect([...t.rejected.keys()].sort()).toEqual(
      steps
        .filter(([s]) => s.startsWith('X '))
        .map(([s]) => s.slice(2))
        .sort(),
    );
  });
});

describe('RWMutex: single rules', () => {
  it('a wait with an already aborted signal rejects at once, with its reason, and queues nothing', async () => {
    const mu = new RWMutex();
    await mu.lock();
    const reason = new Error('gone');
    await expect(mu.rlock(AbortSignal.abort(reason))).rejects.toBe(reason);
    await expect(mu.lock(AbortSignal.abort(reason))).rejects.toBe(reason);
    expect(mu.state).toEqual({ readers: 0, writer: true, waitingWriters: 0, waitingReaders: 0 });
    mu.unlock();
    expect(mu.state).toEqual({ readers: 0, writer: false, waitingWriters: 0, waitingReaders: 0 });
  });

  it('an uncontended lock takes no signal into account (not aborted: granted)', async () => {
    const mu = new RWMutex();
    const ac = new AbortController();
    await mu.rlock(ac.signal);
    ac.abort(new Error('late'));
    expect(mu.state.readers).toBe(1);
    mu.runlock();
  });

  it('an abort after the grant changes nothing', async () => {
    const mu = new RWMutex();
    await mu.rlock();
    const ac = new AbortController();
    const w = mu.lock(ac.signal);
    mu.runlock();
    await w;
    ac.abort(new Error('late'));
    await flush();
    expect(mu.state).toEqual({ readers: 0, writer: true, waitingWriters: 0, waitingReaders: 0 });
    mu.unlock();
  });

  it('misuse: unlock / runlock of a mutex not held that way, rlockNested without a shared hold', async () => {
    const mu = new RWMutex();
    expect(() => mu.unlock()).toThrow('RWMutex: unlock of unlocked mutex');
    expect(() => mu.runlock()).toThrow('RWMutex: runlock of unlocked mutex');
    expect(() => mu.rlockNested()).toThrow('RWMutex: rlockNested without a shared hold');
    await mu.lock();
    expect(() => mu.runlock()).toThrow('RWMutex: runlock of unlocked mutex'); // held exclusive
    expect(() => mu.rlockNested()).toThrow('RWMutex: rlockNested without a shared hold');
    mu.unlock();
    await mu.rlock();
    expect(() => mu.unlock()).toThrow('RWMutex: unlock of unlocked mutex'); // held shared
    mu.runlock();
    // the misuse changed nothing
    expect(mu.state).toEqual({ readers: 0, writer: false, waitingWriters: 0, waitingReaders: 0 });
  });
});

describe('RWMutex: random interleavings against a model (seeded)', () => {
  // The model: the lock's rules written as plainly as possible.
  //   shared granted at once  ⇔ no writer holds and none waits
  //   exclusive granted at once ⇔ nobody holds and no writer waits
  //   on release/abort, when no writer holds: the first waiting writer once no reader holds;
  //   with no writer waiting, every waiting reader.
  class Model {
    writer: string | null = null;
    readers = new Map<string, number>();
    wq: string[] = [];
    rq: string[] = [];
    ask(a: string, mode: 'r' | 'w'): void {
      if (mode === 'r') {
        if (this.writer === null && this.wq.length === 0) this.readers.set(a, 1);
        else this.rq.push(a);
      } else if (this.writer === null && this.readers.size === 0 && this.wq.length === 0) this.writer = a;
      else this.wq.push(a);
    }
    release(a: string): void {
      if (this.writer === a) this.writer = null;
      else {
        const n = this.readers.get(a)! - 1;
        if (n === 0) this.readers.delete(a);
        else this.readers.set(a, n);
      }
      this.wake();
    }
    abort(a: string): void {
      this.wq = this.wq.filter((x) => x !== a);
      this.rq = this.rq.filter((x) => x !== a);
      this.wake();
    }
    wake(): void {
      if (this.writer !== null) return;
      if (this.wq.length > 0) {
        if (this.readers.size === 0) this.writer = this.wq.shift()!;
        return;
      }
      for (const a of this.rq.splice(0)) this.readers.set(a, 1);
    }
    get holders(): string {
      const out = [...this.readers.keys()].map((a) => `${a}:r`);
      if (this.writer !== null) out.push(`${this.writer}:w`);
      return out.sort().join(' ');
    }
  }

  const runs = fcParams(40).numRuns!;
  it(`${runs} runs of 200 steps, seed ${FUZZ_SEED}`, async () => {
    for (let run = 0; run < runs; run++) {
      const seed = FUZZ_SEED + run;
      const rand = rng(seed);
      const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]!;
      const t = new Actors();
      const m = new Model();
      const names = ['a', 'b', 'c', 'd', 'e', 'f'];
      const log: string[] = [];
      for (let i = 0; i < 200; i++) {
        const idle = names.filter((a) => !t.holds.has(a) && !t.waiting.has(a));
        const held = [...t.holds.keys()];
        const waiting = [...t.waiting.keys()];
        const readers = [...t.holds.entries()].filter(([, h]) => h.mode === 'r').map(([a]) => a);
        const choices: string[] = [];
        for (const a of idle) choices.push(`R ${a}`, `W ${a}`);
        for (const a of held) choices.push(`U ${a}`, `U ${a}`);
        for (const a of waiting) choices.push(`X ${a}`);
        if (readers.length > 0 && rand() < 0.1) choices.push(`N ${pick(readers)}`);
        const step = pick(choices);
        log.push(step);
        const [op, a] = step.split(' ') as [string, string];
        if (op === 'R' || op === 'W') m.ask(a, op === 'R' ? 'r' : 'w');
        else if (op === 'N') m.readers.set(a, m.readers.get(a)! + 1);
        else if (op === 'U') m.release(a);
        else m.abort(a);
        await t.step(step);
        const where = `run ${run} (seed ${seed} = FUZZ_SEED + ${run}), after ${log.join(', ')}`;
        // the invariant itself, then the exact state
        const st = t.mu.state;
        expect(st.writer ? st.readers === 0 : true, where).toBe(true);
        expect(st.waitingWriters > 0 && !st.writer && st.readers === 0, `${where}: a writer waits on a free lock`).toBe(false);
        expect(t.holders, where).toBe(m.holders);
        expect({ w: st.waitingWriters, r: st.waitingReaders }, where).toEqual({ w: m.wq.length, r: m.rq.length });
      }
    }
  });
});

describe('UploadGate: single rules', () => {
  /** A pending enter(): counted once it resolves true. */
  const enter = (g: UploadGate) => {
    const st = { counted: false };
    void g.enter(() => true).then((ok) => (st.counted = ok));
    return st;
  };

  it('an upload waits while a holder is inside, and is counted after unlockExclusive', async () => {
    const g = new UploadGate(new RWMutex());
    await g.lockExclusive();
    const u = enter(g);
    await flush();
    expect(u.counted).toBe(false);
    g.unlockExclusive();
    await flush();
    expect(u.counted).toBe(true);
    expect(g.state).toEqual({ pauses: 0, inflight: 1 });
  });

  it('lockExclusive waits for uploads in flight to leave, without holding the mutex meanwhile (U1)', async () => {
    const mu = new RWMutex();
    const g = new UploadGate(mu);
    const u = enter(g);
    await flush();
    expect(u.counted).toBe(true);
    let locked = false;
    void g.lockExclusive().then(() => (locked = true));
    await flush();
    expect(locked).toBe(false);
    expect(mu.state.writer).toBe(false); // the upload may need a READ, which needs the mutex
    g.leave();
    await flush();
    expect(locked).toBe(true);
  });

  it('two holders draining at once both get the lock in turn (they share one drained event)', async () => {
    const g = new UploadGate(new RWMutex());
    enter(g);
    await flush();
    const got: string[] = [];
    void g.lockExclusive().then(() => got.push('a'));
    void g.lockExclusive().then(() => got.push('b'));
    await flush();
    expect(got).toEqual([]);
    g.leave();
    await flush();
    expect(got).toEqual(['a']);
    g.unlockExclusive();
    await flush();
    expect(got).toEqual(['a', 'b']);
    g.unlockExclusive();
    expect(g.state).toEqual({ pauses: 0, inflight: 0 });
  });

  it('unlockKeepPaused frees the mutex but keeps uploads out until resume(); another holder ending does not resume them (U3)', async () => {
    const mu = new RWMutex();
    const g = new UploadGate(mu);
    await g.lockExclusive(); // a: commit processing, 3a
    g.unlockKeepPaused(); //     a: 3b
    await mu.rlock(); // a READ gets the mutex meanwhile
    mu.runlock();
    const u = enter(g);
    await g.lockExclusive(); // b: another holder (a pack) comes and goes
    g.unlockExclusive();
    await flush();
    expect(u.counted).toBe(false);
    expect(g.state.pauses).toBe(1);
    g.resume(); // a: its blocks are invalidated
    await flush();
    expect(u.counted).toBe(true);
  });

  it('misuse: resume without a pause, leave without enter', () => {
    const g = new UploadGate(new RWMutex());
    expect(() => g.resume()).toThrow(/resume without a pause/);
    expect(() => g.leave()).toThrow(/leave without enter/);
  });
});

describe('UploadGate: random interleavings of uploads and pausing holders (seeded)', () => {
  // Uploaders u0-u2 enter and leave; holders h0-h1 lockExclusive, then either unlockExclusive
  // or unlockKeepPaused … resume. After every step (and the callbacks it set off):
  //   U1 an upload in flight ⇒ no holder holds the lock;
  //   U2 pauses = holders waiting, locked, or kept paused; an upload is never counted in a
  //      step that starts with pauses > 0;
  // and at the end, everybody let go, every waiter gets through (no lost wake-up).
  type H = 'idle' | 'waiting' | 'locked' | 'kept';
  const runs = fcParams(40).numRuns!;
  it(`${runs} runs of 150 steps, seed ${FUZZ_SEED}`, async () => {
    for (let run = 0; run < runs; run++) {
      const seed = FUZZ_SEED + run;
      const rand = rng(seed);
      const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]!;
      const g = new UploadGate(new RWMutex());
      const up = new Map<string, 'idle' | 'entering' | 'in'>(['u0', 'u1', 'u2'].map((u) => [u, 'idle']));
      const hold = new Map<string, H>(['h0', 'h1'].map((h) => [h, 'idle']));
      const log: string[] = [];
      const pausing = () => [...hold.values()].filter((h) => h !== 'idle').length;
      const act = (step: string): void => {
        const [op, a] = step.split(' ') as [string, string];
        if (op === 'enter') {
          up.set(a, 'entering');
          void g.enter(() => true).then(() => up.set(a, 'in'));
        } else if (op === 'leave') {
          up.set(a, 'idle');
          g.leave();
        } else if (op === 'lock') {
          hold.set(a, 'waiting');
          void g.lockExclusive().then(() => hold.set(a, 'locked'));
        } else if (op === 'unlock') {
          hold.set(a, 'idle');
          g.unlockExclusive();
        } else if (op === 'keep') {
          hold.set(a, 'kept');
          g.unlockKeepPaused();
        } else {
          hold.set(a, 'idle');
          g.resume();
        }
      };
      const check = (where: string, pausedBefore: boolean, inBefore: Set<string>) => {
        const inflight = [...up].filter(([, s]) => s === 'in').map(([u]) => u);
        expect(inflight.length === 0 || ![...hold.values()].includes('locked'), `${where}: U1`).toBe(true);
        expect(g.state, where).toEqual({ pauses: pausing(), inflight: inflight.length });
        if (pausedBefore)
          expect(
            inflight.filter((u) => !inBefore.has(u)),
            `${where}: counted while paused`,
          ).toEqual([]);
      };
      for (let i = 0; i < 150; i++) {
        const choices: string[] = [];
        for (const [u, s] of up) {
          if (s === 'idle') choices.push(`enter ${u}`);
          if (s === 'in') choices.push(`leave ${u}`);
        }
        for (const [h, s] of hold) {
          if (s === 'idle') choices.push(`lock ${h}`);
          if (s === 'locked') choices.push(`unlock ${h}`, `keep ${h}`);
          if (s === 'kept') choices.push(`resume ${h}`);
        }
        const step = pick(choices);
        log.push(step);
        const pausedBefore = pausing() > 0 && !step.startsWith('unlock') && !step.startsWith('resume');
        const inBefore = new Set([...up].filter(([, s]) => s === 'in').map(([u]) => u));
        act(step);
        await flush();
        check(`run ${run} (seed ${seed} = FUZZ_SEED + ${run}), after ${log.join(', ')}`, pausedBefore, inBefore);
      }
      // everybody lets go; whoever waits must get through
      for (let round = 0; round < 20; round++) {
        for (const [u, s] of up) if (s === 'in') act(`leave ${u}`);
        for (const [h, s] of hold) if (s === 'locked') act(`unlock ${h}`);
        for (const [h, s] of hold) if (s === 'kept') act(`resume ${h}`);
        await flush();
      }
      const where = `run ${run} (seed ${seed}), after ${log.join(', ')} and letting go`;
      expect(
        [...up.values(), ...hold.values()].every((s) => s === 'idle'),
        where,
      ).toBe(true);
      expect(g.state, where).toEqual({ pauses: 0, inflight: 0 });
    }
  });
});

describe('Event', () => {
  it('wait() resolves once set(); set() twice is fine; a wait after set() resolves at once', async () => {
    const ev = new Event();
    let n = 0;
    const w1 = ev.wait().then(() => n++);
    const w2 = ev.wait().then(() => n++);
    await flush();
    expect(n).toBe(0);
    expect(ev.isSet).toBe(false);
    ev.set();
    ev.set();
    await Promise.all([w1, w2]);
    expect(n).toBe(2);
    expect(ev.isSet).toBe(true);
    await ev.wait();
    await ev.wait(AbortSignal.abort(new Error('ignored: already set')));
  });

  it('an aborted wait rejects with the reason; the other waiters still get set()', async () => {
    const ev = new Event();
    const ac = new AbortController();
    const reason = new Error('gone');
    const aborted = ev.wait(ac.signal);
    let other = false;
    const w = ev.wait().then(() => (other = true));
    ac.abort(reason);
    await expect(aborted).rejects.toBe(reason);
    expect(other).toBe(false);
    ev.set();
    await w;
    expect(other).toBe(true);
    await expect(new Event().wait(AbortSignal.abort(reason))).rejects.toBe(reason);
  });
});
