// FileStorage index rebuild (open without `.index`: a full scan of every txn and data record
// header) vs reading the same file through a raw driver loop (1 MiB preads, what `cat` does),
// warm page cache, and the same open with a valid `.index` (start-up: flat in the file size).
//
//   npm run bench -- fs1-index      (or: node bench/bench-fs1-index.js after npm run build)
//
// Files (on /dev/shm, written by our writer): "blocks" — 64 KiB ZBlk0-sized records, 16 per
// txn (wendelin data); "objects" — 200-byte records, 100 per txn (a database of small objects,
// every header a few hundred bytes from the next). WCFS_BENCH_FS1_MB sets the size (100).
// Goal (issue 11): rebuild ≥ 0.8 × the raw read speed. Per row: median of 3 runs.
import { closeSync, fstatSync, openSync, readSync, statSync, unlinkSync, existsSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { FileStorage } from '../dist/zodb/fs1/filestorage.js';
import { MiB, median, nowMs, runMain, table, workDir } from './util.js';

const MB = Number(process.env.WCFS_BENCH_FS1_MB ?? 100);

async function makeFile(path, { recBytes, perTxn }) {
  const s = await FileStorage.open(path, { create: true, recentRecords: 0, warn: () => {} });
  const data = new Uint8Array(recBytes);
  const oids = [];
  for (let i = 0; i < perTxn; i++) oids.push(s.newOid());
  for (let done = 0; done < MB * MiB; done += recBytes * perTxn) {
    randomFillSync(data);
    await s.commit({ records: oids.map((oid) => ({ oid, data })) });
  }
  await s.close();
  if (existsSync(path + '.index')) unlinkSync(path + '.index');
}

/** ms to read the whole file with 1 MiB preads (the page cache is warm). */
function rawRead(path) {
  const fd = openSync(path, 'r');
  const buf = Buffer.alloc(MiB);
  const size = fstatSync(fd).size;
  const t0 = nowMs();
  for (let pos = 0; pos < size;) pos += readSync(fd, buf, 0, MiB, pos);
  const dt = nowMs() - t0;
  closeSync(fd);
  return dt;
}

async function openMs(path, { keepIndex }) {
  if (!keepIndex && existsSync(path + '.index')) unlinkSync(path + '.index');
  const t0 = nowMs();
  const s = await FileStorage.open(path, { readOnly: !keepIndex, warn: () => {} });
  const dt = nowMs() - t0;
  if (s.openInfo.indexLoaded !== keepIndex) throw new Error(`${path}: index loaded ${s.openInfo.indexLoaded}, want ${keepIndex}`);
  await s.close(); // a writer saves .index on close
  return dt;
}

async function main() {
  const dir = workDir('fs1');
  const rows = [];
  for (const [name, shape] of [
    ['blocks (64 KiB records)', { recBytes: 64 * 1024, perTxn: 16 }],
    ['objects (200 B records)', { recBytes: 200, perTxn: 100 }],
  ]) {
    const f = `${dir}/${name.split(' ')[0]}.fs`;
    await makeFile(f, shape);
    rawRead(f); // warm
    const raw = median([rawRead(f), rawRead(f), rawRead(f)]);
    const scans = [];
    for (let i = 0; i < 3; i++) scans.push(await openMs(f, { keepIndex: false }));
    const scan = median(scans);
    const w = await FileStorage.open(f, { warn: () => {} }); // a writer: saves .index on close
    await w.close();
    const idx = [];
    for (let i = 0; i < 3; i++) idx.push(await openMs(f, { keepIndex: true }));
    const withIdx = median(idx);
    const mb = statSync(f).size / MiB;
    const ratio = raw / scan;
    rows.push([
      name,
      mb.toFixed(0),
      `${raw.toFixed(1)} ms (${(mb / (raw / 1000)).toFixed(0)} MB/s)`,
      `${scan.toFixed(1)} ms (${(mb / (scan / 1000)).toFixed(0)} MB/s)`,
      ratio.toFixed(2),
      `${withIdx.toFixed(1)} ms`,
      ratio >= 0.8 ? '≥ 0.8 ✓' : '≥ 0.8 ✗',
    ]);
  }
  table(['file', 'MB', 'raw read (1 MiB preads)', 'index rebuild (open, no .index)', 'rebuild ÷ raw speed', 'open with .index', 'goal'], rows);
}

runMain(main);
