// The wcfs client: Conn (a view of the database as of `at`), FileH (one ZBigFile open on a
// Conn), Mapping (blocks of a FileH mapped into memory). Upstream: wcfs/client/wcfs.cpp
// (wcfs-client.md); the native half is native/client*.cc.
//
//   WCFS.connect(at) ─▶ Conn ──▶ head/watch (one "watch link"), native rx/pinner/tx threads
//                        └─ open(foid) ─▶ FileH ──▶ head/bigfile/<foid> (O_RDONLY)
//                                          └─ mmap(blk, n) ─▶ Mapping {bytes, buffer, view()}
//
// 1) isolation: a Mapping maps head/bigfile/<foid> read-only and shared. The server
//    sends `pin <foid> #<blk> @<rev>` before anyone can see data of blk newer than our `at`;
//    the native pinner then MAP_FIXED-overlays that block with @<rev>/bigfile/<foid> in
//    every mapping and records it in the file's pinned table (@head: back to head), and
//    answers `ack`. Past the head file's size (as of the last open/resync) a mapping shows
//    zeros. The pinner needs nothing from this thread: the JS thread may be the one blocked
//    in the page fault that caused the pin.
// 2) open(foid): open + fstat head/bigfile/<foid> (libuv pool), hand the fd to native
//    (fileAdd), then `watch <foid> @<at>`; the server pins what changed in (at, head] and
//    answers ok once all are acked. A FileH is shared by all opens of one foid on a Conn
//    (nopen counts them).
// 3) resync(at'): wait for head/at ≥ at'; phase 1: fstat every head file, grow mappings
//    ("unzero" [old size, new size), re-applying pins in that range — H2/H3); phase 2:
//    `watch <foid> @<at'>` for each file, the server pins/unpins and answers ok. Any failure
//    takes the Conn down (like upstream).
// 4) close: FileH.close unwatches (`watch <foid> -`), then native efaults its mappings
//    (PROT_NONE: access faults, never stale data) and its fds are closed. Conn.close closes
//    every FileH (unwatch before the pinner stops: an unanswered pin gets us killed), then
//    native sends `bye`, waits for the server to close the link, stops its threads.
//    Mapping.unmap detaches the ArrayBuffer (views become empty) and munmaps.
// 5) poison: if the pinner fails (bad pin, remap error, link EOF), native efaults every
//    mapping at once and marks the conn down; the 'down' event then closes the Conn here.
//    Afterwards every call throws "connection closed" (mmap: "file already closed").
// 6) Node specifics: Mapping.bytes is an external ArrayBuffer over the mapping (zero copy;
//    at most MAX_MAPPING bytes each). Touching an efaulted mapping kills the process with
//    SIGSEGV — fail-stop like upstream, never stale data (so does inspecting it, e.g.
//    console.log). A Mapping that is garbage-collected without unmap() is munmapped by its
//    finalizer. Fork: child_process.* execs at once (O_CLOEXEC fds, exec drops mappings);
//    for a native fork() without exec, native/client.cc's atfork handler closes the watch fd
//    and efaults every mapping in the child (upstream afterFork).
//
// Concurrency (one JS thread, but async): open, resync, FileH.close and Conn.close run one
// at a time, in call order (`exclusive`): that replaces upstream's atMu/filehMu — no
// operation sees another half done, and none waits for the server while holding anything
// the pinner needs (the pinner takes only native leaf locks, none held across IO to the
// server). mmap/unmap are synchronous. Invariants:
//   fileTab.get(foid) = fh ⇔ fh.state ∈ {Opening, Opened, Closing}
//   fh.state = Opened ⇒ the server watches foid @conn.at (after open/resync returned)
//   conn down (downErr) ⇒ open/resync throw "connection closed"

import createDebug from 'debug';
import { constants as bufferConstants } from 'node:buffer';
import { close as fsClose, constants as fsc, fstat as fsFstat, open as fsOpen, type Stats } from 'node:fs';
import path from 'node:path';
import { isCode } from '../errors.js';
import { native, type NativeClientConn } from '../native.js';
import { formatWatch } from '../watchlink/wire.js';
import { hex16, type Oid, type Tid } from '../zodb/ids.js';
import { ConnClosedError, FileBusyError, FileClosedError, LinkDownError, ServerBugError, WatchError } from './errors.js';
import type { WCFS } from './wcfs.js';
import { withTimeout } from '../util/async.js';

const debug = createDebug('wcfs:client');

/** The largest mapping: the largest ArrayBuffer Node makes over external memory (4 GiB on Node 20). */
export const MAX_MAPPING = bufferConstants.MAX_LENGTH;

const openFd = (p: string, flags: number) => new Promise<number>((resolve, reject) => fsOpen(p, flags, (err, fd) => (err ? reject(err) : resolve(fd))));
const fstatFd = (fd: number) => new Promise<Stats>((resolve, reject) => fsFstat(fd, (err, st) => (err ? reject(err) : resolve(st))));
const closeFd = (fd: number) => new Promise<void>((resolve) => fsClose(fd, () => resolve()));

export interface ConnOptions {
  /** Close: how long to wait for the server to end the link after bye [10 s]. */
  closeTimeoutMs?: number;
  /** Test hook: use this fd instead of opening head/watch (e.g. one end of a socketpair). */
  watchFd?: number;
}

// ---- 1) Conn ----

export class Conn {
  private atv: Tid;
  private readonly nc: NativeClientConn;
  private readonly fileTab = new Map<Oid, FileH>();
  private readonly pending = new Map<number, { resolve: (reply: string) => void; reject: (e: Error) => void }>();
  private serial: Promise<unknown> = Promise.resolve();
  private closing: Promise<void> | undefined;
  private closedWait: ((err: string) => void) | undefined;
  /** @internal */ readonly closeTimeoutMs: number;
  /** The watch link's fd (diagnostics, tests). */
  readonly fd: number;

  /** Use WCFS.connect. */
  constructor(
    readonly wc: WCFS,
    watchFd: number,
    at: Tid,
    opts: ConnOptions = {},
  ) {
    this.atv = at;
    this.fd = watchFd;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? 10_000;
    this.nc = new (native().ClientConn)(watchFd, wc.mountpoint, (kind, id, text) => this.onEvent(kind, id, text), debug.enabled, MAX_MAPPING);
  }

  /** The database view of this connection. */
  get at(): Tid {
    return this.atv;
  }

  toString(): string {
    return `wcfs ${this.wc.mountpoint}: conn${this.fd} @${hex16(this.atv)}`;
  }

  /** Open ZBigFile foid as of conn.at (step 2). Opening an open foid again returns the same FileH. */
  open(foid: Oid): Promise<FileH> {
    try {
      this.checkDown(`${this}: open f${hex16(foid)}`); // fail fast, not after queued work
    } catch (e) {
      return Promise.reject(e);
    }
    return this.exclusive(() => this.openLocked(foid));
  }

  /** Move the view to `at` ≥ conn.at (step 3). On failure the Conn is closed. */
  async resync(at: Tid): Promise<void> {
    const ctx = `${this}: resync -> @${hex16(at)}`;
    this.checkDown(ctx);
    await this.wc.headWait(at);
    try {
      await this.exclusive(() => this.resyncLocked(at, ctx));
    } catch (e) {
      this.nc.markDown('connection closed');
      await this.close().catch((ce) => debug('%s: close after failed resync: %s', this, (ce as Error).message));
      throw e;
    }
  }

  /** Close every FileH, then the watch link (step 4). Idempotent. */
  close(): Promise<void> {
    if (this.closing === undefined) this.closing = this.closeImpl();
    return this.closing;
  }

  /** Stream-0 messages the server sent ("error: …", "fatal: …"), for diagnostics. */
  fatals(): string[] {
    return this.nc.fatals();
  }

  // ---- internals ----

  /** @internal Runs fn after every earlier exclusive operation settled. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.serial.then(fn, fn);
    this.serial = run.catch(() => {});
    return run;
  }

  /** @internal */
  get native(): NativeClientConn {
    return this.nc;
  }

  /** @internal */
  checkDown(ctx: string): void {
    if (this.nc.down() !== null) throw new ConnClosedError(ctx);
  }

  /** @internal Sends a request on the watch link; resolves with the reply text. */
  sendReq(msg: string, ctx: string): Promise<string> {
    let id: number;
    try {
      id = this.nc.request(msg);
    } catch (e) {
      return Promise.reject(new LinkDownError(ctx, (e as Error).message));
    }
    return new Promise<string>((resolve, reject) => {
      this.pending.set(id, { resolve, reject: (e) => reject(e) });
    }).catch((e: Error) => {
      throw e instanceof LinkDownError ? e : new LinkDownError(ctx, e.message);
    });
  }

  /** @internal */
  forget(fh: FileH): void {
    if (this.fileTab.get(fh.foid) === fh) this.fileTab.delete(fh.foid);
  }

  private onEvent(kind: 'reply' | 'linkdown' | 'down' | 'closed' | 'request', id: number, text: string): void {
    switch (kind) {
      case 'reply':
      case 'linkdown': {
        const p = this.pending.get(id);
        if (p === undefined) return;
        this.pending.delete(id);
        if (kind === 'reply') p.resolve(text);
        else p.reject(new Error(text));
        return;
      }
      case 'down':
        // step 5: native already efaulted every mapping; finish like upstream: close the Conn
        debug('%s: down: %s', this, text);
        void this.close().catch((e) => debug('%s: close after pinner failure: %s', this, (e as Error).message));
        return;
      case 'closed':
        this.closedWait?.(text);
        return;
    }
  }

  private async openLocked(foid: Oid): Promise<FileH> {
    const ctx = `${this}: open f${hex16(foid)}`;
    this.checkDown(ctx);
    const have = this.fileTab.get(foid);
    if (have !== undefined) {
      have.nopen++;
      return have;
    }
    const fd = await openFd(path.join(this.wc.mountpoint, 'head', 'bigfile', hex16(foid)), fsc.O_RDONLY);
    let fileId: number;
    let blksize: number;
    let size: number;
    try {
      const st = await fstatFd(fd);
      blksize = st.blksize;
      size = st.size;
      if (!(blksize > 0) || size % blksize !== 0) throw new ServerBugError(ctx, `head/file size % blksize != 0 (size ${size}, blksize ${blksize})`);
      fileId = this.nc.fileAdd(foid, fd, blksize, size);
    } catch (e) {
      await closeFd(fd);
      throw isCode(e, 'WCFS_EBUSY') ? new FileBusyError(ctx) : e;
    }
    const fh = new FileH(this, foid, fileId, fd, blksize, size);
    this.fileTab.set(foid, fh);
    let reply: string;
    try {
      reply = await this.sendReq(formatWatch(foid, this.atv), `${ctx}: watch`);
    } catch (e) {
      reply = (e as Error).message;
    }
    if (reply !== 'ok') {
      this.fileTab.delete(foid);
      fh.state = FileState.Closed;
      await Promise.all(this.nc.fileRemove(fileId).map(closeFd));
      throw new WatchError(`${ctx}: watch`, reply);
    }
    fh.state = FileState.Opened;
    return fh;
  }

  private async resyncLocked(at: Tid, ctx: string): Promise<void> {
    this.checkDown(ctx);
    const files = [...this.fileTab.values()].filter((fh) => fh.state === FileState.Opened);
    // phase 1: sizes. All stats first, without anything held (H5); then the remaps.
    const stats = await Promise.all(files.map((fh) => fstatFd(fh.headFd)));
    this.checkDown(ctx);
    this.atv = at; // early, as upstream: opens queued behind us use the new at
    files.forEach((fh, i) => {
      const st = stats[i]!;
      const fctx = `${ctx}: f${hex16(fh.foid)}`;
      if (st.blksize !== fh.blksize) throw new ServerBugError(fctx, `blksize changed ${fh.blksize} -> ${st.blksize}`);
      try {
        this.nc.fileResize(fh.fileId, st.size);
      } catch (e) {
        if (isCode(e, 'WCFS_ESERVERBUG')) throw new ServerBugError(fctx, (e as Error).message);
        throw new Error(`${fctx}: ${(e as Error).message}`, { cause: e });
      }
      fh.headfsize = st.size;
    });
    // phase 2: move the watches; the pinner applies what the server sends meanwhile
    for (const fh of files) {
      const fctx = `${ctx}: f${hex16(fh.foid)}: watch`;
      const reply = await this.sendReq(formatWatch(fh.foid, at), fctx);
      if (reply !== 'ok') throw new WatchError(fctx, reply);
    }
  }

  private async closeImpl(): Promise<void> {
    this.nc.markDown('connection closed');
    let first: Error | undefined;
    await this.exclusive(async () => {
      for (const fh of [...this.fileTab.values()]) {
        try {
          await fh.closeLocked(true);
        } catch (e) {
          first ??= e as Error;
        }
      }
    });
    const closed = new Promise<string>((resolve) => (this.closedWait = resolve));
    if (this.nc.close(this.closeTimeoutMs)) {
      const err = await closed;
      if (err !== '') first ??= new Error(`${this}: close: ${err}`);
    }
    for (const [, p] of this.pending) p.reject(new Error('link is down'));
    this.pending.clear();
    this.wc.forgetConn(this);
    if (first !== undefined) throw first;
  }
}

// ---- 2) FileH ----

export enum FileState {
  Opening = 0,
  Opened = 1,
  Closing = 2,
  Closed = 3,
}

export class FileH {
  /** @internal */ state = FileState.Opening;
  /** @internal */ nopen = 1;

  /** Use Conn.open. */
  constructor(
    readonly conn: Conn,
    readonly foid: Oid,
    /** @internal */ readonly fileId: number,
    /** @internal */ readonly headFd: number,
    /** Block size of the file (st_blksize of head/bigfile/<foid>). */
    readonly blksize: number,
    /** @internal Size of the head file as of the last open/resync (bytes). */
    public headfsize: number,
  ) {}

  toString(): string {
    return `f${hex16(this.foid)}`;
  }

  /**
   * Map blocks [blkStart, blkStart+blkLen) (default: up to the file's current end). Blocks
   * past the end read as zeros. Synchronous: no round trip to the server.
   */
  mmap(blkStart: number, blkLen?: number): Mapping {
    const ctx = `${this.conn}: ${this}: mmap #${blkStart}`;
    if (!Number.isSafeInteger(blkStart) || blkStart < 0) throw new RangeError(`${ctx}: bad blkStart`);
    const n = blkLen ?? this.headfsize / this.blksize - blkStart;
    if (!Number.isSafeInteger(n) || n <= 0) throw new RangeError(`${ctx}: bad blkLen ${n}`);
    if (n * this.blksize > MAX_MAPPING) throw new RangeError(`${ctx}: ${n} blocks: larger than the largest ArrayBuffer (${MAX_MAPPING} bytes); map in parts`);
    if (this.state >= FileState.Closing) throw new FileClosedError(ctx);
    let r: [number, ArrayBuffer];
    try {
      r = this.conn.native.mmap(this.fileId, blkStart, n);
    } catch (e) {
      if (isCode(e, 'WCFS_EFILECLOSED') || isCode(e, 'WCFS_ECONNCLOSED')) throw new FileClosedError(ctx);
      throw e;
    }
    return new Mapping(this, r[0], r[1], blkStart, n);
  }

  /** Drop one open; the last one unwatches the file and efaults its mappings. */
  close(): Promise<void> {
    return this.conn.exclusive(() => this.closeLocked(false));
  }

  /** Test hook: the pinned table blk → rev (a copy). */
  pinned(): Map<number, Tid> {
    return new Map(this.conn.native.filePinned(this.fileId));
  }

  /** @internal (caller is exclusive on the conn) */
  async closeLocked(force: boolean): Promise<void> {
    if (this.state >= FileState.Closing) return;
    this.nopen--;
    if (this.nopen > 0 && !force) return;
    this.state = FileState.Closing;
    const ctx = `${this.conn}: ${this}: close`;
    let err: Error | undefined;
    try {
      let req = this.conn.sendReq(formatWatch(this.foid, null), `${ctx}: unwatch`);
      // Conn.close does not wait forever for a stuck server: bye/close drop the watch anyway
      if (force) req = withTimeout(req, this.conn.closeTimeoutMs, () => new Error(`${ctx}: unwatch: no reply in ${this.conn.closeTimeoutMs} ms`));
      const reply = await req;
      if (reply !== 'ok') err = new WatchError(`${ctx}: unwatch`, reply);
    } catch (e) {
      // link down (poisoned conn, or the server went away): nothing left to unwatch
      debug('%s: %s', ctx, (e as Error).message);
    }
    this.conn.forget(this);
    const fds = this.conn.native.fileRemove(this.fileId);
    this.state = FileState.Closed;
    await Promise.all(fds.map(closeFd));
    if (err !== undefined) throw err;
  }
}

// ---- 3) Mapping ----

type TypedArrayCtor<T> = new (buffer: ArrayBuffer, byteOffset?: number, length?: number) => T;

export class Mapping {
  /** The mapped memory, zero copy. Empty after unmap; faults after close of its FileH/Conn. */
  readonly buffer: ArrayBuffer;
  readonly bytes: Uint8Array;

  /** Use FileH.mmap. */
  constructor(
    readonly fileh: FileH,
    /** @internal */ readonly id: number,
    buffer: ArrayBuffer,
    readonly blkStart: number,
    readonly blkLen: number,
  ) {
    this.buffer = buffer;
    this.bytes = new Uint8Array(buffer);
  }

  get blkStop(): number {
    return this.blkStart + this.blkLen;
  }

  /** A typed view over the whole mapping (e.g. Float64Array). */
  view<T>(ctor: TypedArrayCtor<T>): T {
    return new ctor(this.buffer);
  }

  /** Release the memory. Views become empty (detached). Idempotent. */
  unmap(): void {
    this.fileh.conn.native.unmap(this.id, this.buffer);
  }

  toString(): string {
    return `m[#${this.blkStart} +${this.blkLen})`;
  }
}
