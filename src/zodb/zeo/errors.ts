// Errors of the ZEO driver (zodb.md §4): one class per code, all WcfsErrors; every message
// names the server ("zeo 127.0.0.1:8100: …").
//
// Owns:
//   ZeoProtoError  (WCFS_EZEOPROTO)  — fatal: the peer sent something ZEO5 does not allow (a
//                    frame over the size bound, a truncated stream, an unknown handshake, an
//                    undecodable payload, a message that is not (msgid, flags, method, args), a
//                    reply to a call never made). The connection is closed; the driver does not
//                    reconnect to a peer that broke the protocol.
//   ZeoConnError   (WCFS_EZEOCONN)   — temporary: the connection could not be made, broke, or
//                    the peer stopped answering. The driver reconnects; reads wait (bounded).
//   ZeoRemoteError (WCFS_EZEOREMOTE) — the server answered a call with an exception the driver
//                    has no better class for (className + args kept for callers).
//   ZeoGapError    (WCFS_EZEOGAP)    — fatal for watching: the commits missed (after a reconnect,
//                    or by a watch that lagged past the ring) cannot be read back transaction by
//                    transaction (history packed or gone).
//   CommitUnknownError (WCFS_ECOMMITUNKNOWN) — a commit whose tpc_finish was sent when the
//                    connection broke: the server may have committed it or not. Not
//                    retried (a retry could commit twice); the caller looks at the storage
//                    once reconnected (the commit, if it happened, arrives as an event).
// Thrown by the pure codecs too (frame.ts, codec.ts: ZeoProtoError without an address).

import { WcfsError } from '../../errors.js';
import type { ZValue } from './codec.js';

export class ZeoProtoError extends WcfsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WCFS_EZEOPROTO', `zeo: ${message}`, options);
  }
}

export class ZeoConnError extends WcfsError {
  constructor(
    readonly addr: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super('WCFS_EZEOCONN', `zeo ${addr}: ${detail}`, options);
  }
}

export class ZeoRemoteError extends WcfsError {
  constructor(
    readonly addr: string,
    readonly method: string,
    readonly className: string,
    readonly args: ZValue,
  ) {
    super('WCFS_EZEOREMOTE', `zeo ${addr}: ${method}: server raised ${className}`);
  }
}

export class ZeoGapError extends WcfsError {
  constructor(
    readonly addr: string,
    detail: string,
  ) {
    super('WCFS_EZEOGAP', `zeo ${addr}: ${detail}`);
  }
}

export class CommitUnknownError extends WcfsError {
  constructor(
    readonly addr: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super('WCFS_ECOMMITUNKNOWN', `zeo ${addr}: ${detail}`, options);
  }
}
