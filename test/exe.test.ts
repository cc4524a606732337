// build/wcfs, the single executable (scripts/build-exe.mjs), launched the way wendelin.core's
// launcher launches its server (wcfs/__init__.py _start: `<exe> $WENDELIN_CORE_WCFS_OPTIONS
// -autoexit <zurl> <mntpt>`, mntpt = /dev/shm/wcfs/<sha1(zurl)>, then polling .wcfs/zurl):
// the process is named wcfs, its /proc/<pid>/exe is the executable (a copy installed elsewhere
// works: the native addon is inside it), the mount is ours, and our
// own `wcfs status|stop` inside the same executable recognise it. Needs `npm run build`.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readlinkSync, readdirSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { defaultMountpoint, WCFS_SHM } from '../src/control/control.js';
import { abortConnection, findMount, unmountPath } from '../src/fuse/mountinfo.js';
import { requireFuse, sleep } from './helpers/mount.js';
import { repoRoot, zblkPath } from './helpers/paths.js';
import { copyInto, tmpDir } from './helpers/wcfs.js';
import { makeTmpDir } from './helpers/tmp.js';

const exe = path.join(repoRoot, 'build', 'wcfs');

interface Launched {
  proc: ChildProcess;
  mnt: string;
  exited: Promise<number | string>;
  stderr: () => string;
}
const launched: Launched[] = [];
const cleanups: Array<() => void> = [];

/** Spawn exe (build/wcfs or a copy) with argv; wait (≤ 20 s, every 100 ms like _waitmount) until <mnt>/.wcfs/zurl reads zurl. */
async function launch(argv: string[], zurl: string, mnt: string, program = exe): Promise<Launched> {
  await requireFuse();
  const proc = spawn(program, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const l: Launched = { proc, mnt, stderr: () => err, exited: new Promise((resolve) => proc.on('exit', (code, sig) => resolve(sig ?? code ?? -1))) };
  launched.push(l);
  const t0 = Date.now();
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`build/wcfs exited: ${err}`);
    try {
      const z = readFileSync(path.join(mnt, '.wcfs', 'zurl'), 'utf8'); // ENOENT until mounted
      expect(z).toBe(zurl);
      return l;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (Date.now() - t0 > 20_000) throw new Error(`build/wcfs did not come up: ${err}`);
    await sleep(100);
  }
}

afterEach(async () => {
  for (const l of launched.splice(0)) {
    const running = () => l.proc.exitCode === null && l.proc.signalCode === null;
    if (running()) {
      l.proc.kill('SIGTERM');
      await Promise.race([l.exited, sleep(3000)]);
    }
    const m = findMount(l.mnt);
    if (m !== undefined) await abortConnection(m.minor).catch(() => {});
    if (running()) {
      l.proc.kill('SIGKILL');
      await Promise.race([l.exited, sleep(2000)]);
    }
    if (findMount(l.mnt) !== undefined) await unmountPath(l.mnt, { lazy: true }).catch(() => {});
  }
  for (const c of cleanups.splice(0)) c();
}, 30_000);

const wcfsExe = (...args: string[]) => spawnSync(exe, args, { encoding: 'utf8', timeout: 30_000 });

describe('build/wcfs', () => {
  it('is a single executable: our CLI and Go-style usage without node', () => {
    expect(existsSync(exe)).toBe(true);
    const ours = wcfsExe('--help');
    expect(ours.status).toBe(0);
    expect(ours.stdout).toMatch(/Usage: wcfs \[options\] \[command\]/);
    const bad = wcfsExe('-bogus', 'file:///x.fs', '/nonexistent');
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/^flag provided but not defined: -bogus\nUsage: wcfs \[OPTIONS\] zurl mntpt\n/);
    expect(bad.stderr).not.toMatch(/Warning/);
    const help = wcfsExe('-autoexit', '-help');
    expect(help.status).toBe(0);
    expect(help.stderr).toMatch(/^Usage: wcfs \[OPTIONS\] zurl mntpt\n[^]*\n {2}-pintimeout duration\n/);
  });

  it("installed into a package dir and launched as wendelin.core's launcher does: comm wcfs, exe, fuse.wcfs mount, .wcfs/zurl; status and fusermount -u", async () => {
    const tmp = makeTmpDir();
    cleanups.push(tmp.cleanup);
    const zurl = 'file://' + copyInto(tmp.dir, zblkPath('py2_pickle1'), 'data.fs');
    // README: a copy in wendelin.core's package dir (no build/Release/ beside it: the addon
    // comes from the executable itself)
    const pkgExe = path.join(tmp.dir, 'wendelin', 'wcfs', 'wcfs');
    mkdirSync(path.dirname(pkgExe), { recursive: true });
    copyFileSync(exe, pkgExe);
    chmodSync(pkgExe, 0o755);
    // _mntpt_4zurl: /dev/shm/wcfs (01777 when it creates it), then the mountpoint
    if (!existsSync(WCFS_SHM)) {
      mkdirSync(WCFS_SHM, { recursive: true });
      chmodSync(WCFS_SHM, 0o1777);
    }
    const mnt = defaultMountpoint(zurl);
    mkdirSync(mnt, { recursive: true });
    cleanups.push(() => existsSync(mnt) && findMount(mnt) === undefined && rmdirSync(mnt));
    const options = ['-pintimeout', '5s', '-logtostderr', '-v=1', '-debug']; // $WENDELIN_CORE_WCFS_OPTIONS (upstream's test harness adds -debug)
    const l = await launch([...options, '-autoexit', zurl, mnt], zurl, mnt, pkgExe);
    const fwcfs = openSync(path.join(mnt, '.wcfs', 'zurl'), 'r'); // join keeps it open
    try {
      const pid = l.proc.pid!;
      expect(readFileSync(`/proc/${pid}/comm`, 'utf8')).toBe('wcfs\n');
      expect(readlinkSync(`/proc/${pid}/exe`)).toBe(pkgExe);
      expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(-3, -1)).toEqual([zurl, mnt]); // upstream's stop: last two argv
      const m = findMount(mnt)!;
      expect(m.fstype).toBe('fuse.wcfs');
      expect(m.source).toBe(zurl);
      expect(readFileSync(path.join(mnt, '.wcfs', 'pintimeout'), 'utf8')).toMatch(/^5(\.0)?\n?$/);
      expect(readFileSync(path.join(mnt, 'head', 'bigfile', '0000000000000001')).length).toBe(8 << 20);
      expect(readdirSync(path.join(mnt, '.wcfs', 'debug'))).toEqual(['zhead']); // -debug
      // our status, run by the same executable (its probes are child processes of build/wcfs)
      const st = spawnSync(pkgExe, ['status', zurl], { encoding: 'utf8', timeout: 30_000 });
      expect(st.stdout).toContain(`ok   - server process: pid ${pid}\n`);
      expect(st.stdout).toContain(`ok   - .wcfs/zurl: ${zurl}\n`);
      expect(st.status, st.stdout + st.stderr).toBe(0);
      expect(readFileSync(`/proc/${pid}/comm`, 'utf8')).toBe('wcfs\n'); // threads started meanwhile did not rename it
    } finally {
      closeSync(fwcfs);
    }
    // upstream's stop: fusermount -u, the server exits 0, the mountpoint is removed
    await unmountPath(mnt);
    expect(await Promise.race([l.exited, sleep(10_000).then(() => 'still running')])).toBe(0);
    rmdirSync(mnt);
  });

  it('`serve` with Go-style flags, and our `wcfs stop` in the same executable', async () => {
    const dir = tmpDir();
    cleanups.push(() => spawnSync('rm', ['-rf', dir]));
    const zurl = 'file://' + copyInto(dir, zblkPath('py3_pickle3'), 'data.fs');
    const mnt = path.join(dir, 'mnt');
    const l = await launch(['serve', '-pintimeout', '100ms', '-trace.fuse=false', '--debug=false', zurl, mnt], zurl, mnt);
    expect(readFileSync(`/proc/${l.proc.pid}/comm`, 'utf8')).toBe('wcfs\n');
    expect(readFileSync(path.join(mnt, '.wcfs', 'pintimeout'), 'utf8')).toMatch(/^0\.1\n?$/);
    const st = wcfsExe('stop', mnt);
    expect(st.status, st.stdout + st.stderr).toBe(0);
    expect(await Promise.race([l.exited, sleep(10_000).then(() => 'still running')])).toBe(0);
    expect(findMount(mnt)).toBeUndefined();
  });
});
