// Block loads from a warm FileStorage vs raw fs.read of the same bytes.
//
//   npm run bench -- zodb        (or: node bench/bench-zodb-blockload.js after npm run build)
//
// Prints MB/s and µs per 2 MiB block for: ZBlk0 blocks (one 2 MiB record each), ZBlk1 blocks
// (512 records of 4 KiB + the chunktab BTree), and the baseline — fs.readSync of the same
// number of bytes from the same file (page cache warm). ratio = wcfs / baseline.
// "pooled" rows pass a reused output buffer (what the server does): on this VM the page
// faults of a fresh 2 MiB buffer cost about as much as reading it.
import { mkdtempSync, openSync, readSync, closeSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openStorage } from '../dist/zodb/open.js';
import { StorageLoader, WriteTxn } from '../dist/zodb/db.js';
import { ZBigFileView, createZBigFile, ensureRoot, setBlock } from '../dist/zodb/zbigfile.js';

const BLK = 2 * 1024 * 1024;
const NBLK = 16;
const dir = mkdtempSync(path.join(os.tmpdir(), 'wcfs-bench-'));
const dbpath = path.join(dir, 'data.fs');

function pattern(seed) {
  const b = Buffer.alloc(BLK);
  for (let i = 0; i < BLK; i += 4) b.writeUInt32BE((i + seed * 977) >>> 0, i);
  return b;
}

async function main() {
  const s = await openStorage(dbpath, { create: true });
  await ensureRoot(s);
  let txn = new WriteTxn(s);
  const f0 = createZBigFile(txn, BLK);
  const f1 = createZBigFile(txn, BLK);
  await txn.commit();
  for (let i = 0; i < NBLK; i++) {
    txn = new WriteTxn(s);
    await setBlock(txn, f0, i, pattern(i), { format: 'ZBlk0' });
    await setBlock(txn, f1, i, pattern(i), { format: 'ZBlk1' });
    await txn.commit();
  }
  const loader = new StorageLoader(s);
  const at = s.head();

  async function measure(name, fn, rounds) {
    await fn(); // warm up
    const t0 = process.hrtime.bigint();
    for (let r = 0; r < rounds; r++) await fn();
    const ns = Number(process.hrtime.bigint() - t0);
    const bytes = rounds * NBLK * BLK;
    return { name, mbs: bytes / 1e6 / (ns / 1e9), usPerBlk: ns / 1e3 / (rounds * NBLK) };
  }

  const v0 = await ZBigFileView.open(loader, f0, at);
  const v1 = await ZBigFileView.open(loader, f1, at);
  const fd = openSync(dbpath, 'r');
  const size = statSync(dbpath).size;
  const raw = await measure(
    'raw fs.readSync (baseline)',
    async () => {
      for (let i = 0; i < NBLK; i++) {
        const b = Buffer.allocUnsafe(BLK);
        readSync(fd, b, 0, BLK, (i * BLK) % Math.max(1, size - BLK));
      }
    },
    20,
  );
  closeSync(fd);
  const z0 = await measure(
    'ZBlk0 loadBlock',
    async () => {
      for (let i = 0; i < NBLK; i++) await v0.loadBlock(i);
    },
    20,
  );
  const out = new Uint8Array(BLK);
  const z0p = await measure(
    'ZBlk0 loadBlock into pooled buf',
    async () => {
      for (let i = 0; i < NBLK; i++) await v0.loadBlock(i, out);
    },
    20,
  );
  const z1 = await measure(
    'ZBlk1 loadBlock (512 chunks)',
    async () => {
      for (let i = 0; i < NBLK; i++) await v1.loadBlock(i);
    },
    5,
  );
  const z1p = await measure(
    'ZBlk1 loadBlock into pooled buf',
    async () => {
      for (let i = 0; i < NBLK; i++) await v1.loadBlock(i, out);
    },
    5,
  );
  await s.close();

  console.log('what                              MB/s    µs/2MiB-block  ratio');
  for (const r of [raw, z0, z0p, z1, z1p]) {
    console.log(`${r.name.padEnd(32)} ${r.mbs.toFixed(0).padStart(6)}  ${r.usPerBlk.toFixed(0).padStart(12)}   ${(r.mbs / raw.mbs).toFixed(2)}`);
  }
}

main().finally(() => rmSync(dir, { recursive: true, force: true }));
