// Recent records of each oid: where the records published since open are, so that a load as of
// an older revision starts at the right record instead of walking prev links down from the
// newest one. ΔFtail's backward history walk loads a block's path as of every commit in its
// window that touched it — every commit touches a small file's blktab root — so with the prev
// walk one block's history cost O(k²) header reads for k commits (notes.md §5).
//
// Owns: per oid, the ascending (tid, position) of its records published by the FileStorage
// since open (or since the last pack switch), and the FIFO of all of them for the bound.
//
// Invariants:
//   R1 per oid, the entries are exactly the oid's records with tid ≥ its first entry's tid (a
//      suffix of its history): the storage adds every record it publishes, in commit order, and
//      trimming drops the oldest records first.
//   R2 entries ≤ maxEntries after every add.
//   ⇒ start(oid, at) is a record of oid's prev chain with no record newer than it and ≤ at
//     between it and the newest: walking prev links from there finds what walking from the
//     newest record finds.
//
// Pure bookkeeping: no I/O. The owner resets it (a new instance) when positions change.

import type { Oid, Tid } from '../ids.js';

/** Default bound: ~1.5 × 10⁵ records (≈ 10 MB), several minutes of a busy writer. */
export const DEFAULT_RECENT_RECORDS = 1 << 17;

interface Revs {
  tids: Tid[];
  pos: number[];
  /** entries before `start` are trimmed (compacted away now and then). */
  start: number;
}

export class RecentRecords {
  private readonly byOid = new Map<Oid, Revs>();
  /** oid of each entry in publish order; [qStart, end) are live. */
  private queue: Oid[] = [];
  private qStart = 0;

  constructor(readonly maxEntries: number = DEFAULT_RECENT_RECORDS) {
    if (!(maxEntries >= 0)) throw new RangeError(`RecentRecords: maxEntries ${maxEntries}: want ≥ 0`);
  }

  get size(): number {
    return this.queue.length - this.qStart;
  }

  /** Record oid's newest record (tid greater than any of oid's entries so far). */
  add(oid: Oid, tid: Tid, pos: number): void {
    if (this.maxEntries === 0) return;
    let r = this.byOid.get(oid);
    if (r === undefined) this.byOid.set(oid, (r = { tids: [], pos: [], start: 0 }));
    else if (r.tids.length > r.start && r.tids[r.tids.length - 1]! >= tid) {
      throw new Error(`RecentRecords.add: oid ${oid.toString(16)}: tid ${tid.toString(16)} not after ${r.tids[r.tids.length - 1]!.toString(16)}`);
    }
    r.tids.push(tid);
    r.pos.push(pos);
    this.queue.push(oid);
    while (this.size > this.maxEntries) this.dropOldest();
  }

  /**
   * Where to start walking oid's prev links for a load as of `at`: its newest record with
   * tid ≤ at when one is known, else its oldest known record (all known ones are newer than
   * at), else undefined (nothing known: start at the index's newest record).
   */
  start(oid: Oid, at: Tid): number | undefined {
    const r = this.byOid.get(oid);
    if (r === undefined) return undefined;
    const { tids } = r;
    // largest i in [start, n) with tids[i] ≤ at
    let lo = r.start;
    let hi = tids.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (tids[mid]! <= at) lo = mid + 1;
      else hi = mid;
    }
    return r.pos[lo > r.start ? lo - 1 : r.start];
  }

  private dropOldest(): void {
    const oid = this.queue[this.qStart++]!;
    const r = this.byOid.get(oid)!;
    r.start++;
    if (r.start === r.tids.length) this.byOid.delete(oid);
    else if (r.start > 32 && r.start * 2 > r.tids.length) {
      r.tids = r.tids.slice(r.start);
      r.pos = r.pos.slice(r.start);
      r.start = 0;
    }
    if (this.qStart > 1024 && this.qStart * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.qStart);
      this.qStart = 0;
    }
  }
}
