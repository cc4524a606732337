#!/usr/bin/env node
// Client side of the FUSE tests: every access to a test mount happens in a child process
// running this script, never in the test (= server) process, whose JS thread must stay free
// to answer (src/fuse/session.ts "self-access"). Prints one JSON object per line.
//
//   stat <path>                         {size, mode, blksize, ino, mtimeNs}
//   read <path> <off> <len>             pread loop → {n, sha256, b64 (if n ≤ 64 KiB)}
//   mmapread <path> <off> <len>         via the addon's mmapRead → {n, sha256}
//   residency <path> <off> <len>        via the addon's cacheResidency → {pages: "0110…"}
//   hold-read <path> <len> [go]         open; print {ready}; [wait for a stdin line]; read(2)
//                                        → {n, b64} or {err: code}
//   stream <path> <delayMs>             open O_RDWR; read(2) on a libuv thread; after delayMs
//                                        write(2) on the same fd → {writeMs}; then {readB64}
//   access <path>                       stat → {ok: true} or {err: code}
// Errors print {err: code, message} and exit 1. The addon is loaded directly (a child can't
// import src/native.ts without a TS loader).
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const addonPath = path.resolve(here, '..', '..', 'build', 'Release', 'wcfs_native.node');
const addon = () => createRequire(import.meta.url)(addonPath);

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sha = (b) => createHash('sha256').update(b).digest('hex');
const errOut = (e) => {
  out({ err: e.code ?? String(e), message: e.message });
  process.exit(1);
};
const checkNum = (r, what) => {
  if (typeof r !== 'number') return r;
  const code = Object.entries(os.constants.errno).find(([, v]) => v === -r)?.[0] ?? `E${-r}`;
  throw Object.assign(new Error(`${code}: ${what}`), { code });
};

const [cmd, p, a1, a2] = process.argv.slice(2);

try {
  switch (cmd) {
    case 'stat': {
      const st = fs.statSync(p, { bigint: true });
      out({ size: Number(st.size), mode: Number(st.mode), blksize: Number(st.blksize), ino: Number(st.ino), mtimeNs: String(st.mtimeNs) });
      break;
    }
    case 'read': {
      const off = Number(a1),
        len = Number(a2);
      const fd = fs.openSync(p, 'r');
      const buf = Buffer.alloc(len);
      let n = 0;
      while (n < len) {
        const k = fs.readSync(fd, buf, n, Math.min(len - n, 1 << 20), off + n);
        if (k === 0) break;
        n += k;
      }
      fs.closeSync(fd);
      const b = buf.subarray(0, n);
      out({ n, sha256: sha(b), ...(n <= 65536 ? { b64: b.toString('base64') } : {}) });
      break;
    }
    case 'mmapread': {
      const b = checkNum(await addon().mmapRead(p, Number(a1), Number(a2)), 'mmapRead');
      out({ n: b.length, sha256: sha(b) });
      break;
    }
    case 'residency': {
      const r = checkNum(await addon().cacheResidency(p, Number(a1), Number(a2)), 'cacheResidency');
      out({ pages: Array.from(r).join('') });
      break;
    }
    case 'hold-read': {
      const fd = fs.openSync(p, 'r');
      out({ ready: true });
      if (a2 === 'go') await new Promise((resolve) => process.stdin.once('data', resolve));
      const buf = Buffer.alloc(Number(a1));
      try {
        const n = fs.readSync(fd, buf, 0, buf.length, null);
        out({ n, b64: buf.subarray(0, n).toString('base64') });
      } catch (e) {
        out({ err: e.code, message: e.message });
      }
      process.exit(0);
      break;
    }
    case 'stream': {
      const fd = fs.openSync(p, 'r+');
      const buf = Buffer.alloc(4096);
      const t0 = performance.now();
      fs.read(fd, buf, 0, buf.length, null, (e, n) => {
        if (e) out({ readErr: e.code });
        else out({ readB64: buf.subarray(0, n).toString('base64'), readMs: performance.now() - t0 });
        process.exit(0);
      });
      setTimeout(() => {
        const w0 = performance.now();
        const n = fs.writeSync(fd, Buffer.from('ping'), 0, 4, null);
        out({ writeMs: performance.now() - w0, written: n });
      }, Number(a1));
      break;
    }
    case 'access': {
      try {
        fs.statSync(p);
        out({ ok: true });
      } catch (e) {
        out({ err: e.code });
      }
      break;
    }
    default:
      throw new Error(`unknown command ${cmd}`);
  }
} catch (e) {
  errOut(e);
}
