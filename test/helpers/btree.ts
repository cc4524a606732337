// Helpers for the btree tests: a fresh FileStorage in a temp dir, value refs, and compact
// views of trees (shape text, oids by position) for asserting exact shapes and stored sets.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FileStorage } from '../../src/zodb/fs1/filestorage.js';
import { StorageLoader, WriteTxn } from '../../src/zodb/db.js';
import type { Oid, Tid } from '../../src/zodb/ids.js';
import { Global, PersistentRef } from '../../src/zodb/pickle/index.js';
import { btreeCheck, shapeText, type BTreeCheckResult, type NodeShape } from '../../src/zodb/btree/index.js';

export const ZBLK0 = new Global('wendelin.bigfile.file_zodb', 'ZBlk0');
/** A value as blktab holds them: a reference to a (not necessarily existing) ZBlk0. */
export const val = (n: number | bigint) => new PersistentRef(BigInt(n), ZBLK0);

export interface TestDB {
  st: FileStorage;
  loader: StorageLoader;
  txn(): WriteTxn;
  close(): Promise<void>;
}

/**
 * A new, empty FileStorage in a temp dir on disk (WCFS_TEST_SHM=1: in /dev/shm instead, for
 * long fast-check runs — every commit fsyncs twice), removed on close.
 */
export async function openTestDB(): Promise<TestDB> {
  const base = process.env.WCFS_TEST_SHM ? '/dev/shm' : tmpdir();
  const dir = mkdtempSync(path.join(base, 'wcfs-btree-'));
  const st = await FileStorage.open(path.join(dir, 'data.fs'), { create: true });
  return {
    st,
    loader: new StorageLoader(st),
    txn: () => new WriteTxn(st),
    close: async () => {
      await st.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Strict structural check + shape text. */
export async function shapeAt(db: TestDB, root: Oid, at: Tid): Promise<{ text: string; r: BTreeCheckResult }> {
  const r = await btreeCheck(db.loader, root, at, { strict: true });
  return { text: shapeText(r.shape), r };
}

/** Oids of all persistent nodes of a shape, breadth-first (the order shapeText prints). */
export function nodeOids(shape: NodeShape): Array<Oid | null> {
  const out: Array<Oid | null> = [];
  let level: NodeShape[] = [shape];
  while (level.length > 0) {
    for (const n of level) out.push(n.oid);
    level = level.flatMap((n) => (n.kind === 'tree' ? n.children : []));
  }
  return out;
}

/** Node of a shape by breadth-first position (as in shapeText: level, then index). */
export function nodeAt(shape: NodeShape, level: number, index: number): NodeShape {
  let nodes: NodeShape[] = [shape];
  for (let l = 0; l < level; l++) nodes = nodes.flatMap((n) => (n.kind === 'tree' ? n.children : []));
  const n = nodes[index];
  if (n === undefined) throw new Error(`no node at level ${level} index ${index}`);
  return n;
}

export const sortOids = (xs: Iterable<Oid>) => [...xs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
