// Paths shared by tests: the repo root and the read-only fixtures in ../shared/fixtures.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const fixturesDir = path.resolve(repoRoot, '..', 'shared', 'fixtures');
export const zblkKinds = ['py2_pickle1', 'py2_pickle2', 'py2_pickle3', 'py3_pickle3'] as const;
export const zblkPath = (kind: string) => path.join(fixturesDir, 'wendelin-zblk', kind, 'zblk.fs');
export const historyPath = path.join(fixturesDir, 'zodb-history', 'data.fs');
export const historyManifestPath = path.join(fixturesDir, 'zodb-history', 'manifest.json');
