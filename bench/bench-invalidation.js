// Invalidation cost per changed block: commit → head/at latency when a commit changes K blocks
// of a ZBigFile that wcfs has fully in the page cache, minus the K = 0 latency, per block.
//
//   npm run bench -- invalidation   (or: node bench/bench-invalidation.js after npm run build)
//
// A 256 MiB ZBigFile (128 blocks of 2 MiB, ZBlk0) is read through head/bigfile/<oid> so that
// it is fully cached (mincore-checked before every commit; the blocks invalidated by the last
// commit are read back first). Every commit changes one 4 KiB block of a small ZBigFile that
// wcfs has not opened, plus K blocks of the big file spread over it (K = 0 is the baseline:
// nothing of the big file changes). The writer is this process (Data.fs on /dev/shm);
// latency = commit() returned → head/at shows the tid (polled back to back, see
// bench-commit-latency.js). For each K it prints the median latency and
// (latency(K) − latency(0)) / K in µs per block, for two states of the big file:
//   cached  — fully in the page cache: the server invalidates K × 2 MiB of cached pages;
//   dropped — its page cache emptied first (posix_fadvise DONTNEED): the server does the same
//             work (the commit's records, ΔFtail, one invalidation notify per block) but the
//             kernel has nothing to drop. This is the switch to compare with: cached − dropped
//             is what dropping the pages costs.
// Baseline (same run): the kernel alone dropping the same cached file with posix_fadvise
// (DONTNEED), per 2 MiB block; ÷kernel = cached µs/blk ÷ that.
// The old data of each cached block is RETRIEVEd and stored into its @<rev> file, looked up
// through the mount when the kernel does not know it (upstream's rule, notes.md §8
// "Invalidation"): that is most of the cached µs/blk.
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import {
  MiB,
  WriteTxn,
  ensureCached,
  hex16,
  headPoller,
  makeDb,
  median,
  nowMs,
  rd,
  runMain,
  setBlock,
  sleep,
  startWcfs,
  table,
  tools,
  workDir,
} from './util.js';

const NBLK = 128;
const KS = [0, 1, 16, 128];
const REPS = { 0: 15, 1: 15, 16: 9, 128: 3 };

async function main() {
  await tools();
  const dir = workDir('inval');
  const dbPath = path.join(dir, 'data.fs');
  const { storage, big, small } = await makeDb(dbPath, { nblk: NBLK });
  const wcfs = await startWcfs(dbPath, path.join(dir, 'wcfs'));
  const file = wcfs.at(`head/bigfile/${hex16(big)}`);
  const poll = await headPoller(wcfs.mnt);
  const payload = new Uint8Array(2 * MiB);

  let n = 0;
  async function commitK(k) {
    const txn = new WriteTxn(storage);
    await setBlock(txn, small, 0, Buffer.from(`change ${n++}`));
    randomFillSync(payload);
    payload[payload.length - 1] |= 1;
    for (let i = 0; i < k; i++) await setBlock(txn, big, Math.floor((i * NBLK) / k), payload); // setBlock copies a Uint8Array
    const t0 = nowMs();
    const tid = hex16(await txn.commit());
    const t1 = nowMs();
    const seen = await poll.waitFor(tid);
    return { latency: seen.t - t1, commit: t1 - t0 };
  }

  async function prepare(state) {
    if (state === 'cached') {
      await ensureCached(file, 'big file'); // reads back what the last commit invalidated
    } else {
      const r = await rd('res', file, 'drop');
      if (r.resident !== 0) throw new Error(`${file}: ${r.resident} pages still cached after DONTNEED`);
    }
    await sleep(50); // let the server finish uploading what the read loaded (uploads hold commits off)
  }

  await commitK(0); // warm-up
  await commitK(1);
  const lat = { cached: new Map(), dropped: new Map() };
  const commitMs = new Map();
  for (const k of KS) {
    for (const st of ['cached', 'dropped']) lat[st].set(k, []);
    commitMs.set(k, []);
    for (let rep = 0; rep < REPS[k]; rep++) {
      for (const st of ['cached', 'dropped']) {
        await prepare(st);
        const r = await commitK(k);
        lat[st].get(k).push(r.latency);
        commitMs.get(k).push(r.commit);
      }
    }
  }
  // baseline: the kernel alone dropping the same cached pages (posix_fadvise DONTNEED of the
  // whole cached file, per 2 MiB block)
  const kernelUs = [];
  for (let i = 0; i < 3; i++) {
    await prepare('cached');
    const r = await rd('res', file, 'drop');
    kernelUs.push(r.drop_ns / 1e3 / NBLK);
  }
  await poll.close();
  await wcfs.stop();

  const rows = [];
  const m = (st, k) => median(lat[st].get(k));
  for (const k of KS) {
    const per = (st) => (k === 0 ? '' : (((m(st, k) - m(st, 0)) / k) * 1000).toFixed(0));
    const ev = ((m('cached', k) - m('dropped', k)) / k) * 1000;
    rows.push([
      String(k),
      String(REPS[k]),
      median(commitMs.get(k)).toFixed(1),
      m('cached', k).toFixed(2),
      m('dropped', k).toFixed(2),
      per('cached'),
      per('dropped'),
      k === 0 ? '' : ev.toFixed(0),
      k === 0 ? '' : (per('cached') / median(kernelUs)).toFixed(2),
    ]);
  }
  console.log(`commit of K changed 2 MiB blocks → head/at, ${NBLK}-block file; medians, latency from commit() returned`);
  table(['K', 'n', 'commit ms', 'cached ms', 'dropped ms', 'cached µs/blk', 'dropped µs/blk', 'eviction µs/blk', '÷kernel'], rows);
  console.log('µs/blk = (latency(K) − latency(0)) / K; eviction = (cached − dropped) / K');
  console.log(`kernel baseline: posix_fadvise(DONTNEED) of a cached 2 MiB block ${median(kernelUs).toFixed(0)} µs (÷kernel = cached µs/blk ÷ this)`);
}

runMain(main);
