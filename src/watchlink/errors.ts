// Errors of the watch link, shared by both sides (server: src/server/wlink.ts and
// isolation.ts; client: src/client/conn.ts). Codes from the registry (src/errors.ts); callers
// decide on class or code, never on the text.

import { WcfsError } from '../errors.js';

/**
 * A request on the link failed because the link is (or went) down. `ctx` says where
 * ("link is down" on the server; the request's context on the client), `why` what took the
 * link down ('' = nothing said); the cause, if any, is the error that did (e.g. a PinError).
 */
export class LinkDownError extends WcfsError {
  constructor(
    ctx: string,
    readonly why: string,
    options?: { cause?: unknown },
  ) {
    super('WCFS_ELINKDOWN', why ? `${ctx}: ${why}` : ctx, options);
  }
}

/**
 * No reply (or the frame was not even read) within the deadline. The text is upstream's (Go's
 * context error under sendReq's contexts): it ends up in the `fatal:` line to the client.
 */
export class LinkTimeoutError extends WcfsError {
  constructor(readonly ms: number) {
    super('WCFS_ETIMEDOUT', 'sendReq: waiting for reply: context deadline exceeded');
  }
}

/** The peer answered a request with something else than the reply it must give. */
export class WrongReplyError extends WcfsError {
  constructor(message: string) {
    super('WCFS_EBADREPLY', message);
  }
}

/** A pin failed (`what` = "pin #<blk> @<rev>"; cause: timeout, wrong reply, I/O); the server shuts the link down with it. */
export class PinError extends WcfsError {
  constructor(what: string, cause: Error) {
    super('WCFS_EPIN', `${what}: ${cause.message}`, { cause });
  }
}
