// ZBigFile: wendelin.core's big file stored in ZODB (deltatail.md §1.1-§1.5), read and write.
//
// Object graph (module wendelin.bigfile.file_zodb):
//   ZBigFile  state (blksize, ref→LOBTree blktab)      blktab: blk → ZBlk0 | ZBlk1; missing = hole
//   ZBlk0     state bytes — the block, trailing zeros stripped
//   ZBlk1     state ref→IOBTree chunktab               chunktab: offset-in-block → ZData
//   ZData     state bytes — one chunk, trailing zeros stripped; all-zero chunks are absent
// A ZBigFile state with extra trailing fields ((blksize, blktab, zblk_fmt) in one public
// wendelin.core copy) is read as (blksize, blktab); ZBigFileView.warnings says so.
//
// Invariants (readers check them; the writer keeps them):
//   size = (max key of blktab + 1)·blksize, 0 for an empty blktab;
//   a block's data is ≤ blksize bytes; shorter data reads zero-padded to blksize;
//   whenever any ZData (or chunktab node) of a ZBlk1 changes, the ZBlk1 itself is stored in
//   the same transaction — so a watcher only needs ZBlk1 oids, never ZData (wcfs.go (%)).
//
// A ZBigFileView is the file as of one revision `at`: blksize and blktab are those of `at`.
// loadBlock also returns what invalidation needs: the blktab path and the ZBlk oid, and
// revMax = max serial over everything visited — an upper bound of the block's last change.
//
// Buffers: loadBlock without `out` may return memory shared with others and never writable —
// a view of the storage's read-only mmap (a full ZBlk0) or the one zero block of that blksize
// (holes: zeroBlock, a PROT_READ mapping of the kernel's zero page). Callers read it only (the
// server hands it to READ replies, the fast path and NOTIFY_STORE, which all only read); a
// write into it faults instead of corrupting every later hole. With `out`, the data is `out`.

import { btreeCreate, btreeDelete, btreeGet, btreeItems, btreeMaxKey, btreeRangeEach, btreeSet, type PathNode } from './btree/index.js';
import { isCode } from '../errors.js';
import { NotZBigFileError, ObjectFormatError } from './errors.js';
import { WriteTxn, type ObjectLoader } from './db.js';
import { hex16, type Oid, type Tid } from './ids.js';
import { ByteStr, Global, PersistentRef, PyDict, Tuple, asBytes, asInt, pyTypeName, type PyValue } from './pickle/index.js';
import type { IWritableStorage } from './storage.js';
import { native } from '../native.js';

const MOD = 'wendelin.bigfile.file_zodb';
export const ZBIGFILE_CLASS = new Global(MOD, 'ZBigFile');
export const ZBLK0_CLASS = new Global(MOD, 'ZBlk0');
export const ZBLK1_CLASS = new Global(MOD, 'ZBlk1');
export const ZDATA_CLASS = new Global(MOD, 'ZData');
const LOBTREE_CLASS = new Global('BTrees.LOBTree', 'LOBTree');
const IOBTREE_CLASS = new Global('BTrees.IOBTree', 'IOBTree');
const PMAPPING_CLASS = new Global('persistent.mapping', 'PersistentMapping');

/** Chunk size wendelin.core's ZBlk1 writer uses (readers must not assume it). */
export const ZBLK1_CHUNKSIZE = 4096;

export type ZBlkKind = 'ZBlk0' | 'ZBlk1';

function zblkKind(k: Global | null): ZBlkKind | undefined {
  if (k === null || k.module !== MOD) return undefined;
  if (k.name === 'ZBlk0' || k.name === 'ZBlk') return 'ZBlk0'; // ZBlk: legacy alias of ZBlk0
  if (k.name === 'ZBlk1') return 'ZBlk1';
  return undefined;
}

export interface BlockLoad {
  /**
   * Exactly blksize bytes (holes and trimmed tails are zeros). Read-only unless it is the
   * caller's `out`: it may be shared (module header "Buffers").
   */
  data: Uint8Array;
  /** blktab nodes visited, root first (PathNode.oid null = embedded bucket). */
  path: PathNode[];
  /** The block's ZBlk object, or null for a hole. */
  zblk: { oid: Oid; kind: ZBlkKind; serial: Tid } | null;
  /** max serial of the visited nodes and the ZBlk: upper bound of the block's last change. */
  revMax: Tid;
}

export interface SizeInfo {
  size: number;
  path: PathNode[];
}

/** The ZBigFile `oid` as of revision `at`. */
export class ZBigFileView {
  private constructor(
    readonly loader: ObjectLoader,
    readonly oid: Oid,
    readonly at: Tid,
    readonly blksize: number,
    readonly blktab: Oid,
    /** Serial of the ZBigFile object itself. */
    readonly serial: Tid,
    /**
     * What is odd about the file's state but does not stop reading it (extra trailing state
     * fields): at most one line, without the `wcfs:` prefix. The zodb layer has no log; whoever
     * shows files to the user reports it — once per file (the server, `wcfs zodb`).
     */
    readonly warnings: readonly string[] = [],
  ) {}

  static async open(loader: ObjectLoader, oid: Oid, at: Tid): Promise<ZBigFileView> {
    const obj = await loader.loadObject(oid, at);
    if (!obj.klass.is(MOD, 'ZBigFile')) {
      throw new NotZBigFileError(oid, String(obj.klass));
    }
    const { blksize, blktab, warnings } = decodeZBigFileState(oid, obj.state);
    return new ZBigFileView(loader, oid, at, blksize, blktab, obj.serial, warnings);
  }

  /**
   * The same file at another revision, without loading: valid only while the ZBigFile
   * object itself did not change in between (the server checks that: epochs are fatal).
   */
  withAt(at: Tid): ZBigFileView {
    return new ZBigFileView(this.loader, this.oid, at, this.blksize, this.blktab, this.serial, this.warnings);
  }

  /** File size in bytes and the blktab path to the max key. */
  async size(): Promise<SizeInfo> {
    const { key, path } = await btreeMaxKey(this.loader, this.blktab, this.at);
    if (key === undefined) return { size: 0, path };
    const size = (key + 1n) * BigInt(this.blksize);
    if (key < 0n || size > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ObjectFormatError(this.oid, `file size overflow (max blk ${key})`);
    }
    return { size: Number(size), path };
  }

  /**
   * Load block `blk`. `out` (blksize bytes) is filled and returned as data when given — a
   * caller with a buffer pool avoids the page faults of a fresh 2 MiB allocation, which cost
   * more than the read itself (bench/bench-zodb-blockload.js). Without `out`, a ZBlk0 that
   * fills the whole block is returned without any copy, and a hole as the shared zero block.
   * `out` may also be an allocator of blksize-byte buffers with any content: it is called only
   * when the block needs memory of its own (a partly filled ZBlk0, a ZBlk1), and data is then
   * the buffer it returned.
   */
  async loadBlock(blk: number | bigint, out?: Uint8Array | (() => Uint8Array)): Promise<BlockLoad> {
    const fixed = typeof out === 'function' ? undefined : out;
    const alloc = typeof out === 'function' ? out : undefined;
    const bs = this.blksize;
    const sized = (b: Uint8Array): Uint8Array => {
      if (b.length !== bs) throw new RangeError(`loadBlock: out is ${b.length} bytes, want blksize ${bs}`);
      return b;
    };
    if (fixed !== undefined) sized(fixed);
    const key = BigInt(blk);
    const { value, path } = await btreeGet(this.loader, this.blktab, key, this.at);
    let revMax = this.serial;
    for (const n of path) if (n.serial > revMax) revMax = n.serial;
    // Memory of the block's own, with any content: every byte of it is written below (the
    // data, and zeros wherever no data lands). Fresh memory is taken uninitialised: malloc
    // hands back memory it already has, where a zeroed 2 MiB allocation gets fresh pages and
    // faults on each one (more than the copy costs, bench/bench-zodb-blockload.js).
    const own = (): Uint8Array => fixed ?? (alloc !== undefined ? sized(alloc()) : uninit(bs));
    const zeroed = (): Uint8Array => own().fill(0);
    // a hole: the shared zero block (no allocation, no zero-fill); `out` is the caller's own
    if (value === undefined) return { data: fixed !== undefined ? fixed.fill(0) : (zeroBlock(bs) ?? zeroed()), path, zblk: null, revMax };

    const kind = value instanceof PersistentRef ? zblkKind(value.klass) : undefined;
    if (!(value instanceof PersistentRef) || (value.klass !== null && kind === undefined)) {
      throw new ObjectFormatError(this.blktab, `blk ${key}: expect ZBlk*, got ${pyTypeName(value)}`);
    }
    const z = await this.loader.loadObject(value.oid, this.at);
    const zkind = zblkKind(z.klass);
    if (zkind === undefined) throw new ObjectFormatError(value.oid, `blk ${key}: expect ZBlk*, got ${z.klass}`);
    if (z.serial > revMax) revMax = z.serial;
    const zblk = { oid: value.oid, kind: zkind, serial: z.serial };
    if (zkind === 'ZBlk0') {
      const b = asBytes(z.state);
      if (b === undefined) throw new ObjectFormatError(value.oid, `ZBlk0: state is ${pyTypeName(z.state)}, want bytes`);
      if (b.length > this.blksize) {
        throw new ObjectFormatError(value.oid, `ZBlk0: data is ${b.length} bytes > blksize ${this.blksize}`);
      }
      // The storage hands out buffers nobody else writes (IStorage.load), so a full block
      // can be returned as the view it is.
      if (fixed === undefined && b.length === bs) return { data: b, path, zblk, revMax };
      if (fixed === undefined && b.length === 0) return { data: zeroBlock(bs) ?? zeroed(), path, zblk, revMax };
      const data = own();
      data.set(b);
      data.fill(0, b.length);
      return { data, path, zblk, revMax };
    }
    const data = own();
    await this.readZBlk1(value.oid, z.state, data);
    return { data, path, zblk, revMax };
  }

  /**
   * Assemble a ZBlk1's chunks into `out` (blksize bytes, any content): every byte no chunk
   * covers is zeroed here (gaps and trimmed chunk tails), so the block is written once, not
   * zero-filled first and then copied over.
   */
  private async readZBlk1(zoid: Oid, state: PyValue, out: Uint8Array): Promise<void> {
    const chunktab = state instanceof PersistentRef ? state : undefined;
    if (chunktab === undefined || (chunktab.klass !== null && !chunktab.klass.is('BTrees.IOBTree', 'IOBTree'))) {
      throw new ObjectFormatError(zoid, `ZBlk1: state is ${pyTypeName(state)}, want ref to IOBTree`);
    }
    const cl = takeChunkList();
    try {
      await btreeRangeEach(this.loader, chunktab.oid, this.at, (keys, values, i0, i1) => {
        for (let i = i0; i < i1; i++) {
          const off = keys[i]!;
          const v = values[i]!;
          if (!(v instanceof PersistentRef) || (v.klass !== null && !v.klass.is(MOD, 'ZData'))) {
            throw new ObjectFormatError(chunktab.oid, `chunk @${off}: expect ZData, got ${pyTypeName(v)}`);
          }
          if (off < 0n) throw new ObjectFormatError(chunktab.oid, `chunk offset ${off} < 0`);
          cl.push(v.oid, Number(off));
        }
      });
      const n = cl.n;
      // A loader with a batched transient path (FileStorage: ranges of its mmap) hands over all
      // the chunk records at once, and native code copies them into the block (native/zdata.cc:
      // no bigint, view or call per chunk); a chunk it cannot take — and every chunk without
      // the batch — goes one by one below: through a synchronous transient load copied out at
      // once, or, for a storage without one, loads issued together (a network overlaps them).
      const lr = this.loader.loadRecordTransient?.bind(this.loader);
      const lt = this.loader.loadObjectTransient?.bind(this.loader);
      const src = this.loader.loadRecordsTransient?.(cl.oids, n, this.at, cl.ranges);
      const chunks =
        src !== undefined || lr !== undefined || lt !== undefined
          ? undefined
          : await Promise.all(Array.from({ length: n }, (_, i) => this.loader.loadObject(cl.oids[i]!, this.at)));
      let stop = 0; // end of the previous chunk: chunks must not overlap
      for (let i = 0; i < n; i++) {
        if (src !== undefined) {
          cl.stop[0] = stop;
          i = native().zdataGather(src, cl.ranges, cl.offs, i, n, out, cl.stop);
          stop = cl.stop[0]!;
          if (i === n) break;
        }
        const off = cl.offs[i]!;
        const coid = cl.oids[i]!;
        // ZData records in every layout ZODB writes are recognised without the pickle machine
        let b = lr !== undefined ? zdataFast(lr(coid, this.at).data) : undefined;
        if (b === undefined) {
          const c = chunks !== undefined ? chunks[i]! : lt !== undefined ? lt(coid, this.at) : await this.loader.loadObject(coid, this.at);
          if (!c.klass.is(MOD, 'ZData')) throw new ObjectFormatError(c.oid, `expect ZData, got ${c.klass}`);
          b = asBytes(c.state);
          if (b === undefined) throw new ObjectFormatError(c.oid, `ZData: state is ${pyTypeName(c.state)}, want bytes`);
        }
        if (off < stop) throw new ObjectFormatError(zoid, `ZBlk1: chunk @${off} overlaps previous chunk ending @${stop}`);
        if (off + b.length > out.length) {
          throw new ObjectFormatError(zoid, `ZBlk1: chunk @${off}+${b.length} exceeds blksize ${out.length}`);
        }
        if (off > stop) out.fill(0, stop, off);
        out.set(b, off);
        stop = off + b.length;
      }
      if (stop < out.length) out.fill(0, stop);
    } finally {
      giveChunkList(cl);
    }
  }
}

// ---- ZBlk1 chunk lists ----

/**
 * A ZBlk1's chunks as the typed arrays native code takes (zdataGather): chunk i is the ZData
 * oids[i] at offset offs[i], i < n; ranges (2 per chunk) and stop are the gather's scratch.
 * Invariant: ranges.length = 2 × oids.length = 2 × offs.length ≥ 2n.
 */
class ChunkList {
  n = 0;
  oids: BigUint64Array;
  offs: Float64Array;
  ranges: Float64Array;
  readonly stop = new Float64Array(1);

  constructor(cap: number) {
    this.oids = new BigUint64Array(cap);
    this.offs = new Float64Array(cap);
    this.ranges = new Float64Array(2 * cap);
  }

  push(oid: Oid, off: number): void {
    if (this.n === this.offs.length) {
      const cap = 2 * this.n;
      const oids = new BigUint64Array(cap);
      const offs = new Float64Array(cap);
      oids.set(this.oids);
      offs.set(this.offs);
      this.oids = oids;
      this.offs = offs;
      this.ranges = new Float64Array(2 * cap);
    }
    this.oids[this.n] = oid;
    this.offs[this.n] = off;
    this.n++;
  }
}
/** Chunks per block up to which a list is kept for the next block (wendelin.core writes 512). */
const CHUNKS_KEEP = 4096;
/** The kept list; taken while in use, so two assemblies (an await apart) never share one. */
let spareChunks: ChunkList | undefined;

function takeChunkList(): ChunkList {
  const cl = spareChunks ?? new ChunkList(512);
  spareChunks = undefined;
  cl.n = 0;
  return cl;
}

function giveChunkList(cl: ChunkList): void {
  if (cl.offs.length <= CHUNKS_KEEP) spareChunks = cl;
}

/** bs bytes of uninitialised memory as a plain Uint8Array (the caller writes every byte). */
function uninit(bs: number): Uint8Array {
  const b = Buffer.allocUnsafeSlow(bs);
  return new Uint8Array(b.buffer, b.byteOffset, bs);
}

// ---- holes ----

const zeroBlocks = new Map<number, Uint8Array>();
/** Distinct blksizes kept; beyond, the oldest is forgotten (its views stay valid). */
const ZERO_BLOCKS_MAX = 8;

/**
 * The shared zero block of `blksize` bytes (what a hole reads as), or undefined when it cannot
 * be made (mmap failed: the caller allocates). One per blksize, never written by anyone — by
 * construction, not by convention:
 *   - it is a PROT_READ private anonymous mapping (native mapZeros): every page is the
 *     kernel's zero page, so it costs no memory, and a write into it faults (SIGSEGV) instead
 *     of silently turning later holes non-zero;
 *   - loadBlock hands it out only when the caller passed no `out`; with `out`, the caller's
 *     buffer is zeroed and returned — the shared block never becomes anybody's `out`, and no
 *     buffer pool can receive it (the server keeps none; BlockLoad.data says read-only).
 */
export function zeroBlock(blksize: number): Uint8Array | undefined {
  let z = zeroBlocks.get(blksize);
  if (z !== undefined) return z;
  try {
    z = new Uint8Array(native().mapZeros(blksize));
  } catch {
    return undefined;
  }
  if (zeroBlocks.size >= ZERO_BLOCKS_MAX) zeroBlocks.delete(zeroBlocks.keys().next().value!);
  zeroBlocks.set(blksize, z);
  return z;
}

// ZData records as ZODB writes them (checked on wendelin.core's own fixtures: py2 protocols
// 1-3, py3 protocol 3 — /work/shared/fixtures/wendelin-zblk, test/zbigfile.test.ts):
//   class pickle  [PROTO n]  GLOBAL "wendelin.bigfile.file_zodb\nZData\n"  [memo]  STOP
//   state pickle  [PROTO n]  bytes  [memo]  STOP
//   bytes = SHORT_BINBYTES n | BINBYTES n (py3) | SHORT_BINSTRING n | BINSTRING n (py2 str)
//   memo  = BINPUT k | LONG_BINPUT k | MEMOIZE (the memo is never read back in these records)
// Anything else (protocol 0, FRAMEs, BINBYTES8, a tuple class form, …) goes to the decoder.
const ZDATA_GLOBAL = Uint8Array.from(Buffer.from('cwendelin.bigfile.file_zodb\nZData\n', 'latin1'));
const OP_PROTO = 0x80;
const OP_STOP = 0x2e;
const OP_BINPUT = 0x71;
const OP_LONG_BINPUT = 0x72;
const OP_MEMOIZE = 0x94;

/** Position after an optional memo store at p (rec[p]), or -1 when it runs past n. */
function skipMemo(rec: Uint8Array, p: number, n: number): number {
  const op = rec[p];
  const q = op === OP_BINPUT ? p + 2 : op === OP_LONG_BINPUT ? p + 5 : op === OP_MEMOIZE ? p + 1 : p;
  return q <= n ? q : -1;
}

/**
 * The chunk bytes of a ZData record in a layout ZODB writes, or undefined (use the decoder).
 * A view into rec, no allocation; never reads outside rec; agrees with decodeRecord
 * (test/pickle-fuzz.test.ts, test/zbigfile.test.ts).
 */
export function zdataFast(rec: Uint8Array): Uint8Array | undefined {
  const n = rec.length;
  let p = 0;
  if (rec[0] === OP_PROTO) {
    if (n < 2 || rec[1]! > 5) return undefined;
    p = 2;
  }
  const g = ZDATA_GLOBAL.length;
  if (p + g > n) return undefined;
  for (let i = 0; i < g; i++) if (rec[p + i] !== ZDATA_GLOBAL[i]) return undefined;
  p = skipMemo(rec, p + g, n);
  if (p < 0 || rec[p] !== OP_STOP) return undefined;
  p++;
  if (rec[p] === OP_PROTO) {
    if (p + 2 > n || rec[p + 1]! > 5) return undefined;
    p += 2;
  }
  const op = rec[p];
  let len: number;
  if (op === 0x43 || op === 0x55) {
    // SHORT_BINBYTES, SHORT_BINSTRING: 1-byte length
    if (p + 2 > n) return undefined;
    len = rec[p + 1]!;
    p += 2;
  } else if (op === 0x42 || op === 0x54) {
    // BINBYTES (unsigned), BINSTRING (signed: ≥ 2³¹ is an error the decoder reports): 4-byte LE
    if (p + 5 > n) return undefined;
    len = (rec[p + 1]! | (rec[p + 2]! << 8) | (rec[p + 3]! << 16) | (rec[p + 4]! << 24)) >>> 0;
    if (len >= 0x80000000) return undefined;
    p += 5;
  } else return undefined;
  const end = p + len;
  if (end >= n) return undefined;
  const q = skipMemo(rec, end, n);
  if (q < 0 || q + 1 !== n || rec[q] !== OP_STOP) return undefined;
  return rec.subarray(p, end);
}

/**
 * (blksize, blktab[, extra…]): a state with extra trailing fields — one public copy of
 * wendelin.core pickles (blksize, blktab, zblk_fmt) — reads as (blksize, blktab), and
 * `warnings` says what was ignored.
 */
export function decodeZBigFileState(oid: Oid, state: PyValue): { blksize: number; blktab: Oid; warnings: string[] } {
  if (!(state instanceof Tuple) || state.items.length < 2) {
    throw new ObjectFormatError(oid, `ZBigFile: state is ${pyTypeName(state)}, want (blksize, blktab)`);
  }
  const blksize = asInt(state.items[0]!);
  if (blksize === undefined || blksize <= 0n || blksize > 0x7fffffffn) {
    throw new ObjectFormatError(oid, `ZBigFile: bad blksize ${pyTypeName(state.items[0])} ${String(blksize ?? '')}`);
  }
  const blktab = state.items[1]!;
  if (!(blktab instanceof PersistentRef) || (blktab.klass !== null && !blktab.klass.is('BTrees.LOBTree', 'LOBTree'))) {
    throw new ObjectFormatError(oid, `ZBigFile: blktab is ${pyTypeName(blktab)}, want ref to LOBTree`);
  }
  const extra = state.items.slice(2);
  const warnings =
    extra.length === 0
      ? []
      : [`ZBigFile ${hex16(oid)}: state has ${extra.length} extra trailing field(s) after (blksize, blktab): ${extra.map(describeExtra).join(', ')}; ignored`];
  return { blksize: Number(blksize), blktab: blktab.oid, warnings };
}

/** A short text of an ignored state field: strings and numbers as Python reprs them, else the type. */
function describeExtra(v: PyValue): string {
  const str = typeof v === 'string' ? v : v instanceof ByteStr ? v.toString() : undefined;
  if (str !== undefined) {
    if (str.length > 40) return `${pyTypeName(v)} of ${str.length} chars`;
    return /^[\x20-\x7e]*$/.test(str) && !/['\\]/.test(str) ? `'${str}'` : JSON.stringify(str);
  }
  if (typeof v === 'bigint' || typeof v === 'number') return String(v);
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (v === null) return 'None';
  return pyTypeName(v);
}

// ---- finding ZBigFiles ----

/** Class of an object at `at` without decoding its state (cheap: class pickle only). */
export async function isZBigFile(loader: ObjectLoader, oid: Oid, at: Tid): Promise<boolean> {
  const o = await loader.loadObject(oid, at);
  return o.klass.is(MOD, 'ZBigFile');
}

// ---- writing ----

/** Trim trailing zero bytes (what wendelin.core stores). */
export function trimZeros(b: Uint8Array): Uint8Array {
  let n = b.length;
  while (n > 0 && b[n - 1] === 0) n--;
  return b.subarray(0, n);
}

/**
 * A private copy: the caller may reuse its buffer before commit. (Buffer#slice returns a
 * view, not a copy — `new Uint8Array(b)` always copies.)
 */
function copyBytes(b: Uint8Array): Uint8Array {
  return new Uint8Array(b);
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/**
 * Make sure the database has its root object (oid 0, a PersistentMapping), created in a
 * transaction of its own as ZODB's DB does ("initial database creation").
 */
export async function ensureRoot(storage: IWritableStorage): Promise<void> {
  try {
    await storage.load(0n, storage.head());
    return;
  } catch (e) {
    if (!isCode(e, 'WCFS_ENOOBJ') && !isCode(e, 'WCFS_ENODATA')) throw e;
  }
  const root = new PyDict();
  root.set('data', new PyDict());
  // Like ZODB's DB: the root is stored under z64 explicitly, not allocated by newOid.
  const txn = new WriteTxn(storage);
  txn.storeNew(0n, PMAPPING_CLASS, root);
  await txn.commit({ description: 'initial database creation' });
}

/** Set root[name] = ref in the transaction (root must exist). */
export async function rootSet(txn: WriteTxn, name: string, ref: PersistentRef): Promise<void> {
  const root = await txn.loadObject(0n);
  const data = root.state instanceof PyDict ? (root.state.get('data') ?? root.state.get('_container')) : undefined;
  if (!(data instanceof PyDict)) throw new ObjectFormatError(0n, 'root is not a PersistentMapping');
  data.set(name, ref);
  txn.store(0n, root.klass, root.state);
}

/** Root mapping entries name → oid (for tools and tests). */
export async function rootEntries(loader: ObjectLoader, at: Tid): Promise<Map<string, PersistentRef>> {
  const out = new Map<string, PersistentRef>();
  const root = await loader.loadObject(0n, at);
  const data = root.state instanceof PyDict ? (root.state.get('data') ?? root.state.get('_container')) : undefined;
  if (data instanceof PyDict) {
    for (const [k, v] of data.entries) {
      const name = typeof k === 'string' ? k : asBytes(k) ? Buffer.from(asBytes(k)!).toString('latin1') : undefined;
      if (name !== undefined && v instanceof PersistentRef) out.set(name, v);
    }
  }
  return out;
}

/** Create a ZBigFile (and its empty blktab) in the transaction; returns its oid. */
export function createZBigFile(txn: WriteTxn, blksize: number): Oid {
  if (!Number.isInteger(blksize) || blksize <= 0 || blksize > 0x7fffffff) {
    throw new ObjectFormatError(undefined, `createZBigFile: bad blksize ${blksize}`);
  }
  const oid = txn.newOid();
  const blktab = btreeCreate(txn, 'LO');
  txn.store(oid, ZBIGFILE_CLASS, new Tuple([BigInt(blksize), new PersistentRef(blktab, LOBTREE_CLASS)]));
  return oid;
}

/** Bound on the new oids setBlock allocates without awaiting in between (ZBlk, ZBlk1 + chunktab, B-tree splits). */
const SETBLOCK_OIDS = 64;

export interface SetBlockOptions {
  /** Storage format; default: keep the block's current format, ZBlk0 for a new block. */
  format?: ZBlkKind;
}

/**
 * Write block `blk` of ZBigFile `foid` in the transaction. `data` is at most blksize bytes
 * (shorter = zero-padded). null punches a hole (removes the block from blktab).
 */
export async function setBlock(txn: WriteTxn, foid: Oid, blk: number | bigint, data: Uint8Array | null, opt: SetBlockOptions = {}): Promise<void> {
  const key = BigInt(blk);
  if (key < 0n) throw new ObjectFormatError(foid, `setBlock: blk ${key} < 0`);
  // new oids between two awaits below: a ZBlk + B-tree splits (each btreeSet awaits)
  await txn.reserveOids(SETBLOCK_OIDS);
  const f = await txn.loadObject(foid);
  if (!f.klass.is(MOD, 'ZBigFile')) throw new NotZBigFileError(foid, String(f.klass));
  const { blksize, blktab } = decodeZBigFileState(foid, f.state);

  if (data === null) {
    await btreeDelete(txn, blktab, key);
    return;
  }
  if (data.length > blksize) throw new ObjectFormatError(foid, `setBlock: ${data.length} bytes > blksize ${blksize}`);

  const cur = (await btreeGet(txn, blktab, key, txn.at)).value;
  const curRef = cur instanceof PersistentRef ? cur : undefined;
  const curKind = curRef ? (zblkKind(curRef.klass) ?? (await zblkKindOf(txn, curRef.oid))) : undefined;
  const format: ZBlkKind = opt.format ?? curKind ?? 'ZBlk0';

  if (format === 'ZBlk0') {
    const trimmed = copyBytes(trimZeros(data));
    if (curRef && curKind === 'ZBlk0') {
      await txn.loadObject(curRef.oid); // registers the base serial for conflict detection
      txn.store(curRef.oid, ZBLK0_CLASS, trimmed);
    } else {
      const z = txn.newOid();
      txn.store(z, ZBLK0_CLASS, trimmed);
      await btreeSet(txn, blktab, key, new PersistentRef(z, ZBLK0_CLASS));
    }
    return;
  }

  // ZBlk1: reuse the current ZBlk1 and diff chunk by chunk, or start a new one.
  let zoid: Oid;
  let chunktab: Oid;
  if (curRef && curKind === 'ZBlk1') {
    zoid = curRef.oid;
    const z = await txn.loadObject(zoid);
    if (!(z.state instanceof PersistentRef)) throw new ObjectFormatError(zoid, 'ZBlk1: state is not a chunktab ref');
    chunktab = z.state.oid;
  } else {
    zoid = txn.newOid();
    chunktab = btreeCreate(txn, 'IO');
    txn.store(zoid, ZBLK1_CLASS, new PersistentRef(chunktab, IOBTREE_CLASS));
    await btreeSet(txn, blktab, key, new PersistentRef(zoid, ZBLK1_CLASS));
  }
  const existing = new Map<bigint, PersistentRef>();
  for await (const [off, v] of btreeItems(txn, chunktab, txn.at)) {
    if (v instanceof PersistentRef) existing.set(off, v);
  }
  let changed = false;
  for (let off = 0; off < blksize; off += ZBLK1_CHUNKSIZE) {
    const chunk = trimZeros(data.subarray(off, Math.min(off + ZBLK1_CHUNKSIZE, data.length)));
    const boff = BigInt(off);
    const ref = existing.get(boff);
    if (chunk.length === 0) {
      if (ref) {
        await btreeDelete(txn, chunktab, boff);
        changed = true;
      }
      continue;
    }
    if (ref) {
      const zd = await txn.loadObject(ref.oid);
      const old = asBytes(zd.state);
      if (old && bytesEqual(old, chunk)) continue;
      txn.store(ref.oid, ZDATA_CLASS, copyBytes(chunk));
    } else {
      const d = txn.newOid();
      txn.store(d, ZDATA_CLASS, copyBytes(chunk));
      await btreeSet(txn, chunktab, boff, new PersistentRef(d, ZDATA_CLASS));
    }
    changed = true;
  }
  // The writer invariant: any chunk change marks the ZBlk1 itself changed.
  if (changed && !txn.changed().includes(zoid)) {
    const z = await txn.loadObject(zoid);
    txn.store(zoid, ZBLK1_CLASS, z.state);
  }
}

async function zblkKindOf(txn: WriteTxn, oid: Oid): Promise<ZBlkKind | undefined> {
  return zblkKind((await txn.loadObject(oid)).klass);
}
