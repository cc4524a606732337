// Kernel cache notifications behind one interface, so server logic can be tested against a
// fake while real mounts test the kernel itself (style.md "Notifier").
//
// KernelNotifier hides the kernel's limits: one NOTIFY_RETRIEVE returns at most max_write
// bytes (1 MiB here: /proc/sys/fs/fuse/max_pages_limit = 256 pages; a 4 MiB request returned
// 1 MiB in the prototype), so retrieve() asks in max_write pieces, in parallel, and returns
// the cached prefix as those pieces (not joined: a 2 MiB join into fresh memory cost 1.1-1.4
// ms of page faults here, more than the RETRIEVE — bench-invalidation), or copies them into
// the caller's memory (a pooled block: no fresh pages at all). NOTIFY_STORE has no
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
   * doesn't know `ino`. With `into` (≥ len bytes, not touched until settled) the bytes are
   * copied there — memory already faulted in, e.g. a pooled block — and the one piece is
   * a view of it (bytes of `into` past the prefix but before len may be written too: the
   * pieces are asked for in parallel).
   */
  retrieve(ino: number, off: number, len: number, into?: Uint8Array): Promise<Uint8Array[]>;
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

  async retrieve(ino: number, off: number, len: number, into?: Uint8Array): Promise<Uint8Array[]> {
    if (into !== undefined && into.length < len) throw new RangeError(`retrieve: into has ${into.length} bytes, want ${len}`);
    const chunk = this.retrieveChunk;
    const parts: Promise<Buffer | number>[] = [];
    for (let o = 0; o < len; o += chunk) {
      const n = Math.min(chunk, len - o);
      parts.push(this.nat.notifyRetrieve(ino, off + o, n, into?.subarray(o, o + n)));
    }
    const got = await Promise.all(parts);
    const out: Uint8Array[] = [];
    let prefix = 0;
    for (let i = 0; i < got.length; i++) {
      const r = got[i]!;
      const want = Math.min(chunk, len - i * chunk);
      if (typeof r === 'number' && (into === undefined || r < 0)) throw new NotifyError(-r, `retrieve ino ${ino} [${off + i * chunk}, +${want})`);
      const n = typeof r === 'number' ? r : r.length;
      if (into === undefined && n > 0) out.push(r as Buffer);
      prefix += n;
      if (n < want) break; // the cached prefix ends here
    }
    return into === undefined || prefix === 0 ? out : [into.subarray(0, prefix)];
  }
}
