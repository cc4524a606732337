// tDB: a database written by our writer, served by wcfs, with the history a model of the
// isolation protocol needs (which blocks were written when, which were read via head/), and
// raw watch links. Expected pins come from the model (wcfs-server.md §2.5-§2.7):
//   rev(blk, at) = the last commit ≤ at that changed blk, or the server's tail when none;
//   a watch at `at` is pinned, for every block read via head/ that changed in (at, head], to
//   rev(blk, at); a read of blk at head pins every watch with at < rev(blk, head).
import { writeFileSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { expect } from 'vitest';
import { WriteTxn } from '../../src/zodb/db.js';
import { hex16, type Tid } from '../../src/zodb/ids.js';
import { openStorage } from '../../src/zodb/open.js';
import type { IWritableStorage } from '../../src/zodb/storage.js';
import { createZBigFile, ensureRoot, rootSet, setBlock, ZBIGFILE_CLASS } from '../../src/zodb/zbigfile.js';
import { PersistentRef } from '../../src/zodb/pickle/index.js';
import { findMount } from '../../src/fuse/mountinfo.js';
import { startServer, tmpDir, type TestServer } from './wcfs.js';
import { TWatchLink, type PinSet } from './wlink.js';
import { liveDb, type LiveDb } from './testdb.js';

export const BS = 65536;

/** A database with ZBigFiles written by us, and the history the model needs. */
export class TDB {
  pinTimeout = 3;
  /** Extra `wcfs serve` options. */
  serveArgs: string[] = [];
  db!: IWritableStorage;
  srv!: TestServer;
  tail = 0n;
  readonly revs: Tid[] = [];
  /** foid → blk → ascending tids of the commits that wrote (or punched) it. */
  readonly writes = new Map<bigint, Map<number, Tid[]>>();
  /** foid → blk → data at head (null: hole). */
  readonly data = new Map<bigint, Map<number, number | null>>();
  /** foid → blocks read via head/ so far. */
  readonly accessed = new Map<bigint, Set<number>>();
  readonly links: TWatchLink[] = [];
  dir = tmpDir();
  /** The database as WCFS_TEST_DB says (testdb.ts): a file, or a runzeo over it. */
  live!: LiveDb;

  async open(): Promise<void> {
    this.live = await liveDb(`${this.dir}/data.fs`);
    this.db = (await openStorage(this.live.zurl, { create: true })) as IWritableStorage;
    await ensureRoot(this.db);
  }
  async newFile(name: string): Promise<bigint> {
    const txn = new WriteTxn(this.db);
    const foid = createZBigFile(txn, BS);
    await rootSet(txn, name, new PersistentRef(foid, ZBIGFILE_CLASS));
    this.revs.push(await txn.commit());
    this.writes.set(foid, new Map());
    this.data.set(foid, new Map());
    this.accessed.set(foid, new Set());
    return foid;
  }
  /** Commit blk → fill byte (null: punch a hole) for each file. */
  async commit(changes: Array<[bigint, Record<number, number | null>]>, opts: { wait?: boolean } = {}): Promise<Tid> {
    const txn = new WriteTxn(this.db);
    for (const [foid, blocks] of changes) {
      for (const [blk, fill] of Object.entries(blocks))
        await setBlock(txn, foid, Number(blk), fill === null ? null : new Uint8Array(BS).fill(fill), { format: 'ZBlk0' });
    }
    const tid = await txn.commit();
    this.revs.push(tid);
    for (const [foid, blocks] of changes) {
      for (const [blk, fill] of Object.entries(blocks)) {
        const w = this.writes.get(foid)!;
        const b = Number(blk);
        if (fill === null && (this.data.get(foid)!.get(b) ?? null) === null) continue; // punching a hole changes nothing
        w.set(b, [...(w.get(b) ?? []), tid]);
        this.data.get(foid)!.set(b, fill);
      }
    }
    if (this.srv && opts.wait !== false) await this.srv.waitHead(hex16(tid));
    return tid;
  }
  async serve(): Promise<void> {
    this.srv = await startServer(this.live.zurl, {
      dir: this.dir,
      args: ['--pintimeout', String(this.pinTimeout), ...this.serveArgs, ...(process.env.WCFS_DEBUG_DUMP ? ['--debug'] : [])],
    });
    expect((await readFile(this.srv.at('.wcfs/zurl'))).toString()).toBe(this.live.zurl); // WCFS_TEST_DB is what is served
    this.tail = this.head();
    // no readahead: a read of one block must not load its neighbours (they would become
    // "accessed" behind the model's back)
    const m = findMount(this.srv.mnt)!;
    writeFileSync(`/sys/class/bdi/0:${m.minor}/read_ahead_kb`, '0');
  }
  head(): Tid {
    return this.revs[this.revs.length - 1]!;
  }
  nblk(foid: bigint): number {
    let n = 0;
    for (const [blk, fill] of this.data.get(foid)!) if (fill !== null) n = Math.max(n, blk + 1);
    return n;
  }
  rev(foid: bigint, blk: number, at: Tid): Tid {
    let r = this.tail;
    for (const t of this.writes.get(foid)!.get(blk) ?? []) if (t <= at && t > r) r = t;
    return r;
  }
  changedAfter(foid: bigint, blk: number, at: Tid): boolean {
    return (this.writes.get(foid)!.get(blk) ?? []).some((t) => t > at);
  }
  /** Pins a (new or moved) watch of `link` at `at` must receive. */
  setupPins(link: TWatchLink, foid: bigint, at: Tid): PinSet {
    const target = new Map<number, Tid>();
    for (const blk of this.accessed.get(foid)!) if (this.changedAfter(foid, blk, at)) target.set(blk, this.rev(foid, blk, at));
    const pins: PinSet = new Map();
    const have = link.pinned.get(foid) ?? new Map<number, Tid>();
    for (const [blk, rev] of target) if (have.get(blk) !== rev) pins.set(blk, rev);
    for (const blk of have.keys()) if (!target.has(blk)) pins.set(blk, null);
    return pins;
  }
  /** Pins `link` must receive when blk is read at head. */
  readPins(link: TWatchLink, foid: bigint, blk: number): PinSet {
    const at = link.at.get(foid);
    if (at === undefined || this.rev(foid, blk, this.head()) <= at) return new Map();
    const rev = this.rev(foid, blk, at);
    return link.pinned.get(foid)?.get(blk) === rev ? new Map() : new Map([[blk, rev]]);
  }
  /** Read blk of foid via head, checking pins on every link and the data. */
  async read(foid: bigint, blk: number): Promise<void> {
    const path = this.srv.at(`head/bigfile/${hex16(foid)}`);
    const run = async () => {
      const fh = await open(path, 'r');
      try {
        const b = Buffer.alloc(BS);
        const { bytesRead } = await fh.read(b, 0, BS, blk * BS);
        return bytesRead === BS ? b : b.subarray(0, bytesRead);
      } finally {
        await fh.close();
      }
    };
    let f: () => Promise<Buffer> = run;
    for (const l of this.links) {
      const inner = f;
      const pins = this.readPins(l, foid, blk);
      f = () => l.expectPinsDuring(inner, [[foid, pins]]);
    }
    const got = await f();
    const want = this.data.get(foid)!.get(blk) ?? 0;
    expect(got.length, `#${blk}`).toBe(BS);
    expect(
      got.every((x) => x === (want ?? 0)),
      `#${blk} data`,
    ).toBe(true);
    this.accessed.get(foid)!.add(blk);
  }
  async link(opts: { noread?: boolean; as?: string[] } = {}): Promise<TWatchLink> {
    const l = await TWatchLink.open(this.srv.at('head/watch'), opts);
    this.links.push(l);
    return l;
  }
  async watch(l: TWatchLink, foid: bigint, at: Tid): Promise<void> {
    await l.watch(foid, at, this.setupPins(l, foid, at));
  }
  async close(): Promise<void> {
    for (const l of this.links) await l.close();
    await this.db?.close();
    await this.srv?.stop();
    await this.live?.close();
  }
}

export async function stats(t: TDB): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const l of (await readFile(t.srv.at('.wcfs/stats'))).toString().trim().split('\n')) {
    const [k, v] = l.split('\t: ');
    out[k!] = Number(v);
  }
  return out;
}

export { rng } from '../../src/util/rng.js';
