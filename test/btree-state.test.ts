// BTree states: decoding of the three tree forms and of buckets, encoding round trips, and
// malformed states → ObjectFormatError naming the oid (directly and through lookups).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { LoadedObject, ObjectLoader } from '../src/zodb/db.js';
import { NoObjectError, ObjectFormatError } from '../src/zodb/errors.js';
import type { Oid, Tid } from '../src/zodb/ids.js';
import { Global, PersistentRef, Tuple, decodeRecord, encodeRecord, type PyValue } from '../src/zodb/pickle/index.js';
import {
  btreeCheck,
  btreeGet,
  btreeItems,
  btreeMaxKey,
  bucketClass,
  decodeBucketState,
  decodeTreeState,
  encodeBucketState,
  encodeEmbeddedTreeState,
  encodeTreeState,
  familyOf,
  treeClass,
} from '../src/zodb/btree/index.js';

const T = (...xs: PyValue[]) => new Tuple(xs);
const LOT = treeClass('LO');
const LOB = bucketClass('LO');
const IOB = bucketClass('IO');
const r = (oid: number, k: Global | null) => new PersistentRef(BigInt(oid), k);
const v = (n: number) => r(1000 + n, new Global('wendelin.bigfile.file_zodb', 'ZBlk0'));

/** ObjectLoader over a table of (class, state), serial = 1. States go through the pickle
 *  codec so that what is tested is what a storage would hand over. */
function tableLoader(objs: Record<number, [Global, PyValue]>): ObjectLoader {
  return {
    async loadObject(oid: Oid, _at: Tid): Promise<LoadedObject> {
      const o = objs[Number(oid)];
      if (o === undefined) throw new NoObjectError(oid);
      const { klass, state } = decodeRecord(encodeRecord(o[0], o[1]));
      return { oid, klass, state, serial: 1n };
    },
  };
}

const all = async (it: AsyncIterable<[bigint, PyValue]>) => {
  const out: bigint[] = [];
  for await (const [k] of it) out.push(k);
  return out;
};

describe('btree states: decode', () => {
  it('families and classes', () => {
    expect(familyOf(LOT)).toEqual({ family: 'LO', kind: 'tree' });
    expect(familyOf(IOB)).toEqual({ family: 'IO', kind: 'bucket' });
    expect(familyOf(new Global('BTrees.OOBTree', 'OOBTree'))).toBeUndefined();
    expect(familyOf(new Global('BTrees.IOBTree', 'LOBTree'))).toBeUndefined();
  });

  it('the three tree forms and buckets', () => {
    expect(decodeTreeState(1n, 'LO', null)).toEqual({ form: 'empty' });
    expect(decodeTreeState(1n, 'LO', T(T(T(T(1n, v(1), 3n, v(3))))))).toEqual({
      form: 'embedded',
      bucket: { keys: [1n, 3n], values: [v(1), v(3)], next: null },
    });
    const t = decodeTreeState(1n, 'LO', T(T(r(2, LOB), 10n, r(3, LOB)), r(2, LOB)));
    expect(t).toEqual({ form: 'normal', children: [r(2, LOB), r(3, LOB)], keys: [10n], childKind: 'bucket', firstbucket: r(2, LOB) });
    expect(decodeBucketState(2n, 'LO', T(T(), r(3, LOB)))).toEqual({ keys: [], values: [], next: r(3, LOB) });
    // references without a class (bare oid form) are accepted; the kind is learnt at load
    expect(decodeTreeState(1n, 'IO', T(T(r(2, null)), r(2, null)))).toMatchObject({ childKind: undefined });
  });

  it('encode round trip', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), { maxLength: 30 }), fc.boolean(), (ks, withNext) => {
        ks.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        const b = { keys: ks, values: ks.map((_, i) => v(i)) };
        const next = withNext ? r(9, LOB) : null;
        const rt = (s: PyValue) => decodeRecord(encodeRecord(LOB, s)).state;
        expect(decodeBucketState(1n, 'LO', rt(encodeBucketState(b, next)))).toEqual({ ...b, next });
        expect(decodeTreeState(1n, 'LO', rt(encodeEmbeddedTreeState(b)))).toEqual({ form: 'embedded', bucket: { ...b, next: null } });
        if (ks.length > 0) {
          const children = [r(5, LOB), ...ks.map((_, i) => r(10 + i, LOB))];
          expect(decodeTreeState(1n, 'LO', rt(encodeTreeState(children, ks, r(5, LOB))))).toEqual({
            form: 'normal',
            children,
            keys: ks,
            childKind: 'bucket',
            firstbucket: r(5, LOB),
          });
        }
      }),
    );
  });

  const badBuckets: Array<[string, PyValue, RegExp]> = [
    ['not a tuple', [T()], /expect \(items,\)/],
    ['3-tuple', T(T(), r(2, LOB), 1n), /expect \(items,\)/],
    ['items not a tuple', T([1n, v(1)]), /items: expect tuple/],
    ['odd items', T(T(1n, v(1), 2n)), /even length/],
    ['decreasing keys', T(T(1n, v(1), 5n, v(5), 3n, v(3))), /keys not increasing: \[1\] = 5, \[2\] = 3/],
    ['duplicate keys', T(T(1n, v(1), 1n, v(2))), /keys not increasing/],
    ['non-int key', T(T('a', v(1))), /key \[0\]: expect int, got str/],
    ['next is a tree', T(T(), r(3, LOT)), /next: reference to BTrees.LOBTree.LOBTree: expect BTrees.LOBTree.LOBucket/],
    ['next of another family', T(T(), r(3, IOB)), /next: reference to BTrees.IOBTree.IOBucket/],
    ['next not a ref', T(T(), 3n), /next: expect a persistent reference, got int/],
    ['weak next', T(T(), new PersistentRef(3n, null, 'weak')), /\(weak\)/],
  ];
  it.each(badBuckets)('bad bucket: %s', (_name, state, re) => {
    expect(() => decodeBucketState(0x42n, 'LO', state)).toThrow(ObjectFormatError);
    expect(() => decodeBucketState(0x42n, 'LO', state)).toThrow(/^oid 0000000000000042: LOBucket: /);
    expect(() => decodeBucketState(0x42n, 'LO', state)).toThrow(re);
  });

  it('IO keys must fit int32', () => {
    expect(() => decodeBucketState(7n, 'IO', T(T(2n ** 31n, v(1))))).toThrow(/oid 0000000000000007: IOBucket: key \[0\] = 2147483648 out of IO key range/);
    expect(decodeBucketState(7n, 'LO', T(T(2n ** 31n, v(1)))).keys).toEqual([2n ** 31n]);
    expect(() => decodeBucketState(7n, 'LO', T(T(2n ** 63n, v(1))))).toThrow(/out of LO key range/);
  });

  const badTrees: Array<[string, PyValue, RegExp]> = [
    ['int', 5n, /expect None, \(\(bucket,\),\) or \(children, firstbucket\)/],
    ['3-tuple', T(T(r(2, LOB)), r(2, LOB), 1n), /expect None/],
    ['data not a tuple', T([r(2, LOB)], r(2, LOB)), /data: expect tuple/],
    ['embedded with 2 items', T(T(T(T()), T(T()))), /embedded form: expect \(\(bucket,\),\)/],
    ['embedded bucket with next', T(T(T(T(1n, v(1)), r(3, LOB)))), /embedded bucket has a next reference/],
    ['embedded bucket malformed', T(T(T(T(2n, v(2), 1n, v(1))))), /embedded bucket: keys not increasing/],
    ['even data', T(T(r(2, LOB), 5n), r(2, LOB)), /odd length/],
    ['separators decreasing', T(T(r(2, LOB), 5n, r(3, LOB), 4n, r(4, LOB)), r(2, LOB)), /separators not increasing: 5, 4/],
    ['child not a ref', T(T(T(T())), r(2, LOB)), /child \[0\]: expect a persistent reference, got tuple\[1\]/],
    ['mixed children', T(T(r(2, LOB), 5n, r(3, LOT)), r(2, LOB)), /children of different kinds/],
    ['child of another family', T(T(r(2, IOB)), r(2, IOB)), /child \[0\]: reference to BTrees.IOBTree.IOBucket/],
    ['child of a foreign class', T(T(r(2, new Global('BTrees.OOBTree', 'OOBucket'))), r(2, LOB)), /reference to BTrees.OOBTree.OOBucket/],
    ['firstbucket a tree', T(T(r(2, LOT)), r(2, LOT)), /firstbucket: reference to BTrees.LOBTree.LOBTree: expect BTrees.LOBTree.LOBucket/],
    ['firstbucket missing', T(T(r(2, LOB)), null), /firstbucket: expect a persistent reference, got None/],
  ];
  it.each(badTrees)('bad tree: %s', (_name, state, re) => {
    expect(() => decodeTreeState(0x43n, 'LO', state)).toThrow(ObjectFormatError);
    expect(() => decodeTreeState(0x43n, 'LO', state)).toThrow(/^oid 0000000000000043: /);
    expect(() => decodeTreeState(0x43n, 'LO', state)).toThrow(re);
  });
});

describe('btree states: errors met by lookups name the bad node', () => {
  const good = {
    1: [LOT, T(T(r(2, LOB), 10n, r(3, LOB)), r(2, LOB))],
    2: [LOB, T(T(1n, v(1), 5n, v(5)), r(3, LOB))],
    3: [LOB, T(T(10n, v(10), 20n, v(20)))],
  } as Record<number, [Global, PyValue]>;

  it('a good tree reads', async () => {
    const ld = tableLoader(good);
    expect((await btreeGet(ld, 1n, 5n, 1n)).value).toEqual(v(5));
    expect(await all(btreeItems(ld, 1n, 1n))).toEqual([1n, 5n, 10n, 20n]);
    expect((await btreeMaxKey(ld, 1n, 1n)).key).toBe(20n);
    await btreeCheck(ld, 1n, 1n, { strict: true });
  });

  // [name, patch, key whose lookup visits the bad node, error]
  const cases: Array<[string, Record<number, [Global, PyValue]>, bigint, RegExp]> = [
    [
      'bucket key below its keycov',
      { 3: [LOB, T(T(9n, v(9), 20n, v(20)))] },
      15n,
      /oid 0000000000000003: keys 9…20 outside the bucket's keycov \[10, 9223372036854775807\]/,
    ],
    [
      'bucket key above its keycov',
      { 2: [LOB, T(T(1n, v(1), 10n, v(10)), r(3, LOB))] },
      1n,
      /oid 0000000000000002: keys 1…10 outside the bucket's keycov \[-9223372036854775808, 9\]/,
    ],
    ['child class ≠ reference class', { 3: [LOT, null] }, 15n, /oid 0000000000000003: expect BTrees.LOBTree.LOBucket, got class BTrees.LOBTree.LOBTree/],
    ['child of another family', { 2: [IOB, T(T())] }, 1n, /oid 0000000000000002: expect BTrees.LOBTree.LOBucket, got class BTrees.IOBTree.IOBucket/],
    [
      'child not a node',
      { 3: [new Global('wendelin.bigfile.file_zodb', 'ZBlk0'), new Uint8Array(3)] },
      15n,
      /oid 0000000000000003: expect BTrees.LOBTree.LOBucket, got class wendelin.bigfile.file_zodb.ZBlk0/,
    ],
    ['malformed child state', { 3: [LOB, T(T(20n, v(20), 10n, v(10)))] }, 15n, /oid 0000000000000003: LOBucket: keys not increasing/],
  ];
  it.each(cases)('%s', async (_name, patch, key, re) => {
    const ld = tableLoader({ ...good, ...patch });
    await expect(btreeGet(ld, 1n, key, 1n)).rejects.toThrow(re);
    await expect(all(btreeItems(ld, 1n, 1n))).rejects.toThrow(re);
    await expect(btreeCheck(ld, 1n, 1n)).rejects.toThrow(re);
  });

  it('separators outside the keycov of a subtree', async () => {
    const ld = tableLoader({
      1: [LOT, T(T(r(2, LOT), 100n, r(3, LOT)), r(4, LOB))],
      2: [LOT, T(T(r(4, LOB), 150n, r(5, LOB)), r(4, LOB))], // 150 > 99
      3: [LOT, T(T(r(6, LOB)), r(6, LOB))],
      4: [LOB, T(T(1n, v(1)), r(5, LOB))],
      5: [LOB, T(T(), r(6, LOB))],
      6: [LOB, T(T(100n, v(100)))],
    });
    await expect(btreeGet(ld, 1n, 1n, 1n)).rejects.toThrow(/oid 0000000000000002: separators 150…150 outside the node's keycov \[-9223372036854775808, 99\]/);
    await expect(btreeGet(ld, 1n, 100n, 1n)).resolves.toMatchObject({ value: v(100) }); // the bad node is not on this path
  });

  it('a child reference without class: kinds are checked on load', async () => {
    const ld = tableLoader({
      1: [LOT, T(T(r(2, null), 10n, r(3, null)), r(2, null))],
      2: [LOB, T(T(1n, v(1)), r(3, null))],
      3: [LOT, null],
    });
    expect((await btreeGet(ld, 1n, 1n, 1n)).value).toEqual(v(1));
    // a lookup sees one child only: with no class in the references nothing tells it the kinds differ
    expect((await btreeGet(ld, 1n, 10n, 1n)).value).toBeUndefined();
    await expect(btreeCheck(ld, 1n, 1n)).rejects.toThrow(/oid 0000000000000003: expect BTrees.LOBTree.LOBucket, got class BTrees.LOBTree.LOBTree/);
  });

  it('check: next chain, firstbucket, sharing, cycles, strict rules', async () => {
    const base = {
      1: [LOT, T(T(r(2, LOB), 10n, r(3, LOB)), r(2, LOB))],
      2: [LOB, T(T(1n, v(1)), r(3, LOB))],
      3: [LOB, T(T(10n, v(10)))],
    } as Record<number, [Global, PyValue]>;
    await btreeCheck(tableLoader(base), 1n, 1n, { strict: true });
    await expect(btreeCheck(tableLoader({ ...base, 2: [LOB, T(T(1n, v(1)))] }), 1n, 1n)).rejects.toThrow(
      /oid 0000000000000002: btree check: bucket \[0\] \(keys 1…\): next = None, want 3/,
    );
    await expect(btreeCheck(tableLoader({ ...base, 3: [LOB, T(T(10n, v(10)), r(2, LOB))] }), 1n, 1n)).rejects.toThrow(/next = 2, want None/);
    await expect(btreeCheck(tableLoader({ ...base, 1: [LOT, T(T(r(2, LOB), 10n, r(3, LOB)), r(3, LOB))] }), 1n, 1n)).rejects.toThrow(
      /oid 0000000000000001: btree check: firstbucket = 3, want 2/,
    );
    await expect(btreeCheck(tableLoader({ ...base, 1: [LOT, T(T(r(2, LOB), 10n, r(2, LOB)), r(2, LOB))] }), 1n, 1n)).rejects.toThrow(/node reachable twice/);
    const cyc = { 1: [LOT, T(T(r(1, LOT)), r(2, LOB))] } as Record<number, [Global, PyValue]>;
    await expect(btreeCheck(tableLoader(cyc), 1n, 1n)).rejects.toThrow(/reachable twice/);
    await expect(btreeGet(tableLoader(cyc), 1n, 1n, 1n)).rejects.toThrow(/deeper than 64 levels/);
    // strict: empty bucket / empty subtree / embedded below the root are not what BTrees writes
    const withEmpty = { ...base, 3: [LOB, T(T())] } as Record<number, [Global, PyValue]>;
    await btreeCheck(tableLoader(withEmpty), 1n, 1n);
    await expect(btreeCheck(tableLoader(withEmpty), 1n, 1n, { strict: true })).rejects.toThrow(/oid 0000000000000003: btree check: empty bucket/);
    const deep = {
      1: [LOT, T(T(r(2, LOT)), r(3, LOB))],
      2: [LOT, T(T(T(T(1n, v(1)))))],
    } as Record<number, [Global, PyValue]>;
    await expect(btreeCheck(tableLoader(deep), 1n, 1n, { strict: true })).rejects.toThrow(/embedded bucket below the root/);
  });

  it('maxKey skips empty leaves on the right (hand-built trees)', async () => {
    const ld = tableLoader({
      1: [LOT, T(T(r(2, LOB), 10n, r(3, LOB), 20n, r(4, LOB)), r(2, LOB))],
      2: [LOB, T(T(1n, v(1), 5n, v(5)), r(3, LOB))],
      3: [LOB, T(T(), r(4, LOB))],
      4: [LOB, T(T())],
    });
    const { key, path } = await btreeMaxKey(ld, 1n, 1n);
    expect(key).toBe(5n);
    expect(path.map((p) => p.oid)).toEqual([1n, 2n]);
    expect(path[1]).toMatchObject({ lo: -(2n ** 63n), hi: 9n });
    const empty = tableLoader({ 1: [LOT, null] });
    expect(await btreeMaxKey(empty, 1n, 1n)).toEqual({ key: undefined, path: [{ oid: 1n, kind: 'tree', serial: 1n, lo: -(2n ** 63n), hi: 2n ** 63n - 1n }] });
    expect(await btreeGet(empty, 1n, 7n, 1n)).toEqual({
      value: undefined,
      path: [{ oid: 1n, kind: 'tree', serial: 1n, lo: -(2n ** 63n), hi: 2n ** 63n - 1n }],
    });
  });
});
