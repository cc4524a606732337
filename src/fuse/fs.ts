// What a filesystem served through FuseSession implements: small optional per-op interfaces
// (go-fuse's NodeLookuper, NodeReader, … — here at request level, keyed by nodeid/fh), and
// the values handlers return. The session turns a returned value into the reply, and a
// thrown error into an errno (errors.ts toErrno) — handlers never reply themselves, so each
// request is answered exactly once. Missing handlers get the defaults of ops.ts (ENOSYS for
// most). A handler may return a value or a Promise; a synchronous value is replied at once.

import type { GetattrIn, InitInfo, LookupIn, OpendirIn, OpenIn, ReaddirIn, ReadIn, ReleasedirIn, ReleaseIn, StatfsIn, WriteIn } from './kernel.js';

export type Awaitable<T> = T | Promise<T>;

/** Per-request context: the cancellation of an interrupted request (FUSE_INTERRUPT). */
export interface RequestContext {
  /** Aborted when the kernel interrupts the request (e.g. the client got a signal). */
  readonly signal: AbortSignal;
  /** True once interrupted; may be true already when the handler starts. */
  readonly interrupted: boolean;
}

export interface Timespec {
  sec: number;
  nsec: number;
}

/** struct stat as far as FUSE carries it. Omitted fields are 0 (nlink: 1). */
export interface Attr {
  ino: number;
  mode: number; // S_IF* | permission bits
  size?: number;
  nlink?: number;
  uid?: number;
  gid?: number;
  rdev?: number;
  blocks?: number; // 512-byte units
  blksize?: number; // power of two; wcfs: the ZBigFile block size
  atime?: Timespec;
  mtime?: Timespec;
  ctime?: Timespec;
}

export interface EntryOut {
  /** nodeid; 0 = negative entry (cached for entryTimeout). */
  nodeid: number;
  generation?: number;
  attr: Attr;
  entryTimeout?: number; // seconds [1]
  attrTimeout?: number; // seconds [1]
}

export interface AttrOut {
  attr: Attr;
  attrTimeout?: number; // seconds [1]
}

export interface OpenOut {
  fh?: number; // [0]
  /** FOPEN_* bits (kernel.ts), e.g. FOPEN_KEEP_CACHE or FOPEN_STREAM|FOPEN_NONSEEKABLE|FOPEN_DIRECT_IO. */
  openFlags?: number;
}

export interface DirEntry {
  name: string;
  ino: number;
  mode: number; // only S_IFMT bits matter (d_type)
}

export interface StatfsOut {
  bsize?: number;
  frsize?: number;
  blocks?: number;
  bfree?: number;
  bavail?: number;
  files?: number;
  ffree?: number;
  favail?: number;
  namemax?: number; // [255]
}

export interface Lookuper {
  lookup(req: LookupIn, ctx: RequestContext): Awaitable<EntryOut>;
}
export interface Getattrer {
  getattr(req: GetattrIn, ctx: RequestContext): Awaitable<AttrOut>;
}
export interface Opener {
  open(req: OpenIn, ctx: RequestContext): Awaitable<OpenOut>;
}
export interface Reader {
  /** Data from req.offset; at most req.size bytes are sent (a longer result is cut). */
  read(req: ReadIn, ctx: RequestContext): Awaitable<Uint8Array>;
}
export interface Writer {
  /** Bytes written. */
  write(req: WriteIn, ctx: RequestContext): Awaitable<number>;
}
export interface Releaser {
  release(req: ReleaseIn, ctx: RequestContext): Awaitable<void>;
}
export interface Opendirer {
  opendir(req: OpendirIn, ctx: RequestContext): Awaitable<OpenOut>;
}
export interface Readdirer {
  /**
   * The whole listing of directory req.nodeid; the session sends the window the kernel asks
   * for (entry i gets offset i+1). Include '.'/'..' if they should be listed.
   */
  readdir(req: ReaddirIn, ctx: RequestContext): Awaitable<DirEntry[]>;
}
export interface Releasedirer {
  releasedir(req: ReleasedirIn, ctx: RequestContext): Awaitable<void>;
}
export interface Statfser {
  statfs(req: StatfsIn, ctx: RequestContext): Awaitable<StatfsOut>;
}
/** The kernel dropped `nlookup` references to nodeid (already answered; no reply). */
export interface Forgetter {
  forget(nodeid: number, nlookup: number): void;
}
/** Lifecycle: INIT negotiated / the session is going away. */
export interface Initer {
  init(info: InitInfo): void;
}
export interface Destroyer {
  destroy(): void;
}

export type FileSystem = Partial<
  Lookuper & Getattrer & Opener & Reader & Writer & Releaser & Opendirer & Readdirer & Releasedirer & Statfser & Forgetter & Initer & Destroyer
>;
