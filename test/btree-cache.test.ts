// The decoded BTree node cache (btree/cache.ts) and lookups through it (read.ts loadNode):
// table cases for the LRU and its byte bound, the known range that lets a lookup skip the load
// (capped at the head), frozen shared nodes, sharing across revisions,
// checks that depend on the path still made on cached nodes, and WriteTxn lookups never seeing
// or filling the cache; then a seeded random test: a tree mutated at random (tiny node sizes:
// deep trees, splits and removals everywhere) over many commits, where btreeGet / btreeMaxKey /
// btreeRange through a cached loader, through one with a tiny bound (evicting all the time) and
// through an uncached one agree at every revision, visited in random order (and through a
// cached loader over a storage without loadTransient, which learns serials with loadRecord).
//
// Rerun a failure with WCFS_SEED=<seed> npx vitest run --project fs1 test/btree-cache
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StorageLoader, WriteTxn } from '../src/zodb/db.js';
import { ObjectFormatError } from '../src/zodb/errors.js';
import type { Oid, Tid } from '../src/zodb/ids.js';
import type { IStorage } from '../src/zodb/storage.js';
import { PersistentRef, type PyValue } from '../src/zodb/pickle/index.js';
import { rng } from '../src/util/rng.js';
import {
  KEY_MAX,
  KEY_MIN,
  NodeCache,
  approxNodeBytes,
  btreeCreate,
  btreeDelete,
  btreeGet,
  btreeMaxKey,
  btreeRange,
  btreeSet,
  bucketClass,
  loadNode,
  treeClass,
  type LoadedNode,
} from '../src/zodb/btree/index.js';
import { encodeBucketState, encodeTreeState } from '../src/zodb/btree/state.js';
import { openTestDB, val, type TestDB } from './helpers/btree.js';
import { seedOr } from './helpers/fuzz.js';

const SEED = seedOr(11_2026);

/** A standalone bucket node (not from a storage) with n items. */
function bucketNode(oid: Oid, serial: Tid, n: number): LoadedNode {
  const keys = Array.from({ length: n }, (_, i) => BigInt(i));
  return { kind: 'bucket', oid, serial, family: 'LO', bucket: { keys, values: keys.map((k) => val(k)), next: null } };
}

describe('NodeCache', () => {
  it('keys by (oid, serial): several serials of one oid coexist', () => {
    const c = new NodeCache(1 << 20);
    const a = c.put(bucketNode(1n, 10n, 3));
    const b = c.put(bucketNode(1n, 20n, 4));
    expect(c.get(1n, 10n)).toBe(a);
    expect(c.get(1n, 20n)).toBe(b);
    expect(c.get(1n, 15n)).toBeUndefined();
    expect(c.get(2n, 10n)).toBeUndefined();
    expect(c.stats()).toMatchObject({ entries: 2, hits: 0, serialHits: 2, misses: 2, evictions: 0 });
    // a second put of the same (oid, serial) keeps the first node
    expect(c.put(bucketNode(1n, 10n, 3))).toBe(a);
    expect(c.stats().entries).toBe(2);
  });

  it("find answers as of any revision in an entry's known range [serial, knownTo], and only there", () => {
    const c = new NodeCache(1 << 20);
    const a = c.put(bucketNode(1n, 10n, 3), 15n); // a load as of 15 returned serial 10
    expect(c.find(1n, 9n)).toBeUndefined();
    for (const at of [10n, 12n, 15n]) expect(c.find(1n, at), `@${at}`).toBe(a);
    expect(c.find(1n, 16n)).toBeUndefined();
    expect(c.get(1n, 10n, 30n)).toBe(a); // a later load as of 30 returned 10 too
    expect(c.find(1n, 30n)).toBe(a);
    expect(c.get(1n, 10n, 20n)).toBe(a); // never shrinks
    expect(c.find(1n, 30n)).toBe(a);
    const b = c.put(bucketNode(1n, 40n, 3)); // knownTo defaults to the serial
    expect(c.find(1n, 40n)).toBe(b);
    expect(c.find(1n, 41n)).toBeUndefined();
    expect(c.find(1n, 35n)).toBeUndefined();
    expect(c.stats()).toMatchObject({ hits: 6, serialHits: 2, misses: 0 });
  });

  it('many serials of one oid, put in any order: find/get agree with the history (seeded random)', () => {
    const rand = rng(SEED);
    for (let round = 0; round < 20; round++) {
      // the true history: per oid its ascending serials; a load as of `at` returns serialAt(at)
      const hist = new Map<Oid, Tid[]>();
      for (let oid = 1n; oid <= 3n; oid++) {
        const ss = new Set<bigint>();
        for (let i = 0; i < 200; i++) ss.add(BigInt(1 + Math.floor(rand() * 5000)));
        hist.set(
          oid,
          [...ss].sort((a, b) => (a < b ? -1 : 1)),
        );
      }
      const serialAt = (oid: Oid, at: Tid) => [...hist.get(oid)!].reverse().find((x) => x <= at);
      const next = (oid: Oid, serial: Tid) => hist.get(oid)!.find((x) => x > serial) ?? 10_000n;
      const small = round % 2 === 1; // odd rounds evict: answers must still be right
      const c = new NodeCache(small ? approxNodeBytes(bucketNode(1n, 1n, 2)) * 40 : 1 << 30);
      const known = new Map<string, Tid>(); // `${oid} ${serial}` → knownTo (no eviction only)
      for (let step = 0; step < 2000; step++) {
        const oid = BigInt(1 + Math.floor(rand() * 3));
        const at = BigInt(Math.floor(rand() * 5200));
        const s = serialAt(oid, at);
        const what = `seed ${SEED} round ${round} step ${step}: oid ${oid} at ${at}`;
        const r = rand();
        if (r < 0.4 && s !== undefined) {
          // a load as of at returned s: put or get, knownTo = at (never past the next serial)
          const n = c.get(oid, s, at) ?? c.put(bucketNode(oid, s, 2), at);
          expect(n.serial, what).toBe(s);
          const k = `${oid} ${s}`;
          known.set(k, (known.get(k) ?? s) > at ? known.get(k)! : at);
        } else {
          const n = c.find(oid, at);
          if (n !== undefined) expect(n.serial, what).toBe(s);
          if (!small) {
            const kt = s === undefined ? undefined : known.get(`${oid} ${s}`);
            expect(n !== undefined, `${what} (known to ${kt})`).toBe(kt !== undefined && at <= kt && at < next(oid, s!));
          }
        }
      }
      expect(c.stats().bytes).toBeLessThanOrEqual(c.maxBytes);
    }
  });

  it('evicts least recently used first and stays within its byte bound', () => {
    const one = approxNodeBytes(bucketNode(1n, 1n, 10));
    const c = new NodeCache(3 * one); // room for three
    for (const oid of [1n, 2n, 3n]) c.put(bucketNode(oid, 1n, 10));
    expect(c.get(1n, 1n)).toBeDefined(); // 1 is now most recent: 2 is the oldest
    c.put(bucketNode(4n, 1n, 10));
    expect(c.get(2n, 1n)).toBeUndefined();
    for (const oid of [1n, 3n, 4n]) expect(c.get(oid, 1n), `oid ${oid}`).toBeDefined();
    expect(c.stats()).toMatchObject({ entries: 3, bytes: 3 * one, evictions: 1 });
    // evicting one serial of an oid keeps its others
    c.put(bucketNode(3n, 2n, 10)); // evicts 1 (LRU after the gets above)
    c.put(bucketNode(5n, 1n, 10)); // evicts 3@1
    expect(c.get(3n, 1n)).toBeUndefined();
    expect(c.get(3n, 2n)).toBeDefined();
    expect(c.stats().bytes).toBeLessThanOrEqual(3 * one);
  });

  it('a node bigger than the bound, or any node with bound 0, is not kept', () => {
    const c = new NodeCache(100);
    c.put(bucketNode(1n, 1n, 50));
    expect(c.get(1n, 1n)).toBeUndefined();
    expect(c.stats()).toMatchObject({ entries: 0, bytes: 0 });
    const z = new NodeCache(0);
    z.put(bucketNode(1n, 1n, 0));
    expect(z.stats().entries).toBe(0);
    expect(() => new NodeCache(-1)).toThrow(RangeError);
  });

  it('cached nodes are frozen: a user mutating a shared state fails loudly', () => {
    const c = new NodeCache(1 << 20);
    const n = c.put(bucketNode(1n, 1n, 3));
    if (n.kind !== 'bucket') throw new Error('bucket expected');
    expect(() => (n.bucket.keys as bigint[]).push(9n)).toThrow(TypeError); // readonly by type too
    expect(() => (n.bucket.values as PyValue[]).splice(0, 1)).toThrow(TypeError);
    expect(() => ((n as { serial: Tid }).serial = 2n)).toThrow(TypeError);
  });
});

describe('lookups through the node cache', () => {
  let db: TestDB;
  beforeEach(async () => {
    db = await openTestDB();
  });
  afterEach(async () => {
    await db.close();
  });

  /** A committed tree of keys 0..n-1 (value of k: val(k)) with small nodes; returns root, at. */
  async function makeTree(n: number): Promise<{ root: Oid; at: Tid }> {
    const txn = db.txn();
    const root = btreeCreate(txn, 'LO');
    for (let k = 0; k < n; k++) await btreeSet(txn, root, BigInt(k), val(k), { maxLeaf: 4, maxInternal: 4 });
    return { root, at: await txn.commit() };
  }

  it('StorageLoader has a cache by default; nodeCacheBytes 0 turns it off; WriteTxn has none', () => {
    expect(db.loader.nodeCache).toBeInstanceOf(NodeCache);
    expect(new StorageLoader(db.st, { nodeCacheBytes: 1234 }).nodeCache?.maxBytes).toBe(1234);
    expect(new StorageLoader(db.st, { nodeCacheBytes: 0 }).nodeCache).toBeUndefined();
    expect((db.txn() as { nodeCache?: unknown }).nodeCache).toBeUndefined();
  });

  it('a warm lookup decodes nothing; nodes unchanged by a commit are shared by both revisions', async () => {
    const { root, at: at1 } = await makeTree(40);
    const c = db.loader.nodeCache!;
    const r1 = await btreeGet(db.loader, root, 7n, at1);
    const miss1 = c.stats().misses;
    expect(miss1).toBe(r1.path.length); // every node decoded once
    const hits1 = c.stats().hits;
    expect(await btreeGet(db.loader, root, 7n, at1)).toEqual(r1);
    expect(c.stats()).toMatchObject({ misses: miss1, hits: hits1 + r1.path.length }); // not even a load

    // replace key 39's value: only its bucket is stored, so at the new revision the lookup of
    // 39 decodes that bucket alone and the lookup of 7 nothing
    const p39 = (await btreeGet(db.loader, root, 39n, at1)).path;
    const miss2 = c.stats().misses;
    const txn = db.txn();
    await btreeSet(txn, root, 39n, val(1000), { maxLeaf: 4, maxInternal: 4 });
    const at2 = await txn.commit();
    expect(await btreeGet(db.loader, root, 7n, at2)).toEqual(r1);
    const q39 = (await btreeGet(db.loader, root, 39n, at2)).path;
    expect(q39.map((p) => p.serial === at2)).toEqual(p39.map((_, i) => i === p39.length - 1));
    expect(c.stats().misses).toBe(miss2 + 1);
    expect((await btreeGet(db.loader, root, 39n, at1)).value).toEqual(val(39));
    expect((await btreeGet(db.loader, root, 39n, at2)).value).toEqual(val(1000));
  });

  it('a lookup as of a revision past the head knows nothing of later commits', async () => {
    const { root, at } = await makeTree(40);
    const future = at + (1n << 40n); // far past the head
    const plain = new StorageLoader(db.st, { nodeCacheBytes: 0 });
    expect((await btreeGet(db.loader, root, 39n, future)).value).toEqual(val(39));
    expect((await btreeGet(db.loader, root, 39n, at)).value).toEqual(val(39));
    const txn = db.txn();
    await btreeSet(txn, root, 39n, val(1000), { maxLeaf: 4, maxInternal: 4 });
    const at2 = await txn.commit();
    expect(at2).toBeLessThan(future);
    for (const t of [at, at2, at2 + 1n, future]) {
      const want = await btreeGet(plain, root, 39n, t);
      expect(want.value, `@${t}`).toEqual(t < at2 ? val(39) : val(1000));
      expect(await btreeGet(db.loader, root, 39n, t), `@${t}`).toEqual(want);
    }
  });

  it('WriteTxn lookups see their pending states and neither use nor fill the cache', async () => {
    const { root, at } = await makeTree(40);
    const c = db.loader.nodeCache!;
    for (let k = 0n; k < 40n; k++) await btreeGet(db.loader, root, k, at); // warm everything
    const before = c.stats();

    const txn = new WriteTxn(db.st);
    expect((await btreeGet(txn, root, 5n, txn.at)).value).toEqual(val(5));
    await btreeSet(txn, root, 5n, val(500), { maxLeaf: 4, maxInternal: 4 });
    await btreeSet(txn, root, 100n, val(100), { maxLeaf: 4, maxInternal: 4 }); // splits
    expect(await btreeDelete(txn, root, 6n, { maxLeaf: 4, maxInternal: 4 })).toBe(true);
    expect((await btreeGet(txn, root, 5n, txn.at)).value).toEqual(val(500));
    expect((await btreeGet(txn, root, 6n, txn.at)).value).toBeUndefined();
    expect((await btreeMaxKey(txn, root, txn.at)).key).toBe(100n);
    expect((await btreeRange(txn, root, txn.at, 4n, 7n)).map(([k]) => k)).toEqual([4n, 5n, 7n]);
    expect(c.stats()).toEqual(before); // not one get or put

    // the cached (committed) nodes are untouched by the writer's mutations
    expect((await btreeGet(db.loader, root, 5n, at)).value).toEqual(val(5));
    expect((await btreeGet(db.loader, root, 6n, at)).value).toEqual(val(6));
    expect((await btreeMaxKey(db.loader, root, at)).key).toBe(39n);
    expect(c.stats().misses).toBe(before.misses);

    const at2 = await txn.commit();
    expect((await btreeGet(db.loader, root, 5n, at2)).value).toEqual(val(500));
    expect((await btreeGet(db.loader, root, 6n, at2)).value).toBeUndefined();
    expect((await btreeGet(db.loader, root, 5n, at)).value).toEqual(val(5));
  });

  it('path-dependent checks run on cached nodes: class vs reference, keys vs keycov', async () => {
    // bucket B {10, 20} is reachable from three hand-built trees: T1 (fine), T2 (its reference
    // says B is a tree), T3 (separator 15: B as child 0 has keycov [min, 14], key 20 outside)
    const txn = db.txn();
    const BKT = bucketClass('LO');
    const TREE = treeClass('LO');
    const [b, b2, t1, t2, t3] = [txn.newOid(), txn.newOid(), txn.newOid(), txn.newOid(), txn.newOid()];
    txn.store(b, BKT, encodeBucketState({ keys: [10n, 20n], values: [val(10), val(20)] }, new PersistentRef(b2, BKT)));
    txn.store(b2, BKT, encodeBucketState({ keys: [30n], values: [val(30)] }, null));
    txn.store(t1, TREE, encodeTreeState([new PersistentRef(b, BKT), new PersistentRef(b2, BKT)], [30n], new PersistentRef(b, BKT)));
    txn.store(t2, TREE, encodeTreeState([new PersistentRef(b, TREE), new PersistentRef(b2, TREE)], [30n], new PersistentRef(b, BKT)));
    txn.store(t3, TREE, encodeTreeState([new PersistentRef(b, BKT), new PersistentRef(b2, BKT)], [15n], new PersistentRef(b, BKT)));
    const at = await txn.commit();

    const uncached = new StorageLoader(db.st, { nodeCacheBytes: 0 });
    for (const loader of [db.loader, uncached]) {
      expect((await btreeGet(loader, t1, 20n, at)).value).toEqual(val(20)); // caches B
      await expect(btreeGet(loader, t2, 20n, at)).rejects.toThrow(/expect BTrees\.LOBTree\.LOBTree, got class BTrees\.LOBTree\.LOBucket/);
      await expect(btreeGet(loader, t3, 10n, at)).rejects.toThrow(ObjectFormatError);
      await expect(btreeGet(loader, t3, 10n, at)).rejects.toThrow(/keys 10…20 outside the bucket's keycov \[-9223372036854775808, 14\]/);
      await expect(loadNode(loader, b, at, { kind: 'tree' })).rejects.toThrow(/expect an LOBTree or IOBTree/);
      expect((await btreeGet(loader, t1, 10n, at)).value).toEqual(val(10)); // still fine via T1
    }
    expect(db.loader.nodeCache!.stats().entries).toBe(4); // t1, t2, t3, B
  });
});

describe('seeded random: cached lookups equal uncached ones at every revision', () => {
  for (const family of ['LO', 'IO'] as const) {
    it(`${family}, 60 revisions of a randomly mutated tree (seed ${SEED})`, async () => {
      const db = await openTestDB();
      try {
        const r = rng(SEED + (family === 'IO' ? 1 : 0));
        const rint = (n: number) => Math.floor(r() * n);
        const opts = { maxLeaf: 2 + rint(3), maxInternal: 2 + rint(3) };
        const DOMAIN = 300;

        let txn = db.txn();
        const root = btreeCreate(txn, family);
        const revs: Array<{ at: Tid; model: Map<bigint, number> }> = [];
        const model = new Map<bigint, number>();
        revs.push({ at: await txn.commit(), model: new Map(model) });
        for (let rev = 0; rev < 60; rev++) {
          txn = db.txn();
          const nops = 1 + rint(rev < 20 ? 30 : 8);
          for (let i = 0; i < nops; i++) {
            const k = BigInt(rint(DOMAIN));
            if (r() < (rev < 20 ? 0.2 : 0.45)) {
              await btreeDelete(txn, root, k, opts);
              model.delete(k);
            } else {
              const v = rint(1e6);
              await btreeSet(txn, root, k, val(v), opts);
              model.set(k, v);
            }
          }
          revs.push({ at: await txn.commit(), model: new Map(model) });
        }

        const cached = new StorageLoader(db.st);
        const tiny = new StorageLoader(db.st, { nodeCacheBytes: 4096 });
        const plain = new StorageLoader(db.st, { nodeCacheBytes: 0 });
        // a storage without loadTransient (as ZEO): the cache learns serials through loadRecord
        const noTransient = { head: () => db.st.head(), load: (oid: Oid, at: Tid) => db.st.load(oid, at) } as unknown as IStorage;
        const async_ = new StorageLoader(noTransient, { nodeCacheBytes: 8192 });
        expect(async_.loadRecordTransient).toBeUndefined();
        // every revision twice, in random order (old ones after new ones and back)
        const order = [...revs, ...revs].map((x) => ({ x, o: r() })).sort((a, b) => a.o - b.o);
        for (const { x: rv } of order) {
          for (let i = 0; i < 12; i++) {
            const k = BigInt(rint(DOMAIN + 20) - 10);
            const at = rv.at + BigInt(rint(2)); // a commit's tid, or one between commits
            const want = await btreeGet(plain, root, k, at);
            const v = rv.model.get(k);
            expect(want.value, `key ${k} @${at}`).toEqual(v === undefined ? undefined : val(v));
            expect(await btreeGet(cached, root, k, at)).toEqual(want);
            expect(await btreeGet(tiny, root, k, at)).toEqual(want);
            expect(await btreeGet(async_, root, k, at)).toEqual(want);
          }
          const mk = await btreeMaxKey(plain, root, rv.at);
          expect(await btreeMaxKey(cached, root, rv.at)).toEqual(mk);
          expect(await btreeMaxKey(tiny, root, rv.at)).toEqual(mk);
          expect(await btreeMaxKey(async_, root, rv.at)).toEqual(mk);
          const lo = BigInt(rint(DOMAIN));
          const hi = r() < 0.3 ? KEY_MAX : lo + BigInt(rint(60));
          const from = r() < 0.2 ? KEY_MIN : lo;
          const rg = await btreeRange(plain, root, rv.at, from, hi);
          expect(rg.map(([k]) => k)).toEqual([...rv.model.keys()].filter((k) => k >= from && k <= hi).sort((a, b) => (a < b ? -1 : 1)));
          expect(await btreeRange(cached, root, rv.at, from, hi)).toEqual(rg);
          expect(await btreeRange(tiny, root, rv.at, KEY_MIN, KEY_MAX)).toEqual(await btreeRange(plain, root, rv.at));
          expect(tiny.nodeCache!.stats().bytes).toBeLessThanOrEqual(4096);
        }
        const cs = cached.nodeCache!.stats();
        const ts = tiny.nodeCache!.stats();
        expect(cs.hits).toBeGreaterThan(cs.misses); // warm lookups load nothing
        expect(cs.serialHits).toBeGreaterThan(0); // a node shared by revisions, found by serial
        expect(cs.evictions).toBe(0);
        expect(ts.evictions).toBeGreaterThan(0);
        const as = async_.nodeCache!.stats();
        expect(as.hits + as.serialHits).toBeGreaterThan(0);
        expect(as.evictions).toBeGreaterThan(0);
      } finally {
        await db.close();
      }
    });
  }
});
