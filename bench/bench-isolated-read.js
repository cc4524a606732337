// Hot read throughput of an isolated mapping: a client's Mapping of a whole ZBigFile at an
// old revision (some blocks pinned to @<rev>/bigfile/<oid>), fully in the page cache, read
// by a JS loop over mapping.bytes, vs the same loop over a tmpfs mmap of the same bytes.
//
//   npm run bench -- isolated     (or: node bench/bench-isolated-read.js after npm run build)
//
// A 256 MiB ZBigFile (128 blocks of 2 MiB, ZBlk0, random; WCFS_BENCH_MIB to change) at r0,
// also written to a tmpfs file (the reference copy); wcfs serves it and has it all cached;
// then one commit r1 changes 8 blocks spread over the file. In one client process
// (bench/client-worker.js) the same JS functions read four sources of 256 MiB:
//   wcfs @r0 (isolated) — conn at r0: the 8 changed blocks are pinned, i.e. mapped from
//                         @r0's file (17 VMAs); the bytes equal the tmpfs copy;
//   wcfs head           — conn at r1 = head: nothing pinned (isolation switched off);
//   tmpfs mmap          — the tmpfs copy mapped by the client library's own mmap layer over a
//                         fake mount dir (WCFS.attach + a socketpair as head/watch, the test
//                         hooks): a plain mmap(MAP_SHARED, PROT_READ) of the tmpfs file, read
//                         by the same JS loop — THE BASELINE OF THE GOAL (÷tmpfs ≥ 0.95);
//   heap Buffer         — the tmpfs copy read into a Buffer: no page faults at all;
// and, for reference, bench/rd.c's C loops over an mmap of the tmpfs copy (8-byte words).
// Per repetition: touch (one byte per 4 KiB page) on a fresh mapping — mostly the page faults
// that map cached pages —, sum (every 8-byte word as float64, a Float64Array view: what a
// numpy reader does; near memory bandwidth) on a fresh mapping — faults + reads —, and the
// same sum again on that mapping ("warm": page tables filled, reads only). 2 rounds × 5
// repetitions per source, interleaved; medians. Before each wcfs repetition the worker checks
// with mincore that every page the mapping shows is cached (DAMON proactive reclaim on this
// VM evicts idle pages now and then: such pages are read again first, and a note says so).
// An int32 checksum (untimed) must be equal for the isolated view, tmpfs and the heap.
import { linkSync, mkdirSync, writeFileSync } from 'node:fs';
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
  rd,
  runMain,
  setBlock,
  startClient,
  startWcfs,
  table,
  tools,
  workDir,
} from './util.js';

const SIZE_MIB = Number(process.env.WCFS_BENCH_MIB ?? 256);
const BS = 2 * MiB;
const NBLK = Math.ceil(SIZE_MIB / 2);
const NCHANGED = 8;
const REPS = 5;
const ROUNDS = 2;

async function main() {
  await tools();
  const dir = workDir('isoread');
  const dbPath = path.join(dir, 'data.fs');
  const refPath = path.join(dir, 'ref.bin');
  const { storage, big } = await makeDb(dbPath, { nblk: NBLK, blksize: BS, refPath });
  const wcfs = await startWcfs(dbPath, path.join(dir, 'wcfs'));
  const headFile = wcfs.at(`head/bigfile/${hex16(big)}`);
  await ensureCached(headFile, 'head file'); // every block tracked: pins are sent at watch setup
  const r0 = storage.head();

  // r1: NCHANGED blocks change
  const txn = new WriteTxn(storage);
  const payload = new Uint8Array(BS);
  const changed = Array.from({ length: NCHANGED }, (_, i) => Math.floor(((i + 0.5) * NBLK) / NCHANGED));
  for (const b of changed) {
    randomFillSync(payload);
    await setBlock(txn, big, b, payload, { format: 'ZBlk0' });
  }
  const r1 = await txn.commit();
  const poll = await headPoller(wcfs.mnt);
  await poll.waitFor(hex16(r1));
  await poll.close();
  await ensureCached(headFile, 'head file');

  // the fake mount: head/bigfile/<oid> = the tmpfs copy (content as of r0)
  const fake = path.join(dir, 'fake');
  mkdirSync(path.join(fake, 'head', 'bigfile'), { recursive: true });
  writeFileSync(path.join(fake, 'head', 'at'), hex16(r1));
  linkSync(refPath, path.join(fake, 'head', 'bigfile', hex16(big)));

  const w = await startClient('reader');
  const sources = [
    { key: 'iso', name: 'wcfs @r0 (isolated)', open: () => w.call('wcfs', { name: 'iso', mnt: wcfs.mnt, at: r0, foid: big }) },
    { key: 'head', name: 'wcfs head', open: () => w.call('wcfs', { name: 'head', mnt: wcfs.mnt, at: r1, foid: big }) },
    { key: 'tmpfs', name: 'tmpfs mmap', open: () => w.call('fake', { name: 'tmpfs', dir: fake, at: r1, foid: big }) },
    { key: 'heap', name: 'heap Buffer', open: () => w.call('heap', { name: 'heap', path: refPath }) },
  ];
  for (const s of sources) await s.open();
  const pinned = await w.call('pinned', { name: 'iso' });
  if (pinned.length !== NCHANGED || pinned.some(([b]) => !changed.includes(b))) {
    throw new Error(`isolated conn: pinned ${JSON.stringify(pinned.map(([b]) => b))}, want ${JSON.stringify(changed)}`);
  }
  // warm-up (JIT; the @r0 blocks into the page cache), then the measured rounds
  for (const s of sources) await w.call('measure', { name: s.key, reps: 1 });
  const t = new Map(sources.map((s) => [s.key, { touch: [], sum: [], warm: [] }]));
  const res = new Map();
  let refetched = 0;
  const c = { touch: [], sum: [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const s of sources) {
      const r = await w.call('measure', { name: s.key, reps: REPS });
      for (const loop of ['touch', 'sum', 'warm']) t.get(s.key)[loop].push(...r[loop]);
      res.set(s.key, r.res);
      refetched += r.refetched;
    }
    const r = await rd('mmap', refPath, REPS);
    c.touch.push(...r.touch);
    c.sum.push(...r.sum);
  }
  await w.close();
  await wcfs.stop();

  for (const k of ['tmpfs', 'heap']) {
    if (JSON.stringify(res.get(k)) !== JSON.stringify(res.get('iso'))) {
      throw new Error(`isolated view and ${k} differ: ${JSON.stringify(res.get('iso'))} vs ${JSON.stringify(res.get(k))}`);
    }
  }
  if (res.get('head').check === res.get('iso').check) throw new Error('head and the isolated view read the same bytes');
  if (refetched) process.stderr.write(`bench: note: ${refetched} pages were evicted between repetitions (DAMON) and read again before measuring\n`);

  const size = NBLK * BS;
  const rows = [];
  const ratio = {};
  const loops = [
    ['touch', 'touch, fresh mapping'],
    ['sum', 'sum, fresh mapping'],
    ['warm', 'sum, same mapping again'],
  ];
  for (const [loop, what] of loops) {
    const base = median(t.get('tmpfs')[loop]);
    const heap = median(t.get('heap')[loop]);
    for (const s of sources) {
      const xs = t.get(s.key)[loop];
      const ns = median(xs);
      rows.push([
        what,
        s.name,
        (ns / 1e6).toFixed(1),
        `${(Math.min(...xs) / 1e6).toFixed(1)}–${(Math.max(...xs) / 1e6).toFixed(1)}`,
        (size / 1e6 / (ns / 1e9)).toFixed(0),
        (base / ns).toFixed(2),
        (heap / ns).toFixed(2),
      ]);
      if (s.key === 'iso') ratio[loop] = base / ns;
    }
    if (loop !== 'warm') {
      const ns = median(c[loop]);
      rows.push([what, 'C rd mmap of tmpfs (8-byte words)', (ns / 1e6).toFixed(1), '', (size / 1e6 / (ns / 1e9)).toFixed(0), '', '']);
    }
  }
  console.log(
    `hot read of a ${SIZE_MIB} MiB file, fully cached, by a JS loop in a client process; ${NCHANGED} blocks of the isolated view pinned @r0; median of ${ROUNDS * REPS}`,
  );
  table(['loop', 'source', 'ms', 'min–max', 'MB/s', '÷tmpfs', '÷heap'], rows, 'llrrrrr');
  console.log("÷tmpfs = time(tmpfs mmap, same JS loop) ÷ time(source): the goal's ratio; ÷heap = the same against a heap Buffer (no page faults)");
  for (const [loop, what] of loops) {
    console.log(`goal isolated ÷ tmpfs mmap ≥ 0.95 (${what}): ${ratio[loop].toFixed(2)} — ${ratio[loop] >= 0.95 ? 'met' : 'NOT met'}`);
  }
}

runMain(main);
