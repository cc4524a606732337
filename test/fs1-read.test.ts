// FileStorage reader on the fixtures written by real ZODB (zodb.md §6.3): every txn and record
// passes the zodb.md §2.4 checks, tids match the manifest, load agrees with iterate at every tid.

import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { checkFile } from '../src/zodb/fs1/scan.js';
import { NoDataError, NoObjectError } from '../src/zodb/errors.js';
import { hex16, type Oid, type Tid } from '../src/zodb/ids.js';
import type { TxnRecord } from '../src/zodb/storage.js';
import { allFixtures, collect, eqBytes, historyFs, historyManifest } from './helpers/fs1util.js';

const opened: FileStorage[] = [];
afterAll(async () => {
  for (const s of opened) await s.close();
});
async function openRO(p: string): Promise<FileStorage> {
  const s = await FileStorage.open(p, { readOnly: true, warn: () => {} });
  opened.push(s);
  return s;
}

/** oid → [(tid, data|null)] in tid order, from iterate. */
function historyOf(txns: TxnRecord[]): Map<Oid, Array<[Tid, Uint8Array | null]>> {
  const h = new Map<Oid, Array<[Tid, Uint8Array | null]>>();
  for (const t of txns) {
    for (const r of t.records) {
      let l = h.get(r.oid);
      if (!l) h.set(r.oid, (l = []));
      l.push([t.tid, r.data]);
    }
  }
  return h;
}

describe.each(allFixtures)('fixture %s', (name, file) => {
  it('passes every consistency check (checkFile)', () => {
    const rep = checkFile(file);
    expect(rep.tail).toBe('eof');
    expect(rep.topPos).toBe(fs.statSync(file).size);
    expect(rep.txns).toBeGreaterThan(0);
    expect(rep.records).toBeGreaterThan(0);
    for (let i = 1; i < rep.tids.length; i++) expect(rep.tids[i]! > rep.tids[i - 1]!).toBe(true);
    expect(rep.magic).toBe(name.startsWith('py2') ? 'FS21' : 'FS30');
  });

  it('open → head, iterate, index agree with checkFile', async () => {
    const rep = checkFile(file);
    const s = await openRO(file);
    expect(s.head()).toBe(rep.tids[rep.tids.length - 1]);
    expect(s.fileMagic).toBe(rep.magic);
    const txns = await collect(s.iterate());
    expect(txns.map((t) => t.tid)).toEqual(rep.tids);
    expect(txns.reduce((n, t) => n + t.records.length, 0)).toBe(rep.records);
    expect(new Map(s.indexEntries())).toEqual(rep.index);
    expect(s.lastOid()).toBe([...rep.index.keys()].reduce((a, b) => (a > b ? a : b)));
    for (const t of txns) expect([' ', 'p']).toContain(t.status);
  });

  it('load(oid 0, head) works', async () => {
    const s = await openRO(file);
    const r = await s.load(0n, s.head());
    expect(r.data.length).toBeGreaterThan(0);
    expect(r.serial <= s.head()).toBe(true);
    // class pickle of the root: PersistentMapping
    expect(Buffer.from(r.data).toString('latin1')).toContain('PersistentMapping');
  });

  it('load at every tid agrees with iterate (all oids for small files, a sample for big)', async () => {
    const s = await openRO(file);
    const txns = await collect(s.iterate());
    const hist = historyOf(txns);
    let oids = [...hist.keys()];
    if (oids.length > 40) oids = oids.filter((_, i) => i % Math.ceil(oids.length / 40) === 0);
    const firstTid = txns[0]!.tid;
    for (const oid of oids) {
      const h = hist.get(oid)!;
      for (const at of [firstTid - 1n, ...txns.map((t) => t.tid)]) {
        let want: [Tid, Uint8Array | null] | undefined;
        for (const e of h) if (e[0] <= at) want = e;
        // loadTransient (headers and data straight from the mmap) gives the same, synchronously
        if (want === undefined) {
          await expect(s.load(oid, at)).rejects.toBeInstanceOf(NoDataError);
          expect(() => s.loadTransient(oid, at)).toThrow(NoDataError);
          continue;
        }
        if (want[1] === null) {
          await expect(s.load(oid, at)).rejects.toMatchObject({ deletedAt: want[0] });
          expect(() => s.loadTransient(oid, at)).toThrow(expect.objectContaining({ deletedAt: want[0] }));
          continue;
        }
        const r = await s.load(oid, at);
        expect(r.serial).toBe(want[0]);
        expect(eqBytes(r.data, want[1]), `oid ${hex16(oid)} @${hex16(at)}`).toBe(true);
        const t = s.loadTransient(oid, at);
        expect(t.serial).toBe(want[0]);
        expect(t.where).toBe(r.where);
        expect(eqBytes(t.data, want[1]), `transient oid ${hex16(oid)} @${hex16(at)}`).toBe(true);
      }
    }
    await expect(s.load(s.lastOid() + 1000n, s.head())).rejects.toBeInstanceOf(NoObjectError);
    expect(() => s.loadTransient(s.lastOid() + 1000n, s.head())).toThrow(NoObjectError);
  });

  it('iterate(tidMin, tidMax) selects by tid from either end', async () => {
    const s = await openRO(file);
    const all = (await collect(s.iterate())).map((t) => t.tid);
    const n = all.length;
    for (const [a, b] of [
      [0, n - 1],
      [1, 1],
      [Math.floor(n / 4), Math.floor(n / 2)],
      [n - 2, n - 1],
      [Math.floor((3 * n) / 4), n - 1],
    ] as Array<[number, number]>) {
      const lo = all[Math.max(0, a)]!;
      const hi = all[Math.max(0, b)]!;
      const got = (await collect(s.iterate(lo, hi))).map((t) => t.tid);
      expect(got).toEqual(all.filter((t) => t >= lo && t <= hi));
      // bounds between txns
      const got2 = (await collect(s.iterate(lo + 1n, hi))).map((t) => t.tid);
      expect(got2).toEqual(all.filter((t) => t >= lo + 1n && t <= hi));
    }
    expect(await collect(s.iterate(s.head() + 1n))).toEqual([]);
  });
});

describe('zodb-history', () => {
  it('txn tids equal manifest.json (plus the initial database creation txn)', async () => {
    const manifest = JSON.parse(fs.readFileSync(historyManifest, 'utf8')) as { txns: Array<{ tid: string }> };
    const s = await openRO(historyFs);
    const txns = await collect(s.iterate());
    let tids = txns.map((t) => hex16(t.tid));
    // The manifest lists the txns of the generator; the first txn of every database is the
    // root creation by ZODB's DB, which it may omit.
    if (tids.length === manifest.txns.length + 1) {
      expect(Buffer.from(txns[0]!.description).toString()).toBe('initial database creation');
      tids = tids.slice(1);
    }
    expect(tids).toEqual(manifest.txns.map((t) => t.tid));
  });

  it('shipped data.fs.index is loaded and equals a rebuild by scan', async () => {
    const s = await openRO(historyFs);
    expect(s.openInfo.indexLoaded).toBe(true);
    expect(s.openInfo.scannedTxns).toBe(0);
    expect(new Map(s.indexEntries())).toEqual(checkFile(historyFs).index);
  });
});
