#!/usr/bin/env node
// npm run fuzz [-- wire|pickle|fs1 …] — the codec properties of test/{wire,pickle,fs1}-fuzz.test.ts
// with many more runs and a fresh seed (npm test runs them briefly with a fixed seed).
//
//   WCFS_SEED=<n>      seed (default: random; printed first so any failure can be rerun)
//   WCFS_FC_RUNS=<k>   runs per property × k (default 50)
//   WCFS_FC_PATH=<p>   replay one counterexample (fast-check prints seed and path on failure)
//
// Prints the seed, then vitest's report; exits with vitest's status. Copy every counterexample
// into the table of its test file (see test/helpers/fuzz.ts).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const all = ['wire', 'pickle', 'fs1'];
const names = process.argv.slice(2);
for (const n of names) {
  if (!all.includes(n)) {
    console.error(`fuzz: unknown codec ${n} (want ${all.join(', ')})`);
    process.exit(2);
  }
}
const seed = process.env.WCFS_SEED ?? String((Math.random() * 2 ** 31) >>> 0);
const runs = process.env.WCFS_FC_RUNS ?? '50';
console.log(`fuzz: WCFS_SEED=${seed} WCFS_FC_RUNS=${runs}${process.env.WCFS_FC_PATH ? ` WCFS_FC_PATH=${process.env.WCFS_FC_PATH}` : ''}`);
const files = (names.length > 0 ? names : all).map((n) => `test/${n}-fuzz.test.ts`);
const r = spawnSync('npx', ['vitest', 'run', '--testTimeout=1800000', ...files], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, WCFS_SEED: seed, WCFS_FC_RUNS: runs },
});
console.log(`fuzz: ${r.status === 0 ? 'ok' : 'FAILED'} (WCFS_SEED=${seed} WCFS_FC_RUNS=${runs})`);
process.exit(r.status ?? 1);
