// Reads — step 2 of the server (server.ts overview): READ of a bigfile, and the upload of
// each loaded block into the page cache.
//
// 2a) clamp the READ to the file size; load every block in range (once per block for all
//     concurrent readers: the file's BlockLoads); reply — each block's data used in the
//     microtask checkpoint its load resolved in (loads.ts L4); mark the pages the reply covered.
// 2b) head files: the READ holds headMu shared, and a load keeps holding it until it
//     completes even if the READ that started it was interrupted (I3: no load straddles a
//     commit). The `loaded` hook tracks the block in ΔFtail and pins every watcher that needs
//     it (isolation.ts) before any reader — or the fast path — gets the data (I1).
// 2c) after the readers are released, the whole block is uploaded into the page cache
//     (NOTIFY_STORE) — only the pages no READ reply delivered, after a delay that lets
//     readahead come first — and never from inside a READ (the kernel holds those pages
//     locked). Head uploads pass the UploadGate (I4); the entry is dropped at the end. The
//     delay follows the file's last READ size: small READs (the kernel's default readahead,
//     128 KiB) → UPLOAD_DELAYS.small, as a store costs less than a READ round trip per 128
//     KiB; big READs (≥ BIG_READ: readahead raised) → UPLOAD_DELAYS.big, so that the READs
//     take the block, answered by the fast path into pages the reader's readahead allocated,
//     and the upload stores only what no READ took by then — the kernel's per-page work of
//     a store (allocation, LRU) is then the reader's readahead's, as with any FUSE server.
// 2d) prefetch: a READ that looks sequential — past half of its last block, or at most one
//     block past the furthest one read or prefetched — starts loading the next PREFETCH_DEPTH
//     blocks (one load per block: BlockLoads), so a sequential reader finds them uploaded
//     instead of waiting at block boundaries. It is an ordinary load (head: 2b,
//     headMu nested, tracked, pins; @rev: immutable) that no READ waits for. Head files only
//     when nobody watches them — policy, not safety: a watcher that comes meanwhile is pinned
//     by the load's `loaded` hook as for any read; skipping watched files avoids early pins.
//
// Never touches its own mount from the JS thread (src/fuse/session.ts "self-access").

import type { Notifier } from '../fuse/notifier.js';
import { sleep } from '../util/async.js';
import { hex16 } from '../zodb/ids.js';
import type { BigFile } from './bigfile.js';
import { PackedError, type Head } from './head.js';
import type { Isolation } from './isolation.js';
import { markServed, unservedRuns, type LoadingEntry } from './loads.js';

/** 2c: how long a loaded block waits for READs before its upload, ms, after small / big READs. */
export interface UploadDelays {
  small: number;
  big: number;
}
export const UPLOAD_DELAYS: UploadDelays = { small: 2, big: 20 };
export const BIG_READ = 512 << 10; // 2c
const PREFETCH_FROM = 0.5; // 2d: a READ ending this far into its last block prefetches the next
export const PREFETCH_DEPTH = 6; // 2d: blocks loaded ahead of a sequential reader
const NEVER = new AbortController().signal; // a prefetch is never abandoned: it is one load
const EMPTY = new Uint8Array(0);

export class Reads {
  /** 2d: per file, the furthest block of its current sequential run read or prefetched. */
  private readonly lastRead = new WeakMap<BigFile, number>();
  /** 2c: per file, whether its last READ that reached JS was big (≥ BIG_READ). */
  private readonly bigReads = new WeakMap<BigFile, boolean>();

  constructor(
    private readonly head: Head,
    private readonly isolation: Isolation,
    private readonly kernel: { readonly notifier: Notifier; readonly isClosed: boolean },
    private readonly stats: { Prefetch: number; ReadJS: number; ReadLoad: number },
    private readonly warn: (msg: string) => void,
    private readonly delays: UploadDelays = UPLOAD_DELAYS,
  ) {}

  // ---- 2a, 2b ----

  async read(f: BigFile, off: number, size: number, signal: AbortSignal): Promise<Uint8Array> {
    if (!f.isHead) return this.readBlocks(f, off, size, signal);
    await this.head.mu.rlock(signal);
    try {
      return await this.readBlocks(f, off, size, signal);
    } finally {
      this.head.mu.runlock();
    }
  }

  private async readBlocks(f: BigFile, off: number, size: number, signal: AbortSignal): Promise<Uint8Array> {
    const end = Math.min(off + size, f.size);
    this.stats.ReadJS++;
    this.bigReads.set(f, size >= BIG_READ); // 2c
    if (end <= off) return EMPTY; // at/after EOF: 0 bytes, as POSIX says
    const bs = f.blksize;
    const b0 = Math.floor(off / bs);
    const b1 = Math.floor((end - 1) / bs);
    for (let blk = b0; blk <= b1; blk++) if (f.loads.get(blk) === undefined) this.stats.ReadLoad++;
    // A block's data is used in the microtask checkpoint its load resolved in (loads.ts L4:
    // a pooled buffer may be reused after the next macrotask): one block is replied right
    // after; each block of a multi-block READ is copied into the reply as soon as it is in.
    let reply: Uint8Array;
    if (b0 === b1) {
      const load = this.loadBlk(f, b0, signal);
      this.prefetch(f, b1, end); // 2d: overlaps this READ's own load
      reply = (await load).subarray(off - b0 * bs, end - b0 * bs);
    } else {
      const out = Buffer.allocUnsafe(end - off);
      const loads: Promise<void>[] = [];
      for (let blk = b0; blk <= b1; blk++) {
        const start = blk * bs;
        const a = Math.max(off, start);
        const z = Math.min(end, start + bs);
        loads.push(this.loadBlk(f, blk, signal).then((d) => void out.set(d.subarray(a - start, z - start), a - off)));
      }
      this.prefetch(f, b1, end);
      await Promise.all(loads);
      reply = out;
    }
    for (let blk = b0; blk <= b1; blk++) markServed(f.loads.get(blk), blk, bs, off, end);
    return reply;
  }

  private loadBlk(f: BigFile, blk: number, signal: AbortSignal): Promise<Uint8Array> {
    if (!f.isHead) {
      // packed away: a block loaded before the pack is right (and shared); a new load is refused
      if (f.rev! < this.head.packedTo && f.loads.get(blk) === undefined) {
        return Promise.reject(new PackedError(`@${hex16(f.rev!)}/bigfile/${hex16(f.foid)} #${blk}`, f.rev!, this.head.packedTo));
      }
      return f.loads.load(blk, { after: (b, e) => void this.uploadRev(f, b, e) }, signal);
    }
    const mu = this.head.mu;
    return f.loads.load(
      blk,
      {
        started: () => mu.rlockNested(), // I3
        settled: () => mu.runlock(),
        loaded: async (b) => {
          // I1: tracked, and watchers pinned, before any reader or the fast path gets the data
          this.head.deltaFtail.track(f.foid, blk, b.path, b.zblk?.oid ?? null, b.revMax);
          await this.isolation.readPinWatchers(f, blk);
        },
        after: (b, e) => void this.uploadHead(f, b, e),
      },
      signal,
    );
  }

  // ---- 2d ----

  /**
   * Start loading blk+1 … blk+PREFETCH_DEPTH when the READ ending at `end` in blk looks
   * sequential: it went past half of blk, or blk is at most one past the furthest block this
   * file had loaded by a READ or a prefetch, and not more than PREFETCH_DEPTH before it (the
   * READs in between were page-cache or fast-path hits: they never reach JS). Several blocks
   * ahead, because the READs of a prefetched block are fast-path hits: none of them reaches
   * JS to start the next prefetch, so with one block ahead every other block was loaded on
   * demand (bench-cold-read's ReadLoad). Head files: headMu held shared.
   */
  private prefetch(f: BigFile, blk: number, end: number): void {
    const last = this.lastRead.get(f);
    const seq = end - blk * f.blksize > f.blksize * PREFETCH_FROM || (last !== undefined && blk <= last + 1 && blk >= last - PREFETCH_DEPTH);
    let furthest = seq && last !== undefined ? Math.max(blk, last) : blk;
    if (seq && !(f.isHead && this.isolation.watched(f.foid))) {
      for (let next = blk + 1; next <= blk + PREFETCH_DEPTH && next * f.blksize < f.size; next++) {
        furthest = Math.max(furthest, next);
        if (f.loads.get(next) !== undefined) continue;
        this.stats.Prefetch++;
        // its errors reach the READ of that block, which loads it again
        this.loadBlk(f, next, NEVER).catch(() => {});
      }
    }
    this.lastRead.set(f, furthest);
  }

  // ---- 2c ----

  private uploadDelay(f: BigFile): number {
    return this.bigReads.get(f) === true ? this.delays.big : this.delays.small;
  }

  private async uploadHead(f: BigFile, blk: number, e: LoadingEntry): Promise<void> {
    await sleep(this.uploadDelay(f));
    // not when commit processing took the entry meanwhile: its data is stale
    if (!(await this.head.uploads.enter(() => f.loads.get(blk) === e))) return;
    try {
      await this.storeUnserved(f, blk, e);
    } catch (err) {
      if (!this.kernel.isClosed)
        this.warn(`BUG: head/bigfile/${hex16(f.foid)} #${blk}: upload to page cache failed: ${(err as Error).message} (reads will be slow)`);
    } finally {
      f.loads.drop(blk, e);
      this.head.uploads.leave();
    }
  }

  private async uploadRev(f: BigFile, blk: number, e: LoadingEntry): Promise<void> {
    await sleep(this.uploadDelay(f));
    try {
      await this.storeUnserved(f, blk, e);
    } catch (err) {
      if (!this.kernel.isClosed) this.warn(`BUG: @${hex16(f.rev!)}/bigfile/${hex16(f.foid)} #${blk}: upload to page cache failed: ${(err as Error).message}`);
    } finally {
      f.loads.drop(blk, e);
    }
  }

  private async storeUnserved(f: BigFile, blk: number, e: LoadingEntry): Promise<void> {
    const base = blk * f.blksize;
    for (const [a, z] of unservedRuns(e, f.blksize)) await this.kernel.notifier.store(f.ino, base + a, e.data!.subarray(a, z));
  }
}
