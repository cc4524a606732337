// BTree families, classes, key ranges and node-size defaults (LO and IO only: the two families
// wendelin.core uses — ZBigFile.blktab is an LOBTree, ZBlk1.chunktab an IOBTree).
//
// Notation used in all btree/ files:
//   family  'LO' = int64 keys → objects, 'IO' = int32 keys → objects (BTrees naming: K V)
//   kind    'tree' (interior node: LOBTree/IOBTree) or 'bucket' (leaf: LOBucket/IOBucket)
//   keycov  closed key range [lo, hi] a node is responsible for (deltatail.md §1.4); the root has
//           [KEY_MIN, KEY_MAX] for both families, so keycovs of LO and IO trees compare alike.
//
// Node sizes (upstream BTrees, src/BTrees/_datatypes.py + _module_builder.py): integer key types
// have tree_size = 500 and default_bucket_size = 120, halved for object values, so for LO and IO
//   max_leaf_size = 60,  max_internal_size = 500.

import { Global } from '../pickle/index.js';

export type BTreeFamily = 'LO' | 'IO';
export type NodeKind = 'tree' | 'bucket';

/** Bounds of keycov ranges (int64), for both families. */
export const KEY_MIN: bigint = -(2n ** 63n);
export const KEY_MAX: bigint = 2n ** 63n - 1n;

/** Inclusive key range a family can store. */
export function familyKeyRange(f: BTreeFamily): { min: bigint; max: bigint } {
  return f === 'LO' ? { min: KEY_MIN, max: KEY_MAX } : { min: -(2n ** 31n), max: 2n ** 31n - 1n };
}

/** Default node sizes of the real classes (see overview). */
export const DEFAULT_MAX_LEAF = 60;
export const DEFAULT_MAX_INTERNAL = 500;

const MODULE: Record<BTreeFamily, string> = { LO: 'BTrees.LOBTree', IO: 'BTrees.IOBTree' };

export function treeClass(f: BTreeFamily): Global {
  return new Global(MODULE[f], `${f}BTree`);
}

export function bucketClass(f: BTreeFamily): Global {
  return new Global(MODULE[f], `${f}Bucket`);
}

export function nodeClass(f: BTreeFamily, kind: NodeKind): Global {
  return kind === 'tree' ? treeClass(f) : bucketClass(f);
}

const CLASSES = (['LO', 'IO'] as const).flatMap((family) =>
  (['tree', 'bucket'] as const).map((kind) => ({
    module: MODULE[family],
    name: kind === 'tree' ? `${family}BTree` : `${family}Bucket`,
    fk: Object.freeze({ family, kind }),
  })),
);

/** Family and node kind of a class, or undefined when it is not an LO/IO tree or bucket. */
export function familyOf(klass: Global): { family: BTreeFamily; kind: NodeKind } | undefined {
  // on every node of every lookup (child references): no string building here
  for (const c of CLASSES) if (klass.module === c.module && klass.name === c.name) return c.fk;
  return undefined;
}
