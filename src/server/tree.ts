// Tree — step 1 of the server (server.ts overview): the inode table, the nodes of the tree,
// the @<rev>/ views, and the kernel's references to them (lookups, FORGET).
//
//   / [1]  head/ [2]  head/bigfile/ [3]  head/at [4]  head/watch [5]
//          .wcfs/ [6]  .wcfs/zurl [7]  .wcfs/pintimeout [8]  .wcfs/stats [9]
//          .wcfs/auth [10]                                   only with --authkeyfile
//          .wcfs/debug/ [14]  .wcfs/debug/zhead [15]              only with debugFiles (zhead.ts)
//          @<rev>/ , @<rev>/bigfile/ , */bigfile/<oid>      created on lookup
//
// Each kind of node is a small object with the operations it supports (go-fuse's per-op node
// interfaces): directories lookup and readdir, files open/read (and head/watch write).
//
// State and guards (JS thread): nodes, nlookup, views, creating, nextIno, and the block
// buffer pool every file's loads share (loads.ts BlockPool). Head files are
// added under headMu shared (head.ts); @rev views are built without it (they never change).
//
// Invariants:
//   I7 view @rev is in `views` ⇐ the kernel holds a lookup of its directory, its bigfile/
//      directory or one of its files, or a file of it is open, loading or being created;
//      when none holds any more it is collected (collectView: on FORGET, RELEASE and in the
//      periodic sweep, which also asks the kernel to drop idle views: INVAL_ENTRY).
//   Inode numbers are never reused: a late FORGET cannot hit a new node.
//   Shared with a group (TreeHost.share, `serve --share-with`): every attribute the kernel
//   gets (LOOKUP and GETATTR both go through Tree.attr) is owned by (server euid, the group)
//   with SHARE_MODES — directories 0550, head/watch and .wcfs/auth 0660, every other file 0440 — and the
//   kernel checks them (default_permissions). Unshared: the nodes' own attributes, as ever.

import createDebug from 'debug';
import { isCode } from '../errors.js';
import { FuseError } from '../fuse/errors.js';
import type { Attr, DirEntry, EntryOut, OpenOut, RequestContext } from '../fuse/fs.js';
import { errno, FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, S_IFDIR, S_IFMT, S_IFREG, type OpenIn, type ReadIn, type ReleaseIn, type WriteIn } from '../fuse/kernel.js';
import type { Notifier } from '../fuse/notifier.js';
import type { BlockCache } from '../fuse/session.js';
import type { ObjectLoader } from '../zodb/db.js';
import { hex16, tidToTimespec, type Oid, type Tid } from '../zodb/ids.js';
import { ZBigFileView } from '../zodb/zbigfile.js';
import { BigFile } from './bigfile.js';
import { BlockPool } from './loads.js';
import type { Head } from './head.js';
import type { NodeKind } from './auth.js';

const debug = createDebug('wcfs:server');

export const INO_ROOT = 1;
const INO_HEAD = 2;
const INO_HEAD_BIGFILE = 3;
const INO_HEAD_AT = 4;
const INO_HEAD_WATCH = 5;
const INO_WCFS = 6;
const INO_ZURL = 7;
const INO_PINTIMEOUT = 8;
const INO_STATS = 9;
const INO_AUTH = 10;
const INO_DEBUG = 14;
const INO_ZHEAD = 15;
const INO_FIRST_DYNAMIC = 16;

export const TTL = 1; // entry and attr timeout, seconds (upstream: go-fuse defaults)
const EMPTY = new Uint8Array(0);

/** One node of the tree: the operations it does not have answer ENOTDIR / EISDIR / EROFS. */
export interface FsNode {
  readonly ino: number;
  attr(): Attr;
  /** The @rev view the node belongs to (FORGET and RELEASE collect it). */
  readonly rev?: Tid | null;
  /** What an OPEN of it is checked against (auth.ts OPEN_RULES); directories have none. */
  readonly kind?: NodeKind;
  lookup?(name: string, ctx: RequestContext): Promise<FsNode> | FsNode;
  readdir?(): DirEntry[];
  open?(req: OpenIn): OpenOut;
  read?(req: ReadIn, ctx: RequestContext): Promise<Uint8Array> | Uint8Array;
  write?(req: WriteIn): number;
  release?(req: ReleaseIn): void;
}

/** What the tree needs from the rest of the server. */
export interface TreeHost {
  readonly zurl: string;
  readonly pinTimeout: number;
  readonly head: Head;
  readonly loader: ObjectLoader;
  readonly kernel: { readonly notifier: Notifier; readonly blockCache: BlockCache; readonly isClosed: boolean };
  readonly stats: { BigFile: number };
  statsText(): string;
  /** READ of a bigfile (reads.ts). */
  readBigfile(f: BigFile, off: number, size: number, signal: AbortSignal): Promise<Uint8Array>;
  /** head/watch: a file handle is a watch link (wlink.ts). */
  readonly watch: Pick<FsNode, 'open' | 'read' | 'write' | 'release'>;
  /** .wcfs/auth, when authentication is on (auth.ts): a file handle is an auth link. */
  readonly auth?: Pick<FsNode, 'open' | 'read' | 'write' | 'release'>;
  /** .wcfs/debug/zhead: a file handle is a reader of processed commits (zhead.ts); with it, .wcfs/debug/ exists. */
  readonly zhead?: Pick<FsNode, 'open' | 'read' | 'release'>;
  /** A ZBigFile view was opened: the host reports its warnings (once per file). */
  fileWarnings?(view: ZBigFileView): void;
  /** Owner of every node when shared with a group (`serve --share-with`); absent: private mount. */
  readonly share?: { uid: number; gid: number };
}

/** Permission bits of a shared mount: owner and group only, nothing for others. */
/** --share-with modes: links (files clients write: head/watch, .wcfs/auth) are group-writable. */
export const SHARE_MODES = { dir: 0o550, file: 0o440, link: 0o660 } as const;

interface RevView {
  rev: Tid;
  dir: number;
  bigfileDir: number;
  files: Map<Oid, BigFile>;
  /** Date.now() of the last lookup or open in this view (the sweep leaves fresh views be). */
  used: number;
}

const dirAttr = (ino: number, mode = 0o755, t?: { sec: number; nsec: number }): Attr =>
  t ? { ino, mode: S_IFDIR | mode, nlink: 2, mtime: t, ctime: t } : { ino, mode: S_IFDIR | mode, nlink: 2 };
const dirEnt = (name: string, ino: number): DirEntry => ({ name, ino, mode: S_IFDIR });
const regEnt = (name: string, ino: number): DirEntry => ({ name, ino, mode: S_IFREG });

export class Tree {
  private readonly nodes = new Map<number, FsNode>();
  private readonly nlookup = new Map<number, number>();
  private readonly views = new Map<Tid, RevView>();
  private readonly creating = new Map<string, Promise<BigFile>>();
  private nextIno = INO_FIRST_DYNAMIC;
  readonly pool = new BlockPool();

  constructor(private readonly host: TreeHost) {
    const h = host;
    const add = (n: FsNode) => this.nodes.set(n.ino, n);
    add({
      ino: INO_ROOT,
      attr: () => dirAttr(INO_ROOT),
      lookup: (name, ctx) => (name === 'head' ? this.node(INO_HEAD) : name === '.wcfs' ? this.node(INO_WCFS) : this.revDir(name, ctx)),
      readdir: () => [dirEnt('head', INO_HEAD), dirEnt('.wcfs', INO_WCFS), ...[...this.views.values()].map((v) => dirEnt('@' + hex16(v.rev), v.dir))],
    });
    add({
      ino: INO_HEAD,
      attr: () => dirAttr(INO_HEAD, 0o555, tidTime(h.head.publishedAt)),
      lookup: (name) => this.child(name, { at: INO_HEAD_AT, watch: INO_HEAD_WATCH, bigfile: INO_HEAD_BIGFILE }),
      readdir: () => [regEnt('at', INO_HEAD_AT), regEnt('watch', INO_HEAD_WATCH), dirEnt('bigfile', INO_HEAD_BIGFILE)],
    });
    add(new BigfileDir(this, INO_HEAD_BIGFILE, null));
    add(new SmallFile(INO_HEAD_AT, 'at', () => Buffer.from(hex16(h.head.publishedAt)), true));
    add({ ino: INO_HEAD_WATCH, kind: 'watch', attr: () => ({ ino: INO_HEAD_WATCH, mode: S_IFREG | 0o644, size: 0 }), ...h.watch });
    const wcfsNames: Record<string, number> = { zurl: INO_ZURL, pintimeout: INO_PINTIMEOUT, stats: INO_STATS };
    if (h.auth !== undefined) wcfsNames.auth = INO_AUTH;
    if (h.zhead !== undefined) {
      wcfsNames.debug = INO_DEBUG;
      add({
        ino: INO_DEBUG,
        attr: () => dirAttr(INO_DEBUG),
        lookup: (name) => this.child(name, { zhead: INO_ZHEAD }),
        readdir: () => [regEnt('zhead', INO_ZHEAD)],
      });
      add({ ino: INO_ZHEAD, kind: 'zhead', attr: () => ({ ino: INO_ZHEAD, mode: S_IFREG | 0o644, size: 0 }), ...h.zhead });
    }
    add({
      ino: INO_WCFS,
      attr: () => dirAttr(INO_WCFS),
      lookup: (name) => this.child(name, wcfsNames),
      readdir: () => Object.entries(wcfsNames).map(([n, ino]) => (ino === INO_DEBUG ? dirEnt(n, ino) : regEnt(n, ino))),
    });
    add(new SmallFile(INO_ZURL, 'zurl', () => Buffer.from(h.zurl), false));
    add(new SmallFile(INO_PINTIMEOUT, 'pintimeout', () => Buffer.from(h.pinTimeout.toFixed(1)), false));
    add(new SmallFile(INO_STATS, 'stats', () => Buffer.from(h.statsText()), true));
    if (h.auth !== undefined) add({ ino: INO_AUTH, kind: 'auth', attr: () => ({ ino: INO_AUTH, mode: S_IFREG | 0o644, size: 0 }), ...h.auth });
  }

  node(ino: number): FsNode {
    const nd = this.nodes.get(ino);
    if (nd === undefined) throw new FuseError(errno.ENOENT, `inode ${ino} unknown`);
    return nd;
  }

  /** The node, if the kernel may still refer to it (RELEASE after a collect finds nothing). */
  maybeNode(ino: number): FsNode | undefined {
    return this.nodes.get(ino);
  }

  /** A LOOKUP's reply: the kernel holds one more reference to nd. */
  entry(nd: FsNode): EntryOut {
    this.nlookup.set(nd.ino, (this.nlookup.get(nd.ino) ?? 0) + 1);
    if (nd instanceof BigFileNode) nd.file.nlookup++;
    return { nodeid: nd.ino, attr: this.attr(nd), entryTimeout: TTL, attrTimeout: TTL };
  }

  /** nd's attributes as the kernel gets them (owner and modes of a shared mount applied). */
  attr(nd: FsNode): Attr {
    const a = nd.attr();
    const sh = this.host.share;
    if (sh === undefined) return a;
    const type = a.mode & S_IFMT;
    const perm = type === S_IFDIR ? SHARE_MODES.dir : nd.kind === 'watch' || nd.kind === 'auth' ? SHARE_MODES.link : SHARE_MODES.file;
    return { ...a, mode: type | perm, uid: sh.uid, gid: sh.gid };
  }

  /** FUSE FORGET: the kernel dropped n references to nodeid. */
  forget(nodeid: number, n: number): void {
    const left = (this.nlookup.get(nodeid) ?? 0) - n;
    if (left > 0) this.nlookup.set(nodeid, left);
    else this.nlookup.delete(nodeid);
    const nd = this.nodes.get(nodeid);
    if (nd instanceof BigFileNode) nd.file.nlookup = Math.max(0, nd.file.nlookup - n);
    if (nd?.rev != null) this.collectView(nd.rev);
  }

  // ---- views ----

  /** @<rev>/bigfile/<oid> if that view and file exist now. */
  revFile(rev: Tid, foid: Oid): BigFile | undefined {
    return this.views.get(rev)?.files.get(foid);
  }

  hasView(rev: Tid): boolean {
    return this.views.has(rev);
  }

  /** Files of view rev (null = head). */
  files(rev: Tid | null): Map<Oid, BigFile> {
    return rev === null ? this.host.head.files : this.views.get(rev)!.files;
  }

  /** Sizes for .wcfs/stats: views, and files in them. */
  sizes(): { views: number; viewFiles: number } {
    let n = 0;
    for (const v of this.views.values()) n += v.files.size;
    return { views: this.views.size, viewFiles: n };
  }

  /** A view was used now (the sweep leaves it be for a while). */
  touch(rev: Tid): void {
    const v = this.views.get(rev);
    if (v !== undefined) v.used = Date.now();
  }

  private async revDir(name: string, ctx: RequestContext): Promise<FsNode> {
    if (!/^@[0-9a-f]{16}$/.test(name)) throw new FuseError(errno.EINVAL, `${JSON.stringify(name)}: not @rev`);
    const rev = BigInt('0x' + name.slice(1));
    this.host.head.checkPacked(rev, name); // packed away: new lookups fail, even of a view we still have
    const have = this.views.get(rev);
    if (have !== undefined) {
      have.used = Date.now();
      return this.node(have.dir);
    }
    // A view ahead of head would show data that can still change: wait until head reaches it.
    await this.host.head.waitFor(rev, ctx.signal, this.host.pinTimeout * 1000);
    const again = this.views.get(rev);
    if (again !== undefined) {
      again.used = Date.now();
      return this.node(again.dir);
    }
    const v: RevView = { rev, dir: this.nextIno++, bigfileDir: this.nextIno++, files: new Map(), used: Date.now() };
    this.views.set(rev, v);
    this.nodes.set(v.dir, {
      ino: v.dir,
      rev,
      attr: () => dirAttr(v.dir, 0o555, tidTime(rev)),
      lookup: (n) => this.child(n, { bigfile: v.bigfileDir }),
      readdir: () => [dirEnt('bigfile', v.bigfileDir)],
    });
    this.nodes.set(v.bigfileDir, new BigfileDir(this, v.bigfileDir, rev));
    return this.node(v.dir);
  }

  /**
   * Forget view rev if nothing refers to it any more (I7): the kernel forgot its inodes (FUSE
   * FORGET), no file of it is open, no load or upload of it is in flight, none is being
   * created. Its inode numbers are never reused; a later lookup builds a fresh view.
   */
  collectView(rev: Tid): void {
    const v = this.views.get(rev);
    if (v === undefined) return;
    if (this.nlookup.has(v.dir) || this.nlookup.has(v.bigfileDir)) return;
    for (const f of v.files.values()) if (f.nlookup > 0 || f.nopen > 0 || f.loads.size > 0) return;
    const prefix = hex16(rev) + '/';
    for (const key of this.creating.keys()) if (key.startsWith(prefix)) return;
    this.views.delete(rev);
    this.nodes.delete(v.dir);
    this.nodes.delete(v.bigfileDir);
    for (const f of v.files.values()) {
      this.nodes.delete(f.ino);
      this.nlookup.delete(f.ino);
    }
    debug('@%s: view forgotten (%d files)', hex16(rev), v.files.size);
  }

  /**
   * The kernel keeps dentries (so inodes, so our views) until memory gets short: ask it to
   * drop the dentry of each @rev/ view unused for `idleMs` with no file open (INVAL_ENTRY);
   * the FORGETs that follow collect the view. One notification at a time: INVAL_ENTRY locks
   * the root directory, which a LOOKUP there may hold (bounded by the pin timeout) — commit
   * processing never needs that lock.
   */
  async sweepViews(idleMs: number, stopping: () => boolean): Promise<void> {
    const idle = Date.now() - idleMs;
    for (const v of [...this.views.values()]) {
      if (stopping() || this.host.kernel.isClosed) return;
      this.collectView(v.rev);
      if (!this.views.has(v.rev) || v.used > idle) continue;
      if ([...v.files.values()].some((f) => f.nopen > 0)) continue;
      try {
        await this.host.kernel.notifier.invalEntry(INO_ROOT, '@' + hex16(v.rev));
      } catch (err) {
        if ((err as { errno?: number }).errno !== errno.ENOENT) debug('sweep @%s: %s', hex16(v.rev), (err as Error).message);
      }
    }
  }

  /**
   * After a pack: drop the kernel's dentries of the views below the pack boundary, so that the
   * next path lookup of `@<rev>` reaches us and gets the error (open files of them stay and
   * serve what was loaded; new block loads fail: reads.ts). One at a time, as sweepViews.
   */
  async invalPackedViews(packedTo: Tid, stopping: () => boolean): Promise<void> {
    for (const v of [...this.views.values()]) {
      if (stopping() || this.host.kernel.isClosed) return;
      if (v.rev >= packedTo) continue;
      try {
        await this.host.kernel.notifier.invalEntry(INO_ROOT, '@' + hex16(v.rev));
      } catch (err) {
        if ((err as { errno?: number }).errno !== errno.ENOENT) debug('pack: inval @%s: %s', hex16(v.rev), (err as Error).message);
      }
    }
  }

  // ---- files ----

  /** The BigFile of foid in view rev (null = head), created on first lookup. */
  bigFile(rev: Tid | null, foid: Oid): Promise<BigFile> {
    const files = this.files(rev);
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
      this.host.head.checkPacked(rev, `@${hex16(rev)}/bigfile/${hex16(foid)}`);
      const view = await this.openView(foid, rev);
      const { size } = await view.size();
      return this.addBigFile(files, rev, foid, view, size);
    }
    // head: under headMu so that the size path is tracked in the same head as it was read
    const head = this.host.head;
    await head.mu.rlock();
    try {
      const view = await this.openView(foid, head.at);
      const { size, path } = await view.size();
      head.deltaFtail.trackFile(foid, view.blktab, path);
      this.host.stats.BigFile++;
      return this.addBigFile(files, null, foid, view, size);
    } finally {
      head.mu.runlock();
    }
  }

  private addBigFile(files: Map<Oid, BigFile>, rev: Tid | null, foid: Oid, view: ZBigFileView, size: number): BigFile {
    const f = new BigFile(this.nextIno++, foid, rev, view, size, view.serial, this.host.kernel.blockCache, this.pool);
    files.set(foid, f);
    this.nodes.set(f.ino, new BigFileNode(f, this.host, this));
    return f;
  }

  private async openView(foid: Oid, at: Tid): Promise<ZBigFileView> {
    try {
      const view = await ZBigFileView.open(this.host.loader, foid, at);
      if (view.warnings.length > 0) this.host.fileWarnings?.(view);
      return view;
    } catch (e) {
      if (isCode(e, 'WCFS_ENOOBJ') || isCode(e, 'WCFS_ENODATA') || isCode(e, 'WCFS_ENOTZBIGFILE')) {
        throw new FuseError(errno.EINVAL, `@${hex16(at)}/bigfile/${hex16(foid)}: ${(e as Error).message}`);
      }
      throw e;
    }
  }

  private child(name: string, names: Record<string, number>): FsNode {
    const ino = Object.hasOwn(names, name) ? names[name] : undefined;
    if (ino === undefined) throw new FuseError(errno.ENOENT);
    return this.node(ino);
  }
}

/** head/bigfile/ and @<rev>/bigfile/: a ZBigFile per oid, looked up by name. */
class BigfileDir implements FsNode {
  constructor(
    private readonly tree: Tree,
    readonly ino: number,
    readonly rev: Tid | null,
  ) {}

  attr(): Attr {
    return dirAttr(this.ino);
  }

  async lookup(name: string): Promise<FsNode> {
    const f = await this.tree.bigFile(this.rev, parseOidName(name));
    return this.tree.node(f.ino);
  }

  readdir(): DirEntry[] {
    return [...this.tree.files(this.rev).values()].map((f) => regEnt(hex16(f.foid), f.ino));
  }
}

/** <view>/bigfile/<oid>: one BigFile. */
class BigFileNode implements FsNode {
  readonly ino: number;
  readonly kind = 'bigfile';
  readonly rev: Tid | null;

  constructor(
    readonly file: BigFile,
    private readonly host: TreeHost,
    private readonly tree: Tree,
  ) {
    this.ino = file.ino;
    this.rev = file.rev;
  }

  attr(): Attr {
    const f = this.file;
    const t = tidTime(f.revApprox);
    return { ino: f.ino, mode: S_IFREG | 0o444, size: f.size, blksize: f.blksize, blocks: Math.ceil(f.size / 512), mtime: t, ctime: t };
  }

  open(req: OpenIn): OpenOut {
    if ((req.flags & 3) !== 0) throw new FuseError(errno.EROFS, 'read-only filesystem');
    this.file.nopen++;
    if (this.rev !== null) this.tree.touch(this.rev);
    return { fh: 0, openFlags: FOPEN_KEEP_CACHE };
  }

  read(req: ReadIn, ctx: RequestContext): Promise<Uint8Array> {
    return this.host.readBigfile(this.file, req.offset, req.size, ctx.signal);
  }

  release(): void {
    this.file.nopen--;
    if (this.rev !== null) this.tree.collectView(this.rev);
  }
}

/** head/at and .wcfs/*: a few bytes made on demand. */
class SmallFile implements FsNode {
  constructor(
    readonly ino: number,
    readonly kind: NodeKind,
    private readonly content: () => Uint8Array,
    /** Served with direct I/O: the content changes (head/at, stats). */
    private readonly direct: boolean,
  ) {}

  attr(): Attr {
    return { ino: this.ino, mode: S_IFREG | 0o644, size: this.content().length };
  }

  open(req: OpenIn): OpenOut {
    if ((req.flags & 3) !== 0) throw new FuseError(errno.EROFS, 'read-only filesystem');
    return { fh: 0, openFlags: this.direct ? FOPEN_DIRECT_IO : FOPEN_KEEP_CACHE };
  }

  read(req: ReadIn): Uint8Array {
    const c = this.content();
    return req.offset >= c.length ? EMPTY : c.subarray(req.offset, req.offset + req.size);
  }
}

function parseOidName(name: string): Oid {
  if (!/^[0-9a-f]{16}$/.test(name)) throw new FuseError(errno.EINVAL, `${JSON.stringify(name)}: not oid`);
  return BigInt('0x' + name);
}

/** mtime of a tid: its TimeStamp time, rounded to microseconds as ZODB does. */
function tidTime(tid: Tid): { sec: number; nsec: number } {
  return tidToTimespec(tid);
}
