// Errors of the client library (codes from the registry, src/errors.ts). Messages read like a
// path from the object to the cause ("wcfs /mnt: conn @03f…: open f000…0001: watch: error
// setup watch …"); the last words are upstream's where tests (theirs and ours) look for them:
// "connection closed", "file already closed", "link is down". native/client.cc throws plain
// Errors with codes WCFS_ELINKDOWN, WCFS_EBUSY, WCFS_EFILECLOSED, WCFS_ECONNCLOSED,
// WCFS_ESERVERBUG; conn.ts turns them into these classes.

import { WcfsError } from '../errors.js';

export { LinkDownError } from '../watchlink/errors.js';

/** The Conn is closed, or went down (resync failure, pinner failure). */
export class ConnClosedError extends WcfsError {
  constructor(ctx: string) {
    super('WCFS_ECONNCLOSED', `${ctx}: connection closed`);
  }
}

/** mmap on a FileH that is closed (explicitly, or by its Conn's close). */
export class FileClosedError extends WcfsError {
  constructor(ctx: string) {
    super('WCFS_EFILECLOSED', `${ctx}: file already closed`);
  }
}

/** The file is already open on this Conn (native fileAdd; the Conn's file table prevents it). */
export class FileBusyError extends WcfsError {
  constructor(ctx: string) {
    super('WCFS_EBUSY', `${ctx}: already open on this conn`);
  }
}

/** The server answered a watch request with an error (its text is in the message). */
export class WatchError extends WcfsError {
  constructor(
    ctx: string,
    readonly reply: string,
  ) {
    super('WCFS_EWATCH', `${ctx}: ${reply}`);
  }
}

/** The server broke a promise the client relies on (e.g. a file shrank). */
export class ServerBugError extends WcfsError {
  constructor(ctx: string, detail: string) {
    super('WCFS_ESERVERBUG', `${ctx}: wcfs bug: ${detail}`);
  }
}
