// FileStorage record codecs (src/zodb/fs1/format.ts) and the scanner over them (scan.ts),
// fuzzed: on arbitrary bytes and on mutations of valid Data.fs images the decoders return a
// checked header or throw CorruptError, never read outside their input, and accepted headers
// re-encode to the same bytes; whole-file walks (scan, checkFile, FileStorage open + load +
// iterate) end with a result or a typed error, always making progress. Every case a fuzz run
// found is in the table (marked "found:"), failing before its fix.
//
// Seeds and reruns: see test/helpers/fuzz.ts (`npm run fuzz` for long runs).
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import {
  DATA_HEADER_SIZE,
  FILE_HEADER_SIZE,
  MAX_POS,
  TXN_HEADER_SIZE,
  decodeDataHeader,
  decodeMagic,
  decodeTxnHeader,
  encodeDataHeader,
  encodeTxn,
  encodeTxnHeader,
  txnDataStart,
  txnEnd,
  type TxnStatus,
} from '../src/zodb/fs1/format.js';
import { SeqReader, checkFile, decodeRecordAt, readTxnBefore, scanTxn, type ScanRec } from '../src/zodb/fs1/scan.js';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { FsIndex, IndexFormatError, decodeIndexFile, encodeIndexFile } from '../src/zodb/fs1/fsindex.js';
import { CorruptError, NoDataError, NoObjectError } from '../src/zodb/errors.js';
import { FsBuilder, TmpDirs } from './helpers/fs1util.js';
import { fcParams } from './helpers/fuzz.js';

const tmp = new TmpDirs();
afterAll(() => tmp.cleanup());

/** SeqReader over bytes in memory: the scanner with no I/O. */
class MemReader extends SeqReader {
  constructor(private readonly bytes: Uint8Array) {
    super(-1, bytes.length);
  }
  override view(pos: number, n: number): Uint8Array | null {
    return pos + n > this.bytes.length ? null : this.bytes.subarray(pos, pos + n);
  }
  override peek(pos: number, n: number): Uint8Array | null {
    return this.view(pos, n);
  }
}

/** f() → its value, or the CorruptError it threw (anything else fails the test). */
function corruptOr<T>(f: () => T): T | CorruptError {
  try {
    return f();
  } catch (e) {
    if (!(e instanceof CorruptError)) throw new Error(`threw ${String(e)}`, { cause: e });
    return e;
  }
}

/**
 * checkFile over bytes: every txn and record, prev/backpointer targets decoded from memory.
 * → the committed end, or the CorruptError. Asserts progress (the walk cannot loop).
 */
function walk(b: Uint8Array, file = 'mem.fs'): number | CorruptError {
  return corruptOr(() => {
    decodeMagic(b, file);
    const r = new MemReader(b);
    let pos = FILE_HEADER_SIZE;
    let prev = -1n;
    for (;;) {
      const step = scanTxn(r, pos, prev, file);
      if (step.kind !== 'txn') return pos;
      let last = pos;
      for (const d of step.recs) {
        expect(d.pos).toBeGreaterThan(last);
        last = d.pos;
        for (const to of [d.prev, d.backpointer]) {
          if (to <= 0) continue;
          expect(to).toBeLessThan(d.pos);
          const h = b.subarray(to, to + DATA_HEADER_SIZE + 8);
          decodeRecordAt(h, 0, h.length, to, file);
        }
      }
      expect(txnEnd(step.txn)).toBeGreaterThan(pos);
      prev = step.txn.tid;
      pos = txnEnd(step.txn);
    }
  });
}

// ---- generators ----

const tidArb = fc.bigInt({ min: 1n, max: 1n << 40n });
const txnArb = fc.record({
  recs: fc.uniqueArray(
    fc.tuple(fc.bigInt({ min: 0n, max: 12n }), fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 80 }), fc.constantFrom<'deleted' | 'bp'>('deleted', 'bp'))),
    { selector: (r) => r[0], maxLength: 5 },
  ),
  status: fc.constantFrom<TxnStatus>(' ', ' ', 'p', 'u'),
  user: fc.string({ maxLength: 8 }),
  desc: fc.string({ maxLength: 8 }),
  gap: tidArb,
});

/** A valid Data.fs image and where its fields are (for targeted mutations). */
const imageArb = fc.array(txnArb, { minLength: 1, maxLength: 6 }).map((txns) => {
  const b = new FsBuilder();
  let tid = 0x0300000000000000n;
  const fields: number[] = [];
  const firstPos = new Map<bigint, number>();
  for (const t of txns) {
    tid += t.gap;
    const { tpos, dpos } = b.txn(
      tid,
      t.recs.map(([oid, d]) => ({ oid, data: d === 'bp' ? (firstPos.has(oid) ? { bp: firstPos.get(oid)! } : 'deleted') : d })),
      { status: t.status, user: t.user, desc: t.desc },
    );
    fields.push(tpos, tpos + 8, tpos + 16, tpos + 17);
    const { len } = b.txns[b.txns.length - 1]!;
    fields.push(tpos + len - 8);
    t.recs.forEach(([oid], i) => {
      const d = dpos[i]!;
      if (!firstPos.has(oid)) firstPos.set(oid, d);
      fields.push(d, d + 8, d + 16, d + 24, d + 32, d + 34, d + 42);
    });
  }
  return { bytes: b.build(), fields, tids: b.txns.map((t) => t.tid) };
});

const u64s = [0n, 1n, 3n, 4n, 22n, 23n, 27n, 42n, 49n, 50n, 0xffn, 1n << 31n, 1n << 32n, BigInt(MAX_POS), BigInt(MAX_POS) + 1n, 1n << 53n, (1n << 64n) - 1n];

/** Mutations: bytes set, fields overwritten with boundary u64s, cuts, inserts, deletes. */
const mutatedImage = fc
  .tuple(
    imageArb,
    fc.array(
      fc.tuple(
        fc.constantFrom('set', 'field', 'field', 'cut', 'ins', 'del'),
        fc.nat(),
        fc.integer({ min: 0, max: 255 }),
        fc.constantFrom(...u64s),
        fc.integer({ min: -3, max: 3 }),
      ),
      { minLength: 1, maxLength: 3 },
    ),
  )
  .map(([img, edits]) => {
    let b = Buffer.from(img.bytes);
    for (const [op, i, x, v, delta] of edits) {
      const k = i % b.length;
      if (op === 'set') b[k] = x;
      else if (op === 'cut') b = b.subarray(0, k);
      else if (op === 'ins') b = Buffer.concat([b.subarray(0, k), Buffer.from([x]), b.subarray(k)]);
      else if (op === 'del') b = Buffer.concat([b.subarray(0, k), b.subarray(k + 1)]);
      else {
        // an 8-byte field (or a 2-byte one at +32 / +17..21): a boundary value or a nearby one
        const at = img.fields[i % img.fields.length]!;
        const val = BigInt.asUintN(64, v + BigInt(delta));
        if (at + 8 <= b.length) b.writeBigUInt64BE(val, at);
      }
    }
    return Uint8Array.from(b);
  });

// ---- table ----

describe('fs1: table', () => {
  it('found: headers from a buffer too short → CorruptError (decoders read past it as zeros)', () => {
    const t = new Uint8Array(TXN_HEADER_SIZE);
    encodeTxnHeader({ tid: 1n, tlen: 23, status: ' ', ulen: 0, dlen: 0, elen: 0 }, t, 0);
    expect(decodeTxnHeader(t, 0, 4, 'f').tlen).toBe(23);
    expect(() => decodeTxnHeader(t.subarray(0, 22), 0, 4, 'f')).toThrow(/f: @4: txn header: 22 of 23 bytes/);
    expect(() => decodeTxnHeader(t, 1, 4, 'f')).toThrow(CorruptError);
    expect(() => decodeTxnHeader(t, -1, 4, 'f')).toThrow(CorruptError);
    const d = new Uint8Array(DATA_HEADER_SIZE + 8);
    encodeDataHeader({ oid: 1n, tid: 2n, prev: 0, tloc: 4, plen: 0 }, d, 0);
    expect(decodeDataHeader(d, 0, 27, 'f').plen).toBe(0);
    expect(() => decodeDataHeader(d.subarray(0, 41), 0, 27, 'f')).toThrow(/data record header: 41 of 42 bytes/);
    expect(() => decodeDataHeader(d, 9, 27, 'f')).toThrow(CorruptError);
    // decodeRecordAt: `got` claims more than the buffer holds
    expect(() => decodeRecordAt(d.subarray(0, 45), 0, 50, 27, 'f')).toThrow(/backpointer: unexpected end/);
  });

  it('found: readTxnBefore below the first possible txn end → CorruptError (was a RangeError from pread)', () => {
    const dir = tmp.make('fs1fuzz');
    const b = new FsBuilder();
    b.txn(0x0300000000000001n, [{ oid: 0n, data: 'x' }]);
    const f = b.write(path.join(dir, 'small.fs'));
    const fd = fs.openSync(f, 'r');
    try {
      for (let pos = 0; pos < FILE_HEADER_SIZE + TXN_HEADER_SIZE + 8; pos++) {
        expect(
          corruptOr(() => readTxnBefore(fd, pos, f)),
          `@${pos}`,
        ).toBeInstanceOf(CorruptError);
      }
      expect(readTxnBefore(fd, b.pos, f)).toMatchObject({ pos: 4, tid: 0x0300000000000001n });
    } finally {
      fs.closeSync(fd);
    }
  });

  it('found: an .index whose position is 5…34 is rebuilt, not a RangeError out of open', async () => {
    const dir = tmp.make('fs1fuzz');
    const b = new FsBuilder();
    b.txn(0x0300000000000001n, [{ oid: 0n, data: 'x' }]);
    const f = b.write(path.join(dir, 'idx.fs'));
    for (const pos of [5, 12, 34]) {
      fs.writeFileSync(f + '.index', encodeIndexFile(new FsIndex(), pos));
      const warnings: string[] = [];
      const st = await FileStorage.open(f, { readOnly: true, warn: (m) => warnings.push(m) });
      try {
        expect(st.head()).toBe(0x0300000000000001n);
        expect(st.openInfo.indexLoaded).toBe(false);
        expect(warnings.join('\n')).toMatch(/rebuilding the index/);
      } finally {
        await st.close();
      }
    }
  });

  it('boundaries: tlen = header size, u64 lengths past MAX_POS, positions at/after the record', () => {
    const t = new Uint8Array(TXN_HEADER_SIZE);
    const txn = (tlen: number, ulen = 0) => {
      encodeTxnHeader({ tid: 5n, tlen, status: ' ', ulen, dlen: 0, elen: 0 }, t, 0);
      return corruptOr(() => decodeTxnHeader(t, 0, 4, 'f'));
    };
    expect(txn(23)).toMatchObject({ tlen: 23 });
    expect(txn(22)).toBeInstanceOf(CorruptError);
    expect(txn(24, 2)).toBeInstanceOf(CorruptError);
    expect(txn(MAX_POS)).toMatchObject({ tlen: MAX_POS });
    Buffer.from(t.buffer).writeBigUInt64BE(BigInt(MAX_POS) + 1n, 8);
    expect(corruptOr(() => decodeTxnHeader(t, 0, 4, 'f'))).toBeInstanceOf(CorruptError);
    Buffer.from(t.buffer).writeBigUInt64BE((1n << 64n) - 1n, 8);
    expect(corruptOr(() => decodeTxnHeader(t, 0, 4, 'f'))).toBeInstanceOf(CorruptError);
    const d = Buffer.alloc(DATA_HEADER_SIZE);
    encodeDataHeader({ oid: 1n, tid: 2n, prev: 26, tloc: 4, plen: 1 }, d, 0);
    expect(corruptOr(() => decodeDataHeader(d, 0, 27, 'f'))).toMatchObject({ prev: 26 });
    expect(corruptOr(() => decodeDataHeader(d, 0, 26, 'f'))).toBeInstanceOf(CorruptError); // prev = pos
    d.writeBigUInt64BE((1n << 64n) - 1n, 34); // plen
    expect(corruptOr(() => decodeDataHeader(d, 0, 27, 'f'))).toBeInstanceOf(CorruptError);
  });
});

// ---- properties ----

describe('fs1: properties (pure decoders, no I/O)', () => {
  it('arbitrary bytes at any offset: a header or CorruptError; accepted headers re-encode to the same bytes', () => {
    const raw = fc.oneof(
      fc.uint8Array({ maxLength: 60 }),
      fc.tuple(fc.uint8Array({ minLength: 42, maxLength: 42 }), fc.constantFrom(...u64s), fc.constantFrom(8, 16, 24, 34)).map(([b, v, at]) => {
        Buffer.from(b.buffer).writeBigUInt64BE(v, at);
        b[32] = b[33] = 0; // vlen 0, so the other checks are reached
        b[16] = 0x20; // a valid txn status
        return b;
      }),
    );
    fc.assert(
      fc.property(raw, fc.integer({ min: -2, max: 50 }), fc.integer({ min: 0, max: MAX_POS }), (b, off, pos) => {
        const t = corruptOr(() => decodeTxnHeader(b, off, pos, 'f'));
        if (!(t instanceof CorruptError)) {
          const out = new Uint8Array(TXN_HEADER_SIZE);
          encodeTxnHeader(t, out, 0);
          expect(out).toEqual(b.subarray(off, off + TXN_HEADER_SIZE));
        }
        const d = corruptOr(() => decodeDataHeader(b, off, pos, 'f'));
        if (!(d instanceof CorruptError)) {
          expect(d.prev).toBeLessThan(pos);
          expect(d.tloc).toBeLessThan(pos);
          const out = new Uint8Array(DATA_HEADER_SIZE);
          encodeDataHeader(d, out, 0);
          expect(out).toEqual(b.subarray(off, off + DATA_HEADER_SIZE));
        }
      }),
      fcParams(3000),
    );
  });

  it('encodeTxn → scanTxn round-trips headers and records', () => {
    fc.assert(
      fc.property(imageArb, ({ bytes, tids }) => {
        const r = new MemReader(bytes);
        let pos = FILE_HEADER_SIZE;
        let prev = -1n;
        for (const tid of tids) {
          const step = scanTxn(r, pos, prev, 'f');
          if (step.kind !== 'txn') throw new Error(`txn expected @${pos}, got ${step.kind}`);
          expect(step.txn.tid).toBe(tid);
          // re-encoding what was scanned gives the same bytes
          const t = step.txn;
          const meta = bytes.subarray(t.pos + TXN_HEADER_SIZE, txnDataStart(t));
          const recs = step.recs.map((d: ScanRec) => ({
            oid: d.oid,
            prev: d.prev,
            data: d.plen > 0 ? bytes.subarray(d.pos + DATA_HEADER_SIZE, d.pos + DATA_HEADER_SIZE + d.plen) : null,
            backpointer: d.backpointer,
          }));
          const again = encodeTxn(
            t.pos,
            t.tid,
            t.status,
            meta.subarray(0, t.ulen),
            meta.subarray(t.ulen, t.ulen + t.dlen),
            meta.subarray(t.ulen + t.dlen),
            recs,
          );
          expect(Buffer.from(again.bytes).equals(bytes.subarray(t.pos, txnEnd(t)))).toBe(true);
          expect(again.dpos).toEqual(step.recs.map((d) => d.pos));
          prev = t.tid;
          pos = txnEnd(t);
        }
        expect(scanTxn(r, pos, prev, 'f')).toEqual({ kind: 'eof' });
        expect(walk(bytes)).toBe(bytes.length);
      }),
      fcParams(300),
    );
  });

  it('mutated images: every scan ends (committed end or CorruptError), always moving forward', () => {
    fc.assert(
      fc.property(mutatedImage, (b) => void walk(b)),
      fcParams(3000),
    );
  });
});

describe('fs1: .index codec (pure)', () => {
  const indexArb = fc
    .tuple(
      fc.uniqueArray(fc.oneof(fc.bigInt({ min: 0n, max: 70_000n }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })), { maxLength: 40 }),
      fc.integer({ min: 5, max: MAX_POS }),
    )
    .chain(([oids, pos]) =>
      fc.tuple(fc.constant(oids), fc.constant(pos), fc.array(fc.integer({ min: 4, max: pos - 1 }), { minLength: oids.length, maxLength: oids.length })),
    );

  it('encode → decode round-trips; mutations decode to a valid index or IndexFormatError', () => {
    const edits = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('set', 'cut', 'ins')), { maxLength: 3 });
    fc.assert(
      fc.property(indexArb, edits, ([oids, pos, poss], eds) => {
        const idx = new FsIndex();
        oids.forEach((o, i) => idx.set(o, poss[i]!));
        const enc = encodeIndexFile(idx, pos);
        const dec = decodeIndexFile(enc, 'f.index');
        expect(dec.pos).toBe(pos);
        expect(new Map(dec.index.entries())).toEqual(new Map(idx.entries()));
        let b = Buffer.from(enc);
        for (const [i, x, op] of eds) {
          const k = i % b.length;
          if (op === 'set') b[k] = x;
          else if (op === 'cut') b = b.subarray(0, k);
          else b = Buffer.concat([b.subarray(0, k), Buffer.from([x]), b.subarray(k)]);
        }
        try {
          const m = decodeIndexFile(b, 'f.index');
          for (const [, p] of m.index.entries()) expect(p >= 4 && p < m.pos).toBe(true);
        } catch (e) {
          if (!(e instanceof IndexFormatError)) throw new Error(`threw ${String(e)}`, { cause: e });
        }
      }),
      fcParams(1000),
    );
  });
});

describe('fs1: properties (scan.ts and FileStorage on files)', () => {
  const dir = tmp.make('fs1fuzz');
  let n = 0;

  it('a valid file with a mutated .index: open loads or rebuilds it; loads give data or typed errors', async () => {
    const edits = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('set', 'cut', 'ins')), { maxLength: 2 });
    await fc.assert(
      fc.asyncProperty(imageArb, edits, async (img, eds) => {
        const f = path.join(dir, `i${n++}.fs`);
        fs.writeFileSync(f, img.bytes);
        try {
          const truth = checkFile(f);
          const idx = new FsIndex();
          for (const [oid, pos] of truth.index) idx.set(oid, pos);
          let b = Buffer.from(encodeIndexFile(idx, truth.topPos));
          for (const [i, x, op] of eds) {
            const k = i % b.length;
            if (op === 'set') b[k] = x;
            else if (op === 'cut') b = b.subarray(0, k);
            else b = Buffer.concat([b.subarray(0, k), Buffer.from([x]), b.subarray(k)]);
          }
          fs.writeFileSync(f + '.index', b);
          const st = await FileStorage.open(f, { readOnly: true, warn: () => {} });
          try {
            if (eds.length === 0) expect(st.openInfo.indexLoaded).toBe(true);
            expect(st.head()).toBe(img.tids[img.tids.length - 1]);
            for (const [oid] of truth.index) {
              try {
                await st.load(oid, st.head());
              } catch (e) {
                // an index that passed verification can still point an old oid elsewhere
                if (!(e instanceof CorruptError || e instanceof NoDataError || e instanceof NoObjectError)) throw new Error(`threw ${String(e)}`, { cause: e });
              }
            }
          } finally {
            await st.close();
          }
        } finally {
          fs.rmSync(f);
          fs.rmSync(f + '.index', { force: true });
        }
      }),
      fcParams(150),
    );
  });

  it('mutated files: checkFile, readTxnBefore, open + load + iterate give results or typed errors', async () => {
    const typed = (e: unknown) => {
      if (!(e instanceof CorruptError || e instanceof NoDataError || e instanceof NoObjectError)) throw new Error(`threw ${String(e)}`, { cause: e });
    };
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          mutatedImage,
          imageArb.map((i) => i.bytes),
        ),
        async (b) => {
          const f = path.join(dir, `m${n++}.fs`);
          fs.writeFileSync(f, b);
          try {
            const mem = walk(b);
            const rep = corruptOr(() => checkFile(f));
            // checkFile also checks prev/backpointer targets: it can only be stricter than walk
            if (!(rep instanceof CorruptError)) expect(rep.topPos).toBe(mem);
            const fd = fs.openSync(f, 'r');
            try {
              for (let pos = b.length; pos > FILE_HEADER_SIZE; pos--) corruptOr(() => readTxnBefore(fd, pos, f));
            } finally {
              fs.closeSync(fd);
            }
            let st: FileStorage;
            try {
              st = await FileStorage.open(f, { readOnly: true, warn: () => {} });
            } catch (e) {
              typed(e);
              return;
            }
            try {
              const tids: bigint[] = [];
              try {
                for await (const t of st.iterate()) tids.push(t.tid);
              } catch (e) {
                typed(e);
              }
              for (const [oid] of st.indexEntries()) {
                for (const at of [...tids, st.head(), 0n]) {
                  try {
                    await st.load(oid, at);
                  } catch (e) {
                    typed(e);
                  }
                }
              }
            } finally {
              await st.close();
            }
          } finally {
            fs.rmSync(f);
          }
        },
      ),
      fcParams(100),
    );
  });
});
