// FUSE protocol vocabulary: opcodes, FOPEN_* / FUSE_CAP_* bits, file modes, errno, the fixed
// layouts shared with native/fuse.cc, and the request types.
//
// Requests are one discriminated union on `op` (the kernel's opcode name) whose fields carry
// the kernel's names (include/uapi/linux/fuse.h: fuse_in_header.nodeid/uid/gid/pid,
// fuse_read_in.fh/offset/size/flags, …) — the model is go-fuse's fuse.ReadIn & co.
// `id` is ours (a per-session counter that keys the reply), not the kernel's `unique`.

import os from 'node:os';

// ---- opcodes (enum fuse_opcode) ----
export const FUSE_LOOKUP = 1;
export const FUSE_FORGET = 2;
export const FUSE_GETATTR = 3;
export const FUSE_OPEN = 14;
export const FUSE_READ = 15;
export const FUSE_WRITE = 16;
export const FUSE_STATFS = 17;
export const FUSE_RELEASE = 18;
export const FUSE_FLUSH = 25;
export const FUSE_INIT = 26;
export const FUSE_OPENDIR = 27;
export const FUSE_READDIR = 28;
export const FUSE_RELEASEDIR = 29;
export const FUSE_INTERRUPT = 36;
export const FUSE_DESTROY = 38;
export const FUSE_BATCH_FORGET = 42;

// ---- fuse_open_out.open_flags ----
/** Bypass the page cache for this open file (no mmap). */
export const FOPEN_DIRECT_IO = 1 << 0;
/** Don't invalidate the data cache on open (wcfs: bigfiles, static files). */
export const FOPEN_KEEP_CACHE = 1 << 1;
/** The file is not seekable (pread/lseek fail with ESPIPE). */
export const FOPEN_NONSEEKABLE = 1 << 2;
/** Allow caching this directory. */
export const FOPEN_CACHE_DIR = 1 << 3;
/** Stream: no file position, no f_pos lock — a read and a write on one fd don't serialize. */
export const FOPEN_STREAM = 1 << 4;
/** Don't flush on close. */
export const FOPEN_NOFLUSH = 1 << 5;

// ---- fuse_conn_info.capable / want (libfuse FUSE_CAP_*, not the kernel's INIT flags) ----
export const FUSE_CAP = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  DONT_MASK: 1 << 6,
  SPLICE_WRITE: 1 << 7,
  SPLICE_MOVE: 1 << 8,
  SPLICE_READ: 1 << 9,
  FLOCK_LOCKS: 1 << 10,
  IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12,
  READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  POSIX_ACL: 1 << 19,
  HANDLE_KILLPRIV: 1 << 20,
  CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24,
  EXPLICIT_INVAL_DATA: 1 << 25,
  EXPIRE_ONLY: 1 << 26,
} as const;

/** Names of the FUSE_CAP bits set in `caps`. */
export function capNames(caps: number): string[] {
  return Object.entries(FUSE_CAP)
    .filter(([, bit]) => (caps & bit) !== 0)
    .map(([name]) => name);
}

// ---- file modes ----
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;

// ---- errno (positive numbers, as FUSE replies want them) ----
export const errno = os.constants.errno;

/** 'ENOENT' for 2, …; `E<n>` when unknown (the registry's reverse map of os.constants.errno). */
export { errnoName } from '../errors.js';

// ---- fixed layouts shared with native/fuse.cc ----
export const ATTR_INO = 0;
export const ATTR_MODE = 1;
export const ATTR_NLINK = 2;
export const ATTR_UID = 3;
export const ATTR_GID = 4;
export const ATTR_RDEV = 5;
export const ATTR_SIZE = 6;
export const ATTR_BLOCKS = 7;
export const ATTR_BLKSIZE = 8;
export const ATTR_ATIME = 9; // sec, nsec
export const ATTR_MTIME = 11; // sec, nsec
export const ATTR_CTIME = 13; // sec, nsec
export const ATTR_LEN = 15;

export const STATFS_LEN = 9; // bsize, frsize, blocks, bfree, bavail, files, ffree, favail, namemax

export const INIT_PROTO_MAJOR = 0;
export const INIT_PROTO_MINOR = 1;
export const INIT_CAPABLE = 2;
export const INIT_WANT = 3;
export const INIT_MAX_WRITE = 4;
export const INIT_MAX_READ = 5;
export const INIT_MAX_READAHEAD = 6;
export const INIT_MAX_BACKGROUND = 7;
export const INIT_CONGESTION_THRESHOLD = 8;
export const INIT_TIME_GRAN = 9;
export const INIT_LIBFUSE_VERSION = 10;

/** What INIT negotiated (libfuse's view of fuse_conn_info after our init callback). */
export interface InitInfo {
  protoMajor: number;
  protoMinor: number; // the kernel's minor (libfuse 3.14 itself speaks 7.38)
  capable: number; // FUSE_CAP_* the kernel offers
  want: number; // FUSE_CAP_* we asked for
  maxWrite: number; // also the cap of one NOTIFY_RETRIEVE
  maxRead: number; // 0: no max_read mount option
  maxReadahead: number;
  maxBackground: number;
  congestionThreshold: number;
  timeGran: number;
  libfuseVersion: number; // e.g. 314
}

export function decodeInit(a: Float64Array): InitInfo {
  return {
    protoMajor: a[INIT_PROTO_MAJOR]!,
    protoMinor: a[INIT_PROTO_MINOR]!,
    capable: a[INIT_CAPABLE]!,
    want: a[INIT_WANT]!,
    maxWrite: a[INIT_MAX_WRITE]!,
    maxRead: a[INIT_MAX_READ]!,
    maxReadahead: a[INIT_MAX_READAHEAD]!,
    maxBackground: a[INIT_MAX_BACKGROUND]!,
    congestionThreshold: a[INIT_CONGESTION_THRESHOLD]!,
    timeGran: a[INIT_TIME_GRAN]!,
    libfuseVersion: a[INIT_LIBFUSE_VERSION]!,
  };
}

// ---- requests ----

/** fuse_in_header, minus opcode/unique/len; plus our reply key `id`. */
export interface InHeader {
  id: number;
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

export interface LookupIn extends InHeader {
  op: 'LOOKUP';
  name: string; // in directory `nodeid`
}
export interface GetattrIn extends InHeader {
  op: 'GETATTR';
  fh?: number; // fuse_getattr_in.fh when FUSE_GETATTR_FH (fstat of an open file)
}
export interface OpenIn extends InHeader {
  op: 'OPEN';
  flags: number; // open(2) flags
}
export interface ReadIn extends InHeader {
  op: 'READ';
  fh: number;
  offset: number;
  size: number;
  flags: number; // open(2) flags of the file
}
export interface WriteIn extends InHeader {
  op: 'WRITE';
  fh: number;
  offset: number;
  size: number;
  flags: number;
  data: Buffer; // a private copy; `size` bytes
}
export interface ReleaseIn extends InHeader {
  op: 'RELEASE';
  fh: number;
  flags: number;
}
export interface OpendirIn extends InHeader {
  op: 'OPENDIR';
  flags: number;
}
export interface ReaddirIn extends InHeader {
  op: 'READDIR';
  fh: number;
  offset: number; // 0, or the `off` of the last entry returned before
  size: number; // reply buffer size in bytes
}
export interface ReleasedirIn extends InHeader {
  op: 'RELEASEDIR';
  fh: number;
  flags: number;
}
export interface StatfsIn extends InHeader {
  op: 'STATFS';
}

/** Every request that reaches JS and expects a reply. */
export type Request = LookupIn | GetattrIn | OpenIn | ReadIn | WriteIn | ReleaseIn | OpendirIn | ReaddirIn | ReleasedirIn | StatfsIn;

export type OpName = Request['op'];
