// Pack while serving, the server's rules without a mount (notes.md, Server "Pack while
// serving"): WcfsServer.serve() against a fake kernel, a real FileStorage written by our
// writer and followed by the server, packed by hand (a copy with every txn's status set to
// 'p', renamed over Data.fs: a pack to "now" that dropped nothing; test/py/test_pack.py packs
// with real ZODB).
//
//   - revisions below the boundary are refused (PackedError, EIO): @<rev>/ lookups, even of a
//     view the server has, and new files in it; the kernel's dentries of such views are
//     dropped; @<boundary>/ and head/ serve as before; ΔFtail forgets the history below it;
//   - commits the server had not processed when the pack came (their states are gone) are
//     folded into the one at the boundary: ΔFtail never looks at a packed-away revision;
//   - commits after the pack are followed.
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import type { RequestContext } from '../src/fuse/fs.js';
import type { Notifier } from '../src/fuse/notifier.js';
import type { BlockCache } from '../src/fuse/session.js';
import { WcfsServer, type Kernel } from '../src/server/server.js';
import { sleep } from '../src/util/async.js';
import { WriteTxn } from '../src/zodb/db.js';
import { markAllPacked } from './helpers/fs1util.js';
import { hex16, type Oid, type Tid } from '../src/zodb/ids.js';
import { openStorage } from '../src/zodb/open.js';
import type { IStorage, IWritableStorage } from '../src/zodb/storage.js';
import { createZBigFile, ensureRoot, setBlock } from '../src/zodb/zbigfile.js';
import { makeTmpDir } from './helpers/tmp.js';

const BS = 8192;

class FakeKernel implements Kernel {
  readonly events: string[] = [];
  isClosed = false;
  readonly notifier: Notifier = {
    invalInode: async () => {},
    invalEntry: async (parent, name) => {
      this.events.push(`inval-entry ${parent} ${name}`);
    },
    store: async () => {},
    retrieve: async () => [],
  };
  readonly blockCache: BlockCache = { put: () => true, drop: () => true, served: () => 0 };
  /** Everything cached: the untrack sweep (step 5) leaves every block tracked. */
  residency = async (_rel: string, off: number, len: number) => new Uint8Array(Math.ceil((off + len) / 4096) - Math.floor(off / 4096)).fill(1);
}

const ctx = (): RequestContext => ({ signal: new AbortController().signal, interrupted: false });
const hdr = { id: 1, uid: 0, gid: 0, pid: process.pid };

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('pack while serving (fake kernel)', () => {
  it('refuses revisions below the boundary, folds unprocessed commits into it, keeps following', async () => {
    const tmp = makeTmpDir('wcfs-pack-');
    const path = `${tmp.dir}/data.fs`;
    let db = (await openStorage(path, { create: true })) as IWritableStorage;
    await ensureRoot(db);
    let txn = new WriteTxn(db);
    const foid: Oid = createZBigFile(txn, BS);
    await txn.commit();
    const commit = async (blocks: Record<number, number>): Promise<Tid> => {
      txn = new WriteTxn(db);
      for (const [blk, v] of Object.entries(blocks)) await setBlock(txn, foid, Number(blk), new Uint8Array(BS).fill(v), { format: 'ZBlk0' });
      return txn.commit();
    };
    const at1 = await commit({ 0: 1, 1: 2 });
    const k = new FakeKernel();
    const storage: IStorage = await openStorage(path, { readOnly: true, fs1: { pollMs: 5 } });
    const srv = WcfsServer.serve({ zurl: path, mountpoint: '/nonexistent', log: () => {} }, storage, k);
    cleanups.push(async () => {
      await srv.stop();
      await db.close();
      tmp.cleanup();
    });
    const lookup = async (...names: string[]) => {
      let ino = 1;
      for (const name of names) ino = (await srv.lookup({ ...hdr, op: 'LOOKUP', nodeid: ino, name }, ctx())).nodeid;
      return ino;
    };
    const read = (nodeid: number, off: number) => srv.read({ ...hdr, op: 'READ', nodeid, fh: 0, offset: off, size: 4096, flags: 0 }, ctx());
    const until = async (cond: () => boolean, what: string) => {
      const t0 = Date.now();
      while (!cond()) {
        if (Date.now() - t0 > 10_000) throw new Error(`not reached: ${what}`);
        await sleep(2);
      }
    };
    const updates: Tid[] = [];
    const δ = srv.head.deltaFtail;
    const update0 = δ.update.bind(δ);
    δ.update = (tid, oids) => {
      updates.push(tid);
      return update0(tid, oids);
    };

    const head = await lookup('head', 'bigfile', hex16(foid));
    expect((await read(head, 0))[0]).toBe(1); // tracked
    const revAt1 = await lookup(`@${hex16(at1)}`, 'bigfile', hex16(foid));
    expect((await read(revAt1, BS))[0]).toBe(2);

    // >>> two commits the server cannot process yet (headMu held), then the pack
    await srv.head.mu.rlock();
    const at2 = await commit({ 0: 3 });
    const at3 = await commit({ 1: 4 });
    await until(() => storage.head() === at3, 'storage sees at3');
    await db.close();
    const packed = `${tmp.dir}/data.fs.pack`;
    fs.copyFileSync(path, packed);
    markAllPacked(packed);
    fs.renameSync(path, `${path}.old`);
    fs.renameSync(packed, path);
    await storage.sync();
    expect(storage.packedTo!()).toBe(at3);
    expect(srv.head.packedTo).toBe(at3); // at once: nothing below it gets through any more
    srv.head.mu.runlock();
    await until(() => srv.head.publishedAt === at3, 'head/at = at3');
    expect(updates).toEqual([at3]); // at2 folded into at3: its state is gone
    await until(() => k.events.includes(`inval-entry 1 @${hex16(at1)}`), 'inval-entry of @at1');
    expect(δ.tail()).toBe(at3);

    // <<< below the boundary: refused with a clear error; at it and head: served
    for (const rev of [at1, at2]) {
      await expect(lookup(`@${hex16(rev)}`)).rejects.toMatchObject({
        code: 'WCFS_EPACKED',
        message: `@${hex16(rev)}: packed away: history before @${hex16(at3)} is gone`,
      });
    }
    // a file of a view the server still has: a new block load fails
    await expect(read(revAt1, 0)).rejects.toMatchObject({ code: 'WCFS_EPACKED' });
    expect((await read(head, 0))[0]).toBe(3);
    expect((await read(head, BS))[0]).toBe(4);
    const revAt3 = await lookup(`@${hex16(at3)}`, 'bigfile', hex16(foid));
    expect((await read(revAt3, 0))[0]).toBe(3);

    // >>> a commit after the pack (the writer reopens the packed file): followed
    db = (await openStorage(path)) as IWritableStorage;
    const at4 = await commit({ 0: 5 });
    await until(() => srv.head.publishedAt === at4, 'head/at = at4');
    expect(updates).toEqual([at3, at4]);
    expect((await read(head, 0))[0]).toBe(5);
    expect(srv.failed).toBeUndefined();
  });
});
