// WcfsServer — the wcfs filesystem: every ZBigFile of a ZODB database, as of head and as of
// any revision, kept exactly in step with the database (wcfs-server.md §1, §3).
//
// Tree (inode numbers of the fixed nodes in brackets):
//   / [1]  head/ [2]  head/bigfile/ [3]  head/at [4]  head/watch [5]
//          .wcfs/ [6]  .wcfs/zurl [7]  .wcfs/pintimeout [8]  .wcfs/stats [9]
//          @<rev>/ , @<rev>/bigfile/ , */bigfile/<oid>      created on lookup; @<rev> views
//          are forgotten when the kernel forgets them (I7)
//
// 1) Views. head/ is the database at `headAt`; @<rev>/ at rev. A BigFile (bigfile.ts) is one
//    ZBigFile in one view. Loads go straight to the storage at the view's revision.
// 2) READ of a bigfile: clamp to the size, load the blocks in range (once per block for all
//    concurrent readers), reply, then upload each whole block into the page cache
//    (notifyStore) asynchronously — never from inside the READ (the kernel holds its pages
//    locked). Head blocks are tracked in ΔFtail before their data reaches the kernel.
//    READ fast path: once a block's data is set in its `loading` entry (head: after ΔFtail
//    tracking and readPinWatchers), the block — clamped to the file size — is registered in
//    the session's blockCache (src/fuse/session.ts 6), so READs wholly inside it are answered
//    on the libfuse worker without coming here. Every removal from `loading` goes through
//    dropLoading, which unregisters first. Why this serves exactly what JS would:
//      - a registered range is the entry's data, which is what readBlocks replies for any
//        READ inside it (the same loading entry, clamped to the same size); the native path
//        marks `served` the way markServed does, so the upload stays correct.
//      - head: the data changes only in commit processing, whose step 3a takes every changed
//        block's entry (takeOldBlock → dropLoading) before step 3b invalidates it in the page
//        cache; drop waits for fast replies in flight, so a reply sent from the old data
//        lands before the invalidation and is removed by it, and any READ after the drop
//        goes to JS and waits for headMu. No load is in flight during 3a (I3), so no block
//        is registered meanwhile; a block loaded after 3a holds the new data. Blocks past a
//        shrunk end are dropped too (ΔFtail reports them as unchanged holes); unchanged
//        blocks stay valid as they are.
//      - @rev: never changes; entries are dropped after the upload (or the load failure).
// 3) Commit processing (handleCommits), one batch of storage commit events at a time (those
//    queued when the first arrives), in three steps:
//    3a headMu exclusive, uploads paused and drained: δF = ΔFtail.update(δZ) per commit, in
//       order; for each block of a head file changed in the batch take the old data out of
//       `loading` (or RETRIEVE it from the kernel, which locks no page) if
//       @<oldHead>/bigfile/<oid> is known to the kernel; compute new sizes; then, in one
//       synchronous step, advance headAt, sizes, views and mtimes to the last tid. Unlock.
//    3b no lock: store the old data into @<oldHead>/bigfile/<oid>, invalidate every changed
//       block in head's page cache, and the attributes of every touched file.
//    3c publish: head/at shows the new head, head waiters (watch requests, @rev lookups
//       ahead of head) wake.
// 4) A change of a tracked ZBigFile object itself (blksize or blktab replaced) is fatal, as
//    is any failure of the storage watch or of an invalidation: the server logs it, aborts
//    the FUSE connection (clients get ENOTCONN — never stale data) and reports onFatal.
//
// Invariants:
//   I1 (ΔFtail) a head block may be in the page cache ⇒ it is tracked (track in step 2 before
//      the reply, under headMu shared; step 3b invalidates every reported block).
//   I2 headAt, head sizes and head views change only at the end of step 3a, synchronously,
//      so GETATTR (served without the lock) sees either the old or the new state, and every
//      READ that gets headMu after 3a is answered from the new head.
//   I3 a head block load holds headMu shared until it completes (rlockNested), even if the
//      READ that started it was interrupted: no load straddles a commit.
//   I4 uploadsInflight > 0 ⇒ commit processing does not hold headMu (pause protocol,
//      §3.5.3): an upload may wait on a page locked by a READ that waits for headMu.
//   I5 publishedAt = headAt except between 3a and 3c, where publishedAt = the old head: a
//      client learns of a revision (head/at, watch `@at`, `@at/` ahead of head) only after
//      head's page cache holds nothing older for it. Pages of changed blocks that are
//      still cached between 3a and 3b are seen only by plain readers of head (no isolation)
//      and by clients at older revisions, each of which is pinned before it can see new
//      data (READs pin in step 2, against headAt).
//   I6 no deadlock with the kernel's page locks: the kernel locks a page, then sends READ,
//      which takes headMu shared. So headMu is never held exclusively by code that waits for
//      a page lock (3a waits for storage loads and RETRIEVE only; uploads, STORE and
//      INVAL_INODE run without headMu); and while 3b waits for a page lock, no one holds or
//      waits for headMu exclusively (commits are processed one at a time), so the READ that
//      holds the page gets headMu, is answered (from the new head, I2) and unlocks the page.
//   I7 view @rev is in `revs` ⇐ the kernel holds a lookup of its directory, its bigfile/
//      directory or one of its files, or a file of it is open, loading or being created;
//      when none holds any more it is collected (collectView, on FORGET and RELEASE, and by
//      the periodic sweep, which also asks the kernel to drop idle views: INVAL_ENTRY).
//
// Lock order: kernel page lock → headMu (a READ). headMu is held exclusively only in 3a,
// which, once it holds it, waits for no page lock and no client; shared holders may wait for a client's pin
// ack (bounded by the pin timeout), never for a page lock.
// Never touches its own mount from this (the serving) thread: see src/fuse/session.ts.

import createDebug from 'debug';
import { DeltaFtail } from '../deltatail/deltaFtail.js';
import { isCode, WcfsError } from '../errors.js';
import { FuseError } from '../fuse/errors.js';
import type { Attr, DirEntry, EntryOut, FileSystem, OpenOut, RequestContext } from '../fuse/fs.js';
import {
  errno, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NONSEEKABLE, FOPEN_STREAM, FUSE_CAP, S_IFDIR, S_IFREG,
  type GetattrIn, type InitInfo, type LookupIn, type OpenIn, type ReaddirIn, type ReadIn, type ReleaseIn, type WriteIn,
} from '../fuse/kernel.js';
import { FuseSession, type MountOptions } from '../fuse/session.js';
import { StorageLoader, type ObjectLoader } from '../zodb/db.js';
import { hex16, tidToDate, type Oid, type Tid } from '../zodb/ids.js';
import { openStorage } from '../zodb/open.js';
import type { CommitEvent, IStorage, StorageWatch } from '../zodb/storage.js';
import { ZBigFileView } from '../zodb/zbigfile.js';
import { BigFile, markServed, unservedRuns, type LoadingEntry } from './bigfile.js';
import { Isolation } from './isolation.js';
import { sleep } from '../util/async.js';
import { logLine } from '../util/log.js';
import { Event, RWMutex } from './lock.js';
import { WatchLink } from './watchlink.js';

const debug = createDebug('wcfs:server');
const debugCommit = createDebug('wcfs:server:commit');

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
  /** Storage options (tests poll faster). */
  storagePollMs?: number;
  /** Extra FUSE mount options. */
  mount?: Partial<MountOptions>;
  /** Warnings and errors [stderr]. */
  log?: (line: string) => void;
  /** Called once on a fatal error, after the FUSE connection was aborted. */
  onFatal?: (err: Error) => void;
}

const INO_ROOT = 1;
const INO_HEAD = 2;
const INO_HEAD_BIGFILE = 3;
const INO_HEAD_AT = 4;
const INO_HEAD_WATCH = 5;
const INO_WCFS = 6;
const INO_ZURL = 7;
const INO_PINTIMEOUT = 8;
const INO_STATS = 9;
const INO_FIRST_DYNAMIC = 16;

const TTL = 1; // entry and attr timeout, seconds (upstream: go-fuse defaults)
const UPLOAD_DELAY_MS = 2; // see uploadHead
const MAX_BATCH = 256; // commit events processed in one pass (serveCommits)
const EMPTY = new Uint8Array(0);

type Node =
  | { kind: 'root' | 'head' | 'wcfs'; ino: number }
  | { kind: 'rev'; ino: number; rev: Tid; bigfileDir: number }
  | { kind: 'bigfileDir'; ino: number; rev: Tid | null }
  | { kind: 'bigfile'; ino: number; file: BigFile }
  | { kind: 'small'; ino: number; content: () => Uint8Array; direct: boolean }
  | { kind: 'watch'; ino: number };

interface RevView {
  rev: Tid;
  dir: number;
  bigfileDir: number;
  files: Map<Oid, BigFile>;
  /** Date.now() of the last lookup or open in this view (the sweep leaves fresh views be). */
  used: number;
}

/** 3b's work for one changed head block (from 3a). */
interface BlockInval {
  f: BigFile;
  blk: number;
  /** The block's data as of oldHead, to store into @<oldHead>/bigfile/<oid> (revFile). */
  old?: Uint8Array;
  revFile?: BigFile;
}

interface CommitPlan {
  blocks: BlockInval[];
  /** Head files in δF: their attributes (size, mtime) are invalidated in 3b. */
  touched: BigFile[];
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
}

export class WcfsServer implements FileSystem {
  readonly zurl: string;
  readonly mountpoint: string;
  readonly pinTimeout: number;
  session!: FuseSession;
  /** Resolves when the filesystem stops being served (unmounted or fatal). */
  readonly done: Promise<void>;

  private readonly storage: IStorage;
  private readonly loader: ObjectLoader;
  private readonly log: (line: string) => void;
  private readonly opts: ServerOptions;

  // ---- head state: guarded by headMu (W: commit processing 3a; R: reads, lookups) ----
  private readonly headMu = new RWMutex();
  /** The head READs serve and isolation works against (I2). */
  private headAt: Tid;
  private readonly deltaFtail: DeltaFtail;
  private readonly headFiles = new Map<Oid, BigFile>();
  // ---- published head: changed only in step 3c, on the JS thread (I5) ----
  /** head/at; what head waiters wait for. publishedAt ≤ headAt, equal outside 3a-3c. */
  private publishedAt: Tid;
  private headWaiters: Array<{ at: Tid; ev: Event }> = [];

  // ---- upload pause protocol (§3.5.3) ----
  private pauseUploads = false;
  private uploadsInflight = 0;
  private uploadsResume = new Event();
  private uploadsDrained: Event | undefined;

  // ---- tables: head entries are kept forever (as upstream), @rev views until unused (I7) ----
  private readonly nodes = new Map<number, Node>();
  private readonly nlookup = new Map<number, number>();
  private readonly revs = new Map<Tid, RevView>();
  private readonly creating = new Map<string, Promise<BigFile>>();
  private nextIno = INO_FIRST_DYNAMIC;

  /** Open head/watch handles by fh (until RELEASE); a closed link still answers EOF. */
  private readonly links = new Map<number, WatchLink>();
  private nextLinkId = 1;
  private readonly stats: Stats = { BigFile: 0, RevHead: 0, ZHeadLink: 0, WatchLink: 0, Watch: 0, PinnedBlk: 0, pin: 0, pinkill: 0, RevFile: 0, TrackedBlk: 0, History: 0 };

  private readonly isolation: Isolation;
  private watch: StorageWatch | undefined;
  private fatalErr: Error | undefined;
  private stopping = false;
  private openCount = 0;
  private autoExitTimer: NodeJS.Timeout | undefined;
  private readonly gcIntervalMs: number;
  private gcTimer: NodeJS.Timeout | undefined;
  private sweeping = false;
  private resolveDone!: () => void;

  private constructor(opts: ServerOptions, storage: IStorage) {
    this.opts = opts;
    this.zurl = opts.zurl;
    this.mountpoint = opts.mountpoint;
    this.pinTimeout = opts.pinTimeout ?? 30;
    this.gcIntervalMs = opts.gcIntervalMs ?? 10_000;
    this.log = opts.log ?? logLine;
    this.storage = storage;
    this.loader = new StorageLoader(storage);
    this.headAt = storage.head();
    this.publishedAt = this.headAt;
    this.deltaFtail = new DeltaFtail(this.headAt, this.loader);
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    this.isolation = new Isolation({
      headMu: this.headMu,
      deltaFtail: this.deltaFtail,
      headAt: () => this.headAt,
      headFile: (foid) => this.headFiles.get(foid),
      waitHead: (at, signal) => this.waitHead(at, signal),
      pinTimeoutMs: this.pinTimeout * 1000,
      stats: this.stats,
      log: this.log,
      fatal: (e) => this.fatal(e),
    });
    this.initTree();
  }

  /** Open the database, mount, start following commits (§3.3). */
  static async start(opts: ServerOptions): Promise<WcfsServer> {
    const storage = await openStorage(opts.zurl, { readOnly: true, fs1: opts.storagePollMs !== undefined ? { pollMs: opts.storagePollMs } : {} });
    const srv = new WcfsServer(opts, storage);
    try {
      srv.session = await FuseSession.mount(opts.mountpoint, srv, {
        fsname: opts.zurl,
        subtype: 'wcfs',
        log: srv.log,
        mapError: mapZodbError,
        ...opts.mount,
      });
    } catch (e) {
      await storage.close();
      throw e;
    }
    srv.checkKernel(srv.session.init);
    srv.watch = storage.watch(srv.headAt);
    void srv.serveCommits();
    void srv.session.closed.then(() => srv.shutdown());
    if (opts.autoExit) srv.armAutoExit(10_000);
    srv.gcTimer = setInterval(() => void srv.sweepViews(), srv.gcIntervalMs);
    srv.gcTimer.unref();
    debug('serving %s on %s @%s', opts.zurl, opts.mountpoint, hex16(srv.headAt));
    return srv;
  }

  /** Unmount (clients holding files open make a plain unmount fail: lazy then). */
  async stop(): Promise<void> {
    if (!this.session.isClosed) {
      try {
        await this.session.unmount();
      } catch {
        await this.session.unmount({ lazy: true });
      }
    }
    await this.done;
  }

  // ---- 0) tree ----

  private initTree(): void {
    const n = (node: Node) => this.nodes.set(node.ino, node);
    n({ kind: 'root', ino: INO_ROOT });
    n({ kind: 'head', ino: INO_HEAD });
    n({ kind: 'bigfileDir', ino: INO_HEAD_BIGFILE, rev: null });
    n({ kind: 'small', ino: INO_HEAD_AT, content: () => Buffer.from(hex16(this.publishedAt)), direct: true });
    n({ kind: 'watch', ino: INO_HEAD_WATCH });
    n({ kind: 'wcfs', ino: INO_WCFS });
    n({ kind: 'small', ino: INO_ZURL, content: () => Buffer.from(this.zurl), direct: false });
    n({ kind: 'small', ino: INO_PINTIMEOUT, content: () => Buffer.from(this.pinTimeout.toFixed(1)), direct: false });
    n({ kind: 'small', ino: INO_STATS, content: () => Buffer.from(this.statsText()), direct: true });
  }

  private node(ino: number): Node {
    const nd = this.nodes.get(ino);
    if (nd === undefined) throw new FuseError(errno.ENOENT, `inode ${ino} unknown`);
    return nd;
  }

  private attrOf(nd: Node): Attr {
    switch (nd.kind) {
      case 'root':
      case 'wcfs':
        return { ino: nd.ino, mode: S_IFDIR | 0o755, nlink: 2 };
      case 'bigfileDir':
        return { ino: nd.ino, mode: S_IFDIR | 0o755, nlink: 2 };
      case 'head': {
        const t = tidTime(this.publishedAt);
        return { ino: nd.ino, mode: S_IFDIR | 0o555, nlink: 2, mtime: t, ctime: t };
      }
      case 'rev': {
        const t = tidTime(nd.rev);
        return { ino: nd.ino, mode: S_IFDIR | 0o555, nlink: 2, mtime: t, ctime: t };
      }
      case 'bigfile': {
        const f = nd.file;
        const t = tidTime(f.revApprox);
        return { ino: nd.ino, mode: S_IFREG | 0o444, size: f.size, blksize: f.blksize, blocks: Math.ceil(f.size / 512), mtime: t, ctime: t };
      }
      case 'small':
        return { ino: nd.ino, mode: S_IFREG | 0o644, size: nd.content().length };
      case 'watch':
        return { ino: nd.ino, mode: S_IFREG | 0o644, size: 0 };
    }
  }

  private entry(nd: Node): EntryOut {
    this.nlookup.set(nd.ino, (this.nlookup.get(nd.ino) ?? 0) + 1);
    if (nd.kind === 'bigfile') nd.file.nlookup++;
    return { nodeid: nd.ino, attr: this.attrOf(nd), entryTimeout: TTL, attrTimeout: TTL };
  }

  // ---- FUSE handlers ----

  init(info: InitInfo): void {
    debug('init: proto 7.%d max_write %d', info.protoMinor, info.maxWrite);
  }

  async lookup(req: LookupIn, ctx: RequestContext): Promise<EntryOut> {
    const parent = this.node(req.nodeid);
    const name = req.name;
    switch (parent.kind) {
      case 'root':
        if (name === 'head') return this.entry(this.node(INO_HEAD));
        if (name === '.wcfs') return this.entry(this.node(INO_WCFS));
        return this.entry(await this.revDir(name, ctx));
      case 'head':
        if (name === 'at') return this.entry(this.node(INO_HEAD_AT));
        if (name === 'watch') return this.entry(this.node(INO_HEAD_WATCH));
        if (name === 'bigfile') return this.entry(this.node(INO_HEAD_BIGFILE));
        throw new FuseError(errno.ENOENT);
      case 'rev':
        if (name === 'bigfile') return this.entry(this.node(parent.bigfileDir));
        throw new FuseError(errno.ENOENT);
      case 'wcfs':
        if (name === 'zurl') return this.entry(this.node(INO_ZURL));
        if (name === 'pintimeout') return this.entry(this.node(INO_PINTIMEOUT));
        if (name === 'stats') return this.entry(this.node(INO_STATS));
        throw new FuseError(errno.ENOENT);
      case 'bigfileDir': {
        const foid = parseOidName(name);
        const f = await this.bigFile(parent.rev, foid, ctx);
        return this.entry(this.node(f.ino));
      }
      default:
        throw new FuseError(errno.ENOTDIR);
    }
  }

  forget(nodeid: number, n: number): void {
    const left = (this.nlookup.get(nodeid) ?? 0) - n;
    if (left > 0) this.nlookup.set(nodeid, left);
    else this.nlookup.delete(nodeid);
    const nd = this.nodes.get(nodeid);
    if (nd?.kind === 'bigfile') nd.file.nlookup = Math.max(0, nd.file.nlookup - n);
    const rev = nd === undefined ? null : nd.kind === 'rev' ? nd.rev : nd.kind === 'bigfileDir' ? nd.rev : nd.kind === 'bigfile' ? nd.file.rev : null;
    if (rev !== null) this.collectView(rev);
  }

  getattr(req: GetattrIn): { attr: Attr; attrTimeout: number } {
    return { attr: this.attrOf(this.node(req.nodeid)), attrTimeout: TTL };
  }

  open(req: OpenIn): OpenOut {
    const nd = this.node(req.nodeid);
    const accmode = req.flags & 3;
    if (nd.kind === 'watch') {
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
      this.opened();
      debug('wlink %d: open by pid %d (%s)', id, req.pid, link.proc);
      return { fh: id, openFlags: FOPEN_STREAM | FOPEN_NONSEEKABLE | FOPEN_DIRECT_IO };
    }
    if (accmode !== 0) throw new FuseError(errno.EROFS, 'read-only filesystem');
    if (nd.kind === 'bigfile') {
      nd.file.nopen++;
      if (nd.file.rev !== null) {
        const v = this.revs.get(nd.file.rev);
        if (v !== undefined) v.used = Date.now();
      }
      this.opened();
      return { fh: 0, openFlags: FOPEN_KEEP_CACHE };
    }
    if (nd.kind === 'small') {
      this.opened();
      return { fh: 0, openFlags: nd.direct ? FOPEN_DIRECT_IO : FOPEN_KEEP_CACHE };
    }
    throw new FuseError(errno.EISDIR);
  }

  release(req: ReleaseIn): void {
    const nd = this.nodes.get(req.nodeid);
    if (nd?.kind === 'watch') {
      this.links.get(req.fh)?.release();
      this.links.delete(req.fh);
    }
    if (nd?.kind === 'bigfile') {
      nd.file.nopen--;
      if (nd.file.rev !== null) this.collectView(nd.file.rev);
    }
    this.closed1();
  }

  async read(req: ReadIn, ctx: RequestContext): Promise<Uint8Array> {
    const nd = this.node(req.nodeid);
    switch (nd.kind) {
      case 'bigfile':
        return this.readBigfile(nd.file, req.offset, req.size, ctx.signal);
      case 'small': {
        const c = nd.content();
        return req.offset >= c.length ? EMPTY : c.subarray(req.offset, req.offset + req.size);
      }
      case 'watch': {
        const link = this.links.get(req.fh);
        if (link === undefined) throw new FuseError(errno.EBADF);
        return link.read(req.size, ctx.signal, req.pid);
      }
      default:
        throw new FuseError(errno.EISDIR);
    }
  }

  write(req: WriteIn): number {
    const nd = this.node(req.nodeid);
    if (nd.kind !== 'watch') throw new FuseError(errno.EROFS);
    const link = this.links.get(req.fh);
    if (link === undefined) throw new FuseError(errno.EBADF);
    return link.write(req.data, req.pid);
  }

  opendir(): OpenOut {
    return { fh: 0 };
  }

  readdir(req: ReaddirIn): DirEntry[] {
    const nd = this.node(req.nodeid);
    const dir = (name: string, ino: number): DirEntry => ({ name, ino, mode: S_IFDIR });
    const reg = (name: string, ino: number): DirEntry => ({ name, ino, mode: S_IFREG });
    const out: DirEntry[] = [dir('.', nd.ino), dir('..', INO_ROOT)];
    switch (nd.kind) {
      case 'root':
        out.push(dir('head', INO_HEAD), dir('.wcfs', INO_WCFS));
        for (const v of this.revs.values()) out.push(dir('@' + hex16(v.rev), v.dir));
        break;
      case 'head':
        out.push(reg('at', INO_HEAD_AT), reg('watch', INO_HEAD_WATCH), dir('bigfile', INO_HEAD_BIGFILE));
        break;
      case 'rev':
        out.push(dir('bigfile', nd.bigfileDir));
        break;
      case 'wcfs':
        out.push(reg('zurl', INO_ZURL), reg('pintimeout', INO_PINTIMEOUT), reg('stats', INO_STATS));
        break;
      case 'bigfileDir': {
        const files = nd.rev === null ? this.headFiles : this.revs.get(nd.rev)!.files;
        for (const f of files.values()) out.push(reg(hex16(f.foid), f.ino));
        break;
      }
      default:
        throw new FuseError(errno.ENOTDIR);
    }
    return out;
  }

  statfs(): { bsize: number; frsize: number; namemax: number } {
    return { bsize: 2 << 20, frsize: 2 << 20, namemax: 255 };
  }

  // ---- 1) views ----

  private async revDir(name: string, ctx: RequestContext): Promise<Node> {
    if (!/^@[0-9a-f]{16}$/.test(name)) throw new FuseError(errno.EINVAL, `${JSON.stringify(name)}: not @rev`);
    const rev = BigInt('0x' + name.slice(1));
    const have = this.revs.get(rev);
    if (have !== undefined) {
      have.used = Date.now();
      return this.node(have.dir);
    }
    // A view ahead of head would show data that can still change: wait until head reaches it.
    await this.waitHead(rev, ctx.signal, this.pinTimeout * 1000);
    const again = this.revs.get(rev);
    if (again !== undefined) {
      again.used = Date.now();
      return this.node(again.dir);
    }
    const v: RevView = { rev, dir: this.nextIno++, bigfileDir: this.nextIno++, files: new Map(), used: Date.now() };
    this.revs.set(rev, v);
    this.nodes.set(v.dir, { kind: 'rev', ino: v.dir, rev, bigfileDir: v.bigfileDir });
    this.nodes.set(v.bigfileDir, { kind: 'bigfileDir', ino: v.bigfileDir, rev });
    return this.node(v.dir);
  }

  /**
   * Forget view rev if nothing refers to it any more (I7): the kernel forgot its inodes (FUSE
   * FORGET), no file of it is open, no load or upload of it is in flight, none is being
   * created. Its inode numbers are never reused; a later lookup builds a fresh view.
   */
  private collectView(rev: Tid): void {
    const v = this.revs.get(rev);
    if (v === undefined) return;
    if (this.nlookup.has(v.dir) || this.nlookup.has(v.bigfileDir)) return;
    for (const f of v.files.values()) if (f.nlookup > 0 || f.nopen > 0 || f.loading.size > 0) return;
    const prefix = hex16(rev) + '/';
    for (const key of this.creating.keys()) if (key.startsWith(prefix)) return;
    this.revs.delete(rev);
    this.nodes.delete(v.dir);
    this.nodes.delete(v.bigfileDir);
    for (const f of v.files.values()) {
      this.nodes.delete(f.ino);
      this.nlookup.delete(f.ino);
    }
    debug('@%s: view forgotten (%d files)', hex16(rev), v.files.size);
  }

  /**
   * The kernel keeps dentries (so inodes, so our views) until memory gets short: every
   * gcInterval, ask it to drop the dentry of each @rev/ view unused for that long with no
   * file open (INVAL_ENTRY); the FORGETs that follow collect the view. One notification at
   * a time: INVAL_ENTRY locks the root directory, which a LOOKUP there may hold (bounded by
   * the pin timeout) — commit processing never needs that lock.
   */
  private async sweepViews(): Promise<void> {
    if (this.sweeping || this.stopping) return;
    this.sweeping = true;
    try {
      const idle = Date.now() - this.gcIntervalMs;
      for (const v of [...this.revs.values()]) {
        if (this.stopping || this.session.isClosed) return;
        this.collectView(v.rev);
        if (!this.revs.has(v.rev) || v.used > idle) continue;
        if ([...v.files.values()].some((f) => f.nopen > 0)) continue;
        try {
          await this.session.notifier.invalEntry(INO_ROOT, '@' + hex16(v.rev));
        } catch (err) {
          if ((err as { errno?: number }).errno !== errno.ENOENT) debug('sweep @%s: %s', hex16(v.rev), (err as Error).message);
        }
      }
    } finally {
      this.sweeping = false;
    }
  }

  /** The BigFile of foid in view rev (null = head), created on first lookup. */
  private bigFile(rev: Tid | null, foid: Oid, ctx: RequestContext): Promise<BigFile> {
    const files = rev === null ? this.headFiles : this.revs.get(rev)!.files;
    const have = files.get(foid);
    if (have !== undefined) return Promise.resolve(have);
    const key = `${rev === null ? 'head' : hex16(rev)}/${hex16(foid)}`;
    let p = this.creating.get(key);
    if (p === undefined) {
      p = this.createBigFile(rev, foid, files).finally(() => this.creating.delete(key));
      this.creating.set(key, p);
    }
    return p;
  }

  private async createBigFile(rev: Tid | null, foid: Oid, files: Map<Oid, BigFile>): Promise<BigFile> {
    if (rev !== null) {
      const view = await this.openView(foid, rev);
      const { size } = await view.size();
      return this.addBigFile(files, rev, foid, view, size);
    }
    // head: under headMu so that the size path is tracked in the same head as it was read
    await this.headMu.rlock();
    try {
      const view = await this.openView(foid, this.headAt);
      const { size, path } = await view.size();
      this.deltaFtail.trackFile(foid, view.blktab, path);
      this.stats.BigFile++;
      return this.addBigFile(files, null, foid, view, size);
    } finally {
      this.headMu.runlock();
    }
  }

  private addBigFile(files: Map<Oid, BigFile>, rev: Tid | null, foid: Oid, view: ZBigFileView, size: number): BigFile {
    const f = new BigFile(this.nextIno++, foid, rev, view, size, view.serial);
    files.set(foid, f);
    this.nodes.set(f.ino, { kind: 'bigfile', ino: f.ino, file: f });
    return f;
  }

  private async openView(foid: Oid, at: Tid): Promise<ZBigFileView> {
    try {
      return await ZBigFileView.open(this.loader, foid, at);
    } catch (e) {
      if (isCode(e, 'WCFS_ENOOBJ') || isCode(e, 'WCFS_ENODATA') || isCode(e, 'WCFS_ENOTZBIGFILE')) {
        throw new FuseError(errno.EINVAL, `@${hex16(at)}/bigfile/${hex16(foid)}: ${(e as Error).message}`);
      }
      throw e;
    }
  }

  // ---- 2) READ ----

  private async readBigfile(f: BigFile, off: number, size: number, signal: AbortSignal): Promise<Uint8Array> {
    if (!f.isHead) return this.readBlocks(f, off, size, signal);
    await this.headMu.rlock(signal);
    try {
      return await this.readBlocks(f, off, size, signal);
    } finally {
      this.headMu.runlock();
    }
  }

  private async readBlocks(f: BigFile, off: number, size: number, signal: AbortSignal): Promise<Uint8Array> {
    const end = Math.min(off + size, f.size);
    if (end <= off) return EMPTY; // at/after EOF: 0 bytes, as POSIX says
    const bs = f.blksize;
    const b0 = Math.floor(off / bs);
    const b1 = Math.floor((end - 1) / bs);
    const loads: Promise<Uint8Array>[] = [];
    for (let blk = b0; blk <= b1; blk++) loads.push(this.readBlk(f, blk, signal));
    const blocks = await Promise.all(loads);
    for (let blk = b0; blk <= b1; blk++) markServed(f.loading.get(blk), blk, bs, off, end);
    if (blocks.length === 1) return blocks[0]!.subarray(off - b0 * bs, end - b0 * bs);
    const parts = blocks.map((d, i) => {
      const start = (b0 + i) * bs;
      return d.subarray(Math.max(off, start) - start, Math.min(end, start + bs) - start);
    });
    return Buffer.concat(parts);
  }

  private readBlk(f: BigFile, blk: number, signal: AbortSignal): Promise<Uint8Array> {
    if (!f.isHead) {
      return f.readBlk(
        blk,
        {
          published: (b, e) => this.publishLoading(f, b, e),
          after: (b, e) => void this.uploadRev(f, b, e),
          failed: (b, e) => this.dropLoading(f, b, e),
        },
        signal,
      );
    }
    return f.readBlk(
      blk,
      {
        // I3: the load keeps headMu shared until it completes, whoever still waits for it.
        started: () => this.headMu.rlockNested(),
        settled: () => this.headMu.runlock(),
        // I1: tracked, and watchers pinned, before any reader (and so the kernel) gets the data.
        loaded: async (b) => {
          this.deltaFtail.track(f.foid, blk, b.path, b.zblk?.oid ?? null, b.revMax);
          await this.isolation.readPinWatchers(f, blk);
        },
        // after `loaded`: tracked and pinned before the kernel may get the data natively
        published: (b, e) => this.publishLoading(f, b, e),
        after: (b, e) => void this.uploadHead(f, b, e),
        failed: (b, e) => this.dropLoading(f, b, e),
      },
      signal,
    );
  }

  /** §2 fast path: serve READs inside the loaded block natively from now on. */
  private publishLoading(f: BigFile, blk: number, e: LoadingEntry): void {
    if (f.loading.get(blk) !== e || e.data === undefined) return;
    const base = blk * f.blksize;
    const len = Math.min(f.blksize, e.data.length, f.size - base);
    if (len <= 0) return;
    this.session.blockCache.put(f.ino, base, e.data.subarray(0, len), e.served);
  }

  /** The one way out of `loading`: unregisters the block from the fast path first (§2). */
  private dropLoading(f: BigFile, blk: number, e: LoadingEntry): void {
    if (f.loading.get(blk) !== e) return;
    this.session.blockCache.drop(f.ino, blk * f.blksize);
    f.loading.delete(blk);
  }

  /**
   * Upload a loaded head block into the page cache (§3.5.3), then drop it from `loading`.
   * Only the pages the kernel did not get in READ replies are stored: a sequential reader
   * gets the whole block through READs, and storing it again would copy it twice. The short
   * delay lets the READs of the rest of the block (readahead) arrive first.
   */
  private async uploadHead(f: BigFile, blk: number, e: LoadingEntry): Promise<void> {
    await sleep(UPLOAD_DELAY_MS);
    for (;;) {
      await this.headMu.rlock();
      if (!this.pauseUploads) break;
      this.headMu.runlock();
      await this.uploadsResume.wait();
    }
    if (f.loading.get(blk) !== e) {
      this.headMu.runlock(); // invalidated meanwhile: its data is stale
      return;
    }
    this.uploadsInflight++;
    this.headMu.runlock(); // I4: the upload runs without the lock
    try {
      await this.storeUnserved(f, blk, e);
    } catch (err) {
      if (!this.session.isClosed) this.warn(`BUG: head/bigfile/${hex16(f.foid)} #${blk}: upload to page cache failed: ${(err as Error).message} (reads will be slow)`);
    } finally {
      this.dropLoading(f, blk, e);
      this.uploadsInflight--;
      if (this.uploadsInflight === 0) this.uploadsDrained?.set();
    }
  }

  private async uploadRev(f: BigFile, blk: number, e: LoadingEntry): Promise<void> {
    await sleep(UPLOAD_DELAY_MS);
    try {
      await this.storeUnserved(f, blk, e);
    } catch (err) {
      if (!this.session.isClosed) this.warn(`BUG: @${hex16(f.rev!)}/bigfile/${hex16(f.foid)} #${blk}: upload to page cache failed: ${(err as Error).message}`);
    } finally {
      this.dropLoading(f, blk, e);
    }
  }

  private async storeUnserved(f: BigFile, blk: number, e: LoadingEntry): Promise<void> {
    const base = blk * f.blksize;
    for (const [a, z] of unservedRuns(e, f.blksize)) await this.session.notifier.store(f.ino, base + a, e.data!.subarray(a, z));
  }

  // ---- 3) commit processing ----

  /**
   * Commit events one batch at a time: the first event, and every one queued behind it (up
   * to MAX_BATCH) — a server that fell behind (a slow client held a commit for a pin
   * timeout) catches up in one pass of steps 3a-3c instead of one per commit.
   */
  private async serveCommits(): Promise<void> {
    const watch = this.watch!;
    const it = watch[Symbol.asyncIterator]();
    try {
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        const batch = [r.value];
        while (batch.length < MAX_BATCH && watch.ready() > 0) {
          const more = await it.next();
          if (more.done) break;
          batch.push(more.value);
        }
        await this.handleCommits(batch);
        if (this.fatalErr) return;
      }
    } catch (e) {
      this.fatal(e as Error);
    }
  }

  /** 3a: exclusive headMu with uploads paused and none in flight (§3.4 step 1). */
  private async lockForCommit(): Promise<void> {
    for (;;) {
      await this.headMu.lock();
      this.pauseUploads = true;
      if (this.uploadsInflight === 0) return;
      this.uploadsDrained = new Event();
      const drained = this.uploadsDrained;
      this.headMu.unlock();
      await drained.wait();
    }
  }

  private unlockAfterCommit(): void {
    this.pauseUploads = false;
    const resume = this.uploadsResume;
    this.uploadsResume = new Event();
    this.headMu.unlock();
    resume.set();
  }

  /**
   * A batch of commit events (ascending tids), in three steps (overview, 3):
   *   3a under headMu W (uploads drained): δF of each commit, in order; take every block
   *      changed in the batch out of `loading` and out of the fast path, with its old data
   *      (from `loading`, or RETRIEVEd from the kernel when @<oldHead> needs it); new sizes;
   *      advance headAt, views, sizes, mtimes to the last tid. Nothing here waits for a page
   *      lock.
   *   3b no lock: store the old data into @<oldHead>, invalidate the changed blocks and the
   *      attributes of touched files in head's page cache. A READ the kernel issued for one of
   *      those pages meanwhile gets headMu and is answered from the new head (I6).
   *   3c publish: head/at and head waiters see the new head only now (I5).
   */
  private async handleCommits(evs: CommitEvent[]): Promise<void> {
    let plan: CommitPlan;
    await this.lockForCommit();
    try {
      plan = await this.commitHead(evs);
    } catch (e) {
      this.fatal(e as Error);
      return;
    } finally {
      this.unlockAfterCommit();
    }
    try {
      await Promise.all(plan.blocks.map((b) => this.invalidateBlock(b)));
      await Promise.all(plan.touched.map((f) => this.invalAttr(f)));
    } catch (e) {
      this.fatal(e as Error);
      return;
    }
    const tid = evs[evs.length - 1]!.tid;
    this.publishHead(tid);
    debugCommit('head @%s (%d commits; δF: %d files, %d blocks)', hex16(tid), evs.length, plan.touched.length, plan.blocks.length);
  }

  /** 3a: under headMu W. Returns what 3b must invalidate. */
  private async commitHead(evs: CommitEvent[]): Promise<CommitPlan> {
    const oldHead = this.headAt;
    const newHead = evs[evs.length - 1]!.tid;
    const sizes = new Map<BigFile, number>();
    const changed = new Map<BigFile, Set<number>>();
    const lastChange = new Map<BigFile, Tid>(); // mtime (revApprox)
    for (const ev of evs) {
      debugCommit('δZ @%s: %d oids', hex16(ev.tid), ev.oids.length);
      const δF = await this.deltaFtail.update(ev.tid, ev.oids);
      for (const [foid, d] of δF) {
        const f = this.headFiles.get(foid);
        if (f === undefined) continue;
        lastChange.set(f, ev.tid);
        if (d.epoch) await this.checkEpoch(f, ev.tid);
        let blks = changed.get(f);
        if (blks === undefined) changed.set(f, (blks = new Set()));
        for (const blk of d.blocks) blks.add(blk);
        if (d.size) {
          const { size, path } = await f.view.withAt(ev.tid).size();
          this.deltaFtail.trackFile(foid, f.view.blktab, path);
          sizes.set(f, size);
          // §2: blocks past a shrunk end are not reported as changed; unregister them now,
          // before the kernel can learn the new size.
          for (const [b, e] of [...f.loading]) if ((b + 1) * f.blksize > size) this.dropLoading(f, b, e);
        }
      }
    }
    const takes: Promise<BlockInval>[] = [];
    for (const [f, blks] of changed) for (const blk of blks) takes.push(this.takeOldBlock(f, blk, oldHead));
    const blocks = await Promise.all(takes);
    // I2: the new head becomes visible to READs and GETATTR all at once.
    this.headAt = newHead;
    for (const f of this.headFiles.values()) f.view = f.view.withAt(newHead);
    for (const [f, size] of sizes) f.size = size;
    for (const [f, tid] of lastChange) f.revApprox = tid;
    this.deltaFtail.forgetPast(this.isolation.revCut());
    return { blocks, touched: [...lastChange.keys()] };
  }

  /**
   * 3a for one changed block: out of `loading` and the fast path (the uploader must not store
   * stale data, nor the fast path serve it; the drop waits for fast replies in flight), and
   * its old data when @<oldHead> has the file looked up. RETRIEVE takes no page lock.
   */
  private async takeOldBlock(f: BigFile, blk: number, oldHead: Tid): Promise<BlockInval> {
    const bs = f.blksize;
    let old: Uint8Array | undefined;
    const e = f.loading.get(blk);
    if (e !== undefined) {
      old = e.data;
      this.dropLoading(f, blk, e);
    }
    const revFile = this.revs.get(oldHead)?.files.get(f.foid);
    if (revFile === undefined || revFile.nlookup === 0) return { f, blk };
    if (old === undefined) {
      try {
        old = await this.session.notifier.retrieve(f.ino, blk * bs, bs);
      } catch (err) {
        debugCommit('retrieve %s #%d: %s', hex16(f.foid), blk, (err as Error).message);
      }
    }
    return old !== undefined && old.length === bs ? { f, blk, old, revFile } : { f, blk };
  }

  /** 3c: head/at and head waiters move to tid. */
  private publishHead(tid: Tid): void {
    this.publishedAt = tid;
    const waiters = this.headWaiters;
    this.headWaiters = [];
    for (const w of waiters) {
      if (w.at <= tid) w.ev.set();
      else this.headWaiters.push(w);
    }
  }

  private async checkEpoch(f: BigFile, tid: Tid): Promise<void> {
    const nv = await ZBigFileView.open(this.loader, f.foid, tid);
    if (nv.blksize !== f.view.blksize || nv.blktab !== f.view.blktab) {
      throw new WcfsError(
        'WCFS_EEPOCH',
        `ZBigFile ${hex16(f.foid)} changed @${hex16(tid)} (blksize ${f.view.blksize}→${nv.blksize}, blktab ${hex16(f.view.blktab)}→${hex16(nv.blktab)}): not supported`,
      );
    }
  }

  /** 3b for one block: keep the old data for @<oldHead>, then drop the block from head's cache. */
  private async invalidateBlock(b: BlockInval): Promise<void> {
    const bs = b.f.blksize;
    const off = b.blk * bs;
    if (b.old !== undefined && b.revFile !== undefined) {
      try {
        await this.session.notifier.store(b.revFile.ino, off, b.old);
      } catch (err) {
        debugCommit('store @%s/%s #%d: %s', hex16(b.revFile.rev!), hex16(b.f.foid), b.blk, (err as Error).message);
      }
    }
    try {
      await this.session.notifier.invalInode(b.f.ino, off, bs);
    } catch (err) {
      if ((err as { errno?: number }).errno !== errno.ENOENT) throw err; // ENOENT: nothing cached
    }
  }

  private async invalAttr(f: BigFile): Promise<void> {
    try {
      await this.session.notifier.invalInode(f.ino, -1, 0);
    } catch (err) {
      if ((err as { errno?: number }).errno !== errno.ENOENT) throw err;
    }
  }

  /** Wait until head ≥ at (§3.8); with timeoutMs: EINVAL when head does not get there. */
  private async waitHead(at: Tid, signal: AbortSignal, timeoutMs?: number): Promise<void> {
    if (at <= this.publishedAt) return;
    const ev = new Event();
    this.headWaiters.push({ at, ev });
    const t = timeoutMs === undefined ? undefined : AbortSignal.timeout(timeoutMs);
    try {
      await ev.wait(t === undefined ? signal : AbortSignal.any([signal, t]));
    } catch (e) {
      if (t?.aborted && !signal.aborted) throw new FuseError(errno.EINVAL, `@${hex16(at)}: revision is ahead of head @${hex16(this.publishedAt)}`);
      throw e;
    } finally {
      this.headWaiters = this.headWaiters.filter((w) => w.ev !== ev);
    }
  }

  // ---- 4) failure, shutdown ----

  private fatal(err: Error): void {
    if (this.fatalErr !== undefined || this.stopping) return;
    this.fatalErr = err;
    this.log(`wcfs: ${this.zurl}: zwatcher failed: ${err.message}`);
    this.log(`wcfs: ${this.zurl}: switching filesystem to EIO mode`);
    void this.session
      .abort()
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
    this.watch?.close();
    for (const l of this.links.values()) l.shutdown('server stopped');
    this.links.clear();
    await this.storage.close().catch(() => {});
    debug('stopped');
    this.resolveDone();
  }

  private checkKernel(info: InitInfo): void {
    if ((info.want & FUSE_CAP.EXPLICIT_INVAL_DATA) === 0) {
      this.warn('kernel does not support FUSE_EXPLICIT_INVAL_DATA (Linux ≥ 5.2): the page cache of a file is dropped on every size change — performance will be AWFUL');
    }
  }

  private warn(msg: string): void {
    this.log(`wcfs: ${this.zurl}: ${msg}`);
  }

  // ---- auto-exit ----

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
    this.stats.RevHead = this.revs.size;
    let nrevFiles = 0;
    for (const v of this.revs.values()) nrevFiles += v.files.size;
    this.stats.RevFile = nrevFiles;
    const δ = this.deltaFtail.sizes();
    this.stats.TrackedBlk = δ.trackedBlocks;
    this.stats.History = δ.history;
    return Object.entries(this.stats)
      .map(([k, v]) => `${k}\t: ${v}\n`)
      .join('');
  }
}

function parseOidName(name: string): Oid {
  if (!/^[0-9a-f]{16}$/.test(name)) throw new FuseError(errno.EINVAL, `${JSON.stringify(name)}: not oid`);
  return BigInt('0x' + name);
}

function tidTime(tid: Tid): { sec: number; nsec: number } {
  const ms = tidToDate(tid).getTime();
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 };
}

/** ZODB-layer errors reaching a FUSE reply: storage trouble is EIO (logged). */
function mapZodbError(err: unknown): { errno: number; log: 'no' | 'warn' | 'error' } | undefined {
  if (err instanceof WcfsError) return { errno: errno.EIO, log: 'error' };
  return undefined;
}
