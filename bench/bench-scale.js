// Costs at scale (issue 11 "Scale benchmarks"): each row compares the same measurement at a
// small and a large size in one run and prints the growth ratio with its goal and verdict.
//
//   npm run bench -- scale        (or: node bench/bench-scale.js after npm run build)
//
// 1. start-up: `wcfs serve` spawned → head/at readable, for a 100 MB and a big Data.fs
//    (WCFS_BENCH_SCALE_GB, default 5; 64 KiB records, 16 per txn), with a `.index` (flat) and
//    without (the server rebuilds the index by a scan on every start).
// 2. commits: commit → head/at p50/p99 (bench/util commitLatencies) after 10³ commits and
//    after WCFS_BENCH_SCALE_COMMITS (10⁵, and for at least 140 s) commits of one block of one
//    file; server RssAnon once the 60 s retention window has passed vs at the end (flat), without and with a
//    watcher at the first revision on *another* file, which no commit changes (goal: growth ∝
//    the watched file's changed blocks = 0; a watcher holds ΔFtail's tail, and its δZ log keeps
//    at most DEFAULT_MAX_ΔZ_LOG commits — the history below them comes from the storage).
// 3. @rev views: three rounds of 5,000 distinct revisions looked up and released (--gc-interval
//    0.5 s: forgotten); RssAnon after the third vs after the second (V8 keeps freed heap
//    pages, and the first rounds fill bounded caches — the node cache takes each revision's
//    blktab nodes — so "flat across later rounds" is the test, not "back to before").
// 4. many files: 10,000 ZBigFiles: first stat and open+read of block 0, p50/p99, RssAnon per file.
// WCFS_BENCH_SCALE_ONLY=startup,commits,watcher,files runs only the parts named.
// Memory is RssAnon (/proc/<pid>/status) after a full GC (bench/gc-signal.js): the server's own
// and what it retains; VmRSS also counts Data.fs pages the storage maps (page cache). Without
// the GC, V8's own timing decided the verdicts: freed heap went back only after ~20 s idle.
import { closeSync, openSync, readSync, rmSync, statSync, existsSync, unlinkSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import { FileStorage } from '../dist/zodb/fs1/filestorage.js';
import { openStorage } from '../dist/zodb/open.js';
import { createZBigFile, ensureRoot } from '../dist/zodb/zbigfile.js';
import {
  MiB,
  WriteTxn,
  commitLatencies,
  gcOnSignal,
  headPoller,
  hex16,
  makeDb,
  median,
  nowMs,
  quantile,
  rssAnonAfterGc,
  runMain,
  serverStats,
  setBlock,
  sleep,
  startWcfs,
  table,
  workDir,
} from './util.js';

const BIG_GB = Number(process.env.WCFS_BENCH_SCALE_GB ?? 5);
const COMMITS = Number(process.env.WCFS_BENCH_SCALE_COMMITS ?? 1e5);
const WINDOW_S = 70; // ΔFtail's 60 s retention + slack
const VIEWS = Number(process.env.WCFS_BENCH_SCALE_VIEWS ?? 5000);
const FILES = Number(process.env.WCFS_BENCH_SCALE_FILES ?? 10000);
const ONLY = process.env.WCFS_BENCH_SCALE_ONLY?.split(',');
const part = (name) => ONLY === undefined || ONLY.includes(name);

const verdict = (q, op, goal) => ((op === '≤' ? q <= goal : q >= goal) ? `${op} ${goal} ✓` : `${op} ${goal} ✗`);
const rows = [];

// ---- 1. start-up ----

async function fillFile(f, bytes) {
  const s = await FileStorage.open(f, { create: true, recentRecords: 0, warn: () => {} });
  const data = new Uint8Array(64 * 1024).fill(7);
  const oids = Array.from({ length: 16 }, () => s.newOid());
  for (let done = 0; done < bytes; done += 16 * data.length) await s.commit({ records: oids.map((oid) => ({ oid, data })) });
  await s.close(); // saves .index
}

async function startupMs(dir, f, withIndex) {
  if (!withIndex && existsSync(f + '.index')) unlinkSync(f + '.index');
  const mnt = path.join(dir, 'mnt-start');
  const t0 = nowMs();
  const srv = await startWcfs(f, mnt);
  const fd = openSync(srv.at('head/at'), 'r');
  readSync(fd, Buffer.alloc(32));
  closeSync(fd);
  const dt = nowMs() - t0;
  await srv.stop();
  return dt;
}

async function startup(dir) {
  const sizes = [100 * MiB, BIG_GB * 1024 * MiB];
  const res = [];
  for (const size of sizes) {
    const f = path.join(dir, `start-${size}.fs`);
    await fillFile(f, size);
    const idx = [];
    for (let i = 0; i < 3; i++) idx.push(await startupMs(dir, f, true));
    const noidx = [];
    for (let i = 0; i < (size > 1024 * MiB ? 1 : 3); i++) noidx.push(await startupMs(dir, f, false));
    res.push({ mb: statSync(f).size / MiB, idx: median(idx), noidx: median(noidx) });
    rmSync(f, { force: true });
    rmSync(f + '.index', { force: true });
  }
  const [a, b] = res;
  const label = (r) => `${r.mb.toFixed(0)} MB`;
  rows.push([
    `start-up → head/at, with .index: ${label(a)} vs ${label(b)}`,
    `${a.idx.toFixed(0)} / ${b.idx.toFixed(0)} ms`,
    (b.idx / a.idx).toFixed(2),
    verdict(b.idx / a.idx, '≤', 1.5),
  ]);
  rows.push([
    `start-up → head/at, no .index (rebuild): ${label(a)} vs ${label(b)}`,
    `${a.noidx.toFixed(0)} / ${b.noidx.toFixed(0)} ms`,
    (b.noidx / a.noidx).toFixed(1),
    `∝ size (${(b.mb / a.mb).toFixed(0)}×): ${(b.mb / (b.noidx / 1000)) | 0} MB/s`,
  ]);
}

// ---- 2. commits, 3. @rev views ----

async function commits(dir, watcher) {
  const db = path.join(dir, `commits-${watcher}.fs`);
  const { storage, small, big } = await makeDb(db, { nblk: 1, blksize: 64 * 1024 });
  const bump = async (n) => {
    const tids = [];
    for (let i = 0; i < n; i++) {
      const txn = new WriteTxn(storage);
      await setBlock(txn, small, 0, Buffer.from(`c${i}`));
      tids.push(await txn.commit());
    }
    return tids;
  };
  const first = await bump(1000);
  const mnt = path.join(dir, `mnt-commits-${watcher}`);
  const srv = await startWcfs(db, mnt, ['--gc-interval', '0.5'], { nodeArgs: gcOnSignal });
  const poll = await headPoller(mnt);
  let wfh;
  if (watcher) {
    await stat(srv.at(`head/bigfile/${hex16(big)}`));
    wfh = await open(srv.at('head/watch'), 'r+');
    await wfh.write(`1 watch ${hex16(big)} @${hex16(storage.head())}\n`);
    const b = Buffer.alloc(256);
    const { bytesRead } = await wfh.read(b, 0, b.length, null);
    if (!b.subarray(0, bytesRead).toString().startsWith('1 ok')) throw new Error(`watch: ${b.subarray(0, bytesRead)}`);
  }
  const lat = async () => {
    const r = await commitLatencies(storage, small, poll, { warmup: 20, n: 200 });
    return { p50: quantile(r.afterReturn, 0.5), p99: quantile(r.afterReturn, 0.99) };
  };
  const l0 = await lat();
  const r0 = await rssAnonAfterGc(srv.proc.pid);
  const tids = [...first];
  const tServe = nowMs();
  let rMid; // RssAnon once the retention window has passed
  // at least COMMITS commits, and for at least twice the retention window (RSS judged past it)
  while (tids.length < COMMITS || nowMs() - tServe < 2 * WINDOW_S * 1000) {
    tids.push(...(await bump(5000)));
    if (rMid === undefined && nowMs() - tServe > WINDOW_S * 1000) rMid = { rss: await rssAnonAfterGc(srv.proc.pid), n: tids.length };
  }
  await poll.waitFor(hex16(storage.head()), 120_000);
  await sleep(2000);
  const l1 = await lat();
  const r1 = await rssAnonAfterGc(srv.proc.pid);
  const secs = (nowMs() - tServe) / 1000;
  const tag = watcher ? 'a watcher at the start, on another file' : 'no watcher';
  const N = COMMITS.toExponential(0);
  const ql = (l) => `${l.p50.toFixed(2)}/${l.p99.toFixed(2)}`;
  rows.push([
    `commit → head/at p50/p99, 10³ vs ${N} commits (${tag})`,
    `${ql(l0)} → ${ql(l1)} ms`,
    (l1.p50 / l0.p50).toFixed(2),
    verdict(l1.p50 / l0.p50, '≤', 1.2),
  ]);
  if (rMid === undefined) {
    rows.push([
      `server RssAnon over ${N} commits (${tag})`,
      `${r0.toFixed(0)} → ${r1.toFixed(0)} MiB in ${secs.toFixed(0)} s`,
      '',
      `not judged: shorter than the ${WINDOW_S} s window`,
    ]);
  } else {
    rows.push([
      `server RssAnon, window passed (${rMid.n}) vs end (${tids.length} commits, ${secs.toFixed(0)} s; ${tag})`,
      `${r0.toFixed(0)} → ${rMid.rss.toFixed(0)} → ${r1.toFixed(0)} MiB`,
      (r1 / rMid.rss).toFixed(2),
      verdict(r1 / rMid.rss, '≤', 1.1),
    ]);
  }

  if (!watcher) {
    // 3. @rev views: two rounds of VIEWS distinct revisions looked up, released, forgotten
    const views = async () => (await serverStats(srv)).RevHead;
    const round = async (revs) => {
      for (const t of revs) {
        const fh = await open(srv.at(`@${hex16(t)}/bigfile/${hex16(small)}`), 'r');
        await fh.read(Buffer.alloc(16), 0, 16, 0);
        await fh.close();
      }
      const t0 = Date.now();
      while ((await views()) > 0 && Date.now() - t0 < 60_000) await sleep(500);
      await sleep(2000);
      return await rssAnonAfterGc(srv.proc.pid);
    };
    const before = await rssAnonAfterGc(srv.proc.pid);
    const a = await round(tids.slice(-3 * VIEWS, -2 * VIEWS));
    const b = await round(tids.slice(-2 * VIEWS, -VIEWS));
    const c = await round(tids.slice(-VIEWS));
    rows.push([
      `server RssAnon, 3 rounds of ${VIEWS} @rev views looked up and forgotten (left: ${await views()}); 3rd vs 2nd`,
      `${before.toFixed(0)} → ${a.toFixed(0)} → ${b.toFixed(0)} → ${c.toFixed(0)} MiB`,
      (c / b).toFixed(2),
      verdict(c / b, '≤', 1.1),
    ]);
  }
  await wfh?.close();
  await poll.close();
  await srv.stop();
  await storage.close();
  rmSync(db, { force: true });
}

// ---- 4. many files ----

async function manyFiles(dir) {
  const db = path.join(dir, 'files.fs');
  const s = await openStorage(db, { create: true });
  await ensureRoot(s);
  const foids = [];
  for (let done = 0; done < FILES; done += 1000) {
    const txn = new WriteTxn(s);
    for (let i = done; i < Math.min(FILES, done + 1000); i++) {
      const f = createZBigFile(txn, 4096);
      await setBlock(txn, f, 0, Buffer.from(`file ${i}`));
      foids.push(f);
    }
    await txn.commit();
  }
  await s.close();
  const srv = await startWcfs(db, path.join(dir, 'mnt-files'), [], { nodeArgs: gcOnSignal });
  const r0 = await rssAnonAfterGc(srv.proc.pid);
  const stats = [];
  const reads = [];
  const b = Buffer.alloc(4096);
  for (const f of foids) {
    const p = srv.at(`head/bigfile/${hex16(f)}`);
    let t = nowMs();
    await stat(p);
    stats.push(nowMs() - t);
    t = nowMs();
    const fh = await open(p, 'r');
    await fh.read(b, 0, b.length, 0);
    await fh.close();
    reads.push(nowMs() - t);
  }
  await sleep(1000);
  const r1 = await rssAnonAfterGc(srv.proc.pid);
  await srv.stop();
  rmSync(db, { force: true });
  const q = (xs) => `${quantile(xs, 0.5).toFixed(2)}/${quantile(xs, 0.99).toFixed(2)} ms`;
  const first = stats.slice(0, 100);
  const last = stats.slice(-100);
  rows.push([
    `${FILES} ZBigFiles: first stat p50/p99 (first 100 vs last 100 files)`,
    `${q(first)} vs ${q(last)}`,
    (quantile(last, 0.5) / quantile(first, 0.5)).toFixed(2),
    verdict(quantile(last, 0.5) / quantile(first, 0.5), '≤', 1.5),
  ]);
  rows.push([`${FILES} ZBigFiles: open + read of block 0 p50/p99`, q(reads), '', '—']);
  rows.push([
    `${FILES} ZBigFiles: server RssAnon per file read`,
    `${(((r1 - r0) * 1024) / FILES).toFixed(1)} KiB (${r0.toFixed(0)} → ${r1.toFixed(0)} MiB)`,
    '',
    '—',
  ]);
}

async function main() {
  const dir = workDir('scale');
  const t0 = nowMs();
  if (part('startup')) await startup(dir);
  if (part('commits')) await commits(dir, false);
  if (part('watcher')) await commits(dir, true);
  if (part('files')) await manyFiles(dir);
  console.log(`scale (${((nowMs() - t0) / 1000).toFixed(0)} s):`);
  table(['what', 'small → large', 'ratio', 'goal'], rows, 'llrl');
}

runMain(main);
