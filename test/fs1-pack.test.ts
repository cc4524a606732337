// Pack while following (notes.md, FileStorage "Pack while serving"): a pack renames a packed
// copy over Data.fs; the follower switches to it when it is a pack of what it serves (same txns
// up to our head, tids kept), learns the pack boundary (last status-'p' txn) and keeps
// following; anything else stays fatal. The packed files here are made by hand: a copy with
// the status of its first txns set to 'p' — a pack that dropped nothing (test/py/test_pack.py
// packs with real ZODB).

import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { StorageChangedError } from '../src/zodb/fs1/errors.js';
import { scanTxn, SeqReader } from '../src/zodb/fs1/scan.js';
import { FILE_HEADER_SIZE, txnEnd } from '../src/zodb/fs1/format.js';
import { hex16, type Tid } from '../src/zodb/ids.js';
import type { CommitEvent, StorageWatch } from '../src/zodb/storage.js';
import { sleep } from '../src/util/async.js';
import { TmpDirs, copyFixture, historyFs, withTimeout, zblkFs } from './helpers/fs1util.js';
import { WriterProc } from './helpers/fs1proc.js';
import type { WatchQueue, WatchQueueLimits } from '../src/zodb/watchq.js';

const tmp = new TmpDirs();
const open: FileStorage[] = [];
afterEach(async () => {
  await WriterProc.killAll();
  for (const s of open.splice(0)) await s.close();
  tmp.cleanup();
});

async function follower(f: string, watchLimits?: WatchQueueLimits): Promise<FileStorage> {
  const s = await FileStorage.open(f, { readOnly: true, pollMs: 50, garbageMs: 10000, warn: () => {}, watchLimits });
  open.push(s);
  return s;
}

class Collector {
  events: CommitEvent[] = [];
  error: unknown = undefined;
  ended = false;
  readonly done: Promise<void>;
  constructor(readonly w: StorageWatch) {
    this.done = (async () => {
      try {
        for await (const ev of w) this.events.push(ev);
      } catch (e) {
        this.error = e;
      }
      this.ended = true;
    })();
  }
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timeout after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Tids of the committed txns of a file, in order, with their positions. */
function txns(f: string): Array<{ pos: number; tid: Tid }> {
  const fd = fs.openSync(f, 'r');
  try {
    const r = new SeqReader(fd, fs.fstatSync(fd).size);
    const out: Array<{ pos: number; tid: Tid }> = [];
    let pos = FILE_HEADER_SIZE;
    let prev = -1n;
    for (;;) {
      const step = scanTxn(r, pos, prev, f, false);
      if (step.kind !== 'txn') return out;
      out.push({ pos, tid: step.txn.tid });
      prev = step.txn.tid;
      pos = txnEnd(step.txn);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** A "packed" copy of f in dir: the first n txns get status 'p' (a pack that dropped nothing). */
function packedCopy(f: string, dir: string, n: number): { file: string; packedTo: Tid } {
  const out = path.join(dir, 'Data.fs.pack');
  fs.copyFileSync(f, out);
  const ts = txns(f).slice(0, n);
  const fd = fs.openSync(out, 'r+');
  for (const t of ts) fs.writeSync(fd, Buffer.from('p'), 0, 1, t.pos + 16);
  fs.closeSync(fd);
  return { file: out, packedTo: ts[ts.length - 1]!.tid };
}

describe('pack while following', () => {
  it('switches to the packed file, learns the boundary, keeps following; data and history unchanged', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await follower(f);
    expect(r.packedTo()).toBe(0n);
    const head = r.head();
    const all = txns(f);
    const before = await Promise.all(r.indexEntries().map(async ([oid]) => [oid, await r.load(oid, head).catch((e: Error) => e.name)] as const));
    const packs: Tid[] = [];
    r.onPacked((p) => packs.push(p));
    const c = new Collector(r.watch());

    // >>> pack: Data.fs → Data.fs.old, Data.fs.pack → Data.fs (as ZODB does)
    const { file: packed, packedTo } = packedCopy(f, dir, 3);
    fs.renameSync(f, f + '.old');
    await sleep(120); // the follower sees no Data.fs for a moment: not fatal
    fs.renameSync(packed, f);
    await waitFor(() => packs.length > 0 || c.ended, 5000, 'pack reported');
    expect(c.error).toBeUndefined();
    expect(packs).toEqual([packedTo]);
    expect(r.packedTo()).toBe(packedTo);
    expect(packedTo).toBe(all[2]!.tid);
    expect(r.head()).toBe(head);
    expect(await r.sync()).toBe(head);
    // every object as of head reads as before; loads go to the new file (the old one is gone)
    fs.rmSync(f + '.old');
    for (const [oid, was] of before) {
      const now = await r.load(oid, head).catch((e: Error) => e.name);
      if (typeof was === 'string') expect(now).toBe(was);
      else expect(Buffer.compare((now as { data: Uint8Array }).data, was.data), `oid ${hex16(oid)}`).toBe(0);
    }

    // >>> a writer commits to the packed file: followed as usual
    const p = new WriterProc();
    await p.call({ op: 'open', path: f });
    const cm = (await p.call({ op: 'commit', records: [{ oid: '0000000000000000', data: 'after pack' }] })) as { op: string; tid: string };
    await waitFor(() => c.events.length > 0 || c.ended, 5000, 'commit after the pack');
    expect(c.events.map((e) => hex16(e.tid))).toEqual([cm.tid]);
    expect(Buffer.from((await r.load(0n, r.head())).data).toString()).toBe('after pack');
    await p.call({ op: 'close' });
    c.w.close();
    await c.done;
    expect(c.error).toBeUndefined();
  });

  it('a packed file at open: the boundary is the last status-p txn', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const { file, packedTo } = packedCopy(f, dir, 5);
    fs.renameSync(file, f);
    fs.rmSync(f + '.index', { force: true });
    const r = await follower(f);
    expect(r.packedTo()).toBe(packedTo);
  });

  it('commits to the old file before the rename are delivered before the pack', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await FileStorage.open(f, { readOnly: true, pollMs: 60_000, garbageMs: 10000, warn: () => {} });
    open.push(r);
    const order: string[] = [];
    r.onPacked(() => order.push('pack'));
    const w = r.watch();
    // a commit the follower has not seen yet (poll far away), then the pack, then one check
    const p = new WriterProc();
    await p.call({ op: 'open', path: f });
    const cm = (await p.call({ op: 'commit', records: [{ oid: '0000000000000000', data: 'late' }] })) as { op: string; tid: string };
    await p.call({ op: 'close' });
    const { file } = packedCopy(f, dir, 2);
    fs.renameSync(f, f + '.old');
    fs.renameSync(file, f);
    expect(hex16(await r.sync())).toBe(cm.tid);
    order.push(...[(await w[Symbol.asyncIterator]().next()).value as CommitEvent].map((e) => `commit ${hex16(e.tid)}`));
    expect(order).toEqual(['pack', `commit ${cm.tid}`]); // the listener ran in the same check, after the event was queued
    expect(r.packedTo()).toBe(txns(f)[1]!.tid);
    w.close();
  });

  it('a watch lagging behind a writer (watchq Q1) catches up across a pack whose boundary is below what it queued; not across one above', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await follower(f, { maxEvents: 3, maxOids: 100 });
    const w = r.watch() as WatchQueue;
    let p = new WriterProc();
    await p.call({ op: 'open', path: f });
    const commit = async (i: number) =>
      ((await p.call({ op: 'commit', records: [{ oid: '0000000000000000', data: `lag ${i}` }] })) as unknown as { tid: string }).tid;
    const lag = async (n: number) => {
      const tids: string[] = [];
      for (let i = 0; i < n; i++) tids.push(await commit(i));
      await r.sync();
      expect(w.spilling, 'the watch stopped queuing').toBe(true);
      expect(w.ready()).toBe(3);
      return tids;
    };
    const it = w[Symbol.asyncIterator]();
    const take = async (n: number) => {
      const got: string[] = [];
      for (let i = 0; i < n; i++) got.push(hex16(((await it.next()).value as CommitEvent).tid));
      return got;
    };

    // >>> lag by 10 commits, then a pack of the old history (boundary far below): caught up
    let tids = await lag(10);
    await p.call({ op: 'close' });
    const first = packedCopy(f, dir, 3);
    fs.renameSync(first.file, f);
    expect(hex16(await r.sync())).toBe(tids[9]);
    expect(r.packedTo()).toBe(first.packedTo);
    expect(await take(10)).toEqual(tids);

    // >>> lag again, then a pack whose boundary is above what the watch queued: its δZ below
    // the boundary may be gone from the packed file — the watch fails, it never guesses
    p = new WriterProc();
    await p.call({ op: 'open', path: f });
    tids = await lag(8);
    await p.call({ op: 'close' });
    const all = txns(f);
    const second = packedCopy(f, dir, all.length - 2);
    fs.renameSync(second.file, f);
    await r.sync();
    expect(r.packedTo()).toBe(second.packedTo);
    expect(await take(3)).toEqual(tids.slice(0, 3));
    await expect(it.next()).rejects.toThrow(/watch catch-up after @[0-9a-f]{16} \(packed to @[0-9a-f]{16}\): storage packed \(file replaced\) meanwhile/);
  });

  it('an iteration in flight across the switch fails instead of reading the new file at old offsets', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await follower(f);
    const it0 = r.iterate()[Symbol.asyncIterator]();
    await it0.next();
    const { file } = packedCopy(f, dir, 2);
    fs.renameSync(file, f);
    await r.sync();
    expect(r.packedTo()).not.toBe(0n);
    await expect(it0.next()).rejects.toBeInstanceOf(StorageChangedError);
    let n = 0;
    for await (const _ of r.iterate()) n++;
    expect(n).toBe(txns(f).length);
  });

  it('replaced by another database → fatal, with a clear message', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await follower(f);
    const c = new Collector(r.watch());
    fs.renameSync(copyFixture(zblkFs('py3_pickle3'), dir, { name: 'other.fs' }), f);
    await withTimeout(c.done, 5000, 'watch end');
    expect(c.error).toBeInstanceOf(StorageChangedError);
    expect(String(c.error)).toMatch(/not a pack of this database: its txns do not end with our head/);
    await expect(r.sync()).rejects.toBeInstanceOf(StorageChangedError);
  });

  it('replaced by a packed file that lost our head txn → fatal', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await follower(f);
    const c = new Collector(r.watch());
    const ts = txns(f);
    const cut = path.join(dir, 'cut.fs');
    fs.copyFileSync(f, cut);
    fs.truncateSync(cut, ts[ts.length - 1]!.pos); // the head txn is missing
    fs.renameSync(cut, f);
    await withTimeout(c.done, 5000, 'watch end');
    expect(String(c.error)).toMatch(new RegExp(`do not end with our head ${hex16(r.head())} \\(last txn ≤ head: ${hex16(ts[ts.length - 2]!.tid)}\\)`));
  });

  it('replaced by garbage → fatal: invalid FileStorage', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await follower(f);
    const c = new Collector(r.watch());
    const g = path.join(dir, 'g.fs');
    fs.writeFileSync(g, 'this is not a FileStorage at all');
    fs.renameSync(g, f);
    await withTimeout(c.done, 5000, 'watch end');
    expect(String(c.error)).toMatch(/storage replaced by an invalid FileStorage/);
  });
});

describe('pack switch in slices', () => {
  const small = { min: 4096, max: 4096, sparse: 4096 };
  async function sliced(f: string): Promise<FileStorage> {
    const s = await FileStorage.open(f, { readOnly: true, pollMs: 60_000, garbageMs: 10000, warn: () => {}, nativeScan: small, switchSliceMs: 0 });
    open.push(s);
    return s;
  }

  it('the event loop runs while the packed file is indexed: loads are served from the old file, nothing is published before the switch', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await sliced(f);
    const head = r.head();
    const oids = r.indexEntries().map(([oid]) => oid);
    const want = await r.load(oids[0]!, head);
    const packs: Tid[] = [];
    r.onPacked((p) => packs.push(p));
    const { file, packedTo } = packedCopy(f, dir, 4);
    fs.renameSync(f, f + '.old');
    fs.renameSync(file, f);
    // >>> the switch starts; while it walks, loads go on (the old file is still open)
    const synced = r.sync();
    let turns = 0;
    while (packs.length === 0) {
      const got = await r.load(oids[0]!, head);
      expect(Buffer.compare(got.data, want.data)).toBe(0);
      await new Promise<void>((res) => setImmediate(res));
      turns++;
    }
    expect(turns, 'the switch took several turns of the event loop').toBeGreaterThan(10);
    expect(await synced).toBe(head);
    expect(packs).toEqual([packedTo]); // the boundary from the native walk, across 4 KiB windows
    expect(r.packedTo()).toBe(packedTo);
    fs.rmSync(f + '.old');
    expect(Buffer.compare((await r.load(oids[0]!, head)).data, want.data)).toBe(0);
  });

  it('close during the switch: it stops, its file is closed, no pack is reported', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const fds = () => fs.readdirSync('/proc/self/fd').length;
    const before = fds();
    const r = await sliced(f);
    let packed = false;
    r.onPacked(() => (packed = true));
    const { file } = packedCopy(f, dir, 4);
    fs.renameSync(f, f + '.old');
    fs.renameSync(file, f);
    const synced = r.sync().catch((e: unknown) => e);
    await new Promise<void>((res) => setImmediate(res)); // the walk is under way
    await r.close();
    open.splice(open.indexOf(r), 1);
    await synced;
    expect(packed).toBe(false);
    expect(fds()).toBe(before);
  });

  it('the native walk stops at our head: txns after it in the packed file are followed as commits, not indexed by the switch', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir, { name: 'Data.fs' });
    const r = await sliced(f);
    const head = r.head();
    const c = new Collector(r.watch());
    // >>> the packed file gets a commit our follower has not seen, before it is renamed in
    const { file, packedTo } = packedCopy(f, dir, 4);
    const p = new WriterProc();
    await p.call({ op: 'open', path: file });
    const cm = (await p.call({ op: 'commit', records: [{ oid: '0000000000000000', data: 'in the packed file' }] })) as { op: string; tid: string };
    await p.call({ op: 'close' });
    fs.rmSync(file + '.index', { force: true });
    fs.rmSync(file + '.lock', { force: true });
    fs.renameSync(f, f + '.old');
    fs.renameSync(file, f);
    expect(hex16(await r.sync())).toBe(cm.tid);
    expect(r.packedTo()).toBe(packedTo);
    await waitFor(() => c.events.length > 0 || c.ended, 5000, 'the commit after the pack');
    expect(c.events.map((e) => hex16(e.tid))).toEqual([cm.tid]);
    expect(Buffer.from((await r.load(0n, r.head())).data).toString()).toBe('in the packed file');
    expect(Buffer.from((await r.load(0n, head)).data).toString()).not.toBe('in the packed file');
    c.w.close();
    await c.done;
  });
});
