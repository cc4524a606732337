// Persistent states of LO/IO BTree nodes: decoding with validation, and encoding
// (zodb.md §3.6, deltatail.md §1.4; upstream BTreeTemplate.c BTree_getstate/_BTree_setstate,
// BucketTemplate.c bucket_getstate).
//
//   bucket  ((k0, v0, k1, v1, …),)              last bucket of the chain
//           ((k0, v0, …), next)                 next = ref to the following bucket
//   tree    None                                empty tree
//           ((bucketState,),)                   one bucket child without an oid of its own,
//                                               embedded; net shape ((((k0, v0, …),),),)
//           ((c0, k1, c1, …, kN-1, cN-1), fb)   N children (all trees or all buckets), N-1
//                                               separators, fb = ref to the leftmost bucket
//
// What decoding checks (everything a lookup relies on): tuple shapes and arities; keys are
// ints inside the family range (IO: int32) and strictly increasing; children are strong
// references whose class, when the reference carries one, is a node of the same family, and
// all children are of one kind; firstbucket/next refer to buckets. What needs other objects
// (keycov containment, child class = loaded class, next chain, firstbucket) is checked where
// those objects are loaded (read.ts) or by btreeCheck (check.ts).
//
// Errors are ObjectFormatError naming the oid of the object whose state is bad (for an
// embedded bucket: its tree).

import { ObjectFormatError } from '../errors.js';
import type { Oid } from '../ids.js';
import { PersistentRef, Tuple, pyTypeName, type PyValue } from '../pickle/index.js';
import { bucketClass, familyKeyRange, familyOf, treeClass, type BTreeFamily, type NodeKind } from './family.js';

/** Decoded states are shared (see `decoded`): readonly by type; copy to mutate. */
export interface BucketState {
  readonly keys: readonly bigint[];
  readonly values: readonly PyValue[];
  /** Next bucket in key order, or null for the last bucket (and for embedded buckets). */
  next: PersistentRef | null;
}

export type TreeState =
  | { form: 'empty' }
  | { form: 'embedded'; bucket: BucketState }
  | {
      form: 'normal';
      readonly children: readonly PersistentRef[];
      /** Separators: keys[i] is the lower bound of children[i+1] (length children.length-1). */
      readonly keys: readonly bigint[];
      /** Kind of the children as told by the references' classes; undefined if none carries one. */
      childKind: NodeKind | undefined;
      firstbucket: PersistentRef;
    };

// Decodings, by the state object decoded. A state is never changed once built (a new state
// is a new object: write.ts stores fresh tuples), so its decoding is a function of it and
// of the family; sharing it means a transaction's pending node, which every B-tree
// operation of the transaction decodes again (a setBlock per block), is decoded once: 32k
// in-order inserts in one transaction spent ~40% of their time re-decoding the root. Weak:
// an entry goes with its state. Shared results are readonly by type.
type Decoded<T> = WeakMap<object, { family: BTreeFamily; v: T }>;
const decodedBuckets: Decoded<BucketState> = new WeakMap();
const decodedTrees: Decoded<TreeState> = new WeakMap();

/** decode() of `state`, once per state object and family. */
function shared<T>(table: Decoded<T>, family: BTreeFamily, state: Tuple, decode: () => T): T {
  const known = table.get(state);
  if (known !== undefined && known.family === family) return known.v;
  const v = decode();
  table.set(state, { family, v });
  return v;
}

function bad(oid: Oid | undefined, what: string, detail: string): ObjectFormatError {
  return new ObjectFormatError(oid, `${what}: ${detail}`);
}

function checkKey(oid: Oid | undefined, what: string, family: BTreeFamily, k: PyValue, i: number): bigint {
  if (typeof k !== 'bigint') throw bad(oid, what, `key [${i}]: expect int, got ${pyTypeName(k)}`);
  const r = familyKeyRange(family);
  if (k < r.min || k > r.max) throw bad(oid, what, `key [${i}] = ${k} out of ${family} key range`);
  return k;
}

/** A strong reference; its class, when present, must be an `expectKind` node of `family`. */
function checkRef(
  oid: Oid | undefined,
  what: string,
  family: BTreeFamily,
  v: PyValue,
  expectKind?: NodeKind,
): { ref: PersistentRef; kind: NodeKind | undefined } {
  if (!(v instanceof PersistentRef) || v.kind !== 'strong') {
    throw bad(oid, what, `expect a persistent reference, got ${pyTypeName(v)}${v instanceof PersistentRef ? ` (${v.kind})` : ''}`);
  }
  if (v.klass === null) return { ref: v, kind: expectKind };
  const fk = familyOf(v.klass);
  if (fk === undefined || fk.family !== family) {
    throw bad(
      oid,
      what,
      `reference to ${v.klass}: expect ${expectKind === 'bucket' ? bucketClass(family) : expectKind === 'tree' ? treeClass(family) : `${treeClass(family)} or ${bucketClass(family)}`}`,
    );
  }
  if (expectKind !== undefined && fk.kind !== expectKind) {
    throw bad(oid, what, `reference to ${v.klass}: expect ${expectKind === 'bucket' ? bucketClass(family) : treeClass(family)}`);
  }
  return { ref: v, kind: fk.kind };
}

/**
 * Decode a bucket state. `oid` names the object in errors (for an embedded bucket pass the
 * tree's oid and `what = 'embedded bucket'`).
 */
export function decodeBucketState(oid: Oid | undefined, family: BTreeFamily, state: PyValue, what = `${family}Bucket`): BucketState {
  if (!(state instanceof Tuple) || (state.length !== 1 && state.length !== 2)) {
    throw bad(oid, what, `expect (items,) or (items, next), got ${pyTypeName(state)}`);
  }
  return shared(decodedBuckets, family, state, () => decodeBucket(oid, family, state, what));
}

function decodeBucket(oid: Oid | undefined, family: BTreeFamily, state: Tuple, what: string): BucketState {
  const items = state.items[0]!;
  if (!(items instanceof Tuple)) throw bad(oid, what, `items: expect tuple, got ${pyTypeName(items)}`);
  if (items.length % 2 !== 0) throw bad(oid, what, `items: expect (k0, v0, …) of even length, got ${items.length}`);
  const n = items.length / 2;
  const keys: bigint[] = new Array(n);
  const values: PyValue[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const k = checkKey(oid, what, family, items.items[2 * i]!, i);
    if (i > 0 && !(k > keys[i - 1]!)) throw bad(oid, what, `keys not increasing: [${i - 1}] = ${keys[i - 1]}, [${i}] = ${k}`);
    keys[i] = k;
    values[i] = items.items[2 * i + 1]!;
  }
  let next: PersistentRef | null = null;
  if (state.length === 2) next = checkRef(oid, `${what}: next`, family, state.items[1]!, 'bucket').ref;
  return { keys, values, next };
}

/** Decode a tree state (the three forms of the overview). */
export function decodeTreeState(oid: Oid | undefined, family: BTreeFamily, state: PyValue): TreeState {
  const what = `${family}BTree`;
  if (state === null) return { form: 'empty' };
  if (!(state instanceof Tuple) || (state.length !== 1 && state.length !== 2)) {
    throw bad(oid, what, `expect None, ((bucket,),) or (children, firstbucket), got ${pyTypeName(state)}`);
  }
  return shared(decodedTrees, family, state, () => decodeTree(oid, family, state, what));
}

function decodeTree(oid: Oid | undefined, family: BTreeFamily, state: Tuple, what: string): TreeState {
  const data = state.items[0]!;
  if (!(data instanceof Tuple)) throw bad(oid, what, `data: expect tuple, got ${pyTypeName(data)}`);

  if (state.length === 1) {
    // embedded bucket: ((bucketState,),)
    if (data.length !== 1) throw bad(oid, what, `embedded form: expect ((bucket,),), got data of length ${data.length}`);
    const b = decodeBucketState(oid, family, data.items[0]!, 'embedded bucket');
    if (b.next !== null) throw bad(oid, what, 'embedded bucket has a next reference');
    return { form: 'embedded', bucket: b };
  }

  if (data.length % 2 !== 1) throw bad(oid, what, `data: expect (c0, k1, c1, …) of odd length, got ${data.length}`);
  const n = (data.length + 1) / 2;
  const children: PersistentRef[] = new Array(n);
  const keys: bigint[] = new Array(n - 1);
  let childKind: NodeKind | undefined;
  for (let i = 0; i < n; i++) {
    if (i > 0) {
      const k = checkKey(oid, what, family, data.items[2 * i - 1]!, i);
      if (i > 1 && !(k > keys[i - 2]!)) throw bad(oid, what, `separators not increasing: ${keys[i - 2]}, ${k}`);
      keys[i - 1] = k;
    }
    const { ref, kind } = checkRef(oid, `${what}: child [${i}]`, family, data.items[2 * i]!);
    if (kind !== undefined && childKind !== undefined && kind !== childKind) {
      throw bad(oid, what, `children of different kinds: child [${i}] is a ${kind}, an earlier one a ${childKind}`);
    }
    children[i] = ref;
    childKind ??= kind;
  }
  const firstbucket = checkRef(oid, `${what}: firstbucket`, family, state.items[1]!, 'bucket').ref;
  return { form: 'normal', children, keys, childKind, firstbucket };
}

// ---- encoding (what BTree_getstate / bucket_getstate produce) ----

export function encodeBucketState(b: { keys: readonly bigint[]; values: readonly PyValue[] }, next: PersistentRef | null): Tuple {
  const items: PyValue[] = new Array(2 * b.keys.length);
  for (let i = 0; i < b.keys.length; i++) {
    items[2 * i] = b.keys[i]!;
    items[2 * i + 1] = b.values[i]!;
  }
  return next === null ? new Tuple([new Tuple(items)]) : new Tuple([new Tuple(items), next]);
}

export function encodeEmbeddedTreeState(b: { keys: readonly bigint[]; values: readonly PyValue[] }): Tuple {
  return new Tuple([new Tuple([encodeBucketState(b, null)])]);
}

export function encodeTreeState(children: readonly PersistentRef[], keys: readonly bigint[], firstbucket: PersistentRef): Tuple {
  if (children.length === 0 || keys.length !== children.length - 1) {
    throw new ObjectFormatError(undefined, `encodeTreeState: ${children.length} children, ${keys.length} separators`);
  }
  const data: PyValue[] = [children[0]!];
  for (let i = 1; i < children.length; i++) data.push(keys[i - 1]!, children[i]!);
  return new Tuple([new Tuple(data), firstbucket]);
}
