// `wcfs serve | stop | status`.
//
// serve runs the server in the foreground until the filesystem is unmounted (exit 0) or it
// fails (exit 1, after switching the mount to EIO mode). SIGTERM/SIGINT unmount; if clients
// keep the mount busy the connection is aborted instead — never a hang. Before mounting, a
// mount already at the mountpoint must be our own wcfs (src/control/control.ts 3: else
// refused, or cleaned up when crashed) and the mountpoint passes the shared-dir rules
// (control.ts 2); a mountpoint serve created is removed again when the server fails to start.
// --share-with group:NAME (or group:GID) resolves the group through NSS (getent) before
// anything else: an unknown one is WCFS_ENOGROUP; the server then shares the mount with it
// (server.ts shareWithGid).

import createDebug from 'debug';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { abortConnection, findMount } from '../fuse/mountinfo.js';
import { cleanupCrashed, defaultMountpoint, normalizeZurl, prepareMountpoint, probe, removeMountpoint, status, stop } from '../control/control.js';
import { unsearchableFor } from '../control/control.js'; // --share-with
import { WcfsServer } from '../server/server.js';
import { say } from '../util/log.js';
import { BadArgumentError, WcfsError } from '../errors.js';

export interface ServeOptions {
  pintimeout?: string;
  debug?: boolean;
  autoExit?: boolean;
  pollMs?: string;
  gcInterval?: string;
  untrackInterval?: string;
  statsWindow?: string;
  shareWith?: string;
  /** .wcfs/debug/ (upstream's -debug; src/cli/upstream.ts). */
  debugFiles?: boolean;
  /** Require authentication with the key in this file (.wcfs/auth; upstream's -authkeyfile). */
  authkeyfile?: string;
}

/** `group:NAME` or `group:GID` → the gid (the group must exist either way). */
export function resolveShareWith(spec: string): number {
  const m = /^group:(.+)$/.exec(spec);
  if (!m) throw new BadArgumentError(`invalid --share-with ${JSON.stringify(spec)}: want group:NAME or group:GID`);
  const r = spawnSync('getent', ['group', m[1]!], { encoding: 'utf8' });
  if (r.error) throw new WcfsError('WCFS_ENOGROUP', `--share-with ${spec}: cannot look the group up: ${r.error.message}`);
  const gid = Number(r.stdout.split(':')[2]); // name:passwd:gid:members
  if (r.status !== 0 || !Number.isInteger(gid)) throw new WcfsError('WCFS_ENOGROUP', `--share-with ${spec}: no such group`);
  return gid;
}

/** A duration option in seconds (`30` or `30s`), > 0; `dflt` when absent. */
function seconds(value: string | undefined, flag: string, dflt: number): number {
  if (value === undefined) return dflt;
  const v = Number(value.replace(/s$/, ''));
  if (!(v > 0)) throw new BadArgumentError(`invalid ${flag} ${JSON.stringify(value)}: want seconds > 0`);
  return v;
}

export async function serve(zurlArg: string, mountpointArg: string | undefined, opts: ServeOptions): Promise<void> {
  if (opts.debug) createDebug.enable(['wcfs:*', process.env.DEBUG].filter(Boolean).join(','));
  const zurl = normalizeZurl(zurlArg);
  const mnt = mountpointArg === undefined ? defaultMountpoint(zurl) : path.resolve(mountpointArg); // absolute: mountinfo, pid lookup and status compare it
  const pinTimeout = seconds(opts.pintimeout, '--pintimeout', 30);
  const gcInterval = seconds(opts.gcInterval, '--gc-interval', 10);
  const untrackInterval = seconds(opts.untrackInterval, '--untrack-interval', 60);
  const statsWindow = seconds(opts.statsWindow, '--stats-window', 60);
  const pollMs = opts.pollMs === undefined ? undefined : Number(opts.pollMs);
  if (pollMs !== undefined && !(pollMs > 0)) throw new BadArgumentError(`invalid --poll-ms ${JSON.stringify(opts.pollMs)}`);
  const shareWithGid = opts.shareWith === undefined ? undefined : resolveShareWith(opts.shareWith);

  const ctx = (e: unknown) => (e instanceof WcfsError ? new WcfsError(e.code, `serve ${zurl}: ${e.message}`, { cause: e }) : e);
  const st = await probe(mnt, 5000, zurl).catch((e) => Promise.reject(ctx(e))); // another user's mount: refused
  if (st.state === 'running') throw new BadArgumentError(`${mnt}: already running (serving ${st.zurl})`);
  if (st.state === 'crashed') {
    say(`${mnt}: cleaning up the mount of a crashed server (${st.errno})`);
    await cleanupCrashed(mnt);
  }
  let created: boolean;
  try {
    created = prepareMountpoint(mnt); // a planted symlink or foreign directory: refused
  } catch (e) {
    throw ctx(e);
  }
  if (shareWithGid !== undefined) {
    for (const d of unsearchableFor(mnt, shareWithGid)) say(`warning: ${d}: group ${shareWithGid} cannot search it, so cannot reach ${mnt}`);
  }

  let failed = false;
  let srv: WcfsServer;
  try {
    srv = await WcfsServer.start({
      zurl,
      mountpoint: mnt,
      pinTimeout,
      autoExit: opts.autoExit,
      storagePollMs: pollMs,
      gcIntervalMs: gcInterval * 1000,
      untrackIntervalMs: untrackInterval * 1000,
      statsWindowMs: statsWindow * 1000,
      shareWithGid,
      authKeyFile: opts.authkeyfile === undefined ? undefined : path.resolve(opts.authkeyfile),
      onFatal: () => (failed = true),
      debugFiles: opts.debug === true || opts.debugFiles === true, // .wcfs/debug/ (zhead): ours --debug, upstream's -debug
    });
  } catch (e) {
    if (created) removeMountpoint(mnt);
    throw e;
  }
  say(`serving ${zurl} on ${mnt} (pid ${process.pid})`);

  const onSignal = (sig: string) => {
    say(`${sig}: stopping`);
    srv.session.unmount().catch(async () => {
      const m = findMount(mnt);
      if (m) await abortConnection(m.minor).catch(() => {});
      await srv.session.unmount({ lazy: true }).catch(() => {});
    });
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));

  await srv.done;
  say(`stop ${mnt} ${zurl}`);
  process.exit(failed || srv.failed !== undefined ? 1 : 0);
}

export async function stopCmd(target: string): Promise<void> {
  await stop(target, { log: say });
}

export async function statusCmd(target: string): Promise<void> {
  const lines = await status(target);
  for (const l of lines) process.stdout.write(`${l.ok ? 'ok  ' : 'fail'} - ${l.text}\n`);
  if (!lines.every((l) => l.ok)) process.exitCode = 1;
}
