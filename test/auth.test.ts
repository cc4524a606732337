// The authentication rules without a mount (src/server/auth.ts, src/util/authkey.ts): the
// "who may open what" table, the AuthTable over a fake Identity — which, unlike the kernel,
// hands out a pid number again at will — its bounds, the .wcfs/auth request grammar, and the
// key-file rules. What only the kernel shows (FUSE caller ids, real pid reuse, fork) is in
// test/wcfs-auth.test.ts. The server's wiring (the OPEN check, .wcfs/auth links, the writer's
// thread id reaching the table) is driven through its FUSE handlers against a fake kernel.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import createDebug from 'debug';
import { afterAll, describe, expect, it } from 'vitest';
import type { RequestContext } from '../src/fuse/fs.js';
import { WcfsServer } from '../src/server/server.js';
import { openStorage } from '../src/zodb/open.js';
import type { IWritableStorage } from '../src/zodb/storage.js';
import { ensureRoot } from '../src/zodb/zbigfile.js';
import { makeTmpDir } from './helpers/tmp.js';
import { nullKernel } from './helpers/seam.js';
import { isCode } from '../src/errors.js';
import { FuseError } from '../src/fuse/errors.js';
import { errno } from '../src/fuse/kernel.js';
import { AuthTable, MAX_LINKS, MAX_LINKS_PER_PROC, OPEN_RULES, parseAuthRequest, procIdentity, type Identity, type ProcId } from '../src/server/auth.js';
import { ProcessGoneError } from '../src/util/proc.js';
import { readAuthKey } from '../src/util/authkey.js';

const KEY = 'k3y-0123456789';

/** Processes by pid number; a thread id is its process's pid. exit() then spawn() reuses a pid. */
class FakeIds implements Identity {
  readonly selfPid = 1;
  private readonly live = new Map<number, { start: bigint; exited: boolean }>();
  private nextStart = 100n;
  holds = 0;
  spawn(pid: number): ProcId {
    const p = { start: this.nextStart++, exited: false };
    this.live.set(pid, p);
    return { pid, start: p.start };
  }
  exit(pid: number): void {
    const p = this.live.get(pid)!;
    p.exited = true;
    this.live.delete(pid);
  }
  whoIs(tid: number): ProcId {
    const p = this.live.get(tid);
    if (p === undefined) throw new ProcessGoneError(tid, 'no such thread');
    return { pid: tid, start: p.start };
  }
  hold(id: ProcId) {
    const p = this.live.get(id.pid)!;
    this.holds++;
    return { exited: () => p.exited, close: () => void this.holds-- };
  }
}

describe('OPEN_RULES', () => {
  it('only .wcfs/zurl and .wcfs/auth are open to anyone', () => {
    expect(OPEN_RULES).toEqual({
      zurl: 'anyone',
      auth: 'anyone',
      pintimeout: 'authenticated',
      stats: 'authenticated',
      at: 'authenticated',
      watch: 'authenticated',
      bigfile: 'authenticated',
      zhead: 'authenticated',
    });
  });
});

describe('AuthTable', () => {
  it('a link authenticates the process that sends the key; the server itself is always allowed', () => {
    const ids = new FakeIds();
    const tab = new AuthTable(KEY, ids);
    ids.spawn(1);
    ids.spawn(10);
    expect(tab.mayOpen('at', 1)).toBe(true); // ourselves
    expect(tab.mayOpen('zurl', 10)).toBe(true);
    expect(tab.mayOpen('at', 10)).toBe(false);
    const s = tab.linkOpen(10);
    expect(tab.authenticate(s, 10, 'wrong')).toEqual({ ok: false, why: 'invalid key', pid: 10 });
    expect(tab.mayOpen('bigfile', 10)).toBe(false);
    expect(tab.authenticate(s, 10, KEY)).toEqual({ ok: true });
    expect(tab.mayOpen('bigfile', 10)).toBe(true);
    expect(tab.authenticate(s, 10, KEY)).toEqual({ ok: true }); // again on the same link: no change
    tab.linkReleased(s);
    expect(tab.mayOpen('bigfile', 10)).toBe(false);
    expect(tab.sizes()).toEqual({ procs: 0, links: 0 });
    expect(ids.holds).toBe(0);
  });

  it('revoked when the last of its links goes down (down, then release of the other)', () => {
    const ids = new FakeIds();
    const tab = new AuthTable(KEY, ids);
    ids.spawn(10);
    const a = tab.linkOpen(10);
    const b = tab.linkOpen(10);
    tab.authenticate(a, 10, KEY);
    tab.authenticate(b, 10, KEY);
    tab.linkDown(a); // bye
    expect(tab.isAuthenticated(10)).toBe(true);
    tab.linkReleased(b);
    expect(tab.isAuthenticated(10)).toBe(false);
    tab.linkReleased(a);
    expect(tab.sizes()).toEqual({ procs: 0, links: 0 });
    expect(ids.holds).toBe(0);
  });

  it('one process per link: another process with the key on it is refused', () => {
    const ids = new FakeIds();
    const tab = new AuthTable(KEY, ids);
    ids.spawn(10);
    ids.spawn(11);
    const s = tab.linkOpen(10);
    expect(tab.authenticate(s, 10, KEY).ok).toBe(true);
    expect(tab.authenticate(s, 11, KEY)).toEqual({ ok: false, why: 'link in use by another process', pid: 11 });
    expect(tab.isAuthenticated(11)).toBe(false);
  });

  it('pid reuse: a new process with an authenticated process’s pid is not authenticated', () => {
    const ids = new FakeIds();
    const tab = new AuthTable(KEY, ids);
    ids.spawn(10);
    const s = tab.linkOpen(10);
    tab.authenticate(s, 10, KEY);
    ids.exit(10); // the link stays open (a child inherited it)
    ids.spawn(10); // same pid, later start time
    expect(tab.isAuthenticated(10)).toBe(false);
    tab.linkReleased(s);
  });

  it('pid reuse within one start-time tick: the held handle (pidfd) says the old one exited', () => {
    const ids = new FakeIds();
    const tab = new AuthTable(KEY, ids);
    const id = ids.spawn(10);
    const s = tab.linkOpen(10);
    tab.authenticate(s, 10, KEY);
    ids.exit(10);
    // a process with the same pid and the same start time: only the handle tells them apart
    (ids as unknown as { live: Map<number, { start: bigint; exited: boolean }> }).live.set(10, { start: id.start, exited: false });
    expect(tab.isAuthenticated(10)).toBe(false);
    expect(tab.sizes().procs).toBe(0); // dropped, its handle closed
    expect(ids.holds).toBe(0);
    tab.linkReleased(s); // later release of the link: nothing left to undo
    expect(tab.sizes()).toEqual({ procs: 0, links: 0 });
  });

  it('bounds: links per process (EMFILE), links in all (ENFILE); others keep being served', () => {
    const ids = new FakeIds();
    const tab = new AuthTable(KEY, ids);
    ids.spawn(10);
    const mine = Array.from({ length: MAX_LINKS_PER_PROC }, () => tab.linkOpen(10));
    expect(() => tab.linkOpen(10)).toThrow(FuseError);
    try {
      tab.linkOpen(10);
    } catch (e) {
      expect((e as FuseError).errno).toBe(errno.EMFILE);
    }
    tab.linkReleased(mine.pop()!);
    mine.push(tab.linkOpen(10));
    // fill the table from many processes
    const others = [];
    for (let pid = 1000; tab.sizes().links < MAX_LINKS; pid++) {
      ids.spawn(pid);
      others.push(tab.linkOpen(pid));
    }
    ids.spawn(5);
    let err: unknown;
    try {
      tab.linkOpen(5);
    } catch (e) {
      err = e;
    }
    expect((err as FuseError).errno).toBe(errno.ENFILE);
    // an authenticated process stays authenticated meanwhile
    expect(tab.authenticate(mine[0]!, 10, KEY).ok).toBe(true);
    expect(tab.isAuthenticated(10)).toBe(true);
    tab.linkReleased(others.pop()!);
    expect(() => tab.linkOpen(5)).not.toThrow();
  });

  it('a caller the server cannot see (pid 0 from another pid namespace) gets ESRCH, and is not authenticated', () => {
    const tab = new AuthTable(KEY, new FakeIds());
    let err: unknown;
    try {
      tab.linkOpen(0);
    } catch (e) {
      err = e;
    }
    expect((err as FuseError).errno).toBe(errno.ESRCH);
    expect(tab.mayOpen('at', 0)).toBe(false);
    expect(tab.mayOpen('zurl', 0)).toBe(true);
  });

  it('the real identity: this process, by its threads’ ids; a gone thread is nobody', () => {
    const me = procIdentity.whoIs(process.pid);
    expect(me.pid).toBe(process.pid);
    expect(typeof me.start).toBe('bigint');
    expect(() => procIdentity.whoIs(0x3fffffff)).toThrow(ProcessGoneError);
    const h = procIdentity.hold(me, process.pid);
    expect(h.exited()).toBe(false);
    h.close();
    expect(() => procIdentity.hold({ pid: process.pid, start: me.start + 1n }, process.pid)).toThrow(ProcessGoneError);
  });
});

describe('parseAuthRequest', () => {
  it('auth, bye, anything else', () => {
    expect(parseAuthRequest('auth abc def')).toEqual({ kind: 'auth', key: 'abc def' });
    expect(parseAuthRequest('auth')).toEqual({ kind: 'auth', key: '' });
    expect(parseAuthRequest('bye')).toEqual({ kind: 'bye' });
    expect(parseAuthRequest('authx')).toEqual({ kind: 'unknown' });
    expect(parseAuthRequest('watch 0000000000000001 -')).toEqual({ kind: 'unknown' });
  });
});

describe('readAuthKey', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'wcfs-authkey-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, text: string) => {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const fails = (p: string, what: string) => {
    let err: unknown;
    try {
      readAuthKey(p);
    } catch (e) {
      err = e;
    }
    expect(isCode(err, 'WCFS_EAUTHKEY')).toBe(true);
    expect((err as Error).message).toContain(p);
    expect((err as Error).message).toContain(what);
    expect((err as Error).message).not.toContain('s3cret');
  };
  it('the text without its line end', () => {
    expect(readAuthKey(file('a', 's3cret\n'))).toBe('s3cret');
    expect(readAuthKey(file('b', 's3cret'))).toBe('s3cret');
    expect(readAuthKey(file('c', 's3cret\r\n'))).toBe('s3cret');
  });
  it('missing, empty, several lines, too long: WCFS_EAUTHKEY naming the file', () => {
    fails(path.join(dir, 'none'), 'ENOENT');
    fails(file('e', ''), 'empty');
    fails(file('f', '\n\n'), 'empty');
    fails(file('g', 's3cret\nmore\n'), 'more than one line');
    fails(file('h', 'x'.repeat(2000)), 'longer than');
  });
});

describe('the server without a mount (WcfsServer.serve, fake kernel and identity)', () => {
  it('OPEN is checked; .wcfs/auth authenticates the writer; RELEASE and pid reuse revoke', async () => {
    const tmp = makeTmpDir('wcfs-auth-');
    const dbPath = path.join(tmp.dir, 'data.fs');
    const db = (await openStorage(dbPath, { create: true })) as IWritableStorage;
    await ensureRoot(db);
    await db.close();
    const keyFile = path.join(tmp.dir, 'key');
    writeFileSync(keyFile, KEY + '\n');
    const kernel = nullKernel();
    // the link takes a real pidfd of its opener, so "processes" here are this one's pid
    const ids = new FakeIds();
    const me = process.pid;
    ids.spawn(me);
    const storage = await openStorage(dbPath, { readOnly: true });
    const logged: string[] = [];
    const srv = WcfsServer.serve(
      { zurl: dbPath, mountpoint: '/nonexistent', log: (l) => logged.push(l), authKeyFile: keyFile, authIdentity: ids },
      storage,
      kernel,
    );
    // traces too: the key must appear in neither
    const wasEnabled = createDebug.disable();
    createDebug.enable('wcfs:*');
    const debugLog = createDebug.log;
    createDebug.log = (...a: unknown[]) => logged.push(a.map(String).join(' '));
    try {
      const ctx: RequestContext = { signal: new AbortController().signal, interrupted: false };
      const hdr = { id: 1, uid: 0, gid: 0, pid: me };
      const lookup = async (parent: number, name: string) => (await srv.lookup({ ...hdr, op: 'LOOKUP', nodeid: parent, name }, ctx)).nodeid;
      const head = await lookup(1, 'head');
      const at = await lookup(head, 'at');
      const auth = await lookup(await lookup(1, '.wcfs'), 'auth');
      const openAt = () => srv.open({ ...hdr, op: 'OPEN', nodeid: at, flags: 0 });
      const refused = () => {
        try {
          openAt();
        } catch (e) {
          return (e as FuseError).errno;
        }
        return 0;
      };
      expect(refused()).toBe(errno.EACCES);
      const { fh } = srv.open({ ...hdr, op: 'OPEN', nodeid: auth, flags: 2 });
      srv.write({ ...hdr, op: 'WRITE', nodeid: auth, fh: fh!, offset: 0, data: Buffer.from(`1 auth ${KEY}\n`), size: 0, flags: 0 });
      const reply = await srv.read({ ...hdr, op: 'READ', nodeid: auth, fh: fh!, offset: 0, size: 100, flags: 0 }, ctx);
      expect(Buffer.from(reply).toString()).toBe('1 ok\n');
      expect(refused()).toBe(0);
      // the same pid, a later process (start time): refused while the link is still open
      ids.exit(me);
      ids.spawn(me);
      expect(refused()).toBe(errno.EACCES);
      srv.write({ ...hdr, op: 'WRITE', nodeid: auth, fh: fh!, offset: 0, data: Buffer.from(`3 auth ${KEY}\n`), size: 0, flags: 0 });
      expect(Buffer.from(await srv.read({ ...hdr, op: 'READ', nodeid: auth, fh: fh!, offset: 0, size: 100, flags: 0 }, ctx)).toString()).toBe(
        '3 error invalid authentication key\n', // the link authenticated the old process
      );
      srv.release({ ...hdr, op: 'RELEASE', nodeid: auth, fh: fh!, flags: 0 });
      expect(srv.auth!.sizes()).toEqual({ procs: 0, links: 0 });
      expect(ids.holds).toBe(0);
      // a bad frame carrying the key: the reply quotes it back to its sender, logs do not
      const bad = srv.open({ ...hdr, op: 'OPEN', nodeid: auth, flags: 2 }).fh!;
      srv.write({ ...hdr, op: 'WRITE', nodeid: auth, fh: bad, offset: 0, data: Buffer.from(`x auth ${KEY}\n`), size: 0, flags: 0 });
      expect(Buffer.from(await srv.read({ ...hdr, op: 'READ', nodeid: auth, fh: bad, offset: 0, size: 100, flags: 0 }, ctx)).toString()).toBe(
        `0 error: invalid frame: "x auth ${KEY}\\n" (invalid stream)\n`,
      );
      srv.release({ ...hdr, op: 'RELEASE', nodeid: auth, fh: bad, flags: 0 });
      expect(logged.some((l) => l.includes('auth …'))).toBe(true); // the traces were on
      expect(logged.some((l) => l.includes('serve rx: invalid frame: "…" (invalid stream)'))).toBe(true);
      expect(logged.filter((l) => l.includes(KEY))).toEqual([]);
    } finally {
      createDebug.log = debugLog;
      createDebug.enable(wasEnabled);
      await srv.stop();
      tmp.cleanup();
    }
  });

  it('a server that is not root lets only its own uid open head/watch (it could not kill another uid failing a pin)', async () => {
    const tmp = makeTmpDir('wcfs-watchuid-');
    const dbPath = path.join(tmp.dir, 'data.fs');
    const db = (await openStorage(dbPath, { create: true })) as IWritableStorage;
    await ensureRoot(db);
    await db.close();
    const kernel = nullKernel();
    const logged: string[] = [];
    const open = async (euid: number) => {
      const storage = await openStorage(dbPath, { readOnly: true }); // stop() closes it
      const srv = WcfsServer.serve(
        { zurl: dbPath, mountpoint: '/nonexistent', log: (l) => logged.push(l), euid, clientWarnLimit: { burst: 3, windowMs: 60_000 } },
        storage,
        kernel,
      );
      return {
        srv,
        try: async (uid: number) => {
          const ctx: RequestContext = { signal: new AbortController().signal, interrupted: false };
          const hdr = { id: 1, uid, gid: 0, pid: process.pid };
          const head = (await srv.lookup({ ...hdr, op: 'LOOKUP', nodeid: 1, name: 'head' }, ctx)).nodeid;
          const watch = (await srv.lookup({ ...hdr, op: 'LOOKUP', nodeid: head, name: 'watch' }, ctx)).nodeid;
          try {
            const { fh } = srv.open({ ...hdr, op: 'OPEN', nodeid: watch, flags: 2 });
            srv.release({ ...hdr, op: 'RELEASE', nodeid: watch, fh: fh!, flags: 0 });
            return 0;
          } catch (e) {
            return (e as FuseError).errno;
          }
        },
      };
    };
    try {
      const user = await open(1234);
      expect(await user.try(1234), 'its own uid').toBe(0);
      expect(await user.try(5678), 'another uid').toBe(errno.EACCES);
      expect(logged.join('\n')).toMatch(/head\/watch: open by pid \d+ \(uid 5678\) refused: this server \(uid 1234\) could not kill it/);
      // >>> an outsider opening in a loop cannot flood the log: 3 lines, then one summary
      for (let i = 0; i < 19; i++) expect(await user.try(5678)).toBe(errno.EACCES);
      const refusals = () => logged.filter((l) => /head\/watch: open by pid \d+ \(uid 5678\) refused/.test(l)).length;
      expect(refusals()).toBe(3);
      await user.srv.stop();
      expect(refusals()).toBe(3);
      expect(logged.at(-1)).toMatch(/head\/watch: open by another uid refused: 17 more such warnings suppressed \(at most 3 per 60 s are logged\)$/);
      const root = await open(0);
      expect(await root.try(5678), 'root serves every uid').toBe(0);
      await root.srv.stop();
    } finally {
      tmp.cleanup();
    }
  });
});
