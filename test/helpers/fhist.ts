// FHist: a small ZBigFile history in a FileStorage written by our writer, and a ΔFtail that
// follows it — without a server or a mount. For table tests of ΔFtail and of the isolation
// protocol's decisions (test/deltatail.test.ts, test/isolation.test.ts).
//
//   const h = await FHist.create();             // empty database
//   const f = await h.newFile();                 // a ZBigFile (its own commit)
//   const t1 = await h.commit({ [f]: { 0: 1, 1: null } });   // blk → fill byte | null (hole)
//   h.startΔF();                                 // ΔFtail with tail = head
//   await h.track(f, 0);                         // as a READ of head/ does (load at head, track)
//   const δF = await h.commitΔ({ [f]: { 0: 2 } }); // commit + ΔFtail.update → its δF
import { DeltaFtail, type DeltaFtailOptions, type FileDelta } from '../../src/deltatail/deltaFtail.js';
import { StorageLoader, WriteTxn } from '../../src/zodb/db.js';
import type { Oid, Tid } from '../../src/zodb/ids.js';
import { openStorage } from '../../src/zodb/open.js';
import type { IWritableStorage } from '../../src/zodb/storage.js';
import { createZBigFile, ensureRoot, setBlock, ZBigFileView, type ZBlkKind } from '../../src/zodb/zbigfile.js';
import { makeTmpDir } from './tmp.js';

/** A block's new content: a fill byte (ZBlk0), null (punch a hole), or explicit data and format. */
export type BlkWrite = number | null | { data: Uint8Array; format: ZBlkKind };
/** Per file (String(foid)): blk → content, or [blk, content] pairs applied in order (a block may repeat). */
export type Writes = Record<string, Record<number, BlkWrite> | Array<[number, BlkWrite]>>;

export class FHist {
  readonly loader: StorageLoader;
  δF!: DeltaFtail;
  /** Tids of all commits, ascending. */
  readonly tids: Tid[] = [];
  private constructor(
    readonly s: IWritableStorage,
    private readonly tmp: { dir: string; cleanup: () => void },
    readonly blksize: number,
  ) {
    this.loader = new StorageLoader(s);
  }

  static async create(blksize = 4096): Promise<FHist> {
    const tmp = makeTmpDir('wcfs-fhist-');
    const s = (await openStorage(`${tmp.dir}/data.fs`, { create: true })) as IWritableStorage;
    await ensureRoot(s);
    return new FHist(s, tmp, blksize);
  }

  head(): Tid {
    return this.s.head();
  }

  /** Create a ZBigFile in a commit of its own (or in `txn`). */
  async newFile(): Promise<Oid> {
    const txn = new WriteTxn(this.s);
    const foid = createZBigFile(txn, this.blksize);
    this.tids.push(await txn.commit());
    return foid;
  }

  /** One commit: per file, blk → content; `extra` adds to the same transaction. Returns tid and δZ. */
  async commitZ(writes: Writes, extra?: (txn: WriteTxn) => void | Promise<void>): Promise<{ tid: Tid; oids: Oid[] }> {
    const txn = new WriteTxn(this.s);
    for (const [f, blocks] of Object.entries(writes)) {
      for (const [blk, w] of Array.isArray(blocks) ? blocks : Object.entries(blocks)) {
        const foid = BigInt(f);
        if (w === null) await setBlock(txn, foid, Number(blk), null);
        else if (typeof w === 'number') await setBlock(txn, foid, Number(blk), new Uint8Array(this.blksize).fill(w), { format: 'ZBlk0' });
        else await setBlock(txn, foid, Number(blk), w.data, { format: w.format });
      }
    }
    await extra?.(txn);
    const oids = txn.changed();
    const tid = await txn.commit();
    this.tids.push(tid);
    return { tid, oids };
  }

  async commit(writes: Writes): Promise<Tid> {
    return (await this.commitZ(writes)).tid;
  }

  /** ΔFtail starting at head (= its tail); files are tracked at head. */
  startΔF(opts?: DeltaFtailOptions): DeltaFtail {
    this.δF = new DeltaFtail(this.head(), this.loader, opts);
    return this.δF;
  }

  /** Track a file as the server does when it first serves it at head. */
  async trackFile(foid: Oid): Promise<void> {
    const v = await ZBigFileView.open(this.loader, foid, this.δF.head());
    this.δF.trackFile(foid, v.blktab, (await v.size()).path);
  }

  /** Load blk at ΔFtail's head and track it, as a READ of head/bigfile does. Returns the data's first byte. */
  async track(foid: Oid, blk: number): Promise<number> {
    if (!this.δF.isTracked(foid)) await this.trackFile(foid);
    const v = await ZBigFileView.open(this.loader, foid, this.δF.head());
    const b = await v.loadBlock(blk);
    this.δF.track(foid, blk, b.path, b.zblk?.oid ?? null, b.revMax);
    return b.data[0]!;
  }

  /** Commit and fold it into ΔFtail; returns the tid and ΔFtail's δF of the commit. */
  async commitΔ(writes: Writes, extra?: (txn: WriteTxn) => void | Promise<void>): Promise<{ tid: Tid; δF: Map<Oid, FileDelta> }> {
    const { tid, oids } = await this.commitZ(writes, extra);
    return { tid, δF: await this.δF.update(tid, oids) };
  }

  async close(): Promise<void> {
    await this.s.close();
    this.tmp.cleanup();
  }
}
