// The public WatchLink (src/client/watchlink.ts, exported as `wcfs/watchlink`): a client
// application in its own process, using only that API, watches a file, is pinned when the
// test reads a block that changed after its watch, acks, and the server proceeds — head/
// shows the new data, @<rev>/ the old. Needs dist/ (npm test builds first).
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { hex16 } from '../src/zodb/ids.js';
import { BS, TDB } from './helpers/tdb.js';
import { repoRoot } from './helpers/paths.js';
import { sleep } from './helpers/mount.js';

type Msg = {
  watch?: string;
  req?: string;
  pin?: { foid: string; blk: number; rev: string | null } | null;
  closed?: boolean;
  down?: string | null;
  after?: { code: string; message: string } | null;
  error?: string;
};

class App {
  readonly msgs: Msg[] = [];
  readonly exited: Promise<number | string>;
  private wake: (() => void) | undefined;
  constructor(readonly proc: ChildProcess) {
    proc.on('message', (m: Msg) => {
      this.msgs.push(m);
      this.wake?.();
    });
    this.exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve(sig ?? code ?? -1)));
  }
  /** The next message (≤ 10 s). */
  async next(): Promise<Msg> {
    const t0 = Date.now();
    while (this.msgs.length === 0) {
      if (Date.now() - t0 > 10_000) throw new Error('watchlink app: no message in 10 s');
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) throw new Error(`watchlink app exited (${this.proc.exitCode ?? this.proc.signalCode})`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    return this.msgs.shift()!;
  }
}

let t: TDB | undefined;
let app: App | undefined;
afterEach(async () => {
  if (app && app.proc.exitCode === null && app.proc.signalCode === null) {
    app.proc.kill('SIGKILL');
    await Promise.race([app.exited, sleep(3000)]);
  }
  app = undefined;
  await t?.close();
  t = undefined;
}, 30_000);

describe('WatchLink (public API, wcfs/watchlink)', () => {
  it('watch → pin → ack: the head read goes through with the new data, @rev/ keeps the old', async () => {
    t = new TDB();
    await t.open();
    const f = await t.newFile('f');
    const at1 = await t.commit([[f, { 0: 0x11, 1: 0x22 }]]);
    await t.serve();
    await t.read(f, 0); // blk 0 is in head's page cache: a change of it is pinned
    app = new App(
      fork(path.join(repoRoot, 'test', 'helpers', 'watchlink-app.mjs'), [t.srv.mnt, hex16(f), hex16(at1)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
    );
    expect(await app.next()).toEqual({ watch: 'ok' });

    const at2 = await t.commit([[f, { 0: 0x33 }]]);
    // the read waits for the app's ack of `pin f #0 @at1`
    const head = await readFile(t.srv.at(`head/bigfile/${hex16(f)}`));
    expect(await app.next()).toEqual({ req: `pin ${hex16(f)} #0 @${hex16(at1)}`, pin: { foid: hex16(f), blk: 0, rev: hex16(at1) } });
    expect(head.subarray(0, BS).every((x) => x === 0x33)).toBe(true);
    expect(head.subarray(BS, 2 * BS).every((x) => x === 0x22)).toBe(true);
    const old = await readFile(t.srv.at(`@${hex16(at1)}/bigfile/${hex16(f)}`));
    expect(old.subarray(0, BS).every((x) => x === 0x11)).toBe(true);
    expect(at2 > at1).toBe(true);

    // no other request came; close: bye, recvReq → null, requests after close fail
    app.proc.send({ close: true });
    const closed = await app.next();
    expect(closed.closed).toBe(true);
    expect(closed.down).toBe('link is closed');
    expect(closed.after?.code).toBe('WCFS_ELINKDOWN');
    expect(await Promise.race([app.exited, sleep(10_000).then(() => 'still running')])).toBe(0);
    expect(app.msgs).toEqual([]);
  });

  it('a pending recvReq keeps the application alive until the pin comes', async () => {
    t = new TDB();
    await t.open();
    const f = await t.newFile('f');
    const at1 = await t.commit([[f, { 0: 0x11 }]]);
    await t.serve();
    await t.read(f, 0);
    const proc = spawn(process.execPath, [path.join(repoRoot, 'test', 'helpers', 'watchlink-once.mjs'), t.srv.mnt, hex16(f), hex16(at1)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    app = new App(proc);
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const lines = async (n: number) => {
      const t0 = Date.now();
      while (out.split('\n').length <= n) {
        if (Date.now() - t0 > 10_000) throw new Error(`watchlink-once: ${JSON.stringify(out)}`);
        await sleep(20);
      }
      return out
        .split('\n')
        .slice(0, n)
        .map((l) => JSON.parse(l) as Msg);
    };
    expect(await lines(1)).toEqual([{ watch: 'ok' }]);
    await sleep(300); // without the link holding the event loop the app would exit here (unsettled await: 13)
    await t.commit([[f, { 0: 0x44 }]]);
    const head = await readFile(t.srv.at(`head/bigfile/${hex16(f)}`));
    expect(head.subarray(0, BS).every((x) => x === 0x44)).toBe(true);
    expect(await lines(3)).toEqual([{ watch: 'ok' }, { req: `pin ${hex16(f)} #0 @${hex16(at1)}` }, { closed: true }]);
    expect(await Promise.race([app.exited, sleep(10_000).then(() => 'still running')])).toBe(0);
  });

  it("the server's error reply comes back as the reply text", async () => {
    t = new TDB();
    await t.open();
    const f = await t.newFile('f');
    await t.serve();
    const { WatchLink } = await import('../src/client/watchlink.js');
    const wl = await WatchLink.open(t.srv.mnt);
    try {
      expect(await wl.sendReq(`watch ${hex16(f)} @zz`)).toMatch(/^error /);
    } finally {
      await wl.close();
    }
    expect(await wl.recvReq()).toBeNull();
    await expect(wl.sendReq('bye')).rejects.toMatchObject({ code: 'WCFS_ELINKDOWN' });
  });
});
