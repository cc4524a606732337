// The isolation protocol, server side (wcfs-server.md §2.5-§2.9, §3.5.4): watches, pins sent
// on watch setup and before a head block reaches the kernel, and what happens to clients that
// do not answer pins correctly and in time.
//
// Objects:
//   Watch  (link, file, at, pinned: blk → rev being/been pinned)   — one per (link, file)
//   file.watchers  — the Watches of a head BigFile (reads pin them)
//   link.byFile    — the Watches of one link
//
// 1) setup (`watch <oid> @<at>`): wait head ≥ at; hold headMu shared for the rest (no commit
//    in between); at ≥ tail; the file known at head; no epoch in (at, head]; at not going
//    back; register the watch *before* computing pins (a concurrent read then pins it too);
//    pin every tracked block changed in (at, head] to its revision as of at, unpin blocks no
//    longer needing it; "ok" only after every pin was acked.
// 2) reads (readPinWatchers): before data of a head block goes to the kernel, every watch with
//    at < the block's head revision gets pinned to the block's revision as of its at; the read
//    waits for the acks.
// 3) pin failure (timeout, wrong reply, link gone mid-pin): the link is shut down with a
//    "fatal:" line, and the client process is killed (SIGBUS, then SIGKILL) unless it is
//    already dying; a client that cannot be killed switches the server into EIO mode. The
//    client is link.proc, signalled through its pidfd only (never a pid number, which may
//    belong to an unrelated process by now).
//    A pin never fails the read or the setup of anyone else.
//
// Invariants:
//   I1 w.pinned[blk] = rev ⇒ the client was told (or is being told) to map blk @rev; entries
//      for @head are removed once acked. Same (blk, rev) is never sent twice.
//   I2 "ok" of a setup is sent only when every pin of that setup was acked and the link is up.
//   I3 w.at only moves forward, under w.atMu (W); pins computed from w.at hold w.atMu (R).
//
// Lock order: headMu (R) > w.setupMu > w.atMu. Pins are awaited holding headMu (R), w.atMu (R)
// and, in a setup, w.setupMu — never a lock the client's pinner needs: GETATTR, LOOKUP/OPEN
// of @rev files take none.

import createDebug from 'debug';
import type { DeltaFtail } from '../deltatail/deltaFtail.js';
import { epochMicrosToTid, hex16, tidToEpochMicros, type Oid, type Tid } from '../zodb/ids.js';
import { formatPin, goDuration, goQuote } from '../watchlink/wire.js';
import type { BigFile } from './bigfile.js';
import { RWMutex } from './lock.js';
import { sleep } from '../util/async.js';
import type { ProcessRef } from '../util/proc.js';
import { isCode } from '../errors.js';
import { LinkDownError, LinkTimeoutError, PinError, WrongReplyError } from '../watchlink/errors.js';
import type { WatchLink } from './wlink.js';
import { PackedError } from './head.js';
import type { RecentLatencies } from '../util/latency.js';

/** Pins sent, acked and failed; kill decisions (the kills themselves go to the server's log too). */
const debug = createDebug('wcfs:iso');

export class Watch {
  at: Tid = 0n;
  readonly pinned = new Map<number, { rev: Tid | null; done: Promise<void> | null }>();
  readonly setupMu = new RWMutex();
  readonly atMu = new RWMutex();
  registered = false;
  constructor(
    readonly link: WatchLink,
    readonly file: BigFile,
  ) {}
}

/** What the protocol needs from the server. */
export interface IsolationHost {
  readonly headMu: RWMutex;
  readonly deltaFtail: DeltaFtail;
  headAt(): Tid;
  /** Pack boundary (head.ts Head.packedTo): watches below it are refused. */
  packedTo(): Tid;
  headFile(foid: Oid): BigFile | undefined;
  /** Wait until head ≥ at (cancelled by signal). */
  waitHead(at: Tid, signal: AbortSignal): Promise<void>;
  readonly pinTimeoutMs: number;
  readonly stats: { Watch: number; pin: number; pinkill: number };
  /** Where acked pins' round trips go (ms, with performance.now() as the clock). */
  readonly pinRtt?: RecentLatencies;
  log(line: string): void;
  fatal(err: Error): void;
}

export class Isolation {
  /** Watches per head file (by foid) and per link. */
  private readonly fileWatchers = new Map<Oid, Set<Watch>>();
  private readonly linkWatches = new Map<WatchLink, Map<Oid, Watch>>();

  constructor(private readonly host: IsolationHost) {}

  linkOpened(link: WatchLink): void {
    this.linkWatches.set(link, new Map());
  }

  /** Watches of all links, for stats and revCut. */
  *watches(): Iterable<Watch> {
    for (const byFile of this.linkWatches.values()) yield* byFile.values();
  }

  /** Blocks of file foid that some watch has pinned to a revision (untrack.ts leaves them be). */
  pinnedIn(foid: Oid): Set<number> {
    const out = new Set<number>();
    for (const w of this.watches()) if (w.file.foid === foid) for (const [blk, p] of w.pinned) if (p.rev !== null) out.add(blk);
    return out;
  }

  pinnedBlocks(): number {
    let n = 0;
    for (const w of this.watches()) for (const p of w.pinned.values()) if (p.rev !== null) n++;
    return n;
  }

  /** Lowest `at` of all registered watches (history must not be forgotten past it). */
  minWatchAt(): Tid | undefined {
    let min: Tid | undefined;
    for (const w of this.watches()) if (w.registered && (min === undefined || w.at < min)) min = w.at;
    return min;
  }

  // ---- 1) watch requests ----

  async handleRequest(link: WatchLink, stream: bigint, foid: Oid, at: Tid | null): Promise<void> {
    const atText = at === null ? 'ffffffffffffffff' : hex16(at);
    const prefix = `setup watch f<${hex16(foid)}> @${atText}`; // upstream's exact text (wcfs.go setupWatch)
    try {
      if (at === null) this.unwatch(link, foid);
      else await this.setupWatch(link, foid, at);
      await link.send(stream, 'ok');
    } catch (e) {
      if (link.down) return; // no reply on a down link (I2)
      await link.send(stream, `error ${prefix}: ${(e as Error).message}`);
    }
  }

  private unwatch(link: WatchLink, foid: Oid): void {
    const w = this.linkWatches.get(link)?.get(foid);
    if (w === undefined) return;
    this.drop(w);
  }

  private drop(w: Watch): void {
    const byFile = this.linkWatches.get(w.link);
    if (byFile?.get(w.file.foid) === w) {
      byFile.delete(w.file.foid);
      this.host.stats.Watch--;
    }
    this.fileWatchers.get(w.file.foid)?.delete(w);
    w.registered = false;
  }

  private async setupWatch(link: WatchLink, foid: Oid, at: Tid): Promise<void> {
    const h = this.host;
    await h.waitHead(at, link.signal);
    await h.headMu.rlock(link.signal);
    try {
      const packedTo = h.packedTo();
      if (at < packedTo) throw new PackedError('', at, packedTo); // the reply's prefix names at
      const tail = h.deltaFtail.tail();
      if (at < tail) {
        const head = h.headAt();
        const δt = BigInt(tidToEpochMicros(head) - tidToEpochMicros(at)) * 1000n; // as upstream: Go duration of the µs-rounded times
        throw new Error(`too far away back from head/at (@${hex16(head)}); δt = ${goDuration(δt)}`);
      }
      const byFile = this.linkWatches.get(link);
      if (byFile === undefined) throw new LinkDownError('link is down', '');
      let w = byFile.get(foid);
      let created = false;
      if (w === undefined) {
        const f = h.headFile(foid);
        if (f === undefined) throw new Error('file not yet known to wcfs or is not a ZBigFile');
        w = new Watch(link, f);
        byFile.set(foid, w);
        h.stats.Watch++;
        created = true;
      }
      await w.setupMu.lock(link.signal);
      try {
        await this.setupLocked(w, at, created);
      } finally {
        w.setupMu.unlock();
      }
    } finally {
      h.headMu.runlock();
    }
  }

  private async setupLocked(w: Watch, at: Tid, created: boolean): Promise<void> {
    const h = this.host;
    const foid = w.file.foid;
    await w.atMu.lock(w.link.signal);
    let pins: Promise<void>[];
    try {
      if (w.registered && at < w.at) throw new Error('going back in history is forbidden');
      const epoch = await h.deltaFtail.epochIn(foid, at);
      if (epoch !== undefined) {
        if (created && !w.registered) this.drop(w); // roll back a watch created by this request
        throw new Error(`file epoch detected @${hex16(epoch)} in between (at,head=@${hex16(h.headAt())}]`);
      }
      // register first (a read from now on pins for this watch as well)
      w.at = at;
      w.registered = true;
      let ws = this.fileWatchers.get(foid);
      if (ws === undefined) this.fileWatchers.set(foid, (ws = new Set()));
      ws.add(w);
      const toPin = new Map<number, Tid>();
      for (const blk of await h.deltaFtail.changedSince(foid, at)) toPin.set(blk, await h.deltaFtail.blkRevAt(foid, blk, at));
      pins = [];
      for (const [blk, rev] of toPin) pins.push(this.pin(w, blk, rev));
      for (const blk of [...w.pinned.keys()]) if (!toPin.has(blk)) pins.push(this.pin(w, blk, null));
      // downgrade: pins go out holding atMu shared (setupMu keeps other setups out)
      w.atMu.unlock();
      await w.atMu.rlock();
    } catch (e) {
      w.atMu.unlock();
      throw e;
    }
    try {
      await Promise.all(pins);
    } finally {
      w.atMu.runlock();
    }
    if (w.link.down) throw new LinkDownError('link is down', '');
  }

  // ---- 2) reads ----

  /** Pin blk of head file f in every watch that needs it; resolves once all are acked. */
  /** Whether any watch is set on the file (reads.ts 2d prefetches only unwatched files). */
  watched(foid: Oid): boolean {
    return (this.fileWatchers.get(foid)?.size ?? 0) > 0;
  }

  async readPinWatchers(f: BigFile, blk: number): Promise<void> {
    const ws = this.fileWatchers.get(f.foid);
    if (ws === undefined || ws.size === 0) return;
    const h = this.host;
    const revMax = h.deltaFtail.revMax(f.foid, blk);
    let blkRev: Tid | undefined;
    const pins: Promise<void>[] = [];
    for (const w of [...ws]) {
      if (w.link.down || revMax <= w.at) continue; // cheap path: nothing changed after w.at
      pins.push(
        (async () => {
          await w.atMu.rlock();
          try {
            if (!w.registered || w.link.down) return;
            blkRev ??= await h.deltaFtail.blkRevAt(f.foid, blk, h.headAt());
            if (blkRev <= w.at) return;
            const rev = await h.deltaFtail.blkRevAt(f.foid, blk, w.at);
            // re-check after the awaits: an unwatch may have come in meanwhile. pin() sends
            // synchronously, so no pin goes out for a watch already answered "ok" to "-".
            if (!w.registered || w.link.down) return;
            await this.pin(w, blk, rev);
          } finally {
            w.atMu.runlock();
          }
        })(),
      );
    }
    await Promise.all(pins);
  }

  // ---- 3) one pin, and what happens when it fails ----

  /** Pin blk of w to rev (null = @head). Never throws: failures end the link (and the client). */
  private pin(w: Watch, blk: number, rev: Tid | null): Promise<void> {
    if (w.link.down) return Promise.resolve();
    const cur = w.pinned.get(blk);
    if (cur !== undefined && cur.rev === rev) return cur.done ?? Promise.resolve(); // I1: no resend
    if (cur === undefined && rev === null) return Promise.resolve(); // not pinned: nothing to unpin
    const entry: { rev: Tid | null; done: Promise<void> | null } = { rev, done: null };
    w.pinned.set(blk, entry);
    entry.done = (async () => {
      const h = this.host;
      h.stats.pin++;
      const msg = formatPin({ foid: w.file.foid, blk, rev });
      const what = `pin ${hex16(w.file.foid)} #${blk} @${rev === null ? 'head' : hex16(rev)}`;
      debug('%s: %s', w.link, what);
      try {
        const t0 = performance.now();
        const reply = await w.link.request(msg, h.pinTimeoutMs);
        if (reply !== 'ack') throw new WrongReplyError(`expect "ack"; got ${goQuote(reply)}`); // upstream's text
        const t1 = performance.now();
        h.pinRtt?.record(t1, t1 - t0);
        debug('%s: %s: ack', w.link, what);
        if (rev === null && w.pinned.get(blk) === entry) w.pinned.delete(blk);
      } catch (e) {
        debug('%s: %s: failed: %s', w.link, what, (e as Error).message);
        if (w.pinned.get(blk) === entry) w.pinned.delete(blk);
        await this.pinFailed(w.link, `pin #${blk} @${rev === null ? 'head' : hex16(rev)}`, e as Error);
      } finally {
        entry.done = null;
      }
    })();
    return entry.done;
  }

  private async pinFailed(link: WatchLink, what: string, err: Error): Promise<void> {
    // The link went down under the pin (bye, EOF, protocol error, another pin's failure):
    // linkDown() decides about the client.
    if (err instanceof LinkDownError) return;
    const kind: KillKind = err instanceof WrongReplyError ? 'wrong' : err instanceof LinkTimeoutError ? 'timeout' : 'io';
    const pe = new PinError(what, err);
    link.shutdown(pe, `fatal: ${pe.message}`); // linkDown() sees the PinError as the cause
    await this.maybeKill(link, pe.message, kind);
  }

  /**
   * The link went down: drop its watches. A protocol error or EOF while pins were in flight
   * counts as a failed pin (the client may be killed); bye never does.
   */
  linkDown(link: WatchLink, down: LinkDownError | undefined, pendingRequests: number): void {
    const byFile = this.linkWatches.get(link);
    if (byFile !== undefined) for (const w of [...byFile.values()]) this.drop(w);
    this.linkWatches.delete(link);
    // a failed pin (cause: PinError) was dealt with by pinFailed; a link closed because of a
    // pack (cause: PackedError) did nothing wrong
    if (down !== undefined && pendingRequests > 0 && !isCode(down.cause, 'WCFS_EPIN') && !isCode(down.cause, 'WCFS_EPACKED')) {
      void this.maybeKill(link, down.why, 'io');
    }
  }

  private async maybeKill(link: WatchLink, reason: string, kind: KillKind): Promise<void> {
    // our own hold: the link drops its own at RELEASE, which the kill itself brings about
    const proc = link.proc?.hold();
    if (proc === undefined) {
      debug('%s: %s (%s): no kill: the client released the link', link, reason, kind);
      return; // released: the client closed the link, nothing pending
    }
    try {
      await this.kill(proc, reason, kind);
    } finally {
      proc.close();
    }
  }

  /** Kill the client process `proc` (never a pid number: see util/proc.ts) unless it is dying. */
  private async kill(proc: ProcessRef, reason: string, kind: KillKind): Promise<void> {
    const h = this.host;
    const T = h.pinTimeoutMs;
    if (kind === 'timeout' && proc.exited()) {
      debug('%s: %s (%s): no kill: exited', proc, reason, kind);
      return;
    }
    if (kind === 'io') {
      // a dying process closes its fds before it becomes a zombie: give it time to finish
      const deadline = Date.now() + Math.min(3000, T);
      while (Date.now() < deadline && !proc.exited()) await sleep(100);
      if (proc.exited()) {
        debug('%s: %s (%s): no kill: exited', proc, reason, kind);
        return;
      }
    }
    debug('%s: %s (%s): killing', proc, reason, kind);
    h.log(`wcfs: ${proc}: client failed to handle pin notification correctly and timely in ${goDuration(BigInt(Math.round(T * 1e6)))}: ${reason}`);
    h.log(`wcfs: ${proc}: -> killing it because else 1) all other clients will be blocked, and 2) isolation cannot be guaranteed`);
    h.log(`wcfs: ${proc}:    (see "Protection against slow or faulty clients" in notes.md)`);
    const t0 = Date.now();
    try {
      // signal() → false: it exited meanwhile (checked below)
      if (proc.signal('SIGBUS')) h.log(`wcfs: ${proc}: <- SIGBUS`);
      if (!(await waitExited(proc, T / 6))) {
        h.log(`wcfs: ${proc}: is still alive after SIGBUS`);
        if (proc.signal('SIGKILL')) h.log(`wcfs: ${proc}: <- SIGKILL`);
        await waitExited(proc, Math.max(0, T / 3 - (Date.now() - t0)));
      }
    } catch (e) {
      h.fatal(new Error(`${proc}: failed to kill it: ${(e as Error).message}; this is major unexpected event`));
      return;
    }
    if (!proc.exited()) {
      h.fatal(new Error(`${proc}: failed to kill it: still alive; this is major unexpected event`));
      return;
    }
    h.log(`wcfs: ${proc}: terminated`);
    debug('%s: killed in %d ms', proc, Date.now() - t0);
    h.stats.pinkill++;
  }

  /**
   * History needed by nobody: ≥ 1 minute back from head, and never past a watch's at
   * (wcfs-server.md §2.8) — but none below the pack boundary, which is gone.
   */
  revCut(): Tid {
    const head = this.host.headAt();
    let cut = epochMicrosToTid(tidToEpochMicros(head) - 60_000_000);
    const minAt = this.minWatchAt();
    if (minAt !== undefined && minAt < cut) cut = minAt;
    const packedTo = this.host.packedTo();
    return cut < packedTo ? packedTo : cut;
  }

  /**
   * The database was packed up to packedTo (called under headMu W, after ΔFtail forgot the
   * history below it): every link with a watch at a revision below it, or with a block pinned
   * to one (its data there can no longer be loaded), is closed with a stream-0 "error:" line —
   * the client must resync (the client library poisons the conn: its mappings fault instead
   * of showing stale data). No kill: the client did nothing wrong.
   */
  packed(packedTo: Tid): void {
    const bad: Array<[WatchLink, Watch, string]> = [];
    for (const [link, byFile] of this.linkWatches) {
      for (const w of byFile.values()) {
        if (!w.registered) continue;
        let rev: Tid | undefined = w.at < packedTo ? w.at : undefined;
        for (const p of w.pinned.values()) if (rev === undefined && p.rev !== null && p.rev < packedTo) rev = p.rev;
        if (rev !== undefined) {
          bad.push([
            link,
            w,
            rev === w.at ? `watch f${hex16(w.file.foid)} @${hex16(w.at)}` : `watch f${hex16(w.file.foid)} @${hex16(w.at)} pin @${hex16(rev)}`,
          ]);
          break;
        }
      }
    }
    for (const [link, w, subject] of bad) {
      const err = new PackedError(subject, w.at, packedTo);
      debug('%s: %s', link, err.message);
      link.shutdown(err, `error: ${err.message}; resync`);
    }
  }
}

type KillKind = 'wrong' | 'timeout' | 'io';

async function waitExited(proc: ProcessRef, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (proc.exited()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(20);
  }
}
