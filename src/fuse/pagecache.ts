// Page-cache probes for tests, tools and (later) the client: which pages of a file are
// cached, and reads through a shared mapping. Both run on native threads (native/mincore.cc),
// so they are safe on files of a mount this process serves (session.ts "self-access").

import { native } from '../native.js';
import { errnoName } from './kernel.js';

function check<T>(r: T | number, what: string): T {
  if (typeof r !== 'number') return r;
  const code = errnoName(-r);
  const e = new Error(`${code}: ${what}`) as NodeJS.ErrnoException;
  e.code = code;
  e.errno = r;
  throw e;
}

/**
 * One byte per page (1 = in the page cache) for the pages covering [offset, offset+length),
 * starting with the page that contains `offset`. Doesn't fault pages in.
 */
export async function cacheResidency(path: string, offset: number, length: number): Promise<Uint8Array> {
  return check(await native().cacheResidency(path, offset, length), `cacheResidency ${path} [${offset}, +${length})`);
}

/** [offset, offset+length) read through mmap(MAP_SHARED) — page faults, not read(2). */
export async function mmapRead(path: string, offset: number, length: number): Promise<Buffer> {
  return check(await native().mmapRead(path, offset, length), `mmapRead ${path} [${offset}, +${length})`);
}
