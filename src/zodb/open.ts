// openStorage(zurl): the one entry point that turns a ZODB URL into a storage driver
// (zodb.md §6.1). Supported: `file:///abs/path/Data.fs` and a bare path (relative paths are
// resolved against the cwd) → FileStorage; `zeo://host:port[?storage=name]` and
// `zeo:///path/to/socket` → ZeoStorage. Other schemes are recognised and rejected clearly.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BadArgumentError } from './errors.js';
import type { ICommitter, IStorage } from './storage.js';
import { FileStorage, type FileStorageOptions } from './fs1/filestorage.js';
import { ZeoStorage, type ZeoOptions } from './zeo/zeostorage.js';

export interface OpenOptions {
  /** Open without taking the writer lock; never write. Default false. */
  readOnly?: boolean;
  /** Create an empty storage if the file does not exist (writers only). */
  create?: boolean;
  /** Driver-specific knobs (FileStorage: poll period, garbage timeout, warnings, …). */
  fs1?: Omit<FileStorageOptions, 'readOnly' | 'create'>;
  /** ZEO driver knobs (timeouts, reconnect, heartbeat). */
  zeo?: Omit<ZeoOptions, 'readOnly'>;
}

const NOT_YET = new Set(['neo', 'neos', 'postgresql', 'postgres', 'sqlite', 'mysql']);

/** Open the storage a zurl names. Commit methods are present only on writable drivers. */
export async function openStorage(zurl: string, opts: OpenOptions = {}): Promise<IStorage & Partial<ICommitter>> {
  if (zurl === '') throw new BadArgumentError('empty storage URL');
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(zurl);
  let filePath: string;
  if (m && m[1]!.length > 1) {
    // (a one-letter "scheme" would be a Windows drive; treat anything else as a URL)
    const scheme = m[1]!.toLowerCase();
    if (scheme === 'file') {
      let u: URL;
      try {
        u = new URL(zurl);
      } catch {
        throw new BadArgumentError(`invalid storage URL ${JSON.stringify(zurl)}`);
      }
      if (u.host !== '' && u.host !== 'localhost') {
        throw new BadArgumentError(`${zurl}: file:// URL with a remote host is not supported (want file:///abs/path)`);
      }
      if (u.search !== '' || u.hash !== '') {
        throw new BadArgumentError(`${zurl}: file:// URL: query and fragment are not supported`);
      }
      filePath = fileURLToPath(u);
    } else if (scheme === 'zeo') {
      return ZeoStorage.open(zurl, { ...opts.zeo, readOnly: opts.readOnly ?? false });
    } else if (NOT_YET.has(scheme)) {
      throw new BadArgumentError(`${zurl}: ${scheme}:// storages are not yet supported (only file:// FileStorage and zeo://)`);
    } else {
      throw new BadArgumentError(`${zurl}: unknown storage URL scheme ${JSON.stringify(scheme + '://')} (supported: file://, zeo://, or a path)`);
    }
  } else {
    filePath = path.resolve(zurl);
  }
  const fsOpts: FileStorageOptions = { ...opts.fs1 };
  if (opts.readOnly !== undefined) fsOpts.readOnly = opts.readOnly;
  if (opts.create !== undefined) fsOpts.create = opts.create;
  return FileStorage.open(filePath, fsOpts);
}
