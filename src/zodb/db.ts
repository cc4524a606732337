// Object-level access on top of a storage driver: decode records into (class, state), and a
// write transaction that collects changed objects and commits them at once.
//
// This is the small piece of ZODB's Connection that wcfs needs — no object cache, no ghosts:
// BTrees and ZBigFile code works on decoded states directly. The one cache is below the
// object level: a StorageLoader keeps decoded BTree nodes by (oid, serial) (btree/cache.ts),
// shared by every revision read through it; a WriteTxn has none (its pending states are not
// committed records).
//
// WriteTxn invariants:
//   - reads see the transaction's own pending writes first, then the storage as of `at`;
//   - every stored object carries the serial it was read at (0n when new), so a concurrent
//     change by another writer makes commit fail with ConflictError instead of losing it.

import { ObjectFormatError, PickleError } from './errors.js';
import { hex16, type Oid, type Tid } from './ids.js';
import { decodeRecord, encodeRecord, type Global, type PyValue } from './pickle/index.js';
import type { CommitRequest, IStorage, IWritableStorage, LoadResult } from './storage.js';
import { DEFAULT_NODE_CACHE_BYTES, NodeCache } from './btree/cache.js';

export interface LoadedObject {
  oid: Oid;
  klass: Global;
  state: PyValue;
  /** Tid of the revision (0n for an object created in the current WriteTxn). */
  serial: Tid;
}

/** Anything that can load decoded objects as of a revision. */
export interface ObjectLoader {
  loadObject(oid: Oid, at: Tid): Promise<LoadedObject>;
  /**
   * Optional: synchronous load whose byte values are valid only until the next load (see
   * IStorage.loadTransient) — for copying many small objects out at once.
   */
  loadObjectTransient?(oid: Oid, at: Tid): LoadedObject;
  /** Optional: the raw record, transient as above (for format-specific fast paths). */
  loadRecordTransient?(oid: Oid, at: Tid): LoadResult;
  /** Optional: many raw records at once, transient as above (IStorage.loadTransientMany). */
  loadRecordsTransient?(oids: BigUint64Array, n: number, at: Tid, ranges: Float64Array): Uint8Array | undefined;
  /** Optional: the raw committed record, the caller's to keep (IStorage.load). */
  loadRecord?(oid: Oid, at: Tid): Promise<LoadResult>;
  /**
   * Optional: decoded BTree nodes by (oid, serial) (btree/cache.ts), used by btree/read.ts
   * through loadRecordTransient or loadRecord. Only a loader whose records are all committed
   * may have one — never one that returns uncommitted states (WriteTxn).
   */
  readonly nodeCache?: NodeCache;
}

/** Load and decode one object; pickle failures name the oid, revision and record location. */
export async function loadObject(storage: IStorage, oid: Oid, at: Tid): Promise<LoadedObject> {
  return decodeLoaded(oid, await storage.load(oid, at));
}

export function decodeLoaded(oid: Oid, { data, serial, where }: LoadResult): LoadedObject {
  try {
    const { klass, state } = decodeRecord(data);
    return { oid, klass, state, serial };
  } catch (e) {
    if (e instanceof PickleError) {
      throw new ObjectFormatError(oid, `@${hex16(serial)}${where ? ` (${where})` : ''}: bad record: ${e.message}`);
    }
    throw e;
  }
}

export interface StorageLoaderOptions {
  /** Bound of the decoded BTree node cache in (approximate) bytes; 0 = no cache. Default 64 MiB. */
  nodeCacheBytes?: number;
}

/** ObjectLoader over a storage, with one node cache for everything read through it. */
export class StorageLoader implements ObjectLoader {
  readonly loadObjectTransient?: (oid: Oid, at: Tid) => LoadedObject;
  readonly loadRecordTransient?: (oid: Oid, at: Tid) => LoadResult;
  readonly loadRecordsTransient?: (oids: BigUint64Array, n: number, at: Tid, ranges: Float64Array) => Uint8Array | undefined;
  readonly nodeCache?: NodeCache;
  constructor(
    readonly storage: IStorage,
    opts: StorageLoaderOptions = {},
  ) {
    const lt = storage.loadTransient?.bind(storage);
    if (lt !== undefined) {
      this.loadRecordTransient = lt;
      this.loadObjectTransient = (oid, at) => decodeLoaded(oid, lt(oid, at));
    }
    this.loadRecordsTransient = storage.loadTransientMany?.bind(storage);
    const bytes = opts.nodeCacheBytes ?? DEFAULT_NODE_CACHE_BYTES;
    if (bytes > 0) this.nodeCache = new NodeCache(bytes, () => storage.head());
  }
  loadObject(oid: Oid, at: Tid): Promise<LoadedObject> {
    return loadObject(this.storage, oid, at);
  }
  loadRecord(oid: Oid, at: Tid): Promise<LoadResult> {
    return this.storage.load(oid, at);
  }
}

interface Pending {
  klass: Global;
  state: PyValue;
  /** Serial the change is based on: 0n = new object. */
  base: Tid;
}

export interface TxnMetaInput {
  user?: string;
  description?: string;
  extension?: CommitRequest['extension'];
}

/**
 * How many objects a WriteTxn keeps as it loaded them (a setBlock per block reloads its
 * ZBigFile each time: one pread each before).
 */
const LOADED_MAX = 1024;

export class WriteTxn implements ObjectLoader {
  readonly at: Tid;
  private readonly pending = new Map<Oid, Pending>();
  private readonly created = new Set<Oid>();
  private readonly readSerial = new Map<Oid, Tid>();
  /** Objects loaded from the storage as of `at` (immutable there): the last LOADED_MAX, oldest out first. */
  private readonly loaded = new Map<Oid, LoadedObject>();
  private done = false;

  constructor(
    readonly storage: IWritableStorage,
    at?: Tid,
  ) {
    this.at = at ?? storage.head();
  }

  /** Load as seen by this transaction (pending state first). `at` is ignored beyond this.at. */
  async loadObject(oid: Oid, _at?: Tid): Promise<LoadedObject> {
    const p = this.pending.get(oid);
    if (p !== undefined) return { oid, klass: p.klass, state: p.state, serial: p.base };
    const known = this.loaded.get(oid);
    if (known !== undefined) return known;
    const obj = await loadObject(this.storage, oid, this.at);
    this.readSerial.set(oid, obj.serial);
    if (this.loaded.size >= LOADED_MAX) this.loaded.delete(this.loaded.keys().next().value!);
    this.loaded.set(oid, obj);
    return obj;
  }

  newOid(): Oid {
    const oid = this.storage.newOid();
    this.created.add(oid);
    return oid;
  }

  /** Make the next n newOid() calls succeed without I/O (storage.reserveOids; a no-op for fs1). */
  async reserveOids(n: number): Promise<void> {
    await this.storage.reserveOids?.(n);
  }

  /** Store an object that does not exist yet under a chosen oid (the root, z64). */
  storeNew(oid: Oid, klass: Global, state: PyValue): void {
    this.created.add(oid);
    this.store(oid, klass, state);
  }

  /** Record a new state for `oid` (created by newOid, or loaded earlier in this txn). */
  store(oid: Oid, klass: Global, state: PyValue): void {
    this.checkOpen();
    const prev = this.pending.get(oid);
    let base: Tid;
    if (prev !== undefined) base = prev.base;
    else if (this.created.has(oid)) base = 0n;
    else {
      const s = this.readSerial.get(oid);
      if (s === undefined) throw new ObjectFormatError(oid, 'WriteTxn.store: object was not loaded in this transaction');
      base = s;
    }
    this.pending.set(oid, { klass, state, base });
  }

  /** Oids changed so far. */
  changed(): Oid[] {
    return [...this.pending.keys()];
  }

  async commit(meta: TxnMetaInput = {}): Promise<Tid> {
    this.checkOpen();
    this.done = true;
    const records = [...this.pending].map(([oid, p]) => ({ oid, data: encodeRecord(p.klass, p.state), oldSerial: p.base }));
    return this.storage.commit({ ...meta, records });
  }

  abort(): void {
    this.done = true;
    this.pending.clear();
  }

  private checkOpen(): void {
    if (this.done) throw new ObjectFormatError(undefined, 'WriteTxn: already committed or aborted');
  }
}
