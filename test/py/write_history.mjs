// A seeded random ZBigFile history written by the project's writer (dist/zodb), for
// test/py/test_wcfs_writer.py: real ZODB reads it back.
//
//   node test/py/write_history.mjs <Data.fs> [seed]     (seed: argv, else $WCFS_SEED, else 1)
//
// Prints on stdout one JSON manifest:
//   { seed, txns: [{ tid: "<hex16>", files: { "<foid hex16>": { name, blksize, blocks: { blk: sha256 } } } }] }
// — every committed txn in order (the root's creation first), and for each every file that
// exists at that tid: blksize and the sha256 of every block present in blktab (the whole
// block, zero-padded to blksize; an absent block is a hole). The storage is closed at the end,
// so the .index our writer saves is there too.
//
// What the history covers: files created at different points; a file with enough 4 KiB blocks
// that its LOBTree blktab splits into many buckets (and loses whole buckets to punches); ZBlk1
// blocks of 512 KiB (128 chunks: chunktab IOBTrees with several buckets); ZBlk0 ↔ ZBlk1 format
// changes; punches; rewrites with equal data; all-zero and short (zero-padded) blocks; a blktab
// deep enough for a root split, and oids past 2¹⁶.
import { createHash } from 'node:crypto';
import { StorageLoader, WriteTxn } from '../../dist/zodb/db.js';
import { hex16 } from '../../dist/zodb/ids.js';
import { openStorage } from '../../dist/zodb/open.js';
import { PersistentRef } from '../../dist/zodb/pickle/index.js';
import { ZBIGFILE_CLASS, ZBigFileView, createZBigFile, ensureRoot, rootSet, setBlock } from '../../dist/zodb/zbigfile.js';

const [dbPath, seedArg] = process.argv.slice(2);
if (dbPath === undefined) {
  process.stderr.write('usage: write_history.mjs <Data.fs> [seed]\n');
  process.exit(2);
}
const seed = Number(seedArg ?? process.env.WCFS_SEED ?? 1) >>> 0;
process.stderr.write(`write_history: seed ${seed}\n`);

// ---- seeded PRNG (xorshift32; never 0) ----
let st = seed ^ 0x9e3779b9 || 1;
const u32 = () => {
  st ^= st << 13;
  st >>>= 0;
  st ^= st >>> 17;
  st ^= st << 5;
  st >>>= 0;
  return st;
};
const rnd = (n) => u32() % n; // 0 ≤ x < n
const chance = (p) => u32() / 2 ** 32 < p;
const pick = (a) => a[rnd(a.length)];

function randomBytes(n) {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 4) {
    const w = u32();
    b[i] = w;
    if (i + 1 < n) b[i + 1] = w >>> 8;
    if (i + 2 < n) b[i + 2] = w >>> 16;
    if (i + 3 < n) b[i + 3] = w >>> 24;
  }
  return b;
}

/** Block content: data.length ≤ blksize (shorter = zero-padded), chunk-structured for ZBlk1. */
function makeBlock(blksize) {
  const kind = rnd(8);
  if (kind === 0) return new Uint8Array(0); // all zeros, yet present
  if (kind === 1) return new Uint8Array(blksize).fill(1 + rnd(255)); // fill pattern
  if (kind === 2) {
    // short data: the tail reads as zeros
    const n = 1 + rnd(blksize);
    return randomBytes(n);
  }
  // per 4 KiB chunk: zero, full random, random head + zero tail, zero head + random tail
  const b = new Uint8Array(blksize);
  for (let off = 0; off < blksize; off += 4096) {
    const n = Math.min(4096, blksize - off);
    const c = rnd(5);
    if (c === 0) continue;
    if (c === 1 || c === 2) b.set(randomBytes(n), off);
    else if (c === 3) b.set(randomBytes(1 + rnd(n)), off);
    else {
      const k = rnd(n);
      b.set(randomBytes(n - k), off + k);
    }
  }
  return b;
}

/** A small change of existing content (ZBlk1: only a few chunks differ). */
function mutate(old, blksize) {
  const b = new Uint8Array(blksize);
  b.set(old);
  const nchg = 1 + rnd(4);
  for (let i = 0; i < nchg; i++) {
    const off = rnd(blksize);
    const n = Math.min(1 + rnd(64), blksize - off);
    if (chance(0.3)) b.fill(0, off, off + n);
    else b.set(randomBytes(n), off);
  }
  if (chance(0.2)) b.fill(0, rnd(blksize)); // zero the tail: chunks go away
  return b;
}

const sha = (data, blksize) => {
  const h = createHash('sha256');
  h.update(data);
  if (data.length < blksize) h.update(new Uint8Array(blksize - data.length));
  return h.digest('hex');
};

// ---- the history ----
const s = await openStorage(dbPath, { create: true });
await ensureRoot(s);
const txns = [{ tid: hex16(s.head()), files: {} }];

/** Model: foid → { name, blksize, blocks: Map<blk, { data, fmt, sha }> }. */
const model = new Map();

function snapshot(tid) {
  const files = {};
  for (const [foid, f] of model) {
    const blocks = {};
    for (const blk of [...f.blocks.keys()].sort((a, b) => a - b)) blocks[blk] = f.blocks.get(blk).sha;
    files[hex16(foid)] = { name: f.name, blksize: f.blksize, blocks };
  }
  txns.push({ tid: hex16(tid), files });
}

const NTXN = 16;
// file specs: name, blksize, block range, format mix (chance of ZBlk1), txn index of creation
const specs = [
  { name: 'many', blksize: 4096, nblk: 400, p1: 0.15, at: 0 }, // LOBTree of many buckets
  { name: 'big', blksize: 512 << 10, nblk: 6, p1: 0.8, at: 0 }, // 128-chunk ZBlk1 chunktabs
  { name: 'mid', blksize: 64 << 10, nblk: 80, p1: 0.5, at: 3 }, // created later
  { name: 'late', blksize: 8192, nblk: 200, p1: 0.3, at: 9 }, // created later still
  { name: 'sparse', blksize: 4096, nblk: 1 << 20, p1: 0.3, at: 5 }, // far-apart keys
  { name: 'huge', blksize: 4096, nblk: 32000, p1: 0, at: NTXN - 1 }, // a blktab with tree nodes
];

/** Write a block in txn and the model. data null = punch. */
async function write(txn, foid, blk, data, fmt) {
  const f = model.get(foid);
  if (data === null) {
    await setBlock(txn, foid, blk, null);
    f.blocks.delete(blk);
    return;
  }
  await setBlock(txn, foid, blk, data, { format: fmt });
  f.blocks.set(blk, { data, fmt, sha: sha(data, f.blksize) });
}

for (let t = 0; t < NTXN; t++) {
  // oids past 2¹⁶ (as aborted txns leave gaps): the .index gets several oid-prefix buckets
  if (t === 9) for (let i = 0; i < 1 << 16; i++) s.newOid();
  const txn = new WriteTxn(s);
  for (const sp of specs.filter((x) => x.at === t)) {
    const foid = createZBigFile(txn, sp.blksize);
    await rootSet(txn, sp.name, new PersistentRef(foid, ZBIGFILE_CLASS));
    model.set(foid, { name: sp.name, blksize: sp.blksize, blocks: new Map(), spec: sp });
  }
  for (const [foid, f] of model) {
    const sp = f.spec;
    const present = [...f.blocks.keys()];
    const newBlk = () => (sp.name === 'sparse' ? u32() * 16 + rnd(16) : rnd(sp.nblk)); // sparse: keys up to 2³⁶
    const fmt = () => (chance(sp.p1) ? 'ZBlk1' : 'ZBlk0');
    if (sp.name === 'huge') {
      // 32000 one-byte ZBlk0 blocks in key order (buckets of 30 keys: > 1000 buckets), in the
      // last txn only (cheap to read back): the LOBTree's root node splits (BTree_split_root)
      for (let blk = 0; blk < sp.nblk; blk++) await write(txn, foid, blk, Uint8Array.of(1 + (blk % 251)), 'ZBlk0');
      continue;
    }
    if (t === sp.at || (sp.name === 'many' && t === 1)) {
      // fill: many blocks at once (in key order, then shuffled: both split patterns)
      const n = sp.name === 'big' ? sp.nblk : Math.min(sp.nblk, sp.name === 'sparse' ? 150 : Math.floor(sp.nblk * 0.6));
      const blks = sp.name === 'sparse' ? Array.from({ length: n }, newBlk) : Array.from({ length: n }, (_, i) => i);
      if (t === 1) blks.reverse();
      for (const blk of blks) await write(txn, foid, blk, makeBlock(f.blksize), fmt());
      continue;
    }
    const nops = 1 + rnd(sp.name === 'big' ? 4 : 25);
    for (let i = 0; i < nops; i++) {
      const op = rnd(10);
      const cur = present.length > 0 ? pick(present) : undefined;
      if (op <= 2 || cur === undefined) {
        await write(txn, foid, newBlk(), makeBlock(f.blksize), fmt()); // new or overwrite
      } else if (op === 3) {
        await write(txn, foid, cur, null); // punch
      } else if (op === 4) {
        const b = f.blocks.get(cur);
        if (b !== undefined) await write(txn, foid, cur, b.data, b.fmt); // rewrite, equal data
      } else if (op === 5) {
        const b = f.blocks.get(cur);
        if (b !== undefined) await write(txn, foid, cur, b.data, b.fmt === 'ZBlk0' ? 'ZBlk1' : 'ZBlk0'); // format change
      } else {
        const b = f.blocks.get(cur);
        if (b !== undefined) await write(txn, foid, cur, mutate(b.data, f.blksize), b.fmt); // small change
      }
    }
    // a run of punches: whole buckets go away (and come back)
    if (sp.name === 'many' && (t === 6 || t === 11)) {
      const lo = rnd(sp.nblk - 150);
      for (let blk = lo; blk < lo + 150; blk++) if (f.blocks.has(blk)) await write(txn, foid, blk, null);
    }
    if (sp.name === 'many' && t === 8) {
      for (let blk = 0; blk < 120; blk++) await write(txn, foid, blk, makeBlock(f.blksize), fmt());
    }
  }
  const tid = await txn.commit({ description: `history txn ${t}` });
  snapshot(tid);
}

// the writer's own reading agrees with its model (sanity: the manifest is what was written)
const loader = new StorageLoader(s);
const last = txns[txns.length - 1];
for (const [fh, f] of Object.entries(last.files)) {
  const v = await ZBigFileView.open(loader, BigInt('0x' + fh), s.head());
  for (const [blk, h] of Object.entries(f.blocks)) {
    if (f.name === 'huge' && Number(blk) % 97 !== 0) continue; // (each load decodes the tree path afresh)
    const got = createHash('sha256')
      .update((await v.loadBlock(Number(blk))).data)
      .digest('hex');
    if (got !== h) throw new Error(`self-check: file ${fh} blk ${blk}: ${got} != ${h}`);
  }
}
await s.close();
process.stdout.write(JSON.stringify({ seed, txns }) + '\n');
