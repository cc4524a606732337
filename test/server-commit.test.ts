// The server's rules for commits, without a mount: WcfsServer.serve() against a fake kernel
// (the Kernel seam: notifier + fast-path blockCache), with the FUSE handlers called directly
// and a real FileStorage written by our writer and followed by the server.
//
//   - a head READ registers its block in the fast path only after the load (and tracking);
//   - commit: a changed block leaves the fast path before its page-cache invalidation; the
//     old data — from the loaded entry, else RETRIEVEd — goes to @<BlkRevAt(blk, oldHead)>
//     (upstream's rule: where pinned clients map it, not @<oldHead>), which the server makes
//     the kernel look up when nobody had (a probe through the mount; here the fake kernel
//     looks the path up), unless MAX_VIEWS_FOR_STORE views exist; it is stored before head's
//     copy is invalidated; head/at moves only after every invalidation (server.ts I5);
//   - while step 3a runs (here: held in RETRIEVE), a READ waits for headMu and registers
//     nothing; it is then answered from the new head (server.ts I2, I3);
//   - block buffers are reused (loads.ts L4) only once nobody uses them: not under a
//     multi-block READ still waiting for its other blocks, not under a commit's store; a
//     RETRIEVE copies into one, which returns to the pool once stored;
//   - uploads (reads.ts 2c): the rest of a block goes in at once after a small READ, after a
//     big one READs take it; none runs while 3b has not invalidated the changed blocks.
// What only the kernel can show (page locks, real invalidation) stays in the mount tests.
import { afterEach, describe, expect, it } from 'vitest';
import type { RequestContext } from '../src/fuse/fs.js';
import type { Notifier } from '../src/fuse/notifier.js';
import type { BlockCache } from '../src/fuse/session.js';
import { MAX_VIEWS_FOR_STORE, STORE_LOOKUP_TIMEOUT_MS, WcfsServer, type Kernel } from '../src/server/server.js';
import type { BigFile } from '../src/server/bigfile.js';
import type { BlockPool } from '../src/server/loads.js';
import { BIG_READ, type UploadDelays } from '../src/server/reads.js';
import { sleep } from '../src/util/async.js';
import { WriteTxn } from '../src/zodb/db.js';
import { hex16, type Oid, type Tid } from '../src/zodb/ids.js';
import { openStorage } from '../src/zodb/open.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { createZBigFile, ensureRoot, setBlock } from '../src/zodb/zbigfile.js';
import { makeTmpDir } from './helpers/tmp.js';

const BS = 8192;

/** A fake kernel: records every call in order; RETRIEVE answers from `cached` (or waits for `holdRetrieve`). */
class FakeKernel implements Kernel {
  readonly events: string[] = [];
  isClosed = false;
  /** ino → offset → data the "page cache" holds for RETRIEVE. */
  readonly cached = new Map<number, Map<number, Uint8Array>>();
  holdRetrieve: Promise<void> | undefined;
  /** The buffers RETRIEVEs were asked to copy into. */
  readonly retrievedInto: Uint8Array[] = [];
  /** Called at every invalInode, to look at the server's state at that moment. */
  onInval: (() => void) | undefined;
  /** When set, invalInode waits for it. */
  holdInval: Promise<void> | undefined;
  /** From now on invalInode waits, until the returned function is called. */
  holdInvals(): () => void {
    let release!: () => void;
    this.holdInval = new Promise((r) => (release = r));
    return release;
  }
  /** When set, store waits for it before it looks at the data (as a copy on another thread would). */
  holdStore: Promise<void> | undefined;

  readonly notifier: Notifier = {
    invalInode: async (ino, off, len) => {
      this.onInval?.();
      this.events.push(off < 0 ? `inval-attr ${ino}` : `inval ${ino} ${off}+${len}`);
      if (this.holdInval) await this.holdInval;
    },
    invalEntry: async (parent, name) => {
      this.events.push(`inval-entry ${parent} ${name}`);
    },
    store: async (ino, off, data) => {
      if (this.holdStore) await this.holdStore;
      this.events.push(`store ${ino} ${off}+${data.length} =${data[0]}`);
    },
    retrieve: async (ino, off, len, into) => {
      this.events.push(`retrieve ${ino} ${off}+${len}`);
      if (into !== undefined) this.retrievedInto.push(into);
      if (this.holdRetrieve) await this.holdRetrieve;
      const got = Buffer.from(this.cached.get(ino)?.get(off) ?? new Uint8Array(0)).subarray(0, len);
      if (into === undefined || got.length === 0) return got.length > 0 ? [got] : [];
      into.set(got);
      return [into.subarray(0, got.length)];
    },
  };

  readonly blockCache: BlockCache = {
    put: (nodeid, off, data) => {
      this.events.push(`put ${nodeid} ${off}+${data.length} =${data[0]}`);
      return true;
    },
    drop: (nodeid, off) => {
      this.events.push(`drop ${nodeid} ${off}`);
      return true;
    },
    served: () => 0,
  };

  /** rel path → indexes of the pages residency() reports cached; holdResidency delays it. */
  readonly resident = new Map<string, Set<number>>();
  holdResidency: Promise<void> | undefined;
  /** The kernel's LOOKUPs of the path a probe opens (served() sends them to the server). */
  lookupPath: ((rel: string) => Promise<void>) | undefined;
  /** Probes in flight now, and at most. */
  probing = 0;
  maxProbing = 0;
  async residency(rel: string, off: number, len: number): Promise<Uint8Array> {
    this.events.push(`probe ${rel}`);
    this.maxProbing = Math.max(this.maxProbing, ++this.probing);
    try {
      if (this.holdResidency) await this.holdResidency;
      await this.lookupPath?.(rel);
    } finally {
      this.probing--;
    }
    const first = Math.floor(off / 4096);
    const out = new Uint8Array(Math.ceil((off + len) / 4096) - first);
    for (const p of this.resident.get(rel) ?? []) if (p >= first && p - first < out.length) out[p - first] = 1;
    return out;
  }

  /** Events since the last call. */
  take(): string[] {
    return this.events.splice(0);
  }
}

const ctx = (): RequestContext => ({ signal: new AbortController().signal, interrupted: false });
const hdr = { id: 1, uid: 0, gid: 0, pid: process.pid };

interface Served {
  srv: WcfsServer;
  k: FakeKernel;
  db: IWritableStorage;
  foid: Oid;
  commit(blocks: Record<number, number>): Promise<Tid>;
  /** nodeid of path (names from the root), looked up as the kernel would. */
  lookup(...names: string[]): Promise<number>;
  read(nodeid: number, off: number, size: number): Promise<Uint8Array>;
  /** Wait until head/at shows tid. */
  published(tid: Tid): Promise<void>;
  /** Wait until cond() holds (bounded). */
  until(cond: () => boolean): Promise<void>;
  /** READ all of block #1 of head (tracked) and wait until its (empty) upload ended the entry. */
  readWhole1(head: number): Promise<void>;
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function served(opt: { bs?: number; uploadDelaysMs?: UploadDelays } = {}): Promise<Served> {
  const bs = opt.bs ?? BS;
  const tmp = makeTmpDir('wcfs-core-');
  const path = `${tmp.dir}/data.fs`;
  const db = (await openStorage(path, { create: true })) as IWritableStorage;
  await ensureRoot(db);
  let txn = new WriteTxn(db);
  const foid = createZBigFile(txn, bs);
  await txn.commit();
  const commit = async (blocks: Record<number, number>): Promise<Tid> => {
    txn = new WriteTxn(db);
    for (const [blk, v] of Object.entries(blocks)) await setBlock(txn, foid, Number(blk), new Uint8Array(bs).fill(v), { format: 'ZBlk0' });
    return txn.commit();
  };
  await commit({ 0: 1, 1: 2 });
  const k = new FakeKernel();
  const storage = await openStorage(path, { readOnly: true, fs1: { pollMs: 5 } });
  const srv = WcfsServer.serve({ zurl: path, mountpoint: '/nonexistent', log: () => {}, uploadDelaysMs: opt.uploadDelaysMs }, storage, k);
  cleanups.push(async () => {
    await srv.stop();
    await db.close();
    tmp.cleanup();
  });
  const s: Served = {
    srv,
    k,
    db,
    foid,
    commit,
    async lookup(...names) {
      let ino = 1;
      for (const name of names) ino = (await srv.lookup({ ...hdr, op: 'LOOKUP', nodeid: ino, name }, ctx())).nodeid;
      return ino;
    },
    read: (nodeid, off, size) => srv.read({ ...hdr, op: 'READ', nodeid, fh: 0, offset: off, size, flags: 0 }, ctx()),
    async readWhole1(head) {
      expect((await s.read(head, bs, bs))[0]).toBe(2);
      await s.until(() => s.k.events.includes(`drop ${head} ${bs}`));
    },
    async until(cond) {
      const t0 = Date.now();
      while (!cond()) {
        if (Date.now() - t0 > 10_000) throw new Error(`not reached: ${cond.toString()}`);
        await sleep(2);
      }
    },
    async published(tid) {
      const t0 = Date.now();
      while (srv.head.publishedAt < tid) {
        if (Date.now() - t0 > 10_000) throw new Error(`head/at stays ${hex16(srv.head.publishedAt)}, want ${hex16(tid)}`);
        await sleep(2);
      }
    },
  };
  k.lookupPath = async (rel) => void (await s.lookup(...rel.split('/')));
  return s;
}

const tree = (t: Served) => (t.srv as unknown as { tree: { pool: BlockPool; revFile(rev: Tid, foid: Oid): BigFile | undefined } }).tree;

describe('commit processing against a fake kernel', () => {
  it('old data goes to @<BlkRevAt(blk, oldHead)>: a block unchanged since the tail to @<tail>, not to @<oldHead> though that one is looked up', async () => {
    const t = await served();
    const at0 = t.srv.head.publishedAt; // the history tail
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const t1 = await t.commit({ 1: 3 });
    await t.published(t1);
    // >>> READ #0 and #1 whole; their uploads end; the kernel has them
    expect((await t.read(head, 0, 2 * BS))[BS]).toBe(3);
    await t.until(() => t.k.events.includes(`drop ${head} 0`) && t.k.events.includes(`drop ${head} ${BS}`));
    t.k.cached.set(
      head,
      new Map([
        [0, new Uint8Array(BS).fill(1)],
        [BS, new Uint8Array(BS).fill(3)],
      ]),
    );
    const f1 = await t.lookup('@' + hex16(t1), 'bigfile', hex16(t.foid)); // @<oldHead>, looked up
    t.k.take();

    // >>> commit δ(#0, #1) @t2: #0 last changed ≤ at0 → @at0 (probed: nobody had it);
    //     #1 changed @t1 → @t1 (known: no probe)
    const t2 = await t.commit({ 0: 4, 1: 5 });
    await t.published(t2);
    const f0 = tree(t).revFile(at0, t.foid)!.ino;
    const ev = t.k.take();
    expect(ev.filter((e) => e.startsWith('probe'))).toEqual([`probe @${hex16(at0)}/bigfile/${hex16(t.foid)}`]);
    expect(ev.filter((e) => e.startsWith('store')).sort()).toEqual([`store ${f0} 0+${BS} =1`, `store ${f1} ${BS}+${BS} =3`].sort());
    // every store before the invalidation of its head block
    expect(ev.indexOf(`store ${f0} 0+${BS} =1`)).toBeLessThan(ev.indexOf(`inval ${head} 0+${BS}`));
    expect(ev.indexOf(`store ${f1} ${BS}+${BS} =3`)).toBeLessThan(ev.indexOf(`inval ${head} ${BS}+${BS}`));
  });

  it("nothing is stored past the end of the @<rev> file (the kernel would grow it): a hole's old zeros whose revision is the tail, where the file was shorter", async () => {
    const t = await served(); // at0: #0 #1 (2 blocks) = the history tail
    const at0 = t.srv.head.publishedAt;
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const t1 = await t.commit({ 3: 4 }); // #2 is a hole now
    await t.published(t1);
    (t.srv as unknown as { reads: { uploadHead: () => Promise<void> } }).reads.uploadHead = async () => {}; // the entry stays
    expect((await t.read(head, 2 * BS, 4096))[0]).toBe(0);
    t.k.take();

    // >>> commit δ(#2): its old data (zeros) belongs to @at0 (BlkRevAt = tail), 2 blocks long
    const tid = await t.commit({ 2: 9 });
    await t.published(tid);
    expect(t.k.take()).toEqual([
      `drop ${head} ${2 * BS}`,
      `probe @${hex16(at0)}/bigfile/${hex16(t.foid)}`,
      `inval ${head} ${2 * BS}+${BS}`,
      `inval-attr ${head}`,
    ]);
    expect(tree(t).revFile(at0, t.foid)!.size).toBe(2 * BS);
  });

  it(`a lookup for a store that hangs holds head/at back no longer than STORE_LOOKUP_TIMEOUT_MS (${STORE_LOOKUP_TIMEOUT_MS} ms): the old data is dropped`, async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    (t.srv as unknown as { reads: { uploadHead: () => Promise<void> } }).reads.uploadHead = async () => {}; // the entry stays
    expect((await t.read(head, 0, 4096))[0]).toBe(1);
    let release!: () => void;
    t.k.holdResidency = new Promise((r) => (release = r)); // the kernel's LOOKUP does not come
    t.k.take();

    // >>> commit δ(#0): the probe of @at0 hangs; head/at moves anyway, nothing stored
    const tid = await t.commit({ 0: 8 });
    await t.published(tid);
    const ev = t.k.take();
    expect(ev.filter((e) => e.startsWith('store'))).toEqual([]);
    expect(ev).toContain(`inval ${head} 0+${BS}`);
    release();
  }, 20_000);

  it('at most 8 lookups for stores at a time; the others wait their turn and are done too', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const revs: Tid[] = [];
    for (let i = 2; i < 12; i++) revs.push(await t.commit({ [i]: i })); // block i last changed @revs[i-2]
    await t.published(revs[revs.length - 1]!);
    (t.srv as unknown as { reads: { uploadHead: () => Promise<void> } }).reads.uploadHead = async () => {}; // the entries stay
    for (let i = 2; i < 12; i++) expect((await t.read(head, i * BS, 4096))[0]).toBe(i);
    let release!: () => void;
    t.k.holdResidency = new Promise((r) => (release = r));
    t.k.take();

    // >>> commit δ(#2..#11): 10 @<rev> files to look up, held
    const tid = await t.commit(Object.fromEntries([...Array(10).keys()].map((k) => [k + 2, 100 + k])));
    await t.until(() => t.k.probing === 8);
    await sleep(20);
    expect(t.k.probing).toBe(8);
    release();
    await t.published(tid);
    expect(t.k.maxProbing).toBe(8);
    // <<< every block's old data went to its own @<rev>
    const stores = t.k.take().filter((e) => e.startsWith('store'));
    expect(stores.sort()).toEqual(revs.map((r, k) => `store ${tree(t).revFile(r, t.foid)!.ino} ${(k + 2) * BS}+${BS} =${k + 2}`).sort());
  });

  it(`no @<rev> view is created for a store while ${MAX_VIEWS_FOR_STORE} views exist (the old data is dropped)`, async () => {
    const t = await served();
    const at0 = t.srv.head.publishedAt;
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    for (let i = 1; i <= MAX_VIEWS_FOR_STORE; i++) await t.lookup('@' + hex16(at0 - BigInt(i)));
    (t.srv as unknown as { reads: { uploadHead: () => Promise<void> } }).reads.uploadHead = async () => {}; // the entry stays
    expect((await t.read(head, 0, 4096))[0]).toBe(1);
    t.k.take();

    // >>> commit δ(#0): @at0 would be a new view, over the cap: no probe, no store
    const tid = await t.commit({ 0: 7 });
    await t.published(tid);
    expect(t.k.take()).toEqual([`drop ${head} 0`, `inval ${head} 0+${BS}`, `inval-attr ${head}`]);
    expect(tree(t).revFile(at0, t.foid)).toBeUndefined();
    expect(t.srv.statsText()).toMatch(new RegExp(`RevHead\t: ${MAX_VIEWS_FOR_STORE}\n`));
  });

  it('READ registers after the load; a commit drops the block before it invalidates; the old data goes to @<BlkRevAt>, looked up by the server when nobody had', async () => {
    const t = await served();
    const at0 = t.srv.head.publishedAt;
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const rel0 = `@${hex16(at0)}/bigfile/${hex16(t.foid)}`;
    // keep the loaded entry (no upload, which would end it): the commit must take it
    (t.srv as unknown as { reads: { uploadHead: () => Promise<void> } }).reads.uploadHead = async () => {};
    t.k.take();

    // >>> READ #0 of head: loaded, then registered in the fast path with its data
    expect((await t.read(head, 0, 4096))[0]).toBe(1);
    expect(t.k.take()).toEqual([`put ${head} 0+${BS} =1`]);

    // >>> commit δ(#0): out of the fast path (its loaded entry taken: no RETRIEVE); #0 last
    //     changed at or before at0 (the history tail) → @at0, unknown to the kernel: probed
    //     (the kernel looks it up), stored, then head invalidated, then the attributes
    expect(tree(t).revFile(at0, t.foid)).toBeUndefined();
    const tid = await t.commit({ 0: 10 });
    await t.published(tid);
    const old = tree(t).revFile(at0, t.foid)!.ino;
    expect(t.k.take()).toEqual([`drop ${head} 0`, `probe ${rel0}`, `store ${old} 0+${BS} =1`, `inval ${head} 0+${BS}`, `inval-attr ${head}`]);

    // <<< the next READ loads the new data
    expect((await t.read(head, 0, 4096))[0]).toBe(10);
  });

  it('a prefetched block (2d) is an ordinary load: registered after its load, dropped before a commit invalidates it', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    (t.srv as unknown as { reads: { uploadHead: () => Promise<void> } }).reads.uploadHead = async () => {};
    t.k.take();

    // >>> READ of the second half of #0: #0 loaded, #1 prefetched; both registered with their data
    expect((await t.read(head, BS / 2, BS / 2))[0]).toBe(1);
    await t.until(() => t.k.events.includes(`put ${head} ${BS}+${BS} =2`));
    expect(t.k.take().sort()).toEqual([`put ${head} 0+${BS} =1`, `put ${head} ${BS}+${BS} =2`]);

    // >>> commit δ(#1): the prefetched block leaves the fast path before it is invalidated
    //     (its data kept in @<at0>, the history tail)
    const at0 = t.srv.head.publishedAt;
    const tid = await t.commit({ 1: 21 });
    await t.published(tid);
    const old = tree(t).revFile(at0, t.foid)!.ino;
    expect(t.k.take()).toEqual([
      `drop ${head} ${BS}`,
      `probe @${hex16(at0)}/bigfile/${hex16(t.foid)}`,
      `store ${old} ${BS}+${BS} =2`,
      `inval ${head} ${BS}+${BS}`,
      `inval-attr ${head}`,
    ]);
    expect((await t.read(head, BS, 4096))[0]).toBe(21);
  });

  it('old data goes to @<oldHead> (the block changed there) before head is invalidated, and head/at moves only after', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const at0 = t.srv.head.publishedAt;
    const old = await t.lookup('@' + hex16(at0), 'bigfile', hex16(t.foid));
    // >>> READ all of #1 (tracked); its entry ends after the (empty) upload; the kernel has it
    await t.readWhole1(head);
    t.k.cached.set(head, new Map([[BS, new Uint8Array(BS).fill(2)]]));
    const seenAt: Tid[] = [];
    t.k.onInval = () => seenAt.push(t.srv.head.publishedAt);
    t.k.take();

    // >>> commit δ(#1): RETRIEVE head's #1 (not loaded), STORE it into @at0, then invalidate head
    const tid = await t.commit({ 1: 20 });
    await t.published(tid);
    expect(t.k.take()).toEqual([`retrieve ${head} ${BS}+${BS}`, `store ${old} ${BS}+${BS} =2`, `inval ${head} ${BS}+${BS}`, `inval-attr ${head}`]);
    // <<< head/at still showed at0 at every invalidation (server.ts I5)
    expect(seenAt).toEqual([at0, at0]);
  });

  it("a READ during step 3b gets the new head at once, but its upload waits until head's pages of the changed block are invalidated (lock.ts U2)", async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    // >>> READ all of #1: tracked; its (empty) upload ends the entry
    await t.readWhole1(head);
    const release = t.k.holdInvals();
    t.k.take();

    // >>> commit δ(#1): 3b is held at the invalidation of head's #1
    const tid = await t.commit({ 1: 20 });
    await t.until(() => t.k.events.includes(`inval ${head} ${BS}+${BS}`));
    // >>> READ the first page of #1: answered from the new head (3a is over) ...
    expect((await t.read(head, BS, 4096))[0]).toBe(20);
    // ... but the upload of the rest waits: the kernel may still cache #1's old pages, and a
    //     store writes over cached pages in place, under readers copying them
    await sleep(50);
    expect(t.k.events.filter((e) => e.startsWith(`store ${head} `))).toEqual([]);

    // <<< #1 invalidated: the rest of it is uploaded
    release();
    await t.published(tid);
    const store = `store ${head} ${BS + 4096}+${BS - 4096} =20`;
    await t.until(() => t.k.events.includes(store));
    const ev = t.k.take();
    expect(ev.indexOf(`inval ${head} ${BS}+${BS}`)).toBeLessThan(ev.indexOf(store));
  });

  it('a READ during step 3a waits for it, registers nothing meanwhile, and gets the new head', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    await t.lookup('@' + hex16(t.srv.head.publishedAt), 'bigfile', hex16(t.foid)); // so 3a RETRIEVEs
    expect((await t.read(head, 0, 2 * BS)).length).toBe(2 * BS); // #0 #1 tracked
    await t.until(() => t.k.events.includes(`drop ${head} ${BS}`) && t.k.events.includes(`drop ${head} 0`));
    let release!: () => void;
    t.k.holdRetrieve = new Promise((r) => (release = r));
    t.k.take();

    // >>> commit δ(#0, #1): 3a holds headMu while RETRIEVE is held
    const tid = await t.commit({ 0: 30, 1: 31 });
    await t.until(() => t.k.events.some((e) => e.startsWith('retrieve')));
    // >>> READ #1 now: it must wait
    let done = false;
    const r = t.read(head, BS, 4096).then((d) => {
      done = true;
      return d;
    });
    await sleep(50);
    expect(done).toBe(false);
    expect(t.k.events.filter((e) => e.startsWith('put'))).toEqual([]);

    // <<< 3a ends: the READ is answered from the new head, registered after the advance
    release();
    expect((await r)[0]).toBe(31);
    await t.published(tid);
    expect(t.k.events.some((e) => e === `put ${head} ${BS}+${BS} =31`)).toBe(true);
    expect(t.k.events.filter((e) => e.startsWith('put')).every((e) => e.endsWith('=31'))).toBe(true);
  });
});

describe('uploads (reads.ts 2c) against a fake kernel', () => {
  const MiB = 1 << 20;
  it(`after a small READ the rest of the block is uploaded at once; after a big one (≥ ${BIG_READ >> 10} KiB) it waits, and READs take the block`, async () => {
    const t = await served({ bs: 2 * MiB, uploadDelaysMs: { small: 2, big: 1000 } });
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    t.k.take();

    // >>> a 128 KiB READ of #0 (the kernel's default readahead): the rest of #0 uploaded
    expect((await t.read(head, 0, 128 << 10))[0]).toBe(1);
    await t.until(() => t.k.events.includes(`drop ${head} 0`));
    expect(t.k.take()).toEqual([`put ${head} 0+${2 * MiB} =1`, `store ${head} ${128 << 10}+${2 * MiB - (128 << 10)} =1`, `drop ${head} 0`]);

    // >>> a 1 MiB READ of #1: nothing uploaded meanwhile …
    expect((await t.read(head, 2 * MiB, MiB))[0]).toBe(2);
    await sleep(50);
    expect(t.k.events.filter((e) => !e.startsWith('put'))).toEqual([]);
    // … the next READ takes the rest; <<< the upload then stores nothing
    expect((await t.read(head, 3 * MiB, MiB))[0]).toBe(2);
    await t.until(() => t.k.events.includes(`drop ${head} ${2 * MiB}`));
    expect(t.k.take()).toEqual([`put ${head} ${2 * MiB}+${2 * MiB} =2`, `drop ${head} ${2 * MiB}`]);
  });
});

describe('untracking (step 5) against a fake kernel', () => {
  const untrack = (t: Served) => (t.srv as unknown as { untracker: { sweep(stop: () => boolean): Promise<number> } }).untracker.sweep(() => false);
  const tracked = (t: Served) => t.srv.head.deltaFtail.trackedBlocks(t.foid);

  it('a block the kernel no longer caches is invalidated, then untracked; a cached one stays; a later READ tracks it again', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const rel = `head/bigfile/${hex16(t.foid)}`;
    // >>> READ #0 and #1 whole; their uploads end (entries dropped)
    expect((await t.read(head, 0, 2 * BS))[BS]).toBe(2);
    await t.until(() => t.k.events.includes(`drop ${head} 0`) && t.k.events.includes(`drop ${head} ${BS}`));
    expect(tracked(t)).toEqual([0, 1]);
    // the kernel still has #0 (one page of it is enough), not #1
    t.k.resident.set(rel, new Set([BS / 4096 - 1]));
    const trackedAtInval: number[][] = [];
    t.k.onInval = () => trackedAtInval.push(tracked(t));
    t.k.take();

    // >>> sweep: #1 is invalidated while still tracked (5c), then untracked (5d)
    expect(await untrack(t)).toBe(1);
    expect(t.k.take()).toEqual([`probe ${rel}`, `inval ${head} ${BS}+${BS}`]);
    expect(trackedAtInval).toEqual([[0, 1]]);
    expect(tracked(t)).toEqual([0]);
    expect(t.srv.statsText().match(/TrackedBlk\t: (\d+)/)?.[1]).toBe('1');

    // >>> commit δ(#0, #1): only the tracked #0 is RETRIEVEd (nothing: no store) and invalidated (#1 cannot be cached)
    t.k.onInval = undefined;
    const tid = await t.commit({ 0: 10, 1: 11 });
    await t.published(tid);
    expect(t.k.take()).toEqual([`retrieve ${head} 0+${BS}`, `inval ${head} 0+${BS}`, `inval-attr ${head}`]);
    // <<< #1 read again: the new data, tracked again
    expect((await t.read(head, BS, 4096))[0]).toBe(11);
    expect(tracked(t)).toEqual([0, 1]);
  });

  it('a pass that untracked blocks gives the heap back (5e, trimHeap); a pass that untracked none does not', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const rel = `head/bigfile/${hex16(t.foid)}`;
    const host = (t.srv as unknown as { untracker: { host: { trimHeap?: () => void } } }).untracker.host;
    const trims: number[][] = [];
    host.trimHeap = () => void trims.push(tracked(t)); // what is still tracked when it runs
    expect((await t.read(head, 0, 2 * BS))[BS]).toBe(2);
    await t.until(() => t.k.events.includes(`drop ${head} 0`) && t.k.events.includes(`drop ${head} ${BS}`));
    t.k.resident.set(rel, new Set([0])); // #0 cached, #1 not
    // >>> #1 untracked, then the heap trimmed
    expect(await untrack(t)).toBe(1);
    expect(trims).toEqual([[0]]);
    // >>> nothing more to untrack: no trim
    expect(await untrack(t)).toBe(0);
    expect(trims).toEqual([[0]]);
  });

  it('a block tracked again while the sweep invalidates it stays tracked (generation guard)', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    await t.readWhole1(head);
    const release = t.k.holdInvals();
    t.k.take();

    // >>> the sweep found #1 uncached and is invalidating it (5c) when a READ tracks it again
    const sweep = untrack(t);
    await t.until(() => t.k.events.includes(`inval ${head} ${BS}+${BS}`));
    expect((await t.read(head, BS, BS))[0]).toBe(2);
    await t.until(() => t.k.events.filter((e) => e === `drop ${head} ${BS}`).length === 1); // its upload is over
    t.k.holdInval = undefined;
    release();
    // <<< 5d leaves it: tracked again after 5b, its pages may be cached now
    expect(await sweep).toBe(0);
    expect(tracked(t)).toEqual([1]);
  });

  it('a block whose load or upload is in flight stays tracked', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    (t.srv as unknown as { reads: { uploadHead: () => Promise<void> } }).reads.uploadHead = async () => {}; // the entry stays
    expect((await t.read(head, 0, 4096))[0]).toBe(1);
    t.k.take();
    expect(await untrack(t)).toBe(0);
    expect(t.k.take()).toEqual([`probe head/bigfile/${hex16(t.foid)}`]);
    expect(tracked(t)).toEqual([0]);
  });

  it('a block some watch has pinned stays tracked (a watch setup then unpins exactly as before)', async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    expect((await t.read(head, 0, 2 * BS))[0]).toBe(1);
    await t.until(() => t.k.events.includes(`drop ${head} 0`) && t.k.events.includes(`drop ${head} ${BS}`));
    // (watches over a link need a mount: here the isolation layer says #0 is pinned)
    const iso = (t.srv as unknown as { isolation: { pinnedIn(foid: Oid): Set<number> } }).isolation;
    iso.pinnedIn = () => new Set([0]);
    t.k.take();
    expect(await untrack(t)).toBe(1);
    expect(t.k.take()).toEqual([`probe head/bigfile/${hex16(t.foid)}`, `inval ${head} ${BS}+${BS}`]);
    expect(tracked(t)).toEqual([0]);
  });
});

describe('block buffer pool (loads.ts L4) against a fake kernel', () => {
  /** Blocks of 100 bytes of v each (partly filled ZBlk0s: each load needs a buffer of its own). */
  const commitShort = async (t: Served, blocks: Record<number, number>): Promise<Tid> => {
    const txn = new WriteTxn(t.db);
    for (const [blk, v] of Object.entries(blocks)) await setBlock(txn, t.foid, Number(blk), new Uint8Array(100).fill(v), { format: 'ZBlk0' });
    return txn.commit();
  };
  /** Hold the loads of blk in f until the returned function is called. */
  const holdLoad = (f: BigFile, blk: number): (() => void) => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const view = f.view;
    const orig = view.loadBlock.bind(view);
    view.loadBlock = async (b, out) => {
      if (Number(b) === blk) await gate;
      return orig(b, out);
    };
    return release;
  };

  it('a multi-block READ keeps its first block while it waits for the next, though that buffer is reused meanwhile', async () => {
    const t = await served();
    const at = await commitShort(t, { 0: 1, 1: 2, 2: 3 });
    await t.published(at);
    const pool = tree(t).pool;
    const ino = await t.lookup('@' + hex16(at), 'bigfile', hex16(t.foid));
    const f = tree(t).revFile(at, t.foid)!;
    const release1 = holdLoad(f, 1);

    // >>> READ [0, BS+4096): #0 loads into a pool buffer, #1 is held
    const r = t.read(ino, 0, BS + 4096);
    // <<< #0's entry ends (its upload is done) and its buffer goes back to the pool
    await t.until(() => t.k.events.includes(`drop ${ino} 0`));
    await sleep(5);
    // >>> READ #2: its load gets #0's buffer and fills it with 3s
    const reused = pool.stats.reused;
    expect((await t.read(ino, 2 * BS, 4096))[0]).toBe(3);
    expect(pool.stats.reused).toBe(reused + 1);

    // <<< #1 comes in: the READ's #0 part is still #0's data
    release1();
    const d = await r;
    expect(d.length).toBe(BS + 4096);
    expect(d[0]).toBe(1);
    expect(d[99]).toBe(1);
    expect(d[100]).toBe(0);
    expect(d[BS]).toBe(2);
  });

  it("a commit's old data stays the taken buffer's until it is stored into @<oldHead> (#0 changed there)", async () => {
    const t = await served();
    const at0 = await commitShort(t, { 0: 5, 1: 7, 2: 8 });
    await t.published(at0);
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const old = await t.lookup('@' + hex16(at0), 'bigfile', hex16(t.foid));
    (t.srv as unknown as { reads: { uploadHead: () => Promise<void> } }).reads.uploadHead = async () => {}; // the entry stays
    expect((await t.read(head, 0, 4096))[0]).toBe(5);
    let releaseStore!: () => void;
    t.k.holdStore = new Promise((r) => (releaseStore = r));
    t.k.take();

    // >>> commit δ(#0): 3a takes #0's entry (no RETRIEVE), 3b's store is held
    const tid = await commitShort(t, { 0: 6 });
    await t.until(() => t.k.events.includes(`drop ${head} 0`));
    await sleep(5);
    // >>> meanwhile other loads take buffers from the pool (@at0's other blocks)
    const got = tree(t).pool.stats.got;
    expect((await t.read(old, BS, 4096))[0]).toBe(7);
    expect((await t.read(old, 2 * BS, 4096))[0]).toBe(8);
    expect(tree(t).pool.stats.got).toBe(got + 2);

    // <<< the store sees #0's old data
    releaseStore();
    t.k.holdStore = undefined;
    await t.published(tid);
    expect(t.k.events.filter((e) => e.startsWith(`store ${old} 0+`))).toEqual([`store ${old} 0+${BS} =5`]);
  });

  it("a RETRIEVEd block's old data goes into a pooled buffer, which returns to the pool once stored", async () => {
    const t = await served();
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    const old = await t.lookup('@' + hex16(t.srv.head.publishedAt), 'bigfile', hex16(t.foid));
    await t.readWhole1(head); // #1 tracked; its entry ends after the upload
    t.k.cached.set(head, new Map([[BS, new Uint8Array(BS).fill(2)]]));
    const pool = tree(t).pool;
    t.k.take();

    // >>> commit δ(#1): RETRIEVE into a buffer of the pool, stored into @<at0> from it
    let tid = await t.commit({ 1: 20 });
    await t.published(tid);
    expect(t.k.take()).toEqual([`retrieve ${head} ${BS}+${BS}`, `store ${old} ${BS}+${BS} =2`, `inval ${head} ${BS}+${BS}`, `inval-attr ${head}`]);
    expect(t.k.retrievedInto.length).toBe(1);
    expect(pool.stats).toEqual({ got: 1, reused: 0 });

    // <<< back in the pool after the store: the next RETRIEVE reuses it
    await sleep(5); // the release takes a macrotask (loads.ts L4)
    expect((await t.read(head, BS, BS))[0]).toBe(20);
    await t.until(() => t.k.events.includes(`drop ${head} ${BS}`));
    t.k.cached.set(head, new Map([[BS, new Uint8Array(BS).fill(20)]]));
    tid = await t.commit({ 1: 21 });
    await t.published(tid);
    expect(t.k.retrievedInto.length).toBe(2);
    expect(t.k.retrievedInto[1]).toBe(t.k.retrievedInto[0]);
    expect(pool.stats).toEqual({ got: 2, reused: 1 });
  });

  it('full blocks and holes are views: never from the pool', async () => {
    const t = await served(); // #0, #1: full ZBlk0s
    const head = await t.lookup('head', 'bigfile', hex16(t.foid));
    expect((await t.read(head, 0, 2 * BS))[BS]).toBe(2);
    expect(tree(t).pool.stats.got).toBe(0);
  });
});
