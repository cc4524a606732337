#!/usr/bin/env node
// A client process of the authentication tests (test/wcfs-auth.test.ts): joins wcfs with the
// client library (dist/client) and reports, one JSON line on stdout, what it may open.
//   argv: <mode> <zurl> <mountpoint>    the key file: $WENDELIN_CORE_WCFS_AUTHKEYFILE
//   mode join        → {join: 'ok' | <error code>, at: 'ok' | <errno code>}
//   mode join-spawn  → as join, plus child: what a child spawned after the join (not joining)
//                      gets opening head/at, and childJoined: the same child's report after
//                      it joins itself ({join, at}), then the parent's head/at again (atAfter)
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WCFS } from '../../dist/client/index.js';

const [mode, zurl, mnt] = process.argv.slice(2);

function tryOpen(p) {
  try {
    closeSync(openSync(p, 'r'));
    return 'ok';
  } catch (e) {
    return e.code ?? String(e);
  }
}

function run(args, env = process.env) {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'], env });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.on('error', reject);
    c.on('close', (rc) => (rc === 0 ? resolve(JSON.parse(out)) : reject(new Error(`child exited ${rc}: ${out}`))));
  });
}

const rep = {};
let wc;
try {
  wc = await WCFS.join(zurl, { mountpoint: mnt, autostart: false });
  rep.join = 'ok';
} catch (e) {
  rep.join = e.code ?? String(e);
  rep.message = e.message;
}
rep.at = tryOpen(path.join(mnt, 'head', 'at'));
if (mode === 'join-spawn' && wc !== undefined) {
  const script = `try { require('fs').closeSync(require('fs').openSync(process.argv[1], 'r')); process.stdout.write(JSON.stringify('ok')) } catch (e) { process.stdout.write(JSON.stringify(e.code)) }`;
  rep.child = await run(['-e', script, path.join(mnt, 'head', 'at')]);
  rep.childJoined = await run([fileURLToPath(import.meta.url), 'join', zurl, mnt]);
  rep.atAfter = tryOpen(path.join(mnt, 'head', 'at'));
}
await wc?.close();
if (wc !== undefined) rep.atClosed = tryOpen(path.join(mnt, 'head', 'at'));
process.stdout.write(JSON.stringify(rep));
