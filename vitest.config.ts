import { defineConfig } from 'vitest/config';

// Tests run against the TypeScript sources; tests that spawn helper processes use the
// compiled dist/ (npm test builds first).
//
// Projects (the test-database switch, test/helpers/testdb.ts): `fs1` runs every file with the
// databases as FileStorage files (or as WCFS_TEST_DB says when set); `zeo` runs the server,
// isolation and client suites again with every database behind a real runzeo (pickle), and
// `zeo-msgpack` the same minus the long stress and faulty-client runs (the encoding does not
// change what those exercise; the codec and driver tests cover both encodings in full).
const SERVER_SUITES = [
  'test/wcfs-serve.test.ts',
  'test/wcfs-live.test.ts',
  'test/wcfs-watch.test.ts',
  'test/wcfs-gc.test.ts',
  'test/isolation-e2e.test.ts',
  'test/client.test.ts',
];
const LONG_SUITES = ['test/wcfs-faulty.test.ts', 'test/wcfs-stress.test.ts'];

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    setupFiles: ['test/setup.ts'], // teardown every file gets (no runzeo left behind)
    // One test file at a time: the FUSE tests assert page-cache residency (mincore), and on a
    // 2-core machine parallel files only add noise to that.
    fileParallelism: false,
    reporters: ['default'],
    projects: [
      { extends: true, test: { name: 'fs1', include: ['test/**/*.test.ts'], env: { WCFS_TEST_DB: process.env.WCFS_TEST_DB ?? 'fs1' } } },
      { extends: true, test: { name: 'zeo', include: [...SERVER_SUITES, ...LONG_SUITES], env: { WCFS_TEST_DB: 'zeo' } } },
      { extends: true, test: { name: 'zeo-msgpack', include: SERVER_SUITES, env: { WCFS_TEST_DB: 'zeo-msgpack' } } },
    ],
  },
});
