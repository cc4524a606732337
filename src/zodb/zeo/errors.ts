// Errors of the ZEO driver (zodb.md §4): one class per code, all WcfsErrors.
//
// Owns: ZeoProtoError (WCFS_EZEOPROTO) — the peer sent something ZEO5 does not allow: a frame
// over the size bound, a truncated stream, an unknown handshake, an undecodable payload or a
// message that is not the 4-tuple (msgid, flags, method, args). Thrown by the pure codecs
// (frame.ts, codec.ts); the connection that sees one must be closed (the stream is lost).

import { WcfsError } from '../../errors.js';

export class ZeoProtoError extends WcfsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('WCFS_EZEOPROTO', `zeo: ${message}`, options);
  }
}
