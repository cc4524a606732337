// npm run bench — runs every benchmark in bench/ in turn (each prints its own table).
import { readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv[2];
for (const f of readdirSync(here)
  .filter((f) => f.startsWith('bench-') && f.endsWith('.js'))
  .sort()) {
  if (only && !f.includes(only)) continue;
  console.log(`\n=== ${f} ===`);
  const r = spawnSync(process.execPath, [path.join(here, f)], { stdio: 'inherit' });
  if (r.status !== 0) process.exitCode = 1;
}
