#!/usr/bin/env node
// Permission probe, run as another user (setpriv) by wcfs-share.test.ts: for each path given,
// what stat, open-for-read (+ a 1-byte read, or a readdir for a directory) and
// open-for-write give. Prints {path: {stat, read, write}} as JSON, each "ok" or an errno
// name. head/watch is opened but never read (a read waits for a pin); directories are not
// opened for writing (EISDIR says nothing about permissions).
//
// argv: <path>... (a directory's path ends with /)
import { closeSync, constants as C, openSync, readdirSync, readSync, statSync } from 'node:fs';

const code = (f) => {
  try {
    f();
    return 'ok';
  } catch (e) {
    return e.code ?? String(e);
  }
};

const out = {};
for (const p of process.argv.slice(2)) {
  const isDir = p.endsWith('/');
  const watch = p.endsWith('/head/watch');
  out[p] = {
    stat: code(() => statSync(p)),
    read: isDir
      ? code(() => readdirSync(p))
      : code(() => {
          const fd = openSync(p, C.O_RDONLY);
          try {
            if (!watch) readSync(fd, Buffer.alloc(1), 0, 1, 0);
          } finally {
            closeSync(fd);
          }
        }),
    write: isDir ? 'dir' : code(() => closeSync(openSync(p, watch ? C.O_RDWR : C.O_WRONLY))),
  };
}
process.stdout.write(JSON.stringify(out) + '\n');
