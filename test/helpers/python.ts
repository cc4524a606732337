// The project's Python: the virtualenv scripts/setup.sh makes (.venv/, pins in
// test/py/requirements.txt), with real ZODB, ZEO and pytest. Tests that need Python get it
// here; when it is missing they fail with the reason — they never skip.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './paths.js';

export const venvPython = path.join(repoRoot, '.venv', 'bin', 'python');

/** Path of the venv's python, or throws saying how to get it. */
export function python(): string {
  if (!existsSync(venvPython)) throw new Error(`${venvPython} is missing: run scripts/setup.sh (it makes the project virtualenv with ZODB, ZEO, pytest)`);
  return venvPython;
}

/** Environment for Python programs of the tests: test/py importable, our Node for the CLI. */
export function pythonEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const pyPath = path.join(repoRoot, 'test', 'py');
  return { ...process.env, PYTHONPATH: process.env.PYTHONPATH ? `${pyPath}:${process.env.PYTHONPATH}` : pyPath, WCFS_NODE: process.execPath, ...extra };
}
