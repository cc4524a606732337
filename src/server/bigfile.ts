// BigFile — one ZBigFile as served under one view: head/bigfile/<oid> or @<rev>/bigfile/<oid>.
//
// Owns the per-file serving state: the ZBigFileView to load from, the size and mtime the
// kernel sees, the kernel's references to its inode (lookups, open handles), and its block
// loads (loads.ts: the in-flight entries — upstream's `loading` — and their READ fast-path
// registration, owned there).
//
// Invariants:
//   head files: view.at == the head READs are served from; size, revApprox are those of that
//     revision. They change only inside commit processing (commit.ts, step 3a), all at once.
//   @rev files: never change.
//
// Guarded by: head files — the server's headMu (R: reads, W: commit processing).

import type { BlockCache } from '../fuse/session.js';
import type { Oid, Tid } from '../zodb/ids.js';
import type { ZBigFileView } from '../zodb/zbigfile.js';
import { BlockLoads, type BlockPool } from './loads.js';

export class BigFile {
  /** Kernel lookups minus forgets: > 0 ⇒ the kernel knows this inode (notify works). */
  nlookup = 0;
  /** Open file handles. */
  nopen = 0;
  readonly loads: BlockLoads;

  constructor(
    readonly ino: number,
    readonly foid: Oid,
    /** null = head view. */
    readonly rev: Tid | null,
    public view: ZBigFileView,
    public size: number,
    /** mtime: the ZBigFile serial, then the tid of every commit that changed the file (approx.). */
    public revApprox: Tid,
    fastPath: BlockCache,
    pool: BlockPool,
  ) {
    this.loads = new BlockLoads(this, fastPath, pool);
  }

  get blksize(): number {
    return this.view.blksize;
  }

  get isHead(): boolean {
    return this.rev === null;
  }
}
