// Following a Data.fs that another process writes (zodb.md §2.8): the wake-up sources. The
// tail check itself (what a wake-up does) is FileStorage.checkTail, because it updates the
// storage's index and head; the per-watch queues are WatchQueues (../watchq.ts).
//
//   Follower — fs.watch(path) (inotify; events may be lost or coalesced) + a poll timer
//                  (pollMs, default 1 s) as the safety net. Wake-ups are coalesced through one
//                  setImmediate so a burst of inotify events costs one check. Runs only while
//                  at least one watch is open; stop() releases every handle (timer, inotify,
//                  pending immediate) so a closed storage never keeps the process alive.
//
// Invariant: live events pushed to a watch have tid > head at its creation ≥ every replayed
// tid, so a WatchQueue's "replay, then queue" is in tid order.

import fs from 'node:fs';

// ---- wake-ups ----

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
