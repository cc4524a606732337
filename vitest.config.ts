import { defineConfig } from 'vitest/config';

// Tests run against the TypeScript sources; tests that spawn helper processes use the
// compiled dist/ (npm test builds first).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // One test file at a time: the FUSE tests assert page-cache residency (mincore), and on a
    // 2-core machine parallel files only add noise to that.
    fileParallelism: false,
    reporters: ['default'],
  },
});
