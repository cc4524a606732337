// Test harness for real FUSE mounts: mount a FileSystem in a fresh temp dir with a timeout,
// and ALWAYS take it down again (unmount → abort via fusectl → fusermount3 -u / umount -l),
// removing the dir only once nothing is mounted there. FUSE being unavailable is a failure,
// never a skip.
//
// Clients run as child processes (run(), spawnClient()): the test process serves the mount
// on its JS thread and must never touch it itself (src/fuse/session.ts "self-access").

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FuseSession, type MountOptions } from '../../src/fuse/session.js';
import type { FileSystem } from '../../src/fuse/fs.js';
import { abortConnection, findMount, FUSECTL_DIR, fusectlMounted, readMountinfo, unmountPath, type MountEntry } from '../../src/fuse/mountinfo.js';
import { sleep, withTimeout } from '../../src/util/async.js';
import { repoRoot } from './paths.js';

export const TMP_PREFIX = path.join(os.tmpdir(), 'wcfs-fuse-');
export const clientScript = path.join(repoRoot, 'test', 'helpers', 'fuse-client.mjs');

export interface TestMount {
  dir: string;
  mnt: string;
  session: FuseSession;
  /** Absolute path of `rel` inside the mount. */
  at(rel: string): string;
}

const live = new Set<TestMount>();
const children = new Set<ChildProcess>();

export { sleep, withTimeout };

/** Polls `cond` every 10 ms until true; fails after `ms`. */
export async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timeout after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Throws (loudly) when this machine can't run FUSE tests. Mounts fusectl when root. */
export async function requireFuse(): Promise<void> {
  if (!existsSync('/dev/fuse')) throw new Error('FUSE unavailable: /dev/fuse does not exist (modprobe fuse / run the container with --device /dev/fuse)');
  if (!fusectlMounted() && process.getuid?.() === 0) {
    await new Promise<void>((resolve) => execFile('mount', ['-t', 'fusectl', 'fusectl', FUSECTL_DIR], () => resolve()));
  }
}

export async function mountTestFs(fs: FileSystem, opts: MountOptions = {}, timeoutMs = 10_000): Promise<TestMount> {
  await requireFuse();
  const dir = mkdtempSync(TMP_PREFIX);
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt);
  let session: FuseSession;
  try {
    session = await withTimeout(FuseSession.mount(mnt, fs, { fsname: 'wcfstest', subtype: 'wcfstest', ...opts }), timeoutMs, `mount ${mnt}`);
  } catch (e) {
    if (!findMount(mnt)) rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const m: TestMount = { dir, mnt: session.mountpoint, session, at: (rel) => path.join(session.mountpoint, rel) };
  live.add(m);
  return m;
}

/**
 * Takes the mount down whatever state it is in, then removes the temp dir. Throws if the
 * mount could not be removed (the dir is then left alone: rm would walk into the mount).
 */
export async function teardownMount(m: TestMount): Promise<void> {
  live.delete(m);
  const { session, mnt } = m;
  const mounted = () => findMount(mnt) !== undefined;
  const steps: string[] = [];
  if (!session.isClosed || mounted()) {
    try {
      await withTimeout(session.unmount({ timeoutMs: 3000 }), 4000, 'unmount');
    } catch (e) {
      steps.push(`unmount: ${(e as Error).message}`);
    }
  }
  if (!session.isClosed) {
    await sleep(200);
    if (!session.isClosed) {
      try {
        await abortConnection(session.connectionId);
      } catch (e) {
        steps.push(`abort: ${(e as Error).message}`);
      }
    }
  }
  if (mounted()) {
    try {
      await unmountPath(mnt, { lazy: true, timeoutMs: 3000 });
    } catch (e) {
      steps.push(`lazy unmount: ${(e as Error).message}`);
    }
  }
  try {
    await withTimeout(session.closed, 3000, 'session end');
  } catch (e) {
    steps.push((e as Error).message);
  }
  if (mounted()) throw new Error(`teardown ${mnt}: still mounted (${steps.join('; ')})`);
  rmSync(m.dir, { recursive: true, force: true });
  if (!session.isClosed) throw new Error(`teardown ${mnt}: session did not end (${steps.join('; ')})`);
}

export async function withMount<T>(fs: FileSystem, opts: MountOptions, body: (m: TestMount) => Promise<T>): Promise<T> {
  const m = await mountTestFs(fs, opts);
  try {
    return await body(m);
  } finally {
    await teardownMount(m);
  }
}

/** Tears down whatever a failed test left mounted; kills leftover children. For afterEach. */
export async function teardownAll(): Promise<void> {
  const killed = liveChildren();
  for (const c of killed) c.kill('SIGKILL');
  // A client blocked on a held READ only dies once that READ is interrupted/answered —
  // which teardown below (unmount/abort) guarantees; wait for both.
  const mounts = [...live];
  live.clear();
  const errors: unknown[] = [];
  for (const m of mounts) await teardownMount(m).catch((e) => errors.push(e));
  await waitFor(() => killed.every((c) => c.exitCode !== null || c.signalCode !== null), 5000, 'killed clients to exit');
  if (errors.length) throw errors[0];
}

/** Our test mounts still in the mount table (should be none after a test file). */
export function leftoverMounts(): MountEntry[] {
  return readMountinfo().filter((e) => e.mountpoint.startsWith(TMP_PREFIX));
}

/** Children spawned by run()/spawnClient() that are still running. */
export function liveChildren(): ChildProcess[] {
  return [...children].filter((c) => c.exitCode === null && c.signalCode === null);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Spawns a client process; kills it (SIGKILL) after timeoutMs. */
export function spawnClient(cmd: string, args: string[]): ChildProcess {
  const c = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(c);
  c.once('exit', () => children.delete(c));
  return c;
}

export function waitExit(c: ChildProcess, timeoutMs = 10_000): Promise<RunResult> {
  const t0 = performance.now();
  let stdout = '';
  let stderr = '';
  c.stdout?.on('data', (d) => (stdout += d));
  c.stderr?.on('data', (d) => (stderr += d));
  return new Promise((resolve) => {
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    const done = (code: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(t);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    };
    if (c.exitCode !== null || c.signalCode !== null) done(c.exitCode, c.signalCode);
    else c.once('close', done);
  });
}

export function run(cmd: string, args: string[], timeoutMs = 10_000): Promise<RunResult> {
  return waitExit(spawnClient(cmd, args), timeoutMs);
}

/** Runs fuse-client.mjs and parses its JSON lines. */
export async function client(args: string[], timeoutMs = 10_000): Promise<{ lines: any[]; r: RunResult }> {
  const r = await run(process.execPath, [clientScript, ...args], timeoutMs);
  const lines = r.stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
  return { lines, r };
}

/** Like client() but expects exit 0 and returns the last JSON line. */
export async function clientOk(args: string[], timeoutMs = 10_000): Promise<any> {
  const { lines, r } = await client(args, timeoutMs);
  if (r.code !== 0) throw new Error(`client ${args.join(' ')}: exit ${r.code ?? r.signal}: ${r.stdout}${r.stderr}`);
  return lines[lines.length - 1];
}

/** A running fuse-client.mjs: its JSON lines as they come, and its exit. */
export interface ClientProc {
  child: ChildProcess;
  lines: any[];
  /** Resolves with JSON line i (0-based) once printed. */
  line(i: number, timeoutMs?: number): Promise<any>;
  exit: Promise<RunResult>;
}

export function startClient(args: string[], timeoutMs = 20_000): ClientProc {
  const child = spawnClient(process.execPath, [clientScript, ...args]);
  const lines: any[] = [];
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    partial += d;
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(partial.slice(0, i)));
      partial = partial.slice(i + 1);
    }
  });
  const exit = waitExit(child, timeoutMs);
  const line = async (i: number, ms = 10_000) => {
    await waitFor(() => lines.length > i || child.exitCode !== null || child.signalCode !== null, ms, `client line ${i}`);
    if (lines.length <= i) throw new Error(`client ${args.join(' ')} exited without line ${i}: ${JSON.stringify(lines)}`);
    return lines[i];
  };
  return { child, lines, line, exit };
}
