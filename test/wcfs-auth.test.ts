// Client authentication through real mounts (`wcfs serve --authkeyfile`, wcfs-server.md §7,
// notes.md "Authentication"): the permission table for an unauthenticated and an
// authenticated process (upstream wcfs_auth_test.py's rows, plus @<rev>/ and .wcfs/auth), the
// .wcfs/auth protocol (ok, bad key, unknown command, bye, bounds), revocation when the last
// link closes, key-file errors at start and at join, the client library (join authenticates,
// a spawned or forked child is not authenticated, an autostarted server gets the key file),
// and a process whose pid is reused after an authenticated process exited.
//
// This test process is itself a client: it stays unauthenticated except inside `authed()`.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open, readFile, readdir, stat, type FileHandle } from 'node:fs/promises';
import { constants as fsc } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WCFS } from '../src/client/wcfs.js';
import { findServerPids, stop as stopServerAt } from '../src/control/control.js';
import { findMount } from '../src/fuse/mountinfo.js';
import { hex16 } from '../src/zodb/ids.js';
import { MAX_LINKS_PER_PROC } from '../src/server/auth.js';
import { exitOf, spawnWithPid } from './helpers/pidreuse.js';
import { repoRoot } from './helpers/paths.js';
import { python } from './helpers/python.js';
import { TDB } from './helpers/tdb.js';
import { startServer, stopAllServers, tmpDir, wcfsBin } from './helpers/wcfs.js';

const t = new TDB();
let foid: bigint;
let keyFile: string;
let key: string;
const extraDirs: string[] = [];

beforeAll(async () => {
  await t.open();
  foid = await t.newFile('f');
  await t.commit([[foid, { 0: 1, 1: 2 }]], { wait: false });
  key = randomBytes(32).toString('hex');
  keyFile = path.join(t.dir, 'authkey');
  writeFileSync(keyFile, key + '\n', { mode: 0o600 });
  t.serveArgs = ['--authkeyfile', keyFile, '--debug']; // --debug: .wcfs/debug/zhead too (and every trace: the key must not be in them)
  await t.serve();
}, 60_000);

afterAll(async () => {
  await t.close();
  await stopAllServers();
  for (const d of extraDirs) rmSync(d, { recursive: true, force: true });
}, 60_000);

const mnt = () => t.srv.mnt;
const rev = () => hex16(t.head());

// ---- the permission table ----

type Kind = 'read' | 'rdwr' | 'stream';
/** Upstream's rows (wcfs_auth_test.py PATH_MAP) and ours: path, how it is opened. */
const ROWS = (): Array<[string, Kind]> => [
  ['.wcfs/zurl', 'read'],
  ['.wcfs/auth', 'rdwr'],
  ['.wcfs/stats', 'read'],
  ['.wcfs/pintimeout', 'read'],
  ['head/at', 'read'],
  ['head/watch', 'rdwr'],
  [`head/bigfile/${hex16(foid)}`, 'read'],
  [`@${rev()}/bigfile/${hex16(foid)}`, 'read'],
  ['.wcfs/debug/zhead', 'stream'],
];

const code = (e: unknown) => (e as NodeJS.ErrnoException).code ?? String(e);

/** "stat:… open:… [read:…]" of one row, as this process gets it. */
async function probe(rel: string, kind: Kind): Promise<string> {
  const p = path.join(mnt(), rel);
  const st = await stat(p).then(
    () => 'ok',
    (e) => code(e),
  );
  let f: FileHandle;
  try {
    f = await open(p, kind === 'rdwr' ? fsc.O_RDWR : fsc.O_RDONLY);
  } catch (e) {
    return `stat:${st} open:${code(e)}`;
  }
  try {
    if (kind !== 'read') return `stat:${st} open:ok`; // stream files: a read would wait for a message
    const r = await f.read(Buffer.alloc(1), 0, 1, 0).then(
      ({ bytesRead }) => (bytesRead === 1 ? 'ok' : 'EOF'),
      (e) => code(e),
    );
    return `stat:${st} open:ok read:${r}`;
  } finally {
    await f.close();
  }
}

async function table(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [rel, kind] of ROWS()) out[rel.replace(/^@[0-9a-f]{16}/, '@<rev>').replace(/[0-9a-f]{16}$/, '<oid>')] = await probe(rel, kind);
  return out;
}

const UNAUTHENTICATED = {
  '.wcfs/zurl': 'stat:ok open:ok read:ok',
  '.wcfs/auth': 'stat:ok open:ok',
  '.wcfs/stats': 'stat:ok open:EACCES',
  '.wcfs/pintimeout': 'stat:ok open:EACCES',
  'head/at': 'stat:ok open:EACCES',
  'head/watch': 'stat:ok open:EACCES',
  'head/bigfile/<oid>': 'stat:ok open:EACCES',
  '@<rev>/bigfile/<oid>': 'stat:ok open:EACCES',
  '.wcfs/debug/zhead': 'stat:ok open:EACCES',
};
const AUTHENTICATED = {
  '.wcfs/zurl': 'stat:ok open:ok read:ok',
  '.wcfs/auth': 'stat:ok open:ok',
  '.wcfs/stats': 'stat:ok open:ok read:ok',
  '.wcfs/pintimeout': 'stat:ok open:ok read:ok',
  'head/at': 'stat:ok open:ok read:ok',
  'head/watch': 'stat:ok open:ok',
  'head/bigfile/<oid>': 'stat:ok open:ok read:ok',
  '@<rev>/bigfile/<oid>': 'stat:ok open:ok read:ok',
  '.wcfs/debug/zhead': 'stat:ok open:ok',
};

// ---- a raw .wcfs/auth link of this process ----

class RawLink {
  private rx = '';
  private constructor(readonly f: FileHandle) {}
  static async open(m = mnt()): Promise<RawLink> {
    return new RawLink(await open(path.join(m, '.wcfs', 'auth'), fsc.O_RDWR));
  }
  async send(line: string | Buffer): Promise<void> {
    await this.f.write(typeof line === 'string' ? Buffer.from(line, 'latin1') : line);
  }
  /** The next line from the server, or null at EOF. */
  async recv(): Promise<string | null> {
    const buf = Buffer.alloc(4096);
    for (;;) {
      const nl = this.rx.indexOf('\n');
      if (nl >= 0) {
        const line = this.rx.slice(0, nl);
        this.rx = this.rx.slice(nl + 1);
        return line;
      }
      const { bytesRead } = await this.f.read(buf, 0, buf.length, null);
      if (bytesRead === 0) return null;
      this.rx += buf.toString('latin1', 0, bytesRead);
    }
  }
  async auth(k = key, stream = 1): Promise<string | null> {
    await this.send(`${stream} auth ${k}\n`);
    return this.recv();
  }
  close(): Promise<void> {
    return this.f.close();
  }
}

/** Run fn while this process is authenticated (one link, closed after). */
async function authed<T>(fn: () => Promise<T>): Promise<T> {
  const l = await RawLink.open();
  try {
    expect(await l.auth()).toBe('1 ok');
    return await fn();
  } finally {
    await l.close();
  }
}

const canOpenAt = () => probe('head/at', 'read');

describe('permission table', () => {
  it('unauthenticated: only .wcfs/zurl and .wcfs/auth open; every lookup works', async () => {
    expect(await table()).toEqual(UNAUTHENTICATED);
    // lookups and listings are never refused
    expect((await readdir(path.join(mnt(), '.wcfs'))).sort()).toEqual(['auth', 'debug', 'pintimeout', 'stats', 'zurl']);
    expect(await readdir(path.join(mnt(), 'head', 'bigfile'))).toContain(hex16(foid));
  });

  it('authenticated: every file opens and reads; closing the link revokes at once', async () => {
    const l = await RawLink.open();
    expect(await l.auth()).toBe('1 ok');
    expect(await table()).toEqual(AUTHENTICATED);
    await l.close();
    expect(await table()).toEqual(UNAUTHENTICATED);
  });

  it('a file opened while authenticated stays readable after revocation (the check is at open)', async () => {
    const f = await authed(() => open(path.join(mnt(), 'head', 'at'), 'r'));
    try {
      expect(await canOpenAt()).toBe('stat:ok open:EACCES');
      const { bytesRead } = await f.read(Buffer.alloc(16), 0, 16, 0);
      expect(bytesRead).toBe(16);
    } finally {
      await f.close();
    }
  });

  it('without --authkeyfile there is no .wcfs/auth and nothing is refused', async () => {
    const srv = await startServer(t.live.zurl);
    try {
      await expect(stat(path.join(srv.mnt, '.wcfs', 'auth'))).rejects.toMatchObject({ code: 'ENOENT' });
      expect((await readdir(path.join(srv.mnt, '.wcfs'))).sort()).toEqual(['pintimeout', 'stats', 'zurl']);
      expect((await readFile(path.join(srv.mnt, 'head', 'at'))).toString()).toBe(rev());
      expect((await readFile(path.join(srv.mnt, '.wcfs', 'stats'))).length).toBeGreaterThan(0);
      // a client with a key joins it without authenticating (nothing to send the key to)
      const r = await runClient('join', srv.mnt, keyFile);
      expect(r).toMatchObject({ join: 'ok', at: 'ok', atClosed: 'ok' });
    } finally {
      await srv.stop();
    }
  });
});

describe('.wcfs/auth protocol', () => {
  it('bad key: "error invalid authentication key", logged with the pid and without the key; still refused', async () => {
    const l = await RawLink.open();
    try {
      const bad = 'not-the-key-' + randomBytes(8).toString('hex');
      expect(await l.auth(bad, 3)).toBe('3 error invalid authentication key');
      expect(await canOpenAt()).toBe('stat:ok open:EACCES');
      expect(t.srv.stderr()).toContain(`authentication by pid ${process.pid} failed: invalid key`);
      expect(t.srv.stderr()).not.toContain(bad);
      // the same link may then authenticate with the right key
      expect(await l.auth(key, 5)).toBe('5 ok');
      expect(await canOpenAt()).toBe('stat:ok open:ok read:ok');
      // .wcfs/stats counts the links, the authenticated processes and the failures
      const stats = async () =>
        Object.fromEntries(
          (await readFile(path.join(mnt(), '.wcfs', 'stats'), 'latin1'))
            .trim()
            .split('\n')
            .map((l) => l.split('\t: ')),
        );
      const s1 = await stats();
      expect([s1.AuthLink, s1.AuthProc]).toEqual(['1', '1']);
      expect(Number(s1.authfail)).toBeGreaterThanOrEqual(1);
      expect(await l.auth('bad-again', 7)).toBe('7 error invalid authentication key');
      const l2 = await RawLink.open();
      expect(await l2.auth(key, 1)).toBe('1 ok');
      const s2 = await stats();
      expect([s2.AuthLink, s2.AuthProc, Number(s2.authfail)]).toEqual(['2', '1', Number(s1.authfail) + 1]);
      await l2.close();
    } finally {
      await l.close();
    }
    expect(await canOpenAt()).toBe('stat:ok open:EACCES');
  });

  it('unknown command → "0 error unknown command"; the link stays up', async () => {
    const l = await RawLink.open();
    try {
      await l.send('1 watch 0000000000000001 -\n');
      expect(await l.recv()).toBe('0 error unknown command');
      expect(await l.auth(key, 3)).toBe('3 ok');
    } finally {
      await l.close();
    }
  });

  it('bye: the link goes down (EOF) and no longer authenticates, though still open', async () => {
    const l = await RawLink.open();
    try {
      expect(await l.auth()).toBe('1 ok');
      expect(await canOpenAt()).toBe('stat:ok open:ok read:ok');
      await l.send('3 bye\n');
      expect(await l.recv()).toBe(null);
      expect(await canOpenAt()).toBe('stat:ok open:EACCES');
    } finally {
      await l.close();
    }
  });

  it('bounds: a line longer than the watch link allows is a protocol error; links per process are capped', async () => {
    const l = await RawLink.open();
    try {
      await l.send(Buffer.alloc(5000, 0x61));
      expect(await l.recv()).toMatch(/^0 error: invalid frame: "a+"\.\.\. \(line longer than 4096 bytes\)$/);
      expect(await l.recv()).toBe(null);
    } finally {
      await l.close();
    }
    const links: RawLink[] = [];
    try {
      for (let i = 0; i < MAX_LINKS_PER_PROC; i++) links.push(await RawLink.open());
      await expect(RawLink.open()).rejects.toMatchObject({ code: 'EMFILE' });
      // the server keeps serving: one of them authenticates, the cap goes with a close
      expect(await links[0]!.auth()).toBe('1 ok');
      expect(await canOpenAt()).toBe('stat:ok open:ok read:ok');
      await links.pop()!.close();
      links.push(await RawLink.open());
    } finally {
      for (const x of links) await x.close();
    }
    expect(await canOpenAt()).toBe('stat:ok open:EACCES');
  });

  it('two links of one process: authenticated until the last one closes', async () => {
    const a = await RawLink.open();
    const b = await RawLink.open();
    try {
      expect(await a.auth()).toBe('1 ok');
      expect(await b.auth()).toBe('1 ok');
      await a.close();
      expect(await canOpenAt()).toBe('stat:ok open:ok read:ok');
    } finally {
      await b.close();
    }
    expect(await canOpenAt()).toBe('stat:ok open:EACCES');
  });
});

describe('wcfs status', () => {
  it('an authenticating server is healthy though .wcfs/stats is refused to the probe', async () => {
    const out = await runProcess(process.execPath, [wcfsBin, 'status', mnt()], process.env);
    expect(out).toContain('ok   - .wcfs/stats: not shown: the server requires authentication (EACCES)');
    expect(out).not.toMatch(/^fail /m);
  });
});

describe('key file at start', () => {
  const serveWith = (kf: string) =>
    new Promise<{ rc: number | null; stderr: string; mnt: string }>((resolve) => {
      const dir = tmpDir('wcfs-auth-');
      extraDirs.push(dir);
      const m = path.join(dir, 'mnt');
      const p = spawn(process.execPath, [wcfsBin, 'serve', '--authkeyfile', kf, t.live.zurl, m], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      p.on('close', (rc) => resolve({ rc, stderr: err, mnt: m }));
    });

  it('missing or empty: serve fails before mounting, naming the file', async () => {
    const missing = path.join(t.dir, 'no-such-key');
    const r1 = await serveWith(missing);
    expect(r1.rc).toBe(1);
    expect(r1.stderr).toContain(missing);
    expect(findMount(r1.mnt)).toBeUndefined();
    const empty = path.join(t.dir, 'empty-key');
    writeFileSync(empty, '\n');
    const r2 = await serveWith(empty);
    expect(r2.rc).toBe(1);
    expect(r2.stderr).toContain(`${empty}: empty`);
    expect(findMount(r2.mnt)).toBeUndefined();
  });
});

// ---- the client library ----

function runProcess(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('close', (rc) => (rc === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${rc}: ${err}`))));
  });
}

/** test/helpers/auth-client.mjs in a child: joins with $WENDELIN_CORE_WCFS_AUTHKEYFILE = kf. */
async function runClient(mode: 'join' | 'join-spawn', m: string, kf: string | undefined): Promise<Record<string, unknown>> {
  const env = { ...process.env };
  if (kf === undefined) delete env.WENDELIN_CORE_WCFS_AUTHKEYFILE;
  else env.WENDELIN_CORE_WCFS_AUTHKEYFILE = kf;
  const out = await runProcess(process.execPath, [path.join(repoRoot, 'test', 'helpers', 'auth-client.mjs'), mode, t.live.zurl, m], env);
  return JSON.parse(out) as Record<string, unknown>;
}

describe('client library', () => {
  it('join authenticates (key file from the environment); wc.close() revokes', async () => {
    expect(await runClient('join', mnt(), keyFile)).toEqual({ join: 'ok', at: 'ok', atClosed: 'EACCES' });
  });

  it('join without a key: joined, but refused', async () => {
    expect(await runClient('join', mnt(), undefined)).toEqual({ join: 'ok', at: 'EACCES', atClosed: 'EACCES' });
  });

  it('join with a bad, missing or empty key file fails with a clear error', async () => {
    const bad = path.join(t.dir, 'bad-key');
    writeFileSync(bad, 'wrong\n');
    const r1 = await runClient('join', mnt(), bad);
    expect(r1).toMatchObject({ join: 'WCFS_EAUTH', at: 'EACCES' });
    expect(r1.message).toMatch(/authentication failed: error invalid authentication key/);
    const missing = path.join(t.dir, 'missing-key');
    const r2 = await runClient('join', mnt(), missing);
    expect(r2).toMatchObject({ join: 'WCFS_EAUTHKEY', at: 'EACCES' });
    expect(r2.message).toContain(missing);
    const empty = path.join(t.dir, 'empty-key2');
    writeFileSync(empty, '');
    const r3 = await runClient('join', mnt(), empty);
    expect(r3).toMatchObject({ join: 'WCFS_EAUTHKEY' });
    expect(r3.message).toContain(`${empty}: empty`);
  });

  it('a spawned child of an authenticated process is refused until it joins itself', async () => {
    expect(await runClient('join-spawn', mnt(), keyFile)).toEqual({
      join: 'ok',
      at: 'ok',
      child: 'EACCES',
      childJoined: { join: 'ok', at: 'ok', atClosed: 'EACCES' },
      atAfter: 'ok', // the child's join and close did not touch the parent's authentication
      atClosed: 'EACCES',
    });
  });

  it('a forked child (no exec) holding the inherited link is refused; its parent is not', async () => {
    const out = await runProcess(python(), [path.join(repoRoot, 'test', 'helpers', 'auth-fork.py'), mnt(), keyFile], process.env);
    const lines = out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => 'child' in l)).toMatchObject({ child: 'EACCES' });
    expect(lines.find((l) => 'parent' in l)).toMatchObject({ parent: 'ok' });
  });

  it('exec keeps the process: authenticated while the link survives the exec, refused once the exec closed it', async () => {
    const run = async (mode: string) =>
      JSON.parse(await runProcess(python(), [path.join(repoRoot, 'test', 'helpers', 'auth-exec.py'), mnt(), keyFile, mode], process.env)) as Record<
        string,
        unknown
      >;
    const inherit = await run('inherit');
    expect(inherit.pid).toBe(inherit.before); // the same process
    expect(inherit).toMatchObject({ first: 'ok', last: 'ok' });
    // the close at exec reaches the server as RELEASE, which the kernel sends after the
    // exec: the first open may still pass, refusal follows
    const cloexec = await run('cloexec');
    expect(cloexec.pid).toBe(cloexec.before);
    expect(cloexec.last).toBe('EACCES');
  });

  it('an autostarted server gets the key file', async () => {
    const dir = tmpDir('wcfs-auth-auto-');
    extraDirs.push(dir);
    const m2 = path.join(dir, 'mnt');
    const wc = await WCFS.join(t.live.zurl, { mountpoint: m2, autostart: true, authKeyFile: keyFile });
    try {
      const pids = findServerPids(m2);
      expect(pids).toHaveLength(1);
      const argv = readFileSync(`/proc/${pids[0]}/cmdline`, 'latin1').split('\0');
      expect(argv[argv.indexOf('--authkeyfile') + 1]).toBe(keyFile);
      expect((await readFile(path.join(m2, 'head', 'at'))).toString()).toBe(rev()); // we are authenticated there
      const child = await runProcess(
        process.execPath,
        ['-e', `try{require('fs').openSync(process.argv[1],'r');console.log('ok')}catch(e){console.log(e.code)}`, path.join(m2, 'head', 'at')],
        process.env,
      );
      expect(child.trim()).toBe('EACCES');
    } finally {
      await wc.close();
      await stopServerAt(m2);
    }
    expect(findMount(m2)).toBeUndefined();
  });
});

describe('pid reuse', () => {
  it('a process given the pid of an exited authenticated process is not authenticated', async () => {
    // P authenticates and forks C, which inherits P's link and keeps it open (so the link —
    // bound to P — stays up); P exits; a new process is made to get P's pid.
    const p = spawn(python(), [path.join(repoRoot, 'test', 'helpers', 'auth-fork.py'), mnt(), keyFile, 'hold'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    let childPid: number | undefined;
    try {
      const { code: rc } = await exitOf(p);
      expect(rc).toBe(0);
      const lines = out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { parent?: string; child?: string; pid: number });
      const parent = lines.find((l) => l.parent !== undefined)!;
      childPid = lines.find((l) => l.child !== undefined)!.pid;
      expect(parent).toMatchObject({ parent: 'ok', pid: p.pid });
      expect(existsSync(`/proc/${childPid}`)).toBe(true); // the link is still open
      const probeScript = `try{require('fs').closeSync(require('fs').openSync(process.argv[1],'r'));process.exit(0)}catch(e){process.exit(e.code==='EACCES'?3:1)}`;
      const again = await spawnWithPid(p.pid!, process.execPath, ['-e', probeScript, path.join(mnt(), 'head', 'at')]);
      expect(again.pid).toBe(p.pid);
      expect((await exitOf(again)).code).toBe(3); // EACCES
    } finally {
      childPid ??= (/"child": "\w+", "pid": (\d+)/.exec(out) ?? [])[1] === undefined ? undefined : Number(/"child": "\w+", "pid": (\d+)/.exec(out)![1]);
      if (childPid !== undefined) {
        process.kill(childPid, 'SIGTERM'); // C exits, closing the link
        for (let i = 0; i < 200 && existsSync(`/proc/${childPid}`); i++) await new Promise((r) => setTimeout(r, 10));
      }
    }
  });
});
