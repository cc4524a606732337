// The ZEO driver (src/zodb/zeo/) against a real runzeo from the project virtualenv, in both
// encodings: every loadBefore answer shape, commits (own events, ConflictError, deletion,
// empty transactions), watches fed by another client's commits, pipelined loads, iteration
// equal to FileStorage's own, a load that waits across a server restart, the gap rules, and
// the bound of a lagging watch (catch-up from the ring, and from the server past it).
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { isCode } from '../src/errors.js';
import { hex16, type Oid, type Tid } from '../src/zodb/ids.js';
import { Global, encodeRecord } from '../src/zodb/pickle/index.js';
import { openStorage } from '../src/zodb/open.js';
import type { CommitEvent, IWritableStorage, StorageWatch } from '../src/zodb/storage.js';
import { ZeoStorage } from '../src/zodb/zeo/zeostorage.js';
import type { WatchQueue } from '../src/zodb/watchq.js';
import { startZeo, stopAllZeo, type ZeoEncoding, type ZeoServer } from './helpers/zeo.js';
import { FaultyProxy } from './helpers/tcpproxy.js';
import { python, pythonEnv } from './helpers/python.js';
import { ensureRoot } from '../src/zodb/zbigfile.js';
import { spawnSync } from 'node:child_process';
import { seedOr } from './helpers/fuzz.js';
import { rng } from '../src/util/rng.js';

const enc = new TextEncoder();
const rec = (s: string) => enc.encode(s); // opaque record bytes: the driver never decodes them

const dirs: string[] = [];
const opened: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close();
  await stopAllZeo();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
afterAll(stopAllZeo);

function tmp(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'wcfs-zeo-st-'));
  dirs.push(d);
  return d;
}

async function zopen(zurl: string, opts: Parameters<typeof ZeoStorage.open>[1] = {}): Promise<ZeoStorage> {
  const s = await ZeoStorage.open(zurl, { log: () => {}, ...opts });
  opened.push(s);
  return s;
}

/** The next n events of a watch. */
async function take(w: StorageWatch, n: number): Promise<CommitEvent[]> {
  const out: CommitEvent[] = [];
  const it = w[Symbol.asyncIterator]();
  while (out.length < n) {
    const r = await it.next();
    if (r.done) break;
    out.push(r.value);
  }
  return out;
}

const sorted = (oids: Oid[]) => [...oids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));

for (const encoding of ['pickle', 'msgpack'] as ZeoEncoding[]) {
  describe(`ZeoStorage over runzeo (${encoding})`, () => {
    let zeo: ZeoServer;
    const start = async (dir = tmp()) => (zeo = await startZeo({ fsPath: path.join(dir, 'data.fs'), encoding }));

    it('loadBefore in every answer shape; own commits are events; deletion; empty txns', { timeout: 30_000 }, async () => {
      await start();
      const w = await zopen(zeo.zurl);
      const r = await zopen(zeo.zurl, { readOnly: true });
      expect(r.head()).toBe(0n);
      const rw = r.watch();
      const ww = w.watch();
      // >>> w commits a, b; then a again; then deletes b; then an empty transaction
      const a = w.newOid();
      const b = w.newOid();
      const t1 = await w.commit({
        records: [
          { oid: a, data: rec('a1'), oldSerial: 0n },
          { oid: b, data: rec('b1'), oldSerial: 0n },
        ],
      });
      const t2 = await w.commit({ records: [{ oid: a, data: rec('a2'), oldSerial: t1 }] });
      const t3 = await w.commit({ records: [{ oid: b, data: null, oldSerial: t1 }] });
      const t4 = await w.commit({ records: [] });
      expect(w.head()).toBe(t4);
      // >>> both watches see the four transactions, in order, with their oids (r through
      // invalidations, w through its own tpc_finish replies)
      const [revs, wevs] = [await take(rw, 4), await take(ww, 4)];
      for (const evs of [revs, wevs]) expect(evs.map((e) => e.tid)).toEqual([t1, t2, t3, t4]);
      expect(wevs.map((e) => sorted(e.oids))).toEqual([sorted([a, b]), [a], [b], []]);
      // ZEO's server leaves deleted oids out of invalidateTransaction (StorageServer._delete
      // does not record them, unlike _store): other clients learn of a deletion only by loading
      expect(revs.map((e) => sorted(e.oids))).toEqual([sorted([a, b]), [a], [], []]);
      expect(r.head()).toBe(t4);
      // >>> every answer shape
      expect(await r.load(a, t4)).toMatchObject({ data: rec('a2'), serial: t2 });
      expect(await r.load(a, t2 - 1n)).toMatchObject({ data: rec('a1'), serial: t1 }); // old revision
      await expect(r.load(a, t1 - 1n)).rejects.toMatchObject({ code: 'WCFS_ENODATA', deletedAt: undefined }); // before creation
      await expect(r.load(b, t3)).rejects.toMatchObject({ code: 'WCFS_ENODATA', deletedAt: t3 }); // deleted
      expect(await r.load(b, t3 - 1n)).toMatchObject({ data: rec('b1'), serial: t1 }); // before the deletion
      await expect(r.load(0xdeadn, t4)).rejects.toMatchObject({ code: 'WCFS_ENOOBJ' }); // never existed
      // >>> a stale base: ConflictError naming the object and both serials; nothing committed
      const e = await w.commit({ records: [{ oid: a, data: rec('stale'), oldSerial: t1 }] }).catch((x: unknown) => x);
      expect(e).toMatchObject({ code: 'WCFS_ECONFLICT', oid: a, expected: t1, actual: t2 });
      expect(await r.sync()).toBe(t4);
      // >>> the read-only driver refuses to write
      expect(() => r.newOid()).toThrow(expect.objectContaining({ code: 'WCFS_EREADONLY' }));
    });

    it('pipelined loads and iteration equal FileStorage', { timeout: 60_000 }, async () => {
      const dir = tmp();
      await start(dir);
      const w = await zopen(zeo.zurl);
      const R = rng(seedOr(1));
      const want = new Map<Oid, Array<{ tid: Tid; data: string }>>();
      const oids: Oid[] = [];
      await w.reserveOids(64);
      for (let i = 0; i < 64; i++) oids.push(w.newOid());
      for (let t = 0; t < 20; t++) {
        const ch = new Map<Oid, string>();
        for (let k = 0; k < 1 + Math.floor(R() * 6); k++) ch.set(oids[Math.floor(R() * oids.length)]!, `o${t}.${k}`.repeat(1 + Math.floor(R() * 300)));
        const recs = [...ch].map(([oid, d]) => ({ oid, data: rec(d), oldSerial: want.get(oid)?.at(-1)?.tid ?? 0n }));
        const tid = await w.commit({ records: recs });
        for (const [oid, d] of ch) want.set(oid, [...(want.get(oid) ?? []), { tid, data: d }]);
      }
      // >>> 1000 loads in flight at once, each at a random revision
      const tids = [...new Set([...want.values()].flat().map((x) => x.tid))].sort((x, y) => (x < y ? -1 : 1));
      const jobs = Array.from({ length: 1000 }, () => {
        const oid = [...want.keys()][Math.floor(R() * want.size)]!;
        const at = tids[Math.floor(R() * tids.length)]!;
        const revs = want.get(oid)!.filter((x) => x.tid <= at);
        return { oid, at, rev: revs.at(-1) };
      });
      const got = await Promise.allSettled(jobs.map((j) => w.load(j.oid, j.at)));
      got.forEach((g, i) => {
        const j = jobs[i]!;
        if (j.rev === undefined) expect(g.status === 'rejected' && isCode(g.reason, 'WCFS_ENODATA')).toBe(true);
        else expect(g.status === 'fulfilled' && g.value.serial === j.rev.tid && Buffer.from(g.value.data).toString() === j.rev.data).toBe(true);
      });
      // >>> iterate over ZEO = iterate of the file itself (same txns, same records, same data)
      const viaZeo = [];
      for await (const t of w.iterate(tids[3], tids[15]))
        viaZeo.push({ tid: t.tid, status: t.status, recs: t.records.map((x) => [x.oid, Buffer.from(x.data!).toString()]) });
      await w.close();
      await zeo.stop();
      const fs = await openStorage(path.join(dir, 'data.fs'), { readOnly: true });
      const viaFile = [];
      for await (const t of fs.iterate(tids[3], tids[15]))
        viaFile.push({ tid: t.tid, status: t.status, recs: t.records.map((x) => [x.oid, Buffer.from(x.data!).toString()]) });
      await fs.close();
      expect(viaZeo.length).toBe(13);
      expect(viaZeo).toEqual(viaFile);
    });

    it('a load waits across a restart; commits missed while down are delivered one by one', { timeout: 60_000 }, async () => {
      const dir = tmp();
      await start(dir);
      const w = await zopen(zeo.zurl);
      const r = await zopen(zeo.zurl, { readOnly: true, backoffMaxMs: 200 });
      const rw = r.watch();
      const a = w.newOid();
      const t1 = await w.commit({ records: [{ oid: a, data: rec('a1'), oldSerial: 0n }] });
      expect((await take(rw, 1))[0]!.tid).toBe(t1);
      await w.close();
      // >>> the server dies; two commits go into its file directly; a load is issued meanwhile
      await zeo.kill9();
      const fs = (await openStorage(path.join(dir, 'data.fs'))) as IWritableStorage;
      const b = fs.newOid() + 1000n;
      const t2 = await fs.commit({ records: [{ oid: a, data: rec('a2'), oldSerial: t1 }] });
      const t3 = await fs.commit({ records: [{ oid: b, data: rec('b3'), oldSerial: 0n }] });
      await fs.close();
      const pending = r.load(a, t1);
      await new Promise((res) => setTimeout(res, 300));
      await zeo.restart();
      // >>> the load completes; the watch gets t2 then t3, with their own oids
      expect(await pending).toMatchObject({ data: rec('a1'), serial: t1 });
      const evs = await take(rw, 2);
      expect(evs).toEqual([
        { tid: t2, oids: [a] },
        { tid: t3, oids: [b] },
      ]);
      expect(await r.load(a, t3)).toMatchObject({ data: rec('a2'), serial: t2 });
    });

    it('a server whose history went back, or another database on the address: ZeoGapError, loads fail', { timeout: 60_000 }, async () => {
      await start();
      const port = Number(new URL(zeo.zurl).port);
      const w = await zopen(zeo.zurl);
      const r = await zopen(zeo.zurl, { readOnly: true, backoffMaxMs: 200 });
      const rw = r.watch();
      const a = w.newOid();
      await w.commit({ records: [{ oid: a, data: rec('a1'), oldSerial: 0n }] });
      await w.commit({ records: [{ oid: a, data: rec('a2'), oldSerial: w.head() }] });
      await take(rw, 2);
      await w.close();
      await zeo.stop();
      // >>> a fresh database (older last tid) comes up on the same port
      const other = await startZeo({ fsPath: path.join(tmp(), 'data.fs'), encoding, port });
      expect(other.zurl).toBe(zeo.zurl);
      const err = await take(rw, 1).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'WCFS_EZEOGAP' });
      expect((err as Error).message).toContain(`zeo 127.0.0.1:${port}`);
      await expect(r.load(a, r.head())).rejects.toMatchObject({ code: 'WCFS_EZEOGAP' });
    });

    it('a watch that lags queues at most its bound, then catches up from the ring: every commit once, in order (watchq Q1)', { timeout: 60_000 }, async () => {
      await start();
      const w = await zopen(zeo.zurl);
      const r = await zopen(zeo.zurl, { readOnly: true, watchLimits: { maxEvents: 4, maxOids: 64 } });
      const slow = r.watch() as WatchQueue; // not consumed while the commits go in
      const fast = r.watch();
      const fastGot = take(fast, 30);
      // >>> 30 commits while the slow watch is not read: 4 queued, the rest left in the ring
      const a = w.newOid();
      const tids: Tid[] = [];
      for (let i = 0; i < 30; i++) tids.push(await w.commit({ records: [{ oid: a, data: rec(`a${i}`), oldSerial: tids.at(-1) ?? 0n }] }));
      expect(await r.sync()).toBe(tids.at(-1));
      expect(slow.spilling).toBe(true);
      expect(slow.ready()).toBe(4);
      expect((await fastGot).map((e) => e.tid)).toEqual(tids); // a consumer that keeps up is not affected
      // >>> the slow watch gets every commit once, in order, then live ones as usual
      expect((await take(slow, 30)).map((e) => e.tid)).toEqual(tids);
      const live = await w.commit({ records: [{ oid: a, data: rec('live'), oldSerial: tids.at(-1)! }] });
      expect(await take(slow, 1)).toEqual([{ tid: live, oids: [a] }]);
    });

    it(
      'a watch that lags past the ring catches up from the server (iterator_*), across a restart: every commit once, in order, with its oids',
      { timeout: 90_000 },
      async () => {
        await start();
        const w = await zopen(zeo.zurl);
        const r = await zopen(zeo.zurl, { readOnly: true, history: { maxEvents: 8, maxOids: 1000 }, watchLimits: { maxEvents: 4, maxOids: 64 } });
        const slow = r.watch() as WatchQueue; // not consumed while the commits go in
        const fast = r.watch();
        const N = 200;
        const fastGot = take(fast, N + 10);
        const a = w.newOid();
        const b = w.newOid();
        const want: CommitEvent[] = [];
        const serial = new Map<Oid, Tid>(); // each object's last commit
        const commit = async (i: number) => {
          const recs = [{ oid: a, data: rec(`a${i}`), oldSerial: serial.get(a) ?? 0n }];
          if (i % 3 === 0) recs.push({ oid: b, data: rec(`b${i}`), oldSerial: serial.get(b) ?? 0n });
          const tid = await w.commit({ records: recs });
          for (const x of recs) serial.set(x.oid, tid);
          want.push({ tid, oids: sorted(recs.map((x) => x.oid)) });
        };
        for (let i = 0; i < N; i++) await commit(i);
        expect(await r.sync()).toBe(want.at(-1)!.tid);
        // >>> 4 queued; the ring keeps the last 8: t5 … t192 come from the server, in batches
        expect(slow.spilling).toBe(true);
        expect(slow.ready()).toBe(4);
        const got = await take(slow, 50);
        // >>> more commits while the catch-up runs (queued behind it, or spilled again), then the
        // server restarts under the catch-up: it resumes after the last transaction handed out
        for (let i = N; i < N + 10; i++) await commit(i);
        await zeo.kill9();
        await zeo.restart();
        got.push(...(await take(slow, N + 10 - 50)));
        expect(got.map((e) => e.tid)).toEqual(want.map((e) => e.tid));
        expect(got.map((e) => sorted(e.oids))).toEqual(want.map((e) => e.oids));
        expect((await fastGot).map((e) => e.tid)).toEqual(want.map((e) => e.tid)); // a consumer that keeps up is not affected
        // >>> live commits after the catch-up come as usual
        await commit(N + 10);
        expect(await take(slow, 1)).toEqual([want.at(-1)]);
        // >>> a new watch from a tid older than the ring: the same path
        expect((await take(r.watch(want[3]!.tid), 10)).map((e) => e.tid)).toEqual(want.slice(4, 14).map((e) => e.tid));
      },
    );

    it("a pack that reaches into a lagging watch's catch-up: ZeoGapError after what it had queued; others go on", { timeout: 90_000 }, async () => {
      await start();
      const w = await zopen(zeo.zurl);
      const r = await zopen(zeo.zurl, { readOnly: true, history: { maxEvents: 8, maxOids: 1000 }, watchLimits: { maxEvents: 4, maxOids: 64 } });
      const slow = r.watch();
      const fast = r.watch();
      // pack needs real object records and a root: `a` is not reachable from it, so the pack
      // drops every transaction that only stored `a`, without a trace (fspack copies a
      // transaction only if it keeps a record)
      const fastGot = take(fast, 61); // keeps up
      await ensureRoot(w);
      const a = w.newOid();
      const tids: Tid[] = [w.head()];
      for (let i = 0; i < 30; i++)
        tids.push(await w.commit({ records: [{ oid: a, data: encodeRecord(new Global('m', 'C'), i), oldSerial: i === 0 ? 0n : tids.at(-1)! }] }));
      expect(await r.sync()).toBe(tids.at(-1));
      // >>> a real ZEO client packs the database to now
      const code = [
        'import sys, time, ZEO',
        'from ZODB.serialize import referencesf',
        `cs = ZEO.client(('127.0.0.1', ${Number(new URL(zeo.zurl).port)}))`,
        'cs.pack(time.time(), referencesf)',
        'cs.close()',
      ].join('\n');
      const py = spawnSync(python(), ['-c', code], { env: pythonEnv(), encoding: 'utf8', timeout: 60_000 });
      expect(py.status, py.stderr).toBe(0);
      // >>> 30 more commits after the pack: the server's history from t4 now jumps from the
      // root's transaction (status 'p') to these, which end exactly where the ring starts
      for (let i = 30; i < 60; i++) tids.push(await w.commit({ records: [{ oid: a, data: encodeRecord(new Global('m', 'C'), i), oldSerial: tids.at(-1)! }] }));
      expect(await r.sync()).toBe(tids.at(-1));
      // >>> the 4 queued events go out; the catch-up after t4 finds t4 gone: a gap, not silence
      expect((await take(slow, 4)).map((e) => e.tid)).toEqual(tids.slice(0, 4));
      const err = await take(slow, 1).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'WCFS_EZEOGAP' });
      expect((err as Error).message).toContain(`catch-up after @${hex16(tids[3]!)}`);
      expect((err as Error).message).toContain(`does not have transaction @${hex16(tids[3]!)}`);
      expect((await fastGot).map((e) => e.tid)).toEqual(tids);
      // >>> the storage itself is fine: a watch from a tid in the ring replays from it
      expect((await take(r.watch(tids[55]), 4)).map((e) => e.tid)).toEqual(tids.slice(56, 60));
    });

    it(
      'the link breaks in a commit: before the vote → WCFS_EZEOCONN, nothing committed; after the server committed → WCFS_ECOMMITUNKNOWN, not retried, the commit arrives once reconnected',
      { timeout: 60_000 },
      async () => {
        await start();
        const [host, port] = zeo.addr.split(':');
        const proxy = await FaultyProxy.start({ host: host!, port: Number(port) });
        opened.push(proxy);
        const w = await zopen(`zeo://127.0.0.1:${proxy.port}`, { backoffMaxMs: 100 });
        const r = await zopen(zeo.zurl, { readOnly: true }); // straight to the server
        const ww = w.watch();
        const a = w.newOid();
        const t1 = await w.commit({ records: [{ oid: a, data: rec('a1'), oldSerial: 0n }] });
        expect(await take(ww, 1)).toEqual([{ tid: t1, oids: [a] }]);
        // >>> the link breaks as the client votes: the server never saw the vote and aborts
        const broke1 = proxy.breakAt({ marker: 'vote', at: 'before' });
        const e1 = await w.commit({ records: [{ oid: a, data: rec('a2'), oldSerial: t1 }] }).catch((x: unknown) => x);
        await broke1;
        expect(e1).toMatchObject({ code: 'WCFS_EZEOCONN' });
        expect(await r.sync()).toBe(t1);
        expect(await r.load(a, t1)).toMatchObject({ data: rec('a1'), serial: t1 });
        // >>> the link breaks after the server committed: its answer to tpc_finish is lost
        const broke2 = proxy.breakAt({ marker: 'tpc_finish', at: 'after-reply' });
        const e2 = await w.commit({ records: [{ oid: a, data: rec('a3'), oldSerial: t1 }] }).catch((x: unknown) => x);
        await broke2;
        expect(e2).toMatchObject({ code: 'WCFS_ECOMMITUNKNOWN' });
        const t3 = await r.sync();
        expect(t3).toBeGreaterThan(t1);
        expect(await r.load(a, t3)).toMatchObject({ data: rec('a3'), serial: t3 });
        // >>> reconnected, the writer learns of its commit as an event, once, and goes on from it
        expect(await take(ww, 1)).toEqual([{ tid: t3, oids: [a] }]);
        const t4 = await w.commit({ records: [{ oid: a, data: rec('a4'), oldSerial: t3 }] });
        expect(await take(ww, 1)).toEqual([{ tid: t4, oids: [a] }]);
        expect(await r.sync()).toBe(t4);
        expect(await r.load(a, t4 - 1n)).toMatchObject({ data: rec('a3'), serial: t3 }); // nothing in between: no retry
      },
    );

    it('reads during a long outage fail after reconnectWaitMs with WCFS_EZEOCONN', { timeout: 30_000 }, async () => {
      await start();
      const r = await zopen(zeo.zurl, { readOnly: true, reconnectWaitMs: 500, backoffMaxMs: 100 });
      await zeo.kill9();
      const t0 = Date.now();
      const e = await r.load(0n, r.head()).catch((x: unknown) => x);
      expect(e).toMatchObject({ code: 'WCFS_EZEOCONN' });
      expect(Date.now() - t0).toBeLessThan(20_000); // bounded (not a timing assertion on the value)
    });
  });
}
