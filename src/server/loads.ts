// BlockLoads — the blocks of one BigFile that are being loaded, or loaded and not yet
// uploaded into the page cache, and their registration in the READ fast path (native/fuse.cc
// step 6). The sole owner of both, so that what the fast path serves is always a live entry.
//
// Invariants:
//   L1 entry(blk) exists ⇒ a load of blk is in flight, or blk's data is loaded and its upload
//      into the page cache is not finished; every reader of blk meanwhile shares the entry.
//   L2 blk is registered in the fast path ⇒ entry(blk) exists with data set; the registered
//      range is that data clamped to the file size at registration, which is what a READ
//      answered in JS replies (reads.ts). Registration happens right after the data is set,
//      after the `loaded` hook (head: ΔFtail tracking and pins).
//   L3 an entry leaves only through drop() or take(), which unregister it first (and the
//      native drop waits for fast replies in flight from it): "drop before remove" by
//      construction.
//   L4 a block that needs memory of its own (a partly filled ZBlk0, a ZBlk1) is loaded into a
//      buffer of the server's BlockPool; the buffer goes back to the pool when its entry
//      leaves — after one macrotask (drop), or when the taker releases it (take). Readers use
//      a block's data (reply, or copy into a multi-block reply) in the microtask checkpoint in
//      which its load resolved (reads.ts 2a), so no reader ever sees a reused buffer.
//
// Guarded by: head files — the server's headMu (loads start under it shared; commit
// processing, holding it exclusively, drops entries) or, for an upload's own drop, the
// UploadGate (in flight ⇒ no exclusive holder: lock.ts U1). @rev files never change.

import type { BlockCache } from '../fuse/session.js';
import type { BlockLoad, ZBigFileView } from '../zodb/zbigfile.js';

export const PAGE_SIZE = 4096;

export interface LoadingEntry {
  /** Resolves to the block data (blksize bytes), or rejects with the load error. */
  readonly ready: Promise<Uint8Array>;
  /** Set once loaded: commit processing takes old data from here instead of the kernel. */
  data?: Uint8Array;
  /** data is a BlockPool buffer (L4). */
  pooled?: boolean;
  /**
   * Pages of the block already sent to the kernel in READ replies (1 = sent): those are in
   * the page cache already, the upload stores only the rest. Allocated with the entry: the
   * native READ fast path marks pages in it from libfuse workers.
   */
  readonly served: Uint8Array;
}

/** What a fresh load runs, in order. */
export interface LoadHooks {
  /** Synchronously when the load begins. */
  started?: () => void;
  /** After it succeeded, before any reader (or the fast path) gets the data. */
  loaded?: (b: BlockLoad) => void | Promise<void>;
  /** When it ended, either way. */
  settled?: () => void;
  /** Once the readers are released (the upload into the page cache); it ends with drop(). */
  after?: (blk: number, e: LoadingEntry) => void;
}

/** The file a BlockLoads belongs to: where blocks come from and how far the file goes. */
export interface LoadsFile {
  readonly ino: number;
  readonly size: number;
  readonly blksize: number;
  readonly view: ZBigFileView;
}

/**
 * Block buffers for loads that need memory of their own, reused instead of allocated: a fresh
 * 2 MiB buffer costs a zero-fill and, through V8's external-memory accounting, frequent major
 * GCs (bench-pin: half of the server's CPU per pin went to them). One per server, shared by
 * every file; a buffer comes back only as L4 says.
 *   P1 idle buffers of one size ≤ maxIdleBytes; the rest are left to the GC.
 */
export class BlockPool {
  private readonly idle = new Map<number, Uint8Array[]>();
  /** Buffers handed out, and how many of those were reused (tests look at them). */
  readonly stats = { got: 0, reused: 0 };

  constructor(private readonly maxIdleBytes = 16 << 20) {}

  /** A buffer of `size` bytes, with any content. */
  get(size: number): Uint8Array {
    this.stats.got++;
    const b = this.idle.get(size)?.pop();
    if (b !== undefined) {
      this.stats.reused++;
      return b;
    }
    return new Uint8Array(size);
  }

  /** Whether n buffers of `size` bytes would all stay idle once released (P1). */
  keeps(n: number, size: number): boolean {
    return n * size <= this.maxIdleBytes;
  }

  /** Back into the pool after the current macrotask (L4: its readers are done by then). */
  release(b: Uint8Array): void {
    setImmediate(() => this.put(b));
  }

  private put(b: Uint8Array): void {
    let l = this.idle.get(b.length);
    if (l === undefined) this.idle.set(b.length, (l = []));
    if ((l.length + 1) * b.length <= this.maxIdleBytes) l.push(b); // P1
  }
}

export class BlockLoads {
  private readonly entries = new Map<number, LoadingEntry>();

  constructor(
    private readonly file: LoadsFile,
    private readonly fastPath: BlockCache,
    private readonly pool: BlockPool,
  ) {}

  get(blk: number): LoadingEntry | undefined {
    return this.entries.get(blk);
  }

  get size(): number {
    return this.entries.size;
  }

  /** Blocks with an entry, in no particular order. */
  blocks(): number[] {
    return [...this.entries.keys()];
  }

  /** Data of blk, loaded once for all concurrent readers (L1). */
  load(blk: number, hooks: LoadHooks, signal?: AbortSignal): Promise<Uint8Array> {
    let e = this.entries.get(blk);
    if (e === undefined) {
      hooks.started?.();
      let lent: Uint8Array | undefined; // from the pool (L4)
      const alloc = () => (lent = this.pool.get(this.file.blksize));
      const entry: LoadingEntry = {
        ready: this.file.view.loadBlock(blk, alloc).then(
          async (b) => {
            try {
              await hooks.loaded?.(b);
            } catch (err) {
              if (lent !== undefined) this.pool.release(lent); // nobody saw it
              throw err;
            }
            entry.data = b.data;
            entry.pooled = lent !== undefined && b.data === lent;
            this.register(blk, entry); // L2: in the same step as data
            return b.data;
          },
          (err) => {
            if (lent !== undefined) this.pool.release(lent);
            throw err;
          },
        ),
        served: new Uint8Array(Math.ceil(this.file.blksize / PAGE_SIZE)),
      };
      entry.ready.then(
        () => {
          hooks.settled?.();
          hooks.after?.(blk, entry);
        },
        () => {
          hooks.settled?.();
          this.drop(blk, entry);
        },
      );
      this.entries.set(blk, entry);
      e = entry;
    }
    return signal === undefined ? e.ready : abortable(e.ready, signal);
  }

  /** Remove blk's entry (only if it is still `e`, when given), unregistering it first (L3). */
  drop(blk: number, e?: LoadingEntry): void {
    const have = this.remove(blk, e);
    if (have?.pooled) this.pool.release(have.data!); // L4
  }

  /**
   * Remove blk's entry `e` like drop(), but keep its data for the caller: the data (if
   * loaded), and `release` to call once done with it (L4: a pooled buffer returns then).
   */
  take(blk: number, e: LoadingEntry): { data?: Uint8Array; release: () => void } {
    const have = this.remove(blk, e);
    if (have === undefined) return { release: () => {} };
    const data = have.data;
    let released = false;
    return {
      data,
      release: () => {
        if (released || !have.pooled) return;
        released = true;
        this.pool.release(data!);
      },
    };
  }

  private remove(blk: number, e?: LoadingEntry): LoadingEntry | undefined {
    const have = this.entries.get(blk);
    if (have === undefined || (e !== undefined && have !== e)) return undefined;
    this.fastPath.drop(this.file.ino, blk * this.file.blksize);
    this.entries.delete(blk);
    return have;
  }

  /** Drop every block that reaches past `size` (a shrink, before the kernel learns of it). */
  dropPast(size: number): void {
    for (const blk of this.blocks()) if ((blk + 1) * this.file.blksize > size) this.drop(blk);
  }

  private register(blk: number, e: LoadingEntry): void {
    if (this.entries.get(blk) !== e || e.data === undefined) return;
    const base = blk * this.file.blksize;
    const len = Math.min(this.file.blksize, e.data.length, this.file.size - base);
    if (len <= 0) return;
    this.fastPath.put(this.file.ino, base, e.data.subarray(0, len), e.served);
  }
}

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

/** p, or the signal's reason when aborted first (p keeps running for other waiters). */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
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
