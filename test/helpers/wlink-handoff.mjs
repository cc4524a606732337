#!/usr/bin/env node
// A head/watch link handed from its opener to a child, after which the opener exits: the
// server's pin-failure kill must reach the child (which took the link over), never whatever
// process gets the opener's pid next.
//
// argv: opener <path of head/watch> <foid hex> <at hex>
//   opens the link, starts `child` with the link as fd 3 (stdout shared), exits.
// argv: child <foid hex> <at hex> <opener pid>
//   prints "pid <pid>", waits until the opener is gone (reparented), sends
//   "1 watch <foid> @<at>", prints "ok" on "1 ok" and "pin" on every pin — which it never
//   answers (a faulty client) — and reads the link until EOF ("eof").
import { spawn } from 'node:child_process';
import { openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const role = process.argv[2];
if (role === 'opener') {
  const [watchPath, foid, at] = process.argv.slice(3);
  const fd = openSync(watchPath, 'r+');
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'child', foid, at, String(process.pid)], {
    stdio: ['ignore', 'inherit', 'inherit', fd],
  });
  child.unref();
  process.exit(0);
} else if (role === 'child') {
  const [foid, at, openerPid] = process.argv.slice(3);
  const say = (s) => writeSync(1, s + '\n');
  say(`pid ${process.pid}`);
  // process.ppid is cached by Node: ask the kernel
  const ppid = () => {
    const st = readFileSync('/proc/self/stat', 'latin1');
    return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
  };
  for (const t0 = Date.now(); ppid() === Number(openerPid);) {
    if (Date.now() - t0 > 20_000) process.exit(2);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
  }
  writeSync(3, `1 watch ${foid} @${at}\n`);
  const buf = Buffer.alloc(4096);
  let rx = '';
  for (;;) {
    let n;
    try {
      n = readSync(3, buf, 0, buf.length, null);
    } catch (e) {
      say(`err ${e.code}`);
      break;
    }
    if (n === 0) break;
    rx += buf.subarray(0, n).toString('latin1');
    let i;
    while ((i = rx.indexOf('\n')) >= 0) {
      const l = rx.slice(0, i);
      rx = rx.slice(i + 1);
      if (l === '1 ok') say('ok');
      else if (/^\d+ pin /.test(l)) say('pin');
      else say(`line ${l}`);
    }
  }
  say('eof');
  // stay until killed (a faulty client that survived must be visible to the test), but never
  // outlive a broken test by long
  setTimeout(() => process.exit(3), 60_000);
}
