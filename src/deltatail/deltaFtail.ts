// ΔFtail — which blocks of which ZBigFiles changed in a commit, and when a block last changed
// (wcfs-server.md §3.7, deltatail.md §3 and §5). This is the "lazy backward history per
// block" design of deltatail.md §5.4-§5.5: exact for every block that was ever read via
// head/ ("explicitly tracked"), which is all the isolation protocol asks about.
//
// Notation: foid = ZBigFile oid, blk = block number, δZ = (tid, changed oids) of one commit,
// δF = per-file changes derived from δZ, (tail, head] = the history window.
//
// State:
//   δZtail       the δZ of the commits in (floor, head], tail ≤ floor (zlog.ts: compact); at
//                most maxLog entries — older commits are read back from the storage (I5)
//   per file     blktab oid, size-path oids, tracked blocks
//   per block    value = blktab[blk] at head (ZBlk oid, null = hole) and the path to it;
//                changes = ascending revisions in (knownFrom, head] at which blk changed;
//                back = (value, path) as of knownFrom, to extend the history further back.
//   "blk changed at rev" = its ZBlk object is in δZ(rev) (content; ZBlk1 is stored whenever a
//   chunk changes), or blktab[blk] points elsewhere after rev than before (mapping).
//
// Invariants:
//   I1 blk may be in head's page cache ⇒ blk is tracked with its current head path and value
//      (the server calls track() before data reaches the kernel, and untracks only blocks the
//      kernel no longer caches: src/server/untrack.ts). A block tracked again starts afresh:
//      its history is rebuilt backwards on demand (cheap with the storage's recent records).
//   I2 update(δZ) reports exactly the tracked blocks that changed in δZ (their paths are
//      re-descended when δZ touches them, so the head path and value stay current).
//   I3 changes ∪ "no change in (knownFrom, head] outside changes" is exact; walking back
//      from `back` (deltatail.md §5.2 path stability) extends it toward tail on demand.
//   I4 blkRevAt(blk, at) = the last change ≤ at, or tail when none is in (tail, at].
//   I5 below floor the history comes from the storage: as of rev K, the newest serial over
//      blk's path and its ZBlk is the last revision ≤ K that touched them (nothing on a path
//      changes without its node's serial moving — path stability, deltatail.md §5.2). So a
//      watcher holding the tail costs at most maxLog δZ entries, however many commits pass;
//      what is beyond them costs a walk over the storage (one step per change of the path).
//
// Concurrency: the caller serialises track()/untrack()/queries against update() (the server's
// head lock: reads, watch setup and untracking hold it shared, commit processing exclusive).
// update() and the queries are async (they may load) — several queries may run at once; they
// only extend per-block history, which is idempotent; an untrack meanwhile detaches a block a
// query may still extend (harmless: nobody reads it after).

import createDebug from 'debug';
import { isCode } from '../errors.js';
import { btreeGet, type PathNode } from '../zodb/btree/index.js';
import type { ObjectLoader } from '../zodb/db.js';
import type { Oid, Tid } from '../zodb/ids.js';
import { PersistentRef } from '../zodb/pickle/index.js';
import { ΔZLog } from './zlog.js';

/** Changes of one file in one commit. */
export interface FileDelta {
  /** Tracked blocks whose data changed: they must be invalidated. */
  blocks: Set<number>;
  /** The size (max-key) path changed: the size must be recomputed. */
  size: boolean;
  /** The ZBigFile object itself is in δZ (the caller checks blksize/blktab). */
  epoch: boolean;
}

interface BlkState {
  value: Oid | null;
  pathOids: Oid[];
}

interface TrackedBlock {
  /** blktab[blk] at head and the oids of its path (embedded buckets: their tree). */
  head: BlkState;
  /** max serial over path + ZBlk at the last (re)track: cheap upper bound of the last change. */
  revMax: Tid;
  changes: Tid[];
  knownFrom: Tid;
  back: BlkState;
  /** In-flight backward walk (queries share it). */
  extending?: Promise<void>;
  /** Sequence number of the last track() of this block (untrack's guard). */
  gen: number;
}

interface TrackedFile {
  blktab: Oid;
  blocks: Map<number, TrackedBlock>;
  sizeOids: Oid[];
}

/** Oids of a blktab path (embedded buckets have no oid of their own: their tree stands for them). */
export function pathOids(path: PathNode[]): Oid[] {
  const out: Oid[] = [];
  for (const n of path) if (n.oid !== null) out.push(n.oid);
  return out;
}

const debug = createDebug('wcfs:deltaftail');
const h = (x: bigint | null) => (x === null ? 'ø' : x.toString(16));

/** Default bound of the δZ log (I5): ~20-40 bytes per one-object commit, so ~2 MiB. */
export const DEFAULT_MAX_ΔZ_LOG = 1 << 16;

export interface DeltaFtailOptions {
  /** At most this many commits' δZ in memory (I5); ≥ 1. Default DEFAULT_MAX_ΔZ_LOG. */
  maxLog?: number;
}

const valueOid = (v: unknown): Oid | null | undefined => (v instanceof PersistentRef ? v.oid : v === undefined ? null : undefined);

export class DeltaFtail {
  private headRev: Tid;
  private tailRev: Tid;
  /** δZtail covers (floorRev, head]; tail ≤ floorRev (I5). */
  private floorRev: Tid;
  private readonly maxLog: number;
  private readonly files = new Map<Oid, TrackedFile>();
  /** oid → (foid → blocks) whose head path or ZBlk contains oid. */
  private readonly nodeIdx = new Map<Oid, Map<Oid, Set<number>>>();
  /** oid → files whose size path contains oid. */
  private readonly sizeIdx = new Map<Oid, Set<Oid>>();
  /** δZ of (floor, head], ascending. */
  private readonly δZtail = new ΔZLog();
  /** Counts track() calls: TrackedBlock.gen. */
  private trackSeq = 0;

  constructor(
    at0: Tid,
    private readonly loader: ObjectLoader,
    opts: DeltaFtailOptions = {},
  ) {
    this.headRev = at0;
    this.tailRev = at0;
    this.floorRev = at0;
    this.maxLog = opts.maxLog ?? DEFAULT_MAX_ΔZ_LOG;
    if (!(this.maxLog >= 1)) throw new RangeError(`ΔFtail: maxLog ${this.maxLog} < 1`);
  }

  head(): Tid {
    return this.headRev;
  }
  tail(): Tid {
    return this.tailRev;
  }

  /** Start tracking a file (looked up at head) and (re)set its size path. */
  trackFile(foid: Oid, blktab: Oid, sizePath: PathNode[]): void {
    let f = this.files.get(foid);
    if (f === undefined) this.files.set(foid, (f = { blktab, blocks: new Map(), sizeOids: [] }));
    for (const o of f.sizeOids) this.sizeIdx.get(o)?.delete(foid);
    f.sizeOids = pathOids(sizePath);
    for (const o of f.sizeOids) {
      let s = this.sizeIdx.get(o);
      if (s === undefined) this.sizeIdx.set(o, (s = new Set()));
      s.add(foid);
    }
  }

  isTracked(foid: Oid): boolean {
    return this.files.has(foid);
  }

  /** Track blk of foid as just loaded at head (I1). A tracked block is only refreshed. */
  track(foid: Oid, blk: number, path: PathNode[], zblk: Oid | null, revMax: Tid): void {
    const f = this.files.get(foid);
    if (f === undefined) throw new Error(`ΔFtail.track: file ${foid.toString(16)} not tracked (trackFile first)`);
    const st: BlkState = { value: zblk, pathOids: pathOids(path) };
    const b = f.blocks.get(blk);
    debug('track f%s #%d value %s path [%s] revMax %s%s', h(foid), blk, h(zblk), st.pathOids.map(h).join(' '), h(revMax), b ? ' (again)' : '');
    const gen = ++this.trackSeq;
    if (b === undefined) {
      f.blocks.set(blk, { head: st, revMax, changes: [], knownFrom: this.headRev, back: st, gen });
    } else {
      this.unindex(foid, blk, b.head);
      b.head = st;
      b.gen = gen;
      if (revMax > b.revMax) b.revMax = revMax;
    }
    this.index(foid, blk, st);
  }

  /** The sequence number of blk's last track(), undefined when not tracked (see untrack). */
  trackGen(foid: Oid, blk: number): number | undefined {
    return this.files.get(foid)?.blocks.get(blk)?.gen;
  }

  /**
   * Forget blk (the kernel no longer caches it: the caller keeps I1), unless it was tracked
   * again since trackGen returned gen. Returns whether it was forgotten. Not during update().
   */
  untrack(foid: Oid, blk: number, gen: number): boolean {
    const f = this.files.get(foid);
    const b = f?.blocks.get(blk);
    if (b === undefined || b.gen !== gen) return false;
    this.unindex(foid, blk, b.head);
    f!.blocks.delete(blk);
    debug('untrack f%s #%d', h(foid), blk);
    return true;
  }

  /** Blocks of foid ever read via head, ascending. */
  trackedBlocks(foid: Oid): number[] {
    return [...(this.files.get(foid)?.blocks.keys() ?? [])].sort((a, b) => a - b);
  }

  /** Fold in one commit (I2). */
  async update(tid: Tid, oids: Iterable<Oid>): Promise<Map<Oid, FileDelta>> {
    if (tid <= this.headRev) throw new Error(`ΔFtail.update: tid ${tid.toString(16)} ≤ head ${this.headRev.toString(16)}`);
    const δZ = new Set(oids);
    const δF = new Map<Oid, FileDelta>();
    const delta = (foid: Oid) => {
      let d = δF.get(foid);
      if (d === undefined) δF.set(foid, (d = { blocks: new Set(), size: false, epoch: false }));
      return d;
    };
    const hit = new Map<Oid, Set<number>>();
    for (const oid of δZ) {
      if (this.files.has(oid)) delta(oid).epoch = true;
      for (const foid of this.sizeIdx.get(oid) ?? []) delta(foid).size = true;
      for (const [foid, blks] of this.nodeIdx.get(oid) ?? []) {
        let s = hit.get(foid);
        if (s === undefined) hit.set(foid, (s = new Set()));
        for (const blk of blks) s.add(blk);
      }
    }
    for (const [foid, blks] of hit) {
      const f = this.files.get(foid)!;
      for (const blk of blks) {
        const b = f.blocks.get(blk)!;
        let changed = b.head.value !== null && δZ.has(b.head.value);
        if (b.head.pathOids.some((o) => δZ.has(o))) {
          const now = await this.lookup(f, blk, tid);
          if (now === undefined || now.value !== b.head.value) changed = true;
          if (now !== undefined) {
            this.unindex(foid, blk, b.head);
            b.head = { value: now.value, pathOids: now.pathOids };
            this.index(foid, blk, b.head);
            if (now.revMax > b.revMax) b.revMax = now.revMax;
          }
        }
        debug('update @%s f%s #%d: changed=%s value %s', h(tid), h(foid), blk, changed, h(b.head.value));
        if (changed) {
          b.changes.push(tid);
          if (tid > b.revMax) b.revMax = tid;
          delta(foid).blocks.add(blk);
        }
      }
    }
    const zs = this.δZtail;
    zs.append(tid, δZ);
    if (zs.length > this.maxLog) {
      // I5: the oldest entry goes; its commit is read back from the storage when needed
      this.floorRev = zs.tid(zs.firstIndex);
      zs.forget(this.floorRev);
    }
    this.headRev = tid;
    return δF;
  }

  /** I4: last revision ≤ at that changed blk, or tail. Untracked blocks: tail (nothing known). */
  async blkRevAt(foid: Oid, blk: number, at: Tid): Promise<Tid> {
    const f = this.files.get(foid);
    const b = f?.blocks.get(blk);
    if (f === undefined || b === undefined) return this.tailRev;
    if (at >= this.headRev && b.revMax <= this.tailRev) return this.tailRev;
    const last = () => {
      for (let i = b.changes.length - 1; i >= 0; i--) if (b.changes[i]! <= at) return b.changes[i]!;
      return undefined;
    };
    // walk back until a change ≤ at is known, or the history reaches tail
    while (last() === undefined && b.knownFrom > this.tailRev) await this.extendBack(f, blk, b, this.tailRev);
    return last() ?? this.tailRev;
  }

  /** Cheap upper bound of blkRevAt(blk, head) (no loads). */
  revMax(foid: Oid, blk: number): Tid {
    return this.files.get(foid)?.blocks.get(blk)?.revMax ?? this.headRev;
  }

  /** Tracked blocks of foid that changed in (lo, head] (watch setup, R4). lo ≥ tail. */
  async changedSince(foid: Oid, lo: Tid): Promise<Set<number>> {
    const out = new Set<number>();
    const f = this.files.get(foid);
    if (f === undefined) return out;
    for (const [blk, b] of f.blocks) {
      if (b.revMax <= lo) continue; // nothing on its path changed after lo
      while (b.knownFrom > lo && b.knownFrom > this.tailRev) await this.extendBack(f, blk, b, lo);
      if (b.changes.some((r) => r > lo)) out.add(blk);
    }
    debug('changedSince f%s @%s: [%s]', h(foid), h(lo), [...out].join(' '));
    return out;
  }

  /**
   * The last revision in (lo, head] at which the ZBigFile object foid changed (created, or its
   * blksize/blktab replaced), if any: an "epoch" the isolation protocol cannot cross.
   */
  async epochIn(foid: Oid, lo: Tid): Promise<Tid | undefined> {
    const zs = this.δZtail;
    for (let i = zs.endIndex - 1; i >= zs.firstIndex; i--) {
      const tid = zs.tid(i);
      if (tid <= lo) return undefined;
      if (zs.has(i, foid)) return tid;
    }
    if (lo >= this.floorRev) return undefined;
    const s = await this.serialAt(foid, this.floorRev); // I5: its last change ≤ floor
    return s > lo ? s : undefined;
  }

  /** Sizes for .wcfs/stats: tracked blocks over all files, δZ entries in (tail, head]. */
  sizes(): { trackedBlocks: number; history: number } {
    let n = 0;
    for (const f of this.files.values()) n += f.blocks.size;
    return { trackedBlocks: n, history: this.δZtail.length };
  }

  /** Forget history at and before rev (tail moves forward only). */
  forgetPast(rev: Tid): void {
    if (rev <= this.tailRev) return;
    if (rev > this.headRev) rev = this.headRev;
    this.tailRev = rev;
    if (rev > this.floorRev) this.floorRev = rev;
    this.δZtail.forget(rev);
    for (const f of this.files.values()) {
      for (const b of f.blocks.values()) {
        while (b.changes.length > 0 && b.changes[0]! <= rev) b.changes.shift();
        if (b.knownFrom < rev) b.knownFrom = rev; // history below tail is never asked for
      }
    }
  }

  // ---- internals ----

  /**
   * Extend blk's known history backwards toward `lo` by walking δZtail (I3): the state at
   * rev_{i-1} equals the state at rev_i unless δZ_i touches its path; a change at rev_i is
   * its ZBlk in δZ_i, or a different blktab[blk] before rev_i. Below floor: stepBack (I5).
   */
  private extendBack(f: TrackedFile, blk: number, b: TrackedBlock, lo: Tid): Promise<void> {
    if (b.extending) return b.extending;
    b.extending = (async () => {
      // (update/forgetPast never run meanwhile: the caller's lock; entry indices stay valid)
      const zs = this.δZtail;
      const first = zs.firstIndex;
      let i = zs.endIndex - 1;
      while (i >= first && zs.tid(i) > b.knownFrom) i--;
      for (; i >= first && b.knownFrom > lo && b.knownFrom > this.tailRev; i--) {
        const ztid = zs.tid(i);
        const cur = b.back;
        let changed = cur.value !== null && zs.has(i, cur.value);
        let prev = cur;
        if (zs.hasAny(i, cur.pathOids)) {
          const p = await this.lookup(f, blk, ztid - 1n);
          if (p === undefined) {
            // blktab did not exist before ztid: the file was created then
            b.changes.unshift(ztid);
            b.knownFrom = this.tailRev;
            return;
          }
          prev = { value: p.value, pathOids: p.pathOids };
          if (prev.value !== cur.value) changed = true;
        }
        if (changed) b.changes.unshift(ztid);
        b.back = prev;
        b.knownFrom = ztid - 1n;
      }
      if (i < first && b.knownFrom > this.floorRev) b.knownFrom = this.floorRev; // no more commits in the log: nothing changed down to floor
      while (b.knownFrom > lo && b.knownFrom > this.tailRev) await this.stepBack(f, blk, b, lo);
    })().finally(() => (b.extending = undefined));
    return b.extending;
  }

  /**
   * I5: one step back from b.knownFrom = K ≤ floor, from the storage. z = the newest serial
   * over blk's path and ZBlk as of K: nothing they hold changed in (z, K], so the state at z
   * is the state at K; a change at z is its ZBlk stored at z, or blktab[blk] different before z.
   */
  private async stepBack(f: TrackedFile, blk: number, b: TrackedBlock, lo: Tid): Promise<void> {
    const K = b.knownFrom;
    const cur = await this.lookup(f, blk, K);
    if (cur === undefined) {
      b.knownFrom = this.tailRev; // no blktab at K: the file's creation is already a change above K
      return;
    }
    const zblkSerial = cur.value === null ? 0n : await this.serialAt(cur.value, K);
    const z = zblkSerial > cur.revMax ? zblkSerial : cur.revMax;
    b.back = { value: cur.value, pathOids: cur.pathOids };
    if (z <= lo || z <= this.tailRev) {
      b.knownFrom = z > this.tailRev ? z : this.tailRev;
      return;
    }
    const p = await this.lookup(f, blk, z - 1n);
    if (p === undefined) {
      b.changes.unshift(z); // blktab did not exist before z: the file was created then
      b.knownFrom = this.tailRev;
      return;
    }
    if (zblkSerial === z || p.value !== cur.value) b.changes.unshift(z);
    b.back = { value: p.value, pathOids: p.pathOids };
    b.knownFrom = z - 1n;
  }

  /** Serial of oid's record as of at (0n: none then). */
  private async serialAt(oid: Oid, at: Tid): Promise<Tid> {
    const l = this.loader;
    try {
      if (l.loadRecordTransient) return l.loadRecordTransient(oid, at).serial;
      if (l.loadRecord) return (await l.loadRecord(oid, at)).serial;
      return (await l.loadObject(oid, at)).serial;
    } catch (e) {
      if (isCode(e, 'WCFS_ENODATA') || isCode(e, 'WCFS_ENOOBJ')) return 0n;
      throw e;
    }
  }

  private async lookup(f: TrackedFile, blk: number, at: Tid): Promise<(BlkState & { revMax: Tid }) | undefined> {
    try {
      const { value, path } = await btreeGet(this.loader, f.blktab, BigInt(blk), at);
      const v = valueOid(value);
      let revMax = 0n;
      for (const n of path) if (n.serial > revMax) revMax = n.serial;
      return { value: v === undefined ? null : v, pathOids: pathOids(path), revMax };
    } catch (e) {
      if (isCode(e, 'WCFS_ENODATA') || isCode(e, 'WCFS_ENOOBJ')) return undefined;
      throw e;
    }
  }

  private index(foid: Oid, blk: number, st: BlkState): void {
    const oids = st.value === null ? st.pathOids : [...st.pathOids, st.value];
    for (const o of oids) {
      let byFile = this.nodeIdx.get(o);
      if (byFile === undefined) this.nodeIdx.set(o, (byFile = new Map()));
      let blks = byFile.get(foid);
      if (blks === undefined) byFile.set(foid, (blks = new Set()));
      blks.add(blk);
    }
  }

  private unindex(foid: Oid, blk: number, st: BlkState): void {
    const oids = st.value === null ? st.pathOids : [...st.pathOids, st.value];
    for (const o of oids) {
      const byFile = this.nodeIdx.get(o);
      const blks = byFile?.get(foid);
      if (blks === undefined) continue;
      blks.delete(blk);
      if (blks.size === 0) byFile!.delete(foid);
      if (byFile!.size === 0) this.nodeIdx.delete(o);
    }
  }
}
