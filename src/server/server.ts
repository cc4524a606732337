// WcfsServer — the wcfs filesystem: every ZBigFile of a ZODB database, as of head and as of
// any revision, kept exactly in step with the database (wcfs-server.md §1, §3). This file
// starts and stops it, answers FUSE by dispatching to the tree's nodes, and owns failure,
// auto-exit and stats; the steps live apart, each with its own state:
//
// 1) Tree (tree.ts): the inode table, per-kind nodes, @<rev>/ views (created on lookup,
//    forgotten when the kernel forgets them: I7). A BigFile (bigfile.ts) is one ZBigFile in
//    one view; its BlockLoads (loads.ts) own its in-flight blocks and their registration in
//    the native READ fast path.
// 2) Reads (reads.ts): READ of a bigfile, and the upload of each loaded block into the page
//    cache (outside the READ, through the UploadGate for head).
// 3) Commits (commit.ts): one batch of storage commit events at a time — 3a headMu W: ΔFtail,
//    old data, new head (Head.advance); 3b no lock: store old data into @<BlkRevAt(blk, oldHead)>,
//    invalidate; 3c publish head/at (Head.publish).
// 4) Failure: a change of a tracked ZBigFile object itself, or any failure of the storage
//    watch or of an invalidation, is fatal: the server logs it, aborts the FUSE connection
//    (clients get ENOTCONN — never stale data) and reports onFatal.
// 5) Untrack (untrack.ts): every untrackInterval, head blocks the kernel no longer caches leave
//    ΔFtail (probe, invalidate, then untrack what nothing tracked again meanwhile: I1).
// Head state (head.ts): headMu, its UploadGate, head revision, head files, ΔFtail, head/at.
// Isolation (isolation.ts): watches and pins, over the watch links (wlink.ts).
// Authentication (auth.ts, with --authkeyfile): .wcfs/auth links, and the check of every OPEN
// against auth.ts OPEN_RULES (open() below — the one place; READs need an open handle).
//
// Invariants (each kept by the file named):
//   I1 (ΔFtail) a head block may be in the page cache ⇒ it is tracked (reads.ts 2b: tracked
//      before the reply, under headMu shared; commit.ts 3b invalidates every reported block;
//      untrack.ts forgets only blocks it made sure are not cached).
//   I2 head revision, head files' views, sizes, mtimes change together, synchronously, at
//      the end of 3a (head.ts advance): every READ that gets headMu after 3a is answered
//      from the new head.
//   I3 a head block load holds headMu shared until it completes, even if the READ that
//      started it was interrupted (reads.ts 2b): no load straddles a commit.
//   I4 uploads in flight ⇒ commit processing does not hold headMu, and has invalidated the
//      blocks it changed (lock.ts UploadGate U1, U2; commit.ts 3b).
//   I5 head/at = the head revision except between 3a and 3c, where it is the old head
//      (head.ts): a client learns of a revision (head/at, watch `@at`, `@at/` ahead of head)
//      only after head's page cache holds nothing older for it. Pages of changed blocks
//      still cached between 3a and 3b are seen only by plain readers of head (no isolation)
//      and by clients at older revisions, each of which is pinned before it can see new
//      data (READs pin in 2b, against the head revision).
//   I6 no deadlock with the kernel's page locks (commit.ts).
//   I7 @rev views live while the kernel or an open file refers to them (tree.ts).
//
// Lock order: kernel page lock → headMu (a READ). headMu is held exclusively only in 3a,
// which, once it holds it, waits for no page lock and no client; shared holders may wait for
// a client's pin ack (bounded by the pin timeout; isolation.ts takes its own locks after
// headMu), never for a page lock.
// Never touches its own mount from this (the serving) thread: see src/fuse/session.ts.
//
// The kernel seam: everything that talks to the kernel's caches goes through a Kernel —
// { notifier, blockCache, isClosed } — which a FuseSession is once mounted, and which
// mount-free tests fake (WcfsServer.serve).

import createDebug from 'debug';
import { isCode, WcfsError } from '../errors.js';
import { FuseError } from '../fuse/errors.js';
import type { Attr, DirEntry, EntryOut, FileSystem, OpenOut, RequestContext } from '../fuse/fs.js';
import {
  errno,
  FOPEN_DIRECT_IO,
  FOPEN_NONSEEKABLE,
  FOPEN_STREAM,
  FUSE_CAP,
  S_IFDIR,
  type GetattrIn,
  type InitInfo,
  type LookupIn,
  type OpenIn,
  type ReaddirIn,
  type ReadIn,
  type ReleaseIn,
  type WriteIn,
} from '../fuse/kernel.js';
import type { Notifier } from '../fuse/notifier.js';
import { FuseSession, type BlockCache, type MountOptions } from '../fuse/session.js';
import { withTimeout } from '../util/async.js';
import { LogLimiter, logLine } from '../util/log.js';
import { isOwnThread } from '../util/proc.js';
import { StorageLoader, type ObjectLoader } from '../zodb/db.js';
import { hex16, type Oid, type Tid } from '../zodb/ids.js';
import { openStorage } from '../zodb/open.js';
import type { IStorage, StorageWatch } from '../zodb/storage.js';
import type { ZBigFileView } from '../zodb/zbigfile.js';
import type { BigFile } from './bigfile.js';
import { Commits } from './commit.js';
import { Head } from './head.js';
import { Isolation } from './isolation.js';
import { Reads, type UploadDelays } from './reads.js';
import { INO_ROOT, Tree, TTL, type FsNode } from './tree.js';
import { Untracker } from './untrack.js';
import { WatchLink } from './wlink.js';
import { AUTH_INVALID, AUTH_OK, AUTH_UNKNOWN, AuthTable, parseAuthRequest, redactAuth, type AuthRequest, type AuthSlot, type Identity } from './auth.js';
import { readAuthKey } from '../util/authkey.js';
import { ZHeadStreams } from './zhead.js';
import { RecentLatencies } from '../util/latency.js';
import { native } from '../native.js';

const debug = createDebug('wcfs:server');

/**
 * Commit processing creates no @<rev>/ view to store old data into (commit.ts 3b) while this
 * many views exist: the sweep collects idle views every gcInterval, and a fast writer must not
 * create them faster than that without bound. Over the cap, the old data is dropped (clients
 * pinned there load it from the database).
 */
export const MAX_VIEWS_FOR_STORE = 64;

/**
 * How long commit processing waits for its own lookup of an @<rev> file (revFileKnown). It
 * normally takes milliseconds; it can wait longer only when the root directory's lock is
 * queued behind a LOOKUP of a revision ahead of head (which waits for this very commit, up
 * to the pin timeout) — then the old data is dropped rather than head/at held back.
 */
export const STORE_LOOKUP_TIMEOUT_MS = 2000;

/** At most this many of those lookups at a time (each is a native thread: pagecache.ts). */
const STORE_LOOKUPS_MAX = 8;

/** The fh of a regular file this process opened through its own mount (not counted for auto-exit). */
const OWN_FH = 2 ** 52;

export interface ServerOptions {
  /** The database URL as given by the user: shown in .wcfs/zurl and as the mount source. */
  zurl: string;
  mountpoint: string;
  /** Pin timeout in seconds [30]. */
  pinTimeout?: number;
  /** Exit when no file has been open for autoExitDelayMs (joiners keep .wcfs/zurl open). */
  autoExit?: boolean;
  autoExitDelayMs?: number;
  /** How often idle @rev/ views are dropped from the kernel's caches (so collected) [10 s]. */
  gcIntervalMs?: number;
  /** How often head blocks the kernel no longer caches are untracked (step 5) [60 s]. */
  untrackIntervalMs?: number;
  /** Storage options (tests poll faster). */
  storagePollMs?: number;
  /**
   * Share the mount with this group (`serve --share-with`): mounted allow_other +
   * default_permissions, every node owned by (our euid, this gid) with tree.ts SHARE_MODES.
   * Absent: private to our uid (FUSE's default).
   */
  shareWithGid?: number;
  /** Extra FUSE mount options. */
  mount?: Partial<MountOptions>;
  /**
   * Require authentication (auth.ts): the key is read from this file at start (missing,
   * unreadable or empty: WCFS_EAUTHKEY); .wcfs/auth appears only then.
   */
  authKeyFile?: string;
  /** Who sends requests (tests: a fake; default /proc + pidfds). */
  authIdentity?: Identity;
  /** Our effective uid (tests: another; default process.geteuid()): see open(). */
  euid?: number;
  /** Warnings and errors [stderr]. */
  log?: (line: string) => void;
  /** Bound of the warnings a client can cause at will, per kind [10 per 60 s] (LogLimiter). */
  clientWarnLimit?: { burst: number; windowMs: number };
  /** Called once on a fatal error, after the FUSE connection was aborted. */
  onFatal?: (err: Error) => void;
  /** Expose .wcfs/debug/ (zhead: a line per processed commit; zhead.ts) — upstream's `-debug`. */
  debugFiles?: boolean;
  /** How long a loaded block waits for READs before its upload (reads.ts 2c) [UPLOAD_DELAYS]. */
  uploadDelaysMs?: UploadDelays;
  /** The window of .wcfs/stats' pin round-trip quantiles (PinRttP50, PinRttP99) [60 s]. */
  statsWindowMs?: number;
}

/** The kernel's caches as the server uses them (a FuseSession once mounted; a fake in tests). */
export interface Kernel {
  readonly notifier: Notifier;
  readonly blockCache: BlockCache;
  /** The connection ended: notifications fail, nothing is cached any more. */
  readonly isClosed: boolean;
  /** Page-cache residency of a file of the mount (`rel` from its root), a byte per page. */
  residency(rel: string, off: number, len: number): Promise<Uint8Array>;
}

/** Counters of .wcfs/stats (wcfs-server.md §1.5), in their fixed order. */
export interface Stats {
  BigFile: number;
  RevHead: number;
  ZHeadLink: number;
  WatchLink: number;
  Watch: number;
  PinnedBlk: number;
  pin: number;
  pinkill: number;
  // ours, after upstream's keys: memory the server holds (issue 7 item 5)
  RevFile: number;
  TrackedBlk: number;
  History: number;
  /** Blocks loaded ahead of a sequential reader (reads.ts 2d). */
  Prefetch: number;
  /** Head blocks untracked because the kernel no longer cached them (step 5), in all. */
  Untracked: number;
  /** READs answered by the native fast path, READs of bigfiles answered in JS, and blocks such a READ had to start loading (none in flight): where reads go. */
  ReadFast: number;
  ReadJS: number;
  ReadLoad: number;
  /** Open .wcfs/auth links, processes the auth table holds (exited ones leave it lazily), failed authentications in all (--authkeyfile; 0 without). */
  AuthLink: number;
  AuthProc: number;
  authfail: number;
  /**
   * Pin round trip (`pin` queued → its `ack` handled), p50 and p99 in µs over the last
   * ≤ PIN_RTT_SAMPLES pins acked within ServerOptions.statsWindowMs; 0 when there were none.
   */
  PinRttP50: number;
  PinRttP99: number;
}

/** How many recent pin round trips .wcfs/stats' quantiles are taken from, at most. */
export const PIN_RTT_SAMPLES = 1024;

export class WcfsServer implements FileSystem {
  readonly zurl: string;
  readonly mountpoint: string;
  readonly pinTimeout: number;
  /** Our effective uid (ServerOptions.euid). */
  private readonly euid: number;
  /** The mount (start); undefined when served against a fake kernel (serve). */
  session!: FuseSession;
  /** Resolves when the filesystem stops being served (unmounted or fatal). */
  readonly done: Promise<void>;

  readonly head: Head;
  readonly loader: ObjectLoader;
  readonly stats: Stats = {
    BigFile: 0,
    RevHead: 0,
    ZHeadLink: 0,
    WatchLink: 0,
    Watch: 0,
    PinnedBlk: 0,
    pin: 0,
    pinkill: 0,
    RevFile: 0,
    TrackedBlk: 0,
    History: 0,
    Prefetch: 0,
    Untracked: 0,
    ReadFast: 0,
    ReadJS: 0,
    ReadLoad: 0,
    AuthLink: 0,
    AuthProc: 0,
    authfail: 0,
    PinRttP50: 0,
    PinRttP99: 0,
  };
  /** Recent pin round trips (ms), for PinRttP50/P99; recorded by Isolation. */
  private readonly pinRtt: RecentLatencies;
  private readonly storage: IStorage;
  private readonly log: (line: string) => void;
  /** Warnings a client can cause at will (refused opens, bad keys): bounded per kind. */
  private readonly clientWarn: LogLimiter;
  private readonly opts: ServerOptions;
  private readonly isolation: Isolation;
  /** .wcfs/debug/zhead readers (debugFiles only). */
  private readonly zhead: ZHeadStreams | undefined;
  // set by run(), once the kernel is there
  kernel!: Kernel;
  private tree!: Tree;
  private reads!: Reads;
  private commits!: Commits;
  private untracker!: Untracker;

  /** Open head/watch handles by fh (until RELEASE); a closed link still answers EOF. */
  private readonly links = new Map<number, WatchLink>();
  /** Authentication, when on; open .wcfs/auth handles by fh (until RELEASE). */
  readonly auth: AuthTable | undefined;
  private readonly authLinks = new Map<number, { link: WatchLink<AuthRequest>; slot: AuthSlot }>();
  private nextLinkId = 1;
  /** ZBigFiles whose warnings were logged (fileWarnings). */
  private readonly warnedFiles = new Set<Oid>();
  private watch: StorageWatch | undefined;
  private unsubPacked: (() => void) | undefined;
  private fatalErr: Error | undefined;
  private stopping = false;
  private openCount = 0;
  private autoExitTimer: NodeJS.Timeout | undefined;
  private readonly gcIntervalMs: number;
  private gcTimer: NodeJS.Timeout | undefined;
  private untrackTimer: NodeJS.Timeout | undefined;
  /** The view and untrack sweeps run one at a time, in this chain; at most one of each queued. */
  private sweeps: Promise<void> = Promise.resolve();
  private readonly sweepQueued = new Set<'views' | 'untrack'>();
  private resolveDone!: () => void;
  /** revFileKnown's lookups through the mount in flight, and those waiting for a turn. */
  private storeLookups = 0;
  private storeLookupQ: Array<() => void> = [];

  private constructor(opts: ServerOptions, storage: IStorage, authKey: string | undefined) {
    this.opts = opts;
    this.auth = authKey === undefined ? undefined : new AuthTable(authKey, opts.authIdentity);
    this.zurl = opts.zurl;
    this.mountpoint = opts.mountpoint;
    this.pinTimeout = opts.pinTimeout ?? 30;
    this.pinRtt = new RecentLatencies(PIN_RTT_SAMPLES, opts.statsWindowMs ?? 60_000);
    this.euid = opts.euid ?? process.geteuid?.() ?? 0;
    this.gcIntervalMs = opts.gcIntervalMs ?? 10_000;
    this.log = opts.log ?? logLine;
    const lim = opts.clientWarnLimit ?? { burst: 10, windowMs: 60_000 };
    this.clientWarn = new LogLimiter((msg) => this.warn(msg), lim.burst, lim.windowMs);
    this.zhead = opts.debugFiles ? new ZHeadStreams({ stats: this.stats, log: (l) => this.log(l) }) : undefined;
    this.storage = storage;
    this.loader = new StorageLoader(storage);
    this.head = new Head(storage.head(), this.loader);
    this.head.packedTo = storage.packedTo?.() ?? 0n;
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    const head = this.head;
    this.isolation = new Isolation({
      headMu: head.mu,
      deltaFtail: head.deltaFtail,
      headAt: () => head.at,
      packedTo: () => head.packedTo,
      headFile: (foid) => head.files.get(foid),
      waitHead: (at, signal) => head.waitFor(at, signal),
      pinTimeoutMs: this.pinTimeout * 1000,
      stats: this.stats,
      pinRtt: this.pinRtt,
      log: this.log,
      fatal: (e) => this.fatal(e),
    });
  }

  /** Open the database, mount, start following commits (wcfs-server.md §3.3). */
  static async start(opts: ServerOptions): Promise<WcfsServer> {
    const authKey = opts.authKeyFile === undefined ? undefined : readAuthKey(opts.authKeyFile);
    const storage = await openStorage(opts.zurl, { readOnly: true, fs1: opts.storagePollMs !== undefined ? { pollMs: opts.storagePollMs } : {} });
    const srv = new WcfsServer(opts, storage, authKey);
    try {
      srv.session = await FuseSession.mount(opts.mountpoint, srv, {
        fsname: opts.zurl,
        subtype: 'wcfs',
        log: srv.log,
        mapError: mapZodbError,
        ...(opts.shareWithGid !== undefined && { allowOther: true, defaultPermissions: true }),
        ...opts.mount,
      });
    } catch (e) {
      await storage.close();
      throw e;
    }
    srv.checkKernel(srv.session.init);
    srv.run(srv.session);
    void srv.session.closed.then(() => srv.shutdown());
    debug('serving %s on %s @%s', opts.zurl, opts.mountpoint, hex16(srv.head.at));
    return srv;
  }

  /**
   * Serve `storage` against `kernel` without a mount (mount-free tests drive the FUSE
   * handlers directly). stop() ends it.
   */
  static serve(opts: ServerOptions, storage: IStorage, kernel: Kernel): WcfsServer {
    const srv = new WcfsServer(opts, storage, opts.authKeyFile === undefined ? undefined : readAuthKey(opts.authKeyFile));
    srv.run(kernel);
    return srv;
  }

  private run(kernel: Kernel): void {
    this.kernel = kernel;
    const srv = this;
    this.reads = new Reads(this.head, this.isolation, kernel, this.stats, (msg) => this.warn(msg), this.opts.uploadDelaysMs);
    this.tree = new Tree({
      zurl: this.zurl,
      pinTimeout: this.pinTimeout,
      head: this.head,
      loader: this.loader,
      kernel,
      stats: this.stats,
      statsText: () => this.statsText(),
      readBigfile: (f, off, size, signal) => this.reads.read(f, off, size, signal),
      watch: {
        open: (req) => this.openWatch(req),
        read: (req, ctx) => this.link(req.fh).read(req.size, ctx.signal, req.pid),
        write: (req) => this.link(req.fh).write(req.data, req.pid),
        release: (req) => {
          this.links.get(req.fh)?.release();
          this.links.delete(req.fh);
        },
      },
      auth:
        this.auth === undefined
          ? undefined
          : {
              open: (req) => this.openAuth(req),
              read: (req, ctx) => this.authLink(req.fh).read(req.size, ctx.signal, req.pid),
              write: (req) => this.authLink(req.fh).write(req.data, req.pid),
              release: (req) => {
                const a = this.authLinks.get(req.fh);
                if (a === undefined) return;
                this.authLinks.delete(req.fh);
                a.link.release();
                this.auth!.linkReleased(a.slot);
              },
            },
      zhead:
        this.zhead === undefined
          ? undefined
          : {
              open: (req) => {
                const fh = this.zhead!.open(req.pid);
                return { fh, openFlags: FOPEN_STREAM | FOPEN_NONSEEKABLE | FOPEN_DIRECT_IO };
              },
              read: (req, ctx) => this.zhead!.read(req.fh, req.size, ctx.signal),
              release: (req) => this.zhead!.release(req.fh),
            },
      fileWarnings: (view) => this.fileWarnings(view),
      share: this.opts.shareWithGid === undefined ? undefined : { uid: process.geteuid?.() ?? 0, gid: this.opts.shareWithGid },
    });
    this.commits = new Commits({
      head: this.head,
      loader: this.loader,
      get notifier() {
        return kernel.notifier;
      },
      revFileKnown: (rev, foid) => this.revFileKnown(rev, foid),
      pool: this.tree.pool,
      revCut: () => this.isolation.revCut(),
      processed: (tids) => this.zhead?.publish(tids),
      fatal: (e) => this.fatal(e),
      get failed() {
        return srv.fatalErr;
      },
    });
    this.watch = this.storage.watch(this.head.at);
    this.unsubPacked = this.storage.onPacked?.((p) => this.packed(p));
    this.untracker = new Untracker({
      head: this.head,
      kernel,
      pinnedIn: (foid) => this.isolation.pinnedIn(foid),
      stats: this.stats,
      trimHeap: () => void native().mallocTrim(),
      warn: (msg) => this.warn(msg),
    });
    void this.commits.serve(this.watch);
    if (this.opts.autoExit) this.armAutoExit(10_000);
    this.gcTimer = setInterval(() => this.sweep('views'), this.gcIntervalMs);
    this.gcTimer.unref();
    this.untrackTimer = setInterval(() => this.sweep('untrack'), this.opts.untrackIntervalMs ?? 60_000);
    this.untrackTimer.unref();
  }

  /** Unmount (clients holding files open make a plain unmount fail: lazy then). */
  async stop(): Promise<void> {
    if (this.session === undefined) {
      await this.shutdown();
      return;
    }
    if (!this.session.isClosed) {
      try {
        await this.session.unmount();
      } catch {
        await this.session.unmount({ lazy: true });
      }
    }
    await this.done;
  }

  // ---- FUSE handlers: the tree's nodes answer ----

  init(info: InitInfo): void {
    debug('init: proto 7.%d max_write %d', info.protoMinor, info.maxWrite);
  }

  async lookup(req: LookupIn, ctx: RequestContext): Promise<EntryOut> {
    const parent = this.tree.node(req.nodeid);
    if (parent.lookup === undefined) throw new FuseError(errno.ENOTDIR);
    return this.tree.entry(await parent.lookup(req.name, ctx));
  }

  forget(nodeid: number, n: number): void {
    this.tree.forget(nodeid, n);
  }

  getattr(req: GetattrIn): { attr: Attr; attrTimeout: number } {
    return { attr: this.tree.attr(this.tree.node(req.nodeid)), attrTimeout: TTL };
  }

  open(req: OpenIn): OpenOut {
    const nd = this.tree.node(req.nodeid);
    if (nd.open === undefined) throw (req.flags & 3) !== 0 ? new FuseError(errno.EROFS, 'read-only filesystem') : new FuseError(errno.EISDIR);
    if (this.auth !== undefined && nd.kind !== undefined && !this.auth.mayOpen(nd.kind, req.pid)) {
      debug('open of %s (inode %d) by pid %d: not authenticated', nd.kind, nd.ino, req.pid);
      throw new FuseError(errno.EACCES, `open of ${nd.kind}: pid ${req.pid} is not authenticated`);
    }
    // Every watcher can be killed (Isolation): a server that is not root can signal only its
    // own uid's processes, so only they may watch (a shared mount lets other uids reach it).
    if (nd.kind === 'watch' && this.euid !== 0 && req.uid !== this.euid) {
      this.clientWarn.line(
        'head/watch: open by another uid refused',
        `head/watch: open by pid ${req.pid} (uid ${req.uid}) refused: this server (uid ${this.euid}) could not kill it should it fail a pin — run a shared server as root`,
      );
      throw new FuseError(errno.EACCES, `open of head/watch: uid ${req.uid} is not the server's (${this.euid}), which is not root`);
    }
    const out = nd.open(req);
    // the server's own opens (commit's @<rev> lookups, the start-up probe) do not keep an
    // auto-exiting server alive, nor restart its delay: their fh says so at RELEASE
    if (this.opts.autoExit && out.fh === 0 && isOwnThread(req.pid)) return { ...out, fh: OWN_FH };
    this.opened();
    return out;
  }

  release(req: ReleaseIn): void {
    this.tree.maybeNode(req.nodeid)?.release?.(req);
    if (req.fh !== OWN_FH) this.closed1();
  }

  async read(req: ReadIn, ctx: RequestContext): Promise<Uint8Array> {
    const nd = this.tree.node(req.nodeid);
    if (nd.read === undefined) throw new FuseError(errno.EISDIR);
    return nd.read(req, ctx);
  }

  write(req: WriteIn): number {
    const nd = this.tree.node(req.nodeid);
    if (nd.write === undefined) throw new FuseError(errno.EROFS);
    return nd.write(req);
  }

  opendir(): OpenOut {
    return { fh: 0 };
  }

  readdir(req: ReaddirIn): DirEntry[] {
    const nd: FsNode = this.tree.node(req.nodeid);
    if (nd.readdir === undefined) throw new FuseError(errno.ENOTDIR);
    return [{ name: '.', ino: nd.ino, mode: S_IFDIR }, { name: '..', ino: INO_ROOT, mode: S_IFDIR }, ...nd.readdir()];
  }

  statfs(): { bsize: number; frsize: number; namemax: number } {
    return { bsize: 2 << 20, frsize: 2 << 20, namemax: 255 };
  }

  // ---- head/watch ----

  private openWatch(req: OpenIn): OpenOut {
    const id = this.nextLinkId++;
    const link = WatchLink.open(id, req.pid, {
      request: (l, stream, r) => this.isolation.handleRequest(l, stream, r.foid, r.at),
      down: (l, reason, npending) => {
        this.stats.WatchLink--;
        this.isolation.linkDown(l, reason, npending);
      },
      log: this.log,
    });
    this.isolation.linkOpened(link);
    this.links.set(id, link);
    this.stats.WatchLink++;
    debug('wlink %d: open by pid %d (%s)', id, req.pid, link.proc);
    return { fh: id, openFlags: FOPEN_STREAM | FOPEN_NONSEEKABLE | FOPEN_DIRECT_IO };
  }

  // ---- .wcfs/auth (auth.ts) ----

  private openAuth(req: OpenIn): OpenOut {
    const auth = this.auth!;
    let slot: AuthSlot;
    try {
      slot = auth.linkOpen(req.pid);
    } catch (e) {
      this.clientWarn.line('.wcfs/auth: open refused', `.wcfs/auth: open by pid ${req.pid} refused: ${(e as Error).message}`);
      throw e;
    }
    const id = this.nextLinkId++;
    let link: WatchLink<AuthRequest>;
    try {
      link = WatchLink.open<AuthRequest>(id, req.pid, {
        name: 'alink',
        parse: parseAuthRequest,
        redact: redactAuth,
        request: (l, stream, r, tid) => this.authRequest(l, slot, stream, r, tid),
        down: () => auth.linkDown(slot),
        log: this.log,
      });
    } catch (e) {
      auth.linkReleased(slot);
      throw e;
    }
    this.authLinks.set(id, { link, slot });
    debug('alink %d: open by pid %d', id, req.pid);
    return { fh: id, openFlags: FOPEN_STREAM | FOPEN_NONSEEKABLE | FOPEN_DIRECT_IO };
  }

  private authRequest(l: WatchLink<AuthRequest>, slot: AuthSlot, stream: bigint, r: AuthRequest, tid: number): Promise<void> {
    if (r.kind === 'unknown') return l.send(0n, AUTH_UNKNOWN);
    let res;
    try {
      res = this.auth!.authenticate(slot, tid, r.key);
    } catch (e) {
      // the writer is blocked in our WRITE, so alive: only a /proc or pidfd failure gets here
      this.stats.authfail++;
      this.warn(`${l}: authentication by thread ${tid}: ${(e as Error).message}`);
      return l.send(stream, AUTH_INVALID);
    }
    if (res.ok) {
      debug('%s: pid of thread %d authenticated', l, tid);
      return l.send(stream, AUTH_OK);
    }
    this.stats.authfail++;
    this.clientWarn.line('.wcfs/auth: authentication failed', `${l}: authentication by pid ${res.pid} failed: ${res.why}`);
    return l.send(stream, AUTH_INVALID);
  }

  private authLink(fh: number): WatchLink<AuthRequest> {
    const a = this.authLinks.get(fh);
    if (a === undefined) throw new FuseError(errno.EBADF);
    return a.link;
  }

  private link(fh: number): WatchLink {
    const link = this.links.get(fh);
    if (link === undefined) throw new FuseError(errno.EBADF);
    return link;
  }

  /**
   * @<rev>/bigfile/<oid> with an inode the kernel knows (commit.ts 3b stores into it): if the
   * kernel holds no lookup of it, the path is looked up through our own mount on a native
   * thread (Kernel.residency of nothing: a stat) — the LOOKUPs it makes are answered here
   * meanwhile, as for upstream's lockRevFile (which opens it). Undefined when it cannot be had.
   */
  private async revFileKnown(rev: Tid, foid: Oid): Promise<BigFile | undefined> {
    const have = this.tree.revFile(rev, foid);
    if (have !== undefined && have.nlookup > 0) {
      this.tree.touch(rev);
      return have;
    }
    if (this.stopping || this.kernel.isClosed) return undefined;
    if (!this.tree.hasView(rev) && this.tree.sizes().views >= MAX_VIEWS_FOR_STORE) {
      debug('store @%s/%s: %d views exist, none is created for a store', hex16(rev), hex16(foid), MAX_VIEWS_FOR_STORE);
      return undefined;
    }
    const rel = `@${hex16(rev)}/bigfile/${hex16(foid)}`;
    if (this.storeLookups >= STORE_LOOKUPS_MAX)
      await new Promise<void>((r) => this.storeLookupQ.push(r)); // handed a slot
    else this.storeLookups++;
    try {
      await withTimeout(this.kernel.residency(rel, 0, 0), STORE_LOOKUP_TIMEOUT_MS, rel); // the open goes on (bounded by the pin timeout)
    } catch (e) {
      debug('store: lookup %s: %s', rel, (e as Error).message);
      return undefined;
    } finally {
      const next = this.storeLookupQ.shift();
      if (next !== undefined)
        next(); // the slot goes to the next one
      else this.storeLookups--;
    }
    const f = this.tree.revFile(rev, foid);
    return f !== undefined && f.nlookup > 0 ? f : undefined;
  }

  // ---- pack (notes.md, Server "Pack while serving") ----

  /**
   * The storage was packed under us and follows the packed file. Revisions below packedTo are
   * refused from now on (synchronously: no new lookup, load or watch gets through); then,
   * under headMu W (no ΔFtail query in flight, no pin being computed), ΔFtail forgets the
   * history below it and the links of watchers at such revisions are closed; then the
   * kernel's dentries of @<rev>/ views below it are dropped (tree.ts invalPackedViews).
   */
  private packed(packedTo: Tid): void {
    if (packedTo <= this.head.packedTo || this.stopping) return;
    this.head.packedTo = packedTo;
    this.log(`wcfs: ${this.zurl}: database packed: history before @${hex16(packedTo)} is gone; @<rev>/ and watches below it are refused from now on`);
    void (async () => {
      const head = this.head;
      await head.uploads.lockExclusive();
      try {
        head.deltaFtail.forgetPast(packedTo);
        this.isolation.packed(packedTo);
      } finally {
        head.uploads.unlockExclusive();
      }
      // not under headMu: INVAL_ENTRY locks the root directory, which a LOOKUP may hold
      await this.tree.invalPackedViews(packedTo, () => this.stopping);
    })().catch((e) => this.fatal(e as Error));
  }

  // ---- sweep ----

  /**
   * Every gcInterval: idle @rev/ views (tree.ts, I7); every untrackInterval: untracking (step
   * 5). One sweep at a time; a sweep whose turn comes while the same one is still queued is
   * skipped.
   */
  private sweep(kind: 'views' | 'untrack'): void {
    if (this.stopping || this.sweepQueued.has(kind)) return;
    this.sweepQueued.add(kind);
    this.sweeps = this.sweeps.then(async () => {
      this.sweepQueued.delete(kind);
      if (this.stopping) return;
      try {
        if (kind === 'views') await this.tree.sweepViews(this.gcIntervalMs, () => this.stopping);
        else await this.untracker.sweep(() => this.stopping);
      } catch (e) {
        if (!this.stopping) this.warn(`sweep (${kind}): ${(e as Error).message}`);
      }
    });
  }

  // ---- 4) failure, shutdown ----

  private fatal(err: Error): void {
    if (this.fatalErr !== undefined || this.stopping) return;
    this.fatalErr = err;
    this.log(`wcfs: ${this.zurl}: zwatcher failed: ${err.message}`);
    this.log(`wcfs: ${this.zurl}: switching filesystem to EIO mode`);
    const aborted = this.session === undefined ? Promise.resolve() : this.session.abort();
    void aborted
      .catch((e) => this.log(`wcfs: abort: ${(e as Error).message}`))
      .finally(() => {
        this.opts.onFatal?.(err);
        void this.shutdown();
      });
  }

  get failed(): Error | undefined {
    return this.fatalErr;
  }

  private async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.autoExitTimer) clearTimeout(this.autoExitTimer);
    if (this.gcTimer) clearInterval(this.gcTimer);
    if (this.untrackTimer) clearInterval(this.untrackTimer);
    this.watch?.close();
    this.unsubPacked?.();
    for (const l of this.links.values()) l.shutdown('server stopped');
    this.links.clear();
    for (const a of this.authLinks.values()) a.link.shutdown('server stopped');
    this.zhead?.close();
    this.clientWarn.close();
    await this.storage.close().catch(() => {});
    debug('stopped');
    this.resolveDone();
  }

  private checkKernel(info: InitInfo): void {
    if ((info.want & FUSE_CAP.EXPLICIT_INVAL_DATA) === 0) {
      this.warn(
        'kernel does not support FUSE_EXPLICIT_INVAL_DATA (Linux ≥ 5.2): the page cache of a file is dropped on every size change — performance will be AWFUL',
      );
    }
  }

  private warn(msg: string): void {
    this.log(`wcfs: ${this.zurl}: ${msg}`);
  }

  /** What is odd about a ZBigFile (ZBigFileView.warnings): logged once per file oid. */
  private fileWarnings(view: ZBigFileView): void {
    if (this.warnedFiles.has(view.oid)) return;
    this.warnedFiles.add(view.oid);
    for (const w of view.warnings) this.warn(`warning: ${w}`);
  }

  // ---- auto-exit ----

  /** Files open by anyone but this process (auto-exit). */
  private opened(): void {
    this.openCount++;
    if (this.autoExitTimer) {
      clearTimeout(this.autoExitTimer);
      this.autoExitTimer = undefined;
    }
  }

  private closed1(): void {
    this.openCount--;
    if (this.opts.autoExit && this.openCount === 0) this.armAutoExit(this.opts.autoExitDelayMs ?? 2000);
  }

  private armAutoExit(ms: number): void {
    if (this.autoExitTimer) clearTimeout(this.autoExitTimer);
    this.autoExitTimer = setTimeout(() => {
      if (this.openCount === 0) {
        debug('auto-exit: no open files');
        void this.stop();
      }
    }, ms);
    this.autoExitTimer.unref();
  }

  // ---- stats ----

  statsText(): string {
    this.stats.PinnedBlk = this.isolation.pinnedBlocks();
    const t = this.tree.sizes();
    this.stats.RevHead = t.views;
    this.stats.RevFile = t.viewFiles;
    const δ = this.head.deltaFtail.sizes();
    this.stats.TrackedBlk = δ.trackedBlocks;
    this.stats.History = δ.history;
    this.stats.ReadFast = this.kernel.blockCache.served();
    const [p50, p99] = this.pinRtt.quantiles(performance.now(), [0.5, 0.99]);
    this.stats.PinRttP50 = Math.round((p50 ?? 0) * 1000);
    this.stats.PinRttP99 = Math.round((p99 ?? 0) * 1000);
    if (this.auth !== undefined) {
      const a = this.auth.sizes();
      this.stats.AuthLink = a.links;
      this.stats.AuthProc = a.procs;
    }
    return Object.entries(this.stats)
      .map(([k, v]) => `${k}\t: ${v}\n`)
      .join('');
  }
}

/** ZODB-layer errors reaching a FUSE reply: storage trouble is EIO (logged). */
function mapZodbError(err: unknown): { errno: number; log: 'no' | 'warn' | 'error' } | undefined {
  if (isCode(err, 'WCFS_EPACKED')) return { errno: errno.EIO, log: 'warn' }; // a clear message, no stack
  if (err instanceof WcfsError) return { errno: errno.EIO, log: 'error' };
  return undefined;
}
