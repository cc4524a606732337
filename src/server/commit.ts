// Commits — step 3 of the server (server.ts overview): keeping head's page cache, head files
// and head/at in step with the database, one batch of storage commit events at a time (the
// first event and those queued behind it), in three steps:
//
// 3a headMu exclusive, uploads paused and drained (UploadGate): δF = ΔFtail.update(δZ) per
//    commit, in order; for each block of a head file changed in the batch take the old data
//    out of its BlockLoads (or RETRIEVE it from the kernel, which locks no page) and the
//    revision it belongs to, rev = BlkRevAt(blk, oldHead); compute new sizes; then, in one
//    synchronous step, advance the head (Head.advance: I2). Unlock headMu; uploads stay paused.
// 3b no lock, uploads still paused: store the old data of each block into
//    @<rev>/bigfile/<oid> — where clients pinned to it will map it (isolation.ts pins to
//    BlkRevAt(blk, at)) — making the kernel look that file up first if it does not know it
//    (CommitsHost.revFileKnown: a lookup through our own mount, on a native thread); then
//    invalidate every changed block in head's page cache; then resume uploads and
//    invalidate the attributes of every touched file. READs get headMu again as soon as 3a
//    ends and are answered from the new head, into pages the kernel locked for them; an
//    upload, though, stores into pages the kernel already caches, in place, and readers copy
//    those unlocked: one of a new block over the old one's pages not yet invalidated would
//    tear the page a reader is copying (lock.ts U2; seen as a page half of one commit's
//    bytes, half of the next's, in wcfs-stress).
// 3c publish: head/at shows the new head, head waiters (watch requests, @rev lookups ahead of
//    head) wake (Head.publish: I5); then .wcfs/debug/zhead readers get a line per commit.
//
// The store is what upstream does (wcfs.go invalidateBlk): the data is exactly @<rev>'s —
// the block did not change in (rev, oldHead] — so it may go into that file's page cache.
// It is an optimisation only: a failed store or lookup is logged (debug) and dropped. Memory:
// the page cache is the kernel's to reclaim; the @rev views such lookups create are collected
// as any other (tree.ts I7, sweep), and no new view is created for a store while
// MAX_VIEWS_FOR_STORE views exist (server.ts revFileKnown) — a fast writer cannot pile them
// up between sweeps.
//
// Why no READ is answered from stale data natively (the fast path, loads.ts): 3a drops every
// changed block's entry before 3b invalidates it; the drop waits for fast replies in flight,
// so a reply sent from the old data lands before the invalidation and is removed by it, and a
// READ after the drop goes to JS and waits for headMu. No load is in flight during 3a (I3),
// so no block is registered meanwhile. Blocks past a shrunk end are dropped too (ΔFtail
// reports them as unchanged holes).
//
// I6 (no deadlock with the kernel's page locks): the kernel locks a page, then sends READ,
// which takes headMu shared. 3a waits for storage loads and RETRIEVE only; uploads, STORE and
// INVAL_INODE run without headMu; and while 3b waits for a page lock no one holds or waits
// for headMu exclusively (batches are processed one at a time), so the READ holding the page
// gets headMu, is answered (from the new head, I2) and unlocks the page. The uploads 3b
// keeps paused hold no page (none is in flight: 3a drained them), and no READ waits for an
// upload.
//
// A change of a tracked ZBigFile object itself (blksize or blktab replaced), and any failure
// of the storage watch or of an invalidation, is fatal (server.ts step 4).

import createDebug from 'debug';
import { errno } from '../fuse/kernel.js';
import type { Notifier } from '../fuse/notifier.js';
import { WcfsError } from '../errors.js';
import type { ObjectLoader } from '../zodb/db.js';
import { hex16, type Tid } from '../zodb/ids.js';
import type { CommitEvent, StorageWatch } from '../zodb/storage.js';
import { ZBigFileView } from '../zodb/zbigfile.js';
import type { BigFile } from './bigfile.js';
import type { Head } from './head.js';
import type { BlockPool } from './loads.js';

const debug = createDebug('wcfs:server:commit');

const MAX_BATCH = 256; // commit events processed in one pass

/** Bytes in all of `pieces`. */
function piecesLength(pieces: readonly Uint8Array[]): number {
  let n = 0;
  for (const p of pieces) n += p.length;
  return n;
}

/** 3b's work for one changed head block (from 3a). */
export interface BlockInval {
  f: BigFile;
  blk: number;
  /** The block's data as of oldHead (pieces in order, blksize bytes in all), to store into @<rev>/bigfile/<oid>. */
  old?: Uint8Array[];
  /** BlkRevAt(blk, oldHead): the last revision ≤ oldHead that changed the block (or the history tail). */
  rev?: Tid;
  /** Call once done with old (it may be a pooled buffer taken from BlockLoads: loads.ts L4). */
  release?: () => void;
}

interface CommitPlan {
  blocks: BlockInval[];
  /** Head files in δF: their attributes (size, mtime) are invalidated in 3b. */
  touched: BigFile[];
}

export interface CommitsHost {
  readonly head: Head;
  readonly loader: ObjectLoader;
  readonly notifier: Notifier;
  /**
   * @<rev>/bigfile/<oid>, known to the kernel (looked up through the mount if it was not);
   * undefined when that cannot be (packed, over the view cap, lookup failed). Not under headMu.
   */
  revFileKnown(rev: Tid, foid: bigint): Promise<BigFile | undefined>;
  /** Where a RETRIEVEd block's old data goes (loads.ts BlockPool: memory already faulted in). */
  readonly pool: BlockPool;
  /** Lower bound of the ΔFtail history still needed (isolation.ts revCut). */
  revCut(): Tid;
  /** After 3c: these commits are processed (.wcfs/debug/zhead, zhead.ts). Must not wait. */
  processed?(tids: readonly Tid[]): void;
  fatal(err: Error): void;
  readonly failed: Error | undefined;
}

export class Commits {
  constructor(private readonly host: CommitsHost) {}

  /**
   * Commit events one batch at a time: the first event, and every one queued behind it (up
   * to MAX_BATCH) — a server that fell behind (a slow client held a commit for a pin
   * timeout) catches up in one pass of 3a-3c instead of one per commit.
   */
  async serve(watch: StorageWatch): Promise<void> {
    const it = watch[Symbol.asyncIterator]();
    try {
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        const batch = [r.value];
        // commits before a pack boundary are processed together with the one at it (advance)
        while (watch.ready() > 0 && (batch.length < MAX_BATCH || batch[batch.length - 1]!.tid < this.host.head.packedTo)) {
          const more = await it.next();
          if (more.done) break;
          batch.push(more.value);
        }
        // a pack seen after the batch was taken: pull in the commits up to its boundary (queued)
        await this.handle(batch, async () => {
          const more: CommitEvent[] = [];
          while (watch.ready() > 0 && (more.length === 0 || more[more.length - 1]!.tid < this.host.head.packedTo)) {
            const r2 = await it.next();
            if (r2.done) break;
            more.push(r2.value);
          }
          return more;
        });
        if (this.host.failed) return;
      }
    } catch (e) {
      this.host.fatal(e as Error);
    }
  }

  /**
   * One batch (ascending tids): 3a, 3b, 3c. `more` gives the events queued behind the batch:
   * taken when the batch ends below the pack boundary (advance folds them).
   */
  async handle(evs: CommitEvent[], more?: () => Promise<CommitEvent[]>): Promise<void> {
    const head = this.host.head;
    let plan: CommitPlan;
    await head.uploads.lockExclusive();
    try {
      if (more !== undefined && evs[evs.length - 1]!.tid < head.packedTo) evs = evs.concat(await more());
      plan = await this.advance(evs);
    } catch (e) {
      head.uploads.unlockExclusive();
      this.host.fatal(e as Error);
      return;
    }
    // 3b: uploads stay paused until every changed block is out of head's page cache
    head.uploads.unlockKeepPaused();
    try {
      const known = new Map<string, Promise<BigFile | undefined>>(); // one lookup per @rev file
      try {
        await Promise.all(plan.blocks.map((b) => this.invalidateBlock(b, known)));
      } finally {
        head.uploads.resume();
      }
      await Promise.all(plan.touched.map((f) => this.invalAttr(f)));
    } catch (e) {
      this.host.fatal(e as Error);
      return;
    }
    const tid = evs[evs.length - 1]!.tid;
    head.publish(tid);
    this.host.processed?.(evs.map((e) => e.tid));
    debug('head @%s (%d commits; δF: %d files, %d blocks)', hex16(tid), evs.length, plan.touched.length, plan.blocks.length);
  }

  // ---- 3a ----

  /** Under headMu W. Returns what 3b must invalidate. */
  private async advance(evs: CommitEvent[]): Promise<CommitPlan> {
    const head = this.host.head;
    const oldHead = head.at;
    const newHead = evs[evs.length - 1]!.tid;
    const sizes = new Map<BigFile, number>();
    const changed = new Map<BigFile, Set<number>>();
    const lastChange = new Map<BigFile, Tid>(); // mtime (revApprox)
    // Commits below the pack boundary (the storage was packed before we processed them) can
    // no longer be looked at one by one — their states are gone: fold them into the next one.
    let folded: Set<bigint> | undefined;
    for (let i = 0; i < evs.length; i++) {
      const ev = evs[i]!;
      if (ev.tid < head.packedTo && i < evs.length - 1) {
        folded ??= new Set();
        for (const o of ev.oids) folded.add(o);
        continue;
      }
      let oids: Iterable<bigint> = ev.oids;
      if (folded !== undefined) {
        for (const o of ev.oids) folded.add(o);
        oids = folded;
        folded = undefined;
      }
      debug('δZ @%s: %d oids', hex16(ev.tid), ev.oids.length);
      const δF = await head.deltaFtail.update(ev.tid, oids);
      for (const [foid, d] of δF) {
        const f = head.files.get(foid);
        if (f === undefined) continue;
        lastChange.set(f, ev.tid);
        if (d.epoch) await this.checkEpoch(f, ev.tid);
        let blks = changed.get(f);
        if (blks === undefined) changed.set(f, (blks = new Set()));
        for (const blk of d.blocks) blks.add(blk);
        if (d.size) {
          const { size, path } = await f.view.withAt(ev.tid).size();
          head.deltaFtail.trackFile(foid, f.view.blktab, path);
          sizes.set(f, size);
          // blocks past a shrunk end are not reported as changed: out of the fast path now,
          // before the kernel can learn the new size
          f.loads.dropPast(size);
        }
      }
    }
    const takes: Promise<BlockInval>[] = [];
    let n = 0;
    let big = 0;
    for (const [f, blks] of changed) {
      n += blks.size;
      big = Math.max(big, f.blksize);
    }
    const pooled = this.host.pool.keeps(n, big);
    for (const [f, blks] of changed) for (const blk of blks) takes.push(this.takeOldBlock(f, blk, oldHead, head.packedTo, pooled));
    const blocks = await Promise.all(takes);
    head.advance(newHead, sizes, lastChange); // I2
    head.deltaFtail.forgetPast(this.host.revCut());
    return { blocks, touched: [...lastChange.keys()] };
  }

  /**
   * One changed block: out of its BlockLoads and the fast path (the uploader must not store
   * stale data, nor the fast path serve it; the drop waits for fast replies in flight), and
   * its old data — taken from BlockLoads (released in 3b once stored), else RETRIEVEd (takes
   * no page lock) — with rev = BlkRevAt(blk, oldHead). Only a full block is kept (less: the
   * kernel already evicted some, so memory is short — upstream's rule).
   */
  private async takeOldBlock(f: BigFile, blk: number, oldHead: Tid, packedTo: Tid, pooled: boolean): Promise<BlockInval> {
    const bs = f.blksize;
    let old: Uint8Array[] | undefined;
    let release: (() => void) | undefined;
    const e = f.loads.get(blk);
    if (e !== undefined) {
      const t = f.loads.take(blk, e);
      if (t.data !== undefined) old = [t.data];
      release = t.release;
    }
    if (old === undefined) {
      // into a pooled block when the batch's blocks fit in the pool (the next commit reuses
      // them): RETRIEVE's pieces in fresh memory cost page faults (notes.md §8
      // "Invalidation"); more than that would allocate blocks the pool then drops
      const into = pooled ? this.host.pool.get(bs) : undefined;
      if (into !== undefined) release = () => this.host.pool.release(into);
      try {
        old = await this.host.notifier.retrieve(f.ino, blk * bs, bs, into);
      } catch (err) {
        debug('retrieve %s #%d: %s', hex16(f.foid), blk, (err as Error).message);
      }
    }
    // (a block with data cached is tracked — server.ts I1 — so ΔFtail knows its revision;
    // checked anyway: for an untracked block blkRevAt answers the tail, which may be wrong)
    if (old !== undefined && piecesLength(old) === bs && this.host.head.deltaFtail.trackGen(f.foid, blk) !== undefined) {
      try {
        const rev = await this.host.head.deltaFtail.blkRevAt(f.foid, blk, oldHead);
        // below packedTo: @<rev> is refused, nowhere to keep it; above oldHead: the history
        // was cut past oldHead (a pack), rev is not the block's revision as of oldHead
        if (rev >= packedTo && rev <= oldHead) return { f, blk, old, rev, release };
      } catch (err) {
        debug('blkRevAt %s #%d @%s: %s', hex16(f.foid), blk, hex16(oldHead), (err as Error).message); // as upstream: only slows @rev reads
      }
    }
    release?.();
    return { f, blk };
  }

  private async checkEpoch(f: BigFile, tid: Tid): Promise<void> {
    const nv = await ZBigFileView.open(this.host.loader, f.foid, tid);
    if (nv.blksize !== f.view.blksize || nv.blktab !== f.view.blktab) {
      throw new WcfsError(
        'WCFS_EEPOCH',
        `ZBigFile<${hex16(f.foid)}> changed @${hex16(tid)} (blksize ${f.view.blksize}→${nv.blksize}, blktab ${hex16(f.view.blktab)}→${hex16(nv.blktab)}): not supported`,
      );
    }
  }

  // ---- 3b ----

  /** One block: keep the old data in @<rev>, then drop the block from head's cache. */
  private async invalidateBlock(b: BlockInval, known: Map<string, Promise<BigFile | undefined>>): Promise<void> {
    const bs = b.f.blksize;
    const off = b.blk * bs;
    if (b.old !== undefined && b.rev !== undefined) {
      const rev = b.rev;
      try {
        const key = `${hex16(rev)}/${hex16(b.f.foid)}`;
        let p = known.get(key);
        if (p === undefined) known.set(key, (p = this.host.revFileKnown(rev, b.f.foid)));
        const rf = await p;
        // @<rev> may be shorter (the block is past its end there: its clients see zeros) —
        // a store past the end would make the kernel grow the file
        const n = rf === undefined ? 0 : Math.min(bs, rf.size - off);
        // piece by piece (RETRIEVE's max_write pieces: never joined, see notifier.ts)
        for (let at = 0, i = 0; at < n && i < b.old.length; at += b.old[i]!.length, i++) {
          const piece = b.old[i]!;
          await this.host.notifier.store(rf!.ino, off + at, at + piece.length <= n ? piece : piece.subarray(0, n - at));
        }
      } catch (err) {
        debug('store @%s/%s #%d: %s', hex16(rev), hex16(b.f.foid), b.blk, (err as Error).message);
      } finally {
        b.release?.();
      }
    }
    try {
      await this.host.notifier.invalInode(b.f.ino, off, bs);
    } catch (err) {
      if ((err as { errno?: number }).errno !== errno.ENOENT) throw err; // ENOENT: nothing cached
    }
  }

  private async invalAttr(f: BigFile): Promise<void> {
    try {
      await this.host.notifier.invalInode(f.ino, -1, 0);
    } catch (err) {
      if ((err as { errno?: number }).errno !== errno.ENOENT) throw err;
    }
  }
}
