// The seed of every randomized test, and the fast-check settings shared by the codec fuzz
// tests (test/*-fuzz.test.ts).
//
// WCFS_SEED is the one seed variable of the project: fast-check properties, the seeded
// random tests (src/util/rng.ts, the one PRNG), the soak (scripts/soak.mjs) and the fuzzer
// (scripts/fuzz.mjs) all read it. Each test keeps its own default when it is unset (a fixed
// seed, or a fresh one that it prints) — see seedOr.
//
// The codec fuzz tests are deterministic by default: a fixed seed, so `npm test` never
// flakes. `npm run fuzz` (scripts/fuzz.mjs) sets WCFS_SEED to a fresh seed and WCFS_FC_RUNS
// to a large factor; on a failure fast-check prints the seed and the path of the shrunk
// counterexample. Rerun:
//   WCFS_SEED=<seed> WCFS_FC_PATH=<path> npx vitest run test/<name>-fuzz.test.ts
// and copy the counterexample into the file's table.
import type fc from 'fast-check';

/** WCFS_SEED as a number, or undefined when it is unset or empty. */
export const ENV_SEED: number | undefined = process.env.WCFS_SEED ? Number(process.env.WCFS_SEED) : undefined;

/** WCFS_SEED if set, else `dflt`. */
export const seedOr = (dflt: number): number => ENV_SEED ?? dflt;

/** fast-check's `seed` parameter: WCFS_SEED if set, else none (fast-check picks one and prints it on failure). */
export const fcSeed = (): { seed?: number } => (ENV_SEED !== undefined ? { seed: ENV_SEED } : {});

export const FUZZ_SEED = seedOr(20261206);
const RUNS = Number(process.env.WCFS_FC_RUNS ?? '1');

/** Parameters for one property: `numRuns` scaled by WCFS_FC_RUNS. */
export function fcParams(numRuns: number): fc.Parameters<unknown> {
  return {
    numRuns: Math.max(1, Math.round(numRuns * RUNS)),
    seed: FUZZ_SEED,
    ...(process.env.WCFS_FC_PATH !== undefined ? { path: process.env.WCFS_FC_PATH } : {}),
  };
}
