// Harness for tests of the wcfs server: `wcfs serve` runs in a child process (as users run
// it), so this test process is an ordinary client of the mount and may use async fs calls on
// it. Every server started here is taken down in teardown — stop via SIGTERM, then FUSE
// abort through fusectl, SIGKILL, and a (lazy) unmount — and its temp dir removed.

import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { abortConnection, findMount, unmountPath } from '../../src/fuse/mountinfo.js';
import { requireFuse, sleep, withTimeout } from './mount.js';
import { repoRoot } from './paths.js';

export const wcfsBin = path.join(repoRoot, 'bin', 'wcfs.js');

export interface TestServer {
  dir: string;
  mnt: string;
  zurl: string;
  proc: ChildProcess;
  /** The FUSE connection (fusectl minor) of the mount, once up. */
  minor?: number;
  /** Everything the server wrote to stderr so far. */
  stderr(): string;
  /** Resolves with the exit code (or signal) when the server process ends. */
  exited: Promise<number | string>;
  at(rel: string): string;
  /** Current head/at as text. */
  head(): Promise<string>;
  /** Wait until head/at == tid (16-hex). */
  waitHead(tid: string, ms?: number): Promise<void>;
  stop(): Promise<void>;
}

const live = new Set<TestServer>();

/** A fresh temp dir; `copy` files (fixtures) are copied into it. */
export function tmpDir(prefix = 'wcfs-srv-'): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function copyInto(dir: string, src: string, name = path.basename(src)): string {
  const dst = path.join(dir, name);
  copyFileSync(src, dst);
  if (existsSync(src + '.index')) copyFileSync(src + '.index', dst + '.index');
  return dst;
}

/** Start `wcfs serve <zurl> <dir>/mnt` and wait until it answers. */
export async function startServer(zurl: string, opts: { dir?: string; args?: string[]; timeoutMs?: number } = {}): Promise<TestServer> {
  await requireFuse();
  const dir = opts.dir ?? tmpDir();
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt, { recursive: true });
  const proc = spawn(process.execPath, [wcfsBin, 'serve', '--poll-ms', '50', ...(opts.args ?? []), zurl, mnt], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | string>((resolve) => proc.on('exit', (code, sig) => resolve(sig ?? code ?? -1)));
  const srv: TestServer = {
    dir,
    mnt,
    zurl,
    proc,
    exited,
    stderr: () => err,
    at: (rel) => path.join(mnt, rel),
    head: async () => (await readFile(path.join(mnt, 'head', 'at'))).toString(),
    waitHead: async (tid, ms = 10_000) => {
      const t0 = Date.now();
      for (;;) {
        const h = await srv.head();
        if (h >= tid) {
          if (h !== tid) throw new Error(`head moved past ${tid}: ${h}`);
          return;
        }
        if (Date.now() - t0 > ms) throw new Error(`head/at stays ${h}, want ${tid}`);
        await sleep(10);
      }
    },
    stop: () => stopServer(srv),
  };
  live.add(srv);
  const t0 = Date.now();
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`wcfs serve exited: ${err}`);
    const m = findMount(mnt);
    if (m !== undefined) {
      try {
        const z = await withTimeout(readFile(path.join(mnt, '.wcfs', 'zurl')), 5000, '.wcfs/zurl');
        srv.minor = m.minor;
        if (z.toString() === zurl || z.toString() === path.resolve(zurl)) break;
      } catch {
        /* not yet */
      }
    }
    if (Date.now() - t0 > (opts.timeoutMs ?? 15_000)) {
      await stopServer(srv);
      throw new Error(`wcfs serve did not come up: ${err}`);
    }
    await sleep(20);
  }
  return srv;
}

async function stopServer(srv: TestServer): Promise<void> {
  if (!live.has(srv)) return;
  live.delete(srv);
  const { proc, mnt } = srv;
  const running = () => proc.exitCode === null && proc.signalCode === null;
  if (running()) {
    proc.kill('SIGTERM');
    await Promise.race([srv.exited, sleep(3000)]);
  }
  // A server that does not exit on SIGTERM is stuck: abort its connection, even when the
  // mount already left mountinfo (an unmount stuck behind the kernel's requests keeps the
  // connection, and everyone waiting on it, alive).
  const m = findMount(mnt);
  const minor = m?.minor ?? srv.minor;
  if (running() && minor !== undefined) {
    await abortConnection(minor).catch(() => {});
    await Promise.race([srv.exited, sleep(2000)]);
  }
  if (running()) {
    proc.kill('SIGKILL');
    await Promise.race([srv.exited, sleep(2000)]);
  }
  if (findMount(mnt) !== undefined) {
    const m2 = findMount(mnt)!;
    await unmountPath(mnt).catch(async () => {
      await abortConnection(m2.minor).catch(() => {});
      await unmountPath(mnt, { lazy: true }).catch(() => {});
    });
  }
  if (findMount(mnt) === undefined) rmSync(srv.dir, { recursive: true, force: true });
}

/** Teardown for afterEach/afterAll: nothing may stay mounted or running. */
export async function stopAllServers(): Promise<void> {
  for (const s of [...live]) await stopServer(s);
}

export function readJSON<T>(p: string): T {
  return JSON.parse(readFileSync(p, 'utf8')) as T;
}
