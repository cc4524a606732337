// ΔZLog — the δZ (tid, changed oids) of every commit in (tail, head], for ΔFtail's backward
// walks (deltaFtail.ts I3) and epoch checks. A watcher at an old revision holds the tail, so
// this log grows with every commit for as long as it stays there: it is kept compact — per
// commit one u64 tid, one u32 start index and one u64 per changed oid, in typed arrays that
// grow by doubling (~20 bytes for a one-object commit, where an object with a Set per commit
// took ~200: bench-scale "a watcher at the start").
//
// Entries have absolute indices: entry i (firstIndex ≤ i < endIndex) is at i − base in the
// arrays. forget() advances firstIndex; the space below it is reclaimed (copyWithin, base
// moves up) once it is both ≥ COMPACT_MIN entries and half of the arrays, so a commit costs
// O(1) amortised, and an index a caller holds stays valid until it is forgotten.
//
// Invariants:
//   Z1 tid(i) strictly ascends with i; oids of entry i = oids[start[i−base] .. start[i−base+1]).
//   Z2 entries with more than SET_MIN oids also have a Set (has() in O(1) for big commits).

import type { Oid, Tid } from '../zodb/ids.js';

const COMPACT_MIN = 4096; // forgotten entries reclaimed at once, at least
const SET_MIN = 16; // Z2

export class ΔZLog {
  private tids = new BigUint64Array(1024);
  /** start[k] = where entry base+k's oids begin in `oids`; start[n] = where the next one will. */
  private starts = new Uint32Array(1025);
  private oids = new BigUint64Array(1024);
  /** Absolute index of array slot 0. */
  private base = 0;
  /** Entries in the arrays (forgotten ones below `first` included). */
  private n = 0;
  /** Absolute index of the first live entry. */
  private first = 0;
  /** Z2: absolute index → its oids, for big entries. */
  private readonly sets = new Map<number, Set<Oid>>();

  /** Absolute index of the first live entry. */
  get firstIndex(): number {
    return this.first;
  }

  /** One past the absolute index of the last entry. */
  get endIndex(): number {
    return this.base + this.n;
  }

  /** Live entries. */
  get length(): number {
    return this.endIndex - this.first;
  }

  /** Add the δZ of a commit after every one in the log (Z1). */
  append(tid: Tid, oids: Iterable<Oid>): void {
    if (this.n > 0 && tid <= this.tids[this.n - 1]!) throw new Error(`ΔZLog: tid ${tid.toString(16)} ≤ last ${this.tids[this.n - 1]!.toString(16)}`);
    const list = [...oids];
    if (this.n + 1 >= this.tids.length) {
      this.tids = grow(this.tids, this.n + 1);
      const s = new Uint32Array(this.tids.length + 1);
      s.set(this.starts.subarray(0, this.n + 1));
      this.starts = s;
    }
    const at = this.starts[this.n]!;
    if (at + list.length > this.oids.length) this.oids = grow(this.oids, at + list.length);
    for (let k = 0; k < list.length; k++) this.oids[at + k] = list[k]!;
    this.tids[this.n] = tid;
    this.starts[this.n + 1] = at + list.length;
    if (list.length > SET_MIN) this.sets.set(this.base + this.n, new Set(list));
    this.n++;
  }

  tid(i: number): Tid {
    this.check(i);
    return this.tids[i - this.base]!;
  }

  /** Whether commit i changed oid. */
  has(i: number, oid: Oid): boolean {
    this.check(i);
    const set = this.sets.get(i);
    if (set !== undefined) return set.has(oid);
    const k = i - this.base;
    for (let j = this.starts[k]!, end = this.starts[k + 1]!; j < end; j++) if (this.oids[j] === oid) return true;
    return false;
  }

  /** Whether commit i changed any of oids. */
  hasAny(i: number, oids: readonly Oid[]): boolean {
    for (const o of oids) if (this.has(i, o)) return true;
    return false;
  }

  /** Forget the entries with tid ≤ rev. */
  forget(rev: Tid): void {
    let i = this.first;
    const end = this.endIndex;
    while (i < end && this.tids[i - this.base]! <= rev) {
      this.sets.delete(i);
      i++;
    }
    this.first = i;
    const drop = this.first - this.base;
    if (drop >= COMPACT_MIN && drop * 2 >= this.n) {
      const from = this.starts[drop]!;
      this.tids.copyWithin(0, drop, this.n);
      this.oids.copyWithin(0, from, this.starts[this.n]!);
      for (let k = drop; k <= this.n; k++) this.starts[k - drop] = this.starts[k]! - from;
      this.n -= drop;
      this.base += drop;
    }
  }

  private check(i: number): void {
    if (i < this.first || i >= this.endIndex) throw new RangeError(`ΔZLog: entry ${i} not in [${this.first}, ${this.endIndex})`);
  }
}

function grow(a: BigUint64Array<ArrayBuffer>, need: number): BigUint64Array<ArrayBuffer> {
  let len = a.length;
  while (len < need + 1) len *= 2;
  const b = new BigUint64Array(len);
  b.set(a);
  return b;
}
