// Server lifecycle: join/autostart at the default mountpoint, crash (kill -9) → ENOTCONN →
// join cleans the dead mount and serves again; wcfs status/stop; a client killed while its
// read is pending in the server exits promptly.
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, rmdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { findMount } from '../src/fuse/mountinfo.js';
import { defaultMountpoint, findServerPids, join, stop, WCFS_SHM } from '../src/control/control.js';
import { zblkPath } from './helpers/paths.js';
import { sleep } from './helpers/mount.js';
import { copyInto, startServer, stopAllServers, tmpDir, wcfsBin } from './helpers/wcfs.js';

const cleanups: Array<() => Promise<unknown>> = [];
const shmExisted = existsSync(WCFS_SHM);
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
  await stopAllServers();
  if (!shmExisted) {
    try {
      rmdirSync(WCFS_SHM); // join created it; leave nothing in /dev/shm
    } catch {
      /* another user's mountpoint is in it */
    }
  }
}, 60_000);

const errnoOf = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: NodeJS.ErrnoException) => e.code,
  );
const cli = (...args: string[]) => spawnSync(process.execPath, [wcfsBin, ...args], { timeout: 60_000, encoding: 'utf8' });

describe('join, crash, restart', () => {
  it('join autostarts at /dev/shm/wcfs/<sha1>; kill -9 → ENOTCONN; join again serves anew', async () => {
    const dir = tmpDir();
    const zurl = copyInto(dir, zblkPath('py3_pickle3'));
    const mnt = defaultMountpoint(zurl);
    cleanups.push(async () => {
      await stop(zurl, { timeoutMs: 10_000 });
      spawnSync('rm', ['-rf', dir, `${mnt}.log`]);
    });
    expect(mnt).toMatch(/^\/dev\/shm\/wcfs\/[0-9a-f]{40}$/);

    await expect(join(zurl, { autostart: false })).rejects.toThrow(/server not running/);
    const wc = await join(zurl, { autostart: true });
    expect(wc.mountpoint).toBe(mnt);
    expect((await readFile(path.join(mnt, '.wcfs/zurl'))).toString()).toBe(zurl);
    expect(await join(zurl)).toBe(wc); // same handle, refcounted
    await wc.close();
    const pids = findServerPids(mnt);
    expect(pids).toHaveLength(1);

    // >>> crash
    process.kill(pids[0]!, 'SIGKILL');
    await sleep(100);
    expect(['ENOTCONN', 'ECONNABORTED']).toContain(await errnoOf(readFile(path.join(mnt, '.wcfs/zurl'))));
    expect(['ENOTCONN', 'ECONNABORTED']).toContain(await errnoOf(readFile(path.join(mnt, 'head/at'))));
    expect(findMount(mnt)).toBeDefined(); // the dead mount stays
    const st = cli('status', zurl);
    expect(st.status).toBe(1);
    expect(st.stdout).toMatch(/fail - server process: not found/);
    await wc.close().catch(() => {}); // its .wcfs/zurl handle is dead

    // >>> join again: cleans the dead mount, starts a new server
    const wc2 = await join(zurl, { autostart: true });
    expect(wc2).not.toBe(wc);
    expect((await readFile(path.join(mnt, 'head/at'))).toString()).toMatch(/^[0-9a-f]{16}$/);
    const pids2 = findServerPids(mnt);
    expect(pids2).toHaveLength(1);
    expect(pids2[0]).not.toBe(pids[0]);
    const st2 = cli('status', zurl);
    expect(st2.stdout, st2.stderr).not.toMatch(/^fail /m);
    expect(st2.status).toBe(0);
    await wc2.close();

    // >>> stop: unmounts, the server exits, the mountpoint is removed
    const sp = cli('stop', zurl);
    expect(sp.status, sp.stderr).toBe(0);
    expect(findMount(mnt)).toBeUndefined();
    expect(findServerPids(mnt)).toEqual([]);
    expect(existsSync(mnt)).toBe(false);
    expect(cli('stop', zurl).stderr).toMatch(/not mounted/);
  }, 60_000);

  it('serve refuses a mountpoint that is already served; stop escalates past a busy mount', async () => {
    const dir = tmpDir();
    const srv = await startServer(copyInto(dir, zblkPath('py2_pickle1')), { dir });
    const again = cli('serve', srv.zurl, srv.mnt);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/already running/);
    // a client keeps a file open: plain unmount fails (EBUSY), stop still ends the server
    const holder = spawn(process.execPath, ['-e', `const fs=require('fs'); fs.openSync(process.argv[1]); setInterval(()=>{}, 1000)`, srv.at('head/at')], {
      stdio: 'ignore',
    });
    cleanups.push(async () => holder.kill('SIGKILL'));
    await sleep(300);
    const sp = cli('stop', srv.mnt);
    expect(sp.status, sp.stderr).toBe(0);
    expect(sp.stderr).toMatch(/SIGTERM|aborted|unmounted/);
    expect(await Promise.race([srv.exited, sleep(5000).then(() => 'alive')])).not.toBe('alive');
    holder.kill('SIGKILL');
    await srv.stop();
  }, 60_000);
});

describe('interrupt', () => {
  it('a client killed while its read is pending in the server exits promptly', async () => {
    const dir = tmpDir();
    const srv = await startServer(copyInto(dir, zblkPath('py2_pickle2')), { dir });
    const child = spawn(
      process.execPath,
      [
        '-e',
        `const fs=require('fs'); const fd=fs.openSync(process.argv[1], 'r+'); process.stdout.write('open\\n'); fs.readSync(fd, Buffer.alloc(100));`,
        srv.at('head/watch'),
      ],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    await sleep(200); // the read is now pending in the server
    expect((await readFile(srv.at('.wcfs/stats'))).toString()).toMatch(/WatchLink\t: 1/);
    const exited = new Promise<number>((resolve) => child.on('exit', () => resolve(Date.now())));
    const t0 = Date.now();
    child.kill('SIGKILL');
    const t1 = await Promise.race([exited, sleep(5000).then(() => -1)]);
    expect(t1).not.toBe(-1);
    expect(t1 - t0).toBeLessThan(1000);
    await sleep(100);
    expect((await readFile(srv.at('.wcfs/stats'))).toString()).toMatch(/WatchLink\t: 0/);
    await srv.stop();
  }, 30_000);
});
