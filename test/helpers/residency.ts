// Page-cache residency assertions that survive the host reclaiming a few clean pages on its
// own (this VM kind runs DAMON proactive reclaim: 1-64 pages of a fully read file may vanish
// at any time). A page that must NOT be cached is checked exactly; of the pages that must be
// cached, a small fraction may be missing — but never a whole 64 KiB run, which is what an
// invalidation bug would drop.
import { expect } from 'vitest';

/** `got`/`want`: one char per page, '1' cached, '0' not. */
export function expectResidency(got: string, want: string, what = 'residency'): void {
  expect(got.length, `${what}: pages`).toBe(want.length);
  let missing = 0;
  let run = 0;
  let maxRun = 0;
  for (let i = 0; i < want.length; i++) {
    if (want[i] === '0') {
      expect(got[i], `${what}: page ${i} must not be cached`).toBe('0');
      run = 0;
    } else if (got[i] !== '1') {
      missing++;
      maxRun = Math.max(maxRun, ++run);
    } else run = 0;
  }
  const ones = [...want].filter((c) => c === '1').length;
  expect(missing, `${what}: ${missing} of ${ones} cached pages missing`).toBeLessThanOrEqual(Math.max(2, ones * 0.03));
  expect(maxRun, `${what}: ${maxRun} consecutive pages missing`).toBeLessThan(16);
}
