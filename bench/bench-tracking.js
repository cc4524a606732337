// Server memory per block read through head/ (issue 11's row "server memory per block ever
// read through head/: ~1.1 KB, never freed"; goal: bounded by what the page cache holds).
//
//   npm run bench -- tracking     (or: node bench/bench-tracking.js after npm run build)
//
// A ZBigFile of NBLK small blocks (4 KiB, ZBlk0; WCFS_BENCH_TRACK_BLOCKS, default 16384), so
// that per-block memory stands out of the server's own. `wcfs serve --untrack-interval 1`, with
// bench/gc-signal.js: every memory figure is RssAnon after a full GC (bench/util.js
// rssAnonAfterGc). Steps:
//   1. before: RssAnon, TrackedBlk (.wcfs/stats);
//   2. read the whole file through head/ (bench/rd.c seq, 1 MiB reads): every block loaded,
//      so tracked (ΔFtail + loader) while the kernel caches it — RssAnon, TrackedBlk;
//   3. the kernel drops the file's pages (posix_fadvise DONTNEED: rd res … drop), then ~2.5
//      untrack sweeps (server step 5: blocks no longer cached are untracked) — RssAnon,
//      TrackedBlk, and the blocks still cached (mincore).
// Prints the memory per tracked block and the verdict: after the drop, tracked blocks ≤ the
// blocks the page cache holds, and the memory they took is given back (≤ 10% left).
import path from 'node:path';
import { MiB, gcOnSignal, hex16, makeDb, rd, rssAnonAfterGc, runMain, serverStats, sleep, startWcfs, table, tools, workDir } from './util.js';

const NBLK = Number(process.env.WCFS_BENCH_TRACK_BLOCKS ?? 16384);
const BS = 4096;
const PASSES = 3;

async function main() {
  await tools();
  const dir = workDir('tracking');
  const dbPath = path.join(dir, 'data.fs');
  const { big } = await makeDb(dbPath, { nblk: NBLK, blksize: BS, perTxn: 1024 });
  const wcfs = await startWcfs(dbPath, path.join(dir, 'wcfs'), ['--untrack-interval', '1'], { nodeArgs: gcOnSignal });
  const file = wcfs.at(`head/bigfile/${hex16(big)}`);
  const tracked = async () => (await serverStats(wcfs)).TrackedBlk;

  const r0 = await rssAnonAfterGc(wcfs.proc.pid);
  const rows = [['before', r0.toFixed(1), String(await tracked()), '—']];
  const passes = [];
  for (let pass = 1; pass <= PASSES; pass++) {
    await rd('seq', file, 1 << 20);
    const cached1 = (await rd('res', file)).resident;
    const r1 = await rssAnonAfterGc(wcfs.proc.pid);
    const t1 = await tracked();
    await rd('res', file, 'drop');
    await sleep(2500);
    const cached2 = (await rd('res', file)).resident; // 4 KiB pages = blocks here
    const r2 = await rssAnonAfterGc(wcfs.proc.pid);
    const t2 = await tracked();
    rows.push([`${pass}. file read through head/`, r1.toFixed(1), String(t1), String(cached1)]);
    rows.push([`${pass}. its pages dropped, untrack sweeps`, r2.toFixed(1), String(t2), String(cached2)]);
    passes.push({ r1, t1, r2, t2, cached2 });
  }
  await wcfs.stop();

  table(['pass, step', 'RssAnon MiB', 'TrackedBlk', 'blocks cached'], rows);
  console.log(`${NBLK} blocks of ${BS / 1024} KiB, read ${PASSES} times; RssAnon after a full GC; --untrack-interval 1`);
  const p1 = passes[0];
  const pn = passes[PASSES - 1];
  console.log(`server memory per tracked block (pass 1): ${(((p1.r1 - r0) * MiB) / Math.max(1, p1.t1)).toFixed(0)} bytes while the kernel caches it`);
  const growth = pn.r2 / p1.r2;
  const ok = passes.every((p) => p.t2 <= p.cached2) && growth <= 1.1;
  console.log(
    `goal server memory per block read through head/ bounded by what the page cache holds: tracked after each drop ${passes.map((p) => p.t2).join(', ')} ≤ cached ${passes.map((p) => p.cached2).join(', ')}; ` +
      `RssAnon after the drops, pass ${PASSES} ÷ pass 1: ${growth.toFixed(2)} (≤ 1.1) — ${ok ? 'met ✓' : 'NOT met ✗'}`,
  );
}

runMain(main);
