// Kernel cache notifications behind one interface, so server logic can be tested against a
// fake while real mounts test the kernel itself (style.md "Notifier").
//
// KernelNotifier hides the kernel's limits: one NOTIFY_RETRIEVE returns at most max_write
// bytes (1 MiB here: /proc/sys/fs/fuse/max_pages_limit = 256 pages; a 4 MiB request returned
// 1 MiB in the prototype), so retrieve() asks in max_write pieces, in parallel, and returns
// the cached prefix as those pieces (not joined: a 2 MiB join into fresh memory cost 1.1-1.4
// ms of page faults here, more than the RETRIEVE — bench-invalidation). NOTIFY_STORE has no
// such cap (2 MiB stores were measured fine) and is sent whole. Every call runs on a native
// notify thread and may wait in the kernel for as long as a READ of the same pages is
// pending — never await one inside a READ handler for those pages (wcfs-server.md §3.5.3:
// page locks).

import type { NativeFuseSession } from '../native.js';
import { NotifyError } from './errors.js';

export interface Notifier {
  /**
   * Drops [off, off+len) of inode `ino` from the page cache and its attributes from the
   * attribute cache. off < 0: attributes only; len <= 0: up to the end of the file.
   */
  invalInode(ino: number, off: number, len: number): Promise<void>;
  /** Drops the dentry `name` in directory `parent`. */
  invalEntry(parent: number, name: string): Promise<void>;
  /**
   * Puts `data` into the page cache of `ino` at `off` (page-aligned `off` recommended; a store
   * past EOF extends the kernel's idea of the size). `data` must not change until settled.
   */
  store(ino: number, off: number, data: Uint8Array): Promise<void>;
  /**
   * The cached bytes of [off, off+len): the longest cached prefix, possibly empty, as pieces
   * in order (their lengths add up to the prefix's). Rejects with errno ENOENT when the kernel
   * doesn't know `ino`.
   */
  retrieve(ino: number, off: number, len: number): Promise<Uint8Array[]>;
}

export class KernelNotifier implements Notifier {
  constructor(
    private readonly nat: NativeFuseSession,
    /** Largest single RETRIEVE (INIT's max_write). */
    readonly retrieveChunk: number,
  ) {}

  async invalInode(ino: number, off: number, len: number): Promise<void> {
    const rc = await this.nat.notifyInvalInode(ino, off, len);
    if (rc !== 0) throw new NotifyError(-rc, `invalInode ino ${ino} [${off}, +${len})`);
  }

  async invalEntry(parent: number, name: string): Promise<void> {
    const rc = await this.nat.notifyInvalEntry(parent, name);
    if (rc !== 0) throw new NotifyError(-rc, `invalEntry ${parent}/${JSON.stringify(name)}`);
  }

  async store(ino: number, off: number, data: Uint8Array): Promise<void> {
    const rc = await this.nat.notifyStore(ino, off, data);
    if (rc !== 0) throw new NotifyError(-rc, `store ino ${ino} [${off}, +${data.length})`);
  }

  async retrieve(ino: number, off: number, len: number): Promise<Uint8Array[]> {
    const chunk = this.retrieveChunk;
    const parts: Promise<Buffer | number>[] = [];
    for (let o = 0; o < len; o += chunk) parts.push(this.nat.notifyRetrieve(ino, off + o, Math.min(chunk, len - o)));
    const got = await Promise.all(parts);
    const out: Uint8Array[] = [];
    for (let i = 0; i < got.length; i++) {
      const r = got[i]!;
      if (typeof r === 'number') throw new NotifyError(-r, `retrieve ino ${ino} [${off + i * chunk}, +${Math.min(chunk, len - i * chunk)})`);
      if (r.length > 0) out.push(r);
      if (r.length < Math.min(chunk, len - i * chunk)) break; // the cached prefix ends here
    }
    return out;
  }
}
