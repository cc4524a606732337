// The storage-driver interface every ZODB backend implements (modelled on neo/go's
// IStorageDriver; zodb.md §1.3, §6.1). WCFS itself is read-only: commit is a separate
// interface that only writer-capable drivers implement.
//
// Semantics all drivers provide:
//   load(oid, at)  → newest revision with serial ≤ at;
//                    NoObjectError  — oid never existed (as of the driver's head);
//                    NoDataError    — created after `at`, or deleted (deletedAt set).
//   head()         → last committed tid the driver has seen (synchronous, no I/O).
//   sync()         → re-check the backend and return the new head.
//   watch(from)    → every committed txn with tid > from, exactly once, in tid order, no
//                    gaps, empty txns included (oids = []). Never a txn still in progress.
//   iterate(a, b)  → committed txns with a ≤ tid ≤ b and their data records.

import type { Oid, Tid } from './ids.js';

export interface LoadResult {
  /**
   * The object record: class pickle + state pickle (zodb.md §3.1). The bytes belong to the
   * caller: no later load or commit writes into them (decoded values are views into them).
   */
  data: Uint8Array;
  /** Tid of the revision returned. */
  serial: Tid;
  /** Where the record lives, for error messages (fs1: "data.fs @<file offset>"). */
  where?: string;
}

export interface TxnMeta {
  tid: Tid;
  /** ' ' committed, 'p' packed, 'u' legacy undone. */
  status: string;
  user: Uint8Array;
  description: Uint8Array;
  /** Raw extension bytes (a pickled dict, or empty). */
  extension: Uint8Array;
}

export interface DataRecord {
  oid: Oid;
  /** Record data after following backpointers; null = object deleted in this txn. */
  data: Uint8Array | null;
}

export interface TxnRecord extends TxnMeta {
  records: DataRecord[];
}

/** One committed transaction as a watcher sees it: δZ = (tid, changed oids). */
export interface CommitEvent {
  tid: Tid;
  oids: Oid[];
}

/**
 * A stream of commit events. Iterate it with `for await`; an unrecoverable storage error
 * (file truncated, replaced, corrupt tail) ends the iteration by throwing it. `close()`
 * ends the iteration normally.
 */
export interface StorageWatch extends AsyncIterable<CommitEvent> {
  /** > 0 ⇒ the next next() resolves without waiting (an event is queued or replayable). */
  ready(): number;
  close(): void;
}

export interface IStorage {
  readonly url: string;
  head(): Tid;
  sync(): Promise<Tid>;
  load(oid: Oid, at: Tid): Promise<LoadResult>;
  /**
   * Optional fast path: load synchronously into a view valid only until the next call on
   * the storage (the caller copies what it needs at once).
   */
  loadTransient?(oid: Oid, at: Tid): LoadResult;
  /**
   * Optional batched fast path over loadTransient: the data of oids[0, n) as of `at` as ranges
   * of one buffer — ranges[2i, 2i+1] = [start, end) in the returned buffer, or -1, -1 where
   * the caller must use loadTransient (anything but the common case, errors included). The
   * buffer's bytes in those ranges are committed records and never change: it may be used
   * after further loads, while the caller holds it. undefined: no such buffer now.
   */
  loadTransientMany?(oids: BigUint64Array, n: number, at: Tid, ranges: Float64Array): Uint8Array | undefined;
  iterate(tidMin?: Tid, tidMax?: Tid): AsyncIterable<TxnRecord>;
  watch(from?: Tid): StorageWatch;
  /** Largest oid in use (as of head). Optional: a client of a server (ZEO) cannot tell. */
  lastOid?(): Oid;
  /**
   * Pack boundary (notes.md, FileStorage "Pack while serving"): the state of the database as
   * of any revision ≥ it is complete; below it a pack removed non-current revisions, so a
   * load there returns the right record or fails (NoDataError/NoObjectError), and a
   * consistent view of several objects is not guaranteed. 0n = never packed. Optional: a
   * driver that cannot tell returns nothing (never packed).
   */
  packedTo?(): Tid;
  /**
   * Called (synchronously, on the JS thread) when the storage was packed while it was being
   * followed and following continues on the packed file; the argument is the new packedTo().
   * Commit events of txns committed before the pack are all delivered to the watches before
   * the call. Returns the unsubscribe function.
   */
  onPacked?(listener: (packedTo: Tid) => void): () => void;
  close(): Promise<void>;
}

/** One object to store in a commit. */
export interface StoreRecord {
  oid: Oid;
  /** New record (class + state pickles), or null to delete the object. */
  data: Uint8Array | null;
  /**
   * Serial the writer based its change on (0n for a new object). When given, commit fails
   * with ConflictError if the object's current serial differs. undefined = don't check.
   */
  oldSerial?: Tid;
}

export interface CommitRequest {
  user?: string | Uint8Array;
  description?: string | Uint8Array;
  /** Extension metadata; pickled as a dict (protocol 3) like ZODB/py3 does. */
  extension?: Record<string, string | number | bigint | boolean>;
  records: StoreRecord[];
}

export interface ICommitter {
  /** Allocate a fresh oid (largest ever seen + 1). */
  newOid(): Oid;
  /**
   * Optional: make the next n newOid() calls succeed without I/O. Drivers that get oids from
   * a server (ZEO: new_oids) hand out a pool synchronously and refill it in the background;
   * a writer about to allocate many oids without awaiting in between reserves them first.
   */
  reserveOids?(n: number): Promise<void>;
  /** Commit atomically; resolves to the new tid once it is durable. */
  commit(req: CommitRequest): Promise<Tid>;
}

export type IWritableStorage = IStorage & ICommitter;
