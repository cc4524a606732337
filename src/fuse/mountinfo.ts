// Mount-table and connection helpers that never touch a FUSE mount itself: they read
// /proc/self/mountinfo (procfs answers without asking the FUSE server), write the fusectl
// abort file (sysfs) and run fusermount3/umount as child processes. So they are safe to use
// from the JS thread of the process serving the mount (see session.ts "self-access").
//
// Connection number: a FUSE mount's st_dev is (0, N) and its control files are
// /sys/fs/fuse/connections/N/{abort,waiting,max_background,congestion_threshold}. N is taken
// from mountinfo's "major:minor" field rather than stat(mountpoint): stat would send GETATTR
// to the very server asking.

import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { MountError } from './errors.js';

export const FUSECTL_DIR = '/sys/fs/fuse/connections';

export interface MountEntry {
  id: number;
  parent: number;
  major: number;
  minor: number;
  root: string;
  mountpoint: string;
  fstype: string; // e.g. fuse.wcfs
  source: string; // fsname
  superOptions: string; // e.g. rw,user_id=0,group_id=0
}

const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export function readMountinfo(file = '/proc/self/mountinfo'): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (sep < 0) continue;
    const [major, minor] = f[2]!.split(':').map(Number);
    out.push({
      id: Number(f[0]),
      parent: Number(f[1]),
      major: major!,
      minor: minor!,
      root: unescape(f[3]!),
      mountpoint: unescape(f[4]!),
      fstype: f[sep + 1]!,
      source: unescape(f[sep + 2] ?? ''),
      superOptions: f[sep + 3] ?? '',
    });
  }
  return out;
}

/** The topmost mount at `mountpoint` (an absolute, resolved path), if any. */
export function findMount(mountpoint: string): MountEntry | undefined {
  let found: MountEntry | undefined;
  for (const m of readMountinfo()) if (m.mountpoint === mountpoint) found = m;
  return found;
}

/**
 * The uid that mounted a FUSE filesystem (its `user_id=` super option: the uid allowed to
 * access it without allow_other), or undefined when the entry has none (not FUSE).
 */
export function fuseOwner(m: MountEntry): number | undefined {
  const o = /(?:^|,)user_id=(\d+)(?:,|$)/.exec(m.superOptions);
  return o ? Number(o[1]) : undefined;
}

/** Whether FUSE connection N (see above) is still mounted at `mountpoint`. */
export function isFuseMounted(mountpoint: string, connectionId: number): boolean {
  const m = findMount(mountpoint);
  return m !== undefined && m.major === 0 && m.minor === connectionId && m.fstype.startsWith('fuse');
}

export function fusectlMounted(): boolean {
  return readMountinfo().some((m) => m.mountpoint === FUSECTL_DIR && m.fstype === 'fusectl');
}

/**
 * Aborts FUSE connection N: every pending and future request fails (ECONNABORTED, then
 * ENOTCONN), the server's loop ends; the dead mount stays until unmounted. Needs fusectl
 * mounted (`mount -t fusectl fusectl /sys/fs/fuse/connections`).
 */
export async function abortConnection(connectionId: number): Promise<void> {
  try {
    await writeFile(`${FUSECTL_DIR}/${connectionId}/abort`, '1');
  } catch (e) {
    const hint = fusectlMounted() ? '' : ' (fusectl is not mounted)';
    throw new MountError(`abort FUSE connection ${connectionId}${hint}: ${(e as Error).message}`, { cause: e });
  }
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ err: (Error & { code?: unknown }) | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs }, (err, _stdout, stderr) => resolve({ err, stderr: String(stderr).trim() }));
  });
}

/**
 * Unmounts with `fusermount3 -u [-z]` (falls back to `umount [-l]` when fusermount3 is not
 * installed). Runs as a child process: never blocks this process' JS thread on the mount.
 */
export async function unmountPath(mountpoint: string, opts: { lazy?: boolean; timeoutMs?: number } = {}): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  let r = await run('fusermount3', ['-u', ...(opts.lazy ? ['-z'] : []), '--', mountpoint], timeoutMs);
  if (r.err && r.err.code === 'ENOENT') r = await run('umount', [...(opts.lazy ? ['-l'] : []), '--', mountpoint], timeoutMs);
  if (r.err) throw new MountError(`unmount ${mountpoint}: ${r.stderr || r.err.message}`, { cause: r.err });
}
