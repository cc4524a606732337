// Async locks for the server's critical sections (JS is single-threaded, but an async
// section that awaits is interleaved with others: these are its locks).
//
// RWMutex: writer-preferring — once a writer waits, new readers queue behind it, so commit
// processing is not starved by a stream of READs. The upload/commit deadlock this invites
// (wcfs-server.md §3.5.3) is broken by UploadGate below.
//
// UploadGate: the upload pause (wcfs-server.md §3.5.3) around one RWMutex (the server's
// headMu). An upload (NOTIFY_STORE into head's page cache) may wait for a page that a READ
// holds locked while that READ waits for the mutex; so the exclusive holder must never wait
// for an upload, and an upload must not start under it. And a pause may outlast the lock:
// NOTIFY_STORE writes into pages the kernel already caches, in place, while readers copy
// from them unlocked — so commit processing keeps uploads paused after it releases the
// mutex, until it has invalidated the blocks it changed (commit.ts 3b): a store of new data
// over a changed block's old pages would tear the pages a reader is copying.
//   U1 inflight > 0 ⇒ no exclusive holder entered through lockExclusive.
//   U2 pauses = exclusive holders inside or waiting (lockExclusive … unlockExclusive or
//      unlockKeepPaused) + holders that released the mutex and have not resumed
//      (unlockKeepPaused … resume); pauses > 0 ⇒ enter() waits, never counts.
//   U3 every pause ends with exactly one unlockExclusive() or resume(), each its own: one
//      holder's end does not resume uploads another still holds paused.

export class RWMutex {
  private readers = 0;
  private writer = false;
  private readonly wq: Array<() => void> = [];
  private rq: Array<() => void> = [];

  /** Shared lock; rejects with signal's reason if aborted while waiting. */
  async rlock(signal?: AbortSignal): Promise<void> {
    if (!this.writer && this.wq.length === 0) {
      this.readers++;
      return;
    }
    await this.enqueue(this.rq, signal);
  }

  /**
   * Another shared hold by a caller that already holds the lock shared: never waits (a nested
   * rlock() would queue behind a waiting writer that waits for the caller — deadlock). Used
   * so that work started under a reader (a block load) keeps the lock after that reader
   * went away (interrupted).
   */
  rlockNested(): void {
    if (this.readers <= 0) throw new Error('RWMutex: rlockNested without a shared hold');
    this.readers++;
  }

  runlock(): void {
    if (this.readers <= 0) throw new Error('RWMutex: runlock of unlocked mutex');
    this.readers--;
    this.wake();
  }

  async lock(signal?: AbortSignal): Promise<void> {
    if (!this.writer && this.readers === 0 && this.wq.length === 0) {
      this.writer = true;
      return;
    }
    await this.enqueue(this.wq, signal);
  }

  unlock(): void {
    if (!this.writer) throw new Error('RWMutex: unlock of unlocked mutex');
    this.writer = false;
    this.wake();
  }

  /** For assertions and stats. */
  get state(): { readers: number; writer: boolean; waitingWriters: number; waitingReaders: number } {
    return { readers: this.readers, writer: this.writer, waitingWriters: this.wq.length, waitingReaders: this.rq.length };
  }

  // Grant waiting writers first (one), else all waiting readers.
  private wake(): void {
    if (this.writer) return;
    if (this.wq.length > 0) {
      if (this.readers === 0) {
        this.writer = true;
        this.wq.shift()!();
      }
      return;
    }
    const rq = this.rq;
    this.rq = [];
    this.readers += rq.length;
    for (const g of rq) g();
  }

  private enqueue(q: Array<() => void>, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const grant = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        const i = q.indexOf(grant);
        if (i >= 0) q.splice(i, 1);
        reject(signal!.reason);
        this.wake(); // a cancelled writer may have been holding readers back
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      q.push(grant);
    });
  }
}

/** A one-shot event: wait() resolves once set() was called. */
export class Event {
  private done = false;
  private readonly waiters: Array<() => void> = [];
  set(): void {
    if (this.done) return;
    this.done = true;
    for (const w of this.waiters.splice(0)) w();
  }
  get isSet(): boolean {
    return this.done;
  }
  wait(signal?: AbortSignal): Promise<void> {
    if (this.done) return Promise.resolve();
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const w = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(signal!.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(w);
    });
  }
}

/** The upload pause around `mu` (U1-U3 above). */
export class UploadGate {
  /** U2. */
  private pauses = 0;
  private inflight = 0;
  private resumed = new Event();
  /** Set when inflight drops to 0; shared by every exclusive holder draining meanwhile. */
  private drained: Event | undefined;

  constructor(private readonly mu: RWMutex) {}

  /** mu exclusively, with uploads paused and none in flight (U1); one pause (U2) until unlockExclusive or resume. */
  async lockExclusive(): Promise<void> {
    this.pauses++;
    for (;;) {
      await this.mu.lock();
      if (this.inflight === 0) return;
      // let the uploads in flight finish without the lock: they may need a READ to get it
      const drained = (this.drained ??= new Event());
      this.mu.unlock();
      await drained.wait();
    }
  }

  /** Release mu and end this holder's pause. */
  unlockExclusive(): void {
    this.mu.unlock();
    this.resume();
  }

  /** Release mu but keep this holder's pause (U2): uploads wait until its resume(). */
  unlockKeepPaused(): void {
    this.mu.unlock();
  }

  /** End the pause of a holder that released mu with unlockKeepPaused (U3). */
  resume(): void {
    if (this.pauses <= 0) throw new Error('UploadGate: resume without a pause');
    if (--this.pauses > 0) return;
    const resumed = this.resumed;
    this.resumed = new Event();
    resumed.set();
  }

  /**
   * Start an upload: wait until uploads are not paused, then — if `wanted()` still holds,
   * checked under mu shared — count it in flight and return true. The caller runs the upload
   * without the lock and calls leave() after it.
   */
  async enter(wanted: () => boolean): Promise<boolean> {
    for (;;) {
      await this.mu.rlock();
      if (this.pauses === 0) break;
      this.mu.runlock();
      await this.resumed.wait();
    }
    try {
      if (!wanted()) return false;
      this.inflight++;
      return true;
    } finally {
      this.mu.runlock();
    }
  }

  leave(): void {
    if (this.inflight <= 0) throw new Error('UploadGate: leave without enter');
    this.inflight--;
    if (this.inflight > 0) return;
    const drained = this.drained;
    this.drained = undefined;
    drained?.set();
  }

  /** For assertions and stats. */
  get state(): { pauses: number; inflight: number } {
    return { pauses: this.pauses, inflight: this.inflight };
  }
}
