// The op table: for each opcode that reaches JS, how to decode the native positional fields
// into a kernel-named request (kernel.ts), which FileSystem method handles it (fs.ts), what
// to answer when the filesystem has no such method (the defaults — ENOSYS for most — are
// all here), how to send the handler's result as the reply, and how to print both for
// `DEBUG=wcfs:fuse`. session.ts dispatches through this table only.
//
// Ops that never reach JS: FORGET/BATCH_FORGET (answered natively, counts delivered as
// forget events), FLUSH (answered 0 natively), INTERRUPT (an event), INIT/DESTROY (events),
// NOTIFY_REPLY (completes notifyRetrieve), and everything not listed in native/fuse.cc
// MakeOps (ENOSYS from libfuse).

import type { NativeFuseSession } from '../native.js';
import { FuseError } from './errors.js';
import type { AttrOut, DirEntry, EntryOut, FileSystem, OpenOut, RequestContext, StatfsOut, Attr, Awaitable } from './fs.js';
import {
  ATTR_ATIME,
  ATTR_BLKSIZE,
  ATTR_BLOCKS,
  ATTR_CTIME,
  ATTR_GID,
  ATTR_INO,
  ATTR_LEN,
  ATTR_MODE,
  ATTR_MTIME,
  ATTR_NLINK,
  ATTR_RDEV,
  ATTR_SIZE,
  ATTR_UID,
  errno,
  FUSE_GETATTR,
  FUSE_LOOKUP,
  FUSE_OPEN,
  FUSE_OPENDIR,
  FUSE_READ,
  FUSE_READDIR,
  FUSE_RELEASE,
  FUSE_RELEASEDIR,
  FUSE_STATFS,
  FUSE_WRITE,
  S_IFDIR,
  STATFS_LEN,
  type GetattrIn,
  type InHeader,
  type LookupIn,
  type OpendirIn,
  type OpenIn,
  type ReaddirIn,
  type ReadIn,
  type ReleasedirIn,
  type ReleaseIn,
  type Request,
  type StatfsIn,
  type WriteIn,
} from './kernel.js';

/** The native positional request fields after the header ones (see NativeFuseHandlers.request). */
export interface RawFields {
  fh: number;
  offset: number;
  size: number;
  flags: number;
  arg: string | Buffer | undefined;
}

type Handler<R, Out> = (req: R, ctx: RequestContext) => Awaitable<Out>;

export interface OpSpec<R extends Request = Request, Out = unknown> {
  opcode: number;
  name: R['op'];
  decode(h: InHeader, f: RawFields): R;
  /** The filesystem's handler, or undefined → `fallback`. */
  handler(fs: FileSystem): Handler<R, Out> | undefined;
  fallback(req: R): Out;
  /** Sends `out` as the reply; returns the native rc (see NativeFuseSession). */
  reply(nat: NativeFuseSession, req: R, out: Out): number;
  fmtIn(req: R): string;
  fmtOut(out: Out): string;
}

function def<R extends Request, Out>(spec: OpSpec<R, Out>): OpSpec<R, Out> {
  return spec;
}

const enosys = (): never => {
  throw new FuseError(errno.ENOSYS);
};

// ---- attribute packing (native copies the array synchronously, so one scratch suffices) ----

const attrScratch = new Float64Array(ATTR_LEN);

export function packAttr(a: Attr, out = attrScratch): Float64Array {
  out.fill(0);
  out[ATTR_INO] = a.ino;
  out[ATTR_MODE] = a.mode;
  out[ATTR_NLINK] = a.nlink ?? 1;
  out[ATTR_UID] = a.uid ?? 0;
  out[ATTR_GID] = a.gid ?? 0;
  out[ATTR_RDEV] = a.rdev ?? 0;
  out[ATTR_SIZE] = a.size ?? 0;
  out[ATTR_BLOCKS] = a.blocks ?? 0;
  out[ATTR_BLKSIZE] = a.blksize ?? 0;
  if (a.atime) ((out[ATTR_ATIME] = a.atime.sec), (out[ATTR_ATIME + 1] = a.atime.nsec));
  if (a.mtime) ((out[ATTR_MTIME] = a.mtime.sec), (out[ATTR_MTIME + 1] = a.mtime.nsec));
  if (a.ctime) ((out[ATTR_CTIME] = a.ctime.sec), (out[ATTR_CTIME + 1] = a.ctime.nsec));
  return out;
}

const fmtAttr = (a: Attr) => `{ino=${a.ino} mode=0${a.mode.toString(8)} size=${a.size ?? 0}}`;
const fmtOpen = (o: OpenOut) => `fh=${o.fh ?? 0} openFlags=0x${(o.openFlags ?? 0).toString(16)}`;

/** Smallest READDIR dirent: 24-byte header + 1-byte name, 8-aligned. */
const MIN_DIRENT = 32;

export const OPS: ReadonlyMap<number, OpSpec<any, any>> = new Map<number, OpSpec<any, any>>([
  [
    FUSE_LOOKUP,
    def<LookupIn, EntryOut>({
      opcode: FUSE_LOOKUP,
      name: 'LOOKUP',
      decode: (h, f) => ({ ...h, op: 'LOOKUP', name: f.arg as string }),
      handler: (fs) => fs.lookup,
      fallback: (): EntryOut => {
        throw new FuseError(errno.ENOENT);
      },
      reply: (nat, req, out: EntryOut) =>
        nat.replyEntry(req.id, out.nodeid, out.generation ?? 0, out.entryTimeout ?? 1, out.attrTimeout ?? 1, packAttr(out.attr)),
      fmtIn: (r) => `nodeid=${r.nodeid} ${JSON.stringify(r.name)}`,
      fmtOut: (o) => `nodeid=${o.nodeid} ${fmtAttr(o.attr)}`,
    }),
  ],
  [
    FUSE_GETATTR,
    def<GetattrIn, AttrOut>({
      opcode: FUSE_GETATTR,
      name: 'GETATTR',
      decode: (h, f) => (f.fh >= 0 ? { ...h, op: 'GETATTR', fh: f.fh } : { ...h, op: 'GETATTR' }),
      handler: (fs) => fs.getattr,
      // Without getattr only the root exists (so that a bare mount can at least be stat'ed).
      fallback: (req): AttrOut => {
        if (req.nodeid === 1) return { attr: { ino: 1, mode: S_IFDIR | 0o755, nlink: 2 } };
        throw new FuseError(errno.ENOSYS);
      },
      reply: (nat, req, out: AttrOut) => nat.replyAttr(req.id, packAttr(out.attr), out.attrTimeout ?? 1),
      fmtIn: (r) => `nodeid=${r.nodeid}${r.fh === undefined ? '' : ` fh=${r.fh}`}`,
      fmtOut: (o) => fmtAttr(o.attr),
    }),
  ],
  [
    FUSE_OPEN,
    def<OpenIn, OpenOut>({
      opcode: FUSE_OPEN,
      name: 'OPEN',
      decode: (h, f) => ({ ...h, op: 'OPEN', flags: f.flags }),
      handler: (fs) => fs.open,
      fallback: (): OpenOut => ({}), // libfuse's default: fh 0, no flags
      reply: (nat, req, out: OpenOut) => nat.replyOpen(req.id, out.fh ?? 0, out.openFlags ?? 0),
      fmtIn: (r) => `nodeid=${r.nodeid} flags=0${r.flags.toString(8)}`,
      fmtOut: fmtOpen,
    }),
  ],
  [
    FUSE_READ,
    def<ReadIn, Uint8Array>({
      opcode: FUSE_READ,
      name: 'READ',
      decode: (h, f) => ({ ...h, op: 'READ', fh: f.fh, offset: f.offset, size: f.size, flags: f.flags }),
      handler: (fs) => fs.read,
      fallback: enosys,
      reply: (nat, req, out: Uint8Array) => nat.replyData(req.id, out.length > req.size ? out.subarray(0, req.size) : out),
      fmtIn: (r) => `nodeid=${r.nodeid} fh=${r.fh} off=${r.offset} size=${r.size}`,
      fmtOut: (o) => `${o.length} bytes`,
    }),
  ],
  [
    FUSE_WRITE,
    def<WriteIn, number>({
      opcode: FUSE_WRITE,
      name: 'WRITE',
      decode: (h, f) => ({ ...h, op: 'WRITE', fh: f.fh, offset: f.offset, size: f.size, flags: f.flags, data: f.arg as Buffer }),
      handler: (fs) => fs.write,
      fallback: enosys,
      reply: (nat, req, n: number) => nat.replyWrite(req.id, n),
      fmtIn: (r) => `nodeid=${r.nodeid} fh=${r.fh} off=${r.offset} size=${r.size}`,
      fmtOut: (n) => `${n} written`,
    }),
  ],
  [
    FUSE_RELEASE,
    def<ReleaseIn, void>({
      opcode: FUSE_RELEASE,
      name: 'RELEASE',
      decode: (h, f) => ({ ...h, op: 'RELEASE', fh: f.fh, flags: f.flags }),
      handler: (fs) => fs.release,
      fallback: () => undefined,
      reply: (nat, req) => nat.replyErr(req.id, 0),
      fmtIn: (r) => `nodeid=${r.nodeid} fh=${r.fh}`,
      fmtOut: () => 'ok',
    }),
  ],
  [
    FUSE_OPENDIR,
    def<OpendirIn, OpenOut>({
      opcode: FUSE_OPENDIR,
      name: 'OPENDIR',
      decode: (h, f) => ({ ...h, op: 'OPENDIR', flags: f.flags }),
      handler: (fs) => fs.opendir,
      fallback: (): OpenOut => ({}),
      reply: (nat, req, out: OpenOut) => nat.replyOpen(req.id, out.fh ?? 0, out.openFlags ?? 0),
      fmtIn: (r) => `nodeid=${r.nodeid}`,
      fmtOut: fmtOpen,
    }),
  ],
  [
    FUSE_READDIR,
    def<ReaddirIn, DirEntry[]>({
      opcode: FUSE_READDIR,
      name: 'READDIR',
      decode: (h, f) => ({ ...h, op: 'READDIR', fh: f.fh, offset: f.offset, size: f.size }),
      handler: (fs) => fs.readdir,
      fallback: enosys,
      reply: (nat, req, all: DirEntry[]) => {
        // Entry i continues at offset i+1; send [offset, …) — native packs what fits.
        const win = all.slice(req.offset, req.offset + Math.floor(req.size / MIN_DIRENT));
        const rc = nat.replyReaddir(
          req.id,
          req.size,
          win.map((e) => e.name),
          win.map((e) => e.ino),
          win.map((e) => e.mode),
          win.map((_, i) => req.offset + i + 1),
        );
        return rc < 0 ? rc : 0;
      },
      fmtIn: (r) => `nodeid=${r.nodeid} fh=${r.fh} off=${r.offset} size=${r.size}`,
      fmtOut: (all) => `${all.length} entries`,
    }),
  ],
  [
    FUSE_RELEASEDIR,
    def<ReleasedirIn, void>({
      opcode: FUSE_RELEASEDIR,
      name: 'RELEASEDIR',
      decode: (h, f) => ({ ...h, op: 'RELEASEDIR', fh: f.fh, flags: f.flags }),
      handler: (fs) => fs.releasedir,
      fallback: () => undefined,
      reply: (nat, req) => nat.replyErr(req.id, 0),
      fmtIn: (r) => `nodeid=${r.nodeid} fh=${r.fh}`,
      fmtOut: () => 'ok',
    }),
  ],
  [
    FUSE_STATFS,
    def<StatfsIn, StatfsOut>({
      opcode: FUSE_STATFS,
      name: 'STATFS',
      decode: (h) => ({ ...h, op: 'STATFS' }),
      handler: (fs) => fs.statfs,
      fallback: (): StatfsOut => ({}), // zeros, namemax 255: `df` works
      reply: (nat, req, o: StatfsOut) => {
        const a = new Float64Array(STATFS_LEN);
        a.set([o.bsize ?? 0, o.frsize ?? 0, o.blocks ?? 0, o.bfree ?? 0, o.bavail ?? 0, o.files ?? 0, o.ffree ?? 0, o.favail ?? 0, o.namemax ?? 255]);
        return nat.replyStatfs(req.id, a);
      },
      fmtIn: (r) => `nodeid=${r.nodeid}`,
      fmtOut: (o) => `bsize=${o.bsize ?? 0}`,
    }),
  ],
]);
