// Decoded BTree nodes by (oid, serial), shared by every revision and every tree read through
// one StorageLoader (issue 11: a warm lookup re-decoded every node on its path, ~0.23 µs per
// child entry).
//
// Owns: the map (oid, serial) → LoadedNode, for each entry the revisions it is known to be
// current at, and the LRU order. Loading records and every path-dependent check stay in
// read.ts.
//
// Invariants:
//   - a committed record never changes, so an entry is right for every revision whose load
//     returns that serial: correct by construction, no invalidation. Only decodes of committed
//     records go in — a WriteTxn is not a StorageLoader and has no cache, so pending
//     (uncommitted) states never reach it.
//   - known range: a load as of `at` that returned serial S means the oid has no revision in
//     (S, at] — a fact about committed history that never changes. So each entry keeps
//     knownTo = the largest such `at` seen, capped at the storage's head read before the load
//     (a load beyond the head says nothing about txns not committed yet), and a lookup as of
//     any at in [S, knownTo] is answered with no load at all (find). Below a pack boundary
//     that answer is the right record where a load might fail (IStorage.packedTo allows both).
//   - what is cached is only what is independent of the path that led to the node: the
//     decoded state with state.ts's checks passed, its family and kind (from the record's own
//     class). Keycov and expected-class checks depend on the parent and run on every use.
//   - entries are shared: the node, its state and its key/value/child arrays are frozen; a
//     user that needs to mutate (btree/write.ts) decodes its own copy through WriteTxn.
//   - bound: the sum of the entries' approximate sizes (approxNodeBytes) stays ≤ maxBytes
//     after every put; least recently used entries go first. A node bigger than the bound
//     is not cached. maxBytes = 0 disables caching.

import type { Oid, Tid } from '../ids.js';
import { ByteStr, PersistentRef, type PyValue } from '../pickle/index.js';
import type { LoadedNode } from './read.js';
import type { BucketState } from './state.js';

/** Default bound of a StorageLoader's node cache. */
export const DEFAULT_NODE_CACHE_BYTES = 64 * 1024 * 1024;

interface Entry {
  oid: Oid;
  serial: Tid;
  /** The oid has no revision in (serial, knownTo]. */
  knownTo: Tid;
  node: LoadedNode;
  bytes: number;
  /** LRU list: prev = more recently used. */
  prev: Entry | null;
  next: Entry | null;
}

export interface NodeCacheStats {
  entries: number;
  bytes: number;
  maxBytes: number;
  /** find() answered: no load, no decode. */
  hits: number;
  /** get() answered after a load told the serial: no decode. */
  serialHits: number;
  /** get() missed: the caller decodes (and puts). */
  misses: number;
  evictions: number;
}

// Rough V8 sizes (heap growth measured over a cached 20k-item LOBTree: ~230 B per item): a
// bigint key ~24 B + its array slot; a PersistentRef with its oid and class ~190 B.
const NODE_BASE = 160;
const KEY_BYTES = 32;
const REF_BYTES = 190;

function valueBytes(v: PyValue): number {
  if (v instanceof PersistentRef) return REF_BYTES;
  if (typeof v === 'bigint') return 24;
  if (v instanceof Uint8Array) return 96 + v.length;
  if (v instanceof ByteStr) return 128 + v.bytes.length;
  return 64;
}

function bucketBytes(b: BucketState): number {
  let n = b.keys.length * KEY_BYTES;
  for (const v of b.values) n += 8 + valueBytes(v);
  return n;
}

/** Approximate memory held by a decoded node (what the cache bound counts). */
export function approxNodeBytes(n: LoadedNode): number {
  if (n.kind === 'bucket') return NODE_BASE + bucketBytes(n.bucket);
  const t = n.tree;
  if (t.form === 'empty') return NODE_BASE;
  if (t.form === 'embedded') return NODE_BASE + bucketBytes(t.bucket);
  return NODE_BASE + t.keys.length * KEY_BYTES + t.children.length * (8 + REF_BYTES);
}

function freezeNode(n: LoadedNode): LoadedNode {
  const freezeBucket = (b: BucketState) => {
    Object.freeze(b.keys);
    Object.freeze(b.values);
    Object.freeze(b);
  };
  if (n.kind === 'bucket') freezeBucket(n.bucket);
  else {
    const t = n.tree;
    if (t.form === 'embedded') freezeBucket(t.bucket);
    else if (t.form === 'normal') {
      Object.freeze(t.keys);
      Object.freeze(t.children);
    }
    Object.freeze(t);
  }
  return Object.freeze(n);
}

/** LRU cache of decoded BTree nodes keyed by (oid, serial), bounded by approximate bytes. */
export class NodeCache {
  /** Per oid its cached serials, ascending (binary search: a hot root has thousands). */
  private readonly byOid = new Map<Oid, Entry[]>();
  private mru: Entry | null = null; // most recently used
  private lru: Entry | null = null; // least recently used
  private bytes_ = 0;
  private count = 0;
  private hits = 0;
  private serialHits = 0;
  private misses = 0;
  private evictions = 0;

  /**
   * `head`: the storage's last committed tid (IStorage.head), read by loadNode before each
   * load to cap the known range; without it a node is known current only at its own serial.
   */
  constructor(
    readonly maxBytes: number = DEFAULT_NODE_CACHE_BYTES,
    readonly head: () => Tid = () => 0n,
  ) {
    if (!(maxBytes >= 0)) throw new RangeError(`NodeCache: maxBytes ${maxBytes}: want ≥ 0`);
  }

  /** The node current as of `at` if that is known without a load (see knownTo), marked used. */
  find(oid: Oid, at: Tid): LoadedNode | undefined {
    const es = this.byOid.get(oid);
    if (es === undefined) return undefined;
    // the newest cached serial ≤ at is the only one that can cover at: an older entry known
    // current up to at would contradict that newer record (known ranges never overlap)
    const i = upperBound(es, at) - 1;
    if (i < 0) return undefined;
    const e = es[i]!;
    if (at > e.knownTo) return undefined;
    this.hits++;
    this.touch(e);
    return e.node;
  }

  /**
   * The node decoded from oid's record with this serial, if cached (and mark it used). A load
   * as of some at returned that serial: `knownTo` = min(at, head before the load) extends the
   * entry's known range.
   */
  get(oid: Oid, serial: Tid, knownTo: Tid = serial): LoadedNode | undefined {
    const es = this.byOid.get(oid);
    const i = es === undefined ? -1 : upperBound(es, serial) - 1;
    if (i >= 0 && es![i]!.serial === serial) {
      const e = es![i]!;
      this.serialHits++;
      if (knownTo > e.knownTo) e.knownTo = knownTo;
      this.touch(e);
      return e.node;
    }
    this.misses++;
    return undefined;
  }

  /**
   * Cache a node decoded from a committed record (node.oid, node.serial), current from its
   * serial up to at least `knownTo` (as for get); freezes it. Returns the node (frozen even when
   * it is too big to be kept).
   */
  put(node: LoadedNode, knownTo: Tid = node.serial): LoadedNode {
    freezeNode(node);
    const bytes = approxNodeBytes(node);
    if (bytes > this.maxBytes) return node;
    let es = this.byOid.get(node.oid);
    if (es === undefined) this.byOid.set(node.oid, (es = []));
    const i = upperBound(es, node.serial); // insert before i (usually the end: serials grow)
    if (i > 0 && es[i - 1]!.serial === node.serial) {
      const e = es[i - 1]!;
      if (knownTo > e.knownTo) e.knownTo = knownTo;
      return e.node;
    }
    const e: Entry = {
      oid: node.oid,
      serial: node.serial,
      knownTo: knownTo > node.serial ? knownTo : node.serial,
      node,
      bytes,
      prev: null,
      next: null,
    };
    if (i === es.length) es.push(e);
    else es.splice(i, 0, e);
    this.pushFront(e);
    this.bytes_ += bytes;
    this.count++;
    while (this.bytes_ > this.maxBytes) this.evict(this.lru!);
    return node;
  }

  stats(): NodeCacheStats {
    return {
      entries: this.count,
      bytes: this.bytes_,
      maxBytes: this.maxBytes,
      hits: this.hits,
      serialHits: this.serialHits,
      misses: this.misses,
      evictions: this.evictions,
    };
  }

  clear(): void {
    this.byOid.clear();
    this.mru = this.lru = null;
    this.bytes_ = 0;
    this.count = 0;
  }

  private touch(e: Entry): void {
    if (e !== this.mru) {
      this.unlink(e);
      this.pushFront(e);
    }
  }

  private evict(e: Entry): void {
    this.unlink(e);
    const es = this.byOid.get(e.oid)!;
    if (es.length === 1) this.byOid.delete(e.oid);
    else es.splice(upperBound(es, e.serial) - 1, 1);
    this.bytes_ -= e.bytes;
    this.count--;
    this.evictions++;
  }

  private unlink(e: Entry): void {
    if (e.prev !== null) e.prev.next = e.next;
    else this.mru = e.next;
    if (e.next !== null) e.next.prev = e.prev;
    else this.lru = e.prev;
    e.prev = e.next = null;
  }

  private pushFront(e: Entry): void {
    e.next = this.mru;
    e.prev = null;
    if (this.mru !== null) this.mru.prev = e;
    this.mru = e;
    if (this.lru === null) this.lru = e;
  }
}

/** Index of the first entry with serial > t (es ascending by serial). */
function upperBound(es: readonly Entry[], t: Tid): number {
  let lo = 0;
  let hi = es.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (es[mid]!.serial <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
