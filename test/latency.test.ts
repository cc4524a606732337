// RecentLatencies (src/util/latency.ts): the rules as a table, then seeded random sequences
// against a brute-force model (every sample kept; the last `cap` within the window ranked).
import { describe, expect, it } from 'vitest';
import { RecentLatencies } from '../src/util/latency.js';
import { rng } from '../src/util/rng.js';
import { seedOr } from './helpers/fuzz.js';

const SEED = seedOr(1);

describe('RecentLatencies', () => {
  it.each([
    // [what, cap, window, samples [at, value], now, q, want]
    ['none: undefined', 4, 10, [], 0, 0.5, undefined],
    ['one sample is every quantile', 4, 10, [[1, 7]], 1, 0.99, 7],
    [
      'nearest rank: p50 of 2 is the lower',
      4,
      10,
      [
        [0, 9],
        [0, 3],
      ],
      0,
      0.5,
      3,
    ],
    [
      'p99 of 2 is the higher',
      4,
      10,
      [
        [0, 9],
        [0, 3],
      ],
      0,
      0.99,
      9,
    ],
    [
      'p50 of 3 is the middle',
      4,
      10,
      [
        [0, 5],
        [0, 1],
        [0, 3],
      ],
      0,
      0.5,
      3,
    ],
    [
      'older than the window: left out',
      4,
      10,
      [
        [0, 100],
        [5, 1],
        [6, 2],
      ],
      12,
      0.99,
      2,
    ],
    [
      'exactly at the window edge: kept',
      4,
      10,
      [
        [2, 100],
        [5, 1],
      ],
      12,
      0.99,
      100,
    ],
    ['all outside the window: undefined', 4, 10, [[0, 1]], 11, 0.5, undefined],
    [
      'past cap: the oldest overwritten',
      2,
      10,
      [
        [0, 100],
        [1, 1],
        [2, 2],
      ],
      2,
      0.99,
      2,
    ],
  ] as Array<[string, number, number, Array<[number, number]>, number, number, number | undefined]>)('%s', (_what, cap, win, samples, now, q, want) => {
    const r = new RecentLatencies(cap, win);
    for (const [at, v] of samples) r.record(at, v);
    expect(r.quantile(now, q)).toBe(want);
    expect(r.count).toBe(samples.length);
  });

  it('bad parameters are refused', () => {
    expect(() => new RecentLatencies(0)).toThrow(RangeError);
    expect(() => new RecentLatencies(1.5)).toThrow(RangeError);
    expect(() => new RecentLatencies(4, 0)).toThrow(RangeError);
  });

  it(`seeded random sequences agree with the model (seed ${SEED})`, () => {
    const r = rng(SEED);
    for (let round = 0; round < 200; round++) {
      const cap = 1 + Math.floor(r() * 20);
      const win = 1 + Math.floor(r() * 50);
      const lat = new RecentLatencies(cap, win);
      const all: Array<[number, number]> = [];
      let now = 0;
      const n = Math.floor(r() * 60);
      for (let i = 0; i < n; i++) {
        now += Math.floor(r() * 5);
        const v = Math.round(r() * 1000) / 10;
        lat.record(now, v);
        all.push([now, v]);
        if (r() < 0.3) {
          const at = now + Math.floor(r() * 10);
          const qs = [r(), 0.5, 0.99, 1];
          const kept = all
            .slice(-cap)
            .filter(([t]) => t >= at - win)
            .map(([, x]) => x)
            .sort((a, b) => a - b);
          const want = qs.map((q) => (kept.length === 0 ? undefined : kept[Math.min(kept.length - 1, Math.max(0, Math.ceil(q * kept.length) - 1))]));
          expect(lat.quantiles(at, qs), `round ${round}, sample ${i}`).toEqual(want);
        }
      }
    }
  });
});
