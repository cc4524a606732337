// ΔFtail against a model, on real FileStorage histories written by our writer (default
// BTree sizes, so blktab buckets split and relink as blocks come and go):
//   update(δZ) reports exactly the tracked blocks that changed;
//   blkRevAt(blk, at) is the exact last change ≤ at (or tail);
//   changedSince(at) is exactly the tracked blocks changed after at.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import path from 'node:path';
import { DeltaFtail } from '../src/deltatail/deltaFtail.js';
import { StorageLoader, WriteTxn } from '../src/zodb/db.js';
import type { Tid } from '../src/zodb/ids.js';
import { openStorage } from '../src/zodb/open.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { ZBigFileView, createZBigFile, ensureRoot, setBlock } from '../src/zodb/zbigfile.js';
import { makeTmpDir } from './helpers/tmp.js';
import { fcSeed } from './helpers/fuzz.js';

const BS = 4096;
const NBLK = 150; // > 2 buckets of 60

type Step = { t: 'commit'; writes: Array<[number, number | null]> } | { t: 'track'; blks: number[] } | { t: 'query'; blks: number[]; atIdx: number };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ t: fc.constant('commit' as const), writes: fc.array(fc.tuple(fc.integer({ min: 0, max: NBLK - 1 }), fc.option(fc.integer({ min: 1, max: 255 }), { freq: 5 })), { minLength: 1, maxLength: 8 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('track' as const), blks: fc.array(fc.integer({ min: 0, max: NBLK - 1 }), { minLength: 1, maxLength: 10 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('query' as const), blks: fc.array(fc.integer({ min: 0, max: NBLK - 1 }), { minLength: 1, maxLength: 10 }), atIdx: fc.nat() }) },
);

describe('ΔFtail', () => {
  it('exact changes, revisions and slices for random histories (property)', async () => {
    const tmp = makeTmpDir();
    let run = 0;
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(fc.array(fc.tuple(fc.integer({ min: 0, max: NBLK - 1 }), fc.integer({ min: 1, max: 255 })), { maxLength: 40 }), { maxLength: 3 }), fc.array(stepArb, { minLength: 5, maxLength: 30 }), async (pre, steps) => {
          const s = (await openStorage(path.join(tmp.dir, `d${run++}.fs`), { create: true })) as IWritableStorage;
          try {
            await ensureRoot(s);
            let txn = new WriteTxn(s);
            const foid = createZBigFile(txn, BS);
            await txn.commit();
            const data = new Map<number, number>(); // blk → fill (absent: hole)
            const changes = new Map<number, Tid[]>();
            const commit = async (writes: Array<[number, number | null]>): Promise<Tid> => {
              txn = new WriteTxn(s);
              // net effect per block: a block whose final state is written changed (its ZBlk is
              // stored), a punched one changed only if it was not a hole before the commit
              const before = new Set(data.keys());
              const touched = new Set<number>();
              for (const [blk, fill] of writes) {
                touched.add(blk);
                if (fill === null) data.delete(blk);
                else data.set(blk, fill);
                await setBlock(txn, foid, blk, fill === null ? null : new Uint8Array(BS).fill(fill), { format: 'ZBlk0' });
              }
              const changed = new Set([...touched].filter((b) => data.has(b) || before.has(b)));
              const tid = await txn.commit();
              for (const blk of changed) changes.set(blk, [...(changes.get(blk) ?? []), tid]);
              return tid;
            };
            for (const w of pre) if (w.length) await commit(w);

            const loader = new StorageLoader(s);
            const tail = s.head();
            const δF = new DeltaFtail(tail, loader);
            const revs: Tid[] = [tail];
            let view = await ZBigFileView.open(loader, foid, tail);
            δF.trackFile(foid, view.blktab, (await view.size()).path);
            const tracked = new Set<number>();
            const rev = (blk: number, at: Tid) => (changes.get(blk) ?? []).filter((t) => t <= at && t > tail).pop() ?? tail;

            for (const st of steps) {
              if (st.t === 'commit') {
                const tid = await commit(st.writes);
                revs.push(tid);
                const oids: bigint[] = [];
                for await (const t of s.iterate(tid, tid)) for (const r of t.records) oids.push(r.oid);
                const d = await δF.update(tid, oids);
                const want = [...tracked].filter((b) => (changes.get(b) ?? []).includes(tid)).sort((a, b) => a - b);
                expect([...(d.get(foid)?.blocks ?? [])].sort((a, b) => a - b), `δF @${tid.toString(16)}`).toEqual(want);
                view = view.withAt(tid);
              } else if (st.t === 'track') {
                for (const blk of st.blks) {
                  const b = await view.loadBlock(blk);
                  δF.track(foid, blk, b.path, b.zblk?.oid ?? null, b.revMax);
                  tracked.add(blk);
                }
              } else {
                const at = revs[st.atIdx % revs.length]!;
                for (const blk of st.blks) {
                  if (!tracked.has(blk)) continue;
                  expect(await δF.blkRevAt(foid, blk, at), `blkRevAt #${blk} @${at.toString(16)}`).toBe(rev(blk, at));
                }
                const since = [...(await δF.changedSince(foid, at))].sort((a, b) => a - b);
                const want = [...tracked].filter((b) => (changes.get(b) ?? []).some((t) => t > at)).sort((a, b) => a - b);
                expect(since, `changedSince @${at.toString(16)}`).toEqual(want);
              }
            }
          } finally {
            await s.close();
          }
        }),
        { numRuns: 25, ...fcSeed() },
      );
    } finally {
      tmp.cleanup();
    }
  }, 120_000);
});
