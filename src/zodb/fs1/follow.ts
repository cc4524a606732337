// Following a Data.fs that another process writes (zodb.md §2.8): the wake-up sources and the
// per-watch event queues. The tail check itself (what a wake-up does) is FileStorage.checkTail,
// because it updates the storage's index and head.
//
//   1) Follower  — fs.watch(path) (inotify; events may be lost or coalesced) + a poll timer
//                  (pollMs, default 1 s) as the safety net. Wake-ups are coalesced through one
//                  setImmediate so a burst of inotify events costs one check. Runs only while
//                  at least one watch is open; stop() releases every handle (timer, inotify,
//                  pending immediate) so a closed storage never keeps the process alive.
//   2) FsWatch   — one StorageWatch: an optional replay of history (txns with from < tid ≤
//                  head at creation, read lazily from the file), then live events pushed by the
//                  storage. Delivers tid > from, exactly once, in order; a fatal error is thrown
//                  to the iteration after the events queued before it.
//
// Invariants:
//   live events pushed to a watch have tid > head at its creation ≥ every replayed tid, so
//   "replay, then queue" is in tid order;  at most one pending next() per watch.

import fs from 'node:fs';
import type { CommitEvent, StorageWatch } from '../storage.js';
import type { Tid } from '../ids.js';

// ---- 1) wake-ups ----

export class Follower {
  private fsw: fs.FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private stopped = false;

  constructor(
    private readonly path: string,
    private readonly pollMs: number,
    private readonly check: () => void,
  ) {}

  start(): void {
    try {
      this.fsw = fs.watch(this.path, { persistent: true }, () => this.kick());
      // inotify can fail (watch limit, file gone): the poll timer alone still works.
      this.fsw.on('error', () => this.closeFsWatch());
    } catch {
      this.fsw = null;
    }
    this.timer = setInterval(() => this.kick(), this.pollMs);
  }

  /** Ask for a check soon; many kicks before it runs make one check. */
  kick(): void {
    if (this.stopped || this.immediate !== null) return;
    this.immediate = setImmediate(() => {
      this.immediate = null;
      if (!this.stopped) this.check();
    });
  }

  stop(): void {
    this.stopped = true;
    this.closeFsWatch();
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (this.immediate !== null) clearImmediate(this.immediate);
    this.immediate = null;
  }

  private closeFsWatch(): void {
    if (this.fsw !== null) {
      this.fsw.close();
      this.fsw = null;
    }
  }
}

// ---- 2) watch queues ----

export class FsWatch implements StorageWatch, AsyncIterator<CommitEvent> {
  private readonly queue: CommitEvent[] = [];
  private waiter: { resolve: (r: IteratorResult<CommitEvent>) => void; reject: (e: unknown) => void } | null = null;
  private err: unknown = null;
  private done = false;

  /**
   * @param from    deliver only tid > from
   * @param replay  history to deliver first (a lazy, synchronous reader of the file), or null
   * @param onClose called once when the watch ends (close(), error or end())
   */
  constructor(
    readonly from: Tid,
    private replay: Iterator<CommitEvent> | null,
    private readonly onClose: (w: FsWatch) => void,
  ) {}

  // -- producer side (the storage) --

  push(ev: CommitEvent): void {
    if (this.done || this.err !== null || ev.tid <= this.from) return;
    if (this.waiter !== null && this.replay === null && this.queue.length === 0) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: ev, done: false });
    } else {
      this.queue.push(ev);
    }
  }

  /** End the iteration with `err` once the queued events are consumed. */
  fail(err: unknown): void {
    if (this.done || this.err !== null) return;
    this.err = err;
    this.onClose(this);
    if (this.waiter !== null && this.queue.length === 0 && this.replay === null) {
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
    return this.done ? 0 : this.queue.length + (this.replay !== null ? 1 : 0);
  }

  close(): void {
    if (this.done) return;
    this.done = true;
    this.queue.length = 0;
    this.replay = null;
    if (this.err === null) this.onClose(this);
    if (this.waiter !== null) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<CommitEvent>> {
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    if (this.replay !== null) {
      let r: IteratorResult<CommitEvent>;
      try {
        r = this.replay.next();
      } catch (e) {
        this.replay = null;
        this.fail(e);
        this.done = true;
        return Promise.reject(e);
      }
      if (!r.done) return Promise.resolve({ value: r.value, done: false });
      this.replay = null;
    }
    const ev = this.queue.shift();
    if (ev !== undefined) return Promise.resolve({ value: ev, done: false });
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
