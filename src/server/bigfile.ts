// BigFile — one ZBigFile as served under one view: head/bigfile/<oid> or @<rev>/bigfile/<oid>.
//
// Owns the per-file serving state: the ZBigFileView to load from, the size and mtime the
// kernel sees, and the `loading` table that makes concurrent READs of one block load it
// once and keeps the data until it has been uploaded into the page cache.
//
// Invariants:
//   loading[blk] exists ⇒ a load of blk is in flight, or blk's data is loaded and its upload
//     into the page cache (notifyStore) is not finished; readers of blk use it.
//   blk registered in the READ fast path (server.ts §2) ⇒ loading[blk] exists with data set;
//     the server removes entries only through dropLoading (unregister first).
//   head files: view.at == server head; size, revApprox are those of the head revision. They
//     change only inside commit processing (server.ts, step 3a), all at once.
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
  /**
   * Pages of the block already sent to the kernel in READ replies (1 = sent): those are in
   * the page cache already, the upload stores only the rest. Allocated with the entry: the
   * native READ fast path marks pages in it from libfuse workers.
   */
  served: Uint8Array;
}

export const PAGE_SIZE = 4096;

/** Mark [off, end) of block blk (file offsets) as sent to the kernel. */
export function markServed(e: LoadingEntry | undefined, blk: number, blksize: number, off: number, end: number): void {
  if (e === undefined) return;
  const base = blk * blksize;
  // only whole pages count: a partial page may not be in the cache as a whole
  const p0 = Math.ceil((Math.max(off, base) - base) / PAGE_SIZE);
  const p1 = Math.floor((Math.min(end, base + blksize) - base) / PAGE_SIZE);
  for (let p = p0; p < p1; p++) e.served[p] = 1;
}

/** Runs [start, end) (byte offsets within the block) not yet sent to the kernel. */
export function unservedRuns(e: LoadingEntry, blksize: number): Array<[number, number]> {
  const npages = Math.ceil(blksize / PAGE_SIZE);
  const out: Array<[number, number]> = [];
  let start = -1;
  for (let p = 0; p <= npages; p++) {
    const sent = p < npages && e.served[p] === 1;
    if (p < npages && !sent) {
      if (start < 0) start = p;
    } else if (start >= 0) {
      out.push([start * PAGE_SIZE, Math.min(p * PAGE_SIZE, blksize)]);
      start = -1;
    }
  }
  return out;
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
   * reader gets the data (head: ΔFtail tracking, pins); `published` right after entry.data
   * is set, in the same step (registration in the READ fast path); `settled` when it ended
   * either way; `after` once the readers are released, with the entry (the upload into the
   * page cache); `failed` when the load failed, with the entry still in `loading` — it must
   * remove it (default: delete).
   */
  readBlk(blk: number, hooks: LoadHooks, signal?: AbortSignal): Promise<Uint8Array> {
    let e = this.loading.get(blk);
    if (e === undefined) {
      hooks.started?.();
      const entry: LoadingEntry = {
        ready: this.view.loadBlock(blk).then(async (b) => {
          await hooks.loaded?.(b);
          entry.data = b.data;
          hooks.published?.(blk, entry);
          return b.data;
        }),
        served: new Uint8Array(Math.ceil(this.blksize / PAGE_SIZE)),
      };
      entry.ready.then(
        () => {
          hooks.settled?.();
          hooks.after?.(blk, entry);
        },
        () => {
          hooks.settled?.();
          if (this.loading.get(blk) !== entry) return;
          if (hooks.failed) hooks.failed(blk, entry);
          else this.loading.delete(blk);
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
  published?: (blk: number, e: LoadingEntry) => void;
  after?: (blk: number, e: LoadingEntry) => void;
  failed?: (blk: number, e: LoadingEntry) => void;
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
