// Errors of the FUSE layer (codes from the registry, src/errors.ts: WCFS_EFUSE — an errno
// meant for the kernel, WCFS_ENOTIFY — a kernel notification failed, WCFS_EMOUNT —
// mount/unmount failed; native/fuse.cc throws WCFS_EMOUNT as a plain Error, session.ts turns
// it into a MountError) and the one function that maps any error to the errno a FUSE reply
// carries (toErrno).

import { errnoName, WcfsError } from '../errors.js';
import { errno } from './kernel.js';

/** Thrown by handlers to answer a request with `errno` (positive, e.g. errno.ENOENT). */
export class FuseError extends WcfsError {
  constructor(
    readonly errno: number,
    message?: string,
    options?: { cause?: unknown },
  ) {
    super('WCFS_EFUSE', message ?? errnoName(errno), options);
  }
}

/** A fuse_lowlevel_notify_* call failed; `errno` is positive (ENOENT: inode unknown to the kernel). */
export class NotifyError extends WcfsError {
  constructor(
    readonly errno: number,
    readonly what: string,
  ) {
    super('WCFS_ENOTIFY', `${what}: ${errnoName(errno)}`);
  }
}

/** Mounting, unmounting or aborting failed. */
export class MountError extends WcfsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WCFS_EMOUNT', message, options);
  }
}

/** How an error maps to errno, and whether/how loudly to log it. */
export interface ErrnoVerdict {
  errno: number;
  log: 'no' | 'warn' | 'error';
}

/**
 * The one mapping from a handler's error to the reply errno (cf. upstream err2LogStatus):
 *   FuseError → its errno (EIO-class ones logged as errors);
 *   an abort (the request's signal, or an AbortError) → EINTR;
 *   a Node system error (`code: 'ENOENT'` …) → that errno;
 *   anything else → EIO, logged as an error — it is a bug or an unexpected failure.
 * EINVAL is logged as a warning (upstream does the same).
 */
export function toErrno(err: unknown, aborted = false): ErrnoVerdict {
  if (err instanceof FuseError) return { errno: err.errno, log: logLevel(err.errno) };
  if (aborted || (err instanceof Error && err.name === 'AbortError')) return { errno: errno.EINTR, log: 'no' };
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) && code in errno) {
    const n = errno[code as keyof typeof errno];
    return { errno: n, log: logLevel(n) };
  }
  return { errno: errno.EIO, log: 'error' };
}

function logLevel(n: number): ErrnoVerdict['log'] {
  if (n === errno.EIO) return 'error';
  if (n === errno.EINVAL) return 'warn';
  return 'no';
}
