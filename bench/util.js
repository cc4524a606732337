// Shared pieces of the FUSE benchmarks (not a bench itself: run.js runs only bench-*.js).
//
// - tools(): builds bench/rd.c (the one reader of every bench) and bench/cfuse.c (the C
//   reference server) into bench/out/ when their sources are newer.
// - work dir on /dev/shm: Data.fs, the tmpfs reference copy and the mountpoints live there
//   (tmpfs: a commit's fsync is free, so "commit returned" ≈ "commit visible in the file").
// - servers run as child processes (wcfs serve, cfuse); this process is only a client of
//   their mounts, so async fs calls on them are fine. Every server and mount is taken down by
//   cleanup(), which main() runs in `finally` and on SIGINT/SIGTERM: SIGTERM → wait → abort
//   the FUSE connection (fusectl) → SIGKILL → fusermount3 -u -z. The work dir is removed only
//   once nothing is mounted below it.
// - client processes (startClient): bench/client-worker.js, the client library driven over IPC;
//   killed at cleanup before the servers go down. smaps(): a process's memory from /proc.
//
// Environment knobs (all benches):
//   WCFS_BENCH_PROF=<dir>        run wcfs serve under node --cpu-prof, profiles into <dir>
//   WCFS_BENCH_SERVE_ARGS="..."  extra `wcfs serve` options, e.g. "--poll-ms 50"
//   WCFS_BENCH_NODE_ARGS="..."   extra node options for wcfs serve, e.g. "--always-sparkplug"

import { execFile, fork, spawn } from 'node:child_process';
import net from 'node:net';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, openSync, closeSync, writeSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { abortConnection, findMount } from '../dist/fuse/mountinfo.js';
import { hex16 } from '../dist/zodb/ids.js';
import { openStorage } from '../dist/zodb/open.js';
import { WriteTxn } from '../dist/zodb/db.js';
import { ZBIGFILE_CLASS, createZBigFile, ensureRoot, rootSet, setBlock } from '../dist/zodb/zbigfile.js';
import { PersistentRef } from '../dist/zodb/pickle/index.js';
import { sleep, withTimeout } from '../dist/util/async.js';

export { hex16, WriteTxn, setBlock };

export const here = path.dirname(fileURLToPath(import.meta.url));
export const outDir = path.join(here, 'out');
const wcfsBin = path.resolve(here, '..', 'bin', 'wcfs.js');
export const venvBin = path.resolve(here, '..', '.venv', 'bin');
export const MiB = 1 << 20;
const CLK_TCK = 100; // USER_HZ: /proc/<pid>/stat times are in 1/100 s on Linux

export { sleep };
export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// ---- building the C helpers ----

function run(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 64 * MiB, ...opts }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\n${stderr}`;
        err.stdout = stdout;
        reject(err);
      } else resolve({ stdout, stderr });
    });
  });
}

async function buildIfStale(src, out, extra = []) {
  if (existsSync(out) && statSync(out).mtimeMs >= statSync(src).mtimeMs) return;
  mkdirSync(outDir, { recursive: true });
  await run('cc', ['-O2', '-Wall', '-o', out, src, ...extra]);
}

/** Paths of the built C helpers { rd, cfuse }. */
export async function tools() {
  const rd = path.join(outDir, 'rd');
  const cfuse = path.join(outDir, 'cfuse');
  await buildIfStale(path.join(here, 'rd.c'), rd);
  let fuse;
  try {
    fuse = (await run('pkg-config', ['--cflags', '--libs', 'fuse3'])).stdout.trim().split(/\s+/);
  } catch (e) {
    throw new Error(`bench: pkg-config fuse3 failed (apt-get install libfuse3-dev pkg-config): ${e.message}`, { cause: e });
  }
  await buildIfStale(path.join(here, 'cfuse.c'), cfuse, fuse);
  return { rd, cfuse };
}

/** Runs bench/out/rd; resolves with its JSON line. */
export async function rd(...args) {
  let stdout;
  try {
    ({ stdout } = await run(path.join(outDir, 'rd'), args.map(String), { timeout: 120_000 }));
  } catch (e) {
    if (e.code !== 3 || !e.stdout) throw e; // 3: refused, with a JSON reason
    stdout = e.stdout;
  }
  return JSON.parse(stdout);
}

/**
 * Reads `file` (FUSE) sequentially until mincore shows every page cached. Pages of FUSE files
 * here go missing now and then (1–64 pages seen, with wcfs and with the C server alike): this
 * VM runs DAMON proactive reclaim (/sys/kernel/mm/damon/admin/kdamonds/0, action pageout),
 * which evicts clean page cache it considers cold. Read again then, and say so on stderr.
 */
export async function ensureCached(file, what = file) {
  for (let i = 0; ; i++) {
    await rd('seq', file, MiB);
    const r = await rd('res', file);
    if (r.resident === r.pages) return;
    if (i === 3) throw new Error(`${what}: only ${r.resident} of ${r.pages} pages cached after ${i + 1} full reads`);
    process.stderr.write(`bench: note: ${what}: ${r.pages - r.resident} of ${r.pages} pages not cached after a full read: reading again\n`);
  }
}

// ---- cleanup ----

const cleanups = [];
let cleaning;

/** Register an async cleanup step; cleanup() runs them newest first. */
export function onCleanup(fn) {
  cleanups.push(fn);
}

export function cleanup() {
  cleaning ??= (async () => {
    while (cleanups.length) {
      const fn = cleanups.pop();
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`bench: cleanup: ${e.message}\n`);
      }
    }
  })();
  return cleaning;
}

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    interrupted = true;
    process.stderr.write(`bench: ${sig}: cleaning up\n`);
    void cleanup().finally(() => process.exit(130));
  });
}

/** A fresh work dir on /dev/shm, removed at cleanup if nothing is mounted below it. */
export function workDir(prefix) {
  const dir = mkdtempSync(path.join('/dev/shm', `wcfs-bench-${prefix}-`));
  onCleanup(async () => {
    const busy = [];
    for (const name of readdirSync(dir)) if (findMount(path.join(dir, name))) busy.push(name);
    if (busy.length) throw new Error(`${dir}: still mounted (${busy.join(', ')}): not removed`);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

// ---- servers ----

/** CPU time (user + system, all threads) process pid used so far, ms (10 ms resolution). */
export function cpuMs(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
}

/** CPU time of all live threads of pid so far, ns (schedstat of each /proc/<pid>/task; exited threads not counted). */
export function cpuNs(pid) {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      /* the thread just exited */
    }
  }
  return ns;
}

/** Take down a server process and its mount, whatever state they are in. */
async function stopServer(proc, exited, mnt) {
  const running = () => proc.exitCode === null && proc.signalCode === null;
  if (running()) {
    proc.kill('SIGTERM');
    await Promise.race([exited, sleep(5000)]);
  }
  if (running() && findMount(mnt)) {
    await abortConnection(findMount(mnt).minor).catch(() => {});
    await Promise.race([exited, sleep(2000)]);
  }
  if (running()) {
    proc.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
  const m = findMount(mnt);
  if (m) {
    try {
      await run('fusermount3', ['-u', mnt], { timeout: 5000 });
    } catch {
      await abortConnection(m.minor).catch(() => {});
      await run('fusermount3', ['-u', '-z', mnt], { timeout: 5000 }).catch(() => {});
    }
  }
}

function spawnServer(cmd, args, mnt, name, env = undefined) {
  mkdirSync(mnt, { recursive: true });
  // stderr goes to a file, not a pipe: a write into a pipe wakes this process (its event
  // loop), which costs the server ~100 µs per debug line — more than the pin round trips the
  // debug lines time
  const errFile = `${mnt}.stderr`;
  const errFd = openSync(errFile, 'w');
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', errFd], env: env && { ...process.env, ...env } });
  closeSync(errFd);
  const stderr = () => readFileSync(errFile, 'utf8');
  const exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve(sig ?? code)));
  const srv = {
    name,
    mnt,
    proc,
    exited,
    stderr,
    /** The connection's bdi: /sys/class/bdi/0:N. */
    bdi: () => `/sys/class/bdi/0:${findMount(mnt).minor}`,
    stop: () => stopServer(proc, exited, mnt),
    /** CPU time (user + system, all threads) the server process used so far, ms. */
    cpuMs: () => cpuMs(proc.pid),
  };
  onCleanup(srv.stop);
  return srv;
}

async function waitUp(srv, probe, ms = 20_000) {
  const t0 = Date.now();
  for (;;) {
    if (srv.proc.exitCode !== null || srv.proc.signalCode !== null) throw new Error(`${srv.name} exited: ${srv.stderr()}`);
    if (findMount(srv.mnt)) {
      try {
        await withTimeout(probe(), 5000, `${srv.name} probe`);
        return;
      } catch {
        /* not yet */
      }
    }
    if (Date.now() - t0 > ms) throw new Error(`${srv.name} did not come up: ${srv.stderr()}`);
    await sleep(20);
  }
}

/**
 * `wcfs serve [args] <db> <mnt>` in a child process; resolves once it answers.
 * opts.nodeArgs: extra node options (e.g. ['--import', debugHrtime]); opts.env: extra
 * environment (e.g. { DEBUG: 'wcfs:watch' }).
 */
export async function startWcfs(db, mnt, args = [], { nodeArgs = [], env } = {}) {
  const node = [...nodeArgs, ...(process.env.WCFS_BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean)];
  if (process.env.WCFS_BENCH_PROF) {
    mkdirSync(process.env.WCFS_BENCH_PROF, { recursive: true });
    node.push('--cpu-prof', '--cpu-prof-interval', process.env.WCFS_BENCH_PROF_US ?? '1000', '--cpu-prof-dir', process.env.WCFS_BENCH_PROF);
  }
  const extra = (process.env.WCFS_BENCH_SERVE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const srv = spawnServer(process.execPath, [...node, wcfsBin, 'serve', ...args, ...extra, db, mnt], mnt, 'wcfs', env);
  await waitUp(srv, () => readFile(path.join(mnt, '.wcfs', 'zurl')));
  srv.at = (rel) => path.join(mnt, rel);
  return srv;
}

/** bench/out/cfuse [-k] <src> <mnt>; the file is <mnt>/data. */
export async function startCfuse(src, mnt, { keepCache = false } = {}) {
  const srv = spawnServer(path.join(outDir, 'cfuse'), [...(keepCache ? ['-k'] : []), src, mnt], mnt, 'cfuse');
  await waitUp(srv, async () => {
    const fh = await open(path.join(mnt, 'data'));
    await fh.close();
  });
  srv.data = path.join(mnt, 'data');
  return srv;
}

/** A port the kernel had free a moment ago (runzeo logs only the address it was given). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** The first frame a ZEO server sends (the handshake: "Z5" pickle, "M5" msgpack), or throws. */
function zeoGreeting(port, ms = 2000) {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    const done = (err, v) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(v);
    };
    const timer = setTimeout(() => done(new Error('no greeting')), ms);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) done(null, buf.toString('latin1', 4, 4 + buf.readUInt32BE(0)));
    });
    sock.on('error', (e) => done(e));
    sock.on('close', () => done(new Error('closed before the greeting')));
  });
}

/**
 * `.venv/bin/runzeo -a 127.0.0.1:PORT -f <fsPath>` (ZEO_MSGPACK=1 for msgpack) in a child
 * process; resolves once it greets in that encoding, with { zurl, pid, cpuMs(), stop() }.
 * Stopped at cleanup (SIGTERM, SIGKILL after 5 s) if still running.
 */
export async function startZeo(fsPath, { encoding = 'pickle' } = {}) {
  const port = await freePort();
  const env = { ...process.env, PYTHONUNBUFFERED: '1' };
  if (encoding === 'msgpack') env.ZEO_MSGPACK = '1';
  else delete env.ZEO_MSGPACK;
  const proc = spawn(path.join(venvBin, 'runzeo'), ['-a', `127.0.0.1:${port}`, '-f', fsPath], { stdio: ['ignore', 'ignore', 'pipe'], env });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr = (stderr + d).slice(-8000)));
  const exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve(sig ?? code)));
  const running = () => proc.exitCode === null && proc.signalCode === null;
  const stop = async () => {
    if (!running()) return;
    proc.kill('SIGTERM');
    await Promise.race([exited, sleep(5000)]);
    if (running()) {
      proc.kill('SIGKILL');
      await Promise.race([exited, sleep(2000)]);
    }
  };
  onCleanup(stop);
  const want = encoding === 'msgpack' ? 'M5' : 'Z5';
  const t0 = Date.now();
  for (;;) {
    if (!running()) throw new Error(`runzeo exited (${await exited}): ${stderr}`);
    const got = await zeoGreeting(port).catch(() => undefined);
    if (got === want) break;
    if (got !== undefined) throw new Error(`runzeo greeted ${JSON.stringify(got)}, want ${want}`);
    if (Date.now() - t0 > 20_000) throw new Error(`runzeo did not come up: ${stderr}`);
    await sleep(20);
  }
  return { zurl: `zeo://127.0.0.1:${port}`, addr: `127.0.0.1:${port}`, pid: proc.pid, cpuMs: () => cpuMs(proc.pid), stderr: () => stderr, stop };
}

/** read_ahead_kb of a FUSE mount's bdi. */
export function readAhead(srv) {
  return Number(readFileSync(path.join(srv.bdi(), 'read_ahead_kb'), 'utf8'));
}

/** Sets read_ahead_kb of a FUSE mount's bdi (root; gone with the mount). */
export function setReadAhead(srv, kb) {
  writeFileSync(path.join(srv.bdi(), 'read_ahead_kb'), String(kb));
}

// ---- databases ----

/**
 * A Data.fs with one ZBigFile `big` (nblk blocks of blksize, ZBlk0, random bytes — written
 * also to `refPath`, the tmpfs reference copy, when given) and one small ZBigFile `small`
 * (4 KiB blocks, block 0 set). Returns the open writable storage and the oids.
 * fill < blksize: each block stores only `fill` random bytes (the rest reads as zeros) — a
 * cheap database when only the block structure matters (pins), not the data volume.
 * dbPath may be any zurl our writer opens (zeo://… commits through ZEO). named: the two files
 * are also root['big'] and root['small'] (for Python readers going through the root).
 */
export async function makeDb(dbPath, { nblk, blksize = 2 * MiB, refPath, perTxn = 16, fill = blksize, named = false }) {
  const s = await openStorage(dbPath, { create: true });
  onCleanup(() => s.close());
  await ensureRoot(s);
  let txn = new WriteTxn(s);
  const big = createZBigFile(txn, blksize);
  const small = createZBigFile(txn, 4096);
  if (named) {
    await rootSet(txn, 'big', new PersistentRef(big, ZBIGFILE_CLASS));
    await rootSet(txn, 'small', new PersistentRef(small, ZBIGFILE_CLASS));
  }
  await setBlock(txn, small, 0, Buffer.from('small'));
  await txn.commit();
  const ref = refPath ? openSync(refPath, 'w') : undefined;
  const buf = Buffer.alloc(blksize);
  for (let b = 0; b < nblk; b += perTxn) {
    txn = new WriteTxn(s);
    for (let i = b; i < Math.min(nblk, b + perTxn); i++) {
      randomFillSync(buf, 0, fill);
      buf[fill - 1] |= 1; // no trailing zeros: every block is a full `fill`-byte record
      if (ref !== undefined) writeSync(ref, buf, 0, blksize, i * blksize);
      // a copy: setBlock keeps a view of a Buffer argument until commit (Buffer#slice = subarray)
      await setBlock(txn, big, i, new Uint8Array(buf.subarray(0, fill)), { format: 'ZBlk0' });
    }
    await txn.commit();
  }
  if (ref !== undefined) closeSync(ref);
  return { storage: s, big, small };
}

// ---- head/at ----

/** A poller of <mnt>/head/at: one open handle, one DIRECT_IO READ (≈ one FUSE request) per poll. */
export async function headPoller(mnt) {
  const fh = await open(path.join(mnt, 'head', 'at'));
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await fh.close().catch(() => {}); // ENOTCONN when the server is already gone
  };
  onCleanup(close);
  const buf = Buffer.alloc(32);
  return {
    /** Close before stopping the server (an open file makes its unmount fail). */
    close,
    async read() {
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      return buf.toString('latin1', 0, bytesRead);
    },
    /** Polls back to back until head/at == tid (16-hex); resolves with the time seen (ms) and polls. */
    async waitFor(tid, timeoutMs = 30_000) {
      const t0 = nowMs();
      for (let n = 1; ; n++) {
        const h = await this.read();
        const t = nowMs();
        if (h === tid) return { t, polls: n };
        if (h > tid) throw new Error(`head/at moved past ${tid}: ${h}`);
        if (t - t0 > timeoutMs) throw new Error(`head/at stays ${h}, want ${tid}`);
      }
    },
  };
}

// ---- statistics and printing ----

/**
 * The commit → head/at loop of the latency benches: warmup + n commits of block 0 of `small`,
 * 10–30 ms apart, each followed by polls of head/at (`poll`: headPoller) until it shows the new
 * tid. Per measured commit (ms): started → head/at, returned → head/at, commit() itself; and how
 * many were already visible at the first poll.
 */
export async function commitLatencies(storage, small, poll, { warmup, n }) {
  const afterStart = [];
  const afterReturn = [];
  const commitMs = [];
  let firstPoll = 0;
  for (let i = 0; i < warmup + n; i++) {
    const txn = new WriteTxn(storage);
    await setBlock(txn, small, 0, Buffer.from(`change ${i}`));
    const t0 = nowMs();
    const tid = hex16(await txn.commit());
    const t1 = nowMs();
    const seen = await poll.waitFor(tid);
    if (i >= warmup) {
      afterReturn.push(seen.t - t1);
      afterStart.push(seen.t - t0);
      commitMs.push(t1 - t0);
      if (seen.polls === 1) firstPoll++;
    }
    await sleep(10 + Math.random() * 20);
  }
  return { afterStart, afterReturn, commitMs, firstPoll };
}

export function quantile(xs, q) {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i];
}
export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};

/** Prints rows (arrays of cells) as a table; align: one 'l'/'r' per column (default: text left, numbers right). */
export function table(header, rows, align) {
  const all = [header, ...rows].map((r) => r.map(String));
  const w = header.map((_, i) => Math.max(...all.map((r) => r[i]?.length ?? 0)));
  const al = align ?? header.map((_, i) => (rows.some((r) => /[a-z]/i.test(String(r[i] ?? ''))) ? 'l' : 'r')).join('');
  for (const r of all)
    console.log(
      r
        .map((c, i) => (al[i] === 'l' ? c.padEnd(w[i]) : c.padStart(w[i])))
        .join('  ')
        .trimEnd(),
    );
}

/** Runs main, then cleanup; exit code 1 on failure. */
export function runMain(main) {
  main()
    .catch((e) => {
      if (interrupted) return; // failures caused by the teardown
      process.stderr.write(`bench: ${e.stack ?? e}\n`);
      process.exitCode = 1;
    })
    .finally(() => cleanup());
}

// ---- client processes ----

/** node --import this: debug lines start with process.hrtime.bigint() (ns, CLOCK_MONOTONIC). */
export const debugHrtime = path.join(here, 'debug-hrtime.js');
/** The counters of a wcfs server's .wcfs/stats (wcfs-server.md §1.5): key → number. */
export async function serverStats(srv) {
  const text = await readFile(srv.at('.wcfs/stats'), 'utf8');
  return Object.fromEntries([...text.matchAll(/^(\w+)\t: (\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
}

/** node options for a server whose memory is measured with rssAnonAfterGc. */
export const gcOnSignal = ['--expose-gc', '--import', path.join(here, 'gc-signal.js')];

/** RssAnon (MiB) of a process started with gcOnSignal, after a full GC (SIGUSR2). */
export async function rssAnonAfterGc(pid) {
  process.kill(pid, 'SIGUSR2');
  await sleep(500);
  return Number(/RssAnon:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
}

/**
 * A wcfs client process (bench/client-worker.js, see there for its commands). Resolves once
 * it is ready; `call(cmd, args)` resolves with the command's result. Killed (SIGKILL) at
 * cleanup if still running; `close()` closes its connections and lets it exit.
 */
export async function startClient(name = 'client') {
  const proc = fork(path.join(here, 'client-worker.js'), [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const pending = new Map();
  let nextId = 1;
  let exitErr;
  const exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve(sig ?? code)));
  let ready;
  const readyP = new Promise((resolve, reject) => (ready = { resolve, reject }));
  proc.on('message', ({ id, ok, r, error }) => {
    if (id === 0) return ready.resolve();
    const p = pending.get(id);
    pending.delete(id);
    if (ok) p?.resolve(r);
    else p?.reject(new Error(`${name}: ${error}`));
  });
  void exited.then((how) => {
    exitErr = new Error(`${name} (pid ${proc.pid}) exited: ${how}`);
    ready.reject(exitErr);
    for (const p of pending.values()) p.reject(exitErr);
    pending.clear();
  });
  const running = () => proc.exitCode === null && proc.signalCode === null;
  const kill = async () => {
    if (!running()) return;
    proc.kill('SIGKILL');
    await Promise.race([exited, sleep(5000)]);
  };
  onCleanup(kill);
  await readyP;
  return {
    pid: proc.pid,
    call(cmd, args = {}) {
      if (exitErr) return Promise.reject(exitErr);
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        proc.send({ id, cmd, ...args });
      });
    },
    /** Disconnect: the worker closes everything (unwatch, bye) and exits; killed after ms. */
    async close(ms = 10_000) {
      if (!running()) return;
      proc.disconnect();
      await Promise.race([exited, sleep(ms)]);
      await kill();
    },
  };
}

// ---- memory ----

const KB_FIELDS = ['Rss', 'Pss', 'Shared_Clean', 'Shared_Dirty', 'Private_Clean', 'Private_Dirty', 'Anonymous'];

function smapsFields(lines) {
  const r = Object.fromEntries(KB_FIELDS.map((k) => [k, 0]));
  for (const l of lines) {
    const m = /^(\w+):\s+(\d+) kB/.exec(l);
    if (m && m[1] in r) r[m[1]] += Number(m[2]) * 1024;
  }
  r.Private = r.Private_Clean + r.Private_Dirty;
  return r;
}

/**
 * Memory of a process, bytes: `all` = /proc/<pid>/smaps_rollup; `files` = the same fields
 * summed over the VMAs that map a file below `prefix` (/proc/<pid>/smaps), and their count.
 */
export function smaps(pid, prefix) {
  const all = smapsFields(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').split('\n'));
  if (prefix === undefined) return { all };
  const lines = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  const mine = [];
  let vmas = 0;
  let inside = false;
  for (const l of lines) {
    const m = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(l);
    if (m) {
      inside = m[1].startsWith(prefix + '/');
      if (inside) vmas++;
    } else if (inside) mine.push(l);
  }
  return { all, files: smapsFields(mine), vmas };
}
