// Head — the database head as the server serves it and as it publishes it
// (wcfs-server.md §3.3-§3.4, §3.8): the one owner of the head revision, its lock, the head
// files and ΔFtail.
//
// State and guards:
//   mu            RWMutex: R — head READs and block loads, lookups that create head files,
//                 watch setup; W — commit processing step 3a only (commit.ts).
//   uploads       the upload pause around mu (lock.ts UploadGate).
//   at            guard mu: the head READs are served from (I2), changed by advance() under W.
//   files         guard mu: head/bigfile/<oid> BigFiles (kept for good, as upstream); added
//                 under R (tree.ts), their view/size/mtime changed by advance() under W.
//   deltaFtail    guard mu: track and queries under R, update under W.
//   publishedAt   JS thread only: what head/at shows and head waiters wait for; moves in
//                 publish() (step 3c) only. The waiter list is touched only by waitFor() and
//                 publish(), both synchronous on the JS thread between their awaits.
//
// Invariants:
//   I2 at, files' views, sizes and mtimes change together in one synchronous advance(): a
//      GETATTR (served without mu) sees the old or the new head, never a mix.
//   I5 publishedAt ≤ at, equal outside commit processing: a client learns of a revision only
//      after head's page cache holds nothing older for it (commit.ts, step 3c).

import { WcfsError } from '../errors.js';
import { FuseError } from '../fuse/errors.js';
import { errno } from '../fuse/kernel.js';
import { DeltaFtail } from '../deltatail/deltaFtail.js';
import type { ObjectLoader } from '../zodb/db.js';
import { hex16, type Oid, type Tid } from '../zodb/ids.js';
import type { BigFile } from './bigfile.js';
import { Event, RWMutex, UploadGate } from './lock.js';

/**
 * A revision below the pack boundary (notes.md, Server "Pack while serving"): `subject`
 * names what was asked for (a view, a block, a watch), unless the context already does.
 */
export class PackedError extends WcfsError {
  constructor(
    subject: string,
    readonly rev: Tid,
    readonly packedTo: Tid,
  ) {
    super('WCFS_EPACKED', `${subject ? `${subject}: ` : ''}packed away: history before @${hex16(packedTo)} is gone`);
  }
}

export class Head {
  readonly mu = new RWMutex();
  /**
   * Pack boundary (IStorage.packedTo): revisions below it are refused — @<rev>/ lookups, block
   * loads of @<rev>/ files, watches. JS thread; set at start and when the storage reports a
   * pack (server.ts), never lowered.
   */
  packedTo: Tid = 0n;
  readonly uploads = new UploadGate(this.mu);
  readonly files = new Map<Oid, BigFile>();
  readonly deltaFtail: DeltaFtail;
  private at_: Tid;
  private published: Tid;
  private waiters: Array<{ at: Tid; ev: Event }> = [];

  constructor(at0: Tid, loader: ObjectLoader) {
    this.at_ = at0;
    this.published = at0;
    this.deltaFtail = new DeltaFtail(at0, loader);
  }

  /** PackedError when rev is below the pack boundary. */
  checkPacked(rev: Tid, subject: string): void {
    if (rev < this.packedTo) throw new PackedError(subject, rev, this.packedTo);
  }

  /** The head READs are served from (I2). */
  get at(): Tid {
    return this.at_;
  }

  /** head/at (I5). */
  get publishedAt(): Tid {
    return this.published;
  }

  /**
   * Under mu W (step 3a): the new head becomes what READs and GETATTR see, all at once (I2).
   * `sizes` and `mtimes` are of head files.
   */
  advance(tid: Tid, sizes: Map<BigFile, number>, mtimes: Map<BigFile, Tid>): void {
    this.at_ = tid;
    for (const f of this.files.values()) f.view = f.view.withAt(tid);
    for (const [f, size] of sizes) f.size = size;
    for (const [f, t] of mtimes) f.revApprox = t;
  }

  /** Step 3c: head/at shows tid, and waiters for revisions ≤ tid wake. */
  publish(tid: Tid): void {
    this.published = tid;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) {
      if (w.at <= tid) w.ev.set();
      else this.waiters.push(w);
    }
  }

  /** Wait until head/at ≥ at (wcfs-server.md §3.8); with timeoutMs: EINVAL when head does not get there. */
  async waitFor(at: Tid, signal: AbortSignal, timeoutMs?: number): Promise<void> {
    if (at <= this.published) return;
    const ev = new Event();
    this.waiters.push({ at, ev });
    const t = timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs);
    try {
      await ev.wait(t === undefined ? signal : AbortSignal.any([signal, t]));
    } catch (e) {
      if (t?.aborted && !signal.aborted) throw new FuseError(errno.EINVAL, `@${hex16(at)}: revision is ahead of head @${hex16(this.published)}`);
      throw e;
    } finally {
      this.waiters = this.waiters.filter((w) => w.ev !== ev);
    }
  }
}
