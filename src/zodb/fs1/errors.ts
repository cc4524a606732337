// Errors specific to the FileStorage driver (the layer-wide ones are in ../errors.ts:
// CorruptError, StorageLockedError, NoObjectError, NoDataError, ClosedError, ConflictError).

import { WcfsError } from '../../errors.js';

/** The Data.fs does not exist and the open did not ask to create it. */
export class StorageNotFoundError extends WcfsError {
  constructor(readonly file: string) {
    super('WCFS_ENOSTORAGE', `${file}: no such FileStorage (file does not exist; open with create to make a new one)`);
  }
}

/** The path names a directory, FIFO, device…: a FileStorage is a regular file. */
export class NotAFileError extends WcfsError {
  constructor(
    readonly file: string,
    what: string,
  ) {
    super('WCFS_ENOTFILE', `${file}: ${what}, not a FileStorage data file (a zurl names one: /path/to/Data.fs or file:///path/to/Data.fs)`);
  }
}

/** A write operation on a storage opened read-only. */
export class ReadOnlyError extends WcfsError {
  constructor(
    readonly file: string,
    op: string,
  ) {
    super('WCFS_EREADONLY', `${file}: ${op}: storage is opened read-only`);
  }
}

/**
 * The file being followed changed under us in a way that invalidates what was read: truncated
 * below the committed end, replaced by another file (pack renames a new file over Data.fs),
 * or removed. Fatal for followers: the reader must be reopened (WCFS restarts).
 */
export class StorageChangedError extends WcfsError {
  constructor(
    readonly file: string,
    detail: string,
  ) {
    super('WCFS_ESTORAGECHANGED', `${file}: ${detail}`);
  }
}
