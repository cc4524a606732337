// Control-path safety and CLI faults (src/control/control.ts 2-3, 6; issue 7 items 3 and 6).
//
// The attacker is uid 65534 (setpriv --reuid=65534 --regid=65534 --clear-groups): it plants
// symlinks, directories and a mount of its own in the shared /dev/shm/wcfs, where root's
// default mountpoint and log file have predictable names. Root must refuse them all with a
// clear error and mount nothing. Then the smaller faults of the CLI.
//
// /dev/shm/wcfs is created here (01777) when absent and removed at the end when empty; every
// planted path is removed; every server started is stopped.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { abortConnection, findMount, fuseOwner } from '../src/fuse/mountinfo.js';
import { checkOurMount, defaultMountpoint, join, openLogFile, prepareMountpoint, serveMountpoint, start, stop, WCFS_SHM } from '../src/control/control.js';
import { NotAFileError } from '../src/zodb/fs1/errors.js';
import { FileStorage } from '../src/zodb/fs1/filestorage.js';
import { zblkPath } from './helpers/paths.js';
import { requireFuse, sleep } from './helpers/mount.js';
import { copyInto, startServer, stopAllServers, tmpDir, wcfsBin } from './helpers/wcfs.js';

const NOBODY = 65534;
const asNobody = (...argv: string[]) =>
  spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...argv], { encoding: 'utf8', timeout: 30_000 });
const cli = (...args: string[]) => spawnSync(process.execPath, [wcfsBin, ...args], { timeout: 60_000, encoding: 'utf8' });

let shmCreated = false;
const planted: string[] = []; // paths under /dev/shm/wcfs to remove at the end
const dirs: string[] = [];
const cleanups: Array<() => Promise<unknown>> = [];

/** A temp dir others may enter, with a copy of a fixture database in it. */
function newDb(): { dir: string; zurl: string; mnt: string } {
  const dir = tmpDir('wcfs-ctl-');
  chmodSync(dir, 0o755);
  dirs.push(dir);
  const zurl = copyInto(dir, zblkPath('py3_pickle3'));
  const mnt = defaultMountpoint(zurl);
  planted.push(mnt, `${mnt}.log`);
  return { dir, zurl, mnt };
}

beforeAll(async () => {
  await requireFuse();
  if (!existsSync(WCFS_SHM)) {
    mkdirSync(WCFS_SHM, 0o1777);
    chmodSync(WCFS_SHM, 0o1777);
    shmCreated = true;
  }
  // the attacks below need a shared dir root accepts and uid 65534 can write: root's, 01777
  const st = lstatSync(WCFS_SHM);
  if (!st.isDirectory() || st.uid !== 0)
    throw new Error(`${WCFS_SHM}: want a root-owned directory for these tests (found uid ${st.uid}, mode ${st.mode.toString(8)})`);
  if ((st.mode & 0o7777) !== 0o1777) chmodSync(WCFS_SHM, 0o1777); // as prepareMountpoint fixes it up
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
}, 60_000);

afterAll(async () => {
  await stopAllServers();
  for (const p of planted) {
    if (findMount(p) !== undefined) await stop(p, { timeoutMs: 10_000 }).catch(() => {});
    rmSync(p, { recursive: true, force: true }); // a symlink itself, not its target
  }
  for (const d of dirs) if (readdirSync(d).every((f) => findMount(path.join(d, f)) === undefined)) rmSync(d, { recursive: true, force: true });
  if (shmCreated) {
    try {
      rmdirSync(WCFS_SHM);
    } catch {
      /* in use by someone else */
    }
  }
}, 60_000);

/**
 * `wcfs serve <args>` until it exits — or, if the attack worked, until something gets
 * mounted at one of `watch` (then the server is stopped and `mountedAt` says where).
 */
async function serveOnce(args: string[], watch: string[]): Promise<{ code: number | string; stderr: string; mountedAt?: string }> {
  const p = spawn(process.execPath, [wcfsBin, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | string>((resolve) => p.on('exit', (code, sig) => resolve(sig ?? code ?? -1)));
  for (let i = 0; ; i++) {
    const code = await Promise.race([exited, sleep(50).then(() => undefined)]);
    if (code !== undefined) return { code, stderr };
    const at = watch.find((w) => findMount(w) !== undefined);
    if (at !== undefined || i > 600) {
      if (at !== undefined) await stop(at, { timeoutMs: 10_000 });
      p.kill('SIGKILL');
      await exited;
      return { code: at !== undefined ? 'mounted' : 'still running after 30 s', stderr, mountedAt: at };
    }
  }
}

describe('the shared /dev/shm/wcfs: planted paths are refused (7.3)', () => {
  it('a symlink at the default mountpoint: serve refuses, nothing is mounted, its target stays visible', async () => {
    const { dir, zurl, mnt } = newDb();
    const victim = path.join(dir, 'victim');
    mkdirSync(victim);
    writeFileSync(path.join(victim, 'keep'), 'x');
    expect(asNobody('ln', '-s', victim, mnt).status).toBe(0);

    const r = await serveOnce([zurl], [victim, mnt]);
    expect(r.mountedAt).toBeUndefined();
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`wcfs: serve ${zurl}: ${mnt}: is a symlink (to ${victim}, owned by uid ${NOBODY})`);
    expect(readdirSync(victim)).toEqual(['keep']);
    expect(lstatSync(mnt).isSymbolicLink()).toBe(true); // left for an admin to look at

    // join(autostart) refuses the same way, and stop has nothing to stop
    await expect(join(zurl, { autostart: true })).rejects.toThrow(/is a symlink/);
    expect(findMount(victim)).toBeUndefined();
    const sp = cli('stop', zurl);
    expect(sp.status).toBe(0);
    expect(sp.stderr).toMatch(/not mounted/);
  }, 60_000);

  it('a directory of another user at the default mountpoint: serve refuses', async () => {
    const { zurl, mnt } = newDb();
    expect(asNobody('mkdir', mnt).status).toBe(0);
    const r = await serveOnce([zurl], [mnt]);
    expect(r.mountedAt).toBeUndefined();
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`wcfs: serve ${zurl}: ${mnt}: owned by uid ${NOBODY}, not by us (uid 0): refusing to mount there`);
  }, 60_000);

  it('a symlink at the default log file: start refuses, the target is not written, nothing stays mounted', async () => {
    const { dir, zurl, mnt } = newDb();
    const victim = path.join(dir, 'victim.txt');
    writeFileSync(victim, 'precious\n');
    expect(asNobody('ln', '-s', victim, `${mnt}.log`).status).toBe(0);
    cleanups.push(() => stop(zurl, { timeoutMs: 10_000 }));
    await expect(start(zurl)).rejects.toThrow(`start ${zurl}: log ${mnt}.log: is a symlink (to ${victim}, owned by uid ${NOBODY})`);
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(findMount(mnt)).toBeUndefined();
    expect(existsSync(mnt)).toBe(false); // the mountpoint start created is removed again
  }, 60_000);

  it('a wcfs mounted by another user at the default mountpoint: join and serve refuse it', async () => {
    const { zurl, mnt } = newDb();
    expect(asNobody('mkdir', mnt).status).toBe(0);
    // A server whose real uid is 65534 (effective uid 0, so it may mount here without
    // fusermount3 and a world-accessible /dev/fuse): its mount shows user_id=65534, as one
    // started by that user would.
    const foreign: ChildProcess = spawn('setpriv', [`--ruid=${NOBODY}`, process.execPath, wcfsBin, 'serve', zurl, mnt], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    foreign.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const gone = new Promise((resolve) => foreign.on('exit', resolve));
    cleanups.push(async () => {
      const m = findMount(mnt);
      await stop(mnt, { timeoutMs: 10_000 });
      if (findMount(mnt) !== undefined && m !== undefined) await abortConnection(m.minor);
      foreign.kill('SIGKILL');
      await gone;
    });
    for (let i = 0; !/serving/.test(err); i++) {
      if (foreign.exitCode !== null || i > 600) throw new Error(`foreign server did not come up: ${err}`);
      await sleep(50);
    }
    const m = findMount(mnt)!;
    expect(m.fstype).toBe('fuse.wcfs');
    expect(fuseOwner(m)).toBe(NOBODY);

    await expect(join(zurl, { autostart: false })).rejects.toThrow(
      `wcfs: join ${zurl}: ${mnt}: the wcfs mounted there belongs to uid ${NOBODY}, not to us (uid 0)`,
    );
    await expect(join(zurl, { autostart: true })).rejects.toThrow(/belongs to uid 65534/);
    const r = cli('serve', zurl);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`wcfs: serve ${zurl}: ${mnt}: the wcfs mounted there belongs to uid ${NOBODY}`);
  }, 60_000);
});

describe('mountpoint rules as functions (control.ts 2, 3)', () => {
  it('the shared dir must be owned by root or us, and sticky when others may write it', () => {
    const dir = tmpDir('wcfs-ctl-');
    chmodSync(dir, 0o755);
    dirs.push(dir);
    const shared = path.join(dir, 'shm');
    // created 01777, the mountpoint 0755 and ours
    expect(prepareMountpoint(path.join(shared, 'a'), { shared })).toBe(true);
    expect(lstatSync(shared).mode & 0o7777).toBe(0o1777);
    expect(prepareMountpoint(path.join(shared, 'a'), { shared })).toBe(false);
    // ours but not 01777: fixed up
    chmodSync(shared, 0o755);
    prepareMountpoint(path.join(shared, 'a'), { shared });
    expect(lstatSync(shared).mode & 0o7777).toBe(0o1777);
    // root's, world-writable, not sticky, and we are somebody else: refused
    chmodSync(shared, 0o777);
    expect(() => prepareMountpoint(path.join(shared, 'b'), { shared, uid: 1000 })).toThrow(`${shared}: writable by others but not sticky (mode 777)`);
    // another user's: refused
    const pub = path.join(dir, 'pub');
    mkdirSync(pub);
    chmodSync(pub, 0o1777);
    const theirs = path.join(pub, 'theirs');
    expect(asNobody('mkdir', '-m', '1777', theirs).status).toBe(0);
    expect(() => prepareMountpoint(path.join(theirs, 'c'), { shared: theirs })).toThrow(`${theirs}: owned by uid ${NOBODY}, not by root or us (uid 0)`);
    expect(existsSync(path.join(theirs, 'c'))).toBe(false);
    // a symlink as the shared dir: refused
    const link = path.join(pub, 'link');
    expect(asNobody('ln', '-s', shared, link).status).toBe(0);
    expect(() => prepareMountpoint(path.join(link, 'd'), { shared: link })).toThrow(`${link}: is a symlink`);
  });

  it('the log file: no symlink, no FIFO, only a regular file of ours with one link', () => {
    const dir = tmpDir('wcfs-ctl-');
    chmodSync(dir, 0o1777);
    dirs.push(dir);
    const ok = path.join(dir, 'ok.log');
    closeSync(openLogFile(ok));
    expect(lstatSync(ok).isFile()).toBe(true);
    expect(() => openLogFile(ok, NOBODY)).toThrow(`log ${ok}: owned by uid 0, not by us (uid ${NOBODY})`);
    linkSync(ok, path.join(dir, 'hard.log'));
    expect(() => openLogFile(ok)).toThrow(`log ${ok}: has 2 links`);
    const fifo = path.join(dir, 'fifo.log');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    expect(() => openLogFile(fifo)).toThrow(`log ${fifo}`); // ENXIO: no reader — never blocks
    const theirs = path.join(dir, 'theirs.log');
    expect(asNobody('touch', theirs).status).toBe(0);
    expect(() => openLogFile(theirs)).toThrow(`log ${theirs}: owned by uid ${NOBODY}`);
  });

  it('a mount is ours only when mountinfo says fuse.wcfs, our uid and our zurl', () => {
    const m = {
      id: 1,
      parent: 0,
      major: 0,
      minor: 42,
      root: '/',
      mountpoint: '/m',
      fstype: 'fuse.wcfs',
      source: '/db/data.fs',
      superOptions: 'rw,user_id=0,group_id=0',
    };
    expect(() => checkOurMount(m, '/m', '/db/data.fs', 0)).not.toThrow();
    expect(() => checkOurMount({ ...m, fstype: 'tmpfs' }, '/m', '/db/data.fs', 0)).toThrow('/m: tmpfs (source /db/data.fs) is mounted there, not a wcfs');
    expect(() => checkOurMount({ ...m, fstype: 'fuse.sshfs' }, '/m', undefined, 0)).toThrow(/not a wcfs/);
    expect(() => checkOurMount(m, '/m', '/db/data.fs', 1000)).toThrow('belongs to uid 0, not to us (uid 1000)');
    expect(() => checkOurMount({ ...m, superOptions: 'rw' }, '/m', '/db/data.fs', 0)).toThrow('belongs to uid ?');
    expect(() => checkOurMount(m, '/m', '/db/other.fs', 0)).toThrow('/m: the wcfs mounted there serves /db/data.fs, not /db/other.fs');
  });
});

describe('CLI faults (7.6)', () => {
  it('status of a SIGSTOPped server returns: the stuck probe is reported as hung, not waited for', async () => {
    const dir = tmpDir('wcfs-ctl-');
    const srv = await startServer(copyInto(dir, zblkPath('py2_pickle1')), { dir });
    const pid = srv.proc.pid!;
    process.kill(pid, 'SIGSTOP');
    cleanups.push(async () => {
      process.kill(pid, 'SIGCONT');
      await srv.stop();
    });
    // before the fix this never returned (the probe child sat in the FUSE request, unkillable)
    const r = spawnSync(process.execPath, [wcfsBin, 'status', srv.mnt], { timeout: 40_000, encoding: 'utf8' });
    expect(r.signal).toBeNull();
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/^ok {3}- mount entry: /m);
    expect(r.stdout).toMatch(/^fail - (stat|\.wcfs\/zurl|\.wcfs\/stats): hung \(no answer in 5000 ms; probe pid \d+ left behind/m);
  }, 60_000);

  it('serve of a FIFO fails at once, naming the path; the mountpoint it made is removed', () => {
    const dir = tmpDir('wcfs-ctl-');
    dirs.push(dir);
    const fifo = path.join(dir, 'data.fs');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const mnt = path.join(dir, 'mnt');
    // before the fix: blocked in open(2) until killed by this timeout
    const r = spawnSync(process.execPath, [wcfsBin, 'serve', fifo, mnt], { timeout: 30_000, encoding: 'utf8' });
    expect(r.signal).toBeNull();
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`wcfs: ${fifo}: is a FIFO, not a FileStorage data file (a zurl names one: /path/to/Data.fs or file:///path/to/Data.fs)\n`);
    expect(existsSync(mnt)).toBe(false);
    expect(findMount(mnt)).toBeUndefined();
  }, 60_000);

  it('serve of a directory says which path and what a zurl should be', () => {
    const dir = tmpDir('wcfs-ctl-');
    dirs.push(dir);
    const mnt = path.join(dir, 'mnt');
    const r = cli('serve', dir, mnt);
    expect(r.status).toBe(1);
    expect(r.stderr).not.toMatch(/EISDIR/);
    expect(r.stderr).toBe(`wcfs: ${dir}: is a directory, not a FileStorage data file (a zurl names one: /path/to/Data.fs or file:///path/to/Data.fs)\n`);
    expect(existsSync(mnt)).toBe(false);
  }, 60_000);

  it('a writer open of a directory or a FIFO: the same error (O_RDWR fails on a directory in open itself)', async () => {
    const dir = tmpDir('wcfs-ctl-');
    dirs.push(dir);
    const sub = path.join(dir, 'sub.fs');
    mkdirSync(sub);
    await expect(FileStorage.open(sub)).rejects.toThrow(new NotAFileError(sub, 'is a directory'));
    const fifo = path.join(dir, 'fifo.fs');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    await expect(FileStorage.open(fifo)).rejects.toThrow(new NotAFileError(fifo, 'is a FIFO'));
  }, 60_000);

  it('the mountpoint of a serve command line: relative to its working directory, or the default of its zurl', () => {
    const cases: Array<[string[], string | undefined]> = [
      [['db.fs', 'mnt'], '/x/mnt'],
      [['db.fs', '/abs/mnt'], '/abs/mnt'],
      [['--pintimeout', '3', 'db.fs'], defaultMountpoint('/x/db.fs')],
      [['--debug', '--gc-interval=2', 'file:///a/b.fs'], defaultMountpoint('file:///a/b.fs')],
      [['--poll-ms', '20', '../d/db.fs', '../m'], '/m'],
      [['--', '-odd.fs', 'mnt'], '/x/mnt'],
      [['--debug'], undefined],
    ];
    for (const [args, want] of cases) expect(serveMountpoint(args, '/x'), args.join(' ')).toBe(want);
  });

  it('serve with a relative mountpoint: status finds its process, a second serve is refused, stop ends it', async () => {
    await requireFuse();
    const { dir, zurl } = newDb();
    const mnt = path.join(dir, 'rel-mnt');
    const p = spawn(process.execPath, [wcfsBin, 'serve', '--poll-ms', '20', path.basename(zurl), 'rel-mnt'], { cwd: dir, stdio: 'ignore' });
    const exited = new Promise((r) => p.on('exit', r));
    try {
      const t0 = Date.now();
      while (!existsSync(path.join(mnt, 'head', 'at'))) {
        if (Date.now() - t0 > 20_000) throw new Error('serve did not come up');
        await sleep(20);
      }
      // >>> status by the absolute path: the mount and its server process are found
      const st = cli('status', mnt);
      expect(st.stdout).not.toMatch(/^fail /m);
      expect(st.status, st.stdout).toBe(0);
      // >>> the same relative mountpoint again: refused, not mounted a second time
      const again = spawnSync(process.execPath, [wcfsBin, 'serve', path.basename(zurl), 'rel-mnt'], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
      expect(again.status).toBe(1);
      expect(again.stderr).toBe(`wcfs: ${mnt}: already running (serving ${zurl})\n`);
      // <<< stop ends the server process
      expect(cli('stop', mnt).status).toBe(0);
      await exited;
      expect(findMount(mnt)).toBeUndefined();
    } finally {
      p.kill('SIGKILL');
      spawnSync('umount', ['-l', mnt]);
    }
  }, 60_000);

  it('stop of a mountpoint where something else than a wcfs is mounted refuses and leaves it mounted', () => {
    const dir = tmpDir('wcfs-ctl-');
    dirs.push(dir);
    const mnt = path.join(dir, 'tmpfs');
    mkdirSync(mnt);
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'wcfs-test-tmpfs', mnt]).status).toBe(0);
    try {
      writeFileSync(path.join(mnt, 'precious'), 'x');
      const sp = cli('stop', mnt);
      expect(sp.status).not.toBe(0);
      expect(sp.stderr).toBe(`wcfs: ${mnt}: tmpfs (source wcfs-test-tmpfs) is mounted there, not a wcfs: not stopping it\n`);
      // <<< still mounted, untouched
      expect(findMount(mnt)?.fstype).toBe('tmpfs');
      expect(readFileSync(path.join(mnt, 'precious'), 'utf8')).toBe('x');
    } finally {
      spawnSync('umount', ['-l', mnt]);
    }
  }, 60_000);

  it('stop and status of a mountpoint that is gone say how the argument was understood', () => {
    const dir = tmpDir('wcfs-ctl-');
    dirs.push(dir);
    const gone = path.join(dir, 'mnt');
    const sp = cli('stop', gone);
    expect(sp.status).toBe(0);
    expect(sp.stderr).toBe(
      `wcfs: ${gone}: no such file or directory: not a mountpoint, and as a zurl (mountpoint ${defaultMountpoint(gone)}) not mounted either\n`,
    );
    const st = cli('status', gone);
    expect(st.status).toBe(1);
    expect(st.stdout).toBe(
      `fail - mount entry: ${gone}: no such file or directory: not a mountpoint, and as a zurl (mountpoint ${defaultMountpoint(gone)}) not mounted either\n`,
    );
    // an existing database that is not served: named as the zurl it was taken for
    const db = copyInto(dir, zblkPath('py2_pickle1'));
    expect(cli('stop', db).stderr).toBe(`wcfs: ${db}: not mounted (mountpoint ${defaultMountpoint(db)})\n`);
  }, 60_000);
});
