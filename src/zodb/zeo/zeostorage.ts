// ZeoStorage: the ZEO5 storage driver (zodb.md §4) behind IStorage / ICommitter — loads,
// commit events, iteration and commits against a ZEO server, across reconnects.
//
// Owns: the live connection (one at a time), the head the watches have been told, the watches,
// a bounded ring of recent commit events (the history that watch(from < head) and a lagging
// watch's catch-up replay read first: watchq.ts Q1; older history is fetched from the
// server), the reconnect loop,
// the pool of new oids, the commit lock.
//
// Overview:
//   1) connect  — ZeoConn.connect (handshake), register(storage, read-only) → at0. The server
//                 may push invalidations before register's reply: every push is buffered until
//                 the connection is "ready"; those with tid ≤ at0 are dropped (zodb.md §4.5).
//   2) recover  — on a reconnect with at0 > head: the missed transactions one by one through
//                 the server's iterator_* (getInvalidations merges them, which ΔFtail cannot
//                 use). Exact or fatal: the transaction we saw last gone or packed (checkSeen), a
//                 packed transaction in the gap, a gap that does not end at at0, or a server
//                 whose last tid went backwards → ZeoGapError.
//   3) follow   — invalidateTransaction(tid, oids) → one CommitEvent per transaction, in order;
//                 our own commits (the server does not send their invalidation to us) become
//                 events when tpc_finish's reply is handled, synchronously, in stream order.
//   4) loads    — loadBefore(oid, at+1); calls pipelined on the connection. A broken link
//                 retries the load on the next connection; reads wait for a reconnect at most
//                 reconnectWaitMs, then fail with ZeoConnError.
//   5) commit   — tpc_begin / storea | deleteObject / vote / tpc_finish (tpc_abort on failure);
//                 ConflictError → the project's ConflictError. One transaction at a time.
//
// Invariants:
//   head = the largest tid delivered to the watches; events are delivered in strictly
//     increasing tid order, each exactly once, none while a gap is being recovered;
//   ready ⇒ conn registered and every transaction ≤ the server's at0 delivered;
//   fatal ≠ null ⇒ no reconnect, every watch failed with it, every load/commit throws it;
//   |ring| ≤ history.maxEvents events and its oids total ≤ history.maxOids (or one event);
//     every event with tid > ringStart is in it; a watch's queue is bounded too (watchq.ts Q1:
//     a watch lagging past the ring catches up from the server's iterator_*, in batches, as
//     exactly as a reconnect's recovery — or fails with ZeoGapError); a connection being set up
//     holds ≤ maxRecoveryBuffer pushed events (one more fails that attempt: temporary, retried).
//
// Errors: ZeoConnError (temporary), ZeoProtoError / ZeoGapError (fatal), ZeoRemoteError,
// CommitUnknownError (a commit whose tpc_finish went out when the link broke: not retried),
// and the zodb ones (NoObjectError, NoDataError, ConflictError, ClosedError).

import createDebug from 'debug';
import { BadArgumentError, ClosedError, ConflictError, NoDataError, NoObjectError } from '../errors.js';
import { hex16, MAX_TID, type Oid, type Tid } from '../ids.js';
import type { CommitEvent, CommitRequest, ICommitter, IStorage, LoadResult, StorageWatch, TxnRecord } from '../storage.js';
import { FetchedReplay, WatchQueue, type Replay, type WatchQueueLimits } from '../watchq.js';
import { bytesId, describe, encodeZeoPickle, idBytes, ZDict, ZFloat, ZTuple, type ZValue } from './codec.js';
import { addrText, ZeoConn, type ZeoAddr, type ZeoConnOptions } from './conn.js';
import { CommitUnknownError, ZeoConnError, ZeoGapError, ZeoProtoError, ZeoRemoteError } from './errors.js';
import { isCode, WcfsError } from '../../errors.js';
import { logLine } from '../../util/log.js';

const trace = createDebug('wcfs:zeo');

/** The ring's default bounds (ZeoOptions.history). */
const RING_LIMITS: WatchQueueLimits = { maxEvents: 4096, maxOids: 1 << 20 };
const OID_BATCH_LOW = 256; // refill the pool in the background below this
const FETCH_BATCH = 64; // transactions per batch of a catch-up fetched from the server
const BUFFER_MAX = 100_000; // default maxRecoveryBuffer
const POSKEYERROR = 'ZODB.POSException.POSKeyError';

export interface ZeoOptions extends Omit<ZeoConnOptions, 'onPush' | 'onClose' | 'signal'> {
  /** Register read-only (never commit). Default false. */
  readOnly?: boolean;
  /** How long loads and commits wait for a lost connection to come back. Default 60 s. */
  reconnectWaitMs?: number;
  /** Reconnect backoff: first delay, doubling up to the max. Defaults 50 ms, 2 s. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** Bound on invalidations held while a connection registers and recovers. Default 100 000. */
  maxRecoveryBuffer?: number;
  /** Where warnings go (connection lost / back). Default stderr. */
  log?: (line: string) => void;
  /** Bounds of the ring of recent events (all the history watches can replay). Default 4096 events, 2²⁰ oids. */
  history?: WatchQueueLimits;
  /** Bounds of each watch's queue (watchq.ts Q1). Default WATCH_QUEUE_LIMITS. */
  watchLimits?: WatchQueueLimits;
}

/** A parsed zeo:// URL. */
export interface ZeoUrl {
  addr: ZeoAddr;
  storage: string;
}

/**
 * zeo://host:port[?storage=name] (IPv6: zeo://[::1]:port) or zeo:///abs/path/to/socket for a
 * Unix socket; storage defaults to "1" (runzeo's default name).
 */
export function parseZeoUrl(zurl: string): ZeoUrl {
  let u: URL;
  try {
    u = new URL(zurl);
  } catch {
    throw new BadArgumentError(`invalid storage URL ${JSON.stringify(zurl)}`);
  }
  if (u.protocol !== 'zeo:') throw new BadArgumentError(`${zurl}: not a zeo:// URL`);
  if (u.username !== '' || u.password !== '' || u.hash !== '') throw new BadArgumentError(`${zurl}: zeo:// URL: user, password and fragment are not supported`);
  let storage = '1';
  for (const [k, v] of u.searchParams) {
    if (k === 'storage' && v !== '') storage = v;
    else throw new BadArgumentError(`${zurl}: zeo:// URL: unsupported parameter ${JSON.stringify(k)} (supported: storage=<name>)`);
  }
  if (u.hostname === '') {
    const p = decodeURIComponent(u.pathname);
    if (p === '' || p === '/') throw new BadArgumentError(`${zurl}: zeo:// URL needs host:port or /path/to/socket`);
    return { addr: { kind: 'unix', path: p }, storage };
  }
  if (u.port === '') throw new BadArgumentError(`${zurl}: zeo:// URL needs a port (zeo://host:port)`);
  if (u.pathname !== '' && u.pathname !== '/') throw new BadArgumentError(`${zurl}: zeo://host:port URL takes no path`);
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  return { addr: { kind: 'tcp', host, port: Number(u.port) }, storage };
}

type Live = { conn: ZeoConn; ready: true };

export class ZeoStorage implements IStorage, ICommitter {
  readonly addr: string;
  private conn: ZeoConn | null = null;
  /** Resolved when a connection is ready; replaced on every disconnect. */
  private liveP!: Promise<Live>;
  private liveResolve!: (l: Live) => void;
  private liveReject!: (e: Error) => void;
  private headTid: Tid;
  private readonly watches = new Set<WatchQueue>();
  private readonly ring: CommitEvent[] = [];
  private readonly ringLimits: WatchQueueLimits;
  private ringOids = 0;
  /** Every event with tid > ringStart is in the ring (ringStart = head at open, then the last one dropped). */
  private ringStart: Tid = 0n;
  private fatal: Error | null = null;
  private closing = false;
  private readonly oids: Oid[] = [];
  private oidRefill: Promise<void> | null = null;
  private commitLock: Promise<unknown> = Promise.resolve();
  private nextTxn = 1;
  private readonly log: (line: string) => void;
  private disconnectedAt = 0;
  /** Aborted by close(): stops a connection attempt or a backoff sleep under way. */
  private readonly closeCtl = new AbortController();

  private constructor(
    readonly url: string,
    private readonly zu: ZeoUrl,
    private readonly opts: ZeoOptions,
    at0: Tid,
  ) {
    this.addr = addrText(zu.addr);
    this.headTid = at0;
    this.log = opts.log ?? logLine;
    this.ringLimits = opts.history ?? RING_LIMITS;
    this.newLive();
  }

  /** Connect and register; fails (ZeoConnError) if the server cannot be reached within connectTimeoutMs. */
  static async open(zurl: string, opts: ZeoOptions = {}): Promise<ZeoStorage> {
    const zu = parseZeoUrl(zurl);
    const s = new ZeoStorage(zurl, zu, opts, 0n);
    await s.connect(true);
    if (!opts.readOnly) await s.reserveOids(OID_BATCH_LOW);
    return s;
  }

  // ---- 1) connect + 2) recover ----

  /** One connection attempt: handshake, register, recover the gap, become ready. */
  private async connect(first: boolean): Promise<void> {
    const buffered: Array<{ tid: Tid; oids: Oid[] }> = [];
    let ready = false;
    let at0 = -1n;
    let conn: ZeoConn;
    conn = await ZeoConn.connect(this.zu.addr, {
      ...this.opts,
      signal: this.closeCtl.signal,
      onPush: (method, args) => {
        if (method !== 'invalidateTransaction') return; // info({length, size}) and others: nothing to do
        const ev = parseInvalidation(this.addr, args);
        if (!ready) {
          // bounded: a server committing faster than we recover → drop this attempt, retry
          const max = this.opts.maxRecoveryBuffer ?? BUFFER_MAX;
          if (buffered.length >= max) throw new ZeoConnError(this.addr, `more than ${max} commits arrived while recovering missed ones; retrying`);
          buffered.push(ev);
        } else this.deliver(ev);
      },
      onClose: (err) => this.lost(conn, err),
    });
    try {
      await conn.call('register', [this.zu.storage, this.opts.readOnly ? 1 : 0], {
        onReply: (v) => {
          at0 = bytesId(v, 'register: last tid');
          // pushes before the reply with tid ≤ at0 are in at0's state already; later ones are kept
          const later = buffered.filter((ev) => ev.tid > at0);
          buffered.length = 0;
          buffered.push(...later);
        },
      });
      if (first) this.headTid = this.ringStart = at0;
      else if (at0 < this.headTid) {
        throw new ZeoGapError(
          this.addr,
          `the server's last transaction @${hex16(at0)} is older than @${hex16(this.headTid)} we already saw (its history went back): missed transactions cannot be recovered one by one`,
        );
      } else if (at0 > this.headTid) {
        const missed = await this.recover(conn, this.headTid, at0);
        for (const ev of missed) this.deliver(ev);
        this.log(`wcfs: zeo ${this.addr}: reconnected; recovered ${missed.length} transaction(s) missed (@${hex16(missed[0]!.tid)} … @${hex16(at0)})`);
      } else if (!first) this.log(`wcfs: zeo ${this.addr}: reconnected; no transactions missed`);
      for (const ev of buffered) this.deliver(ev);
      ready = true;
      if (this.closing) throw new ClosedError(`zeo ${this.addr}`); // closed while this attempt was under way
    } catch (e) {
      conn.close();
      throw e;
    }
    this.conn = conn;
    conn.startHeartbeat();
    this.liveResolve({ conn, ready: true });
    trace('%s: ready at @%s', this.addr, hex16(this.headTid));
  }

  /** The transactions in (from, to], one event each; exact or ZeoGapError. */
  private async recover(conn: ZeoConn, from: Tid, to: Tid): Promise<CommitEvent[]> {
    await this.checkSeen(conn, from, 'missed transactions cannot be recovered one by one');
    const out: CommitEvent[] = [];
    for await (const t of iterateOn(conn, this.addr, from + 1n, to)) {
      if (t.status === 'p')
        throw new ZeoGapError(
          this.addr,
          `transaction @${hex16(t.tid)} missed while disconnected was packed: the changes of the missed transactions cannot be recovered one by one`,
        );
      out.push({ tid: t.tid, oids: t.records.map((r) => r.oid) });
    }
    const last = out.length > 0 ? out[out.length - 1]!.tid : from;
    if (last !== to)
      throw new ZeoGapError(
        this.addr,
        `the server's history from @${hex16(from)} ends at @${hex16(last)}, not at its last transaction @${hex16(to)}: missed transactions cannot be recovered one by one`,
      );
    return out;
  }

  /**
   * Transactions after `tid` (one we delivered) can be read back one by one: the server still
   * has it, not rewritten by a pack. ZEO carries no database identity, so this is also the
   * check that it is the same database. And a pack to any time ≥ tid rewrites tid's
   * transaction (status 'p') or drops it — while the transactions after it up to the pack
   * time that lost all their records are dropped without a trace: only this check sees those.
   */
  private async checkSeen(conn: ZeoConn, tid: Tid, what: string): Promise<void> {
    if (tid === 0n) return;
    let status: string | undefined;
    for await (const t of iterateOn(conn, this.addr, tid, tid)) if (t.tid === tid) status = t.status;
    if (status === undefined) {
      throw new ZeoGapError(
        this.addr,
        `the server does not have transaction @${hex16(tid)}, the last one we saw (not the same database, or its history was packed): ${what}`,
      );
    }
    if (status === 'p') throw new ZeoGapError(this.addr, `transaction @${hex16(tid)}, the last one we saw, was packed: ${what}`);
  }

  /** The connection went away: reconnect (temporary errors) or fail for good. */
  private lost(conn: ZeoConn, err: Error | null): void {
    if (this.conn !== conn) return; // a connection attempt: connect() reports its failure itself
    this.conn = null;
    this.newLive();
    if (this.closing || this.fatal !== null || err === null) return;
    if (!isCode(err, 'WCFS_EZEOCONN')) return this.fail(err);
    this.disconnectedAt = Date.now();
    this.log(`wcfs: zeo ${this.addr}: connection lost (${err.message.replace(/^zeo \S+: /, '')}); reconnecting`);
    void this.reconnect();
  }

  private newLive(): void {
    this.liveP = new Promise((resolve, reject) => {
      this.liveResolve = resolve;
      this.liveReject = reject;
    });
    this.liveP.catch(() => {}); // waiters see the rejection; nobody waiting is fine
  }

  private async reconnect(): Promise<void> {
    let delay = this.opts.backoffMinMs ?? 50;
    const max = this.opts.backoffMaxMs ?? 2000;
    while (!this.closing && this.fatal === null) {
      await new Promise<void>((r) => {
        const sig = this.closeCtl.signal;
        const done = () => {
          clearTimeout(t);
          sig.removeEventListener('abort', done);
          r();
        };
        const t = setTimeout(done, delay);
        sig.addEventListener('abort', done, { once: true });
      });
      if (this.closing || this.fatal !== null) return;
      try {
        await this.connect(false);
        return;
      } catch (e) {
        if (this.closing) return;
        if (!isCode(e, 'WCFS_EZEOCONN')) return this.fail(e as Error);
        trace('%s: reconnect failed: %s', this.addr, (e as Error).message);
      }
      delay = Math.min(max, delay * 2);
    }
  }

  private fail(err: Error): void {
    if (this.fatal !== null) return;
    this.fatal = err;
    this.log(`wcfs: zeo ${this.addr}: ${err.message.replace(/^zeo (\S+: )?/, '')}`);
    this.liveReject(err);
    for (const w of [...this.watches]) w.fail(err);
    this.watches.clear();
  }

  // ---- 3) follow ----

  private deliver(ev: CommitEvent): void {
    if (ev.tid <= this.headTid) return; // at or before what watchers already have (register's at0, our own commit)
    this.headTid = ev.tid;
    this.ring.push(ev);
    this.ringOids += ev.oids.length;
    const { maxEvents, maxOids } = this.ringLimits;
    while (this.ring.length > maxEvents || (this.ringOids > maxOids && this.ring.length > 1)) {
      const old = this.ring.shift()!;
      this.ringOids -= old.oids.length;
      this.ringStart = old.tid;
    }
    for (const w of this.watches) w.push(ev);
  }

  head(): Tid {
    return this.headTid;
  }

  /** One round trip: every commit the server finished before it has been delivered after it. */
  async sync(): Promise<Tid> {
    await this.withConn('lastTransaction', (c) => c.call('lastTransaction', []));
    return this.headTid;
  }

  watch(from?: Tid): StorageWatch {
    const start = from ?? this.headTid;
    let replay: Replay | null = null;
    let gap: Error | null = null;
    try {
      if (start < this.headTid) replay = this.history(start, `watch from @${hex16(start)}`);
    } catch (e) {
      gap = e as Error;
    }
    // Q1: a watch that lags stops queuing; its catch-up replay reads the ring (deliver puts an
    // event there before pushing it) and, for what the ring no longer holds, the server
    const spill = (after: Tid) => () => this.history(after, `watch catch-up after @${hex16(after)} (the consumer lagged)`);
    const w = new WatchQueue(start, replay, (x) => this.watches.delete(x), spill, this.opts.watchLimits);
    if (this.fatal !== null || gap !== null) w.fail(this.fatal ?? gap);
    else this.watches.add(w);
    return w;
  }

  /**
   * The events with tid > after, up to the head now: from the ring, and — for the part before
   * it — fetched from the server's iterator_* (exact or ZeoGapError, as a reconnect's recovery).
   */
  private history(after: Tid, what: string): Replay {
    if (this.fatal !== null) throw this.fatal;
    const recent = this.ring.filter((e) => e.tid > after); // taken now: the ring moves on
    if (after >= this.ringStart) return recent.values();
    return new FetchedReplay(this.fetchHistory(after, this.ringStart, recent, what));
  }

  /**
   * (after, to] from the server, one batch of ≤ FETCH_BATCH transactions at a time, then
   * `then`. A lost connection is waited out (the driver reconnects as long as it is open) and
   * the walk resumes after the last transaction handed out; a pack reaching past where the
   * walk (re)starts (checkSeen), a packed transaction or a history that does not end at `to`
   * is a ZeoGapError.
   */
  private async *fetchHistory(after: Tid, to: Tid, then: CommitEvent[], what: string): AsyncGenerator<CommitEvent[]> {
    trace('%s: %s: fetching (@%s, @%s] from the server', this.addr, what, hex16(after), hex16(to));
    let done = after; // the last tid handed out
    while (done < to) {
      if (this.closing) return;
      if (this.fatal !== null) throw this.fatal;
      const conn = this.conn ?? (await this.liveP).conn;
      const batch: CommitEvent[] = [];
      try {
        await this.checkSeen(conn, done, `${what}: its changes cannot be read back one by one`);
        for await (const t of iterateOn(conn, this.addr, done + 1n, to)) {
          if (t.status === 'p') {
            throw new ZeoGapError(this.addr, `${what}: transaction @${hex16(t.tid)} was packed: its changes cannot be read back one by one`);
          }
          batch.push({ tid: t.tid, oids: t.records.map((r) => r.oid) });
          if (batch.length >= FETCH_BATCH) {
            yield batch.splice(0);
            done = t.tid;
          }
        }
        if (batch.length > 0) {
          done = batch[batch.length - 1]!.tid;
          yield batch.splice(0);
        }
        if (done !== to) {
          throw new ZeoGapError(this.addr, `${what}: the server's history from @${hex16(after)} ends at @${hex16(done)}, not at @${hex16(to)}`);
        }
      } catch (e) {
        if (!isCode(e, 'WCFS_EZEOCONN') || this.closing) throw e;
        trace('%s: %s: connection lost at @%s; resuming on the next one', this.addr, what, hex16(done));
      }
    }
    if (then.length > 0) yield then;
  }

  // ---- 4) loads ----

  async load(oid: Oid, at: Tid): Promise<LoadResult> {
    const before = at >= MAX_TID ? MAX_TID : at + 1n;
    const r = await this.withConn(`loadBefore ${hex16(oid)} @${hex16(at)}`, (c) => c.call('loadBefore', [idBytes(oid), idBytes(before)])).catch(
      async (e: unknown) => {
        if (!(e instanceof ZeoRemoteError && e.className === POSKEYERROR)) throw e;
        // a deleted object answers like one that never existed: its history tells them apart
        const deletedAt = await this.deletedAt(oid);
        if (deletedAt === undefined) throw new NoObjectError(oid, `zeo ${this.addr}`);
        throw new NoDataError(oid, at, deletedAt, `zeo ${this.addr}`);
      },
    );
    if (r === null) throw new NoDataError(oid, at, undefined, `zeo ${this.addr}`);
    if (!(r instanceof ZTuple) || r.items.length !== 3 || !(r.items[0] instanceof Uint8Array))
      throw new ZeoProtoError(`${this.addr}: loadBefore ${hex16(oid)}: want (data, serial, next serial), got ${describe(r)}`);
    const serial = bytesId(r.items[1], 'loadBefore: serial');
    const data = r.items[0];
    if (data.length === 0) throw new NoDataError(oid, at, serial, `zeo ${this.addr}`); // a deletion record
    return { data, serial, where: `zeo ${this.addr}` };
  }

  /** The tid of oid's deletion if its latest record is one (history: size 0), else undefined. */
  private async deletedAt(oid: Oid): Promise<Tid | undefined> {
    let h: ZValue;
    try {
      h = await this.withConn(`history ${hex16(oid)}`, (c) => c.call('history', [idBytes(oid), 1]));
    } catch (e) {
      if (e instanceof ZeoRemoteError && e.className === POSKEYERROR) return undefined;
      throw e;
    }
    const list = h instanceof ZTuple ? h.items : Array.isArray(h) ? h : [];
    const last = list[0];
    if (!(last instanceof ZDict)) return undefined;
    return last.get('size') === 0 ? bytesId(last.get('tid'), 'history: tid') : undefined;
  }

  /**
   * Run a call on a ready connection. A temporary failure (the link broke) retries on the next
   * connection; waiting for it is bounded by reconnectWaitMs from the first failure.
   */
  private async withConn<T>(what: string, fn: (c: ZeoConn) => Promise<T>, retry = true): Promise<T> {
    const waitMs = this.opts.reconnectWaitMs ?? 60_000;
    let deadline = 0;
    for (;;) {
      if (this.closing) throw new ClosedError(`zeo ${this.addr}`);
      if (this.fatal !== null) throw this.fatal;
      const conn = this.conn ?? (await this.waitLive(what, deadline === 0 ? (deadline = Date.now() + waitMs) : deadline)).conn;
      try {
        return await fn(conn);
      } catch (e) {
        if (!retry || !isCode(e, 'WCFS_EZEOCONN') || this.closing) throw e;
        if (deadline === 0) deadline = Date.now() + waitMs;
        if (Date.now() >= deadline) throw e;
        trace('%s: %s: retrying after %s', this.addr, what, (e as Error).message);
      }
    }
  }

  private waitLive(what: string, deadline: number): Promise<Live> {
    const left = deadline - Date.now();
    if (left <= 0) return Promise.reject(this.notConnected(what));
    let t: NodeJS.Timeout | undefined;
    return Promise.race([
      this.liveP,
      new Promise<never>((_, reject) => {
        t = setTimeout(() => reject(this.fatal ?? this.notConnected(what)), left);
      }),
    ]).finally(() => clearTimeout(t));
  }

  private notConnected(what: string): Error {
    const s = this.disconnectedAt > 0 ? ` (disconnected ${((Date.now() - this.disconnectedAt) / 1000).toFixed(1)} s ago)` : '';
    return new ZeoConnError(this.addr, `${what}: not connected${s}; gave up after ${this.opts.reconnectWaitMs ?? 60_000} ms`);
  }

  async *iterate(tidMin: Tid = 0n, tidMax: Tid = MAX_TID): AsyncIterable<TxnRecord> {
    const conn = this.conn ?? (await this.waitLive('iterate', Date.now() + (this.opts.reconnectWaitMs ?? 60_000))).conn;
    yield* iterateOn(conn, this.addr, tidMin, tidMax);
  }

  // ---- 5) commit ----

  /** A fresh oid from the pool the server handed us (new_oids); reserveOids first for many. */
  newOid(): Oid {
    this.checkWritable('newOid');
    const oid = this.oids.shift();
    if (oid === undefined)
      throw new WcfsError('WCFS_ENOOIDS', `zeo ${this.addr}: newOid: no reserved oids left (await reserveOids(n) before allocating n oids without awaiting)`);
    if (this.oids.length < OID_BATCH_LOW) void this.refillOids().catch(() => {});
    return oid;
  }

  /** Make sure at least n oids are in the pool (new_oids gives up to 100 per call). */
  async reserveOids(n: number): Promise<void> {
    this.checkWritable('reserveOids');
    while (this.oids.length < n) await this.refillOids();
  }

  private refillOids(): Promise<void> {
    if (this.oidRefill === null)
      this.oidRefill = this.withConn('new_oids', (c) => c.call('new_oids', []))
        .then((r) => {
          const list = r instanceof ZTuple ? r.items : Array.isArray(r) ? r : null;
          if (list === null || list.length === 0) throw new ZeoProtoError(`${this.addr}: new_oids: want a non-empty list of oids, got ${describe(r)}`);
          for (const x of list) this.oids.push(bytesId(x, 'new_oids: oid'));
        })
        .finally(() => (this.oidRefill = null));
    return this.oidRefill;
  }

  commit(req: CommitRequest): Promise<Tid> {
    this.checkWritable('commit');
    const run = this.commitLock.then(() => this.commit1(req));
    this.commitLock = run.catch(() => {});
    return run;
  }

  private async commit1(req: CommitRequest): Promise<Tid> {
    // serials for records that did not say what they were based on: the current ones
    const serials = new Map<Oid, Tid>();
    for (const r of req.records) {
      if (r.oldSerial !== undefined) serials.set(r.oid, r.oldSerial);
      else {
        try {
          serials.set(r.oid, (await this.load(r.oid, MAX_TID)).serial);
        } catch (e) {
          if (!isCode(e, 'WCFS_ENOOBJ') && !isCode(e, 'WCFS_ENODATA')) throw e;
          serials.set(r.oid, 0n);
        }
      }
    }
    const conn = this.conn ?? (await this.waitLive('commit', Date.now() + (this.opts.reconnectWaitMs ?? 60_000))).conn;
    const txn = this.nextTxn++;
    const oids = req.records.map((r) => r.oid);
    let tid = -1n;
    let finishing = false;
    try {
      conn.callAsync('tpc_begin', [txn, text(req.user), text(req.description), extDict(req.extension), null, ' ']);
      for (const r of req.records) {
        const serial = idBytes(serials.get(r.oid)!);
        if (r.data === null) conn.callAsync('deleteObject', [idBytes(r.oid), serial, txn]);
        else conn.callAsync('storea', [idBytes(r.oid), serial, r.data, txn]);
      }
      await conn.call('vote', [txn]);
      finishing = true;
      await conn.call('tpc_finish', [txn], {
        onReply: (v) => {
          tid = bytesId(v, 'tpc_finish: tid');
          this.deliver({ tid, oids }); // in stream order: before any invalidation behind the reply
        },
      });
      return tid;
    } catch (e) {
      if (!finishing && !conn.closed) conn.call('tpc_abort', [txn]).catch(() => {});
      if (e instanceof ZeoRemoteError && e.className === 'ZODB.POSException.ConflictError') throw conflict(this.addr, e);
      if (finishing && isCode(e, 'WCFS_EZEOCONN'))
        throw new CommitUnknownError(
          this.addr,
          `tpc_finish: the connection broke before the answer: the transaction may or may not have committed (${(e as Error).message})`,
          { cause: e },
        );
      throw e;
    }
  }

  private checkWritable(op: string): void {
    if (this.opts.readOnly) throw new WcfsError('WCFS_EREADONLY', `zeo ${this.addr}: ${op}: storage is opened read-only`);
    if (this.closing) throw new ClosedError(`zeo ${this.addr}`);
    if (this.fatal !== null) throw this.fatal;
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.closeCtl.abort();
    for (const w of [...this.watches]) w.end();
    this.watches.clear();
    const c = this.conn;
    this.conn = null;
    this.liveReject(new ClosedError(`zeo ${this.addr}`));
    c?.close();
    await this.commitLock;
  }
}

// ---- helpers ----

function parseInvalidation(addr: string, args: ZValue): CommitEvent {
  if (!(args instanceof ZTuple) || args.items.length !== 2) throw new ZeoProtoError(`${addr}: invalidateTransaction: want (tid, oids), got ${describe(args)}`);
  const tid = bytesId(args.items[0], 'invalidateTransaction: tid');
  const l = args.items[1];
  const list = l instanceof ZTuple ? l.items : Array.isArray(l) ? l : null;
  if (list === null) throw new ZeoProtoError(`${addr}: invalidateTransaction: want a list of oids, got ${describe(l)}`);
  return { tid, oids: list.map((x) => bytesId(x, 'invalidateTransaction: oid')) };
}

/** Transactions tidMin ≤ tid ≤ tidMax through the server's iterator_* methods. */
async function* iterateOn(conn: ZeoConn, addr: string, tidMin: Tid, tidMax: Tid): AsyncGenerator<TxnRecord> {
  const iid = await conn.call('iterator_start', [idBytes(tidMin), idBytes(tidMax)]);
  let finished = false;
  try {
    for (;;) {
      const t = await conn.call('iterator_next', [iid]);
      if (t === null) {
        finished = true; // the server freed the iterator
        return;
      }
      if (!(t instanceof ZTuple) || t.items.length !== 5)
        throw new ZeoProtoError(`${addr}: iterator_next: want (tid, status, user, description, extension), got ${describe(t)}`);
      const [tidV, statusV, user, desc, ext] = t.items as [ZValue, ZValue, ZValue, ZValue, ZValue];
      const tid = bytesId(tidV, 'iterator_next: tid');
      const status = typeof statusV === 'string' ? statusV : statusV instanceof Uint8Array ? String.fromCharCode(...statusV) : null;
      if (status === null) throw new ZeoProtoError(`${addr}: iterator_next: status: want text, got ${describe(statusV)}`);
      const rec: TxnRecord = {
        tid,
        status,
        user: asBytes(user),
        description: asBytes(desc),
        extension: ext instanceof ZDict && ext.entries.length > 0 ? encodeZeoPickle(ext) : new Uint8Array(0),
        records: [],
      };
      const riid = await conn.call('iterator_record_start', [iid, tidV]);
      for (;;) {
        const d = await conn.call('iterator_record_next', [riid]);
        if (d === null) break;
        if (!(d instanceof ZTuple) || d.items.length !== 4)
          throw new ZeoProtoError(`${addr}: iterator_record_next: want (oid, tid, data, data_txn), got ${describe(d)}`);
        const data = d.items[2];
        rec.records.push({ oid: bytesId(d.items[0], 'iterator_record_next: oid'), data: data instanceof Uint8Array && data.length > 0 ? data : null });
      }
      yield rec;
    }
  } finally {
    if (!finished && !conn.closed) {
      try {
        conn.callAsync('iterator_gc', [[iid]]);
      } catch {
        // closing anyway
      }
    }
  }
}

function asBytes(v: ZValue): Uint8Array {
  if (v instanceof Uint8Array) return v;
  if (typeof v === 'string') return new TextEncoder().encode(v);
  return new Uint8Array(0);
}

function text(v: string | Uint8Array | undefined): Uint8Array {
  if (v === undefined) return new Uint8Array(0);
  return typeof v === 'string' ? new TextEncoder().encode(v) : v;
}

function extDict(ext: CommitRequest['extension']): ZDict {
  const d = new ZDict();
  for (const [k, v] of Object.entries(ext ?? {})) d.entries.push([k, typeof v === 'number' && !Number.isSafeInteger(v) ? new ZFloat(v) : v]);
  return d;
}

/** ConflictError's dict {message, oid, class_name, serials: (current, stale)} → ConflictError. */
function conflict(addr: string, e: ZeoRemoteError): Error {
  const d = e.args;
  if (d instanceof ZDict) {
    const oid = d.get('oid');
    const serials = d.get('serials');
    if (oid instanceof Uint8Array && serials instanceof ZTuple && serials.items.length === 2) {
      try {
        return new ConflictError(bytesId(oid), bytesId(serials.items[1]), bytesId(serials.items[0]));
      } catch {
        // fall through: report what the server said
      }
    }
  }
  return new ZeoRemoteError(addr, e.method, e.className, e.args);
}
