// FileStorage (fs1) driver: reads, follows and writes a ZODB `Data.fs` (zodb.md §2).
//
// Owns: the Data.fs file descriptor, the oid → position index (FsIndex), the committed end
// `topPos` and head tid, the writer lock `Data.fs.lock`, the `.index` file, and the watches.
//
//   1) open      — lock (writers only) → a regular file (fstat; a FIFO never blocks the open)
//                  → magic → index: load `.index` + verify, or rebuild by a full scan (the
//                  native header walk of nativescan.ts as far as it goes, then the JS scanner)
//                  → catch up from the index's pos → tail: a status-'c' or incomplete txn is truncated
//                  away by a writer, left to the follower by a reader.
//   2) load      — index (or, for an older revision, the nearest recent record: recent.ts) →
//                  prev chain until tid ≤ at → backpointer chain until data (zodb.md §2.6).
//                  Synchronous preads behind the async API, through a read-ahead window
//                  (RecordReader, scan.ts): records met in file order (a ZBlk1's chunks) cost
//                  no syscall, a random record one 8 KiB pread.
//   3) iterate   — forward walk of committed txns with records and resolved backpointers.
//   4) follow    — read-only opens: checkTail() on follower wake-ups and on sync(); every
//                  committed txn past topPos is indexed, published and sent to the watches;
//                  a replaced file (a pack) is indexed in slices and switched to (switchToPacked).
//   5) commit    — writers: build the txn in memory, write it with status 'c', fsync, flip the
//                  status to ' ', fsync, publish (zodb.md §2.7). Serialized by commitMu.
//   6) close     — stop following, end watches, save `.index` (writers), close fd, unlock.
//
// Invariants:
//   topPos = end of the last committed txn we have indexed; FILE_HEADER_SIZE ≤ topPos ≤ size.
//   index[oid] = position of oid's newest record below topPos (deleted objects included).
//   recent: per oid, the positions of a suffix of its records below topPos (recent.ts R1).
//   head = tid of the txn ending at topPos (0n for an empty storage).
//   Only publish() and a pack switch change index/topPos/head (the switch: index and topPos
//   of the new file, same head), each synchronously, so every synchronous read sees one
//   consistent state; nothing at or past topPos is read by load/iterate. While a switch is
//   under way (switching ≠ null) nothing is published.
//   A reader never writes Data.fs or .index; a writer holds the flock on Data.fs.lock for its
//   whole life (exactly like zc.lockfile), so no other process appends while it runs, and it
//   does not follow the file.
//
// Concurrency (one JS thread; async sections are the only interleavings):
//   commitMu serializes commit() and close(); load/iterate steps/checkTail are synchronous;
//   a pack switch's walk yields between slices (loads go on, from the old file).
//   Lock order: commitMu > (synchronous sections).
//
// Notes: positions are numbers (< 2⁴⁸ by the .index format); oids/tids are bigint.

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import createDebug from 'debug';

import { BadArgumentError, ClosedError, ConflictError, CorruptError, NoDataError, NoObjectError, StorageLockedError } from '../errors.js';
import { hex16, newTid, type Oid, type Tid } from '../ids.js';
import { PyDict, encodePickle, type PyValue } from '../pickle/index.js';
import type { CommitEvent, CommitRequest, DataRecord, ICommitter, IStorage, LoadResult, StorageWatch, TxnRecord } from '../storage.js';
import { native } from '../../native.js';
import { logLine } from '../../util/log.js';
import { NotAFileError, ReadOnlyError, StorageChangedError, StorageNotFoundError } from './errors.js';
import { Follower } from './follow.js';
import { WatchQueue, type WatchQueueLimits } from '../watchq.js';
import {
  DATA_HEADER_SIZE,
  FILE_HEADER_SIZE,
  MAX_META_LEN,
  MAX_POS,
  TXN_HEADER_SIZE,
  checkLinked,
  decodeMagic,
  encodeMagic,
  encodeTxn,
  txnEnd,
  u64big,
  type DataHeader,
  type Magic,
  type TxnDataInit,
  type TxnHeader,
} from './format.js';
import { FsIndex, IndexFormatError, decodeIndexFile, encodeIndexFile } from './fsindex.js';
import { DEFAULT_RECENT_RECORDS, RecentRecords } from './recent.js';
import { nativeRebuild, nativeWalkSliced, type ScanWindows } from './nativescan.js';
import { RecordReader, SeqReader, decodeRecordAt, preadFull, readDataHeader, readFresh, readTxnBefore, scanTxn, type ScanRec, type ScanStep } from './scan.js';

/** Records at least this big are served from an mmap of the file (see FileStorage.mapped). */
const MAP_MIN = 256 * 1024;
const MAP_HEADROOM = 256 * 1024 * 1024;

const log = createDebug('wcfs:zodb:fs1');

const writeAsync = (fd: number, buf: Uint8Array, off: number, len: number, pos: number): Promise<number> =>
  new Promise((resolve, reject) => fs.write(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
const fsyncAsync = promisify(fs.fsync);

const MAX_TID_U64 = 0xffffffffffffffffn;
/** Data record header + backpointer. */
const HDR_BP = DATA_HEADER_SIZE + 8;

export interface FileStorageOptions {
  /** Open without taking the lock and never write. Default false (ZODB's default). */
  readOnly?: boolean;
  /**
   * Create an empty storage (magic only) when the file does not exist. Unlike ZODB's
   * create=True, an existing file is never truncated.
   */
  create?: boolean;
  /** Follower poll period (ms); inotify wake-ups come in between. Default 1000. */
  pollMs?: number;
  /** How long an incomplete txn at the tail may stay unchanged before it is garbage. Default 3000. */
  garbageMs?: number;
  /**
   * How long the followed path may be missing before that is fatal (a pack renames Data.fs
   * away and the packed file in: for a moment there is none). Default 1000.
   */
  missingMs?: number;
  /** How many trailing txns to check a loaded `.index` against. Default 10. */
  verifyTxns?: number;
  /** Where warnings go (index rebuilt, tail truncated). Default: stderr. */
  warn?: (msg: string) => void;
  /** Virtual size beyond the file's end mapped for big records (see mapped). Default 256 MiB. */
  mapHeadroom?: number;
  /**
   * How many published records to remember the positions of, so loads as of recent older
   * revisions skip the prev walk (recent.ts). Default 2¹⁷; 0 disables.
   */
  recentRecords?: number;
  /** Bounds of each watch's queue (watchq.ts Q1); default WATCH_QUEUE_LIMITS. */
  watchLimits?: WatchQueueLimits;
  /**
   * Rebuild a missing/unusable `.index` with the native header scanner (nativescan.ts).
   * Default true; false forces the JS scanner, window sizes force small windows (tests).
   */
  nativeScan?: boolean | ScanWindows;
  /** How long a pack switch's index walk runs between turns of the event loop (ms). Default 5. */
  switchSliceMs?: number;
  /** Test hooks. */
  hooks?: {
    /** Called in commit after the status-'c' txn is durable and before its status flips. */
    afterVote?: (tpos: number, len: number) => void | Promise<void>;
  };
}

export class FileStorage implements IStorage, ICommitter {
  readonly url: string;
  /** Absolute path of Data.fs; also the `file` of every CorruptError. */
  readonly path: string;
  readonly readOnly: boolean;

  private magic_: Magic = 'FS30';
  private fd = -1;
  private lockFd = -1;
  private readonly opts: Required<Pick<FileStorageOptions, 'pollMs' | 'garbageMs' | 'verifyTxns'>> & FileStorageOptions;
  private readonly warn: (msg: string) => void;

  // committed state — written only by open and publish(), both synchronous (no lock needed)
  private index = new FsIndex();
  /** Positions of the records published since open (or the last pack switch): recent.ts. */
  private recent: RecentRecords;
  private topPos = FILE_HEADER_SIZE;
  private headTid: Tid = 0n;
  /** Largest oid handed out by newOid() (or seen in the index). */
  private oidAlloc: Oid = 0n;

  // follower state (read-only opens) — touched by watch()/unwatch(), checkTail(), close()
  private follower: Follower | null = null;
  private readonly watches = new Set<WatchQueue>();
  /** A pack switch under way (switchToPacked): checkTail waits for it, sync() and close() await it. */
  private switching: Promise<void> | null = null;
  /** Set once following hit an unrecoverable condition; sync()/watch() report it. */
  private fatal: Error | null = null;
  /** When an incomplete tail was first seen at size tailSize (0 = none pending). */
  private tailSince = 0;
  private tailSize = -1;
  /** When the followed path was first seen missing (0 = it is there). */
  private missingSince = 0;
  /** Pack boundary (see packedTo()). */
  private packedTo_: Tid = 0n;
  /** Bumped when a pack replaced the file under us: iterations in flight must not go on. */
  private gen = 0;
  private readonly packListeners = new Set<(packedTo: Tid) => void>();

  /** How open went (diagnostics, tests). */
  readonly openInfo = { indexLoaded: false, /** txns read by the open-time scan */ scannedTxns: 0, truncatedBytes: 0 };

  // lifecycle
  private closing = false;
  private closed = false;
  /** Tail of the commit queue: commit() and close() chain on it (an async mutex). */
  private commitMu: Promise<void> = Promise.resolve();
  /** Read-ahead window of load() (see RecordReader); created at open. */
  private rr!: RecordReader;
  /** Read-only mmap of the file for big records (see mapped); replaced when outgrown. */
  private fmap: Uint8Array | undefined;
  /** An mmap failed: loadTransient uses the read-ahead window from then on. */
  private mapBroken = false;
  /** A DataView of fmap's buffer (loadMapped's header reads). */
  private fmapView: DataView | undefined;

  private constructor(absPath: string, readOnly: boolean, opts: FileStorageOptions) {
    this.path = absPath;
    this.url = pathToFileURL(absPath).href;
    this.readOnly = readOnly;
    this.opts = { pollMs: 1000, garbageMs: 3000, verifyTxns: 10, ...opts };
    this.warn = opts.warn ?? ((msg) => logLine(`wcfs: warning: ${msg}`));
    this.recent = new RecentRecords(opts.recentRecords ?? DEFAULT_RECENT_RECORDS);
  }

  get fileMagic(): Magic {
    return this.magic_;
  }

  // ---- 1) open ----

  static async open(p: string, opts: FileStorageOptions = {}): Promise<FileStorage> {
    const abs = path.resolve(p);
    const readOnly = opts.readOnly ?? false;
    if (readOnly && opts.create) throw new BadArgumentError(`${abs}: cannot create a storage opened read-only`);
    const exists = fs.existsSync(abs);
    if (!exists && !opts.create) throw new StorageNotFoundError(abs);

    const st = new FileStorage(abs, readOnly, opts);
    try {
      if (!readOnly) st.lockFd = takeLock(abs + '.lock');
      st.openFile();
      st.loadState();
      st.packedTo_ = packBoundary(st.fd, st.topPos, st.path);
    } catch (e) {
      st.releaseFds();
      throw e;
    }
    log('%s: opened %s: head %s, topPos %d, %d oids', abs, readOnly ? 'read-only' : 'read-write', hex16(st.headTid), st.topPos, st.index.size);
    return st;
  }

  private openFile(): void {
    try {
      // O_NONBLOCK: open of a FIFO would wait for a writer; on a regular file it has no effect.
      this.fd = fs.openSync(this.path, (this.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | fs.constants.O_NONBLOCK);
      const st = fs.fstatSync(this.fd);
      if (!st.isFile()) throw new NotAFileError(this.path, st.isDirectory() ? 'is a directory' : st.isFIFO() ? 'is a FIFO' : 'is not a regular file');
      this.rr = new RecordReader(this.fd, this.path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EISDIR') throw new NotAFileError(this.path, 'is a directory'); // O_RDWR
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !this.opts.create) throw e;
      // 'wx+': create exclusively, so a concurrent creator cannot be clobbered.
      this.fd = fs.openSync(this.path, 'wx+');
      this.rr = new RecordReader(this.fd, this.path);
    }
    const size = fs.fstatSync(this.fd).size;
    if (size === 0 && !this.readOnly) {
      // New storage (ZODB writes the magic into an empty file too). No root object: the
      // layer above creates it, as ZODB's DB does.
      fs.writeSync(this.fd, encodeMagic('FS30'), 0, FILE_HEADER_SIZE, 0);
      fs.fsyncSync(this.fd);
      this.magic_ = 'FS30';
      return;
    }
    const mb = new Uint8Array(FILE_HEADER_SIZE);
    const got = preadFull(this.fd, mb, 0, FILE_HEADER_SIZE, 0);
    this.magic_ = decodeMagic(mb.subarray(0, got), this.path);
  }

  /** Index (loaded or rebuilt), catch-up, tail handling. */
  private loadState(): void {
    const size = fs.fstatSync(this.fd).size;
    let loaded = this.loadIndexFile(size);
    let step: ScanStep;
    if (loaded) {
      try {
        step = this.scanForward(size);
      } catch (e) {
        if (!(e instanceof CorruptError)) throw e;
        // The index pointed somewhere plausible, yet what follows is not a valid txn: do not
        // trust it; a full scan decides whether the file itself is corrupt.
        this.warn(`${this.path}.index: catching up from @${this.topPos} failed (${e.message}); rebuilding the index`);
        loaded = false;
      }
    }
    this.openInfo.indexLoaded = loaded;
    if (!loaded) {
      this.resetIndex();
      const ns = this.opts.nativeScan ?? true;
      if (ns !== false) {
        // The native walk goes as far as every txn passes; the JS scanner takes over from there,
        // so what ends the scan (eof, tail, CorruptError) is decided by the JS code alone.
        const r = nativeRebuild(this.fd, size, FILE_HEADER_SIZE, this.index, ns === true ? undefined : ns);
        this.topPos = r.topPos;
        this.headTid = r.headTid;
        this.openInfo.scannedTxns = r.txns;
        step = this.scanForward(size);
        if (r.dirty) {
          // the index holds records of a txn the native walk did not finish (the file shrank
          // under it, or a check the JS scanner passed after all): start over in JS
          this.resetIndex();
          step = this.scanForward(size);
        }
      } else {
        step = this.scanForward(size);
      }
    }
    this.oidAlloc = this.index.maxOid > 0n ? this.index.maxOid : 0n;

    const tail = step!;
    if (tail.kind === 'partial' || tail.kind === 'inprogress') {
      const what = tail.kind === 'inprogress' ? `unfinished commit (status 'c') of txn ${hex16(tail.txn.tid)}` : tail.detail;
      if (!this.readOnly) {
        // Only the lock holder may do this: the writer that left it is gone.
        this.warn(`${this.path}: truncating ${size - this.topPos} bytes at @${this.topPos}: ${what}`);
        fs.ftruncateSync(this.fd, this.topPos);
        fs.fsyncSync(this.fd);
        this.openInfo.truncatedBytes = size - this.topPos;
      } else {
        log('%s: tail @%d: %s (left to the follower)', this.path, this.topPos, what);
      }
    }
  }

  private resetIndex(): void {
    this.index = new FsIndex();
    this.openInfo.scannedTxns = 0;
    this.topPos = FILE_HEADER_SIZE;
    this.headTid = 0n;
  }

  /**
   * Load and verify `.index`; on success set index/topPos/head and return true. Any problem →
   * warning + false (caller rebuilds). A missing file is not a problem worth a warning.
   */
  private loadIndexFile(size: number): boolean {
    const ipath = this.path + '.index';
    let buf: Uint8Array;
    try {
      // O_NONBLOCK: a FIFO planted there must not block the open (it is then refused below)
      const fd = fs.openSync(ipath, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      try {
        const st = fs.fstatSync(fd);
        if (!st.isFile()) {
          this.warn(
            `${ipath}: ${st.isFIFO() ? 'is a FIFO' : st.isDirectory() ? 'is a directory' : 'is a special file'}, not a regular file; rebuilding the index by scanning ${this.path}`,
          );
          return false;
        }
        buf = fs.readFileSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.warn(`${ipath}: cannot read (${(e as Error).message}); rebuilding the index`);
      else log('%s: no index file; rebuilding by scan', this.path);
      return false;
    }
    try {
      const { pos, index } = decodeIndexFile(buf, ipath);
      const head = this.verifyIndex(index, pos, size, ipath);
      this.index = index;
      this.topPos = pos;
      this.headTid = head;
      log('%s: loaded index: pos %d, %d oids', this.path, pos, index.size);
      return true;
    } catch (e) {
      if (!(e instanceof IndexFormatError || e instanceof CorruptError)) throw e;
      this.warn(`${ipath}: ignored (${e.message}); rebuilding the index by scanning ${this.path}`);
      return false;
    }
  }

  /**
   * A loaded index must cover a txn boundary inside the file, and the newest record of every
   * oid in the last `verifyTxns` txns must be where it says (what ZODB and neo/go check).
   * Returns the tid at pos.
   */
  private verifyIndex(index: FsIndex, pos: number, size: number, ipath: string): Tid {
    if (pos > size) throw new IndexFormatError(ipath, `covers up to @${pos} but ${this.path} has only ${size} bytes`);
    if (pos === FILE_HEADER_SIZE) {
      if (index.size !== 0) throw new IndexFormatError(ipath, `empty file range but ${index.size} oids`);
      return 0n;
    }
    const seen = new Set<Oid>();
    let end = pos;
    let head: Tid = 0n;
    let later: Tid = MAX_TID_U64;
    for (let i = 0; i < this.opts.verifyTxns && end > FILE_HEADER_SIZE; i++) {
      const t = readTxnBefore(this.fd, end, this.path);
      if (t.status === 'c') throw new IndexFormatError(ipath, `covers an unfinished txn @${t.pos}`);
      if (t.tid >= later) throw new IndexFormatError(ipath, `txn @${t.pos}: tids not increasing`);
      if (i === 0) head = t.tid;
      later = t.tid;
      const step = scanTxn(new SeqReader(this.fd, end), t.pos, -1n, this.path);
      if (step.kind !== 'txn') throw new IndexFormatError(ipath, `txn @${t.pos} unreadable (${step.kind})`);
      for (let j = step.recs.length - 1; j >= 0; j--) {
        const d = step.recs[j]!;
        if (seen.has(d.oid)) continue;
        seen.add(d.oid);
        const ip = index.get(d.oid);
        if (ip !== d.pos) {
          throw new IndexFormatError(ipath, `oid ${hex16(d.oid)}: index says @${ip ?? 'nothing'}, newest record is @${d.pos}`);
        }
      }
      end = t.pos;
    }
    return head;
  }

  /**
   * Index committed txns from topPos up to `size` (publishing nothing: open has no watchers).
   * Returns the step that stopped the walk.
   */
  private scanForward(size: number): ScanStep {
    const r = new SeqReader(this.fd, size);
    for (;;) {
      const step = scanTxn(r, this.topPos, this.headTid === 0n ? -1n : this.headTid, this.path);
      if (step.kind !== 'txn') return step;
      for (const d of step.recs) this.index.set(d.oid, d.pos);
      this.topPos = txnEnd(step.txn);
      this.headTid = step.txn.tid;
      this.openInfo.scannedTxns++;
    }
  }

  // ---- IStorage basics ----

  head(): Tid {
    return this.headTid;
  }

  lastOid(): Oid {
    const m = this.index.maxOid;
    return m < 0n ? 0n : m;
  }

  /**
   * Pack boundary (IStorage.packedTo): the tid of the last txn a pack left (status 'p'), 0n
   * when the file was never packed. A pack to time t keeps, of the txns ≤ t, only the records
   * current at t (as status-'p' txns, tids kept) and every txn > t whole; so the state as of
   * any revision ≥ the last 'p' txn is complete, and below it may not be.
   */
  packedTo(): Tid {
    return this.packedTo_;
  }

  onPacked(listener: (packedTo: Tid) => void): () => void {
    this.packListeners.add(listener);
    return () => this.packListeners.delete(listener);
  }

  /** Number of oids in the index (diagnostics). */
  get oidCount(): number {
    return this.index.size;
  }

  /** End of the committed data (diagnostics, tests). */
  get committedEnd(): number {
    return this.topPos;
  }

  /** A snapshot of the oid → newest-record-position map (tests, fsck). */
  indexEntries(): Array<[Oid, number]> {
    return [...this.index.entries()];
  }

  async sync(): Promise<Tid> {
    this.checkOpen('sync');
    if (this.readOnly) {
      this.checkTail();
      // a pack switch under way: what was committed before this call is in the new file
      while (this.switching !== null) await this.switching;
    }
    if (this.fatal !== null) throw this.fatal;
    return this.headTid;
  }

  private checkOpen(op: string): void {
    if (this.closed) throw new ClosedError(`${this.path}: ${op}`);
  }

  // ---- 2) load ----

  async load(oid: Oid, at: Tid): Promise<LoadResult> {
    return this.loadSync(oid, at);
  }

  /**
   * Like loadSync, but the data is a view valid only until the next call on this storage: for
   * callers that copy what they need at once (assembling a ZBlk1's chunks). No allocation, so
   * no fresh-memory page faults; and no read syscall either when the file's mmap is available
   * (headers and data are read straight from it — the read-ahead window would first copy
   * every byte out of the page cache, which alone costs as much as the reader's own copy:
   * notes.md §8 "ZBlk1"). Falls back to the read-ahead window when the mmap fails.
   */
  loadTransient(oid: Oid, at: Tid): LoadResult {
    this.checkOpen('load');
    const m = this.mapBroken ? undefined : this.mapFor(this.topPos);
    return m === undefined ? this.loadSync(oid, at, true) : this.loadMapped(oid, at, m);
  }

  /**
   * IStorage.loadTransientMany: loadMapped's common case for many oids in one native call
   * (native/fs1views.cc: the header checks of the fast case above, no bigint or view per
   * record); the rest (-1) is left to loadTransient. undefined when the mmap is unavailable.
   */
  loadTransientMany(oids: BigUint64Array, n: number, at: Tid, ranges: Float64Array): Uint8Array | undefined {
    this.checkOpen('load');
    const m = this.mapBroken ? undefined : this.mapFor(this.topPos);
    if (m === undefined) return undefined;
    for (let i = 0; i < n; i++) ranges[2 * i] = this.startPos(oids[i]!, at) ?? -1;
    native().fs1DataViews(m, this.topPos, at, oids, n, ranges);
    return m;
  }

  /** loadSync over the mmap `m` (covering [0, topPos)): headers parsed in place, data a view. */
  private loadMapped(oid: Oid, at: Tid, m: Uint8Array): LoadResult {
    const pos = this.startPos(oid, at);
    if (pos === undefined) throw new NoObjectError(oid, this.path);
    const limit = this.topPos;
    // The common case — the newest record is the one wanted and holds its data — read with two
    // bigints instead of decodeRecordAt's eight (~0.1 µs of a ZBlk1 chunk's ~0.3 µs), with the
    // same checks as decodeDataHeader; anything else takes the general walk below.
    let dv = this.fmapView;
    if (dv === undefined || dv.buffer !== m.buffer) dv = this.fmapView = new DataView(m.buffer, m.byteOffset, m.byteLength);
    if (dv.getBigUint64(pos) === oid) {
      const tid = dv.getBigUint64(pos + 8);
      const prev = dv.getUint32(pos + 16) * 2 ** 32 + dv.getUint32(pos + 20);
      const tloc = dv.getUint32(pos + 24) * 2 ** 32 + dv.getUint32(pos + 28);
      const vlen = dv.getUint16(pos + 32);
      const plen = dv.getUint32(pos + 34) * 2 ** 32 + dv.getUint32(pos + 38);
      const dpos = pos + DATA_HEADER_SIZE;
      if (tid <= at && vlen === 0 && plen > 0 && plen <= MAX_POS && prev < pos && tloc < pos && dpos + plen <= limit) {
        return new MappedLoad(m.subarray(dpos, dpos + plen), tid, this.path, pos);
      }
    }
    // as in loadSync: a committed record is followed by ≥ 9 bytes below limit, so HDR_BP bytes
    // at any record position are inside [0, limit) and thus inside the map
    let h: ScanRec = decodeRecordAt(m, pos, HDR_BP, pos, this.path);
    if (h.oid !== oid) {
      throw new CorruptError(this.path, pos, `index entry of oid ${hex16(oid)} points to a record of oid ${hex16(h.oid)}`);
    }
    while (h.tid > at) {
      if (h.prev === 0) throw new NoDataError(oid, at, undefined, this.path);
      const p = decodeRecordAt(m, h.prev, HDR_BP, h.prev, this.path);
      checkLinked(h, p, 'prev', this.path);
      h = p;
    }
    const serial = h.tid;
    while (h.plen === 0) {
      if (h.backpointer === 0) throw new NoDataError(oid, at, serial, this.path);
      const b = decodeRecordAt(m, h.backpointer, HDR_BP, h.backpointer, this.path);
      checkLinked(h, b, 'backpointer', this.path);
      h = b;
    }
    const dpos = h.pos + DATA_HEADER_SIZE;
    if (dpos + h.plen > limit) {
      throw new CorruptError(this.path, h.pos, `record of ${h.plen} bytes runs past the committed end @${limit}`);
    }
    return new MappedLoad(m.subarray(dpos, dpos + h.plen), serial, this.path, h.pos);
  }

  /**
   * Where a load of oid as of `at` starts its prev walk: the newest record (index) or, for an
   * older revision, the nearest published record at or above it (recent.ts R1). undefined: no
   * such oid.
   */
  private startPos(oid: Oid, at: Tid): number | undefined {
    return (at < this.headTid ? this.recent.start(oid, at) : undefined) ?? this.index.get(oid);
  }

  /** load() without the promise: for callers that batch many loads synchronously. */
  loadSync(oid: Oid, at: Tid, transient = false): LoadResult {
    this.checkOpen('load');
    const pos = this.startPos(oid, at);
    if (pos === undefined) throw new NoObjectError(oid, this.path);

    // Every committed record is followed by ≥ 9 bytes (backpointer or data, then at least the
    // txn trailer), so header + backpointer can always be read in one go.
    const rr = this.rr;
    const limit = this.topPos;
    let h: ScanRec = decodeRecordAt(rr.peek(pos, HDR_BP, limit), 0, HDR_BP, pos, this.path);
    if (h.oid !== oid) {
      throw new CorruptError(this.path, pos, `index entry of oid ${hex16(oid)} points to a record of oid ${hex16(h.oid)}`);
    }

    // Older revision: walk prev links.
    while (h.tid > at) {
      if (h.prev === 0) throw new NoDataError(oid, at, undefined, this.path);
      const p = decodeRecordAt(rr.peek(h.prev, HDR_BP, limit), 0, HDR_BP, h.prev, this.path);
      checkLinked(h, p, 'prev', this.path);
      h = p;
    }
    const serial = h.tid;
    // Backpointers: undo/copy re-use an older record's data; 0 = deleted (zodb.md §2.4).
    while (h.plen === 0) {
      if (h.backpointer === 0) throw new NoDataError(oid, at, serial, this.path);
      const b = decodeRecordAt(rr.peek(h.backpointer, HDR_BP, limit), 0, HDR_BP, h.backpointer, this.path);
      checkLinked(h, b, 'backpointer', this.path);
      h = b;
    }
    // where: the record holding the bytes (after backpointers), for upper layers' errors
    const dpos = h.pos + DATA_HEADER_SIZE;
    const data = transient ? rr.peek(dpos, h.plen, limit) : (this.mapped(dpos, h.plen, limit) ?? rr.take(dpos, h.plen, limit));
    return { data, serial, where: `${this.path} @${h.pos}` };
  }

  /**
   * A big record as a view into a read-only mmap of the file — no copy (notes.md
   * "Performance", D9): bytes before topPos never change in place, so the view is as good as
   * a private copy. The map covers the file with headroom and is replaced when the file
   * outgrows it; old maps live while views of them do. undefined: small record, or mmap
   * failed (callers copy then).
   */
  private mapped(pos: number, n: number, limit: number): Uint8Array | undefined {
    if (n < MAP_MIN || pos + n > limit) return undefined;
    return this.mapFor(pos + n)?.subarray(pos, pos + n);
  }

  /** The mmap, (re)made to cover [0, end) (end ≤ topPos); undefined when mmap fails. */
  private mapFor(end: number): Uint8Array | undefined {
    if (this.fmap === undefined || end > this.fmap.length) {
      const room = this.opts.mapHeadroom ?? MAP_HEADROOM;
      const want = Math.ceil((this.topPos + room) / room) * room;
      try {
        this.fmap = new Uint8Array(native().mapFile(this.fd, want));
      } catch (e) {
        log('%s: mmap: %s (falling back to reads)', this.path, (e as Error).message);
        this.mapBroken = true; // transient loads stop trying; big records still retry
        return undefined;
      }
    }
    return this.fmap;
  }

  /** The data a record stands for: its own, or via backpointers; null = deleted. */
  private resolveData(d: ScanRec, rr: RecordReader): Uint8Array | null {
    const limit = this.topPos;
    let h = d;
    while (h.plen === 0) {
      if (h.backpointer === 0) return null;
      const b = decodeRecordAt(rr.peek(h.backpointer, HDR_BP, limit), 0, HDR_BP, h.backpointer, this.path);
      checkLinked(h, b, 'backpointer', this.path);
      h = b;
    }
    return rr.take(h.pos + DATA_HEADER_SIZE, h.plen, limit);
  }

  // ---- 3) iterate ----

  /** Position of the first committed txn with tid ≥ tid (topPos if none). */
  private findTxn(tid: Tid): number {
    if (this.topPos === FILE_HEADER_SIZE || tid > this.headTid) return this.topPos;
    const firstTid = u64big(readFresh(this.fd, FILE_HEADER_SIZE, TXN_HEADER_SIZE, this.path, 'txn header'), 0);
    if (tid <= firstTid) return FILE_HEADER_SIZE;
    if (tid - firstTid < this.headTid - tid) {
      // forward from the start, headers only
      const r = new SeqReader(this.fd, this.topPos, 4096);
      let pos = FILE_HEADER_SIZE;
      let prev = -1n;
      for (;;) {
        const step = scanTxn(r, pos, prev, this.path, false);
        if (step.kind !== 'txn') return this.topPos;
        if (step.txn.tid >= tid) return pos;
        prev = step.txn.tid;
        pos = txnEnd(step.txn);
      }
    }
    // backward from the end: stop at the last txn with tid < wanted
    let pos = this.topPos;
    while (pos > FILE_HEADER_SIZE) {
      const t = readTxnBefore(this.fd, pos, this.path);
      if (t.tid < tid) return pos;
      pos = t.pos;
    }
    return FILE_HEADER_SIZE;
  }

  async *iterate(tidMin: Tid = 0n, tidMax: Tid = MAX_TID_U64): AsyncGenerator<TxnRecord> {
    this.checkOpen('iterate');
    let pos = this.findTxn(tidMin);
    let prev = -1n;
    const gen = this.gen;
    const rr = new RecordReader(this.fd, this.path); // its own window: iterations and loads interleave
    while (pos < this.topPos) {
      this.checkOpen('iterate');
      this.checkGen(gen, 'iterate');
      const r = new SeqReader(this.fd, this.topPos);
      const step = scanTxn(r, pos, prev, this.path);
      if (step.kind !== 'txn') throw new CorruptError(this.path, pos, `committed txn expected below @${this.topPos}, found ${step.kind}`);
      const t = step.txn;
      if (t.tid > tidMax) return;
      const meta = readFresh(this.fd, t.pos + TXN_HEADER_SIZE, t.ulen + t.dlen + t.elen, this.path, 'txn metadata');
      const records: DataRecord[] = step.recs.map((d) => ({ oid: d.oid, data: this.resolveData(d, rr) }));
      const rec: TxnRecord = {
        tid: t.tid,
        status: t.status,
        user: meta.subarray(0, t.ulen),
        description: meta.subarray(t.ulen, t.ulen + t.dlen),
        extension: meta.subarray(t.ulen + t.dlen),
        records,
      };
      prev = t.tid;
      pos = txnEnd(t);
      if (t.tid >= tidMin) yield rec;
    }
  }

  // ---- 4) follow ----

  watch(from?: Tid): StorageWatch {
    this.checkOpen('watch');
    const head = this.headTid;
    const start = from ?? head;
    const replay = start < head ? this.replayEvents(start, this.topPos) : null;
    // Q1: a watch that lags a fast writer leaves the rest in the file, replayed when it drains.
    // Across a pack the packed file has every txn above its boundary whole; below it, not.
    const spill = (after: Tid) => {
      const gen = this.gen;
      return () => {
        if (after < this.packedTo_) this.checkGen(gen, `watch catch-up after @${hex16(after)} (packed to @${hex16(this.packedTo_)})`);
        return this.replayEvents(after, this.topPos);
      };
    };
    const w = new WatchQueue(start, replay, (x) => this.unwatch(x), spill, this.opts.watchLimits);
    if (this.fatal !== null) {
      w.fail(this.fatal);
      return w;
    }
    this.watches.add(w);
    if (this.readOnly && this.follower === null) {
      this.follower = new Follower(this.path, this.opts.pollMs, () => this.checkTail());
      this.follower.start();
      this.follower.kick();
    }
    return w;
  }

  private unwatch(w: WatchQueue): void {
    this.watches.delete(w);
    if (this.watches.size === 0 && this.follower !== null) {
      this.follower.stop();
      this.follower = null;
    }
  }

  /** History for a watch: (tid, oids) of committed txns with tid > from below endPos. */
  private *replayEvents(from: Tid, endPos: number): Generator<CommitEvent> {
    let pos = this.findTxn(from + 1n);
    let prev = -1n;
    const gen = this.gen;
    while (pos < endPos) {
      this.checkOpen('watch');
      this.checkGen(gen, 'watch replay');
      const step = scanTxn(new SeqReader(this.fd, endPos), pos, prev, this.path);
      if (step.kind !== 'txn') throw new CorruptError(this.path, pos, `committed txn expected below @${endPos}, found ${step.kind}`);
      if (step.txn.tid > from) yield { tid: step.txn.tid, oids: step.recs.map((d) => d.oid) };
      prev = step.txn.tid;
      pos = txnEnd(step.txn);
    }
  }

  /**
   * One follower check (zodb.md §2.8): index and publish every committed txn past topPos;
   * wait on an in-progress or incomplete one; fatal on truncation, replacement, or garbage.
   * Synchronous, so it runs atomically with respect to loads.
   */
  private checkTail(): void {
    if (this.closing || this.closed || this.fatal !== null || !this.readOnly || this.switching !== null) return;
    let size = -1;
    try {
      const st = fs.fstatSync(this.fd);
      size = st.size;
      let cur: fs.Stats | null;
      try {
        cur = fs.statSync(this.path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        cur = null;
      }
      if (cur === null) {
        // A pack renames Data.fs away, then the packed file in: wait a moment for it.
        const now = Date.now();
        if (this.missingSince === 0) this.missingSince = now;
        else if (now - this.missingSince > (this.opts.missingMs ?? 1000)) throw new StorageChangedError(this.path, 'storage file removed');
        return;
      }
      this.missingSince = 0;
      if (size < this.topPos) {
        throw new StorageChangedError(this.path, `file truncated to ${size} bytes, below the committed end @${this.topPos}`);
      }
      if (cur.ino !== st.ino || cur.dev !== st.dev) {
        // Replaced (a pack renames the packed file over Data.fs): first everything committed
        // to the old file (a pack holds the commit lock until the rename, so that is all of
        // it), then continue on the new one.
        this.publishCommitted(new SeqReader(this.fd, size));
        this.switching = this.switchToPacked().then(
          () => {
            this.switching = null;
            this.checkTail(); // the txns committed to the new file after our head
          },
          (e: unknown) => {
            this.switching = null;
            this.setFatal(e as Error);
          },
        );
        return;
      }
      const r = new SeqReader(this.fd, size);
      for (;;) {
        const step = scanTxn(r, this.topPos, this.headTid === 0n ? -1n : this.headTid, this.path);
        if (step.kind === 'txn') {
          this.publish(step.txn, step.recs);
          this.tailSince = 0;
          continue;
        }
        if (step.kind === 'partial') {
          const now = Date.now();
          if (this.tailSince === 0 || this.tailSize !== size) {
            this.tailSince = now;
            this.tailSize = size;
          } else if (now - this.tailSince > this.opts.garbageMs) {
            throw new CorruptError(this.path, this.topPos, `trailing garbage: ${step.detail}; unchanged for ${now - this.tailSince} ms`);
          }
        } else {
          this.tailSince = 0; // eof, or a commit in progress: the writer will finish it
        }
        return;
      }
    } catch (e) {
      if (e instanceof CorruptError && size >= 0) {
        // A writer truncating an aborted commit and writing anew can race a scan; only a
        // corruption seen on a file that did not change meanwhile is real.
        try {
          if (fs.fstatSync(this.fd).size !== size) return;
        } catch {
          /* fall through: fatal */
        }
      }
      this.setFatal(e as Error);
    }
  }

  /** Index and publish every committed txn from topPos on; returns the step that stopped. */
  private publishCommitted(r: SeqReader): ScanStep {
    for (;;) {
      const step = scanTxn(r, this.topPos, this.headTid === 0n ? -1n : this.headTid, this.path);
      if (step.kind !== 'txn') return step;
      this.publish(step.txn, step.recs);
    }
  }

  /**
   * The followed path names another file now: accept it only as a pack of what we serve —
   * a FileStorage whose txns up to our head end exactly with our head txn (a pack keeps tids
   * and never adds a txn; it may drop old ones) — index it up to there and switch to it in
   * one synchronous step. Anything else is fatal (StorageChangedError). Txns after our head
   * (committed after the pack) are left to the normal tail check.
   *
   * The index is built in slices (the native walk, then the JS scanner for what it leaves),
   * with the event loop running between them: loads and the server's requests go on meanwhile,
   * from the old file, which stays open and holds everything up to our head. Nothing is
   * published until the switch (checkTail waits for it). Closing meanwhile ends it unswitched.
   */
  private async switchToPacked(): Promise<void> {
    const head = this.headTid;
    const gone = () => this.closing || this.closed || this.fatal !== null;
    let fd = -1;
    try {
      try {
        fd = fs.openSync(this.path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      } catch (e) {
        throw new StorageChangedError(this.path, `storage replaced by another file (pack?), which cannot be opened: ${(e as Error).message}`);
      }
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new StorageChangedError(this.path, 'storage replaced by something that is not a regular file');
      let index = new FsIndex();
      let pos = FILE_HEADER_SIZE;
      let prev: Tid = -1n;
      let packed: Tid = 0n;
      let found = false;
      try {
        const mb = new Uint8Array(FILE_HEADER_SIZE);
        decodeMagic(mb.subarray(0, preadFull(fd, mb, 0, FILE_HEADER_SIZE, 0)), this.path);
        const ns = this.opts.nativeScan ?? true;
        if (ns !== false) {
          const r = await nativeWalkSliced(fd, st.size, FILE_HEADER_SIZE, index, {
            maxTid: head,
            windows: ns === true ? undefined : ns,
            sliceMs: this.opts.switchSliceMs,
            cancelled: gone,
          });
          if (gone()) return;
          if (r.dirty) {
            index = new FsIndex(); // a txn it did not finish: the JS scanner starts over and says why
          } else if (r.txns > 0) {
            pos = r.topPos;
            prev = r.headTid;
            packed = r.lastPacked;
            found = prev === head;
          }
        }
        const r = new SeqReader(fd, st.size);
        for (let n = 1; !found; n++) {
          const step = scanTxn(r, pos, prev, this.path);
          if (step.kind !== 'txn' || step.txn.tid > head) break;
          for (const d of step.recs) index.set(d.oid, d.pos);
          if (step.txn.status === 'p') packed = step.txn.tid;
          prev = step.txn.tid;
          pos = txnEnd(step.txn);
          found = prev === head;
          if (n % 1024 === 0) {
            await new Promise<void>((res) => setImmediate(res));
            if (gone()) return;
          }
        }
      } catch (e) {
        if (!(e instanceof CorruptError)) throw e;
        throw new StorageChangedError(this.path, `storage replaced by an invalid FileStorage (${e.message}); restart wcfs`);
      }
      if (!found) {
        throw new StorageChangedError(
          this.path,
          `storage replaced by another file that is not a pack of this database: its txns do not end with our head ${hex16(head)} ` +
            `(last txn ≤ head: ${prev < 0n ? 'none' : hex16(prev)}); restart wcfs`,
        );
      }
      // switch — synchronously: loads see the old file or the new one, never a mix
      const old = this.fd;
      this.fd = fd;
      fd = -1;
      this.rr = new RecordReader(this.fd, this.path);
      this.fmap = undefined; // views of the old map stay valid: the mapping lives while they do
      this.index = index;
      this.recent = new RecentRecords(this.recent.maxEntries); // positions are the old file's
      this.topPos = pos;
      this.tailSince = 0;
      if (packed > this.packedTo_) this.packedTo_ = packed;
      this.gen++;
      fs.closeSync(old);
    } finally {
      if (fd >= 0) fs.closeSync(fd);
    }
    log(
      '%s: packed: following the new file; head %s, topPos %d, %d oids, packedTo %s',
      this.path,
      hex16(head),
      this.topPos,
      this.index.size,
      hex16(this.packedTo_),
    );
    this.warn(`${this.path}: storage packed: following the packed file; history before @${hex16(this.packedTo_)} is gone`);
    for (const l of [...this.packListeners]) l(this.packedTo_);
  }

  private checkGen(gen: number, op: string): void {
    if (this.gen !== gen) throw new StorageChangedError(this.path, `${op}: storage packed (file replaced) meanwhile; start again`);
  }

  private setFatal(e: Error): void {
    if (this.fatal !== null) return;
    this.fatal = e;
    log('%s: following stopped: %s', this.path, e.message);
    this.warn(`${e.message}`);
    if (this.follower !== null) {
      this.follower.stop();
      this.follower = null;
    }
    for (const w of [...this.watches]) w.fail(e);
    this.watches.clear();
  }

  /** Make a committed txn visible: index, topPos, head, watches. Synchronous. */
  private publish(t: TxnHeader, recs: readonly DataHeader[]): void {
    const oids: Oid[] = [];
    for (const d of recs) {
      this.index.set(d.oid, d.pos);
      this.recent.add(d.oid, t.tid, d.pos);
      oids.push(d.oid);
    }
    this.topPos = txnEnd(t);
    this.headTid = t.tid;
    log('%s: txn %s: %d oids', this.path, hex16(t.tid), oids.length);
    for (const w of this.watches) w.push({ tid: t.tid, oids: oids.slice() });
  }

  // ---- 5) commit ----

  newOid(): Oid {
    this.checkOpen('newOid');
    if (this.readOnly) throw new ReadOnlyError(this.path, 'newOid');
    const m = this.index.maxOid;
    if (this.oidAlloc < m) this.oidAlloc = m;
    return ++this.oidAlloc;
  }

  async commit(req: CommitRequest): Promise<Tid> {
    if (this.closing) throw new ClosedError(`${this.path}: commit`);
    if (this.readOnly) throw new ReadOnlyError(this.path, 'commit');
    const user = toBytes(req.user);
    const desc = toBytes(req.description);
    const ext = encodeExtension(req.extension);
    if (user.length > MAX_META_LEN || desc.length > MAX_META_LEN || ext.length > MAX_META_LEN) {
      throw new BadArgumentError(`${this.path}: commit: user/description/extension longer than ${MAX_META_LEN} bytes`);
    }
    const seen = new Set<Oid>();
    for (const r of req.records) {
      if (seen.has(r.oid)) throw new BadArgumentError(`${this.path}: commit: oid ${hex16(r.oid)} stored twice`);
      seen.add(r.oid);
      if (r.data !== null && r.data.length === 0) throw new BadArgumentError(`${this.path}: commit: oid ${hex16(r.oid)}: empty data`);
    }

    // Queued on commitMu before any await: a commit called before close() completes first.
    const release = await this.lockCommit();
    try {
      // Conflict check and prev positions against the committed state (stable: we are the
      // only writer and hold commitMu).
      const recs: TxnDataInit[] = [];
      for (const r of req.records) {
        const cur = this.index.get(r.oid);
        if (r.oldSerial !== undefined) {
          const curSerial = cur === undefined ? 0n : readDataHeader(this.fd, cur, this.path).tid;
          if (curSerial !== r.oldSerial) throw new ConflictError(r.oid, r.oldSerial, curSerial);
        }
        if (r.data === null && cur === undefined) throw new NoObjectError(r.oid, `${this.path}: commit: delete`);
        recs.push({ oid: r.oid, prev: cur ?? 0, data: r.data });
      }
      const tid = newTid(this.headTid);
      const tpos = this.topPos;
      const { bytes, dpos } = encodeTxn(tpos, tid, 'c', user, desc, ext, recs);
      if (tpos + bytes.length > MAX_POS) throw new BadArgumentError(`${this.path}: commit: file would exceed ${MAX_POS} bytes`);

      try {
        await writeAll(this.fd, bytes, tpos);
        await fsyncAsync(this.fd);
        await this.opts.hooks?.afterVote?.(tpos, bytes.length);
        await writeAll(this.fd, STATUS_COMMITTED, tpos + 16);
        await fsyncAsync(this.fd);
      } catch (e) {
        // tpc_abort: nothing of this txn may stay at the tail.
        try {
          fs.ftruncateSync(this.fd, tpos);
        } catch {
          /* the open-time tail check of the next writer will do it */
        }
        throw e;
      }
      const t: TxnHeader = { pos: tpos, tid, tlen: bytes.length - 8, status: ' ', ulen: user.length, dlen: desc.length, elen: ext.length };
      this.publish(
        t,
        recs.map((r, i) => ({ pos: dpos[i]!, oid: r.oid, tid, prev: r.prev, tloc: tpos, plen: r.data?.length ?? 0 })),
      );
      return tid;
    } finally {
      release();
    }
  }

  private async lockCommit(): Promise<() => void> {
    const prev = this.commitMu;
    let release!: () => void;
    this.commitMu = new Promise<void>((r) => (release = r));
    await prev;
    return release;
  }

  // ---- 6) close ----

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const release = await this.lockCommit(); // wait for an in-flight commit
    try {
      if (this.follower !== null) {
        this.follower.stop();
        this.follower = null;
      }
      for (const w of [...this.watches]) w.end();
      this.watches.clear();
      // a pack switch under way sees `closing` at its next slice and closes its own fd
      while (this.switching !== null) await this.switching;
      if (!this.readOnly) {
        try {
          this.saveIndex();
        } catch (e) {
          this.warn(`${this.path}.index: not saved: ${(e as Error).message}`);
        }
      }
      this.closed = true;
      this.releaseFds();
    } finally {
      release();
    }
  }

  /** Write `.index` via `.index.index_tmp` + rename, in ZODB/py3's format. */
  private saveIndex(): void {
    const tmp = this.path + '.index.index_tmp';
    fs.writeFileSync(tmp, encodeIndexFile(this.index, this.topPos));
    fs.renameSync(tmp, this.path + '.index');
    log('%s: saved index: pos %d, %d oids', this.path, this.topPos, this.index.size);
  }

  private releaseFds(): void {
    if (this.fd >= 0) {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
    if (this.lockFd >= 0) {
      try {
        native().flock(this.lockFd, 'un');
      } finally {
        fs.closeSync(this.lockFd);
        this.lockFd = -1;
      }
    }
  }
}

// ---- helpers ----

/**
 * The pack boundary of a file (FileStorage.packedTo): the tid of the last status-'p' txn.
 * Packs leave their txns at the start of the file (every txn ≤ the pack time that survives is
 * rewritten as 'p', later ones are copied as they are), so the walk stops at the first other.
 */
function packBoundary(fd: number, end: number, file: string): Tid {
  const r = new SeqReader(fd, end, 4096);
  let pos = FILE_HEADER_SIZE;
  let prev: Tid = -1n;
  let packed: Tid = 0n;
  for (;;) {
    const step = scanTxn(r, pos, prev, file, false);
    if (step.kind !== 'txn' || step.txn.status !== 'p') return packed;
    packed = prev = step.txn.tid;
    pos = txnEnd(step.txn);
  }
}

const STATUS_COMMITTED = new Uint8Array([0x20]);

/**
 * Take Data.fs.lock like zc.lockfile: open/create, flock(LOCK_EX|LOCK_NB), then write
 * " <pid>\n" and truncate to it. Returns the lock fd (held until close).
 */
function takeLock(lockPath: string): number {
  const fd = fs.openSync(lockPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o666);
  try {
    native().flock(fd, 'ex');
  } catch (e) {
    fs.closeSync(fd);
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') {
      let holder = '';
      try {
        holder = fs.readFileSync(lockPath, 'utf8').trim();
      } catch {
        /* best effort */
      }
      throw new StorageLockedError(lockPath, `locked by another process${holder ? ` (pid ${holder})` : ''}`);
    }
    throw e;
  }
  const content = Buffer.from(` ${process.pid}\n`);
  fs.writeSync(fd, content, 0, content.length, 0);
  fs.ftruncateSync(fd, content.length);
  return fd;
}

async function writeAll(fd: number, buf: Uint8Array, pos: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const n = await writeAsync(fd, buf, off, buf.length - off, pos + off);
    off += n;
  }
}

function toBytes(v: string | Uint8Array | undefined): Uint8Array {
  if (v === undefined) return new Uint8Array(0);
  if (typeof v === 'string') return new TextEncoder().encode(v);
  return v;
}

/** Extension metadata: empty when none, else a protocol-3 pickle of the dict (ZODB/py3). */
function encodeExtension(ext: CommitRequest['extension']): Uint8Array {
  if (ext === undefined) return new Uint8Array(0);
  const keys = Object.keys(ext);
  if (keys.length === 0) return new Uint8Array(0);
  const d = new PyDict();
  for (const k of keys) {
    const v = ext[k]!;
    let pv: PyValue;
    if (typeof v === 'number') pv = Number.isInteger(v) ? BigInt(v) : v;
    else pv = v;
    d.set(k, pv);
  }
  return encodePickle(d, 3);
}

/**
 * A loadTransient result: `where` is formatted only when asked (an error message) — the
 * number → text conversion was a measurable part of a ZBlk1 chunk's load (notes.md §8).
 */
class MappedLoad implements LoadResult {
  constructor(
    readonly data: Uint8Array,
    readonly serial: Tid,
    private readonly path: string,
    private readonly pos: number,
  ) {}

  get where(): string {
    return `${this.path} @${this.pos}`;
  }
}
