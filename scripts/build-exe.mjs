// npm run build:exe — the single executable build/wcfs (after build:native and build:ts).
//
// wendelin.core recognises its server by process identity (comm "wcfs", /proc/<pid>/exe the
// wcfs executable it started), which a script run by node never has. So build/wcfs is Node's
// single-executable application: a copy of this node binary with one CommonJS bundle of
// dist/cli/exe.js (esbuild) and the native addon (an asset: src/native.ts loads it from
// there) injected by postject. Nothing is downloaded. Prints one line; failures exit 1.
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'build', 'wcfs');
const work = path.join(root, 'build', 'sea');
const addon = path.join(root, 'build', 'Release', 'wcfs_native.node');
// Node's fuse string for single executables (docs: "Single executable applications")
const SENTINEL_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

const noSupportsColor = {
  name: 'no-supports-color',
  setup(b) {
    b.onResolve({ filter: /^supports-color$/ }, () => ({ path: 'supports-color', namespace: 'empty' }));
    b.onLoad({ filter: /.*/, namespace: 'empty' }, () => ({ contents: 'module.exports = undefined;', loader: 'js' }));
  },
};

const ESC = String.fromCharCode(27);
const stripColors = (l) =>
  l
    .split(ESC)
    .map((part, k) => (k === 0 ? part : part.replace(/^\[[0-9;]*m/, '')))
    .join('');

function run(cmd, args, what) {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8' });
  // postject's ELF writer warns about every note section it cannot name: noise, not errors
  const noise = /^(warning: Can't find string offset for section name|.*Start injection of|.*Injection done|Wrote single executable preparation blob)/;
  const err = `${r.stdout ?? ''}${r.stderr ?? ''}`
    .split('\n')
    .filter((l) => l.trim() !== '' && !noise.test(stripColors(l)))
    .join('\n');
  if (r.status !== 0) throw new Error(`${what} failed (${r.error?.message ?? `exit ${r.status}`}):\n${err}`);
  if (err) process.stderr.write(err + '\n');
}

try {
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const bundle = path.join(work, 'wcfs.cjs');
  await build({
    entryPoints: [path.join(root, 'dist', 'cli', 'exe.js')],
    outfile: bundle,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    logLevel: 'error',
    // import.meta.url (native.ts, control.ts) has no CommonJS meaning: the executable's URL
    define: { 'import.meta.url': '__wcfs_exe_url' },
    banner: { js: 'var __wcfs_exe_url = require("node:url").pathToFileURL(process.execPath).href;' },
    // debug's optional require('supports-color') (not installed): the executable's require
    // loads built-in modules only and warns on anything else
    plugins: [noSupportsColor],
  });
  const blob = path.join(work, 'wcfs.blob');
  const config = path.join(work, 'sea-config.json');
  writeFileSync(config, JSON.stringify({ main: bundle, output: blob, disableExperimentalSEAWarning: true, assets: { 'wcfs_native.node': addon } }));
  run(process.execPath, ['--experimental-sea-config', config], 'node --experimental-sea-config');
  const tmp = `${out}.tmp`;
  copyFileSync(process.execPath, tmp);
  chmodSync(tmp, 0o755);
  run(
    process.execPath,
    [path.join(root, 'node_modules', 'postject', 'dist', 'cli.js'), tmp, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SENTINEL_FUSE],
    'postject',
  );
  renameSync(tmp, out);
  rmSync(work, { recursive: true, force: true });
  process.stdout.write(`built ${path.relative(root, out)} (single executable, node ${process.version})\n`);
} catch (e) {
  process.stderr.write(`build-exe: ${e.message}\n`);
  process.exit(1);
}
