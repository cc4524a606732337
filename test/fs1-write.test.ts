// FileStorage writer: create, commit round trips (load at every tid, iterate, checkFile),
// conflicts, metadata, own commits delivered to watches, and the Data.fs.lock interplay with a
// writer in another process (zodb.md §2.7, §2.10).

import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { ReadOnlyError, StorageNotFoundError } from '../src/zodb/fs1/errors.js';
import { checkFile } from '../src/zodb/fs1/scan.js';
import { openStorage } from '../src/zodb/open.js';
import { BadArgumentError, ClosedError, ConflictError, NoDataError, NoObjectError, StorageLockedError } from '../src/zodb/errors.js';
import { hex16, type Oid, type Tid } from '../src/zodb/ids.js';
import { PyDict, decodePickle } from '../src/zodb/pickle/index.js';
import type { CommitEvent } from '../src/zodb/storage.js';
import { TmpDirs, bytes, collect, copyFixture, eqBytes, historyFs, withTimeout } from './helpers/fs1util.js';
import { WriterProc } from './helpers/fs1proc.js';

const tmp = new TmpDirs();
const open: FileStorage[] = [];
afterEach(async () => {
  await WriterProc.killAll();
  for (const s of open.splice(0)) await s.close();
  tmp.cleanup();
});
async function openFS(f: string, o: Parameters<typeof FileStorage.open>[1] = {}): Promise<FileStorage> {
  const s = await FileStorage.open(f, { warn: () => {}, ...o });
  open.push(s);
  return s;
}
const text = (b: Uint8Array) => Buffer.from(b).toString();

describe('create', () => {
  it('a new storage is the magic only: no root object, head 0', async () => {
    const f = path.join(tmp.make(), 'new.fs');
    await expect(FileStorage.open(f)).rejects.toBeInstanceOf(StorageNotFoundError);
    await expect(FileStorage.open(f, { readOnly: true, create: true })).rejects.toBeInstanceOf(BadArgumentError);
    expect(fs.existsSync(f)).toBe(false);
    const s = await openFS(f, { create: true });
    expect(fs.readFileSync(f).toString('latin1')).toBe('FS30');
    expect(s.head()).toBe(0n);
    expect(s.lastOid()).toBe(0n);
    await expect(s.load(0n, 1n << 62n)).rejects.toBeInstanceOf(NoObjectError);
    expect(await collect(s.iterate())).toEqual([]);
    expect([s.newOid(), s.newOid(), s.newOid()]).toEqual([1n, 2n, 3n]);
    await s.close();
    // the .index of an empty storage is valid too
    const r = await openFS(f, { readOnly: true });
    expect(r.openInfo.indexLoaded).toBe(true);
    expect(r.head()).toBe(0n);
  });

  it('create on an existing file keeps its data', async () => {
    const f = copyFixture(historyFs, tmp.make());
    const s = await openFS(f, { create: true });
    expect(s.head()).toBe(checkFile(historyFs).tids.at(-1));
  });
});

describe('commit', () => {
  it('round trip: load at every tid, iterate, checkFile, reopen', async () => {
    const f = path.join(tmp.make(), 'data.fs');
    const s = await openFS(f, { create: true });
    // model: oid → [(tid, data|null)]
    const model = new Map<Oid, Array<[Tid, string | null]>>();
    const tids: Tid[] = [];
    const commit = async (recs: Array<[Oid, string | null]>, desc = '') => {
      const tid = await s.commit({ description: desc, records: recs.map(([oid, d]) => ({ oid, data: d === null ? null : bytes(d) })) });
      expect(tid > (tids.at(-1) ?? 0n)).toBe(true);
      expect(s.head()).toBe(tid);
      tids.push(tid);
      for (const [oid, d] of recs) {
        if (!model.has(oid)) model.set(oid, []);
        model.get(oid)!.push([tid, d]);
      }
    };
    await commit([[0n, 'root v1']], 'initial database creation');
    const a = s.newOid();
    const b = s.newOid();
    await commit([
      [a, 'a1'],
      [b, 'b1'],
      [0n, 'root v2'],
    ]);
    await commit([]);
    await commit([[a, 'a2'.repeat(5000)]]);
    await commit([[b, null]]);
    await commit([
      [b, 'b resurrected'],
      [a, 'a3'],
    ]);
    for (let i = 0; i < 20; i++)
      await commit([
        [s.newOid(), `obj ${i}`],
        [a, `a ${i}`],
      ]);

    const check = async (st: FileStorage) => {
      for (const [oid, h] of model) {
        for (const at of [tids[0]! - 1n, ...tids]) {
          let want: [Tid, string | null] | undefined;
          for (const e of h) if (e[0] <= at) want = e;
          const got = await st.load(oid, at).catch((e) => e);
          if (want === undefined) expect(got).toBeInstanceOf(NoDataError);
          else if (want[1] === null) expect(got).toMatchObject({ name: 'NoDataError', deletedAt: want[0] });
          else {
            expect(got.serial, `oid ${hex16(oid)} @${hex16(at)}`).toBe(want[0]);
            expect(text(got.data)).toBe(want[1]);
          }
        }
      }
      const txns = await collect(st.iterate());
      expect(txns.map((t) => t.tid)).toEqual(tids);
      expect(text(txns[0]!.description)).toBe('initial database creation');
      expect(txns[2]!.records).toEqual([]);
      expect(txns[4]!.records).toEqual([{ oid: b, data: null }]);
      expect(st.lastOid()).toBe(s.lastOid());
    };
    await check(s);
    const rep = checkFile(f);
    expect(rep.tail).toBe('eof');
    expect(rep.tids).toEqual(tids);
    expect(new Map(s.indexEntries())).toEqual(rep.index);
    await s.close();
    const r = await openFS(f, { readOnly: true });
    expect(r.openInfo.indexLoaded).toBe(true);
    await check(r);
  });

  it('conflicts, bad requests, metadata and extension', async () => {
    const f = path.join(tmp.make(), 'data.fs');
    const s = await openFS(f, { create: true });
    const t1 = await s.commit({ records: [{ oid: 0n, data: bytes('r'), oldSerial: 0n }] });
    await expect(s.commit({ records: [{ oid: 0n, data: bytes('r2'), oldSerial: 0n }] })).rejects.toMatchObject({
      name: 'ConflictError',
      expected: 0n,
      actual: t1,
    });
    const t2 = await s.commit({ records: [{ oid: 0n, data: bytes('r2'), oldSerial: t1 }] });
    await expect(s.commit({ records: [{ oid: 0n, data: bytes('r3'), oldSerial: t1 }] })).rejects.toBeInstanceOf(ConflictError);
    await expect(s.commit({ records: [{ oid: 5n, data: bytes('x'), oldSerial: 1n }] })).rejects.toBeInstanceOf(ConflictError);
    await expect(s.commit({ records: [{ oid: 9n, data: null }] })).rejects.toBeInstanceOf(NoObjectError);
    await expect(s.commit({ records: [{ oid: 1n, data: new Uint8Array(0) }] })).rejects.toBeInstanceOf(BadArgumentError);
    await expect(
      s.commit({
        records: [
          { oid: 1n, data: bytes('a') },
          { oid: 1n, data: bytes('b') },
        ],
      }),
    ).rejects.toBeInstanceOf(BadArgumentError);
    await expect(s.commit({ user: 'x'.repeat(70000), records: [] })).rejects.toBeInstanceOf(BadArgumentError);
    expect(s.head()).toBe(t2); // nothing of the failed commits landed
    expect(checkFile(f).tids).toEqual([t1, t2]);

    const t3 = await s.commit({
      user: '/ alice',
      description: 'δ blocks',
      extension: { k: 'v', n: 42, big: 1n << 40n, f: 1.5, ok: true },
      records: [],
    });
    await s.commit({ user: bytes('raw'), extension: {}, records: [] });
    const [m, m2] = await collect(s.iterate(t3));
    expect(text(m!.user)).toBe('/ alice');
    expect(text(m!.description)).toBe('δ blocks');
    expect(m!.extension[0]).toBe(0x80);
    expect(m!.extension[1]).toBe(3); // protocol 3 like ZODB/py3
    const d = decodePickle(m!.extension) as PyDict;
    expect(d).toBeInstanceOf(PyDict);
    expect([d.get('k'), d.get('n'), d.get('big'), d.get('f'), d.get('ok')]).toEqual(['v', 42n, 1n << 40n, 1.5, true]);
    expect(m2!.extension.length).toBe(0);
    expect(text(m2!.user)).toBe('raw');
  });

  it('own commits are delivered to watches; concurrent commits serialize', async () => {
    const f = path.join(tmp.make(), 'data.fs');
    const s = await openFS(f, { create: true });
    await s.commit({ records: [{ oid: 0n, data: bytes('root') }] });
    const w = s.watch();
    const w2 = s.watch(0n); // with history
    const tids = await Promise.all([1, 2, 3, 4, 5].map((i) => s.commit({ records: [{ oid: BigInt(i), data: bytes(`o${i}`) }] })));
    const sorted = [...tids].sort((a, b) => (a < b ? -1 : 1));
    expect(tids).toEqual(sorted); // committed in call order
    const got: CommitEvent[] = [];
    for await (const ev of w) {
      got.push(ev);
      if (got.length === 5) break;
    }
    expect(got).toEqual(tids.map((tid, i) => ({ tid, oids: [BigInt(i + 1)] })));
    const got2: CommitEvent[] = [];
    for await (const ev of w2) {
      got2.push(ev);
      if (got2.length === 6) break;
    }
    expect(got2.slice(1)).toEqual(got);
    expect(got2[0]!.oids).toEqual([0n]);
    expect(await s.sync()).toBe(tids[4]);
  });

  it('read-only and closed storages refuse', async () => {
    const f = copyFixture(historyFs, tmp.make());
    const r = await openFS(f, { readOnly: true });
    await expect(r.commit({ records: [] })).rejects.toBeInstanceOf(ReadOnlyError);
    expect(() => r.newOid()).toThrow(ReadOnlyError);
    const w = await openFS(f);
    const p = w.commit({ records: [{ oid: 0n, data: bytes('x') }] });
    const c = w.close(); // waits for the commit in flight
    const tid = await p;
    await c;
    await expect(w.load(0n, tid)).rejects.toBeInstanceOf(ClosedError);
    await expect(w.commit({ records: [] })).rejects.toBeInstanceOf(ClosedError);
    expect(() => w.watch()).toThrow(ClosedError);
    // the reader opened before still serves what it had
    const before = r.head();
    expect((await r.load(0n, before)).serial < tid).toBe(true);
    expect(await r.sync()).toBe(tid);
    expect((await r.load(0n, tid)).serial).toBe(tid);
    expect((await r.load(0n, before)).serial < tid).toBe(true);
  });

  it('loaded data is never overwritten by later loads (no aliasing)', async () => {
    const f = path.join(tmp.make(), 'data.fs');
    const s = await openFS(f, { create: true });
    const big = new Uint8Array(3 << 20).map((_, i) => i & 0xff);
    const recs = [
      { oid: 1n, data: bytes('small') },
      { oid: 2n, data: big },
    ];
    for (let i = 0; i < 600; i++) recs.push({ oid: 10n + BigInt(i), data: new Uint8Array(4000 + (i % 300)).fill(i & 0xff) });
    const t = await s.commit({ records: recs });
    const t2 = await s.commit({ records: recs.slice(2, 300).map((r) => ({ oid: r.oid, data: new Uint8Array(100).fill(0xee) })) });
    const a = (await s.load(1n, t)).data;
    const b = (await s.load(2n, t)).data;
    expect(text(a)).toBe('small');
    expect(eqBytes(b, big)).toBe(true);
    // many loads in mixed order and at both revisions: every result keeps its content
    const got: Array<[number, Uint8Array]> = [];
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 600; i += round + 1) {
        const at = (i + round) % 2 === 0 ? t : t2;
        got.push([at === t2 && i < 298 ? -1 : i, (await s.load(10n + BigInt(i), at)).data]);
      }
    }
    for (const [i, d] of got) {
      if (i === -1) expect(d.every((x) => x === 0xee)).toBe(true);
      else expect(d.length === 4000 + (i % 300) && d.every((x) => x === (i & 0xff))).toBe(true);
    }
    const a2 = (await s.load(1n, t)).data;
    a2[0] = 0;
    expect(text(a)).toBe('small');
    expect(text((await s.load(1n, t)).data)).toBe('small');
    expect(eqBytes(b, big)).toBe(true);
    expect(a).toBeInstanceOf(Uint8Array);
  });
});

describe('openStorage', () => {
  it('file:// URLs and paths; other schemes rejected clearly', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir);
    const head = checkFile(f).tids.at(-1);
    for (const u of [`file://${f}`, f, path.relative(process.cwd(), f)]) {
      const s = await openStorage(u, { readOnly: true });
      expect(s.head()).toBe(head);
      expect(s.url).toBe(`file://${f}`);
      expect(s.commit).toBeInstanceOf(Function); // the driver has it; read-only refuses at call
      await s.close();
    }
    await expect(openStorage('zeo://localhost:1?storage=1', { zeo: { connectTimeoutMs: 2000 } })).rejects.toMatchObject({ code: 'WCFS_EZEOCONN' });
    await expect(openStorage('neo://cluster@host')).rejects.toThrow(/not yet supported/);
    await expect(openStorage('gopher://x')).rejects.toBeInstanceOf(BadArgumentError);
    await expect(openStorage('file://otherhost/x.fs')).rejects.toBeInstanceOf(BadArgumentError);
    await expect(openStorage(`file://${dir}/missing.fs`, { readOnly: true })).rejects.toThrow(/missing\.fs: no such FileStorage/);
    const c = await openStorage(`file://${dir}/new.fs`, { create: true });
    expect(c.head()).toBe(0n);
    await c.close();
  });
});

describe('lock', () => {
  it('a second writer (another process) fails while the first holds Data.fs.lock', async () => {
    const f = copyFixture(historyFs, tmp.make());
    const p = new WriterProc();
    const o = await p.call({ op: 'open', path: f });
    expect(fs.readFileSync(f + '.lock', 'utf8')).toBe(` ${o.pid}\n`);
    const e = await FileStorage.open(f).catch((x) => x);
    expect(e).toBeInstanceOf(StorageLockedError);
    expect(e.message).toContain(f + '.lock');
    expect(e.message).toContain(String(o.pid));
    // readers do not lock
    const r = await openFS(f, { readOnly: true });
    const c = await p.call({ op: 'commit', records: [{ oid: '0000000000000000', data: 'by the other process' }] });
    expect(hex16(await r.sync())).toBe(c.tid);
    await p.call({ op: 'close' });
    await p.exited;
    const w = await openFS(f);
    expect(fs.readFileSync(f + '.lock', 'utf8')).toBe(` ${process.pid}\n`);
    expect(text((await w.load(0n, w.head())).data)).toBe('by the other process');
    // and now the other process is the one locked out
    const p2 = new WriterProc();
    await expect(p2.call({ op: 'open', path: f })).rejects.toMatchObject({ name: 'StorageLockedError' });
    // same process, second writer: flock is per open file, so this is refused too
    await expect(FileStorage.open(f)).rejects.toBeInstanceOf(StorageLockedError);
    await w.close();
    await withTimeout(p2.call({ op: 'open', path: f }), 10000, 'open after unlock');
  });
});

describe('big records from an mmap of the file', () => {
  it('stay correct while the file outgrows its maps; views outlive later commits and close', async () => {
    const f = path.join(tmp.make(), 'data.fs');
    const s = await openFS(f, { create: true, mapHeadroom: 1 << 20 }); // remap every ~1 MiB of growth
    const big = (k: number) => new Uint8Array(600 * 1024).map((_, i) => (i * 7 + k) & 0xff);
    const tids: bigint[] = [];
    const views: Uint8Array[] = [];
    for (let k = 0; k < 6; k++) {
      tids.push(
        await s.commit({
          records: [
            { oid: 1n, data: big(k) },
            { oid: 2n + BigInt(k), data: big(100 + k) },
          ],
        }),
      );
      views.push((await s.load(1n, tids[k]!)).data);
    }
    for (let k = 0; k < 6; k++) {
      expect(Buffer.compare((await s.load(1n, tids[k]!)).data, big(k)), `oid 1 @${k}`).toBe(0);
      expect(Buffer.compare((await s.load(2n + BigInt(k), tids[5]!)).data, big(100 + k))).toBe(0);
    }
    await s.close();
    for (let k = 0; k < 6; k++) expect(Buffer.compare(views[k]!, big(k)), `view ${k} after close`).toBe(0);
  });

  it('loadTransient reads small records from the map too, across remaps as the file grows', async () => {
    const f = path.join(tmp.make(), 'data.fs');
    const s = await openFS(f, { create: true, mapHeadroom: 64 * 1024 }); // remap every 64 KiB of growth
    const small = (k: number) => new Uint8Array(4000 + k).map((_, i) => (i * 13 + k) & 0xff);
    const tids: bigint[] = [];
    for (let k = 0; k < 40; k++) {
      tids.push(
        await s.commit({
          records: [{ oid: 1n, data: small(k) }, ...Array.from({ length: 4 }, (_, j) => ({ oid: 10n + BigInt(k * 4 + j), data: small(k + j) }))],
        }),
      );
      const t = s.loadTransient(1n, tids[k]!); // after every commit: the map must cover the new end
      expect(t.serial).toBe(tids[k]);
      expect(Buffer.compare(t.data, small(k)), `oid 1 @${k}`).toBe(0);
    }
    for (let k = 0; k < 40; k++) {
      expect(Buffer.compare(s.loadTransient(1n, tids[k]!).data, small(k)), `oid 1 @${k} (prev links)`).toBe(0);
      expect(Buffer.compare(s.loadTransient(10n + BigInt(k * 4 + 3), tids[39]!).data, small(k + 3))).toBe(0);
    }
    await s.close();
    expect(() => s.loadTransient(1n, tids[0]!)).toThrow(/closed|load/i);
  });
});
