// Errors of the client library. Messages read like a path from the object to the cause
// ("wcfs /mnt: conn @03f…: open f000…0001: watch: error setup watch …"); the last words are
// upstream's where tests (theirs and ours) look for them: "connection closed",
// "file already closed", "link is down".

import { WcfsError } from '../zodb/errors.js';

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

/** The server answered a watch request with an error (its text is in the message). */
export class WatchError extends WcfsError {
  constructor(ctx: string, readonly reply: string) {
    super('WCFS_EWATCH', `${ctx}: ${reply}`);
  }
}

/** The watch link ended before the reply came. */
export class LinkDownError extends WcfsError {
  constructor(ctx: string, why: string) {
    super('WCFS_ELINKDOWN', `${ctx}: ${why}`);
  }
}

/** The server broke a promise the client relies on (e.g. a file shrank). */
export class ServerBugError extends WcfsError {
  constructor(ctx: string, detail: string) {
    super('WCFS_ESERVERBUG', `${ctx}: wcfs bug: ${detail}`);
  }
}
