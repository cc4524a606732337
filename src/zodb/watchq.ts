// WatchQueue: one StorageWatch as every driver hands it out — an optional replay of history
// (a lazy, synchronous iterator the driver supplies, or batches it fetches asynchronously:
// FetchedReplay), then live events the driver pushes.
//
// Bounded by construction: every driver says how it reads its history back (`spill`:
// FileStorage from its file; ZEO from its bounded ring of recent events, and from the server's
// iterator_* for what the ring no longer holds). A consumer that lags a fast writer by more
// than maxEvents events or maxOids oids stops queuing; pushes are dropped (they are in the
// storage's history); once the queue drains, the driver replays (last queued, its head then]
// — or fails the watch when its history no longer reaches that far back — and live events
// queue after that replay.
//
// Invariants:
//   delivers tid > from, exactly once, in the order pushed (the driver pushes in tid order,
//   live events above every replayed tid); a fatal error (fail) is thrown to the iteration
//   after the events queued before it; end/close drop what is queued; at most one pending
//   next() per watch.
//   Q1 |queue| ≤ maxEvents and its oids ≤ maxOids (or one event); while spilled,
//      every event pushed has a tid the driver's catch-up replay will read (it is published
//      before it is pushed, and the replay ends at the head as of when it starts).
//   Q2 at most one replay at a time (replay ≠ null ⇒ fetched = null), and nothing queued is
//      delivered before the replay has ended cleanly: a fetched replay that fails (or is cut
//      short by fail()) drops the queue — those live events would skip the missing ones.
//      A fetched replay holds ≤ maxEvents events read ahead (plus one batch).

import type { CommitEvent, StorageWatch } from './storage.js';
import type { Tid } from './ids.js';

/**
 * Called once when a watch overflows, with the last tid queued; returns the catch-up replay to
 * start when the queue has drained: committed events with tid > after up to the driver's head
 * at that moment (it may throw: the watch then fails with that error).
 */
export type Spill = (after: Tid) => () => Replay;

/**
 * A replay the driver fetches asynchronously (ZEO: from the server's iterator_*): batches of
 * events in tid order, ending at the driver's head as of when it was made. The watch pulls
 * the batches itself (at most one pull in flight) and ends them with return() when closed.
 */
export class FetchedReplay {
  constructor(readonly batches: AsyncIterator<CommitEvent[]>) {}
}

/** History to deliver before live events: read synchronously, or fetched in batches. */
export type Replay = Iterator<CommitEvent> | FetchedReplay;

/** A FetchedReplay being consumed: what was read ahead, and how the fetch stands. */
interface Fetch {
  readonly batches: AsyncIterator<CommitEvent[]>;
  readonly buf: CommitEvent[];
  pulling: boolean;
  ended: boolean;
  error: unknown;
}

export interface WatchQueueLimits {
  maxEvents: number;
  maxOids: number;
}

/** Q1's defaults: ~0.5-1 MiB of queued events for one-object commits. */
export const WATCH_QUEUE_LIMITS: WatchQueueLimits = { maxEvents: 4096, maxOids: 1 << 16 };

export class WatchQueue implements StorageWatch, AsyncIterator<CommitEvent> {
  private readonly queue: CommitEvent[] = [];
  /** Oids of the queued events (Q1). */
  private queuedOids = 0;
  /** Overflowed (Q1): the catch-up replay to start when the queue drains. */
  private spilled: (() => Replay) | null = null;
  private waiter: { resolve: (r: IteratorResult<CommitEvent>) => void; reject: (e: unknown) => void } | null = null;
  private err: unknown = null;
  /** The replay's next event, read ahead by ready(). */
  private peeked: CommitEvent | null = null;
  /** A fetched replay under way (Q2: never together with `replay`). */
  private fetched: Fetch | null = null;
  private replay: Iterator<CommitEvent> | null = null;
  private done = false;

  /**
   * @param from    deliver only tid > from
   * @param replay  history to deliver first (a lazy, synchronous reader of the file), or null
   * @param onClose called once when the watch ends (close(), error or end())
   * @param spill   how the driver reads back what a lagging consumer missed (Q1)
   */
  constructor(
    readonly from: Tid,
    replay: Replay | null,
    private readonly onClose: (w: WatchQueue) => void,
    private readonly spill: Spill,
    private readonly limits: WatchQueueLimits = WATCH_QUEUE_LIMITS,
  ) {
    if (replay !== null) this.startReplay(replay);
  }

  /** Whether events are being left in the storage for a catch-up replay (Q1; tests, stats). */
  get spilling(): boolean {
    return this.spilled !== null;
  }

  // -- producer side (the storage) --

  push(ev: CommitEvent): void {
    if (this.done || this.err !== null || ev.tid <= this.from) return;
    if (this.spilled !== null) return; // Q1: the catch-up replay reads it
    if (this.waiter !== null && this.replay === null && this.fetched === null && this.queue.length === 0) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: ev, done: false });
      return;
    }
    const q = this.queue;
    if (q.length > 0 && (q.length >= this.limits.maxEvents || this.queuedOids + ev.oids.length > this.limits.maxOids)) {
      this.spilled = this.spill(q[q.length - 1]!.tid);
      return;
    }
    q.push(ev);
    this.queuedOids += ev.oids.length;
  }

  /** End the iteration with `err` once the queued events are consumed. */
  fail(err: unknown): void {
    if (this.done || this.err !== null) return;
    this.err = err;
    this.onClose(this);
    const f = this.fetched;
    if (f !== null && !f.ended) {
      // Q2: the fetched replay is cut short; what it read ahead still goes out, the queue not
      this.stopFetch(f);
      this.dropQueue();
    }
    if (f !== null && f.buf.length === 0) this.fetched = null;
    if (this.waiter !== null && this.queue.length === 0 && this.replay === null && this.fetched === null) {
      const w = this.waiter;
      this.waiter = null;
      this.done = true;
      w.reject(err);
    }
  }

  /** End the iteration normally (storage closed). Queued events are dropped. */
  end(): void {
    this.close();
  }

  // -- consumer side --

  ready(): number {
    if (this.done) return 0;
    if (!this.catchUp()) return 1; // next() throws at once
    const f = this.fetched;
    if (f !== null) {
      if (f.buf.length > 0) return f.buf.length;
      if (!f.ended) return 0;
      if (f.error !== null) return 1; // next() throws at once
      this.fetched = null; // ended cleanly: the queue's turn
    }
    // a replay that may have run out: look one event ahead so "ready" never promises one
    // that next() would then wait for (a replay error counts: next() throws it at once)
    if (this.replay !== null && this.peeked === null && !this.readAhead()) return 1;
    return this.queue.length + (this.peeked !== null ? 1 : 0);
  }

  /** Q1: the queue drained while spilled: start the catch-up replay. false: it failed to start. */
  private catchUp(): boolean {
    if (this.spilled === null || this.err !== null || this.queue.length > 0 || this.replay !== null || this.peeked !== null || this.fetched !== null) {
      return true;
    }
    const start = this.spilled;
    this.spilled = null;
    try {
      this.startReplay(start());
    } catch (e) {
      this.fail(e);
      return false;
    }
    return true;
  }

  private startReplay(r: Replay): void {
    if (r instanceof FetchedReplay) {
      this.fetched = { batches: r.batches, buf: [], pulling: false, ended: false, error: null };
      this.pull();
    } else this.replay = r;
  }

  /** Fetch the next batch unless one is on its way or enough are read ahead (Q2). */
  private pull(): void {
    const f = this.fetched;
    if (f === null || f.pulling || f.ended || f.buf.length >= this.limits.maxEvents) return;
    f.pulling = true;
    f.batches.next().then(
      (r) => {
        if (this.fetched !== f || f.ended) return; // closed, or cut short by fail()
        f.pulling = false;
        if (r.done) f.ended = true;
        else for (const ev of r.value) f.buf.push(ev);
        this.pull();
        this.wakeFetched();
      },
      (e: unknown) => {
        if (this.fetched !== f || f.ended) return;
        f.pulling = false;
        f.ended = true;
        f.error = e;
        this.wakeFetched();
      },
    );
  }

  /** A next() waiting for the fetched replay: run it again now that something arrived. */
  private wakeFetched(): void {
    const w = this.waiter;
    if (w === null) return;
    this.waiter = null;
    this.next().then(w.resolve, w.reject);
  }

  private stopFetch(f: Fetch): void {
    f.ended = true;
    void f.batches.return?.().catch(() => {});
  }

  private dropQueue(): void {
    this.queue.length = 0;
    this.queuedOids = 0;
  }

  /** Move the replay's next event into `peeked` (or end the replay); false: the replay failed. */
  private readAhead(): boolean {
    let r: IteratorResult<CommitEvent>;
    try {
      r = this.replay!.next();
    } catch (e) {
      this.replay = null;
      this.fail(e);
      return false;
    }
    if (r.done) this.replay = null;
    else this.peeked = r.value;
    return true;
  }

  close(): void {
    if (this.done) return;
    this.done = true;
    this.dropQueue();
    this.spilled = null;
    this.replay = null;
    this.peeked = null;
    if (this.fetched !== null) this.stopFetch(this.fetched);
    this.fetched = null;
    if (this.err === null) this.onClose(this);
    if (this.waiter !== null) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<CommitEvent>> {
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    if (!this.catchUp()) {
      this.done = true;
      return Promise.reject(this.err);
    }
    const f = this.fetched;
    if (f !== null) {
      const ev = f.buf.shift();
      if (ev !== undefined) {
        this.pull();
        return Promise.resolve({ value: ev, done: false });
      }
      if (!f.ended) {
        if (this.waiter !== null) return Promise.reject(new Error('StorageWatch: concurrent next() calls'));
        return new Promise((resolve, reject) => {
          this.waiter = { resolve, reject };
        });
      }
      this.fetched = null;
      if (f.error !== null) {
        // Q2: the replay failed: nothing queued behind it may follow
        this.dropQueue();
        this.fail(f.error);
      }
    }
    if (this.replay !== null && this.peeked === null && !this.readAhead()) {
      this.done = true;
      return Promise.reject(this.err);
    }
    if (this.peeked !== null) {
      const ev = this.peeked;
      this.peeked = null;
      return Promise.resolve({ value: ev, done: false });
    }
    const ev = this.queue.shift();
    if (ev !== undefined) {
      this.queuedOids -= ev.oids.length;
      return Promise.resolve({ value: ev, done: false });
    }
    if (this.err !== null) {
      this.done = true;
      return Promise.reject(this.err);
    }
    if (this.waiter !== null) return Promise.reject(new Error('StorageWatch: concurrent next() calls'));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<CommitEvent>> {
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<CommitEvent> {
    return this;
  }
}
