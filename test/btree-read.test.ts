// BTree reading on databases written by Python: wendelin.core's zblk fixtures (blktab in the
// embedded-bucket form, a two-bucket IOBTree chunktab) and the zodb-history database (three
// ZBigFiles with a history of 61 transactions) — lookups, paths and keycovs, maxKey against
// the manifest's file sizes, range iteration, and the whole-tree structural check.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { StorageLoader } from '../src/zodb/db.js';
import { ObjectFormatError } from '../src/zodb/errors.js';
import { parseHex16, type Oid, type Tid } from '../src/zodb/ids.js';
import { PersistentRef, Tuple } from '../src/zodb/pickle/index.js';
import { KEY_MAX, KEY_MIN, btreeCheck, btreeGet, btreeItems, btreeMaxKey, shapeText, type PathNode } from '../src/zodb/btree/index.js';
import { historyManifestPath, historyPath, zblkKinds, zblkPath } from './helpers/paths.js';

async function items(loader: StorageLoader, root: Oid, at: Tid, lo?: bigint, hi?: bigint): Promise<Array<[bigint, Oid]>> {
  const out: Array<[bigint, Oid]> = [];
  for await (const [k, v] of btreeItems(loader, root, at, lo, hi)) out.push([k, (v as PersistentRef).oid]);
  return out;
}

const range = (from: number, to: number, step: number) => {
  const xs: number[] = [];
  for (let x = from; x <= to; x += step) xs.push(x);
  return xs;
};

/** Path invariants: starts at root with the full keycov, each keycov inside the previous one,
 *  the last keycov contains `key` (when given). */
function checkPath(path: PathNode[], root: Oid, key?: bigint): void {
  expect(path[0]).toMatchObject({ oid: root, kind: 'tree', lo: KEY_MIN, hi: KEY_MAX });
  for (let i = 1; i < path.length; i++) {
    expect(path[i]!.lo >= path[i - 1]!.lo && path[i]!.hi <= path[i - 1]!.hi, `keycov nesting at ${i}`).toBe(true);
    expect(path[i - 1]!.kind).toBe('tree');
  }
  if (key !== undefined) {
    const last = path[path.length - 1]!;
    expect(last.lo <= key && key <= last.hi, `key ${key} in last keycov [${last.lo}, ${last.hi}]`).toBe(true);
  }
}

describe.each(zblkKinds)('wendelin-zblk %s', (kind) => {
  let st: FileStorage;
  let loader: StorageLoader;
  let at: Tid;
  const rev = 0x0285cbac3851eb99n;
  beforeAll(async () => {
    st = await FileStorage.open(zblkPath(kind), { readOnly: true });
    loader = new StorageLoader(st);
    at = st.head();
  });
  afterAll(async () => {
    await st.close();
  });

  it('blktab (oid 71, embedded bucket): 1 → ZBlk0 oid 2, 3 → ZBlk1 oid 3, holes elsewhere', async () => {
    const embeddedPath: PathNode[] = [
      { oid: 71n, kind: 'tree', serial: rev, lo: KEY_MIN, hi: KEY_MAX },
      { oid: null, kind: 'bucket', serial: rev, lo: KEY_MIN, hi: KEY_MAX },
    ];
    const g1 = await btreeGet(loader, 71n, 1n, at);
    expect(g1.value).toBeInstanceOf(PersistentRef);
    expect((g1.value as PersistentRef).oid).toBe(2n);
    expect((g1.value as PersistentRef).klass?.name).toBe('ZBlk0');
    expect(g1.path).toEqual(embeddedPath);
    const g3 = await btreeGet(loader, 71n, 3n, at);
    expect((g3.value as PersistentRef).oid).toBe(3n);
    expect((g3.value as PersistentRef).klass?.name).toBe('ZBlk1');
    for (const hole of [0n, 2n, 4n, -1n, KEY_MAX, KEY_MIN]) {
      const g = await btreeGet(loader, 71n, hole, at);
      expect(g.value).toBeUndefined();
      expect(g.path).toEqual(embeddedPath);
    }
    expect(await btreeMaxKey(loader, 71n, at)).toEqual({ key: 3n, path: embeddedPath });
    expect(await items(loader, 71n, at)).toEqual([
      [1n, 2n],
      [3n, 3n],
    ]);
    const c = await btreeCheck(loader, 71n, at, { strict: true });
    expect(shapeText(c.shape)).toBe('T/B1,3');
    expect(c.nobjects).toBe(1);
  });

  it('chunktab (IOBTree oid 4): two buckets 5 and 6 split at 122880', async () => {
    const want: Array<[bigint, Oid]> = [
      ...range(0, 118784, 4096).map((off, i) => [BigInt(off), BigInt(41 + i)] as [bigint, Oid]),
      [122880n, 7n],
      [126976n, 8n],
      ...range(1966080, 2093056, 4096).map((off, i) => [BigInt(off), BigInt(9 + i)] as [bigint, Oid]),
    ];
    expect(want.length).toBe(64);
    expect(await items(loader, 4n, at)).toEqual(want);

    const root = { oid: 4n, kind: 'tree', serial: rev, lo: KEY_MIN, hi: KEY_MAX };
    const b5 = { oid: 5n, kind: 'bucket', serial: rev, lo: KEY_MIN, hi: 122879n };
    const b6 = { oid: 6n, kind: 'bucket', serial: rev, lo: 122880n, hi: KEY_MAX };
    let g = await btreeGet(loader, 4n, 122880n, at);
    expect((g.value as PersistentRef).oid).toBe(7n);
    expect(g.path).toEqual([root, b6]);
    g = await btreeGet(loader, 4n, 0n, at);
    expect((g.value as PersistentRef).oid).toBe(41n);
    expect(g.path).toEqual([root, b5]);
    g = await btreeGet(loader, 4n, 122879n, at);
    expect(g.value).toBeUndefined();
    expect(g.path).toEqual([root, b5]);
    g = await btreeGet(loader, 4n, 2093057n, at);
    expect(g.value).toBeUndefined();
    expect(g.path).toEqual([root, b6]);
    g = await btreeGet(loader, 4n, -5n, at); // any int64: an IO tree's keycovs still use int64 bounds
    expect(g.path).toEqual([root, b5]);

    expect(await btreeMaxKey(loader, 4n, at)).toEqual({ key: 2093056n, path: [root, b6] });

    expect(await items(loader, 4n, at, 4096n, 8192n)).toEqual([
      [4096n, 42n],
      [8192n, 43n],
    ]);
    expect(await items(loader, 4n, at, 118784n, 126976n)).toEqual([
      [118784n, 70n],
      [122880n, 7n],
      [126976n, 8n],
    ]);
    expect(await items(loader, 4n, at, 130000n, 1966079n)).toEqual([]);
    expect(await items(loader, 4n, at, 10n, 5n)).toEqual([]);
    expect(await items(loader, 4n, at, 2093056n)).toEqual([[2093056n, 40n]]);

    const c = await btreeCheck(loader, 4n, at, { strict: true });
    expect(c.family).toBe('IO');
    expect(c.buckets.map((b) => [b.oid, b.lo, b.hi, b.keys.length])).toEqual([
      [5n, KEY_MIN, 122879n, 30],
      [6n, 122880n, KEY_MAX, 34],
    ]);
    expect(shapeText(c.shape).startsWith('T122880/B0,4096,')).toBe(true);
  });

  it('non-trees as roots are ObjectFormatErrors naming the oid', async () => {
    await expect(btreeGet(loader, 5n, 0n, at)).rejects.toThrow(/oid 0000000000000005: expect an LOBTree or IOBTree, got class BTrees.IOBTree.IOBucket/);
    await expect(btreeGet(loader, 2n, 0n, at)).rejects.toThrow(ObjectFormatError);
    await expect(btreeMaxKey(loader, 1n, at)).rejects.toThrow(/oid 0000000000000001/);
  });
});

describe('zodb-history (written by ZODB): every blktab at every revision', () => {
  interface Manifest {
    files: Record<string, { blksize: number; created: string }>;
    final: Record<string, Record<string, string>>;
    txns: Array<{ tid: string; sizes: Record<string, number> }>;
  }
  const m = JSON.parse(readFileSync(historyManifestPath, 'utf8')) as Manifest;
  let st: FileStorage;
  let loader: StorageLoader;
  beforeAll(async () => {
    st = await FileStorage.open(historyPath, { readOnly: true });
    loader = new StorageLoader(st);
  });
  afterAll(async () => {
    await st.close();
  });

  async function blktabOf(foid: Oid, at: Tid): Promise<{ blksize: bigint; blktab: Oid }> {
    const f = await loader.loadObject(foid, at);
    const [blksize, ref] = (f.state as Tuple).items as [bigint, PersistentRef];
    return { blksize, blktab: ref.oid };
  }

  it('structure (strict) and maxKey = size/blksize − 1 at every revision', async () => {
    let checked = 0;
    for (const t of m.txns) {
      const at = parseHex16(t.tid);
      for (const [hfoid, size] of Object.entries(t.sizes)) {
        const { blksize, blktab } = await blktabOf(parseHex16(hfoid), at);
        expect(blksize).toBe(BigInt(m.files[hfoid]!.blksize));
        const c = await btreeCheck(loader, blktab, at, { strict: true });
        expect(c.family).toBe('LO');
        const { key, path } = await btreeMaxKey(loader, blktab, at);
        expect(key === undefined ? 0n : (key + 1n) * blksize, `${hfoid} @${t.tid}`).toBe(BigInt(size));
        checkPath(path, blktab, key);
        if (key !== undefined) {
          // the path ends in the last bucket and names the nodes the check saw
          const last = c.buckets[c.buckets.length - 1]!;
          expect(path[path.length - 1]).toEqual({ oid: last.oid, kind: 'bucket', serial: last.serial, lo: last.lo, hi: last.hi });
        } else {
          expect(path.length).toBe(1);
        }
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(100);
  });

  it('at the final revision: every key found with its bucket as path end; final blocks present; IO chunktabs valid', async () => {
    const at = parseHex16(m.txns[m.txns.length - 1]!.tid);
    let nchunktabs = 0;
    for (const hfoid of Object.keys(m.files)) {
      const { blktab } = await blktabOf(parseHex16(hfoid), at);
      const c = await btreeCheck(loader, blktab, at, { strict: true });
      const all = await items(loader, blktab, at);
      expect(all.length).toBe(c.nitems);
      const keys = new Set(all.map(([k]) => k));
      for (const blk of Object.keys(m.final[hfoid]!)) expect(keys.has(BigInt(blk)), `${hfoid} blk ${blk}`).toBe(true);

      for (const b of c.buckets) {
        for (let i = 0; i < b.keys.length; i++) {
          const g = await btreeGet(loader, blktab, b.keys[i]!, at);
          expect(g.value).toEqual(b.values[i]);
          checkPath(g.path, blktab, b.keys[i]);
          expect(g.path[g.path.length - 1]).toEqual({ oid: b.oid, kind: 'bucket', serial: b.serial, lo: b.lo, hi: b.hi });
        }
        // keys between buckets' items are absent but land in the bucket covering them
        if (b.keys.length > 0 && b.keys[0]! > b.lo) {
          const g = await btreeGet(loader, blktab, b.keys[0]! - 1n, at);
          expect(g.value).toBeUndefined();
          expect(g.path[g.path.length - 1]!.oid).toBe(b.oid);
        }
      }
      // range iteration = filter of the full listing
      const ks = [...keys].sort((a, b) => (a < b ? -1 : 1));
      const lo = ks[Math.floor(ks.length / 3)]!;
      const hi = ks[Math.floor((2 * ks.length) / 3)]! + 1n;
      expect(await items(loader, blktab, at, lo, hi)).toEqual(all.filter(([k]) => k >= lo && k <= hi));

      // ZBlk1 values → their IOBTree chunktabs
      for (const b of c.buckets) {
        for (const v of b.values) {
          const ref = v as PersistentRef;
          if (ref.klass?.name !== 'ZBlk1') continue;
          const z = await loader.loadObject(ref.oid, at);
          const chunktab = (z.state as PersistentRef).oid;
          const cc = await btreeCheck(loader, chunktab, at, { strict: true });
          expect(cc.family).toBe('IO');
          for (const [off] of await items(loader, chunktab, at)) expect(off >= 0n && off < 2n ** 31n).toBe(true);
          nchunktabs++;
        }
      }
    }
    expect(nchunktabs).toBeGreaterThan(0);
  });
});
