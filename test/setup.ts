// Runs in every test file's worker before its tests (vitest.config.ts setupFiles): teardown
// that must happen even when a test fails halfway — no runzeo outlives its test file
// (helpers/zeo.ts keeps the registry; a failed assertion skips a test's own close()).
import { afterAll } from 'vitest';
import { stopAllZeo } from './helpers/zeo.js';

afterAll(stopAllZeo, 30_000);
