// BTree writer, seeded random test: random sequences of set/delete on LO and IO trees, in
// several transactions, with tiny node sizes (splits and removals at every level) and with the
// real ones; after every commit the tree read back equals a Map model, passes the strict
// structural check, every lookup path is right, and single-operation transactions store no
// object that neither the old nor the new tree contains and none that did not change (except
// the bucket of a same-key set, which BTrees stores anyway). Old revisions stay readable.
//
// fast-check prints the seed and the shrunk counterexample on failure; rerun one with
//   WCFS_SEED=<seed> [WCFS_FC_PATH=<path>] npx vitest run test/btree-prop
// and copy failures into test/btree-write.test.ts as table cases. WCFS_FC_RUNS scales the runs.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { Oid, Tid } from '../src/zodb/ids.js';
import { PersistentRef } from '../src/zodb/pickle/index.js';
import {
  KEY_MAX,
  KEY_MIN,
  btreeCreate,
  btreeDelete,
  btreeGet,
  btreeItems,
  btreeMaxKey,
  btreeSet,
  familyKeyRange,
  type BTreeFamily,
  type BTreeWriteOptions,
  type PathNode,
} from '../src/zodb/btree/index.js';
import { nodeOids, openTestDB, shapeAt, val, type TestDB } from './helpers/btree.js';
import { fcSeed } from './helpers/fuzz.js';

const RUNS = Number(process.env.WCFS_FC_RUNS ?? '1');
const fcParams = (numRuns: number): fc.Parameters<unknown> => ({
  numRuns: Math.max(1, Math.round(numRuns * RUNS)),
  ...fcSeed(),
  ...(process.env.WCFS_FC_PATH !== undefined ? { path: process.env.WCFS_FC_PATH } : {}),
});

type Op =
  { t: 'set'; k: bigint; v: number } | { t: 'del'; k: bigint } | { t: 'setRange'; k: bigint; n: number; v: number } | { t: 'delRange'; k: bigint; n: number };

const valueOid = (v: PersistentRef | undefined) => v?.oid;

/** Keys: mostly from a small domain (collisions, re-inserts, deletes of present keys), some
 *  from the family's extremes. */
function keyArb(family: BTreeFamily, domain: number): fc.Arbitrary<bigint> {
  const r = familyKeyRange(family);
  return fc.oneof(
    { weight: 12, arbitrary: fc.integer({ min: 0, max: domain - 1 }).map(BigInt) },
    { weight: 1, arbitrary: fc.constantFrom(r.min, r.min + 1n, r.max - 1n, r.max, -1n) },
    { weight: 1, arbitrary: fc.bigInt({ min: r.min, max: r.max }) },
  );
}

function opsArb(family: BTreeFamily, domain: number, ranges: boolean): fc.Arbitrary<Op[][]> {
  const k = keyArb(family, domain);
  const v = fc.integer({ min: 1, max: 1_000_000 });
  const single: Array<fc.Arbitrary<Op>> = [
    fc.record({ t: fc.constant('set' as const), k, v }),
    fc.record({ t: fc.constant('set' as const), k, v }),
    fc.record({ t: fc.constant('del' as const), k }),
  ];
  if (ranges) {
    const start = fc.integer({ min: 0, max: domain - 1 }).map(BigInt);
    single.push(
      fc.record({ t: fc.constant('setRange' as const), k: start, n: fc.integer({ min: 1, max: 150 }), v }),
      fc.record({ t: fc.constant('delRange' as const), k: start, n: fc.integer({ min: 1, max: 150 }) }),
    );
  }
  const op = fc.oneof(...single);
  // a third of the transactions hold one operation, so their stored sets can be checked exactly
  const txn = fc.oneof(
    fc.array(op, { minLength: 1, maxLength: 1 }),
    fc.array(op, { minLength: 1, maxLength: 25 }),
    fc.array(op, { minLength: 1, maxLength: 4 }),
  );
  return fc.array(txn, { minLength: 1, maxLength: 10 });
}

interface Snapshot {
  at: Tid;
  model: Map<bigint, number>;
}

async function verify(
  db: TestDB,
  root: Oid,
  at: Tid,
  model: Map<bigint, number>,
  probe: bigint[],
): Promise<{ reach: Set<Oid>; embedded: boolean; nbuckets: number }> {
  const { r } = await shapeAt(db, root, at); // strict structural check
  expect(r.nitems).toBe(model.size);
  const sorted = [...model.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));

  const got: Array<[bigint, Oid | undefined]> = [];
  for await (const [k, v] of btreeItems(db.loader, root, at)) got.push([k, valueOid(v as PersistentRef)]);
  expect(got).toEqual(sorted.map(([k, v]) => [k, 1000n + BigInt(v)]));

  // lookups of present and absent keys: value, and a path down to the bucket whose keycov has the key
  const bucketOf = (key: bigint) => r.buckets.find((b) => b.lo <= key && key <= b.hi);
  const keys = new Set<bigint>([...model.keys(), ...probe]);
  for (const k of model.keys()) {
    if (k > KEY_MIN) keys.add(k - 1n);
    if (k < KEY_MAX) keys.add(k + 1n);
  }
  for (const k of keys) {
    const { value, path } = await btreeGet(db.loader, root, k, at);
    const want = model.get(k);
    expect(valueOid(value as PersistentRef | undefined)).toBe(want === undefined ? undefined : 1000n + BigInt(want));
    checkPath(path, root, k);
    const last = path[path.length - 1]!;
    if (model.size === 0) expect(path).toEqual([{ oid: root, kind: 'tree', serial: last.serial, lo: KEY_MIN, hi: KEY_MAX }]);
    else {
      const b = bucketOf(k)!;
      expect(last).toEqual({ oid: b.oid, kind: 'bucket', serial: b.serial, lo: b.lo, hi: b.hi });
    }
  }

  const mk = await btreeMaxKey(db.loader, root, at);
  expect(mk.key).toBe(sorted.length > 0 ? sorted[sorted.length - 1]![0] : undefined);
  checkPath(mk.path, root, mk.key);

  // a sub-range
  if (sorted.length > 0) {
    const lo = sorted[Math.floor(sorted.length / 4)]![0];
    const hi = sorted[Math.floor((3 * sorted.length) / 4)]![0];
    const sub: bigint[] = [];
    for await (const [k] of btreeItems(db.loader, root, at, lo, hi)) sub.push(k);
    expect(sub).toEqual(sorted.filter(([k]) => k >= lo && k <= hi).map(([k]) => k));
  }

  const reach = new Set(nodeOids(r.shape).filter((o): o is Oid => o !== null));
  const embedded = r.shape.kind === 'tree' && r.shape.children.length === 1 && r.shape.children[0]!.oid === null;
  return { reach, embedded, nbuckets: r.buckets.length };
}

function checkPath(path: PathNode[], root: Oid, key: bigint | undefined): void {
  expect(path.length).toBeGreaterThan(0);
  expect(path[0]).toMatchObject({ oid: root, kind: 'tree', lo: KEY_MIN, hi: KEY_MAX });
  for (let i = 1; i < path.length; i++) {
    expect(path[i - 1]!.kind).toBe('tree');
    expect(path[i]!.lo >= path[i - 1]!.lo && path[i]!.hi <= path[i - 1]!.hi).toBe(true);
    if (path[i]!.oid === null) expect(path[i]!.serial).toBe(path[i - 1]!.serial);
  }
  if (key !== undefined) expect(path[path.length - 1]!.lo <= key && key <= path[path.length - 1]!.hi).toBe(true);
}

async function runScenario(family: BTreeFamily, sizes: BTreeWriteOptions, txns: Op[][], probe: bigint[]): Promise<void> {
  const db = await openTestDB();
  try {
    let txn = db.txn();
    const root = btreeCreate(txn, family);
    let at = await txn.commit();
    const model = new Map<bigint, number>();
    const history: Snapshot[] = [{ at, model: new Map() }];
    let state = await verify(db, root, at, model, probe);
    let mustNotEmbed = false; // the tree was split since it last was empty: its buckets have oids

    for (const ops of txns) {
      txn = db.txn();
      const before = new Map(model);
      let emptied = false;
      for (const op of ops) {
        if (op.t === 'set' || op.t === 'setRange') {
          const n = op.t === 'set' ? 1 : op.n;
          for (let i = 0; i < n; i++) {
            const k = op.k + BigInt(i);
            if (k > familyKeyRange(family).max) break;
            const v = op.v + i;
            await btreeSet(txn, root, k, val(1000 + v), sizes);
            model.set(k, v);
          }
        } else {
          const n = op.t === 'del' ? 1 : op.n;
          for (let i = 0; i < n; i++) {
            const k = op.k + BigInt(i);
            const had = model.delete(k);
            expect(await btreeDelete(txn, root, k, sizes)).toBe(had);
            if (had && model.size === 0) emptied = true;
          }
        }
      }
      const stored = txn.changed();
      if (stored.length === 0) {
        expect([...model]).toEqual([...before]); // only deletes of absent keys
        continue;
      }
      const prevAt = at;
      at = await txn.commit();
      history.push({ at, model: new Map(model) });
      const prev = state;
      state = await verify(db, root, at, model, probe);

      if (emptied) mustNotEmbed = false;
      if (mustNotEmbed && state.embedded) throw new Error('a tree whose buckets got oids went back to the embedded form');
      if (state.nbuckets >= 2) mustNotEmbed = true;

      const single = ops.length === 1 && (ops[0]!.t === 'set' || ops[0]!.t === 'del');
      if (single) {
        const op = ops[0]!;
        for (const oid of stored) {
          // no garbage: every stored object is (or was, just before) part of the tree
          expect(prev.reach.has(oid) || state.reach.has(oid), `stored oid ${oid} is in neither tree`).toBe(true);
          if (!prev.reach.has(oid)) continue;
          // and every stored old object changed — except the bucket (or embedding tree) of a replaced key
          const a = (await db.st.load(oid, prevAt)).data;
          const b = (await db.st.load(oid, at)).data;
          if (Buffer.from(a).equals(Buffer.from(b))) {
            expect(op.t === 'set' && before.has(op.k), `oid ${oid} stored unchanged`).toBe(true);
            const { path } = await btreeGet(db.loader, root, op.k, at);
            const owner = path[path.length - 1]!.oid ?? path[path.length - 2]!.oid;
            expect(oid).toBe(owner);
          }
        }
      }
    }

    // MVCC: every revision still reads as it was
    for (const h of history) {
      const got: bigint[] = [];
      for await (const [k] of btreeItems(db.loader, root, h.at)) got.push(k);
      expect(got).toEqual([...h.model.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    }
  } finally {
    await db.close();
  }
}

const smallSizes = fc.constantFrom<BTreeWriteOptions>(
  { maxLeaf: 2, maxInternal: 2 },
  { maxLeaf: 3, maxInternal: 2 },
  { maxLeaf: 2, maxInternal: 3 },
  { maxLeaf: 4, maxInternal: 4 },
  { maxLeaf: 3, maxInternal: 4 },
  { maxLeaf: 1, maxInternal: 2 },
);

describe('btree writer: random set/delete against a Map model', () => {
  for (const family of ['LO', 'IO'] as const) {
    it(`${family}, node sizes 1..4`, async () => {
      await fc.assert(
        fc.asyncProperty(smallSizes, opsArb(family, 40, false), fc.array(keyArb(family, 40), { maxLength: 5 }), async (sizes, txns, probe) => {
          await runScenario(family, sizes, txns, probe);
        }),
        fcParams(60),
      );
    }, 300_000);

    it(`${family}, real node sizes (60/500), range operations`, async () => {
      await fc.assert(
        fc.asyncProperty(opsArb(family, 400, true), fc.array(keyArb(family, 400), { maxLength: 5 }), async (txns, probe) => {
          await runScenario(family, {}, txns, probe);
        }),
        fcParams(25),
      );
    }, 300_000);
  }

  it('regression examples', async () => {
    const XS = { maxLeaf: 2, maxInternal: 2 };
    // fill to three levels, then empty it from the left, then from the right, in one transaction each
    const fill: Op[] = Array.from({ length: 12 }, (_, i) => ({ t: 'set', k: BigInt(i), v: i + 1 }));
    await runScenario('LO', XS, [fill, Array.from({ length: 12 }, (_, i) => ({ t: 'del', k: BigInt(i) }))], []);
    await runScenario('LO', XS, [fill, Array.from({ length: 12 }, (_, i) => ({ t: 'del', k: BigInt(11 - i) }))], []);
    // one operation per transaction, deleting from the middle out
    await runScenario('IO', XS, [fill, ...[6, 5, 7, 4, 8, 3, 9, 2, 10, 1, 11, 0].map((k): Op[] => [{ t: 'del', k: BigInt(k) }])], []);
  }, 60_000);
});
