// Whole-tree structural check of an LO/IO BTree as of a revision — what BTrees' `_check()`
// (BTree_check_inner: firstbucket and next pointers) and `BTrees.check.check` (keys within the
// bounds the separators give) verify together, plus what read.ts checks on its way down.
//
// Invariants verified (T = tree node, B = bucket, in-order = depth-first left to right):
//   1. every node's class is a node of the root's family; a tree's children are all trees or
//      all buckets, and each child's class agrees with the reference to it;
//   2. keys strictly increasing in every node; separators within the tree's keycov; bucket
//      keys within the bucket's keycov (keycov as in read.ts);
//   3. buckets in in-order, b0 … bn-1: bi.next = bi+1 and bn-1.next = None (embedded buckets
//      have no oid, so one can only be last);
//   4. for every normal-form T: T.firstbucket = the first bucket of T's subtree in in-order;
//   5. no node is reachable twice (no sharing, no cycles).
// With `strict` (trees BTrees itself writes): no empty bucket, no empty tree below the root,
// and an embedded bucket only directly under the root.
//
// The result also describes the tree's shape (for tests and `wcfs zodb` tooling).

import { ObjectFormatError } from '../errors.js';
import type { ObjectLoader } from '../db.js';
import type { Oid, Tid } from '../ids.js';
import type { PyValue } from '../pickle/index.js';
import { KEY_MAX, KEY_MIN, familyOf, type BTreeFamily, type NodeKind } from './family.js';
import { MAX_DEPTH, checkBucketCov, checkSeparatorsCov, childCov, loadNode } from './read.js';

export type NodeShape =
  | { kind: 'tree'; oid: Oid; serial: Tid; lo: bigint; hi: bigint; seps: readonly bigint[]; children: NodeShape[]; empty: boolean }
  | { kind: 'bucket'; oid: Oid | null; serial: Tid; lo: bigint; hi: bigint; keys: readonly bigint[]; values: readonly PyValue[] };

export interface BTreeCheckResult {
  family: BTreeFamily;
  shape: NodeShape;
  /** Buckets in key order (embedded bucket: oid null). */
  buckets: Extract<NodeShape, { kind: 'bucket' }>[];
  nitems: number;
  /** Number of persistent nodes (trees and buckets with an oid). */
  nobjects: number;
}

export async function btreeCheck(loader: ObjectLoader, root: Oid, at: Tid, opts: { strict?: boolean } = {}): Promise<BTreeCheckResult> {
  const strict = opts.strict ?? false;
  const seen = new Set<Oid>();
  const buckets: Extract<NodeShape, { kind: 'bucket' }>[] = [];
  // next reference of each collected bucket (parallel to `buckets`)
  const nexts: Array<Oid | null> = [];
  // trees in normal form with their firstbucket, checked once the bucket order is known
  const firsts: Array<{ oid: Oid; firstbucket: Oid; from: number; to: number }> = [];
  let family: BTreeFamily | undefined;
  let nitems = 0;

  const fail = (oid: Oid, detail: string) => new ObjectFormatError(oid, `btree check: ${detail}`);

  const visit = async (oid: Oid, lo: bigint, hi: bigint, expectKind: NodeKind | undefined, depth: number, isRoot: boolean): Promise<NodeShape> => {
    if (depth > MAX_DEPTH) throw fail(root, `deeper than ${MAX_DEPTH} levels`);
    if (seen.has(oid)) throw fail(oid, 'node reachable twice');
    seen.add(oid);
    const n = await loadNode(loader, oid, at, expectKind === undefined ? { family } : { family, kind: expectKind });
    family ??= n.family;
    if (n.kind === 'bucket') {
      const b = n.bucket;
      checkBucketCov(oid, false, b.keys, lo, hi);
      if (strict && b.keys.length === 0) throw fail(oid, 'empty bucket');
      const s = { kind: 'bucket' as const, oid, serial: n.serial, lo, hi, keys: b.keys, values: b.values };
      buckets.push(s);
      nexts.push(b.next === null ? null : b.next.oid);
      nitems += b.keys.length;
      return s;
    }
    const t = n.tree;
    if (t.form === 'empty') {
      if (strict && !isRoot) throw fail(oid, 'empty tree below the root');
      return { kind: 'tree', oid, serial: n.serial, lo, hi, seps: [], children: [], empty: true };
    }
    if (t.form === 'embedded') {
      if (strict && !isRoot) throw fail(oid, 'embedded bucket below the root');
      checkBucketCov(oid, true, t.bucket.keys, lo, hi);
      if (strict && t.bucket.keys.length === 0) throw fail(oid, 'empty embedded bucket');
      const s = { kind: 'bucket' as const, oid: null, serial: n.serial, lo, hi, keys: t.bucket.keys, values: t.bucket.values };
      buckets.push(s);
      nexts.push(null);
      nitems += s.keys.length;
      return { kind: 'tree', oid, serial: n.serial, lo, hi, seps: [], children: [s], empty: false };
    }
    checkSeparatorsCov(oid, t.keys, lo, hi);
    const from = buckets.length;
    const children: NodeShape[] = [];
    let kind: NodeKind | undefined = t.childKind;
    for (let i = 0; i < t.children.length; i++) {
      const ref = t.children[i]!;
      const refKind = ref.klass !== null ? familyOf(ref.klass)?.kind : undefined;
      const [clo, chi] = childCov(t.keys, i, lo, hi);
      const c = await visit(ref.oid, clo, chi, refKind ?? kind, depth + 1, false);
      if (kind !== undefined && c.kind !== kind) throw fail(oid, `children of different kinds (child [${i}] is a ${c.kind})`);
      kind = c.kind;
      children.push(c);
    }
    firsts.push({ oid, firstbucket: t.firstbucket.oid, from, to: buckets.length });
    return { kind: 'tree', oid, serial: n.serial, lo, hi, seps: t.keys, children, empty: false };
  };

  const shape = await visit(root, KEY_MIN, KEY_MAX, 'tree', 0, true);

  // 3. next chain = in-order bucket sequence
  for (let i = 0; i < buckets.length; i++) {
    const want = i + 1 < buckets.length ? buckets[i + 1]!.oid : null;
    const got = nexts[i]!;
    const b = buckets[i]!;
    if (want === null && i + 1 < buckets.length) throw fail(b.oid ?? root, `bucket [${i}] is followed by an embedded bucket`);
    if (got !== want) {
      throw fail(b.oid ?? root, `bucket [${i}] (keys ${b.keys[0]}…): next = ${got ?? 'None'}, want ${want ?? 'None'}`);
    }
  }
  // 4. firstbucket = first bucket of the subtree
  for (const f of firsts) {
    if (f.from === f.to) continue; // no bucket below (only empty subtrees): nothing to compare with
    const first = buckets[f.from];
    if (first === undefined || first.oid !== f.firstbucket) {
      throw fail(f.oid, `firstbucket = ${f.firstbucket}, want ${first?.oid ?? 'None'}`);
    }
  }

  return { family: family!, shape, buckets, nitems, nobjects: seen.size };
}

/**
 * Compact text of a shape in the spirit of wendelin's treegen topology encoding: levels
 * breadth-first separated by '/', nodes by '-'; `T<seps>` for trees, `B<keys>` for buckets
 * (embedded bucket: `B` under a `T` with no separators), key runs k, k+1, …, m as `k..m`.
 */
export function shapeText(shape: NodeShape): string {
  const fmt = (ks: readonly bigint[]) => {
    const out: string[] = [];
    for (let i = 0; i < ks.length;) {
      let j = i;
      while (j + 1 < ks.length && ks[j + 1] === ks[j]! + 1n) j++;
      out.push(j - i >= 2 ? `${ks[i]}..${ks[j]}` : ks.slice(i, j + 1).join(','));
      i = j + 1;
    }
    return out.join(',');
  };
  const levels: string[] = [];
  let level: NodeShape[] = [shape];
  while (level.length > 0) {
    levels.push(level.map((n) => (n.kind === 'tree' ? `T${fmt(n.seps)}` : `B${fmt(n.keys)}`)).join('-'));
    level = level.flatMap((n) => (n.kind === 'tree' ? n.children : []));
  }
  return levels.join('/');
}
