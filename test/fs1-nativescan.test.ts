// The native index-rebuild scanner (native/fs1scan.cc via src/zodb/fs1/nativescan.ts) against
// the JS scanner it shortcuts: opening without `.index` must end the same whichever walks the
// file — the same index, head, committed end and open info, or the same error (class and
// message), with the same warnings (and, for a writer, the same truncation).
//
// Checked on the fixtures (read in place, through a symlink so no `.index` is found), on files
// our writer wrote (many small records rewriting the same oids, deletes, big txns), and on
// seeded random images, intact and corrupted/truncated at random, with random window sizes
// (small windows make the native walk stop and resume inside txns and records). On every image
// the native walk itself must also stop exactly where the JS scanner first stops (or throws),
// with the JS index up to there.
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { MAX_POS, txnEnd, type TxnStatus } from '../src/zodb/fs1/format.js';
import { FsIndex } from '../src/zodb/fs1/fsindex.js';
import { nativeRebuild, type ScanWindows } from '../src/zodb/fs1/nativescan.js';
import { SeqReader, scanTxn } from '../src/zodb/fs1/scan.js';
import { CorruptError } from '../src/zodb/errors.js';
import type { Oid, Tid } from '../src/zodb/ids.js';
import { FsBuilder, TmpDirs, allFixtures } from './helpers/fs1util.js';
import { fcParams } from './helpers/fuzz.js';

const tmp = new TmpDirs();
afterAll(() => tmp.cleanup());

/** Windows that make the native walk resume inside txns (and stall below a header's size). */
const SMALL: ScanWindows[] = [
  { min: 64, max: 256, sparse: 50 },
  { min: 23, max: 97, sparse: 23 },
  { min: 1000, max: 4000, sparse: 300 },
];

interface Outcome {
  ok?: { index: Array<[Oid, number]>; head: Tid; end: number; lastOid: Oid; packedTo: Tid; info: object; size: number };
  error?: { cls: string; message: string };
  warnings: string[];
}

async function outcome(file: string, nativeScan: boolean | ScanWindows, readOnly = true): Promise<Outcome> {
  const warnings: string[] = [];
  try {
    const s = await FileStorage.open(file, { readOnly, nativeScan, warn: (m) => warnings.push(m), recentRecords: 0 });
    try {
      const ok = {
        index: s.indexEntries(),
        head: s.head(),
        end: s.committedEnd,
        lastOid: s.lastOid(),
        packedTo: s.packedTo(),
        info: { ...s.openInfo },
        size: fs.statSync(file).size,
      };
      return { ok, warnings };
    } finally {
      await s.close();
    }
  } catch (e) {
    if (!(e instanceof Error)) throw e;
    return { error: { cls: e.constructor.name, message: e.message }, warnings };
  }
}

/** Where the JS scanner stops from the start: the txn position, the index and head up to there. */
function jsStop(file: string): { pos: number; head: Tid; txns: number; index: Array<[Oid, number]>; kind: string } {
  const fd = fs.openSync(file, 'r');
  try {
    const r = new SeqReader(fd, fs.fstatSync(fd).size);
    const index = new FsIndex();
    let pos = 4;
    let head: Tid = 0n;
    let txns = 0;
    let kind: string;
    for (;;) {
      let step;
      try {
        step = scanTxn(r, pos, head === 0n ? -1n : head, file);
      } catch (e) {
        if (!(e instanceof CorruptError)) throw e;
        kind = 'corrupt';
        break;
      }
      kind = step.kind;
      if (step.kind !== 'txn') break;
      for (const d of step.recs) index.set(d.oid, d.pos);
      pos = txnEnd(step.txn);
      head = step.txn.tid;
      txns++;
    }
    return { pos, head, txns, index: [...index.entries()], kind };
  } finally {
    fs.closeSync(fd);
  }
}

/** The native walk alone must stop where the JS scanner does, with the same index (unless it stopped inside a txn). */
function expectNativeStopsLikeJs(file: string, w?: ScanWindows): void {
  const js = jsStop(file);
  const fd = fs.openSync(file, 'r');
  try {
    const index = new FsIndex();
    const r = nativeRebuild(fd, fs.fstatSync(fd).size, 4, index, w);
    const stalled = w !== undefined && (w.min < 50 || w.sparse < 50); // a window too small for a record header
    if (!stalled) {
      expect({ pos: r.topPos, head: r.headTid, txns: r.txns }).toEqual({ pos: js.pos, head: js.head, txns: js.txns });
      // eof, a partial or in-progress txn are seen at its header: before any of its records
      if (js.kind !== 'corrupt') expect(r.dirty).toBe(false);
    } else {
      expect(r.topPos).toBeLessThanOrEqual(js.pos);
    }
    if (!r.dirty && r.topPos === js.pos) expect([...index.entries()]).toEqual(js.index);
  } finally {
    fs.closeSync(fd);
  }
}

async function expectSameOutcome(file: string, windows: ScanWindows[] = [], writer = false): Promise<Outcome> {
  const js = await outcome(file, false);
  expect(await outcome(file, true)).toEqual(js);
  for (const w of windows) expect(await outcome(file, w)).toEqual(js);
  if (writer) {
    // a writer truncates an unfinished tail: on two copies, the same warnings and file left
    const dir = tmp.make('nscan');
    const a = path.join(dir, 'js.fs');
    const b = path.join(dir, 'native.fs');
    fs.copyFileSync(file, a);
    fs.copyFileSync(file, b);
    const oa = await outcome(a, false, false);
    const ob = await outcome(b, true, false);
    expect(ob.warnings.map((m) => m.replaceAll(b, a))).toEqual(oa.warnings);
    expect(ob.error?.message.replaceAll(b, a)).toEqual(oa.error?.message);
    expect(ob.ok?.index).toEqual(oa.ok?.index);
    expect(ob.ok?.size).toEqual(oa.ok?.size);
    expect(fs.readFileSync(b).equals(fs.readFileSync(a))).toBe(true);
  }
  return js;
}

describe('native index rebuild = JS index rebuild', () => {
  it.each(allFixtures)('fixture %s (read in place)', async (_name, src) => {
    const dir = tmp.make('nscan');
    const link = path.join(dir, 'data.fs'); // no data.fs.index next to it: open rebuilds
    fs.symlinkSync(src, link);
    const js = await expectSameOutcome(link, SMALL.slice(0, 1));
    expect(js.ok?.info).toMatchObject({ indexLoaded: false });
    expect(js.ok!.index.length).toBeGreaterThan(0);
    expectNativeStopsLikeJs(link);
    expectNativeStopsLikeJs(link, SMALL[0]);
  });

  it('files of our writer: small records rewriting the same oids, deletes, big txns', async () => {
    const dir = tmp.make('nscan');
    const f = path.join(dir, 'objects.fs');
    const w = await FileStorage.open(f, { create: true, recentRecords: 0, warn: () => {} });
    const oids: Oid[] = [];
    for (let i = 0; i < 300; i++) oids.push(w.newOid());
    const data = new Uint8Array(200).fill(7);
    await w.commit({ records: oids.map((oid) => ({ oid, data })) });
    for (let t = 0; t < 200; t++) {
      // each txn rewrites a window of the oids; some are deleted and come back later
      const recs = oids.slice((t * 37) % 250, ((t * 37) % 250) + 50).map((oid, i) => ({ oid, data: (t + i) % 23 === 0 ? null : data }));
      await w.commit({ records: recs, user: t % 3 === 0 ? 'u' : '', description: t % 5 === 0 ? 'some description' : '' });
    }
    // a txn much bigger than any window, then small ones again
    await w.commit({ records: oids.map((oid) => ({ oid, data: new Uint8Array(5000).fill(1) })) });
    await w.commit({ records: [{ oid: oids[0]!, data: new Uint8Array(70_000) }] });
    for (let t = 0; t < 20; t++) await w.commit({ records: oids.slice(t, t + 3).map((oid) => ({ oid, data })) });
    await w.commit({ records: [] });
    await w.close();
    fs.rmSync(f + '.index');
    const js = await expectSameOutcome(f, SMALL, true);
    expect(js.ok!.index.length).toBe(300);
    expect(js.ok!.info).toMatchObject({ scannedTxns: 224 });
    expect(js.ok!.end).toBe(fs.statSync(f).size);
    expectNativeStopsLikeJs(f);
    for (const w of SMALL) expectNativeStopsLikeJs(f, w);
  });

  it('tid 0: the JS scanner has no previous tid after a txn of tid 0 (headTid 0n ⇒ -1n), nor has the native one', async () => {
    const dir = tmp.make('nscan');
    for (const [name, tids, wantError] of [
      ['zero-zero', [0n, 0n, 5n], false],
      ['zero-zero-five-five', [0n, 0n, 5n, 5n], true],
      ['one-zero', [1n, 0n], true],
    ] as const) {
      const b = new FsBuilder();
      tids.forEach((tid, i) => b.txn(tid, [{ oid: BigInt(i % 2), data: 'x' }]));
      const f = b.write(path.join(dir, `${name}.fs`));
      const js = await expectSameOutcome(f, SMALL, true);
      expect(js.error !== undefined).toBe(wantError);
      expectNativeStopsLikeJs(f);
    }
  });
});

// ---- seeded random images ----

const txnArb = fc.record({
  recs: fc.uniqueArray(
    fc.tuple(fc.bigInt({ min: 0n, max: 20n }), fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 300 }), fc.constantFrom<'deleted' | 'bp'>('deleted', 'bp'))),
    { selector: (r) => r[0], maxLength: 12 },
  ),
  status: fc.constantFrom<TxnStatus>(' ', ' ', ' ', 'p', 'u'),
  user: fc.string({ maxLength: 8 }),
  desc: fc.string({ maxLength: 20 }),
  ext: fc.uint8Array({ maxLength: 10 }),
  gap: fc.bigInt({ min: 1n, max: 1n << 40n }),
});

/** A valid image (optionally ending in a status-'c' txn) and its field offsets. */
const imageArb = fc.tuple(fc.array(txnArb, { minLength: 1, maxLength: 12 }), fc.boolean()).map(([txns, tailC]) => {
  const b = new FsBuilder();
  let tid = 0x0300000000000000n;
  const fields: number[] = [];
  const firstPos = new Map<bigint, number>();
  txns.forEach((t, k) => {
    tid += t.gap;
    const status = tailC && k === txns.length - 1 ? 'c' : t.status;
    const { tpos, dpos } = b.txn(
      tid,
      t.recs.map(([oid, d]) => ({ oid, data: d === 'bp' ? (firstPos.has(oid) ? { bp: firstPos.get(oid)! } : 'deleted') : d })),
      { status, user: t.user, desc: t.desc, ext: t.ext },
    );
    fields.push(tpos, tpos + 8, tpos + 16, tpos + 17, tpos + 19, tpos + 21);
    fields.push(tpos + b.txns[b.txns.length - 1]!.len - 8);
    t.recs.forEach(([oid], i) => {
      const d = dpos[i]!;
      if (!firstPos.has(oid)) firstPos.set(oid, d);
      fields.push(d, d + 8, d + 16, d + 24, d + 32, d + 34, d + 42);
    });
  });
  return { bytes: b.build(), fields, txns: b.txns };
});

const u64s = [
  0n,
  1n,
  3n,
  4n,
  22n,
  23n,
  26n,
  27n,
  42n,
  49n,
  50n,
  0x63n,
  0xffn,
  1n << 31n,
  1n << 32n,
  BigInt(MAX_POS),
  BigInt(MAX_POS) + 1n,
  1n << 53n,
  (1n << 64n) - 1n,
];

const mutationArb = fc.array(
  fc.tuple(
    fc.constantFrom('set', 'field', 'field', 'small', 'cut', 'swap', 'retid'),
    fc.nat(),
    fc.nat({ max: 255 }),
    fc.constantFrom(...u64s),
    fc.integer({ min: -3, max: 3 }),
  ),
  { minLength: 0, maxLength: 3 },
);

type Image = { bytes: Uint8Array; fields: number[]; txns: Array<{ tid: Tid; pos: number; dpos: number[] }> };

function mutate(img: Image, muts: Array<[string, number, number, bigint, number]>): Uint8Array {
  let b: Uint8Array = Uint8Array.from(img.bytes);
  for (const [kind, at, byte, v, delta] of muts) {
    const f = img.fields.length > 0 ? img.fields[at % img.fields.length]! : 4;
    if (kind === 'set') {
      b[4 + (at % Math.max(1, b.length - 4))] = byte;
    } else if (kind === 'field' && f + 8 <= b.length) {
      new DataView(b.buffer, b.byteOffset).setBigUint64(f, v);
    } else if (kind === 'small' && f + 8 <= b.length) {
      // nudge a u64 field by a little: tids equal/decreasing, lengths off by a few
      const dv = new DataView(b.buffer, b.byteOffset);
      dv.setBigUint64(f, BigInt.asUintN(64, dv.getBigUint64(f) + BigInt(delta)));
    } else if (kind === 'retid') {
      // a txn's tid and its records' tids moved together (near the previous tid, or 0): only
      // the order check can tell
      const k = at % img.txns.length;
      const t = img.txns[k]!;
      const tid = byte % 4 === 0 ? 0n : BigInt.asUintN(64, (k > 0 ? img.txns[k - 1]!.tid : 0n) + BigInt(delta));
      const dv = new DataView(b.buffer, b.byteOffset);
      for (const p of [t.pos, ...t.dpos]) if (p + 8 <= b.length) dv.setBigUint64(p + (p === t.pos ? 0 : 8), tid);
    } else if (kind === 'cut') {
      b = b.subarray(0, 4 + (at % Math.max(1, b.length - 3)));
    } else if (kind === 'swap' && f + 17 <= b.length) {
      b[f + 16] = [0x20, 0x63, 0x70, 0x75, 0x00][byte % 5]!; // status bytes
    }
  }
  return b;
}

const windowsArb = fc.record({ min: fc.integer({ min: 50, max: 3000 }), max: fc.integer({ min: 50, max: 6000 }), sparse: fc.integer({ min: 50, max: 2000 }) });

describe('native index rebuild = JS index rebuild: random images (fast-check, fixed seed)', () => {
  // one directory per image, removed after its iteration (a run writes thousands of images)
  let base: string | undefined;
  let n = 0;
  let last: string | undefined;
  const file = () => {
    if (last !== undefined) fs.rmSync(last, { recursive: true, force: true });
    base ??= tmp.make('nscan');
    last = path.join(base, `img${n++}`);
    fs.mkdirSync(last);
    return path.join(last, 'data.fs');
  };

  it('intact images: same outcome, and the native walk reaches the end', async () => {
    await fc.assert(
      fc.asyncProperty(imageArb, windowsArb, async (img, w) => {
        const f = file();
        fs.writeFileSync(f, img.bytes);
        await expectSameOutcome(f, [w]);
        expectNativeStopsLikeJs(f);
        expectNativeStopsLikeJs(f, w);
      }),
      fcParams(60),
    );
  });

  it('corrupted and truncated images: same outcome (index, or error class + message, warnings), same stop', async () => {
    const seen = { ok: 0, error: 0, tail: 0 };
    await fc.assert(
      fc.asyncProperty(imageArb, mutationArb, windowsArb, fc.boolean(), async (img, muts, w, writer) => {
        const f = file();
        fs.writeFileSync(f, mutate(img, muts));
        const js = await expectSameOutcome(f, [w], writer);
        if (js.error !== undefined) seen.error++;
        else if (js.ok!.end < js.ok!.size) seen.tail++;
        else seen.ok++;
        expectNativeStopsLikeJs(f);
        expectNativeStopsLikeJs(f, w);
      }),
      fcParams(400),
    );
    // the generator reaches every kind of outcome
    expect(seen.error).toBeGreaterThan(20);
    expect(seen.tail).toBeGreaterThan(5);
    expect(seen.ok).toBeGreaterThan(20);
  });

  it('tiny windows (below a header): the native walk stalls and the JS scanner finishes the same', async () => {
    await fc.assert(
      fc.asyncProperty(imageArb, mutationArb, async (img, muts) => {
        const f = file();
        fs.writeFileSync(f, mutate(img, muts));
        await expectSameOutcome(f, SMALL);
        for (const w of SMALL) expectNativeStopsLikeJs(f, w);
      }),
      fcParams(60),
    );
  });
});
