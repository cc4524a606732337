// The error registry: the base class of every wcfs error, the list of every stable code,
// and errno names.
//
// Owns:
//   WcfsError  — base of all wcfs errors; `code` is one of WcfsCode, `name` the class name.
//   BadArgumentError — the one class every layer shares (a malformed argument).
//   WcfsCode   — every 'WCFS_E…' code used anywhere (TS and native/). A new code is added
//                here first, with the layer that throws it.
//   isCode     — the guard callers decide with: isCode(e, 'WCFS_ENOOBJ').
//   errnoName  — errno number → name ('ENOENT'), from os.constants.errno (every name Node
//                knows); native/ gets the same table (src/native.ts), so native errno errors
//                carry the same names.
//
// Rules:
//   - decide on codes (or classes), never on message text: messages are for people and may
//     be reworded; where two cases must be told apart, they get two codes;
//   - each layer keeps its classes in its own errors module, all extending WcfsError:
//     src/zodb/errors.ts (+ fs1/errors.ts), src/fuse/errors.ts, src/watchlink/errors.ts
//     (both sides of the watch link), src/client/errors.ts; the control path
//     (src/control/) and the server throw WcfsError with their codes directly;
//   - native/ throws plain Errors with a `code` from this list (or an errno name); TS turns
//     the ones callers handle into classes where they are caught (e.g. src/client/conn.ts).
//   - not WcfsCodes: errno names ('ENOENT': Node's system errors, native ThrowErrno) and
//     Node's own ERR_* codes (native mmap: ERR_OUT_OF_RANGE on a RangeError-like misuse).

import os from 'node:os';

export type WcfsCode =
  | 'WCFS_EBADARG' // a malformed argument (tid text, URL, option): BadArgumentError, here
  // zodb (src/zodb/errors.ts, src/zodb/fs1/)
  | 'WCFS_ENOOBJ' // oid never existed
  | 'WCFS_ENODATA' // oid has no data as of the asked revision
  | 'WCFS_ECORRUPT' // storage file violates its format
  | 'WCFS_EPICKLE' // undecodable pickle
  | 'WCFS_EFORMAT' // an object decoded but is not what it should be
  | 'WCFS_ENOTZBIGFILE' // the object is not a ZBigFile
  | 'WCFS_ELOCKED' // the storage .lock is held elsewhere
  | 'WCFS_ECLOSED' // operation on a closed storage/connection
  | 'WCFS_ECONFLICT' // commit conflict
  | 'WCFS_EINDEX' // bad .index file
  | 'WCFS_ENOSTORAGE' // no such FileStorage
  | 'WCFS_ENOTFILE' // path is not a FileStorage data file
  | 'WCFS_EREADONLY' // write on a read-only storage
  | 'WCFS_ESTORAGECHANGED' // storage file changed under us (truncated, replaced, removed)
  // zeo (src/zodb/zeo/errors.ts)
  | 'WCFS_EZEOPROTO' // a ZEO peer violated the protocol (framing, handshake, message shape): fatal
  | 'WCFS_EZEOCONN' // a ZEO connection failed, broke or went silent: temporary, the driver reconnects
  | 'WCFS_EZEOREMOTE' // the ZEO server raised an exception the driver has no class for
  | 'WCFS_EZEOGAP' // commits missed (while disconnected, or by a lagging watch) cannot be read back one by one
  | 'WCFS_ECOMMITUNKNOWN' // the link broke after tpc_finish was sent: the commit may or may not have happened — look before retrying
  | 'WCFS_ENOOIDS' // a writer used more new oids than the driver had reserved (ZEO: reserveOids)
  // fuse (src/fuse/errors.ts; WCFS_EMOUNT also from native/fuse.cc)
  | 'WCFS_EFUSE' // answer a FUSE request with an errno
  | 'WCFS_ENOTIFY' // a kernel notification failed
  | 'WCFS_EMOUNT' // mount/unmount/abort failed
  | 'WCFS_EALLOWOTHER' // allow_other refused: a non-root mount without user_allow_other in /etc/fuse.conf
  // watch link, both sides (src/watchlink/errors.ts; WCFS_ELINKDOWN also from native/client.cc)
  | 'WCFS_ELINKDOWN' // the link is (or went) down
  | 'WCFS_ETIMEDOUT' // no answer in time (a pin; the control path's probes)
  | 'WCFS_EPIN' // a pin failed (timeout, wrong reply, I/O): the link was shut down for it
  | 'WCFS_EBADREPLY' // the peer answered a request with something else than expected
  // client (src/client/errors.ts; native/client.cc throws the *CLOSED and EBUSY ones)
  | 'WCFS_ECONNCLOSED' // the Conn is closed or went down
  | 'WCFS_EFILECLOSED' // the FileH is closed
  | 'WCFS_EBUSY' // the file is already open on this conn (native fileAdd)
  | 'WCFS_EWATCH' // the server answered a watch request with an error
  | 'WCFS_ESERVERBUG' // the server broke a promise the client relies on
  // server (src/server/)
  | 'WCFS_EEPOCH' // a ZBigFile changed blksize/blktab: not supported
  | 'WCFS_EPACKED' // a revision older than the pack boundary: its history was packed away
  // authentication (src/util/authkey.ts, src/server/auth.ts, src/client/wcfs.ts)
  | 'WCFS_EAUTHKEY' // the authentication key file is missing, unreadable, empty or malformed
  | 'WCFS_EAUTH' // the server refused our authentication (join)
  // control path (src/control/)
  | 'WCFS_EUNSAFE' // a mountpoint or log fails the shared-directory rules
  | 'WCFS_ELOG' // the server log cannot be opened
  | 'WCFS_EFOREIGN' // something else than our wcfs is mounted there
  | 'WCFS_ERUNNING' // start: already running
  | 'WCFS_ENOTRUNNING' // join without autostart: no server
  | 'WCFS_ESTART' // the server did not come up
  | 'WCFS_EMISMATCH' // the mount serves another zurl
  | 'WCFS_ENOGROUP' // serve --share-with: no such group
  // processes (src/util/proc.ts)
  | 'WCFS_ESRCH'; // the process is gone

export class WcfsError extends Error {
  readonly code: WcfsCode;
  constructor(code: WcfsCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A command-line or API argument is malformed (bad tid text, bad URL, bad option, …): every layer's. */
export class BadArgumentError extends WcfsError {
  constructor(message: string) {
    super('WCFS_EBADARG', message);
  }
}

/**
 * e carries `code` — a WcfsError, or an error from native/ or a child process that carries a
 * registry code.
 */
export function isCode(e: unknown, code: WcfsCode): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code;
}

const errnoNames: string[] = [];
for (const [name, n] of Object.entries(os.constants.errno)) errnoNames[n] ??= name; // first name wins (EAGAIN before EWOULDBLOCK)

/** 'ENOENT' for 2, …; `E<n>` when unknown. */
export function errnoName(n: number): string {
  return errnoNames[n] ?? `E${n}`;
}

/** errno → name, indexed by number (holes: unknown), for native/ (src/native.ts). */
export function errnoNameTable(): string[] {
  return Array.from(errnoNames, (s) => s ?? '');
}
