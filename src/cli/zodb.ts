// `wcfs zodb …` subcommands: read-only inspection of a database and a demo-database writer.

import { existsSync } from 'node:fs';
import { WriteTxn, StorageLoader } from '../zodb/db.js';
import { BadArgumentError } from '../errors.js';
import { hex16, parseHexArg, tidToString, type Oid } from '../zodb/ids.js';
import { openStorage } from '../zodb/open.js';
import { say } from '../util/log.js';
import { PersistentRef, decodeRecordClass } from '../zodb/pickle/index.js';
import type { IStorage, IWritableStorage } from '../zodb/storage.js';
import { ZBigFileView, createZBigFile, ensureRoot, rootSet, setBlock, ZBIGFILE_CLASS } from '../zodb/zbigfile.js';

async function withStorage<T>(zurl: string, f: (s: IStorage) => Promise<T>): Promise<T> {
  const s = await openStorage(zurl, { readOnly: true });
  try {
    return await f(s);
  } finally {
    await s.close();
  }
}

export interface ZBigFileInfo {
  oid: string;
  blksize: number;
  size: number;
}

export interface DbInfo {
  zurl: string;
  head: string;
  headTime: string;
  txns: number;
  objects: number;
  zbigfiles: ZBigFileInfo[];
}

/** ZBigFileView.warnings reach the user on stderr, as `wcfs: warning: …`. */
function warnFile(f: ZBigFileView): void {
  for (const w of f.warnings) say(`warning: ${w}`);
}

/**
 * One pass over the history: txn count, and the class of every object's latest record.
 * `warn` gets each ZBigFile's warnings (default: stderr).
 */
export async function collectInfo(s: IStorage, zurl: string, warn: (f: ZBigFileView) => void = warnFile): Promise<DbInfo> {
  let txns = 0;
  const zbig = new Set<Oid>();
  const seen = new Set<Oid>();
  for await (const txn of s.iterate()) {
    txns++;
    for (const r of txn.records) {
      seen.add(r.oid);
      if (r.data === null) {
        zbig.delete(r.oid);
        continue;
      }
      if (decodeRecordClass(r.data).is(ZBIGFILE_CLASS.module, ZBIGFILE_CLASS.name)) zbig.add(r.oid);
      else zbig.delete(r.oid);
    }
  }
  const head = s.head();
  const loader = new StorageLoader(s);
  const zbigfiles: ZBigFileInfo[] = [];
  for (const oid of [...zbig].sort((a, b) => (a < b ? -1 : 1))) {
    const f = await ZBigFileView.open(loader, oid, head);
    warn(f);
    zbigfiles.push({ oid: hex16(oid), blksize: f.blksize, size: (await f.size()).size });
  }
  return { zurl, head: hex16(head), headTime: tidToString(head), txns, objects: seen.size, zbigfiles };
}

export async function zodbInfo(zurl: string, opts: { json?: boolean }): Promise<void> {
  const info = await withStorage(zurl, (s) => collectInfo(s, zurl));
  if (opts.json) {
    process.stdout.write(JSON.stringify(info, null, 1) + '\n');
    return;
  }
  const lines = [
    `zurl:     ${info.zurl}`,
    `head:     ${info.head}  (${info.headTime} UTC)`,
    `txns:     ${info.txns}`,
    `objects:  ${info.objects}`,
    `zbigfiles: ${info.zbigfiles.length}`,
    ...info.zbigfiles.map((f) => `  ${f.oid}  blksize ${f.blksize}  size ${f.size}  (${f.size / f.blksize} blocks)`),
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

export async function zodbCat(zurl: string, foidText: string, blkText: string, opts: { at?: string }): Promise<void> {
  const foid = parseHexArg(foidText, 'oid');
  if (!/^\d+$/.test(blkText)) throw new BadArgumentError(`invalid block number ${JSON.stringify(blkText)}`);
  const blk = BigInt(blkText);
  const data = await withStorage(zurl, async (s) => {
    const at = opts.at === undefined ? s.head() : parseHexArg(opts.at, 'tid');
    const f = await ZBigFileView.open(new StorageLoader(s), foid, at);
    warnFile(f);
    return (await f.loadBlock(blk)).data;
  });
  await new Promise<void>((resolve, reject) => process.stdout.write(data, (e) => (e ? reject(e) : resolve())));
}

/**
 * A small database with history: file "a" (blksize 64 KiB, ZBlk0) and file "b" (blksize
 * 16 KiB, ZBlk1), a few transactions that write, rewrite and punch blocks.
 */
export async function zodbDemo(path: string): Promise<void> {
  const zeo = /^zeo:/i.test(path);
  if (!zeo && existsSync(path)) throw new BadArgumentError(`${path}: already exists`);
  const s = (await openStorage(path, { create: true })) as IWritableStorage;
  try {
    if (zeo && s.head() !== 0n) throw new BadArgumentError(`${path}: the database is not empty (head @${hex16(s.head())})`);
    await ensureRoot(s);
    const fill = (n: number, seed: number) => {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff;
      return b;
    };
    let txn = new WriteTxn(s);
    const a = createZBigFile(txn, 65536);
    const b = createZBigFile(txn, 16384);
    await rootSet(txn, 'a', new PersistentRef(a, ZBIGFILE_CLASS));
    await rootSet(txn, 'b', new PersistentRef(b, ZBIGFILE_CLASS));
    await txn.commit({ user: 'demo', description: 'create files a and b' });
    for (let round = 1; round <= 4; round++) {
      txn = new WriteTxn(s);
      for (let blk = 0; blk < 2 + round; blk++) await setBlock(txn, a, blk, fill(65536, round + blk), { format: 'ZBlk0' });
      await setBlock(txn, b, round, fill(4000 * round, round), { format: 'ZBlk1' });
      if (round === 4) await setBlock(txn, a, 1, null);
      await txn.commit({ user: 'demo', description: `round ${round}` });
    }
  } finally {
    await s.close();
  }
  process.stdout.write(`created ${path}\n`);
}
