// wcfs over ZEO: cold sequential read and commit → head/at latency, against baselines of the same run.
//
//   npm run bench -- zeo         (or: node bench/run.js zeo after npm run build)
//
// For each encoding (pickle; msgpack too, runzeo under ZEO_MSGPACK=1 — BENCH_ZEO_ENCODINGS to
// choose) a real runzeo (.venv/bin/runzeo -f <Data.fs on /dev/shm>) serves a database built by
// committing through our writer over ZEO: one ZBigFile root['big'] of BENCH_ZEO_MIB (default
// 64; the size is 256) MiB in 2 MiB ZBlk0 blocks of random bytes, 16 blocks per
// transaction, and a small 4 KiB-block ZBigFile root['small'].
//
// 1. Cold sequential read, BENCH_ZEO_REPS (3) rounds after one warm-up round, MB/s (median):
//    - wcfs serve zeo://… head/bigfile/<oid>, read by bench/rd.c (read(2), 1 MiB buffer) after
//      posix_fadvise(DONTNEED) of the file (0 pages resident checked), as in bench-cold-read.js;
//      at the mount's default read_ahead_kb (the goal rows) and at 1024 (1 MiB FUSE READs:
//      the switch that shows how much of the gap to the driver is READ size);
//    - our driver without FUSE: ZBigFileView.loadBlock(blk, pooled buffer) for every block on
//      a fresh ZeoStorage (no client cache) — goal wcfs ÷ this ≥ 0.9;
//    - Python ZEO.ClientStorage (bench/zeo-load.py, a fresh client each round):
//      ZBigFile.read_block for every block (blktab + ZBlk loads through ZODB.DB) — goal
//      driver ÷ this ≥ 1.0 and wcfs ÷ this ≥ 1.0 (we are not slower) — and, as information,
//      bare storage.loadBefore of every ZBlk oid.
//    Also the CPU time runzeo and wcfs serve spent per wcfs read (10 ms ticks).
// 2. commit → head/at: our writer commits (through ZEO, or to the Data.fs for fs1) one 4 KiB
//    block of `small`, then polls head/at back to back until it shows the tid; 100 commits
//    after 5 warm-up ones, 10–30 ms apart (bench-commit-latency.js, both storages here).
//    p50/p99 of commit started → head/at and of commit() itself; ratio zeo ÷ fs1 (information:
//    fs1 is woken by inotify, ZEO by the server's invalidation push).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { openStorage } from '../dist/zodb/open.js';
import { StorageLoader } from '../dist/zodb/db.js';
import { ZBigFileView } from '../dist/zodb/zbigfile.js';
import {
  MiB,
  commitLatencies,
  hex16,
  headPoller,
  here,
  makeDb,
  median,
  nowMs,
  quantile,
  rd,
  readAhead,
  runMain,
  setReadAhead,
  sleep,
  startWcfs,
  startZeo,
  table,
  tools,
  venvBin,
  workDir,
} from './util.js';

const SIZE_MIB = Number(process.env.BENCH_ZEO_MIB ?? 64);
const REPS = Number(process.env.BENCH_ZEO_REPS ?? 3);
const ENCODINGS = (process.env.BENCH_ZEO_ENCODINGS ?? 'pickle,msgpack').split(',').filter(Boolean);
const BLK = 2 * MiB;
const BUF = MiB;
const N = 100;
const WARMUP = 5;

const mbs = (bytes, ns) => bytes / 1e6 / (ns / 1e9);

/** bench/zeo-load.py against addr: { bytes, read_block_ns[], loadBefore_ns[] } (REPS + 1 rounds). */
function pythonLoads(addr, encoding) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    if (encoding === 'msgpack') env.ZEO_MSGPACK = '1';
    else delete env.ZEO_MSGPACK;
    const p = spawn(path.join(venvBin, 'python'), [path.join(here, 'zeo-load.py'), addr, String(REPS + 1)], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`zeo-load.py exited ${code}: ${err}`))));
  });
}

/** Every block of file `oid` through our driver on a fresh ZeoStorage; { bytes, ns }. */
async function driverRead(zurl, oid, nblk) {
  const s = await openStorage(zurl, { readOnly: true });
  try {
    const v = await ZBigFileView.open(new StorageLoader(s), oid, s.head());
    const out = new Uint8Array(BLK);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < nblk; i++) await v.loadBlock(i, out);
    return { bytes: nblk * BLK, ns: Number(process.hrtime.bigint() - t0) };
  } finally {
    await s.close();
  }
}

/** commit → head/at through wcfs serve on db; the writer is `storage`. */
async function commitLatency(storage, small, db, mnt) {
  const wcfs = await startWcfs(db, mnt);
  try {
    const poll = await headPoller(wcfs.mnt);
    try {
      await poll.waitFor(hex16(storage.head()));
      const { afterStart, commitMs } = await commitLatencies(storage, small, poll, { warmup: WARMUP, n: N });
      return { afterStart, commitMs };
    } finally {
      await poll.close();
    }
  } finally {
    await wcfs.stop();
  }
}

async function benchEncoding(dir, encoding, nblk) {
  const zeo = await startZeo(path.join(dir, `${encoding}.fs`), { encoding });
  try {
    const t0 = nowMs();
    const { storage, big, small } = await makeDb(zeo.zurl, { nblk, named: true });
    const buildS = (nowMs() - t0) / 1e3;
    const wcfs = await startWcfs(zeo.zurl, path.join(dir, `wcfs-${encoding}`));
    const read = { wcfs: [], wcfsRa: [], driver: [] };
    const cpu = { wcfs: [], runzeo: [], driverRunzeo: [] };
    try {
      const head = wcfs.at(`head/bigfile/${hex16(big)}`);
      const raDefault = readAhead(wcfs);
      const wcfsRead = async (ra) => {
        setReadAhead(wcfs, ra);
        const w0 = wcfs.cpuMs();
        const z0 = zeo.cpuMs();
        const r = await rd('seq', head, BUF, 'drop');
        await sleep(20); // wcfs may still be uploading what the reader got
        if (r.resident !== 0) throw new Error(`${head}: ${r.resident} pages cached before a cold read`);
        if (r.bytes !== nblk * BLK) throw new Error(`${head}: read ${r.bytes} bytes`);
        return { mbs: mbs(r.bytes, r.ns), wcfsCpu: wcfs.cpuMs() - w0, zeoCpu: zeo.cpuMs() - z0 };
      };
      for (let rep = 0; rep <= REPS; rep++) {
        const w = await wcfsRead(raDefault);
        const w1024 = await wcfsRead(1024);
        const z0 = zeo.cpuMs();
        const d = await driverRead(zeo.zurl, big, nblk);
        if (rep === 0) continue;
        read.wcfs.push(w.mbs);
        cpu.wcfs.push(w.wcfsCpu);
        cpu.runzeo.push(w.zeoCpu);
        read.wcfsRa.push(w1024.mbs);
        read.driver.push(mbs(d.bytes, d.ns));
        cpu.driverRunzeo.push(zeo.cpuMs() - z0);
      }
      read.raDefault = raDefault;
    } finally {
      await wcfs.stop();
    }
    const py = await pythonLoads(zeo.addr, encoding);
    if (py.bytes !== nblk * BLK) throw new Error(`zeo-load.py read ${py.bytes} bytes`);
    read.pyBlock = py.read_block_ns.slice(1).map((ns) => mbs(py.bytes, ns));
    read.pyLoad = py.loadBefore_ns.slice(1).map((ns) => mbs(py.bytes, ns));
    const lat = await commitLatency(storage, small, zeo.zurl, path.join(dir, `wcfs-lat-${encoding}`));
    await storage.close();
    return { read, cpu, lat, buildS };
  } finally {
    await zeo.stop();
  }
}

async function main() {
  await tools();
  const dir = workDir('zeo');
  const nblk = Math.ceil((SIZE_MIB * MiB) / BLK);

  const results = new Map();
  for (const enc of ENCODINGS) results.set(enc, await benchEncoding(dir, enc, nblk));

  // fs1 baseline of the commit latency
  const dbPath = path.join(dir, 'data.fs');
  const fs1 = await makeDb(dbPath, { nblk: 1 });
  const fs1Lat = await commitLatency(fs1.storage, fs1.small, dbPath, path.join(dir, 'wcfs-fs1'));
  await fs1.storage.close();

  const cell = (xs) => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)})`;
  const goals = [];
  const goal = (what, q, want) => goals.push(`goal ${what} ≥ ${want.toFixed(2)}: ${q.toFixed(2)} — ${q >= want ? 'met' : 'NOT met'}`);
  console.log(
    `cold sequential read of ${SIZE_MIB} MiB over ZEO (2 MiB ZBlk0 blocks, runzeo on /dev/shm, 127.0.0.1), median (min–max) of ${REPS} after 1 warm-up; MB/s`,
  );
  const rows = [];
  for (const [enc, r] of results) {
    const m = (k) => median(r.read[k]);
    rows.push([
      enc,
      `wcfs head/bigfile (dropped), read_ahead_kb ${r.read.raDefault}`,
      cell(r.read.wcfs),
      '1.00',
      (m('wcfs') / m('driver')).toFixed(2),
      (m('wcfs') / m('pyBlock')).toFixed(2),
    ]);
    rows.push([
      enc,
      'wcfs head/bigfile (dropped), read_ahead_kb 1024',
      cell(r.read.wcfsRa),
      (m('wcfsRa') / m('wcfs')).toFixed(2),
      (m('wcfsRa') / m('driver')).toFixed(2),
      (m('wcfsRa') / m('pyBlock')).toFixed(2),
    ]);
    rows.push([
      enc,
      'our driver: ZBigFileView.loadBlock loop',
      cell(r.read.driver),
      (m('driver') / m('wcfs')).toFixed(2),
      '1.00',
      (m('driver') / m('pyBlock')).toFixed(2),
    ]);
    rows.push([
      enc,
      'Python ClientStorage: read_block loop',
      cell(r.read.pyBlock),
      (m('pyBlock') / m('wcfs')).toFixed(2),
      (m('pyBlock') / m('driver')).toFixed(2),
      '1.00',
    ]);
    rows.push([
      enc,
      'Python ClientStorage: loadBefore of ZBlk oids',
      cell(r.read.pyLoad),
      (m('pyLoad') / m('wcfs')).toFixed(2),
      (m('pyLoad') / m('driver')).toFixed(2),
      (m('pyLoad') / m('pyBlock')).toFixed(2),
    ]);
    rows.push(['', '', '', '', '', '']);
    goal(`${enc}: wcfs ÷ driver`, m('wcfs') / m('driver'), 0.9);
    goal(`${enc}: wcfs ÷ Python read_block`, m('wcfs') / m('pyBlock'), 1.0);
    goal(`${enc}: driver ÷ Python read_block`, m('driver') / m('pyBlock'), 1.0);
  }
  rows.pop();
  table(['enc', 'source', 'MB/s', '÷wcfs', '÷driver', '÷Python'], rows, 'llrrrr');
  for (const [enc, r] of results) {
    console.log(
      `${enc}: CPU ms per ${SIZE_MIB} MiB (median; 10 ms ticks): wcfs read: wcfs serve ${median(r.cpu.wcfs).toFixed(0)}, runzeo ${median(r.cpu.runzeo).toFixed(0)};` +
        ` driver loop: runzeo ${median(r.cpu.driverRunzeo).toFixed(0)}; building the db over ZEO took ${r.buildS.toFixed(1)} s`,
    );
  }

  console.log(`\ncommit → head/at, ${N} commits after ${WARMUP} warm-up ones, 10–30 ms apart; ms`);
  const lrows = [];
  const p = (xs, q) => quantile(xs, q);
  const latRow = (name, l) => [
    name,
    p(l.afterStart, 0.5).toFixed(2),
    p(l.afterStart, 0.99).toFixed(2),
    p(l.commitMs, 0.5).toFixed(2),
    p(l.commitMs, 0.99).toFixed(2),
  ];
  lrows.push(latRow('fs1 (inotify)', fs1Lat));
  for (const [enc, r] of results) lrows.push(latRow(`zeo ${enc}`, r.lat));
  table(['storage', 'commit→head/at p50', 'p99', 'commit() p50', 'p99'], lrows, 'lrrrr');
  for (const [enc, r] of results) {
    console.log(
      `zeo ${enc} ÷ fs1 (commit→head/at): p50 ${(p(r.lat.afterStart, 0.5) / p(fs1Lat.afterStart, 0.5)).toFixed(2)}, p99 ${(p(r.lat.afterStart, 0.99) / p(fs1Lat.afterStart, 0.99)).toFixed(2)}`,
    );
  }
  console.log('');
  for (const g of goals) console.log(g);
}

runMain(main);
