// The launcher and mount registry: finding, starting, joining, stopping and checking wcfs
// servers (wcfs-server.md §4.2-§4.4). Used by the CLI (src/cli/serve.ts) and the client
// (src/client/wcfs.ts join); depends on neither, nor on the server (it runs one as a child
// process: bin/wcfs.js serve). Errors are WcfsErrors (codes in src/errors.ts): WCFS_EUNSAFE,
// WCFS_ELOG (2), WCFS_EFOREIGN, WCFS_ETIMEDOUT (3), WCFS_ERUNNING, WCFS_ESTART,
// WCFS_ENOTRUNNING, WCFS_EMISMATCH (4), and BadArgumentError.
//
// 1) mountpoint of a zurl: WCFS_SHM/<sha1 of the normalised zurl>, WCFS_SHM = /dev/shm/wcfs.
// 2) preparing a mountpoint: WCFS_SHM is shared by every user (01777, sticky like /tmp) and
//    its names are predictable, so anything in it may have been planted. Before mounting:
//      dirname(mnt) = WCFS_SHM ⇒ lstat(WCFS_SHM) is a directory (not a symlink), owned by
//                                  root or us, sticky when others may write it;
//                                lstat(mnt) is a directory (not a symlink), owned by us.
//    Then only root and we can rename or replace either path (sticky rule), so the checked
//    directory is the one mount(2) mounts on. A mountpoint elsewhere is the caller's choice
//    and only has to be a directory. The server log (<mnt>.log by default, also in WCFS_SHM)
//    is opened O_NOFOLLOW|O_NONBLOCK and must be a regular file of ours with one link.
//    ("Us" = process.getuid(): the uid libfuse records as the mount's user_id.)
//    A mount shared with a group (serve --share-with) is reached by its members through the
//    directories above it: serve warns about any of them the group cannot search, and
//    changes none (WCFS_SHM is 01777 already; a mountpoint's own mode is hidden by the mount).
// 3) recognising our server: a mount at mnt is accepted only when
//      mountinfo: fstype = fuse.wcfs ∧ user_id = us ∧ source = zurl, and .wcfs/zurl = zurl.
//    Anything else mounted there is an error (WCFS_EFOREIGN), never "absent" or "crashed".
//    join also accepts user_id = 0: root's server, shared with a group (serve --share-with)
//    — root cannot be an attacker of ours; another user's mount is still refused.
//    Ours and <mnt>/.wcfs/zurl answers: "running"; ours but ENOTCONN/ECONNABORTED: "crashed"
//    (the dead mount is cleaned up before starting anew); no mount entry: "absent".
// 4) start / join  5) stop  6) status
//
// Nothing here touches a mount from a thread that could be the one serving it: file access
// goes through libuv's pool with a timeout (a hung server costs a pool thread, not this
// process), and status runs its probes in child processes it does not wait for once they
// time out (a child stuck in a FUSE request of a stopped server may not even be killable).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  constants as fsc,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmdirSync,
  statSync,
  type Stats,
} from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BadArgumentError, isCode, WcfsError, type WcfsCode } from '../errors.js';
import { abortConnection, findMount, fuseOwner, unmountPath, type MountEntry } from '../fuse/mountinfo.js';
import { sleep, withTimeout } from '../util/async.js';
import { processAlive } from '../util/proc.js';
import { inSingleExecutable } from '../util/sea.js';

export const WCFS_SHM = '/dev/shm/wcfs';
const here = path.dirname(fileURLToPath(import.meta.url));
/** bin/wcfs.js of this package. */
export const WCFS_BIN = path.resolve(here, '..', '..', 'bin', 'wcfs.js');
/** How to run `wcfs …` again: node bin/wcfs.js, or the single executable itself (build/wcfs). */
const selfArgv = (): string[] => (inSingleExecutable() ? [] : [WCFS_BIN]);

// ---- 1) mountpoint of a zurl ----

const hasScheme = (zurl: string) => /^[a-z][a-z0-9+.-]*:/i.test(zurl);

/** Bare paths become absolute (a relative path means nothing to another process). */
export function normalizeZurl(zurl: string): string {
  if (hasScheme(zurl)) return zurl;
  return path.resolve(zurl);
}

/**
 * What the default mountpoint hashes: the normalized zurl, with spellings of one database made
 * equal — zeo://: the default `?storage=1` dropped and the host lowercased — so they share one
 * mount (as upstream's zurl_normalize_main does). The server still shows the zurl as given.
 */
export function mountKey(zurl: string): string {
  const z = normalizeZurl(zurl);
  if (!/^zeo:/i.test(z)) return z;
  try {
    const u = new URL(z);
    if (u.searchParams.get('storage') === '1' && [...u.searchParams.keys()].length === 1) u.search = '';
    return `zeo://${u.host.toLowerCase()}${u.pathname === '/' ? '' : u.pathname}${u.search}`;
  } catch {
    return z; // the driver reports the bad URL
  }
}

export function defaultMountpoint(zurl: string): string {
  return path.join(WCFS_SHM, createHash('sha1').update(mountKey(zurl)).digest('hex'));
}

// ---- 2) preparing a mountpoint ----

/** Our uid: what libfuse records as a mount's user_id (see 2). */
export const ourUid = (): number => process.getuid?.() ?? 0;

const unsafe = (msg: string) => new WcfsError('WCFS_EUNSAFE', msg);

function lstatOrUndefined(p: string): Stats | undefined {
  try {
    return lstatSync(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

function describeSymlink(p: string, st: Stats): string {
  return `${p}: is a symlink (to ${safeReadlink(p) || '?'}, owned by uid ${st.uid})`;
}

/**
 * Create (01777) or check the shared directory `dir` (2): not a symlink, a directory, owned
 * by root or uid, sticky when group or others may write it. One of uid's that is not 01777 is
 * fixed up (upstream does the same), so other users can create their mountpoints in it.
 */
function secureSharedDir(dir: string, uid: number): void {
  let st = lstatOrUndefined(dir);
  if (st === undefined) {
    try {
      mkdirSync(dir, 0o1777);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    st = lstatSync(dir);
  }
  if (st.isSymbolicLink()) throw unsafe(`${describeSymlink(dir, st)}: refusing to use it; remove it`);
  if (!st.isDirectory()) throw unsafe(`${dir}: not a directory; remove it`);
  if (st.uid !== uid && st.uid !== 0) {
    throw unsafe(`${dir}: owned by uid ${st.uid}, not by root or us (uid ${uid}): that user could redirect our mount; remove it`);
  }
  if (st.uid === uid) {
    // lstat said: a directory of ours; only we (or root) can replace it in its sticky parent
    if ((st.mode & 0o7777) !== 0o1777) chmodSync(dir, 0o1777);
  } else if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
    throw unsafe(`${dir}: writable by others but not sticky (mode ${(st.mode & 0o7777).toString(8)}): anyone could redirect our mount`);
  }
}

/** mkdir `mnt` if missing; it must then be a real directory (not a symlink) owned by uid. Returns whether it was created. */
function secureMountDir(mnt: string, uid: number): boolean {
  let created = true;
  try {
    mkdirSync(mnt, 0o755);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    created = false;
  }
  const st = lstatSync(mnt);
  if (st.isSymbolicLink()) throw unsafe(`${describeSymlink(mnt, st)}: refusing to mount there; remove it`);
  if (!st.isDirectory()) throw unsafe(`${mnt}: not a directory: refusing to mount there; remove it`);
  if (st.uid !== uid) throw unsafe(`${mnt}: owned by uid ${st.uid}, not by us (uid ${uid}): refusing to mount there; remove it`);
  return created;
}

/**
 * Make `mnt` ready to be mounted on (2). In the shared directory `shared` [WCFS_SHM] the
 * rules of 2 apply; elsewhere mnt is created if missing and must be a directory. Returns
 * whether mnt was created, so a caller whose mount then fails can remove it again.
 */
export function prepareMountpoint(mnt: string, opts: { shared?: string; uid?: number } = {}): boolean {
  const shared = opts.shared ?? WCFS_SHM;
  const uid = opts.uid ?? ourUid();
  if (path.dirname(mnt) !== shared) {
    const created = mkdirSync(mnt, { recursive: true }) !== undefined;
    if (!statSync(mnt).isDirectory()) throw new BadArgumentError(`${mnt}: not a directory`);
    return created;
  }
  for (let attempt = 1; ; attempt++) {
    try {
      secureSharedDir(shared, uid);
      return secureMountDir(mnt, uid);
    } catch (e) {
      // someone removed the (empty) shared directory between the two steps: start over
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt === 3) throw e;
    }
  }
}

/** rmdir a mountpoint we created, unless something got mounted there meanwhile. */
export function removeMountpoint(mnt: string): void {
  if (findMount(mnt) !== undefined) return;
  try {
    rmdirSync(mnt);
  } catch {
    /* not empty, or gone */
  }
}

/**
 * The directories above `mnt` that members of group `gid` cannot search (mode bits only:
 * o+x, or g+x when the directory's group is gid). serve --share-with warns about them.
 */
export function unsearchableFor(mnt: string, gid: number): string[] {
  const out: string[] = [];
  for (let d = path.dirname(mnt); ; d = path.dirname(d)) {
    try {
      const st = statSync(d);
      if ((st.mode & 0o001) === 0 && !(st.gid === gid && (st.mode & 0o010) !== 0)) out.push(d);
    } catch {
      out.push(d);
    }
    if (d === path.dirname(d)) return out;
  }
}

/**
 * Open the server log for appending (2): never through a symlink (O_NOFOLLOW), never
 * blocking on a FIFO (O_NONBLOCK; no effect on a regular file), and only a regular file
 * owned by uid with one link. Returns the fd.
 */
export function openLogFile(file: string, uid = ourUid()): number {
  // lstat first for a clear message (open(O_CREAT|O_NOFOLLOW) of another user's symlink in a
  // sticky dir fails with EACCES, not ELOOP); O_NOFOLLOW then closes the race.
  const pre = lstatOrUndefined(file);
  if (pre?.isSymbolicLink()) throw unsafe(`log ${describeSymlink(file, pre)}: refusing to write through it; remove it`);
  let fd: number;
  try {
    fd = openSync(file, fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | fsc.O_NOFOLLOW | fsc.O_NONBLOCK, 0o644);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw unsafe(`log ${file}: is a symlink: refusing to write through it; remove it`);
    throw new WcfsError('WCFS_ELOG', `log ${file}: ${(e as Error).message}`, { cause: e });
  }
  const st = fstatSync(fd);
  const bad = !st.isFile()
    ? 'not a regular file'
    : st.uid !== uid
      ? `owned by uid ${st.uid}, not by us (uid ${uid})`
      : st.nlink !== 1
        ? `has ${st.nlink} links`
        : '';
  if (bad !== '') {
    closeSync(fd);
    throw unsafe(`log ${file}: ${bad}: refusing to write to it; remove it`);
  }
  return fd;
}

// ---- 3) recognising our server ----

const foreign = (msg: string) => new WcfsError('WCFS_EFOREIGN', msg);

/** Throws WCFS_EFOREIGN unless mountinfo entry m at mnt is a wcfs mounted by uid (serving zurl, when given). */
export function checkOurMount(m: MountEntry, mnt: string, zurl: string | undefined, uid = ourUid()): void {
  if (m.fstype !== 'fuse.wcfs') throw foreign(`${mnt}: ${m.fstype} (source ${m.source}) is mounted there, not a wcfs`);
  const owner = fuseOwner(m);
  if (owner !== uid) throw foreign(`${mnt}: the wcfs mounted there belongs to uid ${owner ?? '?'}, not to us (uid ${uid}): refusing to use it`);
  if (zurl !== undefined && m.source !== zurl) throw foreign(`${mnt}: the wcfs mounted there serves ${m.source}, not ${zurl}`);
}

export type ServerState = { state: 'running'; zurl: string } | { state: 'absent' } | { state: 'crashed'; errno: string };

const DEAD = new Set(['ENOTCONN', 'ECONNABORTED']);

const stuck = (what: string, ms: number) => () => new WcfsError('WCFS_ETIMEDOUT', `${what}: no answer in ${ms} ms (server stuck?)`);

/**
 * Open <mnt>/.wcfs/zurl of our server there (3); the handle is kept by joiners as a liveness
 * handle. zurl, when given, must be what the mount entry says it serves.
 */
async function openZurlFile(mnt: string, timeoutMs: number, zurl?: string, joining = false): Promise<{ fh: FileHandle; zurl: string } | ServerState> {
  const m = findMount(mnt);
  if (m === undefined) return { state: 'absent' };
  checkOurMount(m, mnt, zurl, joining && fuseOwner(m) === 0 ? 0 : ourUid()); // joining: root's shared server too (3)
  const zf = path.join(mnt, '.wcfs', 'zurl');
  try {
    const fh = await withTimeout(open(zf, 'r'), timeoutMs, stuck(zf, timeoutMs));
    const got = (await withTimeout(fh.readFile(), timeoutMs, stuck(zf, timeoutMs))).toString();
    return { fh, zurl: got };
  } catch (e) {
    const code = (e as { code?: string }).code ?? '';
    if (DEAD.has(code)) return { state: 'crashed', errno: code };
    if (code === 'ENOENT') throw foreign(`${mnt}: the fuse.wcfs mounted there has no .wcfs/zurl: not a wcfs server`);
    throw e;
  }
}

/** State of the server at mnt (3); throws WCFS_EFOREIGN when something else is mounted there. */
export async function probe(mnt: string, timeoutMs = 5000, zurl?: string): Promise<ServerState> {
  const r = await openZurlFile(mnt, timeoutMs, zurl);
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

// ---- 4) start / join ----

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

/** Errors of the mountpoint checks, which start prefixes with its context. */
const CTX_CODES: readonly WcfsCode[] = ['WCFS_EUNSAFE', 'WCFS_EFOREIGN', 'WCFS_ELOG'];

/** Spawn `wcfs serve` in the background and wait until it answers (wcfs-server.md §4.3 start). */
export async function start(zurlArg: string, opts: StartOptions = {}): Promise<Started> {
  const zurl = normalizeZurl(zurlArg);
  const mnt = opts.mountpoint ?? defaultMountpoint(zurl);
  const ctx = (e: unknown) => (e instanceof WcfsError && CTX_CODES.includes(e.code) ? new WcfsError(e.code, `start ${zurl}: ${e.message}`, { cause: e }) : e);
  const st = await probe(mnt, 5000, zurl).catch((e) => Promise.reject(ctx(e)));
  if (st.state === 'running') throw new WcfsError('WCFS_ERUNNING', `wcfs: start ${zurl}: already running at ${mnt}`);
  if (st.state === 'crashed') await cleanupCrashed(mnt);
  let created = false;
  let logFd: number;
  const logFile = opts.logFile ?? `${mnt}.log`;
  try {
    created = prepareMountpoint(mnt);
    logFd = openLogFile(logFile);
  } catch (e) {
    if (created) removeMountpoint(mnt);
    throw ctx(e);
  }
  const args = (process.env.WCFS_SERVE_OPTIONS ?? '')
    .split(/\s+/)
    .filter(Boolean)
    .concat(opts.args ?? []);
  const child = spawn(process.execPath, [...selfArgv(), 'serve', ...args, zurl, mnt], {
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
      const s = await probe(mnt, 2000, zurl).catch((e) => {
        if (isCode(e, 'WCFS_EFOREIGN')) throw ctx(e);
        return { state: 'absent' } as ServerState; // not answering yet
      });
      if (s.state === 'running') {
        if (s.zurl !== zurl) throw new WcfsError('WCFS_ESTART', `wcfs: start ${zurl}: ${mnt} serves ${s.zurl}`);
        break;
      }
      if (Date.now() > deadline) throw new WcfsError('WCFS_ESTART', `wcfs: start ${zurl}: server did not come up (log: ${logFile})`);
      await sleep(100);
    }
  } catch (e) {
    if (exited === undefined) child.kill('SIGKILL');
    if (created) removeMountpoint(mnt);
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
 * process returns the same handle. A server started here gets `--authkeyfile` when
 * opts.authKeyFile is given (the client authenticates: src/client/wcfs.ts).
 */
export async function join(
  zurlArg: string,
  opts: { autostart?: boolean; mountpoint?: string; args?: string[]; authKeyFile?: string } = {},
): Promise<WcfsHandle> {
  const zurl = normalizeZurl(zurlArg);
  const mnt = opts.mountpoint ?? defaultMountpoint(zurl);
  const have = registry.get(mnt);
  if (have !== undefined) return have.ref();
  let autostart = opts.autostart;
  if (autostart === undefined) {
    const env = (process.env.WENDELIN_CORE_WCFS_AUTOSTART ?? 'yes').toLowerCase();
    if (env !== 'yes' && env !== 'no') throw new BadArgumentError(`$WENDELIN_CORE_WCFS_AUTOSTART=${env}: want yes or no`);
    autostart = env === 'yes';
  }
  const openOurs = () =>
    openZurlFile(mnt, 5000, zurl, true).catch((e) => {
      throw e instanceof WcfsError && isCode(e, 'WCFS_EFOREIGN') ? new WcfsError(e.code, `wcfs: join ${zurl}: ${e.message}`, { cause: e }) : e;
    });
  let r = await openOurs();
  if (!('fh' in r)) {
    if (!autostart) throw new WcfsError('WCFS_ENOTRUNNING', `wcfs: join ${zurl}: server not running`);
    const auth = opts.authKeyFile === undefined ? [] : ['--authkeyfile', path.resolve(opts.authKeyFile)];
    await start(zurl, { mountpoint: mnt, args: ['--auto-exit', ...auth, ...(opts.args ?? [])] });
    r = await openOurs();
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

// ---- 5) stop, 6) status ----

/** What a `wcfs stop|status <target>` argument names. */
export interface Target {
  mnt: string;
  /** Set when target was taken for a zurl (mnt is then its default mountpoint). */
  zurl?: string;
  /** A bare path that exists as neither a directory nor a file: a gone mountpoint, or a deleted database. */
  missing?: boolean;
}

/**
 * A zurl-or-mountpoint argument: a mount point or an existing directory is a mountpoint;
 * anything else a zurl. Looks at mountinfo before stat, so a hung mount cannot hang us.
 */
export function resolveTarget(target: string): Target {
  const p = path.resolve(target);
  if (findMount(p) !== undefined) return { mnt: p };
  let st: Stats | undefined;
  try {
    st = statSync(p);
  } catch {
    /* no such path */
  }
  if (st?.isDirectory()) return { mnt: p };
  return { mnt: defaultMountpoint(target), zurl: normalizeZurl(target), missing: st === undefined && !hasScheme(target) };
}

/** "<mnt>: not mounted", saying how target was understood when that is not obvious. */
function notMounted(target: string, t: Target): string {
  if (t.zurl === undefined) return `${t.mnt}: not mounted`;
  if (t.missing) return `${target}: no such file or directory: not a mountpoint, and as a zurl (mountpoint ${t.mnt}) not mounted either`;
  return `${t.zurl}: not mounted (mountpoint ${t.mnt})`;
}

/** bin/wcfs.js, or an executable named wcfs (build/wcfs). */
const isWcfsProgram = (a: string): boolean => a.endsWith('wcfs.js') || path.basename(a) === 'wcfs';

/**
 * Pids of the `wcfs serve` processes serving mnt: a wcfs CLI process holding /dev/fuse whose
 * serve arguments name mnt — the mountpoint argument resolved against the process's working
 * directory, or, without one, the default mountpoint of its zurl.
 */
export function findServerPids(mnt: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = readFileSync(`/proc/${d}/cmdline`, 'latin1').split('\0').filter(Boolean);
      const cwd = readlinkSync(`/proc/${d}/cwd`);
      const i = argv.indexOf('serve');
      const ours = i >= 0 && argv.slice(0, i).some(isWcfsProgram) && serveMountpoint(argv.slice(i + 1), cwd) === mnt;
      // upstream's command line (src/cli/upstream.ts): `wcfs [flags] [serve] [flags] <zurl> <mntpt>`
      const theirs = argv.length >= 3 && argv.slice(0, 2).some(isWcfsProgram) && path.resolve(cwd, argv[argv.length - 1]!) === mnt;
      if (!ours && !theirs) continue;
      const fds = readdirSync(`/proc/${d}/fd`);
      if (fds.some((fd) => safeReadlink(`/proc/${d}/fd/${fd}`) === '/dev/fuse')) out.push(Number(d));
    } catch {
      /* process went away */
    }
  }
  return out;
}

/** Options of `wcfs serve` that take a value (src/cli/main.ts). */
const SERVE_VALUE_OPTS = new Set(['--pintimeout', '--poll-ms', '--gc-interval', '--untrack-interval', '--authkeyfile']);

/** The mountpoint `wcfs serve <args>` run in cwd serves (undefined: not a serve command line). */
export function serveMountpoint(args: string[], cwd: string): string | undefined {
  const pos: string[] = [];
  for (let k = 0; k < args.length; k++) {
    const a = args[k]!;
    if (a === '--') {
      pos.push(...args.slice(k + 1));
      break;
    }
    if (a.startsWith('-')) {
      if (SERVE_VALUE_OPTS.has(a)) k++;
      continue;
    }
    pos.push(a);
  }
  const [zurl, mountpoint] = pos;
  if (zurl === undefined) return undefined;
  if (mountpoint !== undefined) return path.resolve(cwd, mountpoint);
  return defaultMountpoint(hasScheme(zurl) ? zurl : path.resolve(cwd, zurl));
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
    await sleep(50);
  }
  return !pids.some(processAlive);
}

/**
 * Robust stop (wcfs-server.md §4.4): unmount; if that fails: SIGTERM, FUSE abort, SIGKILL; a last unmount
 * (lazy if needed); remove the mountpoint directory. Returns what it did, for the log.
 */
export async function stop(target: string, opts: { timeoutMs?: number; log?: (s: string) => void } = {}): Promise<string[]> {
  const t = resolveTarget(target);
  const mnt = t.mnt;
  const budget = opts.timeoutMs ?? 25_000;
  const done: string[] = [];
  const say = (s: string) => {
    done.push(s);
    opts.log?.(s);
  };
  const m = findMount(mnt);
  // never unmount, signal or abort what is not a wcfs (root could do all three to anything)
  if (m !== undefined && m.fstype !== 'fuse.wcfs') throw foreign(`${mnt}: ${m.fstype} (source ${m.source}) is mounted there, not a wcfs: not stopping it`);
  const pids = findServerPids(mnt);
  if (m === undefined && pids.length === 0) {
    say(notMounted(target, t));
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
      await abortConnection(m.minor).then(
        () => say(`connection ${m.minor}: aborted`),
        (e) => say((e as Error).message),
      );
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

/**
 * status's probes, each run in a child process: `node -e` with the function's source, or in
 * the single executable (which runs no -e) `build/wcfs <PROBE_CMD> <name> <mnt>` (runProbe).
 * Self-contained: they use only their arguments.
 */
const PROBES: Record<string, (fs: typeof import('node:fs'), mnt: string) => string> = {
  stat: (fs, mnt) => 'dev ' + fs.statSync(mnt).dev,
  '.wcfs/zurl': (fs, mnt) => fs.readFileSync(mnt + '/.wcfs/zurl', 'utf8'),
  '.wcfs/stats': (fs, mnt) => {
    try {
      return fs
        .readFileSync(mnt + '/.wcfs/stats', 'utf8')
        .trim()
        .replace(/\s*\n/g, ', ');
    } catch (e) {
      // a server with --authkeyfile refuses .wcfs/stats to us (not authenticated): it answered
      if ((e as NodeJS.ErrnoException).code !== 'EACCES') throw e;
      return 'not shown: the server requires authentication (EACCES)';
    }
  },
};

/** The internal command of the single executable that runs one of PROBES (src/cli/main.ts). */
export const PROBE_CMD = '__wcfs_probe';

/** `wcfs __wcfs_probe <name> <mnt>`: one probe, its answer on stdout; a failure "Error: …" on stderr, exit 1. */
export function runProbe(args: string[]): void {
  const fn = PROBES[args[0] ?? ''];
  if (fn === undefined || args[1] === undefined) {
    process.stderr.write(`Error: ${PROBE_CMD}: want <${Object.keys(PROBES).join('|')}> <mountpoint>\n`);
    process.exitCode = 2;
    return;
  }
  try {
    process.stdout.write(fn(fs, args[1]));
  } catch (e) {
    process.stderr.write(`Error: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}

/**
 * Probe `what` (one of PROBES) in a child process. After timeoutMs it answers
 * "hung" without waiting for the child: one stuck in a FUSE request of a stopped server may
 * not die even from SIGKILL until the server answers or the connection is aborted (a request
 * the server has read is waited for uninterruptibly). The child is SIGKILLed, unreferenced
 * and its pipes closed, so it dies on its own later and never keeps this process alive.
 */
function probeIn(mnt: string, what: string, timeoutMs: number): Promise<StatusLine & { hung?: boolean }> {
  return new Promise((resolve) => {
    const argv = inSingleExecutable()
      ? [PROBE_CMD, what, mnt]
      : ['-e', `process.stdout.write((${PROBES[what]!.toString()})(require('fs'), process.argv[1]))`, mnt];
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      child.unref();
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({ ok: false, hung: true, text: `${what}: hung (no answer in ${timeoutMs} ms; probe pid ${child.pid} left behind until the server answers)` });
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ ok: false, text: `${what}: ${e.message}` });
    });
    child.on('close', (rc, sig) => {
      clearTimeout(timer);
      const why = stderr.split('\n').find((l) => /Error/.test(l)) ?? (stderr.trim() || `exited ${rc ?? sig}`);
      resolve(rc === 0 ? { ok: true, text: `${what}: ${stdout.trim()}` } : { ok: false, text: `${what}: ${why.trim()}` });
    });
  });
}

/** Each check in a child process with a timeout, so a hung mount cannot hang us (see probeIn). */
export async function status(target: string, timeoutMs = 5000): Promise<StatusLine[]> {
  const t = resolveTarget(target);
  const mnt = t.mnt;
  const out: StatusLine[] = [];
  const m = findMount(mnt);
  if (m === undefined) {
    out.push({ ok: false, text: `mount entry: ${notMounted(target, t)}` });
    return out;
  }
  out.push({ ok: m.fstype === 'fuse.wcfs', text: `mount entry: ${mnt} (${m.fstype}, source ${m.source}, uid ${fuseOwner(m) ?? '?'})` });
  const pids = findServerPids(mnt);
  out.push({ ok: pids.length === 1, text: pids.length ? `server process: pid ${pids.join(',')}` : 'server process: not found' });
  const probes = Object.keys(PROBES);
  for (const what of probes) {
    const r = await probeIn(mnt, what, timeoutMs);
    if (what === '.wcfs/zurl' && r.ok && m.source !== r.text.slice('.wcfs/zurl: '.length)) r.ok = false;
    out.push({ ok: r.ok, text: r.text });
    if (r.hung) {
      // every further probe would hang as well
      for (const rest of probes.slice(probes.indexOf(what) + 1)) out.push({ ok: false, text: `${rest}: not tried (mount hung)` });
      break;
    }
  }
  return out;
}
