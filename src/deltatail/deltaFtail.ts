// ΔFtail — which blocks of which ZBigFiles changed in a commit, and since when a block has
// been unchanged. This is the "Tier 1" scheme of deltatail.md §5.3-§5.4 (re-descend instead
// of forgetting), behind the interface the full ΔFtail will implement later (Track / Update /
// BlkRevAt / SliceByFileRev / ForgetPast), so server code does not change when exact history
// lands.
//
// Update: a tracked block whose ZBlk is in δZ changed. A tracked block whose *path* only
// intersects δZ (a bucket got another key, a node split) is looked up again at the new
// revision: same value (same ZBlk oid, or still a hole) ⇒ unchanged, re-tracked with its new
// path and kept in the page cache; otherwise it changed (blktab[blk] now points elsewhere).
//
// Notation: foid = ZBigFile oid, blk = block number, δZ = (tid, changed oids) of one commit,
// δF = per-file changes derived from δZ.
//
// State per tracked file: blksize and blktab oid (to detect epochs), the tracked blocks
// {blk → path oids, zblk oid, revMax}, the oids of the size (max-key) path, and the blocks
// dropped by updates with the revision they were dropped at.
//
// Invariants:
//   I1 blk may be in head's page cache ⇒ blk is tracked, with every node on its current blktab
//      path (embedded buckets are represented by their tree) and its ZBlk indexed in nodeIdx.
//      The server keeps I1 by calling track() for every block it serves from head, before
//      the data reaches the kernel, and by invalidating every block update() reports.
//   I2 update(δZ) reports every tracked block whose path or ZBlk intersects δZ (a superset of
//      the blocks whose data changed: path stability, deltatail.md §5.2) and then forgets it.
//   I3 blkRevAt(blk, head) ≥ the block's real last change (revMax is an upper bound);
//      blkRevAt(blk, at < head) ∈ [lastChange(≤ at), at] — Tier 0 answers `at` itself.
//
// Concurrency: the caller serialises track() against update() (the server's head lock:
// reads hold it shared, commit processing exclusive — R5 of deltatail.md §5.1); update() is
// async (it loads) and must not overlap another update().

import { btreeGet, type PathNode } from '../zodb/btree/index.js';
import type { ObjectLoader } from '../zodb/db.js';
import type { Oid, Tid } from '../zodb/ids.js';
import { PersistentRef } from '../zodb/pickle/index.js';

/** Changes of one file in one commit. */
export interface FileDelta {
  /** Blocks whose data may have changed (superset); they must be invalidated. */
  blocks: Set<number>;
  /** The size (max-key) path changed: the size must be recomputed. */
  size: boolean;
  /** The ZBigFile object itself changed (blksize or blktab replaced). */
  epoch: boolean;
}

interface TrackedBlock {
  oids: Oid[];
  /** blktab[blk] as tracked: the ZBlk oid, null = hole. */
  zblk: Oid | null;
  revMax: Tid;
}

interface TrackedFile {
  /** blktab oid (to re-descend on path changes). */
  blktab: Oid;
  blocks: Map<number, TrackedBlock>;
  sizeOids: Oid[];
  /** Blocks dropped by update(), with the revision of the commit that dropped them. */
  dropped: Map<number, Tid>;
}

/** Oids of a blktab path (embedded buckets have no oid of their own: their tree stands for them). */
export function pathOids(path: PathNode[]): Oid[] {
  const out: Oid[] = [];
  for (const n of path) if (n.oid !== null) out.push(n.oid);
  return out;
}

export class DeltaFtail {
  private headRev: Tid;
  private tailRev: Tid;
  private readonly files = new Map<Oid, TrackedFile>();
  /** oid → (foid → blocks) whose path or ZBlk contains oid. */
  private readonly nodeIdx = new Map<Oid, Map<Oid, Set<number>>>();
  /** oid → files whose size path contains oid. */
  private readonly sizeIdx = new Map<Oid, Set<Oid>>();

  constructor(
    at0: Tid,
    /** Loads at new revisions during update (re-descending changed paths). */
    private readonly loader: ObjectLoader,
  ) {
    this.headRev = at0;
    this.tailRev = at0;
  }

  head(): Tid {
    return this.headRev;
  }
  tail(): Tid {
    return this.tailRev;
  }

  /** Start tracking a file (opened at head): its size path. Idempotent; refreshes the size path. */
  trackFile(foid: Oid, blktab: Oid, sizePath: PathNode[]): void {
    const f = this.fileEntry(foid, blktab);
    for (const o of f.sizeOids) this.sizeIdx.get(o)?.delete(foid);
    f.sizeOids = pathOids(sizePath);
    for (const o of f.sizeOids) this.idxAdd(this.sizeIdx, o, foid);
  }

  /** Whether the file is tracked (was opened at head). */
  isTracked(foid: Oid): boolean {
    return this.files.has(foid);
  }

  /** Track block blk of foid as loaded at head (I1). */
  track(foid: Oid, blk: number, path: PathNode[], zblk: Oid | null, revMax: Tid): void {
    const f = this.files.get(foid);
    if (f === undefined) throw new Error(`ΔFtail.track: file ${foid.toString(16)} not tracked (trackFile first)`);
    this.untrackBlock(foid, f, blk);
    const oids = pathOids(path);
    if (zblk !== null) oids.push(zblk);
    f.blocks.set(blk, { oids, zblk, revMax });
    for (const o of oids) {
      let byFile = this.nodeIdx.get(o);
      if (byFile === undefined) this.nodeIdx.set(o, (byFile = new Map()));
      let blks = byFile.get(foid);
      if (blks === undefined) byFile.set(foid, (blks = new Set()));
      blks.add(blk);
    }
  }

  /**
   * Fold in one commit: report, per tracked file, the blocks to invalidate and whether its
   * size path or the file object changed (I2). Blocks reached only through changed path
   * nodes are re-descended at tid (loads) and reported only if blktab[blk] changed.
   */
  async update(tid: Tid, oids: Iterable<Oid>): Promise<Map<Oid, FileDelta>> {
    if (tid <= this.headRev) throw new Error(`ΔFtail.update: tid ${tid.toString(16)} ≤ head ${this.headRev.toString(16)}`);
    const δZ = new Set(oids);
    const δF = new Map<Oid, FileDelta>();
    const delta = (foid: Oid) => {
      let d = δF.get(foid);
      if (d === undefined) δF.set(foid, (d = { blocks: new Set(), size: false, epoch: false }));
      return d;
    };
    const suspects = new Map<Oid, Set<number>>(); // path-only hits: re-descend
    for (const oid of δZ) {
      if (this.files.has(oid)) delta(oid).epoch = true;
      for (const foid of this.sizeIdx.get(oid) ?? []) delta(foid).size = true;
      const byFile = this.nodeIdx.get(oid);
      if (byFile === undefined) continue;
      for (const [foid, blks] of byFile) {
        const f = this.files.get(foid)!;
        for (const blk of blks) {
          const b = f.blocks.get(blk)!;
          if (b.zblk !== null && δZ.has(b.zblk)) delta(foid).blocks.add(blk);
          else {
            let s = suspects.get(foid);
            if (s === undefined) suspects.set(foid, (s = new Set()));
            s.add(blk);
          }
        }
      }
    }
    for (const [foid, blks] of suspects) {
      const f = this.files.get(foid)!;
      if (δF.get(foid)?.epoch) {
        for (const blk of blks) delta(foid).blocks.add(blk); // the server fails or re-checks; don't look deeper
        continue;
      }
      for (const blk of blks) {
        if (δF.get(foid)?.blocks.has(blk)) continue;
        const b = f.blocks.get(blk)!;
        const { value, path } = await btreeGet(this.loader, f.blktab, BigInt(blk), tid);
        const now = value instanceof PersistentRef ? value.oid : value === undefined ? null : undefined;
        if (now === b.zblk) {
          // unchanged data; new path (the nodes that changed are newer than revMax now)
          let revMax = b.revMax;
          for (const n of path) if (n.serial > revMax) revMax = n.serial;
          this.track(foid, blk, path, b.zblk, revMax);
        } else {
          delta(foid).blocks.add(blk);
        }
      }
    }
    for (const [foid, d] of δF) {
      const f = this.files.get(foid)!;
      for (const blk of d.blocks) {
        this.untrackBlock(foid, f, blk);
        f.dropped.set(blk, tid);
      }
    }
    this.headRev = tid;
    return δF;
  }

  /**
   * Revision of the last change of blk ≤ at, or an upper bound of it within [.., at] (I3).
   * At head: the tracked revMax (or head when the block is not tracked).
   */
  blkRevAt(foid: Oid, blk: number, at: Tid): Tid {
    if (at < this.headRev) return at;
    const b = this.files.get(foid)?.blocks.get(blk);
    return b === undefined ? this.headRev : b.revMax;
  }

  /**
   * Blocks of foid that may be cached and changed in (lo, head]: tracked blocks with
   * revMax > lo, and blocks dropped by commits > lo. Used by watch setup (R4).
   */
  changedSince(foid: Oid, lo: Tid): Set<number> {
    const out = new Set<number>();
    const f = this.files.get(foid);
    if (f === undefined) return out;
    for (const [blk, b] of f.blocks) if (b.revMax > lo) out.add(blk);
    for (const [blk, rev] of f.dropped) if (rev > lo) out.add(blk);
    return out;
  }

  /** Forget what is needed only for queries at revisions < rev. */
  forgetPast(rev: Tid): void {
    if (rev <= this.tailRev) return;
    this.tailRev = rev;
    for (const f of this.files.values()) {
      for (const [blk, r] of f.dropped) if (r <= rev) f.dropped.delete(blk);
    }
  }

  /** Forget everything about a file (after its epoch). */
  untrackFile(foid: Oid): void {
    const f = this.files.get(foid);
    if (f === undefined) return;
    for (const blk of [...f.blocks.keys()]) this.untrackBlock(foid, f, blk);
    for (const o of f.sizeOids) this.sizeIdx.get(o)?.delete(foid);
    this.files.delete(foid);
  }

  /** Number of tracked blocks (for stats and tests). */
  trackedBlocks(foid: Oid): number[] {
    return [...(this.files.get(foid)?.blocks.keys() ?? [])].sort((a, b) => a - b);
  }

  private fileEntry(foid: Oid, blktab: Oid): TrackedFile {
    let f = this.files.get(foid);
    if (f === undefined) this.files.set(foid, (f = { blktab, blocks: new Map(), sizeOids: [], dropped: new Map() }));
    return f;
  }

  private untrackBlock(foid: Oid, f: TrackedFile, blk: number): void {
    const b = f.blocks.get(blk);
    if (b === undefined) return;
    f.blocks.delete(blk);
    for (const o of b.oids) {
      const byFile = this.nodeIdx.get(o);
      const blks = byFile?.get(foid);
      if (blks === undefined) continue;
      blks.delete(blk);
      if (blks.size === 0) byFile!.delete(foid);
      if (byFile!.size === 0) this.nodeIdx.delete(o);
    }
  }

  private idxAdd(idx: Map<Oid, Set<Oid>>, k: Oid, v: Oid): void {
    let s = idx.get(k);
    if (s === undefined) idx.set(k, (s = new Set()));
    s.add(v);
  }
}
