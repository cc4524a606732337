// LogLimiter (src/util/log.ts): the warnings a client can cause at will are bounded per kind —
// at most `burst` lines of a kind per window, the rest counted and reported in one line when
// the window ends or at close. A table of cases on a fake clock, then a seeded random run
// against a model. The server's use of it (refused opens, bad keys) is in auth.test.ts.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LogLimiter } from '../src/util/log.js';
import { rng } from '../src/util/rng.js';
import { seedOr } from './helpers/fuzz.js';

afterEach(() => {
  vi.useRealTimers();
});

function limiter(burst: number, windowMs: number) {
  let t = 1000;
  const out: string[] = [];
  const l = new LogLimiter(
    (m) => out.push(m),
    burst,
    windowMs,
    () => t,
  );
  return { l, out, advance: (ms: number) => (t += ms) };
}

describe('LogLimiter', () => {
  it('at most burst lines of a kind per window; the rest are summarised when the next window starts', () => {
    const { l, out, advance } = limiter(2, 1000);
    for (let i = 0; i < 5; i++) l.line('bad key', `bad key #${i}`);
    l.line('refused', 'refused #0'); // another kind has its own budget
    expect(out).toEqual(['bad key #0', 'bad key #1', 'refused #0']);
    advance(1000);
    l.line('bad key', 'bad key #5');
    expect(out.slice(3)).toEqual(['bad key: 3 more such warnings suppressed (at most 2 per 1 s are logged)', 'bad key #5']);
    l.close();
    expect(out.length).toBe(5); // nothing more was suppressed
  });

  it('close() reports what was suppressed; a kind with nothing suppressed says nothing', () => {
    const { l, out } = limiter(1, 60_000);
    l.line('a', 'a0');
    l.line('a', 'a1');
    l.line('b', 'b0');
    l.close();
    expect(out).toEqual(['a0', 'b0', 'a: 1 more such warning suppressed (at most 1 per 60 s are logged)']);
  });

  it('the summary comes when the window ends, without another line to trigger it', () => {
    vi.useFakeTimers();
    const out: string[] = [];
    const l = new LogLimiter((m) => out.push(m), 1, 5000);
    l.line('k', 'k0');
    vi.advanceTimersByTime(2000);
    l.line('k', 'k1');
    l.line('k', 'k2');
    expect(out).toEqual(['k0']);
    vi.advanceTimersByTime(2999);
    expect(out).toEqual(['k0']);
    vi.advanceTimersByTime(1);
    expect(out).toEqual(['k0', 'k: 2 more such warnings suppressed (at most 1 per 5 s are logged)']);
    l.line('k', 'k3'); // a new window
    expect(out.at(-1)).toBe('k3');
    l.close();
  });

  it(`seeded random lines and clock steps: per kind and window, min(n, burst) lines and one summary of the rest (seed ${seedOr(12)})`, () => {
    const R = rng(seedOr(12));
    for (let round = 0; round < 200; round++) {
      const burst = 1 + Math.floor(R() * 4);
      const windowMs = 100 + Math.floor(R() * 900);
      const { l, out, advance } = limiter(burst, windowMs);
      // model: per kind, the current window's start and counts
      const model = new Map<string, { start: number; n: number }>();
      const want: string[] = [];
      let now = 1000;
      const summary = (kind: string, n: number) => {
        const d = n - burst;
        if (d > 0) want.push(`${kind}: ${d} more such warning${d === 1 ? '' : 's'} suppressed (at most ${burst} per ${windowMs / 1000} s are logged)`);
      };
      for (let i = 0; i < 60; i++) {
        if (R() < 0.2) now = advance(Math.floor(R() * windowMs * 1.5));
        const kind = ['a', 'b', 'c'][Math.floor(R() * 3)]!;
        let m = model.get(kind);
        if (m !== undefined && now - m.start >= windowMs) {
          summary(kind, m.n);
          model.delete(kind);
          m = undefined;
        }
        if (m === undefined) model.set(kind, (m = { start: now, n: 0 }));
        m.n++;
        if (m.n <= burst) want.push(`${kind}#${i}`);
        l.line(kind, `${kind}#${i}`);
      }
      for (const [kind, m] of model) summary(kind, m.n);
      l.close();
      expect(out, `round ${round}`).toEqual(want);
    }
  });
});
