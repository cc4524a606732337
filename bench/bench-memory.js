// Memory of many isolated views: 8 client processes at 8 nearby revisions of one big file,
// each mapping and reading all of it, vs one copy of the file.
//
//   npm run bench -- memory       (or: node bench/bench-memory.js after npm run build)
//
// A 256 MiB ZBigFile (128 blocks of 2 MiB, ZBlk0, random; WCFS_BENCH_MIB to change), then 7
// commits r1…r7, each changing 3 blocks: block 0 (a hot block, changed by every commit) and
// 2 blocks changed once, while wcfs runs. r0 = the revision before them. Three configurations,
// one after the other, each with 8 client processes (bench/client-worker.js: WCFS.join →
// connect(at) → open → mmap of the whole file → read one byte of every 4 KiB page):
//   head   — all 8 clients at r7 = head: isolation switched off (nothing to pin), the baseline;
//   r0…r7  — client i at r_i: it gets the blocks changed in (r_i, head] pinned to their
//            versions as of r_i, i.e. mapped from @<rev>/bigfile/<oid> — the measurement;
//   r0…r7, read_ahead_kb=0 — diagnosis: the same after dropping the @rev files' page cache
//            (posix_fadvise DONTNEED) with readahead switched off on the mount's bdi. A page
//            fault in a pinned block reads around the fault in the @rev file, into the
//            neighbouring blocks, which the server then loads and uploads whole: compare the
//            "not mapped" column of the two rows.
// Every client checks a marker word of each changed block (its version must be the one as of
// its revision). Then, with all 8 still mapping the file, it prints:
//   page cache — pages of head/bigfile/<oid> and of every @<rev>/bigfile/<oid> a client pins,
//                in the page cache (mincore, bench/rd.c res);
//   needed     — the file size + one block per distinct (block, revision) pinned by any
//                client: the old versions some client must see;
//   total      — page cache + anonymous memory in the clients' mappings of the file
//                (/proc/<pid>/smaps; 0 when the mappings only share the page cache);
//   total ÷ needed — goal ≤ 1.1; total ÷ file for comparison with one copy of the file.
// and per configuration the clients' memory: Σ Rss / Pss / Anonymous of the VMAs mapping the
// file (Rss counts the shared page cache once per process; Pss splits it between them), the
// number of those VMAs, and the whole processes' Σ Rss / Pss / Private (smaps_rollup:
// mostly the Node runtime, the same in every configuration), plus the server's Rss/Anonymous.
// (DAMON proactive reclaim on this VM may evict a few idle pages before they are counted:
// rows say when a mapping's Rss is below the file size.)
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import {
  MiB,
  WriteTxn,
  ensureCached,
  hex16,
  headPoller,
  makeDb,
  rd,
  runMain,
  setBlock,
  setReadAhead,
  smaps,
  startClient,
  startWcfs,
  table,
  tools,
  workDir,
} from './util.js';

const SIZE_MIB = Number(process.env.WCFS_BENCH_MIB ?? 256);
const BS = 2 * MiB;
const NBLK = Math.ceil(SIZE_MIB / 2);
const NCLIENT = 8;
const MARK = 0xc0de0000;

async function main() {
  await tools();
  const dir = workDir('memory');
  const dbPath = path.join(dir, 'data.fs');
  const { storage, big } = await makeDb(dbPath, { nblk: NBLK, blksize: BS });
  // the server first: a watch can go back only to where its history starts (its start)
  const wcfs = await startWcfs(dbPath, path.join(dir, 'wcfs'));
  const headFile = wcfs.at(`head/bigfile/${hex16(big)}`);
  await ensureCached(headFile, 'head file');
  const revs = [storage.head()];
  const changed = []; // changed[j] = blocks changed by r_j (j ≥ 1)
  const payload = new Uint8Array(BS);
  const dv = new DataView(payload.buffer);
  for (let j = 1; j < NCLIENT; j++) {
    const blks = [0, (j * 16 + 3) % NBLK, (j * 16 + 11) % NBLK];
    changed[j] = blks;
    const txn = new WriteTxn(storage);
    for (const b of blks) {
      randomFillSync(payload);
      dv.setUint32(0, MARK | j, true);
      await setBlock(txn, big, b, payload, { format: 'ZBlk0' });
    }
    revs.push(await txn.commit());
  }
  const watched = [...new Set(changed.flat().filter((b) => b !== undefined)), 1];

  const poll = await headPoller(wcfs.mnt);
  await poll.waitFor(hex16(revs.at(-1)));
  await poll.close();
  await ensureCached(headFile, 'head file');
  const fileBytes = NBLK * BS;

  /** The marker word block b must show as of revision index i (undefined: a base block). */
  const want = (b, i) => {
    for (let j = i; j >= 1; j--) if (changed[j].includes(b)) return (MARK | j) >>> 0;
    return undefined;
  };

  const results = [];
  const allRevs = new Set();
  const revFile = (rev) => wcfs.at(`@${hex16(rev)}/bigfile/${hex16(big)}`);
  for (const cfg of [
    { name: 'head', at: () => NCLIENT - 1 },
    { name: 'r0…r7', at: (i) => i },
    { name: 'r0…r7, read_ahead_kb=0', at: (i) => i, noRA: true },
  ]) {
    if (cfg.noRA) {
      // diagnosis: the same without readahead on the mount, from an empty @rev page cache
      for (const rev of allRevs) {
        const r = await rd('res', revFile(rev), 'drop');
        if (r.resident !== 0) throw new Error(`${revFile(rev)}: ${r.resident} pages still cached after DONTNEED`);
      }
      setReadAhead(wcfs, 0);
    }
    const clients = [];
    for (let i = 0; i < NCLIENT; i++) clients.push(await startClient(`client ${i}`));
    for (const [i, c] of clients.entries()) {
      const ri = cfg.at(i);
      await c.call('wcfs', { name: 'f', mnt: wcfs.mnt, at: revs[ri], foid: big });
      await c.call('map', { name: 'f' });
      await c.call('read', { name: 'f' });
      const firsts = await c.call('firsts', { name: 'f', blks: watched });
      watched.forEach((b, k) => {
        const w = want(b, ri);
        const ok = w === undefined ? !changed.some((blks, j) => blks?.includes(b) && firsts[k] === (MARK | j) >>> 0) : firsts[k] === w;
        if (!ok) throw new Error(`client ${i} @r${ri}: #${b} shows ${firsts[k].toString(16)}, want ${w === undefined ? 'the base version' : w.toString(16)}`);
      });
    }
    // page cache of head and of every @rev file some client pins
    const pins = new Set();
    const pinRevs = new Set();
    for (const c of clients) {
      for (const [b, rev] of await c.call('pinned', { name: 'f' })) {
        pins.add(`${b}@${rev}`);
        pinRevs.add(rev);
        allRevs.add(rev);
      }
    }
    const head = await rd('res', headFile);
    let revPages = 0;
    for (const rev of pinRevs) revPages += (await rd('res', revFile(rev))).resident;
    const mem = clients.map((c) => smaps(c.pid, wcfs.mnt));
    const srv = smaps(wcfs.proc.pid).all;
    const sum = (f) => mem.reduce((s, m) => s + f(m), 0);
    const cache = (head.resident + revPages) * 4096;
    const anon = sum((m) => m.files.Anonymous);
    const needed = fileBytes + pins.size * BS;
    results.push({
      cfg: cfg.name,
      head: head.resident * 4096,
      headFull: head.resident === head.pages,
      rev: revPages * 4096,
      nrev: pinRevs.size,
      npins: pins.size,
      cache,
      total: cache + anon,
      needed,
      fRss: sum((m) => m.files.Rss),
      fPss: sum((m) => m.files.Pss),
      anon,
      vmas: sum((m) => m.vmas),
      short: mem.filter((m) => m.files.Rss < fileBytes).length,
      pRss: sum((m) => m.all.Rss),
      pPss: sum((m) => m.all.Pss),
      pPriv: sum((m) => m.all.Private),
      sRss: srv.Rss,
      sAnon: srv.Anonymous,
    });
    await Promise.all(clients.map((c) => c.close()));
  }
  await wcfs.stop();

  const mib = (x) => (x / MiB).toFixed(1);
  console.log(`memory: ${NCLIENT} client processes each mapping and reading a ${SIZE_MIB} MiB file (2 MiB blocks); MiB`);
  table(
    ['clients at', 'head cache', '@rev cache', '@rev files', 'not mapped', 'total', 'needed', 'old blocks', 'total÷needed', 'total÷file'],
    results.map((r) => [
      r.cfg,
      mib(r.head) + (r.headFull ? '' : '*'),
      mib(r.rev),
      String(r.nrev),
      mib(r.cache - r.fPss),
      mib(r.total),
      mib(r.needed),
      String(r.npins),
      (r.total / r.needed).toFixed(3),
      (r.total / fileBytes).toFixed(3),
    ]),
    'lrrrrrrrrr',
  );
  console.log('total = page cache (head + @rev) + anonymous memory in the mappings; needed = file + old blocks × 2 MiB;');
  console.log(
    'not mapped = page cache no client maps (page cache − Σ Pss of the mappings)' +
      (results.some((r) => !r.headFull) ? '; * head not fully cached (DAMON?)' : ''),
  );
  table(
    ['clients at', 'map Σ Rss', 'map Σ Pss', 'map Σ Anon', 'VMAs', 'proc Σ Rss', 'proc Σ Pss', 'proc Σ Private', 'server Rss', 'server Anon'],
    results.map((r) => [r.cfg, mib(r.fRss), mib(r.fPss), mib(r.anon), String(r.vmas), mib(r.pRss), mib(r.pPss), mib(r.pPriv), mib(r.sRss), mib(r.sAnon)]),
    'lrrrrrrrrr',
  );
  console.log(`map = the clients' VMAs of head/ and @rev/ files (Σ over ${NCLIENT} processes); proc = whole client processes (smaps_rollup)`);
  const short = results.reduce((s, r) => s + r.short, 0);
  if (short) console.log(`note: ${short} mappings had Rss < file size when counted (pages evicted after the read: DAMON)`);
  const iso = results[1];
  console.log(
    `goal total ÷ (file + old blocks) ≤ 1.1 (${NCLIENT} revisions): ${(iso.total / iso.needed).toFixed(3)} — ${iso.total / iso.needed <= 1.1 ? 'met' : 'NOT met'}` +
      `; vs one copy of the file: ${(iso.total / fileBytes).toFixed(3)}× (isolation off, all at head: ${(results[0].total / fileBytes).toFixed(3)}×;` +
      ` without readahead: ${(results[2].total / results[2].needed).toFixed(3)})`,
  );
}

runMain(main);
