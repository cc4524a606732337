// Slow or faulty clients (wcfs-server.md §2.9; upstream wcfs_faultyprot_test.py): a client
// that mishandles a pin is killed (SIGBUS, then SIGKILL) unless it is already exiting, and
// everybody else goes on — the test's own link gets its pins and "ok" within 2·pintimeout.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { MAX_INFLIGHT, MAX_LINE } from '../src/server/wlink.js';
import { ProcessRef } from '../src/util/proc.js';
import { QUOTE_MAX } from '../src/watchlink/wire.js';
import { hex16 } from '../src/zodb/ids.js';
import { sleep } from './helpers/mount.js';
import { stopAllServers } from './helpers/wcfs.js';
import { TDB, stats } from './helpers/tdb.js';
import { TWatchLink } from './helpers/wlink.js';
import { repoRoot } from './helpers/paths.js';
import { exitOf, spawnWithPid } from './helpers/pidreuse.js';

const PINTIMEOUT = 2; // seconds

const tdbs: TDB[] = [];
afterEach(async () => {
  for (const t of tdbs.splice(0)) await t.close();
}, 30_000);
afterAll(stopAllServers, 30_000);

type Faulty = 'no_pin_read' | 'no_pin_reply' | 'stop_on_pin' | 'eof_pin_reply' | 'nak_pin_reply' | 'sigstop_on_pin';
const kinds: Faulty[] = ['no_pin_read', 'no_pin_reply', 'stop_on_pin', 'eof_pin_reply', 'nak_pin_reply', 'sigstop_on_pin'];

/**
 * A faulty client: watches `foid @at` on its own link and misbehaves on the first pin.
 * Other lines it receives are kept in `others`.
 */
async function faultyClient(t: TDB, kind: Faulty, foid: bigint, at: bigint): Promise<TWatchLink & { others: string[] }> {
  const c = Object.assign(await TWatchLink.open(t.srv.at('head/watch'), { noread: kind === 'no_pin_read' }), { others: [] as string[] });
  c.send(`1 watch ${hex16(foid)} @${hex16(at)}\n`);
  if (kind === 'no_pin_read') return c;
  void (async () => {
    for (;;) {
      let l: string;
      try {
        l = await c.next(30_000);
      } catch {
        return;
      }
      const m = /^(\d+) pin /.exec(l);
      if (!m) {
        c.others.push(l);
        continue;
      }
      if (kind === 'stop_on_pin') c.proc.send({ abort: true });
      if (kind === 'eof_pin_reply') c.proc.send({ close: true });
      if (kind === 'nak_pin_reply') c.send(`${m[1]} nak\n`);
      if (kind === 'sigstop_on_pin') c.proc.send({ stop: true });
      return; // no_pin_reply: just don't answer
    }
  })();
  return c;
}

async function expectOutcome(t: TDB, c: TWatchLink, kind: Faulty): Promise<void> {
  const end = await Promise.race([c.exited, sleep(2 * PINTIMEOUT * 1000 + 2000).then(() => 'alive' as const)]);
  expect(end, `${kind}: the client must end`).not.toBe('alive');
  if (kind === 'stop_on_pin') {
    expect(end).toMatchObject({ signal: 'SIGKILL' }); // it ended on its own (kill -9 of itself)
    expect(t.srv.stderr()).not.toMatch(/client failed to handle pin/);
    await sleep(2 * PINTIMEOUT * 1000);
    expect((await stats(t)).pinkill, 'a dying client is not killed').toBe(0);
  } else {
    expect((end as { signal: string }).signal).toMatch(/SIGBUS|SIGKILL/);
    const t0 = Date.now();
    while ((await stats(t)).pinkill === 0 && Date.now() - t0 < PINTIMEOUT * 1000) await sleep(20); // counted once dead
    expect((await stats(t)).pinkill).toBe(1);
    expect(t.srv.stderr()).toMatch(new RegExp(`pid${c.pid}: client failed to handle pin notification correctly and timely`));
  }
}

describe('faulty client on watch setup', () => {
  for (const kind of kinds) {
    it(
      kind,
      async () => {
        const t = new TDB();
        t.pinTimeout = PINTIMEOUT;
        tdbs.push(t);
        await t.open();
        const f = await t.newFile('f');
        await t.commit([[f, { 2: 1 }]]);
        await t.serve();
        await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
        await t.read(f, 2);
        const at1 = await t.commit([[f, { 2: 2 }]]);
        await t.commit([[f, { 2: 3 }]]);
        await t.read(f, 2);
        const c = await faultyClient(t, kind, f, at1);
        await sleep(100);
        // meanwhile we watch @at1 too: our pin and ok come within 2·pintimeout
        const l = await t.link();
        const t0 = Date.now();
        await t.watch(l, f, at1);
        expect(l.pinned.get(f)).toEqual(new Map([[2, at1]]));
        expect(Date.now() - t0).toBeLessThan(2 * PINTIMEOUT * 1000 + 1000);
        await expectOutcome(t, c, kind);
        // and the server goes on serving
        await t.commit([[f, { 3: 4 }]]);
        await t.read(f, 3);
      },
      30_000,
    );
  }
});

describe('faulty client on access', () => {
  for (const kind of kinds) {
    it(
      kind,
      async () => {
        const t = new TDB();
        t.pinTimeout = PINTIMEOUT;
        tdbs.push(t);
        await t.open();
        const f = await t.newFile('f');
        await t.commit([[f, { 1: 1, 2: 1 }]]);
        await t.serve();
        await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
        await t.read(f, 1);
        await t.read(f, 2);
        const at1 = await t.commit([[f, { 2: 2 }]]);
        const at2 = await t.commit([[f, { 2: 3 }]]);
        const l = await t.link();
        await t.watch(l, f, at1); // {2: at1}
        const c = await faultyClient(t, kind, f, at2);
        if (kind !== 'no_pin_read') {
          for (let i = 0; i < 100 && c.others.length === 0; i++) await sleep(20);
          expect(c.others).toEqual(['1 ok']);
        } else await sleep(200);
        await t.commit([[f, { 1: 5 }]]); // at3: block 1 changes
        const t0 = Date.now();
        await t.read(f, 1); // pins us {1: tail}; the faulty client gets its pin and misbehaves
        expect(Date.now() - t0).toBeLessThan(2 * PINTIMEOUT * 1000 + 1000);
        expect(l.pinned.get(f)).toEqual(
          new Map([
            [1, t.tail],
            [2, at1],
          ]),
        );
        await expectOutcome(t, c, kind);
      },
      30_000,
    );
  }
});

// ---- the client process is held by a pidfd (issue 7.2) ----

/** Number of pidfds the server process holds. */
function serverPidfds(t: TDB): number {
  const dir = `/proc/${t.srv.proc.pid}/fd`;
  let n = 0;
  for (const fd of readdirSync(dir)) {
    try {
      if (readlinkSync(`${dir}/${fd}`) === 'anon_inode:[pidfd]') n++;
    } catch {
      /* closed meanwhile */
    }
  }
  return n;
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms: number): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timeout waiting for ${what}`);
    await sleep(20);
  }
}

describe('the client process', () => {
  const cleanup: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  }, 30_000);

  it('pin timeout after the opener exited and its pid was reused: the link user is killed, the reuser is not', async () => {
    const t = new TDB();
    t.pinTimeout = PINTIMEOUT;
    tdbs.push(t);
    await t.open();
    const f = await t.newFile('f');
    await t.commit([[f, { 1: 1 }]]);
    await t.serve();
    await stat(t.srv.at(`head/bigfile/${hex16(f)}`));
    await t.read(f, 1);
    // >>> opener P opens head/watch, hands it to its child C and exits; C watches f @head
    const opener = spawn(
      process.execPath,
      [path.join(repoRoot, 'test', 'helpers', 'wlink-handoff.mjs'), 'opener', t.srv.at('head/watch'), hex16(f), hex16(t.head())],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let out = '';
    opener.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    let child: ProcessRef | undefined;
    cleanup.push(() => {
      child?.signal('SIGKILL');
      child?.close();
    });
    expect(await exitOf(opener)).toMatchObject({ code: 0 });
    await until('the child', () => /^pid \d+$/m.test(out), 15_000);
    const cpid = Number(/^pid (\d+)$/m.exec(out)![1]);
    child = ProcessRef.open(cpid);
    await until('"ok" to the child', () => /^ok$/m.test(out), 10_000);
    // >>> an innocent process gets the opener's pid
    const innocent = await spawnWithPid(opener.pid!, 'sleep', ['600']);
    cleanup.push(async () => {
      innocent.kill('SIGKILL');
      await exitOf(innocent);
    });
    // >>> blk 1 changes; reading it pins C, which never answers
    await t.commit([[f, { 1: 2 }]]);
    await t.read(f, 1);
    expect(out).toMatch(/^pin$/m);
    await until(
      'a kill',
      async () => (await stats(t)).pinkill === 1 || innocent.exitCode !== null || innocent.signalCode !== null,
      2 * PINTIMEOUT * 1000 + 5000,
    );
    expect(innocent.exitCode ?? innocent.signalCode, 'the process that reused the pid').toBe(null);
    expect(t.srv.stderr()).not.toMatch(new RegExp(`pid${opener.pid}: `));
    // C took the link over when it used it, and was killed
    expect(t.srv.stderr()).toMatch(new RegExp(`pid${cpid} uses the link: it is the client now`));
    expect(child.exited()).toBe(true);
    expect(t.srv.stderr()).toMatch(new RegExp(`pid${cpid}: client failed to handle pin notification`));
    // no pidfd outlives its link
    await until('no pidfd left in the server', () => serverPidfds(t) === 0, 10_000);
  }, 60_000);

  it('one pidfd per open link, closed with the link', async () => {
    const t = new TDB();
    tdbs.push(t);
    await t.open();
    await t.newFile('f');
    await t.serve();
    expect(serverPidfds(t)).toBe(0);
    const ls = [await t.link(), await t.link(), await t.link()];
    expect(serverPidfds(t)).toBe(3);
    await ls[0]!.request('bye').catch(() => {}); // bye: no reply, the link goes down; the fd stays open
    expect(serverPidfds(t)).toBe(3);
    for (const l of ls) await l.close();
    await until('pidfds closed', () => serverPidfds(t) === 0, 10_000);
  }, 30_000);
});

// ---- bounded input on head/watch (issue 7.4) ----

function vmRSS(pid: number): number {
  return Number(/^VmRSS:\s*(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'))![1]) * 1024;
}

describe('bounded input', () => {
  async function served(): Promise<TDB> {
    const t = new TDB();
    tdbs.push(t);
    await t.open();
    await t.newFile('f');
    await t.serve();
    return t;
  }

  it('64 MiB without a newline: a protocol error after MAX_LINE bytes, the server does not grow', async () => {
    const t = await served();
    const l = await t.link();
    const rss0 = vmRSS(t.srv.proc.pid!);
    const MiB = 'a'.repeat(1 << 20);
    for (let i = 0; i < 64; i++) l.send(MiB);
    const lines = await l.untilEOF(30_000);
    expect(lines).toEqual([`0 error: invalid frame: "${'a'.repeat(QUOTE_MAX)}"... (line longer than ${MAX_LINE} bytes)`]);
    await until('the writes refused', () => l.err === 'EPIPE' || l.proc.exitCode !== null, 10_000);
    expect(vmRSS(t.srv.proc.pid!) - rss0).toBeLessThan(48 << 20);
    expect(t.srv.stderr().length).toBeLessThan(4096); // one short line, not the input
    await until('the link gone', async () => (await stats(t)).WatchLink === 0, 10_000);
  }, 60_000);

  it('replies and logs quote at most QUOTE_MAX bytes of a bad request', async () => {
    const t = await served();
    const l = await t.link();
    const junk = 'y'.repeat(MAX_LINE - 10);
    expect(await l.request(junk)).toBe(`error bad watch: not a watch request: "${'y'.repeat(QUOTE_MAX)}"...`);
    l.send(`${junk}\n`); // no stream number: protocol error quoting the line
    expect(await l.untilEOF()).toEqual([`0 error: invalid frame: "${'y'.repeat(QUOTE_MAX)}"... (invalid stream)`]);
    expect(t.srv.stderr()).not.toMatch(/y{101}/);
  }, 30_000);

  it('a client that sends requests and never reads the replies: at most MAX_INFLIGHT, then the link ends', async () => {
    const t = await served();
    const l = await TWatchLink.open(t.srv.at('head/watch'), { noread: true });
    t.links.push(l);
    let s = '';
    for (let i = 0; i <= MAX_INFLIGHT; i++) s += `${2 * i + 1} bla bla\n`;
    l.send(s);
    await until('the link ended', async () => (await stats(t)).WatchLink === 0, 10_000);
    expect(t.srv.stderr()).toMatch(new RegExp(`${2 * MAX_INFLIGHT + 1}: too many requests in flight \\(${MAX_INFLIGHT}\\)`));
    expect((await stats(t)).pinkill).toBe(0); // no pins were pending: nobody is killed
  }, 30_000);
});
