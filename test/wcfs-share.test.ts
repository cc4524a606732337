// Sharing a mount with a group (`wcfs serve --share-with group:NAME`, issue 12 part 1;
// wcfs-server.md §7): real mounts, other users as real processes (setpriv). A group and two
// users — a member and an outsider — are made for this file and removed after it, even on
// failure. The server runs as root, except where a non-root server is the point.
//
//   - the permission table (upstream's _tpermission.py walks every file; here every kind of
//     node is a row): outsider, member and the serving user, for stat / read / write-open;
//   - without --share-with another uid gets nothing (FUSE's default: only the mounting user);
//   - isolation for a member of another uid: its watch is pinned and acks, a faulty member
//     is killed after the pin timeout, an outsider cannot open head/watch at all; and the
//     client library (join, Conn, native pinner) in a member process keeps its view;
//   - start-up errors: unknown group, and a non-root server without user_allow_other in the
//     real /etc/fuse.conf (never edited here).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { resolveShareWith } from '../src/cli/serve.js';
import { unsearchableFor } from '../src/control/control.js';
import type { WcfsError } from '../src/errors.js';
import { findMount } from '../src/fuse/mountinfo.js';
import { userAllowOther } from '../src/fuse/session.js';
import { SHARE_MODES } from '../src/server/tree.js';
import { hex16 } from '../src/zodb/ids.js';
import { sleep } from './helpers/mount.js';
import { repoRoot } from './helpers/paths.js';
import { stopAllServers, tmpDir, wcfsBin } from './helpers/wcfs.js';
import { stats, TDB } from './helpers/tdb.js';
import { TWatchLink } from './helpers/wlink.js';

const run = promisify(execFile);
const PINTIMEOUT = 2; // seconds
const GROUP = `wcfsg${process.pid}`;
const MEMBER = `wcfsm${process.pid}`;
const OUTSIDER = `wcfso${process.pid}`;
let gid = -1;
let memberUid = -1;

/** Command prefix: run as `user`, primary group nogroup, supplementary groups from /etc/group. */
const as = (user: string) => ['setpriv', '--reuid', user, '--regid', 'nogroup', '--init-groups', '--'];

const made: Array<() => void> = [];
beforeAll(() => {
  execFileSync('groupadd', [GROUP]);
  made.push(() => execFileSync('groupdel', [GROUP]));
  for (const [u, extra] of [
    [MEMBER, ['-G', GROUP]],
    [OUTSIDER, []],
  ] as const) {
    execFileSync('useradd', ['-M', '-N', '-g', 'nogroup', ...extra, '-s', '/usr/sbin/nologin', u]);
    made.push(() => execFileSync('userdel', [u]));
  }
  gid = Number(execFileSync('getent', ['group', GROUP], { encoding: 'utf8' }).split(':')[2]);
  memberUid = Number(execFileSync('id', ['-u', MEMBER], { encoding: 'utf8' }));
});

const tdbs: TDB[] = [];
afterEach(async () => {
  for (const t of tdbs.splice(0)) await t.close();
}, 30_000);
afterAll(async () => {
  await stopAllServers();
  const errs: string[] = [];
  for (const undo of made.reverse()) {
    try {
      undo();
    } catch (e) {
      errs.push((e as Error).message);
    }
  }
  expect(errs, 'test users and group removed').toEqual([]);
}, 30_000);

/** stat / read / write-open of each path as `user` (helpers/perm-probe.mjs): path → result. */
async function probe(prefix: string[], paths: string[]): Promise<Record<string, { stat: string; read: string; write: string }>> {
  const cmd = [...prefix, process.execPath, path.join(repoRoot, 'test', 'helpers', 'perm-probe.mjs'), ...paths];
  const { stdout } = await run(cmd[0]!, cmd.slice(1), { timeout: 20_000 });
  return JSON.parse(stdout);
}

/** A database with one file f (blocks 2 and 3 written twice), served; `share` adds --share-with. */
async function served(share: boolean): Promise<{ t: TDB; f: bigint; at1: bigint }> {
  const t = new TDB();
  t.pinTimeout = PINTIMEOUT;
  tdbs.push(t);
  chmodSync(t.dir, 0o755); // mkdtemp's 0700 would keep everyone else from reaching <dir>/mnt
  if (share) t.serveArgs = ['--share-with', `group:${GROUP}`];
  await t.open();
  const f = await t.newFile('f');
  await t.commit([[f, { 2: 1, 3: 1 }]]);
  await t.serve();
  await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
  await t.read(f, 2);
  await t.read(f, 3);
  const at1 = await t.commit([[f, { 2: 2 }]]);
  await t.commit([[f, { 2: 3 }]]);
  return { t, f, at1 };
}

/** Every kind of node (upstream's permission test lists the files; directories end with /). */
function table(t: TDB, f: bigint, at1: bigint): { dirs: string[]; files: string[] } {
  const at = (rel: string) => t.srv.at(rel);
  const dirs = ['', 'head/', 'head/bigfile/', `@${hex16(at1)}/`, `@${hex16(at1)}/bigfile/`, '.wcfs/'].map((d) => (d === '' ? t.srv.mnt + '/' : at(d)));
  const files = [
    'head/at',
    'head/watch',
    `head/bigfile/${hex16(f)}`,
    `@${hex16(at1)}/bigfile/${hex16(f)}`,
    '.wcfs/zurl',
    '.wcfs/stats',
    '.wcfs/pintimeout',
  ].map(at);
  return { dirs, files };
}

describe('wcfs serve --share-with group:NAME', () => {
  it('owner, group and modes of every node', async () => {
    const { t, f, at1 } = await served(true);
    const { dirs, files } = table(t, f, at1);
    await readFile(files[3]!); // @at1/ exists
    const euid = process.geteuid!();
    for (const d of dirs) expect(statSync(d), d).toMatchObject({ uid: euid, gid, mode: 0o040000 | SHARE_MODES.dir });
    for (const p of files) {
      const mode = 0o100000 | (p.endsWith('/head/watch') ? SHARE_MODES.link : SHARE_MODES.file);
      expect(statSync(p), p).toMatchObject({ uid: euid, gid, mode });
    }
    expect(SHARE_MODES).toEqual({ dir: 0o550, file: 0o440, link: 0o660 });
    const m = findMount(t.srv.mnt)!;
    expect(m.superOptions, 'mount options').toMatch(/allow_other/);
    expect(m.superOptions).toMatch(/default_permissions/);
    expect(t.srv.stderr(), 'every directory above the mount is searchable').not.toMatch(/cannot search/);
  }, 30_000);

  it('permission table: outsider denied everything, member reads (and uses head/watch), serving user as today', async () => {
    const { t, f, at1 } = await served(true);
    const { dirs, files } = table(t, f, at1);
    const all = [...dirs, ...files];
    const isWatch = (p: string) => p.endsWith('/head/watch');

    // the outsider first: it must not even be able to bring @at1/ into existence (the views
    // there already are the server's own: commits keep old data in @<BlkRevAt>, Server)
    const views = () => readdirSync(t.srv.mnt).filter((n) => n.startsWith('@'));
    const before = views();
    expect(before).not.toContain(`@${hex16(at1)}`);
    const outsider = await probe(as(OUTSIDER), all);
    for (const p of all) {
      const dir = p.endsWith('/');
      expect(outsider[p], `outsider ${p}`).toEqual({ stat: p === t.srv.mnt + '/' ? 'ok' : 'EACCES', read: 'EACCES', write: dir ? 'dir' : 'EACCES' });
    }

    expect(views(), 'the outsider made no @<rev>/ view').toEqual(before);

    const member = await probe(as(MEMBER), all);
    for (const p of all) {
      const dir = p.endsWith('/');
      expect(member[p], `member ${p}`).toEqual({ stat: 'ok', read: 'ok', write: dir ? 'dir' : isWatch(p) ? 'ok' : 'EACCES' });
    }

    // the serving user (root here, which default_permissions does not restrict: its write
    // opens reach the server, which refuses them as it always did)
    const owner = await probe([], all);
    for (const p of all) {
      const dir = p.endsWith('/');
      expect(owner[p], `owner ${p}`).toEqual({ stat: 'ok', read: 'ok', write: dir ? 'dir' : isWatch(p) ? 'ok' : 'EROFS' });
    }
  }, 60_000);

  it('without --share-with: another uid, even a group member, gets nothing (FUSE default)', async () => {
    const { t, f, at1 } = await served(false);
    const { dirs, files } = table(t, f, at1);
    const all = [...dirs, ...files];
    expect(findMount(t.srv.mnt)!.superOptions).not.toMatch(/allow_other/);
    expect(statSync(t.srv.mnt).mode & 0o7777, 'attributes as before').toBe(0o755);
    const member = await probe(as(MEMBER), all);
    for (const p of all) expect(member[p], `member ${p}`).toEqual({ stat: 'EACCES', read: 'EACCES', write: p.endsWith('/') ? 'dir' : 'EACCES' });
  }, 30_000);

  it('isolation for a member of another uid: pinned and acks; a faulty member is killed; an outsider cannot watch', async () => {
    const { t, f, at1 } = await served(true);
    const l = await t.link({ as: as(MEMBER) });
    expect(readFileSync(`/proc/${l.pid}/status`, 'utf8'), 'the link is the member').toMatch(new RegExp(`^Uid:\\t${memberUid}\\t`, 'm'));
    await t.watch(l, f, at1); // pins #2 @at1, acked by the member, then ok
    expect(l.pinned.get(f)).toEqual(new Map([[2, at1]]));
    await t.commit([[f, { 3: 4 }]]);
    await t.read(f, 3); // a read at head pins the member's watch (#3 @tail) and waits for its ack

    // a member that never reads its link is killed after the pin timeout, as a same-uid client is
    const faulty = await TWatchLink.open(t.srv.at('head/watch'), { as: as(MEMBER), noread: true });
    try {
      faulty.send(`1 watch ${hex16(f)} @${hex16(at1)}\n`);
      const end = await Promise.race([faulty.exited, sleep(2 * PINTIMEOUT * 1000 + 2000).then(() => 'alive' as const)]);
      expect(end, 'the faulty member must end').not.toBe('alive');
      expect((end as { signal: string }).signal).toMatch(/SIGBUS|SIGKILL/);
      for (let i = 0; i < 100 && (await stats(t)).pinkill === 0; i++) await sleep(20);
      expect((await stats(t)).pinkill).toBe(1);
      expect(t.srv.stderr()).toMatch(new RegExp(`pid${faulty.pid}: client failed to handle pin notification correctly and timely`));
    } finally {
      await faulty.close();
    }
    // the good member goes on
    await t.commit([[f, { 2: 5 }]]);
    await t.read(f, 2);

    // an outsider never gets a link, so is never pinned nor killed
    const opened = await TWatchLink.open(t.srv.at('head/watch'), { as: as(OUTSIDER) }).then(
      async (o) => (await o.close(), 'opened'),
      (e: Error) => e.message,
    );
    expect(opened, 'the outsider cannot open head/watch').toMatch(/wlink child exited 1/);
  }, 60_000);
});

describe('--share-with and --authkeyfile together', () => {
  it('.wcfs/auth is group-writable: a member holding the key joins and reads; without it, EACCES', async () => {
    const t = new TDB();
    t.pinTimeout = PINTIMEOUT;
    tdbs.push(t);
    chmodSync(t.dir, 0o755);
    const key = path.join(t.dir, 'key');
    writeFileSync(key, 'a shared secret\n');
    chownSync(key, 0, gid);
    chmodSync(key, 0o440); // members may read the key; the outsider may not
    t.serveArgs = ['--share-with', `group:${GROUP}`, '--authkeyfile', key];
    await t.open();
    const f = await t.newFile('f');
    await t.commit([[f, { 0: 1 }]]);
    await t.serve();
    expect(statSync(t.srv.at('.wcfs/auth')), '.wcfs/auth').toMatchObject({ uid: process.geteuid!(), gid, mode: 0o100000 | SHARE_MODES.link });
    const client = async (kf: string | undefined) => {
      const env = { ...process.env };
      if (kf === undefined) delete env.WENDELIN_CORE_WCFS_AUTHKEYFILE;
      else env.WENDELIN_CORE_WCFS_AUTHKEYFILE = kf;
      const cmd = [...as(MEMBER), process.execPath, path.join(repoRoot, 'test', 'helpers', 'auth-client.mjs'), 'join', t.srv.zurl, t.srv.mnt];
      return JSON.parse((await run(cmd[0]!, cmd.slice(1), { env, timeout: 20_000 })).stdout) as Record<string, string>;
    };
    // >>> a member with the key: authenticated while joined, refused again once closed
    expect(await client(key)).toMatchObject({ join: 'ok', at: 'ok', atClosed: 'EACCES' });
    // >>> a member without it: joined (zurl is open to all) but refused
    expect(await client(undefined)).toMatchObject({ join: 'ok', at: 'EACCES' });
  }, 60_000);
});

describe('the client library in a member process of another uid', () => {
  it("joins root's shared server; its Conn at an old revision keeps its view through commits (native pinner)", async () => {
    const { t, f, at1 } = await served(true);
    const cmd = [...as(MEMBER), process.execPath, path.join(repoRoot, 'test', 'helpers', 'iso-client.mjs'), t.srv.zurl, t.srv.mnt, hex16(f), '4'];
    const p = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const exited = new Promise((resolve) => p.on('exit', resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        p.once('message', () => resolve());
        p.once('exit', (c, sig) => reject(new Error(`client exited ${c ?? sig}`)));
      });
      const replies: Array<(m: Record<string, unknown>) => void> = [];
      p.on('message', (m: Record<string, unknown>) => replies.shift()?.(m));
      const call = (msg: Record<string, unknown>) =>
        new Promise<Record<string, unknown>>((resolve, reject) => {
          replies.push((m) => (m.err ? reject(new Error(String(m.err))) : resolve(m)));
          p.send(msg);
        });
      expect(readFileSync(`/proc/${p.pid}/status`, 'utf8')).toMatch(new RegExp(`^Uid:\\t${memberUid}\\t`, 'm'));
      await call({ connect: hex16(at1) }); // join (a mount of root's), Conn @at1, open, mmap blocks [0, 4)
      const atAt1 = [0, 0, 2, 1];
      expect(await call({ check: atAt1 })).toEqual({ bad: [] });
      const pins0 = (await stats(t)).pin!;
      await t.commit([[f, { 2: 7, 3: 8 }]]);
      await t.read(f, 2); // head moves on: the member's pinner is asked to pin #2 and acks
      await t.read(f, 3);
      expect((await stats(t)).pin, 'the member was pinned').toBeGreaterThan(pins0);
      expect(await call({ check: atAt1 }), 'the member still sees @at1').toEqual({ bad: [] });
      expect(await call({ fatals: true })).toEqual({ fatals: [] });
      expect(await call({ close: true })).toMatchObject({ ok: true });
    } finally {
      p.kill('SIGKILL');
      await exited;
    }
  }, 60_000);
});

describe('helpers of --share-with', () => {
  it('resolveShareWith: group:NAME or group:GID of an existing group; else WCFS_ENOGROUP / WCFS_EBADARG', () => {
    expect(resolveShareWith(`group:${GROUP}`)).toBe(gid);
    expect(resolveShareWith(`group:${gid}`)).toBe(gid);
    const code = (spec: string) => {
      try {
        resolveShareWith(spec);
        return 'ok';
      } catch (e) {
        return (e as WcfsError).code;
      }
    };
    expect(code(`group:${GROUP}nosuch`)).toBe('WCFS_ENOGROUP');
    expect(code(GROUP)).toBe('WCFS_EBADARG');
    expect(code('user:root')).toBe('WCFS_EBADARG');
  });

  it('unsearchableFor names the directories above a mount the group cannot pass', () => {
    const dir = tmpDir(); // 0700
    try {
      const mnt = path.join(dir, 'a', 'mnt');
      mkdirSync(mnt, { recursive: true });
      chmodSync(path.join(dir, 'a'), 0o750);
      expect(unsearchableFor(mnt, gid)).toEqual([path.join(dir, 'a'), dir]); // not ours: g+x of root's group does not count
      chownSync(path.join(dir, 'a'), 0, gid);
      chmodSync(dir, 0o711);
      expect(unsearchableFor(mnt, gid)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('userAllowOther reads /etc/fuse.conf as fusermount3 does', () => {
    const dir = tmpDir();
    try {
      const conf = path.join(dir, 'fuse.conf');
      const has = (text: string) => (writeFileSync(conf, text), userAllowOther(conf));
      expect(has('#user_allow_other\nmount_max = 10\n')).toBe(false);
      expect(has('user_allow_others\n')).toBe(false);
      expect(has('mount_max = 10\n  user_allow_other  # sharing\n')).toBe(true);
      expect(userAllowOther(path.join(dir, 'missing'))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('start-up errors', () => {
  /** `wcfs serve` as the given prefix; resolves with its exit code and stderr. */
  function serve(prefix: string[], args: string[]): Promise<{ code: number | null; stderr: string }> {
    const cmd = [...prefix, process.execPath, wcfsBin, 'serve', ...args];
    const p = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 20_000);
    return new Promise((resolve) =>
      p.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stderr });
      }),
    );
  }

  it('an unknown group, or not group:…, is refused before anything is mounted or created', async () => {
    const dir = tmpDir();
    try {
      const mnt = path.join(dir, 'mnt');
      const r = await serve([], ['--share-with', `group:${GROUP}nosuch`, path.join(dir, 'data.fs'), mnt]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`--share-with group:${GROUP}nosuch: no such group`));
      const r2 = await serve([], ['--share-with', GROUP, path.join(dir, 'data.fs'), mnt]);
      expect(r2.code).toBe(1);
      expect(r2.stderr).toMatch(/invalid --share-with .*want group:NAME or group:GID/);
      expect(() => statSync(mnt), 'no mountpoint created').toThrow(/ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('a non-root server: without user_allow_other in /etc/fuse.conf, --share-with says so and what to add', async () => {
    // the real /etc/fuse.conf of this machine (never edited by tests) has no user_allow_other
    expect(userAllowOther(), '/etc/fuse.conf must lack user_allow_other for this test').toBe(false);
    const t = new TDB();
    tdbs.push(t);
    try {
      await nonRoot(t);
    } finally {
      rmSync(t.dir, { recursive: true, force: true }); // never served: TDB.close leaves it
    }
  }, 60_000);

  async function nonRoot(t: TDB): Promise<void> {
    await t.open();
    const f = await t.newFile('f');
    await t.commit([[f, { 0: 1 }]]);
    chmodSync(t.dir, 0o755);
    const mnt = path.join(t.dir, 'mnt');
    mkdirSync(mnt);
    const uid = Number(execFileSync('id', ['-u', MEMBER], { encoding: 'utf8' }));
    execFileSync('chown', ['-R', String(uid), t.dir]); // the server user reads the database and owns the mountpoint

    const r = await serve(as(MEMBER), ['--share-with', `group:${GROUP}`, t.live.zurl, mnt]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/allow_other .* refused to non-root users unless \/etc\/fuse\.conf has the line "user_allow_other": add that line/);
    expect(findMount(mnt), 'nothing mounted').toBe(undefined);

    // Without --share-with the same user mounts a private wcfs — where it can mount at all:
    // libfuse opens /dev/fuse itself and falls back to the setuid fusermount3 only when
    // mount(2) says EPERM, so with a root-only /dev/fuse (as in some containers) no non-root
    // server mounts, and the error says why.
    const devFuse = statSync('/dev/fuse');
    const r2Promise = serve([...as(MEMBER).slice(0, -1), '--', 'timeout', '-s', 'TERM', '8'], [t.live.zurl, mnt]);
    if ((devFuse.mode & 0o006) !== 0o006) {
      const r2 = await r2Promise;
      expect(r2.code).toBe(1);
      expect(r2.stderr).toMatch(/failed to open \/dev\/fuse: Permission denied/);
      expect(findMount(mnt)).toBe(undefined);
    } else {
      for (let i = 0; i < 200 && findMount(mnt) === undefined; i++) await sleep(25);
      expect(findMount(mnt), 'a non-root private mount').not.toBe(undefined);
      const me = await probe([], [mnt + '/.wcfs/zurl']);
      expect(me[mnt + '/.wcfs/zurl']!.read, 'private: even root is not let in').toBe('EACCES');
      await r2Promise; // timeout ends it (SIGTERM: unmounts)
      expect(findMount(mnt)).toBe(undefined);
    }
  }
});
