// Finding, starting, joining, stopping and checking wcfs servers (wcfs-server.md §4.2-§4.4).
//
// Mountpoint of a zurl: /dev/shm/wcfs/<sha1 of the normalised zurl> (/dev/shm/wcfs is 01777).
// A server is "running" when <mnt>/.wcfs/zurl opens and holds the zurl; "crashed" when the
// mount entry is there but access gives ENOTCONN/ECONNABORTED; "absent" otherwise.
//
// Nothing here touches a mount from a thread that could be the one serving it: file access
// goes through libuv's pool with a timeout (a hung server costs a pool thread, not this
// process), and status runs its probes in child processes.

import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, rmdirSync, statSync, chmodSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { abortConnection, findMount, unmountPath } from '../fuse/mountinfo.js';
import { BadArgumentError, WcfsError } from '../zodb/errors.js';
import { withTimeout } from '../util/async.js';
import { processAlive } from '../util/proc.js';

export const WCFS_SHM = '/dev/shm/wcfs';
const here = path.dirname(fileURLToPath(import.meta.url));
/** bin/wcfs.js of this package. */
export const WCFS_BIN = path.resolve(here, '..', '..', 'bin', 'wcfs.js');

/** Bare paths become absolute (a relative path means nothing to another process). */
export function normalizeZurl(zurl: string): string {
  if (/^[a-z][a-z0-9+.-]*:/i.test(zurl)) return zurl;
  return path.resolve(zurl);
}

export function defaultMountpoint(zurl: string): string {
  return path.join(WCFS_SHM, createHash('sha1').update(normalizeZurl(zurl)).digest('hex'));
}

/** Create the mountpoint directory (and /dev/shm/wcfs with mode 01777 when it is ours). */
export function ensureMountpoint(mnt: string): void {
  if (path.dirname(mnt) === WCFS_SHM && !existsSync(WCFS_SHM)) {
    mkdirSync(WCFS_SHM, { recursive: true });
    chmodSync(WCFS_SHM, 0o1777);
  }
  mkdirSync(mnt, { recursive: true });
}

export type ServerState = { state: 'running'; zurl: string } | { state: 'absent' } | { state: 'crashed'; errno: string };

const DEAD = new Set(['ENOTCONN', 'ECONNABORTED']);

const stuck = (what: string, ms: number) => () => new WcfsError('WCFS_ETIMEDOUT', `${what}: no answer in ${ms} ms (server stuck?)`);


/** Open <mnt>/.wcfs/zurl; the handle is kept by joiners as a liveness handle. */
async function openZurlFile(mnt: string, timeoutMs: number): Promise<{ fh: FileHandle; zurl: string } | ServerState> {
  if (findMount(mnt) === undefined) return { state: 'absent' };
  try {
    const fh = await withTimeout(open(path.join(mnt, '.wcfs', 'zurl'), 'r'), timeoutMs, stuck(`${mnt}/.wcfs/zurl`, timeoutMs));
    const zurl = (await withTimeout(fh.readFile(), timeoutMs, stuck(`${mnt}/.wcfs/zurl`, timeoutMs))).toString();
    return { fh, zurl };
  } catch (e) {
    const code = (e as { code?: string }).code ?? '';
    if (DEAD.has(code)) return { state: 'crashed', errno: code };
    if (code === 'ENOENT') return { state: 'absent' }; // another filesystem is mounted there
    throw e;
  }
}

export async function probe(mnt: string, timeoutMs = 5000): Promise<ServerState> {
  const r = await openZurlFile(mnt, timeoutMs);
  if ('fh' in r) {
    await r.fh.close().catch(() => {});
    return { state: 'running', zurl: r.zurl };
  }
  return r;
}

/** Remove a dead FUSE mount left by a crashed server. */
export async function cleanupCrashed(mnt: string): Promise<void> {
  await unmountPath(mnt).catch(() => unmountPath(mnt, { lazy: true }));
}

export interface StartOptions {
  mountpoint?: string;
  /** Extra `wcfs serve` options, e.g. ['--pintimeout', '3']. */
  args?: string[];
  timeoutMs?: number;
  /** Server log file [<mountpoint>.log]. */
  logFile?: string;
}

export interface Started {
  pid: number;
  mountpoint: string;
  logFile: string;
}

/** Spawn `wcfs serve` in the background and wait until it answers (§4.3 start). */
export async function start(zurl: string, opts: StartOptions = {}): Promise<Started> {
  const mnt = opts.mountpoint ?? defaultMountpoint(zurl);
  const st = await probe(mnt);
  if (st.state === 'running') throw new WcfsError('WCFS_ERUNNING', `wcfs: start ${zurl}: already running at ${mnt}`);
  if (st.state === 'crashed') await cleanupCrashed(mnt);
  ensureMountpoint(mnt);
  const logFile = opts.logFile ?? `${mnt}.log`;
  const logFd = openSync(logFile, 'a');
  const args = (process.env.WCFS_SERVE_OPTIONS ?? '').split(/\s+/).filter(Boolean).concat(opts.args ?? []);
  const child = spawn(process.execPath, [WCFS_BIN, 'serve', ...args, zurl, mnt], {
    detached: true,
    stdio: ['ignore', logFd, logFd],
  });
  closeSync(logFd);
  let exited: string | undefined;
  child.on('exit', (code, sig) => (exited = sig ? `killed by ${sig}` : `exited with ${code}`));
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
  try {
    for (;;) {
      if (exited !== undefined) throw new WcfsError('WCFS_ESTART', `wcfs: start ${zurl}: server ${exited} (log: ${logFile}): ${tail(logFile)}`);
      const s = await probe(mnt, 2000).catch(() => ({ state: 'absent' }) as ServerState);
      if (s.state === 'running') {
        if (s.zurl !== zurl) throw new WcfsError('WCFS_ESTART', `wcfs: start ${zurl}: ${mnt} serves ${s.zurl}`);
        break;
      }
      if (Date.now() > deadline) throw new WcfsError('WCFS_ESTART', `wcfs: start ${zurl}: server did not come up (log: ${logFile})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (e) {
    if (exited === undefined) child.kill('SIGKILL');
    throw e;
  }
  child.unref();
  return { pid: child.pid!, mountpoint: mnt, logFile };
}

function tail(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-3).join(' | ');
  } catch {
    return '';
  }
}

/** A joined server: keeps <mnt>/.wcfs/zurl open while in use. */
export class WcfsHandle {
  private refs = 1;
  constructor(
    readonly zurl: string,
    readonly mountpoint: string,
    private fh: FileHandle | undefined,
  ) {}
  ref(): this {
    this.refs++;
    return this;
  }
  async close(): Promise<void> {
    if (--this.refs > 0) return;
    registry.delete(this.mountpoint);
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close();
  }
}

const registry = new Map<string, WcfsHandle>();

/**
 * Find the server of zurl, or start one (autostart, default: $WENDELIN_CORE_WCFS_AUTOSTART
 * or yes). A crashed server's dead mount is cleaned up first. Joining again in the same
 * process returns the same handle.
 */
export async function join(zurl: string, opts: { autostart?: boolean; mountpoint?: string; args?: string[] } = {}): Promise<WcfsHandle> {
  const mnt = opts.mountpoint ?? defaultMountpoint(zurl);
  const have = registry.get(mnt);
  if (have !== undefined) return have.ref();
  let autostart = opts.autostart;
  if (autostart === undefined) {
    const env = (process.env.WENDELIN_CORE_WCFS_AUTOSTART ?? 'yes').toLowerCase();
    if (env !== 'yes' && env !== 'no') throw new BadArgumentError(`$WENDELIN_CORE_WCFS_AUTOSTART=${env}: want yes or no`);
    autostart = env === 'yes';
  }
  let r = await openZurlFile(mnt, 5000);
  if (!('fh' in r)) {
    if (!autostart) throw new WcfsError('WCFS_ENOTRUNNING', `wcfs: join ${zurl}: server not running`);
    await start(zurl, { mountpoint: mnt, args: ['--auto-exit', ...(opts.args ?? [])] });
    r = await openZurlFile(mnt, 5000);
    if (!('fh' in r)) throw new WcfsError('WCFS_ESTART', `wcfs: join ${zurl}: server started but not answering (${r.state})`);
  }
  if (r.zurl !== zurl) {
    await r.fh.close();
    throw new WcfsError('WCFS_EMISMATCH', `wcfs: join ${zurl}: ${mnt} serves ${r.zurl}`);
  }
  const h = new WcfsHandle(zurl, mnt, r.fh);
  registry.set(mnt, h);
  return h;
}

/** Resolve a zurl-or-mountpoint argument to a mountpoint. */
export function resolveTarget(target: string): string {
  const m = path.resolve(target);
  if (findMount(m) !== undefined || (existsSync(m) && isDir(m))) return m;
  return defaultMountpoint(target);
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** Pids of `wcfs serve … <mnt>` processes (argv ends with the mountpoint, holds /dev/fuse). */
export function findServerPids(mnt: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'latin1').split('\0').filter(Boolean);
      if (argv[argv.length - 1] !== mnt || !argv.includes('serve') || !argv.some((a) => a.endsWith('wcfs.js') || a.endsWith('/wcfs'))) continue;
      const fds = readdirSync(`/proc/${d}/fd`);
      if (fds.some((fd) => safeReadlink(`/proc/${d}/fd/${fd}`) === '/dev/fuse')) out.push(Number(d));
    } catch {
      /* process went away */
    }
  }
  return out;
}

function safeReadlink(p: string): string {
  try {
    return readlinkSync(p);
  } catch {
    return '';
  }
}


async function waitGone(pids: number[], ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!pids.some(processAlive)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !pids.some(processAlive);
}

/**
 * Robust stop (§4.4): unmount; if that fails: SIGTERM, FUSE abort, SIGKILL; a last unmount
 * (lazy if needed); remove the mountpoint directory. Returns what it did, for the log.
 */
export async function stop(target: string, opts: { timeoutMs?: number; log?: (s: string) => void } = {}): Promise<string[]> {
  const mnt = resolveTarget(target);
  const budget = opts.timeoutMs ?? 25_000;
  const done: string[] = [];
  const say = (s: string) => {
    done.push(s);
    opts.log?.(s);
  };
  const m = findMount(mnt);
  const pids = findServerPids(mnt);
  if (m === undefined && pids.length === 0) {
    say(`${mnt}: not mounted`);
    return done;
  }
  let unmounted = false;
  if (m !== undefined) {
    try {
      await unmountPath(mnt, { timeoutMs: budget * 0.2 });
      unmounted = true;
      say(`${mnt}: unmounted`);
    } catch (e) {
      say(`${mnt}: unmount failed: ${(e as Error).message}`);
    }
  }
  if (!(await waitGone(pids, unmounted ? budget * 0.2 : 0))) {
    for (const p of pids) signal(p, 'SIGTERM', say);
    if (!(await waitGone(pids, budget * 0.2)) && m !== undefined && m.major === 0) {
      await abortConnection(m.minor).then(() => say(`connection ${m.minor}: aborted`), (e) => say((e as Error).message));
    }
    if (!(await waitGone(pids, budget * 0.2))) {
      for (const p of pids) signal(p, 'SIGKILL', say);
      if (!(await waitGone(pids, budget * 0.2))) say(`server ${pids.join(',')} is still alive: probably stuck in kernel`);
    }
  }
  if (findMount(mnt) !== undefined) {
    try {
      await unmountPath(mnt, { timeoutMs: budget * 0.1 });
    } catch {
      await unmountPath(mnt, { lazy: true }).catch((e) => say(`${mnt}: lazy unmount failed: ${(e as Error).message}`));
    }
    say(`${mnt}: unmounted`);
  }
  try {
    rmdirSync(mnt);
  } catch {
    /* not ours, or busy */
  }
  return done;
}

function signal(pid: number, sig: NodeJS.Signals, say: (s: string) => void): void {
  try {
    process.kill(pid, sig);
    say(`pid ${pid}: <- ${sig}`);
  } catch {
    /* already gone */
  }
}

export interface StatusLine {
  ok: boolean;
  text: string;
}

/** Each check in a child process with a timeout, so a hung mount cannot hang us. */
export async function status(target: string, timeoutMs = 5000): Promise<StatusLine[]> {
  const mnt = resolveTarget(target);
  const out: StatusLine[] = [];
  const m = findMount(mnt);
  if (m === undefined) {
    out.push({ ok: false, text: `mount entry: ${mnt} not mounted` });
    return out;
  }
  out.push({ ok: m.fstype === 'fuse.wcfs', text: `mount entry: ${mnt} (${m.fstype}, source ${m.source})` });
  const pids = findServerPids(mnt);
  out.push({ ok: pids.length === 1, text: pids.length ? `server process: pid ${pids.join(',')}` : 'server process: not found' });
  const probeIn = (what: string, code: string) =>
    new Promise<StatusLine>((resolve) => {
      execFile(process.execPath, ['-e', code, mnt], { timeout: timeoutMs }, (err, stdout, stderr) => {
        if (err) resolve({ ok: false, text: `${what}: ${err.killed ? `stuck (no answer in ${timeoutMs} ms)` : (String(stderr).trim() || err.message)}` });
        else resolve({ ok: true, text: `${what}: ${String(stdout).trim()}` });
      });
    });
  out.push(await probeIn('stat', `const s=require('fs').statSync(process.argv[1]); process.stdout.write('dev '+s.dev)`));
  const z = await probeIn('.wcfs/zurl', `process.stdout.write(require('fs').readFileSync(process.argv[1]+'/.wcfs/zurl','utf8'))`);
  if (z.ok && m.source !== z.text.slice('.wcfs/zurl: '.length)) z.ok = false;
  out.push(z);
  out.push(await probeIn('.wcfs/stats', `process.stdout.write(require('fs').readFileSync(process.argv[1]+'/.wcfs/stats','utf8').trim().replace(/\\s*\\n/g,', '))`));
  return out;
}
