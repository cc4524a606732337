// BigFile — one ZBigFile as served under one view: head/bigfile/<oid> or @<rev>/bigfile/<oid>.
//
// Owns the per-file serving state: the ZBigFileView to load from, the size and mtime the
// kernel sees, and the `loading` table that makes concurrent READs of one block load it
// once and keeps the data until it has been uploaded into the page cache.
//
// Invariants:
//   loading[blk] exists ⇒ a load of blk is in flight, or blk's data is loaded and its upload
//     into the page cache (notifyStore) is not finished; readers of blk use it.
//   head files: view.at == server head; size, revApprox are those of the head revision. They
//     change only inside commit processing (server.ts, step 4), all at once.
//   @rev files: never change.
//
// Guarded by: head files — the server's headMu (R: reads, W: commit processing).

import type { Oid, Tid } from '../zodb/ids.js';
import type { BlockLoad, ZBigFileView } from '../zodb/zbigfile.js';

export interface LoadingEntry {
  /** Resolves to the block data (blksize bytes), or rejects with the load error. */
  ready: Promise<Uint8Array>;
  /** Set once loaded: commit processing takes old data from here instead of the kernel. */
  data?: Uint8Array;
}

export class BigFile {
  /** Kernel lookups minus forgets: > 0 ⇒ the kernel knows this inode (notify works). */
  nlookup = 0;
  /** Open file handles. */
  nopen = 0;
  readonly loading = new Map<number, LoadingEntry>();

  constructor(
    readonly ino: number,
    readonly foid: Oid,
    /** null = head view. */
    readonly rev: Tid | null,
    public view: ZBigFileView,
    public size: number,
    /** mtime: the ZBigFile serial, then the tid of every commit that changed the file (approx.). */
    public revApprox: Tid,
  ) {}

  get blksize(): number {
    return this.view.blksize;
  }

  get isHead(): boolean {
    return this.rev === null;
  }

  /**
   * Data of block blk, loaded once for all concurrent readers. Hooks of a fresh load:
   * `started` runs synchronously when it begins; `loaded` after it succeeded, before any
   * reader gets the data (head: ΔFtail tracking); `settled` when it ended either way; `after`
   * once the readers are released, with the entry (the upload into the page cache).
   */
  readBlk(blk: number, hooks: LoadHooks, signal?: AbortSignal): Promise<Uint8Array> {
    let e = this.loading.get(blk);
    if (e === undefined) {
      hooks.started?.();
      const entry: LoadingEntry = {
        ready: this.view.loadBlock(blk).then(async (b) => {
          await hooks.loaded?.(b);
          entry.data = b.data;
          return b.data;
        }),
      };
      entry.ready.then(
        () => {
          hooks.settled?.();
          hooks.after?.(blk, entry);
        },
        () => {
          hooks.settled?.();
          if (this.loading.get(blk) === entry) this.loading.delete(blk);
        },
      );
      this.loading.set(blk, entry);
      e = entry;
    }
    return signal === undefined ? e.ready : abortable(e.ready, signal);
  }
}

export interface LoadHooks {
  started?: () => void;
  loaded?: (b: BlockLoad) => void | Promise<void>;
  settled?: () => void;
  after?: (blk: number, e: LoadingEntry) => void;
}

/** p, or the signal's reason when aborted first (p keeps running for other waiters). */
export function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
