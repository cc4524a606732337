// Cold sequential read of a large ZBigFile through wcfs vs the C reference server vs tmpfs.
//
//   npm run bench -- cold        (or: node bench/bench-cold-read.js after npm run build)
//
// A 256 MiB ZBigFile (2 MiB blocks, ZBlk0, random bytes; WCFS_BENCH_MIB to change) is read
// from offset 0 to EOF by bench/rd.c (read(2) into one 1 MiB buffer, like `dd bs=1M`; only the
// loop is timed) from three sources holding the same bytes (checked by checksum first):
//   - wcfs head/bigfile/<oid>: made cold before each read with posix_fadvise(DONTNEED), which
//     evicts exactly this file's page cache (checked with mincore: 0 pages resident). This
//     keeps one server running (so the later reads are not "first read after start" — that
//     one is shown separately: the median over WCFS_BENCH_FIRSTS (3) server starts, one
//     first read each) and keeps Data.fs warm: what is measured is wcfs
//     loading blocks from a warm storage and feeding the kernel, not the disk. drop_caches
//     would also evict Data.fs and node's own code (noisy, see spec fuse.md).
//   - wcfs @<rev>/bigfile/<oid>: a never-seen revision view each time (a new inode, so cold
//     by construction) — the same bytes served without head's locking and ΔFtail tracking.
//   - the C reference server (bench/cfuse.c: libfuse3 low level, the file in RAM, opened
//     without KEEP_CACHE, so every open starts cold and all bytes go through it).
//   - tmpfs (/dev/shm): its page cache is the file, so "cold" = first read = any read.
// Each read_ahead_kb setting of the two FUSE mounts (128 = kernel default → 128 KiB READs;
// 1024 → 1 MiB READs) runs one warm-up round, then WCFS_BENCH_REPS (5) rounds round-robin;
// it prints median MB/s (min–max), ratios ÷C and ÷tmpfs, the CPU time (user+sys, all
// threads, from /proc/<pid>/stat, 10 ms ticks) the server used per read, and the whole
// machine's (/proc/stat busy: reader + server + kernel) — on this 2-core VM a cold read keeps
// both cores busy, so MB/s follows the machine CPU one read costs (notes.md §8, cold read).
// To compare without an effect: the read_ahead_kb rows are the switch for READ size; the
// @rev row vs the head row shows what head's locking/tracking costs.
import path from 'node:path';
import { readFileSync } from 'node:fs';
import {
  MiB,
  WriteTxn,
  hex16,
  makeDb,
  median,
  rd,
  readAhead,
  runMain,
  serverStats,
  setBlock,
  setReadAhead,
  sleep,
  startCfuse,
  startWcfs,
  table,
  tools,
  workDir,
} from './util.js';

const SIZE_MIB = Number(process.env.WCFS_BENCH_MIB ?? 256);
const REPS = Number(process.env.WCFS_BENCH_REPS ?? 5);
const BLK = 2 * MiB;
const BUF = MiB;
const FIRSTS = Math.max(1, Number(process.env.WCFS_BENCH_FIRSTS ?? 3));
/** CPU time the whole machine spent busy so far, ms (/proc/stat: user nice system irq softirq steal; USER_HZ 100). */
const machineBusyMs = () => {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) * 10;
};

async function main() {
  await tools();
  const dir = workDir('cold');
  const dbPath = path.join(dir, 'data.fs');
  const refPath = path.join(dir, 'ref.bin');
  const nblk = Math.ceil((SIZE_MIB * MiB) / BLK);
  const { storage, big, small } = await makeDb(dbPath, { nblk, refPath });
  // Revisions for fresh @rev views: small commits after the last change of `big`.
  const revs = [];
  for (let i = 0; i < 2 * (REPS + 1); i++) {
    const txn = new WriteTxn(storage);
    await setBlock(txn, small, 0, Buffer.from(`rev ${i}`));
    revs.push(hex16(await txn.commit()));
  }
  const foid = hex16(big);

  // first read after server start (nothing loaded, nothing tracked yet): one per start, on
  // FIRSTS - 1 servers started for it and on the one that serves the rest
  const firsts = [];
  const firstRead = async (srv) => {
    const r = await rd('seq', srv.at(`head/bigfile/${foid}`), BUF, 'drop');
    firsts.push(r.bytes / 1e6 / (r.ns / 1e9));
  };
  for (let i = 1; i < FIRSTS; i++) {
    const w = await startWcfs(dbPath, path.join(dir, `wcfs-first${i}`));
    await firstRead(w);
    await w.stop();
  }
  const wcfs = await startWcfs(dbPath, path.join(dir, 'wcfs'));
  const cfuse = await startCfuse(refPath, path.join(dir, 'cfuse'));
  const head = wcfs.at(`head/bigfile/${foid}`);
  await firstRead(wcfs);
  const firstMBs = median(firsts);

  // the same bytes everywhere
  const sums = await Promise.all([head, cfuse.data, refPath].map((p) => rd('sum', p)));
  if (!sums.every((s) => s.sum === sums[0].sum && s.bytes === SIZE_MIB * MiB)) {
    throw new Error(`sources differ: ${JSON.stringify(sums)}`);
  }

  const raDefault = readAhead(wcfs);
  let nextRev = 0;
  const sources = [
    { name: 'C libfuse3 server (RAM)', key: 'c', file: () => cfuse.data, drop: true, srv: cfuse },
    { name: 'tmpfs /dev/shm', key: 'tmpfs', file: () => refPath, drop: false },
    { name: 'wcfs head/bigfile (dropped)', key: 'head', file: () => head, drop: true, srv: wcfs },
    { name: 'wcfs @rev/bigfile (fresh view)', key: 'rev', file: () => wcfs.at(`@${revs[nextRev++]}/bigfile/${foid}`), drop: false, after: 'evict', srv: wcfs },
  ];
  const rows = [];
  const readLines = [];
  const readStats = async () => {
    const { ReadFast, ReadJS, ReadLoad } = await serverStats(wcfs);
    return { ReadFast, ReadJS, ReadLoad };
  };
  const ratio = new Map(); // ra → wcfs head ÷ C
  for (const ra of [raDefault, 1024]) {
    setReadAhead(wcfs, ra);
    setReadAhead(cfuse, ra);
    const mbs = new Map(sources.map((s) => [s.key, []]));
    const cpu = new Map(sources.map((s) => [s.key, []]));
    const busy = new Map(sources.map((s) => [s.key, []]));
    const reads = new Map(sources.map((s) => [s.key, { ReadFast: 0, ReadJS: 0, ReadLoad: 0 }])); // wcfs: where READs went
    for (let rep = 0; rep <= REPS; rep++) {
      for (const s of sources) {
        const f = s.file();
        const cpu0 = s.srv?.cpuMs();
        const busy0 = machineBusyMs();
        const st0 = s.srv === wcfs ? await readStats() : undefined;
        const r = await rd('seq', f, BUF, s.drop ? 'drop' : 'keep');
        const busy1 = machineBusyMs(); // the read itself (the settle sleep below is idle time anyway)
        if (s.srv) await sleep(20); // the server may still be uploading (wcfs) what the reader got
        if (rep > 0 && s.srv) cpu.get(s.key).push(s.srv.cpuMs() - cpu0);
        if (rep > 0) busy.get(s.key).push(busy1 - busy0);
        if (rep > 0 && st0) {
          const st1 = await readStats();
          for (const k of Object.keys(reads.get(s.key))) reads.get(s.key)[k] += st1[k] - st0[k];
        }
        if (s.key !== 'tmpfs' && r.resident !== 0) throw new Error(`${f}: ${r.resident} pages cached before a cold read`);
        if (r.bytes !== SIZE_MIB * MiB) throw new Error(`${f}: read ${r.bytes} bytes`);
        if (s.after === 'evict') await rd('res', f, 'drop'); // don't pile up page cache of old views
        if (rep > 0) mbs.get(s.key).push(r.bytes / 1e6 / (r.ns / 1e9));
      }
    }
    const med = (k) => median(mbs.get(k));
    ratio.set(ra, { head: med('head') / med('c'), rev: med('rev') / med('c'), headMBs: med('head') });
    for (const s of sources) {
      const xs = mbs.get(s.key);
      rows.push([
        String(ra),
        s.name,
        med(s.key).toFixed(0),
        `${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)}`,
        (med(s.key) / med('c')).toFixed(2),
        (med(s.key) / med('tmpfs')).toFixed(2),
        s.srv ? median(cpu.get(s.key)).toFixed(0) : '',
        median(busy.get(s.key)).toFixed(0),
      ]);
    }
    rows.push(['', '', '', '', '', '', '', '']);
    for (const s of sources.filter((x) => x.srv === wcfs)) {
      const c = reads.get(s.key);
      const blocks = (REPS * SIZE_MIB) / 2;
      readLines.push(
        `ra_kb ${ra}, ${s.name}: READs per 2 MiB block: ${(c.ReadFast / blocks).toFixed(1)} fast path, ${(c.ReadJS / blocks).toFixed(2)} in JS, ${(c.ReadLoad / blocks).toFixed(2)} loads started by a READ`,
      );
    }
  }
  rows.pop();
  await wcfs.stop();
  await cfuse.stop();

  console.log(`cold sequential read of ${SIZE_MIB} MiB (2 MiB ZBlk0 blocks), read(2) with a 1 MiB buffer, median of ${REPS}`);
  table(['ra_kb', 'source', 'MB/s', 'min–max', '÷C', '÷tmpfs', 'server CPU ms', 'machine CPU ms'], rows, 'rlrrrrrr');
  // issue 11's goals, a verdict per row
  for (const l of readLines) console.log(l);
  const verdict = (what, q, goal) => console.log(`goal ${what}: ${q.toFixed(2)} (≥ ${goal}) — ${q >= goal ? 'met ✓' : 'NOT met ✗'}`);
  for (const [ra, q] of ratio) {
    verdict(`wcfs head ÷ C at ra_kb ${ra}`, q.head, 0.95);
    verdict(`wcfs @rev ÷ C at ra_kb ${ra}`, q.rev, 0.9);
  }
  const later = ratio.get(raDefault).headMBs;
  console.log(
    `wcfs head/bigfile, first read after server start (median of ${FIRSTS} starts, ra_kb ${raDefault}): ${firstMBs.toFixed(0)} MB/s (${firsts.map((x) => x.toFixed(0)).join(', ')}); a later cold read ${later.toFixed(0)} MB/s`,
  );
  verdict('first cold read after start ÷ a later cold read', firstMBs / later, 0.8);
}

runMain(main);
