// Writing LO/IO BTrees inside a WriteTxn: insert/replace and delete with the node splits,
// removals and relinks BTrees' C code performs, storing exactly the objects Python would.
//
// Model. One call = one operation, run in three steps:
//   1) load the nodes it needs from the txn (pending states first) into mutable in-memory
//      nodes — one object per oid, so `next`/`firstbucket`/child links that name the same
//      oid share it; links not followed stay the PersistentRef read from the state;
//   2) mutate them exactly as the C functions do (BTreeTemplate.c _BTree_set, BTree_grow,
//      BTree_split, BTree_split_root, BTree_deleteNextBucket; BucketTemplate.c _bucket_set,
//      bucket_split, Bucket_deleteNextBucket), setting `changed` where they call PER_CHANGED;
//   3) flush: store every changed node that has an oid, give an oid to every oid-less node a
//      stored state references (new nodes, or the root's embedded bucket once it must be
//      referenced) and store those too. A tree whose only child is an oid-less bucket is
//      stored in the embedded form ((bucketState,),) — BTree_getstate's rule.
// So a transaction of several calls is committed as Python would commit the same calls with
// `transaction.savepoint()` after each one (a savepoint gives new objects their oids and
// keeps everything it stored). For a one-call transaction that is plain Python; for longer
// ones the differences from savepoint-less Python are: oid numbering, and a node created and
// dropped again inside the transaction is still written (as Python's savepoints do).
//
// Python rules reproduced (with the real sizes maxLeaf = 60, maxInternal = 500 for LO/IO):
//   - a bucket is split when an insert makes it hold more than maxLeaf items; a non-root
//     tree node when it gets more than maxInternal children. The split point is len/2
//     (floor): the left node keeps [0, len/2), the new right node gets the rest (so 61 items
//     → 30 + 31; with maxInternal = 2 a node of 3 children keeps 1). A new bucket is linked
//     in after the old one (new.next = old.next, old.next = new). The parent gets as new
//     separator the new bucket's first key, or for a tree node the separator that stood at
//     the split point.
//   - the root is not split by its parent (it has none): it grows until it has 2·maxInternal
//     children, then moves its children into a new tree node which is split in two, so the
//     root keeps its oid and ends with two children (BTree_split_root).
//   - an empty tree gets one new bucket on its first insert; it stays embedded (no oid) until
//     the tree must reference it, i.e. until the first split.
//   - replacing a value always marks the bucket changed (object values have no "same value"
//     short cut in C); a change to an oid-less bucket marks its tree changed instead.
//   - delete: a bucket or subtree that becomes empty is removed from its parent; the bucket
//     before it in key order gets `next` relinked (found through the left sibling subtree's
//     rightmost path when the removed bucket was the first of its subtree); firstbucket of the
//     ancestors whose first bucket it was is updated. If the deleted key was the separator
//     of the child it was found in (and the child is not empty), the separator becomes the
//     child's new first key. An emptied bucket is still stored (with no items), an emptied
//     tree is stored as None; no rebalancing otherwise.
//
// Calls on one WriteTxn must not overlap (await each): an operation reads the txn's pending
// states at its start and stores at its end.
//
// Invariants after every call (verified by btreeCheck with `strict` in the tests): keys
// ordered and inside keycovs; next chain = in-order bucket sequence; firstbucket = leftmost
// bucket; no empty bucket or empty subtree reachable; embedded form only at the root.

import { BadArgumentError, ObjectFormatError } from '../errors.js';
import type { WriteTxn } from '../db.js';
import { hex16, type Oid } from '../ids.js';
import { PersistentRef, type PyValue } from '../pickle/index.js';
import { DEFAULT_MAX_INTERNAL, DEFAULT_MAX_LEAF, familyKeyRange, familyOf, nodeClass, treeClass, type BTreeFamily, type NodeKind } from './family.js';
import { bucketIndex } from './read.js';
import { decodeBucketState, decodeTreeState, encodeBucketState, encodeEmbeddedTreeState, encodeTreeState } from './state.js';

export interface BTreeWriteOptions {
  /** max_leaf_size: a bucket is split when it holds more items (default 60). ≥ 1. */
  maxLeaf?: number;
  /** max_internal_size: a tree node is split when it has more children (default 500). ≥ 2. */
  maxInternal?: number;
}

// ---- 1) in-memory nodes ----

type Link<T extends WNode> = T | PersistentRef; // PersistentRef = not loaded in this operation

class WBucket {
  readonly kind = 'bucket';
  changed = false;
  constructor(
    public oid: Oid | null,
    public keys: bigint[],
    public values: PyValue[],
    public next: Link<WBucket> | null,
  ) {}
  get len(): number {
    return this.keys.length;
  }
}

class WTree {
  readonly kind = 'tree';
  changed = false;
  constructor(
    public oid: Oid | null,
    /** keys[i] = lower bound of children[i] for i ≥ 1; keys[0] is unused (C's data[0].key). */
    public keys: bigint[],
    public children: Link<WNode>[],
    public firstbucket: Link<WBucket> | null,
  ) {}
  get len(): number {
    return this.children.length;
  }
}

type WNode = WBucket | WTree;

const DELETE = Symbol('delete');
type Value = PyValue | typeof DELETE;

/** _BTree_set result: 0 = size unchanged, 1 = size changed, 2 = size changed and the subtree's
 *  first bucket went away (its predecessor still links to it); ABSENT = delete of a missing key. */
const ABSENT = -1;
type Status = 0 | 1 | 2 | typeof ABSENT;

class Operation {
  family: BTreeFamily | undefined;
  /** Nodes with an oid loaded in this operation. */
  private readonly byOid = new Map<Oid, WNode>();
  readonly maxLeaf: number;
  readonly maxInternal: number;

  constructor(
    readonly txn: WriteTxn,
    readonly root: Oid,
    opts: BTreeWriteOptions,
  ) {
    this.maxLeaf = opts.maxLeaf ?? DEFAULT_MAX_LEAF;
    this.maxInternal = opts.maxInternal ?? DEFAULT_MAX_INTERNAL;
    if (!Number.isInteger(this.maxLeaf) || this.maxLeaf < 1) throw new BadArgumentError(`btree: maxLeaf ${this.maxLeaf}: want an integer ≥ 1`);
    // C's BTree_split_root recurses without end for max_internal_size = 1
    if (!Number.isInteger(this.maxInternal) || this.maxInternal < 2) throw new BadArgumentError(`btree: maxInternal ${this.maxInternal}: want an integer ≥ 2`);
  }

  async load(oid: Oid, kind: NodeKind | undefined): Promise<WNode> {
    const have = this.byOid.get(oid);
    if (have !== undefined) {
      if (kind !== undefined && have.kind !== kind) throw new ObjectFormatError(oid, `btree ${hex16(this.root)}: expect a ${kind}, the node is a ${have.kind}`);
      return have;
    }
    const obj = await this.txn.loadObject(oid);
    const fk = familyOf(obj.klass);
    if (fk === undefined || (this.family !== undefined && fk.family !== this.family) || (kind !== undefined && fk.kind !== kind)) {
      const want = this.family !== undefined && kind !== undefined ? `${nodeClass(this.family, kind)}` : 'an LOBTree or IOBTree';
      throw new ObjectFormatError(oid, `btree ${hex16(this.root)}: expect ${want}, got class ${obj.klass}`);
    }
    this.family ??= fk.family;
    let n: WNode;
    if (fk.kind === 'bucket') {
      const b = decodeBucketState(oid, fk.family, obj.state);
      n = new WBucket(oid, [...b.keys], [...b.values], b.next);
    } else {
      const t = decodeTreeState(oid, fk.family, obj.state);
      if (t.form === 'empty') n = new WTree(oid, [], [], null);
      else if (t.form === 'embedded') {
        const b = new WBucket(null, [...t.bucket.keys], [...t.bucket.values], null);
        n = new WTree(oid, [0n], [b], b);
      } else n = new WTree(oid, [0n, ...t.keys], [...t.children], t.firstbucket);
    }
    this.byOid.set(oid, n);
    return n;
  }

  private async resolve<T extends WNode>(link: Link<T>, kind?: NodeKind): Promise<T> {
    if (!(link instanceof PersistentRef)) return link;
    const refKind = link.klass !== null ? familyOf(link.klass)?.kind : undefined;
    return (await this.load(link.oid, refKind ?? kind)) as T;
  }

  /** Child i of t, loaded (PER_USE). */
  async child(t: WTree, i: number): Promise<WNode> {
    const c = await this.resolve(t.children[i]!);
    t.children[i] = c;
    return c;
  }

  async firstbucketOf(t: WTree): Promise<WBucket> {
    if (t.firstbucket === null) throw new ObjectFormatError(t.oid ?? this.root, 'non-empty tree without firstbucket');
    const b = await this.resolve(t.firstbucket, 'bucket');
    t.firstbucket = b;
    return b;
  }

  // ---- 2) the C algorithms ----

  /** _BTree_set: set (value) or delete (DELETE) key in the subtree self. */
  async treeSet(self: WTree, key: bigint, value: Value): Promise<Status> {
    let changed = false;
    if (self.len === 0) {
      if (value === DELETE) return ABSENT;
      await this.grow(self, 0); // adds an empty bucket, filled just below
    }

    const min = treeIndex(self.keys, key);
    const child = await this.child(self, min);
    let status: Status;
    if (child.kind === 'tree') status = await this.treeSet(child, key, value);
    else {
      status = bucketSet(child, key, value);
      // an oid-less bucket is saved inside its tree's state: the tree is what changed
      if (status !== ABSENT && self.len === 1 && child.oid === null) changed = true;
    }
    if (status === ABSENT) return ABSENT;
    if (status === 0) return this.done(self, changed, status);

    const childLen = child.len;
    if (value !== DELETE) {
      const max = child.kind === 'tree' ? this.maxInternal : this.maxLeaf;
      if (childLen > max) {
        await this.grow(self, min);
        changed = true;
      }
      return this.done(self, changed, status);
    }

    // deletion: the child got smaller
    if (min > 0 && childLen > 0 && key === self.keys[min]) {
      // the separator was the deleted key: move it up to the child's new first key
      const first = child.kind === 'tree' ? await this.firstbucketOf(child) : child;
      self.keys[min] = first.keys[0]!;
      self.changed = true;
    }

    if (status === 2) {
      // the child (a tree) lost its first bucket
      if (min > 0) {
        await this.treeDeleteNextBucket((await this.child(self, min - 1)) as WTree);
        status = 1;
      } else {
        self.firstbucket = (child as WTree).firstbucket;
        changed = true;
      }
    }

    if (childLen > 0) return this.done(self, changed, status);

    // the child is empty: remove it
    if (child.kind === 'bucket') {
      if (min > 0) {
        const prev = (await this.child(self, min - 1)) as WBucket;
        bucketDeleteNext(prev, await this.nextOf(prev)); // prev.next is child
      } else {
        self.firstbucket = child.next;
        status = 2;
      }
    }
    self.children.splice(min, 1);
    self.keys.splice(min, 1);
    if (self.keys.length > 0) self.keys[0] = 0n;
    changed = true;
    return this.done(self, changed, status);
  }

  private done(self: WTree, changed: boolean, status: Status): Status {
    if (changed) self.changed = true;
    return status;
  }

  /** BTree_grow: split child `index` of self (or give an empty self its first bucket). */
  async grow(self: WTree, index: number): Promise<void> {
    if (self.len === 0) {
      const b = new WBucket(null, [], [], null);
      self.children = [b];
      self.keys = [0n];
      self.firstbucket = b;
      return;
    }
    const v = await this.child(self, index);
    let e: WNode;
    let sep: bigint;
    if (v.kind === 'tree') {
      e = await this.treeSplit(v);
      sep = e.keys[0]!; // the separator at the split point, now unused slot 0 of e
      e.keys[0] = 0n;
    } else {
      e = bucketSplit(v);
      sep = e.keys[0]!;
    }
    self.children.splice(index + 1, 0, e);
    self.keys.splice(index + 1, 0, sep);
    if (self.len >= this.maxInternal * 2) await this.splitRoot(self);
  }

  /** BTree_split: move children [len/2, len) of v into a new tree node. */
  private async treeSplit(v: WTree): Promise<WTree> {
    const at = v.len >> 1;
    const e = new WTree(null, v.keys.splice(at), v.children.splice(at), null);
    const c0 = await this.child(e, 0);
    e.firstbucket = c0.kind === 'tree' ? c0.firstbucket : c0;
    v.changed = true;
    return e;
  }

  /** BTree_split_root: push self's children down into a new node and split that, so self
   *  keeps its identity and ends with two children. */
  private async splitRoot(self: WTree): Promise<void> {
    const c = new WTree(null, self.keys, self.children, self.firstbucket);
    self.children = [c];
    self.keys = [0n];
    await this.grow(self, 0);
  }

  /** Rightmost bucket of a subtree (BTree_lastBucket). */
  private async lastBucket(t: WTree): Promise<WBucket> {
    for (let depth = 0; ; depth++) {
      if (t.len === 0 || depth > 64) throw new ObjectFormatError(t.oid ?? this.root, 'btree: no last bucket in an empty subtree');
      const c = await this.child(t, t.len - 1);
      if (c.kind === 'bucket') return c;
      t = c;
    }
  }

  /** BTree_deleteNextBucket: unlink the bucket after t's last bucket. */
  private async treeDeleteNextBucket(t: WTree): Promise<void> {
    const b = await this.lastBucket(t);
    bucketDeleteNext(b, await this.nextOf(b));
  }

  async nextOf(b: WBucket): Promise<WBucket | null> {
    if (b.next === null) return null;
    const n = await this.resolve(b.next, 'bucket');
    b.next = n;
    return n;
  }

  // ---- 3) flush ----

  flush(): void {
    const family = this.family!;
    const queue: WNode[] = [];
    const queued = new Set<WNode>();
    const enqueue = (n: WNode) => {
      if (!queued.has(n)) {
        queued.add(n);
        queue.push(n);
      }
    };
    for (const n of this.byOid.values()) if (n.changed) enqueue(n);

    const ref = (link: Link<WNode>): PersistentRef => {
      if (link instanceof PersistentRef) return link;
      if (link.oid === null) {
        link.oid = this.txn.newOid();
        enqueue(link);
      }
      return new PersistentRef(link.oid, nodeClass(family, link.kind));
    };

    for (let i = 0; i < queue.length; i++) {
      const n = queue[i]!;
      let state: PyValue;
      if (n.kind === 'bucket') state = encodeBucketState(n, n.next === null ? null : ref(n.next));
      else if (n.len === 0) state = null;
      else {
        const c0 = n.children[0]!;
        if (n.len === 1 && !(c0 instanceof PersistentRef) && c0.kind === 'bucket' && c0.oid === null) state = encodeEmbeddedTreeState(c0);
        else {
          if (n.firstbucket === null) throw new ObjectFormatError(n.oid ?? this.root, 'btree: non-empty tree without firstbucket');
          state = encodeTreeState(n.children.map(ref), n.keys.slice(1), ref(n.firstbucket));
        }
      }
      this.txn.store(n.oid!, nodeClass(family, n.kind), state);
    }
  }
}

/** BTREE_SEARCH: largest i with i = 0 or keys[i] ≤ key (keys[0] unused). */
function treeIndex(keys: readonly bigint[], key: bigint): number {
  let lo = 0;
  let hi = keys.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (keys[mid]! <= key) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** _bucket_set (unique = 0). */
function bucketSet(b: WBucket, key: bigint, value: Value): Status {
  const i = bucketIndex(b.keys, key);
  const found = i < b.keys.length && b.keys[i] === key;
  if (value === DELETE) {
    if (!found) return ABSENT;
    b.keys.splice(i, 1);
    b.values.splice(i, 1);
    b.changed = true;
    return 1;
  }
  b.changed = true;
  if (found) {
    b.values[i] = value;
    return 0;
  }
  b.keys.splice(i, 0, key);
  b.values.splice(i, 0, value);
  return 1;
}

/** bucket_split at len/2: the new bucket takes the upper half and is linked in after v. */
function bucketSplit(v: WBucket): WBucket {
  const at = v.len >> 1;
  const e = new WBucket(null, v.keys.splice(at), v.values.splice(at), v.next);
  v.next = e;
  v.changed = true;
  return e;
}

/** Bucket_deleteNextBucket: b.next = b.next.next (`succ` = b.next, loaded). */
function bucketDeleteNext(b: WBucket, succ: WBucket | null): void {
  if (succ === null) return;
  b.next = succ.next;
  b.changed = true;
}

// ---- API ----

function checkKey(op: Operation, key: bigint): void {
  const r = familyKeyRange(op.family!);
  if (typeof key !== 'bigint' || key < r.min || key > r.max) {
    throw new BadArgumentError(`btree ${hex16(op.root)}: key ${key} out of the ${op.family} key range`);
  }
}

/** New empty tree (state None), stored in txn. */
export function btreeCreate(txn: WriteTxn, family: BTreeFamily): Oid {
  const oid = txn.newOid();
  txn.store(oid, treeClass(family), null);
  return oid;
}

/** tree[key] = value. `root` must be a tree object readable in txn. */
export async function btreeSet(txn: WriteTxn, root: Oid, key: bigint, value: PyValue, opts: BTreeWriteOptions = {}): Promise<void> {
  const op = new Operation(txn, root, opts);
  const t = (await op.load(root, 'tree')) as WTree;
  checkKey(op, key);
  await op.treeSet(t, key, value);
  op.flush();
}

/** del tree[key]; false (and nothing stored) when the key is absent. */
export async function btreeDelete(txn: WriteTxn, root: Oid, key: bigint, opts: BTreeWriteOptions = {}): Promise<boolean> {
  const op = new Operation(txn, root, opts);
  const t = (await op.load(root, 'tree')) as WTree;
  checkKey(op, key);
  if ((await op.treeSet(t, key, DELETE)) === ABSENT) return false;
  op.flush();
  return true;
}
