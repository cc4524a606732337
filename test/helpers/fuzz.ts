// fast-check settings shared by the codec fuzz tests (test/*-fuzz.test.ts).
//
// Deterministic by default: a fixed seed, so `npm test` never flakes. `npm run fuzz`
// (scripts/fuzz.mjs) sets WCFS_FC_SEED to a fresh seed and WCFS_FC_RUNS to a large factor;
// on a failure fast-check prints the seed and the path of the shrunk counterexample. Rerun:
//   WCFS_FC_SEED=<seed> WCFS_FC_PATH=<path> npx vitest run test/<name>-fuzz.test.ts
// and copy the counterexample into the file's table.
import type fc from 'fast-check';

export const FUZZ_SEED = Number(process.env.WCFS_FC_SEED ?? '20261206');
const RUNS = Number(process.env.WCFS_FC_RUNS ?? '1');

/** Parameters for one property: `numRuns` scaled by WCFS_FC_RUNS. */
export function fcParams(numRuns: number): fc.Parameters<unknown> {
  return {
    numRuns: Math.max(1, Math.round(numRuns * RUNS)),
    seed: FUZZ_SEED,
    ...(process.env.WCFS_FC_PATH !== undefined ? { path: process.env.WCFS_FC_PATH } : {}),
  };
}

