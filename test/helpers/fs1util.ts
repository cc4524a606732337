// Test harness for the FileStorage driver: fixture paths, scratch dirs that are always removed,
// a builder for hand-crafted Data.fs files (cases the fixtures lack), and small asserts.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeMagic, encodeTxn, FILE_HEADER_SIZE, txnEnd, type TxnStatus } from '../../src/zodb/fs1/format.js';
import { scanTxn, SeqReader } from '../../src/zodb/fs1/scan.js';
import type { Oid, Tid } from '../../src/zodb/ids.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const fixturesDir = path.resolve(repoRoot, '../shared/fixtures');
export const historyFs = path.join(fixturesDir, 'zodb-history', 'data.fs');
export const historyManifest = path.join(fixturesDir, 'zodb-history', 'manifest.json');
export const zblkKinds = ['py2_pickle1', 'py2_pickle2', 'py2_pickle3', 'py3_pickle3'] as const;
export const zblkFs = (kind: string) => path.join(fixturesDir, 'wendelin-zblk', kind, 'zblk.fs');
/** Every fixture FileStorage, by a short name. */
export const allFixtures: Array<[string, string]> = [['zodb-history', historyFs], ...zblkKinds.map((k): [string, string] => [k, zblkFs(k)])];

/** Scratch directories; `cleanup()` in afterEach/afterAll removes them all. */
export class TmpDirs {
  private dirs: string[] = [];
  make(tag = 'fs1'): string {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), `wcfs-${tag}-`));
    this.dirs.push(d);
    return d;
  }
  cleanup(): void {
    for (const d of this.dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  }
}

/** Copy a fixture Data.fs (and optionally its .index) into `dir`; returns the new path. */
export function copyFixture(src: string, dir: string, opts: { index?: boolean; name?: string } = {}): string {
  const dst = path.join(dir, opts.name ?? 'data.fs');
  fs.copyFileSync(src, dst);
  fs.chmodSync(dst, 0o644); // fixtures are read-only files
  if (opts.index && fs.existsSync(src + '.index')) {
    fs.copyFileSync(src + '.index', dst + '.index');
    fs.chmodSync(dst + '.index', 0o644);
  }
  return dst;
}

const enc = new TextEncoder();
export const bytes = (s: string) => enc.encode(s);

export interface BRec {
  oid: Oid;
  /** data, or 'deleted' (backpointer 0), or { bp } = backpointer to a record position */
  data: string | Uint8Array | 'deleted' | { bp: number };
}

/**
 * Hand-crafted Data.fs: append txns with any status/records; keeps each oid's last position
 * (for prev links) so the result is well-formed unless a test breaks it on purpose.
 */
export class FsBuilder {
  private parts: Uint8Array[] = [encodeMagic('FS30')];
  pos = 4;
  readonly last = new Map<Oid, number>();
  readonly txns: Array<{ tid: Tid; pos: number; len: number; dpos: number[] }> = [];

  txn(tid: Tid, recs: BRec[], opts: { status?: TxnStatus; user?: string; desc?: string; ext?: Uint8Array } = {}): { tpos: number; dpos: number[] } {
    const tpos = this.pos;
    const init = recs.map((r) => {
      const prev = this.last.get(r.oid) ?? 0;
      if (r.data === 'deleted') return { oid: r.oid, prev, data: null, backpointer: 0 };
      if (typeof r.data === 'object' && 'bp' in r.data) return { oid: r.oid, prev, data: null, backpointer: r.data.bp };
      return { oid: r.oid, prev, data: typeof r.data === 'string' ? bytes(r.data) : r.data };
    });
    const { bytes: b, dpos } = encodeTxn(tpos, tid, opts.status ?? ' ', bytes(opts.user ?? ''), bytes(opts.desc ?? ''), opts.ext ?? new Uint8Array(0), init);
    this.parts.push(b);
    this.pos += b.length;
    recs.forEach((r, i) => this.last.set(r.oid, dpos[i]!));
    this.txns.push({ tid, pos: tpos, len: b.length, dpos });
    return { tpos, dpos };
  }

  /** Raw bytes appended as they are (garbage, partial records). */
  raw(b: Uint8Array): void {
    this.parts.push(b);
    this.pos += b.length;
  }

  build(): Uint8Array {
    return Buffer.concat(this.parts);
  }

  write(file: string): string {
    fs.writeFileSync(file, this.build());
    return file;
  }
}

export const eqBytes = (a: Uint8Array | null | undefined, b: Uint8Array | null | undefined): boolean =>
  a == null || b == null ? a === b : Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

/** Collect an async iterable. */
export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** Reject after `ms` with `what` (so no test can hang). */
export { withTimeout } from '../../src/util/async.js';

/** Every txn of FileStorage f gets status 'p' (in place): how a pack leaves what it kept. */
export function markAllPacked(f: string): void {
  const fd = fs.openSync(f, 'r+');
  try {
    const r = new SeqReader(fd, fs.fstatSync(fd).size);
    let pos = FILE_HEADER_SIZE;
    let prev = -1n;
    for (;;) {
      const step = scanTxn(r, pos, prev, f, false);
      if (step.kind !== 'txn') return;
      fs.writeSync(fd, Buffer.from('p'), 0, 1, pos + 16);
      prev = step.txn.tid;
      pos = txnEnd(step.txn);
    }
  } finally {
    fs.closeSync(fd);
  }
}
