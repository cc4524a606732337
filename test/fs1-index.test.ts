// FsIndex and the `.index` file (zodb.md §2.5): layout, codec round trips, and what open does
// with a shipped, missing, stale, garbage or foreign index.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { FsIndex, IndexFormatError, decodeIndexFile, encodeIndexFile } from '../src/zodb/fs1/fsindex.js';
import { checkFile } from '../src/zodb/fs1/scan.js';
import { PyDict, Pickler, Tuple } from '../src/zodb/pickle/index.js';
import { TmpDirs, bytes, copyFixture, historyFs } from './helpers/fs1util.js';
import { seedOr } from './helpers/fuzz.js';
import { repoRoot } from './helpers/paths.js';

const tmp = new TmpDirs();
afterEach(() => tmp.cleanup());

const seed = seedOr(Date.now() % 1e9);
console.log(`fs1-index: fast-check seed ${seed} (set WCFS_SEED to replay)`);

describe('FsIndex', () => {
  it('get/set, sparse → dense, oids beyond 2^53, order, maxOid', () => {
    const ix = new FsIndex();
    expect(ix.maxOid).toBe(-1n);
    expect(ix.get(0n)).toBeUndefined();
    for (let i = 0; i < 20000; i++) ix.set(BigInt(i), 4 + i);
    ix.set(0n, 999); // overwrite
    expect(ix.size).toBe(20000);
    expect(ix.get(0n)).toBe(999);
    expect(ix.get(19999n)).toBe(20003);
    expect(ix.get(20000n)).toBeUndefined();
    const big = 0xfedcba9876543210n;
    ix.set(big, 2 ** 47);
    ix.set((1n << 53n) + 1n, 77);
    expect(ix.get(big)).toBe(2 ** 47);
    expect(ix.get((1n << 53n) + 1n)).toBe(77);
    expect(ix.get(big - 1n)).toBeUndefined();
    expect(ix.maxOid).toBe(big);
    expect(ix.size).toBe(20002);
    const keys = [...ix.entries()].map(([o]) => o);
    for (let i = 1; i < keys.length; i++) expect(keys[i]! > keys[i - 1]!).toBe(true);
    expect(() => ix.set(1n, 0)).toThrow(RangeError);
  });

  it('behaves like Map<bigint, number> (property)', () => {
    const oid = fc.oneof(fc.bigInt({ min: 0n, max: 300000n }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }));
    fc.assert(
      fc.property(fc.array(fc.tuple(oid, fc.integer({ min: 4, max: 2 ** 48 - 2 })), { maxLength: 300 }), (ops) => {
        const ix = new FsIndex();
        const m = new Map<bigint, number>();
        for (const [o, p] of ops) {
          ix.set(o, p);
          m.set(o, p);
        }
        expect(ix.size).toBe(m.size);
        for (const [o, p] of m) expect(ix.get(o)).toBe(p);
        expect([...ix.entries()]).toEqual([...m.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)));
        const dec = decodeIndexFile(encodeIndexFile(ix, 2 ** 48 - 1), 'x.index');
        expect(dec.pos).toBe(2 ** 48 - 1);
        expect(dec.index.equals(ix)).toBe(true);
        expect(dec.index.maxOid).toBe(ix.maxOid);
      }),
      { seed, numRuns: 200 },
    );
  });
});

describe('.index codec', () => {
  it('decodes the shipped index = scan, and re-encodes it byte for byte', () => {
    const buf = fs.readFileSync(historyFs + '.index');
    const { pos, index } = decodeIndexFile(buf, 'data.fs.index');
    expect(pos).toBe(fs.statSync(historyFs).size);
    const scanned = checkFile(historyFs).index;
    expect(new Map(index.entries())).toEqual(scanned);
    // what ZODB/py3 wrote is exactly what we write
    expect(Buffer.from(encodeIndexFile(index, pos)).equals(buf)).toBe(true);
  });

  it('accepts the py2 format (str opcodes)', () => {
    const ix = new FsIndex();
    ix.set(1n, 100);
    ix.set(0x10001n, 200);
    const p = new Pickler(2); // protocol 2: bytes are written as py2 str
    const parts = [new Pickler(2).dump(100000n).result()];
    parts.push(new Pickler(2).dump(new Tuple([new Uint8Array(6), Uint8Array.from([0, 1, 0, 0, 0, 0, 0, 100])])).result());
    parts.push(new Pickler(2).dump(new Tuple([Uint8Array.from([0, 0, 0, 0, 0, 1]), Uint8Array.from([0, 1, 0, 0, 0, 0, 0, 200])])).result());
    parts.push(p.dump(null).result());
    const buf = Buffer.concat(parts);
    expect(buf.includes(0x55)).toBe(true); // SHORT_BINSTRING 'U'
    const dec = decodeIndexFile(buf, 'py2.index');
    expect(dec.index.equals(ix)).toBe(true);
  });

  it('rejects garbage, the old dict format, bad buckets, trailing bytes', () => {
    const bad = (b: Uint8Array) => expect(() => decodeIndexFile(b, 'i')).toThrow(IndexFormatError);
    bad(new Uint8Array(0));
    bad(bytes('hello world'));
    const d = new PyDict();
    d.set('pos', 100n);
    d.set('index', new PyDict());
    bad(new Pickler(3).dump(d).result());
    const posP = new Pickler(3).dump(1000n).result();
    const none = new Pickler(3).dump(null).result();
    bad(posP); // no terminator
    bad(Buffer.concat([posP, new Pickler(3).dump(new Tuple([new Uint8Array(6), new Uint8Array(7)])).result(), none]));
    bad(Buffer.concat([posP, new Pickler(3).dump(new Tuple([new Uint8Array(5), new Uint8Array(8)])).result(), none]));
    // position beyond pos
    bad(Buffer.concat([posP, new Pickler(3).dump(new Tuple([new Uint8Array(6), Uint8Array.from([0, 1, 0, 0, 0, 0, 0x10, 0])])).result(), none]));
    bad(Buffer.concat([posP, none, bytes('x')]));
    expect(decodeIndexFile(Buffer.concat([posP, none]), 'i').index.size).toBe(0);
  });
});

describe('open with an index', () => {
  const quiet = () => {
    const msgs: string[] = [];
    return { msgs, warn: (m: string) => msgs.push(m) };
  };

  it('without an index: rebuilt by scan, same content, no warning', async () => {
    const f = copyFixture(historyFs, tmp.make());
    const q = quiet();
    const s = await FileStorage.open(f, { readOnly: true, warn: q.warn });
    try {
      expect(s.openInfo.indexLoaded).toBe(false);
      expect(s.openInfo.scannedTxns).toBe(checkFile(f).txns);
      expect(new Map(s.indexEntries())).toEqual(checkFile(f).index);
      expect(q.msgs).toEqual([]);
      expect((await s.load(0n, s.head())).data.length).toBeGreaterThan(0);
    } finally {
      await s.close();
    }
    expect(fs.existsSync(f + '.index')).toBe(false); // readers never write it
  });

  it('stale index (file appended to after it was saved) is caught up', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { index: true });
    const w = await FileStorage.open(f, { warn: () => {} });
    const oid = w.newOid();
    await w.commit({ records: [{ oid, data: bytes('new object') }] });
    await w.commit({ records: [{ oid: 0n, data: bytes('root v2') }] });
    await w.commit({ records: [] });
    await w.close();
    fs.copyFileSync(historyFs + '.index', f + '.index'); // put the old index back
    const q = quiet();
    const s = await FileStorage.open(f, { readOnly: true, warn: q.warn });
    try {
      expect(s.openInfo.indexLoaded).toBe(true);
      expect(s.openInfo.scannedTxns).toBe(3);
      expect(new Map(s.indexEntries())).toEqual(checkFile(f).index);
      expect(Buffer.from((await s.load(oid, s.head())).data).toString()).toBe('new object');
      expect(Buffer.from((await s.load(0n, s.head())).data).toString()).toBe('root v2');
      expect(q.msgs).toEqual([]);
    } finally {
      await s.close();
    }
  });

  it('index from a longer file (pos beyond the end) is ignored with a warning', async () => {
    const dir = tmp.make();
    const rep = checkFile(historyFs);
    const f = path.join(dir, 'data.fs');
    // cut at a txn boundary in the middle
    const cut = checkTxnBoundary(historyFs, Math.floor(rep.txns / 2));
    fs.writeFileSync(f, fs.readFileSync(historyFs).subarray(0, cut));
    fs.copyFileSync(historyFs + '.index', f + '.index');
    const q = quiet();
    const s = await FileStorage.open(f, { readOnly: true, warn: q.warn });
    try {
      expect(s.openInfo.indexLoaded).toBe(false);
      expect(q.msgs.join('\n')).toMatch(/data\.fs\.index: ignored/);
      expect(q.msgs.join('\n')).toContain(f);
      expect(new Map(s.indexEntries())).toEqual(checkFile(f).index);
    } finally {
      await s.close();
    }
  });

  it('a FIFO (or any non-file) at .index is ignored with a warning instead of blocking the open', () => {
    const f = copyFixture(historyFs, tmp.make());
    expect(spawnSync('mkfifo', [f + '.index']).status).toBe(0);
    // in a child process: an open that blocks must fail the test, not hang the test worker
    const js = `import { FileStorage } from ${JSON.stringify(path.join(repoRoot, 'dist', 'zodb', 'fs1', 'filestorage.js'))};
      const msgs = [];
      const s = await FileStorage.open(process.argv[1], { readOnly: true, warn: (m) => msgs.push(m) });
      console.log(JSON.stringify({ loaded: s.openInfo.indexLoaded, head: s.head().toString(16), msgs }));
      await s.close();`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', js, f], { encoding: 'utf8', timeout: 20_000 });
    expect(r.signal, `open blocked: ${r.stderr}`).toBe(null);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { loaded: boolean; head: string; msgs: string[] };
    expect(out.loaded).toBe(false);
    expect(out.head).toBe(checkFile(f).tids.at(-1)!.toString(16));
    expect(out.msgs).toEqual([`${f}.index: is a FIFO, not a regular file; rebuilding the index by scanning ${f}`]);
  }, 30_000);

  it('garbage, empty, old-format and lying indexes are ignored with a rebuild', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir);
    const want = checkFile(f).index;
    const good = decodeIndexFile(fs.readFileSync(historyFs + '.index'), 'i');
    // the newest record of oid 0 is in the last txns: point it elsewhere
    const lying = new FsIndex();
    for (const [o, p] of good.index.entries()) lying.set(o, p);
    const [lastOid] = [...checkFile(f).index.entries()].sort((a, b) => b[1] - a[1])[0]!;
    lying.set(lastOid, 4);
    const old = new PyDict();
    old.set('pos', 1n);
    const cases: Array<[string, Uint8Array]> = [
      ['garbage', Uint8Array.from({ length: 5000 }, (_, i) => (i * 7919) & 0xff)],
      ['empty', new Uint8Array(0)],
      ['old dict format', new Pickler(3).dump(old).result()],
      ['lying', encodeIndexFile(lying, good.pos)],
      ['pos not at a txn boundary', encodeIndexFile(good.index, good.pos - 3)],
    ];
    for (const [what, buf] of cases) {
      fs.writeFileSync(f + '.index', buf);
      const q = quiet();
      const s = await FileStorage.open(f, { readOnly: true, warn: q.warn });
      try {
        expect(s.openInfo.indexLoaded, what).toBe(false);
        expect(q.msgs.length, what).toBe(1);
        expect(new Map(s.indexEntries()), what).toEqual(want);
      } finally {
        await s.close();
      }
    }
  });

  it('the index a writer saves on close reads back identically and is used', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir);
    const w = await FileStorage.open(f, { warn: () => {} });
    expect(w.openInfo.indexLoaded).toBe(false);
    await w.commit({ records: [{ oid: w.newOid(), data: bytes('x') }] });
    await w.close();
    expect(fs.existsSync(f + '.index.index_tmp')).toBe(false);
    const dec = decodeIndexFile(fs.readFileSync(f + '.index'), 'i');
    expect(dec.pos).toBe(fs.statSync(f).size);
    expect(new Map(dec.index.entries())).toEqual(checkFile(f).index);
    const s = await FileStorage.open(f, { readOnly: true });
    try {
      expect(s.openInfo.indexLoaded).toBe(true);
      expect(s.openInfo.scannedTxns).toBe(0);
    } finally {
      await s.close();
    }
  });
});

/** End position of the n-th txn (1-based) of a file. */
function checkTxnBoundary(file: string, n: number): number {
  const b = fs.readFileSync(file);
  let pos = 4;
  for (let i = 0; i < n; i++) {
    const tlen = Number(b.readBigUInt64BE(pos + 8));
    pos += tlen + 8;
  }
  return pos;
}
