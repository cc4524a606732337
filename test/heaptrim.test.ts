// native mallocTrim (native/addon.cc; the server calls it after an untrack pass, untrack.ts 5e):
// memory freed in the middle of the C heap stays resident until trimmed. In a child process
// (node --expose-gc): 64 MiB of 4 KiB malloc'ed buffers, with small ones kept between them so
// the freed memory is not at the heap's top; freed and collected; then trimmed.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/paths.js';

const script = `
import { native } from ${JSON.stringify(path.join(repoRoot, 'dist', 'native.js'))};
import { readFileSync } from 'node:fs';
const rss = () => Number(/RssAnon:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
let big = [];
const keep = [];
for (let i = 0; i < 16384; i++) {
  big.push(Buffer.allocUnsafeSlow(4096).fill(1));
  if (i % 64 === 0) keep.push(Buffer.allocUnsafeSlow(256).fill(2));
}
const full = rss();
big = null;
// backing stores are freed by V8's background sweeper: collect, let it run, collect again
for (let i = 0; i < 3; i++) {
  globalThis.gc();
  await new Promise((r) => setTimeout(r, 100));
}
const freed = rss();
const trimmed = native().mallocTrim();
console.log(JSON.stringify({ full, freed, after: rss(), trimmed, keep: keep.length }));
`;

describe('mallocTrim', () => {
  it('gives the C heap’s free pages back: RssAnon falls by most of what was freed', () => {
    const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    const m = JSON.parse(r.stdout) as { full: number; freed: number; after: number; trimmed: boolean };
    expect(m.freed - m.after, JSON.stringify(m)).toBeGreaterThan(32); // MiB of the 64 freed, given back
    expect(m.trimmed).toBe(true);
  });
});
