// WatchQueue: one StorageWatch as every driver hands it out — an optional replay of history
// (a lazy, synchronous iterator the driver supplies), then live events the driver pushes.
//
// Invariants:
//   delivers tid > from, exactly once, in the order pushed (the driver pushes in tid order,
//   live events above every replayed tid); a fatal error (fail) is thrown to the iteration
//   after the events queued before it; end/close drop what is queued; at most one pending
//   next() per watch.

import type { CommitEvent, StorageWatch } from './storage.js';
import type { Tid } from './ids.js';

export class WatchQueue implements StorageWatch, AsyncIterator<CommitEvent> {
  private readonly queue: CommitEvent[] = [];
  private waiter: { resolve: (r: IteratorResult<CommitEvent>) => void; reject: (e: unknown) => void } | null = null;
  private err: unknown = null;
  /** The replay's next event, read ahead by ready(). */
  private peeked: CommitEvent | null = null;
  private done = false;

  /**
   * @param from    deliver only tid > from
   * @param replay  history to deliver first (a lazy, synchronous reader of the file), or null
   * @param onClose called once when the watch ends (close(), error or end())
   */
  constructor(
    readonly from: Tid,
    private replay: Iterator<CommitEvent> | null,
    private readonly onClose: (w: WatchQueue) => void,
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
    if (this.done) return 0;
    // a replay that may have run out: look one event ahead so "ready" never promises one
    // that next() would then wait for (a replay error counts: next() throws it at once)
    if (this.replay !== null && this.peeked === null && !this.readAhead()) return 1;
    return this.queue.length + (this.peeked !== null ? 1 : 0);
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
    this.queue.length = 0;
    this.replay = null;
    this.peeked = null;
    if (this.err === null) this.onClose(this);
    if (this.waiter !== null) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<CommitEvent>> {
    if (this.done) return Promise.resolve({ value: undefined, done: true });
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
