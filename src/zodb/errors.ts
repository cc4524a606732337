// Errors of the ZODB layer (FileStorage ones: fs1/errors.ts). Each has a stable `code` from
// the registry (src/errors.ts) so callers and the CLI tell kinds apart without matching
// messages; messages carry context as a path ("data.fs: txn @1234: data record @1300: oid
// mismatch").

import { WcfsError } from '../errors.js';
import type { Oid, Tid } from './ids.js';

const h16 = (x: bigint) => x.toString(16).padStart(16, '0');

export { BadArgumentError } from '../errors.js'; // shared by every layer; zodb callers meet it here

/** The oid never existed in the database. (neo/go: NoObjectError; ZODB: POSKeyError) */
export class NoObjectError extends WcfsError {
  constructor(
    readonly oid: Oid,
    where = '',
  ) {
    super('WCFS_ENOOBJ', `${where ? where + ': ' : ''}oid ${h16(oid)}: no such object`);
  }
}

/**
 * The oid exists but has no data as of `at`: it was created later (deletedAt undefined), or
 * it was deleted at `deletedAt`. (neo/go: NoDataError)
 */
export class NoDataError extends WcfsError {
  constructor(
    readonly oid: Oid,
    readonly at: Tid,
    readonly deletedAt?: Tid,
    where = '',
  ) {
    super(
      'WCFS_ENODATA',
      `${where ? where + ': ' : ''}oid ${h16(oid)} @${h16(at)}: ` +
        (deletedAt === undefined ? 'no data (object created later)' : `no data (object deleted @${h16(deletedAt)})`),
    );
  }
}

/** The storage file violates its format; `offset` is the file position of the bad record. */
export class CorruptError extends WcfsError {
  constructor(
    readonly file: string,
    readonly offset: number,
    detail: string,
  ) {
    super('WCFS_ECORRUPT', `${file}: @${offset}: ${detail}`);
  }
}

/** A pickle could not be decoded; `offset` is the position inside the pickle bytes. */
export class PickleError extends WcfsError {
  constructor(
    readonly offset: number,
    detail: string,
  ) {
    super('WCFS_EPICKLE', `pickle @${offset}: ${detail}`);
  }
}

/** An object decoded fine but is not what it should be (a bad record, a bad ZBigFile state). */
export class ObjectFormatError extends WcfsError {
  constructor(
    readonly oid: Oid | undefined,
    detail: string,
  ) {
    super('WCFS_EFORMAT', `${oid === undefined ? '' : `oid ${h16(oid)}: `}${detail}`);
  }
}

/** The object is not a ZBigFile (its class is `klass`). */
export class NotZBigFileError extends WcfsError {
  constructor(
    readonly oid: Oid,
    klass: string,
  ) {
    super('WCFS_ENOTZBIGFILE', `oid ${h16(oid)}: not a ZBigFile (class ${klass})`);
  }
}

/** The FileStorage .lock is held by another process (a Python or a TS writer). */
export class StorageLockedError extends WcfsError {
  constructor(
    readonly lockPath: string,
    detail = 'locked by another process',
  ) {
    super('WCFS_ELOCKED', `${lockPath}: ${detail}`);
  }
}

/** Operation on a closed storage / connection. */
export class ClosedError extends WcfsError {
  constructor(what: string) {
    super('WCFS_ECLOSED', `${what}: closed`);
  }
}

/** A commit was rejected because an object changed since it was read. */
export class ConflictError extends WcfsError {
  constructor(
    readonly oid: Oid,
    readonly expected: Tid,
    readonly actual: Tid,
  ) {
    super('WCFS_ECONFLICT', `oid ${h16(oid)}: conflict: read @${h16(expected)}, current @${h16(actual)}`);
  }
}
