// Recent latencies: the last `cap` samples, of which those taken within `windowMs` give the
// quantiles .wcfs/stats shows (pin round trips: PinRttP50, PinRttP99). Pure: the caller passes
// the clock, so the rules are testable without waiting.
//
// Invariants (n = samples ever recorded, k = min(n, cap)):
//   the ring holds exactly the last k samples: sample j (0 ≤ j < n) is at slot j mod cap
//     while j ≥ n − k;
//   quantile(now, q) = nearest rank ⌈q·m⌉ of the m samples with at ≥ now − windowMs
//     (undefined when m = 0) — the same rank rule as the benchmarks' quantile().
// Memory: 2 × cap doubles, fixed at construction (bounded whatever the pin rate).

export class RecentLatencies {
  private readonly at: Float64Array;
  private readonly value: Float64Array;
  private n = 0;

  constructor(
    readonly cap = 1024,
    readonly windowMs = 60_000,
  ) {
    if (!(Number.isInteger(cap) && cap > 0)) throw new RangeError(`RecentLatencies: cap ${cap}: want an integer > 0`);
    if (!(windowMs > 0)) throw new RangeError(`RecentLatencies: window ${windowMs} ms: want > 0`);
    this.at = new Float64Array(cap);
    this.value = new Float64Array(cap);
  }

  /** One sample `value` taken at time `now` (ms; non-decreasing across calls). */
  record(now: number, value: number): void {
    const i = this.n % this.cap;
    this.at[i] = now;
    this.value[i] = value;
    this.n++;
  }

  /** Samples recorded in all. */
  get count(): number {
    return this.n;
  }

  /** The q-quantile (0 < q ≤ 1) of the samples within the window at `now`, or undefined. */
  quantile(now: number, q: number): number | undefined {
    return this.quantiles(now, [q])[0];
  }

  /** Several quantiles of the same window (one sort). */
  quantiles(now: number, qs: readonly number[]): Array<number | undefined> {
    const k = Math.min(this.n, this.cap);
    const from = now - this.windowMs;
    const xs: number[] = [];
    for (let i = 0; i < k; i++) if (this.at[i]! >= from) xs.push(this.value[i]!);
    xs.sort((a, b) => a - b);
    return qs.map((q) => (xs.length === 0 ? undefined : xs[Math.min(xs.length - 1, Math.max(0, Math.ceil(q * xs.length) - 1))]));
  }
}
