// Untrack — step 5 of the server (server.ts overview): forget the ΔFtail tracking of head
// blocks the kernel no longer caches, so that the server's memory follows what the page cache
// holds instead of every block ever read (issue 7 item 5). Runs from the periodic sweep.
//
// I1 (a head block may be in the page cache ⇒ it is tracked) must hold throughout. Pages of a
// head block enter the page cache only through a READ reply (JS, after the load's `loaded`
// hook tracked the block), a fast-path reply or an upload (both only while the block has a
// BlockLoads entry, whose load tracked it). So, per head file:
//
// 5a probe (no lock): page-cache residency of its tracked blocks (the Kernel seam: mincore
//    through our own mount). A file the kernel has no inode for (nlookup 0) caches nothing.
// 5b synchronously: candidates = tracked blocks with no resident page, no BlockLoads entry
//    and no watch pinning them; note each one's track generation (ΔFtail.trackGen).
// 5c no lock: invalidate the candidates' ranges in head's page cache. Whatever came in since
//    the probe from a READ or an upload of a tracking made before 5b goes now — a READ still
//    in flight included: its pages have been locked since before the READ was sent, and the
//    invalidation waits for them (I6 holds as in step 3b: nobody holds headMu exclusively
//    while we wait, so that READ gets headMu and finishes).
// 5d headMu shared (no commit's ΔFtail.update in between): untrack each candidate that
//    nothing tracked again since 5b (same generation), that has no BlockLoads entry and that
//    no watch pins. Any page of it in the cache now would have come in after 5c, hence
//    through a tracking after 5b: there is none. ⇒ I1.
//
// 5e after a pass that untracked blocks: the C heap's free pages go back to the OS
//    (host.trimHeap), so that RSS follows the page cache too, not only the tracking.
//
// Pinned blocks stay tracked, so a watch setup computes the same pins as before (upstream's
// exact pins). An untracked block is tracked again by the next READ of it, which pins every
// watcher that needs it before the data reaches the kernel (reads.ts 2b); its history is
// rebuilt backwards on demand (ΔFtail, cheap with the storage's recent records).

import createDebug from 'debug';
import { errno } from '../fuse/kernel.js';
import type { Notifier } from '../fuse/notifier.js';
import { hex16, type Oid } from '../zodb/ids.js';
import type { BigFile } from './bigfile.js';
import type { Head } from './head.js';
import { PAGE_SIZE } from './loads.js';

const debug = createDebug('wcfs:server:untrack');

export interface UntrackHost {
  readonly head: Head;
  readonly kernel: {
    readonly notifier: Notifier;
    readonly isClosed: boolean;
    residency(rel: string, off: number, len: number): Promise<Uint8Array>;
  };
  /** Blocks of file foid pinned (to a revision) by some watch. */
  pinnedIn(foid: Oid): ReadonlySet<number>;
  /** .wcfs/stats: Untracked counts every block untracked. */
  readonly stats: { Untracked: number };
  /**
   * After a pass that untracked blocks: give the process heap's free memory back to the OS
   * (malloc_trim). The blocks' transient buffers were freed long before, but the C heap keeps
   * freed memory resident: without this, RSS stayed at its peak after the kernel dropped them.
   */
  trimHeap?(): void;
  warn(msg: string): void;
}

export class Untracker {
  constructor(private readonly host: UntrackHost) {}

  /** One pass over the head files; returns how many blocks it untracked. */
  async sweep(stopping: () => boolean): Promise<number> {
    let n = 0;
    for (const f of [...this.host.head.files.values()]) {
      if (stopping() || this.host.kernel.isClosed) break;
      n += await this.sweepFile(f);
    }
    this.host.stats.Untracked += n;
    if (n > 0 && this.host.trimHeap) {
      const t0 = performance.now();
      this.host.trimHeap();
      debug('untracked %d blocks; heap trimmed in %s ms', n, (performance.now() - t0).toFixed(1));
    }
    return n;
  }

  private async sweepFile(f: BigFile): Promise<number> {
    const { head, kernel } = this.host;
    const δ = head.deltaFtail;
    const blks = δ.trackedBlocks(f.foid);
    if (blks.length === 0) return 0;
    const bs = f.blksize;

    // 5a
    let resident: (blk: number) => boolean = () => false;
    if (f.nlookup > 0) {
      const lo = blks[0]! * bs;
      const hi = Math.min((blks[blks.length - 1]! + 1) * bs, f.size);
      if (hi > lo) {
        let pages: Uint8Array;
        try {
          pages = await kernel.residency(`head/bigfile/${hex16(f.foid)}`, lo, hi - lo);
        } catch (e) {
          if (!kernel.isClosed) debug('probe head/bigfile/%s: %s', hex16(f.foid), (e as Error).message);
          return 0;
        }
        const first = Math.floor(lo / PAGE_SIZE); // pages[0] is the page holding lo
        resident = (blk) => {
          const p0 = Math.floor((blk * bs) / PAGE_SIZE) - first;
          const p1 = Math.min(Math.ceil(((blk + 1) * bs) / PAGE_SIZE) - first, pages.length);
          for (let p = p0; p < p1; p++) if (pages[p] !== 0) return true;
          return false;
        };
      }
    }

    // 5b
    let pinned = this.host.pinnedIn(f.foid);
    const cands: Array<[number, number]> = [];
    for (const blk of blks) {
      if (resident(blk) || pinned.has(blk) || f.loads.get(blk) !== undefined) continue;
      const gen = δ.trackGen(f.foid, blk);
      if (gen !== undefined) cands.push([blk, gen]);
    }
    if (cands.length === 0) return 0;

    // 5c: contiguous candidates in one invalidation
    for (let i = 0; i < cands.length;) {
      let j = i + 1;
      while (j < cands.length && cands[j]![0] === cands[j - 1]![0] + 1) j++;
      const off = cands[i]![0] * bs;
      const len = (cands[j - 1]![0] + 1) * bs - off;
      try {
        await kernel.notifier.invalInode(f.ino, off, len);
      } catch (e) {
        if ((e as { errno?: number }).errno !== errno.ENOENT) {
          // not invalidated: keep them all tracked (I1)
          if (!kernel.isClosed) this.host.warn(`head/bigfile/${hex16(f.foid)}: untrack: invalidation [${off}, +${len}) failed: ${(e as Error).message}`);
          return 0;
        }
      }
      i = j;
    }

    // 5d
    let n = 0;
    await head.mu.rlock();
    try {
      pinned = this.host.pinnedIn(f.foid);
      for (const [blk, gen] of cands) {
        if (f.loads.get(blk) === undefined && !pinned.has(blk) && δ.untrack(f.foid, blk, gen)) n++;
      }
    } finally {
      head.mu.runlock();
    }
    debug('head/bigfile/%s: untracked %d of %d tracked blocks', hex16(f.foid), n, blks.length);
    return n;
  }
}
