// Reading LO/IO BTrees as of a revision: point lookup and max-key descent that record the path
// they walked (what ΔBtail tracks, deltatail.md §1.5, §2), and ascending range iteration.
//
// Invariants checked on every node visited (on top of what state.ts checks):
//   - the object's class is a node of the root's family, of the kind its parent's reference
//     (or, for the root, the API) says;
//   - separators of a tree with keycov [lo, hi] satisfy lo ≤ k1 < … < kN-1 ≤ hi
//     (BTrees.check: lo inclusive, parent's next separator exclusive);
//   - bucket keys lie in the bucket's keycov.
// Child i of a tree with keycov [lo, hi] and separators k1…kN-1 has keycov
//   [i = 0 ? lo : k_i,  i = N-1 ? hi : k_{i+1} − 1]          (deltatail.md §1.4)
// so keycovs of siblings tile the parent's keycov. An embedded bucket has its tree's keycov, no
// oid (PathNode.oid = null) and its tree's serial.
//
// Lookups follow separators only, never `next`/`firstbucket` — those are redundant for reading
// and are verified by btreeCheck (check.ts).
//
// Decoding. loadNode owns turning a record into a LoadedNode. Through a loader with a node
// cache (StorageLoader: committed records only; cache.ts) a node already known to be current
// as of `at` is used with no load at all; otherwise it loads the raw record as of `at` — that
// is what tells the serial — and decodes only when (oid, serial) is not cached. A cached node
// is shared and frozen, so nothing here (or in check.ts, zbigfile.ts, deltatail) may
// mutate a state it gets. What the cache keeps is path-independent (state.ts's checks and the
// record's own family/kind); the checks above depend on the parent and run on every visit
// (O(1) each: class vs expected, first/last key vs keycov). Through any other loader (WriteTxn,
// whose pending states must never be cached) every visit decodes.

import { BadArgumentError, ObjectFormatError } from '../errors.js';
import { decodeLoaded, type LoadedObject, type ObjectLoader } from '../db.js';
import { hex16, type Oid, type Tid } from '../ids.js';
import type { Global, PyValue } from '../pickle/index.js';
import { KEY_MAX, KEY_MIN, familyOf, nodeClass, type BTreeFamily, type NodeKind } from './family.js';
import { decodeBucketState, decodeTreeState, type BucketState, type TreeState } from './state.js';

/** A node visited on the way down, root first. oid null = embedded bucket (no oid of its own). */
export interface PathNode {
  oid: Oid | null;
  kind: NodeKind;
  /** Serial of the loaded node; for an embedded bucket, its tree's serial. */
  serial: Tid;
  /** keycov, closed [lo, hi]. */
  lo: bigint;
  hi: bigint;
}

/** A tree nested deeper than this is taken as a reference cycle. */
export const MAX_DEPTH = 64;

export type LoadedNode =
  | { kind: 'tree'; oid: Oid; serial: Tid; family: BTreeFamily; tree: TreeState }
  | { kind: 'bucket'; oid: Oid; serial: Tid; family: BTreeFamily; bucket: BucketState };

/**
 * Load and decode one node. `expect.family`/`expect.kind` (when given) must match the loaded
 * class: they come from the parent (family of the root, kind told by the child reference).
 *
 * With a node cache (a StorageLoader's, committed records only) a node known current as of
 * `at` comes without a load; otherwise the record is loaded as of `at` — that is what tells
 * the serial — and decoded only on a miss; the node returned is shared and frozen (cache.ts).
 * Without one (WriteTxn, bare ObjectLoaders) every call decodes.
 */
export async function loadNode(loader: ObjectLoader, oid: Oid, at: Tid, expect: { family?: BTreeFamily; kind?: NodeKind } = {}): Promise<LoadedNode> {
  const cache = loader.nodeCache;
  const lt = loader.loadRecordTransient;
  if (cache === undefined || (lt === undefined && loader.loadRecord === undefined)) {
    return decodeNode(oid, await loader.loadObject(oid, at), expect);
  }
  let n = cache.find(oid, at);
  if (n === undefined) {
    // what this load will tell: no revision in (serial, min(at, head)]
    const h = cache.head();
    const known = at < h ? at : h;
    if (lt !== undefined) {
      // synchronous and allocation-free when cached; a miss decodes a private copy of the
      // bytes (the transient view is reused by the next load, the cached node outlives it)
      const rec = lt(oid, at);
      n = cache.get(oid, rec.serial, known) ?? cache.put(decodeNode(oid, decodeLoaded(oid, { ...rec, data: rec.data.slice() }), expect), known);
    } else {
      const rec = await loader.loadRecord!(oid, at);
      n = cache.get(oid, rec.serial, known) ?? cache.put(decodeNode(oid, decodeLoaded(oid, rec), expect), known);
    }
  }
  checkExpect(oid, n, expect);
  return n;
}

/**
 * loadNode's answer when the loader's cache knows the node current as of `at` (no load, no
 * await: warm lookups stay synchronous), else undefined.
 */
function knownNode(loader: ObjectLoader, oid: Oid, at: Tid, expect: { family?: BTreeFamily; kind?: NodeKind }): LoadedNode | undefined {
  const n = loader.nodeCache?.find(oid, at);
  if (n !== undefined) checkExpect(oid, n, expect);
  return n;
}

function checkExpect(oid: Oid, n: LoadedNode, expect: { family?: BTreeFamily; kind?: NodeKind }): void {
  if ((expect.family !== undefined && n.family !== expect.family) || (expect.kind !== undefined && n.kind !== expect.kind)) {
    throw badClass(oid, expect, nodeClass(n.family, n.kind));
  }
}

function badClass(oid: Oid, expect: { family?: BTreeFamily; kind?: NodeKind }, klass: Global): ObjectFormatError {
  const want =
    expect.family !== undefined && expect.kind !== undefined
      ? `${nodeClass(expect.family, expect.kind)}`
      : expect.family !== undefined
        ? `an ${expect.family} tree node`
        : expect.kind === 'tree'
          ? 'an LOBTree or IOBTree'
          : 'an LO/IO BTree node';
  return new ObjectFormatError(oid, `expect ${want}, got class ${klass}`);
}

/** Decode a loaded object as a node, checking its class against `expect`. */
function decodeNode(oid: Oid, obj: LoadedObject, expect: { family?: BTreeFamily; kind?: NodeKind }): LoadedNode {
  const fk = familyOf(obj.klass);
  if (fk === undefined || (expect.family !== undefined && fk.family !== expect.family) || (expect.kind !== undefined && fk.kind !== expect.kind)) {
    throw badClass(oid, expect, obj.klass);
  }
  if (fk.kind === 'tree') {
    return { kind: 'tree', oid, serial: obj.serial, family: fk.family, tree: decodeTreeState(oid, fk.family, obj.state) };
  }
  return { kind: 'bucket', oid, serial: obj.serial, family: fk.family, bucket: decodeBucketState(oid, fk.family, obj.state) };
}

/** Index of the child of a normal tree that covers `key` (BTREE_SEARCH: largest i with k_i ≤ key). */
export function childIndex(seps: readonly bigint[], key: bigint): number {
  // seps[j] is the lower bound of child j+1
  let lo = 0;
  let hi = seps.length; // answer in [0, seps.length]
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (seps[mid - 1]! <= key) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** keycov of child i of a tree with keycov [lo, hi] and separators `seps`. */
export function childCov(seps: readonly bigint[], i: number, lo: bigint, hi: bigint): [bigint, bigint] {
  return [i === 0 ? lo : seps[i - 1]!, i === seps.length ? hi : seps[i]! - 1n];
}

/** Position of `key` in sorted `keys` (first index with keys[i] ≥ key). */
export function bucketIndex(keys: readonly bigint[], key: bigint): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (keys[mid]! < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export function checkSeparatorsCov(oid: Oid, seps: readonly bigint[], lo: bigint, hi: bigint): void {
  if (seps.length === 0) return;
  const first = seps[0]!;
  const last = seps[seps.length - 1]!;
  if (first < lo || last > hi) {
    throw new ObjectFormatError(oid, `separators ${first}…${last} outside the node's keycov [${lo}, ${hi}]`);
  }
}

export function checkBucketCov(oid: Oid, embedded: boolean, keys: readonly bigint[], lo: bigint, hi: bigint): void {
  if (keys.length === 0) return;
  const first = keys[0]!;
  const last = keys[keys.length - 1]!;
  if (first < lo || last > hi) {
    throw new ObjectFormatError(oid, `${embedded ? 'embedded bucket: ' : ''}keys ${first}…${last} outside the bucket's keycov [${lo}, ${hi}]`);
  }
}

function checkKeyArg(key: bigint, root: Oid, op: string): void {
  if (typeof key !== 'bigint' || key < KEY_MIN || key > KEY_MAX) throw new BadArgumentError(`btree ${hex16(root)}: ${op}: key ${key} is not an int64`);
}

function tooDeep(oid: Oid): ObjectFormatError {
  return new ObjectFormatError(oid, `tree deeper than ${MAX_DEPTH} levels (reference cycle?)`);
}

/** Child reference → expected kind (reference's class, else what the siblings' classes say). */
function childExpect(t: Extract<TreeState, { form: 'normal' }>, i: number, family: BTreeFamily): { family: BTreeFamily; kind?: NodeKind } {
  const k = t.children[i]!.klass;
  const kind = k !== null ? familyOf(k)?.kind : t.childKind;
  return kind === undefined ? { family } : { family, kind };
}

/**
 * Look `key` up in the tree `root` as of `at`. The path runs from the root to the bucket whose
 * keycov contains `key` (or to an empty tree); it is recorded whether or not the key is present.
 */
export async function btreeGet(loader: ObjectLoader, root: Oid, key: bigint, at: Tid): Promise<{ value: PyValue | undefined; path: PathNode[] }> {
  checkKeyArg(key, root, 'get');
  const path: PathNode[] = [];
  let lo = KEY_MIN;
  let hi = KEY_MAX;
  let oid = root;
  let expect: { family?: BTreeFamily; kind?: NodeKind } = { kind: 'tree' };
  for (let depth = 0; ; depth++) {
    if (depth > MAX_DEPTH) throw tooDeep(root);
    const n = knownNode(loader, oid, at, expect) ?? (await loadNode(loader, oid, at, expect));
    path.push({ oid, kind: n.kind, serial: n.serial, lo, hi });
    let b: BucketState;
    if (n.kind === 'bucket') {
      b = n.bucket;
      checkBucketCov(oid, false, b.keys, lo, hi);
    } else {
      const t = n.tree;
      if (t.form === 'empty') return { value: undefined, path };
      if (t.form === 'normal') {
        checkSeparatorsCov(oid, t.keys, lo, hi);
        const i = childIndex(t.keys, key);
        [lo, hi] = childCov(t.keys, i, lo, hi);
        expect = childExpect(t, i, n.family);
        oid = t.children[i]!.oid;
        continue;
      }
      b = t.bucket;
      checkBucketCov(oid, true, b.keys, lo, hi);
      path.push({ oid: null, kind: 'bucket', serial: n.serial, lo, hi });
    }
    const i = bucketIndex(b.keys, key);
    return { value: i < b.keys.length && b.keys[i] === key ? b.values[i] : undefined, path };
  }
}

/**
 * Largest key of the tree as of `at` (undefined when empty), with the path to the bucket
 * holding it. For trees BTrees writes (no empty buckets or subtrees) that is the rightmost
 * path; if the rightmost leaf is empty (hand-built degenerate trees) the descent backs up to
 * the nearest non-empty leaf on the left. For an empty tree the path is [root].
 */
export async function btreeMaxKey(loader: ObjectLoader, root: Oid, at: Tid): Promise<{ key: bigint | undefined; path: PathNode[] }> {
  const path: PathNode[] = [];
  let firstChain: PathNode[] | undefined; // the rightmost chain, reported when nothing is found

  const visit = async (oid: Oid, lo: bigint, hi: bigint, expect: { family?: BTreeFamily; kind?: NodeKind }, depth: number): Promise<bigint | undefined> => {
    if (depth > MAX_DEPTH) throw tooDeep(root);
    const n = knownNode(loader, oid, at, expect) ?? (await loadNode(loader, oid, at, expect));
    path.push({ oid, kind: n.kind, serial: n.serial, lo, hi });
    let keys: readonly bigint[] | undefined;
    if (n.kind === 'bucket') {
      keys = n.bucket.keys;
      checkBucketCov(oid, false, keys, lo, hi);
    } else if (n.tree.form === 'embedded') {
      keys = n.tree.bucket.keys;
      checkBucketCov(oid, true, keys, lo, hi);
      path.push({ oid: null, kind: 'bucket', serial: n.serial, lo, hi });
    } else if (n.tree.form === 'normal') {
      const t = n.tree;
      checkSeparatorsCov(oid, t.keys, lo, hi);
      for (let i = t.children.length - 1; i >= 0; i--) {
        const [clo, chi] = childCov(t.keys, i, lo, hi);
        const k = await visit(t.children[i]!.oid, clo, chi, childExpect(t, i, n.family), depth + 1);
        if (k !== undefined) return k;
      }
      path.pop();
      return undefined;
    }
    // leaf: bucket, embedded bucket or empty tree
    firstChain ??= [...path];
    if (keys !== undefined && keys.length > 0) return keys[keys.length - 1];
    if (n.kind === 'tree' && n.tree.form === 'embedded') path.pop();
    path.pop();
    return undefined;
  };

  const key = await visit(root, KEY_MIN, KEY_MAX, { kind: 'tree' }, 0);
  return key !== undefined ? { key, path } : { key: undefined, path: firstChain ?? [] };
}

/**
 * Items with lo ≤ key ≤ hi in ascending key order, as of `at`. Walks the tree (not the
 * `next` chain), loading only subtrees whose keycov meets [lo, hi].
 */
export async function* btreeItems(loader: ObjectLoader, root: Oid, at: Tid, lo: bigint = KEY_MIN, hi: bigint = KEY_MAX): AsyncGenerator<[bigint, PyValue]> {
  if (lo > hi) return;
  const stack = [rangeRoot(root)];
  for (let p = stack.pop(); p !== undefined; p = stack.pop()) {
    const items: Array<[bigint, PyValue]> = [];
    rangeStep(root, p, knownNode(loader, p.oid, at, p.expect) ?? (await loadNode(loader, p.oid, at, p.expect)), lo, hi, stack, pushTo(items));
    yield* items;
  }
}

/**
 * A range walk's view of one bucket: its items i0 ≤ i < i1 are in range (i0 < i1), in key
 * order. keys and values are the decoded node's own, shared and read-only: copy what is kept.
 */
export type RangeVisit = (keys: readonly bigint[], values: readonly PyValue[], i0: number, i1: number) => void;

/**
 * The items with lo ≤ key ≤ hi, ascending, bucket by bucket to `visit` — no tuple per item
 * (a ZBlk1's 512 chunks: notes.md §8 "ZBlk1"). Awaits only for nodes not in the
 * decoded-node cache: a cached walk (a ZBlk1's chunktab, read again) runs without a microtask
 * hop (was a nested async generator per level: ~40% of a cached chunktab walk).
 */
export async function btreeRangeEach(loader: ObjectLoader, root: Oid, at: Tid, visit: RangeVisit, lo: bigint = KEY_MIN, hi: bigint = KEY_MAX): Promise<void> {
  if (lo > hi) return;
  const stack = [rangeRoot(root)];
  for (let p = stack.pop(); p !== undefined; p = stack.pop()) {
    rangeStep(root, p, knownNode(loader, p.oid, at, p.expect) ?? (await loadNode(loader, p.oid, at, p.expect)), lo, hi, stack, visit);
  }
}

/** All items with lo ≤ key ≤ hi, ascending, as one array (btreeRangeEach). */
export async function btreeRange(loader: ObjectLoader, root: Oid, at: Tid, lo: bigint = KEY_MIN, hi: bigint = KEY_MAX): Promise<Array<[bigint, PyValue]>> {
  const out: Array<[bigint, PyValue]> = [];
  await btreeRangeEach(loader, root, at, pushTo(out), lo, hi);
  return out;
}

function pushTo(out: Array<[bigint, PyValue]>): RangeVisit {
  return (keys, values, i0, i1) => {
    for (let i = i0; i < i1; i++) out.push([keys[i]!, values[i]!]);
  };
}

/** A subtree a range walk has still to visit: its root oid, keycov [clo, chi], expectations. */
interface RangeTodo {
  oid: Oid;
  clo: bigint;
  chi: bigint;
  expect: { family?: BTreeFamily; kind?: NodeKind };
  depth: number;
}

function rangeRoot(root: Oid): RangeTodo {
  return { oid: root, clo: KEY_MIN, chi: KEY_MAX, expect: { kind: 'tree' }, depth: 0 };
}

/**
 * One node `n` of a range walk over [lo, hi] (depth-first, key order): a bucket hands its
 * items in range to `visit`; a tree pushes its children whose keycov meets [lo, hi] onto `stack`,
 * last child first, so they pop in key order.
 */
function rangeStep(root: Oid, p: RangeTodo, n: LoadedNode, lo: bigint, hi: bigint, stack: RangeTodo[], visit: RangeVisit): void {
  if (p.depth > MAX_DEPTH) throw tooDeep(root);
  let b: BucketState;
  if (n.kind === 'bucket') {
    b = n.bucket;
    checkBucketCov(p.oid, false, b.keys, p.clo, p.chi);
  } else {
    const t = n.tree;
    if (t.form === 'empty') return;
    if (t.form === 'normal') {
      checkSeparatorsCov(p.oid, t.keys, p.clo, p.chi);
      const kids: RangeTodo[] = [];
      for (let i = Math.max(0, childIndex(t.keys, lo)); i < t.children.length; i++) {
        const [a, z] = childCov(t.keys, i, p.clo, p.chi);
        if (a > hi) break;
        if (z < lo || a > z) continue;
        kids.push({ oid: t.children[i]!.oid, clo: a, chi: z, expect: childExpect(t, i, n.family), depth: p.depth + 1 });
      }
      for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]!);
      return;
    }
    b = t.bucket;
    checkBucketCov(p.oid, true, b.keys, p.clo, p.chi);
  }
  const k = b.keys;
  const i0 = bucketIndex(k, lo);
  // the end: all the rest when the last key is in range (the common case: a whole bucket)
  const i1 = k.length > 0 && k[k.length - 1]! <= hi ? k.length : bucketIndex(k, hi + 1n);
  if (i0 < i1) visit(k, b.values, i0, i1);
}
