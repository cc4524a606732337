// Following a Data.fs written by another process (zodb.md §2.8): a writer process commits while
// a read-only FileStorage here watches; interrupted commits are never reported; truncation,
// replacement and trailing garbage end the watch with a clear error; a deterministic replay of
// the zodb-history fixture through partial writes, 'c' status and aborts.

import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { StorageChangedError } from '../src/zodb/fs1/errors.js';
import { checkFile } from '../src/zodb/fs1/scan.js';
import { CorruptError } from '../src/zodb/errors.js';
import { hex16, type Tid } from '../src/zodb/ids.js';
import type { CommitEvent, StorageWatch } from '../src/zodb/storage.js';
import { sleep } from '../src/util/async.js';
import { TmpDirs, collect, copyFixture, historyFs, withTimeout, zblkFs } from './helpers/fs1util.js';
import { WriterProc } from './helpers/fs1proc.js';
import type { WatchQueue, WatchQueueLimits } from '../src/zodb/watchq.js';

const tmp = new TmpDirs();
const open: FileStorage[] = [];
afterEach(async () => {
  await WriterProc.killAll();
  for (const s of open.splice(0)) await s.close();
  tmp.cleanup();
});

async function follower(f: string, o: { garbageMs?: number; watchLimits?: WatchQueueLimits } = {}): Promise<FileStorage> {
  const s = await FileStorage.open(f, { readOnly: true, pollMs: 50, garbageMs: o.garbageMs ?? 10000, warn: () => {}, watchLimits: o.watchLimits });
  open.push(s);
  return s;
}

/** Collects a watch's events in the background; `error` is set when the iteration throws. */
class Collector {
  events: Array<{ tid: string; oids: string[] }> = [];
  error: unknown = undefined;
  ended = false;
  readonly done: Promise<void>;
  constructor(readonly w: StorageWatch) {
    this.done = (async () => {
      try {
        for await (const ev of w) this.events.push(fmt(ev));
      } catch (e) {
        this.error = e;
      }
      this.ended = true;
    })();
  }
  async waitCount(n: number, ms = 10000): Promise<void> {
    await waitFor(() => this.events.length >= n || this.ended, ms, `${n} events (have ${this.events.length})`);
    expect(this.events.length).toBe(n);
  }
}

const fmt = (ev: CommitEvent) => ({ tid: hex16(ev.tid), oids: ev.oids.map(hex16) });
async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timeout after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

type Commit = { op: string; tid: string; oids: string[] };
const commitsOf = (cs: Commit[]) => cs.map((c) => ({ tid: c.tid, oids: c.oids }));

describe('follow a writer process', () => {
  it('reports every commit, in order; interrupted commits never; a new writer continues', async () => {
    const f = copyFixture(historyFs, tmp.make(), { index: true });
    const r = await follower(f);
    const head0 = r.head();
    const c = new Collector(r.watch());
    const c2 = new Collector(r.watch()); // an independent second watch

    // >>> writer 1 commits 8 txns: new objects, changes, an empty txn, a deletion
    const p = new WriterProc();
    await p.call({ op: 'open', path: f });
    const commits: Commit[] = [];
    const commit = async (proc: WriterProc, records: Array<{ oid: string; data: string | null }>) => {
      commits.push((await proc.call({ op: 'commit', records })) as Commit);
    };
    await commit(p, [{ oid: 'new', data: 'obj A' }]);
    await commit(p, [
      { oid: '0000000000000000', data: 'root 2' },
      { oid: 'new', data: 'obj B' },
    ]);
    await commit(p, []);
    for (let i = 0; i < 4; i++) await commit(p, [{ oid: commits[0]!.oids[0]!, data: `A v${i}` }]);
    await commit(p, [{ oid: commits[1]!.oids[1]!, data: null }]);
    await c.waitCount(8);
    expect(c.events).toEqual(commitsOf(commits));
    expect(hex16(r.head())).toBe(commits[7]!.tid);
    expect(Buffer.from((await r.load(BigInt('0x' + commits[0]!.oids[0]), r.head())).data).toString()).toBe('A v3');
    await expect(r.load(BigInt('0x' + commits[1]!.oids[1]), r.head())).rejects.toMatchObject({ name: 'NoDataError' });

    // >>> writer 1 dies between vote and finish: status 'c' at the tail
    p.child.send({ op: 'commit', records: [{ oid: '0000000000000000', data: 'never' }], pause: 'voted' });
    expect((await p.recv()).op).toBe('paused');
    await p.kill();
    expect(checkFile(f).tail).toBe('inprogress');
    await sleep(300); // several polls
    expect(c.events.length).toBe(8);
    expect(c.error).toBeUndefined();

    // >>> writer 2 truncates the dead commit away and commits more
    const p2 = new WriterProc();
    const o2 = await p2.call({ op: 'open', path: f });
    expect(o2.truncatedBytes).toBeGreaterThan(0);
    await commit(p2, [{ oid: '0000000000000000', data: 'root 3' }]);

    // >>> writer 2 dies in the middle of writing a txn header (an incomplete txn)
    p2.child.send({ op: 'commit', records: [{ oid: 'new', data: 'x'.repeat(10000) }], pause: 'half' });
    expect((await p2.recv()).op).toBe('paused');
    await p2.kill();
    expect(checkFile(f).tail).toBe('partial');
    await sleep(300);

    // >>> writer 3 cleans up and commits
    const p3 = new WriterProc();
    expect((await p3.call({ op: 'open', path: f })).truncatedBytes).toBeGreaterThan(0);
    await commit(p3, [{ oid: 'new', data: 'after two crashes' }]);
    await c.waitCount(10);
    expect(c.events).toEqual(commitsOf(commits));
    await c2.waitCount(10);
    expect(c2.events).toEqual(c.events);
    expect(c.error).toBeUndefined();
    expect(Buffer.from((await r.load(0n, r.head())).data).toString()).toBe('root 3');
    await p3.call({ op: 'close' });

    // a late watch from the old head replays exactly the same events
    const w3 = r.watch(head0);
    const replay: Array<{ tid: string; oids: string[] }> = [];
    for await (const ev of w3) {
      replay.push(fmt(ev));
      if (replay.length === 10) break;
    }
    expect(replay).toEqual(c.events);
    c.w.close();
    c2.w.close();
    await c.done;
    await c2.done;
    expect(c.error).toBeUndefined();
  });
});

describe('fatal conditions end the watch with a clear error', () => {
  it('a watch that lags a fast writer queues at most its bound, then reads the rest back from the file: every commit once, in order (watchq Q1)', async () => {
    const f = copyFixture(historyFs, tmp.make(), { index: true });
    const r = await follower(f, { watchLimits: { maxEvents: 4, maxOids: 64 } });
    const w = r.watch() as WatchQueue;
    const fast = new Collector(r.watch()); // a consumer that keeps up is not affected
    const p = new WriterProc();
    await p.call({ op: 'open', path: f });
    const commits: Commit[] = [];
    for (let i = 0; i < 40; i++) {
      const records = i % 5 === 4 ? [] : [{ oid: i % 2 ? 'new' : '0000000000000000', data: `v${i}` }];
      commits.push((await p.call({ op: 'commit', records })) as Commit);
    }
    await r.sync();
    expect(w.spilling).toBe(true);
    expect(w.ready()).toBe(4);
    const slow = new Collector(w);
    await slow.waitCount(40);
    expect(slow.events).toEqual(commitsOf(commits));
    // and live events after the catch-up, as usual
    commits.push((await p.call({ op: 'commit', records: [{ oid: '0000000000000000', data: 'live' }] })) as Commit);
    await slow.waitCount(41);
    expect(slow.events).toEqual(commitsOf(commits));
    await fast.waitCount(41);
    expect(fast.events).toEqual(commitsOf(commits));
  });

  it('file replaced by rename with another database (a pack of ours is followed: fs1-pack.test.ts)', async () => {
    const dir = tmp.make();
    const f = copyFixture(historyFs, dir);
    const r = await follower(f);
    const c = new Collector(r.watch());
    const other = copyFixture(zblkFs('py3_pickle3'), dir, { name: 'other.fs' });
    fs.renameSync(other, f);
    await withTimeout(c.done, 5000, 'watch end');
    expect(c.error).toBeInstanceOf(StorageChangedError);
    expect(String(c.error)).toMatch(/storage replaced by another file that is not a pack of this database/);
    await expect(r.sync()).rejects.toBeInstanceOf(StorageChangedError);
    // loads of what was read still work from the old file
    expect((await r.load(0n, r.head())).data.length).toBeGreaterThan(0);
    // a new watch reports the same error
    await expect(collect(r.watch())).rejects.toBeInstanceOf(StorageChangedError);
  });

  it('file truncated below the committed end', async () => {
    const f = copyFixture(historyFs, tmp.make());
    const r = await follower(f);
    const c = new Collector(r.watch());
    fs.truncateSync(f, 1000);
    await withTimeout(c.done, 5000, 'watch end');
    expect(c.error).toBeInstanceOf(StorageChangedError);
    expect(String(c.error)).toMatch(/file truncated to 1000 bytes, below the committed end/);
  });

  it('file removed', async () => {
    const f = copyFixture(historyFs, tmp.make());
    const r = await follower(f);
    const c = new Collector(r.watch());
    fs.rmSync(f);
    await withTimeout(c.done, 5000, 'watch end');
    expect(String(c.error)).toMatch(/removed/);
  });

  it('trailing garbage that stays → CorruptError at the committed end', async () => {
    const f = copyFixture(historyFs, tmp.make());
    const r = await follower(f, { garbageMs: 200 });
    const end = fs.statSync(f).size;
    const c = new Collector(r.watch());
    fs.appendFileSync(f, Buffer.from('0123456789')); // less than a txn header
    await withTimeout(c.done, 5000, 'watch end');
    expect(c.error).toBeInstanceOf(CorruptError);
    expect((c.error as CorruptError).offset).toBe(end);
    expect(String(c.error)).toMatch(/trailing garbage/);
  });

  it('a corrupt committed txn appended → CorruptError', async () => {
    const f = copyFixture(historyFs, tmp.make());
    const r = await follower(f);
    const c = new Collector(r.watch());
    const last = fs.readFileSync(historyFs).subarray(4, 4 + 200); // header of the 1st txn: old tid
    fs.appendFileSync(f, last);
    await withTimeout(c.done, 5000, 'watch end');
    expect(c.error).toBeInstanceOf(CorruptError);
    expect(String(c.error)).toMatch(/not after/);
  });
});

describe('replay of zodb-history through partial writes, status c and aborts (deterministic)', () => {
  it('events equal the fixture txns; no c txn is ever reported', async () => {
    const src = fs.readFileSync(historyFs);
    const orig = await follower(historyFs);
    const txns = await collect(orig.iterate());
    const want = txns.map((t) => ({ tid: hex16(t.tid), oids: t.records.map((rec) => hex16(rec.oid)) }));

    const f = path.join(tmp.make(), 'data.fs');
    fs.writeFileSync(f, src.subarray(0, 4));
    const fd = fs.openSync(f, 'r+');
    try {
      const r = await follower(f);
      expect(r.head()).toBe(0n);
      const c = new Collector(r.watch());
      let pos = 4;
      let i = 0;
      for (const t of txns) {
        const tlen = Number(src.readBigUInt64BE(pos + 8));
        const end = pos + tlen + 8;
        const body = Buffer.from(src.subarray(pos, end));
        const headBefore: Tid = r.head();
        if (i % 7 === 3) {
          // an aborted commit: written in status 'c', then truncated back
          const junk = Buffer.from(body);
          junk[16] = 0x63;
          fs.writeSync(fd, junk, 0, junk.length, pos);
          expect(await r.sync()).toBe(headBefore);
          fs.ftruncateSync(fd, pos);
          expect(await r.sync()).toBe(headBefore);
        }
        // partial write (a header cut in two for some, the body for others)
        const cut = i % 2 === 0 ? 1 + (i % 22) : 23 + Math.floor((body.length - 23) / 2);
        const cbody = Buffer.from(body);
        cbody[16] = 0x63; // 'c' — vote writes the txn in status c
        fs.writeSync(fd, cbody, 0, cut, pos);
        expect(await r.sync()).toBe(headBefore);
        fs.writeSync(fd, cbody, cut, cbody.length - cut, pos + cut);
        expect(await r.sync()).toBe(headBefore);
        fs.writeSync(fd, body, 16, 1, pos + 16); // finish: status ' '
        expect(await r.sync()).toBe(t.tid);
        pos = end;
        i++;
      }
      await c.waitCount(want.length);
      expect(c.events).toEqual(want);
      expect(new Map(r.indexEntries())).toEqual(new Map(orig.indexEntries()));
    } finally {
      fs.closeSync(fd);
    }
  });
});

describe('handles', () => {
  it('watches, follower timers and inotify are released on close', async () => {
    // handle closes complete on the next loop turn
    const tick = () => new Promise((r) => setImmediate(r));
    const countNow = () => process.getActiveResourcesInfo().filter((x) => x === 'Timeout' || x === 'FSEventWrap').length;
    const count = async () => {
      await tick();
      await tick();
      return countNow();
    };
    const before = await count();
    const f = copyFixture(historyFs, tmp.make());
    const r = await FileStorage.open(f, { readOnly: true, pollMs: 50 });
    const w1 = r.watch();
    const w2 = r.watch();
    expect(await count()).toBeGreaterThan(before);
    w1.close();
    expect(await count()).toBeGreaterThan(before); // w2 still open
    w2.close();
    expect(await count()).toBe(before); // last watch closed: follower stopped
    const w3 = r.watch();
    const it3 = w3[Symbol.asyncIterator]();
    const pending = it3.next();
    await r.close();
    expect(await pending).toEqual({ value: undefined, done: true }); // storage close ends watches
    expect(await count()).toBe(before);
  });
});
