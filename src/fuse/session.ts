// FuseSession — serves a FileSystem (fs.ts) on a FUSE mount through native/fuse.cc.
//
// 1) mount: FuseSession.mount() resolves the mountpoint, mounts (native constructor), finds
//    the connection number in mountinfo and waits for INIT. It warns when the kernel lacks
//    FUSE_EXPLICIT_INVAL_DATA (Linux < 5.2: the page cache of a file is dropped whenever its
//    size changes — wcfs's isolation still works, its cache doesn't; wcfs-server.md §3.10).
//    allow_other as non-root without user_allow_other in /etc/fuse.conf is refused before
//    mounting (WCFS_EALLOWOTHER), with the line to add: fusermount3 would refuse it too, but
//    tell only stderr why.
// 2) dispatch: each request arrives from native as positional fields, is decoded by the op
//    table (ops.ts) into a kernel-named request, and handed to the filesystem's handler with
//    a RequestContext. The handler returns (or resolves to) a value, which the op table sends
//    as the reply; a thrown error becomes an errno via errors.ts toErrno (EIO-class errors are
//    logged with the request as context). The session, not the handler, replies: every
//    request is answered exactly once (Ctx.done guards it; native answers -ESRCH to a second
//    reply anyway).
// 3) interrupts: FUSE_INTERRUPT aborts the request's ctx.signal (created lazily). A request
//    interrupted before JS saw it starts with ctx.interrupted = true and an aborted signal.
//    Handlers that wait should pass the signal on; an abort ends as EINTR.
// 4) notifications: session.notifier (notifier.ts), Promises run on native notify threads.
// 6) READ fast path: session.blockCache.put(nodeid, off, data, served) registers memory the
//    filesystem would reply from anyway; READs wholly inside it are then answered on the
//    libfuse worker and never reach the handler (nor pending()). drop(nodeid, off) unregisters
//    it and returns only once no worker sends from it any more. The filesystem is responsible
//    for dropping a range before its content would change (see src/server/loads.ts, L2-L3).
// 5) end: the kernel ends the connection (unmount(), `fusermount3 -u`, abort(), or the fusectl
//    abort file) → native tears down → `closed` resolves with {rc, mounted}. mounted = true
//    means the connection died but the mount entry stayed (abort: clients get ENOTCONN) —
//    unmount() then removes it. In-flight requests get their signal aborted; their replies
//    are dropped.
//
// Self-access (fuse.md B "self-access"): this process' JS thread serves the mount, so it must
// never touch the mount synchronously (fs.statSync(mountpoint) etc.: it would wait for a
// reply that only it can send — deadlock), and async fs calls on the mount occupy libuv's
// 4 pool threads while JS answers. Use child processes, or the native helpers that run on
// their own threads (pagecache.ts). mountinfo.ts never touches the mount.
//
// Threads: all of this runs on the JS thread; native threads only post events (native/fuse.cc).

import { readFileSync, realpathSync } from 'node:fs';
import createDebug from 'debug';
import { WcfsError } from '../errors.js';
import { native, type NativeFuseConfig, type NativeFuseSession } from '../native.js';
import { logLine } from '../util/log.js';
import { FuseError, MountError, toErrno, type ErrnoVerdict } from './errors.js';
import type { FileSystem, RequestContext } from './fs.js';
import { capNames, decodeInit, errno, errnoName, FUSE_CAP, type InitInfo, type Request } from './kernel.js';
import { abortConnection, findMount, isFuseMounted, unmountPath } from './mountinfo.js';
import { KernelNotifier, type Notifier } from './notifier.js';
import { OPS, type OpSpec } from './ops.js';
import { cacheResidency } from './pagecache.js';

const debug = createDebug('wcfs:fuse');

export interface MountOptions extends NativeFuseConfig {
  /** Mount source shown in /proc/mounts [wcfs]. */
  fsname?: string;
  /** fstype becomes fuse.<subtype>. */
  subtype?: string;
  /** Let other users access the mount [false] (non-root needs user_allow_other in /etc/fuse.conf). */
  allowOther?: boolean;
  /** Kernel-side permission checks from the modes [false]. */
  defaultPermissions?: boolean;
  /** fusermount3 unmounts when this process dies [false]. */
  autoUnmount?: boolean;
  /** libfuse's own trace of every request on stderr [false]; DEBUG=wcfs:fuse is ours. */
  debug?: boolean;
  /** Extra raw -o options. */
  options?: string[];
  /** Where warnings and errors go [stderr]. */
  log?: (line: string) => void;
  /**
   * Extends toErrno: return a verdict for errors the filesystem knows, else undefined. Not
   * asked about a FuseError: that one always answers with its errno.
   */
  mapError?: (err: unknown) => ErrnoVerdict | undefined;
}

export interface ExitInfo {
  /** fuse_session_loop_mt's result: 0 when the kernel ended the connection. */
  rc: number;
  /** The mount entry outlived the connection (aborted): clients get ENOTCONN until unmounted. */
  mounted: boolean;
}

class Ctx implements RequestContext {
  done = false;
  private ac: AbortController | undefined;

  constructor(
    readonly spec: OpSpec,
    readonly req: Request,
    public interrupted: boolean,
  ) {}

  get signal(): AbortSignal {
    if (this.ac === undefined) {
      this.ac = new AbortController();
      if (this.interrupted) this.ac.abort(new FuseError(errno.EINTR, 'interrupted'));
    }
    return this.ac.signal;
  }

  interrupt(reason: FuseError): void {
    if (this.interrupted) return;
    this.interrupted = true;
    this.ac?.abort(reason);
  }
}

/**
 * Whether /etc/fuse.conf lets non-root users mount with allow_other: a line `user_allow_other`
 * (fusermount3's rule; comments and surrounding blanks ignored). A non-root allow_other mount
 * is refused up front without it: fusermount3 would refuse it anyway.
 */
export function userAllowOther(conf = '/etc/fuse.conf'): boolean {
  let text: string;
  try {
    text = readFileSync(conf, 'utf8');
  } catch {
    return false;
  }
  return text.split('\n').some((l) => l.replace(/#.*/, '').trim() === 'user_allow_other');
}

const escOpt = (s: string) => s.replace(/\\/g, '\\\\').replace(/,/g, '\\,');

/** READ fast path (native/fuse.cc step 6): registered ranges served without JS. */
export interface BlockCache {
  /** Registers [off, off+data.length) of nodeid (replacing overlapping ranges); false once closed. */
  put(nodeid: number, off: number, data: Uint8Array, served: Uint8Array): boolean;
  /** Unregisters the range starting at off and waits (briefly, natively) for replies in flight from it. */
  drop(nodeid: number, off: number): boolean;
  /** READs answered from registered ranges so far. */
  served(): number;
}

export class FuseSession {
  /** Connection number N: /sys/fs/fuse/connections/N. */
  connectionId = -1;
  /** What INIT negotiated. */
  init!: InitInfo;
  notifier!: Notifier;
  /** READ fast path; a no-op once the session ended. */
  readonly blockCache: BlockCache = {
    put: (nodeid, off, data, served) => (this.exit ? false : this.nat.cacheBlock(nodeid, off, data, served)),
    drop: (nodeid, off) => (this.exit ? false : this.nat.uncacheBlock(nodeid, off)),
    served: () => (this.exit ? this.fastServed : (this.fastServed = this.nat.fastReads())),
  };
  /** The fast path's last count (kept once the session ended). */
  private fastServed = 0;
  /** Resolves once the session ended (never rejects). */
  readonly closed: Promise<ExitInfo>;

  private nat!: NativeFuseSession;
  private readonly inflight = new Map<number, Ctx>();
  private exit: ExitInfo | undefined;
  private resolveClosed!: (e: ExitInfo) => void;
  private initWaiter: { resolve: () => void; reject: (e: Error) => void } | undefined;
  private readonly log: (line: string) => void;

  private constructor(
    readonly mountpoint: string,
    private readonly fs: FileSystem,
    private readonly opts: MountOptions,
  ) {
    this.log = opts.log ?? logLine;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /** Mounts `fs` at `mountpoint` (an existing directory) and resolves after INIT. */
  static async mount(mountpoint: string, fs: FileSystem, opts: MountOptions = {}): Promise<FuseSession> {
    let mnt: string;
    try {
      mnt = realpathSync(mountpoint); // before mounting: afterwards it would ask us
    } catch (e) {
      throw new MountError(`mount ${mountpoint}: ${(e as Error).message}`, { cause: e });
    }
    // fusermount3 would refuse it (and print its reason to our stderr only): say why, and how to fix it
    if (opts.allowOther && (process.geteuid?.() ?? 0) !== 0 && !userAllowOther()) {
      throw new WcfsError(
        'WCFS_EALLOWOTHER',
        `mount ${mnt}: the mount option allow_other (needed to share the mount) is refused to non-root users unless ` +
          `/etc/fuse.conf has the line "user_allow_other": add that line to /etc/fuse.conf (as root), or run the server as root`,
      );
    }
    const s = new FuseSession(mnt, fs, opts);
    const o = [`fsname=${escOpt(opts.fsname ?? 'wcfs')}`];
    if (opts.subtype) o.push(`subtype=${escOpt(opts.subtype)}`);
    if (opts.allowOther) o.push('allow_other');
    if (opts.defaultPermissions) o.push('default_permissions');
    if (opts.autoUnmount) o.push('auto_unmount');
    o.push(...(opts.options ?? []));
    const args = ['wcfs', '-o', o.join(',')];
    if (opts.debug) args.push('-d');
    const inited = new Promise<void>((resolve, reject) => (s.initWaiter = { resolve, reject }));
    const cfg: NativeFuseConfig = {
      maxThreads: opts.maxThreads,
      maxBackground: opts.maxBackground,
      congestionThreshold: opts.congestionThreshold,
      notifyThreads: opts.notifyThreads,
      explicitInvalData: opts.explicitInvalData,
      asyncRead: opts.asyncRead,
    };
    try {
      s.nat = new (native().FuseSession)(mnt, args, cfg, {
        request: s.onRequest.bind(s),
        interrupt: s.onInterrupt.bind(s),
        forget: s.onForget.bind(s),
        init: s.onInit.bind(s),
        destroy: s.onDestroy.bind(s),
        exit: s.onExit.bind(s),
      });
    } catch (e) {
      throw new MountError(`mount ${mnt}: ${(e as Error).message}`, { cause: e });
    }
    const m = findMount(mnt);
    if (m && m.major === 0 && m.fstype.startsWith('fuse')) s.connectionId = m.minor;
    await inited;
    debug('mounted %s conn %d proto 7.%d want [%s]', mnt, s.connectionId, s.init.protoMinor, capNames(s.init.want).join(' '));
    return s;
  }

  /** Requests not answered yet (including ones not yet seen by JS). */
  pending(): number {
    return this.exit ? 0 : this.nat.pending();
  }

  get isClosed(): boolean {
    return this.exit !== undefined;
  }

  /**
   * Page-cache residency of [off, off+len) of the file at `rel` (relative to the mount root),
   * one byte per page (1 = cached and up to date): mincore through our own mount, on a native
   * thread (self-access rule above). Opening the file makes the kernel send LOOKUP/OPEN/RELEASE.
   */
  residency(rel: string, off: number, len: number): Promise<Uint8Array> {
    return cacheResidency(`${this.mountpoint}/${rel}`, off, len);
  }

  /**
   * Unmounts (fusermount3 -u; `lazy`: -z) and waits for the session to end. Fails with EBUSY
   * while clients hold files open (unless lazy). Also cleans up the dead mount left by an
   * abort.
   */
  async unmount(opts: { lazy?: boolean; timeoutMs?: number } = {}): Promise<ExitInfo> {
    if (this.exit && !this.exit.mounted) return this.exit;
    if (!this.exit || isFuseMounted(this.mountpoint, this.connectionId)) await unmountPath(this.mountpoint, opts);
    const e = await this.closed;
    if (e.mounted) this.exit = { rc: e.rc, mounted: isFuseMounted(this.mountpoint, this.connectionId) };
    return this.exit!;
  }

  /** Aborts the connection through fusectl (see mountinfo.ts) and waits for the end. */
  async abort(): Promise<ExitInfo> {
    if (!this.exit) await abortConnection(this.connectionId);
    return this.closed;
  }

  /** Whether the mounted session keeps Node's event loop alive (default: it does). */
  ref(): void {
    if (!this.exit) this.nat.ref();
  }
  unref(): void {
    if (!this.exit) this.nat.unref();
  }

  // ---- 1) lifecycle events ----

  private onInit(a: Float64Array): void {
    const info = decodeInit(a);
    this.init = info;
    this.notifier = new KernelNotifier(this.nat, info.maxWrite);
    if (this.opts.explicitInvalData !== false && !(info.want & FUSE_CAP.EXPLICIT_INVAL_DATA)) {
      this.log(
        `wcfs: fuse: WARNING: the kernel (FUSE 7.${info.protoMinor}) lacks FUSE_EXPLICIT_INVAL_DATA (Linux >= 5.2): ` +
          'the page cache of a file is dropped whenever its size changes — expect extra reads',
      );
    }
    try {
      this.fs.init?.(info);
    } finally {
      this.initWaiter?.resolve();
      this.initWaiter = undefined;
    }
  }

  private onDestroy(): void {
    this.fs.destroy?.();
  }

  private onExit(rc: number): void {
    const mounted = this.connectionId >= 0 && isFuseMounted(this.mountpoint, this.connectionId);
    this.exit = { rc, mounted };
    debug('exit rc=%d mounted=%s (%d requests unanswered)', rc, mounted, this.inflight.size);
    const reason = new FuseError(errno.ENOTCONN, 'FUSE session closed');
    for (const ctx of this.inflight.values()) {
      ctx.done = true;
      ctx.interrupt(reason);
    }
    this.inflight.clear();
    this.initWaiter?.reject(new MountError(`mount ${this.mountpoint}: session ended before INIT (rc ${rc})`));
    this.initWaiter = undefined;
    this.resolveClosed(this.exit);
  }

  private onForget(pairs: Float64Array): void {
    if (!this.fs.forget) return;
    for (let i = 0; i + 1 < pairs.length; i += 2) this.fs.forget(pairs[i]!, pairs[i + 1]!);
  }

  // ---- 2) dispatch ----

  private onRequest(
    opcode: number,
    id: number,
    nodeid: number,
    fh: number,
    offset: number,
    size: number,
    flags: number,
    arg: string | Buffer | undefined,
    pid: number,
    uid: number,
    gid: number,
    interrupted: boolean,
  ): void {
    const spec = OPS.get(opcode);
    if (spec === undefined) {
      this.nat.replyErr(id, errno.ENOSYS); // native forwards only ops in the table
      return;
    }
    const req = spec.decode({ id, nodeid, uid, gid, pid }, { fh, offset, size, flags, arg });
    const ctx = new Ctx(spec, req, interrupted);
    this.inflight.set(id, ctx);
    if (debug.enabled) debug('-> %s #%d %s%s', spec.name, id, spec.fmtIn(req), interrupted ? ' (interrupted)' : '');
    let out: unknown;
    try {
      const h = spec.handler(this.fs);
      out = h ? h.call(this.fs, req, ctx) : spec.fallback(req);
    } catch (e) {
      this.fail(ctx, e);
      return;
    }
    if (out instanceof Promise) {
      out.then(
        (v) => this.succeed(ctx, v),
        (e) => this.fail(ctx, e),
      );
    } else {
      this.succeed(ctx, out);
    }
  }

  private onInterrupt(id: number): void {
    const ctx = this.inflight.get(id);
    debug('<- INTERRUPT #%d%s', id, ctx ? '' : ' (already answered)');
    ctx?.interrupt(new FuseError(errno.EINTR, 'interrupted'));
  }

  private succeed(ctx: Ctx, out: unknown): void {
    if (ctx.done) return;
    ctx.done = true;
    this.inflight.delete(ctx.req.id);
    let rc: number;
    try {
      rc = ctx.spec.reply(this.nat, ctx.req, out);
    } catch (e) {
      // The handler returned something the reply can't carry (a bug in the filesystem).
      this.log(`wcfs: fuse: ${this.where(ctx)}: bad reply: ${(e as Error).stack ?? e}`);
      rc = this.nat.replyErr(ctx.req.id, errno.EIO);
    }
    if (debug.enabled) debug('<- %s #%d %s', ctx.spec.name, ctx.req.id, rc < 0 ? `(reply ${errnoName(-rc)})` : ctx.spec.fmtOut(out));
    this.checkRc(ctx, rc);
  }

  private fail(ctx: Ctx, err: unknown): void {
    if (ctx.done) return;
    ctx.done = true;
    this.inflight.delete(ctx.req.id);
    const v = (err instanceof FuseError ? undefined : this.opts.mapError?.(err)) ?? toErrno(err, ctx.interrupted);
    if (v.log !== 'no') {
      const what = v.log === 'error' ? 'error' : 'warning';
      this.log(`wcfs: fuse: ${what}: ${this.where(ctx)}: ${errnoName(v.errno)}: ${err instanceof Error && v.log === 'error' ? err.stack : String(err)}`);
    }
    const rc = this.nat.replyErr(ctx.req.id, v.errno);
    if (debug.enabled) debug('<- %s #%d %s', ctx.spec.name, ctx.req.id, errnoName(v.errno));
    this.checkRc(ctx, rc);
  }

  private checkRc(ctx: Ctx, rc: number): void {
    if (rc >= 0) return;
    // ENOENT: the kernel had dropped the request (interrupted); ENOTCONN: session ending.
    if (rc === -errno.ENOENT || rc === -errno.ENOTCONN) return;
    this.log(`wcfs: fuse: ${this.where(ctx)}: reply failed: ${errnoName(-rc)}`);
  }

  private where(ctx: Ctx): string {
    return `${ctx.spec.name} #${ctx.req.id} ${ctx.spec.fmtIn(ctx.req)} (pid ${ctx.req.pid})`;
  }
}
