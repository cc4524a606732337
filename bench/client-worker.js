// A wcfs client process for the benchmarks (not a bench itself): started by util.js
// startClient() with child_process.fork, driven over IPC (structured clone: bigints pass).
// Each message {id, cmd, ...args} is answered {id, ok, r} or {id, ok: false, error}.
// Every source of bytes it holds has a name:
//
//   wcfs  {name, mnt, at, foid}      WCFS.join → connect(at) → open(foid): the real client;
//                                    map(name) → mapping.bytes over the whole file
//   fake  {name, dir, at, foid}      the same client library over a plain directory laid out
//                                    like a mount (dir/head/at, dir/head/bigfile/<foid>) and a
//                                    socketpair as head/watch whose server end answers "ok"
//                                    here (WCFS.attach + ConnOptions.watchFd, the test hooks):
//                                    the client's own mmap layer over a tmpfs file, i.e. a
//                                    plain mmap(MAP_SHARED, PROT_READ) of it, seen from Node
//   heap  {name, path}               the file read into a Buffer (ordinary process memory)
//
// Loops (JS, the same functions for every source): touch = one byte per 4 KiB page;
// sum = every 8-byte word as float64 (Float64Array view, what a numpy reader of float64 data
// does; its result is not compared: random bytes make NaNs). measure() times them per
// repetition on a fresh mapping (the page faults that map cached pages + the reads) and, for
// sum, once more on the same mapping ("warm": page tables already filled, reads only); then,
// untimed, an int32 checksum of the mapping (equal bytes ⇒ equal checksum).
//
// When the IPC channel closes (the bench ended or died) everything is closed and the process
// exits; a bench that is torn down kills it (SIGKILL) after the server is gone at the latest.

import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import path from 'node:path';
import { WCFS } from '../dist/client/index.js';
import { native } from '../dist/native.js';
import { hex16 } from '../dist/zodb/ids.js';

const PAGE = 4096;
const srcs = new Map(); // name → { kind, fh?, conn?, wc?, buf?, mnt?, maps: Mapping[] }

const nowNs = () => process.hrtime.bigint();

function touch(b) {
  let s = 0;
  for (let i = 0; i < b.length; i += PAGE) s += b[i];
  return s;
}

/** Σ of a Float64Array, 2 accumulators (as a numpy reader of float64 data would). */
function sum(v) {
  let a = 0;
  let b = 0;
  const n = v.length & ~1;
  for (let i = 0; i < n; i += 2) {
    a += v[i];
    b += v[i + 1];
  }
  return a + b;
}

/** A checksum of an Int32Array (mod 2³², 4 accumulators): equal bytes ⇒ equal result. */
function check(v) {
  let a = 0;
  let b = 0;
  let c = 0;
  let d = 0;
  const n = v.length & ~3;
  for (let i = 0; i < n; i += 4) {
    a = (a + v[i]) | 0;
    b = (b + v[i + 1]) | 0;
    c = (c + v[i + 2]) | 0;
    d = (d + v[i + 3]) | 0;
  }
  return [a, b, c, d];
}

function src(name) {
  const s = srcs.get(name);
  if (s === undefined) throw new Error(`no source ${name}`);
  return s;
}

/** A fake watch link: the server end answers every request "ok", and closes on bye. */
function fakeLink() {
  const [c, s] = native().clientSocketpair();
  const sock = new Socket({ fd: s, readable: true, writable: true });
  sock.setEncoding('latin1');
  let rx = '';
  sock.on('data', (d) => {
    rx += d;
    let i;
    while ((i = rx.indexOf('\n')) >= 0) {
      const line = rx.slice(0, i);
      rx = rx.slice(i + 1);
      const [stream, msg] = [line.slice(0, line.indexOf(' ')), line.slice(line.indexOf(' ') + 1)];
      if (msg === 'bye') sock.end();
      else if (msg.startsWith('watch ')) sock.write(`${stream} ok\n`);
    }
  });
  sock.on('error', () => {});
  return { fd: c, sock };
}

/** Pages of [off, off+len) of file not in the page cache (mincore, faults nothing in). */
async function missing(file, off, len) {
  const v = await native().cacheResidency(file, off, len);
  if (typeof v === 'number') throw new Error(`${file}: cacheResidency: errno ${-v}`);
  let n = 0;
  for (const x of v) n += x & 1 ? 0 : 1;
  return n;
}

/** Pages a fresh mapping of a wcfs source would fault in from the server (not cached). */
async function wcfsMissing(s) {
  const bs = s.fh.blksize;
  const nblk = s.size / bs;
  const pinned = s.fh.pinned();
  const foid = hex16(s.fh.foid);
  let n = 0;
  let headRun = 0; // head blocks are checked in runs: one mincore each
  const flushHead = async (end) => {
    if (headRun === end) return;
    n += await missing(path.join(s.mnt, 'head', 'bigfile', foid), headRun * bs, (end - headRun) * bs);
  };
  for (let b = 0; b < nblk; b++) {
    const rev = pinned.get(b);
    if (rev === undefined) continue;
    await flushHead(b);
    headRun = b + 1;
    n += await missing(path.join(s.mnt, `@${hex16(rev)}`, 'bigfile', foid), b * bs, bs);
  }
  await flushHead(nblk);
  return n;
}

const handlers = {
  async wcfs({ name, mnt, at, foid }) {
    const zurl = readFileSync(path.join(mnt, '.wcfs', 'zurl'), 'utf8').trim();
    const wc = await WCFS.join(zurl, { mountpoint: mnt, autostart: false });
    const conn = await wc.connect(at);
    const fh = await conn.open(foid);
    const st = { kind: 'wcfs', wc, conn, fh, mnt, size: fh.headfsize, maps: [] };
    srcs.set(name, st);
    return { blksize: fh.blksize, size: st.size, pid: process.pid };
  },

  async fake({ name, dir, at, foid }) {
    const link = fakeLink();
    const wc = WCFS.attach(dir);
    const conn = await wc.connect(at, { watchFd: link.fd, closeTimeoutMs: 2000 });
    const fh = await conn.open(foid);
    srcs.set(name, { kind: 'fake', wc, conn, fh, size: fh.headfsize, maps: [], link });
    return { blksize: fh.blksize, size: fh.headfsize };
  },

  async heap({ name, path: p }) {
    const buf = readFileSync(p);
    srcs.set(name, { kind: 'heap', buf, size: buf.length, maps: [] });
    return { size: buf.length };
  },

  /** Map the whole file of a source (kept until close/unmapAll). */
  map({ name }) {
    const s = src(name);
    s.maps.push(s.fh.mmap(0));
    return { bytes: s.maps.at(-1).bytes.length };
  },

  unmapAll({ name }) {
    const s = src(name);
    for (const m of s.maps.splice(0)) m.unmap();
  },

  /** Read every page of the last mapping (or the buffer): faults it all in. */
  read({ name }) {
    const s = src(name);
    const b = s.kind === 'heap' ? s.buf : s.maps.at(-1).bytes;
    const t0 = nowNs();
    const x = touch(b);
    return { ms: Number(nowNs() - t0) / 1e6, touch: x };
  },

  /** First 32-bit word (LE) of each block in blks, through the last mapping. */
  firsts({ name, blks }) {
    const s = src(name);
    const m = s.maps.at(-1);
    const dv = new DataView(m.buffer);
    return blks.map((b) => dv.getUint32(b * s.fh.blksize, true));
  },

  pinned({ name }) {
    return [...src(name).fh.pinned()];
  },

  resync({ name, at }) {
    return src(name).conn.resync(at);
  },

  /** Pages a fresh mapping would have to fetch from the server (0 for non-wcfs sources). */
  async missing({ name }) {
    const s = src(name);
    return s.kind === 'wcfs' ? wcfsMissing(s) : 0;
  },

  /**
   * reps × { touch on a fresh mapping, sum on a fresh mapping, sum again on that mapping };
   * ns per loop, and the touch result and checksum (equal bytes ⇒ equal). For wcfs sources,
   * `missing` before each repetition = pages that were not cached (mincore) — the caller
   * wants 0 (DAMON may evict; such a repetition is repeated, at most 3 times).
   */
  async measure({ name, reps }) {
    const s = src(name);
    const out = { touch: [], sum: [], warm: [], res: { touch: 0, sum: 0 }, refetched: 0 };
    for (let r = 0; r < reps; r++) {
      for (let attempt = 0; ; attempt++) {
        const miss = s.kind === 'wcfs' ? await wcfsMissing(s) : 0;
        if (miss === 0) break;
        if (attempt === 3) throw new Error(`${name}: ${miss} pages not cached after ${attempt} re-reads`);
        out.refetched += miss;
        const m = s.fh.mmap(0);
        touch(m.bytes); // faults the evicted pages back in through the server
        m.unmap();
      }
      const fresh = () => (s.kind === 'heap' ? { bytes: s.buf, unmap() {} } : s.fh.mmap(0));
      let m = fresh();
      let t0 = nowNs();
      out.res.touch = touch(m.bytes);
      out.touch.push(Number(nowNs() - t0));
      m.unmap();
      m = fresh();
      const v = new Float64Array(m.bytes.buffer, m.bytes.byteOffset, m.bytes.length >> 3);
      t0 = nowNs();
      sum(v);
      out.sum.push(Number(nowNs() - t0));
      t0 = nowNs();
      sum(v);
      out.warm.push(Number(nowNs() - t0));
      out.res.check = check(new Int32Array(m.bytes.buffer, m.bytes.byteOffset, m.bytes.length >> 2)).join(' ');
      m.unmap();
    }
    return out;
  },

  async close({ name }) {
    const s = srcs.get(name);
    if (s === undefined) return;
    srcs.delete(name);
    for (const m of s.maps.splice(0)) m.unmap();
    if (s.conn) {
      await s.fh.close();
      await s.conn.close();
      await s.wc.close();
    }
    s.link?.sock.destroy();
  },
};

async function closeAll() {
  for (const name of [...srcs.keys()]) await handlers.close({ name }).catch(() => {});
}

process.on('message', async ({ id, cmd, ...args }) => {
  try {
    const r = await handlers[cmd](args);
    process.send({ id, ok: true, r });
  } catch (e) {
    process.send({ id, ok: false, error: e.stack ?? String(e) });
  }
});
process.on('disconnect', () => {
  void closeAll().finally(() => process.exit(0));
});
process.send({ id: 0, ok: true, r: 'ready' });
