// BTree writer, table tests: exact shapes BTrees' C code produces (derived by hand from
// BTreeTemplate.c/BucketTemplate.c, see the overview of src/zodb/btree/write.ts) and exactly
// which objects each operation stores.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  KEY_MAX,
  KEY_MIN,
  btreeCreate,
  btreeDelete,
  btreeGet,
  btreeMaxKey,
  btreeSet,
  bucketClass,
  decodeBucketState,
  decodeTreeState,
  treeClass,
  type BTreeWriteOptions,
} from '../src/zodb/btree/index.js';
import { Global, PersistentRef, Tuple, type PyValue } from '../src/zodb/pickle/index.js';
import { BadArgumentError } from '../src/zodb/errors.js';
import type { Oid, Tid } from '../src/zodb/ids.js';
import { nodeAt, openTestDB, shapeAt, sortOids, val, type TestDB } from './helpers/btree.js';

const XS: BTreeWriteOptions = { maxLeaf: 2, maxInternal: 2 }; // wendelin's XLOTree

let db: TestDB;
beforeEach(async () => {
  db = await openTestDB();
});
afterEach(async () => {
  await db.close();
});

/** A new empty tree, committed. */
async function newTree(family: 'LO' | 'IO' = 'LO'): Promise<{ root: Oid; at: Tid }> {
  const txn = db.txn();
  const root = btreeCreate(txn, family);
  return { root, at: await txn.commit() };
}

/** Run one operation in its own transaction; returns what it stored and the new revision. */
async function op1(root: Oid, f: (txn: ReturnType<TestDB['txn']>) => Promise<unknown>): Promise<{ stored: Oid[]; at: Tid; result: unknown }> {
  const txn = db.txn();
  const result = await f(txn);
  const stored = sortOids(txn.changed());
  const at = stored.length > 0 ? await txn.commit() : db.st.head();
  return { stored, at, result };
}

const set = (root: Oid, k: number, opts?: BTreeWriteOptions) => op1(root, (t) => btreeSet(t, root, BigInt(k), val(1000 + k), opts));
const del = (root: Oid, k: number, opts?: BTreeWriteOptions) => op1(root, (t) => btreeDelete(t, root, BigInt(k), opts));

describe('btree writer: shapes like BTrees', () => {
  it('default sizes: 61 ascending inserts split the bucket 30 + 31 (max_leaf_size 60)', async () => {
    const { root } = await newTree();
    const txn = db.txn();
    for (let k = 0; k < 60; k++) await btreeSet(txn, root, BigInt(k), val(k));
    expect(txn.changed()).toEqual([root]); // still one embedded bucket
    let at = await txn.commit();
    expect((await shapeAt(db, root, at)).text).toBe('T/B0..59');

    const r = await set(root, 60);
    at = r.at;
    const { text, r: c } = await shapeAt(db, root, at);
    expect(text).toBe('T30/B0..29-B30..60');
    // the embedded bucket and the new one both got oids; the tree changed
    expect(r.stored).toEqual(sortOids([root, c.buckets[0]!.oid!, c.buckets[1]!.oid!]));
  });

  it('default sizes: ascending inserts leave buckets of 30; at 1000 children the root splits 500 + 500', async () => {
    const { root } = await newTree();
    // ascending keys: a split happens whenever the last bucket reaches 61 items, leaving 30 + 31;
    // split number 999 — at key 61 + 30·998 — gives the root 1000 = 2·max_internal_size children
    const n = 61 + 30 * 998;
    const txn = db.txn();
    for (let k = 0; k < n - 1; k++) await btreeSet(txn, root, BigInt(k), val(k));
    let at = await txn.commit();
    let { r } = await shapeAt(db, root, at);
    expect(r.shape.kind === 'tree' && r.shape.children.length).toBe(999);
    expect(r.buckets.map((b) => b.keys.length)).toEqual([...Array(998).fill(30), 60]);

    const s = await set(root, n - 1); // 61st item of the last bucket: split → 1000 children → split_root
    at = s.at;
    ({ r } = await shapeAt(db, root, at));
    const top = r.shape;
    if (top.kind !== 'tree') throw new Error('root is not a tree');
    expect(top.seps).toEqual([30n * 500n]);
    expect(top.children.map((c) => (c.kind === 'tree' ? c.children.length : -1))).toEqual([500, 500]);
    expect(r.buckets.length).toBe(1000);
    expect(r.buckets.map((b) => b.keys.length)).toEqual([...Array(998).fill(30), 30, 31]);
    // stored: root, the split bucket, the new bucket, the two new interior nodes
    expect(s.stored).toEqual(sortOids([root, r.buckets[998]!.oid!, r.buckets[999]!.oid!, top.children[0]!.oid!, top.children[1]!.oid!]));
  });

  it('XLOTree sizes (2, 2): ascending inserts 1..7, one per transaction', async () => {
    const { root } = await newTree();
    const want = [
      'T/B1',
      'T/B1,2',
      'T2/B1-B2,3',
      'T2,3/B1-B2-B3,4',
      'T3/T2-T4/B1-B2-B3-B4,5', // root reached 2·max children → split_root
      'T3,4/T2-T-T5/B1-B2-B3-B4-B5,6', // a non-root node with 3 > 2 children splits 1 + 2
      'T4/T3-T5/T2-T-T-T6/B1-B2-B3-B4-B5-B6,7',
    ];
    for (let k = 1; k <= 7; k++) {
      const { at } = await set(root, k, XS);
      expect((await shapeAt(db, root, at)).text, `after inserting ${k}`).toBe(want[k - 1]);
    }
  });

  it('XLOTree sizes: descending and middle inserts', async () => {
    const { root } = await newTree();
    let at: Tid = 0n;
    for (const k of [9, 8, 7]) ({ at } = await set(root, k, XS));
    // B7,8,9 splits at 3/2 = 1: B7 | B8,9
    expect((await shapeAt(db, root, at)).text).toBe('T8/B7-B8,9');
    ({ at } = await set(root, 6, XS));
    expect((await shapeAt(db, root, at)).text).toBe('T8/B6,7-B8,9');
    ({ at } = await set(root, 5, XS)); // B5,6,7 → B5 | B6,7
    expect((await shapeAt(db, root, at)).text).toBe('T6,8/B5-B6,7-B8,9');
    ({ at } = await set(root, 10, XS)); // B8,9,10 → B8 | B9,10 → root has 4 children → split_root
    expect((await shapeAt(db, root, at)).text).toBe('T8/T6-T9/B5-B6,7-B8-B9,10');
  });

  it('an insert that does not change the size keeps shapes; replacing a value stores the bucket only', async () => {
    const { root } = await newTree();
    for (const k of [1, 2, 3]) await set(root, k, XS);
    const before = (await shapeAt(db, root, db.st.head())).r;
    const b = before.buckets[1]!.oid!;
    const r = await op1(root, (t) => btreeSet(t, root, 2n, val(1000 + 2), XS)); // same value: still stored (no VALUE_SAME for objects)
    expect(r.stored).toEqual([b]);
    const r2 = await op1(root, (t) => btreeSet(t, root, 3n, val(5), XS));
    expect(r2.stored).toEqual([b]);
    expect((await btreeGet(db.loader, root, 3n, r2.at)).value).toEqual(val(5));
  });

  it('IO family: int32 keys; out-of-range keys are refused', async () => {
    const { root } = await newTree('IO');
    await set(root, 2 ** 31 - 1);
    await set(root, -(2 ** 31));
    await expect(op1(root, (t) => btreeSet(t, root, 2n ** 31n, val(1)))).rejects.toThrow(BadArgumentError);
    const { root: lroot } = await newTree('LO');
    await expect(op1(lroot, (t) => btreeSet(t, lroot, 2n ** 63n, val(1)))).rejects.toThrow(BadArgumentError);
    await expect(op1(lroot, (t) => btreeSet(t, lroot, 1n, val(1), { maxInternal: 1 }))).rejects.toThrow(BadArgumentError);
  });
});

describe('btree writer: what each operation stores', () => {
  it('insert into an existing bucket → just that bucket; into the embedded bucket → just the tree', async () => {
    const { root } = await newTree();
    let r = await set(root, 1);
    expect(r.stored).toEqual([root]);
    r = await set(root, 2);
    expect(r.stored).toEqual([root]);
    // make two buckets
    const txn = db.txn();
    for (let k = 3; k <= 61; k++) await btreeSet(txn, root, BigInt(k), val(k));
    const at = await txn.commit();
    const { text, r: c } = await shapeAt(db, root, at);
    expect(text).toBe('T31/B1..30-B31..61');
    r = await set(root, 100);
    expect(r.stored).toEqual([c.buckets[1]!.oid!]);
    r = await set(root, 0);
    expect(r.stored).toEqual([c.buckets[0]!.oid!]);
  });

  it('bucket split → the bucket, the new bucket, the parent', async () => {
    const { root } = await newTree();
    for (const k of [1, 2, 3]) await set(root, k, XS); // T2/B1-B2,3
    const before = (await shapeAt(db, root, db.st.head())).r;
    const r = await set(root, 4, XS); // B2,3,4 → B2 | B3,4
    const after = (await shapeAt(db, root, r.at)).r;
    const newB = after.buckets[2]!.oid!;
    expect(after.buckets[1]!.oid).toBe(before.buckets[1]!.oid);
    expect(r.stored).toEqual(sortOids([root, before.buckets[1]!.oid!, newB]));
  });

  it('root split → root, split bucket, new bucket, two new interior nodes', async () => {
    const { root } = await newTree();
    for (const k of [1, 2, 3, 4]) await set(root, k, XS); // T2,3/B1-B2-B3,4
    const before = (await shapeAt(db, root, db.st.head())).r;
    const r = await set(root, 5, XS); // → T3/T2-T4/B1-B2-B3-B4,5
    const { text, r: after } = await shapeAt(db, root, r.at);
    expect(text).toBe('T3/T2-T4/B1-B2-B3-B4,5');
    const top = after.shape;
    if (top.kind !== 'tree') throw new Error();
    expect(r.stored).toEqual(sortOids([root, before.buckets[2]!.oid!, after.buckets[3]!.oid!, top.children[0]!.oid!, top.children[1]!.oid!]));
  });

  it('interior split → the split node, the new node, the parent (and the bucket pair)', async () => {
    const { root } = await newTree();
    for (const k of [1, 2, 3, 4, 5]) await set(root, k, XS); // T3/T2-T4/B1-B2-B3-B4,5
    const before = (await shapeAt(db, root, db.st.head())).r;
    const r = await set(root, 6, XS); // → T3,4/T2-T-T5/B1-B2-B3-B4-B5,6
    const { text, r: after } = await shapeAt(db, root, r.at);
    expect(text).toBe('T3,4/T2-T-T5/B1-B2-B3-B4-B5,6');
    const e = nodeAt(before.shape, 1, 1).oid!; // T4, split into T and T5
    expect(nodeAt(after.shape, 1, 1).oid).toBe(e);
    const newT = nodeAt(after.shape, 1, 2).oid!;
    expect(r.stored).toEqual(sortOids([root, e, newT, before.buckets[3]!.oid!, after.buckets[4]!.oid!]));
  });

  it('delete inside a bucket → the bucket; delete of a separator key → the bucket and the parent', async () => {
    const { root } = await newTree();
    const txn = db.txn();
    for (let k = 0; k <= 60; k++) await btreeSet(txn, root, BigInt(k), val(k));
    await txn.commit(); // T30/B0..29-B30..60
    const { r: c } = await shapeAt(db, root, db.st.head());
    const [b0, b1] = c.buckets.map((b) => b.oid!);
    let r = await del(root, 40);
    expect(r.result).toBe(true);
    expect(r.stored).toEqual([b1]);
    r = await del(root, 30);
    expect(r.stored).toEqual(sortOids([b1!, root]));
    expect((await shapeAt(db, root, r.at)).text).toBe('T31/B0..29-B31..39,41..60');
    r = await del(root, 0); // min = 0: separator slot 0 is unused → just the bucket
    expect(r.stored).toEqual([b0]);
    r = await del(root, 1000);
    expect(r.result).toBe(false);
    expect(r.stored).toEqual([]);
  });

  it('delete emptying a bucket → the bucket (stored empty), the parent, the previous bucket', async () => {
    const { root } = await newTree();
    for (const k of [1, 2, 3, 4]) await set(root, k, XS); // T2,3/B1-B2-B3,4
    const { r: c } = await shapeAt(db, root, db.st.head());
    const [b1, b2] = c.buckets.map((b) => b.oid!);
    const r = await del(root, 2, XS);
    expect(r.stored).toEqual(sortOids([root, b1!, b2!]));
    expect((await shapeAt(db, root, r.at)).text).toBe('T3/B1-B3,4');
    // the removed bucket was stored with no items (and keeps its next)
    const s = await db.loader.loadObject(b2!, r.at);
    expect(s.state).toMatchObject({ items: [{ items: [] }, { oid: c.buckets[2]!.oid }] });
  });

  it('delete emptying the first bucket → the bucket and the parent (firstbucket moves)', async () => {
    const { root } = await newTree();
    for (const k of [1, 2, 3]) await set(root, k, XS); // T2/B1-B2,3
    const { r: c } = await shapeAt(db, root, db.st.head());
    const r = await del(root, 1, XS);
    expect(r.stored).toEqual(sortOids([root, c.buckets[0]!.oid!]));
    // one bucket left, with an oid: normal form ((B,), B), not embedded
    const { text, r: after } = await shapeAt(db, root, r.at);
    expect(text).toBe('T/B2,3');
    expect(after.buckets[0]!.oid).toBe(c.buckets[1]!.oid);
  });

  it('delete emptying the first bucket of a subtree → relinks the previous bucket in the left subtree', async () => {
    const { root } = await newTree();
    for (let k = 1; k <= 6; k++) await set(root, k, XS); // T3,4/T2-T-T5/B1-B2-B3-B4-B5,6
    let { r: c } = await shapeAt(db, root, db.st.head());
    const B = c.buckets.map((b) => b.oid!);
    const T = [1, 2].map((i) => nodeAt(c.shape, 1, i).oid!);
    let r = await del(root, 4, XS);
    // B4 emptied (stored), its node T5 (lost child, firstbucket), root (separator 4 → 5), B3 (next → B5,6)
    expect(r.stored).toEqual(sortOids([B[3]!, T[1]!, root, B[2]!]));
    expect((await shapeAt(db, root, r.at)).text).toBe('T3,5/T2-T-T/B1-B2-B3-B5,6');

    // now empty the whole middle subtree: B3 and its node go, B2 is relinked
    ({ r: c } = await shapeAt(db, root, r.at));
    r = await del(root, 3, XS);
    expect(r.stored).toEqual(sortOids([B[2]!, T[0]!, root, B[1]!]));
    expect((await shapeAt(db, root, r.at)).text).toBe('T5/T2-T/B1-B2-B5,6');
    const emptied = await db.loader.loadObject(T[0]!, r.at);
    expect(emptied.state).toBe(null);
  });

  it('deleting everything → None; from the embedded form → just the tree', async () => {
    const { root } = await newTree();
    for (const k of [1, 2]) await set(root, k, XS);
    let r = await del(root, 1, XS);
    expect(r.stored).toEqual([root]);
    r = await del(root, 2, XS);
    expect(r.stored).toEqual([root]);
    expect((await db.loader.loadObject(root, r.at)).state).toBe(null);
    r = await del(root, 2, XS);
    expect(r.result).toBe(false);

    for (const k of [1, 2, 3]) await set(root, k, XS); // T2/B1-B2,3
    const { r: c } = await shapeAt(db, root, db.st.head());
    await del(root, 1, XS);
    await del(root, 2, XS);
    r = await del(root, 3, XS);
    expect(r.stored).toEqual(sortOids([root, c.buckets[1]!.oid!]));
    expect((await shapeAt(db, root, r.at)).text).toBe('T');
  });

  it('several operations in one transaction store what savepoints after each would', async () => {
    const { root } = await newTree();
    const txn = db.txn();
    for (const k of [1, 2, 3]) await btreeSet(txn, root, BigInt(k), val(k), XS); // split: 2 buckets get oids
    await btreeDelete(txn, root, 2n, XS);
    await btreeDelete(txn, root, 3n, XS); // second bucket emptied, first bucket keeps its oid
    const stored = txn.changed();
    const at = await txn.commit();
    const { text, r } = await shapeAt(db, root, at);
    expect(text).toBe('T/B1');
    expect(r.buckets[0]!.oid).not.toBe(null); // normal form: the bucket got its oid at the "savepoint"
    expect(stored.length).toBe(3);
  });
});

describe("btree writer: ZODB's degenerate tree", () => {
  // BTrees' tests/testBTrees.py DegenerateBTree (as an LO mapping), topology
  //   T4/T2-T/T-T-T6,10/B1-B3-T-T-T/T-B7-B11/B5
  // single-child chains everywhere: deletes must relink `next` across subtrees and drop
  // emptied chains. BTrees' testDeletes deletes the keys in every order and checks after
  // each step; so do we, with the strict check (what BTrees' check + _check verify).
  const keys = [1n, 3n, 5n, 7n, 11n];
  const LOT = treeClass('LO');
  const LOB = bucketClass('LO');

  /** Store a fresh copy of the degenerate tree in txn; returns its root oid. */
  function build(txn: ReturnType<TestDB['txn']>): Oid {
    const oid = () => txn.newOid();
    const ref = (o: Oid, k: Global) => new PersistentRef(o, k);
    const b = Object.fromEntries(keys.map((k) => [String(k), oid()])) as Record<string, Oid>;
    keys.forEach((k, i) => {
      const items = new Tuple([k, val(1000n + k)]);
      const next = keys[i + 1];
      txn.store(b[String(k)]!, LOB, next === undefined ? new Tuple([items]) : new Tuple([items, ref(b[String(next)]!, LOB)]));
    });
    const tree = (children: Array<[Oid, Global]>, seps: bigint[], first: string): Oid => {
      const o = oid();
      const data: PyValue[] = [ref(children[0]![0], children[0]![1])];
      children.slice(1).forEach(([c, k], i) => data.push(seps[i]!, ref(c, k)));
      txn.store(o, LOT, new Tuple([new Tuple(data), ref(b[first]!, LOB)]));
      return o;
    };
    const t1 = tree([[b['1']!, LOB]], [], '1');
    const t3 = tree([[b['3']!, LOB]], [], '3');
    const t5lower = tree([[b['5']!, LOB]], [], '5');
    const t5 = tree([[t5lower, LOT]], [], '5');
    const t7 = tree([[b['7']!, LOB]], [], '7');
    const t11 = tree([[b['11']!, LOB]], [], '11');
    const t13 = tree(
      [
        [t1, LOT],
        [t3, LOT],
      ],
      [2n],
      '1',
    );
    const t5711 = tree(
      [
        [t5, LOT],
        [t7, LOT],
        [t11, LOT],
      ],
      [6n, 10n],
      '5',
    );
    const t5711up = tree([[t5711, LOT]], [], '5');
    return tree(
      [
        [t13, LOT],
        [t5711up, LOT],
      ],
      [4n],
      '1',
    );
  }

  const permutations = <T>(xs: T[]): T[][] =>
    xs.length <= 1 ? [xs] : xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));

  it('reads', async () => {
    const txn = db.txn();
    const root = build(txn);
    const at = await txn.commit();
    const { text } = await shapeAt(db, root, at);
    expect(text).toBe('T4/T2-T/T-T-T6,10/B1-B3-T-T-T/T-B7-B11/B5');
    for (const k of keys) {
      const g = await btreeGet(db.loader, root, k, at);
      expect(g.value).toEqual(val(1000n + k));
    }
    // 4 is routed to the 5 bucket (keycov [4, 5]) although 3's bucket holds the largest key below
    const g4 = await btreeGet(db.loader, root, 4n, at);
    expect(g4.path.map((p) => [p.lo, p.hi])).toEqual([
      [KEY_MIN, KEY_MAX],
      [4n, KEY_MAX],
      [4n, KEY_MAX],
      [4n, 5n],
      [4n, 5n],
      [4n, 5n],
    ]);
    expect((await btreeMaxKey(db.loader, root, at)).key).toBe(11n);
  });

  it('deletes in every order (120 orders × 5 deletes, each in its own transaction)', async () => {
    for (const order of permutations(keys)) {
      let txn = db.txn();
      const root = build(txn);
      await txn.commit();
      const left = new Set(keys);
      for (const k of order) {
        txn = db.txn();
        expect(await btreeDelete(txn, root, k)).toBe(true);
        const at = await txn.commit();
        left.delete(k);
        const { r } = await shapeAt(db, root, at);
        expect(
          r.buckets.flatMap((b) => b.keys),
          `order ${order.join(',')} after ${k}`,
        ).toEqual(keys.filter((x) => left.has(x)));
      }
      expect((await db.loader.loadObject(root, db.st.head())).state).toBe(null);
    }
  }, 120_000);

  it('inserts around and between its keys', async () => {
    const txn0 = db.txn();
    const root = build(txn0);
    await txn0.commit();
    const model = new Set(keys);
    for (const k of [0n, 2n, 4n, 6n, 8n, 12n, 9n, 10n, 13n, -5n]) {
      const { at } = await op1(root, (t) => btreeSet(t, root, k, val(k), XS));
      model.add(k);
      const { r } = await shapeAt(db, root, at);
      expect(r.buckets.flatMap((b) => b.keys)).toEqual([...model].sort((a, b) => (a < b ? -1 : 1)));
    }
  });
});

describe('btree writer: decoded states are shared, never changed', () => {
  it('a pending node decoded once per state object; operations that change it leave earlier decodings as they were', async () => {
    const { root } = await newTree();
    const txn = db.txn();
    for (let k = 1; k <= 70; k++) await btreeSet(txn, root, BigInt(k), val(k)); // a root with two buckets
    const st1 = (await txn.loadObject(root)).state;
    const t1 = decodeTreeState(root, 'LO', st1);
    expect(decodeTreeState(root, 'LO', st1), 'the same state: one decoding').toBe(t1);
    if (t1.form !== 'normal') throw new Error('a normal tree expected');
    const b0 = t1.children[0]!.oid;
    const sb = (await txn.loadObject(b0)).state;
    const b1 = decodeBucketState(b0, 'LO', sb);
    const keys1 = [...b1.keys];
    const seps1 = [...t1.keys];
    // >>> inserts into that bucket (and splits under the root): new states, new decodings
    for (let k = 1000; k <= 1100; k++) await btreeSet(txn, root, BigInt(-k), val(k));
    for (let k = 1; k <= 30; k++) await btreeDelete(txn, root, BigInt(k));
    expect([...b1.keys], 'the old decoding of the bucket').toEqual(keys1);
    expect([...t1.keys], 'the old decoding of the root').toEqual(seps1);
    expect(decodeTreeState(root, 'LO', (await txn.loadObject(root)).state)).not.toBe(t1);
    // and the tree is what the operations made it
    const at = await txn.commit();
    const got: bigint[] = [];
    const { r } = await shapeAt(db, root, at);
    for (const b of r.buckets) got.push(...b.keys);
    const want = [...Array.from({ length: 101 }, (_, i) => BigInt(-1100 + i)), ...Array.from({ length: 40 }, (_, i) => BigInt(31 + i))];
    expect(got).toEqual(want);
  });

  it('a transaction loads each committed object from the storage once (a setBlock per block reloaded its ZBigFile each time)', async () => {
    const { root } = await newTree();
    let loads = 0;
    const load = db.st.load.bind(db.st);
    db.st.load = (oid, at) => {
      if (oid === root) loads++;
      return load(oid, at);
    };
    const txn = db.txn();
    for (let k = 1; k <= 5; k++) await btreeGet(txn, root, BigInt(k), txn.at);
    expect(loads).toBe(1);
  });
});
