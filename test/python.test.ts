// The cross-language tests: pytest over test/py/test_*.py with the project's virtualenv (real
// ZODB, ZEO), each pytest case reported as a vitest case of its own (from pytest's JUnit XML),
// so `npm test` stays the one command and counts everything. pytest runs once, while this
// file is collected; a case that failed, errored or was skipped fails here with pytest's text
// (a skipped test would hide a missing feature). No Python → one failing case saying why.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/paths.js';
import { python, pythonEnv } from './helpers/python.js';

interface Case {
  name: string;
  /** failure/error/skipped text; undefined = passed */
  problem?: string;
}

const PYTEST_TIMEOUT_MS = 10 * 60_000;

const xmlText = (s: string) =>
  s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&#(\d+);/g, (_, n: string) => String.fromCodePoint(Number(n)))
    .replace(/&amp;/g, '&');

/** <testcase classname= name=> … </testcase> of pytest's JUnit XML (the subset pytest writes). */
function parseJUnit(xml: string): Case[] {
  const out: Case[] = [];
  const re = /<testcase\b([^>]*?)(\/>|>([\s\S]*?)<\/testcase>)/g;
  for (let m; (m = re.exec(xml)) !== null;) {
    const attr = (k: string) => xmlText(new RegExp(`\\b${k}="([^"]*)"`).exec(m![1]!)?.[1] ?? '');
    const name = `${attr('classname')}::${attr('name')}`;
    const body = m[3] ?? '';
    const bad = /<(failure|error|skipped)\b([^>]*?)(?:\/>|>([\s\S]*?)<\/\1>)/.exec(body);
    if (bad === null) out.push({ name });
    else out.push({ name, problem: `${bad[1]}: ${xmlText(/message="([^"]*)"/.exec(bad[2]!)?.[1] ?? '')}\n${xmlText(bad[3] ?? '')}` });
  }
  return out;
}

function runPytest(): { cases: Case[]; problem?: string } {
  let py: string;
  try {
    py = python();
  } catch (e) {
    return { cases: [], problem: (e as Error).message };
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'wcfs-pytest-'));
  try {
    const xml = path.join(dir, 'junit.xml');
    const r = spawnSync(py, ['-m', 'pytest', '-q', '-p', 'no:cacheprovider', `--junitxml=${xml}`, path.join('test', 'py')], {
      cwd: repoRoot,
      env: pythonEnv(),
      encoding: 'utf8',
      timeout: PYTEST_TIMEOUT_MS,
      maxBuffer: 64 << 20,
    });
    let cases: Case[] = [];
    try {
      cases = parseJUnit(readFileSync(xml, 'utf8'));
    } catch {
      // no report: say what pytest said
    }
    // exit 0 all passed, 1 some failed (the cases say which); anything else is pytest itself failing
    if (r.status !== 0 && r.status !== 1)
      return { cases, problem: `pytest exited ${r.status ?? r.signal}${r.error ? ` (${r.error.message})` : ''}:\n${r.stdout}\n${r.stderr}` };
    if (cases.length === 0) return { cases, problem: `pytest reported no test cases:\n${r.stdout}\n${r.stderr}` };
    return { cases };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const result = runPytest();

describe('pytest test/py (real ZODB, ZEO)', () => {
  if (result.problem !== undefined) {
    it('pytest runs', () => {
      throw new Error(result.problem);
    });
  }
  for (const c of result.cases) {
    it(c.name, () => {
      expect(c.problem, c.problem).toBeUndefined();
    });
  }
});
