// ΔZLog (src/deltatail/zlog.ts): the compact δZ log of ΔFtail. A table of small logs, then a
// seeded random model test — appends of commits with 0..40 oids (big ones have a Set, Z2),
// forgets at random tails (compaction once ≥ 4096 entries are forgotten), and after each step
// every live entry's tid and membership against a plain array of {tid, Set}.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ΔZLog } from '../src/deltatail/zlog.js';
import { fcParams } from './helpers/fuzz.js';

describe('ΔZLog table', () => {
  it('entries, membership, forget; indices of live entries stay valid', () => {
    const z = new ΔZLog();
    // >>> three commits
    z.append(10n, [1n, 2n]);
    z.append(20n, []);
    z.append(
      30n,
      Array.from({ length: 20 }, (_, k) => BigInt(100 + k)),
    ); // > SET_MIN oids: Set (Z2)
    expect([z.firstIndex, z.endIndex, z.length]).toEqual([0, 3, 3]);
    expect([z.tid(0), z.tid(1), z.tid(2)]).toEqual([10n, 20n, 30n]);
    expect([z.has(0, 1n), z.has(0, 2n), z.has(0, 3n), z.has(1, 1n), z.has(2, 100n), z.has(2, 119n), z.has(2, 120n)]).toEqual([
      true,
      true,
      false,
      false,
      true,
      true,
      false,
    ]);
    expect(z.hasAny(0, [7n, 2n])).toBe(true);
    // >>> tids must ascend
    expect(() => z.append(30n, [1n])).toThrow(/≤ last/);
    // >>> forget ≤ 20: entry 2 keeps its index, 0 and 1 are gone
    z.forget(20n);
    expect([z.firstIndex, z.endIndex, z.length]).toEqual([2, 3, 1]);
    expect(z.has(2, 105n)).toBe(true);
    expect(() => z.tid(1)).toThrow(RangeError);
    z.forget(5n); // below the tail: nothing
    expect(z.length).toBe(1);
  });

  it('compacts once ≥ 4096 forgotten entries are half of it, indices unchanged', () => {
    const z = new ΔZLog();
    for (let k = 1; k <= 10_000; k++) z.append(BigInt(k), [BigInt(k % 7)]);
    z.forget(9_000n);
    expect([z.firstIndex, z.endIndex]).toEqual([9_000, 10_000]);
    expect((z as unknown as { base: number }).base).toBe(9_000); // compacted
    for (let i = 9_000; i < 10_000; i++) {
      expect(z.tid(i)).toBe(BigInt(i + 1));
      expect(z.has(i, BigInt((i + 1) % 7))).toBe(true);
    }
    z.append(10_001n, [42n]);
    expect(z.has(10_000, 42n)).toBe(true);
  });

  it('a sliding window keeps its arrays the size of the window, not of the history', () => {
    const z = new ΔZLog();
    const arrays = z as unknown as { tids: BigUint64Array; oids: BigUint64Array };
    for (let k = 1; k <= 200_000; k++) {
      z.append(BigInt(k), [BigInt(k), BigInt(k + 1)]);
      if (k > 1000) z.forget(BigInt(k - 1000));
    }
    expect(z.length).toBe(1000);
    expect(arrays.tids.length).toBeLessThanOrEqual(16_384);
    expect(arrays.oids.length).toBeLessThanOrEqual(32_768);
    expect(z.has(z.endIndex - 1, 200_001n)).toBe(true);
  });
});

describe('ΔZLog against a model (seeded)', () => {
  type Step = { kind: 'append'; n: number; oids: number[] } | { kind: 'forget'; frac: number };
  const step: fc.Arbitrary<Step> = fc.oneof(
    {
      weight: 8,
      arbitrary: fc.record({
        kind: fc.constant('append' as const),
        n: fc.integer({ min: 1, max: 3000 }),
        oids: fc.array(fc.integer({ min: 0, max: 50 }), { maxLength: 40 }),
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('forget' as const), frac: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  );
  it('every live entry equals the model after every step', () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 30 }), (steps) => {
        const z = new ΔZLog();
        const model: Array<{ tid: bigint; oids: Set<bigint> }> = [];
        let first = 0;
        let tid = 0n;
        for (const s of steps) {
          if (s.kind === 'append') {
            // n commits; commit j's oids: a rotation of s.oids (sizes 0..40 across SET_MIN)
            for (let j = 0; j < s.n; j++) {
              tid += 1n + BigInt(j % 3);
              const oids = s.oids.slice(j % (s.oids.length + 1)).map(BigInt);
              z.append(tid, oids);
              model.push({ tid, oids: new Set(oids) });
            }
          } else if (model.length > 0) {
            const cut = model[Math.min(model.length - 1, Math.floor(s.frac * model.length))]!.tid;
            z.forget(cut);
            while (first < model.length && model[first]!.tid <= cut) first++;
          }
          expect([z.firstIndex, z.endIndex]).toEqual([first, model.length]);
          for (let i = first; i < model.length; i += Math.max(1, Math.floor((model.length - first) / 200))) {
            expect(z.tid(i)).toBe(model[i]!.tid);
            for (let o = 0; o <= 50; o++) expect(z.has(i, BigInt(o))).toBe(model[i]!.oids.has(BigInt(o)));
          }
        }
      }),
      fcParams(30),
    );
  });
});
