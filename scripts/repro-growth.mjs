#!/usr/bin/env node
// Reproducer of the open growth finding (notes.md "Soak", "Stale EOF on growing files"): a
// file grows by one block per commit while 2 readers stat head/bigfile/<oid> and pread its
// last block. Now and then the read returns 0 bytes although stat just said the block
// exists, and fstat right after shows it (the kernel's size went backwards for a moment; the
// server never replies short).
//   node scripts/repro-growth.mjs [seconds=20]     (after npm run build; as root)
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { findMount } from '../dist/fuse/mountinfo.js';
import { WriteTxn } from '../dist/zodb/db.js';
import { hex16 } from '../dist/zodb/ids.js';
import { openStorage } from '../dist/zodb/open.js';
import { PersistentRef } from '../dist/zodb/pickle/index.js';
import { sleep } from '../dist/util/async.js';
import { createZBigFile, ensureRoot, rootSet, setBlock, ZBIGFILE_CLASS } from '../dist/zodb/zbigfile.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BS = 65536;
const secs = Number(process.argv[2] ?? 20);

const dir = mkdtempSync('/dev/shm/wcfs-grow-');
const mnt = path.join(dir, 'mnt');
mkdirSync(mnt);
const db = await openStorage(path.join(dir, 'data.fs'), { create: true });
await ensureRoot(db);
let txn = new WriteTxn(db);
const foid = createZBigFile(txn, BS);
await rootSet(txn, 'grow', new PersistentRef(foid, ZBIGFILE_CLASS));
await setBlock(txn, foid, 0, new Uint8Array(BS).fill(1));
await txn.commit();
const srv = spawn(process.execPath, [path.join(root, 'bin', 'wcfs.js'), 'serve', path.join(dir, 'data.fs'), mnt], { stdio: ['ignore', 'ignore', 'inherit'] });
try {
  while (!(findMount(mnt) && existsSync(path.join(mnt, '.wcfs', 'zurl')))) await sleep(50);
  const readers = [0, 1].map(() =>
    spawn('python3', [path.join(root, 'test', 'helpers', 'stress.py'), 'growreader', mnt, hex16(foid), String(BS), String(secs)], {
      stdio: ['ignore', 'inherit', 'inherit'],
    }),
  );
  const t0 = Date.now();
  let n = 0;
  for (let blk = 1; Date.now() - t0 < secs * 1000; blk++) {
    txn = new WriteTxn(db);
    await setBlock(txn, foid, blk, new Uint8Array(BS).fill(blk & 255 || 1));
    await txn.commit();
    n++;
    await sleep(10);
  }
  await Promise.all(readers.map((p) => new Promise((r) => p.on('exit', r))));
  console.log(`commits ${n}`);
} finally {
  srv.kill('SIGTERM');
  await new Promise((r) => srv.on('exit', r));
  await db.close();
  rmSync(dir, { recursive: true, force: true });
}
