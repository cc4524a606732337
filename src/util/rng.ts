// A small seeded PRNG (mulberry32) for tests, the soak and the fuzzers: the same seed gives
// the same sequence on every machine. Not for anything secret.

/** Uniform numbers in [0, 1) from `seed`. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}
