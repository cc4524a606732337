// A small in-memory filesystem for the FUSE layer tests: one root directory of files, each
// with its own data, open flags and optional read/write behaviour; it records every READ
// (to count what reached the server) and can hold READs in JS until the test releases them.

import { FuseError } from '../../src/fuse/errors.js';
import type { AttrOut, DirEntry, EntryOut, FileSystem, OpenOut, RequestContext, StatfsOut, Timespec } from '../../src/fuse/fs.js';
import { errno, S_IFDIR, S_IFREG, type GetattrIn, type LookupIn, type OpenIn, type ReadIn, type WriteIn } from '../../src/fuse/kernel.js';
import { waitFor } from './mount.js';
import { rng } from '../../src/util/rng.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

export interface TFile {
  name: string;
  ino: number;
  data: Buffer;
  openFlags: number;
  mode?: number; // permission bits [0o444]
  blksize?: number;
  mtime?: Timespec;
  /** Custom READ; default: slice of `data`. */
  read?(req: ReadIn, ctx: RequestContext): Uint8Array | Promise<Uint8Array>;
  write?(req: WriteIn, ctx: RequestContext): number | Promise<number>;
}

/** Deterministic, position-dependent content (so misplaced bytes are noticed). */
export function pattern(size: number, seed = 1): Buffer {
  const b = Buffer.alloc(size);
  const r = rng(seed);
  for (let i = 0; i < size; i += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), i);
  return b;
}

export interface HeldRead {
  req: ReadIn;
  ctx: RequestContext;
  release(data?: Uint8Array): void;
}

/**
 * Holds READs in JS: hold() waits until release (→ data) or until the request is
 * interrupted (→ rejects with the signal's reason, i.e. EINTR).
 */
export class ReadGate {
  held: HeldRead[] = [];
  interrupted: ReadIn[] = [];
  /** ctx.interrupted was already true when the handler started. */
  interruptedOnArrival: ReadIn[] = [];

  /** Once opened, READs are answered at once. */
  private passing = false;

  hold(req: ReadIn, ctx: RequestContext, data: () => Uint8Array): Promise<Uint8Array> {
    if (ctx.interrupted) this.interruptedOnArrival.push(req);
    if (this.passing) return Promise.resolve(data());
    return new Promise((resolve, reject) => {
      const h: HeldRead = {
        req,
        ctx,
        release: (d) => {
          this.held = this.held.filter((x) => x !== h);
          resolve(d ?? data());
        },
      };
      const onAbort = () => {
        this.held = this.held.filter((x) => x !== h);
        this.interrupted.push(req);
        reject(ctx.signal.reason);
      };
      if (ctx.signal.aborted) return onAbort();
      ctx.signal.addEventListener('abort', onAbort, { once: true });
      this.held.push(h);
    });
  }

  releaseAll(): void {
    for (const h of [...this.held]) h.release();
  }

  /** Releases the held READs and lets every later one through (e.g. a client's retry). */
  open(): void {
    this.passing = true;
    this.releaseAll();
  }

  waitHeld(n: number, ms = 10_000): Promise<void> {
    return waitFor(() => this.held.length >= n, ms, `${n} held READs (have ${this.held.length})`);
  }
}

export class TestFs implements FileSystem {
  readonly files = new Map<number, TFile>();
  readonly byName = new Map<string, TFile>();
  /** Every READ that reached the server, in arrival order. */
  reads: ReadIn[] = [];
  nextFh = 1;
  forgets: [number, number][] = [];
  destroyed = false;

  constructor(files: TFile[] = []) {
    for (const f of files) this.add(f);
  }

  add(f: TFile): TFile {
    this.files.set(f.ino, f);
    this.byName.set(f.name, f);
    return f;
  }

  readsOf(ino: number): ReadIn[] {
    return this.reads.filter((r) => r.nodeid === ino);
  }

  private file(nodeid: number): TFile {
    const f = this.files.get(nodeid);
    if (!f) throw new FuseError(errno.ENOENT);
    return f;
  }

  private attr(f: TFile): AttrOut {
    return {
      attr: {
        ino: f.ino,
        mode: S_IFREG | (f.mode ?? 0o444),
        size: f.data.length,
        blksize: f.blksize,
        blocks: Math.ceil(f.data.length / 512),
        mtime: f.mtime,
        ctime: f.mtime,
      },
    };
  }

  lookup(req: LookupIn): EntryOut {
    const f = req.nodeid === 1 ? this.byName.get(req.name) : undefined;
    if (!f) throw new FuseError(errno.ENOENT);
    return { nodeid: f.ino, ...this.attr(f) };
  }

  getattr(req: GetattrIn): AttrOut {
    if (req.nodeid === 1) return { attr: { ino: 1, mode: S_IFDIR | 0o755, nlink: 2 } };
    return this.attr(this.file(req.nodeid));
  }

  open(req: OpenIn): OpenOut {
    return { fh: this.nextFh++, openFlags: this.file(req.nodeid).openFlags };
  }

  read(req: ReadIn, ctx: RequestContext): Uint8Array | Promise<Uint8Array> {
    this.reads.push(req);
    const f = this.file(req.nodeid);
    if (f.read) return f.read(req, ctx);
    return f.data.subarray(req.offset, req.offset + req.size);
  }

  write(req: WriteIn, ctx: RequestContext): number | Promise<number> {
    const f = this.file(req.nodeid);
    if (!f.write) throw new FuseError(errno.EROFS);
    return f.write(req, ctx);
  }

  readdir(): DirEntry[] {
    const out: DirEntry[] = [
      { name: '.', ino: 1, mode: S_IFDIR },
      { name: '..', ino: 1, mode: S_IFDIR },
    ];
    for (const f of this.files.values()) out.push({ name: f.name, ino: f.ino, mode: S_IFREG });
    return out;
  }

  statfs(): StatfsOut {
    return { bsize: 2 * MiB, frsize: 2 * MiB, namemax: 255 };
  }

  forget(nodeid: number, nlookup: number): void {
    this.forgets.push([nodeid, nlookup]);
  }

  destroy(): void {
    this.destroyed = true;
  }
}

/** READs of `reads` as a sorted, merged list of [start, end) ranges. */
export function coverage(reads: ReadIn[]): [number, number][] {
  const rs = reads.map((r) => [r.offset, r.offset + r.size] as [number, number]).sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [s, e] of rs) {
    const last = out[out.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}
