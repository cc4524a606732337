import { defineConfig } from 'vitest/config';

// Tests run against the TypeScript sources; tests that spawn helper processes use the
// compiled dist/ (npm test builds first).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    reporters: ['default'],
  },
});
